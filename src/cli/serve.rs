//! `submitgate serve`: the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads the
//! policies, SIGUSR1 reopens the audit log and the log file. Under systemd (`Type=notify`) it
//! tells the service manager `READY=1` once every listener is bound, `RELOADING=1` … `READY=1`
//! around a SIGHUP reload, and `STOPPING=1` when it begins to shut down; without
//! `NOTIFY_SOCKET` these notifications are no-ops.

use std::process::ExitCode;

use anyhow::Context as _;
use sd_notify::NotifyState;
use submitgate::config::Config;
use submitgate::daemon::Daemon;
use submitgate::logging::{self, LogHandle};
use tokio::signal::unix::{signal, SignalKind};

use super::ConfigArg;

/// Loads the configuration, sets up logging as it says and runs the daemon on a multi-threaded
/// runtime.
pub(super) fn run(c: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = Config::load(&c.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let log = logging::init(&config.log)?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(serve(config, log))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, log: LogHandle) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(config).await?;
    tracing::info!("submitgate {} ready", env!("CARGO_PKG_VERSION"));
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading policies");
                // systemd ≥ 253 wants the monotonic time with RELOADING=1 (older ones ignore it).
                match NotifyState::monotonic_usec_now() {
                    Ok(now) => notify(&[NotifyState::Reloading, now]),
                    Err(_) => notify(&[NotifyState::Reloading]),
                }
                daemon.reload().await;
                notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the audit log and the log file");
                daemon.reopen_audit().await;
                if let Err(e) = log.reopen() {
                    tracing::error!("cannot reopen the log file: {e}; still writing the old one");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    tracing::info!("shutting down");
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells the service manager; a failure is logged, never fatal (the daemon serves either way).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify to $NOTIFY_SOCKET failed: {e}");
    }
}
