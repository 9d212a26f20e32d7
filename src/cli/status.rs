//! `submitgate status` and `submitgate reload`: requests to the running daemon's control socket.

use std::process::ExitCode;

use submitgate::config::Config;
use submitgate::control;
use submitgate::endpoint::Endpoint;

use super::ConfigArg;

/// `status`: the daemon's sessions, policy and reload state.
pub(super) fn status(json: bool, config: &ConfigArg) -> anyhow::Result<ExitCode> {
    let endpoint = control_endpoint(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let status: control::Status =
        rt.block_on(control::request(&endpoint, &control::Request::Status))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        out!("{}", control::format_status(&status))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `reload`: the policy reloaded now; exit 1 when it failed (the old policy stays).
pub(super) fn reload(json: bool, config: &ConfigArg) -> anyhow::Result<ExitCode> {
    let endpoint = control_endpoint(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let reply: control::ReloadReply =
        rt.block_on(control::request(&endpoint, &control::Request::Reload))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&reply)?)?;
    } else if reply.ok {
        outln!(
            "reloaded: policy version {}{}",
            reply.version.unwrap_or_default(),
            if reply.unchanged { " (unchanged)" } else { "" }
        )?;
    } else {
        outln!(
            "reload FAILED; the old policy (version {}) stays in force:",
            reply.version.unwrap_or_default()
        )?;
        for e in &reply.errors {
            outln!("  {e}")?;
        }
    }
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The configured control socket.
pub(super) fn control_endpoint(c: &ConfigArg) -> anyhow::Result<Endpoint> {
    let config = Config::load(&c.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.control.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no `control` socket configured (add e.g. control: \"unix:/run/submitgate/control.sock\")",
            c.config.display()
        )
    })
}
