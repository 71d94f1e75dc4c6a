//! The emulation itself, checked against fixture buildpacks only (no part of our buildpack): if
//! these fail, the end-to-end results mean nothing.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tls_sidecar_integration::buildpacks::{fixture_app, fixture_buildpack, zip_dir};
use tls_sidecar_integration::cell::{
    cert_not_after_iso, cert_not_after_unix, cert_pem_body, cert_serial, cert_sha256_hex,
    cert_subject_rfc2253, cert_text,
};
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::util::Deadline;
use tls_sidecar_integration::{
    AppIdentity, AppInfo, Buildpack, Caller, Callers, CellCa, Instance, InstanceCredentials,
    LaunchOptions, StagingRequest, require_root,
};

fn ready() -> Deadline {
    Deadline::after(Duration::from_secs(90))
}

/// A buildpack made on the spot from `files` (path → content; `bin/*` made executable).
fn adhoc_buildpack(key: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Buildpack) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for (path, content) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        if path.starts_with("bin/") {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let zip = dir.path().join(format!("{key}.zip"));
    zip_dir(&src, &zip).unwrap();
    (dir, Buildpack::new(key, zip))
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn instance_certificates_have_diegos_exact_shape() {
    let ca = CellCa::shared().unwrap();
    let id = AppIdentity::random();
    let creds =
        InstanceCredentials::new(ca.clone(), id.clone(), Duration::from_secs(3 * 3600)).unwrap();

    assert_eq!(
        cert_subject_rfc2253(&creds.cert_path()).unwrap(),
        id.rfc2253_subject()
    );
    let text = cert_text(&creds.cert_path()).unwrap();
    assert!(
        text.contains(&format!("DNS:{}, IP Address:{}", id.instance_guid, id.ip)),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment, Key Agreement"),
        "{text}"
    );
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
    assert!(text.contains("Issuer: CN = instanceIdentityCA"), "{text}");
    // Go adds no subject key identifier to a non-CA certificate; the AKI names the intermediate.
    assert!(
        !text.contains("Subject Key Identifier") && text.contains("Authority Key Identifier"),
        "{text}"
    );
    assert!(!text.contains("CA:TRUE"), "{text}");

    // notBefore is now (not backdated) and the validity is what was asked for.
    let dates = openssl(&[
        "x509",
        "-noout",
        "-startdate",
        "-enddate",
        "-dateopt",
        "iso_8601",
        "-in",
        creds.cert_path().to_str().unwrap(),
    ]);
    assert!(dates.contains("notBefore="), "{dates}");
    let epoch = |prefix: &str| -> i64 {
        let line = dates.lines().find(|l| l.starts_with(prefix)).unwrap();
        let v = &line[prefix.len()..];
        let out = std::process::Command::new("date")
            .args(["-u", "-d", v, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (nb, na) = (epoch("notBefore="), epoch("notAfter="));
    assert!((now - nb).abs() < 120, "notBefore {nb} vs now {now}");
    assert_eq!(na - nb, 3 * 3600);

    // The key is PKCS#1 and instance.crt is leaf + intermediate, verifying up to appRootCA.
    let key = std::fs::read_to_string(creds.key_path()).unwrap();
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{key}");
    let chain = std::fs::read_to_string(creds.cert_path()).unwrap();
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let intermediate = std::fs::read_to_string(ca.intermediate_cert()).unwrap();
    assert!(chain.ends_with(&intermediate));
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.root_cert())
        .arg("-untrusted")
        .arg(ca.intermediate_cert())
        .arg(creds.cert_path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let inter = cert_text(ca.intermediate_cert()).unwrap();
    assert!(
        inter.contains("CA:TRUE") && inter.contains("Certificate Sign, CRL Sign"),
        "{inter}"
    );
    assert!(
        inter.contains("Subject Key Identifier") && inter.contains("Authority Key Identifier"),
        "{inter}"
    );
    assert!(ca.system_cert_dir().join("trusted-ca-1.crt").is_file());
}

#[test]
fn rotation_replaces_key_and_cert_with_a_new_serial() {
    let ca = CellCa::shared().unwrap();
    let creds =
        InstanceCredentials::new(ca, AppIdentity::random(), Duration::from_secs(3600)).unwrap();
    let before = cert_serial(&creds.cert_path()).unwrap();
    let old_key = std::fs::read(creds.key_path()).unwrap();
    let after = creds.rotate(Duration::from_secs(3600)).unwrap();
    assert_ne!(before, after);
    assert_eq!(cert_serial(&creds.cert_path()).unwrap(), after);
    assert_ne!(std::fs::read(creds.key_path()).unwrap(), old_key);
    assert!(!creds.dir().join("instance.key.tmp").exists());
    assert!(!creds.dir().join("instance.crt.tmp").exists());
    // Serials are 16 random bytes (a leading zero byte shortens the printed form).
    assert!(after.len() >= 28 && after.len() <= 34, "{after}");
}

#[test]
fn client_identities_for_other_apps_share_only_what_they_should() {
    let me = AppIdentity::random();
    let same_space = me.another_app_same_space();
    assert_eq!(
        (&same_space.org_guid, &same_space.space_guid),
        (&me.org_guid, &me.space_guid)
    );
    assert_ne!(same_space.app_guid, me.app_guid);
    let other_space = me.app_in_other_space();
    assert_eq!(other_space.org_guid, me.org_guid);
    assert_ne!(other_space.space_guid, me.space_guid);
    let other_org = me.app_in_other_org();
    assert_ne!(other_org.org_guid, me.org_guid);
    let sibling = me.another_instance();
    assert_eq!(sibling.app_guid, me.app_guid);
    assert_ne!(sibling.instance_guid, me.instance_guid);

    let ca = CellCa::shared().unwrap();
    let (_dir, cert) = ca.issue_client(&other_org).unwrap();
    assert_eq!(
        cert_subject_rfc2253(&cert.cert).unwrap(),
        other_org.rfc2253_subject()
    );
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn staging_runs_supply_then_finalize_with_the_builders_paths_and_indices() {
    require_root().unwrap();
    let (_t, recorder) = adhoc_buildpack(
        "recorder",
        &[(
            "bin/supply",
            "#!/usr/bin/env bash\nset -euo pipefail\n\
             { echo \"args=$#\"; echo \"build=$1\"; echo \"cache=$2\"; echo \"deps=$3\"; echo \"idx=$4\"; \
               echo \"stack=$CF_STACK\"; echo \"mem=$MEMORY_LIMIT\"; echo \"lang=$LANG\"; \
               echo \"port=${PORT:-unset}\"; echo \"guid=${CF_INSTANCE_GUID:-unset}\"; \
               echo \"greeting=$GREETING\"; echo \"vcap=$VCAP_APPLICATION\"; } > \"$3/$4/recorded\"\n\
             echo \"-----> recorder supplied\"; echo \"recorder warns\" >&2\n",
        )],
    );
    let app = AppInfo::new("stager").with_env("GREETING", "hi");
    let staging = StagingRequest::new(app.clone(), fixture_app("http-app"))
        .buildpack(recorder)
        .buildpack(fixture_buildpack("noop-supply").unwrap())
        .buildpack(fixture_buildpack("libbuildpack-final").unwrap())
        .stage()
        .unwrap();
    staging.ensure_success().unwrap();
    assert_eq!(staging.deps_indices, ["0", "1", "2"]);

    let recorded = std::fs::read_to_string(staging.deps_path(0).join("recorded")).unwrap();
    let deps = staging.deps_dir();
    assert!(
        deps.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("contents")
    );
    for expected in [
        "args=4".to_owned(),
        format!("build={}", staging.build_dir.display()),
        format!("deps={}", deps.display()),
        "idx=0".to_owned(),
        "stack=cflinuxfs4".to_owned(),
        "mem=1024m".to_owned(),
        "lang=en_US.UTF-8".to_owned(),
        "port=unset".to_owned(),
        "guid=unset".to_owned(),
        "greeting=hi".to_owned(),
    ] {
        assert!(
            recorded.lines().any(|l| l == expected),
            "missing {expected:?} in\n{recorded}"
        );
    }
    let cache_line = recorded.lines().find(|l| l.starts_with("cache=")).unwrap();
    assert!(
        cache_line.contains("/cache/") && !cache_line.ends_with("/final"),
        "{cache_line}"
    );
    let vcap: serde_json::Value = serde_json::from_str(
        recorded
            .lines()
            .find_map(|l| l.strip_prefix("vcap="))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(vcap["application_id"], app.guid.as_str());
    assert_eq!(vcap["space_id"], app.space_guid.as_str());
    assert_eq!(vcap["organization_id"], app.org_guid.as_str());
    assert_eq!(
        vcap["application_uris"],
        serde_json::json!(["stager.example.com"])
    );

    // Output keeps stdout and stderr interleaved in order.
    let supplied = staging.output.find("-----> recorder supplied").unwrap();
    let warned = staging.output.find("recorder warns").unwrap();
    let noop = staging.output.find("-----> Noop-supply Buildpack").unwrap();
    assert!(supplied < warned && warned < noop, "{}", staging.output);

    // Droplet layout, staging_info.yml, result.json.
    let contents = &staging.contents_dir;
    for d in ["app", "deps", "profile.d", "tmp", "logs"] {
        assert!(contents.join(d).is_dir(), "droplet has no {d}/");
    }
    assert!(contents.join("app/app.py").is_file());
    let info = staging.staging_info().unwrap();
    assert_eq!(info.start_command, "python3 app.py");
    assert_eq!(info.detected_buildpack, "libbuildpack-final");
    let result: serde_json::Value =
        serde_json::from_str(&staging.result_json_text().unwrap()).unwrap();
    assert_eq!(
        result["process_types"],
        serde_json::json!({"web": "python3 app.py"})
    );
    assert_eq!(result["lifecycle_type"], "buildpack");
    assert_eq!(result["execution_metadata"], "");
    assert_eq!(
        result["lifecycle_metadata"]["buildpack_key"],
        "libbuildpack-final"
    );
    assert_eq!(
        result["lifecycle_metadata"]["detected_buildpack"],
        "libbuildpack-final"
    );
    assert_eq!(
        result["lifecycle_metadata"]["buildpacks"],
        serde_json::json!([
            {"key": "recorder", "name": ""},
            {"key": "noop-supply", "name": "noop-supply", "version": "0.0.1"},
            {"key": "libbuildpack-final", "name": "libbuildpack-final", "version": "0.0.1"},
        ])
    );

    // libbuildpack-style finalize with no deps/*/bin: an empty 000_multi-supply.sh.
    let multi = std::fs::read_to_string(staging.profile_dir().join("000_multi-supply.sh")).unwrap();
    assert_eq!(multi, "");
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn ten_buildpacks_get_zero_padded_indices_and_their_launch_yml_is_not_found() {
    require_root().unwrap();
    let launch = "#!/usr/bin/env bash\nset -euo pipefail\n\
        printf 'processes:\\n- type: side-%s\\n  command: sleep 1000\\n  platforms: {cloudfoundry: {sidecar_for: [web]}}\\n' \"$4\" > \"$3/$4/launch.yml\"\n";
    let mut keep = Vec::new();
    let mut req = StagingRequest::new(AppInfo::new("ten"), fixture_app("http-app"));
    for i in 0..9 {
        let (t, bp) = adhoc_buildpack(&format!("supply-{i}"), &[("bin/supply", launch)]);
        keep.push(t);
        req = req.buildpack(bp);
    }
    let staging = req
        .buildpack(fixture_buildpack("plain-final").unwrap())
        .stage()
        .unwrap();
    staging.ensure_success().unwrap();
    assert_eq!(staging.deps_indices.first().unwrap(), "00");
    assert_eq!(staging.deps_indices.last().unwrap(), "09");
    assert!(staging.deps_path(3).join("launch.yml").is_file());
    // The builder looks for deps/<strconv.Itoa(i)>/launch.yml: none exists, so no sidecars.
    let result = staging.result.as_ref().unwrap();
    assert_eq!(result.sidecars, None);
    assert_eq!(
        result.process_types.get("web").map(String::as_str),
        Some("python3 app.py")
    );
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn failures_map_to_the_builders_exit_codes_and_messages() {
    require_root().unwrap();
    let failing = "#!/usr/bin/env bash\necho '       **ERROR** boom'\nexit 3\n";
    let (_a, bad_supply) = adhoc_buildpack("bad-supply", &[("bin/supply", failing)]);
    let staging = StagingRequest::new(AppInfo::new("fails"), fixture_app("http-app"))
        .buildpack(bad_supply)
        .buildpack(fixture_buildpack("plain-final").unwrap())
        .stage()
        .unwrap();
    assert_eq!(staging.exit_code, 225);
    assert!(
        staging
            .output
            .ends_with("       **ERROR** boom\nFailed to run all supply scripts: exit status 3\n"),
        "{}",
        staging.output
    );

    let (_b, no_supply) = adhoc_buildpack("no-supply", &[("bin/detect", "#!/bin/sh\nexit 1\n")]);
    let staging = StagingRequest::new(AppInfo::new("fails"), fixture_app("http-app"))
        .buildpack(no_supply)
        .buildpack(fixture_buildpack("plain-final").unwrap())
        .stage()
        .unwrap();
    assert_eq!(staging.exit_code, 225);
    assert!(
        staging
            .output
            .contains("does not support multi-buildpack apps"),
        "{}",
        staging.output
    );

    let (_c, bad_release) = adhoc_buildpack(
        "bad-release",
        &[
            ("bin/finalize", "#!/bin/sh\nexit 0\n"),
            (
                "bin/release",
                "#!/bin/sh\necho 'default_process_types: ['\n",
            ),
        ],
    );
    let staging = StagingRequest::new(AppInfo::new("fails"), fixture_app("http-app"))
        .buildpack(bad_release)
        .stage()
        .unwrap();
    assert_eq!(staging.exit_code, 224, "{}", staging.output);

    let (_d, bad_launch) = adhoc_buildpack(
        "bad-launch",
        &[(
            "bin/supply",
            "#!/bin/sh\nprintf 'processes:\\n- type: x\\n  limits: {memory: 64M}\\n' > \"$3/$4/launch.yml\"\n",
        )],
    );
    let staging = StagingRequest::new(AppInfo::new("fails"), fixture_app("http-app"))
        .buildpack(bad_launch)
        .buildpack(fixture_buildpack("plain-final").unwrap())
        .stage()
        .unwrap();
    assert_eq!(staging.exit_code, 1, "{}", staging.output);
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn an_instance_runs_web_and_sidecars_as_vcap_in_its_own_network_namespace() {
    require_root().unwrap();
    // A supply buildpack declaring a sidecar that reports its environment over HTTP on 9000.
    let supply = "#!/usr/bin/env bash\nset -euo pipefail\nmkdir -p \"$3/$4/bin\" \"$3/$4/profile.d\"\n\
        cat > \"$3/$4/bin/probe\" <<'EOF'\n#!/bin/bash\n\
        { id -u; id -g; pwd; echo \"$MEMORY_LIMIT\"; echo \"$PATH\"; echo \"${FROM_PROFILE:-}\"; \
          cat /etc/cf-instance-credentials/instance.crt | head -1; \
          touch /etc/cf-instance-credentials/x 2>/dev/null && echo writable || echo read-only; } > /home/vcap/tmp/probe.out\n\
        echo \"probe listening on 9000\"\nexec python3 -m http.server 9000 --directory /home/vcap/tmp\nEOF\n\
        chmod +x \"$3/$4/bin/probe\"\necho 'export FROM_PROFILE=yes' > \"$3/$4/profile.d/probe.sh\"\n\
        printf 'processes:\\n- type: probe\\n  command: /home/vcap/deps/%s/bin/probe\\n  limits: {memory: 40}\\n  platforms: {cloudfoundry: {sidecar_for: [web]}}\\n' \"$4\" > \"$3/$4/launch.yml\"\n";
    let (_t, probe) = adhoc_buildpack("probe", &[("bin/supply", supply)]);
    let staging = StagingRequest::new(AppInfo::new("probe"), fixture_app("http-app"))
        .buildpack(probe)
        .buildpack(fixture_buildpack("libbuildpack-final").unwrap())
        .stage()
        .unwrap();
    staging.ensure_success().unwrap();
    let sidecars = staging.result.as_ref().unwrap().sidecars.clone().unwrap();
    assert_eq!(sidecars[0].name, "probe");
    assert_eq!(sidecars[0].memory, 40);
    let multi = std::fs::read_to_string(staging.profile_dir().join("000_multi-supply.sh")).unwrap();
    assert_eq!(
        multi,
        "export PATH=$DEPS_DIR/0/bin$([[ ! -z \"${PATH:-}\" ]] && echo \":$PATH\")\n"
    );
    assert!(staging.profile_dir().join("0_probe.sh").is_file());

    let droplet = staging.droplet().unwrap();
    let instance = Instance::launch(
        &droplet,
        &LaunchOptions {
            index: 3,
            ..Default::default()
        },
    )
    .unwrap();
    instance.wait_for_port(8080, ready()).unwrap();
    let probe = instance.process("probe").unwrap();
    probe
        .wait_for_log("probe listening on 9000", ready())
        .unwrap();
    instance.wait_for_port(9000, ready()).unwrap();
    assert!(
        probe
            .stdout()
            .starts_with("Invoking pre-start scripts.\nInvoking start command.\n"),
        "{}",
        probe.stdout()
    );

    let mut conn = instance.connect(9000).unwrap();
    let resp = request(&mut conn, "GET", "/probe.out", "localhost", &[]).unwrap();
    assert_eq!(resp.status, 200);
    let lines: Vec<String> = resp.text().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "2000");
    assert_eq!(lines[1], "2000");
    assert_eq!(lines[2], "/home/vcap/app");
    assert_eq!(lines[3], "40m");
    assert_eq!(
        lines[4],
        "/home/vcap/deps/0/bin:/usr/local/bin:/usr/bin:/bin"
    );
    assert_eq!(lines[5], "yes");
    assert_eq!(lines[6], "-----BEGIN CERTIFICATE-----");
    assert_eq!(lines[7], "read-only");

    // Keep-alive to the app: two requests on one connection, then its environment.
    let mut conn = instance.connect(8080).unwrap();
    let first = request(&mut conn, "GET", "/", "localhost", &[]).unwrap();
    assert_eq!(first.text(), "hello from http-app instance 3\n");
    let env = request(&mut conn, "GET", "/env", "localhost", &[])
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(env["MEMORY_LIMIT"], "216m");
    assert_eq!(env["HOME"], "/home/vcap/app");
    assert_eq!(env["DEPS_DIR"], "/home/vcap/deps");
    assert_eq!(env["USER"], "vcap");
    assert_eq!(env["CF_INSTANCE_GUID"], instance.guid());

    // The instance IP is the certificate's IP SAN and exists only in the namespace.
    let out = instance
        .exec(&["ip", "-o", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/32", instance.ip())));

    // SIGTERM reaches the process itself (python exits on SIGTERM with -15).
    let web = instance.web().unwrap();
    web.signal(rustix::process::Signal::TERM).unwrap();
    let status = web.wait_exit(Duration::from_secs(30)).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status}");

    let ns = instance.netns().path();
    drop(instance);
    assert!(!ns.exists(), "namespace {} left behind", ns.display());
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn two_instances_use_the_same_ports_side_by_side() {
    require_root().unwrap();
    let staging = StagingRequest::new(AppInfo::new("twins"), fixture_app("http-app"))
        .buildpack(fixture_buildpack("plain-final").unwrap())
        .stage()
        .unwrap();
    let droplet = staging.droplet().unwrap();
    let a = Instance::launch(&droplet, &LaunchOptions::default()).unwrap();
    let b = Instance::launch(
        &droplet,
        &LaunchOptions {
            index: 1,
            ..Default::default()
        },
    )
    .unwrap();
    for (i, inst) in [(0, &a), (1, &b)] {
        inst.wait_for_port(8080, ready()).unwrap();
        let mut conn = inst.connect(8080).unwrap();
        let resp = request(&mut conn, "GET", "/", "localhost", &[]).unwrap();
        assert_eq!(resp.text(), format!("hello from http-app instance {i}\n"));
    }
}

/// `openssl verify` of a client chain file (leaf first, intermediate after) against `root` for
/// the TLS client purpose, at the current time; `(ok, output)`.
fn verify_client(root: &std::path::Path, chain: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_ingress_callers_verify_against_the_platform_ca_except_the_foreign_and_the_expired_ones() {
    let me = AppIdentity::random();
    let callers = Callers::for_server(&me).unwrap();
    let root = CellCa::shared().unwrap().root_cert().to_path_buf();
    let id = |c: &Caller| c.identity.clone().unwrap();
    let cert = |c: &Caller| c.cert.clone().unwrap().cert;

    for c in [
        &callers.allowed,
        &callers.same_space,
        &callers.other_space,
        &callers.other_org,
    ] {
        let (ok, out) = verify_client(&root, &cert(c));
        assert!(ok, "{}: {out}", c.what);
        assert_eq!(
            cert_subject_rfc2253(&cert(c)).unwrap(),
            id(c).rfc2253_subject()
        );
        assert!(
            cert_text(&cert(c))
                .unwrap()
                .contains("TLS Web Client Authentication")
        );
    }
    // Who is who, relative to the server.
    let allowed = id(&callers.allowed);
    assert_eq!(
        (&allowed.org_guid, &allowed.space_guid),
        (&me.org_guid, &me.space_guid)
    );
    assert_ne!(allowed.app_guid, me.app_guid);
    let same_space = id(&callers.same_space);
    assert_eq!(same_space.space_guid, me.space_guid);
    assert_ne!(same_space.app_guid, allowed.app_guid);
    let other_space = id(&callers.other_space);
    assert_eq!(other_space.org_guid, me.org_guid);
    assert_ne!(other_space.space_guid, me.space_guid);
    assert_ne!(id(&callers.other_org).org_guid, me.org_guid);

    // The foreign CA's caller claims the allowed app but does not chain to appRootCA.
    assert_eq!(id(&callers.foreign_ca), allowed);
    let (ok, out) = verify_client(&root, &cert(&callers.foreign_ca));
    assert!(
        !ok && out.contains("unable to get local issuer certificate"),
        "{out}"
    );

    // The expired caller is the allowed app from the right CA, valid until yesterday.
    assert_eq!(id(&callers.expired), allowed);
    let (ok, out) = verify_client(&root, &cert(&callers.expired));
    assert!(!ok && out.contains("certificate has expired"), "{out}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_after = cert_not_after_unix(&cert(&callers.expired)).unwrap();
    assert!(not_after < now - 3600, "notAfter {not_after}, now {now}");

    assert!(callers.anonymous.cert.is_none() && callers.anonymous.identity.is_none());
}

#[test]
fn xfcc_inputs_computed_with_openssl_agree_with_the_certificate_itself() {
    let me = AppIdentity::random();
    let ca = CellCa::shared().unwrap();
    let (_dir, issued) = ca.issue_client(&me.app_in_other_org()).unwrap();
    // Hash: the SHA-256 of the leaf's DER, as the fingerprint.
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&issued.cert)
        .output()
        .unwrap()
        .stdout;
    use sha2::Digest;
    assert_eq!(
        cert_sha256_hex(&issued.cert).unwrap(),
        hex::encode(sha2::Sha256::digest(&der))
    );
    // raw: the PEM body is the base64 of that DER.
    let body = cert_pem_body(&issued.cert).unwrap();
    let decoded = std::process::Command::new("openssl")
        .args(["base64", "-d", "-A"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    assert_eq!(decoded, der);
    // The ISO and Unix spellings of notAfter agree.
    let iso = cert_not_after_iso(&issued.cert).unwrap();
    let unix = cert_not_after_unix(&issued.cert).unwrap();
    let back = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%d %H:%M:%SZ"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(String::from_utf8_lossy(&back).trim(), iso);
}

#[test]
#[ignore = "integration test: needs root; run with --include-ignored (scripts/test.sh does)"]
fn ssh_runs_a_command_as_vcap_with_the_web_env_after_the_profile_scripts_and_the_fixture_app_serves_slow_and_upgrade()
 {
    require_root().unwrap();
    let staging = StagingRequest::new(AppInfo::new("ssh"), fixture_app("http-app"))
        .buildpack(fixture_buildpack("libbuildpack-final").unwrap())
        .stage()
        .unwrap();
    staging.ensure_success().unwrap();
    let instance =
        Instance::launch(&staging.droplet().unwrap(), &LaunchOptions::default()).unwrap();
    instance.wait_for_port(8080, ready()).unwrap();

    let out = instance
        .ssh(
            "id -u; pwd; echo \"$CF_INSTANCE_GUID\"; echo \"$EXTRA\"; cat \"$CF_INSTANCE_CERT\" | head -1; ls \"$CF_SYSTEM_CERT_PATH\"",
            &[("EXTRA", "set")],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "2000",
            "/home/vcap/app",
            instance.guid(),
            "set",
            "-----BEGIN CERTIFICATE-----",
            "trusted-ca-1.crt"
        ],
        "{text}"
    );
    let out = instance.ssh("exit 3", &[]).unwrap();
    assert_eq!(out.status.code(), Some(3));

    // /slow logs its start, then answers after the delay.
    let mut conn = instance.connect(8080).unwrap();
    let started = std::time::Instant::now();
    let r = request(&mut conn, "GET", "/slow?seconds=1", "localhost", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 1s\n"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    let log = instance.web().unwrap().stdout();
    assert!(
        log.contains("slow request started: /slow?seconds=1"),
        "{log}"
    );
    assert!(log.contains("connection from 127.0.0.1:"), "{log}");

    // /upgrade: 101, then an echo of raw bytes.
    use std::io::{Read, Write};
    let mut conn = instance.connect(8080).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nfirst",
    )
    .unwrap();
    let head = tls_sidecar_integration::http::read_head(&mut conn).unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(
        head.headers.get("upgrade").map(String::as_str),
        Some("echo")
    );
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"first");
    conn.write_all(b"again").unwrap();
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
    // Without the upgrade headers: 426.
    let mut conn = instance.connect(8080).unwrap();
    let r = request(&mut conn, "GET", "/upgrade", "localhost", &[]).unwrap();
    assert_eq!(r.status, 426);
}
