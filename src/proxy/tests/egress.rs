//! Egress: the app connects in plaintext to a loopback listener and the sidecar carries the
//! connection over mutual TLS to another app's ingress sidecar (Diego-shaped certificates made
//! with openssl), checking the server's chain and then its identity: right identity forwards,
//! wrong identity, unknown CA and a hostname mismatch refuse; several addresses are tried in
//! turn; a rotated client certificate is presented on new connections.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tls_sidecar::{EgressConfig, EgressProxyConfig, SidecarConfig};
use tls_sidecar_config::{ClientAuth, HostPort, Mode, ProxyTarget, Selector};
use tls_sidecar_testkit::LeafSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An ingress sidecar for the app `me` serving `leaf`, forwarding to `app`, requiring client
/// certificates from the shared PKI and admitting only `allow`.
fn server(
    creds: &Creds,
    app: SocketAddr,
    trust: &TrustDir,
    me: &Identity,
    allow: &[&str],
) -> SidecarConfig {
    let mut config = sidecar_config(creds, app);
    config.listeners[0].client_auth = ClientAuth::Required;
    config.listeners[0].allow = allow
        .iter()
        .map(|s| s.parse::<Selector>().unwrap())
        .collect();
    config.trust = trust.config();
    config.app = me.vcap_application();
    config
}

/// A sidecar with no TLS listener and `entries` as its egress, presenting the pair in
/// `creds`, trusting `trust`.
fn client(
    creds: &Creds,
    trust: &TrustDir,
    me: &Identity,
    entries: Vec<EgressConfig>,
) -> SidecarConfig {
    let mut config = sidecar_config(creds, loopback(9));
    config.listeners.clear();
    config.egress = entries;
    config.trust = trust.config();
    config.app = me.vcap_application();
    config
}

/// An egress entry to `127.0.0.1:<port of target>` expecting `expect`.
fn entry(name: &str, target: SocketAddr, expect: &[&str]) -> EgressConfig {
    EgressConfig {
        name: name.to_owned(),
        bind: loopback(0),
        target: HostPort {
            host: "127.0.0.1".to_owned(),
            port: target.port(),
        },
        expect: expect
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect(),
        addrs: None,
    }
}

/// Two apps of the shared PKI, trusting its root: `me` (a client leaf) calls `them` (an EC
/// leaf, valid for a day).
struct TwoApps {
    trust: TrustDir,
    me: Identity,
    them: Identity,
    my_leaf: Leaf,
    their_leaf: Leaf,
    my_creds: Creds,
    their_creds: Creds,
}

impl TwoApps {
    fn new() -> TwoApps {
        let pki = Pki::shared();
        let (me, them) = (Identity::random(), Identity::random());
        let my_leaf = pki.client(&me);
        let their_leaf = pki.issue(&them, KeyKind::Ec, Validity::OneDay);
        TwoApps {
            trust: TrustDir::with(&[&pki.root_pem]),
            my_creds: Creds::with(&my_leaf),
            their_creds: Creds::with(&their_leaf),
            me,
            them,
            my_leaf,
            their_leaf,
        }
    }
}

/// What the app gets back through the egress listener at `addr` after sending `message` and
/// half-closing: the echo, or nothing when the sidecar closed the connection.
async fn through(addr: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut plain = TcpStream::connect(addr).await.unwrap();
    // The sidecar may already have closed (refused); what matters is what comes back.
    let _ = plain.write_all(message).await;
    let _ = plain.shutdown().await;
    let mut back = Vec::new();
    match tokio::time::timeout(DEADLINE, plain.read_to_end(&mut back)).await {
        Ok(_) => back,
        Err(_) => panic!("the egress connection neither answered nor closed"),
    }
}

struct Started {
    running: tls_sidecar::Running,
    admin: SocketAddr,
}

async fn start(config: SidecarConfig) -> Started {
    let running = tls_sidecar::start(config).await.unwrap();
    let admin = running.admin_addr().unwrap();
    until_ready(admin).await;
    Started { running, admin }
}

impl Started {
    fn tls(&self) -> SocketAddr {
        self.running.tls_addrs()[0].unwrap()
    }

    fn egress(&self, i: usize) -> SocketAddr {
        self.running.egress_addrs()[i].unwrap()
    }
}

fn egress_series(family: &str, name: &str) -> String {
    format!("tls_sidecar_egress_{family}{{egress=\"{name}\"}}")
}

fn egress_failures(name: &str, reason: &str) -> String {
    format!("tls_sidecar_egress_failures_total{{egress=\"{name}\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_connection_presents_this_instances_identity_to_a_server_with_the_expected_identity()
 {
    capture_logs();
    let t = TwoApps::new();
    let allow = format!("cf:app:{}", t.me.app);
    let backend = start(server(
        &t.their_creds,
        echo_app().await,
        &t.trust,
        &t.them,
        &[&allow],
    ))
    .await;
    let expect = format!("cf:app:{}", t.them.app);
    let sidecar = start(client(
        &t.my_creds,
        &t.trust,
        &t.me,
        vec![entry("backend", backend.tls(), &[&expect])],
    ))
    .await;

    assert_eq!(through(sidecar.egress(0), b"ping").await, b"ping");

    // The server saw this app's instance identity; the client logged the server's.
    let seen = log_line(&["connection closed", &t.me.app, &t.my_leaf.guid]).await;
    assert!(
        seen.contains(&t.me.space) && seen.contains(&t.me.org),
        "{seen}"
    );
    let line = log_line(&["egress connection closed", &t.them.app, &t.their_leaf.guid]).await;
    assert!(
        line.contains("bytes_sent=4") && line.contains("bytes_received=4"),
        "{line}"
    );
    until_metric(
        sidecar.admin,
        &egress_series("connections_total", "backend"),
        "1",
    )
    .await;
    until_metric(
        sidecar.admin,
        &egress_series("sent_bytes_total", "backend"),
        "4",
    )
    .await;
    until_metric(
        sidecar.admin,
        &egress_series("received_bytes_total", "backend"),
        "4",
    )
    .await;
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_refuses_a_server_with_another_identity_and_closes_the_apps_connection() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them, expected) = (Identity::random(), Identity::random(), Identity::random());
    let (app, reached) = counting_echo_app().await;
    let their_leaf = pki.issue(&them, KeyKind::Ec, Validity::OneDay);
    let backend = start(server(
        &Creds::with(&their_leaf),
        app,
        &trust,
        &them,
        &["cf:any"],
    ))
    .await;
    let expect = format!("cf:app:{}", expected.app);
    let my_creds = Creds::with(&pki.client(&me));
    let sidecar = start(client(
        &my_creds,
        &trust,
        &me,
        vec![entry("wrong", backend.tls(), &[&expect])],
    ))
    .await;

    assert_eq!(
        through(sidecar.egress(0), b"secret").await,
        b"",
        "closed without an answer"
    );

    let line = log_line(&["egress connection refused", &expected.app, &their_leaf.guid]).await;
    assert!(
        line.contains(&format!(
            "wrong identity: expected cf:app:{} got app={}",
            expected.app, them.app
        )),
        "{line}"
    );
    assert!(
        line.contains("reason=") && line.contains("identity"),
        "{line}"
    );
    until_metric(sidecar.admin, &egress_failures("wrong", "identity"), "1").await;
    until_metric(
        sidecar.admin,
        &egress_series("sent_bytes_total", "wrong"),
        "0",
    )
    .await;
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "not one byte reached the server's app"
    );
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_refuses_a_server_whose_certificate_chains_to_an_unknown_ca() {
    capture_logs();
    let pki = Pki::shared();
    let other = Pki::other();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them) = (Identity::random(), Identity::random());
    let foreign = other.issue(&them, KeyKind::Ec, Validity::OneDay);
    let backend = start(server(
        &Creds::with(&foreign),
        echo_app().await,
        &TrustDir::with(&[&pki.root_pem]),
        &them,
        &["cf:any"],
    ))
    .await;
    let expect = format!("cf:app:{}", them.app);
    let my_creds = Creds::with(&pki.client(&me));
    let sidecar = start(client(
        &my_creds,
        &trust,
        &me,
        vec![entry("foreign", backend.tls(), &[&expect])],
    ))
    .await;

    assert_eq!(through(sidecar.egress(0), b"ping").await, b"");
    let line = log_line(&["egress connection refused", "foreign", "unknown CA"]).await;
    assert!(line.contains("unknown_ca"), "{line}");
    until_metric(
        sidecar.admin,
        &egress_failures("foreign", "unknown_ca"),
        "1",
    )
    .await;
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_selector_verifies_the_hostname_in_a_minted_server_certificate() {
    capture_logs();
    let ca = TestCa::new(CaKey::EcSec1, None);
    let pki = Pki::shared();
    let them = Identity::random();
    let guid = new_guid();
    let (mut config, _) = resolved_config(
        MINTED_YAML,
        &minted_env(&them, &ca, &guid),
        echo_app().await,
    );
    let server_trust = TrustDir::with(&[&pki.root_pem]);
    config.listeners[0].client_auth = ClientAuth::Required;
    config.trust = server_trust.config();
    let backend = start(config).await;

    // The server's certificate names backend.apps.internal; the client dials that name (SNI)
    // at the server's address, and trusts the minted certificates' CA.
    let trust = TrustDir::with(&[&pki.root_pem, &ca.cert_pem]);
    let me = Identity::random();
    let at = |name: &str, host: &str, expect: &str| EgressConfig {
        target: HostPort {
            host: host.to_owned(),
            port: backend.tls().port(),
        },
        addrs: Some(vec![backend.tls()]),
        ..entry(name, backend.tls(), &[expect])
    };
    let my_creds = Creds::with(&pki.client(&me));
    let sidecar = start(client(
        &my_creds,
        &trust,
        &me,
        vec![
            at(
                "routed",
                "backend.apps.internal",
                "dns:backend.apps.internal",
            ),
            at(
                "misnamed",
                "backend.apps.internal",
                "dns:frontend.apps.internal",
            ),
            at(
                "by-identity",
                "backend.apps.internal",
                &format!("cf:app:{}", them.app),
            ),
        ],
    ))
    .await;

    assert_eq!(through(sidecar.egress(0), b"ping").await, b"ping");
    // The minted CA's key sits in VCAP_SERVICES of every app bound to it: its OUs are no
    // proof of which app this is, so a cf: rule never matches a minted certificate.
    assert_eq!(through(sidecar.egress(2), b"ping").await, b"");
    let line = log_line(&["egress connection refused", "by-identity"]).await;
    assert!(line.contains("not from the platform identity CA"), "{line}");
    until_metric(
        sidecar.admin,
        &egress_failures("by-identity", "identity"),
        "1",
    )
    .await;
    assert_eq!(through(sidecar.egress(1), b"ping").await, b"");
    let line = log_line(&["egress connection refused", "misnamed"]).await;
    assert!(
        line.contains("hostname mismatch: expected dns:frontend.apps.internal, the certificate names DNS:backend.apps.internal"),
        "{line}"
    );
    until_metric(sidecar.admin, &egress_failures("misnamed", "hostname"), "1").await;
    until_metric(sidecar.admin, &egress_failures("routed", "hostname"), "0").await;
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_target_addresses_are_tried_in_turn_within_the_connect_timeout() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them) = (Identity::random(), Identity::random());
    let backend = start(server(
        &Creds::with(&pki.issue(&them, KeyKind::Ec, Validity::OneDay)),
        echo_app().await,
        &trust,
        &them,
        &["cf:any"],
    ))
    .await;
    let (dead1, dead2) = (dead_app().await, dead_app().await);
    let expect = format!("cf:app:{}", them.app);
    let mut live = entry("instances", backend.tls(), &[&expect]);
    live.addrs = Some(vec![dead1, dead2, backend.tls()]);
    let mut gone = entry("gone", backend.tls(), &[&expect]);
    gone.addrs = Some(vec![dead1, dead2]);
    let my_creds = Creds::with(&pki.client(&me));
    let sidecar = start(client(&my_creds, &trust, &me, vec![live, gone])).await;

    assert_eq!(through(sidecar.egress(0), b"ping").await, b"ping");
    assert_eq!(through(sidecar.egress(1), b"ping").await, b"");
    let line = log_line(&["egress connection refused", "\"gone\""]).await;
    assert!(
        line.contains(&format!("{dead1}: ")) && line.contains(&format!("{dead2}: ")),
        "every address is named with its failure: {line}"
    );
    until_metric(sidecar.admin, &egress_failures("gone", "connect"), "1").await;
    until_metric(sidecar.admin, &egress_failures("instances", "connect"), "0").await;
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_presented_on_new_egress_connections() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them) = (Identity::random(), Identity::random());
    let backend = start(server(
        &Creds::with(&pki.issue(&them, KeyKind::Ec, Validity::OneDay)),
        echo_app().await,
        &trust,
        &them,
        &[&format!("cf:app:{}", me.app)],
    ))
    .await;
    let first = pki.client(&me);
    let my_creds = Creds::with(&first);
    let expect = format!("cf:app:{}", them.app);
    let sidecar = start(client(
        &my_creds,
        &trust,
        &me,
        vec![entry("backend", backend.tls(), &[&expect])],
    ))
    .await;
    assert_eq!(through(sidecar.egress(0), b"one").await, b"one");
    log_line(&["connection closed", &first.guid]).await;

    let second = pki.client(&me);
    my_creds.rotate_the_diego_way(&second);
    log_line(&["certificate loaded", &second.guid]).await;
    assert_eq!(through(sidecar.egress(0), b"two").await, b"two");
    let line = log_line(&["connection closed", &second.guid, "bytes_in=3"]).await;
    assert!(line.contains(&me.app), "{line}");
    sidecar.running.shutdown().await;
    backend.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_every_egress_listener_and_names_a_busy_one() {
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let taken = std::net::TcpListener::bind(loopback(0)).unwrap();
    let mut busy = entry("busy", loopback(1), &["cf:any"]);
    busy.bind = taken.local_addr().unwrap();
    let my_creds = Creds::with(&pki.client(&me));
    let running = tls_sidecar::start(client(&my_creds, &trust, &me, vec![busy]))
        .await
        .unwrap();
    let admin = running.admin_addr().unwrap();
    eventually("/ready to name the busy egress port", || async {
        match get(admin, "/ready").await {
            Ok((503, body)) => body.contains("egress \"busy\" not listening on"),
            _ => false,
        }
    })
    .await;
    drop(taken);
    until_ready(admin).await;
    assert!(running.egress_addrs()[0].is_some());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_keeps_accepting_while_the_tls_listeners_drain_and_closes_after_them() {
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them) = (Identity::random(), Identity::random());
    let backend = start(server(
        &Creds::with(&pki.issue(&them, KeyKind::Ec, Validity::OneDay)),
        echo_app().await,
        &trust,
        &them,
        &["cf:any"],
    ))
    .await;
    let my_creds = Creds::with(&pki.client(&me));
    let expect = format!("cf:app:{}", them.app);
    let mut config = sidecar_config(&my_creds, echo_app().await);
    config.egress = vec![entry("backend", backend.tls(), &[&expect])];
    config.trust = trust.config();
    config.app = me.vcap_application();
    let sidecar = start(config).await;
    let egress = sidecar.egress(0);

    // An ingress connection still open keeps the drain going.
    let mut caller = connect(sidecar.tls()).await.unwrap();
    assert_eq!(echo(&mut caller, b"hold").await, b"hold");
    let admin = sidecar.admin;
    let draining = tokio::spawn(sidecar.running.shutdown());
    eventually("/ready to turn 503", || async {
        matches!(get(admin, "/ready").await, Ok((503, _)))
    })
    .await;
    assert_eq!(
        through(egress, b"still").await,
        b"still",
        "the app can still call out while it finishes its requests"
    );

    drop(caller);
    tokio::time::timeout(DEADLINE, draining)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(egress).await.is_err(),
        "the egress listener closed after the drain"
    );
    backend.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The egress proxy

/// A tiny HTTP/1.1 app: answers every request with its request head as the body.
async fn head_echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len());
                    if tcp.write_all(answer.as_bytes()).await.is_err()
                        || tcp.write_all(&head).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A sidecar whose only job is the egress proxy, to `localhost` on `port`, expecting `expect`.
fn proxy_client(
    creds: &Creds,
    trust: &TrustDir,
    me: &Identity,
    port: u16,
    expect: &str,
) -> SidecarConfig {
    let mut config = client(creds, trust, me, vec![]);
    config.egress_proxy = Some(EgressProxyConfig {
        bind: loopback(0),
        targets: vec![ProxyTarget {
            hosts: vec!["localhost".parse().unwrap()],
            ports: vec![port],
            expect: vec![expect.parse().unwrap()],
        }],
        addrs: None,
    });
    config
}

/// Sends `head` (and nothing after it) to the proxy at `addr`; the status line and the body.
async fn via_proxy(addr: SocketAddr, head: &str) -> (String, String) {
    let mut app = TcpStream::connect(addr).await.unwrap();
    app.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut app).await
}

/// One HTTP/1.1 response with a Content-Length: its status line and body.
async fn read_response(app: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = tokio::time::timeout(DEADLINE, app.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed mid-body: {head}");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
            return (head.lines().next().unwrap_or_default().to_owned(), body);
        }
        let n = tokio::time::timeout(DEADLINE, app.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_proxy_carries_absolute_form_requests_and_connect_tunnels_with_this_apps_identity()
 {
    capture_logs();
    let t = TwoApps::new();
    let allow = format!("cf:app:{}", t.me.app);
    let mut backend = server(
        &t.their_creds,
        head_echo_app().await,
        &t.trust,
        &t.them,
        &[&allow],
    );
    backend.listeners[0].mode = Mode::Http;
    let backend = start(backend).await;
    let port = backend.tls().port();
    let expect = format!("cf:app:{}", t.them.app);
    let sidecar = start(proxy_client(&t.my_creds, &t.trust, &t.me, port, &expect)).await;
    let proxy = sidecar.running.egress_proxy_addr().unwrap();

    // Absolute form, twice on separate app connections: origin form at the target, the app's
    // Host kept, Proxy-* dropped, this app's identity in the target app's XFCC.
    for _ in 0..2 {
        let (status, seen) = via_proxy(
            proxy,
            &format!("GET http://localhost:{port}/orders?id=7 HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{seen}");
        assert!(seen.starts_with("GET /orders?id=7 HTTP/1.1\r\n"), "{seen}");
        let lower = seen.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("host: localhost:{port}\r\n")),
            "{seen}"
        );
        assert!(!lower.contains("proxy-"), "{seen}");
        assert!(
            lower.contains("x-forwarded-client-cert:")
                && seen.contains(&format!("OU=app:{}", t.me.app)),
            "{seen}"
        );
    }
    // Both requests rode one pooled TLS connection to the target.
    until_metric(
        backend.admin,
        &format!("tls_sidecar_connections_total{{listener=\"{port}\"}}"),
        "1",
    )
    .await;

    // CONNECT: a tunnel over mTLS, here carrying HTTP the app writes itself.
    let mut app = TcpStream::connect(proxy).await.unwrap();
    app.write_all(
        format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, _) = read_response(&mut app).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    app.write_all(b"GET /tunnelled HTTP/1.1\r\nHost: backend\r\n\r\n")
        .await
        .unwrap();
    let (status, seen) = read_response(&mut app).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        seen.starts_with("GET /tunnelled HTTP/1.1\r\n") && seen.contains(&t.me.app),
        "{seen}"
    );
    drop(app);
    let name = "egress_proxy.targets[0]";
    until_metric(
        sidecar.admin,
        &egress_series("connections_total", name),
        "3",
    )
    .await;
    log_line(&[
        "egress proxy tunnel closed",
        &t.them.app,
        &t.their_leaf.guid,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_proxy_refuses_an_unlisted_host_a_non_proxy_request_and_a_target_of_another_identity()
 {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let (me, them) = (Identity::random(), Identity::random());
    let (my_creds, their_creds) = (
        Creds::with(&pki.client(&me)),
        Creds::with(&pki.issue(&them, KeyKind::Ec, Validity::OneDay)),
    );
    let backend = start(server(
        &their_creds,
        head_echo_app().await,
        &trust,
        &them,
        &["cf:any"],
    ))
    .await;
    let port = backend.tls().port();
    // The proxy expects some other app at this address.
    let other = format!("cf:app:{}", Identity::random().app);
    let sidecar = start(proxy_client(&my_creds, &trust, &me, port, &other)).await;
    let proxy = sidecar.running.egress_proxy_addr().unwrap();

    let (status, body) = via_proxy(
        proxy,
        &format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    assert!(body.contains("wrong identity: expected cf:app:"), "{body}");
    let (status, body) = via_proxy(
        proxy,
        &format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    assert!(body.contains("wrong identity"), "{body}");
    until_metric(
        sidecar.admin,
        &egress_failures("egress_proxy.targets[0]", "identity"),
        "2",
    )
    .await;

    for (head, want, says) in [
        (
            "GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 403 Forbidden",
            "127.0.0.1:9 is not an egress_proxy target",
        ),
        (
            &*format!(
                "GET http://localhost:{}/ HTTP/1.1\r\nHost: x\r\n\r\n",
                port + 1
            ),
            "HTTP/1.1 403 Forbidden",
            "is not an egress_proxy target",
        ),
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 403 Forbidden",
            "example.com:443 is not an egress_proxy target",
        ),
        (
            "GET /orders HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            "absolute form",
        ),
        (
            "GET https://localhost/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            "use http:// URLs",
        ),
    ] {
        let (status, body) = via_proxy(proxy, head).await;
        assert_eq!(status, want, "{head}");
        assert!(body.contains(says), "{head}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_domain_target_checks_the_certificate_against_the_requested_host() {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let my_creds = Creds::with(&pki.client(&me));
    // Gorouter on an identity-aware domain: a certificate for the route, no CF identity.
    let mut spec = LeafSpec::subject("/CN=shop.apps.identity");
    spec.dns = vec!["shop.apps.identity".to_owned()];
    let router = Creds::with(&pki.issue_spec(&spec));
    let backend = start(server(
        &router,
        head_echo_app().await,
        &trust,
        &me,
        &["cf:any"],
    ))
    .await;
    let port = backend.tls().port();
    let mut config = proxy_client(&my_creds, &trust, &me, port, "dns:*.apps.identity");
    let proxy_config = config.egress_proxy.as_mut().unwrap();
    proxy_config.targets[0].hosts = vec!["*.apps.identity".parse().unwrap()];
    proxy_config.addrs = Some(vec![backend.tls()]);
    let sidecar = start(config).await;
    let proxy = sidecar.running.egress_proxy_addr().unwrap();

    let get = |host: &str| format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (status, seen) = via_proxy(proxy, &get("shop.apps.identity")).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{seen}");
    assert!(
        seen.contains("host: shop.apps.identity") || seen.contains("Host: shop.apps.identity"),
        "{seen}"
    );
    let (status, body) = via_proxy(proxy, &get("admin.apps.identity")).await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    assert!(body.contains("hostname mismatch"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_gets_504_after_the_idle_timeout() {
    capture_logs();
    let t = TwoApps::new();
    // An app that takes connections and never says a word.
    let listener = tokio::net::TcpListener::bind(loopback(0)).await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let backend = start(server(
        &t.their_creds,
        silent,
        &t.trust,
        &t.them,
        &["cf:any"],
    ))
    .await;
    let port = backend.tls().port();
    let expect = format!("cf:app:{}", t.them.app);
    let mut config = proxy_client(&t.my_creds, &t.trust, &t.me, port, &expect);
    config.limits.idle_timeout = std::time::Duration::from_millis(300);
    let sidecar = start(config).await;
    let proxy = sidecar.running.egress_proxy_addr().unwrap();

    let (status, body) = via_proxy(
        proxy,
        &format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 504 Gateway Timeout");
    assert!(
        body.contains("did not answer within 300 ms (limits.idle_timeout)"),
        "{body}"
    );
}
