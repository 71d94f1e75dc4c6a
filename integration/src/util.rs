//! Small helpers: randomness, GUIDs, commands, file trees, deadlines.

use crate::{Context, Result, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// The emulation creates namespaces, mounts and switches users: it needs root. This fails (it
/// does not skip) with a message saying so, because a silently skipped end-to-end suite proves
/// nothing. CI runs as root.
pub fn require_root() -> Result<()> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        bail!(
            "the Cloud Foundry emulation needs root (network and mount namespaces, bind mounts, \
             setpriv to uid 2000): run the integration tests as root, e.g. `sudo -E cargo test -p \
             tls-sidecar-integration` (CI runs as root)"
        )
    }
}

/// `n` bytes from the kernel's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if filled.is_err() {
        // /dev/urandom always exists on Linux; fall back to a time-seeded mix just in case.
        let mut x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        for b in &mut buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    buf
}

pub fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// A random UUIDv4, as CC makes app, space and org GUIDs.
pub fn random_guid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A Diego instance GUID: a UUID cut to its first 28 characters, e.g.
/// `0081f869-1d95-44da-4eee-83ce` (what `CF_INSTANCE_GUID` looks like on a real cell).
pub fn random_instance_guid() -> String {
    random_guid()[..28].to_owned()
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// `cp -a src dst` (dst must not exist): modes, symlinks and times kept, like the builder's copy.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg("--").arg(src).arg(dst))?;
    Ok(())
}

/// `chown -R uid:gid path` without following symlinks.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    run(Command::new("chown")
        .arg("-R")
        .arg("-h")
        .arg(format!("{uid}:{gid}"))
        .arg(path))?;
    Ok(())
}

/// Every path under `root` (relative, sorted; directories end in `/`), for asserting on trees.
pub fn list_tree(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if e.file_type()?.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Whether `path` is a directory with nothing in it.
pub fn is_empty_dir(path: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .next()
        .is_none())
}

/// One overall deadline shared by the waits of a test step.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.0
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Sleeps a poll interval (never past the deadline).
    pub fn tick(&self) {
        std::thread::sleep(self.remaining().min(Duration::from_millis(50)));
    }
}

/// Polls `f` until it returns `Some` or the deadline passes (then the last error).
pub fn poll<T>(
    deadline: Deadline,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut last = String::from("never ready");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        if deadline.expired() {
            bail!("timed out waiting for {what}: {last}");
        }
        deadline.tick();
    }
}

/// Like [`poll`], but an `Err` from `f` ends the wait at once (a condition that cannot recover,
/// e.g. the process being waited for exited); `Ok(Err(why))` means "not yet", and the last
/// `why` goes into the timeout message.
pub fn poll_strict<T>(
    deadline: Deadline,
    what: &str,
    mut f: impl FnMut() -> Result<Result<T, String>>,
) -> Result<T> {
    loop {
        let why = match f()? {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        if deadline.expired() {
            bail!("timed out waiting for {what}: {why}");
        }
        deadline.tick();
    }
}

/// Finds an executable on the host `PATH` (the emulation calls host tools by absolute path, so
/// a process's own `PATH` never decides which `ip` or `setpriv` runs).
pub fn host_tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is not installed (the emulation needs it)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_have_cf_shapes() {
        let g = random_guid();
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        let i = random_instance_guid();
        assert_eq!(i.len(), 28);
        assert_eq!(i.matches('-').count(), 4);
    }
}
