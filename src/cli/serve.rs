//! `submitgate serve`: the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads the
//! policies, SIGUSR1 reopens the audit log.

use std::process::ExitCode;

use anyhow::Context as _;
use submitgate::config::Config;
use submitgate::daemon::Daemon;
use tokio::signal::unix::{signal, SignalKind};

use super::ConfigArg;

/// Loads the configuration and runs the daemon on a multi-threaded runtime.
pub(super) fn run(c: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = Config::load(&c.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(config).await?;
    tracing::info!("submitgate {} ready", env!("CARGO_PKG_VERSION"));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading policies");
                daemon.reload().await;
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the audit log");
                daemon.reopen_audit().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
