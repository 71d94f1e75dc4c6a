//! Shared fixtures: stand-in static binaries, a throwaway repository, and a way to run the real
//! packager binary and read what it wrote.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

pub const PACKAGER: &str = env!("CARGO_BIN_EXE_tls-sidecar-packager");

/// The repository root, for the real source manifest.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles `int main() { puts(message); }` with `compiler` and `flags` into `dir/name`.
pub fn compile_c(dir: &Path, name: &str, compiler: &str, flags: &[&str], message: &str) -> PathBuf {
    let source = dir.join(format!("{name}.c"));
    fs::write(
        &source,
        format!("#include <stdio.h>\nint main(void) {{ puts(\"{message}\"); return 0; }}\n"),
    )
    .expect("write C source");
    let binary = dir.join(name);
    let status = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {compiler} ({err}); install it with `apt-get install musl-tools gcc`"
            )
        });
    assert!(status.success(), "{compiler} {flags:?} failed");
    binary
}

/// Compiles `fn main() { println!(message) }` for the musl target: a static-pie, like the real
/// binaries. (Debian's `musl-gcc -static-pie` still asks for the musl loader, so it cannot make
/// one.)
pub fn compile_rust_musl(dir: &Path, name: &str, message: &str) -> PathBuf {
    let source = dir.join(format!("{name}.rs"));
    fs::write(
        &source,
        format!("fn main() {{ println!(\"{message}\"); }}\n"),
    )
    .expect("write Rust source");
    let binary = dir.join(name);
    let status = Command::new("rustc")
        .args([
            "--target",
            "x86_64-unknown-linux-musl",
            "-C",
            "opt-level=s",
            "-C",
            "strip=symbols",
        ])
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run rustc");
    assert!(
        status.success(),
        "rustc failed; add the target with `rustup target add x86_64-unknown-linux-musl`"
    );
    binary
}

/// Two static musl stand-ins for the real binaries (a plain static one from musl-gcc, a
/// static-pie from rustc), built once per test binary. Each prints its
/// own line, so a test can tell which one landed where by running it.
pub struct StandIns {
    _dir: TempDir,
    pub sidecar: PathBuf,
    pub buildpack: PathBuf,
}

pub const SIDECAR_SAYS: &str = "stand-in tls-sidecar";
pub const BUILDPACK_SAYS: &str = "stand-in tls-sidecar-buildpack";

pub fn stand_ins() -> &'static StandIns {
    static STAND_INS: OnceLock<StandIns> = OnceLock::new();
    STAND_INS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let sidecar = compile_c(
            dir.path(),
            "tls-sidecar",
            "musl-gcc",
            &["-static", "-Os", "-s"],
            SIDECAR_SAYS,
        );
        let buildpack = compile_rust_musl(dir.path(), "tls-sidecar-buildpack", BUILDPACK_SAYS);
        StandIns {
            _dir: dir,
            sidecar,
            buildpack,
        }
    })
}

/// A repository with the real source manifest, VERSION 1.0.0, four shims (mode 0644 on purpose:
/// the zip must make them executable anyway) and a README.
pub fn fake_repo() -> TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    fs::copy(
        workspace_root().join("manifest.yml"),
        root.join("manifest.yml"),
    )
    .expect("copy manifest");
    fs::write(root.join("VERSION"), "1.0.0\n").expect("VERSION");
    fs::write(root.join("README.md"), "# TLS sidecar buildpack\n").expect("README");
    fs::create_dir(root.join("bin")).expect("bin");
    for phase in ["detect", "supply", "finalize", "release"] {
        let shim = root.join("bin").join(phase);
        fs::write(&shim, format!("#!/usr/bin/env bash\n# {phase} shim\n")).expect("shim");
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o644)).expect("chmod");
        let bat = root.join("bin").join(format!("{phase}.bat"));
        fs::copy(
            workspace_root().join("bin").join(format!("{phase}.bat")),
            &bat,
        )
        .expect("copy bat");
    }
    repo
}

/// Runs the packager on `repo` with the stand-in binaries, output into `out`, plus `extra` args.
/// The dependency URI env var is removed so the caller's environment cannot leak in.
pub fn run_packager(repo: &Path, out: &Path, extra: &[&str]) -> Output {
    let bins = stand_ins();
    Command::new(PACKAGER)
        .arg("--sidecar")
        .arg(&bins.sidecar)
        .arg("--buildpack-binary")
        .arg(&bins.buildpack)
        .arg("--repo-root")
        .arg(repo)
        .arg("--output")
        .arg(out)
        .args(extra)
        .env_remove("TLS_SIDECAR_DEPENDENCY_URI_BASE")
        .output()
        .expect("run the packager")
}

/// Runs the packager, asserts success, and returns the zip path it printed.
pub fn package(repo: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let output = run_packager(repo, out, extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "packager failed:\n{stderr}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be just the zip path, got {stdout:?}"
    );
    PathBuf::from(lines[0])
}

/// One zip entry: unix mode (with file type bits) and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Every entry of a zip, in archive order.
pub fn read_zip(path: &Path) -> Vec<(String, Entry)> {
    let bytes = fs::read(path).expect("read zip");
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("open zip");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).expect("entry");
            let mut data = Vec::new();
            file.read_to_end(&mut data).expect("read entry");
            let mode = file.unix_mode().expect("unix mode");
            (file.name().to_owned(), Entry { mode, data })
        })
        .collect()
}

pub fn zip_map(path: &Path) -> BTreeMap<String, Entry> {
    read_zip(path).into_iter().collect()
}

/// The packaged manifest inside a zip.
pub fn zip_manifest(path: &Path) -> tls_sidecar_packager::PackagedManifest {
    let entries = zip_map(path);
    let manifest = entries
        .get("manifest.yml")
        .expect("manifest.yml in the zip");
    serde_yaml_ng::from_slice(&manifest.data).expect("packaged manifest parses")
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `(path, mode, content)` of every tarball entry.
pub fn read_tarball(tgz: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    archive
        .entries()
        .expect("tar entries")
        .map(|entry| {
            let mut entry = entry.expect("tar entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mode = entry.header().mode().expect("mode");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            (path, mode, data)
        })
        .collect()
}

/// Writes `data` as an executable file and runs it, returning its trimmed stdout.
pub fn run_bytes(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, data).expect("write binary");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = Command::new(&path).output().expect("run extracted binary");
    assert!(output.status.success(), "{name} failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
