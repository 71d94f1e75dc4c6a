//! `tls-sidecar check`, as run with `cf ssh APP -c '/home/vcap/deps/0/bin/tls-sidecar check'`:
//! the app's environment, the staged config, a report and an exit code.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tls-sidecar");

/// `tls-sidecar check` with only the variables given; returns the exit code and stdout.
fn check(bin: &Path, config: Option<&Path>, env: &[(&str, String)]) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("check").env_clear();
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn vcap_application(me: &Identity) -> String {
    format!(
        r#"{{"application_name":"shop","application_id":"{}","space_id":"{}","organization_id":"{}"}}"#,
        me.app, me.space, me.org
    )
}

/// An instance with a Diego-shaped leaf, the shared root in its trust directory and `yaml` as
/// its tls-sidecar.yml, whose http listener sets XFCC: the app's profile script moved the app
/// to 8081 and the sidecar fronts $PORT (8080).
struct Fronted {
    leaf: Leaf,
    creds: Creds,
    trust: TrustDir,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fronted {
    fn new(yaml: &str) -> Fronted {
        let pki = Pki::shared();
        let leaf = pki.ec_leaf();
        let creds = Creds::with(&leaf);
        let trust = TrustDir::with(&[&pki.root_pem]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tls-sidecar.yml");
        std::fs::write(&config, yaml).unwrap();
        Fronted {
            leaf,
            creds,
            trust,
            config,
            _dir: dir,
        }
    }

    /// `tls-sidecar check` on this instance with `vcap` as its `VCAP_APPLICATION`.
    fn check(&self, vcap: String) -> (i32, String) {
        check(Path::new(BIN), Some(&self.config), &self.env(vcap))
    }

    /// This instance's own app, space and org as `VCAP_APPLICATION`.
    fn own_vcap(&self) -> String {
        vcap_application(&self.leaf.identity)
    }

    fn env(&self, vcap: String) -> Vec<(&'static str, String)> {
        vec![
            ("CF_INSTANCE_CERT", self.creds.cert().display().to_string()),
            ("CF_INSTANCE_KEY", self.creds.key().display().to_string()),
            (
                "CF_SYSTEM_CERT_PATH",
                self.trust.dir.path().display().to_string(),
            ),
            ("VCAP_APPLICATION", vcap),
            ("PORT", "8081".to_owned()),
            ("TLS_SIDECAR_ROUTE_PORT", "8080".to_owned()),
        ]
    }
}

#[test]
fn check_on_a_good_setup_exits_0_and_reports_identity_sans_expiry_listeners_and_trust() {
    let f = Fronted::new(
        "listeners:\n  - port: 9443\n    allow: [cf:same-space]\n    proxy_protocol: true\n  - port: 9444\n    mode: http\n    client_auth: optional\n",
    );
    let (leaf, creds, trust, config) = (&f.leaf, &f.creds, &f.trust, &f.config);
    let me = &leaf.identity;
    let (code, out) = f.check(f.own_vcap());
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    for expected in [
        format!("Configuration: {}", config.display()),
        format!("Serving certificate (source: instance): {}", creds.cert().display()),
        format!(
            "identity   app={} space={} org={} instance={}",
            me.app, me.space, me.org, leaf.guid
        ),
        format!("SANs       DNS:{}, IP:127.0.0.1", leaf.guid),
        " left)".to_owned(),
        "listeners[0] 0.0.0.0:9443  mode=tcp  upstream=127.0.0.1:8081  client_auth=required  proxy_protocol=v2".to_owned(),
        format!("allow: cf:same-space (= cf:space:{})", me.space),
        "listeners[1] 0.0.0.0:9444  mode=http  upstream=127.0.0.1:8081  client_auth=optional  xfcc=envoy".to_owned(),
        "Route port\n  0.0.0.0:8080  http -> 127.0.0.1:8081  identity headers stripped".to_owned(),
        format!(
            "{}: appRootCA (1 certificate)",
            trust.dir.path().join("trusted-ca-1.crt").display()
        ),
        "127.0.0.1:8444 (GET /live, /ready, /metrics)".to_owned(),
        "OK: no problems found.".to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn check_on_a_broken_setup_exits_1_naming_each_problem_and_its_fix() {
    let pki = Pki::shared();
    let expired = pki.issue(&Identity::random(), KeyKind::Ec, EXPIRED);
    let creds = Creds::with(&expired);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        "listeners:\n  - client_auth: required\n  - port: 9443\n    allow: [cf:same-space]\n",
    )
    .unwrap();
    let missing = dir.path().join("no-such-dir");
    let (code, out) = check(
        Path::new(BIN),
        Some(&config),
        &[
            ("CF_INSTANCE_CERT", creds.cert().display().to_string()),
            ("CF_INSTANCE_KEY", creds.key().display().to_string()),
            ("CF_SYSTEM_CERT_PATH", missing.display().to_string()),
        ],
    );
    println!("{out}");
    assert_eq!(code, 1, "{out}");
    // The report still says what the certificate is.
    assert!(out.contains(&format!("instance={}", expired.guid)), "{out}");
    assert!(out.contains("EXPIRED"), "{out}");
    for (problem, fix) in [
        (
            format!(
                "the certificate in {} expired at 2020-01-02T00:00:00Z",
                creds.cert().display()
            ),
            "restart the instance (cf restart APP_NAME)",
        ),
        (
            "listeners[1].allow: cf:same-space needs VCAP_APPLICATION.space_id, which is not set; the sidecar refuses to start (exit 64)".to_owned(),
            "run check inside the app's container (cf ssh APP_NAME)",
        ),
        (
            format!(
                "CF_SYSTEM_CERT_PATH {} does not exist; there are no trust anchors, so every client certificate is refused on listeners[0] (client_auth: required), listeners[1] (client_auth: required)",
                missing.display()
            ),
            "list it in trust.ca_files",
        ),
    ] {
        let at = out
            .find(&problem)
            .unwrap_or_else(|| panic!("missing {problem:?} in:\n{out}"));
        let fix_line = out[at..].lines().nth(1).unwrap_or_default();
        assert!(
            fix_line.trim_start().starts_with("Fix: ") && fix_line.contains(fix),
            "the fix for {problem:?} should mention {fix:?}: {fix_line}"
        );
    }
    assert!(out.contains("3 problems:"), "{out}");
}

#[test]
fn check_with_an_invalid_config_exits_64_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(&config, "listeners:\n  - mode: udp\n").unwrap();
    let (code, out) = check(Path::new(BIN), Some(&config), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("the sidecar would refuse to start (exit 64)"),
        "{out}"
    );
    assert!(out.contains("mode"), "{out}");
}

#[test]
fn check_reads_the_staged_config_beside_the_binary_by_default() {
    // deps/<idx>/bin/tls-sidecar and deps/<idx>/tls-sidecar.yml, as supply installs them.
    let deps = tempfile::tempdir().unwrap();
    std::fs::create_dir(deps.path().join("bin")).unwrap();
    let bin = deps.path().join("bin/tls-sidecar");
    std::fs::copy(BIN, &bin).unwrap();
    let staged = deps.path().join("tls-sidecar.yml");
    std::fs::write(
        &staged,
        "listeners:\n  - port: 7443\nadmin:\n  enabled: false\n",
    )
    .unwrap();
    let leaf = Pki::shared().ec_leaf();
    let creds = Creds::with(&leaf);
    let (code, out) = check(
        &bin,
        None,
        &[
            ("CF_INSTANCE_CERT", creds.cert().display().to_string()),
            ("CF_INSTANCE_KEY", creds.key().display().to_string()),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("Configuration: {}", staged.display())),
        "{out}"
    );
    assert!(out.contains("listeners[0] 0.0.0.0:7443"), "{out}");
    assert!(out.contains("disabled (admin.enabled: false)"), "{out}");
    assert!(
        out.contains("not used: no listener asks for client certificates"),
        "{out}"
    );
}

#[test]
fn the_help_lists_the_check_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check"), "{help}");
    let out = Command::new(BIN)
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config <PATH>"), "{help}");
}

#[test]
fn check_names_an_empty_trust_directory_when_client_certificates_are_required() {
    let creds = Creds::with(&Pki::shared().ec_leaf());
    let empty = TrustDir::with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(&config, "listeners:\n  - client_auth: required\n").unwrap();
    let (code, out) = check(
        Path::new(BIN),
        Some(&config),
        &[
            ("CF_INSTANCE_CERT", creds.cert().display().to_string()),
            ("CF_INSTANCE_KEY", creds.key().display().to_string()),
            (
                "CF_SYSTEM_CERT_PATH",
                empty.dir.path().display().to_string(),
            ),
        ],
    );
    assert_eq!(code, 1, "{out}");
    let expected = format!(
        "there are no trust anchors ({} holds no certificates), so every client certificate is refused on listeners[0] (client_auth: required)",
        empty.dir.path().display()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("1 problem:"), "{out}");
}

#[test]
fn check_mints_a_leaf_in_memory_and_lists_every_egress_entry_with_its_variable() {
    let pki = Pki::shared();
    let ca = TestCa::new(CaKey::EcSec1, None);
    let me = Identity::random();
    let guid = new_guid();
    let trust = TrustDir::with(&[&pki.root_pem]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    let other = Identity::random();
    std::fs::write(
        &config,
        format!(
            "{MINTED_YAML}egress:\n  - name: my-backend\n    listen: 127.0.0.1:9001\n    target: backend.apps.internal:8443\n    expect: [cf:app:{}, cf:same-space]\n",
            other.app
        ),
    )
    .unwrap();
    let minted = minted_env(&me, &ca, &guid);
    let mut env: Vec<(&str, String)> = minted
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    env.push((
        "CF_SYSTEM_CERT_PATH",
        trust.dir.path().display().to_string(),
    ));
    // Off Diego the cf: rules in expect could match no server: check says so.
    let (code, out) = check(Path::new(BIN), Some(&config), &env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("egress[0].expect: cf:app:")
            && out.contains("no instance identity certificate"),
        "{out}"
    );
    // On Diego (the instance identity is there) the minted instance is fine.
    let creds = Creds::with(&pki.client(&me));
    env.push(("CF_INSTANCE_CERT", creds.cert().display().to_string()));
    env.push(("CF_INSTANCE_KEY", creds.key().display().to_string()));
    let (code, out) = check(Path::new(BIN), Some(&config), &env);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    for expected in [
        "Serving certificate (source: minted): a certificate minted from the CA of the bound service \"test-ca\"".to_owned(),
        format!("identity   app={} space={} org={} instance={guid}", me.app, me.space, me.org),
        format!("SANs       DNS:backend.apps.internal, DNS:0.backend.apps.internal, DNS:{guid}, IP:127.0.0.1"),
        "(key: ECDSA P-256, made in memory)".to_owned(),
        "chain      2 certificates, signed by CN=testMintCA".to_owned(),
        "egress[0] my-backend  127.0.0.1:9001 -> backend.apps.internal:8443  (the app finds it in $TLS_SIDECAR_EGRESS_MY_BACKEND)".to_owned(),
        format!("expect: cf:app:{}, cf:same-space (= cf:space:{})", other.app, me.space),
        "Trust anchors for egress servers (2 in total)".to_owned(),
        "service \"test-ca\" credentials.ca_certificate: testMintCA (1 certificate)".to_owned(),
        "OK: no problems found.".to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }

    // Without the CA service bound, check says what to bind.
    let env: Vec<(&str, String)> = env
        .into_iter()
        .filter(|(k, _)| *k != "VCAP_SERVICES")
        .collect();
    let (code, out) = check(Path::new(BIN), Some(&config), &env);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("VCAP_SERVICES is not set"), "{out}");
    assert!(
        out.contains("\"ca_certificate\" and \"ca_private_key\""),
        "{out}"
    );
}

#[test]
fn check_reports_an_xfcc_listener_beside_an_unfronted_route_port_as_a_problem() {
    let pki = Pki::shared();
    let leaf = pki.ec_leaf();
    let creds = Creds::with(&leaf);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-sidecar.yml");
    std::fs::write(
        &config,
        "listeners:\n  - port: 9444\n    mode: http\nroute:\n  fronting: off\n",
    )
    .unwrap();
    let (code, out) = check(
        Path::new(BIN),
        Some(&config),
        &[
            ("CF_INSTANCE_CERT", creds.cert().display().to_string()),
            ("CF_INSTANCE_KEY", creds.key().display().to_string()),
            ("VCAP_APPLICATION", vcap_application(&leaf.identity)),
            ("PORT", "8080".to_owned()),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Route port\n  not fronted: the app serves $PORT itself"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "1 problem:\n  1. {}",
            tls_sidecar_config::UNFRONTED_XFCC_WARNING
        )),
        "{out}"
    );
}

#[test]
fn check_lists_each_request_rule_in_order_and_names_the_one_that_cannot_resolve() {
    let f = Fronted::new(
        "listeners:\n  - port: 9444\n    mode: http\n    rules:\n      - {paths: [/admin/*], methods: [POST], allow: []}\n      - {paths: [/api/*, /health], allow: [cf:same-org]}\n",
    );
    let (code, out) = f.check(f.own_vcap());
    assert_eq!(code, 0, "{out}");
    for expected in [
        "client_auth=required  xfcc=envoy",
        "rules (first match decides; a request none matches gets 403):\n        [0] POST /admin/* -> nobody\n        [1] any method /api/*,/health -> cf:same-org\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Without organization_id, cf:same-org cannot be resolved: the start would refuse it.
    let (code, out) = f.check(r#"{"application_name":"shop"}"#.to_owned());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("listeners[0].rules[1].allow"), "{out}");
}

#[test]
fn check_lists_the_egress_proxy_and_its_targets_with_the_variable_the_app_reads() {
    let f = Fronted::new(
        "listeners: []\negress_proxy:\n  targets:\n    - {hosts: [\"*.apps.internal\"], ports: [8443], expect: [cf:same-space]}\n    - {hosts: [\"*.apps.identity\"], expect: [\"dns:*.apps.identity\"]}\n",
    );
    let (code, out) = f.check(f.own_vcap());
    assert_eq!(code, 0, "{out}");
    for expected in [
        "Egress proxy (HTTP proxy for the app, mutual TLS to each target)\n  127.0.0.1:8446  (the app finds it in $TLS_SIDECAR_PROXY = http://127.0.0.1:8446)".to_owned(),
        format!(
            "  targets[0] *.apps.internal ports 8443\n      expect: cf:same-space (= cf:space:{})",
            f.leaf.identity.space
        ),
        "  targets[1] *.apps.identity any port\n      expect: dns:*.apps.identity".to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
}
