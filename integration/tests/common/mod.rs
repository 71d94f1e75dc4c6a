//! Shared steps of the end-to-end tests: our buildpack, fixture apps, a `cf push`.
#![allow(dead_code)]

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
