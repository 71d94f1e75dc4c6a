//! `tls-sidecar check`, run inside a running instance as `cf ssh APP -c '...'` would: as vcap,
//! with the instance's environment, after the profile scripts.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::{Duration, SystemTime};
use tls_sidecar_integration::cell::cert_not_after_iso;
use tls_sidecar_integration::launch::VCAP_UID;
use tls_sidecar_integration::sidecar::TLS_PORT;
use tls_sidecar_integration::util::chown_tree;
use tls_sidecar_integration::{AppInfo, CellCa, Instance, LaunchOptions};

const CHECK: &str = "/home/vcap/deps/0/bin/tls-sidecar check";

fn check(instance: &Instance, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = instance.ssh(CHECK, env).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- `{CHECK}` exited {:?} ---\n{text}", out.status.code());
    (out.status.code(), text)
}

/// A directory in the instance's app dir, owned by vcap: `(host path, path inside)`.
fn app_subdir(instance: &Instance, name: &str) -> (std::path::PathBuf, String) {
    let host = instance.droplet_dir().join("app").join(name);
    std::fs::create_dir_all(&host).unwrap();
    chown_tree(&host, VCAP_UID, VCAP_UID).unwrap();
    (host, format!("/home/vcap/app/{name}"))
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn check_in_a_healthy_instance_exits_0_and_reports_its_identity_names_and_expiry() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\n    allow: [cf:same-space]\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let (code, report) = check(&instance, &[]);
    assert_eq!(code, Some(0), "{report}\n{}", instance.logs());
    let id = instance.identity();
    for (what, needle) in [
        ("the instance GUID", id.instance_guid.clone()),
        ("the app GUID", id.app_guid.clone()),
        ("the IP SAN", id.ip.to_string()),
        ("the listener port", "8443".to_owned()),
    ] {
        assert!(report.contains(&needle), "the report lacks {what} {needle}");
    }
    // The expiry, in any of the usual spellings of its date.
    let iso = cert_not_after_iso(&instance.credentials().cert_path()).unwrap();
    let date = iso.split_whitespace().next().unwrap().to_owned();
    assert!(
        report.contains(&date),
        "the report does not name the expiry date {date} ({iso})"
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn check_exits_1_naming_an_empty_trust_dir_when_client_certificates_are_required() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    client_auth: required\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let (_host, inside) = app_subdir(&instance, "no-certs");
    let (code, report) = check(&instance, &[("CF_SYSTEM_CERT_PATH", &inside)]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&inside),
        "the report does not name the empty trust dir {inside}"
    );
    // The same instance's own setup is fine.
    let (code, report) = check(&instance, &[]);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn check_exits_1_naming_an_expired_instance_certificate() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let (host, inside) = app_subdir(&instance, "expired");
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let issued = CellCa::shared()
        .unwrap()
        .issue_between(
            instance.identity(),
            now - 3 * day,
            now - day,
            2048,
            &host,
            "instance",
        )
        .unwrap();
    assert!(issued.cert.starts_with(&host));
    let (code, report) = check(
        &instance,
        &[
            ("CF_INSTANCE_CERT", &format!("{inside}/instance.crt")),
            ("CF_INSTANCE_KEY", &format!("{inside}/instance.key")),
        ],
    );
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.to_ascii_lowercase().contains("expired"),
        "the report does not say the certificate expired"
    );
}
