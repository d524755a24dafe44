//! The `prism` command: parses the command line and runs it ([`prism::cli`]).
//!
//! An error prints as one line (with its causes) and exits 1, whatever `RUST_BACKTRACE` says:
//! a failed `prism test` or an unreachable server is the user's to act on, not a crash.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = prism::cli::Cli::parse();
    match prism::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
