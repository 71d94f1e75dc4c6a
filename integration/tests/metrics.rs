//! `/metrics` on the admin port moves with what callers do: connections, handshake failures by
//! reason, denials, bytes, request latency, the certificate's expiry and reloads.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::callers::{Expect, curl_as};
use common::*;
use std::time::Duration;
use tls_sidecar_integration::cell::cert_not_after_unix;
use tls_sidecar_integration::sidecar::{Metrics, TLS_PORT, curl_on, metrics};
use tls_sidecar_integration::util::{Deadline, poll};
use tls_sidecar_integration::{AppInfo, Callers, Instance, LaunchOptions};

fn series(family: &str, port: u16) -> String {
    format!("tls_sidecar_{family}{{listener=\"{port}\"}}")
}

fn failures(reason: &str, port: u16) -> String {
    format!("tls_sidecar_handshake_failures_total{{listener=\"{port}\",reason=\"{reason}\"}}")
}

/// Waits until every `(series, expected)` holds (the server may count a moment after the
/// client is done), and returns that scrape.
fn wait_for(instance: &Instance, expected: &[(String, f64)]) -> Metrics {
    poll(
        Deadline::after(Duration::from_secs(20)),
        "the metrics to reach their expected values",
        || {
            let m = metrics(instance)?;
            let mut wrong = Vec::new();
            for (s, want) in expected {
                let got = m.value(s)?;
                if got != *want {
                    wrong.push(format!("{s} = {got}, expected {want}"));
                }
            }
            if wrong.is_empty() {
                Ok(Some(m))
            } else {
                Err(tls_sidecar_integration::Error::msg(format!(
                    "{}\n{}",
                    wrong.join("\n"),
                    m.0
                )))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.logs()))
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_tcp_mode_connections_bytes_and_handshake_failures_are_counted_by_reason() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let staging = stage_with_config(
        &app,
        &format!(
            "listeners:\n  - port: 8443\n    allow: [cf:app:{}]\n",
            callers.allowed.app_guid().unwrap()
        ),
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let p = TLS_PORT;
    let m0 = metrics(&instance).unwrap();
    let v0 = |s: &str| m0.value(s).unwrap();
    assert_eq!(v0(&series("connections_total", p)), 0.0, "{}", m0.0);
    assert_eq!(v0(&series("connections_active", p)), 0.0, "{}", m0.0);

    for _ in 0..3 {
        curl_as(&instance, p, &callers.allowed, Expect::Served);
    }
    let m1 = wait_for(
        &instance,
        &[
            (series("connections_total", p), 3.0),
            (series("connections_active", p), 0.0),
        ],
    );
    // Three requests in, three bodies out (plus HTTP overhead).
    assert!(
        m1.value(&series("received_bytes_total", p)).unwrap() > 3.0 * 60.0,
        "{}",
        m1.0
    );
    assert!(
        m1.value(&series("sent_bytes_total", p)).unwrap() > 3.0 * HELLO.len() as f64,
        "{}",
        m1.0
    );

    curl_as(&instance, p, &callers.same_space, Expect::Refused);
    curl_as(&instance, p, &callers.other_org, Expect::Refused);
    curl_as(&instance, p, &callers.foreign_ca, Expect::Refused);
    curl_as(&instance, p, &callers.expired, Expect::Refused);
    curl_as(&instance, p, &callers.anonymous, Expect::Refused);
    wait_for(
        &instance,
        &[
            (series("connections_total", p), 8.0),
            (series("connections_active", p), 0.0),
            (failures("denied", p), 2.0),
            (failures("client_cert_invalid", p), 2.0),
            (failures("client_cert_missing", p), 1.0),
            (failures("timeout", p), 0.0),
            (failures("no_certificate", p), 0.0),
            // In tcp mode a denial happens in the handshake and is an authorization denial too.
            (series("authorization_denials_total", p), 2.0),
            (series("request_duration_seconds_count", p), 0.0),
        ],
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn in_http_mode_requests_latency_and_403_denials_are_counted() {
    let app = AppInfo::new("backend");
    let callers = Callers::for_server(&app.instance_identity()).unwrap();
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\n    allow: [cf:same-space]\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let p = TLS_PORT;
    // Three requests on one keep-alive connection (curl reuses it for the same host).
    let guid = instance.guid().to_owned();
    let url = |path: &str| format!("https://{guid}:{p}{path}");
    let (u1, u2) = (url("/headers"), url("/env"));
    let out = curl_on(
        &instance,
        p,
        "/",
        callers.allowed.cert.as_ref(),
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            &u1,
            "-o",
            "/dev/null",
            &u2,
            "-o",
            "/dev/null",
        ],
    )
    .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for(
        &instance,
        &[
            (series("connections_total", p), 1.0),
            (series("request_duration_seconds_count", p), 3.0),
            (series("authorization_denials_total", p), 0.0),
        ],
    );
    curl_as(&instance, p, &callers.other_space, Expect::Forbidden);
    let m = wait_for(
        &instance,
        &[
            (series("connections_total", p), 2.0),
            (series("authorization_denials_total", p), 1.0),
            // In http mode the handshake succeeds: the 403 is not a handshake failure.
            (failures("denied", p), 0.0),
            (series("connections_active", p), 0.0),
        ],
    );
    // Every request's latency landed in a bucket: +Inf equals the count.
    let count = m
        .value(&series("request_duration_seconds_count", p))
        .unwrap();
    assert!(count >= 3.0, "{}", m.0);
    assert_eq!(
        m.value(&format!(
            "tls_sidecar_request_duration_seconds_bucket{{listener=\"{p}\",le=\"+Inf\"}}"
        ))
        .unwrap(),
        count,
        "{}",
        m.0
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn the_certificate_expiry_is_the_instance_certs_not_after_and_a_rotation_counts_a_successful_reload()
 {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let cert = instance.credentials().cert_path();
    let expiry = "tls_sidecar_certificate_expiry_timestamp_seconds".to_owned();
    let success = "tls_sidecar_certificate_reloads_total{result=\"success\"}".to_owned();
    let not_after = cert_not_after_unix(&cert).unwrap() as f64;
    let m0 = wait_for(&instance, &[(expiry.clone(), not_after)]);
    let reloads = m0.value(&success).unwrap();

    // A rotation with a different lifetime, so the expiry visibly moves.
    instance
        .credentials()
        .rotate(Duration::from_secs(30 * 3600))
        .unwrap();
    let rotated = cert_not_after_unix(&cert).unwrap() as f64;
    assert_ne!(rotated, not_after);
    poll(
        Deadline::after(Duration::from_secs(60)),
        "a successful reload with the new expiry",
        || {
            let m = metrics(&instance)?;
            Ok((m.value(&success)? > reloads && m.value(&expiry)? == rotated).then_some(()))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            metrics(&instance).map(|m| m.0).unwrap_or_default(),
            instance.logs()
        )
    });
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_silent_client_counts_as_a_timeout_and_plaintext_as_a_protocol_failure() {
    use std::io::{Read, Write};
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\nlimits:\n  handshake_timeout: 1s\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let p = TLS_PORT;
    // Connects and says nothing: the sidecar gives up after handshake_timeout and closes.
    let mut silent = instance.connect(p).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent connection should be closed by the sidecar: {read:?}"
    );
    // Plain HTTP to the TLS port.
    let mut plain = instance.connect(p).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains(HELLO),
        "plaintext reached the app"
    );
    wait_for(
        &instance,
        &[
            (series("connections_total", p), 2.0),
            (series("connections_active", p), 0.0),
            (failures("timeout", p), 1.0),
            (failures("protocol", p), 1.0),
        ],
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn connections_beyond_max_connections_are_refused_at_once_and_counted() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\nlimits:\n  max_connections: 2\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let p = TLS_PORT;
    let host = instance.guid().to_owned();
    let get = |c: &mut tls_sidecar_integration::tls::TlsStream| {
        tls_sidecar_integration::http::request(c, "GET", "/", &host, &[])
    };
    let mut first = tls_sidecar_integration::sidecar::connect_tls(&instance, None).unwrap();
    let mut second = tls_sidecar_integration::sidecar::connect_tls(&instance, None).unwrap();
    assert_eq!(get(&mut first).unwrap().status, 200);
    assert_eq!(get(&mut second).unwrap().status, 200);
    wait_for(&instance, &[(series("connections_active", p), 2.0)]);
    // The third gets nowhere, and quickly.
    let started = std::time::Instant::now();
    let third = tls_sidecar_integration::sidecar::connect_tls(&instance, None)
        .and_then(|mut c| get(&mut c));
    assert!(third.is_err(), "a third connection was served: {third:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing took {:?}",
        started.elapsed()
    );
    wait_for(
        &instance,
        &[
            (series("connections_refused_total", p), 1.0),
            (series("connections_active", p), 2.0),
        ],
    );
    // Once one closes, there is room again.
    drop(first);
    poll(
        Deadline::after(Duration::from_secs(20)),
        "a new connection to be served after one closed",
        || {
            let mut c = tls_sidecar_integration::sidecar::connect_tls(&instance, None)?;
            Ok((get(&mut c)?.status == 200).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.logs()));
    assert_eq!(get(&mut second).unwrap().status, 200);
}
