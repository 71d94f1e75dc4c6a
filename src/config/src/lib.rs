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
mod staged;
mod value;
mod vcap;

pub use app::{
    AdminSpec, AppConfig, CertificateSpec, EgressSpec, LimitsSpec, ListenerSpec, LogSpec,
    MAX_CONFIG_BYTES, SidecarSpec, TrustSpec,
};
pub use error::{ConfigError, Origin};
pub use staged::{
    Admin, Certificate, DEFAULT_APP_PORT, Egress, Limits, Listener, Log, RESERVED_PORTS, Sidecar,
    StagedConfig, Trust,
};
pub use value::{
    CertificateSource, ClientAuth, Guid, HostPort, LogFormat, MemoryMb, Millis, Mode, Selector,
    Xfcc,
};
pub use vcap::VcapApplication;

/// Environment variables as an explicit map (tests pass their own; binaries pass a snapshot).
pub type Env = std::collections::BTreeMap<String, String>;

/// Name of the app's config file in the app root, and of the staged file in `deps/<idx>/`.
pub const CONFIG_FILE_NAME: &str = "tls-sidecar.yml";

/// The environment variables the sidecar and the buildpack read, in the order they are applied.
pub const ENV_OVERRIDES: &[&str] = &[
    "TLS_SIDECAR_PORT",
    "TLS_SIDECAR_UPSTREAM",
    "TLS_SIDECAR_MODE",
    "TLS_SIDECAR_CLIENT_AUTH",
    "TLS_SIDECAR_ALLOW",
    "TLS_SIDECAR_MEMORY",
];
