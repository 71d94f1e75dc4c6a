//! Client certificates and `allow`: who gets through, who is refused in the handshake (and
//! that nothing reaches the app then), what the log and `/metrics` say about it; several
//! listeners, the PROXY protocol, http mode's hand-off, and the trust bundle reloading.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls::HandshakeKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tls_sidecar::{ListenerConfig, SidecarConfig};
use tls_sidecar_config::{ClientAuth, HostPort, Mode, Selector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `config` with its first listener asking for client certificates under `allow`, trusting
/// `trust`, running as the app `me`.
fn with_rules(
    mut config: SidecarConfig,
    trust: &TrustDir,
    client_auth: ClientAuth,
    allow: &[&str],
    me: &Identity,
) -> SidecarConfig {
    config.listeners[0].client_auth = client_auth;
    config.listeners[0].allow = allow
        .iter()
        .map(|s| s.parse::<Selector>().unwrap())
        .collect();
    config.trust = trust.config();
    config.app = me.vcap_application();
    config
}

/// A second listener on 127.0.0.1:0 forwarding to `app`.
fn another_listener(app: SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(
        loopback(0),
        HostPort {
            host: "127.0.0.1".to_owned(),
            port: app.port(),
        },
    )
}

/// Connects and, without sending anything, waits for the server to end the connection:
/// `Err(text)` when it refused (an alert shows up on the first read in TLS 1.3, where the
/// client finishes its handshake first), `Ok(())` when the connection stayed up.
async fn refusal(addr: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> String {
    let mut tls = match connect_with(addr, config).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buf = [0u8; 1];
    match tokio::time::timeout(DEADLINE, tls.read(&mut buf)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(n)) => panic!("the connection was not refused (read {n} bytes)"),
        Err(_) => panic!("the connection was not refused within the deadline"),
    }
}

fn series(name: &str, port: u16) -> String {
    format!("{name}{{listener=\"{port}\"}}")
}

fn failures(port: u16, reason: &str) -> String {
    format!("tls_sidecar_handshake_failures_total{{listener=\"{port}\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_allowed_app_certificate_passes_and_its_identity_is_logged() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let caller = pki.client(&Identity::random());
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let allow = format!("cf:app:{}", caller.identity.app);
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[&allow],
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let answer = exchange(addrs.tls, mtls_client(&caller, &[])).await;
    assert_eq!(answer.unwrap(), b"ping");
    let line = log_line(&["connection closed", &caller.identity.app, &caller.guid]).await;
    for part in [&caller.identity.space, &caller.identity.org] {
        assert!(line.contains(part.as_str()), "{line}");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_the_same_space_passes_with_cf_same_space() {
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let neighbour = pki.client(&me.same_space());
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &["cf:same-space"],
        &me,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let answer = exchange(addrs.tls, mtls_client(&neighbour, &[])).await;
    assert_eq!(answer.unwrap(), b"ping");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_from_another_space_or_org_get_an_access_denied_alert_and_nothing_reaches_the_app()
{
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let (app, app_connections) = counting_echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &["cf:same-space"],
        &me,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    for outsider in [me.same_org(), Identity::random()] {
        let caller = pki.client(&outsider);
        let e = refusal(addrs.tls, mtls_client(&caller, &[])).await;
        assert!(e.contains("AccessDenied"), "{e}");
        let line = log_line(&["access denied", &outsider.app, "is not allowed"]).await;
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&caller.guid), "{line}");
    }
    let port = addrs.tls.port();
    until_metric(addrs.admin, &failures(port, "denied"), "2").await;
    until_metric(
        addrs.admin,
        &series("tls_sidecar_authorization_denials_total", port),
        "2",
    )
    .await;
    until_metric(
        addrs.admin,
        &series("tls_sidecar_connections_active", port),
        "0",
    )
    .await;
    assert_eq!(
        app_connections.load(Ordering::SeqCst),
        0,
        "a refused caller must not reach the app"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_as_unknown_ca() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let stranger = Pki::other().client(&Identity::random());
    let (app, app_connections) = counting_echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[],
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let e = refusal(addrs.tls, mtls_client(&stranger, &[])).await;
    assert!(e.contains("UnknownCA"), "{e}");
    let port = format!("listener={}", addrs.tls.port());
    log_line(&["connection closed", &port, "unknown CA"]).await;

    // Another foundation's CAs have the same names as ours: the signature gives them away.
    let namesake = Pki::generate().client(&Identity::random());
    let e = refusal(addrs.tls, mtls_client(&namesake, &[])).await;
    assert!(e.contains("DecryptError"), "{e}");
    log_line(&["connection closed", &port, "bad or unsupported signature"]).await;
    until_metric(
        addrs.admin,
        &failures(addrs.tls.port(), "client_cert_invalid"),
        "2",
    )
    .await;
    assert_eq!(app_connections.load(Ordering::SeqCst), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_naming_its_expiry() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let expired = pki.issue(&me.same_space(), KeyKind::Ec, EXPIRED);
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &["cf:same-space"],
        &me,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let e = refusal(addrs.tls, mtls_client(&expired, &[])).await;
    assert!(e.contains("CertificateExpired"), "{e}");
    let port = format!("listener={}", addrs.tls.port());
    log_line(&[
        "connection closed",
        &port,
        "expired at 2020-01-02T00:00:00Z",
    ])
    .await;
    until_metric(
        addrs.admin,
        &failures(addrs.tls.port(), "client_cert_invalid"),
        "1",
    )
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_a_required_listener_refuses_and_an_optional_one_serves() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let mut config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[],
        &Identity::random(),
    );
    let mut optional = another_listener(app);
    optional.client_auth = ClientAuth::Optional;
    config.listeners.push(optional);
    let running = tls_sidecar::start(config).await.unwrap();
    let admin = running.admin_addr().unwrap();
    let [required, optional] = [0, 1].map(|i| running.tls_addrs()[i].unwrap());
    until_ready(admin).await;

    let e = refusal(required, client_config(ALL_VERSIONS)).await;
    assert!(!e.is_empty());
    let port = format!("listener={}", required.port());
    log_line(&["connection closed", &port, "no client certificate"]).await;
    until_metric(
        admin,
        &failures(required.port(), "client_cert_missing"),
        "1",
    )
    .await;

    let anonymous = exchange(optional, client_config(ALL_VERSIONS)).await;
    assert_eq!(anonymous.unwrap(), b"ping");
    // Optional still verifies a certificate that is sent.
    let known = pki.client(&Identity::random());
    assert_eq!(
        exchange(optional, mtls_client(&known, &[])).await.unwrap(),
        b"ping"
    );
    let stranger = Pki::other().client(&Identity::random());
    let e = refusal(optional, mtls_client(&stranger, &[])).await;
    assert!(e.contains("UnknownCA"), "{e}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_from_another_listener_cannot_skip_this_listeners_rules() {
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let caller = pki.client(&Identity::random());
    // Listener 0 lets any verified caller in; listener 1 only some other app.
    let mut config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[],
        &Identity::random(),
    );
    let mut strict = another_listener(app);
    strict.allow = vec![format!("cf:app:{}", new_guid()).parse().unwrap()];
    strict.client_auth = ClientAuth::Required;
    config.listeners.push(strict);
    let running = tls_sidecar::start(config).await.unwrap();
    let admin = running.admin_addr().unwrap();
    let [open, strict] = [0, 1].map(|i| running.tls_addrs()[i].unwrap());
    until_ready(admin).await;

    let client = mtls_client(&caller, &[]);
    let mut first = connect_with(open, client.clone()).await.unwrap();
    assert_eq!(echo(&mut first, b"ticket").await, b"ticket");
    drop(first);
    let again = connect_with(open, client.clone()).await.unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the ticket works where it was issued"
    );
    drop(again);

    let e = refusal(strict, client).await;
    assert!(
        e.contains("AccessDenied"),
        "a full handshake, refused by the rules: {e}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_listener_sends_the_v2_header_before_the_clients_first_byte() {
    let (header_tx, mut header_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let upstream = TcpListener::bind(loopback(0)).await.unwrap();
    let app = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let tx = header_tx.clone();
            tokio::spawn(async move {
                let mut header = vec![0u8; 28];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                let _ = tx.send(header);
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let creds = Creds::with(&Pki::shared().ec_leaf());
    let mut config = sidecar_config(&creds, app);
    config.listeners[0].proxy_protocol = true;
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    let client = tls.get_ref().0.local_addr().unwrap();
    assert_eq!(echo(&mut tls, b"first bytes").await, b"first bytes");
    let header = header_rx.recv().await.unwrap();
    assert_eq!(
        header,
        tls_sidecar::proxy_protocol::header(client, addrs.tls)
    );
    assert_eq!(header[..12], tls_sidecar::proxy_protocol::SIGNATURE);
    drop(tls);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_negotiates_alpn_and_a_denied_caller_gets_403_without_reaching_the_app() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (app, app_connections) = counting_echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let allowed = pki.client(&Identity::random());
    let outsider = pki.client(&Identity::random());
    let allow = format!("cf:app:{}", allowed.identity.app);
    let mut config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[&allow],
        &Identity::random(),
    );
    config.listeners[0].mode = Mode::Http;
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let h2 = connect_with(addrs.tls, mtls_client(&allowed, &["h2", "http/1.1"]))
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(h2);

    // In http mode the handshake succeeds and the HTTP side answers 403.
    let mut tls = connect_with(addrs.tls, mtls_client(&outsider, &["http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let line = log_line(&["access denied", &outsider.identity.app]).await;
    assert!(line.contains("WARN"), "{line}");
    log_line(&["connection closed", &outsider.guid, "http/1.1"]).await;
    assert_eq!(app_connections.load(Ordering::SeqCst), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_ca_added_to_the_trust_directory_is_accepted_without_a_restart() {
    capture_logs();
    let pki = Pki::shared();
    let other = Pki::other();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let newcomer = other.client(&Identity::random());
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        ClientAuth::Required,
        &[],
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let e = refusal(addrs.tls, mtls_client(&newcomer, &[])).await;
    assert!(e.contains("UnknownCA"), "{e}");

    trust.write("trusted-ca-2.crt", &other.root_pem);
    eventually("the new CA to be trusted", || async {
        exchange(addrs.tls, mtls_client(&newcomer, &[]))
            .await
            .is_ok()
    })
    .await;
    let dir = trust.dir.path().display().to_string();
    log_line(&["trust bundle loaded", "anchors=2", &dir]).await;
    // The old CA is still trusted.
    let old = pki.client(&Identity::random());
    assert_eq!(
        exchange(addrs.tls, mtls_client(&old, &[])).await.unwrap(),
        b"ping"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_and_bytes_and_show_the_certificate_expiry() {
    let leaf = Pki::shared().ec_leaf();
    let app = echo_app().await;
    let creds = Creds::with(&leaf);
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;
    let port = addrs.tls.port();

    let mut tls = connect(addrs.tls).await.unwrap();
    assert_eq!(echo(&mut tls, b"12345").await, b"12345");
    until_metric(
        addrs.admin,
        &series("tls_sidecar_connections_active", port),
        "1",
    )
    .await;
    drop(tls);
    until_metric(
        addrs.admin,
        &series("tls_sidecar_connections_active", port),
        "0",
    )
    .await;
    for (name, value) in [
        ("tls_sidecar_connections_total", "1"),
        ("tls_sidecar_received_bytes_total", "5"),
        ("tls_sidecar_sent_bytes_total", "5"),
        ("tls_sidecar_connections_refused_total", "0"),
    ] {
        assert_eq!(
            metric(addrs.admin, &series(name, port)).await.as_deref(),
            Some(value),
            "{name}"
        );
    }
    let expiry: i64 = metric(
        addrs.admin,
        "tls_sidecar_certificate_expiry_timestamp_seconds",
    )
    .await
    .unwrap()
    .parse()
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expiry > now && expiry <= now + 86_400 + 60, "{expiry}");
    assert_eq!(
        metric(
            addrs.admin,
            "tls_sidecar_certificate_reloads_total{result=\"success\"}"
        )
        .await
        .as_deref(),
        Some("1")
    );

    let mut raw = TcpStream::connect(addrs.admin).await.unwrap();
    raw.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    raw.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("Content-Type: text/plain; version=0.0.4"),
        "{response}"
    );
    running.shutdown().await;
}
