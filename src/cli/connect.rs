//! NATS for one-shot commands (deploy, list, parked, audit, publish, ...): connect, or briefly
//! start the embedded nats-server.

use crate::bus::Bus;
use crate::config::{NatsConnect, RuntimeConfig};
use crate::nats_server::{find_binary, EmbeddedServer};

/// A connection for one command, with the embedded server it started (if any).
pub struct Conn {
    pub bus: Bus,
    embedded: Option<EmbeddedServer>,
}

/// Connects to `nats.url` (its seed URLs, with the configured credentials and TLS). When nothing
/// answers at any of them and `nats.embedded` is on (the default config), starts nats-server
/// from `nats.serverConfig` for the duration of the command, so that `deploy` then `up` work on
/// a fresh machine (both use the same store). Otherwise the error names the servers (never a
/// secret).
pub async fn connect(cfg: &RuntimeConfig) -> anyhow::Result<Conn> {
    let opts = nats_options(cfg)?;
    let shown = opts.shown();
    let mut embedded = None;
    if !Bus::reachable(&shown).await {
        if !cfg.nats.embedded {
            anyhow::bail!(
                "nothing answers at {shown}: start NATS there, or pass --nats-url URL (or NATS_URL)"
            );
        }
        let bin = find_binary(cfg.nats.server_bin.as_deref(), &cfg.nats.server_config);
        eprintln!(
            "nothing answers at {shown}: starting the embedded nats-server ({}) for this command",
            cfg.nats.server_config.display()
        );
        let first = opts.servers.first().cloned().unwrap_or_default();
        embedded = Some(
            EmbeddedServer::start(&bin, &cfg.nats.server_config, &first)
                .await
                .map_err(|e| anyhow::anyhow!("{e} (nothing answers at {shown})"))?,
        );
    }
    let bus = Bus::connect_with(&opts).await?;
    Ok(Conn { bus, embedded })
}

/// The runtime config's NATS options with `${VAR}` resolved from the environment now.
pub fn nats_options(cfg: &RuntimeConfig) -> anyhow::Result<NatsConnect> {
    cfg.nats
        .connect_options(&|name| std::env::var(name).ok())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Conn {
    /// Flushes, and stops the embedded server if this command started one.
    pub async fn close(self) {
        self.bus.close().await;
        if let Some(s) = self.embedded {
            s.stop().await;
        }
    }
}

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The outbound connectors in force: the connectors folder's, each replaced by the registry's
/// definition of the same id, plus the registry's others (as `up` runs them).
pub async fn connectors_in_force(
    cfg: &RuntimeConfig,
    bus: &Bus,
) -> anyhow::Result<Vec<std::sync::Arc<crate::connector::Connector>>> {
    use crate::connector::AnyConnector;
    use std::collections::BTreeMap;
    let mut by_id: BTreeMap<String, std::sync::Arc<crate::connector::Connector>> = BTreeMap::new();
    for c in crate::runtime::load_connectors(cfg)? {
        if let AnyConnector::Outbound(c) = c {
            by_id.insert(c.id.clone(), std::sync::Arc::from(c));
        }
    }
    if let Some(kv) = bus.registry_if_exists().await? {
        for change in crate::registry::snapshot(&kv).await?.changes {
            match change {
                crate::registry::Change::Run(d) => {
                    by_id.insert(d.connector.id.clone(), d.connector.clone());
                }
                crate::registry::Change::Serve(c) => {
                    by_id.remove(&c.id);
                }
                _ => {}
            }
        }
    }
    Ok(by_id.into_values().collect())
}
