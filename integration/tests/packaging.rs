//! The packaged buildpack's binaries run on any stack: static, x86-64, and they start.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;
use tls_sidecar_integration::buildpacks::{Unpacked, ours_cached};
use tls_sidecar_integration::elf::linking;

const X86_64: u16 = 62;

fn unpacked_ours() -> Unpacked {
    Unpacked::new(&ours_cached().unwrap()).unwrap()
}

/// `bin/tls-sidecar` extracted from the cached zip's dependency tarball into `dir`.
fn extract_sidecar(bp: &Unpacked, dir: &std::path::Path) -> std::path::PathBuf {
    let tgz = bp.dependency_file("tls-sidecar").unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(tgz).unwrap(),
    ));
    archive.unpack(dir).unwrap();
    dir.join("bin/tls-sidecar")
}

#[test]
#[ignore = "integration test: needs the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn packaged_binaries_are_static_x86_64_executables() {
    let bp = unpacked_ours();
    let dir = tempfile::tempdir().unwrap();
    for path in [
        bp.path().join("lib/tls-sidecar-buildpack"),
        extract_sidecar(&bp, dir.path()),
    ] {
        let l = linking(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(l.machine, X86_64, "{}", path.display());
        assert_eq!(
            l.interpreter,
            None,
            "{} has a dynamic loader",
            path.display()
        );
        assert_eq!(l.needed, 0, "{} needs shared libraries", path.display());
    }
}

#[test]
#[ignore = "integration test: needs the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn packaged_binaries_run_and_report_the_buildpack_version() {
    let bp = unpacked_ours();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = extract_sidecar(&bp, dir.path());
    let out = Command::new(&sidecar)
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains(VERSION), "{version}");
    assert_eq!(
        std::fs::read_to_string(bp.path().join("VERSION"))
            .unwrap()
            .trim(),
        VERSION
    );

    // The multi-call binary runs its detect phase and declines (a supply-only buildpack), and
    // bin/detect always exits 1.
    let app = http_app();
    let out = Command::new(bp.path().join("lib/tls-sidecar-buildpack"))
        .arg("detect")
        .arg(&app)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = Command::new(bp.path().join("bin/detect"))
        .arg(&app)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // An unknown phase is a usage error with an explanation, not a crash.
    let out = Command::new(bp.path().join("lib/tls-sidecar-buildpack"))
        .arg("compile")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}
