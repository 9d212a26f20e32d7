//! `submitgate generate DIR` (hidden): the man pages (`DIR/man/submitgate*.1`, clap_mangen)
//! and the bash, zsh and fish completions (`DIR/completions/`, clap_complete), generated from
//! the clap definitions themselves, so they cannot drift from the binary. The Debian package
//! build (`packaging/build-deb.sh`) runs it with the binary it packages.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// Writes every page and completion file under `dir` and lists them.
pub(super) fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "submitgate", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
        outln!("{}", path.display())?;
    }
    let mut pages: Vec<_> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    for p in pages {
        outln!("{}", p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
