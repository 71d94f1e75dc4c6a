//! The tls-sidecar Cloud Foundry buildpack: every phase in one multi-call binary.
//!
//! A user pushes `cf push myapp -b tls_sidecar_buildpack -b python_buildpack`; staging runs our
//! `bin/supply`, which installs the `tls-sidecar` proxy into `deps/<idx>/bin` and declares it
//! as a sidecar in `deps/<idx>/launch.yml`. `finalize` and `release` let the buildpack be the
//! final one for prebuilt binaries; `detect` never matches (supply buildpacks are named).
//!
//! `main.rs` parses the command line ([`cli::Invocation`]), snapshots the environment once
//! into a [`tls_sidecar_config::Env`] and calls [`run`]; nothing below reads the process
//! environment. User-facing error text lives in [`errors`], the log voice in [`output`], and
//! every file format written in [`formats`].

pub mod cli;
pub mod context;
pub mod errors;
pub mod extract;
pub mod fetch;
pub mod finalize;
pub mod formats;
pub mod fsutil;
pub mod manifest;
pub mod output;
pub mod phase;
pub mod supply;

/// An environment of `pairs`, for unit tests.
#[cfg(test)]
fn test_env(pairs: &[(&str, &str)]) -> tls_sidecar_config::Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

use cli::Invocation;
use context::{FinalizeArgs, ReleaseArgs, SupplyArgs};
use errors::Error;
use output::Output;
use phase::Phase;
use std::io::Write;
use std::path::Path;
use tls_sidecar_config::Env;

/// How a phase ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `detect` declined: the process exits 1, which is the answer, not a failure.
    NotDetected,
}

/// Runs one phase. Log lines (and release's YAML) go to `out`; errors are returned for the
/// caller to render with [`errors::print`], to stdout or stderr as the phase requires.
pub fn run<W: Write>(inv: &Invocation, env: &Env, out: &mut Output<W>) -> Result<Outcome, Error> {
    match inv.phase {
        // A supply-only buildpack must never win auto-detection (contract §1.2): no output.
        Phase::Detect => Ok(Outcome::NotDetected),
        Phase::Supply => {
            supply::run(&SupplyArgs::parse(&inv.args)?, &inv.options, env, out)?;
            Ok(Outcome::Done)
        }
        Phase::Finalize => {
            finalize::run(&FinalizeArgs::parse(&inv.args)?, &inv.options, env, out)?;
            Ok(Outcome::Done)
        }
        Phase::Release => {
            ReleaseArgs::parse(&inv.args)?;
            out.raw(formats::RELEASE_YAML);
            Ok(Outcome::Done)
        }
    }
}

/// The buildpack's version: its `VERSION` file (the packager writes it), else this crate's.
pub fn buildpack_version(buildpack_dir: Option<&Path>) -> String {
    buildpack_dir
        .and_then(|d| std::fs::read_to_string(d.join("VERSION")).ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}
