//! detect, finalize, release, the multi-call dispatch and the bin/ shims.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn detect_exits_1_and_prints_nothing() {
    let app = tempfile::tempdir().unwrap();
    for args in [
        vec!["detect", s(app.path())],
        vec!["detect"],
        vec!["detect", "a", "b"],
    ] {
        let run = run(&args, &[]);
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (1, "", ""),
            "{args:?}"
        );
    }
}

#[test]
fn release_prints_yaml_with_no_default_process_types() {
    let app = tempfile::tempdir().unwrap();

    let run = run(&["release", s(app.path())], &[]);

    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "---\ndefault_process_types: {}\n");
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
    let types = parsed
        .get("default_process_types")
        .and_then(|v| v.as_mapping())
        .unwrap();
    assert!(types.is_empty());
}

#[test]
fn release_errors_go_to_stderr_so_stdout_stays_parseable() {
    let run = run(&["release"], &[]);
    assert_eq!(run.code, 64);
    assert_eq!(run.stdout, "");
    assert!(
        strip_ansi(&run.stderr)
            .starts_with("       **ERROR** release takes 1 argument (BUILD_DIR), got 0\n"),
        "{}",
        run.stderr
    );
}

struct Finalize {
    stage: Stage,
    profile: PathBuf,
}

/// Two supply buildpacks before us: deps/0 (ours, with profile.d) and deps/1 (bin + lib).
fn finalize_layout() -> Finalize {
    let stage = Stage::new();
    let d0 = stage.idx("0");
    let d1 = stage.idx("1");
    stage.idx("2");
    fs::create_dir_all(d0.join("bin")).expect("test setup");
    fs::create_dir_all(d0.join("profile.d")).expect("test setup");
    fs::write(
        d0.join("profile.d/tls-sidecar.sh"),
        "export TLS_SIDECAR_PORT=8443\n",
    )
    .expect("test setup");
    fs::set_permissions(
        d0.join("profile.d/tls-sidecar.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("test setup");
    fs::create_dir_all(d1.join("bin")).expect("test setup");
    fs::create_dir_all(d1.join("lib")).expect("test setup");
    fs::create_dir_all(d1.join("profile.d")).expect("test setup");
    fs::write(d1.join("profile.d/other.sh"), "export OTHER=1\n").expect("test setup");
    let profile = stage.path("profile.d");
    fs::create_dir(&profile).expect("test setup");
    Finalize { stage, profile }
}

fn finalize(f: &Finalize, env: &[(&str, &str)]) -> Run {
    let (app, cache, deps, bp) = (f.stage.app(), f.stage.cache(), f.stage.deps(), f.stage.bp());
    run(
        &[
            "--buildpack-dir",
            s(&bp),
            "finalize",
            s(&app),
            s(&cache),
            s(&deps),
            "2",
            s(&f.profile),
        ],
        env,
    )
}

#[test]
fn finalize_writes_000_multi_supply_and_copies_every_profile_d_script() {
    let f = finalize_layout();
    f.stage.app_file("Procfile", "web: ./server\n");
    let before = f.stage.tree();

    let run = finalize(&f, &[]);

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.lines(),
        [
            "-----> TLS Sidecar Buildpack version 1.2.3",
            "-----> Setting up the launch environment",
            "       PATH gets $DEPS_DIR/1/bin:$DEPS_DIR/0/bin",
            "       LD_LIBRARY_PATH gets $DEPS_DIR/1/lib",
            "       LIBRARY_PATH gets $DEPS_DIR/1/lib",
            "       Copied deps/0/profile.d/tls-sidecar.sh to profile.d/0_tls-sidecar.sh",
            "       Copied deps/1/profile.d/other.sh to profile.d/1_other.sh",
        ]
    );
    assert_eq!(
        changed(&before, &f.stage.tree()),
        [
            "profile.d/000_multi-supply.sh",
            "profile.d/0_tls-sidecar.sh",
            "profile.d/1_other.sh"
        ]
    );
    assert_eq!(
        fs::read_to_string(f.profile.join("000_multi-supply.sh")).unwrap(),
        "export PATH=$DEPS_DIR/1/bin:$DEPS_DIR/0/bin$([[ ! -z \"${PATH:-}\" ]] && echo \":$PATH\")\n\
         export LD_LIBRARY_PATH=$DEPS_DIR/1/lib$([[ ! -z \"${LD_LIBRARY_PATH:-}\" ]] && echo \":$LD_LIBRARY_PATH\")\n\
         export LIBRARY_PATH=$DEPS_DIR/1/lib$([[ ! -z \"${LIBRARY_PATH:-}\" ]] && echo \":$LIBRARY_PATH\")\n"
    );
    assert_eq!(
        fs::read_to_string(f.profile.join("0_tls-sidecar.sh")).unwrap(),
        "export TLS_SIDECAR_PORT=8443\n"
    );
    let mode = fs::metadata(f.profile.join("0_tls-sidecar.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn the_multi_supply_script_puts_deps_bins_on_path_when_sourced() {
    let f = finalize_layout();
    f.stage.app_file("Procfile", "web: ./server\n");
    assert_eq!(finalize(&f, &[]).code, 0);
    let script = f.profile.join("000_multi-supply.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "DEPS_DIR=/home/vcap/deps; PATH=/usr/bin; source {}; echo \"$PATH\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "/home/vcap/deps/1/bin:/home/vcap/deps/0/bin:/usr/bin\n"
    );
}

#[test]
fn finalize_without_a_procfile_warns_that_the_app_needs_a_start_command() {
    let f = finalize_layout();

    let run = finalize(
        &f,
        &[("VCAP_APPLICATION", r#"{"application_name":"myapp"}"#)],
    );

    assert_eq!(run.code, 0);
    let lines = run.lines();
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "       **WARNING** The app has no Procfile: unless you pushed with -c, it has no start command (this buildpack starts only the tls-sidecar sidecar).",
            "       Fix: cf push myapp -c '<command>', or add a Procfile with a line \"web: <command>\"",
        ]
    );
}

#[test]
fn finalize_with_the_wrong_number_of_arguments_prints_its_usage() {
    let run = run(&["finalize", "/tmp"], &[]);
    assert_eq!(run.code, 64);
    assert_eq!(
        run.lines()[0],
        "       **ERROR** finalize takes 5 arguments (BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX PROFILE_DIR), got 1"
    );
}

#[test]
fn an_unknown_phase_is_explained() {
    let run = run(&["compile", "/tmp/app", "/tmp/cache"], &[]);
    assert_eq!(run.code, 64);
    assert_eq!(run.stdout, "");
    assert_eq!(
        strip_ansi(&run.stderr),
        "       **ERROR** \"compile\" is not a buildpack phase (expected detect, supply, finalize or release)\n\
         \x20      tls-sidecar-buildpack is one binary for every phase: the bin/ scripts run it as lib/tls-sidecar-buildpack <phase> ARGS...\n\
         \x20      Fix: run it through bin/<phase>, e.g. bin/supply BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX\n"
    );
}

/// The repo's bin/ shims copied into a temp buildpack, with or without the packaged binary.
fn shim_buildpack(with_binary: bool) -> tempfile::TempDir {
    let bp = tempfile::tempdir().expect("test setup");
    let repo_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bin");
    fs::create_dir(bp.path().join("bin")).expect("test setup");
    for phase in ["detect", "supply", "finalize", "release"] {
        let to = bp.path().join("bin").join(phase);
        fs::copy(repo_bin.join(phase), &to).expect("test setup");
        assert!(
            fs::metadata(&to).expect("test setup").permissions().mode() & 0o111 != 0,
            "bin/{phase} is not executable"
        );
    }
    if with_binary {
        fs::create_dir(bp.path().join("lib")).expect("test setup");
        std::os::unix::fs::symlink(BIN, bp.path().join("lib/tls-sidecar-buildpack"))
            .expect("test setup");
    }
    bp
}

fn shim(bp: &Path, phase: &str, args: &[&str]) -> Run {
    let out = Command::new(bp.join("bin").join(phase))
        .args(args)
        .output()
        .expect("test setup");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("test setup"),
        stderr: String::from_utf8(out.stderr).expect("test setup"),
    }
}

#[test]
fn a_shim_without_the_packaged_binary_says_to_package_the_buildpack() {
    let bp = shim_buildpack(false);
    for phase in ["supply", "finalize", "release"] {
        let run = shim(bp.path(), phase, &["/tmp/app"]);
        assert_eq!(run.code, 1, "{phase}");
        assert_eq!(
            run.stderr,
            "       **ERROR** This buildpack has not been packaged: run scripts/package.sh and upload the zip (cf create-buildpack)\n"
        );
    }
}

#[test]
fn the_detect_shim_exits_1_packaged_or_not() {
    for with_binary in [false, true] {
        let bp = shim_buildpack(with_binary);
        let run = shim(bp.path(), "detect", &["/tmp/app"]);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (1, ""),
            "packaged: {with_binary}"
        );
    }
}

#[test]
fn the_release_shim_runs_the_packaged_binary_with_its_phase() {
    let bp = shim_buildpack(true);
    let run = shim(bp.path(), "release", &["/tmp/app"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "---\ndefault_process_types: {}\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn as_the_final_buildpack_after_its_own_supply_the_version_header_is_printed_once() {
    let f = finalize_layout();
    f.stage.app_file("Procfile", "web: ./server\n");
    // Supply of this buildpack (index 2) ran first in the same staging.
    let mine = f.stage.deps().join("2");
    fs::create_dir_all(&mine).expect("test setup");
    fs::write(
        mine.join("config.yml"),
        "name: tls-sidecar\nversion: 1.2.3\nconfig: {}\n",
    )
    .expect("test setup");

    let run = finalize(&f, &[]);

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.lines()[0], "-----> Setting up the launch environment");
    assert!(
        !run.stdout.contains("TLS Sidecar Buildpack version"),
        "{}",
        run.stdout
    );
}
