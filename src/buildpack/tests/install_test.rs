//! Getting the dependency: unsafe tarballs, downloads from a loopback server, retries, the
//! app cache and proxies. Each test checks what ended up on disk, everywhere.

mod common;

use common::*;
use std::fs;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CF_STACK", "cflinuxfs4"),
        ("VCAP_APPLICATION", r#"{"application_name":"myapp"}"#),
    ]
}

/// Stages `tarball` from a cached zip and expects a refusal naming `entry_error`.
fn assert_refused(tarball: &[u8], entry_error: &str) {
    let stage = Stage::cached(tarball);
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    assert_eq!(
        run.lines()[3..],
        [
            format!("       **ERROR** Could not install tls-sidecar 1.0.0: {entry_error}"),
            "       Nothing was installed.".into(),
            "       The dependency tarball is not one the buildpack's packager builds (see docs/DESIGN.md).".into(),
            "       Fix: package the buildpack again with scripts/package.sh and upload it (cf update-buildpack)".into(),
        ]
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_tarball_entry_with_a_parent_dir_component_fails_and_installs_nothing() {
    assert_refused(
        &tgz(&[
            M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
            M::File("bin/../../escape", 0o644, b"x"),
        ]),
        "refusing tarball entry \"bin/../../escape\": it has a \"..\" component",
    );
}

#[test]
fn a_tarball_entry_with_an_absolute_path_fails_and_installs_nothing() {
    assert_refused(
        &tgz(&[
            M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
            M::File("/tmp/escape", 0o644, b"x"),
        ]),
        "refusing tarball entry \"/tmp/escape\": it has an absolute path",
    );
}

#[test]
fn a_symlink_escaping_the_install_dir_fails_and_installs_nothing() {
    assert_refused(
        &tgz(&[
            M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
            M::Symlink("bin/escape", "../../../etc"),
        ]),
        "refusing tarball entry \"bin/escape\": it links to \"../../../etc\", outside the install directory",
    );
}

#[test]
fn a_hardlink_escaping_the_install_dir_fails_and_installs_nothing() {
    assert_refused(
        &tgz(&[
            M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
            M::Hardlink("bin/escape", "../../etc/passwd"),
        ]),
        "refusing tarball entry \"bin/escape\": it links to \"../../etc/passwd\", outside the install directory",
    );
}

#[test]
fn a_hardlink_to_an_absolute_path_fails_and_installs_nothing() {
    assert_refused(
        &tgz(&[
            M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
            M::Hardlink("bin/escape", "/etc/passwd"),
        ]),
        "refusing tarball entry \"bin/escape\": it links to the absolute path \"/etc/passwd\"",
    );
}

#[test]
fn a_download_is_verified_kept_in_the_cache_and_a_restage_uses_the_cache_without_a_request() {
    let tarball = good_tgz();
    let server = Server::start(vec![(200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    let uri = server.url(&format!("/releases/{DEP_FILE}"));
    stage.manifest(&Manifest::new(&uri, &tarball));
    let before = stage.tree();

    let first = stage.supply("0", &env());

    assert_eq!(first.code, 0, "{}", first.stdout);
    assert_eq!(first.lines()[2], format!("       Download [{uri}]"));
    assert_eq!(
        server.requests(),
        [format!("GET /releases/{DEP_FILE} HTTP/1.1")]
    );
    let cached = format!("cache/dependencies/{}/{DEP_FILE}", sha256(uri.as_bytes()));
    let mut want: Vec<String> = vec![
        "cache/dependencies".into(),
        format!("cache/dependencies/{}", sha256(uri.as_bytes())),
        cached.clone(),
    ];
    want.extend(
        [
            "bin",
            "bin/tls-sidecar",
            "config.yml",
            "launch.yml",
            "profile.d",
            "profile.d/tls-sidecar.sh",
            "tls-sidecar.yml",
        ]
        .iter()
        .map(|p| format!("deps/0/{p}")),
    );
    assert_eq!(changed(&before, &stage.tree()), want);
    assert_eq!(fs::read(stage.path(&cached)).unwrap(), tarball);

    let after_first = stage.tree();
    let second = stage.supply("0", &env());

    assert_eq!(second.code, 0, "{}", second.stdout);
    assert_eq!(
        second.lines()[2],
        format!("       Using cached [{}]", stage.path(&cached).display())
    );
    assert_eq!(server.requests().len(), 1, "the restage downloaded again");
    assert_eq!(stage.tree(), after_first);
}

#[test]
fn an_http_500_is_retried_and_the_next_attempt_succeeds() {
    let tarball = good_tgz();
    let server = Server::start(vec![(500, b"oops".to_vec()), (200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    let uri = server.url(&format!("/{DEP_FILE}"));
    stage.manifest(&Manifest::new(&uri, &tarball));

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.lines()[2..4],
        [
            format!("       Download [{uri}]"),
            "       Download failed (HTTP 500 Internal Server Error), retrying in 0 s (attempt 2 of 3)".into(),
        ]
    );
    assert_eq!(server.requests().len(), 2);
    assert_eq!(
        fs::read(stage.deps().join("0/bin/tls-sidecar")).unwrap(),
        SIDECAR_BYTES
    );
}

#[test]
fn a_404_that_persists_fails_after_the_retries_with_a_clear_error() {
    let server = Server::start(vec![(404, b"no".to_vec())]);
    let stage = Stage::new();
    stage.idx("0");
    let uri = server.url(&format!("/{DEP_FILE}"));
    stage.manifest(&Manifest::new(&uri, &good_tgz()));
    let before = stage.tree();

    let run = stage.supply_with_delays("0", "1,2", &env());

    assert_eq!(run.code, 13);
    assert_eq!(
        run.lines()[2..],
        [
            format!("       Download [{uri}]"),
            "       Download failed (HTTP 404 Not Found), retrying in 1 ms (attempt 2 of 3)".into(),
            "       Download failed (HTTP 404 Not Found), retrying in 2 ms (attempt 3 of 3)".into(),
            format!("       **ERROR** Could not install tls-sidecar 1.0.0: could not download {uri} after 3 attempts: HTTP 404 Not Found"),
            "       Nothing was installed.".into(),
            "       Fix: make the URL reachable from staging (set https_proxy in the staging environment if a proxy is needed), or use the cached buildpack zip, which needs no network; then cf restage myapp".into(),
        ]
    );
    assert_eq!(server.requests().len(), 3);
    assert_eq!(stage.tree(), before);
}

#[test]
fn a_download_with_the_wrong_sha256_is_neither_installed_nor_cached() {
    let server = Server::start(vec![(200, good_tgz())]);
    let stage = Stage::new();
    stage.idx("0");
    let uri = server.url(&format!("/{DEP_FILE}"));
    let expected = "cd".repeat(32);
    stage.manifest(&Manifest {
        sha256: expected.clone(),
        ..Manifest::new(&uri, b"")
    });
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13);
    assert_eq!(
        run.lines()[3],
        format!(
            "       **ERROR** Could not install tls-sidecar 1.0.0: dependency sha256 mismatch: expected {expected}, actual {}",
            sha256(&good_tgz())
        )
    );
    assert_eq!(stage.tree(), before);
}

#[test]
fn a_cache_that_cannot_be_written_warns_and_staging_continues() {
    let tarball = good_tgz();
    let server = Server::start(vec![(200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    // A file where the cache's dependencies/ dir must go: create_dir_all fails even for root.
    fs::write(stage.cache().join("dependencies"), "not a dir").unwrap();
    let uri = server.url(&format!("/{DEP_FILE}"));
    stage.manifest(&Manifest::new(&uri, &tarball));
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    let warning = &run.lines()[3];
    assert!(
        warning.starts_with("       **WARNING** Cannot keep the download in the cache (")
            && warning.ends_with("); continuing, the next staging downloads it again"),
        "{warning}"
    );
    // Everything new is in deps/0; the temp download is gone.
    assert!(
        changed(&before, &stage.tree())
            .iter()
            .all(|p| p.starts_with("deps/0/"))
    );
    assert_eq!(fs::read_dir(stage.deps().join("0")).unwrap().count(), 5);
}

#[test]
fn credentials_in_the_dependency_uri_never_reach_the_log() {
    let tarball = good_tgz();
    let server = Server::start(vec![(200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    let uri = format!("http://user:secret@{}/{DEP_FILE}", server.addr());
    stage.manifest(&Manifest::new(&uri, &tarball));

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.lines()[2],
        format!(
            "       Download [http://-redacted-:-redacted-@{}/{DEP_FILE}]",
            server.addr()
        )
    );
    assert!(!run.stdout.contains("secret"));
}

#[test]
fn a_download_goes_through_the_http_proxy_named_in_the_environment() {
    let tarball = good_tgz();
    let proxy = Server::start(vec![(200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    // .invalid never resolves: the request can only succeed through the proxy.
    let uri = format!("http://deps.example.invalid/{DEP_FILE}");
    stage.manifest(&Manifest::new(&uri, &tarball));
    let proxy_url = proxy.url("");
    let mut env = env();
    env.push(("http_proxy", &proxy_url));

    let run = stage.supply("0", &env);

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        proxy.requests(),
        [
            "CONNECT deps.example.invalid:80 HTTP/1.1".to_owned(),
            format!("GET /{DEP_FILE} HTTP/1.1")
        ]
    );
}

#[test]
fn an_upgrade_removes_the_previous_versions_tarball_from_the_app_cache() {
    let old = format!(
        "cache/dependencies/{}",
        sha256(b"https://mirror.example.com/v0.9.0/tls-sidecar-0.9.0-linux-x64.tgz")
    );
    let tarball = good_tgz();
    let server = Server::start(vec![(200, tarball.clone())]);
    let stage = Stage::new();
    stage.idx("0");
    fs::create_dir_all(stage.path(&old)).unwrap();
    fs::write(
        stage.path(&format!("{old}/tls-sidecar-0.9.0-linux-x64.tgz")),
        b"the previous version",
    )
    .unwrap();
    let uri = server.url(&format!("/releases/{DEP_FILE}"));
    stage.manifest(&Manifest::new(&uri, &tarball));

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        !stage.path(&old).exists(),
        "the old tarball is still cached"
    );
    assert!(
        run.stdout.contains(
            "Removed tls-sidecar-0.9.0-linux-x64.tgz from the app cache (an earlier version)"
        ),
        "{}",
        run.stdout
    );
    let current = format!("cache/dependencies/{}/{DEP_FILE}", sha256(uri.as_bytes()));
    assert_eq!(fs::read(stage.path(&current)).unwrap(), tarball);

    // Switching to a cached zip: it installs from the zip, so no download stays cached.
    let cached_zip = Stage::cached(&tarball);
    cached_zip.idx("0");
    fs::create_dir_all(cached_zip.path(&old)).unwrap();
    fs::write(cached_zip.path(&format!("{old}/x.tgz")), b"old").unwrap();
    let run = cached_zip.supply("0", &env());
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(!cached_zip.path(&old).exists());
}
