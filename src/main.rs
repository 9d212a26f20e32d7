//! The `submitgate` binary: parses the command line and runs the subcommand (which sets up logging)
//! ([`cli`]); an error is printed as `submitgate: …` with exit code 1. The logic lives in the
//! library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc instead of glibc's malloc: glibc keeps what a policy reload frees as fragmented
/// heap, while mimalloc gives whole pages back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory a policy load or reload freed back to the system at once. mimalloc purges
/// freed pages only a second after they are freed and only when the process allocates again,
/// so a daemon that reloads and then idles would keep the old tables' pages resident.
fn release_memory() {
    // SAFETY: mi_collect has no preconditions: it may be called from any thread at any time,
    // and only frees pages that hold no live allocation (`force` also purges every arena).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    submitgate::policy::reload::set_memory_release(release_memory);
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
