//! scripts/package.sh end to end: real release musl builds of the sidecar and the buildpack.
//! Slow (a cold release build takes minutes), hence ignored; run with
//! `cargo test -p tls-sidecar-packager --test package_script -- --ignored`.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::{read_tarball, workspace_root, zip_manifest, zip_map};
use tls_sidecar_packager::check_static_x86_64_executable;

#[test]
#[ignore = "builds the release musl binaries: minutes"]
fn package_sh_cached_prints_the_zip_path_last_and_the_zip_holds_runnable_static_binaries() {
    let out = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    // From an unrelated directory, to prove the script does not depend on the caller's cwd.
    let output = Command::new(workspace_root().join("scripts/package.sh"))
        .current_dir(cwd.path())
        .arg("--cached")
        .arg("--output")
        .arg(out.path())
        .env_remove("TLS_SIDECAR_DEPENDENCY_URI_BASE")
        .output()
        .expect("run scripts/package.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/package.sh failed:\n{stderr}"
    );

    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is only the zip path: {stdout:?}"
    );
    let zip = PathBuf::from(stdout.trim_end());
    let version = fs::read_to_string(workspace_root().join("VERSION")).expect("VERSION");
    let expected_name = format!(
        "tls_sidecar_buildpack-cached-cflinuxfs4-v{}.zip",
        version.trim()
    );
    assert_eq!(
        zip,
        fs::canonicalize(out.path())
            .expect("canonical")
            .join(expected_name)
    );

    let entries = zip_map(&zip);
    let scratch = tempfile::tempdir().expect("tempdir");

    let buildpack = &entries["lib/tls-sidecar-buildpack"].data;
    check_static_x86_64_executable(buildpack).expect("the buildpack binary is static");
    let path = scratch.path().join("tls-sidecar-buildpack");
    fs::write(&path, buildpack).expect("write");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // Runnable: the kernel executes it and it exits on its own (whatever it thinks of no args).
    let ran = Command::new(&path)
        .output()
        .expect("the buildpack binary executes");
    assert!(
        ran.status.code().is_some(),
        "killed by a signal: {:?}",
        ran.status
    );

    let file = zip_manifest(&zip).dependencies[0]
        .file
        .clone()
        .expect("file: in the cached zip");
    let tarball = read_tarball(&entries[&file].data);
    let (_, _, sidecar) = tarball
        .iter()
        .find(|(p, ..)| p == "bin/tls-sidecar")
        .expect("bin/tls-sidecar");
    check_static_x86_64_executable(sidecar).expect("the sidecar is static");
    let path = scratch.path().join("sidecar");
    fs::create_dir(&path).expect("mkdir");
    let printed = {
        let binary = path.join("tls-sidecar");
        fs::write(&binary, sidecar).expect("write");
        fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let out = Command::new(&binary)
            .arg("--version")
            .output()
            .expect("run tls-sidecar");
        assert!(out.status.success(), "tls-sidecar --version failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        printed.contains(version.trim()),
        "tls-sidecar --version printed {printed:?}"
    );
}

#[test]
fn package_sh_uncached_without_a_uri_base_stops_before_building_and_says_how_to_publish() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = Command::new(workspace_root().join("scripts/package.sh"))
        .args(["--uncached", "--output"])
        .arg(out.path())
        .env_remove("TLS_SIDECAR_DEPENDENCY_URI_BASE")
        .output()
        .expect("run scripts/package.sh");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("**ERROR** --uncached needs --dependency-uri-base URL")
            && stderr.contains("Or leave out --uncached"),
        "{stderr}"
    );
    // Refused before the (minutes long) release build and before writing anything.
    assert!(!stderr.contains("Building tls-sidecar"), "{stderr}");
    assert_eq!(fs::read_dir(out.path()).expect("list").count(), 0);
}

#[test]
#[ignore = "builds the release musl binaries: minutes"]
fn pre_package_builds_every_include_file_the_repository_lacks_as_buildpack_packager_expects() {
    let root = workspace_root();
    // What libbuildpack's buildpack-packager does before zipping: run the manifest's
    // pre_package command in the buildpack directory...
    let manifest: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&fs::read_to_string(root.join("manifest.yml")).expect("read"))
            .expect("yaml");
    let hook = manifest["pre_package"]
        .as_str()
        .expect("pre_package is set");
    let output = Command::new(root.join(hook))
        .current_dir(&root)
        .output()
        .expect("run pre_package");
    assert!(
        output.status.success(),
        "{hook} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // ...then open every include_files entry.
    let files = manifest["include_files"].as_sequence().expect("list");
    for file in files {
        let file = file.as_str().expect("a path");
        assert!(root.join(file).is_file(), "{file} is missing after {hook}");
    }
    let binary = fs::read(root.join("lib/tls-sidecar-buildpack")).expect("built binary");
    check_static_x86_64_executable(&binary).expect("a static x86_64 executable");
}
