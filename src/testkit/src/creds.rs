//! The credential directory, what Diego mounts at `/etc/cf-instance-credentials`.

use crate::pki::Leaf;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// `instance.crt` and `instance.key` in a directory. Directory and files are world-readable,
/// as Diego's read-only mount is, so that a sidecar running as another user (vcap) reads them.
pub struct Creds {
    dir: PathBuf,
    /// Set when the kit made the directory (deleted on drop).
    _temp: Option<TempDir>,
}

fn io<T>(what: &str, path: &Path, result: std::io::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what} {}: {e}", path.display()))
}

fn readable(path: &Path, mode: u32) {
    io(
        "chmod",
        path,
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
    );
}

impl Creds {
    /// A new directory without credentials yet.
    pub fn empty() -> Creds {
        let temp = io(
            "making a temp dir in",
            &std::env::temp_dir(),
            tempfile::tempdir(),
        );
        readable(temp.path(), 0o755);
        Creds {
            dir: temp.path().to_owned(),
            _temp: Some(temp),
        }
    }

    /// `dir`, which the test owns and which need not exist yet (a mount that comes late).
    pub fn in_dir(dir: PathBuf) -> Creds {
        Creds { dir, _temp: None }
    }

    /// A new directory holding `leaf`.
    pub fn with(leaf: &Leaf) -> Creds {
        let creds = Creds::empty();
        creds.rotate_the_diego_way(leaf);
        creds
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("instance.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("instance.key")
    }

    /// The executor's order (`instance_identity_handler.go`): write both `.tmp` files, rename
    /// the key, then the certificate. Between the renames the new key sits next to the old
    /// certificate, which readers must survive.
    pub fn rotate_the_diego_way(&self, leaf: &Leaf) {
        self.write_tmp(leaf);
        self.rename_key();
        self.rename_cert();
    }

    pub fn write_tmp(&self, leaf: &Leaf) {
        for (name, content) in [
            ("instance.key.tmp", &leaf.key_pem),
            ("instance.crt.tmp", &leaf.chain_pem),
        ] {
            let path = self.dir.join(name);
            io("writing", &path, std::fs::write(&path, content));
            readable(&path, 0o644);
        }
    }

    pub fn rename_key(&self) {
        let tmp = self.dir.join("instance.key.tmp");
        io("renaming", &tmp, std::fs::rename(&tmp, self.key()));
    }

    pub fn rename_cert(&self) {
        let tmp = self.dir.join("instance.crt.tmp");
        io("renaming", &tmp, std::fs::rename(&tmp, self.cert()));
    }
}

/// A port that was free a moment ago (the binary's config cannot say "port 0"). Should another
/// process grab it first, the sidecar retries binding and the test times out rather than lies.
/// Never the same port twice in one test process: the kernel may hand a port it just freed
/// straight back, and a listener and the admin endpoint on one port is a configuration error.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    // Ports given before stay bound while we look, so the kernel offers another.
    let mut held = Vec::new();
    loop {
        let listener = io(
            "binding",
            Path::new("127.0.0.1:0"),
            std::net::TcpListener::bind("127.0.0.1:0"),
        );
        let port = io(
            "reading the address of",
            Path::new("127.0.0.1:0"),
            listener.local_addr(),
        )
        .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(port) {
            return port;
        }
        held.push(listener);
    }
}
