//! `tls-sidecar`: terminates TLS (the Diego instance identity certificate, the app's own pair,
//! a bound service's, or one it mints from a bound CA) in front of a Cloud Foundry app and
//! forwards plaintext to it on `127.0.0.1:$PORT`: raw TCP (optionally after a PROXY protocol v2
//! header) or HTTP. Listeners can verify client certificates against the platform's CAs and
//! admit callers by their CF identity (`allow: [cf:same-space]`). Egress listeners take the
//! app's plaintext connections to other apps and carry them over mutual TLS with the same
//! certificate, checking the server's identity (`expect: [cf:app:<guid>]`).
//!
//! In CF a sidecar exit kills the whole app instance, so only an invalid configuration stops
//! it at start (exit 64, see [`StartError`]); once serving, missing certificates, busy ports,
//! failed accepts and failed connections are retried and logged, never fatal.
//!
//! - [`load`]: `tls-sidecar.yml` + environment → [`Plan`]: a [`SidecarConfig`] (tests build one
//!   directly) and its `allow`/`expect` rules, resolved once.
//! - [`serve`] → [`Running`]: bound addresses, readiness, reload, [`Running::shutdown`] (drain);
//!   [`start`] is `serve` for a [`SidecarConfig`], resolving its rules first.
//! - [`run`]: start, wait for a shutdown future, drain. [`run_until_signalled`] is `run` driven
//!   by SIGTERM/SIGINT, with SIGHUP reloading the certificate and the trust bundle.
//! - [`check::run`]: `tls-sidecar check`, the same loading without serving, as a report.

mod accept;
mod admin;
mod cert;
pub mod check;
mod cli;
pub mod config;
mod egress;
mod egress_proxy;
mod errors;
mod forward;
mod gate;
mod held_back;
#[doc(hidden)]
pub mod http;
pub mod identity;
mod key_schedule;
pub mod logging;
// The static musl build's memcpy and memmove (see the module); elsewhere only its tests.
#[cfg(all(target_arch = "x86_64", any(test, target_env = "musl")))]
mod memcpy;
mod memory;
pub mod metrics;
pub mod proxy_protocol;
mod reload;
mod retry;
mod route;
mod server;
mod shared;
pub mod signal;
mod stop;
mod tls;
mod trust;
mod verifier;
pub mod xfcc;

/// Entry points for the fuzz targets in `fuzz/` into parsers that are otherwise private. Not an
/// API: nothing outside the fuzz targets may use it.
#[doc(hidden)]
pub mod fuzzing {
    /// The admin server's request-head parser: `(method, path)`, `None` while incomplete, or
    /// the error's status text.
    pub fn admin_head(buf: &[u8]) -> Result<Option<(String, String)>, String> {
        crate::admin::parse_head(buf)
            .map(|h| h.map(|h| (h.method.to_owned(), h.path.to_owned())))
            .map_err(|e| format!("{e:?}"))
    }

    /// The http mode's request-framing watcher fed `buf` in pieces of the given sizes (the
    /// rest in one piece): the index of the first request it refuses, if any.
    pub fn framing_verdict(buf: &[u8], pieces: &[usize]) -> Option<u64> {
        crate::http::framing_verdict(buf, pieces)
    }

    /// The http mode's client reading an app's answer to a GET from `stream`, in reads of
    /// `piece` bytes: status, body and how many trailer fields, or why it refuses the answer.
    pub fn app_answer(stream: &[u8], piece: usize) -> Result<(u16, Vec<u8>, usize), String> {
        crate::http::app_answer(stream, piece)
    }

    /// The fast HTTP/1.1 side's parse of the request at the start of `stream`, checked: a
    /// head it leaves for hyper is left whole; one it takes frames no body, and the app gets
    /// exactly one head with the same target, lower-case names, and of the fields the sidecar
    /// owns only its own `X-Forwarded-Proto` and `X-Forwarded-For`. `Err` says which failed.
    pub fn plain_head(stream: &[u8]) -> Result<(), String> {
        crate::http::plain_head(stream)
    }
}

pub use cli::{Cli, Command};
pub use config::{
    CertificateConfig, CertificatePaths, EgressConfig, EgressProxyConfig, Limits, ListenerConfig,
    Loaded, MintConfig, Origin, Plan, ReloadTiming, RouteConfig, SidecarConfig, TrustConfig, load,
};
pub use errors::{EX_SOFTWARE, EX_USAGE, StartError};
pub use server::{Running, serve, start};
pub use tls_sidecar_config::Env;

use std::future::Future;

/// Most worker threads the runtime gets, whatever the CPU count: forwarding bytes needs few,
/// and each thread costs memory the sidecar's small `limits.memory` must cover.
const MAX_WORKER_THREADS: usize = 8;

/// How long a blocking thread (certificate and trust-bundle loads) waits for more work before
/// it exits: for the life of the process. A thread that exits leaves its allocator pages,
/// holding the certificates it loaded, to whichever thread allocates next; in a burst of
/// connections that thread fills them, and after the burst they stay resident, pinned by those
/// certificates. One idle thread per concurrent load costs less.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::MAX;

/// Most I/O events one turn of the reactor wakes tasks for (tokio's default: 1,024). The
/// current-thread scheduler queues woken tasks in a buffer that never shrinks, and runs 61 of
/// them between turns: in a burst of connections opening or closing, turns of up to 1,024
/// grew it to 16 KiB, allocated mid-burst in an allocator page the burst had filled, which it
/// then kept resident. 64, about what the scheduler runs between turns, keeps it small.
///
/// With both, the bench's RSS phase (9,900 idle connections closed) ends 5–6 % over idle RSS
/// (4 runs), against 8–9 % without them; CPU per keep-alive request is unchanged.
const IO_EVENTS_PER_TICK: usize = 64;

/// Starts the sidecar, waits for `shutdown`, then drains.
pub async fn run(
    config: SidecarConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = start(config).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}

/// [`run`] until SIGTERM or SIGINT; SIGHUP re-reads the certificate and the trust bundle.
pub async fn run_until_signalled(plan: Plan) -> Result<(), StartError> {
    let signals = signal::Signals::install().map_err(StartError::Signals)?;
    let running = serve(plan).await?;
    signals.wait_for_shutdown(&running).await;
    running.shutdown().await;
    Ok(())
}

/// A runtime sized to the CPUs this process may use (`available_parallelism` honours cgroup
/// quotas and CPU affinity), capped at [`MAX_WORKER_THREADS`]. With one CPU it is tokio's
/// current-thread scheduler: a work-stealing pool with one worker only adds cost (a run queue
/// built for stealing, and a main thread apart from the worker): measured with callgrind, it
/// spent ~8,000 more instructions on each http-mode keep-alive request (of ~57,000).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKER_THREADS);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder
        // Only certificate file reads block; a few threads are plenty.
        .max_blocking_threads(4)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .thread_name("tls-sidecar")
        .enable_all()
        .build()
}
