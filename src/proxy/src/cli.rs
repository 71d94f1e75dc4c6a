//! The command line.

use clap::Parser;
use std::path::PathBuf;

/// TLS-terminating sidecar for Cloud Foundry apps: serves the Diego instance identity
/// certificate and forwards plaintext to the app on 127.0.0.1:$PORT.
#[derive(Debug, Parser)]
#[command(name = "tls-sidecar", version)]
pub struct Cli {
    /// The tls-sidecar.yml to run with. Default: $TLS_SIDECAR_CONFIG, else
    /// <dir of this binary>/../tls-sidecar.yml if it exists, else built-in defaults.
    /// TLS_SIDECAR_* variables override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}
