//! Secured NATS (issue 13, point 1) and streams in a cluster (point 2): hms-sync delivers
//! through nats-servers that demand user/password, a token, an NKey, a `.creds` file (operator
//! JWTs made here) and mutual TLS; wrong credentials and untrusted certificates fail at once
//! with a line that says so; `nats.replicas` on a 3-node JetStream cluster.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{eventually, free_port, publish, Setup, Target};
use crate::prod_support::{connector, hms_bin, run_cli, ConfNats, Operator, Pki};

fn config(url: &str, nats_extra: &str, extra: &str) -> String {
    format!(
        "nats:\n  url: \"{url}\"\n  embedded: false\n{nats_extra}http:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n{extra}"
    )
}

/// Starts the runtime from `dir`, publishes one event through `client` and waits for the
/// target to get it.
async fn delivers(dir: &Setup, client: async_nats::Client, target: &Target, topic: &str) {
    delivers_within(dir, client, target, topic, Duration::from_secs(10)).await
}

async fn delivers_within(
    dir: &Setup,
    client: async_nats::Client,
    target: &Target,
    topic: &str,
    within: Duration,
) {
    let rt = dir.start().await;
    let js = async_nats::jetstream::new(client);
    publish(&js, topic, json!({"id": "A-1"})).await;
    eventually(within, "the target got the event", || async {
        target.count() == 1
    })
    .await;
    assert_eq!(target.requests()[0].path, "/items/A-1");
    rt.shutdown().await;
}

#[tokio::test]
async fn user_and_password_from_the_environment() {
    let nats = ConfNats::start(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ user: hms, password: \"pw-5up3r\" }}\n", store.display())
    })
    .await;
    std::env::set_var("HMS_T_NATS_USER_A", "hms");
    std::env::set_var("HMS_T_NATS_PASS_A", "pw-5up3r");
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(
            &nats.url(),
            "  user: ${HMS_T_NATS_USER_A}\n  password: ${HMS_T_NATS_PASS_A}\n",
            "",
        ),
        &[(
            "c.yaml",
            connector("userpw.v1", "userpw.in", &target.url(), "", ""),
        )],
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("hms".into(), "pw-5up3r".into())
            .connect(nats.url())
            .await
            .unwrap();
    delivers(&dir, client, &target, "userpw.in").await;
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_never_shown() {
    let nats = ConfNats::start(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ user: urluser, password: \"url-pw-9\" }}\n", store.display())
    })
    .await;
    let target = Target::start().await;
    // A dead seed first: the second one answers.
    let dead = free_port();
    let url = format!(
        "nats://urluser:url-pw-9@127.0.0.1:{dead},nats://urluser:url-pw-9@127.0.0.1:{}",
        nats.port
    );
    let dir = Setup::from_config(
        &config(&url, "", ""),
        &[(
            "c.yaml",
            connector("urlcred.v1", "urlcred.in", &target.url(), "", ""),
        )],
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("urluser".into(), "url-pw-9".into())
            .connect(nats.url())
            .await
            .unwrap();
    delivers(&dir, client, &target, "urlcred.in").await;
    // The same URL with a wrong password: the error names the servers, not the password.
    let wrong = url.replace("url-pw-9", "wrong-pw-7");
    let dir = Setup::from_config(&config(&wrong, "", ""), &[]);
    let err = hms_sync::Runtime::start(dir.config())
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("authorization"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", nats.port)), "{text}");
    assert!(
        !text.contains("wrong-pw-7") && !text.contains("urluser:"),
        "{text}"
    );
}

#[tokio::test]
async fn token_auth() {
    let nats = ConfNats::start(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ token: \"t0k3n-abc\" }}\n", store.display())
    })
    .await;
    std::env::set_var("HMS_T_NATS_TOKEN_B", "t0k3n-abc");
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(&nats.url(), "  token: ${HMS_T_NATS_TOKEN_B}\n", ""),
        &[(
            "c.yaml",
            connector("token.v1", "token.in", &target.url(), "", ""),
        )],
    );
    let client = async_nats::ConnectOptions::with_token("t0k3n-abc".into())
        .connect(nats.url())
        .await
        .unwrap();
    delivers(&dir, client, &target, "token.in").await;
}

#[tokio::test]
async fn nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let nats = ConfNats::start(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ users: [ {{ nkey: {public} }} ] }}\n", store.display())
    })
    .await;
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(&nats.url(), "  nkeySeedFile: hms-sync.nk\n", ""),
        &[(
            "c.yaml",
            connector("nkey.v1", "nkey.in", &target.url(), "", ""),
        )],
    );
    let seed = user.seed().unwrap();
    dir.write("hms-sync.nk", &format!("{seed}\n"));
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(nats.url())
        .await
        .unwrap();
    delivers(&dir, client, &target, "nkey.in").await;
}

#[tokio::test]
async fn creds_file_of_an_operator_signed_user() {
    let port = free_port();
    let mut creds = String::new();
    let nats = ConfNats::start_on(port, |port, store| {
        let op = Operator::new(port, store);
        creds = op.creds.clone();
        op.server_conf
    })
    .await;
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(&nats.url(), "  credsFile: hms-sync.creds\n", ""),
        &[(
            "c.yaml",
            connector("creds.v1", "creds.in", &target.url(), "", ""),
        )],
    );
    let path = dir.write("hms-sync.creds", &creds);
    let client = async_nats::ConnectOptions::with_credentials_file(path)
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", nats.log()));
    delivers(&dir, client, &target, "creds.in").await;
}

#[tokio::test]
async fn mutual_tls_with_an_extra_ca() {
    let pki = Pki::new("nats");
    let server = pki.server("nats-server");
    let client_cert = pki.client("hms-sync");
    let ca = pki.ca_file();
    let nats = ConfNats::start(|port, store| {
        format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n",
            store.display(),
            server.cert.display(),
            server.key.display(),
            ca.display()
        )
    })
    .await;
    let target = Target::start().await;
    let tls = format!(
        "  tls:\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n",
        ca.display(),
        client_cert.cert.display(),
        client_cert.key.display()
    );
    let url = format!("tls://localhost:{}", nats.port);
    let dir = Setup::from_config(
        &config(&url, &tls, ""),
        &[(
            "c.yaml",
            connector("mtls.v1", "mtls.in", &target.url(), "", ""),
        )],
    );
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .add_client_certificate(client_cert.cert.clone(), client_cert.key.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .unwrap();
    delivers(&dir, client, &target, "mtls.in").await;

    // Without the CA: the server's certificate is not trusted, and the line says why.
    let no_ca = format!(
        "  tls:\n    certFile: {}\n    keyFile: {}\n",
        client_cert.cert.display(),
        client_cert.key.display()
    );
    let dir = Setup::from_config(&config(&url, &no_ca, ""), &[]);
    let err = hms_sync::Runtime::start(dir.config())
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("trusted certificate authority"), "{text}");
    assert!(text.contains(&url), "{text}");
    assert!(!text.contains("IO error"), "{text}");
}

/// `hms-sync up` with refused credentials exits non-zero within seconds, with one line that
/// says authorization failed and names the server (never the password), and does not start
/// the embedded nats-server although `nats.embedded` is on.
#[tokio::test]
async fn up_with_wrong_credentials_exits_at_once() {
    let nats = ConfNats::start(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ user: hms, password: right }}\n", store.display())
    })
    .await;
    let dir = Setup::from_config(
        &format!(
            "nats:\n  url: {}\n  embedded: true\n  serverConfig: no-such-nats.conf\n  user: hms\n  password: ${{HMS_T_WRONG_PW}}\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n",
            nats.url()
        ),
        &[],
    );
    let started = Instant::now();
    let config = dir.config_path();
    let (code, _out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["up", "--config", config.to_str().unwrap()],
            &[("HMS_T_WRONG_PW", "n0t-the-pw")],
        )
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("authorization failed"), "{err}");
    assert!(err.contains(&nats.url()), "{err}");
    assert!(!err.contains("n0t-the-pw"), "{err}");
    assert!(!err.contains("embedded"), "{err}");
    let _ = hms_bin();
}

async fn wait_jetstream(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(30), "JetStream cluster ready", || {
        let js = js.clone();
        async move {
            let made = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "READY_PROBE".into(),
                    subjects: vec!["ready.probe".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            made.is_ok() && js.delete_stream("READY_PROBE").await.is_ok()
        }
    })
    .await;
}

/// Three nats-servers with routes on loopback: `nats.replicas: 3` makes every stream and the
/// bucket hms-sync creates three-way replicated, and delivery works through the cluster.
#[tokio::test]
async fn replicas_on_a_three_node_cluster() {
    let ports = [free_port(), free_port(), free_port()];
    let routes = [free_port(), free_port(), free_port()];
    let route_list = routes
        .iter()
        .map(|r| format!("nats-route://127.0.0.1:{r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (routes, route_list) = (routes, route_list.clone());
        nodes.push(
            ConfNats::start_on(ports[i], move |port, store| {
                format!(
                    "server_name: n{i}\nhost: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\ncluster {{ name: hms, host: 127.0.0.1, port: {}, routes: [{route_list}] }}\n",
                    store.display(),
                    routes[i]
                )
            })
            .await,
        );
    }
    wait_jetstream(&nodes[0].url()).await;
    let seeds = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(&seeds, "  replicas: 3\n", ""),
        &[("c.yaml", connector("r3.v1", "r3.in", &target.url(), "", ""))],
    );
    let client = async_nats::connect(nodes[1].url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // Replicated streams and consumers elect their leaders first: allow for a loaded machine.
    delivers_within(&dir, client, &target, "r3.in", Duration::from_secs(45)).await;
    for stream in [
        "HMS_EVENTS",
        "HMS_SYNC_PARKED",
        "HMS_AUDIT",
        "KV_hms_sync_connectors",
    ] {
        let mut s = js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let replicas = info.cluster.as_ref().map(|c| c.replicas.len()).unwrap_or(0);
        assert_eq!(replicas, 2, "{stream}: two followers besides the leader");
    }
}

/// An existing stream with other settings is left as it is, with one warning line that says
/// what differs.
#[tokio::test]
async fn an_existing_stream_with_other_settings_is_left_with_one_warning() {
    let nats = crate::harness::Nats::start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HMS_EVENTS".into(),
        subjects: vec!["other.topic".into()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let target = Target::start().await;
    let dir = Setup::from_config(
        &config(&nats.url(), "", ""),
        &[(
            "c.yaml",
            connector("keep.v1", "keep.in", &target.url(), "", ""),
        )],
    );
    let config = dir.config_path();
    let mut child = std::process::Command::new(hms_bin())
        .args(["up", "--config", config.to_str().unwrap()])
        .env_remove("NATS_URL")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            l.lock().unwrap().push(line);
        }
    });
    eventually(Duration::from_secs(15), "hms-sync up is running", || {
        let lines = lines.clone();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("hms-sync up:"))
        }
    })
    .await;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let lines = lines.lock().unwrap().clone();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("stream HMS_EVENTS exists with other settings"))
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert!(warnings[0].contains("storage Memory"), "{}", warnings[0]);
    let mut s = js.get_stream("HMS_EVENTS").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert!(info.config.subjects.contains(&"keep.in".to_string()));
}
