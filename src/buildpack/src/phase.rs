//! The buildpack phases, named apart from the command line that picks one so that errors
//! can name a phase without depending on argument parsing.

use std::ffi::OsStr;

/// The buildpack phases the Cloud Foundry builder runs (cf-buildpack-contract.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Detect,
    Supply,
    Finalize,
    Release,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Detect,
        Phase::Supply,
        Phase::Finalize,
        Phase::Release,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Detect => "detect",
            Phase::Supply => "supply",
            Phase::Finalize => "finalize",
            Phase::Release => "release",
        }
    }

    /// The positional arguments the builder passes, for usage messages.
    pub fn usage(self) -> &'static str {
        match self {
            Phase::Detect => "BUILD_DIR",
            Phase::Supply => "BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX",
            Phase::Finalize => "BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX PROFILE_DIR",
            Phase::Release => "BUILD_DIR",
        }
    }

    pub(crate) fn from_name(name: &OsStr) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| OsStr::new(p.name()) == name)
    }
}
