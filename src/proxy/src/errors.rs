//! Every error that stops the sidecar before it serves, with the text the app developer reads in
//! `cf logs` and the exit code. Once serving, nothing here applies: a failed connection or reload
//! is a log line, never an exit, because a sidecar exit kills the whole app instance.

use std::path::PathBuf;
use tls_sidecar_config::{CertificateSource, ConfigError, Env, Origin, VcapApplication};

/// `EX_USAGE` from sysexits.h: the configuration cannot work (docs/DESIGN.md, "Exit codes").
pub const EX_USAGE: u8 = 64;
/// `EX_SOFTWARE` from sysexits.h: the sidecar itself could not set up (not the user's fault).
pub const EX_SOFTWARE: u8 = 70;

/// Why the sidecar did not start. `Display` is the whole user-facing line: what is wrong, then
/// how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `tls-sidecar.yml` or a `TLS_SIDECAR_*` variable is invalid.
    #[error("invalid configuration: {error}. Fix: {}", config_fix(.error, .app))]
    Config { error: ConfigError, app: String },

    /// `--config` or `$TLS_SIDECAR_CONFIG` names a file that is not there.
    #[error(
        "the configuration file {} (named by {named_by}) does not exist. Fix: point {named_by} at an existing tls-sidecar.yml, or leave it unset to use the staged one",
        .path.display()
    )]
    ConfigFileMissing {
        path: PathBuf,
        named_by: &'static str,
    },

    /// The configuration file exists but cannot be read.
    #[error(
        "cannot read the configuration file {}: {cause}. Fix: check that the file is readable by the app's user",
        .path.display()
    )]
    ConfigFileUnreadable {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// `$PORT` is set but is not a port number.
    #[error(
        "PORT \"{value}\" is not a port number (expected 1-65535). Fix: Cloud Foundry sets PORT for the app's process; remove any PORT override (cf unset-env {app} PORT), then cf restart {app}"
    )]
    AppPort { value: String, app: String },

    /// An egress `listen` host that is neither an IP address nor `localhost`.
    #[error(
        "{field}: \"{value}\" is not an IP address or localhost. Fix: listen on an address of this container, e.g. 127.0.0.1:9001, in tls-sidecar.yml, then cf push {app}"
    )]
    EgressListen {
        field: String,
        value: String,
        app: String,
    },

    /// An `allow` or `expect` rule that cannot be resolved in this container, e.g.
    /// `cf:same-space` without `VCAP_APPLICATION.space_id`. Dropping the rule would change who
    /// may call (or be called).
    #[error(
        "{field}: {problem}. Fix: Cloud Foundry sets VCAP_APPLICATION for every app process; outside CF set it (with space_id and organization_id), or name the space or org explicitly (cf:space:<guid>, cf:org:<guid>; cf space SPACE --guid) in tls-sidecar.yml, then cf push {app}"
    )]
    AccessRule {
        field: String,
        problem: String,
        app: String,
    },

    /// A `cf:` rule where there is no instance identity (not on Diego, `certificate.source`
    /// other than `instance` and no `CF_INSTANCE_CERT` file): no peer can be proven to be a CF
    /// app, so the rule could only match certificates from some other CA claiming CF OUs.
    #[error(
        "{field}: {selector} names a Cloud Foundry identity, but this container has no instance identity certificate (certificate.source: {cert_source}, and CF_INSTANCE_CERT is not set or names no file), so no peer can be proven to be a CF app. Fix: run on Cloud Foundry, where Diego provides CF_INSTANCE_CERT; outside CF remove the cf: rules (in egress expect, name the server with dns:<hostname> instead) in tls-sidecar.yml, then cf push {app}"
    )]
    IdentityOutsideCf {
        field: String,
        selector: String,
        cert_source: CertificateSource,
        app: String,
    },

    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),

    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT/SIGHUP handlers: {0}")]
    Signals(std::io::Error),

    /// The TLS server configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(rustls::Error),
}

impl StartError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config { .. }
            | StartError::ConfigFileMissing { .. }
            | StartError::ConfigFileUnreadable { .. }
            | StartError::AppPort { .. }
            | StartError::EgressListen { .. }
            | StartError::AccessRule { .. }
            | StartError::IdentityOutsideCf { .. } => EX_USAGE,
            StartError::Runtime(_) | StartError::Signals(_) | StartError::Tls(_) => EX_SOFTWARE,
        }
    }
}

/// The app's name for `cf` commands in fix texts, or the config crate's placeholder outside CF.
pub(crate) fn app_name(env: &Env) -> String {
    VcapApplication::from_env(env).0.app_name().to_owned()
}

fn config_fix(error: &ConfigError, app: &str) -> String {
    match error.origin() {
        Some(Origin::Env(var)) => format!(
            "cf set-env {app} {var} <value> (or cf unset-env {app} {var}), then cf restart {app}"
        ),
        _ => format!("edit tls-sidecar.yml in the app's root directory, then cf push {app}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_sidecar_config::StagedConfig;

    #[test]
    fn an_env_override_error_tells_how_to_change_the_variable() {
        let env: Env = [("TLS_SIDECAR_PORT".to_owned(), "84x3".to_owned())].into();
        let error = StagedConfig::load_with_env("", "tls-sidecar.yml", &env, 8080).unwrap_err();
        let e = StartError::Config {
            error,
            app: "web".into(),
        };
        let text = e.to_string();
        assert!(text.contains("TLS_SIDECAR_PORT: \"84x3\""), "{text}");
        assert!(
            text.contains("cf set-env web TLS_SIDECAR_PORT <value>"),
            "{text}"
        );
        assert!(text.contains("cf restart web"), "{text}");
        assert_eq!(e.exit_code(), EX_USAGE);
    }

    #[test]
    fn a_file_error_tells_to_edit_the_file_and_push() {
        let env = Env::new();
        let error = StagedConfig::load_with_env("limits:\n  max_connections: 0\n", "f", &env, 8080)
            .unwrap_err();
        let text = StartError::Config {
            error,
            app: "web".into(),
        }
        .to_string();
        assert!(text.contains("limits.max_connections"), "{text}");
        assert!(
            text.ends_with("edit tls-sidecar.yml in the app's root directory, then cf push web")
        );
    }

    #[test]
    fn the_app_name_comes_from_vcap_application() {
        let env: Env = [(
            "VCAP_APPLICATION".to_owned(),
            r#"{"application_name":"shop"}"#.to_owned(),
        )]
        .into();
        assert_eq!(app_name(&env), "shop");
        assert_eq!(app_name(&Env::new()), "APP_NAME");
    }
}
