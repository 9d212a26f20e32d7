//! The `submitgate` binary: parses the command line and runs the subcommand (which sets up logging)
//! ([`cli`]); an error is printed as `submitgate: …` with exit code 1. The logic lives in the
//! library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// jemalloc, chosen on measurements (README "Soak", "Policy memory"): under the soak's load and
/// after a Sent Items backlog drains it holds 17–22 MiB where mimalloc held 30–110 MiB (pages
/// kept per thread, not given back after a backlog) and glibc's malloc 16–23 MiB only when
/// trimmed (40–45 MiB otherwise), and it gives a policy reload's memory back. Its background
/// thread (Cargo.toml: `background_threads`) purges freed pages about 10 s after they are
/// freed, also while the daemon idles, so no request path or worker has to call anything.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives the memory a policy load or reload freed back to the system at once, instead of over
/// the next ~10 s of jemalloc's decay: a reload frees a whole snapshot's tables in one go.
fn release_memory() {
    // SAFETY: "arena.4096.purge" (4096 = MALLCTL_ARENAS_ALL: every arena) is a control that
    // takes and returns nothing, so both value pointers are null and both lengths 0, as
    // mallctl(3) requires; the name is NUL-terminated. It only purges unused dirty pages and
    // may run on any thread at any time. Its status is of no use here: on failure the pages
    // are still purged by the background thread's decay.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
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
