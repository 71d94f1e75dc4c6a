//! Staging with our buildpack: what `cf push -b tls_sidecar_buildpack -b <final>` prints and
//! leaves in the droplet.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tls_sidecar_integration::AppInfo;
use tls_sidecar_integration::util::list_tree;

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_installs_the_sidecar_and_tells_how_to_allow_callers() {
    let app = AppInfo::new("myapp");
    let staging = stage_ok(
        &app,
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let out = strip_ansi(&staging.output);
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        format!("-----> TLS Sidecar Buildpack version {VERSION}"),
        format!("-----> Installing tls-sidecar {VERSION}"),
        "       Allow callers with: cf add-network-policy SOURCE_APP myapp --port 8443 --protocol tcp".to_owned(),
    ] {
        assert!(lines.contains(&expected.as_str()), "missing line {expected:?} in\n{out}");
    }
    assert!(
        !out.contains("**ERROR**") && !out.contains("**WARNING**"),
        "{out}"
    );

    // deps/0 holds exactly what DESIGN.md says supply writes; the app is untouched.
    assert_eq!(
        list_tree(&staging.deps_path(0)).unwrap(),
        [
            "bin/",
            "bin/tls-sidecar",
            "config.yml",
            "launch.yml",
            "profile.d/",
            "profile.d/tls-sidecar.sh",
            "tls-sidecar.yml"
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(staging.deps_path(0).join("bin/tls-sidecar"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        list_tree(&staging.build_dir).unwrap(),
        list_tree(&http_app()).unwrap()
    );
    let profile =
        std::fs::read_to_string(staging.deps_path(0).join("profile.d/tls-sidecar.sh")).unwrap();
    assert!(
        profile.contains("export TLS_SIDECAR_TLS_PORT=\"${TLS_SIDECAR_PORT:-8443}\""),
        "{profile}"
    );
    assert!(
        profile.contains("export TLS_SIDECAR_ADMIN=127.0.0.1:8444"),
        "{profile}"
    );
    // The libbuildpack-style final buildpack copied it for launch.
    assert!(staging.profile_dir().join("0_tls-sidecar.sh").is_file());
    let config = std::fs::read_to_string(staging.deps_path(0).join("config.yml")).unwrap();
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config).unwrap();
    assert_eq!(config["name"].as_str(), Some("tls-sidecar"));
    assert_eq!(config["version"].as_str(), Some(VERSION));
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn launch_yml_and_result_json_declare_a_32_mb_sidecar_for_web_at_its_absolute_deps_path() {
    let app = AppInfo::new("myapp");
    let staging = stage_ok(
        &app,
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let command = "/home/vcap/deps/0/bin/tls-sidecar --config /home/vcap/deps/0/tls-sidecar.yml";

    let launch: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(staging.deps_path(0).join("launch.yml")).unwrap(),
    )
    .unwrap();
    let expected: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "processes:\n- type: tls-sidecar\n  command: {command}\n  limits: {{memory: 32}}\n  \
         platforms: {{cloudfoundry: {{sidecar_for: [web]}}}}\n"
    ))
    .unwrap();
    assert_eq!(launch, expected);

    let result: serde_json::Value =
        serde_json::from_str(&staging.result_json_text().unwrap()).unwrap();
    assert_eq!(
        result["sidecars"],
        serde_json::json!([{"name": "tls-sidecar", "process_types": ["web"], "command": command, "memory": 32}])
    );
    assert_eq!(
        result["process_types"],
        serde_json::json!({"web": "python3 app.py"})
    );
    assert_eq!(
        result["lifecycle_metadata"]["buildpacks"][0],
        serde_json::json!({"key": our_key(), "name": "tls-sidecar", "version": VERSION})
    );
    assert_eq!(
        result["lifecycle_metadata"]["detected_buildpack"],
        "libbuildpack-final"
    );
    assert!(
        !command.contains("/tmp/contents"),
        "the staging DEPS_DIR must never leak into the command"
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn our_buildpack_works_at_supply_index_2() {
    let app = AppInfo::new("third");
    let staging = stage_ok(
        &app,
        &http_app(),
        vec![
            fixture("noop-supply"),
            another_noop_supply(),
            ours(),
            fixture("plain-final"),
        ],
    );
    assert_eq!(staging.deps_indices, ["0", "1", "2", "3"]);
    let result = staging.result.as_ref().unwrap();
    let sidecars = result.sidecars.as_ref().unwrap();
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    assert_eq!(
        sidecars[0].command,
        "/home/vcap/deps/2/bin/tls-sidecar --config /home/vcap/deps/2/tls-sidecar.yml"
    );
    assert_eq!(sidecars[0].memory, 32);
    assert!(staging.deps_path(2).join("bin/tls-sidecar").is_file());
    for i in [0, 1] {
        assert_eq!(
            list_tree(&staging.deps_path(i)).unwrap(),
            ["config.yml"],
            "deps/{i}"
        );
    }
}

/// A second no-op supply buildpack under another key (keys must be unique in one push).
fn another_noop_supply() -> tls_sidecar_integration::Buildpack {
    let mut bp = fixture("noop-supply");
    bp.key = "noop-supply-2".to_owned();
    bp
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn an_unknown_stack_fails_staging_and_installs_nothing() {
    let app = AppInfo::new("myapp").with_stack("cflinuxfs9");
    let staging = stage(
        &app,
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    assert_supply_failed(&staging, &["cflinuxfs9"]);
    assert_nothing_installed(&staging, 0);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn an_invalid_tls_sidecar_yml_fails_staging_naming_the_field_and_line() {
    let app = AppInfo::new("myapp");
    let dir = http_app_with(&[(
        "tls-sidecar.yml",
        "# TLS for myapp\nlisteners:\n  - port: eighty-four-forty-three\n",
    )]);
    let staging = stage(
        &app,
        &app_dir(&dir),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let out = assert_supply_failed(&staging, &["tls-sidecar.yml", "line 3", "port"]);
    let error_line = out.lines().find(|l| l.contains("**ERROR**")).unwrap();
    assert!(
        error_line.contains("tls-sidecar.yml") && error_line.contains("line 3"),
        "{error_line}"
    );
    assert_nothing_installed(&staging, 0);
}
