//! `report`: reads the results file (one JSON object a line, written by the other subcommands
//! and by scripts/bench.sh) and writes docs/benchmarks.md, docs/benchmarks.svg and a summary on
//! stdout. Medians over repetitions with min–max; ratios against ours (`tls-sidecar-tcp`).

use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

const OURS: &str = "tls-sidecar-tcp";
const OURS_MUSL: &str = "tls-sidecar-tcp-musl";
const NGINX: [&str; 2] = ["nginx-http", "nginx-stream"];
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
    fn load(path: &PathBuf) -> crate::Result<Data> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
    let targets = targets(&d);
    for line in &targets {
        println!("{line}");
    }
    if let Some(md) = &args.md {
        std::fs::write(md, markdown(&d, &summary, &targets))?;
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
        "| peer | keep-alive req/s | CPU µs/req | full hs/s | CPU µs/hs | resumed/s | CPU µs/resumed | bulk MB/s | CPU µs/MB | p50 / p99 µs | RSS idle KB | KB/idle conn | RSS after close KB |"
    );
    let _ = writeln!(
        t,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
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
            "| {p} | {} | {} | {} | {} | {} | {} | {} | {} | {lat} | {} | {} | {} |",
            opt(d.rate("keepalive", p)),
            opt(d.cpu("keepalive", p)),
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

/// The issue's targets, for ours (glibc build) and, when measured, the shipped musl build.
fn targets(d: &Data) -> Vec<String> {
    let mut out = Vec::new();
    let others: Vec<&str> = d
        .peers()
        .into_iter()
        .filter(|p| !p.starts_with("tls-sidecar"))
        .collect();
    let best = |metric: &str| {
        others
            .iter()
            .filter_map(|p| d.cpu(metric, p).map(|s| (s.median, *p)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    let nginx = |metric: &str| {
        NGINX
            .iter()
            .filter_map(|p| d.cpu(metric, p).map(|s| (s.median, *p)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    for ours in [OURS, OURS_MUSL] {
        if !d.peers().contains(&ours) {
            continue;
        }
        let mut line = |what: String, ok: Option<bool>, detail: String| {
            let v = ok.map_or("n/a", verdict);
            out.push(format!("| {ours} | {what} | {v} | {detail} |"));
        };
        if let (Some((b, bp)), Some(o)) = (best("keepalive"), d.cpu("keepalive", ours)) {
            let r = b / o.median;
            line(
                "CPU per keep-alive request ≤ best peer's ÷ 1.2".into(),
                Some(r >= 1.2),
                format!(
                    "best peer {bp} {} µs, ours {} µs: ratio {r:.2} (need ≥ 1.20)",
                    num(b),
                    num(o.median)
                ),
            );
        }
        for (metric, need, name) in [
            ("handshake", 1.3, "full handshake"),
            ("resume", 2.0, "resumed connection"),
        ] {
            if let (Some((n, np)), Some(o)) = (nginx(metric), d.cpu(metric, ours)) {
                let r = n / o.median;
                line(
                    format!("CPU per {name} ≤ nginx's ÷ {need}"),
                    Some(r >= need),
                    format!(
                        "cheaper nginx ({np}) {} µs, ours {} µs: ratio {r:.2} (need ≥ {need:.2})",
                        num(n),
                        num(o.median)
                    ),
                );
            }
        }
        if let Some(b) = d.stat("bulk", ours, |r| f(r, "mb_per_s")) {
            let limit = d.aes_limit_mb();
            let share = b.median / limit;
            line(
                "bulk ≥ 70 % of single-core AES-256-GCM".into(),
                limit.is_finite().then_some(share >= 0.7),
                format!(
                    "{} MB/s = {:.0} % of {} MB/s",
                    num(b.median),
                    share * 100.0,
                    num(limit)
                ),
            );
        }
        let p99 = |p: &str| d.stat("rate", p, |r| f(r, "p99_us")).map(|s| s.median);
        let nginx_p99 = NGINX
            .iter()
            .filter_map(|p| p99(p).map(|v| (v, *p)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let (Some((n, np)), Some(o)) = (nginx_p99, p99(ours)) {
            line(
                "p99 latency no worse than nginx's".into(),
                Some(o <= n),
                format!("ours {} µs, better nginx ({np}) {} µs", num(o), num(n)),
            );
        }
        if let Some(idle) = d.idle_kb(ours) {
            line(
                "idle RSS ≤ 4 MB (4,096 KB)".into(),
                Some(idle <= 4096.0),
                format!("{} KB", num(idle)),
            );
        }
        if let Some(per) = d.per_conn_kb(ours) {
            let open = d.idle_steps(ours).last().map_or(0.0, |s| s.0);
            line(
                "≤ 25 KB per idle TLS connection".into(),
                Some(per <= 25.0),
                format!(
                    "{} KB per connection at {} connections",
                    num(per),
                    num(open)
                ),
            );
        }
        if let (Some(idle), Some(after)) = (d.idle_kb(ours), d.after_close_kb(ours)) {
            let back = (after - idle) / idle;
            line(
                "RSS back within 10 % of idle after close".into(),
                Some(back <= 0.10),
                format!(
                    "{} KB after close vs {} KB idle ({:+.0} %)",
                    num(after),
                    num(idle),
                    back * 100.0
                ),
            );
        }
    }
    if let Some(ms) = d.supply_ms() {
        out.push(format!(
            "| buildpack | bin/supply ≤ 100 ms | {} | median {} ms (min {} – max {}, {} runs) |",
            verdict(ms.median <= 100.0),
            num(ms.median),
            num(ms.min),
            num(ms.max),
            ms.n
        ));
    }
    let zip = f(&d.supply, "zip_bytes");
    if zip.is_finite() {
        out.push(format!(
            "| buildpack | cached zip ≤ 10 MB | {} | {} bytes ({:.2} MB) |",
            verdict(zip <= 10e6),
            num(zip),
            zip / 1e6
        ));
    }
    let mut t = vec![
        "| build | target | result | figures |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    t.extend(out);
    t
}

fn metric_table(d: &Data, metric: &str, unit: &str, cpu_unit: &str) -> String {
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
            ratio(tput_ratio(d, metric, p, OURS)),
            opt_full(d.cpu(metric, p)),
            ratio(cpu_ratio(d, metric, p, OURS)),
            d.util(metric, p)
                .map_or("–".into(), |u| format!("{:.0} %", u.median * 100.0)),
            d.foreign(metric, p)
                .map_or("–".into(), |u| format!("{:.0} %", u * 100.0)),
        );
    }
    t
}

fn markdown(d: &Data, summary: &str, targets: &[String]) -> String {
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
    let disturbed: Vec<String> = ["keepalive", "handshake", "resume", "bulk", "rate"]
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
        "![Each peer's CPU time per unit of work relative to tls-sidecar (tcp mode)](benchmarks.svg)\n"
    );
    let _ = writeln!(o, "## Issue targets\n");
    for l in targets {
        let _ = writeln!(o, "{l}");
    }
    let _ = writeln!(o);

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
        let _ = writeln!(o);
    }
    for (peer, reason) in &d.skips {
        let _ = writeln!(o, "- **{peer} not measured:** {reason}");
    }
    if !d.skips.is_empty() {
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "- One machine, loopback only. Every terminator runs pinned to CPU 0 (`taskset -c 0`) with one \
         worker (tokio sized to its affinity = 1 worker thread; nginx `worker_processes 1`; HAProxy \
         `nbthread 1`; hitch `workers = 1`; stunnel's own thread per connection). The load generator \
         (`tls-sidecar-bench`, single-threaded tokio + rustls/aws-lc-rs) and the plaintext upstream \
         (`tls-sidecar-bench upstream`: HTTP/1.1 keep-alive, 1 KiB body or 100 MiB for `/bulk`) share \
         CPU 1. Configurations: `bench/`.\n\
         - One certificate for all: Diego-shaped RSA-3072 leaf (PKCS#1 key, `OU=organization:…+OU=space:…+OU=app:…`, \
         DNS SAN = instance GUID) + intermediate, verified by the client against the bench root CA with \
         SNI = the GUID.\n\
         - The client offers TLS 1.3 only, TLS_AES_256_GCM_SHA384 only, and X25519 only (OpenSSL 3.0 has \
         no ML-KEM, so the rustls default X25519MLKEM768 would make the handshake work differ): every \
         peer negotiates exactly the same handshake and record protection.\n\
         - CPU: utime + stime of the terminator's process tree (`/proc/<pid>/stat` of the process and \
         every descendant; process totals include all threads), sampled right before and right after \
         the measured window, divided by the requests, connections or MB completed in it. \
         `CPU-0 busy` = that CPU time ÷ the window: below ~95 % the terminator was not the bottleneck \
         (the generator and upstream on CPU 1 were), so its rate is a lower bound, but CPU per unit stays valid. \
         `other load` = busy time of CPUs 0 and 1 (`/proc/stat`) not taken by the terminator, the \
         generator or the upstream, as a share of one CPU, worst repetition (kernel work not charged \
         to a process is in it too): a few % is normal, more means other work disturbed the run.\n\
         - All measurements of one kind run in one go, interleaved: each repetition visits every peer, \
         starting one peer later each time. Figures: median (min–max) over the repetitions.\n\
         - (1) keep-alive: {} connections (handshakes done before the window), closed loop `GET /1k`. \
         (2) full handshakes: {} connections in flight, each a new TCP + TLS 1.3 connection, no session \
         id or ticket offered (`Resumption::disabled()`), one `GET /1k` with `Connection: close`, \
         close_notify. (3) resumed: the same, each of the {} client tasks offering the ticket its \
         previous connection received (checked with `handshake_kind()`; fraction shown). (4) bulk: \
         `GET /bulk` (100 MiB) repeated over one connection. (5) latency: open loop at a fixed rate = \
         half the slowest peer's median keep-alive rate, {} connections, latency from the scheduled \
         send time when behind schedule (no coordinated omission). (6) RSS (VmRSS summed over the \
         process tree) of a freshly started peer, while holding {} idle TLS connections (handshake \
         complete; from 4 source addresses), and 1 s and a few seconds after they close. (7) \
         `bin/supply BUILD CACHE DEPS 0` with `CF_STACK=cflinuxfs4` from the unzipped cached buildpack, \
         fresh directories each run. (8) `openssl speed` on CPU 0.\n\
         - Windows of {} s, {} repetitions. Logging of each connection is off for every peer (ours: `log.level: warn`).\n",
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
        "Ratios are against ours in tcp mode (`{OURS}`): **peer CPU ÷ ours** above 1 means the peer spends more CPU per unit; **ours ÷ peer** above 1 means we are faster.\n"
    );
    let _ = writeln!(
        o,
        "### (1) Keep-alive requests, 1 KiB body\n\n{}",
        metric_table(d, "keepalive", "requests/s", "µs/request")
    );
    let _ = writeln!(
        o,
        "### (2) Full TLS 1.3 handshakes (new connection per request)\n\n{}",
        metric_table(d, "handshake", "connections/s", "µs/connection")
    );
    let _ = writeln!(
        o,
        "### (3) Resumed TLS 1.3 handshakes\n\n{}",
        metric_table(d, "resume", "connections/s", "µs/connection")
    );
    let _ = writeln!(
        o,
        "### (4) Bulk, 100 MiB bodies\n\nSingle-core limit: AES-256-GCM at 16 KB blocks {} MB/s on CPU 0.\n\n{}",
        num(d.aes_limit_mb()),
        metric_table(d, "bulk", "MB/s", "µs/MB")
    );
    let _ = writeln!(o, "### (5) Latency at a fixed rate\n");
    let _ = writeln!(
        o,
        "| peer | target rate/s | achieved/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p99 ours ÷ peer |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
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
    let _ = writeln!(o, "\n### (6) Memory (RSS, KB)\n");
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
    let _ = writeln!(o, "\n### (7) Buildpack\n");
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
        "\n### (8) Physical limits of CPU 0 (`openssl speed`, OpenSSL {})\n",
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

/// Grouped bars: each peer's CPU per unit ÷ ours, per metric; a line at 1 = ours.
fn chart(d: &Data) -> String {
    let metrics = [
        ("keepalive", "keep-alive request"),
        ("handshake", "full handshake"),
        ("resume", "resumed handshake"),
        ("bulk", "bulk MB"),
    ];
    let peers: Vec<&str> = d.peers().into_iter().filter(|p| *p != OURS).collect();
    let colors = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    ];
    let values: Vec<Vec<Option<f64>>> = metrics
        .iter()
        .map(|(m, _)| peers.iter().map(|p| cpu_ratio(d, m, p, OURS)).collect())
        .collect();
    let top = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(2.0_f64, f64::max)
        .ceil();
    let (w, h, left, right, top_pad, bottom) = (960.0, 460.0, 60.0, 200.0, 50.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top_pad - bottom;
    let y = |v: f64| top_pad + plot_h * (1.0 - v / top);
    let group_w = plot_w / metrics.len() as f64;
    let bar_w = (group_w * 0.8) / peers.len().max(1) as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="24" font-size="15" font-weight="bold">CPU time per unit of work, relative to tls-sidecar (tcp mode) = 1</text>"#
    );
    let _ = writeln!(
        o,
        r##"<text x="{left}" y="40" fill="#555">above 1: the peer spends more CPU than ours (one core each, median of repetitions)</text>"##
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
            let Some(v) = v else { continue };
            let x = gx + bar_w * pi as f64;
            let (y0, y1) = (y(*v), y(0.0));
            let _ = writeln!(
                o,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.2}</title></rect>"#,
                (bar_w - 2.0).max(1.0),
                (y1 - y0).max(0.0),
                colors[pi % colors.len()],
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
            h - bottom + 20.0
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
    let _ = writeln!(
        o,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        y(0.0),
        left + plot_w,
        y(0.0)
    );
    for (pi, p) in peers.iter().enumerate() {
        let ly = top_pad + 20.0 * pi as f64;
        let lx = w - right + 30.0;
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{p}</text>"#,
            colors[pi % colors.len()],
            lx + 18.0,
            ly + 10.0
        );
    }
    let _ = writeln!(o, "</svg>");
    o
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

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(12345.4), "12,345");
        assert_eq!(num(42.25), "42.2");
        assert_eq!(num(0.123), "0.12");
    }
}
