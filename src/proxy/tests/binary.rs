//! The `tls-sidecar` binary as CF runs it: a config file, the instance credentials in the
//! environment, logs on stdout, signals.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_tls-sidecar");

/// The binary with only the variables given: nothing leaks in from the test's environment.
fn sidecar(config: &Path, creds: &Creds, app_port: u16) -> Command {
    sidecar_command(Path::new(BIN), config, creds, app_port)
}

/// A running binary (the kit's [`Process`]) and how far the test has read its log.
struct Running {
    process: Process,
    read: usize,
}

impl Running {
    fn spawn(cmd: Command) -> Running {
        Running {
            process: Process::spawn(cmd),
            read: 0,
        }
    }

    /// Waits for a line with `needle` after the last one waited for.
    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.process.log();
            if let Some(i) = log[self.read..].iter().position(|l| l.contains(needle)) {
                self.read += i + 1;
                return log[self.read - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; got:\n{}",
                log.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                self.process.kill();
                panic!(
                    "the sidecar did not exit; log:\n{}",
                    self.process.log().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log(&self) -> Vec<String> {
        self.process.log()
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

    let mut sidecar = Running::spawn(sidecar(&config, &creds, app.port()));
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

    let mut sidecar = Running::spawn(sidecar(&config, &creds, 8080));
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
    let mut process = Running::spawn(cmd);
    let status = process.exit_status().await;
    // The reader threads may still be draining the pipes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process.process.drained() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = process.log();
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
    let mut sidecar = Running::spawn(sidecar(&config, &creds, 8080));
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
    let mut sidecar = Running::spawn(cmd);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_logs_the_fix_check_prints() {
    let leaf = Pki::shared().leaf(2048);
    let creds = Creds::with(&leaf);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - port: {}\nadmin:\n  listen: 127.0.0.1:{}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let vcap = r#"{"application_name":"shop"}"#;
    let mut cmd = sidecar(&config, &creds, 8080);
    cmd.env("VCAP_APPLICATION", vcap);
    let mut sidecar = Running::spawn(cmd);
    sidecar.wait_for_line("certificate loaded").await;

    std::fs::remove_file(creds.cert()).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PORT", "8080")
        .env("CF_INSTANCE_CERT", creds.cert())
        .env("CF_INSTANCE_KEY", creds.key())
        .env("VCAP_APPLICATION", vcap)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = report.lines();
    lines
        .find(|l| l.contains("instance.crt does not exist"))
        .unwrap_or_else(|| panic!("no missing-certificate problem in:\n{report}"));
    let fix = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("Fix: "))
        .unwrap_or_else(|| panic!("no fix after the problem in:\n{report}"));
    assert!(fix.contains("cf ssh shop"), "{fix}");

    sidecar.signal("HUP");
    let line = sidecar
        .wait_for_line("certificate reload failed; still serving the previous certificate")
        .await;
    assert!(line.contains("does not exist"), "{line}");
    assert!(
        line.contains(&format!("fix=\"{fix}\"")),
        "{line}\ncheck: {fix}"
    );
    sidecar.signal("TERM");
    assert!(sidecar.exit_status().await.success(), "{:?}", sidecar.log());
}
