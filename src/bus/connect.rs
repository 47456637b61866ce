//! Connecting to NATS: seed URLs, credentials (user/password, token, NKey, `.creds`), TLS with
//! an extra CA and a client certificate, and failures that say what went wrong where
//! (authorization, certificate, nothing answering), never with a secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions};

use super::{Bus, BusError, BusErrorKind};
use crate::config::{NatsAuth, NatsConnect};
use crate::tls;

/// How long a first connection may take while servers do not answer.
const FIRST_CONNECT: Duration = Duration::from_secs(5);

impl Bus {
    /// Connects to the seed servers of `opts` (any of them; the client then learns the rest of
    /// the cluster and reconnects by itself). Refused credentials or an untrusted certificate
    /// fail at once, naming the server; servers that do not answer are tried for 5 s.
    pub async fn connect_with(opts: &NatsConnect) -> Result<Bus, BusError> {
        let deadline = tokio::time::Instant::now() + FIRST_CONNECT;
        let events = Events::new();
        loop {
            match try_connect(opts, &opts.servers, &events).await {
                Ok(client) => {
                    let js = jetstream::new(client.clone());
                    let _ = events.own.set(client.clone());
                    return Ok(Bus {
                        client,
                        js,
                        replicas: opts.replicas,
                        _own: events.own,
                        reconnects: events.reconnects,
                    });
                }
                Err(e)
                    if e.kind == BusErrorKind::NotConnected
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if opts.servers.len() > 1 && e.kind != BusErrorKind::NotConnected => {
                    // Which server refused? Ask each alone, to name it.
                    return Err(diagnose(opts).await.unwrap_or(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether something answers at any of `urls` (a comma-separated list; one quick try each,
    /// no retries, credentials in the URLs ignored).
    pub async fn reachable(urls: &str) -> bool {
        let servers = match crate::config::split_servers(urls) {
            Ok((s, _)) => s,
            Err(_) => vec![urls.to_string()],
        };
        let tries = servers.iter().map(|s| async move {
            let addr = host_port(s);
            matches!(
                tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr)
                )
                .await,
                Ok(Ok(_))
            )
        });
        futures::future::join_all(tries)
            .await
            .into_iter()
            .any(|ok| ok)
    }
}

/// What the client's event callback acts on: reconnections counted (pulls re-create their
/// requests), and a server going into lame-duck mode, which closes its clients within its
/// lame-duck duration (30 s or more): the client moves to another server at once instead.
struct Events {
    /// The client, for the callback, held weakly by it (no cycle: the connection ends when
    /// the last `Bus` is dropped).
    own: Arc<OnceLock<async_nats::Client>>,
    reconnected: tokio::sync::watch::Sender<u64>,
    reconnects: tokio::sync::watch::Receiver<u64>,
    connected_once: Arc<AtomicBool>,
}

impl Events {
    fn new() -> Events {
        let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
        Events {
            own: Arc::default(),
            reconnected,
            reconnects,
            connected_once: Arc::default(),
        }
    }

    fn callback(
        &self,
    ) -> impl Fn(
        async_nats::Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>
           + Send
           + Sync
           + 'static {
        let weak: Weak<OnceLock<async_nats::Client>> = Arc::downgrade(&self.own);
        let (reconnected, once) = (self.reconnected.clone(), self.connected_once.clone());
        move |event| {
            let (weak, reconnected, once) = (weak.clone(), reconnected.clone(), once.clone());
            Box::pin(async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS: connected");
                        if once.swap(true, Ordering::SeqCst) {
                            reconnected.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::LameDuckMode => {
                        tracing::warn!(
                            "NATS: the server went into lame-duck mode: moving to another server"
                        );
                        let client = weak.upgrade().and_then(|c| c.get().cloned());
                        if let Some(c) = client {
                            if let Err(e) = c.force_reconnect().await {
                                tracing::warn!("NATS: reconnect: {e}");
                            }
                        }
                    }
                    other => tracing::warn!("NATS: {other}"),
                }
            })
        }
    }
}

/// `host:port` of a NATS URL without credentials (port 4222 when none is written).
fn host_port(server: &str) -> String {
    let rest = server.split("://").last().unwrap_or(server);
    let rest = rest.split('/').next().unwrap_or(rest);
    let has_port = match rest.rsplit_once(':') {
        Some((h, p)) => !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty(),
        None => false,
    };
    if has_port && !(rest.starts_with('[') && rest.ends_with(']')) {
        rest.to_string()
    } else {
        format!("{rest}:4222")
    }
}

/// Tries each server of `opts` alone; the first that fails for another reason than not
/// answering gives the error.
async fn diagnose(opts: &NatsConnect) -> Option<BusError> {
    for s in &opts.servers {
        match try_connect(opts, std::slice::from_ref(s), &Events::new()).await {
            Err(e) if e.kind != BusErrorKind::NotConnected => return Some(e),
            Ok(c) => {
                let _ = c.drain().await;
            }
            Err(_) => {}
        }
    }
    None
}

/// One connection attempt to `servers`.
async fn try_connect(
    opts: &NatsConnect,
    servers: &[String],
    events: &Events,
) -> Result<async_nats::Client, BusError> {
    let shown = servers.join(",");
    let context = format!("connect {shown}");
    let fail = |kind: BusErrorKind, message: String| BusError {
        kind,
        context: context.clone(),
        message,
    };
    let options = options(opts, events)
        .await
        .map_err(|m| fail(BusErrorKind::Other, m))?;
    let err = match options.connect(servers).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let tls_why = tls::explain(&err);
    Err(match (err.kind(), tls_why) {
        (ConnectErrorKind::AuthorizationViolation, _) => fail(
            BusErrorKind::Authorization,
            format!(
                "authorization failed: {shown} refused {} (check the user, password, token or credentials and their permissions)",
                opts.auth.describe()
            ),
        ),
        (ConnectErrorKind::Authentication, _) => fail(
            BusErrorKind::Authorization,
            format!(
                "authorization failed: could not sign {shown}'s challenge with {} (not a valid NKey seed?)",
                opts.auth.describe()
            ),
        ),
        (_, Some(why)) => fail(
            BusErrorKind::Other,
            format!("TLS with {shown} failed: {}", why.replace("TLS: ", "")),
        ),
        (ConnectErrorKind::Tls, None) => fail(BusErrorKind::Other, format!("TLS with {shown} failed: {err}")),
        (ConnectErrorKind::ServerParse, None) => fail(BusErrorKind::Other, err.to_string()),
        _ => fail(
            BusErrorKind::NotConnected,
            format!("nothing answers ({err})"),
        ),
    })
}

/// The client options: name, timeouts, the event log, credentials and TLS.
async fn options(opts: &NatsConnect, events: &Events) -> Result<ConnectOptions, String> {
    let mut o = match &opts.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::new().user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::Token(t) => ConnectOptions::new().token(t.expose().to_string()),
        NatsAuth::NKeySeedFile(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("nats.nkeySeedFile {}: cannot read: {e}", path.display()))?;
            let seed = seed
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with('S') && !l.is_empty())
                .ok_or_else(|| {
                    format!(
                        "nats.nkeySeedFile {}: no NKey seed (a line starting with S) in it",
                        path.display()
                    )
                })?
                .to_string();
            ConnectOptions::new().nkey(seed)
        }
        NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| format!("nats.credsFile {}: {e}", path.display()))?,
    };
    o = o
        .name("hms-sync")
        .connection_timeout(Duration::from_secs(2))
        .event_callback(events.callback());
    let tls = &opts.tls;
    let extra: Vec<&std::path::Path> = tls.ca_file.iter().map(|p| p.as_path()).collect();
    let roots = tls::root_store(&extra).map_err(|e| format!("nats.tls: {e}"))?;
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => {
            Some(tls::ClientIdentity::load(c, k).map_err(|e| format!("nats.tls: {e}"))?)
        }
        (None, None) => None,
        _ => return Err("nats.tls: certFile and keyFile go together".into()),
    };
    let config = tls::client_config(std::sync::Arc::new(roots), identity.as_ref())
        .map_err(|e| format!("nats.tls: {e}"))?;
    o = o.tls_client_config(config);
    if opts.require_tls {
        o = o.require_tls(true);
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_and_port_of_a_server() {
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("tls://n1"), "n1:4222");
        assert_eq!(host_port("n1:5000"), "n1:5000");
        assert_eq!(host_port("nats://[::1]:4223"), "[::1]:4223");
        assert_eq!(host_port("nats://[::1]"), "[::1]:4222");
    }
}
