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
            eprintln!("submitgate: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message already
/// holds (an error that prints its source, as `cannot listen on X: {source}` does, would
/// otherwise show the OS error twice).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
