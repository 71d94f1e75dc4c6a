//! Same inputs, same bytes: the zip and the tarball are reproducible.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use common::{fake_repo, package};

const TARBALL: &str = "tls-sidecar-1.0.0-linux-x64.tgz";

/// Sets a file's mtime, to prove that no timestamp from the inputs reaches the outputs.
fn touch(path: &std::path::Path, when: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
}

#[test]
fn two_runs_on_the_same_inputs_give_byte_identical_zips_and_tarballs() {
    for args in [
        &["--cached"][..],
        &[
            "--uncached",
            "--dependency-uri-base",
            "https://deps.example.com/v1.0.0",
        ][..],
        &["--stack", "any", "--cached"][..],
    ] {
        let repo = fake_repo();
        let first = tempfile::tempdir().expect("tempdir");
        let second = tempfile::tempdir().expect("tempdir");
        let zip_a = package(repo.path(), first.path(), args);
        let zip_b = package(repo.path(), second.path(), args);

        assert_eq!(
            fs::read(&zip_a).expect("a"),
            fs::read(&zip_b).expect("b"),
            "zip for {args:?}"
        );
        assert_eq!(
            fs::read(first.path().join(TARBALL)).expect("a"),
            fs::read(second.path().join(TARBALL)).expect("b"),
            "tarball for {args:?}"
        );
    }
}

#[test]
fn timestamps_modes_and_location_of_the_inputs_do_not_change_the_bytes() {
    let repo_a = fake_repo();
    let repo_b = fake_repo();
    // The second checkout: other mtimes, executable shims, another directory.
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    for name in [
        "manifest.yml",
        "VERSION",
        "README.md",
        "bin/detect",
        "bin/supply",
        "bin/finalize",
        "bin/release",
    ] {
        let path = repo_b.path().join(name);
        touch(&path, later);
        if name.starts_with("bin/") {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let out_a = tempfile::tempdir().expect("tempdir");
    let out_b = tempfile::tempdir().expect("tempdir");
    let zip_a = package(repo_a.path(), out_a.path(), &["--cached"]);
    let zip_b = package(repo_b.path(), out_b.path(), &["--cached"]);
    assert_eq!(fs::read(zip_a).expect("a"), fs::read(zip_b).expect("b"));
}

#[test]
fn packaging_again_into_the_same_directory_replaces_the_files_with_identical_ones() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--cached"]);
    let before = fs::read(&zip).expect("zip");
    let again = package(repo.path(), out.path(), &["--cached"]);
    assert_eq!(zip, again);
    assert_eq!(before, fs::read(&again).expect("zip"));
    assert_eq!(
        fs::read_dir(out.path()).expect("list").count(),
        5,
        "no temporary files left behind"
    );
}
