//! Shared steps of the end-to-end tests: our buildpack, fixture apps, a `cf push`.
#![allow(dead_code)]

pub mod callers;
pub mod load;

use std::path::{Path, PathBuf};
use std::time::Duration;
use tls_sidecar_integration::buildpacks::{OUR_KEY, fixture_app, fixture_buildpack, our_buildpack};
use tls_sidecar_integration::util::{Deadline, copy_tree, list_tree};
use tls_sidecar_integration::{AppInfo, Buildpack, Staging, StagingRequest, require_root};

pub const VERSION: &str = "1.0.0";

/// One overall deadline for an instance to come up (a noisy 2-core box: be generous).
pub fn ready() -> Deadline {
    Deadline::after(Duration::from_secs(120))
}

/// Our cached zip; fails the test (does not skip) without root or a packageable buildpack.
pub fn ours() -> Buildpack {
    require_root().unwrap();
    our_buildpack(true).unwrap()
}

pub fn fixture(name: &str) -> Buildpack {
    fixture_buildpack(name).unwrap()
}

pub fn http_app() -> PathBuf {
    fixture_app("http-app")
}

/// Stages `app_dir` with `buildpacks` (supply..., final) and returns the staging, whatever its
/// outcome.
pub fn stage(app: &AppInfo, app_dir: &Path, buildpacks: Vec<Buildpack>) -> Staging {
    let mut req = StagingRequest::new(app.clone(), app_dir);
    for bp in buildpacks {
        req = req.buildpack(bp);
    }
    req.stage().unwrap()
}

/// Stages and insists on success (printing the staging log otherwise).
pub fn stage_ok(app: &AppInfo, app_dir: &Path, buildpacks: Vec<Buildpack>) -> Staging {
    let staging = stage(app, app_dir, buildpacks);
    staging.ensure_success().unwrap();
    staging
}

/// A copy of the http-app fixture with extra files (e.g. a `tls-sidecar.yml`).
pub fn http_app_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    copy_tree(&http_app(), &app).unwrap();
    for (name, content) in files {
        std::fs::write(app.join(name), content).unwrap();
    }
    dir
}

/// The app dir inside a [`http_app_with`] temp dir.
pub fn app_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("app")
}

/// Asserts that `deps/<idx>` of buildpack `i` is as the builder created it: empty.
pub fn assert_nothing_installed(staging: &Staging, i: usize) {
    let dir = staging.deps_path(i);
    let tree = list_tree(&dir).unwrap();
    assert!(
        tree.is_empty(),
        "deps/{} should be empty after a failed supply, has {tree:?}\n{}",
        staging.deps_indices[i],
        staging.output
    );
}

/// Asserts the staging failed in our supply (builder exit 225) with a `**ERROR**` line that
/// contains every one of `phrases`, and returns that output with ANSI colours removed.
pub fn assert_supply_failed(staging: &Staging, phrases: &[&str]) -> String {
    let plain = strip_ansi(&staging.output);
    eprintln!("{plain}");
    assert_eq!(
        staging.exit_code, 225,
        "expected the builder's supply failure code\n{plain}"
    );
    assert!(plain.contains("**ERROR**"), "no **ERROR** line\n{plain}");
    for p in phrases {
        assert!(plain.contains(p), "staging output lacks {p:?}\n{plain}");
    }
    assert!(
        plain.contains("Failed to run all supply scripts: exit status"),
        "{plain}"
    );
    plain
}

/// The output without ANSI colour sequences (the buildpack colours `**ERROR**` lines).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn our_key() -> &'static str {
    OUR_KEY
}

/// Stages the http-app fixture with `tls-sidecar.yml` = `config` behind our buildpack and
/// libbuildpack-final, insisting on success.
pub fn stage_with_config(app: &AppInfo, config: &str) -> Staging {
    let dir = http_app_with(&[("tls-sidecar.yml", config)]);
    stage_ok(
        app,
        &app_dir(&dir),
        vec![ours(), fixture("libbuildpack-final")],
    )
}

/// Launches instance 0 of `staging` with `opts` and waits until the app, every sidecar port in
/// `ports` and the sidecar's `/ready` are up.
pub fn launch_ready(
    staging: &Staging,
    opts: &tls_sidecar_integration::LaunchOptions,
    ports: &[u16],
) -> tls_sidecar_integration::Instance {
    let instance =
        tls_sidecar_integration::Instance::launch(&staging.droplet().unwrap(), opts).unwrap();
    tls_sidecar_integration::sidecar::wait_ready_on(&instance, ports, ready()).unwrap();
    instance
}

/// A fresh request marker, so a test can tell whether a request reached the app.
pub fn probe() -> String {
    format!("probe-{}", tls_sidecar_integration::util::random_hex(8))
}

/// What the http-app fixture answers on `/` for instance 0.
pub const HELLO: &str = "hello from http-app instance 0\n";

/// The fixture app's log (its stdout): one line per connection and per request.
pub fn app_log(instance: &tls_sidecar_integration::Instance) -> String {
    instance.web().unwrap().stdout()
}

/// How many connections the fixture app has accepted so far.
pub fn app_connections(instance: &tls_sidecar_integration::Instance) -> usize {
    app_log(instance)
        .lines()
        .filter(|l| l.starts_with("connection from "))
        .count()
}

/// stdout and stderr of a command, for messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
