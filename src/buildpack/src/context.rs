//! The phases' positional arguments as typed values (cf-buildpack-contract.md §1.3, §1.5).

use crate::errors::Error;
use crate::phase::Phase;
use std::ffi::OsString;
use std::path::PathBuf;

/// Where the deps tree is mounted when the app runs. Staging's `DEPS_DIR` is a random
/// `/tmp/contentsNNNN/deps` that does not exist at run time, so anything that runs later (the
/// sidecar command in launch.yml) must use this literal path (contract §2.6).
pub const RUNTIME_DEPS_DIR: &str = "/home/vcap/deps";

/// `bin/supply BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupplyArgs {
    pub build_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub deps_dir: PathBuf,
    /// Verbatim, possibly zero-padded (`"02"`): it is the directory name under `DEPS_DIR`.
    pub deps_idx: String,
}

impl SupplyArgs {
    pub fn parse(args: &[OsString]) -> Result<Self, Error> {
        let [build_dir, cache_dir, deps_dir, deps_idx] = args else {
            return Err(Error::Usage {
                phase: Phase::Supply,
                got: args.len(),
            });
        };
        Ok(SupplyArgs {
            build_dir: existing_dir("BUILD_DIR", build_dir)?,
            cache_dir: cache_dir.into(),
            deps_dir: deps_dir.into(),
            deps_idx: deps_idx_arg(deps_idx)?,
        })
    }

    /// `DEPS_DIR/DEPS_IDX`, this buildpack's directory during staging.
    pub fn dep_dir(&self) -> PathBuf {
        self.deps_dir.join(&self.deps_idx)
    }

    /// `/home/vcap/deps/DEPS_IDX`, the same directory at run time.
    pub fn runtime_dep_dir(&self) -> String {
        format!("{RUNTIME_DEPS_DIR}/{}", self.deps_idx)
    }
}

/// `bin/finalize BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX PROFILE_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizeArgs {
    pub build_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub deps_dir: PathBuf,
    pub deps_idx: String,
    pub profile_dir: PathBuf,
}

impl FinalizeArgs {
    /// Like libbuildpack's `NewStager`, a missing or empty `PROFILE_DIR` (older builders passed
    /// four arguments) means `BUILD_DIR/.profile.d`.
    pub fn parse(args: &[OsString]) -> Result<Self, Error> {
        let (build_dir, cache_dir, deps_dir, deps_idx, profile_dir) = match args {
            [b, c, d, i] => (b, c, d, i, None),
            [b, c, d, i, p] => (b, c, d, i, Some(p).filter(|p| !p.is_empty())),
            _ => {
                return Err(Error::Usage {
                    phase: Phase::Finalize,
                    got: args.len(),
                });
            }
        };
        let build_dir = existing_dir("BUILD_DIR", build_dir)?;
        Ok(FinalizeArgs {
            profile_dir: profile_dir.map_or_else(|| build_dir.join(".profile.d"), PathBuf::from),
            build_dir,
            cache_dir: cache_dir.into(),
            deps_dir: deps_dir.into(),
            deps_idx: deps_idx_arg(deps_idx)?,
        })
    }
}

/// `bin/release BUILD_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseArgs {
    pub build_dir: PathBuf,
}

impl ReleaseArgs {
    pub fn parse(args: &[OsString]) -> Result<Self, Error> {
        let [build_dir] = args else {
            return Err(Error::Usage {
                phase: Phase::Release,
                got: args.len(),
            });
        };
        Ok(ReleaseArgs {
            build_dir: build_dir.into(),
        })
    }
}

fn existing_dir(name: &'static str, arg: &OsString) -> Result<PathBuf, Error> {
    let path = PathBuf::from(arg);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(Error::NotADirectory { name, path })
    }
}

/// Digits only: the index becomes a directory name and part of the sidecar's shell command,
/// so anything else (`..`, `/`, spaces, `$`) must never get that far.
fn deps_idx_arg(arg: &OsString) -> Result<String, Error> {
    match arg.to_str() {
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(s.to_owned()),
        _ => Err(Error::DepsIdx(arg.to_string_lossy().into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn supply_keeps_a_zero_padded_index_verbatim_for_paths_and_the_runtime_command() {
        let tmp = tempfile::tempdir().unwrap();
        let b = tmp.path().to_str().unwrap();
        let s = SupplyArgs::parse(&args(&[b, "/c", "/tmp/contents1/deps", "02"])).unwrap();
        assert_eq!(s.dep_dir(), PathBuf::from("/tmp/contents1/deps/02"));
        assert_eq!(s.runtime_dep_dir(), "/home/vcap/deps/02");
    }

    #[test]
    fn supply_rejects_a_wrong_count_and_an_index_that_is_not_digits() {
        let tmp = tempfile::tempdir().unwrap();
        let b = tmp.path().to_str().unwrap();
        assert!(matches!(
            SupplyArgs::parse(&args(&[b, "/c"])),
            Err(Error::Usage { got: 2, .. })
        ));
        for bad in ["", "../x", "1 ", "-1"] {
            assert!(
                matches!(
                    SupplyArgs::parse(&args(&[b, "/c", "/d", bad])),
                    Err(Error::DepsIdx(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            SupplyArgs::parse(&args(&["/no/such/dir", "/c", "/d", "0"])),
            Err(Error::NotADirectory {
                name: "BUILD_DIR",
                ..
            })
        ));
    }

    #[test]
    fn finalize_without_a_profile_dir_uses_the_app_profile_d_like_libbuildpack() {
        let tmp = tempfile::tempdir().unwrap();
        let b = tmp.path().to_str().unwrap();
        let f = FinalizeArgs::parse(&args(&[b, "/c", "/d", "0"])).unwrap();
        assert_eq!(f.profile_dir, tmp.path().join(".profile.d"));
        let f = FinalizeArgs::parse(&args(&[b, "/c", "/d", "0", "/p"])).unwrap();
        assert_eq!(f.profile_dir, PathBuf::from("/p"));
    }
}
