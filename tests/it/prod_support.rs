//! Helpers of the production tests: nats-server processes with a config of their own, TLS
//! material made with rcgen, NATS operator/account/user JWTs, an HTTPS target, a CONNECT
//! proxy, and the `hms-sync` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{code_and_text, eventually, free_port, nats_server_bin};

/// A CA, and certificates it signed, written as PEM files in a folder of their own.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and key written as files.
#[derive(Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, name: &str) -> CertFiles {
        self.issue(name, true)
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> CertFiles {
        self.issue(name, false)
    }

    fn issue(&self, name: &str, server: bool) -> CertFiles {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&files.cert, &files.cert_pem).unwrap();
        std::fs::write(&files.key, &files.key_pem).unwrap();
        files
    }
}

/// A nats-server started with a config file of the test's own (free port, own store dir),
/// killed on drop.
pub struct ConfNats {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl ConfNats {
    /// Starts nats-server with the config `conf(port, store_dir)` returns; waits until its
    /// port accepts connections.
    pub async fn start(conf: impl FnOnce(u16, &Path) -> String) -> ConfNats {
        let port = free_port();
        Self::start_on(port, conf).await
    }

    pub async fn start_on(port: u16, conf: impl FnOnce(u16, &Path) -> String) -> ConfNats {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, conf(port, &store)).unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let server = ConfNats { child, port, dir };
        eventually(
            Duration::from_secs(15),
            "nats-server listens",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// What the server logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for ConfNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, signed by `signer`.
pub fn jwt(signer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jti: String = (0..26)
        .map(|_| (b'A' + rand::random::<u8>() % 26) as char)
        .collect();
    let claims = serde_json::json!({
        "jti": jti, "iat": iat, "iss": signer.public_key(), "name": name, "sub": subject,
        "nats": nats,
    });
    let payload = b64(claims.to_string());
    let sig = signer
        .sign(format!("{header}.{payload}").as_bytes())
        .unwrap();
    format!("{header}.{payload}.{}", b64(sig))
}

/// Decentralised auth: an operator, a system account, an account with JetStream and a user of
/// it. `server_conf(port, store)` is a nats-server config trusting them; `creds` the user's
/// `.creds` text.
pub struct Operator {
    pub server_conf: String,
    pub creds: String,
}

impl Operator {
    pub fn new(port: u16, store: &Path) -> Operator {
        let op = nkeys::KeyPair::new_operator();
        let sys = nkeys::KeyPair::new_account();
        let acc = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let op_jwt = jwt(
            &op,
            &op.public_key(),
            "test-operator",
            serde_json::json!({"type": "operator", "version": 2}),
        );
        let limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
            "max_ack_pending": -1, "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1
        });
        let sys_jwt = jwt(
            &op,
            &sys.public_key(),
            "SYS",
            serde_json::json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}, "type": "account", "version": 2}),
        );
        let acc_jwt = jwt(
            &op,
            &acc.public_key(),
            "HMS",
            serde_json::json!({"limits": limits, "type": "account", "version": 2}),
        );
        let user_jwt = jwt(
            &acc,
            &user.public_key(),
            "hms-sync",
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
        );
        let server_conf = format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\noperator: {op_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {sys_jwt}\n  {acc_pub}: {acc_jwt}\n}}\n",
            store.display(),
            sys = sys.public_key(),
            acc_pub = acc.public_key(),
        );
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n*************************************************************\n",
            user.seed().unwrap()
        );
        Operator { server_conf, creds }
    }
}

/// One request an [`HttpsTarget`] received.
#[derive(Debug, Clone)]
pub struct TlsRequest {
    pub head: String,
    pub body: Vec<u8>,
    /// The client presented a certificate.
    pub client_cert: bool,
}

/// A loopback HTTPS server (rustls): answers `200 {}` to every request and records it;
/// with `client_ca` it demands a client certificate signed by that CA.
#[derive(Clone)]
pub struct HttpsTarget {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<TlsRequest>>>,
    /// TLS handshakes that failed, and why.
    pub refused: Arc<Mutex<Vec<String>>>,
}

impl HttpsTarget {
    pub async fn start(server: &CertFiles, client_ca: Option<&Pki>) -> HttpsTarget {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca.ca_file()).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = HttpsTarget {
            addr,
            log: Arc::default(),
            refused: Arc::default(),
        };
        let t = target.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, t) = (acceptor.clone(), t.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            t.refused.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    if let Some((head, body)) = read_request(&mut tls).await {
                        t.log.lock().unwrap().push(TlsRequest {
                            head,
                            body,
                            client_cert,
                        });
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        target
    }

    /// `https://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn requests(&self) -> Vec<TlsRequest> {
        self.log.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (head and a Content-Length body).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// One tunnel a [`ConnectProxy`] opened.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// `host:port` of the CONNECT line.
    pub target: String,
    pub proxy_authorization: Option<String>,
}

/// A loopback HTTP proxy that serves CONNECT only (tunnels to the named host and port).
#[derive(Clone)]
pub struct ConnectProxy {
    pub addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<Tunnel>>>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = ConnectProxy {
            addr,
            tunnels: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let p = p.clone();
                tokio::spawn(async move {
                    let Some((head, _)) = read_request(&mut client).await else {
                        return;
                    };
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or_default().to_string();
                    let auth = lines.find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("proxy-authorization")
                            .then(|| v.trim().to_string())
                    });
                    let mut parts = first.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                        let _ = client
                            .write_all(
                                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    };
                    p.tunnels.lock().unwrap().push(Tunnel {
                        target: target.to_string(),
                        proxy_authorization: auth,
                    });
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        proxy
    }

    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.lock().unwrap().clone()
    }
}

/// The hms-sync binary built for these tests.
pub fn hms_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hms-sync"))
}

/// `hms-sync ARGS...` run to its end: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(hms_bin());
    cmd.args(args).env_remove("NATS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run hms-sync");
    code_and_text(&out)
}

/// A plain outbound connector to `base` (`PUT {base}/items/{id}`), with extra lines under
/// `map.to` and at the top level.
pub fn connector(id: &str, topic: &str, base: &str, to_extra: &str, extra: &str) -> String {
    format!(
        "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\nmap:\n  to:\n    url: \"{base}/items/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n{to_extra}{extra}"
    )
}
