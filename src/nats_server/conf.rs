//! Pieces of nats-server configuration text: TLS, auth, cluster, lame duck.
//!
//! Join them and pass them to [`super::NatsServerBuilder::config_text`].

use std::path::Path;
use std::time::Duration;

/// A quoted string for nats-server's configuration syntax.
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A `tls {}` block: the server's certificate and key, optionally a CA to verify clients
/// with (`verify: true` asks every client for a certificate: mutual TLS).
pub fn tls(cert: &Path, key: &Path, ca: Option<&Path>, verify: bool) -> String {
    let mut s = format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n",
        path(cert),
        path(key)
    );
    if let Some(ca) = ca {
        s.push_str(&format!("  ca_file: {}\n", path(ca)));
    }
    if verify {
        s.push_str("  verify: true\n");
    }
    s.push_str("}\n");
    s
}

/// User/password auth: an `authorization {}` block with these users.
pub fn users(users: &[(&str, &str)]) -> String {
    let list: Vec<String> = users
        .iter()
        .map(|(u, p)| format!("    {{ user: {}, password: {} }}", quote(u), quote(p)))
        .collect();
    format!(
        "authorization {{\n  users = [\n{}\n  ]\n}}\n",
        list.join("\n")
    )
}

/// Token auth: an `authorization {}` block with one token.
pub fn token(token: &str) -> String {
    format!("authorization {{\n  token: {}\n}}\n", quote(token))
}

/// NKey auth: an `authorization {}` block admitting these user public keys (`U...`).
pub fn nkeys(public_keys: &[&str]) -> String {
    let list: Vec<String> = public_keys
        .iter()
        .map(|k| format!("    {{ nkey: {} }}", quote(k)))
        .collect();
    format!(
        "authorization {{\n  users = [\n{}\n  ]\n}}\n",
        list.join("\n")
    )
}

/// Decentralised (operator JWT) auth with a memory resolver: the operator's JWT file, the
/// system account's public key, and each account's (public key, JWT) preloaded.
pub fn operator(operator_jwt: &Path, system_account: &str, accounts: &[(&str, &str)]) -> String {
    let preload: Vec<String> = accounts
        .iter()
        .map(|(k, jwt)| format!("  {k}: {}", quote(jwt)))
        .collect();
    format!(
        "operator: {}\nsystem_account: {system_account}\nresolver: MEMORY\nresolver_preload: {{\n{}\n}}\n",
        path(operator_jwt),
        preload.join("\n")
    )
}

/// A `cluster {}` block: this node listens for routes on `listen_port` and routes to every
/// port of `routes` on 127.0.0.1 (its own is ignored by the server).
pub fn cluster(name: &str, listen_port: u16, routes: &[u16]) -> String {
    let list: Vec<String> = routes
        .iter()
        .map(|p| format!("    nats-route://127.0.0.1:{p}"))
        .collect();
    format!(
        "cluster {{\n  name: {}\n  listen: 127.0.0.1:{listen_port}\n  routes: [\n{}\n  ]\n}}\n",
        quote(name),
        list.join("\n")
    )
}

fn go_duration(d: Duration) -> String {
    quote(&format!("{}ms", d.as_millis()))
}

/// Lame-duck timings: after SIGUSR2 the server closes its clients over `duration`, starting
/// after `grace`. nats-server refuses a `duration` under 30 s (its configuration check says so).
pub fn lame_duck(duration: Duration, grace: Duration) -> String {
    format!(
        "lame_duck_duration: {}\nlame_duck_grace_period: {}\n",
        go_duration(duration),
        go_duration(grace)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_as_nats_server_configuration() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(token("s3cret"), "authorization {\n  token: \"s3cret\"\n}\n");
        assert!(users(&[("a", "b")]).contains("{ user: \"a\", password: \"b\" }"));
        assert!(cluster("c", 1, &[1, 2]).contains("nats-route://127.0.0.1:2"));
        assert!(tls(
            Path::new("c.pem"),
            Path::new("k.pem"),
            Some(Path::new("ca.pem")),
            true
        )
        .contains("verify: true"));
        assert!(lame_duck(Duration::from_secs(3), Duration::from_secs(1))
            .contains("lame_duck_duration: \"3000ms\""));
    }
}
