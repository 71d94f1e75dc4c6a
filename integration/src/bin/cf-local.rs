//! `cf-local`: `cf push` against the local Cloud Foundry emulation, for demos and debugging.
//!
//! ```text
//! cf-local push --app fixtures/apps/http-app -b ours -b fixture:libbuildpack-final
//! cf-local push --app my-app -b ./tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip \
//!               -b fixture:plain-final -e TLS_SIDECAR_PORT=9443 --hold
//! ```
//!
//! A buildpack is a zip path, `ours` / `ours-uncached` (our zip, packaged on demand or from
//! `TLS_SIDECAR_BUILDPACK_ZIP[_UNCACHED]`), or `fixture:<name>` (`fixtures/buildpacks/<name>`).
//! Prints the staging log, `result.json`, the instance's identity, each process's readiness,
//! then what a client sees over TLS (`curl` and `openssl s_client` inside the instance's network
//! namespace). Needs root.

use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tls_sidecar_integration::buildpacks::{fixture_buildpack, our_buildpack};
use tls_sidecar_integration::util::Deadline;
use tls_sidecar_integration::{
    AppInfo, Buildpack, Instance, LaunchOptions, Result, StagingRequest,
};

#[derive(Parser)]
#[command(about = "cf push against a local emulation of Cloud Foundry staging and launch")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stage an app with the given buildpacks (supply..., final), launch it, and probe it.
    Push(Push),
}

#[derive(clap::Args)]
struct Push {
    /// The app directory (copied; never modified).
    #[arg(long)]
    app: PathBuf,
    /// Buildpacks in order, the last one final: a zip path, `ours`, `ours-uncached` or
    /// `fixture:<name>`.
    #[arg(short = 'b', long = "buildpack", required = true)]
    buildpacks: Vec<String>,
    /// App name.
    #[arg(long, default_value = "myapp")]
    name: String,
    /// `CF_STACK` at staging.
    #[arg(long, default_value = "cflinuxfs4")]
    stack: String,
    /// App memory in MB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// App env (`cf set-env`), NAME=VALUE; repeatable.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Stop after staging.
    #[arg(long)]
    stage_only: bool,
    /// Path to request through the sidecar.
    #[arg(long, default_value = "/")]
    path: String,
    /// Keep the instance running until Enter is pressed (or stdin closes).
    #[arg(long)]
    hold: bool,
    /// Seconds to wait for each process to be ready.
    #[arg(long, default_value_t = 90)]
    timeout: u64,
}

fn buildpack(spec: &str) -> Result<Buildpack> {
    match spec {
        "ours" => our_buildpack(true),
        "ours-uncached" => our_buildpack(false),
        s if s.starts_with("fixture:") => fixture_buildpack(&s["fixture:".len()..]),
        path => {
            let p = PathBuf::from(path);
            let key = p
                .file_stem()
                .map_or_else(|| path.to_owned(), |s| s.to_string_lossy().into_owned());
            Ok(Buildpack::new(key, p))
        }
    }
}

fn push(args: &Push) -> Result<bool> {
    tls_sidecar_integration::require_root()?;
    let mut app = AppInfo::new(&args.name).with_stack(&args.stack);
    app.memory_mb = args.memory;
    for kv in &args.env {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            tls_sidecar_integration::Error::msg(format!("--env {kv:?} is not NAME=VALUE"))
        })?;
        app.env.insert(k.to_owned(), v.to_owned());
    }
    let mut req = StagingRequest::new(app, &args.app);
    for spec in &args.buildpacks {
        req = req.buildpack(buildpack(spec)?);
    }

    println!(
        "==> Staging {} with {}",
        args.name,
        args.buildpacks.join(", ")
    );
    let staging = req.stage()?;
    print!("{}", staging.output);
    println!("==> Staging exit code: {}", staging.exit_code);
    if !staging.succeeded() {
        return Ok(false);
    }
    println!("==> result.json");
    println!("{}", serde_json::to_string_pretty(&staging.result)?);
    for (i, idx) in staging.deps_indices.iter().enumerate() {
        let launch = staging.deps_path(i).join("launch.yml");
        if let Ok(text) = std::fs::read_to_string(&launch) {
            println!("==> deps/{idx}/launch.yml\n{text}");
        }
    }
    if args.stage_only {
        return Ok(true);
    }

    let droplet = staging.droplet()?;
    let instance = Instance::launch(&droplet, &LaunchOptions::default())?;
    let ca = instance.credentials().ca().clone();
    println!(
        "==> Instance 0 of {} (network namespace {})",
        args.name,
        instance.netns().name()
    );
    println!(
        "    CF_INSTANCE_GUID={}  CF_INSTANCE_INTERNAL_IP={}",
        instance.guid(),
        instance.ip()
    );
    println!("    trusted CA (appRootCA): {}", ca.root_cert().display());
    for p in instance.processes() {
        println!("    {}: {}", p.name(), p.command());
    }
    let deadline = Deadline::after(Duration::from_secs(args.timeout));
    let mut ok = true;
    match instance.wait_for_port(8080, deadline) {
        Ok(()) => println!("==> web is accepting on 8080"),
        Err(e) => {
            println!("==> web is not ready: {e}");
            ok = false;
        }
    }
    let sidecars: Vec<_> = instance
        .processes()
        .iter()
        .filter(|p| p.name() != "web")
        .collect();
    for p in &sidecars {
        match p.wait_for_log("listening on", deadline) {
            Ok(line) => println!("==> {}: {line}", p.name()),
            Err(e) => {
                println!("==> {} is not ready: {e}", p.name());
                ok = false;
            }
        }
    }
    if ok && sidecars.iter().any(|p| p.name() == "tls-sidecar") {
        let guid = instance.guid().to_owned();
        let url = format!("https://{guid}:8443{}", args.path);
        let resolve = format!("{guid}:8443:127.0.0.1");
        let root = ca.root_cert().display().to_string();
        println!("==> curl --cacert appRootCA --resolve {resolve} {url}");
        let out = instance.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &root,
            "--resolve",
            &resolve,
            &url,
        ])?;
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ok &= out.status.success();
        println!("==> openssl s_client -connect 127.0.0.1:8443 -servername {guid}");
        let out = instance.exec(&[
            "openssl",
            "s_client",
            "-connect",
            "127.0.0.1:8443",
            "-servername",
            &guid,
            "-CAfile",
            &root,
            "-showcerts",
            "-brief",
        ])?;
        let text = String::from_utf8_lossy(&out.stderr);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            println!("    {line}");
        }
    }
    if args.hold {
        println!("==> Running. Press Enter to stop.");
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    println!("==> Process logs");
    println!("{}", instance.logs());
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Push(args) => push(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cf-local: {e}");
            ExitCode::from(2)
        }
    }
}
