//! `tls-sidecar.yml` as an app could write it: arbitrary text through `AppConfig::parse` and
//! `StagedConfig::from_app`, exactly as `bin/supply` runs them.
//!
//! Must never panic, and every error must render (as the staging log would print it). When the
//! text stages, the staged file that supply writes must read back, through the sidecar's own
//! loader, to the very same configuration: that file is the contract between the two binaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar_buildpack::errors::{Error, report};
use tls_sidecar_config::{AppConfig, DEFAULT_APP_PORT, Env, StagedConfig};

const FILE: &str = "tls-sidecar.yml";

fuzz_target!(|data: &[u8]| {
    // AppConfig::load reads the file with read_to_string: non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let app = match AppConfig::parse(text, FILE) {
        Ok(app) => app,
        Err(e) => {
            let _ = report(&Error::Config(e), "app");
            return;
        }
    };
    let (staged, _warnings) = match StagedConfig::from_app(&app, FILE, &[], DEFAULT_APP_PORT) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = report(&Error::Config(e), "app");
            return;
        }
    };
    let yaml = staged.to_yaml();
    let (back, _, used) = match StagedConfig::load_with_env(
        &yaml,
        FILE,
        &Env::new(),
        DEFAULT_APP_PORT,
    ) {
        Ok(ok) => ok,
        Err(e) => panic!(
            "the staged file does not read back: {e}\n--- input ---\n{text}\n--- staged ---\n{yaml}"
        ),
    };
    assert!(used.is_empty());
    assert_eq!(
        back, staged,
        "the staged file reads back to another config\n--- input ---\n{text}\n--- staged ---\n{yaml}"
    );
});
