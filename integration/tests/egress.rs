//! Egress across two hosts: two instances in their own network namespaces, joined by a veth
//! pair (TEST-NET-1 addresses, inside the test's namespaces only), with `backend.apps.internal`
//! in the client's `/etc/hosts` as BOSH DNS would answer it. The client app calls plain
//! `http://$TLS_SIDECAR_EGRESS_BACKEND` (the profile.d variable); its sidecar carries the call
//! over mutual TLS with its instance identity to the server's sidecar, which lets only that
//! app in and tells the server app who called (XFCC). A third app calling directly is refused;
//! an egress expecting another identity refuses to forward. With a minted certificate the
//! server's certificate names its internal route, so plain `curl --cacert` verifies the host.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::net::IpAddr;
use tls_sidecar_integration::netpair::{HostsFile, NetPair};
use tls_sidecar_integration::sidecar::{TLS_PORT, metrics};
use tls_sidecar_integration::{
    AppIdentity, AppInfo, CellCa, Instance, LaunchOptions, NetNs, Staging,
};

const ROUTE: &str = "backend.apps.internal";

/// An identity of `app` whose instance IP differs from every one in `taken`.
fn identity_apart_from(app: &AppInfo, taken: &[IpAddr]) -> AppIdentity {
    loop {
        let id = app.instance_identity();
        if !taken.contains(&id.ip) {
            return id;
        }
    }
}

/// `command` in the client instance as `cf ssh` runs it (after the profile.d scripts).
fn ssh(instance: &Instance, command: &str) -> std::process::Output {
    instance.ssh(command, &[]).unwrap()
}

/// Launches `server` and `client` (each a staging and the identity its instance gets) in
/// their own network namespaces joined by a veth pair; the client resolves each of `routes`
/// to the server, as BOSH DNS would.
fn two_hosts(
    server: (&Staging, &AppIdentity),
    client: (&Staging, &AppIdentity),
    routes: &[&str],
) -> (Instance, Instance, NetPair) {
    let server_ip = server.1.ip;
    let server = launch_ready(
        server.0,
        &LaunchOptions {
            identity: Some(server.1.clone()),
            ..LaunchOptions::default()
        },
        &[TLS_PORT],
    );
    let client = launch_ready(
        client.0,
        &LaunchOptions {
            identity: Some(client.1.clone()),
            hosts: routes
                .iter()
                .map(|r| ((*r).to_owned(), server_ip))
                .collect(),
            ..LaunchOptions::default()
        },
        &[TLS_PORT],
    );
    let wire = NetPair::connect(server.netns(), client.netns()).unwrap();
    (server, client, wire)
}

/// The `X-Forwarded-Client-Cert` the server app answered `/headers` with.
fn xfcc_seen(out: &std::process::Output) -> String {
    let headers: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("/headers did not answer JSON ({e}): {}", output_text(out)));
    headers
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-client-cert"))
        .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no XFCC header in {headers}"))
}

/// backend, whose http listener lets only frontend in, and frontend, each with the identity
/// its instance gets (on different IPs), and a third app's identity.
struct Cast {
    server_app: AppInfo,
    client_app: AppInfo,
    third: AppIdentity,
    server_id: AppIdentity,
    client_id: AppIdentity,
    server_staging: Staging,
}

impl Cast {
    fn new() -> Cast {
        let server_app = AppInfo::new("backend");
        let client_app = AppInfo::new("frontend");
        let server_id = server_app.instance_identity();
        let server_staging = stage_with_config(
            &server_app,
            &format!(
                "listeners:\n  - port: 8443\n    mode: http\n    allow: [cf:app:{}]\n",
                client_app.guid
            ),
        );
        Cast {
            third: client_app.instance_identity().app_in_other_org(),
            client_id: identity_apart_from(&client_app, &[server_id.ip]),
            server_app,
            client_app,
            server_id,
            server_staging,
        }
    }
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn an_app_calls_another_app_on_another_host_through_its_egress_with_its_own_identity() {
    let c = Cast::new();
    let client_staging = stage_with_config(
        &c.client_app,
        &format!(
            "egress:\n\
             \x20 - name: backend\n    listen: 127.0.0.1:9001\n    target: {ROUTE}:8443\n    expect: [cf:app:{}]\n\
             \x20 - name: impostor\n    listen: 127.0.0.1:9002\n    target: {ROUTE}:8443\n    expect: [cf:app:{}]\n",
            c.server_app.guid, c.third.app_guid
        ),
    );
    let (server, client, _wire) = two_hosts(
        (&c.server_staging, &c.server_id),
        (&client_staging, &c.client_id),
        &[ROUTE],
    );

    // The app finds its egress listener in the variable the buildpack's profile.d exports.
    let out = ssh(
        &client,
        "echo \"$TLS_SIDECAR_EGRESS_BACKEND $TLS_SIDECAR_EGRESS_IMPOSTOR\"",
    );
    assert_eq!(
        text(&out).trim(),
        "127.0.0.1:9001 127.0.0.1:9002",
        "{}",
        output_text(&out)
    );

    // Plain HTTP from the client app; the server app sees the client's identity in XFCC.
    let out = ssh(
        &client,
        "curl -sS --max-time 20 http://$TLS_SIDECAR_EGRESS_BACKEND/headers",
    );
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        output_text(&out),
        client.logs(),
        server.logs()
    );
    let xfcc = xfcc_seen(&out);
    assert!(
        xfcc.contains(&format!("Subject=\"{}\"", c.client_id.rfc2253_subject())),
        "the server app sees the client app's instance identity: {xfcc}"
    );
    assert!(
        xfcc.contains(&format!("DNS={}", c.client_id.instance_guid)),
        "{xfcc}"
    );
    let line = client
        .process("tls-sidecar")
        .unwrap()
        .wait_for_log("egress connection closed", ready())
        .unwrap();
    assert!(
        line.contains(&c.server_app.guid),
        "the server's identity is logged: {line}"
    );

    // A c.third app, calling the server directly over the veth with its own instance identity,
    // is refused.
    let ca = CellCa::shared().unwrap();
    let (_dir, cert) = ca.issue_client(&c.third).unwrap();
    let root = ca.root_cert().display().to_string();
    let resolve = format!("{}:8443:{}", c.server_id.instance_guid, c.server_id.ip);
    let url = format!("https://{}:8443/", c.server_id.instance_guid);
    let out = client
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &root,
            "--cert",
            &cert.cert.display().to_string(),
            "--key",
            &cert.key.display().to_string(),
            "--resolve",
            &resolve,
            "--write-out",
            "\n%{http_code}",
            &url,
        ])
        .unwrap();
    assert_eq!(
        text(&out),
        "not allowed\n\n403",
        "a c.third app is refused, and the answer names no rule: {}",
        output_text(&out)
    );
    // The server's log says who was refused.
    server
        .process("tls-sidecar")
        .unwrap()
        .wait_for_log(&c.third.app_guid, ready())
        .unwrap();

    // An egress expecting another app refuses to forward: the app's connection just closes,
    // the sidecar says why, and /metrics counts it.
    let out = ssh(
        &client,
        "curl -sS --max-time 20 http://$TLS_SIDECAR_EGRESS_IMPOSTOR/headers",
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        out.stdout.is_empty(),
        "nothing came back: {}",
        output_text(&out)
    );
    let line = client
        .process("tls-sidecar")
        .unwrap()
        .wait_for_log("egress connection refused", ready())
        .unwrap();
    assert!(
        line.contains(&format!(
            "wrong identity: expected cf:app:{} got app={}",
            c.third.app_guid, c.server_app.guid
        )),
        "{line}"
    );
    let m = metrics(&client).unwrap();
    assert_eq!(
        m.value("tls_sidecar_egress_failures_total{egress=\"impostor\",reason=\"identity\"}")
            .unwrap(),
        1.0
    );
    assert_eq!(
        m.value("tls_sidecar_egress_failures_total{egress=\"backend\",reason=\"identity\"}")
            .unwrap(),
        0.0
    );
    assert!(
        m.value("tls_sidecar_egress_connections_total{egress=\"backend\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_minted_certificate_names_the_internal_route_so_curl_verifies_the_hostname_from_another_host() {
    // The CA a platform team would bind as a user-provided service (here: a fresh cell root,
    // RSA with a PKCS#8 key).
    let ca = CellCa::generate().unwrap();
    let mut server_app = AppInfo::new("backend");
    server_app.uris = vec![ROUTE.to_owned(), "backend.example.com".to_owned()];
    server_app.services = serde_json::json!({
        "user-provided": [{
            "name": "internal-ca",
            "label": "user-provided",
            "credentials": {
                "ca_certificate": std::fs::read_to_string(ca.root_cert()).unwrap(),
                "ca_private_key": std::fs::read_to_string(ca.root_key()).unwrap(),
            }
        }]
    });
    let staging = stage_with_config(
        &server_app,
        "certificate:\n  source: minted\n  service: internal-ca\n",
    );
    let server_id = server_app.instance_identity();
    let server = launch_ready(
        &staging,
        &LaunchOptions {
            identity: Some(server_id.clone()),
            ..LaunchOptions::default()
        },
        &[TLS_PORT],
    );

    // The client host: a namespace of its own on the wire, resolving the route (and the
    // per-instance name) to the server instance.
    let client_ip = identity_apart_from(&server_app, &[server_id.ip]).ip;
    let client = NetNs::create(Some(client_ip)).unwrap();
    let _hosts = HostsFile::write(
        client.name(),
        &[
            (ROUTE.to_owned(), server_id.ip),
            (format!("0.{ROUTE}"), server_id.ip),
        ],
    )
    .unwrap();
    let _wire = NetPair::connect(server.netns(), &client).unwrap();

    let root = ca.root_cert().display().to_string();
    for host in [ROUTE.to_owned(), format!("0.{ROUTE}")] {
        let url = format!("https://{host}:8443/");
        let out = client
            .exec(&["curl", "-sS", "--max-time", "20", "--cacert", &root, &url])
            .unwrap();
        assert!(
            out.status.success(),
            "curl verifies {host}: {}\n{}",
            output_text(&out),
            server.logs()
        );
        assert_eq!(text(&out), HELLO);
    }
    let line = server
        .process("tls-sidecar")
        .unwrap()
        .wait_for_log("certificate minted", ready())
        .unwrap();
    assert!(line.contains(&format!("DNS:{ROUTE}")), "{line}");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn an_app_calls_any_internal_route_through_the_egress_proxy_with_its_own_identity() {
    let impostor = "impostor.apps.internal";

    let c = Cast::new();
    // The first target that lists a host decides: the impostor route expects another app.
    let client_staging = stage_with_config(
        &c.client_app,
        &format!(
            "egress_proxy:\n  targets:\n\
             \x20   - {{hosts: [{impostor}], expect: [cf:app:{}]}}\n\
             \x20   - {{hosts: [\"*.apps.internal\"], ports: [8443], expect: [cf:app:{}]}}\n",
            c.third.app_guid, c.server_app.guid
        ),
    );
    assert!(
        client_staging
            .output
            .contains("Egress proxy on 127.0.0.1:8446 (the app finds it in $TLS_SIDECAR_PROXY"),
        "{}",
        client_staging.output
    );
    let (server, client, _wire) = two_hosts(
        (&c.server_staging, &c.server_id),
        (&client_staging, &c.client_id),
        &[ROUTE, impostor],
    );

    let out = ssh(&client, "echo \"$TLS_SIDECAR_PROXY ${HTTP_PROXY:-unset}\"");
    assert_eq!(
        text(&out).trim(),
        "http://127.0.0.1:8446 unset",
        "{}",
        output_text(&out)
    );

    // Absolute form (curl -x), a CONNECT tunnel (curl -p -x), and Python's standard library:
    // each reaches the server app, which sees the client's instance identity.
    let subject = format!("Subject=\"{}\"", c.client_id.rfc2253_subject());
    let url = format!("http://{ROUTE}:8443/headers");
    for command in [
        format!("curl -sS --max-time 20 -x \"$TLS_SIDECAR_PROXY\" {url}"),
        format!("curl -sS --max-time 20 -p -x \"$TLS_SIDECAR_PROXY\" {url}"),
        format!(
            "python3 -c 'import os, urllib.request as u; o = u.build_opener(u.ProxyHandler({{\"http\": os.environ[\"TLS_SIDECAR_PROXY\"]}})); print(o.open(\"{url}\", timeout=20).read().decode())'"
        ),
    ] {
        let out = ssh(&client, &command);
        assert!(
            out.status.success(),
            "{command}: {}\n{}\n{}",
            output_text(&out),
            client.logs(),
            server.logs()
        );
        let xfcc = xfcc_seen(&out);
        assert!(xfcc.contains(&subject), "{command}: {xfcc}");
    }

    // A target of another identity, and a host no target lists, are refused with a reason.
    let out = ssh(
        &client,
        &format!(
            "curl -sS --max-time 20 -x \"$TLS_SIDECAR_PROXY\" -w '\\n%{{http_code}}' http://{impostor}:8443/headers"
        ),
    );
    let answer = text(&out);
    assert!(
        answer.ends_with("\n502")
            && answer.contains(&format!(
                "wrong identity: expected cf:app:{}",
                c.third.app_guid
            )),
        "{}",
        output_text(&out)
    );
    let out = ssh(
        &client,
        "curl -sS --max-time 20 -x \"$TLS_SIDECAR_PROXY\" -w '\\n%{http_code}' http://example.com/",
    );
    assert_eq!(
        text(&out),
        "tls-sidecar: example.com:80 is not an egress_proxy target\n\n403",
        "{}",
        output_text(&out)
    );
    let m = metrics(&client).unwrap();
    assert_eq!(
        m.value(
            "tls_sidecar_egress_failures_total{egress=\"egress_proxy.targets[0]\",reason=\"identity\"}"
        )
        .unwrap(),
        1.0
    );
    assert!(
        m.value("tls_sidecar_egress_connections_total{egress=\"egress_proxy.targets[1]\"}")
            .unwrap()
            >= 3.0
    );
}
