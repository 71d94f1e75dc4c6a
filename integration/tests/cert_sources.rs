//! Certificate sources other than the instance identity: `files` shipped in the app (reloaded
//! when they change) and a bound `service` instance's credentials (whose `ca` joins the trust).

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::callers::Expect;
use common::*;
use std::time::Duration;
use tls_sidecar_integration::cell::cert_not_after_unix;
use tls_sidecar_integration::sidecar::{TLS_PORT, connect_tls, metrics};
use tls_sidecar_integration::tls::{normalize_serial, peer_serial};
use tls_sidecar_integration::util::{Deadline, poll};
use tls_sidecar_integration::{AppInfo, Caller, CellCa, IssuedCert, LaunchOptions};

fn serial_of(cert: &IssuedCert) -> String {
    normalize_serial(&cert.serial)
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn source_files_serves_the_apps_own_pem_files_and_reloads_them_when_they_change() {
    let app = AppInfo::new("backend");
    let identity = app.instance_identity();
    let ca = CellCa::shared().unwrap();
    let (_d1, shipped) = ca.issue_client(&identity).unwrap();
    let staging_dir = http_app_with(&[(
        "tls-sidecar.yml",
        "certificate:\n  source: files\n  cert_file: certs/server.pem\n  key_file: certs/server.key\n",
    )]);
    let certs = app_dir(&staging_dir).join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&shipped.cert, certs.join("server.pem")).unwrap();
    std::fs::copy(&shipped.key, certs.join("server.key")).unwrap();
    let staging = stage_ok(
        &app,
        &app_dir(&staging_dir),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let opts = LaunchOptions {
        identity: Some(identity.clone()),
        ..LaunchOptions::default()
    };
    let instance = launch_ready(&staging, &opts, &[TLS_PORT]);
    let conn = connect_tls(&instance, None).unwrap();
    assert_eq!(peer_serial(&conn).unwrap(), serial_of(&shipped));
    assert_ne!(
        serial_of(&shipped),
        normalize_serial(&instance.credentials().serial()),
        "the instance identity must not be what is served"
    );
    let m = metrics(&instance).unwrap();
    assert_eq!(
        m.value("tls_sidecar_certificate_expiry_timestamp_seconds")
            .unwrap(),
        cert_not_after_unix(&shipped.cert).unwrap() as f64
    );

    // Replace them in the running instance (key first, then the chain, each by rename).
    let (_d2, next) = ca.issue_client(&identity).unwrap();
    let live = instance.droplet_dir().join("app").join("certs");
    for (from, name) in [(&next.key, "server.key"), (&next.cert, "server.pem")] {
        let tmp = live.join(format!(".{name}.tmp"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, live.join(name)).unwrap();
    }
    poll(
        Deadline::after(Duration::from_secs(60)),
        "new connections to present the replaced files",
        || {
            let conn = connect_tls(&instance, None)?;
            Ok((peer_serial(&conn)? == serial_of(&next)).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.logs()));
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn source_service_serves_the_bound_credentials_and_trusts_their_ca() {
    let mut app = AppInfo::new("backend");
    let identity = app.instance_identity();
    // A certificate from another CA (think: a CredHub-generated one), bound as a service.
    let vault = CellCa::generate().unwrap();
    let (_d, served) = vault.issue_client(&identity).unwrap();
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    app.services = serde_json::json!({
        "user-provided": [{
            "name": "my-tls-cert",
            "label": "user-provided",
            "tags": [],
            "credentials": {
                "certificate": pem(&served.cert),
                "private_key": pem(&served.key),
                "ca": pem(vault.root_cert()),
            },
        }],
    });
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    client_auth: required\n\
         certificate:\n  source: service\n  service: my-tls-cert\n",
    );
    let opts = LaunchOptions {
        identity: Some(identity.clone()),
        ..LaunchOptions::default()
    };
    let instance = launch_ready(&staging, &opts, &[TLS_PORT]);

    // Clients that trust the service's CA see the served certificate.
    let root = vault.root_cert().to_path_buf();
    let config = tls_sidecar_integration::tls::client_config(&root, None).unwrap();
    let tcp = instance.connect(TLS_PORT).unwrap();
    let conn = tls_sidecar_integration::tls::handshake(config, instance.guid(), tcp)
        .unwrap_or_else(|e| {
            panic!("{e}\n{}", instance.logs());
        });
    assert_eq!(peer_serial(&conn).unwrap(), serial_of(&served));

    // Callers from the service's CA and from the platform CA are both verified.
    let from_vault = Caller::issued(
        "an app with a certificate from the service's CA",
        &vault,
        &identity.app_in_other_org(),
    )
    .unwrap();
    let from_cell = Caller::issued(
        "an app with a platform identity",
        &CellCa::shared().unwrap(),
        &identity.app_in_other_org(),
    )
    .unwrap();
    let stranger = Caller::issued(
        "an app with a certificate from an unknown CA",
        &CellCa::generate().unwrap(),
        &identity.app_in_other_org(),
    )
    .unwrap();
    // curl_as verifies the server against the platform root: use a bundle with both roots.
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bundle.path(),
        format!(
            "{}{}",
            pem(vault.root_cert()),
            pem(instance.credentials().ca().root_cert())
        ),
    )
    .unwrap();
    for (caller, expect) in [
        (&from_vault, Expect::Served),
        (&from_cell, Expect::Served),
        (&stranger, Expect::Refused),
    ] {
        let cert = caller.cert.as_ref().unwrap();
        let out = tls_sidecar_integration::sidecar::curl_on(
            &instance,
            TLS_PORT,
            "/",
            Some(cert),
            &["--cacert", &bundle.path().display().to_string()],
        )
        .unwrap();
        match expect {
            Expect::Served => {
                assert!(
                    out.status.success(),
                    "{}: {}",
                    caller.what,
                    output_text(&out)
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO);
            }
            _ => assert!(
                !out.status.success(),
                "{}: {}",
                caller.what,
                output_text(&out)
            ),
        }
    }
}
