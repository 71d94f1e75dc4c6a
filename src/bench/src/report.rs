//! `report`: reads the results file (one JSON object a line, written by the other subcommands
//! and by scripts/bench.sh) and writes docs/benchmarks.md, docs/benchmarks.svg and a summary on
//! stdout. Medians over repetitions with min–max; ratios against ours (`tls-sidecar-tcp`, and
//! `tls-sidecar-http` for the phases only http-mode peers run). Earlier runs' results files
//! (`--also-results`) add the tcp-mode lead of each run.

use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const OURS: &str = "tls-sidecar-tcp";
const OURS_MUSL: &str = "tls-sidecar-tcp-musl";
/// Ours in http mode, and the two HTTP proxies issue 15 measures it against.
const OURS_HTTP: &str = "tls-sidecar-http";
const NGINX_HTTP: &str = "nginx-http";
const HTTP_PEERS: [&str; 2] = [NGINX_HTTP, "haproxy-http"];
const NGINX: [&str; 2] = [NGINX_HTTP, "nginx-stream"];
/// The tcp-mode lead issue 15 asks for in every run: best peer's CPU ÷ ours.
const LEAD_KEEPALIVE: f64 = 1.2;
const LEAD_RESUME: f64 = 2.0;
/// Peer order in every table.
const ORDER: [&str; 9] = [
    "tls-sidecar-tcp",
    "tls-sidecar-tcp-musl",
    "tls-sidecar-http",
    "nginx-http",
    "nginx-stream",
    "haproxy-tcp",
    "haproxy-http",
    "stunnel",
    "hitch",
];

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The results file (JSON lines).
    #[arg(long)]
    results: PathBuf,
    /// Earlier runs' results files (repeatable): the table "tcp mode lead per run" covers them
    /// and this run, so three consecutive full runs can be shown to keep the lead.
    #[arg(long)]
    also_results: Vec<PathBuf>,
    /// Where to write the Markdown report.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Where to write the SVG chart.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Only print half the slowest peer's median keep-alive rate (the latency test's rate).
    #[arg(long)]
    half_slowest_keepalive: bool,
}

/// Median and range of one figure over the repetitions.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Option<Stat> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
    fn show(&self) -> String {
        if self.n > 1 {
            format!("{} ({}–{})", num(self.median), num(self.min), num(self.max))
        } else {
            num(self.median)
        }
    }
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        let s = format!("{v:.0}");
        // thousands separators for readability
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Every figure, per peer.
#[derive(Default)]
struct Data {
    /// Where the results came from (for the per-run table).
    source: String,
    meta: Value,
    speed: Value,
    supply: Value,
    end: Value,
    /// (metric, peer) → runs
    runs: BTreeMap<(String, String), Vec<Value>>,
    idle: BTreeMap<String, Value>,
    probes: BTreeMap<String, Value>,
    skips: Vec<(String, String)>,
    errors: Vec<String>,
}

impl Data {
    fn load(path: &Path) -> crate::Result<Data> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut d = Data::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        d.source = path.display().to_string();
        Ok(d)
    }

    fn parse(text: &str) -> crate::Result<Data> {
        let mut d = Data::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)?;
            let peer = s(&v, "peer").to_owned();
            match s(&v, "type") {
                "meta" => d.meta = v,
                "speed" => d.speed = v,
                "supply" => d.supply = v,
                "end" => d.end = v,
                "run" => d
                    .runs
                    .entry((s(&v, "metric").to_owned(), peer))
                    .or_default()
                    .push(v),
                "idle" => {
                    d.idle.insert(peer, v);
                }
                "probe" => {
                    d.probes.entry(peer).or_insert(v);
                }
                "skip" => d.skips.push((peer, s(&v, "reason").to_owned())),
                "error" => d.errors.push(format!(
                    "{} {} rep {}: {}",
                    peer,
                    s(&v, "metric"),
                    v.get("rep").and_then(Value::as_u64).unwrap_or(0),
                    s(&v, "error")
                )),
                _ => {}
            }
        }
        Ok(d)
    }

    fn peers(&self) -> Vec<&'static str> {
        ORDER
            .iter()
            .copied()
            .filter(|p| self.runs.keys().any(|(_, peer)| peer == p) || self.idle.contains_key(*p))
            .collect()
    }

    /// A figure computed per run, over the repetitions.
    fn stat(&self, metric: &str, peer: &str, fig: impl Fn(&Value) -> f64) -> Option<Stat> {
        let runs = self.runs.get(&(metric.to_owned(), peer.to_owned()))?;
        Stat::of(runs.iter().map(fig).collect())
    }

    fn rate(&self, metric: &str, peer: &str) -> Option<Stat> {
        self.stat(metric, peer, |r| f(r, "per_s"))
    }

    fn probe_flag(&self, peer: &str, key: &str) -> Option<bool> {
        self.probes.get(peer)?.get(key)?.as_bool()
    }

    /// A full run (not `--quick`)?
    fn full_run(&self) -> bool {
        !self
            .meta
            .get("quick")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Terminator CPU microseconds per request/handshake (per MB for bulk).
    fn cpu(&self, metric: &str, peer: &str) -> Option<Stat> {
        self.stat(metric, peer, |r| {
            let units = if metric == "bulk" {
                f(r, "bytes") / 1e6
            } else {
                f(r, "requests")
            };
            f(r, "server_cpu_s") * 1e6 / units
        })
    }

    /// Share of CPUs 0+1 busy time in the window not taken by the terminator, the generator or
    /// the upstream: other processes on the machine (the worst repetition).
    fn foreign(&self, metric: &str, peer: &str) -> Option<f64> {
        let runs = self.runs.get(&(metric.to_owned(), peer.to_owned()))?;
        runs.iter()
            .map(|r| {
                let ours = f(r, "server_cpu_s") + f(r, "client_cpu_s") + f(r, "upstream_cpu_s");
                ((f(r, "cpus01_busy_s") - ours) / f(r, "elapsed_s")).max(0.0)
            })
            .filter(|x| x.is_finite())
            .reduce(f64::max)
    }

    fn util(&self, metric: &str, peer: &str) -> Option<Stat> {
        self.stat(metric, peer, |r| f(r, "server_cpu_s") / f(r, "elapsed_s"))
    }

    fn idle_kb(&self, peer: &str) -> Option<f64> {
        self.idle.get(peer).map(|v| f(v, "idle_kb"))
    }

    /// (open connections, RSS KB) at each step.
    fn idle_steps(&self, peer: &str) -> Vec<(f64, f64)> {
        self.idle
            .get(peer)
            .and_then(|v| v.get("steps"))
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|s| (f(s, "open"), f(s, "rss_kb"))).collect())
            .unwrap_or_default()
    }

    /// KB per idle connection at the largest step.
    fn per_conn_kb(&self, peer: &str) -> Option<f64> {
        let idle = self.idle_kb(peer)?;
        let &(open, kb) = self.idle_steps(peer).last()?;
        (open > 0.0).then(|| (kb - idle) / open)
    }

    fn after_close_kb(&self, peer: &str) -> Option<f64> {
        self.idle.get(peer).map(|v| f(v, "after_close_kb"))
    }

    fn aes_limit_mb(&self) -> f64 {
        f(&self.speed, "aes256gcm_16k_bytes_per_s") / 1e6
    }

    fn supply_ms(&self) -> Option<Stat> {
        let v = self.supply.get("wall_us")?.as_array()?;
        Stat::of(
            v.iter()
                .filter_map(Value::as_f64)
                .map(|us| us / 1e3)
                .collect(),
        )
    }
}

pub fn run(args: &ReportArgs) -> crate::Result<()> {
    let d = Data::load(&args.results)?;
    let history = args
        .also_results
        .iter()
        .map(|p| Data::load(p))
        .collect::<crate::Result<Vec<_>>>()?;
    if args.half_slowest_keepalive {
        let slowest = d
            .peers()
            .iter()
            .filter_map(|p| d.rate("keepalive", p))
            .map(|s| s.median)
            .fold(f64::INFINITY, f64::min);
        if !slowest.is_finite() {
            return Err("no keep-alive results to derive the rate from".into());
        }
        println!("{:.0}", (slowest / 2.0).max(1.0));
        return Ok(());
    }
    let summary = summary_table(&d);
    println!("{summary}");
    let runs = lead_per_run(&d, &history);
    let mut rows = targets(&d);
    rows.extend(three_runs(&runs));
    let targets = target_table(&rows);
    for line in &targets {
        println!("{line}");
    }
    let lead = lead_table(&runs);
    println!("\n{lead}");
    if let Some(md) = &args.md {
        std::fs::write(md, markdown(&d, &summary, &targets, &lead))?;
    }
    if let Some(svg) = &args.svg {
        std::fs::write(svg, chart(&d))?;
    }
    Ok(())
}

fn opt(s: Option<Stat>) -> String {
    s.map_or_else(|| "–".to_owned(), |s| num(s.median))
}

fn opt_full(s: Option<Stat>) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show())
}

/// peer CPU ÷ ours (how many times more CPU the peer spends per unit).
fn cpu_ratio(d: &Data, metric: &str, peer: &str, ours: &str) -> Option<f64> {
    Some(d.cpu(metric, peer)?.median / d.cpu(metric, ours)?.median)
}

/// ours ÷ peer throughput.
fn tput_ratio(d: &Data, metric: &str, peer: &str, ours: &str) -> Option<f64> {
    let key = |m: &str, p: &str| {
        if m == "bulk" {
            d.stat(m, p, |r| f(r, "mb_per_s"))
        } else {
            d.rate(m, p)
        }
    };
    Some(key(metric, ours)?.median / key(metric, peer)?.median)
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

fn summary_table(d: &Data) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| peer | keep-alive req/s | CPU µs/req | h2 CPU µs/req | plain CPU µs/req | full hs/s | CPU µs/hs | resumed/s | CPU µs/resumed | bulk MB/s | CPU µs/MB | p50 / p99 µs | RSS idle KB | KB/idle conn | RSS after close KB |"
    );
    let _ = writeln!(
        t,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in d.peers() {
        let lat = match (
            d.stat("rate", p, |r| f(r, "p50_us")),
            d.stat("rate", p, |r| f(r, "p99_us")),
        ) {
            (Some(a), Some(b)) => format!("{} / {}", num(a.median), num(b.median)),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            t,
            "| {p} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {lat} | {} | {} | {} |",
            opt(d.rate("keepalive", p)),
            opt(d.cpu("keepalive", p)),
            opt(d.cpu("h2", p)),
            opt(d.cpu("plain", p)),
            opt(d.rate("handshake", p)),
            opt(d.cpu("handshake", p)),
            opt(d.rate("resume", p)),
            opt(d.cpu("resume", p)),
            opt(d.stat("bulk", p, |r| f(r, "mb_per_s"))),
            opt(d.cpu("bulk", p)),
            d.idle_kb(p).map_or("–".into(), num),
            d.per_conn_kb(p).map_or("–".into(), num),
            d.after_close_kb(p).map_or("–".into(), num),
        );
    }
    t
}

/// One row of the "Issue targets" table.
#[derive(Debug, Clone)]
struct Row {
    build: String,
    what: String,
    /// `None`: these results cannot tell (not measured).
    ok: Option<bool>,
    detail: String,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

fn target_table(rows: &[Row]) -> Vec<String> {
    let mut t = vec![
        "| build | target | result | figures |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    t.extend(rows.iter().map(|r| {
        format!(
            "| {} | {} | {} | {} |",
            r.build,
            r.what,
            verdict(r.ok),
            r.detail
        )
    }));
    t
}

/// The cheapest of `peers` by median CPU per unit of `metric`: (µs, peer).
fn cheapest<'a>(
    d: &Data,
    metric: &str,
    peers: impl IntoIterator<Item = &'a str>,
) -> Option<(f64, &'a str)> {
    peers
        .into_iter()
        .filter_map(|p| d.cpu(metric, p).map(|s| (s.median, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// Every measured peer that is not one of ours: the pool "the best peer" is chosen from.
fn others(d: &Data) -> Vec<&'static str> {
    d.peers()
        .into_iter()
        .filter(|p| !p.starts_with("tls-sidecar"))
        .collect()
}

/// Ours against the best peer (lowest CPU per unit among the others) for one metric.
#[derive(Debug, Clone, Copy)]
struct Lead {
    peer: &'static str,
    theirs: f64,
    ours: f64,
    /// theirs ÷ ours: how many times more CPU the best peer spends.
    ratio: f64,
}

fn lead(d: &Data, metric: &str, ours: &str) -> Option<Lead> {
    let (theirs, peer) = cheapest(d, metric, others(d))?;
    let ours = d.cpu(metric, ours)?.median;
    Some(Lead {
        peer,
        theirs,
        ours,
        ratio: theirs / ours,
    })
}

/// "theirs ÷ ours ≥ need" as a row; `who` names the yardstick peer(s).
fn ratio_row(
    build: &str,
    what: String,
    need: f64,
    who: &str,
    theirs: Option<(f64, &str)>,
    ours: Option<f64>,
) -> Option<Row> {
    let ((t, tp), o) = (theirs?, ours?);
    let r = t / o;
    Some(Row {
        build: build.to_owned(),
        what,
        ok: Some(r >= need),
        detail: format!(
            "{who} ({tp}) {} µs, ours {} µs: ratio {r:.2} (need ≥ {need:.2})",
            num(t),
            num(o)
        ),
    })
}

/// Median p99 latency at the fixed rate, µs.
fn p99(d: &Data, peer: &str) -> Option<f64> {
    d.stat("rate", peer, |r| f(r, "p99_us")).map(|s| s.median)
}

fn rss_back_row(d: &Data, build: &str) -> Option<Row> {
    let (idle, after) = (d.idle_kb(build)?, d.after_close_kb(build)?);
    let back = (after - idle) / idle;
    Some(Row {
        build: build.to_owned(),
        what: "RSS back within 10 % of idle after close".into(),
        ok: Some(back <= 0.10),
        detail: format!(
            "{} KB after close vs {} KB idle ({:+.0} %)",
            num(after),
            num(idle),
            back * 100.0
        ),
    })
}

/// The issue's targets: tcp mode (glibc build and, when measured, the shipped musl build),
/// http mode (issue 15), the buildpack.
fn targets(d: &Data) -> Vec<Row> {
    let mut out = Vec::new();
    for ours in [OURS, OURS_MUSL] {
        if d.peers().contains(&ours) {
            out.extend(tcp_targets(d, ours));
        }
    }
    if d.peers().contains(&OURS_HTTP) {
        out.extend(http_targets(d));
    }
    let row = |what: &str, ok: bool, detail: String| Row {
        build: "buildpack".into(),
        what: what.into(),
        ok: Some(ok),
        detail,
    };
    if let Some(ms) = d.supply_ms() {
        out.push(row(
            "bin/supply ≤ 100 ms",
            ms.median <= 100.0,
            format!(
                "median {} ms (min {} – max {}, {} runs)",
                num(ms.median),
                num(ms.min),
                num(ms.max),
                ms.n
            ),
        ));
    }
    let zip = f(&d.supply, "zip_bytes");
    if zip.is_finite() {
        out.push(row(
            "cached zip ≤ 10 MB",
            zip <= 10e6,
            format!("{} bytes ({:.2} MB)", num(zip), zip / 1e6),
        ));
    }
    out
}

fn lead_row(d: &Data, ours: &str, metric: &str, unit: &str, need: f64) -> Option<Row> {
    let l = lead(d, metric, ours)?;
    ratio_row(
        ours,
        format!("CPU per {unit} ≤ best peer's ÷ {need} (the tcp lead, in every run)"),
        need,
        "best peer",
        Some((l.theirs, l.peer)),
        Some(l.ours),
    )
}

fn tcp_targets(d: &Data, ours: &str) -> Vec<Row> {
    let mut out = Vec::new();
    out.extend(lead_row(
        d,
        ours,
        "keepalive",
        "keep-alive request",
        LEAD_KEEPALIVE,
    ));
    out.extend(lead_row(
        d,
        ours,
        "resume",
        "resumed connection",
        LEAD_RESUME,
    ));
    for (metric, need, name) in [
        ("handshake", 1.3, "full handshake"),
        ("resume", 2.0, "resumed connection"),
    ] {
        out.extend(ratio_row(
            ours,
            format!("CPU per {name} ≤ nginx's ÷ {need}"),
            need,
            "cheaper nginx",
            cheapest(d, metric, NGINX),
            d.cpu(metric, ours).map(|s| s.median),
        ));
    }
    if let Some(b) = d.stat("bulk", ours, |r| f(r, "mb_per_s")) {
        let limit = d.aes_limit_mb();
        let share = b.median / limit;
        out.push(Row {
            build: ours.to_owned(),
            what: "bulk ≥ 70 % of single-core AES-256-GCM".into(),
            ok: limit.is_finite().then_some(share >= 0.7),
            detail: format!(
                "{} MB/s = {:.0} % of {} MB/s",
                num(b.median),
                share * 100.0,
                num(limit)
            ),
        });
    }
    let nginx_p99 = NGINX
        .iter()
        .filter_map(|p| p99(d, p).map(|v| (v, *p)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some((n, np)), Some(o)) = (nginx_p99, p99(d, ours)) {
        out.push(Row {
            build: ours.to_owned(),
            what: "p99 latency no worse than nginx's".into(),
            ok: Some(o <= n),
            detail: format!("ours {} µs, better nginx ({np}) {} µs", num(o), num(n)),
        });
    }
    if let Some(idle) = d.idle_kb(ours) {
        out.push(Row {
            build: ours.to_owned(),
            what: "idle RSS ≤ 4 MB (4,096 KB)".into(),
            ok: Some(idle <= 4096.0),
            detail: format!("{} KB", num(idle)),
        });
    }
    if let Some(per) = d.per_conn_kb(ours) {
        let open = d.idle_steps(ours).last().map_or(0.0, |s| s.0);
        out.push(Row {
            build: ours.to_owned(),
            what: "≤ 25 KB per idle TLS connection".into(),
            ok: Some(per <= 25.0),
            detail: format!(
                "{} KB per connection at {} connections",
                num(per),
                num(open)
            ),
        });
    }
    out.extend(rss_back_row(d, ours));
    out
}

/// Issue 15: http mode as lean as the best HTTP proxies, in the realistic c2c case (client
/// certificate required and presented, XFCC on: checked by the first row).
fn http_targets(d: &Data) -> Vec<Row> {
    let ours = OURS_HTTP;
    let mut out = Vec::new();
    if d.probes.contains_key(ours) {
        let yes = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let asked = d.probe_flag(ours, "client_cert_requested");
        let xfcc = d.probe_flag(ours, "xfcc");
        // Over HTTP/2 only where the h2 phase ran: a peer without h2 is judged on HTTP/1.1.
        let h2_xfcc = d
            .probes
            .get(ours)
            .and_then(|p| p.get("h2_detail")?.get("xfcc")?.as_bool());
        let h2_needed = d.runs.contains_key(&("h2".to_owned(), ours.to_owned()));
        let ok = asked == Some(true) && xfcc == Some(true) && (!h2_needed || h2_xfcc == Some(true));
        out.push(Row {
            build: ours.into(),
            what: "measured as the realistic c2c case: client certificate required and presented, XFCC reaches the app".into(),
            ok: Some(ok),
            detail: format!(
                "probe: client certificate requested {}; X-Forwarded-Client-Cert at the upstream over HTTP/1.1 {}, over HTTP/2 {}",
                yes(asked),
                yes(xfcc),
                yes(h2_xfcc)
            ),
        });
    }
    for (metric, name) in [
        ("keepalive", "HTTP/1.1 keep-alive request"),
        ("h2", "HTTP/2 request"),
    ] {
        out.extend(ratio_row(
            ours,
            format!("CPU per {name} ≤ the better of nginx-http and haproxy-http ÷ 1.2"),
            1.2,
            "better HTTP proxy",
            cheapest(d, metric, HTTP_PEERS),
            d.cpu(metric, ours).map(|s| s.median),
        ));
    }
    if let (Some(n), Some(o)) = (p99(d, NGINX_HTTP), p99(d, ours)) {
        out.push(Row {
            build: ours.into(),
            what: "p99 at the fixed rate ≤ nginx-http's".into(),
            ok: Some(o <= n),
            detail: format!("ours {} µs, nginx-http {} µs", num(o), num(n)),
        });
    }
    // http mode's yardsticks are the HTTP proxies doing the same job (the issue's own table
    // compares against nginx http and HAProxy http): a client certificate verified on every
    // handshake and XFCC on every request, which the tcp-mode peers do not do.
    out.extend(ratio_row(
        ours,
        "CPU per resumed connection ≤ nginx-http's ÷ 2".into(),
        2.0,
        "nginx",
        d.cpu("resume", NGINX_HTTP).map(|s| (s.median, NGINX_HTTP)),
        d.cpu("resume", ours).map(|s| s.median),
    ));
    let best_kb = HTTP_PEERS
        .iter()
        .filter_map(|p| d.per_conn_kb(p).map(|kb| (kb, *p)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some((b, bp)), Some(o)) = (best_kb, d.per_conn_kb(ours)) {
        out.push(Row {
            build: ours.into(),
            what: "memory per idle TLS connection ≤ the better HTTP proxy's".into(),
            ok: Some(o <= b),
            detail: format!("ours {} KB, best peer ({bp}) {} KB", num(o), num(b)),
        });
    }
    out.extend(rss_back_row(d, ours));
    out.extend(ratio_row(
        ours,
        "route port: CPU per plaintext request ≤ nginx proxying plain HTTP ÷ 1.2".into(),
        1.2,
        "nginx plain",
        d.cpu("plain", NGINX_HTTP).map(|s| (s.median, NGINX_HTTP)),
        d.cpu("plain", ours).map(|s| s.median),
    ));
    out
}

/// One run's tcp-mode lead for one build of ours.
#[derive(Debug, Clone)]
struct RunLead {
    when: String,
    source: String,
    full: bool,
    build: &'static str,
    keepalive: Option<Lead>,
    resume: Option<Lead>,
}

impl RunLead {
    /// Both leads held; `None` when one was not measured.
    fn met(&self) -> Option<bool> {
        let k = self.keepalive?.ratio >= LEAD_KEEPALIVE;
        let r = self.resume?.ratio >= LEAD_RESUME;
        Some(k && r)
    }
}

/// This run and the earlier ones, oldest first.
fn lead_per_run(d: &Data, history: &[Data]) -> Vec<RunLead> {
    let mut runs: Vec<RunLead> = std::iter::once(d)
        .chain(history)
        .flat_map(|run| {
            [OURS, OURS_MUSL]
                .into_iter()
                .filter(|b| run.peers().contains(b))
                .map(move |build| RunLead {
                    when: s(&run.meta, "timestamp").to_owned(),
                    source: run.source.clone(),
                    full: run.full_run(),
                    build,
                    keepalive: lead(run, "keepalive", build),
                    resume: lead(run, "resume", build),
                })
        })
        .collect();
    // The timestamps are UTC in one fixed format (20261128T063518Z): text order is time order.
    runs.sort_by(|a, b| (&a.when, a.build).cmp(&(&b.when, b.build)));
    runs
}

/// "tcp mode keeps its lead in every run": the last three full runs given, each build.
fn three_runs(runs: &[RunLead]) -> Vec<Row> {
    let mut out = Vec::new();
    for build in [OURS, OURS_MUSL] {
        let full: Vec<&RunLead> = runs.iter().filter(|r| r.build == build && r.full).collect();
        if !runs.iter().any(|r| r.build == build) {
            continue;
        }
        let last: Vec<&RunLead> = full.iter().rev().take(3).rev().copied().collect();
        let (ok, detail) = if last.len() < 3 {
            (
                None,
                format!(
                    "{} full run(s) given: add earlier results files with --also-results",
                    full.len()
                ),
            )
        } else {
            let verdicts: Vec<Option<bool>> = last.iter().map(|r| r.met()).collect();
            let ok = if verdicts.contains(&Some(false)) {
                Some(false)
            } else if verdicts.contains(&None) {
                None
            } else {
                Some(true)
            };
            let each: Vec<String> = last
                .iter()
                .map(|r| format!("{}: {}", r.when, verdict(r.met())))
                .collect();
            (ok, each.join(", "))
        };
        out.push(Row {
            build: build.to_owned(),
            what: format!(
                "tcp lead (keep-alive ≥ {LEAD_KEEPALIVE}×, resumed ≥ {LEAD_RESUME}× the best peer) in each of three consecutive full runs"
            ),
            ok,
            detail,
        });
    }
    out
}

fn lead_table(runs: &[RunLead]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| run | kind | build | keep-alive: best peer µs | ours µs | ratio (≥ {LEAD_KEEPALIVE:.1}) | resumed: best peer µs | ours µs | ratio (≥ {LEAD_RESUME:.1}) | both |"
    );
    let _ = writeln!(t, "|---|---|---|---|---:|---:|---|---:|---:|---|");
    let cells = |l: Option<Lead>, need: f64| match l {
        Some(l) => format!(
            "{} {} | {} | {:.2} {}",
            l.peer,
            num(l.theirs),
            num(l.ours),
            l.ratio,
            verdict(Some(l.ratio >= need))
        ),
        None => "– | – | –".to_owned(),
    };
    for r in runs {
        let _ = writeln!(
            t,
            "| {} (`{}`) | {} | {} | {} | {} | {} |",
            r.when,
            r.source,
            if r.full { "full" } else { "quick" },
            r.build,
            cells(r.keepalive, LEAD_KEEPALIVE),
            cells(r.resume, LEAD_RESUME),
            verdict(r.met())
        );
    }
    t
}

/// One phase's table; ratios against `reference` (ours in tcp mode, or in http mode for the
/// phases only http-mode peers run).
fn metric_table(d: &Data, metric: &str, unit: &str, cpu_unit: &str, reference: &str) -> String {
    if !d.runs.keys().any(|(m, _)| m == metric) {
        return "Not measured in this run.\n".to_owned();
    }
    let mut t = String::new();
    let extra = match metric {
        "resume" => " | resumed fraction",
        _ => "",
    };
    let _ = writeln!(
        t,
        "| peer | {unit} | ours ÷ peer | CPU {cpu_unit} | peer CPU ÷ ours | CPU-0 busy | other load{extra} |"
    );
    let _ = writeln!(
        t,
        "|---|---:|---:|---:|---:|---:|---:{}|",
        if extra.is_empty() { "" } else { "|---:" }
    );
    for p in d.peers() {
        let tput = if metric == "bulk" {
            d.stat(metric, p, |r| f(r, "mb_per_s"))
        } else {
            d.rate(metric, p)
        };
        if tput.is_none() {
            continue;
        }
        let resumed = if metric == "resume" {
            format!(
                " | {}",
                opt_full(d.stat(metric, p, |r| f(r, "resumed_fraction")))
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "| {p} | {} | {} | {} | {} | {} | {}{resumed} |",
            opt_full(tput),
            ratio(tput_ratio(d, metric, p, reference)),
            opt_full(d.cpu(metric, p)),
            ratio(cpu_ratio(d, metric, p, reference)),
            d.util(metric, p)
                .map_or("–".into(), |u| format!("{:.0} %", u.median * 100.0)),
            d.foreign(metric, p)
                .map_or("–".into(), |u| format!("{:.0} %", u * 100.0)),
        );
    }
    t
}

fn markdown(d: &Data, summary: &str, targets: &[String], lead: &str) -> String {
    let m = &d.meta;
    let mut o = String::new();
    let quick = m.get("quick").and_then(Value::as_bool).unwrap_or(false);
    let _ = writeln!(
        o,
        "# Benchmarks: tls-sidecar against nginx, HAProxy, stunnel and hitch\n"
    );
    let _ = writeln!(
        o,
        "Generated by `scripts/bench.sh`{} on {} (git {}). Do not edit by hand: rerun the script.\n",
        if quick {
            " --quick (a smoke run: figures are indicative only)"
        } else {
            ""
        },
        s(m, "timestamp"),
        s(m, "git")
    );
    let load_before = s(m, "load_before");
    let load_after = s(&d.end, "load_after");
    let quiet = load_before
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l < 0.5);
    if !quiet {
        let _ = writeln!(
            o,
            "> **Noisy machine:** the 1/5/15-minute load average was {load_before} when the run started \
             (and {load_after} at its end): other work shared the CPUs, so absolute rates are low and \
             spreads wide. CPU time per unit of work is the figure least affected.\n"
        );
    }
    let disturbed: Vec<String> = [
        "keepalive",
        "h2",
        "plain",
        "handshake",
        "resume",
        "bulk",
        "rate",
    ]
    .iter()
    .filter_map(|m| {
        let worst = d
            .peers()
            .iter()
            .filter_map(|p| d.foreign(m, p))
            .reduce(f64::max)?;
        (worst > 0.10).then(|| format!("{m} (up to {:.0} % of a CPU)", worst * 100.0))
    })
    .collect();
    if !disturbed.is_empty() {
        let _ = writeln!(
            o,
            "> **Disturbed measurements:** other processes took CPU time on the two CPUs during: {}. \
             See the `other load` columns: rates of those repetitions are low and spreads wide; \
             CPU time per unit of work is affected least.\n",
            disturbed.join(", ")
        );
    }
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "Medians over {} repetitions; `–`: not measured. Full tables with spread below.\n",
        s_num(m, "reps")
    );
    let _ = writeln!(o, "{summary}");
    let _ = writeln!(
        o,
        "![Each peer's CPU time per unit of work relative to tls-sidecar in tcp mode, and the HTTP proxies' relative to tls-sidecar in http mode](benchmarks.svg)\n"
    );
    let _ = writeln!(o, "## Issue targets\n");
    let _ = writeln!(
        o,
        "tcp mode (`{OURS}`, and the shipped musl build when measured) against every peer; http \
         mode (`{OURS_HTTP}`, issue 15) against the HTTP proxies, with the caller's certificate \
         required and presented and X-Forwarded-Client-Cert sent to the app by all three \
         http-mode peers. \"Best peer\": the lowest CPU per unit (or KB per connection) among the \
         peers that are not tls-sidecar.\n"
    );
    for l in targets {
        let _ = writeln!(o, "{l}");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "### tcp mode lead per run\n");
    let _ = writeln!(
        o,
        "Issue 15 asks tcp mode to keep its lead in every run, not on average: best peer's CPU ÷ \
         ours per keep-alive request ≥ {LEAD_KEEPALIVE} and per resumed connection ≥ \
         {LEAD_RESUME}, in each of three consecutive full runs. This run and the results files \
         given with `scripts/bench.sh --also-results FILE`, oldest first:\n"
    );
    let _ = writeln!(o, "{lead}");

    let _ = writeln!(o, "## Machine and versions\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| CPU | {} ({} CPUs) |", s(m, "cpu"), s_num(m, "cpus"));
    let _ = writeln!(o, "| OS / kernel | {} / {} |", s(m, "os"), s(m, "kernel"));
    let _ = writeln!(o, "| memory | {} |", s(m, "mem"));
    let _ = writeln!(
        o,
        "| load average before / after (1, 5, 15 min) | {load_before} / {load_after} |"
    );
    let _ = writeln!(
        o,
        "| OpenSSL (nginx, HAProxy, stunnel, hitch; `openssl speed`) | {} |",
        s(m, "openssl")
    );
    let _ = writeln!(
        o,
        "| ours: rustls / aws-lc-rs / tokio / hyper | {} / {} / {} / {} ({}) |",
        s(m, "rustls"),
        s(m, "aws_lc_rs"),
        s(m, "tokio"),
        s(m, "hyper"),
        s(m, "rustc")
    );
    let _ = writeln!(
        o,
        "| tls-sidecar binary measured | `{}` (built {}) |",
        s(m, "sidecar_bin"),
        s(m, "sidecar_mtime")
    );
    if !s(m, "zip").is_empty() {
        let _ = writeln!(
            o,
            "| cached buildpack zip (supply timing, musl peer) | `{}` |",
            s(m, "zip")
        );
    }
    if let Some(v) = m.get("versions").and_then(Value::as_object) {
        for (peer, ver) in v {
            let _ = writeln!(o, "| {peer} | {} |", ver.as_str().unwrap_or(""));
        }
    }
    let _ = writeln!(o);
    if !d.probes.is_empty() {
        let _ = writeln!(o, "Negotiated with every peer (checked at start): ");
        let mut seen: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (peer, p) in &d.probes {
            let k = format!(
                "{} {} {}, second connection resumed: {}",
                s(p, "version"),
                s(p, "suite"),
                s(p, "group"),
                p.get("second_resumed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            );
            seen.entry(k).or_default().push(peer);
        }
        for (k, peers) in seen {
            let _ = writeln!(o, "- {k}: {}", peers.join(", "));
        }
        // Which peers did what, in table order; a probe line from before these checks existed
        // lacks the keys and lists nobody.
        let who = |pred: &dyn Fn(&Value) -> bool| -> String {
            let v: Vec<&str> = ORDER
                .iter()
                .copied()
                .filter(|p| d.probes.get(*p).is_some_and(pred))
                .collect();
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let flag = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let _ = writeln!(
            o,
            "- asked for a client certificate (the client presented the calling app's): {}",
            who(&|v| flag(v, "client_cert_requested"))
        );
        let _ = writeln!(
            o,
            "- X-Forwarded-Client-Cert reached the upstream (HTTP/1.1): {}",
            who(&|v| flag(v, "xfcc"))
        );
        let _ = writeln!(
            o,
            "- negotiated h2 when offered ALPN `h2` only, and answered over HTTP/2: {}; with X-Forwarded-Client-Cert at the upstream: {}",
            who(&|v| flag(v, "h2")),
            who(&|v| v.get("h2_detail").is_some_and(|h| flag(h, "xfcc")))
        );
        let _ = writeln!(
            o,
            "- plaintext listener answered (route port / plain server): {}",
            who(&|v| flag(v, "plain"))
        );
        let values: Vec<(&str, &str)> = ORDER
            .iter()
            .filter_map(|p| {
                let v = s(d.probes.get(*p)?, "xfcc_value");
                (!v.is_empty()).then_some((*p, v))
            })
            .collect();
        if !values.is_empty() {
            let _ = writeln!(
                o,
                "\nX-Forwarded-Client-Cert as the upstream received it (HTTP/1.1 probe):\n\n| peer | value |\n|---|---|"
            );
            for (peer, v) in values {
                let _ = writeln!(
                    o,
                    "| {peer} | `{}` |",
                    v.replace('|', "\\|").replace('`', "'")
                );
            }
        }
        let _ = writeln!(o);
    }
    for (peer, reason) in &d.skips {
        let _ = writeln!(o, "- **{peer} not measured:** {reason}");
    }
    if !d.skips.is_empty() {
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## Method\n");
    let client_cert = match s(m, "client_cert") {
        "" => "`OU=organization:…+OU=space:…+OU=app:<another GUID>`, CN = that GUID".to_owned(),
        subject => format!("`{subject}`"),
    };
    let in_flight = format!("{:.0}", f(m, "h2_conns") * f(m, "h2_streams"));
    let _ = writeln!(
        o,
        "- One machine, loopback only. Every terminator runs pinned to CPU 0 (`taskset -c 0`) with one \
         worker (tokio sized to its affinity = 1 worker thread; nginx `worker_processes 1`; HAProxy \
         `nbthread 1`; hitch `workers = 1`; stunnel's own thread per connection). The load generator \
         (`tls-sidecar-bench`, single-threaded tokio + rustls/aws-lc-rs) and the plaintext upstream \
         (`tls-sidecar-bench upstream`: HTTP/1.1 keep-alive, 1 KiB body or 100 MiB for `/bulk`) share \
         CPU 1. Configurations: `bench/`. Every peer listens on 127.0.0.1, except that tls-sidecar \
         binds its ports on 0.0.0.0 as it does in CF (the generator still connects over loopback).\n\
         - Server certificate, one for all: Diego-shaped RSA-3072 leaf (PKCS#1 key, `OU=organization:…+OU=space:…+OU=app:…`, \
         DNS SAN = instance GUID) + intermediate, verified by the client against the bench root CA with \
         SNI = the GUID.\n\
         - Client certificate: a second Diego-shaped identity, a calling app in the same org and space \
         ({}; RSA-3072 PKCS#1 key, EKU clientAuth + serverAuth, DNS SAN = its GUID, chain = leaf + \
         the same intermediate), presented by every client subcommand (probe, measurements, idle test) \
         whenever a peer asks. The three http-mode peers require it, verify it against the bench root \
         CA and send an X-Forwarded-Client-Cert header to the upstream on every request, each in its own \
         way: `tls-sidecar-http` with `client_auth: required`, `allow: [cf:space:<the bench space GUID>]` (the \
         identity check) and `xfcc: envoy`, trusting `$CF_SYSTEM_CERT_PATH` = the root CA; `nginx-http` with \
         `ssl_verify_client on; ssl_client_certificate <root CA>; ssl_verify_depth 2;` and \
         `proxy_set_header X-Forwarded-Client-Cert \"Hash=$ssl_client_fingerprint;Subject=\\\"$ssl_client_s_dn\\\"\"`; \
         `haproxy-http` with `verify required ca-file <root CA>` on the bind and \
         `http-request set-header X-Forwarded-Client-Cert \"Hash=%[ssl_c_sha1,hex];Subject=\\\"%[ssl_c_s_dn]\\\"\"`. \
         The upstream marks every answer to a request that carried the header (`x-bench-xfcc: 1`) and \
         echoes its value on `GET /xfcc`: the probe records both (above). tcp-mode peers do not ask. \
         So in full handshakes the http-mode peers also verify a client chain, and the generator signs \
         with RSA-3072 once per full handshake (on CPU 1): their full-handshake rate can be bounded by \
         the generator (see `CPU-0 busy`), their CPU per handshake stays comparable. A resumed TLS 1.3 \
         handshake carries the identity in the ticket: no certificate is sent again.\n\
         - The client offers TLS 1.3 only, TLS_AES_256_GCM_SHA384 only, and X25519 only (OpenSSL 3.0 has \
         no ML-KEM, so the rustls default X25519MLKEM768 would make the handshake work differ): every \
         peer negotiates exactly the same handshake and record protection. The HTTP/1.1 phases offer no \
         ALPN, so the peers that also speak h2 answer them in HTTP/1.1.\n\
         - CPU: utime + stime of the terminator's process tree (`/proc/<pid>/stat` of the process and \
         every descendant; process totals include all threads), sampled right before and right after \
         the measured window, divided by the requests, connections or MB completed in it. \
         `CPU-0 busy` = that CPU time ÷ the window: below ~95 % the terminator was not the bottleneck \
         (the generator and upstream on CPU 1 were), so its rate is a lower bound, but CPU per unit stays valid. \
         `other load` = busy time of CPUs 0 and 1 (`/proc/stat`) not taken by the terminator, the \
         generator or the upstream, as a share of one CPU, worst repetition (kernel work not charged \
         to a process is in it too): a few % is normal, more means other work disturbed the run.\n\
         - All measurements of one kind run in one go, interleaved: each repetition visits every peer \
         of the phase, starting one peer later each time. Figures: median (min–max) over the repetitions.\n\
         - (1) keep-alive: {} connections (handshakes done before the window), closed loop `GET /1k` \
         (the generator's own minimal HTTP/1.1 client). \
         (2) HTTP/2: {} connections × {} streams = {} requests in flight, TLS with ALPN `h2` only (a \
         peer that does not select h2 fails the phase), hyper's HTTP/2 client (`hyper::client::conn::http2`; \
         1 MiB stream and 16 MiB connection windows, no adaptive window, so it sends no WINDOW_UPDATE \
         or PING frames), each stream re-sending `GET /1k` as soon as its response is complete; for the \
         peers that speak h2 (`tls-sidecar-http`: ALPN h2 + http/1.1 in http mode; `nginx-http`: \
         `listen … ssl http2`; `haproxy-http`: `alpn h2,http/1.1`), HTTP/1.1 to the upstream. \
         (3) plaintext: the keep-alive loop of (1) without TLS (`keepalive --plain`), {} connections, to \
         a plaintext listener of the same peer process (its CPU is what is measured): \
         `tls-sidecar-http`'s route-port listener (started with `TLS_SIDECAR_ROUTE_PORT`, forwarding to \
         `127.0.0.1:$PORT` and removing any identity header, as it fronts the app's route in CF), \
         `nginx-http`'s second `server` (`listen 127.0.0.1:…`, the same proxy settings without XFCC), \
         `haproxy-http`'s `frontend plain`. \
         (4) full handshakes: {} connections in flight, each a new TCP + TLS 1.3 connection, no session \
         id or ticket offered (`Resumption::disabled()`), one `GET /1k` with `Connection: close`, \
         close_notify. (5) resumed: the same, each of the {} client tasks offering the ticket its \
         previous connection received (checked with `handshake_kind()`; fraction shown). (6) bulk: \
         `GET /bulk` (100 MiB) repeated over one connection. (7) latency: open loop at a fixed rate = \
         half the slowest peer's median keep-alive rate, {} connections, latency from the scheduled \
         send time when behind schedule (no coordinated omission). (8) RSS (VmRSS summed over the \
         process tree) of a freshly started peer, while holding {} idle TLS connections (handshake \
         complete, client certificate presented where asked; from 4 source addresses), and 1 s and a \
         few seconds after they close. (9) \
         `bin/supply BUILD CACHE DEPS 0` with `CF_STACK=cflinuxfs4` from the unzipped cached buildpack, \
         fresh directories each run. (10) `openssl speed` on CPU 0.\n\
         - Windows of {} s, {} repetitions. Logging of each connection is off for every peer (ours: `log.level: warn`).\n",
        client_cert,
        s_num(m, "conns"),
        s_num(m, "h2_conns"),
        s_num(m, "h2_streams"),
        in_flight,
        s_num(m, "conns"),
        s_num(m, "conns"),
        s_num(m, "conns"),
        s_num(m, "conns"),
        s(m, "idle_steps"),
        s_num(m, "duration_s"),
        s_num(m, "reps"),
    );

    let _ = writeln!(o, "## Results\n");
    let _ = writeln!(
        o,
        "Ratios are against ours in tcp mode (`{OURS}`), in tables (2) and (3) against ours in http mode (`{OURS_HTTP}`): **peer CPU ÷ ours** above 1 means the peer spends more CPU per unit; **ours ÷ peer** above 1 means we are faster.\n"
    );
    // One table per load: (heading, text before the table, metric, units, the row ours).
    let loads = [
        (
            "(1) Keep-alive requests, 1 KiB body".to_owned(),
            String::new(),
            "keepalive",
            "requests/s",
            "µs/request",
            OURS,
        ),
        (
            format!(
                "(2) HTTP/2 keep-alive requests, 1 KiB body ({} connections × {} streams)",
                s_num(m, "h2_conns"),
                s_num(m, "h2_streams")
            ),
            String::new(),
            "h2",
            "requests/s",
            "µs/request",
            OURS_HTTP,
        ),
        (
            "(3) Plaintext keep-alive requests (route port / plain HTTP proxy), 1 KiB body"
                .to_owned(),
            String::new(),
            "plain",
            "requests/s",
            "µs/request",
            OURS_HTTP,
        ),
        (
            "(4) Full TLS 1.3 handshakes (new connection per request)".to_owned(),
            String::new(),
            "handshake",
            "connections/s",
            "µs/connection",
            OURS,
        ),
        (
            "(5) Resumed TLS 1.3 handshakes".to_owned(),
            String::new(),
            "resume",
            "connections/s",
            "µs/connection",
            OURS,
        ),
        (
            "(6) Bulk, 100 MiB bodies".to_owned(),
            format!(
                "Single-core limit: AES-256-GCM at 16 KB blocks {} MB/s on CPU 0.\n\n",
                num(d.aes_limit_mb())
            ),
            "bulk",
            "MB/s",
            "µs/MB",
            OURS,
        ),
    ];
    for (heading, before, metric, rate, per, ours) in loads {
        let table = metric_table(d, metric, rate, per, ours);
        let _ = writeln!(o, "### {heading}\n\n{before}{table}");
    }
    let _ = writeln!(o, "### (7) Latency at a fixed rate\n");
    let _ = writeln!(
        o,
        "| peer | target rate/s | achieved/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p99 ours ÷ peer | other load |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in d.peers() {
        let Some(achieved) = d.rate("rate", p) else {
            continue;
        };
        let st = |k: &str| opt_full(d.stat("rate", p, |r| f(r, k)));
        let p99 = |x: &str| d.stat("rate", x, |r| f(r, "p99_us")).map(|s| s.median);
        let r = match (p99(OURS), p99(p)) {
            (Some(a), Some(b)) => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            o,
            "| {p} | {} | {} | {} | {} | {} | {} | {} | {r} | {} |",
            opt(d.stat("rate", p, |r| f(r, "target_rate"))),
            opt_full(Some(achieved)),
            st("p50_us"),
            st("p90_us"),
            st("p99_us"),
            st("p999_us"),
            st("max_us"),
            d.foreign("rate", p)
                .map_or("–".into(), |u| format!("{:.0} %", u * 100.0)),
        );
    }
    let _ = writeln!(o, "\n### (8) Memory (RSS, KB)\n");
    let steps: Vec<String> = s(m, "idle_steps").split(',').map(str::to_owned).collect();
    let _ = write!(o, "| peer | idle |");
    for st in &steps {
        let _ = write!(o, " {st} conns |");
    }
    let _ = writeln!(
        o,
        " KB per conn | 1 s after close | after close | after ÷ idle | anonymous: idle / after close |"
    );
    let _ = writeln!(
        o,
        "|---|---:|{}---:|---:|---:|---:|---:|",
        "---:|".repeat(steps.len())
    );
    for p in d.peers() {
        let Some(v) = d.idle.get(p) else { continue };
        let idle = f(v, "idle_kb");
        let _ = write!(o, "| {p} | {} |", num(idle));
        for (open, kb) in d.idle_steps(p) {
            let _ = write!(o, " {} ({} open) |", num(kb), num(open));
        }
        let after = f(v, "after_close_kb");
        // Older results files have no anonymous figures.
        let anon = match (v.get("idle_anon_kb"), v.get("after_close_anon_kb")) {
            (Some(_), Some(_)) => format!(
                "{} / {}",
                num(f(v, "idle_anon_kb")),
                num(f(v, "after_close_anon_kb"))
            ),
            _ => "–".into(),
        };
        let _ = writeln!(
            o,
            " {} | {} | {} | {:.2} | {anon} |",
            d.per_conn_kb(p).map_or("–".into(), num),
            num(f(v, "after_close_1s_kb")),
            num(after),
            after / idle
        );
    }
    let _ = writeln!(
        o,
        "\nRSS is VmRSS: anonymous memory (heap, stacks) plus the pages of mapped files the \
         process has touched: its code and libraries, clean page cache that other processes \
         mapping the same files share. Linux maps up to 64 KB of code around each page a \
         program first touches, so a static binary's resident code grows with how scattered \
         its startup path is, not only with what it runs."
    );
    let _ = writeln!(o, "\n### (9) Buildpack\n");
    if let Some(ms) = d.supply_ms() {
        let _ = writeln!(
            o,
            "- `bin/supply` wall time: median **{} ms** (min {} – max {}, {} runs), cached zip `{}`: **{} bytes** ({:.2} MB).",
            num(ms.median),
            num(ms.min),
            num(ms.max),
            ms.n,
            s(&d.supply, "zip"),
            num(f(&d.supply, "zip_bytes")),
            f(&d.supply, "zip_bytes") / 1e6
        );
    } else {
        let _ = writeln!(o, "- not measured (packaging skipped or failed).");
    }
    let _ = writeln!(
        o,
        "\n### (10) Physical limits of CPU 0 (`openssl speed`, OpenSSL {})\n",
        s(m, "openssl")
    );
    let _ = writeln!(
        o,
        "- AES-256-GCM, 16 KB blocks: **{} MB/s**\n- RSA-3072: **{} sign/s** ({} µs each), {} verify/s",
        num(d.aes_limit_mb()),
        num(f(&d.speed, "rsa3072_sign_per_s")),
        num(1e6 / f(&d.speed, "rsa3072_sign_per_s")),
        num(f(&d.speed, "rsa3072_verify_per_s"))
    );
    if !d.errors.is_empty() {
        let _ = writeln!(o, "\n### Failed measurements\n");
        for e in &d.errors {
            let _ = writeln!(o, "- {e}");
        }
    }
    o
}

fn s_num(v: &Value, key: &str) -> String {
    v.get(key).map_or_else(String::new, |x| match x {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// One panel of the chart: grouped bars, each peer's CPU per unit ÷ the reference's, per
/// metric, with a dashed line at 1 = the reference.
struct Panel {
    title: String,
    subtitle: String,
    reference: &'static str,
    metrics: Vec<(&'static str, &'static str)>,
    peers: Vec<&'static str>,
    /// A dotted line where the issue's target is (peer CPU ÷ ours).
    target: Option<f64>,
}

/// One colour per peer of [`ORDER`], the same in both panels.
const COLORS: [&str; 9] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f",
];

fn color(peer: &str) -> &'static str {
    let i = ORDER.iter().position(|p| *p == peer).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Two panels: tcp mode against every peer (the original chart), and http mode against the
/// HTTP proxies, with the HTTP/2 and plaintext phases.
fn chart(d: &Data) -> String {
    let mut panels = vec![Panel {
        title: "CPU time per unit of work, relative to tls-sidecar (tcp mode) = 1".into(),
        subtitle:
            "above 1: the peer spends more CPU than ours (one core each, median of repetitions)"
                .into(),
        reference: OURS,
        metrics: vec![
            ("keepalive", "keep-alive request"),
            ("handshake", "full handshake"),
            ("resume", "resumed handshake"),
            ("bulk", "bulk MB"),
        ],
        peers: d.peers().into_iter().filter(|p| *p != OURS).collect(),
        target: None,
    }];
    let http_peers: Vec<&'static str> = d
        .peers()
        .into_iter()
        .filter(|p| HTTP_PEERS.contains(p))
        .collect();
    if d.peers().contains(&OURS_HTTP) && !http_peers.is_empty() {
        panels.push(Panel {
            title: "http mode: CPU time per unit of work, relative to tls-sidecar-http = 1".into(),
            subtitle: "client certificate required and XFCC on for all three; issue 15 wants ≥ 1.2 for keep-alive, h2 and plain, ≥ 2 for resumed (vs nginx)".into(),
            reference: OURS_HTTP,
            metrics: vec![
                ("keepalive", "HTTP/1.1 request"),
                ("h2", "HTTP/2 request"),
                ("plain", "plaintext request"),
                ("handshake", "full handshake"),
                ("resume", "resumed handshake"),
                ("bulk", "bulk MB"),
            ],
            peers: http_peers,
            target: Some(1.2),
        });
    }
    let (w, panel_h) = (960.0, 460.0);
    let h = panel_h * panels.len() as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut o, d, panel, w, panel_h, panel_h * i as f64);
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn draw_panel(o: &mut String, d: &Data, panel: &Panel, w: f64, h: f64, y_off: f64) {
    let (metrics, peers) = (&panel.metrics, &panel.peers);
    let values: Vec<Vec<Option<f64>>> = metrics
        .iter()
        .map(|(m, _)| {
            peers
                .iter()
                .map(|p| cpu_ratio(d, m, p, panel.reference))
                .collect()
        })
        .collect();
    let top = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(2.0_f64, f64::max)
        .ceil();
    let (left, right, top_pad, bottom) = (60.0, 200.0, 50.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top_pad - bottom;
    let y = |v: f64| y_off + top_pad + plot_h * (1.0 - v / top);
    let group_w = plot_w / metrics.len() as f64;
    let bar_w = (group_w * 0.8) / peers.len().max(1) as f64;
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        y_off + 24.0,
        panel.title
    );
    let _ = writeln!(
        o,
        r##"<text x="{left}" y="{:.1}" fill="#555">{}</text>"##,
        y_off + 40.0,
        panel.subtitle
    );
    // y axis and grid
    let mut tick = 0.0;
    let step = if top > 6.0 { 1.0 } else { 0.5 };
    while tick <= top + 1e-9 {
        let yy = y(tick);
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0
        );
        tick += step;
    }
    for (gi, (_, label)) in metrics.iter().enumerate() {
        let gx = left + group_w * gi as f64 + group_w * 0.1;
        for (pi, v) in values[gi].iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let x = gx + bar_w * pi as f64;
            let (y0, y1) = (y(v), y(0.0));
            let _ = writeln!(
                o,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.2}</title></rect>"#,
                (bar_w - 2.0).max(1.0),
                (y1 - y0).max(0.0),
                color(peers[pi]),
                peers[pi]
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{v:.1}</text>"#,
                x + bar_w / 2.0 - 1.0,
                y0 - 3.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            left + group_w * (gi as f64 + 0.5),
            y_off + h - bottom + 20.0
        );
    }
    let one = y(1.0);
    let _ = writeln!(
        o,
        r#"<line x1="{left}" y1="{one:.1}" x2="{:.1}" y2="{one:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}">ours = 1</text>"#,
        left + plot_w,
        left + plot_w + 4.0,
        one + 4.0
    );
    if let Some(t) = panel.target {
        let yt = y(t);
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{yt:.1}" x2="{:.1}" y2="{yt:.1}" stroke="#c00" stroke-width="1" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" fill="#c00">target {t}</text>"##,
            left + plot_w,
            left + plot_w + 4.0,
            yt - 4.0
        );
    }
    let _ = writeln!(
        o,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        y(0.0),
        left + plot_w,
        y(0.0)
    );
    for (pi, p) in peers.iter().enumerate() {
        let ly = y_off + top_pad + 20.0 * pi as f64;
        let lx = w - right + 30.0;
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{p}</text>"#,
            color(p),
            lx + 18.0,
            ly + 10.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(vec![3.0, 1.0, 2.0, f64::NAN]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(vec![1.0, 2.0]).map(|s| s.median), Some(1.5));
    }

    /// A run line whose terminator spent `us` µs of CPU per request (10^6 requests in 1 s).
    fn run(metric: &str, peer: &str, us: f64) -> String {
        format!(
            r#"{{"type":"run","metric":"{metric}","peer":"{peer}","rep":1,"server_cpu_s":{us},"requests":1000000,"elapsed_s":1.0,"per_s":1000000}}"#
        )
    }

    fn rate(peer: &str, p99_us: f64) -> String {
        format!(
            r#"{{"type":"run","metric":"rate","peer":"{peer}","rep":1,"server_cpu_s":0.5,"requests":1000,"elapsed_s":1.0,"per_s":1000,"p99_us":{p99_us}}}"#
        )
    }

    /// Idle at 10,000 KB, `per_conn` KB more per connection at 1,000 connections, `after` KB
    /// after they closed.
    fn idle(peer: &str, per_conn: f64, after: f64) -> String {
        format!(
            r#"{{"type":"idle","peer":"{peer}","idle_kb":10000,"steps":[{{"target":1000,"open":1000,"rss_kb":{}}}],"after_close_kb":{after}}}"#,
            10000.0 + per_conn * 1000.0
        )
    }

    fn data(lines: &[String]) -> Data {
        Data::parse(&lines.join("\n")).expect("valid lines")
    }

    /// The verdict of the one row of `build` whose target contains `what`.
    fn verdict_of(rows: &[Row], build: &str, what: &str) -> Option<bool> {
        let found: Vec<&Row> = rows
            .iter()
            .filter(|r| r.build == build && r.what.contains(what))
            .collect();
        assert_eq!(found.len(), 1, "one row {build} / {what} in {rows:#?}");
        found[0].ok
    }

    #[test]
    fn http_mode_cpu_targets_need_a_fifth_less_than_the_better_http_proxy() {
        for (ours, want) in [(10.0, Some(true)), (11.0, Some(false))] {
            let d = data(&[
                run("keepalive", "nginx-http", 12.5),
                run("keepalive", "haproxy-http", 13.0),
                run("keepalive", OURS_HTTP, ours),
                run("h2", "nginx-http", 14.0),
                run("h2", "haproxy-http", 12.5),
                run("h2", OURS_HTTP, ours),
                run("plain", "nginx-http", 12.5),
                run("plain", "haproxy-http", 9.0),
                run("plain", OURS_HTTP, ours),
            ]);
            let rows = targets(&d);
            assert_eq!(
                verdict_of(&rows, OURS_HTTP, "HTTP/1.1 keep-alive request"),
                want
            );
            assert_eq!(verdict_of(&rows, OURS_HTTP, "HTTP/2 request"), want);
            // Against nginx only: HAProxy's cheaper plaintext path is not the yardstick.
            assert_eq!(verdict_of(&rows, OURS_HTTP, "route port"), want);
        }
    }

    #[test]
    fn http_mode_resumed_p99_and_memory_targets() {
        let lines = |ours_resume: f64, ours_p99: f64, ours_kb: f64, after: f64| {
            data(&[
                run("resume", "nginx-http", 250.0),
                run("resume", "nginx-stream", 210.0),
                run("resume", "haproxy-http", 150.0),
                run("resume", OURS_HTTP, ours_resume),
                rate("nginx-http", 400.0),
                rate("nginx-stream", 300.0),
                rate(OURS_HTTP, ours_p99),
                idle("nginx-http", 15.0, 90000.0),
                idle("haproxy-http", 14.0, 90000.0),
                idle("haproxy-tcp", 10.0, 90000.0),
                idle(OURS_HTTP, ours_kb, after),
            ])
        };
        // The yardsticks are the HTTP proxies: nginx-stream and haproxy-tcp are cheaper
        // here but do neither client certificates nor XFCC.
        let rows = targets(&lines(125.0, 400.0, 14.0, 11000.0));
        assert_eq!(verdict_of(&rows, OURS_HTTP, "resumed"), Some(true)); // 250 / 125
        assert_eq!(verdict_of(&rows, OURS_HTTP, "p99"), Some(true)); // vs nginx-http only
        assert_eq!(verdict_of(&rows, OURS_HTTP, "idle TLS"), Some(true)); // haproxy-http 14
        assert_eq!(verdict_of(&rows, OURS_HTTP, "RSS back"), Some(true)); // +10 %
        let rows = targets(&lines(126.0, 401.0, 14.5, 11100.0));
        assert_eq!(verdict_of(&rows, OURS_HTTP, "resumed"), Some(false)); // 250 / 126
        assert_eq!(verdict_of(&rows, OURS_HTTP, "p99"), Some(false));
        assert_eq!(verdict_of(&rows, OURS_HTTP, "idle TLS"), Some(false));
        assert_eq!(verdict_of(&rows, OURS_HTTP, "RSS back"), Some(false)); // +11 %
    }

    #[test]
    fn http_mode_counts_only_with_a_client_certificate_and_xfcc() {
        let probe = |asked: bool, xfcc: bool| {
            format!(
                r#"{{"type":"probe","peer":"{OURS_HTTP}","client_cert_requested":{asked},"xfcc":{xfcc},"h2":true,"h2_detail":{{"ok":true,"xfcc":true}}}}"#
            )
        };
        let what = "realistic c2c case";
        for (asked, xfcc, want) in [
            (true, true, true),
            (false, true, false),
            (true, false, false),
        ] {
            let d = data(&[probe(asked, xfcc), run("h2", OURS_HTTP, 10.0)]);
            assert_eq!(verdict_of(&targets(&d), OURS_HTTP, what), Some(want));
        }
    }

    #[test]
    fn tcp_lead_is_against_the_cheapest_other_peer() {
        let d = |keepalive: f64, resume: f64| {
            data(&[
                run("keepalive", "nginx-stream", 13.0),
                run("keepalive", "hitch", 12.0),
                // Ours in http mode is not a "peer": it cannot be the yardstick.
                run("keepalive", OURS_HTTP, 5.0),
                run("keepalive", OURS, keepalive),
                run("resume", "nginx-http", 220.0),
                run("resume", "haproxy-tcp", 200.0),
                run("resume", OURS, resume),
            ])
        };
        let rows = targets(&d(9.9, 99.0));
        assert_eq!(
            verdict_of(&rows, OURS, "keep-alive request ≤ best peer's"),
            Some(true)
        );
        assert_eq!(
            verdict_of(&rows, OURS, "resumed connection ≤ best peer's"),
            Some(true)
        );
        let rows = targets(&d(10.1, 101.0));
        assert_eq!(
            verdict_of(&rows, OURS, "keep-alive request ≤ best peer's"),
            Some(false)
        );
        assert_eq!(
            verdict_of(&rows, OURS, "resumed connection ≤ best peer's"),
            Some(false)
        );
    }

    #[test]
    fn the_lead_must_hold_in_each_of_the_last_three_full_runs() {
        let one = |when: &str, quick: bool, keepalive: f64| {
            let mut d = data(&[
                format!(r#"{{"type":"meta","timestamp":"{when}","quick":{quick}}}"#),
                run("keepalive", "hitch", 12.0),
                run("keepalive", OURS, keepalive),
                run("resume", "hitch", 200.0),
                run("resume", OURS, 90.0),
            ]);
            d.source = format!("{when}/results.jsonl");
            d
        };
        let lead_in = |runs: &[Data]| {
            let (last, earlier) = runs.split_last().expect("runs");
            verdict_of(
                &three_runs(&lead_per_run(last, earlier)),
                OURS,
                "three consecutive",
            )
        };
        let met = |w: &str| one(w, false, 9.0);
        // Oldest missed, the last three met: met. A quick run does not count.
        let runs = [
            one("20260101T000000Z", false, 11.0),
            met("20260102T000000Z"),
            met("20260103T000000Z"),
            one("20260103T120000Z", true, 11.0),
            met("20260104T000000Z"),
        ];
        assert_eq!(lead_in(&runs), Some(true));
        // One of the last three missed (ratio 12 / 10.5 < 1.2): missed.
        let runs = [
            met("20260102T000000Z"),
            one("20260103T000000Z", false, 10.5),
            met("20260104T000000Z"),
        ];
        assert_eq!(lead_in(&runs), Some(false));
        // Two full runs cannot show it.
        assert_eq!(
            lead_in(&[met("20260102T000000Z"), met("20260103T000000Z")]),
            None
        );
        let table = lead_table(&lead_per_run(&runs[2], &runs[..2]));
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(
            table.contains("hitch 12.0 | 10.5 | 1.14 **missed**"),
            "{table}"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(12345.4), "12,345");
        assert_eq!(num(42.25), "42.2");
        assert_eq!(num(0.123), "0.12");
    }
}
