//! The route port: a started sidecar serving plaintext HTTP on `$PORT` in front of an app that
//! the profile script moved, attacked the way anyone on the internet can through Gorouter
//! (whose default `forwarded_client_cert: always_forward` passes any header through).
//!
//! The app here is raw TCP on purpose: it answers every request with its head exactly as it
//! arrived (header names in their original spelling), upgrades whatever asks to upgrade (a
//! vulnerable app), and echoes upgraded bytes.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tls_sidecar::{Env, RouteConfig, Running, SidecarConfig};
use tls_sidecar_config::{HostPort, StagedConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(60);

/// Every spelling an app server may read as `X-Forwarded-Client-Cert`.
const FORGED: &[&str] = &[
    "X-Forwarded-Client-Cert",
    "x-forwarded-client-cert",
    "X-FORWARDED-CLIENT-CERT",
    "X_Forwarded_Client_Cert",
    "x-forwarded-client_cert",
    "X-Forwarded_Client-Cert",
];
const SPOOFED: &str = "Hash=0000;Subject=\"OU=app:everything\"";

/// A port reserved by a bound socket that does not listen: connections to it are refused.
fn reserved_port() -> TcpSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(loopback(0)).unwrap();
    socket
}

/// Serves the raw app on `listener` (see the module comment).
fn serve_raw_app(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(raw_app_connection(tcp));
        }
    });
}

async fn raw_app_connection(mut tcp: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut tcp, &mut buf).await else {
            return;
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head).into_owned();
        let upgrade = text
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("upgrade:"));
        if upgrade {
            let _ = tcp
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                .await;
            let _ = tcp.write_all(b"app>").await;
            if !buf.is_empty() {
                let _ = tcp.write_all(&buf).await;
            }
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{text}",
            text.len()
        );
        if tcp.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a whole request head; its length with the blank line.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The default sidecar (a TLS listener on port 0) plus the route port on `route`, forwarding
/// to `app`, as the profile script would set it up.
fn with_route(creds: &Creds, app: SocketAddr, route: SocketAddr) -> SidecarConfig {
    let mut config = sidecar_config(creds, app);
    config.route = Some(RouteConfig {
        bind: route,
        upstream: HostPort {
            host: "127.0.0.1".to_owned(),
            port: app.port(),
        },
        trusted_xfcc_peer: None,
    });
    config
}

/// A sidecar in front of a listening raw app; returns it once the route port is bound.
async fn fronted_app() -> (Running, SocketAddr, Creds) {
    fronted_app_trusting(None).await
}

/// [`fronted_app`] keeping the X-Forwarded-Client-Cert of connections from `peer` (what
/// `route.trust_gorouter_xfcc` does for `CF_INSTANCE_INTERNAL_IP`).
async fn fronted_app_trusting(peer: Option<IpAddr>) -> (Running, SocketAddr, Creds) {
    let app = TcpListener::bind(loopback(0)).await.unwrap();
    let app_addr = app.local_addr().unwrap();
    serve_raw_app(app);
    let creds = Creds::with(leaf_3072());
    let mut config = with_route(&creds, app_addr, loopback(0));
    if let Some(route) = &mut config.route {
        route.trusted_xfcc_peer = peer;
    }
    let running = tls_sidecar::start(config).await.unwrap();
    let mut route = None;
    eventually("the route port to be bound", || {
        route = running.route_addr();
        std::future::ready(route.is_some())
    })
    .await;
    (running, route.unwrap(), creds)
}

/// Sends `raw` on a new connection and reads the answer until the app's body is complete.
async fn exchange_raw(addr: SocketAddr, raw: &str) -> String {
    timeout(DEADLINE, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got);
            // The body is the app's copy of the request head: complete at its blank line.
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && body.contains("\r\n\r\n")
            {
                break;
            }
        }
        String::from_utf8(got).unwrap()
    })
    .await
    .expect("an answer in time")
}

/// Header lines of the request head the app received (the answer's body).
fn app_saw(answer: &str) -> Vec<String> {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .expect("an answer with a body");
    body.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_xfcc(line: &str) -> bool {
    let name = line.split(':').next().unwrap_or("");
    name.to_ascii_lowercase().replace('_', "-") == "x-forwarded-client-cert"
}

#[tokio::test]
async fn a_forged_xfcc_in_every_spelling_sent_to_the_route_port_never_reaches_the_app() {
    let (running, route, _creds) = fronted_app().await;
    let mut raw = String::from("GET /whoami HTTP/1.1\r\nHost: app.example.com\r\n");
    for name in FORGED {
        raw.push_str(&format!("{name}: {SPOOFED}\r\n"));
    }
    // What Gorouter writes: the app still needs it, and the sidecar is not the edge here.
    raw.push_str("X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\r\n");

    let answer = exchange_raw(route, &raw).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app_saw(&answer);
    assert!(
        !seen.iter().any(|l| is_xfcc(l) || l.contains("everything")),
        "{seen:#?}"
    );
    let lower: Vec<String> = seen.iter().map(|l| l.to_ascii_lowercase()).collect();
    assert!(
        lower.contains(&"x-forwarded-for: 198.51.100.1".to_owned()),
        "{seen:#?}"
    );
    assert!(
        lower.contains(&"x-forwarded-proto: https".to_owned()),
        "{seen:#?}"
    );
    assert!(
        lower.contains(&"host: app.example.com".to_owned()),
        "{seen:#?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_proxy_header_sent_to_the_route_port_never_reaches_the_app() {
    // httpoxy: Gorouter passes `Proxy` on from the internet, and a CGI-style app would take
    // it as HTTP_PROXY, its outbound proxy.
    let (running, route, _creds) = fronted_app().await;
    let raw = "GET /whoami HTTP/1.1\r\nHost: app.example.com\r\n\
        Proxy: http://198.51.100.9:3128\r\nPROXY: http://198.51.100.10:3128\r\n\
        Proxy-Authorization: Basic dTpw\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n";

    let answer = exchange_raw(route, raw).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lower: Vec<String> = app_saw(&answer)
        .iter()
        .map(|l| l.to_ascii_lowercase())
        .collect();
    assert!(!lower.iter().any(|l| l.starts_with("proxy:")), "{lower:#?}");
    // Only that one name: a look-alike and Gorouter's own fields still arrive.
    assert!(
        lower.contains(&"proxy-authorization: basic dtpw".to_owned()),
        "{lower:#?}"
    );
    assert!(
        lower.contains(&"x-forwarded-for: 198.51.100.1".to_owned()),
        "{lower:#?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn trusting_gorouter_keeps_its_xfcc_but_still_strips_the_spellings_gorouter_does_not_sanitize()
 {
    // On an identity-aware domain Gorouter replaces X-Forwarded-Client-Cert (any case: Go
    // canonicalises names) but passes X_Forwarded_Client_Cert through, which CGI-style
    // servers read as the same variable.
    // The test connects from 127.0.0.1: here that is Diego's Envoy.
    let (running, route, _creds) =
        fronted_app_trusting(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).await;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: Hash=gorouter\r\n\
         X_Forwarded_Client_Cert: {SPOOFED}\r\nX-Forwarded-Client_Cert: {SPOOFED}\r\n\r\n"
    );

    let answer = exchange_raw(route, &raw).await;

    let xfcc: Vec<String> = app_saw(&answer)
        .into_iter()
        .filter(|l| is_xfcc(l))
        .collect();
    assert_eq!(xfcc, ["x-forwarded-client-cert: Hash=gorouter"], "{answer}");
    running.shutdown().await;
}

#[tokio::test]
async fn trusting_gorouter_still_strips_the_xfcc_of_every_peer_that_is_not_diegos_envoy() {
    // A c2c caller with a network policy for $PORT connects from its own address, not from
    // the instance's internal IP the per-container Envoy uses.
    let envoy: IpAddr = "127.0.0.2".parse().unwrap();
    let (running, route, _creds) = fronted_app_trusting(Some(envoy)).await;
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: {SPOOFED}\r\n\r\n");

    let answer = exchange_raw(route, &raw).await;

    let xfcc: Vec<String> = app_saw(&answer)
        .into_iter()
        .filter(|l| is_xfcc(l))
        .collect();
    assert!(xfcc.is_empty(), "{answer}");
    running.shutdown().await;
}

#[tokio::test]
async fn a_forged_xfcc_over_h2c_prior_knowledge_never_reaches_the_app() {
    let (running, route, _creds) = fronted_app().await;
    let tcp = TcpStream::connect(route).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{route}/h2"))
        .header("x-forwarded-client-cert", SPOOFED)
        .header("x_forwarded_client_cert", SPOOFED)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();

    let response = timeout(DEADLINE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("GET /h2 HTTP/1.1\r\n"), "{body}");
    assert!(
        !body.lines().any(is_xfcc) && !body.contains("everything"),
        "{body}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn an_h2c_upgrade_cannot_smuggle_unparsed_http2_to_the_app() {
    // After a 101 to h2c the tunnel would carry HTTP/2 streams nobody strips. The app here
    // upgrades whatever asks: the sidecar must not let the request ask.
    let (running, route, _creds) = fronted_app().await;
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

    let answer = exchange_raw(route, raw).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app_saw(&answer);
    assert!(
        !seen
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("upgrade:")),
        "{seen:#?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_websocket_upgrade_on_the_route_port_is_spliced_to_the_app() {
    let (running, route, _creds) = fronted_app().await;
    let mut tcp = TcpStream::connect(route).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();

    let mut got = Vec::new();
    timeout(DEADLINE, async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("app>") {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    tcp.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    timeout(DEADLINE, tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    running.shutdown().await;
}

#[tokio::test]
async fn the_route_port_refuses_connections_until_the_app_accepts_on_its_port() {
    // CF's port health check connects to $PORT: it must keep failing while the app is not up.
    let app = reserved_port();
    let app_addr = app.local_addr().unwrap();
    let route = reserved_port();
    let route_addr = route.local_addr().unwrap();
    drop(route);
    let creds = Creds::with(leaf_3072());
    let running = tls_sidecar::start(with_route(&creds, app_addr, route_addr))
        .await
        .unwrap();
    // Everything else is up: the certificate is loaded and the TLS listener bound.
    until_ready(running.admin_addr().unwrap()).await;

    assert_eq!(running.route_addr(), None);
    let refused = TcpStream::connect(route_addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    serve_raw_app(app.listen(64).unwrap());
    eventually("the route port to accept", || async {
        TcpStream::connect(route_addr).await.is_ok()
    })
    .await;
    assert_eq!(running.route_addr(), Some(route_addr));
    let answer = exchange_raw(route_addr, "GET /up HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.contains("GET /up HTTP/1.1"), "{answer}");
    running.shutdown().await;
}

#[tokio::test]
async fn route_traffic_is_counted_under_its_own_listener_label() {
    let (running, route, _creds) = fronted_app().await;
    let admin = running.admin_addr().unwrap();

    exchange_raw(
        route,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;

    until_metric(
        admin,
        "tls_sidecar_connections_total{listener=\"route\"}",
        "1",
    )
    .await;
    let (_, body) = get(admin, "/metrics").await.unwrap();
    assert!(
        !body.contains("tls_sidecar_handshake_failures_total{listener=\"route\""),
        "plaintext has no handshakes"
    );
    running.shutdown().await;
}

/// The staged file of an http-mode app, resolved with `env` as the sidecar does at start.
fn resolve(env: &[(&str, &str)]) -> (SidecarConfig, Vec<String>) {
    let env: Env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let staged = StagedConfig::load_with_env("listeners:\n  - mode: http\n", "staged", &env, 8081)
        .unwrap()
        .0
        .to_yaml();
    let port: u16 = env.get("PORT").map_or(8080, |p| p.parse().unwrap());
    let (staged, _, _) = StagedConfig::load_with_env(&staged, "staged", &env, port).unwrap();
    SidecarConfig::resolve(&staged, &env).unwrap()
}

#[test]
fn the_route_port_is_served_only_when_the_profile_script_moved_the_app() {
    let certs = [("CF_INSTANCE_CERT", "/c"), ("CF_INSTANCE_KEY", "/k")];
    let (config, warnings) = resolve(
        &[
            &certs[..],
            &[("PORT", "8081"), ("TLS_SIDECAR_ROUTE_PORT", "8080")],
        ]
        .concat(),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.route,
        Some(RouteConfig {
            bind: "0.0.0.0:8080".parse().unwrap(),
            upstream: HostPort {
                host: "127.0.0.1".into(),
                port: 8081
            },
            trusted_xfcc_peer: None,
        })
    );
    // The TLS listener's default upstream follows the moved port.
    assert_eq!(config.listeners[0].upstream.port, 8081);

    // The script did not run for this process: say that XFCC is open to forgery.
    let (config, warnings) = resolve(&[&certs[..], &[("PORT", "8080")]].concat());
    assert_eq!(config.route, None);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("the route port is not fronted: TLS_SIDECAR_ROUTE_PORT is not set")
            && warnings[0].contains("X-Forwarded-Client-Cert"),
        "{warnings:?}"
    );

    // CF gave this process route.app_port itself: there is nothing to front.
    let (config, warnings) = resolve(
        &[
            &certs[..],
            &[("PORT", "8081"), ("TLS_SIDECAR_ROUTE_PORT", "8081")],
        ]
        .concat(),
    );
    assert_eq!(config.route, None);
    assert!(warnings[0].contains("are both 8081"), "{warnings:?}");
}
