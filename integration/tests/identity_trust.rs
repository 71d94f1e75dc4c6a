//! Identity comes only from the platform, and resumption cannot outlive trust, through the
//! packaged buildpack in the local CF emulation: a partner CA in `trust.ca_files` signing an
//! allowed app's OUs (curl and `openssl s_client`), and `openssl s_client -sess_out/-sess_in`
//! resuming a session after the client certificate expired or its CA left
//! `$CF_SYSTEM_CERT_PATH` (TLS 1.3 tickets and TLS 1.2 session IDs).

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::callers::{Expect, call_as};
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tls_sidecar_integration::sidecar::{self, TLS_PORT, curl_on, s_client_send};
use tls_sidecar_integration::util::Deadline;
use tls_sidecar_integration::{AppInfo, Caller, CellCa, Instance, IssuedCert, LaunchOptions};

/// `allow: [cf:app:<allowed>]` in `mode`, trusting `partner-ca.pem` (the app's own file) as
/// well as the platform's CAs.
fn partner_config(mode: &str, allowed_app: &str) -> String {
    format!(
        "listeners:\n  - port: 8443\n    mode: {mode}\n    allow: [cf:app:{allowed_app}]\n\
         trust:\n  ca_files: [partner-ca.pem]\n"
    )
}

/// A partner CA (with cf-deployment's very names, as a lookalike would have) signs the allowed
/// app's identity; the app trusts that CA through `trust.ca_files`.
fn a_partner_ca_cannot_speak_for_an_allowed_app(mode: &str) {
    let app = AppInfo::new("backend");
    let platform = CellCa::shared().unwrap();
    let partner = CellCa::generate().unwrap();
    let allowed = app.instance_identity().another_app_same_space();
    let config = partner_config(mode, &allowed.app_guid);
    let partner_pem = std::fs::read_to_string(partner.root_cert()).unwrap();
    let dir = http_app_with(&[
        ("tls-sidecar.yml", config.as_str()),
        ("partner-ca.pem", partner_pem.as_str()),
    ]);
    let staging = stage_ok(
        &app,
        &app_dir(&dir),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);

    let forged = Caller::issued(
        "the allowed app's identity from a partner CA in trust.ca_files",
        &partner,
        &allowed,
    )
    .unwrap();
    let genuine = Caller::issued("the allowed app", &platform, &allowed).unwrap();
    match mode {
        "tcp" => call_as(&instance, TLS_PORT, &forged, Expect::Refused),
        _ => {
            // The chain verifies, so http mode answers 403, saying only "not allowed"; the
            // reason (the CA is not the platform's) goes to the log (checked below).
            let token = probe();
            let out = curl_on(
                &instance,
                TLS_PORT,
                &format!("/?{token}"),
                forged.cert.as_ref(),
                &["--write-out", "\n%{http_code}"],
            )
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let what = format!("{}\n{}", output_text(&out), instance.logs());
            assert_eq!(stdout, "not allowed\n\n403", "{what}");
            assert!(!app_log(&instance).contains(&token), "{what}");
        }
    }
    instance
        .process(sidecar::NAME)
        .unwrap()
        .wait_for_log("not the platform instance-identity CA", ready())
        .unwrap();
    call_as(&instance, TLS_PORT, &genuine, Expect::Served);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_tcp_mode_a_partner_ca_signing_the_allowed_apps_ous_is_refused_with_an_alert() {
    a_partner_ca_cannot_speak_for_an_allowed_app("tcp");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_http_mode_a_partner_ca_signing_the_allowed_apps_ous_gets_403_and_the_log_names_the_ca() {
    a_partner_ca_cannot_speak_for_an_allowed_app("http");
}

/// `openssl s_client` as `client` sending one HTTP/1.0 request, reading the session from
/// `sess_in` if given and writing it to `sess_out`; `version` is e.g. `-tls1_3`. Returns the
/// whole output.
fn s_client_session(
    instance: &Instance,
    client: &IssuedCert,
    version: &str,
    sess_in: Option<&Path>,
    sess_out: &Path,
    token: &str,
) -> String {
    let request = format!(
        "GET /?{token} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        instance.guid()
    );
    let out_path = sess_out.display().to_string();
    let in_path = sess_in.map(|p| p.display().to_string());
    let mut extra = vec![version, "-sess_out", &out_path];
    if version == "-tls1_2" {
        // Session IDs, the server-side cache (tickets are the TLS 1.3 case).
        extra.push("-no_ticket");
    }
    if let Some(p) = &in_path {
        extra.extend_from_slice(&["-sess_in", p]);
    }
    let (_ok, out) =
        s_client_send(instance, TLS_PORT, Some(client), request.as_bytes(), &extra).unwrap();
    out
}

/// Whether s_client says the session was resumed.
fn reused(out: &str) -> bool {
    out.lines().any(|l| l.starts_with("Reused,"))
}

/// Waits (bounded) until the wall clock is past `t`.
fn until_past(t: SystemTime) {
    let deadline = Deadline::after(Duration::from_secs(120));
    tls_sidecar_integration::util::poll(deadline, "the certificate to expire", || {
        Ok((SystemTime::now() > t).then_some(()))
    })
    .unwrap();
}

fn an_expired_client_certificate_cannot_resume(version: &str) {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    client_auth: required\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let ca = CellCa::shared().unwrap();
    let sessions = tempfile::tempdir().unwrap();
    let session = sessions.path().join("session.pem");

    // Valid for a short while: long enough for two connections on a loaded machine.
    let now = SystemTime::now();
    let expiry = now + Duration::from_secs(20);
    let (_dir, client) = ca
        .issue_client_between(
            &app.instance_identity().another_app_same_space(),
            now - Duration::from_secs(60),
            expiry,
        )
        .unwrap();
    let token = probe();
    let first = s_client_session(&instance, &client, version, None, &session, &token);
    assert!(first.contains(HELLO), "{first}\n{}", instance.logs());
    let token = probe();
    let again = s_client_session(
        &instance,
        &client,
        version,
        Some(&session),
        &session,
        &token,
    );
    assert!(
        reused(&again) && again.contains(HELLO),
        "resumption works while the certificate is valid: {again}"
    );

    until_past(expiry + Duration::from_secs(1));
    let token = probe();
    let late = s_client_session(
        &instance,
        &client,
        version,
        Some(&session),
        &session,
        &token,
    );
    let what = format!("{late}\n{}", instance.logs());
    assert!(reused(&late), "the server resumed the session: {what}");
    assert!(!late.contains(HELLO), "{what}");
    assert!(!app_log(&instance).contains(&token), "{what}");
    instance
        .process(sidecar::NAME)
        .unwrap()
        .wait_for_log(
            "resumed session refused: client certificate rejected: expired",
            ready(),
        )
        .unwrap();
    let metrics = sidecar::metrics(&instance).unwrap();
    assert_eq!(
        metrics
            .value(&format!(
                "tls_sidecar_handshake_failures_total{{listener=\"{TLS_PORT}\",reason=\"client_cert_invalid\"}}"
            ))
            .unwrap(),
        1.0
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tls13_ticket_cannot_resume_once_the_client_certificate_has_expired() {
    an_expired_client_certificate_cannot_resume("-tls1_3");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tls12_session_id_cannot_resume_once_the_client_certificate_has_expired() {
    an_expired_client_certificate_cannot_resume("-tls1_2");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn sessions_of_a_ca_removed_from_cf_system_cert_path_are_not_resumed() {
    // A cell of our own: its system certificate directory is ours to change.
    let cell = Arc::new(CellCa::generate().unwrap());
    let partner = CellCa::generate().unwrap();
    std::fs::copy(
        partner.root_cert(),
        cell.system_cert_dir().join("trusted-ca-2.crt"),
    )
    .unwrap();
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    client_auth: required\n",
    );
    let opts = LaunchOptions {
        ca: Some(cell.clone()),
        ..LaunchOptions::default()
    };
    let instance = launch_ready(&staging, &opts, &[TLS_PORT]);
    let (_dir, client) = partner
        .issue_client(&app.instance_identity().app_in_other_org())
        .unwrap();
    let sessions = tempfile::tempdir().unwrap();
    let mut saved = Vec::new();
    for version in ["-tls1_3", "-tls1_2"] {
        let session = sessions.path().join(format!("session{version}.pem"));
        let first = s_client_session(&instance, &client, version, None, &session, &probe());
        assert!(
            first.contains(HELLO),
            "{version}: {first}\n{}",
            instance.logs()
        );
        let again = s_client_session(
            &instance,
            &client,
            version,
            Some(&session),
            &session,
            &probe(),
        );
        assert!(
            reused(&again) && again.contains(HELLO),
            "{version}: {again}"
        );
        saved.push((version, session));
    }

    // The operator drops the partner CA.
    std::fs::remove_file(cell.system_cert_dir().join("trusted-ca-2.crt")).unwrap();
    tls_sidecar_integration::util::poll(ready(), "the partner CA to be dropped", || {
        // A request, so an accepted connection ends as soon as the app has answered.
        let request = format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", instance.guid());
        let (_ok, out) = s_client_send(
            &instance,
            TLS_PORT,
            Some(&client),
            request.as_bytes(),
            &["-tls1_3"],
        )
        .unwrap();
        Ok(out.contains("alert").then_some(()))
    })
    .unwrap();
    for (version, session) in saved {
        let token = probe();
        let out = s_client_session(
            &instance,
            &client,
            version,
            Some(&session),
            &session,
            &token,
        );
        let what = format!("{version}: {out}\n{}", instance.logs());
        assert!(!out.contains(HELLO), "{what}");
        assert!(!app_log(&instance).contains(&token), "{what}");
        // The listener's ticket key and session cache were replaced with the trust: the
        // client falls back to a full handshake, where its certificate is refused.
        assert!(!reused(&out), "{what}");
        assert!(out.contains("alert"), "{what}");
    }
}
