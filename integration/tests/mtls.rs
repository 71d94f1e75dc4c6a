//! Who may call: client certificates from the (fake) Diego cell against `allow` rules, through
//! `curl --cert/--key` and `openssl s_client` inside the instance, in tcp and http mode.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::callers::{Expect, call_as, curl_as};
use common::*;
use tls_sidecar_integration::sidecar::TLS_PORT;
use tls_sidecar_integration::{AppInfo, Callers, LaunchOptions};

fn opts() -> LaunchOptions {
    LaunchOptions::default()
}

/// `allow: [cf:app:<allowed>]` on 8443 in `mode`; every caller against it.
fn allow_one_app(mode: &str) {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let config = format!(
        "listeners:\n  - port: 8443\n    mode: {mode}\n    allow: [cf:app:{}]\n",
        callers.allowed.app_guid().unwrap()
    );
    let staging = stage_with_config(&app, &config);
    let instance = launch_ready(&staging, &opts(), &[TLS_PORT]);
    let denied = if mode == "http" {
        Expect::Forbidden
    } else {
        Expect::Refused
    };
    call_as(&instance, TLS_PORT, &callers.allowed, Expect::Served);
    call_as(&instance, TLS_PORT, &callers.same_space, denied);
    call_as(&instance, TLS_PORT, &callers.other_space, denied);
    call_as(&instance, TLS_PORT, &callers.other_org, denied);
    // Not verifiable: refused in the handshake whatever the mode.
    call_as(&instance, TLS_PORT, &callers.foreign_ca, Expect::Refused);
    call_as(&instance, TLS_PORT, &callers.expired, Expect::Refused);
    call_as(&instance, TLS_PORT, &callers.anonymous, Expect::Refused);
    // The allowed app still gets through after all those refusals.
    call_as(&instance, TLS_PORT, &callers.allowed, Expect::Served);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_tcp_mode_allow_cf_app_lets_only_that_app_through_and_refuses_everyone_else_with_a_tls_alert()
{
    allow_one_app("tcp");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_http_mode_allow_cf_app_answers_verified_strangers_403_and_refuses_unverifiable_callers_in_the_handshake()
 {
    allow_one_app("http");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn allow_cf_same_space_admits_every_app_of_the_space_and_no_app_of_another_space_or_org() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    allow: [cf:same-space]\n",
    );
    let instance = launch_ready(&staging, &opts(), &[TLS_PORT]);
    call_as(&instance, TLS_PORT, &callers.allowed, Expect::Served);
    call_as(&instance, TLS_PORT, &callers.same_space, Expect::Served);
    call_as(&instance, TLS_PORT, &callers.other_space, Expect::Refused);
    call_as(&instance, TLS_PORT, &callers.other_org, Expect::Refused);
    call_as(&instance, TLS_PORT, &callers.foreign_ca, Expect::Refused);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn tls_sidecar_allow_set_at_restart_takes_effect_without_restaging_as_the_readme_says() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    // No allow and no client_auth in the app's file: the defaults.
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n");
    // README: `cf set-env myapp TLS_SIDECAR_ALLOW cf:same-space && cf restart myapp`.
    let mut opts = opts();
    opts.env
        .insert("TLS_SIDECAR_ALLOW".into(), "cf:same-space".into());
    let instance = launch_ready(&staging, &opts, &[TLS_PORT]);
    curl_as(&instance, TLS_PORT, &callers.same_space, Expect::Served);
    curl_as(&instance, TLS_PORT, &callers.other_space, Expect::Refused);
    curl_as(&instance, TLS_PORT, &callers.anonymous, Expect::Refused);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn org_space_and_any_rules_set_with_tls_sidecar_allow_at_restart_take_effect_without_restaging() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let space = &callers.other_space.identity.as_ref().unwrap().space_guid;
    let org = &callers.other_org.identity.as_ref().unwrap().org_guid;
    let cases = [
        (
            "cf:same-org".to_owned(),
            [Expect::Served, Expect::Served, Expect::Forbidden],
        ),
        (
            format!("cf:space:{space},cf:org:{org}"),
            [Expect::Forbidden, Expect::Served, Expect::Served],
        ),
        (
            "cf:any".to_owned(),
            [Expect::Served, Expect::Served, Expect::Served],
        ),
    ];
    for (allow, [same_space, other_space, other_org]) in cases {
        eprintln!("TLS_SIDECAR_ALLOW={allow}");
        // `cf set-env backend TLS_SIDECAR_ALLOW ... && cf restart backend`.
        let mut opts = opts();
        opts.env.insert("TLS_SIDECAR_ALLOW".into(), allow.clone());
        // Explicit, so this test is about the rules (the implied `required` is tested above).
        opts.env
            .insert("TLS_SIDECAR_CLIENT_AUTH".into(), "required".into());
        let instance = launch_ready(&staging, &opts, &[TLS_PORT]);
        curl_as(&instance, TLS_PORT, &callers.same_space, same_space);
        curl_as(&instance, TLS_PORT, &callers.other_space, other_space);
        curl_as(&instance, TLS_PORT, &callers.other_org, other_org);
        curl_as(&instance, TLS_PORT, &callers.foreign_ca, Expect::Refused);
        curl_as(&instance, TLS_PORT, &callers.anonymous, Expect::Refused);
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn client_auth_optional_serves_anonymous_callers_but_still_refuses_certificates_it_cannot_verify() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    for mode in ["tcp", "http"] {
        let staging = stage_with_config(
            &app,
            &format!("listeners:\n  - port: 8443\n    mode: {mode}\n    client_auth: optional\n"),
        );
        let instance = launch_ready(&staging, &opts(), &[TLS_PORT]);
        call_as(&instance, TLS_PORT, &callers.anonymous, Expect::Served);
        call_as(&instance, TLS_PORT, &callers.other_org, Expect::Served);
        call_as(&instance, TLS_PORT, &callers.foreign_ca, Expect::Refused);
        call_as(&instance, TLS_PORT, &callers.expired, Expect::Refused);
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tcp_listener_and_an_http_listener_in_one_app_each_apply_their_own_rules() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let config = format!(
        "listeners:\n\
         \x20 - port: 8443\n    mode: tcp\n    allow: [cf:app:{}]\n\
         \x20 - port: 9443\n    mode: http\n    allow: [cf:same-space]\n",
        callers.allowed.app_guid().unwrap()
    );
    let staging = stage_with_config(&app, &config);
    let instance = launch_ready(&staging, &opts(), &[8443, 9443]);
    call_as(&instance, 8443, &callers.allowed, Expect::Served);
    call_as(&instance, 9443, &callers.allowed, Expect::Served);
    call_as(&instance, 8443, &callers.same_space, Expect::Refused);
    call_as(&instance, 9443, &callers.same_space, Expect::Served);
    call_as(&instance, 8443, &callers.other_space, Expect::Refused);
    call_as(&instance, 9443, &callers.other_space, Expect::Forbidden);
    call_as(&instance, 9443, &callers.anonymous, Expect::Refused);
    // Each listener speaks its own mode: only the http one adds X-Forwarded-Proto.
    let headers = |port: u16| {
        let out = tls_sidecar_integration::sidecar::curl_on(
            &instance,
            port,
            "/headers",
            callers.allowed.cert.as_ref(),
            &[],
        )
        .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let lower = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .unwrap()
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .collect()
    };
    assert!(!lower(&headers(8443)).contains(&"x-forwarded-proto".to_owned()));
    assert!(lower(&headers(9443)).contains(&"x-forwarded-proto".to_owned()));
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tls_session_resumes_on_its_own_listener_but_never_on_another_listener_with_stricter_rules() {
    use tls_sidecar_integration::sidecar::s_client_send;
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let config = format!(
        "listeners:\n\
         \x20 - port: 8443\n    mode: tcp\n    allow: [cf:app:{}]\n\
         \x20 - port: 9443\n    mode: tcp\n    allow: [cf:same-space]\n",
        callers.allowed.app_guid().unwrap()
    );
    let staging = stage_with_config(&app, &config);
    let instance = launch_ready(&staging, &opts(), &[8443, 9443]);
    let sessions = tempfile::tempdir().unwrap();
    let session = sessions.path().join("same-space.pem").display().to_string();
    let request = |token: &str| {
        format!(
            "GET /?{token} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            instance.guid()
        )
    };
    // The same-space app is let in on 9443 and keeps the session ticket it gets there.
    let (_, out) = s_client_send(
        &instance,
        9443,
        callers.same_space.cert.as_ref(),
        request(&probe()).as_bytes(),
        &["-sess_out", &session],
    )
    .unwrap();
    assert!(out.contains(HELLO), "{out}");
    // It resumes on 9443 (so resumption is on and the next check means something)...
    let (_, out) = s_client_send(
        &instance,
        9443,
        callers.same_space.cert.as_ref(),
        request(&probe()).as_bytes(),
        &["-sess_in", &session],
    )
    .unwrap();
    assert!(
        out.contains("Reused, TLSv1.3"),
        "no resumption at all:\n{out}"
    );
    assert!(out.contains(HELLO), "{out}");
    // ...but 8443 only lets the allowed app in: the ticket from 9443 must not get it past that,
    // with or without a certificate.
    for client in [callers.same_space.cert.as_ref(), None] {
        let token = probe();
        let (_, out) = s_client_send(
            &instance,
            8443,
            client,
            request(&token).as_bytes(),
            &["-sess_in", &session],
        )
        .unwrap();
        assert!(
            !out.contains("Reused,"),
            "a session from 9443 was resumed on 8443:\n{out}"
        );
        assert!(!out.contains(HELLO), "{out}");
        assert!(!app_log(&instance).contains(&token), "{out}");
    }
}
