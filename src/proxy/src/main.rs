//! `tls-sidecar`: parse the command line, snapshot the environment, run the library.

use clap::Parser;
use std::process::ExitCode;
use tls_sidecar::{Cli, Command, EX_USAGE, Env, StartError, logging};

// musl's allocator serialises threads on a static build; mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // A bad flag is a usage error like a bad config (64); --help and --version are not.
        let _ = e.print();
        std::process::exit(if e.use_stderr() {
            i32::from(EX_USAGE)
        } else {
            0
        });
    });
    // The only read of the process environment: everything below gets this snapshot.
    let env: Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let exe = std::env::current_exe().ok();
    if let Some(Command::Check) = cli.command {
        let (code, report) = tls_sidecar::check::run(cli.config.as_deref(), &env, exe.as_deref());
        print!("{report}");
        return ExitCode::from(code);
    }
    let result =
        tls_sidecar::load(cli.config.as_deref(), &env, exe.as_deref()).and_then(|loaded| {
            logging::init(&loaded.plan.config.log);
            loaded.origin.log_summary();
            let runtime = tls_sidecar::runtime().map_err(StartError::Runtime)?;
            runtime.block_on(tls_sidecar::run_until_signalled(loaded.plan))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::init_default(); // no-op when the configuration already set it up
            tracing::error!(exit_code = e.exit_code(), "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
