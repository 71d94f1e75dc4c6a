//! A hostile or broken network at staging: downloads cut short, servers that answer with
//! errors or not at all, credentials in the URL, and an app cache that cannot be written.
//! Every failure must read as one CF-style `**ERROR**` that names what happened and the URL
//! (without credentials), and must leave every directory exactly as it was, `deps/<idx>/`
//! included; nothing may be written outside `deps/<idx>/` even when staging succeeds.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CF_STACK", "cflinuxfs4"),
        ("VCAP_APPLICATION", r#"{"application_name":"myapp"}"#),
    ]
}

/// An uncached buildpack whose manifest points at `uri` with the sha256 of `tarball`.
fn uncached(uri: &str, tarball: &[u8]) -> Stage {
    let stage = Stage::new();
    stage.idx("0");
    stage.manifest(&Manifest::new(uri, tarball));
    stage
}

/// The head of a 200 response announcing `len` body bytes.
fn head(len: Option<usize>) -> Vec<u8> {
    let length = len.map_or(String::new(), |l| format!("Content-Length: {l}\r\n"));
    format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n").into_bytes()
}

const DOWNLOAD_FIX: &str = "       Fix: make the URL reachable from staging (set https_proxy in the staging environment if a proxy is needed), or use the cached buildpack zip, which needs no network; then cf restage myapp";

#[test]
fn a_download_cut_short_of_its_content_length_is_retried_then_fails_and_installs_nothing() {
    let tarball = good_tgz();
    let mut cut = head(Some(tarball.len()));
    cut.extend_from_slice(&tarball[..tarball.len() / 2]);
    let server = Server::start_raw(vec![cut]);
    let uri = server.url(&format!("/{DEP_FILE}"));
    let stage = uncached(&uri, &tarball);
    let before = stage.tree();

    let run = stage.supply_with_delays("0", "1,1", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    let lines = run.lines();
    assert_eq!(lines[2], format!("       Download [{uri}]"));
    for retry in &lines[3..5] {
        assert!(
            retry.starts_with("       Download failed (reading the response: ")
                && retry.contains("retrying in 1 ms"),
            "{retry}"
        );
    }
    let error = &lines[5];
    assert!(
        error.starts_with(&format!(
            "       **ERROR** Could not install tls-sidecar 1.0.0: could not download {uri} after 3 attempts: reading the response: "
        )),
        "{error}"
    );
    assert_eq!(
        lines[6..],
        [
            "       Nothing was installed.".to_owned(),
            DOWNLOAD_FIX.into()
        ]
    );
    assert_eq!(server.requests().len(), 3);
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_download_cut_short_without_a_content_length_fails_the_sha256_check_and_is_not_cached() {
    // Without a length the client cannot tell a closed connection from the end of the body:
    // only the checksum catches the truncation.
    let tarball = good_tgz();
    let mut cut = head(None);
    cut.extend_from_slice(&tarball[..tarball.len() / 2]);
    let server = Server::start_raw(vec![cut]);
    let uri = server.url(&format!("/{DEP_FILE}"));
    let stage = uncached(&uri, &tarball);
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    assert_eq!(
        run.lines()[3..],
        [
            format!(
                "       **ERROR** Could not install tls-sidecar 1.0.0: dependency sha256 mismatch: expected {}, actual {}",
                sha256(&tarball),
                sha256(&tarball[..tarball.len() / 2])
            ),
            "       Nothing was installed.".into(),
            "       The downloaded file is not the one this buildpack was packaged with (a truncated download, a proxy rewriting it, or a changed file at the URL).".into(),
            "       Fix: cf restage myapp to download it again; if it keeps failing, package the buildpack again with scripts/package.sh and upload it (cf update-buildpack)".into(),
        ]
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_download_cut_short_once_is_retried_from_the_start_and_only_whole_bytes_are_kept() {
    let tarball = good_tgz();
    let mut cut = head(Some(tarball.len()));
    cut.extend_from_slice(&tarball[..tarball.len() / 3]);
    let server = Server::start_raw(vec![cut, response(200, &tarball)]);
    let uri = server.url(&format!("/{DEP_FILE}"));
    let stage = uncached(&uri, &tarball);
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.lines()[3].starts_with("       Download failed (reading the response: "),
        "{}",
        run.stdout
    );
    let cached = format!("cache/dependencies/{}/{DEP_FILE}", sha256(uri.as_bytes()));
    // The cached copy is the whole file: the partial first attempt did not stay in front of it.
    assert_eq!(fs::read(stage.path(&cached)).unwrap(), tarball);
    assert!(
        changed(&before, &stage.tree())
            .iter()
            .all(|p| p.starts_with("deps/0/") || p.starts_with("cache/dependencies")),
        "{:?}",
        changed(&before, &stage.tree())
    );
}

#[test]
fn a_404_or_500_that_persists_fails_naming_the_status_and_the_url_without_its_credentials() {
    for (status, text) in [(404, "Not Found"), (500, "Internal Server Error")] {
        let server = Server::start(vec![(status, b"no".to_vec())]);
        let uri = format!("http://deploy:s3cr3t@{}/{DEP_FILE}", server.addr());
        let shown = format!("http://-redacted-:-redacted-@{}/{DEP_FILE}", server.addr());
        let stage = uncached(&uri, &good_tgz());
        let before = stage.tree();

        let run = stage.supply_with_delays("0", "1,1", &env());

        assert_eq!(run.code, 13, "{}", run.stdout);
        assert_eq!(
            run.lines()[2..],
            [
                format!("       Download [{shown}]"),
                format!(
                    "       Download failed (HTTP {status} {text}), retrying in 1 ms (attempt 2 of 3)"
                ),
                format!(
                    "       Download failed (HTTP {status} {text}), retrying in 1 ms (attempt 3 of 3)"
                ),
                format!(
                    "       **ERROR** Could not install tls-sidecar 1.0.0: could not download {shown} after 3 attempts: HTTP {status} {text}"
                ),
                "       Nothing was installed.".into(),
                DOWNLOAD_FIX.into(),
            ]
        );
        assert!(!run.stdout.contains("s3cr3t") && !run.stderr.contains("s3cr3t"));
        assert_eq!(server.requests().len(), 3, "{status}");
        assert_eq!(stage.tree(), before, "{status}: something was written");
    }
}

#[test]
fn a_server_that_refuses_connections_is_retried_then_fails_and_installs_nothing() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let uri = format!("http://{addr}/{DEP_FILE}");
    let stage = uncached(&uri, &good_tgz());
    let before = stage.tree();

    let run = stage.supply_with_delays("0", "1,1", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    let lines = run.lines();
    assert!(
        lines[3].starts_with("       Download failed (") && lines[3].ends_with("(attempt 2 of 3)"),
        "{}",
        run.stdout
    );
    assert!(
        lines[5].starts_with(&format!(
            "       **ERROR** Could not install tls-sidecar 1.0.0: could not download {uri} after 3 attempts: "
        )),
        "{}",
        lines[5]
    );
    assert_eq!(lines[6..], ["       Nothing was installed.", DOWNLOAD_FIX]);
    assert_eq!(stage.tree(), before, "something was written");
}

/// Runs supply so that `stage.cache()` (mode 0555) cannot be written: as an unprivileged user
/// when the tests run as root, because root ignores permission bits.
fn supply_with_read_only_cache(stage: &Stage, env: &[(&str, &str)]) -> Run {
    let root_owned = fs::metadata(stage.root.path()).expect("stat").uid() == 0;
    let mut cmd = Command::new(BIN);
    let (bp, app, cache, deps) = (stage.bp(), stage.app(), stage.cache(), stage.deps());
    cmd.args([
        "--buildpack-dir",
        s(&bp),
        "--retry-delays-ms",
        "",
        "supply",
        s(&app),
        s(&cache),
        s(&deps),
        "0",
    ])
    .env_clear()
    .envs(env.iter().copied());
    if root_owned {
        const NOBODY: u32 = 65534;
        // Everything but the cache becomes the unprivileged user's, as a staging container's
        // directories belong to vcap.
        for p in [
            stage.root.path().to_owned(),
            stage.deps(),
            stage.deps().join("0"),
        ] {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd.output().expect("run binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

#[test]
fn a_read_only_cache_dir_still_installs_a_download_warns_and_writes_only_into_deps_idx() {
    // The cache is an optimisation: a platform that mounts it read-only must not fail staging.
    let tarball = good_tgz();
    let server = Server::start(vec![(200, tarball.clone())]);
    let uri = server.url(&format!("/{DEP_FILE}"));
    let stage = uncached(&uri, &tarball);
    fs::set_permissions(stage.cache(), fs::Permissions::from_mode(0o555)).unwrap();
    let before = stage.tree();

    let run = supply_with_read_only_cache(&stage, &env());

    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let cached = stage
        .cache()
        .join("dependencies")
        .join(sha256(uri.as_bytes()))
        .join(DEP_FILE);
    assert_eq!(
        run.lines()[2..4],
        [
            format!("       Download [{uri}]"),
            format!(
                "       **WARNING** Cannot keep the download in the cache ({}: Permission denied (os error 13)); continuing, the next staging downloads it again",
                cached.display()
            ),
        ]
    );
    assert_eq!(
        fs::read(stage.deps().join("0/bin/tls-sidecar")).unwrap(),
        SIDECAR_BYTES
    );
    // Exactly the staged files, all in deps/0: no cache entry, no leftover temp download.
    assert_eq!(
        changed(&before, &stage.tree()),
        [
            "bin",
            "bin/tls-sidecar",
            "config.yml",
            "launch.yml",
            "profile.d",
            "profile.d/tls-sidecar.sh",
            "tls-sidecar.yml",
        ]
        .map(|p| format!("deps/0/{p}"))
    );
    assert_eq!(
        fs::read_dir(stage.cache()).unwrap().count(),
        0,
        "the read-only cache was written"
    );
}
