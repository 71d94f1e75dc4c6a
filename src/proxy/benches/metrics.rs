//! The cost of the metrics hot path, of a `/metrics` render and of a log timestamp, for the
//! decision in docs/DESIGN.md ("Metrics and dates: crates or hand-written"): a crate replaces
//! hand-written code only where it is not slower here.
//!
//! `cargo bench -p tls-sidecar --bench metrics`. A plain timing loop rather than criterion: the
//! numbers only have to tell "same" from "slower", and criterion's build would double this
//! bench's compile time on the 2-core build machine. Each case runs in rounds; the fastest
//! round is printed because other processes on the machine only ever add time.

use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tls_sidecar::logging::rfc3339;
use tls_sidecar::metrics::{EgressFailure, HandshakeFailure, Metrics};

const ROUNDS: usize = 15;

/// Runs `f` `iters` times per round and prints the fastest and the median round, per call.
fn bench(name: &str, iters: u32, mut f: impl FnMut()) {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "{name:<44} min {:>9.2} ns   median {:>9.2} ns",
        rounds[0],
        rounds[ROUNDS / 2]
    );
}

/// The series of a typical instance: two TLS listeners, a route listener and two egress
/// entries, with traffic on all of them.
fn typical() -> Metrics {
    let m = Metrics::new([8443, 9443])
        .with_route(Some(8080))
        .with_egress(["backend", "db"]);
    for l in &m.listeners {
        l.accepted.fetch_add(12_345, Relaxed);
        l.active.fetch_add(17, Relaxed);
        l.bytes_in.fetch_add(987_654_321, Relaxed);
        l.bytes_out.fetch_add(123_456_789, Relaxed);
        l.handshake_failed(HandshakeFailure::Timeout);
        for ms in [1, 3, 7, 20, 90, 400, 3000] {
            l.latency.observe(Duration::from_millis(ms));
        }
    }
    for e in &m.egress {
        e.accepted.fetch_add(321, Relaxed);
        e.failed(EgressFailure::Connect);
    }
    m.cert_not_after.store(1_900_000_000, Relaxed);
    m.reloads_succeeded.fetch_add(3, Relaxed);
    m
}

fn main() {
    let m = typical();
    let listener = m.listeners[0].clone();
    let egress = m.egress[0].clone();

    bench("counter: connection accepted", 10_000_000, || {
        black_box(&listener).accepted.fetch_add(1, Relaxed);
    });
    bench("counter: bytes received", 10_000_000, || {
        black_box(&listener)
            .bytes_in
            .fetch_add(black_box(4096), Relaxed);
    });
    bench("counter: handshake failure by reason", 10_000_000, || {
        black_box(&listener).handshake_failed(black_box(HandshakeFailure::Denied));
    });
    bench("counter: egress failure by reason", 10_000_000, || {
        black_box(&egress).failed(black_box(EgressFailure::Identity));
    });
    bench("histogram: request latency", 10_000_000, || {
        black_box(&listener)
            .latency
            .observe(black_box(Duration::from_micros(4200)));
    });
    bench("render: /metrics of a typical instance", 20_000, || {
        black_box(black_box(&m).render());
    });
    let text = m.render();
    println!("(render is {} bytes)", text.len());
    // The exposition itself, to compare byte for byte across a change of renderer.
    if let Some(path) = std::env::var_os("METRICS_BENCH_DUMP")
        && let Err(e) = std::fs::write(&path, &text)
    {
        eprintln!("cannot write {}: {e}", path.to_string_lossy());
    }
    bench("rfc3339: a log timestamp", 2_000_000, || {
        black_box(rfc3339(black_box(1_795_836_000)));
    });
}
