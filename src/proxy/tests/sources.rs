//! Certificate sources other than the instance identity: the app's own files (relative to the
//! app directory, reloaded on rotation) and a bound service's credentials; and the precise
//! reason `/ready` and the log give when a pair cannot be loaded.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use tls_sidecar_config::Env;

/// An app directory (`$HOME`) with `certs/server.crt` and `certs/server.key`.
struct AppDir {
    dir: tempfile::TempDir,
}

const FILES_YAML: &str =
    "certificate:\n  source: files\n  cert_file: certs/server.crt\n  key_file: certs/server.key\n";

impl AppDir {
    fn new() -> AppDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        AppDir { dir }
    }

    /// Replaces both files, each atomically (a temp file, then a rename): key first.
    fn write(&self, cert: &[u8], key: &[u8]) {
        let certs = self.dir.path().join("certs");
        for (name, content) in [("server.key", key), ("server.crt", cert)] {
            let tmp = certs.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, certs.join(name)).unwrap();
        }
    }

    fn env(&self) -> Env {
        [("HOME".to_owned(), path(self.dir.path()))].into()
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_source_serves_a_pair_relative_to_the_app_dir_and_reloads_it_on_rotation() {
    let pki = Pki::shared();
    let (first, second) = (pki.ec_leaf(), pki.leaf(2048));
    let app_dir = AppDir::new();
    app_dir.write(first.chain_pem.as_bytes(), first.key_pem.as_bytes());
    let app = echo_app().await;
    let (config, _) = resolved_config(FILES_YAML, &app_dir.env(), app);
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    assert_eq!(served_leaf(&tls), first.leaf_der);
    assert_eq!(echo(&mut tls, b"files").await, b"files");
    drop(tls);

    app_dir.write(second.chain_pem.as_bytes(), second.key_pem.as_bytes());
    eventually("the rotated pair to be served", || async {
        matches!(connect(addrs.tls).await, Ok(tls) if served_leaf(&tls) == second.leaf_der)
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_source_serves_the_credentials_in_vcap_services_and_trusts_their_ca() {
    let pki = Pki::shared();
    let leaf = pki.ec_leaf();
    let clients = Pki::other();
    let caller = clients.client(&Identity::random());
    let vcap_services = serde_json::json!({
        "user-provided": [{
            "name": "my-tls",
            "credentials": {
                "certificate": leaf.chain_pem,
                "private_key": leaf.key_pem,
                "ca": clients.root_pem,
            }
        }]
    });
    let env: Env = [("VCAP_SERVICES".to_owned(), vcap_services.to_string())].into();
    let yaml = "certificate:\n  source: service\n  service: my-tls\nlisteners:\n  - client_auth: required\n";
    let app = echo_app().await;
    let (config, warnings) = resolved_config(yaml, &env, app);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("only trust.ca_files are trusted")),
        "{warnings:?}"
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    // The client trusts the shared root (which issued `leaf`) and presents a certificate from
    // the service's CA.
    let mut tls = connect_with(addrs.tls, mtls_client(&caller, &[]))
        .await
        .unwrap();
    assert_eq!(served_leaf(&tls), leaf.leaf_der);
    assert_eq!(echo(&mut tls, b"service").await, b"service");
    drop(tls);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_not_bound_keeps_ready_at_503_naming_it() {
    let env: Env = [(
        "VCAP_SERVICES".to_owned(),
        r#"{"user-provided":[{"name":"db","credentials":{}}]}"#.to_owned(),
    )]
    .into();
    let app = echo_app().await;
    let (config, _) = resolved_config(
        "certificate:\n  source: service\n  service: my-tls\n",
        &env,
        app,
    );
    let running = tls_sidecar::start(config).await.unwrap();
    let admin = running.admin_addr().unwrap();
    let expected = "no service named \"my-tls\" is bound to this app (VCAP_SERVICES holds: db)";
    eventually("/ready to say which service is missing", || async {
        matches!(get(admin, "/ready").await, Ok((503, body)) if body.contains(expected))
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_that_cannot_be_served_keeps_ready_at_503_with_the_precise_reason_until_fixed() {
    capture_logs();
    let pki = Pki::shared();
    let good = pki.ec_leaf();
    let other = pki.ec_leaf();
    let expired = pki.issue(&Identity::random(), KeyKind::Ec, EXPIRED);
    let future = pki.issue(&Identity::random(), KeyKind::Ec, NOT_YET_VALID);
    let ed448 = pki.ed448_key();
    let der: &[u8] = good.leaf_der.as_ref();
    let cases: [(&str, &[u8], &[u8], &str); 5] = [
        (
            "expired",
            expired.chain_pem.as_bytes(),
            expired.key_pem.as_bytes(),
            "expired at 2020-01-02T00:00:00Z",
        ),
        (
            "not yet valid",
            future.chain_pem.as_bytes(),
            future.key_pem.as_bytes(),
            "is not valid yet (valid from 2049-01-01T00:00:00Z)",
        ),
        (
            "key mismatch",
            good.chain_pem.as_bytes(),
            other.key_pem.as_bytes(),
            "does not match the certificate in",
        ),
        (
            "not PEM",
            der,
            good.key_pem.as_bytes(),
            "is not PEM: it holds no -----BEGIN CERTIFICATE----- block",
        ),
        (
            "unsupported key",
            good.chain_pem.as_bytes(),
            ed448.as_bytes(),
            "is of an unsupported type (Ed448)",
        ),
    ];
    let app = echo_app().await;
    for (case, cert, key, expected) in cases {
        let app_dir = AppDir::new();
        app_dir.write(cert, key);
        let (config, _) = resolved_config(FILES_YAML, &app_dir.env(), app);
        let running = tls_sidecar::start(config).await.unwrap();
        let admin = running.admin_addr().unwrap();
        eventually(&format!("/ready to give the reason ({case})"), || async {
            matches!(get(admin, "/ready").await, Ok((503, body)) if body.contains(expected))
        })
        .await;
        let (_, body) = get(admin, "/ready").await.unwrap();
        assert!(
            body.starts_with("no certificate loaded yet (waiting for "),
            "{case}: {body}"
        );
        let dir = path(app_dir.dir.path());
        let line = log_line(&["no certificate loaded yet", expected, &dir]).await;
        assert!(line.contains("WARN"), "{case}: {line}");

        if case == "unsupported key" {
            // Retried without a restart: a good pair is picked up.
            app_dir.write(good.chain_pem.as_bytes(), good.key_pem.as_bytes());
            until_ready(admin).await;
        }
        running.shutdown().await;
    }
}
