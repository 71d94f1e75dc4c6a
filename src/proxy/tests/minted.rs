//! `certificate.source: minted`: a leaf minted in memory from a bound CA (RSA or ECDSA key in
//! PKCS#1, SEC1 or PKCS#8), shaped like Diego's identity but naming the app's internal routes,
//! checked with `openssl x509 -text` and `openssl verify`; renewed before two thirds of its
//! lifetime; a name-constrained CA gets only the names it may vouch for.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tls_sidecar::CertificateConfig;
use tls_sidecar_testkit::pem;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Connects to `addr` verifying the server as `backend.apps.internal` against `ca` alone (a
/// fresh config: a full handshake) and returns the chain it sent.
async fn served_chain(addr: SocketAddr, ca: &TestCa) -> Vec<CertificateDer<'static>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("backend.apps.internal").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the minted certificate verifies for backend.apps.internal");
    tls.get_ref().1.peer_certificates().unwrap().to_vec()
}

/// `openssl <args>` on the leaf (written to `dir` as `leaf.pem`), stdout; asserts success.
/// OpenSSL reads what the sidecar minted: an inspection independent of the sidecar's parser.
fn openssl_on(dir: &Path, leaf: &CertificateDer<'_>, args: &[&str]) -> String {
    std::fs::write(dir.join("leaf.pem"), pem("CERTIFICATE", leaf.as_ref())).unwrap();
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn validity(leaf: &CertificateDer<'_>) -> (i64, i64) {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_leaf_names_the_routes_the_instance_and_its_ip_with_diegos_ous_and_comes_with_its_ca()
 {
    for key in [CaKey::RsaPkcs1, CaKey::EcSec1, CaKey::EcPkcs8] {
        let ca = TestCa::new(key, None);
        let me = Identity::random();
        let guid = new_guid();
        let (config, warnings) =
            resolved_config(MINTED_YAML, &minted_env(&me, &ca, &guid), echo_app().await);
        assert!(warnings.is_empty(), "{warnings:?}");
        let running = tls_sidecar::start(config).await.unwrap();
        let addrs = addrs(&running);
        until_ready(addrs.admin).await;

        let chain = served_chain(addrs.tls, &ca).await;
        assert_eq!(chain.len(), 2, "{key:?}: leaf + CA");
        assert_eq!(chain[1], ca.cert_der, "{key:?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let text = openssl_on(
            dir.path(),
            &chain[0],
            &["x509", "-in", "leaf.pem", "-noout", "-text"],
        );
        for part in [
            "DNS:backend.apps.internal, DNS:0.backend.apps.internal, DNS:",
            &format!("DNS:{guid}, IP Address:127.0.0.1"),
            "TLS Web Server Authentication, TLS Web Client Authentication",
            "id-ecPublicKey",
            "prime256v1",
            "Issuer: CN = testMintCA",
            "CA:FALSE",
        ] {
            assert!(text.contains(part), "{key:?}: no {part:?} in\n{text}");
        }
        assert!(
            !text.contains("backend.example.com"),
            "not an internal route\n{text}"
        );
        let subject = openssl_on(
            dir.path(),
            &chain[0],
            &[
                "x509", "-in", "leaf.pem", "-noout", "-subject", "-nameopt", "RFC2253",
            ],
        );
        assert_eq!(
            subject.trim(),
            format!(
                "subject=CN={guid},OU=organization:{}+OU=space:{}+OU=app:{}",
                me.org, me.space, me.app
            ),
            "{key:?}: Diego's subject, the three OUs in one RDN"
        );
        let verified = openssl_on(
            dir.path(),
            &chain[0],
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslserver",
                "leaf.pem",
            ],
        );
        assert!(verified.contains("leaf.pem: OK"), "{verified}");

        // 2h, with notBefore backdated five minutes for clock skew.
        let (not_before, not_after) = validity(&chain[0]);
        assert_eq!(not_after - not_before, 2 * 3600 + 300, "{key:?}");
        let identity = tls_sidecar::identity::CfIdentity::from_der(&chain[0]).unwrap();
        assert_eq!(identity.app.unwrap().as_str(), me.app);
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_certificate_is_renewed_before_two_thirds_of_its_lifetime() {
    let ca = TestCa::new(CaKey::EcSec1, None);
    let me = Identity::random();
    let (mut config, _) = resolved_config(
        MINTED_YAML,
        &minted_env(&me, &ca, &new_guid()),
        echo_app().await,
    );
    let CertificateConfig::Minted(mint) = &mut config.certificate else {
        panic!("not minted");
    };
    mint.validity = Duration::from_secs(30);
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;
    let first = served_chain(addrs.tls, &ca).await.remove(0);
    let (not_before, not_after) = validity(&first);
    assert_eq!(not_after - not_before, 33, "30 s, backdated 3 s");

    let mut second = first.clone();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while second == first {
        assert!(tokio::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        second = served_chain(addrs.tls, &ca).await.remove(0);
    }
    let (renewed_from, _) = validity(&second);
    // The new leaf's notBefore is its mint time less the same 3 s.
    let minted_at = renewed_from + 3;
    assert!(
        minted_at < not_before + (not_after - not_before) * 2 / 3,
        "renewed at +{} s of a {} s lifetime",
        minted_at - not_before,
        not_after - not_before
    );
    assert!(minted_at < not_after, "before the first one expired");
    until_metric(
        addrs.admin,
        "tls_sidecar_certificate_reloads_total{result=\"success\"}",
        "2",
    )
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_constrained_ca_gets_a_leaf_with_only_the_names_it_permits() {
    let ca = TestCa::new(
        CaKey::RsaPkcs1,
        Some("critical,permitted;DNS:apps.internal,permitted;IP:127.0.0.0/255.0.0.0"),
    );
    let me = Identity::random();
    let guid = new_guid();
    let (config, _) = resolved_config(MINTED_YAML, &minted_env(&me, &ca, &guid), echo_app().await);
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;
    let chain = served_chain(addrs.tls, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let text = openssl_on(
        dir.path(),
        &chain[0],
        &["x509", "-in", "leaf.pem", "-noout", "-text"],
    );
    assert!(
        text.contains(
            "DNS:backend.apps.internal, DNS:0.backend.apps.internal, IP Address:127.0.0.1"
        ),
        "{text}"
    );
    assert!(
        !text.contains(&format!("DNS:{guid}")),
        "the GUID is outside the constraints\n{text}"
    );
    let verified = openssl_on(
        dir.path(),
        &chain[0],
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslserver",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    running.shutdown().await;
}
