//! `submitgate check`: the configuration, the auth policy key and the policy files checked as
//! the daemon would load them; every error printed, exit 1 if any.

use std::process::ExitCode;

use submitgate::policy;

use super::policy::{load_config_for_policy, policy_location, PolicyArgs};

/// Prints what is OK and every error.
pub(super) fn run(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let config = match load_config_for_policy(args) {
        Ok(c) => {
            if let Some(c) = &c {
                outln!("{}: configuration OK", c.path.display())?;
            }
            c
        }
        Err(e) => {
            outln!("{e}")?;
            failed = true;
            None
        }
    };
    // The auth policy key is read at start: a file the daemon could not use fails here too.
    if let Some(path) = config
        .as_ref()
        .and_then(|c| c.auth_policy_api_key_file.as_ref())
    {
        if let Err(e) = submitgate::auth_policy::ApiKey::read(path) {
            outln!("{e}")?;
            failed = true;
        }
    }
    let (dir, opts) = policy_location(args, config.as_ref());
    match policy::load_dir(&dir, &opts) {
        Ok(snap) => {
            outln!(
                "{}: policies OK: {} organization(s), {} mailbox(es) with own settings, version {}",
                dir.display(),
                snap.organizations().len(),
                snap.mailbox_count(),
                snap.version
            )?;
            if snap.organizations().is_empty() {
                outln!(
                    "{}: warning: no organization defined; every submission will be refused",
                    dir.display()
                )?;
            }
        }
        Err(errors) => {
            outln!("{errors}")?;
            outln!("{} error(s)", errors.0.len())?;
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
