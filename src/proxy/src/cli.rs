//! The command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// TLS-terminating sidecar for Cloud Foundry apps: serves the Diego instance identity
/// certificate and forwards plaintext to the app on 127.0.0.1:$PORT.
#[derive(Debug, Parser)]
#[command(name = "tls-sidecar", version)]
pub struct Cli {
    /// The tls-sidecar.yml to run with. Default: $TLS_SIDECAR_CONFIG, else
    /// <dir of this binary>/../tls-sidecar.yml if it exists, else built-in defaults.
    /// TLS_SIDECAR_* variables override it.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the configuration, certificate and trust anchors exactly as the sidecar would
    /// (without listening) and report this instance's identity, the listeners and every
    /// problem with its fix. Exit 0: no problems; 1: problems; 64: invalid configuration.
    /// In CF: cf ssh APP -c '/home/vcap/deps/<idx>/bin/tls-sidecar check'
    Check,
}
