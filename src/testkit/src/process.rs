//! The sidecar binary as a child process: one launcher for every test that runs it.

use crate::creds::Creds;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// `bin --config <config>` with only `PORT` and the instance credentials in its environment
/// (nothing leaks in from the test's), stdin closed, stdout and stderr piped.
pub fn sidecar_command(bin: &Path, config: &Path, creds: &Creds, app_port: u16) -> Command {
    let mut cmd = Command::new(bin);
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

/// A running child whose stdout and stderr lines are kept as they arrive. Dropping it kills
/// the child.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Output streams still being read.
    open: Arc<AtomicUsize>,
}

impl Process {
    pub fn spawn(mut cmd: Command) -> Process {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let (log, open) = (log.clone(), open.clone());
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Process { child, log, open }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every line so far, stdout and stderr interleaved as they arrived.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lines so far containing every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// True once both output streams are closed and read to the end.
    pub fn drained(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// Sends signal `name` (e.g. `TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{name}: {e}"));
        assert!(status.success(), "kill -{name}");
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for the child: {e}"))
    }

    /// Kills the child (it may have exited already).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number from `/proc/<pid>/status`, such as `VmRSS:` (kB fields are returned in bytes).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line:?} in /proc/{pid}/status"));
    kb * 1024
}

/// The process's resident memory (VmRSS), in bytes.
pub fn rss(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// The process's open file descriptors.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"))
        .count()
}
