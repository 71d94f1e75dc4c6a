//! `mode: http`: HTTP/1.1 and HTTP/2 by ALPN, the caller's certificate for the app in
//! `X-Forwarded-Client-Cert` (checked against values computed with `openssl`), anti-spoofing,
//! `X-Forwarded-*`, upgrades, and a `502` when the app is down.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use tls_sidecar_integration::cell::{cert_pem_body, cert_sha256_hex, cert_subject_rfc2253};
use tls_sidecar_integration::http::read_head;
use tls_sidecar_integration::sidecar::{TLS_PORT, connect_tls_on, curl_on, wait_sidecar_ready};
use tls_sidecar_integration::{AppInfo, Caller, CellCa, Instance, IssuedCert, LaunchOptions};

/// The request headers the app saw, from `GET /headers` through curl with `extra` arguments.
fn app_headers(
    instance: &Instance,
    port: u16,
    client: Option<&IssuedCert>,
    extra: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let out = curl_on(instance, port, "/headers", client, extra).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        instance.logs()
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => panic!(
            "/headers did not answer a JSON object: {}",
            output_text(&out)
        ),
    }
}

/// Every value of header `name` (case-insensitive) the app saw, in order.
fn header(headers: &serde_json::Map<String, serde_json::Value>, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(name) {
            match v {
                serde_json::Value::String(s) => values.push(s.clone()),
                serde_json::Value::Array(a) => {
                    values.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)));
                }
                other => values.push(other.to_string()),
            }
        }
    }
    values
}

/// Envoy's XFCC element for `caller`, computed with the `openssl` CLI: SHA-256 fingerprint of
/// the leaf, its subject with `-nameopt RFC2253`, and the DNS SAN (the instance GUID).
fn expected_envoy_xfcc(caller: &Caller) -> String {
    let cert = &caller.cert.as_ref().unwrap().cert;
    let id = caller.identity.as_ref().unwrap();
    let subject = cert_subject_rfc2253(cert).unwrap();
    // The emulation's own idea of the subject agrees with OpenSSL's.
    assert_eq!(subject, id.rfc2253_subject());
    format!(
        "Hash={};Subject=\"{subject}\";DNS={}",
        cert_sha256_hex(cert).unwrap(),
        id.instance_guid
    )
}

fn a_verified_caller(app: &AppInfo) -> Caller {
    let ca = CellCa::shared().unwrap();
    Caller::issued(
        "an app in another org",
        &ca,
        &app.instance_identity().app_in_other_org(),
    )
    .unwrap()
}

const HTTP1: &[&str] = &["--http1.1"];
const HTTP2: &[&str] = &["--http2"];

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn curl_speaks_http_1_1_or_http_2_to_an_http_listener_and_http_1_1_to_a_tcp_one() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\n  - port: 9443\n    mode: tcp\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[8443, 9443]);
    for (port, flag, version) in [
        (8443, "--http1.1", "1.1"),
        (8443, "--http2", "2"),
        // A tcp listener must not offer h2: the app behind it speaks HTTP/1.1 only.
        (9443, "--http2", "1.1"),
        (9443, "--http1.1", "1.1"),
    ] {
        let out = curl_on(
            &instance,
            port,
            "/",
            None,
            &[flag, "--write-out", "\n%{http_version} %{http_code}"],
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            output_text(&out),
            instance.logs()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{HELLO}\n{version} 200"),
            "curl {flag} to {port}\n{}",
            output_text(&out)
        );
    }
    // Several concurrent HTTP/2 requests, all answered.
    let out = curl_on(
        &instance,
        8443,
        "/",
        None,
        &[
            "--http2",
            "--parallel",
            "--write-out",
            "%{http_version} %{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
            &format!("https://{}:8443/headers", instance.guid()),
            "-o",
            "/dev/null",
            &format!("https://{}:8443/env", instance.guid()),
            "-o",
            "/dev/null",
        ],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(text.lines().count(), 3, "{}", output_text(&out));
    assert!(
        text.lines().all(|l| l.starts_with("2 200")),
        "{}",
        output_text(&out)
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn the_app_sees_envoy_xfcc_equal_to_what_openssl_computes_and_x_forwarded_proto_https() {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\n    client_auth: required\n    xfcc: envoy\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let expected = expected_envoy_xfcc(&caller);
    eprintln!("expected XFCC: {expected}");
    for proto in [HTTP1, HTTP2] {
        let seen = app_headers(&instance, TLS_PORT, caller.cert.as_ref(), proto);
        assert_eq!(
            header(&seen, "x-forwarded-client-cert"),
            vec![expected.clone()],
            "{proto:?}: {seen:?}"
        );
        assert_eq!(
            header(&seen, "x-forwarded-proto"),
            vec!["https".to_owned()],
            "{proto:?}: {seen:?}"
        );
        let xff = header(&seen, "x-forwarded-for");
        assert!(
            xff.len() == 1 && xff[0].contains("127.0.0.1"),
            "X-Forwarded-For should name the caller (127.0.0.1): {proto:?}: {seen:?}"
        );
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn xfcc_raw_is_the_client_certificates_pem_body_and_xfcc_off_sends_nothing() {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let staging = stage_with_config(
        &app,
        "listeners:\n\
         \x20 - port: 8443\n    mode: http\n    client_auth: required\n    xfcc: raw\n\
         \x20 - port: 9443\n    mode: http\n    client_auth: required\n    xfcc: off\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[8443, 9443]);
    let body = cert_pem_body(&caller.cert.as_ref().unwrap().cert).unwrap();
    for proto in [HTTP1, HTTP2] {
        let seen = app_headers(&instance, 8443, caller.cert.as_ref(), proto);
        assert_eq!(
            header(&seen, "x-forwarded-client-cert"),
            vec![body.clone()],
            "{proto:?}"
        );
        let seen = app_headers(&instance, 9443, caller.cert.as_ref(), proto);
        assert_eq!(
            header(&seen, "x-forwarded-client-cert"),
            Vec::<String>::new(),
            "{proto:?}: {seen:?}"
        );
        assert_eq!(header(&seen, "x-forwarded-proto"), vec!["https".to_owned()]);
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_spoofed_x_forwarded_client_cert_never_reaches_the_app_with_or_without_a_client_certificate() {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let staging = stage_with_config(
        &app,
        "listeners:\n\
         \x20 - port: 8443\n    mode: http\n    client_auth: optional\n\
         \x20 - port: 9443\n    mode: http\n    client_auth: optional\n    xfcc: off\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[8443, 9443]);
    let spoof = [
        "-H",
        "X-Forwarded-Client-Cert: Hash=0000;Subject=\"CN=admin,OU=app:00000000-0000-4000-8000-000000000000\"",
        "-H",
        "x-forwarded-client-cert: By=spiffe://evil;Hash=1111",
    ];
    let expected = expected_envoy_xfcc(&caller);
    for proto in [HTTP1, HTTP2] {
        let args: Vec<&str> = proto.iter().chain(spoof.iter()).copied().collect();
        // No certificate: no XFCC at all.
        let seen = app_headers(&instance, 8443, None, &args);
        assert_eq!(
            header(&seen, "x-forwarded-client-cert"),
            Vec::<String>::new(),
            "{proto:?}: {seen:?}"
        );
        // A certificate: exactly its own element, nothing appended to the spoofed ones.
        let seen = app_headers(&instance, 8443, caller.cert.as_ref(), &args);
        assert_eq!(
            header(&seen, "x-forwarded-client-cert"),
            vec![expected.clone()],
            "{proto:?}: {seen:?}"
        );
        // xfcc: off removes it too.
        for client in [None, caller.cert.as_ref()] {
            let seen = app_headers(&instance, 9443, client, &args);
            assert_eq!(
                header(&seen, "x-forwarded-client-cert"),
                Vec::<String>::new(),
                "{proto:?}: {seen:?}"
            );
        }
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn an_upgrade_passes_through_http_mode_and_then_carries_raw_bytes_both_ways() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let mut tls = connect_tls_on(&instance, TLS_PORT, None, &["http/1.1"]).unwrap();
    write!(
        tls,
        "GET /upgrade HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        instance.guid()
    )
    .unwrap();
    tls.flush().unwrap();
    let head = read_head(&mut tls).unwrap();
    assert_eq!(head.status, 101, "{head:?}\n{}", instance.logs());
    assert_eq!(
        head.headers.get("upgrade").map(String::as_str),
        Some("echo"),
        "{head:?}"
    );
    for round in 0..3 {
        let msg = format!("{}-{round}\n", probe());
        tls.write_all(msg.as_bytes()).unwrap();
        tls.flush().unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("no echo in round {round}: {e}\n{}", instance.logs()));
        assert_eq!(String::from_utf8_lossy(&back), msg);
    }
    assert!(app_log(&instance).contains("upgraded to echo"));
    // Closing our side ends the app's echo loop (the half-close travels through).
    tls.conn.send_close_notify();
    let _ = tls.flush();
    drop(tls);
    instance
        .web()
        .unwrap()
        .wait_for_log("echo closed", ready())
        .unwrap();
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn when_the_app_is_down_an_http_listener_answers_502_with_a_one_line_reason() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let instance = tls_sidecar_integration::Instance::launch(
        &staging.droplet().unwrap(),
        &LaunchOptions {
            web: false,
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    wait_sidecar_ready(&instance, &[TLS_PORT], ready()).unwrap();
    for proto in [HTTP1, HTTP2] {
        let args: Vec<&str> = proto
            .iter()
            .copied()
            .chain(["--write-out", "\n%{http_code}"])
            .collect();
        let out = curl_on(&instance, TLS_PORT, "/", None, &args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", output_text(&out));
        let (body, status) = text.rsplit_once('\n').unwrap();
        assert_eq!(status, "502", "{proto:?}: {}", output_text(&out));
        let line = body.trim_end();
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "the 502 body should be one line: {}",
            output_text(&out)
        );
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn request_rules_admit_each_caller_to_its_paths_and_every_spelling_of_a_refused_one_stays_refused()
{
    let app = AppInfo::new("backend");
    let ca = CellCa::shared().unwrap();
    let me = app.instance_identity();
    let frontend = Caller::issued("frontend", &ca, &me.app_in_other_org()).unwrap();
    let neighbour = Caller::issued("a neighbour", &ca, &me.another_app_same_space()).unwrap();
    let frontend_guid = &frontend.identity.as_ref().unwrap().app_guid;
    let staging = stage_with_config(
        &app,
        &format!(
            "listeners:\n  - port: 8443\n    mode: http\n    rules:\n\
             \x20     - {{paths: [/admin/*], allow: []}}\n\
             \x20     - {{paths: [/headers], methods: [GET], allow: [cf:app:{frontend_guid}]}}\n\
             \x20     - {{paths: [/], allow: [cf:same-space]}}\n"
        ),
    );
    assert!(
        staging.output.contains("rules[1]: GET /headers -> cf:app:"),
        "{}",
        staging.output
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    // curl answers with the status code only; --path-as-is sends dot segments unresolved.
    let status = |caller: &Caller, path: &str, proto: &[&str]| -> String {
        let mut extra = vec!["--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"];
        extra.extend_from_slice(proto);
        let out = curl_on(&instance, TLS_PORT, path, caller.cert.as_ref(), &extra).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for proto in [HTTP1, HTTP2] {
        assert_eq!(status(&frontend, "/headers", proto), "200", "{proto:?}");
        assert_eq!(status(&neighbour, "/headers", proto), "403", "{proto:?}");
        assert_eq!(status(&neighbour, "/", proto), "200", "{proto:?}");
        assert_eq!(status(&frontend, "/", proto), "403", "{proto:?}");
        assert_eq!(status(&neighbour, "/other", proto), "403", "{proto:?}");
        // The app (Python's http.server) routes only "/headers": it answers 200 below only
        // because the sidecar sent it the normal form of the path it authorized.
        assert_eq!(
            status(&frontend, "/x/../headers", proto),
            "200",
            "{proto:?}"
        );
        assert_eq!(
            status(&frontend, "//headers;v=1", proto),
            "200",
            "{proto:?}"
        );
        for spelling in [
            "/public/../admin/x",
            "/public/%2e%2e/admin/x",
            "/public/..;/admin/x",
            "//admin/x",
            "/%61dmin/x",
        ] {
            assert_eq!(
                status(&neighbour, spelling, proto),
                "403",
                "{spelling} {proto:?}"
            );
        }
        assert_eq!(
            status(&neighbour, "/public/..%2fadmin/x", proto),
            "400",
            "{proto:?}"
        );
    }
    let metrics = instance
        .exec(&["curl", "-sS", "http://127.0.0.1:8444/metrics"])
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for series in [
        "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"0\"} 10",
        "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"1\"} 2",
        "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"2\"} 2",
        "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"none\"} 2",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
}
