//! The CycloneDX SBOM beside each zip: its shape, its hashes, the crates it lists (checked
//! against what `cargo tree` says cargo builds), and its determinism.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fake_repo, package, run_packager, sha256_hex, stand_ins, workspace_root};
use serde_json::Value;

const TARGET: &str = "x86_64-unknown-linux-musl";
const ZIP: &str = "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip";

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace_root());
    c
}

/// This repository's `cargo metadata`, as scripts/package.sh makes it, in `dir`.
fn metadata_file(dir: &Path) -> PathBuf {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", TARGET])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("metadata.json");
    fs::write(&path, out.stdout).expect("write metadata");
    path
}

/// `name version` of every crate `cargo tree` says `package` is built from for the target.
fn cargo_tree(package: &str) -> BTreeSet<String> {
    let out = cargo()
        .args(["tree", "--locked", "-e", "normal", "--target", TARGET])
        .args(["-p", package, "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(format!(
                "{} {}",
                words.next()?,
                words.next()?.trim_start_matches('v')
            ))
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("read sbom")).expect("the SBOM is JSON")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

#[test]
fn the_sbom_lists_both_binaries_with_their_hashes_and_every_crate_cargo_builds_into_them() {
    let repo = fake_repo();
    let scratch = tempfile::tempdir().expect("tempdir");
    let metadata = metadata_file(scratch.path());
    let out = tempfile::tempdir().expect("tempdir");
    let meta_arg = metadata.to_str().expect("utf-8 path");
    let zip = package(
        repo.path(),
        out.path(),
        &["--cached", "--cargo-metadata", meta_arg],
    );

    let sbom_path = out.path().join(format!("{ZIP}.cdx.json"));
    let bom = read_json(&sbom_path);
    assert_eq!(str_at(&bom, "/bomFormat"), "CycloneDX");
    assert_eq!(str_at(&bom, "/specVersion"), "1.5");
    assert_eq!(bom["version"], 1);
    assert!(
        bom["metadata"].get("timestamp").is_none(),
        "no SOURCE_DATE_EPOCH, no timestamp"
    );
    assert_eq!(str_at(&bom, "/metadata/component/bom-ref"), ZIP);
    assert_eq!(str_at(&bom, "/metadata/component/version"), "1.0.0");
    assert_eq!(str_at(&bom, "/metadata/component/hashes/0/alg"), "SHA-256");
    assert_eq!(
        str_at(&bom, "/metadata/component/hashes/0/content"),
        sha256_hex(&fs::read(&zip).expect("zip"))
    );

    let components = bom["components"].as_array().expect("components");
    let bins = stand_ins();
    for (i, (name, binary)) in [
        ("tls-sidecar-buildpack", &bins.buildpack),
        ("tls-sidecar", &bins.sidecar),
    ]
    .into_iter()
    .enumerate()
    {
        let c = &components[i];
        assert_eq!(
            (c["type"].as_str(), c["name"].as_str()),
            (Some("application"), Some(name))
        );
        assert_eq!(
            str_at(c, "/hashes/0/content"),
            sha256_hex(&fs::read(binary).expect("binary")),
            "{name}"
        );
    }

    let mut listed = BTreeSet::new();
    for c in components {
        let (name, version) = (str_at(c, "/name"), str_at(c, "/version"));
        let purl = format!("pkg:cargo/{name}@{version}");
        assert_eq!(str_at(c, "/purl"), purl);
        assert_eq!(str_at(c, "/bom-ref"), purl);
        assert!(
            c["licenses"].as_array().is_some_and(|l| !l.is_empty()),
            "{purl} has no licence"
        );
        assert!(
            listed.insert(format!("{name} {version}")),
            "{purl} listed twice"
        );
    }
    let names: BTreeSet<&str> = components.iter().map(|c| str_at(c, "/name")).collect();
    for wanted in [
        "rustls",
        "aws-lc-rs",
        "aws-lc-sys",
        "ureq",
        "tls-sidecar-config",
    ] {
        assert!(names.contains(wanted), "{wanted} missing");
    }
    for banned in ["ring", "openssl", "openssl-sys", "native-tls"] {
        assert!(
            !names.contains(banned),
            "{banned} listed: it is not built into the binaries"
        );
    }
    // Nothing cargo links into either binary is left out.
    for package in ["tls-sidecar-buildpack", "tls-sidecar"] {
        let missing: Vec<String> = cargo_tree(package).difference(&listed).cloned().collect();
        assert!(
            missing.is_empty(),
            "{package}: not in the SBOM: {missing:?}"
        );
    }

    // The graph names only listed components, and the zip depends on the two binaries.
    let mut refs: BTreeSet<&str> = components.iter().map(|c| str_at(c, "/bom-ref")).collect();
    refs.insert(ZIP);
    for d in bom["dependencies"].as_array().expect("dependencies") {
        assert!(refs.contains(str_at(d, "/ref")), "{d}");
        for on in d["dependsOn"].as_array().expect("dependsOn") {
            assert!(refs.contains(on.as_str().expect("ref")), "{on}");
        }
    }
    assert_eq!(
        bom["dependencies"][0],
        serde_json::json!({"ref": ZIP, "dependsOn": ["pkg:cargo/tls-sidecar-buildpack@1.0.0", "pkg:cargo/tls-sidecar@1.0.0"]})
    );
}

#[test]
fn the_sbom_is_byte_identical_across_runs_and_dated_only_by_source_date_epoch() {
    let repo = fake_repo();
    let scratch = tempfile::tempdir().expect("tempdir");
    let metadata = metadata_file(scratch.path());
    let meta_arg = metadata.to_str().expect("utf-8 path");
    let sbom = |epoch: Option<&str>| {
        let out = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["--cached", "--cargo-metadata", meta_arg];
        if let Some(e) = epoch {
            args.extend(["--source-date-epoch", e]);
        }
        package(repo.path(), out.path(), &args);
        fs::read(out.path().join(format!("{ZIP}.cdx.json"))).expect("sbom")
    };

    assert_eq!(sbom(None), sbom(None));
    let dated = sbom(Some("1700000000"));
    assert_eq!(dated, sbom(Some("1700000000")));
    let bom: Value = serde_json::from_slice(&dated).expect("json");
    assert_eq!(str_at(&bom, "/metadata/timestamp"), "2023-11-14T22:13:20Z");
}

#[test]
fn without_cargo_metadata_the_sbom_still_names_the_zip_and_hashes_both_binaries() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    package(repo.path(), out.path(), &[]);

    let bom = read_json(
        &out.path()
            .join("tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip.cdx.json"),
    );
    let components = bom["components"].as_array().expect("components");
    assert_eq!(components.len(), 2);
    assert_eq!(
        str_at(&components[1], "/purl"),
        "pkg:cargo/tls-sidecar@1.0.0"
    );
    assert_eq!(
        str_at(&components[1], "/hashes/0/content"),
        sha256_hex(&fs::read(&stand_ins().sidecar).expect("sidecar"))
    );
    assert!(
        str_at(&bom, "/metadata/properties/0/value").contains("without cargo metadata"),
        "{bom}"
    );
}

#[test]
fn metadata_that_is_not_this_repositorys_fails_before_anything_is_written() {
    let repo = fake_repo();
    let scratch = tempfile::tempdir().expect("tempdir");
    let bad = scratch.path().join("metadata.json");
    fs::write(&bad, r#"{"packages": [], "resolve": {"nodes": []}}"#).expect("write");
    let out = tempfile::tempdir().expect("tempdir");

    let output = run_packager(
        repo.path(),
        out.path(),
        &["--cargo-metadata", bad.to_str().expect("utf-8")],
    );

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "is not usable cargo metadata: it has no resolved package tls-sidecar-buildpack"
        ),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(out.path()).expect("list").count(),
        0,
        "something was written"
    );
}
