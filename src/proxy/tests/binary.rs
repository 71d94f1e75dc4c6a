//! The `tls-sidecar` binary as CF runs it: a config file, the instance credentials in the
//! environment, logs on stdout, signals.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_tls-sidecar");

/// A port that was free a moment ago (the binary's config cannot say "port 0"). Should another
/// process grab it first, the sidecar retries binding and the test times out rather than lies.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with only the variables given: nothing leaks in from the test's environment.
fn sidecar(config: &Path, creds: &Creds, app_port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .env_clear()
        .env("PORT", app_port.to_string())
        .env("CF_INSTANCE_CERT", creds.cert())
        .env("CF_INSTANCE_KEY", creds.key())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running binary whose stdout lines arrive on a channel and are kept for later asserts.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(mut cmd: Command) -> Process {
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let kept = all.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Process { child, lines, all }
    }

    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                _ => panic!(
                    "no log line with {needle:?}; got:\n{}",
                    self.all.lock().unwrap().join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the sidecar did not exit; log:\n{}",
                    self.all.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_with_a_config_file_and_exits_0_on_sigterm() {
    let app = echo_app().await;
    let leaf = Pki::shared().leaf(2048);
    let creds = Creds::with(&leaf);
    let (tls_port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        format!("listeners:\n  - port: {tls_port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n"),
    )
    .unwrap();

    let mut sidecar = Process::spawn(sidecar(&config, &creds, app.port()));
    sidecar
        .wait_for_line(&format!("listening on 0.0.0.0:{tls_port}"))
        .await;
    let admin = loopback(admin_port);
    until_ready(admin).await;

    let mut tls = connect(loopback(tls_port)).await.unwrap();
    assert_eq!(
        echo(&mut tls, b"through the binary").await,
        b"through the binary"
    );
    drop(tls);

    // SIGHUP re-reads the certificate; it must not kill the process (its default action).
    sidecar.signal("HUP");
    sidecar
        .wait_for_line("re-reading the certificate on request")
        .await;
    assert_eq!(get(admin, "/live").await.unwrap().0, 200);

    sidecar.signal("TERM");
    sidecar.wait_for_line("drain finished").await;
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(0), "{:?}", sidecar.log());

    let log = sidecar.log();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("listening on 127.0.0.1:{admin_port}"))),
        "{log:?}"
    );
    let loaded = format!("subject_cn={}", leaf.guid);
    assert!(
        log.iter()
            .any(|l| l.contains("certificate loaded") && l.contains(&loaded)),
        "{log:?}"
    );
    for line in &log {
        assert!(
            line.starts_with("ts=") && line.contains(" level=") && line.contains(" msg=\""),
            "not logfmt: {line}"
        );
        assert!(
            !line.contains("PRIVATE KEY"),
            "key material in the log: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_json_when_configured() {
    let creds = Creds::empty();
    let (tls_port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        format!("listeners:\n  - port: {tls_port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\nlog:\n  format: json\n"),
    )
    .unwrap();

    let mut sidecar = Process::spawn(sidecar(&config, &creds, 8080));
    let line = sidecar.wait_for_line("listening on 0.0.0.0").await;
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["level"], "info");
    assert_eq!(parsed["listener"], "tls");
    sidecar
        .wait_for_line(&format!("listening on 127.0.0.1:{admin_port}"))
        .await;
    // No certificate yet: still running, not ready, saying why.
    let (status, body) = get(loopback(admin_port), "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    sidecar.signal("TERM");
    assert_eq!(sidecar.exit_status().await.code(), Some(0));
}

/// Runs the binary to completion (it must exit on its own) and returns its code and stdout.
async fn run_to_exit(cmd: Command) -> (Option<i32>, String) {
    let mut process = Process::spawn(cmd);
    let status = process.exit_status().await;
    // The reader thread may still be draining the pipe.
    let mut out = process.log();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(5), process.lines.recv()).await
    {
        if !out.contains(&line) {
            out.push(line);
        }
    }
    (status.code(), out.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_exits_64_naming_the_field_and_the_fix() {
    let creds = Creds::empty();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(&config, "limits:\n  max_connections: 0\n").unwrap();
    let (code, out) = run_to_exit(sidecar(&config, &creds, 8080)).await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("level=error"), "{out}");
    assert!(out.contains("limits.max_connections"), "{out}");
    assert!(out.contains("cf push"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_override_exits_64_with_the_cf_set_env_fix() {
    let creds = Creds::empty();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = sidecar(&config, &creds, 8080);
    cmd.env("TLS_SIDECAR_PORT", "84x3")
        .env("VCAP_APPLICATION", r#"{"application_name":"shop"}"#);
    let (code, out) = run_to_exit(cmd).await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("TLS_SIDECAR_PORT"), "{out}");
    assert!(out.contains("cf set-env shop TLS_SIDECAR_PORT"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_source_without_its_ca_service_keeps_running_and_logs_what_it_waits_for() {
    let creds = Creds::empty();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        format!(
            "certificate:\n  source: minted\n  service: my-ca\nlisteners:\n  - port: {}\nadmin:\n  listen: 127.0.0.1:{}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut sidecar = Process::spawn(sidecar(&config, &creds, 8080));
    let line = sidecar.wait_for_line("no certificate loaded yet").await;
    assert!(line.contains("VCAP_SERVICES is not set"), "{line}");
    sidecar.signal("TERM");
    assert!(sidecar.exit_status().await.success(), "{:?}", sidecar.log());
}

#[test]
fn the_binary_prints_its_version_and_help_and_rejects_unknown_flags_with_64() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tls-sidecar {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config <PATH>"));
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_a_refused_callers_identity_and_the_alpn_in_logfmt() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::shared();
    let creds = Creds::with(&pki.ec_leaf());
    let trust = TrustDir::with(&[&pki.root_pem]);
    let outsider = pki.client(&Identity::random());
    let (tls_port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - port: {tls_port}\n    mode: http\n    allow: [cf:same-org]\nadmin:\n  listen: 127.0.0.1:{admin_port}\n"
        ),
    )
    .unwrap();
    let mut cmd = sidecar(&config, &creds, 8080);
    cmd.env("CF_SYSTEM_CERT_PATH", trust.dir.path()).env(
        "VCAP_APPLICATION",
        format!(r#"{{"organization_id":"{}"}}"#, new_guid()),
    );
    let mut sidecar = Process::spawn(cmd);
    until_ready(loopback(admin_port)).await;

    let mut tls = connect_with(loopback(tls_port), mtls_client(&outsider, &["http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    assert!(response.starts_with(b"HTTP/1.1 403"));

    let denied = sidecar.wait_for_line("access denied").await;
    assert!(denied.contains("level=warn"), "{denied}");
    assert!(
        denied.contains(&format!("app={}", outsider.identity.app)),
        "{denied}"
    );
    let closed = sidecar.wait_for_line("connection closed").await;
    for field in [
        "alpn=http/1.1".to_owned(),
        format!("app={}", outsider.identity.app),
        format!("space={}", outsider.identity.space),
        format!("org={}", outsider.identity.org),
        format!("instance={}", outsider.guid),
        "requests=1".to_owned(),
    ] {
        assert!(closed.contains(&field), "{field} missing: {closed}");
    }
    sidecar.signal("TERM");
    assert_eq!(sidecar.exit_status().await.code(), Some(0));
    println!("{denied}\n{closed}");
}
