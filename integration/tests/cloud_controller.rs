//! What Cloud Controller does with the droplet's sidecars after staging, and the tasks it runs
//! without them: staging refuses the sidecar memory Cloud Controller would reject, the names
//! the buildpack and its docs use never conflict with its own sidecar, and `cf run-task` gets
//! no egress addresses that would point at a sidecar that is not there.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tls_sidecar_integration::cc::{ManifestSidecar, Refusal, assign_droplet};
use tls_sidecar_integration::{AppInfo, LaunchOptions};

fn big_app() -> AppInfo {
    let mut app = AppInfo::new("big");
    // At least CC's minimum staging memory (1024), so that staging's MEMORY_LIMIT is the
    // process memory Cloud Controller checks against.
    app.memory_mb = 2048;
    app
}

fn manifest_sidecar(name: &str) -> ManifestSidecar {
    ManifestSidecar {
        name: name.to_owned(),
        process_types: vec!["web".to_owned()],
        memory_mb: Some(32),
    }
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn staging_refuses_exactly_the_sidecar_memory_cloud_controller_would_reject() {
    // Just below the process memory: staged (with a warning), and Cloud Controller accepts it.
    let below = stage_with_config(&big_app(), "sidecar:\n  memory: 2047M\n");
    let out = strip_ansi(&below.output);
    assert!(
        out.contains("**WARNING** The sidecar takes 2047 MB of the app's 2048 MB (MEMORY_LIMIT), more than a quarter"),
        "{out}"
    );
    let droplet = below.droplet().unwrap();
    assert_eq!(assign_droplet(&droplet, &[], 2048), Ok(()));

    // Equal to it: Cloud Controller would refuse the droplet...
    let mut equal = droplet.clone();
    if let Some(sidecars) = equal.result.sidecars.as_mut() {
        sidecars[0].memory = 2048;
    }
    assert_eq!(
        assign_droplet(&equal, &[], 2048),
        Err(Refusal::SidecarMemory {
            process_type: "web".into(),
            sidecars: 2048,
            process: 2048,
        })
    );
    // ...so staging refuses it first, with both numbers and both fixes, installing nothing.
    let dir = http_app_with(&[("tls-sidecar.yml", "sidecar:\n  memory: 2G\n")]);
    let refused = stage(
        &big_app(),
        &app_dir(&dir),
        vec![ours(), fixture("libbuildpack-final")],
    );
    assert_supply_failed(
        &refused,
        &[
            "**ERROR** The sidecar's memory (2048 MB, sidecar.memory) is not less than the app's (2048 MB, MEMORY_LIMIT)",
            "Nothing was installed.",
            "Fix: lower sidecar.memory in tls-sidecar.yml (e.g. 32), or give the app more memory: cf scale big -m 8192M, then cf push big",
        ],
    );
    assert_nothing_installed(&refused, 0);

    // The default 32 MB: no warning, accepted.
    let default = stage_with_config(&big_app(), "");
    assert!(
        !strip_ansi(&default.output).contains("WARNING"),
        "{}",
        default.output
    );
    assert_eq!(
        assign_droplet(&default.droplet().unwrap(), &[], 2048),
        Ok(())
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_manifest_sidecar_named_like_the_buildpacks_conflicts_and_the_names_the_docs_advise_do_not() {
    let declared = stage_with_config(&AppInfo::new("api"), "")
        .droplet()
        .unwrap();
    assert_eq!(
        assign_droplet(&declared, &[manifest_sidecar("tls-sidecar")], 1024),
        Err(Refusal::ConflictingSidecars("tls-sidecar".into()))
    );
    // The padded-index warning's advice, and the README's example for other sidecars.
    for name in ["tls-sidecar-manifest", "tls"] {
        assert_eq!(
            assign_droplet(&declared, &[manifest_sidecar(name)], 1024),
            Ok(()),
            "{name}"
        );
    }
    // `sidecar.process_types: []`: the droplet declares none, so the manifest owns the name.
    let manifest_owned = stage_with_config(&AppInfo::new("api"), "sidecar:\n  process_types: []\n")
        .droplet()
        .unwrap();
    assert!(manifest_owned.result.sidecars.is_none());
    assert_eq!(
        assign_droplet(&manifest_owned, &[manifest_sidecar("tls-sidecar")], 1024),
        Ok(())
    );
    // Sidecar memory counts per process type, manifest and buildpack sidecars together.
    assert!(matches!(
        assign_droplet(
            &declared,
            &[ManifestSidecar {
                memory_mb: Some(1024 - 32),
                ..manifest_sidecar("tls")
            }],
            1024
        ),
        Err(Refusal::SidecarMemory { sidecars: 1024, .. })
    ));
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_task_gets_no_egress_address_because_no_sidecar_runs_beside_it() {
    let config = "egress:\n  - name: backend\n    listen: 127.0.0.1:9001\n    target: backend.apps.internal:8443\n    expect: [cf:any]\n";
    let staging = stage_with_config(&AppInfo::new("frontend"), config);
    let instance = launch_ready(&staging, &LaunchOptions::default(), &[]);
    let vars =
        "echo \"egress=${TLS_SIDECAR_EGRESS_BACKEND:-unset} admin=${TLS_SIDECAR_ADMIN:-unset}\"";

    let web = instance.ssh(vars, &[]).unwrap();
    let task = instance.run_task(vars).unwrap();

    assert!(
        web.status.success() && task.status.success(),
        "{web:?}\n{task:?}"
    );
    let web = String::from_utf8_lossy(&web.stdout);
    let task = String::from_utf8_lossy(&task.stdout);
    assert!(
        web.contains("egress=127.0.0.1:9001 admin=127.0.0.1:8444"),
        "{web}"
    );
    assert!(task.contains("egress=unset admin=unset"), "{task}");
}
