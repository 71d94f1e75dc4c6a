//! What goes into the zip, with which modes, under which name.

mod common;

use std::fs;

use common::{
    BUILDPACK_SAYS, SIDECAR_SAYS, fake_repo, package, read_tarball, read_zip, run_bytes,
    run_packager, zip_map,
};

const DIR: u32 = 0o040_755;
const EXEC: u32 = 0o100_755;
const FILE: u32 = 0o100_644;

fn layout(zip: &std::path::Path) -> Vec<(String, u32)> {
    read_zip(zip)
        .into_iter()
        .map(|(name, entry)| (name, entry.mode))
        .collect()
}

fn owned(entries: &[(&str, u32)]) -> Vec<(String, u32)> {
    entries
        .iter()
        .map(|(name, mode)| ((*name).to_owned(), *mode))
        .collect()
}

#[test]
fn the_uncached_zip_holds_exactly_the_shims_the_binary_the_manifest_version_and_readme() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(
        repo.path(),
        out.path(),
        &[
            "--uncached",
            "--dependency-uri-base",
            "https://deps.example.com/v1.0.0",
        ],
    );

    assert_eq!(
        layout(&zip),
        owned(&[
            ("README.md", FILE),
            ("VERSION", FILE),
            ("bin/", DIR),
            ("bin/detect", EXEC),
            ("bin/detect.bat", EXEC),
            ("bin/finalize", EXEC),
            ("bin/finalize.bat", EXEC),
            ("bin/release", EXEC),
            ("bin/release.bat", EXEC),
            ("bin/supply", EXEC),
            ("bin/supply.bat", EXEC),
            ("lib/", DIR),
            ("lib/tls-sidecar-buildpack", EXEC),
            ("manifest.yml", FILE),
        ])
    );
}

#[test]
fn the_cached_zip_adds_the_tarball_under_dependencies() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--cached"]);

    let manifest = common::zip_manifest(&zip);
    let file = manifest.dependencies[0]
        .file
        .clone()
        .expect("file: in the cached manifest");
    let hash_dir = file.rsplit_once('/').expect("dir").0.to_owned();
    assert_eq!(
        layout(&zip),
        owned(&[
            ("README.md", FILE),
            ("VERSION", FILE),
            ("bin/", DIR),
            ("bin/detect", EXEC),
            ("bin/detect.bat", EXEC),
            ("bin/finalize", EXEC),
            ("bin/finalize.bat", EXEC),
            ("bin/release", EXEC),
            ("bin/release.bat", EXEC),
            ("bin/supply", EXEC),
            ("bin/supply.bat", EXEC),
            ("dependencies/", DIR),
            (&format!("{hash_dir}/"), DIR),
            (&file, FILE),
            ("lib/", DIR),
            ("lib/tls-sidecar-buildpack", EXEC),
            ("manifest.yml", FILE),
        ])
    );
}

#[test]
fn the_zip_carries_the_repository_shims_verbatim_and_the_packaged_version() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--version", "2.3.4"]);
    let entries = zip_map(&zip);
    for phase in ["detect", "supply", "finalize", "release"] {
        let shim = fs::read(repo.path().join("bin").join(phase)).expect("shim");
        assert_eq!(entries[&format!("bin/{phase}")].data, shim, "bin/{phase}");
    }
    assert_eq!(entries["VERSION"].data, b"2.3.4\n");
    assert!(zip.ends_with("tls_sidecar_buildpack-cached-cflinuxfs4-v2.3.4.zip"));
}

#[test]
fn the_binaries_extracted_from_the_cached_zip_run() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--cached"]);
    let entries = zip_map(&zip);
    let scratch = tempfile::tempdir().expect("tempdir");

    let buildpack = &entries["lib/tls-sidecar-buildpack"].data;
    assert_eq!(
        run_bytes(scratch.path(), "tls-sidecar-buildpack", buildpack),
        BUILDPACK_SAYS
    );

    let file = common::zip_manifest(&zip).dependencies[0]
        .file
        .clone()
        .expect("file:");
    let tarball = read_tarball(&entries[&file].data);
    let (_, mode, sidecar) = tarball
        .iter()
        .find(|(path, ..)| path == "bin/tls-sidecar")
        .expect("bin/tls-sidecar");
    assert_eq!(*mode, 0o755);
    assert_eq!(
        run_bytes(scratch.path(), "tls-sidecar", sidecar),
        SIDECAR_SAYS
    );
}

#[test]
fn readme_is_left_out_when_the_repository_has_none() {
    let repo = fake_repo();
    fs::remove_file(repo.path().join("README.md")).expect("rm README");
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &[]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("       README.md not found in the repository, left out")
    );
    let zip = std::path::PathBuf::from(String::from_utf8(output.stdout).expect("utf-8").trim());
    assert!(!zip_map(&zip).contains_key("README.md"));
    assert!(
        !common::zip_manifest(&zip)
            .include_files
            .contains(&"README.md".to_owned())
    );
}

#[test]
fn a_missing_shim_fails_before_anything_is_written() {
    let repo = fake_repo();
    fs::remove_file(repo.path().join("bin/supply")).expect("rm supply");
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("**ERROR** ")
            && stderr.contains("bin/supply is listed in include_files but does not exist"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(out.path()).expect("list").count(),
        0,
        "nothing written"
    );
}

#[test]
fn the_zip_is_named_for_each_stack_and_stdout_is_its_absolute_path() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = fs::canonicalize(out.path()).expect("canonical");
    let cases = [
        (
            vec!["--stack", "cflinuxfs3"],
            "tls_sidecar_buildpack-cached-cflinuxfs3-v1.0.0.zip",
        ),
        (vec![], "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip"),
        (
            vec![
                "--stack",
                "cflinuxfs5",
                "--uncached",
                "--dependency-uri-base",
                "https://deps.example.com/v1.0.0",
            ],
            "tls_sidecar_buildpack-cflinuxfs5-v1.0.0.zip",
        ),
        (
            vec!["--stack", "any"],
            "tls_sidecar_buildpack-cached-v1.0.0.zip",
        ),
        (
            vec!["--stack", "cflinuxfs4", "--cached"],
            "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip",
        ),
        (
            vec!["--stack", "any", "--cached"],
            "tls_sidecar_buildpack-cached-v1.0.0.zip",
        ),
    ];
    for (args, name) in cases {
        let zip = package(repo.path(), out.path(), &args);
        assert_eq!(zip, out_dir.join(name), "{args:?}");
        assert!(zip.is_file());
    }
}

#[test]
fn a_relative_output_directory_still_prints_an_absolute_path() {
    let repo = fake_repo();
    let cwd = tempfile::tempdir().expect("tempdir");
    let bins = common::stand_ins();
    let output = std::process::Command::new(common::PACKAGER)
        .current_dir(cwd.path())
        .arg("--sidecar")
        .arg(&bins.sidecar)
        .arg("--buildpack-binary")
        .arg(&bins.buildpack)
        .arg("--repo-root")
        .arg(repo.path())
        .args(["--output", "rel/out"])
        .env_remove("TLS_SIDECAR_DEPENDENCY_URI_BASE")
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let expected = fs::canonicalize(cwd.path())
        .expect("canonical")
        .join("rel/out/tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip");
    assert_eq!(printed, format!("{}\n", expected.display()));
}

#[test]
fn every_output_file_has_a_sha256sum_file_beside_it() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--cached"]);
    let mut names: Vec<String> = fs::read_dir(out.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tls-sidecar-1.0.0-linux-x64.tgz",
            "tls-sidecar-1.0.0-linux-x64.tgz.sha256",
            "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip",
            "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip.cdx.json",
            "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip.sha256",
        ]
    );
    for name in [
        "tls-sidecar-1.0.0-linux-x64.tgz",
        "tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip",
    ] {
        let bytes = fs::read(out.path().join(name)).expect("read");
        let line = fs::read_to_string(out.path().join(format!("{name}.sha256"))).expect("read sha");
        assert_eq!(line, format!("{}  {name}\n", common::sha256_hex(&bytes)));
    }
    // And `sha256sum -c` agrees, run where the files are.
    let check = std::process::Command::new("sha256sum")
        .current_dir(out.path())
        .args([
            "-c",
            &format!(
                "{}.sha256",
                zip.file_name().expect("name").to_string_lossy()
            ),
        ])
        .output()
        .expect("sha256sum");
    assert!(check.status.success());
}

#[test]
fn progress_goes_to_stderr_in_the_cf_packager_voice() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &["--cached"]);
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    let first = stderr.lines().next().expect("a line");
    assert_eq!(
        first,
        "-----> Packaging tls_sidecar_buildpack-cached-cflinuxfs4-v1.0.0.zip"
    );
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("-----> ") || l.starts_with("       ")),
        "{stderr}"
    );
    assert!(stderr.contains(": static x86_64 executable, "));
    assert!(stderr.contains("       tls-sidecar-1.0.0-linux-x64.tgz ("));
}

#[test]
fn with_no_options_the_zip_is_cached_and_uncached_needs_a_uri_base() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &[]);
    let manifest = common::zip_manifest(&zip);
    let file = manifest.dependencies[0]
        .file
        .as_deref()
        .expect("a cached zip names the tarball's file");
    assert!(zip_map(&zip).contains_key(file), "{file} is not in the zip");
    assert!(
        manifest.dependencies[0]
            .uri
            .starts_with("https://unpublished.invalid/"),
        "{}",
        manifest.dependencies[0].uri
    );

    let out = tempfile::tempdir().expect("tempdir");
    let output = run_packager(repo.path(), out.path(), &["--uncached"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("**ERROR** An uncached buildpack downloads tls-sidecar-1.0.0-linux-x64.tgz")
            && stderr.contains("--dependency-uri-base URL"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(out.path()).expect("list").count(), 0);
}

#[test]
fn windows_builders_find_entry_points_that_refuse_with_linux_stacks_only() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let zip = package(repo.path(), out.path(), &["--stack", "any"]);
    let entries = zip_map(&zip);
    for phase in ["supply", "finalize", "release"] {
        let bat =
            String::from_utf8(entries[&format!("bin/{phase}.bat")].data.clone()).expect("text");
        // cmd.exe wants CRLF line ends.
        assert!(
            bat.split_terminator('\n').all(|l| l.ends_with('\r')),
            "{phase}.bat: {bat:?}"
        );
        assert!(bat.starts_with("@echo off\r\n"), "{bat}");
        assert!(
            bat.contains("**ERROR** The TLS sidecar buildpack supports Linux stacks only"),
            "{bat}"
        );
        assert!(bat.trim_end().ends_with("exit /b 1"), "{bat}");
    }
    // Detection stays quiet, like bin/detect: auto-detection of a Windows app is no error.
    let detect = String::from_utf8(entries["bin/detect.bat"].data.clone()).expect("text");
    assert!(
        !detect.lines().any(|l| l.trim_start().starts_with("echo ")),
        "{detect}"
    );
    assert!(detect.trim_end().ends_with("exit /b 1"), "{detect}");
}
