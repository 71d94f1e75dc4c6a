//! Which phase to run and with which arguments: the multi-call part of the binary.
//!
//! The packaged zip has one binary, `lib/tls-sidecar-buildpack`, and bash shims
//! `bin/<phase>` that run it as `tls-sidecar-buildpack <phase> ARGS...`. The phase is therefore
//! `argv[1]`; a link named after the phase (`supply ARGS...`) works too, so the binary can also
//! be installed as `bin/supply` itself.

use crate::errors::Error;
use crate::phase::Phase;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The production retry schedule for dependency downloads: about 31 s of waiting in total,
/// inside libbuildpack's one-minute budget for the same job.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// Settings that are not part of the CF contract. The shims never pass them; tests and people
/// debugging a buildpack do, as `--option value` before the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The unpacked buildpack (holds `manifest.yml`, `VERSION`, `dependencies/`). Default:
    /// `dirname(current_exe)/..`, i.e. the parent of `lib/`. `--buildpack-dir DIR`.
    pub buildpack_dir: Option<PathBuf>,
    /// Waits between download attempts; one attempt more than there are delays.
    /// `--retry-delays-ms 1000,2000` (empty: no retry).
    pub retry_delays: Vec<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            buildpack_dir: None,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub phase: Phase,
    /// The phase's positional arguments, as the builder passed them.
    pub args: Vec<OsString>,
    pub options: Options,
}

impl Invocation {
    /// Parses `argv` (with `argv[0]`). `current_exe` gives the default buildpack dir.
    pub fn parse(argv: &[OsString], current_exe: Option<&Path>) -> Result<Invocation, Error> {
        let mut options = Options {
            buildpack_dir: current_exe
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(Path::to_path_buf),
            ..Options::default()
        };
        let mut rest = argv.get(1..).unwrap_or_default();
        while let Some(flag) = rest
            .first()
            .and_then(|a| a.to_str())
            .filter(|a| a.starts_with("--"))
        {
            let value = rest.get(1).ok_or_else(|| Error::OptionValue {
                option: flag.to_owned(),
                value: None,
            })?;
            match flag {
                "--buildpack-dir" => options.buildpack_dir = Some(PathBuf::from(value)),
                "--retry-delays-ms" => {
                    options.retry_delays =
                        parse_delays(value).ok_or_else(|| Error::OptionValue {
                            option: flag.to_owned(),
                            value: Some(value.to_string_lossy().into_owned()),
                        })?
                }
                _ => return Err(Error::UnknownOption(flag.to_owned())),
            }
            rest = &rest[2..];
        }

        if let Some(phase) = rest.first().and_then(|a| Phase::from_name(a)) {
            return Ok(Invocation {
                phase,
                args: rest[1..].to_vec(),
                options,
            });
        }
        let program = argv.first().map(Path::new).and_then(Path::file_name);
        match program.and_then(Phase::from_name) {
            Some(phase) => Ok(Invocation {
                phase,
                args: rest.to_vec(),
                options,
            }),
            None => Err(Error::UnknownPhase {
                given: rest.first().map(|a| a.to_string_lossy().into_owned()),
            }),
        }
    }
}

fn parse_delays(value: &OsStr) -> Option<Vec<Duration>> {
    let text = value.to_str()?.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|ms| ms.trim().parse().ok().map(Duration::from_millis))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_phase_comes_from_the_first_argument_as_the_shims_pass_it() {
        let inv = Invocation::parse(
            &argv(&[
                "/bp/lib/tls-sidecar-buildpack",
                "supply",
                "a",
                "b",
                "c",
                "0",
            ]),
            Some(Path::new("/bp/lib/tls-sidecar-buildpack")),
        )
        .unwrap();
        assert_eq!(inv.phase, Phase::Supply);
        assert_eq!(inv.args, argv(&["a", "b", "c", "0"]));
        assert_eq!(inv.options.buildpack_dir, Some(PathBuf::from("/bp")));
        assert_eq!(inv.options.retry_delays, DEFAULT_RETRY_DELAYS.to_vec());
    }

    #[test]
    fn a_binary_named_after_a_phase_runs_that_phase() {
        let inv = Invocation::parse(&argv(&["/bp/bin/release", "/tmp/app"]), None).unwrap();
        assert_eq!((inv.phase, inv.args), (Phase::Release, argv(&["/tmp/app"])));
    }

    #[test]
    fn options_before_the_phase_set_the_buildpack_dir_and_retry_schedule() {
        let inv = Invocation::parse(
            &argv(&[
                "x",
                "--buildpack-dir",
                "/b",
                "--retry-delays-ms",
                "0,5",
                "detect",
                "/app",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(inv.options.buildpack_dir, Some(PathBuf::from("/b")));
        assert_eq!(
            inv.options.retry_delays,
            [Duration::ZERO, Duration::from_millis(5)]
        );
        let inv =
            Invocation::parse(&argv(&["x", "--retry-delays-ms", "", "detect"]), None).unwrap();
        assert!(inv.options.retry_delays.is_empty());
    }

    #[test]
    fn an_unknown_phase_or_option_is_an_error() {
        let e = Invocation::parse(
            &argv(&["/bp/lib/tls-sidecar-buildpack", "compile", "/app"]),
            None,
        );
        assert!(matches!(e, Err(Error::UnknownPhase { given: Some(g) }) if g == "compile"));
        let e = Invocation::parse(&argv(&["tls-sidecar-buildpack"]), None);
        assert!(matches!(e, Err(Error::UnknownPhase { given: None })));
        let e = Invocation::parse(&argv(&["x", "--nope", "1", "supply"]), None);
        assert!(matches!(e, Err(Error::UnknownOption(o)) if o == "--nope"));
        let e = Invocation::parse(&argv(&["x", "--retry-delays-ms", "1s", "supply"]), None);
        assert!(matches!(e, Err(Error::OptionValue { .. })));
    }
}
