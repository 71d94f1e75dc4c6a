//! The sidecar over time: credential rotation under keep-alive load, and the drain on SIGTERM.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::sidecar::{self, TLS_PORT, admin_get, connect_tls};
use tls_sidecar_integration::tls::{handshake, normalize_serial, peer_serial};
use tls_sidecar_integration::util::{Deadline, poll};
use tls_sidecar_integration::{AppInfo, Instance, LaunchOptions};

/// Requests per worker at most (the loop is bounded even if the stop flag never came).
const MAX_REQUESTS: u64 = 50_000;
const ROTATIONS: usize = 3;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut v) = self.errors.lock()
            && v.len() < 10
        {
            v.push(e);
        }
    }
}

/// One GET / on `conn`, checked.
fn get_hello<S: std::io::Read + std::io::Write>(
    conn: &mut S,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(), String> {
    match request(conn, "GET", "/", host, headers) {
        Ok(r) if r.status == 200 && r.text() == HELLO => Ok(()),
        Ok(r) => Err(format!("answered {} {:?}", r.status, r.text())),
        Err(e) => Err(e.to_string()),
    }
}

fn rotation_under_load(mode: &str) {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        &format!("listeners:\n  - port: 8443\n    mode: {mode}\n"),
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let host = instance.guid().to_owned();
    let first_serial = normalize_serial(&instance.credentials().serial());
    let stop = AtomicBool::new(false);
    let keep_alive = Tally::default();
    let fresh = Tally::default();
    let started = Instant::now();

    std::thread::scope(|s| {
        // Three keep-alive connections, each sending requests back to back.
        for _ in 0..3 {
            s.spawn(|| {
                let mut conn = match connect_tls(&instance, None) {
                    Ok(c) => c,
                    Err(e) => return keep_alive.fail(format!("connect: {e}")),
                };
                let serial = peer_serial(&conn).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < MAX_REQUESTS {
                    n += 1;
                    match get_hello(&mut conn, &host, &[]) {
                        Ok(()) => {
                            keep_alive.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            keep_alive.fail(format!("keep-alive request {n}: {e}"));
                            match connect_tls(&instance, None) {
                                Ok(c) => conn = c,
                                Err(e) => return keep_alive.fail(format!("reconnect: {e}")),
                            }
                        }
                    }
                }
                // The session opened before the rotations keeps its certificate.
                assert_eq!(peer_serial(&conn).unwrap(), serial);
            });
        }
        // And a stream of new connections, one request each: these meet every reload.
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < MAX_REQUESTS {
                n += 1;
                let result = connect_tls(&instance, None)
                    .map_err(|e| format!("handshake: {e:#}"))
                    .and_then(|mut c| get_hello(&mut c, &host, &[("Connection", "close")]));
                match result {
                    Ok(()) => {
                        fresh.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => fresh.fail(format!("new connection {n}: {e}")),
                }
            }
        });

        let mut serial = first_serial.clone();
        for round in 1..=ROTATIONS {
            let next = normalize_serial(
                &instance
                    .credentials()
                    .rotate(Duration::from_secs(24 * 3600))
                    .unwrap(),
            );
            assert_ne!(next, serial);
            poll(
                Deadline::after(Duration::from_secs(60)),
                &format!("new connections to present rotation {round}'s certificate"),
                || {
                    let conn = connect_tls(&instance, None)?;
                    Ok((peer_serial(&conn)? == next).then_some(()))
                },
            )
            .unwrap_or_else(|e| {
                stop.store(true, Ordering::SeqCst);
                panic!("{e}\n{}", instance.logs())
            });
            eprintln!("rotation {round} served after {:?}", started.elapsed());
            serial = next;
        }
        stop.store(true, Ordering::SeqCst);
    });

    let (ka_ok, ka_failed) = (
        keep_alive.ok.load(Ordering::SeqCst),
        keep_alive.failed.load(Ordering::SeqCst),
    );
    let (fresh_ok, fresh_failed) = (
        fresh.ok.load(Ordering::SeqCst),
        fresh.failed.load(Ordering::SeqCst),
    );
    eprintln!(
        "{mode}: {ka_ok} keep-alive requests ok, {ka_failed} failed; {fresh_ok} new connections ok, {fresh_failed} failed, over {:?}",
        started.elapsed()
    );
    assert!(ka_ok > 0 && fresh_ok > 0, "no load ran");
    assert_eq!(
        (ka_failed, fresh_failed),
        (0, 0),
        "requests failed during rotation: {:?} {:?}\n{}",
        keep_alive.errors.lock().unwrap(),
        fresh.errors.lock().unwrap(),
        instance.process(sidecar::NAME).unwrap().logs()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn three_rotations_under_keep_alive_load_in_tcp_mode_fail_no_request() {
    rotation_under_load("tcp");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn three_rotations_under_keep_alive_load_in_http_mode_fail_no_request() {
    rotation_under_load("http");
}

/// Whether a brand-new TLS connection to `port` gets an answer right now (short timeouts).
fn new_connection_answers(instance: &Instance, port: u16) -> bool {
    let Ok(tcp) = instance.connect(port) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(3)));
    let root = instance.credentials().ca().root_cert().to_path_buf();
    let Ok(config) = tls_sidecar_integration::tls::client_config(&root, None) else {
        return false;
    };
    match handshake(config, instance.guid(), tcp) {
        Ok(mut c) => get_hello(&mut c, instance.guid(), &[("Connection", "close")]).is_ok(),
        Err(_) => false,
    }
}

/// Sends `GET /slow?seconds=<secs>` on its own connection from a thread, waits until the app
/// has started on it, SIGTERMs the sidecar, and checks the drain. Returns the slow request's
/// outcome and how long after the signal the sidecar exited.
fn drain_with_a_slow_request(
    instance: &Instance,
    secs: u32,
    headers: &[(&str, &str)],
) -> (Result<String, String>, Duration) {
    let sidecar = instance.process(sidecar::NAME).unwrap();
    let host = instance.guid().to_owned();
    let mut conn = connect_tls(instance, None).unwrap();
    conn.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    std::thread::scope(|s| {
        let slow = s.spawn(move || {
            let r = request(
                &mut conn,
                "GET",
                &format!("/slow?seconds={secs}"),
                &host,
                headers,
            );
            let done = Instant::now();
            (
                match r {
                    Ok(r) if r.status == 200 => Ok(r.text()),
                    Ok(r) => Err(format!("answered {} {:?}", r.status, r.text())),
                    Err(e) => Err(e.to_string()),
                },
                done,
            )
        });
        instance
            .web()
            .unwrap()
            .wait_for_log("slow request started", ready())
            .unwrap();
        let signalled = Instant::now();
        sidecar.signal(rustix::process::Signal::TERM).unwrap();

        // At once: /ready says 503, and new connections get nowhere.
        poll(
            Deadline::after(Duration::from_secs(5)),
            "/ready to answer 503 after SIGTERM",
            || match admin_get(instance, "/ready") {
                Ok(r) if r.status == 503 => Ok(Some(())),
                Ok(r) => Err(tls_sidecar_integration::Error::msg(format!(
                    "/ready answered {}",
                    r.status
                ))),
                Err(e) => Err(e),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.logs()));
        poll(
            Deadline::after(Duration::from_secs(5)),
            "new connections to be refused after SIGTERM",
            || Ok((!new_connection_answers(instance, TLS_PORT)).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.logs()));
        let (outcome, finished) = slow.join().unwrap();
        let status = sidecar
            .wait_exit(Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}"));
        let exited = signalled.elapsed();
        assert_eq!(
            status.code(),
            Some(0),
            "exit {status:?} (signal {:?})\n{}",
            status.signal(),
            sidecar.logs()
        );
        eprintln!(
            "slow request ended {:?} after SIGTERM: {outcome:?}; sidecar exited after {exited:?}",
            finished.duration_since(signalled)
        );
        // CF, not the sidecar, decides the app's fate.
        assert!(instance.web().unwrap().try_status().unwrap().is_none());
        (outcome, exited)
    })
}

fn slow_request_finishes_during_the_drain(mode: &str) {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        &format!("listeners:\n  - port: 8443\n    mode: {mode}\n"),
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    // tcp mode cannot see requests: the app closing its connection ends the drain early.
    let (outcome, exited) = drain_with_a_slow_request(&instance, 4, &[("Connection", "close")]);
    assert_eq!(outcome, Ok("slept 4s\n".to_owned()), "{}", instance.logs());
    // Default drain_timeout is 8 s: the sidecar left as soon as the request was done.
    assert!(
        exited < Duration::from_secs(8),
        "the sidecar took {exited:?}, more than the drain timeout\n{}",
        instance.logs()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn after_sigterm_an_in_flight_http_request_completes_while_ready_is_503_and_new_connections_are_refused()
 {
    slow_request_finishes_during_the_drain("http");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn after_sigterm_an_in_flight_tcp_connection_completes_while_ready_is_503_and_new_connections_are_refused()
 {
    slow_request_finishes_during_the_drain("tcp");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_request_longer_than_drain_timeout_is_cut_off_and_the_sidecar_still_exits_0_on_time() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        "listeners:\n  - port: 8443\n    mode: http\nlimits:\n  drain_timeout: 2s\n",
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let (outcome, exited) = drain_with_a_slow_request(&instance, 30, &[]);
    assert!(
        outcome.is_err(),
        "the 30 s request should have been cut off"
    );
    assert!(
        exited >= Duration::from_millis(1500) && exited < Duration::from_secs(2 + 5),
        "the sidecar exited {exited:?} after SIGTERM with drain_timeout 2s\n{}",
        instance.logs()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn idle_http_keep_alive_connections_are_closed_at_sigterm_instead_of_holding_the_drain() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let sidecar = instance.process(sidecar::NAME).unwrap();
    let mut h1 = connect_tls(&instance, None).unwrap();
    get_hello(&mut h1, instance.guid(), &[]).unwrap();
    let mut h2 =
        tls_sidecar_integration::sidecar::connect_tls_on(&instance, TLS_PORT, None, &["h2"])
            .unwrap();
    assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The HTTP/2 client preface and an empty SETTINGS frame: an open, idle h2 connection.
    std::io::Write::write_all(
        &mut h2,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .unwrap();
    std::io::Write::flush(&mut h2).unwrap();
    let (status, took, frames) = std::thread::scope(|s| {
        // An idle but live HTTP/2 client, as curl or a browser would be: it acknowledges SETTINGS
        // and PINGs (h2's graceful shutdown waits for a PING round trip) until the server closes.
        let client = s.spawn(move || idle_h2_client(&mut h2));
        let started = Instant::now();
        sidecar.signal(rustix::process::Signal::TERM).unwrap();
        let status = sidecar.wait_exit(Duration::from_secs(30)).unwrap();
        (status, started.elapsed(), client.join().unwrap())
    });
    assert_eq!(status.code(), Some(0), "{}", sidecar.logs());
    eprintln!(
        "exited {took:?} after SIGTERM with two idle connections; h2 frames seen: {frames:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "idle connections held the drain for {took:?} (drain_timeout 8s)\n{}",
        sidecar.logs()
    );
    assert!(
        frames.contains(&"GOAWAY"),
        "no GOAWAY on the h2 connection: {frames:?}"
    );
    // The idle HTTP/1.1 connection is closed (a read timeout would mean it is still open).
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut h1, &mut buf);
    assert!(
        match &read {
            Ok(n) => *n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        },
        "the idle connection is still open: {read:?}"
    );
}

/// Plays an idle HTTP/2 client on `conn` (after its preface): answers SETTINGS with an ACK and
/// PING with a PING ACK, sends nothing else, and returns the frame types it saw until the server
/// closed the connection.
fn idle_h2_client<S: std::io::Read + std::io::Write>(conn: &mut S) -> Vec<&'static str> {
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).is_err() {
            return seen;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).is_err() {
            return seen;
        }
        const ACK: u8 = 0x1;
        let reply: Option<Vec<u8>> = match kind {
            0x4 => {
                seen.push("SETTINGS");
                (flags & ACK == 0).then(|| vec![0, 0, 0, 0x4, ACK, 0, 0, 0, 0])
            }
            0x6 => {
                seen.push("PING");
                (flags & ACK == 0).then(|| {
                    let mut f = vec![0, 0, 8, 0x6, ACK, 0, 0, 0, 0];
                    f.extend_from_slice(&payload);
                    f
                })
            }
            0x7 => {
                seen.push("GOAWAY");
                None
            }
            0x8 => {
                seen.push("WINDOW_UPDATE");
                None
            }
            _ => {
                seen.push("other");
                None
            }
        };
        if let Some(frame) = reply
            && (conn.write_all(&frame).is_err() || conn.flush().is_err())
        {
            return seen;
        }
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn after_sigterm_an_in_flight_http2_stream_completes_and_curl_exits_0() {
    let app = AppInfo::new("backend");
    let staging = stage_with_config(&app, "listeners:\n  - port: 8443\n    mode: http\n");
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT]);
    let sidecar = instance.process(sidecar::NAME).unwrap();
    let guid = instance.guid().to_owned();
    let root = instance
        .credentials()
        .ca()
        .root_cert()
        .display()
        .to_string();
    let mut curl = instance.netns().command("curl").unwrap();
    curl.args(["-sS", "--http2", "--max-time", "30", "--cacert", &root])
        .args(["--resolve", &format!("{guid}:{TLS_PORT}:127.0.0.1")])
        .args(["--write-out", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{guid}:{TLS_PORT}/slow?seconds=4"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = curl.spawn().unwrap();
    instance
        .web()
        .unwrap()
        .wait_for_log("slow request started", ready())
        .unwrap();
    sidecar.signal(rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        sidecar.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "slept 4s\n\n2 200");
    let status = sidecar.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", sidecar.logs());
}
