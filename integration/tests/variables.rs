//! `TLS_SIDECAR_*` variables (`cf set-env`) refine the staged configuration and never widen who
//! can reach the app: they cannot create a listener the staged file does not have, lower
//! `client_auth`, or empty `allow`. Staging refuses such a value when it is set then; the sidecar
//! refuses it at start (exit 64, the fix in the message) when it is set only at run time. Egress
//! names that export the same variable, and egress or admin addresses on ports CF reserves, fail
//! staging.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use tls_sidecar_integration::sidecar;
use tls_sidecar_integration::{AppInfo, Instance, LaunchOptions};

const EGRESS_ONLY: &str = "listeners: []\negress:\n  - name: backend\n    listen: 127.0.0.1:9001\n    target: backend.apps.internal:8443\n    expect: [cf:any]\n";
const REQUIRED: &str = "listeners:\n  - port: 8443\n    allow: [cf:same-space]\n";

fn stage_failing(app: &AppInfo, config: &str, phrases: &[&str]) -> String {
    let dir = http_app_with(&[("tls-sidecar.yml", config)]);
    let staging = stage(
        app,
        &app_dir(&dir),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let out = assert_supply_failed(&staging, phrases);
    assert_nothing_installed(&staging, 0);
    out
}

/// Launches `staging` with `env` set only at run time (`cf set-env` + `cf restart`) and returns
/// the sidecar's exit code and its output.
fn start_refused(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let staging = stage_with_config(&AppInfo::new("backend"), config);
    let mut opts = LaunchOptions::default();
    for (k, v) in env {
        opts.env.insert((*k).to_owned(), (*v).to_owned());
    }
    let instance = Instance::launch(&staging.droplet().unwrap(), &opts).unwrap();
    let p = instance.process(sidecar::NAME).unwrap();
    let status = p.wait_exit(Duration::from_secs(30)).unwrap();
    (status.code(), p.logs())
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_a_listener_variable_for_an_egress_only_configuration() {
    let app = AppInfo::new("frontend").with_env("TLS_SIDECAR_PORT", "8443");
    stage_failing(
        &app,
        EGRESS_ONLY,
        &[
            "TLS_SIDECAR_PORT",
            "cannot create one",
            "cf unset-env frontend TLS_SIDECAR_PORT",
        ],
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_an_allow_variable_that_names_no_caller() {
    let app = AppInfo::new("backend").with_env("TLS_SIDECAR_ALLOW", ",");
    stage_failing(&app, REQUIRED, &["TLS_SIDECAR_ALLOW", "names no caller"]);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_a_client_auth_variable_that_lowers_the_files_setting() {
    let app = AppInfo::new("backend").with_env("TLS_SIDECAR_CLIENT_AUTH", "none");
    stage_failing(
        &app,
        REQUIRED,
        &["TLS_SIDECAR_CLIENT_AUTH", "would lower client_auth"],
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn the_sidecar_refuses_to_start_when_a_run_time_variable_would_widen_ingress() {
    let cases: [(&str, (&str, &str), &str); 3] = [
        (
            EGRESS_ONLY,
            ("TLS_SIDECAR_PORT", "8443"),
            "cannot create one",
        ),
        (REQUIRED, ("TLS_SIDECAR_ALLOW", ","), "names no caller"),
        (
            REQUIRED,
            ("TLS_SIDECAR_CLIENT_AUTH", "optional"),
            "would lower client_auth",
        ),
    ];
    for (config, (var, value), phrase) in cases {
        let (code, logs) = start_refused(config, &[(var, value)]);
        assert_eq!(code, Some(64), "{var}={value}\n{logs}");
        assert!(logs.contains(var), "{logs}");
        assert!(logs.contains(phrase), "{logs}");
        assert!(
            logs.contains(&format!("cf unset-env backend {var}")),
            "{logs}"
        );
        // Nothing was bound: no port opened on the strength of the variable.
        assert!(!logs.contains("listening on"), "{logs}");
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_egress_names_that_export_the_same_variable() {
    let config = "egress:\n  - name: a-b\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n    expect: [cf:any]\n  - name: a_b\n    listen: 127.0.0.1:9002\n    target: c.apps.internal:8443\n    expect: [cf:any]\n";
    stage_failing(
        &AppInfo::new("frontend"),
        config,
        &["egress[1].name", "both export TLS_SIDECAR_EGRESS_A_B"],
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_egress_and_admin_addresses_on_ports_cf_reserves() {
    let egress = "egress:\n  - name: b\n    listen: 127.0.0.1:2222\n    target: b.apps.internal:8443\n    expect: [cf:any]\n";
    stage_failing(
        &AppInfo::new("frontend"),
        egress,
        &["egress[0].listen", "port 2222 is reserved", "cf ssh"],
    );
    stage_failing(
        &AppInfo::new("frontend"),
        "admin:\n  listen: 127.0.0.1:61443\n",
        &["admin.listen", "port 61443 is reserved"],
    );
}
