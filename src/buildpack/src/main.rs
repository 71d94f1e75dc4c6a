//! `tls-sidecar-buildpack <detect|supply|finalize|release> ARGS...` (or a link named after the
//! phase). Wiring only: the work is in the library.

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;
use tls_sidecar_buildpack::cli::Invocation;
use tls_sidecar_buildpack::errors::{self, Error, exit_code};
use tls_sidecar_buildpack::output::Output;
use tls_sidecar_buildpack::phase::Phase;
use tls_sidecar_buildpack::{Outcome, run};
use tls_sidecar_config::Env;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The one read of the process environment; everything below gets this map. Variables that
    // are not UTF-8 cannot be ours (or CF's), so they are dropped rather than mangled.
    let env: Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let exe = std::env::current_exe().ok();

    let inv = match Invocation::parse(&argv, exe.as_deref()) {
        Ok(inv) => inv,
        Err(e) => return fail(&e, &env, true),
    };
    match run(&inv, &env, &mut Output::new(io::stdout().lock(), &env)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotDetected) => ExitCode::from(exit_code::NOT_DETECTED),
        // release's stdout is YAML the builder parses, so its errors must not land there.
        Err(e) => fail(&e, &env, inv.phase == Phase::Release),
    }
}

fn fail(e: &Error, env: &Env, to_stderr: bool) -> ExitCode {
    if to_stderr {
        errors::print(e, env, &mut Output::new(io::stderr().lock(), env));
    } else {
        errors::print(e, env, &mut Output::new(io::stdout().lock(), env));
    }
    ExitCode::from(errors::exit_code(e))
}
