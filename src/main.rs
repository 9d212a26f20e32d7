//! The `submitgate` binary: parses the command line, sets up logging and runs the subcommand
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
    cli::init_tracing();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("submitgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
