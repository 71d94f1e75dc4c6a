//! The library end to end: a real sidecar on port 0 in front of a tiny app, driven by a
//! rustls client.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls::{HandshakeKind, ProtocolVersion};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_bytes_both_ways_and_passes_the_clients_half_close_to_the_app() {
    let app = answer_after_eof_app().await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    tls.write_all(b"ping").await.unwrap();
    // close_notify + FIN: the app sees EOF, and can still answer.
    tls.shutdown().await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 4 bytes: ping");
    running.shutdown().await;
}

/// The app's bytes go through a buffer that starts small, grows once a read fills it, and is
/// given back whenever the app pauses: every byte must arrive once and in order across those
/// switches, whatever the app's write sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_the_app_arrives_intact_across_pauses_and_bulk_reads() {
    // A pattern no shifted or repeated window of itself matches.
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sizes = [1, 100, 8 * 1024, 8 * 1024 + 1, 70_000, 3, 256 * 1024];
    let sent = data.clone();
    let app = app(move |mut stream| {
        let sent = sent.clone();
        async move {
            let (mut at, mut turn) = (0, 0);
            while at < sent.len() {
                let end = (at + sizes[turn % sizes.len()]).min(sent.len());
                stream.write_all(&sent[at..end]).await.unwrap();
                at = end;
                turn += 1;
                if turn % 3 == 0 {
                    // A pause: the sidecar's read finds the socket empty and gives its buffer
                    // back before the next write.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            stream.shutdown().await.unwrap();
        }
    })
    .await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    let mut received = Vec::new();
    tls.read_to_end(&mut received).await.unwrap();
    assert_eq!(received.len(), data.len());
    assert!(
        received == data,
        "the bytes arrived altered or out of order"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_apps_half_close_to_the_client_which_can_still_send() {
    let (app, mut received) = greet_then_listen_app().await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    let mut greeting = Vec::new();
    tls.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"hello");
    tls.write_all(b"late words").await.unwrap();
    tls.shutdown().await.unwrap();
    let got = tokio::time::timeout(DEADLINE, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"late words");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_tls_1_3_and_tls_1_2() {
    let app = echo_app().await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    for (versions, expected) in [
        (TLS13, ProtocolVersion::TLSv1_3),
        (TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let mut tls = connect_with(addrs.tls, client_config(versions))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(echo(&mut tls, b"over tls").await, b"over tls");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_diegos_3072_bit_pkcs1_identity_with_the_intermediate_verifying_against_the_root() {
    let leaf = leaf_3072();
    assert!(
        leaf.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "PKCS#1, as Diego writes it"
    );
    let app = echo_app().await;
    let creds = Creds::with(leaf);
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    // The client trusts only the root: the handshake succeeding proves the chain verifies.
    let mut tls = connect(addrs.tls).await.unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
    assert_eq!(chain[0], leaf.leaf_der);
    assert_eq!(chain[1], Pki::shared().intermediate_der);
    assert_eq!(echo(&mut tls, b"x").await, b"x");
    drop(tls);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_new_certificate_to_new_connections_after_rotation() {
    let (old, new) = (Pki::shared().leaf(2048), Pki::shared().leaf(2048));
    let app = echo_app().await;
    let creds = Creds::with(&old);
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let mut existing = connect(addrs.tls).await.unwrap();
    assert_eq!(served_leaf(&existing), old.leaf_der);
    assert_eq!(echo(&mut existing, b"before").await, b"before");

    creds.rotate_the_diego_way(&new);
    eventually("a new connection to get the new certificate", || async {
        matches!(connect(addrs.tls).await, Ok(tls) if served_leaf(&tls) == new.leaf_der)
    })
    .await;

    assert_eq!(
        echo(&mut existing, b"after").await,
        b"after",
        "the existing connection keeps working"
    );
    drop(existing);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_old_pair_while_the_new_key_sits_beside_the_old_certificate() {
    capture_logs();
    let (old, new) = (Pki::shared().leaf(2048), Pki::shared().leaf(2048));
    let app = echo_app().await;
    let creds = Creds::with(&old);
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    // Diego's rename window: the key is new, the certificate still old.
    creds.write_tmp(&new);
    creds.rename_key();
    running.reload_certificates();
    let key = creds.key().display().to_string();
    let line = log_line(&["certificate reload failed", "does not match", &key]).await;
    assert!(line.contains("WARN"), "{line}");

    let mut tls = connect(addrs.tls).await.unwrap();
    assert_eq!(served_leaf(&tls), old.leaf_der);
    assert_eq!(echo(&mut tls, b"still old").await, b"still old");
    assert_eq!(get(addrs.admin, "/ready").await.unwrap().0, 200);
    drop(tls);

    creds.rename_cert();
    eventually("the new pair once the certificate lands", || async {
        matches!(connect(addrs.tls).await, Ok(tls) if served_leaf(&tls) == new.leaf_der)
    })
    .await;
    let cert = creds.cert().display().to_string();
    let loaded = log_line(&["certificate loaded", &cert, &new.guid]).await;
    assert!(loaded.contains("not_after="), "{loaded}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_running_without_certificate_files_and_becomes_ready_when_they_appear() {
    capture_logs();
    let app = echo_app().await;
    let creds = Creds::empty();
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);

    let (status, body) = get(addrs.admin, "/ready").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.starts_with("no certificate loaded yet"), "{body}");
    assert_eq!(
        get(addrs.admin, "/live").await.unwrap(),
        (200, "ok\n".to_owned())
    );

    let refused = connect(addrs.tls).await;
    assert!(
        refused.is_err(),
        "a handshake without a certificate must fail"
    );
    let port = format!("listener={}", addrs.tls.port());
    log_line(&["connection closed", &port, "no certificate loaded yet"]).await;

    creds.rotate_the_diego_way(&Pki::shared().leaf(2048));
    until_ready(addrs.admin).await;
    let mut tls = connect(addrs.tls).await.unwrap();
    assert_eq!(echo(&mut tls, b"finally").await, b"finally");
    drop(tls);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_the_tls_connection_when_the_app_is_down_and_keeps_serving() {
    capture_logs();
    let app = dead_app().await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    for _ in 0..2 {
        let mut tls = connect(addrs.tls).await.unwrap();
        assert!(closes(&mut tls).await, "the sidecar closes the connection");
    }
    log_line(&["upstream unavailable", &format!("127.0.0.1:{}", app.port())]).await;
    assert_eq!(get(addrs.admin, "/ready").await.unwrap().0, 200);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_connections_beyond_max_connections_at_once() {
    let app = echo_app().await;
    let (running, addrs, _creds) = front(app, |config| config.limits.max_connections = 1).await;

    let mut first = connect(addrs.tls).await.unwrap();
    assert_eq!(echo(&mut first, b"1").await, b"1");
    assert!(
        connect(addrs.tls).await.is_err(),
        "the second connection is closed before its handshake"
    );
    assert_eq!(running.in_flight(), 1);

    drop(first);
    eventually("a slot to free up", || async {
        match connect(addrs.tls).await {
            Ok(mut tls) => echo(&mut tls, b"2").await == b"2",
            Err(_) => false,
        }
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_connection_after_the_idle_timeout() {
    capture_logs();
    let app = echo_app().await;
    let (running, addrs, _creds) = front(app, |config| {
        config.limits.idle_timeout = Duration::from_millis(300)
    })
    .await;

    // No traffic at all (an exchange could itself outlast 300 ms on a busy machine).
    let mut tls = connect(addrs.tls).await.unwrap();
    let local = tls.get_ref().0.local_addr().unwrap().to_string();
    assert!(closes(&mut tls).await, "the idle connection is closed");
    log_line(&[
        "connection closed",
        &format!("peer={local}"),
        "idle for 300 ms",
    ])
    .await;
    eventually("the slot to be released", || async {
        running.in_flight() == 0
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_in_flight_connections_and_refuses_new_ones_on_shutdown() {
    let app = echo_app().await;
    let (running, addrs, _creds) =
        front(app, |config| config.limits.drain_timeout = DEADLINE).await;

    let mut in_flight = connect(addrs.tls).await.unwrap();
    assert_eq!(echo(&mut in_flight, b"before").await, b"before");

    let drain = tokio::spawn(running.shutdown());
    eventually("new connections to be refused", || async {
        TcpStream::connect(addrs.tls).await.is_err()
    })
    .await;
    let (status, body) = get(addrs.admin, "/ready").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "draining: the sidecar is shutting down\n")
    );

    assert_eq!(
        echo(&mut in_flight, b"during").await,
        b"during",
        "in-flight work continues"
    );
    assert!(!drain.is_finished());
    in_flight.shutdown().await.unwrap();
    assert!(closes(&mut in_flight).await);
    tokio::time::timeout(DEADLINE, drain)
        .await
        .expect("the drain ends when the last connection does")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_connections_still_open_when_the_drain_timeout_ends() {
    let app = echo_app().await;
    let (running, addrs, _creds) = front(app, |config| {
        config.limits.drain_timeout = Duration::from_millis(300)
    })
    .await;

    let mut lingering = connect(addrs.tls).await.unwrap();
    assert_eq!(echo(&mut lingering, b"x").await, b"x");
    tokio::time::timeout(DEADLINE, running.shutdown())
        .await
        .expect("shutdown returns");
    assert!(
        closes(&mut lingering).await,
        "the lingering connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_live_and_ready_and_404_for_unknown_paths_on_the_admin_port() {
    let app = echo_app().await;
    let (running, addrs, _creds) = front(app, |_| {}).await;

    assert_eq!(
        get(addrs.admin, "/live").await.unwrap(),
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        get(addrs.admin, "/ready").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    assert_eq!(get(addrs.admin, "/nope").await.unwrap().0, 404);
    let post = request(
        addrs.admin,
        "POST /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(post.0, 405);
    assert_eq!(
        request(addrs.admin, "nonsense\r\n\r\n").await.unwrap().0,
        400
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_tls_1_3_sessions_across_a_certificate_rotation() {
    let (old, new) = (Pki::shared().leaf(2048), Pki::shared().leaf(2048));
    let app = echo_app().await;
    let creds = Creds::with(&old);
    let running = tls_sidecar::start(sidecar_config(&creds, app))
        .await
        .unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let client = client_config(TLS13);
    let mut first = connect_with(addrs.tls, client.clone()).await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    // Reading after the handshake takes in the session tickets sent with it.
    assert_eq!(echo(&mut first, b"ticket please").await, b"ticket please");
    drop(first);

    creds.rotate_the_diego_way(&new);
    eventually("the rotation to take effect", || async {
        matches!(connect(addrs.tls).await, Ok(tls) if served_leaf(&tls) == new.leaf_der)
    })
    .await;

    let mut resumed = connect_with(addrs.tls, client).await.unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the ticket key survived the reload"
    );
    assert_eq!(echo(&mut resumed, b"welcome back").await, b"welcome back");
    drop(resumed);
    running.shutdown().await;
}

/// The session ticket waits for the sidecar's first bytes only when an answer is on its way
/// (held_back.rs). A client that goes quiet after its handshake gets it at once: a quiet
/// connection does not hold it (a few KiB with a client certificate), and the client can
/// resume while the first connection is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_after_its_handshake_gets_its_session_ticket_at_once() {
    let (running, addrs, _creds) = front(echo_app().await, |_| {}).await;

    let client = client_config(TLS13);
    let mut quiet = connect_with(addrs.tls, client.clone()).await.unwrap();
    // Nothing is sent either way, so only the ticket can come in while the client reads.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(500), quiet.read(&mut byte)).await;
    assert!(
        read.is_err(),
        "no bytes are owed to a quiet client: {read:?}"
    );

    let resumed = connect_with(addrs.tls, client).await.unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the quiet connection's ticket must have reached the client"
    );
    drop((quiet, resumed));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drains_and_returns_when_its_shutdown_future_completes() {
    let app = echo_app().await;
    let creds = Creds::with(&Pki::shared().leaf(2048));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(tls_sidecar::run(sidecar_config(&creds, app), async move {
        let _ = stopped.await;
    }));
    let _ = stop.send(());
    let result = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("run returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_pkcs8_and_sec1_keys_too() {
    let pki = Pki::shared();
    let pkcs8 = pki.as_pkcs8(&pki.leaf(2048));
    let sec1 = pki.ec_leaf();
    assert!(pkcs8.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(sec1.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let app = echo_app().await;
    for leaf in [pkcs8, sec1] {
        let creds = Creds::with(&leaf);
        let running = tls_sidecar::start(sidecar_config(&creds, app))
            .await
            .unwrap();
        let addrs = addrs(&running);
        until_ready(addrs.admin).await;
        let mut tls = connect(addrs.tls).await.unwrap();
        assert_eq!(served_leaf(&tls), leaf.leaf_der);
        assert_eq!(echo(&mut tls, b"k").await, b"k");
        drop(tls);
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_busy_port_until_it_is_free() {
    let app = echo_app().await;
    let creds = Creds::with(&Pki::shared().leaf(2048));
    let squatter = std::net::TcpListener::bind(loopback(0)).unwrap();
    let busy = squatter.local_addr().unwrap();
    let mut config = sidecar_config(&creds, app);
    config.listeners[0].bind = busy;
    let running = tls_sidecar::start(config).await.unwrap();
    let admin = running.admin_addr().unwrap();

    assert_eq!(running.tls_addrs(), [None]);
    // Once the certificate is in, the busy port is the one thing missing.
    let waiting = (503, format!("not listening on {busy} yet\n"));
    eventually("/ready to name the busy port", || async {
        get(admin, "/ready").await.ok() == Some(waiting.clone())
    })
    .await;

    drop(squatter);
    until_ready(admin).await;
    assert_eq!(running.tls_addrs(), [Some(busy)]);
    let mut tls = connect(busy).await.unwrap();
    assert_eq!(echo(&mut tls, b"mine now").await, b"mine now");
    drop(tls);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_tells_the_http_side_to_close_idle_keep_alive_connections_at_once() {
    // A tiny HTTP/1.1 app: "ok" to every request, keep-alive.
    let upstream = tokio::net::TcpListener::bind(loopback(0)).await.unwrap();
    let app = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let creds = Creds::with(&Pki::shared().ec_leaf());
    let mut config = sidecar_config(&creds, app);
    config.listeners[0].mode = tls_sidecar_config::Mode::Http;
    config.limits.drain_timeout = DEADLINE;
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;

    let mut tls = connect(addrs.tls).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 512];
    let n = tls.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    // The connection is idle (keep-alive): the drain closes it without waiting for the
    // drain timeout.
    let started = tokio::time::Instant::now();
    let drain = tokio::spawn(running.shutdown());
    assert!(closes(&mut tls).await, "the idle connection is closed");
    tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < DEADLINE / 2,
        "closed by the graceful drain, not the drain timeout: {:?}",
        started.elapsed()
    );
}
