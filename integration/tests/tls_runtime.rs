//! The sidecar at run time, in an emulated app instance: TLS with the instance identity in front
//! of the app, certificate rotation, and shutdown.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use tls_sidecar_integration::cell::cert_serial;
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::sidecar::{self, connect_tls, curl, s_client, wait_ready};
use tls_sidecar_integration::tls::{normalize_serial, peer_serial};
use tls_sidecar_integration::util::{Deadline, poll};
use tls_sidecar_integration::{AppInfo, Instance, LaunchOptions, Staging};

fn launch(staging: &Staging) -> Instance {
    let instance =
        Instance::launch(&staging.droplet().unwrap(), &LaunchOptions::default()).unwrap();
    wait_ready(&instance, ready()).unwrap();
    instance
}

fn assert_curl_gets_the_app(instance: &Instance) {
    let out = curl(instance, "/", &[]).unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        instance.logs()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from http-app instance 0\n"
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn curl_reaches_the_app_over_tls_with_a_libbuildpack_final_buildpack() {
    let staging = stage_ok(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let instance = launch(&staging);
    assert_curl_gets_the_app(&instance);
    // The sidecar ran exactly the launch.yml command, as vcap, after the launcher's preamble.
    let p = instance.process(sidecar::NAME).unwrap();
    assert_eq!(
        p.command(),
        "/home/vcap/deps/0/bin/tls-sidecar --config /home/vcap/deps/0/tls-sidecar.yml"
    );
    assert!(
        p.stdout()
            .starts_with("Invoking pre-start scripts.\nInvoking start command.\n"),
        "{}",
        p.stdout()
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn curl_reaches_the_app_at_supply_index_2_behind_a_final_buildpack_that_ignores_deps() {
    let mut second = fixture("noop-supply");
    second.key = "noop-supply-2".to_owned();
    let staging = stage_ok(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![
            fixture("noop-supply"),
            second,
            ours(),
            fixture("plain-final"),
        ],
    );
    // plain-final wrote no profile.d and no PATH: the absolute command is all the sidecar needs.
    assert!(tls_sidecar_integration::util::is_empty_dir(&staging.profile_dir()).unwrap());
    let instance = launch(&staging);
    assert_curl_gets_the_app(&instance);
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn s_client_sees_the_instance_guid_as_leaf_cn_the_intermediate_and_tls_1_3() {
    let staging = stage_ok(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let instance = launch(&staging);
    let out = s_client(&instance, &[]).unwrap();
    let guid = instance.guid();
    let id = instance.identity();
    // OpenSSL prints the multi-valued RDN in DER (SET OF) order: shortest value first.
    let leaf_subject = format!(
        " 0 s:OU = app:{} + OU = space:{} + OU = organization:{}, CN = {guid}",
        id.app_guid, id.space_guid, id.org_guid
    );
    assert!(
        out.lines().any(|l| l == leaf_subject),
        "leaf subject is not {leaf_subject:?}\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(" 1 s:CN = instanceIdentityCA")),
        "no intermediate\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with(" 2 s:")),
        "the chain should be leaf + intermediate only\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("i:CN = appRootCA")),
        "{out}"
    );
    assert!(out.contains("TLSv1.3"), "not TLS 1.3\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn a_rotated_certificate_serves_new_connections_while_an_open_one_keeps_working() {
    let staging = stage_ok(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let instance = launch(&staging);
    let host = instance.guid().to_owned();

    let mut old = connect_tls(&instance, None).unwrap();
    let first = request(&mut old, "GET", "/", &host, &[]).unwrap();
    assert_eq!(first.status, 200);
    let old_serial = peer_serial(&old).unwrap();
    assert_eq!(
        old_serial,
        normalize_serial(&cert_serial(&instance.credentials().cert_path()).unwrap())
    );

    // Diego's way: instance.key.tmp + instance.crt.tmp, rename key, then cert.
    let new_serial = normalize_serial(
        &instance
            .credentials()
            .rotate(Duration::from_secs(24 * 3600))
            .unwrap(),
    );
    assert_ne!(new_serial, old_serial);

    // New connections get the new certificate (the sidecar notices by itself).
    let started = Instant::now();
    poll(
        Deadline::after(Duration::from_secs(60)),
        "a new connection to present the rotated certificate",
        || {
            let conn = connect_tls(&instance, None)?;
            Ok((peer_serial(&conn)? == new_serial).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.logs()));
    eprintln!("rotation picked up after {:?}", started.elapsed());

    // The connection opened before the rotation still works, on its old session.
    let again = request(&mut old, "GET", "/headers", &host, &[]).unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(peer_serial(&old).unwrap(), old_serial);
    let mut fresh = connect_tls(&instance, None).unwrap();
    assert_eq!(
        request(&mut fresh, "GET", "/", &host, &[]).unwrap().status,
        200
    );
}

#[test]
#[ignore = "integration test: needs root and the packaged buildpack; run with --include-ignored (scripts/test.sh does)"]
fn sigterm_makes_the_sidecar_exit_0_within_the_drain_timeout() {
    let staging = stage_ok(
        &AppInfo::new("myapp"),
        &http_app(),
        vec![ours(), fixture("libbuildpack-final")],
    );
    let instance = launch(&staging);
    let p = instance.process(sidecar::NAME).unwrap();
    // An idle keep-alive connection stays open across the signal: the drain must still end.
    let mut open = connect_tls(&instance, None).unwrap();
    assert_eq!(
        request(&mut open, "GET", "/", instance.guid(), &[])
            .unwrap()
            .status,
        200
    );
    let started = Instant::now();
    p.signal(rustix::process::Signal::TERM).unwrap();
    // Default drain timeout 8 s; allow for a loaded machine on top.
    let status = p.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit {status:?} (signal {:?})\n{}",
        status.signal(),
        p.logs()
    );
    eprintln!("sidecar exited {:?} after SIGTERM", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(8) + Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(open);
    // The app is still there: CF, not the sidecar, decides the instance's fate.
    assert!(instance.web().unwrap().try_status().unwrap().is_none());
}
