//! Identity comes only from the platform, and resumption cannot outlive trust.
//!
//! Every test here is an attack first: a CA the app trusts for other reasons (a partner CA in
//! `trust.ca_files`, a bound service's CA) signs `OU=app:<allowed guid>`; a client certificate
//! expires, or its CA is removed, between a connection and the session resumed from it.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tls_sidecar::config::IdentityAnchor;
use tls_sidecar::{EgressConfig, SidecarConfig};
use tls_sidecar_config::{ClientAuth, Env, HostPort, Mode, Selector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `config` asking for client certificates under `allow`, trusting `trust` (the operator's
/// system certificates) and `ca_files`, running as the app `me`.
fn with_rules(
    mut config: SidecarConfig,
    trust: &TrustDir,
    ca_files: &[std::path::PathBuf],
    allow: &[&str],
    me: &Identity,
) -> SidecarConfig {
    config.listeners[0].client_auth = ClientAuth::Required;
    config.listeners[0].allow = allow
        .iter()
        .map(|s| s.parse::<Selector>().unwrap())
        .collect();
    config.trust = trust.config();
    config.trust.ca_files = ca_files.to_vec();
    config.app = me.vcap_application();
    config
}

/// A PEM written to a file of its own (what `trust.ca_files` names).
fn ca_file(dir: &tempfile::TempDir, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// A client presenting `leaf` (with its intermediate), trusting the shared root, speaking only
/// `versions`, resuming TLS 1.2 sessions by `tls12` (session IDs or tickets).
fn resuming_client(
    leaf: &Leaf,
    versions: &[&'static SupportedProtocolVersion],
    tls12: rustls::client::Tls12Resumption,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(Pki::shared().root_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
    Arc::new(config)
}

/// Connects, sends `ping` and reads the echo: `Ok(handshake kind)` when the echo came back,
/// `Err(text)` when the sidecar refused or closed.
async fn ping(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<HandshakeKind, String> {
    let mut tls = connect_with(addr, config)
        .await
        .map_err(|e| e.to_string())?;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut back = vec![0; 4];
    match tokio::time::timeout(DEADLINE, tls.read_exact(&mut back)).await {
        Ok(Ok(_)) if back == b"ping" => Ok(kind),
        Ok(Ok(_)) => Err(format!("unexpected answer {back:?}")),
        Ok(Err(e)) => Err(format!("{kind:?}: {e}")),
        Err(_) => Err("no answer".to_owned()),
    }
}

fn failures(port: u16, reason: &str) -> String {
    format!("tls_sidecar_handshake_failures_total{{listener=\"{port}\",reason=\"{reason}\"}}")
}

/// Waits (bounded) until the wall clock is past `unix` seconds: what a certificate's expiry is
/// measured against.
async fn until_past(unix: u64) {
    eventually("the client certificate to expire", || async {
        let past = unix_now() > unix;
        if !past {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        past
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_ca_in_trust_ca_files_cannot_sign_its_way_into_a_cf_app_rule_in_tcp_mode() {
    capture_logs();
    let pki = Pki::shared();
    let partner = Pki::other();
    let files = tempfile::tempdir().unwrap();
    let partner_ca = ca_file(&files, "partner.pem", &partner.root_pem);
    let trust = TrustDir::with(&[&pki.root_pem]);
    let allowed = Identity::random();
    let (app, app_connections) = counting_echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let rule = format!("cf:app:{}", allowed.app);
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        &[partner_ca],
        &[&rule],
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    // The partner's chain verifies (its CA is trusted) and names the allowed app.
    let forged = partner.client(&allowed);
    let e = exchange(addrs.tls, mtls_client(&forged, &[]))
        .await
        .unwrap_err();
    assert!(e.contains("AccessDenied"), "{e}");
    let line = log_line(&["access denied", "not the platform instance-identity CA"]).await;
    assert!(
        !line.contains(&allowed.app),
        "the log must not name the claimed app as the caller: {line}"
    );
    until_metric(addrs.admin, &failures(addrs.tls.port(), "denied"), "1").await;
    assert_eq!(app_connections.load(Ordering::SeqCst), 0);

    // The same identity from the platform's CA is let through.
    let genuine = pki.client(&allowed);
    assert_eq!(
        exchange(addrs.tls, mtls_client(&genuine, &[]))
            .await
            .unwrap(),
        b"ping"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_ca_leaf_naming_an_allowed_app_gets_403_in_http_mode() {
    capture_logs();
    let pki = Pki::shared();
    let partner = Pki::other();
    let files = tempfile::tempdir().unwrap();
    let partner_ca = ca_file(&files, "partner.pem", &partner.root_pem);
    let trust = TrustDir::with(&[&pki.root_pem]);
    let allowed = Identity::random();
    let (app, app_connections) = counting_echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let rule = format!("cf:app:{}", allowed.app);
    let mut config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        &[partner_ca],
        &[&rule],
        &Identity::random(),
    );
    config.listeners[0].mode = Mode::Http;
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let forged = partner.client(&allowed);
    let mut tls = connect_with(addrs.tls, mtls_client(&forged, &["http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    log_line(&["access denied", "not the platform instance-identity CA"]).await;
    assert_eq!(app_connections.load(Ordering::SeqCst), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_service_ca_as_minted_certificates_use_cannot_pass_a_cf_rule_either() {
    let pki = Pki::shared();
    let service_ca = Pki::other();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let allowed = Identity::random();
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let mut config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        &[],
        &["cf:any"],
        &allowed,
    );
    // What `source: minted` and `source: service` add: the service's CA, whose key sits in
    // VCAP_SERVICES for every app bound to it.
    config.trust.extra.push((
        "service \"test-ca\" credentials.ca_certificate".to_owned(),
        service_ca.root_pem.clone(),
    ));
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let e = exchange(addrs.tls, mtls_client(&service_ca.client(&allowed), &[]))
        .await
        .unwrap_err();
    assert!(e.contains("AccessDenied"), "{e}");
    assert_eq!(
        exchange(addrs.tls, mtls_client(&pki.client(&allowed), &[]))
            .await
            .unwrap(),
        b"ping"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_platform_root_of_the_same_name_in_the_system_certificates_keeps_identities_but_not_in_ca_files()
 {
    let pki = Pki::shared();
    // CredHub's regenerated appRootCA/instanceIdentityCA: same names, new keys.
    let rotated = Pki::generate();
    let me = Identity::random();
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());

    let system = TrustDir::with(&[&pki.root_pem, &rotated.root_pem]);
    let config = with_rules(
        sidecar_config(&creds, app),
        &system,
        &[],
        &["cf:same-space"],
        &me,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addr = addrs(&running).tls;
    until_ready(addrs(&running).admin).await;
    let neighbour = rotated.client(&me.same_space());
    assert_eq!(
        exchange(addr, mtls_client(&neighbour, &[])).await.unwrap(),
        b"ping"
    );
    running.shutdown().await;

    // The same CA added by the app (not the operator) is trusted, but speaks for no app.
    let files = tempfile::tempdir().unwrap();
    let lookalike = ca_file(&files, "lookalike.pem", &rotated.root_pem);
    let system = TrustDir::with(&[&pki.root_pem]);
    let config = with_rules(
        sidecar_config(&creds, app),
        &system,
        &[lookalike],
        &["cf:same-space"],
        &me,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addr = addrs(&running).tls;
    until_ready(addrs(&running).admin).await;
    let e = exchange(addr, mtls_client(&neighbour, &[]))
        .await
        .unwrap_err();
    assert!(e.contains("AccessDenied"), "{e}");
    running.shutdown().await;
}

/// The resumption attack: connect, keep the session, let the client certificate expire,
/// resume. `client` makes the resuming client for the leaf.
async fn an_expired_certificate_cannot_resume(
    client: impl Fn(&Leaf) -> Arc<ClientConfig>,
    allow: fn(&Identity) -> Vec<String>,
) {
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let caller = Identity::random();
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let rules = allow(&caller);
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        &[],
        &rules,
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    // Valid for a few seconds from now: long enough for two connections on a loaded box.
    let expiry = unix_now() + 6;
    let leaf = pki.issue(&caller, KeyKind::Ec, Validity::Until(expiry));
    let config = client(&leaf);
    assert_eq!(
        ping(addrs.tls, config.clone()).await,
        Ok(HandshakeKind::Full)
    );
    assert_eq!(
        ping(addrs.tls, config.clone()).await,
        Ok(HandshakeKind::Resumed),
        "resumption works while the certificate is valid"
    );

    until_past(expiry).await;
    let e = ping(addrs.tls, config.clone()).await.unwrap_err();
    assert!(e.starts_with("Resumed"), "the session was resumed: {e}");
    let line = log_line(&["resumed session refused", "expired"]).await;
    assert!(line.contains("WARN"), "{line}");
    until_metric(
        addrs.admin,
        &failures(addrs.tls.port(), "client_cert_invalid"),
        "1",
    )
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_session_cannot_be_resumed_with_a_client_certificate_that_expired_since() {
    an_expired_certificate_cannot_resume(
        |leaf| resuming_client(leaf, TLS13, rustls::client::Tls12Resumption::SessionIdOnly),
        |_| Vec::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_session_id_cannot_be_resumed_with_a_client_certificate_that_expired_since() {
    an_expired_certificate_cannot_resume(
        |leaf| resuming_client(leaf, TLS12, rustls::client::Tls12Resumption::SessionIdOnly),
        |id| vec![format!("cf:app:{}", id.app)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_ticket_cannot_be_resumed_with_a_client_certificate_that_expired_since() {
    an_expired_certificate_cannot_resume(
        |leaf| {
            resuming_client(
                leaf,
                TLS12,
                rustls::client::Tls12Resumption::SessionIdOrTickets,
            )
        },
        |_| Vec::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_ca_from_the_trust_bundle_refuses_sessions_resumed_from_before() {
    capture_logs();
    let pki = Pki::shared();
    let partner = Pki::other();
    let trust = TrustDir::with(&[&pki.root_pem, &partner.root_pem]);
    let app = echo_app().await;
    let creds = Creds::with(&pki.ec_leaf());
    let config = with_rules(
        sidecar_config(&creds, app),
        &trust,
        &[],
        &[],
        &Identity::random(),
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let caller = partner.client(&Identity::random());
    // One resumable session per protocol version, established while the CA is trusted.
    let mut sessions = Vec::new();
    for versions in [TLS13, TLS12] {
        let config = resuming_client(
            &caller,
            versions,
            rustls::client::Tls12Resumption::SessionIdOnly,
        );
        assert_eq!(
            ping(addrs.tls, config.clone()).await,
            Ok(HandshakeKind::Full)
        );
        assert_eq!(
            ping(addrs.tls, config.clone()).await,
            Ok(HandshakeKind::Resumed)
        );
        sessions.push((versions, config));
    }

    // The operator removes the partner CA.
    std::fs::remove_file(trust.dir.path().join("trusted-ca-2.crt")).unwrap();
    eventually("the partner CA to be dropped", || async {
        ping(addrs.tls, mtls_client(&caller, &[])).await.is_err()
    })
    .await;
    for (versions, config) in sessions {
        let refused = ping(addrs.tls, config).await;
        assert!(
            refused.is_err(),
            "{versions:?}: a session from before the removal got through: {refused:?}"
        );
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cf_rules_outside_cf_fail_the_start_with_exit_64_and_a_fix() {
    let pki = Pki::shared();
    let leaf = pki.ec_leaf();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let yaml = "certificate:\n  source: files\n  cert_file: tls.crt\n  key_file: tls.key\n\
                listeners:\n  - port: 8443\n    client_auth: required\n    allow: [cf:any]\n";
    let config_path = dir.path().join("tls-sidecar.yml");
    std::fs::write(&config_path, yaml).unwrap();
    let home = dir.path().display().to_string();

    let env: Env = [("HOME".to_owned(), home.clone())].into();
    let e = tls_sidecar::load(Some(&config_path), &env, None).unwrap_err();
    assert_eq!(e.exit_code(), tls_sidecar::EX_USAGE);
    let text = e.to_string();
    assert!(text.starts_with("listeners[0].allow: cf:any"), "{text}");
    assert!(text.contains("no instance identity certificate"), "{text}");
    assert!(text.contains("Fix: "), "{text}");

    // The same file on Diego (CF_INSTANCE_CERT exists) is fine.
    let creds = Creds::with(&pki.ec_leaf());
    let env: Env = [
        ("HOME".to_owned(), home),
        (
            "CF_INSTANCE_CERT".to_owned(),
            creds.cert().display().to_string(),
        ),
        (
            "CF_INSTANCE_KEY".to_owned(),
            creds.key().display().to_string(),
        ),
    ]
    .into();
    let loaded = tls_sidecar::load(Some(&config_path), &env, None).unwrap();
    assert_eq!(
        loaded
            .plan
            .config
            .identity_ca
            .paths()
            .map(|p| p.cert.clone()),
        Some(creds.cert())
    );

    // start() refuses the same way for a config built by hand.
    let mut config = loaded.plan.config;
    config.identity_ca = IdentityAnchor::None;
    config.listeners[0].bind = loopback(0);
    config.admin = None;
    let e = tls_sidecar::start(config).await.err().unwrap();
    assert_eq!(e.exit_code(), tls_sidecar::EX_USAGE);
}

// ---------------------------------------------------------------------------------------------
// Egress

fn egress_entry(target: SocketAddr, expect: &str) -> EgressConfig {
    EgressConfig {
        name: "backend".to_owned(),
        bind: loopback(0),
        target: HostPort {
            host: "127.0.0.1".to_owned(),
            port: target.port(),
        },
        expect: vec![expect.parse().unwrap()],
        addrs: None,
    }
}

/// What comes back through the egress listener at `addr` for `ping` (nothing when refused).
async fn through(addr: SocketAddr) -> Vec<u8> {
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let _ = plain.write_all(b"ping").await;
    let _ = plain.shutdown().await;
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, plain.read_to_end(&mut back))
        .await
        .expect("the egress connection neither answered nor closed")
        .ok();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_refuses_a_server_whose_cf_ous_come_from_a_partner_ca() {
    capture_logs();
    let pki = Pki::shared();
    let partner = Pki::other();
    let them = Identity::random();
    // The impostor serves a partner-CA certificate naming the app we expect.
    let impostor_creds = Creds::with(&partner.issue(&them, KeyKind::Ec, Validity::OneDay));
    let impostor = tls_sidecar::start(sidecar_config(&impostor_creds, echo_app().await))
        .await
        .unwrap();
    let impostor_addr = addrs(&impostor).tls;
    until_ready(addrs(&impostor).admin).await;

    let me = Identity::random();
    let my_creds = Creds::with(&pki.client(&me));
    let mut config = sidecar_config(&my_creds, loopback(9));
    config.listeners.clear();
    let trust = TrustDir::with(&[&pki.root_pem, &partner.root_pem]);
    config.trust = trust.config();
    config.app = me.vcap_application();
    config.egress = vec![egress_entry(impostor_addr, &format!("cf:app:{}", them.app))];
    let sidecar = tls_sidecar::start(config).await.unwrap();
    until_ready(sidecar.admin_addr().unwrap()).await;

    assert_eq!(through(sidecar.egress_addrs()[0].unwrap()).await, b"");
    log_line(&[
        "egress connection refused",
        "wrong identity",
        "not from the platform identity CA",
    ])
    .await;
    sidecar.shutdown().await;
    impostor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_instance_serves_its_minted_certificate_but_egress_presents_the_instance_identity()
{
    capture_logs();
    let pki = Pki::shared();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let me = Identity::random();
    let them = Identity::random();
    // The backend admits only this app, by its platform identity.
    let backend_creds = Creds::with(&pki.issue(&them, KeyKind::Ec, Validity::OneDay));
    let mut backend = sidecar_config(&backend_creds, echo_app().await);
    backend.listeners[0].client_auth = ClientAuth::Required;
    backend.listeners[0].allow = vec![format!("cf:app:{}", me.app).parse().unwrap()];
    backend.trust = trust.config();
    backend.app = them.vcap_application();
    let backend = tls_sidecar::start(backend).await.unwrap();
    let backend_addr = addrs(&backend).tls;
    until_ready(addrs(&backend).admin).await;

    // This app mints its serving certificate from a bound CA, and runs on Diego.
    let ca = TestCa::new(CaKey::EcSec1, None);
    let my_creds = Creds::with(&pki.client(&me));
    let mut env = minted_env(&me, &ca, &new_guid());
    env.insert(
        "CF_INSTANCE_CERT".to_owned(),
        my_creds.cert().display().to_string(),
    );
    env.insert(
        "CF_INSTANCE_KEY".to_owned(),
        my_creds.key().display().to_string(),
    );
    let (mut config, _) = resolved_config(MINTED_YAML, &env, loopback(9));
    config.trust.system_dir = Some(trust.dir.path().to_owned());
    config.egress = vec![egress_entry(backend_addr, &format!("cf:app:{}", them.app))];
    let sidecar = tls_sidecar::start(config).await.unwrap();
    until_ready(sidecar.admin_addr().unwrap()).await;

    assert_eq!(through(sidecar.egress_addrs()[0].unwrap()).await, b"ping");
    log_line(&[
        "egress certificate loaded",
        &my_creds.cert().display().to_string(),
    ])
    .await;
    sidecar.shutdown().await;
    backend.shutdown().await;
}
