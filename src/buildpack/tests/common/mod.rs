//! Shared helpers for the tests that drive the real binary: a staging-like directory layout,
//! dependency tarballs and packaged manifests made on the spot, a loopback HTTP server, and a
//! listing of every file so a test can prove nothing was written where it should not be.
#![allow(dead_code)]

use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_tls-sidecar-buildpack");
pub const DEP_FILE: &str = "tls-sidecar-1.0.0-linux-x64.tgz";
/// Where a cached zip keeps the tarball (the real packager uses md5hex(uri) as the folder).
pub const DEP_REL: &str =
    "dependencies/0123456789abcdef0123456789abcdef/tls-sidecar-1.0.0-linux-x64.tgz";
/// The fake sidecar binary's bytes.
pub const SIDECAR_BYTES: &[u8] = b"#!/bin/sh\necho tls-sidecar\n";

/// A staging layout in one temp dir: `buildpack/`, `app/`, `cache/`, `deps/`.
pub struct Stage {
    pub root: tempfile::TempDir,
}

impl Stage {
    /// An empty app and a `deps/` dir, with no buildpack contents yet.
    pub fn new() -> Stage {
        let root = tempfile::tempdir().expect("temp dir");
        for d in ["buildpack", "app", "cache", "deps"] {
            fs::create_dir(root.path().join(d)).expect("mkdir");
        }
        fs::write(root.path().join("buildpack/VERSION"), "1.2.3\n").expect("VERSION");
        Stage { root }
    }

    /// A cached-zip buildpack (manifest `file:`) holding `tarball`, for `cflinuxfs4`.
    pub fn cached(tarball: &[u8]) -> Stage {
        let s = Stage::new();
        let path = s.bp().join(DEP_REL);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, tarball).expect("tarball");
        s.manifest(&Manifest {
            file: Some(DEP_REL.into()),
            ..Manifest::new("https://example.com/x.tgz", tarball)
        });
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    pub fn bp(&self) -> PathBuf {
        self.path("buildpack")
    }
    pub fn app(&self) -> PathBuf {
        self.path("app")
    }
    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }
    pub fn deps(&self) -> PathBuf {
        self.path("deps")
    }

    /// `deps/<idx>/`, created as the builder does before running supply.
    pub fn idx(&self, idx: &str) -> PathBuf {
        let d = self.deps().join(idx);
        fs::create_dir_all(&d).expect("mkdir deps/idx");
        d
    }

    pub fn manifest(&self, m: &Manifest) {
        fs::write(self.bp().join("manifest.yml"), m.yaml()).expect("manifest");
    }

    pub fn app_file(&self, name: &str, text: &str) {
        fs::write(self.app().join(name), text).expect("app file");
    }

    /// `supply` with `--buildpack-dir` and instant retries.
    pub fn supply(&self, idx: &str, env: &[(&str, &str)]) -> Run {
        self.supply_with_delays(idx, "0,0", env)
    }

    pub fn supply_with_delays(&self, idx: &str, delays: &str, env: &[(&str, &str)]) -> Run {
        let bp = self.bp();
        let (app, cache, deps) = (self.app(), self.cache(), self.deps());
        run(
            &[
                "--buildpack-dir",
                s(&bp),
                "--retry-delays-ms",
                delays,
                "supply",
                s(&app),
                s(&cache),
                s(&deps),
                idx,
            ],
            env,
        )
    }

    /// Every path under the root with its kind, mode and content hash.
    pub fn tree(&self) -> BTreeMap<String, String> {
        tree(self.root.path())
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A packaged manifest.yml (docs/DESIGN.md), with one tls-sidecar 1.0.0 entry.
pub struct Manifest {
    pub stack: Option<String>,
    pub cf_stacks: Vec<String>,
    pub uri: String,
    pub sha256: String,
    pub file: Option<String>,
}

impl Manifest {
    pub fn new(uri: &str, tarball: &[u8]) -> Manifest {
        Manifest {
            stack: Some("cflinuxfs4".into()),
            cf_stacks: vec![],
            uri: uri.into(),
            sha256: sha256(tarball),
            file: None,
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = String::from("---\nlanguage: tls-sidecar\n");
        if let Some(s) = &self.stack {
            y.push_str(&format!("stack: {s}\n"));
        }
        y.push_str("default_versions:\n  - {name: tls-sidecar, version: 1.0.0}\ndependencies:\n");
        y.push_str(&format!(
            "  - name: tls-sidecar\n    version: 1.0.0\n    uri: {}\n    sha256: {}\n",
            self.uri, self.sha256
        ));
        if !self.cf_stacks.is_empty() {
            y.push_str(&format!("    cf_stacks: [{}]\n", self.cf_stacks.join(", ")));
        }
        if let Some(f) = &self.file {
            y.push_str(&format!("    file: {f}\n"));
        }
        y.push_str("include_files: [bin/detect, bin/supply, bin/finalize, bin/release, lib/tls-sidecar-buildpack, manifest.yml, VERSION]\n");
        y
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One tar member. Names and link targets are written raw into the header, so tests can build
/// the malicious tarballs that `tar::Builder`'s own checks would refuse.
pub enum M<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A member that holds no data: a fifo or a character or block device.
    Special(&'a str, tar::EntryType),
    /// A pax extended header whose `path` record renames the member after it.
    PaxPath(&'a str),
    /// A GNU long-name member (`././@LongLink`) giving the name of the member after it.
    GnuLongName(&'a str),
}

pub fn tgz(members: &[M]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for m in members {
        let mut h = tar::Header::new_gnu();
        let record;
        let long_name;
        let (name, link, ty, mode, data): (&str, &str, tar::EntryType, u32, &[u8]) = match *m {
            M::File(n, mode, d) => (n, "", tar::EntryType::Regular, mode, d),
            M::Dir(n) => (n, "", tar::EntryType::Directory, 0o755, b""),
            M::Symlink(n, t) => (n, t, tar::EntryType::Symlink, 0o777, b""),
            M::Hardlink(n, t) => (n, t, tar::EntryType::Link, 0o644, b""),
            M::Special(n, ty) => (n, "", ty, 0o644, b""),
            M::PaxPath(p) => {
                record = pax_record("path", p);
                (
                    "PaxHeader",
                    "",
                    tar::EntryType::XHeader,
                    0o644,
                    record.as_bytes(),
                )
            }
            M::GnuLongName(n) => {
                long_name = format!("{n}\0");
                (
                    "././@LongLink",
                    "",
                    tar::EntryType::GNULongName,
                    0o644,
                    long_name.as_bytes(),
                )
            }
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// One pax record, `"<length> <key>=<value>\n"`, where the length counts the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    while len != body.len() + len.to_string().len() {
        len = body.len() + len.to_string().len();
    }
    format!("{len}{body}")
}

/// The tarball the packager makes (docs/DESIGN.md): `bin/tls-sidecar`, 0755.
pub fn good_tgz() -> Vec<u8> {
    tgz(&[
        M::Dir("bin/"),
        M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
    ])
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout lines with the colour codes removed (one test checks the colours themselves).
    pub fn lines(&self) -> Vec<String> {
        strip_ansi(&self.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs the binary with exactly `env` (nothing inherited, to prove only explicit input counts).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

pub fn strip_ansi(text: &str) -> String {
    text.replace("\x1b[31;1m", "").replace("\x1b[0m", "")
}

pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("prefix")
            .display()
            .to_string();
        let m = fs::symlink_metadata(&path).expect("metadata");
        let mode = m.permissions().mode() & 0o7777;
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                format!("link -> {}", fs::read_link(&path).expect("link").display()),
            );
        } else if m.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &path, out);
        } else {
            out.insert(
                rel,
                format!("file {mode:o} {}", sha256(&fs::read(&path).expect("read"))),
            );
        }
    }
}

/// Paths added, removed or changed between two listings.
pub fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

/// A loopback HTTP server answering connection N with `responses[N]` (the last one repeats).
/// It understands `CONNECT` (then serves the tunnelled request), so it can stand in for a
/// proxy. Every request line is recorded.
pub struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(responses: Vec<(u16, Vec<u8>)>) -> Server {
        Server::start_raw(
            responses
                .iter()
                .map(|(code, body)| response(*code, body))
                .collect(),
        )
    }

    /// Like [`Server::start`], but each reply is sent byte for byte as given (a head that lies
    /// about the body, a body cut short), and then the connection is closed.
    pub fn start_raw(replies: Vec<Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &replies[i.min(replies.len() - 1)], &log);
            }
        });
        Server {
            addr,
            requests,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A complete `HTTP/1.1` response with `Content-Length` and `Connection: close`.
pub fn response(code: u16, body: &[u8]) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut r = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn serve(stream: TcpStream, reply: &[u8], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut stream = stream;
    let Some(mut line) = read_head(&mut reader) else {
        return;
    };
    if line.starts_with("CONNECT ") {
        log.lock().expect("lock").push(line.clone());
        let _ = stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let Some(inner) = read_head(&mut reader) else {
            return;
        };
        line = inner;
    }
    log.lock().expect("lock").push(line);
    let _ = stream.write_all(reply);
    let _ = stream.flush();
}

/// Reads a request head; returns its first line.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 || l == "\r\n" {
            break;
        }
    }
    Some(first.trim_end().to_owned())
}
