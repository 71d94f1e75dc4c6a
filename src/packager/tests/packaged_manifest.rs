//! The manifest.yml inside the zip: uri, sha256, cf_stacks, file, and refusing to re-package it.

mod common;

use std::fs;
use std::process::Command;

use common::{fake_repo, package, read_tarball, run_packager, sha256_hex, zip_manifest, zip_map};
use tls_sidecar_packager::manifest::DefaultVersion;

/// Where an operator publishes the tarball (`--dependency-uri-base <RELEASES>/v<version>`).
const RELEASES: &str = "https://deps.example.com/tls-sidecar";

#[test]
fn the_uncached_manifest_points_at_the_given_uri_base_and_names_the_stack() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let base = format!("{RELEASES}/v1.0.0");
    let args = [
        "--stack",
        "cflinuxfs4",
        "--uncached",
        "--dependency-uri-base",
        &base,
    ];
    let zip = package(repo.path(), out.path(), &args);
    let manifest = zip_manifest(&zip);

    assert_eq!(manifest.language, "tls-sidecar");
    assert_eq!(manifest.stack.as_deref(), Some("cflinuxfs4"));
    assert_eq!(
        manifest.default_versions,
        [DefaultVersion {
            name: "tls-sidecar".into(),
            version: "1.0.0".into()
        }]
    );
    let [dep] = manifest.dependencies.as_slice() else {
        panic!("one dependency")
    };
    assert_eq!(dep.name, "tls-sidecar");
    assert_eq!(dep.version, "1.0.0");
    assert_eq!(
        dep.uri,
        format!("{RELEASES}/v1.0.0/tls-sidecar-1.0.0-linux-x64.tgz")
    );
    assert_eq!(dep.cf_stacks, ["cflinuxfs4"]);
    assert_eq!(dep.file, None);
    let published = fs::read(out.path().join("tls-sidecar-1.0.0-linux-x64.tgz")).expect("tarball");
    assert_eq!(dep.sha256, sha256_hex(&published));
    assert_eq!(
        manifest.include_files,
        [
            "README.md",
            "VERSION",
            "bin/detect",
            "bin/finalize",
            "bin/release",
            "bin/supply",
            "bin/detect.bat",
            "bin/finalize.bat",
            "bin/release.bat",
            "bin/supply.bat",
            "lib/tls-sidecar-buildpack",
            "manifest.yml"
        ]
    );
}

#[test]
fn the_cached_manifest_file_is_in_the_zip_at_the_md5_of_the_uri_and_matches_the_sha256() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(
        repo.path(),
        out.path(),
        &[
            "--cached",
            "--dependency-uri-base",
            "https://example.com/deps/",
        ],
    );
    let manifest = zip_manifest(&zip);
    let dep = &manifest.dependencies[0];

    assert_eq!(
        dep.uri,
        "https://example.com/deps/tls-sidecar-1.0.0-linux-x64.tgz"
    );
    let md5 = md5sum(dep.uri.as_bytes());
    let file = dep.file.clone().expect("file:");
    assert_eq!(
        file,
        format!("dependencies/{md5}/tls-sidecar-1.0.0-linux-x64.tgz")
    );

    let entries = zip_map(&zip);
    let tarball = &entries
        .get(&file)
        .expect("the file: path is in the zip")
        .data;
    assert_eq!(
        dep.sha256,
        sha256_hex(tarball),
        "sha256 of the tarball actually in the zip"
    );
    assert_eq!(
        tarball,
        &fs::read(out.path().join("tls-sidecar-1.0.0-linux-x64.tgz")).expect("tarball")
    );
    let names: Vec<String> = read_tarball(tarball)
        .into_iter()
        .map(|(path, ..)| path)
        .collect();
    assert_eq!(names, ["bin/", "bin/tls-sidecar"]);
}

#[test]
fn any_stack_omits_stack_and_lists_all_three_stacks() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--stack", "any"]);
    let manifest = zip_manifest(&zip);
    assert_eq!(manifest.stack, None);
    assert_eq!(
        manifest.dependencies[0].cf_stacks,
        ["cflinuxfs3", "cflinuxfs4", "cflinuxfs5"]
    );
    let text = String::from_utf8(zip_map(&zip)["manifest.yml"].data.clone()).expect("utf-8");
    assert!(!text.contains("stack:"), "no top-level stack key:\n{text}");
}

#[test]
fn the_dependency_uri_base_can_come_from_the_environment() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let bins = common::stand_ins();
    let output = Command::new(common::PACKAGER)
        .arg("--sidecar")
        .arg(&bins.sidecar)
        .arg("--buildpack-binary")
        .arg(&bins.buildpack)
        .arg("--repo-root")
        .arg(repo.path())
        .arg("--output")
        .arg(out.path())
        .env("TLS_SIDECAR_DEPENDENCY_URI_BASE", "file:///srv/deps")
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let zip = std::path::PathBuf::from(String::from_utf8(output.stdout).expect("utf-8").trim());
    assert_eq!(
        zip_manifest(&zip).dependencies[0].uri,
        "file:///srv/deps/tls-sidecar-1.0.0-linux-x64.tgz"
    );
}

#[test]
fn the_version_flag_wins_over_the_version_file_everywhere() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let base = format!("{RELEASES}/v1.1.0-rc.1");
    let args = ["--version", "1.1.0-rc.1", "--dependency-uri-base", &base];
    let zip = package(repo.path(), out.path(), &args);
    let manifest = zip_manifest(&zip);
    assert_eq!(manifest.default_versions[0].version, "1.1.0-rc.1");
    assert_eq!(manifest.dependencies[0].version, "1.1.0-rc.1");
    assert_eq!(
        manifest.dependencies[0].uri,
        format!("{RELEASES}/v1.1.0-rc.1/tls-sidecar-1.1.0-rc.1-linux-x64.tgz")
    );
}

#[test]
fn re_packaging_a_packaged_manifest_fails() {
    for (args, field) in [
        (&["--stack", "cflinuxfs4"][..], "stack"),
        (&["--stack", "any"][..], "uri"),
    ] {
        let repo = fake_repo();
        let out = tempfile::tempdir().expect("tempdir");
        let zip = package(repo.path(), out.path(), args);
        fs::write(
            repo.path().join("manifest.yml"),
            &zip_map(&zip)["manifest.yml"].data,
        )
        .expect("swap manifest");

        let again = tempfile::tempdir().expect("tempdir");
        let output = run_packager(repo.path(), again.path(), args);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("**ERROR** Cannot package from already packaged buildpack manifest")
                && stderr.contains(&format!("has `{field}`")),
            "{stderr}"
        );
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn a_stack_the_source_manifest_does_not_list_is_refused() {
    let repo = fake_repo();
    let path = repo.path().join("manifest.yml");
    let text = fs::read_to_string(&path).expect("manifest");
    fs::write(&path, text.replace("      - cflinuxfs3\n", "")).expect("write");
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &["--stack", "cflinuxfs3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("Stack `cflinuxfs3` not found in manifest")
    );
}

#[test]
fn an_unknown_stack_is_a_usage_error() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &["--stack", "cflinuxfs2"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage exit code");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("expected one of cflinuxfs3, cflinuxfs4, cflinuxfs5 or any")
    );
}

/// The md5 of `input` as the `md5sum` tool computes it: an independent check of the cached path.
fn md5sum(input: &[u8]) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    text.split_whitespace().next().expect("a hash").to_owned()
}
