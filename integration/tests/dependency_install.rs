//! How supply gets the sidecar tarball: from an operator's mirror for the uncached zip, and what
//! it refuses (a checksum mismatch, hostile tarball entries), each without installing anything.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::BTreeMap;
use tls_sidecar_integration::buildpacks::{
    OUR_KEY, TarEntry, Unpacked, make_tgz, ours_cached, ours_uncached,
};
use tls_sidecar_integration::http::FileServer;
use tls_sidecar_integration::util::{list_tree, random_hex};
use tls_sidecar_integration::{AppInfo, Buildpack, Staging};

const DEP: &str = "tls-sidecar";

/// The sidecar tarball from our cached zip, and its file name.
fn real_tarball() -> (Vec<u8>, String) {
    let cached = Unpacked::new(&ours_cached().unwrap()).unwrap();
    let file = cached.dependency_file(DEP).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    (std::fs::read(&file).unwrap(), name)
}

/// The sidecar binary inside the real tarball.
fn real_sidecar_binary() -> Vec<u8> {
    let (tgz, _) = real_tarball();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "bin/tls-sidecar" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            return data;
        }
    }
    panic!("the tarball has no bin/tls-sidecar");
}

/// Stages the http-app with a modified copy of our cached zip at index 0.
fn stage_with(copy: &Unpacked) -> Staging {
    require_root_now();
    let zip = copy.zip("tampered").unwrap();
    stage(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![Buildpack::new(OUR_KEY, zip), fixture("libbuildpack-final")],
    )
}

fn require_root_now() {
    tls_sidecar_integration::require_root().unwrap();
}

/// Our cached zip with the tarball replaced by `entries` (and a matching sha256).
fn with_tarball(entries: &[TarEntry]) -> Unpacked {
    require_root_now();
    let copy = Unpacked::new(&ours_cached().unwrap()).unwrap();
    copy.replace_dependency(DEP, &make_tgz(entries).unwrap())
        .unwrap();
    copy
}

fn sidecar_entry() -> TarEntry {
    TarEntry::File {
        name: "bin/tls-sidecar".into(),
        mode: 0o755,
        data: b"#!/bin/sh\necho not really\n".to_vec(),
    }
}

/// Nothing outside deps/<idx> appeared either: the droplet holds only what the builder and the
/// final buildpack made.
fn assert_nothing_escaped(staging: &Staging, marker: &str) {
    let tree = list_tree(staging.root()).unwrap();
    assert!(
        !tree.iter().any(|p| p.contains(marker)),
        "{marker} escaped into {tree:#?}"
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn the_uncached_buildpack_downloads_the_sidecar_from_the_manifest_uri() {
    require_root_now();
    let (tgz, name) = real_tarball();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join(&name);
    std::fs::write(&served, &tgz).unwrap();
    let mirror = FileServer::start(BTreeMap::from([(name.clone(), served)])).unwrap();

    // An operator's mirror: same tarball, same sha256, another URI.
    let copy = Unpacked::new(&ours_uncached().unwrap()).unwrap();
    assert!(
        copy.dependency_file(DEP).is_err(),
        "the uncached zip must not contain the tarball"
    );
    let url = mirror.url(&name);
    copy.edit_dependency(DEP, |d| {
        d.insert("uri".into(), url.clone().into());
        Ok(())
    })
    .unwrap();
    let staging = stage_with(&copy);
    staging.ensure_success().unwrap();
    assert!(mirror.hits() >= 1, "supply never asked the mirror");
    let out = strip_ansi(&staging.output);
    assert!(
        out.contains(&format!("-----> Installing tls-sidecar {VERSION}")),
        "{out}"
    );
    assert!(
        out.contains(&url),
        "the download should be logged with its URI\n{out}"
    );
    assert_eq!(
        std::fs::read(staging.deps_path(0).join("bin/tls-sidecar")).unwrap(),
        real_sidecar_binary()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_sha256_mismatch_fails_staging_and_installs_nothing() {
    require_root_now();
    let copy = Unpacked::new(&ours_cached().unwrap()).unwrap();
    let wrong = "0".repeat(64);
    copy.edit_dependency(DEP, |d| {
        d.insert("sha256".into(), wrong.clone().into());
        Ok(())
    })
    .unwrap();
    let staging = stage_with(&copy);
    assert_supply_failed(&staging, &["sha256 mismatch", &wrong]);
    assert_nothing_installed(&staging, 0);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tarball_entry_climbing_out_with_dotdot_is_refused() {
    let marker = format!("dotdot-{}", random_hex(4));
    let copy = with_tarball(&[
        sidecar_entry(),
        TarEntry::File {
            name: format!("../{marker}"),
            mode: 0o644,
            data: b"x".to_vec(),
        },
    ]);
    let staging = stage_with(&copy);
    assert_supply_failed(&staging, &[&format!("../{marker}")]);
    assert_nothing_installed(&staging, 0);
    assert_nothing_escaped(&staging, &marker);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tarball_entry_with_an_absolute_path_is_refused() {
    let marker = format!("tsb-absolute-{}", random_hex(4));
    let target = std::env::temp_dir().join(&marker);
    let copy = with_tarball(&[
        sidecar_entry(),
        TarEntry::File {
            name: target.display().to_string(),
            mode: 0o644,
            data: b"x".to_vec(),
        },
    ]);
    let staging = stage_with(&copy);
    assert_supply_failed(&staging, &[&marker]);
    assert_nothing_installed(&staging, 0);
    assert!(!target.exists(), "{} was written", target.display());
    assert_nothing_escaped(&staging, &marker);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_tarball_symlink_escaping_the_deps_dir_is_refused() {
    let marker = format!("through-link-{}", random_hex(4));
    // `bin/up` points four levels up (out of deps/<idx>, out of the droplet); a file written
    // through it would land outside.
    let copy = with_tarball(&[
        sidecar_entry(),
        TarEntry::Symlink {
            name: "bin/up".into(),
            target: "../../../..".into(),
        },
        TarEntry::File {
            name: format!("bin/up/{marker}"),
            mode: 0o644,
            data: b"x".to_vec(),
        },
    ]);
    let staging = stage_with(&copy);
    assert_supply_failed(&staging, &["bin/up"]);
    assert_nothing_installed(&staging, 0);
    assert_nothing_escaped(&staging, &marker);
}
