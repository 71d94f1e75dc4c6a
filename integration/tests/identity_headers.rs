//! One identity header, set only by the sidecar, as the app server sees it: the http-app
//! fixture reports the `HTTP_*` variables a CGI/WSGI/Rack/PHP server makes of the request's
//! headers and trailers (`-` and `_` alike, trailers merged in), and no caller-made spelling of
//! `X-Forwarded-Client-Cert`, `X-Forwarded-Proto`, `X-Forwarded-For`, `Forwarded` or
//! `X-Real-IP` may land there, as a header or as a trailer, over HTTP/1.1 or HTTP/2. Requests go
//! as raw bytes and raw HTTP/2 frames over TLS with a Diego-shaped client certificate: a client
//! library would normalise away the very names under test.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use tls_sidecar_integration::cell::{cert_sha256_hex, cert_subject_rfc2253};
use tls_sidecar_integration::http::{h2_request_with_trailers, read_response};
use tls_sidecar_integration::sidecar::{TLS_PORT, connect_tls_on};
use tls_sidecar_integration::{AppInfo, Caller, CellCa, Instance};

const CONFIG: &str =
    "listeners:\n  - port: 8443\n    mode: http\n    client_auth: required\n    xfcc: envoy\n";

/// What a caller forges, under names an app server reads as the sidecar's.
const FORGED_XFCC: &str =
    "Hash=00;Subject=\"CN=admin,OU=app:00000000-0000-4000-8000-000000000000\"";

fn a_verified_caller(app: &AppInfo) -> Caller {
    let ca = CellCa::shared().unwrap();
    Caller::issued(
        "an app in another org",
        &ca,
        &app.instance_identity().app_in_other_org(),
    )
    .unwrap()
}

/// Envoy's XFCC element for `caller`, from the `openssl` CLI's fingerprint and subject.
fn expected_xfcc(caller: &Caller) -> String {
    let cert = &caller.cert.as_ref().unwrap().cert;
    format!(
        "Hash={};Subject=\"{}\";DNS={}",
        cert_sha256_hex(cert).unwrap(),
        cert_subject_rfc2253(cert).unwrap(),
        caller.identity.as_ref().unwrap().instance_guid
    )
}

/// The CGI variables the app made of a request: exactly the sidecar's three values, and no
/// `Forwarded`, `X-Real-IP` or `Proxy` at all; plus the harmless trailer, to show trailers do
/// flow.
fn assert_only_the_sidecars(echo: &Value, xfcc: &str, peer: &str, what: &str) {
    let cgi = &echo["cgi"];
    let values = |name: &str| -> Vec<String> {
        cgi[name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values("HTTP_X_FORWARDED_CLIENT_CERT"),
        [xfcc],
        "{what}: {echo}"
    );
    assert_eq!(
        values("HTTP_X_FORWARDED_PROTO"),
        ["https"],
        "{what}: {echo}"
    );
    assert_eq!(values("HTTP_X_FORWARDED_FOR"), [peer], "{what}: {echo}");
    assert_eq!(
        values("HTTP_FORWARDED"),
        Vec::<String>::new(),
        "{what}: {echo}"
    );
    assert_eq!(
        values("HTTP_X_REAL_IP"),
        Vec::<String>::new(),
        "{what}: {echo}"
    );
    // httpoxy: HTTP_PROXY is where the app's own HTTP clients look for a proxy.
    assert_eq!(values("HTTP_PROXY"), Vec::<String>::new(), "{what}: {echo}");
}

fn launch(app: &AppInfo) -> Instance {
    let staging = stage_with_config(app, CONFIG);
    launch_ready(
        &staging,
        &tls_sidecar_integration::LaunchOptions::default(),
        &[TLS_PORT],
    )
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn no_spelling_of_the_identity_headers_reaches_a_cgi_style_app_as_a_header_or_chunked_trailer_over_http1()
 {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let instance = launch(&app);
    let xfcc = expected_xfcc(&caller);
    let host = instance.guid().to_owned();

    let mut tls = connect_tls_on(&instance, TLS_PORT, caller.cert.as_ref(), &["http/1.1"]).unwrap();
    let peer = tls
        .sock
        .local_addr()
        .unwrap()
        .ip()
        .to_canonical()
        .to_string();
    // Every spelling as a header, on a chunked body whose trailers (announced and not) try again.
    write!(
        tls,
        "POST /echo HTTP/1.1\r\nHost: {host}\r\n\
         X-Forwarded-Client_Cert: {FORGED_XFCC}\r\n\
         x_forwarded_client_cert: {FORGED_XFCC}\r\n\
         X_Forwarded_Proto: http\r\n\
         X-Forwarded-For: 10.0.0.1\r\n\
         x_forwarded_for: 10.0.0.2\r\n\
         Forwarded: for=10.0.0.3;proto=http\r\n\
         X-Real-IP: 10.0.0.4\r\n\
         X_Real_IP: 10.0.0.5\r\n\
         Proxy: http://198.51.100.1:3128\r\n\
         Transfer-Encoding: chunked\r\n\
         Trailer: X-Forwarded-Client-Cert, X_Forwarded_Client_Cert, X-Forwarded-Proto\r\n\
         Trailer: x_forwarded_for, Forwarded, X-Real-IP, X-Checksum\r\n\r\n\
         5\r\nhello\r\n0\r\n\
         X-Forwarded-Client-Cert: {FORGED_XFCC}\r\n\
         X_Forwarded_Client_Cert: {FORGED_XFCC}\r\n\
         X-Forwarded-Proto: http\r\n\
         x_forwarded_for: 10.0.0.6\r\n\
         Forwarded: for=10.0.0.7\r\n\
         X-Real-IP: 10.0.0.8\r\n\
         X-Checksum: 5d41402a\r\n\r\n"
    )
    .unwrap();
    tls.flush().unwrap();
    let response = read_response(&mut tls).unwrap();
    assert_eq!(response.status, 200, "{response:?}\n{}", instance.logs());
    let echo = response.json().unwrap();
    assert_only_the_sidecars(&echo, &xfcc, &peer, "HTTP/1.1 chunked");
    assert_eq!(echo["body_length"], 5, "{echo}");
    assert_eq!(
        echo["trailers"],
        serde_json::json!([["x-checksum", "5d41402a"]]),
        "the harmless trailer still arrives: {echo}"
    );

    // Keep-alive: a second, plain request on the same connection gets the same treatment.
    write!(
        tls,
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nX-FORWARDED-CLIENT-CERT: {FORGED_XFCC}\r\n\
         x-forwarded_proto: http\r\n\r\n"
    )
    .unwrap();
    tls.flush().unwrap();
    let echo = read_response(&mut tls).unwrap().json().unwrap();
    assert_only_the_sidecars(&echo, &xfcc, &peer, "HTTP/1.1 second request");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn no_spelling_of_the_identity_headers_reaches_a_cgi_style_app_as_an_http2_header_or_trailer() {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let instance = launch(&app);
    let xfcc = expected_xfcc(&caller);

    let mut tls = connect_tls_on(&instance, TLS_PORT, caller.cert.as_ref(), &["h2"]).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let peer = tls
        .sock
        .local_addr()
        .unwrap()
        .ip()
        .to_canonical()
        .to_string();
    let (status, body) = h2_request_with_trailers(
        &mut tls,
        "POST",
        instance.guid(),
        "/echo",
        &[
            ("x-forwarded-client_cert", FORGED_XFCC),
            ("x_forwarded_proto", "http"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.3"),
            ("x_real_ip", "10.0.0.4"),
            ("proxy", "http://198.51.100.1:3128"),
            ("te", "trailers"),
            (
                "trailer",
                "x-forwarded-client-cert, x_forwarded_for, x-real-ip, x-checksum",
            ),
        ],
        b"hello",
        &[
            ("x-forwarded-client-cert", FORGED_XFCC),
            ("x_forwarded_for", "10.0.0.6"),
            ("x-real-ip", "10.0.0.8"),
            ("x-checksum", "5d41402a"),
        ],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}\n{}", instance.logs());
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_only_the_sidecars(&echo, &xfcc, &peer, "HTTP/2");
    assert_eq!(echo["body_length"], 5, "{echo}");
    assert_eq!(
        echo["trailers"],
        serde_json::json!([["x-checksum", "5d41402a"]]),
        "the harmless trailer still arrives: {echo}"
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn two_host_headers_get_400_and_never_reach_the_app() {
    let app = AppInfo::new("backend");
    let caller = a_verified_caller(&app);
    let instance = launch(&app);
    let token = probe();
    let mut tls = connect_tls_on(&instance, TLS_PORT, caller.cert.as_ref(), &["http/1.1"]).unwrap();
    write!(
        tls,
        "GET /echo?{token} HTTP/1.1\r\nHost: {}\r\nHost: admin.internal\r\n\r\n",
        instance.guid()
    )
    .unwrap();
    tls.flush().unwrap();
    let response = read_response(&mut tls).unwrap();
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response.text().contains("more than one Host"),
        "{response:?}"
    );
    assert!(!app_log(&instance).contains(&token), "reached the app");
}
