//! Policy memory benchmark: generates N mailboxes over M policy files in a temp directory,
//! loads them as the daemon does, and reports the load time, the resident memory once loaded
//! (VmRSS from /proc/self/status), the peak during a reload (VmHWM, reset before each reload
//! through /proc/self/clear_refs) and the resident memory after 10 reloads that each change one
//! file, then the peak of one reload that changes every file (nothing to share). Reloads go through
//! the daemon's own [`Reloader`], so the old snapshot stays in force while the new one is
//! built, as in production. Uses the same allocator as the `submitgate` binary, or another one
//! named by `ALLOC=` in the environment (`glibc`, `mimalloc`, `jemalloc`).
//!
//! ```sh
//! cargo run --release --example policy_memory -- --mailboxes 1000000 --files 1000
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use submitgate::audit::{self, Audit};
use submitgate::policy::reload::{load, PolicyHandle, ReloadOutcome, Reloader};
use submitgate::policy::LoadOptions;

#[path = "common/alloc.rs"]
mod alloc;

/// The binary's allocator, or another one named by `ALLOC=` (glibc, mimalloc, jemalloc).
#[global_allocator]
static ALLOCATOR: alloc::Switch = alloc::Switch::new();

/// A `Vm…:` line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time this process has used (user + system): on a shared machine, what a load costs
/// apart from waiting for a core.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rss_mib() -> f64 {
    status_kib("VmRSS") as f64 / 1024.0
}

fn hwm_mib() -> f64 {
    status_kib("VmHWM") as f64 / 1024.0
}

/// Starts a new peak measurement (VmHWM := VmRSS).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset VmHWM ({e}); peaks include the initial load");
    }
}

/// Lets the allocator hand back what the reloader's release left (jemalloc's background
/// thread, mimalloc's delayed purge), as a daemon that goes on serving would.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Writes `files` organizations with `mailboxes` mailboxes between them; returns the bytes.
/// Written line by line, so that generating a large file leaves no large heap behind.
fn generate(dir: &Path, mailboxes: usize, files: usize) -> std::io::Result<u64> {
    let per_file = mailboxes.div_ceil(files.max(1));
    let mut total = 0;
    let mut left = mailboxes;
    for f in 0..files {
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("org{f:04}.yaml")))?);
        let head = format!("organization: org{f:04}\ndomains: [org{f:04}.example]\nmailboxes:\n");
        out.write_all(head.as_bytes())?;
        total += head.len() as u64;
        for m in 0..per_file.min(left) {
            let settings = match m % 8 {
                0 => "{ smtp_client_authentication_disabled: true }",
                1 => "{ max_concurrent_sessions_per_mailbox: 5 }",
                _ => "{}",
            };
            let line = format!("  u{m}@org{f:04}.example: {settings}\n");
            out.write_all(line.as_bytes())?;
            total += line.len() as u64;
        }
        out.flush()?;
        left = left.saturating_sub(per_file);
    }
    Ok(total)
}

/// Changes one file's text (a comment), so that a reload builds a new snapshot.
fn touch(dir: &Path, round: usize) -> std::io::Result<()> {
    let path = dir.join("org0000.yaml");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("# edit {round}\n"));
    std::fs::write(&path, text)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mailboxes = arg(&args, "--mailboxes", 1_000_000);
    let files = arg(&args, "--files", 1000);
    let reloads = arg(&args, "--reloads", 10);
    let verbose = args.iter().any(|a| a == "--verbose");

    alloc::init();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir)?;
    let bytes = generate(&dir, mailboxes, files)?;
    println!(
        "{mailboxes} mailboxes in {files} files, {:.1} MB of YAML; {}",
        bytes as f64 / 1e6,
        alloc::name()
    );
    let (audit, writer) = Audit::start(&audit::Settings {
        target: audit::Target::File(tmp.path().join("audit.log")),
        queue: 64,
        mode: audit::DEFAULT_MODE,
    })?;
    settle();
    let baseline = rss_mib();
    reset_peak();

    let opts = LoadOptions::default();
    let started = Instant::now();
    let cpu_before = cpu_time();
    let snapshot = load(&dir, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let load_time = started.elapsed();
    let load_cpu = cpu_time() - cpu_before;
    let load_peak = hwm_mib();
    assert_eq!(snapshot.mailbox_count(), mailboxes);
    let table_mib = snapshot.mailbox_heap_bytes() as f64 / (1024.0 * 1024.0);
    let reloader = Reloader::new(PolicyHandle::new(snapshot), dir.clone(), opts, audit);
    settle();
    let steady = rss_mib();
    println!("baseline before loading: {baseline:.1} MiB; mailbox tables hold {table_mib:.1} MiB");
    println!(
        "load: {:.2} s ({:.2} s CPU), peak {load_peak:.1} MiB, steady {steady:.1} MiB",
        load_time.as_secs_f64(),
        load_cpu.as_secs_f64()
    );

    reset_peak();
    let started = Instant::now();
    let outcome = reloader.reload().await;
    let unchanged_time = started.elapsed();
    anyhow::ensure!(
        matches!(
            outcome,
            ReloadOutcome::Reloaded {
                unchanged: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    let unchanged_peak = hwm_mib();
    println!(
        "reload, files unchanged: {:.2} s, peak {unchanged_peak:.1} MiB ({:.2}x steady)",
        unchanged_time.as_secs_f64(),
        unchanged_peak / steady
    );

    let mut worst_peak: f64 = 0.0;
    let mut slowest = Duration::ZERO;
    for round in 0..reloads {
        touch(&dir, round)?;
        reset_peak();
        let started = Instant::now();
        let outcome = reloader.reload().await;
        slowest = slowest.max(started.elapsed());
        anyhow::ensure!(
            matches!(
                outcome,
                ReloadOutcome::Reloaded {
                    unchanged: false,
                    ..
                }
            ),
            "{outcome:?}"
        );
        worst_peak = worst_peak.max(hwm_mib());
        if verbose {
            println!(
                "  reload {}: peak {:.1} MiB, then {:.1} MiB",
                round + 1,
                hwm_mib(),
                rss_mib()
            );
        }
    }
    settle();
    let after = rss_mib();
    println!(
        "reload, one file changed ({reloads} times): slowest {:.2} s, peak {worst_peak:.1} MiB ({:.2}x steady)",
        slowest.as_secs_f64(),
        worst_peak / steady
    );
    println!(
        "after {reloads} reloads: {after:.1} MiB ({:+.1} % of steady)",
        (after / steady - 1.0) * 100.0
    );

    // The worst case for sharing: every file changed, so every table is built anew while the
    // old ones are in force.
    for f in 0..files {
        let path = dir.join(format!("org{f:04}.yaml"));
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        file.write_all(b"# every file edited\n")?;
    }
    reset_peak();
    let started = Instant::now();
    let outcome = reloader.reload().await;
    let all_time = started.elapsed();
    anyhow::ensure!(
        matches!(
            outcome,
            ReloadOutcome::Reloaded {
                unchanged: false,
                ..
            }
        ),
        "{outcome:?}"
    );
    let all_peak = hwm_mib();
    settle();
    println!(
        "reload, every file changed: {:.2} s, peak {all_peak:.1} MiB ({:.2}x steady), then {:.1} MiB",
        all_time.as_secs_f64(),
        all_peak / steady,
        rss_mib()
    );
    drop(reloader);
    writer.finish().await;
    Ok(())
}
