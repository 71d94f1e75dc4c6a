//! The client subcommands. Each prints one JSON line with its counts, the wall time of the
//! measured window, the terminator's CPU seconds in that window (`--watch-pid`) and the
//! generator's own CPU seconds.

use crate::ClientArgs;
use crate::client::{self, Target};
use crate::http::{self, HttpConn};
use crate::procfs::{self, TreeSample};
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http2;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Buffer per keep-alive connection (64 KiB for bulk, so reads are large).
const SMALL_BUFFER: usize = 16 * 1024;
const BULK_BUFFER: usize = 256 * 1024;
/// No single operation may take longer than this: a stuck peer ends the run, not the machine.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A closed-loop load: `conns` at once for `duration` seconds.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Connections at once: keep-alive ones, or slots that each open a new connection per
    /// request (handshake, resume).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

/// `keepalive`: the closed loop over TLS, or over plaintext TCP with `--plain`.
#[derive(Debug, Args)]
pub struct KeepaliveArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// No TLS at all: plaintext HTTP/1.1 to --addr (a route-port listener or a peer's plain
    /// listener), same loop; the metric is named `plain`. --ca, --sni, --cert and --key are
    /// not used.
    #[arg(long)]
    pub plain: bool,
}

/// `h2`: HTTP/2 over TLS with ALPN `h2` only.
#[derive(Debug, Args)]
pub struct H2Args {
    #[command(flatten)]
    client: ClientArgs,
    /// HTTP/2 connections (handshakes done before the window).
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Requests in flight on each connection (streams), each re-sent as soon as its response
    /// is complete: conns × streams in flight in all (8 × 8 = the 64 of the HTTP/1.1 phases).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

/// `probe`: what every peer negotiates, checked once at start.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The peer's plaintext listener (route port), checked with one plaintext request too.
    #[arg(long)]
    plain_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Requests per second, scheduled open-loop (latency counts from the scheduled time when
    /// the generator is behind schedule).
    #[arg(long)]
    rate: f64,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Totals of open connections at which RSS is sampled, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    steps: Vec<usize>,
    /// Spread connections over this many source addresses 127.0.0.2… (0: let the kernel pick).
    #[arg(long, default_value_t = 0)]
    sources: u8,
    /// Handshakes in flight while opening.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Seconds to wait after each step (and after closing) before sampling RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

/// Failures of a run: how many, and the first one's text.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn note(&mut self, e: String) {
        self.count += 1;
        self.first.get_or_insert(e);
    }

    fn add(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// A task that stops at its first failure.
impl From<Option<String>> for Errors {
    fn from(first: Option<String>) -> Self {
        Errors {
            count: u64::from(first.is_some()),
            first,
        }
    }
}

fn secs(s: f64) -> crate::Result<Duration> {
    if !(0.0..=3600.0).contains(&s) {
        return Err(format!("{s} s is outside 0..3600").into());
    }
    Ok(Duration::from_secs_f64(s))
}

/// CPU and wall time around the measured window.
struct Window {
    pid: Option<u32>,
    before: TreeSample,
    start: Instant,
    self_cpu: f64,
    accounted: Vec<u32>,
    accounted_before: u64,
    cpus_before: f64,
}

fn accounted_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| procfs::sample_tree(*p).ok())
        .map(|s| s.ticks)
        .sum()
}

impl Window {
    fn start(args: &ClientArgs) -> crate::Result<Self> {
        let pid = args.watch_pid;
        let before = match pid {
            Some(pid) => procfs::sample_tree(pid)?,
            None => TreeSample::default(),
        };
        Ok(Window {
            pid,
            before,
            start: Instant::now(),
            self_cpu: procfs::self_cpu_seconds(),
            accounted: args.account_pid.clone(),
            accounted_before: accounted_ticks(&args.account_pid),
            cpus_before: procfs::cpus01_busy_seconds(),
        })
    }

    /// {elapsed_s, server_cpu_s, server_rss_kb, client_cpu_s, upstream_cpu_s, cpus01_busy_s}
    fn stop(&self) -> Value {
        let elapsed = self.start.elapsed().as_secs_f64();
        let client_cpu = procfs::self_cpu_seconds() - self.self_cpu;
        let after = self.pid.and_then(|p| procfs::sample_tree(p).ok());
        let accounted = accounted_ticks(&self.accounted).saturating_sub(self.accounted_before);
        json!({
            "upstream_cpu_s": accounted as f64 / procfs::TICKS_PER_SECOND,
            "cpus01_busy_s": procfs::cpus01_busy_seconds() - self.cpus_before,
            "elapsed_s": elapsed,
            "server_cpu_s": after.map(|a| a.ticks.saturating_sub(self.before.ticks) as f64 / procfs::TICKS_PER_SECOND),
            "server_rss_kb": after.map(|a| a.rss_kb),
            "server_processes": after.map(|a| a.processes),
            "client_cpu_s": client_cpu,
        })
    }
}

fn emit(args: &ClientArgs, metric: &str, window: Value, extra: Value) {
    let mut line = json!({"type": "run", "metric": metric, "peer": args.label, "rep": args.rep});
    for v in [window, extra] {
        if let (Some(line), Value::Object(v)) = (line.as_object_mut(), v) {
            line.extend(v);
        }
    }
    println!("{line}");
}

async fn with_timeout<T>(fut: impl Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no progress for {} s", OP_TIMEOUT.as_secs())),
    }
}

/// Like [`with_timeout`], for futures that already fail with text.
async fn within<T>(fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    timeout(OP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no progress for {} s", OP_TIMEOUT.as_secs())))
}

/// Prints one `probe` line. Only a failing HTTP/1.1-over-TLS exchange fails the probe (the
/// script then retries: the peer may still be starting); what the h2 and plaintext checks find
/// is recorded in the line, so that a peer that cannot do them is still measured in the rest.
pub fn probe(probe_args: &ProbeArgs) -> crate::Result<()> {
    let (args, plain_addr) = (&probe_args.client, probe_args.plain_addr);
    if let Some(addr) = &plain_addr {
        crate::loopback_only(addr)?;
    }
    crate::runtime()?.block_on(async {
        let target = Target::new(args)?;
        let (config, identity) = target.config_with(true, &[])?;
        // The first connection asks the upstream to echo the XFCC value it received; the
        // second shows whether the peer resumes (and fetches the regular body).
        let mut resumed = false;
        let mut described = None;
        let mut alpn = String::new();
        let (mut xfcc, mut xfcc_value, mut body) = (false, String::new(), 0);
        for (i, path) in ["/xfcc", args.path.as_str()].into_iter().enumerate() {
            let req = http::request(path, true);
            let tls = with_timeout(target.connect(&config, None)).await?;
            resumed = client::resumed(&tls);
            described.get_or_insert_with(|| client::describe(&tls));
            if i == 0 {
                alpn = client::alpn(&tls);
            }
            let mut conn = HttpConn::new(tls, SMALL_BUFFER);
            let got = with_timeout(conn.get_body(&req)).await?;
            if i == 0 {
                xfcc = conn.xfcc_seen;
                xfcc_value = String::from_utf8_lossy(&got).into_owned();
            } else {
                body = got.len();
            }
            let _ = conn.io.shutdown().await;
        }
        let client_cert_requested = identity.asked();
        let h2 = probe_h2(&target).await;
        // `plain`: null without --plain-addr, else whether it answered (the script waits for
        // `"plain":true`: the sidecar binds its route port a moment after its TLS port).
        let (plain, plain_error) = match plain_addr {
            None => (Value::Null, None),
            Some(addr) => {
                let req = http::request(&args.path, true);
                let got = within(async {
                    let tcp = client::connect_plain(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    HttpConn::new(tcp, SMALL_BUFFER)
                        .get(&req)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await;
                (Value::Bool(got.is_ok()), got.err())
            }
        };
        let (version, suite, group) = described.unwrap_or_default();
        println!(
            "{}",
            json!({"type": "probe", "peer": args.label, "version": version, "suite": suite,
                   "group": group, "alpn": alpn, "body_bytes": body, "second_resumed": resumed,
                   "client_cert_requested": client_cert_requested,
                   "client_cert_presented": client_cert_requested && target.has_identity(),
                   "xfcc": xfcc, "xfcc_value": xfcc_value,
                   "h2": h2.get("ok").cloned().unwrap_or(Value::Bool(false)),
                   "h2_detail": h2, "plain": plain, "plain_error": plain_error})
        );
        Ok(())
    })
}

/// One HTTP/2 request over a connection that offers ALPN `h2` only: {ok, alpn, xfcc, error}.
/// A peer without h2 (every tcp-mode terminator) completes the handshake without ALPN.
async fn probe_h2(target: &Target) -> Value {
    let result = within(async {
        let (config, _) = target
            .config_with(false, &[b"h2"])
            .map_err(|e| e.to_string())?;
        let tls = with_timeout(target.connect(&config, None)).await?;
        let alpn = client::alpn(&tls);
        if alpn != "h2" {
            return Ok(json!({"ok": false, "alpn": alpn}));
        }
        let mut sender = h2_handshake(tls).await?;
        let uri = h2_uri(target, "/1k")?;
        let (_, xfcc) = h2_get(&mut sender, &uri).await?;
        Ok(json!({"ok": true, "alpn": alpn, "xfcc": xfcc}))
    })
    .await;
    result.unwrap_or_else(|e| json!({"ok": false, "error": e}))
}

/// Keep-alive request loop (`bulk` only changes the buffer size and the metric name; `plain`
/// drops TLS and names the metric `plain`).
pub fn keepalive(args: &LoadArgs, plain: bool, bulk: bool) -> crate::Result<()> {
    let duration = secs(args.duration)?;
    let conns = args.conns.clamp(1, 10_000);
    let buffer = if bulk { BULK_BUFFER } else { SMALL_BUFFER };
    let req = Arc::new(http::request(&args.client.path, false));
    crate::runtime()?.block_on(async {
        if plain {
            crate::loopback_only(&args.client.addr)?;
            let mut pool = Vec::with_capacity(conns);
            for _ in 0..conns {
                let tcp = with_timeout(client::connect_plain(args.client.addr)).await?;
                pool.push(HttpConn::new(tcp, buffer));
            }
            return closed_loop(args, "plain", pool, req, duration).await;
        }
        let target = Target::new(&args.client)?;
        let config = target.config(false)?;
        let mut pool = Vec::with_capacity(conns);
        for _ in 0..conns {
            let tls = with_timeout(target.connect(&config, None)).await?;
            pool.push(HttpConn::new(tls, buffer));
        }
        let metric = if bulk { "bulk" } else { "keepalive" };
        closed_loop(args, metric, pool, req, duration).await
    })
}

/// The measured closed loop over connections already open: every connection sends its next
/// request as soon as the previous response is complete.
async fn closed_loop<S>(
    args: &LoadArgs,
    metric: &str,
    mut pool: Vec<HttpConn<S>>,
    req: Arc<Vec<u8>>,
    duration: Duration,
) -> crate::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conns = pool.len();
    // Warm-up: one request each (handshakes and first allocations out of the window).
    for conn in &mut pool {
        with_timeout(conn.get(&req)).await?;
    }
    {
        let window = Window::start(&args.client)?;
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = pool
            .into_iter()
            .map(|mut conn| {
                let req = req.clone();
                tokio::spawn(async move {
                    let (mut n, mut bytes, mut error) = (0u64, 0u64, None);
                    while Instant::now() < deadline {
                        match with_timeout(conn.get(&req)).await {
                            Ok(b) => {
                                n += 1;
                                bytes += b;
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    (n, bytes, error, conn)
                })
            })
            .collect();
        let (mut requests, mut bytes, mut errors, mut keep) = (0, 0, Errors::default(), Vec::new());
        for task in tasks {
            let (n, b, e, conn) = task.await?;
            requests += n;
            bytes += b;
            errors.add(e.into());
            keep.push(conn);
        }
        // Sampled before the connections close, so closing is not in the window.
        let measured = window.stop();
        drop(keep);
        let elapsed = measured["elapsed_s"].as_f64().unwrap_or(f64::NAN);
        emit(
            &args.client,
            metric,
            measured,
            json!({"conns": conns, "requests": requests, "bytes": bytes, "errors": errors.count,
                   "first_error": errors.first,
                   "per_s": requests as f64 / elapsed,
                   "mb_per_s": bytes as f64 / 1e6 / elapsed}),
        );
        Ok(())
    }
}

type H2Sender = http2::SendRequest<Empty<Bytes>>;

/// `https://<SNI><path>`: hyper sends the authority as `:authority`, the SNI name, so that no
/// peer sees a Host different from the server name it chose the certificate for.
fn h2_uri(target: &Target, path: &str) -> Result<Uri, String> {
    let name = match &target.name {
        rustls_pki_types::ServerName::DnsName(n) => n.as_ref().to_owned(),
        other => format!("{other:?}"),
    };
    format!("https://{name}{path}")
        .parse()
        .map_err(|e| format!("bad URI for {path}: {e}"))
}

/// The HTTP/2 client handshake on a TLS connection that negotiated `h2`; the connection is
/// driven by its own task until every sender is dropped.
async fn h2_handshake(tls: client::Tls) -> Result<H2Sender, String> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        // Windows far above what 1 KiB responses need, and no adaptive window (BDP pings):
        // the generator then sends no WINDOW_UPDATE or PING frames the peers would have to
        // process, and spends its own CPU on requests only.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .adaptive_window(false)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One `GET` on its own stream: (body bytes, whether the upstream saw XFCC). Non-200 fails.
async fn h2_get(sender: &mut H2Sender, uri: &Uri) -> Result<(u64, bool), String> {
    let req = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (status, xfcc) = (resp.status(), resp.headers().contains_key(http::XFCC_SEEN));
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    if status != StatusCode::OK {
        return Err(format!("HTTP status {status}"));
    }
    Ok((bytes, xfcc))
}

/// HTTP/2 closed loop: `conns` connections × `streams` requests in flight.
pub fn h2(args: &H2Args) -> crate::Result<()> {
    let duration = secs(args.duration)?;
    let conns = args.conns.clamp(1, 1_000);
    // 100 is the concurrent-stream limit HAProxy and the sidecar announce by default.
    let streams = args.streams.clamp(1, 100);
    crate::runtime()?.block_on(async {
        let target = Target::new(&args.client)?;
        let (config, _) = target.config_with(false, &[b"h2"])?;
        let uri = h2_uri(&target, &args.client.path)?;
        let mut senders = Vec::with_capacity(conns);
        for _ in 0..conns {
            let tls = with_timeout(target.connect(&config, None)).await?;
            let alpn = client::alpn(&tls);
            if alpn != "h2" {
                return Err(format!(
                    "{} did not negotiate h2 (ALPN offered: h2 only; selected: {alpn}): it does not speak HTTP/2 over TLS",
                    args.client.addr
                )
                .into());
            }
            let mut sender = within(h2_handshake(tls)).await?;
            // Warm-up: `streams` requests at once, so every stream slot's first allocations
            // (and the peer's upstream connections) happen before the window.
            let warm: Vec<_> = (0..streams)
                .map(|_| {
                    let (mut s, uri) = (sender.clone(), uri.clone());
                    tokio::spawn(async move { within(h2_get(&mut s, &uri)).await })
                })
                .collect();
            for w in warm {
                w.await??;
            }
            within(h2_get(&mut sender, &uri)).await?;
            senders.push(sender);
        }
        let window = Window::start(&args.client)?;
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = senders
            .iter()
            .flat_map(|sender| (0..streams).map(move |_| sender.clone()))
            .map(|mut sender| {
                let uri = uri.clone();
                tokio::spawn(async move {
                    let (mut n, mut bytes, mut error) = (0u64, 0u64, None);
                    while Instant::now() < deadline {
                        match within(h2_get(&mut sender, &uri)).await {
                            Ok((b, _)) => {
                                n += 1;
                                bytes += b;
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    (n, bytes, error)
                })
            })
            .collect();
        let (mut requests, mut bytes, mut errors) = (0, 0, Errors::default());
        for task in tasks {
            let (n, b, e) = task.await?;
            requests += n;
            bytes += b;
            errors.add(e.into());
        }
        // Sampled before the connections close (the senders are still held).
        let measured = window.stop();
        drop(senders);
        let elapsed = measured["elapsed_s"].as_f64().unwrap_or(f64::NAN);
        emit(
            &args.client,
            "h2",
            measured,
            json!({"conns": conns, "streams": streams, "in_flight": conns * streams,
                   "requests": requests, "bytes": bytes, "errors": errors.count,
                   "first_error": errors.first,
                   "per_s": requests as f64 / elapsed,
                   "mb_per_s": bytes as f64 / 1e6 / elapsed}),
        );
        Ok(())
    })
}

/// New connection per request: full handshakes (`resume` false) or resumed ones.
pub fn connections(args: &LoadArgs, resume: bool) -> crate::Result<()> {
    let duration = secs(args.duration)?;
    let conns = args.conns.clamp(1, 1_000);
    crate::runtime()?.block_on(async {
        let target = Arc::new(Target::new(&args.client)?);
        let req = Arc::new(http::request(&args.client.path, true));
        // Resumption: each task has its own session store, so the ticket one connection receives
        // is offered by that task's next connection (rustls keeps at most 8 per server name).
        let shared = target.config(false)?;
        let mut configs = Vec::with_capacity(conns);
        for _ in 0..conns {
            configs.push(if resume {
                target.config(true)?
            } else {
                shared.clone()
            });
        }
        // Warm-up: one connection per task, which also primes every resumption store.
        for config in &configs {
            one_connection(&target, config, &req).await?;
        }
        let window = Window::start(&args.client)?;
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = configs
            .into_iter()
            .map(|config| {
                let (target, req) = (target.clone(), req.clone());
                tokio::spawn(async move {
                    let (mut full, mut resumed, mut errors) = (0u64, 0u64, Errors::default());
                    while Instant::now() < deadline {
                        match one_connection(&target, &config, &req).await {
                            Ok(true) => resumed += 1,
                            Ok(false) => full += 1,
                            Err(e) => {
                                errors.note(e);
                                sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    (full, resumed, errors)
                })
            })
            .collect();
        let (mut full, mut resumed, mut errors) = (0, 0, Errors::default());
        for task in tasks {
            let (f, r, e) = task.await?;
            full += f;
            resumed += r;
            errors.add(e);
        }
        let measured = window.stop();
        let elapsed = measured["elapsed_s"].as_f64().unwrap_or(f64::NAN);
        let total = full + resumed;
        emit(
            &args.client,
            if resume { "resume" } else { "handshake" },
            measured,
            json!({"conns": conns, "requests": total, "full": full, "resumed": resumed,
                   "resumed_fraction": if total > 0 { resumed as f64 / total as f64 } else { 0.0 },
                   "errors": errors.count, "first_error": errors.first,
                   "per_s": total as f64 / elapsed}),
        );
        Ok(())
    })
}

/// Connect, one `Connection: close` request, close_notify. `Ok(true)` if it resumed.
async fn one_connection(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
    req: &[u8],
) -> Result<bool, String> {
    let tls = with_timeout(target.connect(config, None)).await?;
    let resumed = client::resumed(&tls);
    let mut conn = HttpConn::new(tls, 4096);
    with_timeout(conn.get(req)).await?;
    let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    Ok(resumed)
}

pub fn rate(args: &RateArgs) -> crate::Result<()> {
    let rate = args.rate;
    let args = &args.load;
    let duration = secs(args.duration)?;
    let conns = args.conns.clamp(1, 10_000);
    if !(1.0..=1e7).contains(&rate) {
        return Err("--rate must be within 1..10^7 requests/s".into());
    }
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    crate::runtime()?.block_on(async {
        let target = Target::new(&args.client)?;
        let config = target.config(false)?;
        let req = Arc::new(http::request(&args.client.path, false));
        let mut pool = Vec::with_capacity(conns);
        for _ in 0..conns {
            let tls = with_timeout(target.connect(&config, None)).await?;
            let mut conn = HttpConn::new(tls, SMALL_BUFFER);
            with_timeout(conn.get(&req)).await?;
            pool.push(conn);
        }
        let window = Window::start(&args.client)?;
        let t0 = Instant::now() + Duration::from_millis(5);
        let deadline = t0 + duration;
        let tasks: Vec<_> = pool
            .into_iter()
            .enumerate()
            .map(|(k, mut conn)| {
                let req = req.clone();
                // Connection k sends requests k, k+C, k+2C, … at t0 + i/rate.
                let first = t0 + Duration::from_secs_f64(k as f64 / rate);
                tokio::spawn(async move {
                    let mut latencies: Vec<u32> = Vec::new();
                    let (mut late, mut error) = (0u64, None);
                    let mut intended = first;
                    while intended < deadline {
                        let start = if Instant::now() < intended {
                            // The timer wakes up to ~1 ms late; that delay is the generator's,
                            // not the terminator's, so it is not counted.
                            sleep_until(intended).await;
                            Instant::now()
                        } else {
                            // Behind schedule (the previous response was slow): count the wait.
                            late += 1;
                            intended
                        };
                        if let Err(e) = with_timeout(conn.get(&req)).await {
                            error = Some(e);
                            break;
                        }
                        let micros = start.elapsed().as_micros();
                        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                        intended += interval;
                    }
                    (latencies, late, error, conn)
                })
            })
            .collect();
        let (mut all, mut late, mut errors, mut keep) =
            (Vec::new(), 0, Errors::default(), Vec::new());
        for task in tasks {
            let (l, lt, e, conn) = task.await?;
            all.extend(l);
            late += lt;
            errors.add(e.into());
            keep.push(conn);
        }
        let measured = window.stop();
        drop(keep);
        all.sort_unstable();
        let pct = |p: f64| -> Option<u32> {
            let last = all.len().checked_sub(1)?;
            all.get(((last as f64) * p).round() as usize).copied()
        };
        let n = all.len();
        let elapsed = measured["elapsed_s"].as_f64().unwrap_or(f64::NAN);
        emit(
            &args.client,
            "rate",
            measured,
            json!({"conns": conns, "target_rate": rate, "requests": n,
                   "per_s": n as f64 / elapsed, "late": late, "errors": errors.count,
                   "first_error": errors.first,
                   "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
                   "p999_us": pct(0.999), "max_us": all.last()}),
        );
        Ok(())
    })
}

pub fn idle(args: &IdleArgs) -> crate::Result<()> {
    let settle = secs(args.settle)?;
    let pid = args
        .client
        .watch_pid
        .ok_or("idle needs --watch-pid (it samples the terminator's RSS)")?;
    let mut steps = args.steps.clone();
    steps.sort_unstable();
    if steps.last().is_some_and(|&n| n > 50_000) {
        return Err("at most 50,000 idle connections".into());
    }
    let sources: Vec<Option<IpAddr>> = if args.sources == 0 {
        vec![None]
    } else {
        (0..args.sources)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))))
            .collect()
    };
    crate::runtime()?.block_on(async {
        let target = Arc::new(Target::new(&args.client)?);
        let config = target.config(false)?;
        let rss = || procfs::sample_tree(pid).map(|s| s.rss_kb);
        let anon = || procfs::sample_tree(pid).map(|s| s.rss_anon_kb);
        let (idle_kb, idle_anon_kb) = (rss()?, anon()?);
        let started = Instant::now();
        let mut open = Vec::new();
        let mut failed = Errors::default();
        let mut samples = Vec::new();
        for &step in &steps {
            let want = step.saturating_sub(open.len());
            let next = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..args.parallel.clamp(1, 256))
                .map(|_| {
                    let (target, config, next, sources) = (
                        target.clone(),
                        config.clone(),
                        next.clone(),
                        sources.clone(),
                    );
                    tokio::spawn(async move {
                        let (mut got, mut failed) = (Vec::new(), Errors::default());
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= want {
                                break;
                            }
                            let source = sources[i % sources.len()];
                            match with_timeout(target.connect(&config, source)).await {
                                Ok(tls) => got.push(tls),
                                Err(e) => failed.note(e),
                            }
                        }
                        (got, failed)
                    })
                })
                .collect();
            for task in tasks {
                let (got, f) = task.await?;
                open.extend(got);
                failed.add(f);
            }
            sleep(settle).await;
            let kb = rss()?;
            samples.push(json!({"target": step, "open": open.len(), "rss_kb": kb}));
        }
        let opened = open.len();
        let open_s = started.elapsed().as_secs_f64();
        drop(open);
        sleep(Duration::from_secs(1)).await;
        let after_1s_kb = rss()?;
        sleep(settle).await;
        let (after_kb, after_anon_kb) = (rss()?, anon()?);
        println!(
            "{}",
            json!({"type": "idle", "peer": args.client.label, "rep": args.client.rep,
                   "idle_kb": idle_kb, "idle_anon_kb": idle_anon_kb, "steps": samples,
                   "after_close_1s_kb": after_1s_kb, "after_close_kb": after_kb,
                   "after_close_anon_kb": after_anon_kb, "opened": opened, "failed": failed.count,
                   "first_error": failed.first, "open_s": open_s})
        );
        Ok(())
    })
}
