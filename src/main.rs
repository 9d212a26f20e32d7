//! The `submitgate` binary: parses the command line and runs the subcommand (which sets up logging)
//! ([`cli`]); an error is printed as `submitgate: …` with exit code 1. The logic lives in the
//! library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc instead of glibc's malloc: a policy reload frees millions of small blocks, which
/// glibc keeps as fragmented heap (hundreds of MB) while mimalloc returns them to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("submitgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
