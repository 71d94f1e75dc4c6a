//! The `TLS_SIDECAR_*` overrides with arbitrary values, over a few representative app configs,
//! as staging applies them and as the sidecar applies them again at start.
//!
//! Must never panic; an error must name the variable it came from; a value that was accepted
//! must be the value that was staged; and applying the same variables again to the staged file
//! (what the sidecar does at start) must give the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar_buildpack::errors::{Error, report};
use tls_sidecar_config::{AppConfig, ENV_OVERRIDES, Env, MemoryMb, Origin, StagedConfig};

const FILE: &str = "tls-sidecar.yml";

/// Starting points: no file, a listener list, egress only, mTLS with an allow list.
const BASES: &[&str] = &[
    "",
    "listeners:\n  - port: 9443\n  - port: 9444\n    mode: http\n",
    "listeners: []\negress:\n  - name: backend\n    listen: 127.0.0.1:9001\n    target: backend.apps.internal:8443\n    expect: [cf:any]\n",
    "listeners:\n  - port: 8443\n    allow: [cf:same-space]\nsidecar:\n  memory: 64M\n",
];

fuzz_target!(|input: (u8, u16, [Option<String>; 6])| {
    let (base, app_port, values) = input;
    let app_port = app_port.max(1);
    let Ok(mut app) = AppConfig::parse(BASES[usize::from(base) % BASES.len()], FILE) else {
        panic!("a base config does not parse");
    };
    let env: Env = ENV_OVERRIDES
        .iter()
        .zip(values)
        .filter_map(|(o, value)| Some((o.var.to_owned(), value?)))
        .collect();
    let set = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

    let used = match app.apply_env(&env) {
        Ok(used) => used,
        Err(e) => {
            match e.origin() {
                Some(Origin::Env(var)) => assert!(
                    ENV_OVERRIDES.iter().any(|o| o.var == var) && set(&var).is_some(),
                    "error blamed on {var}, which was not set: {e}"
                ),
                other => panic!("an env error not attributed to a variable ({other:?}): {e}"),
            }
            let _ = report(&Error::Config(e), "app");
            return;
        }
    };
    for name in &used {
        assert!(set(name).is_some(), "{name} reported as used but not set");
    }

    let (staged, _) = match StagedConfig::from_app(&app, FILE, &used, app_port) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = report(&Error::Config(e), "app");
            return;
        }
    };
    if let Some(port) = set("TLS_SIDECAR_PORT") {
        assert_eq!(Ok(staged.listeners[0].port), port.parse::<u16>());
    }
    if let Some(mem) = set("TLS_SIDECAR_MEMORY") {
        assert_eq!(Ok(staged.sidecar.memory), mem.parse::<MemoryMb>());
    }

    // At start the sidecar reads the staged file and applies the same variables again.
    let yaml = staged.to_yaml();
    match StagedConfig::load_with_env(&yaml, FILE, &env, app_port) {
        Ok((again, _, _)) => assert_eq!(
            again, staged,
            "applying the variables again at start changes the config\n{env:?}\n{yaml}"
        ),
        Err(e) => {
            panic!("the staged file with the same variables fails at start: {e}\n{env:?}\n{yaml}")
        }
    }
});
