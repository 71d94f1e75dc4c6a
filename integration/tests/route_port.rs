//! The route port `$PORT` (8080), where Gorouter delivers route traffic through Diego's Envoy
//! (a plain TCP proxy) with whatever `X-Forwarded-Client-Cert` the caller sent (Gorouter's
//! default `forwarded_client_cert: always_forward`). In http mode the buildpack fronts it: the
//! app's `.profile.d` script moves web to 8081 and the sidecar serves 8080, stripping identity
//! headers. Driven through the real launcher sequence, so the script runs for the app and the
//! sidecar as it does in CF.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::launch::APP_PORT;
use tls_sidecar_integration::sidecar::{TLS_PORT, wait_sidecar_ready};
use tls_sidecar_integration::{AppInfo, Instance, LaunchOptions};

const FRONTED: &str =
    "Route port $PORT: fronted by the sidecar (identity headers stripped); the app listens on 8081";
const SPOOFED: &str = "Hash=0000;Subject=\"OU=app:everything\"";

/// `GET path` on the route port with `headers`, as Gorouter would forward it; the JSON body.
fn on_route_port(
    instance: &Instance,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Map<String, serde_json::Value> {
    on_route_port_from(instance, IpAddr::V4(Ipv4Addr::LOCALHOST), path, headers)
}

/// [`on_route_port`] to `ip:$PORT`: from inside the namespace the source address is `ip` too.
/// Diego's per-container Envoy hands on Gorouter's traffic this way, from and to
/// `CF_INSTANCE_INTERNAL_IP`.
fn on_route_port_from(
    instance: &Instance,
    ip: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Map<String, serde_json::Value> {
    let mut conn = instance
        .netns()
        .connect(
            SocketAddr::new(ip, APP_PORT),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let response = request(&mut conn, "GET", path, "app.example.com", headers).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        instance.logs()
    );
    match response.json().unwrap() {
        serde_json::Value::Object(map) => map,
        other => panic!("{path} did not answer a JSON object: {other}"),
    }
}

/// The value of header `name` (any case: the sidecar sends lower-case names) the app saw.
fn header<'a>(
    headers: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn xfcc_names(headers: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    headers
        .keys()
        .filter(|k| k.to_ascii_lowercase().replace('_', "-") == "x-forwarded-client-cert")
        .cloned()
        .collect()
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_forged_xfcc_sent_to_the_route_port_of_an_http_mode_app_never_reaches_the_app() {
    let app = AppInfo::new("frontend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    assert!(
        strip_ansi(&staging.output).contains(FRONTED),
        "{}",
        staging.output
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);

    let seen = on_route_port(
        &instance,
        "/headers",
        &[
            ("X-Forwarded-Client-Cert", SPOOFED),
            ("X_Forwarded_Client_Cert", SPOOFED),
            ("X-Forwarded-Client_Cert", SPOOFED),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "https"),
        ],
    );

    assert!(xfcc_names(&seen).is_empty(), "{seen:#?}");
    assert!(!format!("{seen:?}").contains("everything"), "{seen:#?}");
    // Gorouter's X-Forwarded-* reach the app as Gorouter wrote them.
    assert_eq!(
        header(&seen, "X-Forwarded-For"),
        Some("198.51.100.1"),
        "{seen:#?}"
    );
    assert_eq!(
        header(&seen, "X-Forwarded-Proto"),
        Some("https"),
        "{seen:#?}"
    );
    // The app itself listens on the moved port; the route port is the sidecar's.
    let env = on_route_port(&instance, "/env", &[]);
    assert_eq!(
        env.get("PORT").and_then(|v| v.as_str()),
        Some("8081"),
        "{env:#?}"
    );
    let sidecar = instance.process("tls-sidecar").unwrap();
    assert!(
        sidecar.stdout().contains("listening on 0.0.0.0:8080"),
        "{}",
        sidecar.logs()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn the_route_port_refuses_connections_while_the_app_is_not_listening() {
    // CF's port health check connects to $PORT: with the sidecar up and the app not started,
    // it must fail, or CF would route to an instance whose app is down.
    let app = AppInfo::new("frontend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let opts = LaunchOptions {
        web: false,
        ..LaunchOptions::default()
    };
    let instance = Instance::launch(&staging.droplet().unwrap(), &opts).unwrap();
    wait_sidecar_ready(&instance, &[TLS_PORT], ready()).unwrap();
    let sidecar = instance.process("tls-sidecar").unwrap();
    sidecar
        .wait_for_log("waiting for the app to listen on 127.0.0.1:8081", ready())
        .unwrap();

    let refused = instance.connect(APP_PORT).unwrap_err();

    assert!(
        refused.to_string().to_ascii_lowercase().contains("refused"),
        "{refused}\n{}",
        instance.logs()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn fronting_off_keeps_the_app_on_8080_and_staging_warns_that_xfcc_can_be_forged() {
    let app = AppInfo::new("frontend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\nroute:\n  fronting: off\n",
    );
    let output = strip_ansi(&staging.output);
    assert!(
        output.contains("**WARNING** tls-sidecar.yml: a listener sets X-Forwarded-Client-Cert but the sidecar does not front the route port")
            && output.contains("anyone who reaches $PORT can send a forged X-Forwarded-Client-Cert"),
        "{output}"
    );
    assert!(!output.contains(FRONTED), "{output}");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);

    let env = on_route_port(&instance, "/env", &[]);
    assert_eq!(
        env.get("PORT").and_then(|v| v.as_str()),
        Some("8080"),
        "{env:#?}"
    );
    // What the warning is about: the forged header reaches the app.
    let seen = on_route_port(
        &instance,
        "/headers",
        &[("X-Forwarded-Client-Cert", SPOOFED)],
    );
    assert_eq!(xfcc_names(&seen).len(), 1, "{seen:#?}");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn trust_gorouter_xfcc_keeps_the_header_gorouter_sets_and_strips_the_underscore_spelling() {
    // An identity-aware (RFC-0055) domain: Gorouter sets X-Forwarded-Client-Cert itself but
    // passes X_Forwarded_Client_Cert through, which CGI-style servers read as the same thing.
    let app = AppInfo::new("frontend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\nroute:\n  trust_gorouter_xfcc: true\n",
    );
    assert!(
        strip_ansi(&staging.output).contains("Route port $PORT: fronted by the sidecar (Gorouter's X-Forwarded-Client-Cert kept from Diego's Envoy only, other spellings and peers stripped); the app listens on 8081"),
        "{}",
        staging.output
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);

    let seen = on_route_port_from(
        &instance,
        instance.ip(),
        "/headers",
        &[
            ("X-Forwarded-Client-Cert", "Hash=set-by-gorouter"),
            ("X_Forwarded_Client_Cert", SPOOFED),
        ],
    );

    assert_eq!(xfcc_names(&seen).len(), 1, "{seen:#?}");
    assert_eq!(
        header(&seen, "X-Forwarded-Client-Cert"),
        Some("Hash=set-by-gorouter"),
        "{seen:#?}"
    );

    // Any other peer (a c2c caller with a policy for $PORT, here 127.0.0.1) is not Gorouter:
    // its header is stripped like every other spelling.
    let seen = on_route_port(
        &instance,
        "/headers",
        &[("X-Forwarded-Client-Cert", SPOOFED)],
    );
    assert!(xfcc_names(&seen).is_empty(), "{seen:#?}");
}
