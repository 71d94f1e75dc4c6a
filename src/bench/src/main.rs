//! `tls-sidecar-bench`: the load generator, plaintext upstream and report writer behind
//! `scripts/bench.sh`.
//!
//! Every client subcommand talks TLS 1.3 (rustls, aws-lc-rs) to a terminator on loopback
//! (`keepalive --plain`: plaintext HTTP/1.1 to a route-port listener), verifies its chain
//! against the bench root CA with SNI = the leaf's DNS name, presents the calling app's
//! certificate (`--cert`/`--key`) when the terminator asks for one, optionally samples the terminator's CPU time and RSS from `/proc` around the measured window
//! (`--watch-pid`: the process and all its descendants, all threads), and prints one JSON line.
//! Every loop is bounded by a deadline and/or a count; only 127.0.0.0/8 addresses are accepted.

mod client;
mod http;
mod load;
mod procfs;
mod report;
mod upstream;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "tls-sidecar-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plaintext HTTP/1.1 upstream: `GET /bulk` answers `--bulk-bytes`, anything else 1 KiB.
    Upstream(upstream::UpstreamArgs),
    /// A few requests; prints the negotiated TLS version, cipher suite and key exchange,
    /// resumption, whether a client certificate was asked for, whether X-Forwarded-Client-Cert
    /// reached the upstream, and whether the peer speaks HTTP/2 (ALPN h2).
    Probe(load::ProbeArgs),
    /// N keep-alive connections, each looping `GET /1k` (closed loop); `--plain` without TLS.
    Keepalive(load::KeepaliveArgs),
    /// HTTP/2 over TLS (ALPN h2 only): C connections with S requests in flight each (closed loop).
    H2(load::H2Args),
    /// Full handshakes: a new connection per request, no session resumption offered.
    Handshake(load::LoadArgs),
    /// Resumed handshakes: a new connection per request offering the last ticket received.
    Resume(load::LoadArgs),
    /// Bulk download: `GET /bulk` repeated over keep-alive connections.
    Bulk(load::LoadArgs),
    /// Open loop at a fixed request rate over keep-alive connections: latency percentiles.
    Rate(load::RateArgs),
    /// Holds many idle TLS connections and samples the terminator's RSS.
    Idle(load::IdleArgs),
    /// Prints the CPU ticks and RSS of a process tree.
    Proc {
        #[arg(long)]
        pid: u32,
    },
    /// Writes docs/benchmarks.md and docs/benchmarks.svg from the results file.
    Report(report::ReportArgs),
}

/// What every client subcommand needs.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The terminator's TLS address (loopback only).
    #[arg(long)]
    pub addr: SocketAddr,
    /// PEM root CA to verify the terminator's chain against.
    #[arg(long)]
    pub ca: PathBuf,
    /// SNI and the name verified (the leaf's DNS SAN).
    #[arg(long)]
    pub sni: String,
    /// PEM certificate chain (leaf first) presented when the terminator asks for a client
    /// certificate; with --key. Terminators that do not ask never see it.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert (PKCS#1, PKCS#8 or SEC1).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Key exchange group: x25519 (what every peer supports) or x25519mlkem768.
    #[arg(long, default_value = "x25519")]
    pub group: String,
    /// Request path.
    #[arg(long, default_value = "/1k")]
    pub path: String,
    /// Terminator process whose tree's CPU time and RSS are sampled around the window.
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Other benchmark processes (the upstream) whose CPU time is sampled too, so that the
    /// report can tell CPU time taken by unrelated processes during the window.
    #[arg(long)]
    pub account_pid: Vec<u32>,
    /// Copied into the JSON line.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Copied into the JSON line.
    #[arg(long, default_value_t = 0)]
    pub rep: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream(a) => upstream::run(&a),
        Command::Probe(a) => load::probe(&a),
        Command::Keepalive(a) => load::keepalive(&a.load, a.plain, false),
        Command::H2(a) => load::h2(&a),
        Command::Bulk(a) => load::keepalive(&a, false, true),
        Command::Handshake(a) => load::connections(&a, false),
        Command::Resume(a) => load::connections(&a, true),
        Command::Rate(a) => load::rate(&a),
        Command::Idle(a) => load::idle(&a),
        Command::Proc { pid } => procfs::sample_tree(pid).map(|s| {
            println!(
                "{{\"pid\":{pid},\"processes\":{},\"cpu_s\":{:.3},\"rss_kb\":{}}}",
                s.processes,
                s.cpu_seconds(),
                s.rss_kb
            );
        }),
        Command::Report(a) => report::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls-sidecar-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors are reported as text; this is a tool, not a library.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Refuses anything but 127.0.0.0/8: the generator must never load a real network.
pub fn loopback_only(addr: &SocketAddr) -> Result<()> {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => Ok(()),
        _ => Err(format!("{addr} is not a 127.0.0.0/8 address: loopback only").into()),
    }
}

/// A single-threaded runtime: the generator is pinned to one core by the script.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
