//! A bounded soak of the packaged sidecar inside an instance: mixed load (keep-alive and new
//! connections, tcp and http mode, HTTP/1.1 and HTTP/2) for `TLS_SIDECAR_SOAK_SECONDS`
//! (default 60; `scripts/soak.sh --seconds N` sets it), then the sidecar's memory and file
//! descriptors, read from `/proc/<pid>`, must be back at what they were after a warm-up.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::sidecar::{self, TLS_PORT, connect_tls_on};
use tls_sidecar_integration::util::{Deadline, poll};
use tls_sidecar_integration::{AppInfo, Instance, LaunchOptions};
use tls_sidecar_testkit::{fds, rss};

/// How long the load runs, in seconds.
const SECONDS_ENV: &str = "TLS_SIDECAR_SOAK_SECONDS";
const DEFAULT_SECONDS: u64 = 60;
/// The http-mode listener beside the default tcp one on 8443.
const HTTP_PORT: u16 = 9443;
const WARM_UP: Duration = Duration::from_secs(5);
/// What RSS may be above its post-warm-up value once the load is over. The load never holds
/// more than 8 client connections (about 20 KiB each, measured: tests/adversarial.rs), so what
/// it could legitimately leave behind is small: the TLS 1.2 session caches (1,024 entries of a
/// few hundred bytes per listener), the pool of idle app connections (at most 32 per http
/// listener), and allocator caches. 8 MiB covers all of that several times over; a per-request
/// leak over tens of thousands of requests would not fit in it.
const RSS_MARGIN: u64 = 8 * 1024 * 1024;
/// How much RSS may drift between the first and the last quarter of the load (a leak grows
/// with the requests served; a steady state does not).
const DRIFT_MARGIN: u64 = 4 * 1024 * 1024;
/// Most idle connections the http listener pools to the app (`POOL_MAX_IDLE`).
const POOL_MAX_IDLE: usize = 32;

fn soak_seconds() -> u64 {
    std::env::var(SECONDS_ENV)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{SECONDS_ENV}={s:?} is not a number of seconds"))
        })
        .unwrap_or(DEFAULT_SECONDS)
}

/// The sidecar's open descriptors, split: idle connections its http listener pools to the app
/// on `$PORT` (hyper keeps up to 32 per listener and evicts them on a 30 s timer, so one can
/// outlive its last use by up to a minute), and everything else (listening sockets, client
/// connections, files, the runtime's own descriptors), which must come back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fds {
    total: usize,
    to_app: usize,
}

impl Fds {
    /// `app_port`: where the app listens ([`Instance::app_port`]: moved off `$PORT` while the
    /// sidecar fronts the route port).
    fn of(pid: u32, app_port: u16) -> Fds {
        // inode -> remote port, from the TCP table of the sidecar's own network namespace.
        let mut remote_port = std::collections::HashMap::new();
        for table in ["tcp", "tcp6"] {
            let text =
                std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if let (Some(remote), Some(inode)) = (cols.get(2), cols.get(9)) {
                    let port = remote
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                    if let Some(port) = port {
                        remote_port.insert((*inode).to_owned(), port);
                    }
                }
            }
        }
        let (mut total, mut to_app) = (0, 0);
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            total += 1;
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let inode = target
                .to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .map(str::to_owned);
            if inode.and_then(|i| remote_port.get(&i).copied()) == Some(app_port) {
                to_app += 1;
            }
        }
        Fds { total, to_app }
    }

    fn own(self) -> usize {
        self.total - self.to_app
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(format!("{what}: {e}"));
                }
            }
        }
    }
}

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

/// Runs the mixed load for `duration` (each worker also stops after a fixed number of
/// requests, so the loops are bounded whatever the clock does).
fn mixed_load(instance: &Instance, duration: Duration, tally: &Tally) {
    const MAX_PER_WORKER: u64 = 1_000_000;
    let host = instance.guid().to_owned();
    let stop = AtomicBool::new(false);
    let until = Instant::now() + duration;
    let running = || !stop.load(Ordering::SeqCst) && Instant::now() < until;
    std::thread::scope(|s| {
        // Keep-alive connections: two per listener, a request every 10 ms; a failed request
        // is counted and the connection replaced.
        for port in [TLS_PORT, TLS_PORT, HTTP_PORT, HTTP_PORT] {
            let (host, running) = (&host, &running);
            s.spawn(move || {
                let connect = || {
                    connect_tls_on(instance, port, None, &["http/1.1"]).map_err(|e| e.to_string())
                };
                let mut conn = match connect() {
                    Ok(c) => c,
                    Err(e) => return tally.record("keep-alive connect", Err(e)),
                };
                let mut n = 0;
                while running() && n < MAX_PER_WORKER {
                    n += 1;
                    let result = get_hello(&mut conn, host, &[]);
                    let failed = result.is_err();
                    tally.record(&format!("keep-alive on {port}"), result);
                    if failed {
                        match connect() {
                            Ok(c) => conn = c,
                            Err(e) => return tally.record("keep-alive reconnect", Err(e)),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        // New connections, one request each, alternating listeners.
        for first in [TLS_PORT, HTTP_PORT] {
            let (host, running) = (&host, &running);
            s.spawn(move || {
                let mut n = 0;
                while running() && n < MAX_PER_WORKER {
                    n += 1;
                    let other = if first == TLS_PORT {
                        HTTP_PORT
                    } else {
                        TLS_PORT
                    };
                    let port = if n % 2 == 0 { first } else { other };
                    let result = connect_tls_on(instance, port, None, &["http/1.1"])
                        .map_err(|e| format!("handshake: {e:#}"))
                        .and_then(|mut c| get_hello(&mut c, host, &[("Connection", "close")]));
                    tally.record(&format!("new connection to {port}"), result);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        // HTTP/2 through curl (its own client and TLS stack), a few requests per connection.
        {
            let (host, running) = (&host, &running);
            s.spawn(move || {
                let root = instance
                    .credentials()
                    .ca()
                    .root_cert()
                    .display()
                    .to_string();
                let resolve = format!("{host}:{HTTP_PORT}:127.0.0.1");
                let url = format!("https://{host}:{HTTP_PORT}/");
                let mut n = 0;
                while running() && n < MAX_PER_WORKER {
                    n += 1;
                    let argv = [
                        "curl",
                        "-sS",
                        "--http2",
                        "--max-time",
                        "20",
                        "--cacert",
                        &root,
                        "--resolve",
                        &resolve,
                        &url,
                        &url,
                        &url,
                    ];
                    let result = match instance.exec(&argv) {
                        Ok(out) if out.status.success() => {
                            let body = String::from_utf8_lossy(&out.stdout);
                            if body == HELLO.repeat(3) {
                                Ok(())
                            } else {
                                Err(format!("curl got {body:?}"))
                            }
                        }
                        Ok(out) => Err(output_text(&out)),
                        Err(e) => Err(e.to_string()),
                    };
                    tally.record("curl --http2", result);
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
        // The scope waits for every worker; `until` ends them.
        while running() {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
    });
}

/// Waits until no client connection is open on either listener.
fn until_idle(instance: &Instance) {
    poll(
        Deadline::after(Duration::from_secs(60)),
        "every connection to close",
        || {
            let m = sidecar::metrics(instance)?;
            let open = m.value(&format!(
                "tls_sidecar_connections_active{{listener=\"{TLS_PORT}\"}}"
            ))? + m.value(&format!(
                "tls_sidecar_connections_active{{listener=\"{HTTP_PORT}\"}}"
            ))?;
            Ok((open == 0.0).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.logs()));
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_bounded_mixed_load_soak_leaves_rss_and_open_fds_back_at_their_warm_baseline() {
    let seconds = soak_seconds();
    let app = AppInfo::new("backend");
    let staging = stage_with_config(
        &app,
        &format!("listeners:\n  - port: {TLS_PORT}\n  - port: {HTTP_PORT}\n    mode: http\n"),
    );
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[TLS_PORT, HTTP_PORT]);
    let pid = instance.process(sidecar::NAME).unwrap().pid();
    let app_port = instance.app_port().unwrap();

    // Warm-up: the runtime's threads, the pools and the session caches settle in.
    let warm = Tally::default();
    mixed_load(&instance, WARM_UP, &warm);
    until_idle(&instance);
    let (rss_base, fds_base) = (rss(pid), Fds::of(pid, app_port));
    eprintln!(
        "after a {WARM_UP:?} warm-up ({} requests): RSS {}, fds {fds_base:?}",
        warm.ok.load(Ordering::SeqCst),
        mib(rss_base)
    );

    // The soak, with RSS and fds sampled every second from the side.
    let tally = Tally::default();
    let samples = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed(), rss(pid), fds(pid)));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        mixed_load(&instance, Duration::from_secs(seconds), &tally);
        done.store(true, Ordering::SeqCst);
    });
    let (ok, failed) = (
        tally.ok.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    let samples = samples.into_inner().unwrap();
    for (at, r, f) in samples.iter().step_by(5) {
        eprintln!("  {:>4}s RSS {} fds {f}", at.as_secs(), mib(*r));
    }
    let (rss_peak, fds_peak) = (
        samples.iter().map(|s| s.1).max().unwrap_or(0),
        samples.iter().map(|s| s.2).max().unwrap_or(0),
    );
    let quarter = (samples.len() / 4).max(1);
    let first_quarter = samples[..quarter].iter().map(|s| s.1).max().unwrap_or(0);
    let last_quarter = samples[samples.len() - quarter..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);

    // After: every client gone; a connection's task may take a moment to close its socket.
    until_idle(&instance);
    let fds_after = poll(
        Deadline::after(Duration::from_secs(20)),
        "the sidecar's own descriptors to come back",
        || {
            let now = Fds::of(pid, app_port);
            Ok((now.own() <= fds_base.own()).then_some(now))
        },
    )
    .unwrap_or_else(|_| Fds::of(pid, app_port));
    let rss_after = rss(pid);
    eprintln!(
        "soak {seconds}s: {ok} requests ok, {failed} failed; RSS {} -> peak {} -> {} (first quarter {}, last quarter {}); fds {fds_base:?} -> peak {fds_peak} -> {fds_after:?}",
        mib(rss_base),
        mib(rss_peak),
        mib(rss_after),
        mib(first_quarter),
        mib(last_quarter)
    );

    assert!(
        instance
            .process(sidecar::NAME)
            .unwrap()
            .try_status()
            .unwrap()
            .is_none(),
        "the sidecar exited\n{}",
        instance.logs()
    );
    assert_eq!(
        failed,
        0,
        "{:?}\n{}",
        tally.errors.lock().unwrap(),
        instance.process(sidecar::NAME).unwrap().logs()
    );
    assert!(ok > seconds * 100, "the load barely ran: {ok} requests");
    assert!(
        last_quarter <= first_quarter + DRIFT_MARGIN,
        "RSS grew during the load: first quarter {}, last quarter {}",
        mib(first_quarter),
        mib(last_quarter)
    );
    assert!(
        rss_after <= rss_base + RSS_MARGIN,
        "RSS {} after the soak, baseline {} (margin {})",
        mib(rss_after),
        mib(rss_base),
        mib(RSS_MARGIN)
    );
    assert!(
        fds_after.own() <= fds_base.own(),
        "descriptors other than pooled app connections: {} after the soak, {} before ({fds_after:?}, {fds_base:?})",
        fds_after.own(),
        fds_base.own()
    );
    assert!(fds_after.to_app <= POOL_MAX_IDLE, "{fds_after:?}");
}
