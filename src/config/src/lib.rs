//! The `tls-sidecar.yml` contract, shared by the buildpack (at staging) and the sidecar (at start).
//!
//! Data flows one way through three types:
//! - [`AppConfig`]: what the app wrote in `tls-sidecar.yml`, every field optional, unknown keys
//!   rejected. Parsed with line and column in every syntax or type error.
//! - [`StagedConfig`]: the validated configuration with every default filled in. The buildpack
//!   writes it to `deps/<idx>/tls-sidecar.yml` in the same schema, so the sidecar (or a user who
//!   declares the sidecar in a manifest) reads it back with the same parser.
//! - the sidecar's own run-time config (in the `tls-sidecar` crate), resolved from a
//!   `StagedConfig` plus `$PORT`, the instance credentials and `VCAP_APPLICATION`.
//!
//! The `TLS_SIDECAR_*` environment overrides are applied by [`AppConfig::apply_env`] both at
//! staging and again at start, so `cf set-env` + restart takes effect without a restage.
//! Environment arrives as an explicit [`Env`] map: nothing here reads the process environment.

mod app;
mod error;
mod path;
mod staged;
mod value;
mod vcap;

pub use app::{
    AdminSpec, AppConfig, CertificateSpec, EgressProxySpec, EgressSpec, LimitsSpec, ListenerSpec,
    LogSpec, MAX_CONFIG_BYTES, ProxyTargetSpec, RouteSpec, RuleSpec, SidecarSpec, TrustSpec,
};
pub use error::{ConfigError, Origin};
pub use path::{Method, PathError, PathPattern, normalize as normalize_path};
pub use staged::{
    Admin, Certificate, DEFAULT_APP_PORT, DEFAULT_ROUTE_APP_PORT, Egress, EgressProxy, Limits,
    Listener, Log, ProxyTarget, RESERVED_PORTS, RequestRule, Route, Sidecar, StagedConfig, Trust,
    UNFRONTED_XFCC_WARNING,
};
pub use value::{
    CertificateSource, ClientAuth, Fronting, Guid, HostPattern, HostPort, LogFormat, MemoryMb,
    Millis, Mode, Selector, Xfcc,
};
pub use vcap::VcapApplication;

/// Environment variables as an explicit map (tests pass their own; binaries pass a snapshot).
pub type Env = std::collections::BTreeMap<String, String>;

/// Name of the app's config file in the app root, and of the staged file in `deps/<idx>/`.
pub const CONFIG_FILE_NAME: &str = "tls-sidecar.yml";

/// One `TLS_SIDECAR_*` variable and the configuration field it overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: &'static str,
    /// The field as errors name it (`listeners[0].port`).
    pub field: &'static str,
}

impl EnvOverride {
    /// Whether it refines the first TLS listener (and so needs one to exist).
    pub fn is_listener(&self) -> bool {
        self.field.starts_with("listeners[0].")
    }
}

/// Set by the buildpack's profile script, for the processes the sidecar runs beside, when it
/// moves the app off the route port: the route port as CF gave it (`$PORT` before the move).
/// The sidecar serves this port while it is set.
pub const ROUTE_PORT_ENV: &str = "TLS_SIDECAR_ROUTE_PORT";

/// The environment variables the sidecar and the buildpack read, in the order they are applied.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "TLS_SIDECAR_PORT",
        field: "listeners[0].port",
    },
    EnvOverride {
        var: "TLS_SIDECAR_UPSTREAM",
        field: "listeners[0].upstream",
    },
    EnvOverride {
        var: "TLS_SIDECAR_MODE",
        field: "listeners[0].mode",
    },
    EnvOverride {
        var: "TLS_SIDECAR_CLIENT_AUTH",
        field: "listeners[0].client_auth",
    },
    EnvOverride {
        var: "TLS_SIDECAR_ALLOW",
        field: "listeners[0].allow",
    },
    EnvOverride {
        var: "TLS_SIDECAR_MEMORY",
        field: "sidecar.memory",
    },
];
