//! `submitgate check`: the configuration, the auth policy key, the Sent Items store's secret and
//! CA file and the policy files checked as the daemon would load them; every error printed, exit
//! 1 if any. Run as the daemon's user it opens every file the daemon opens (an unreadable
//! secret fails); run as root it warns about files the daemon's user (`--user`, default
//! `submitgate`, the systemd unit's `User=`) could not read or write.

use std::process::ExitCode;

use clap::Args;
use submitgate::policy;

use super::access::{self, User, DAEMON_USER};
use super::policy::{load_config_for_policy, policy_location, PolicyArgs};

// `check`'s arguments (no doc comment: clap would make it the help text).
#[derive(Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Run as root: warn about the files this user (the daemon's) could not read or write.
    #[arg(long, value_name = "USER", default_value = DAEMON_USER)]
    user: String,
}

/// Prints what is OK and every error.
pub(super) fn run(check: &CheckArgs) -> anyhow::Result<ExitCode> {
    let args = &check.policy;
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
    if let Some(c) = &config {
        failed |= !check_files(c, &check.user)?;
    }
    let (dir, opts) = policy_location(args, config.as_ref());
    match policy::load_dir(&dir, &opts) {
        Ok(snap) => {
            let (orgs, mailboxes) = (snap.organizations().len(), snap.mailbox_count());
            outln!(
                "{}: policies OK: {orgs} organization{}, {mailboxes} {} with own settings, version {}",
                dir.display(),
                if orgs == 1 { "" } else { "s" },
                if mailboxes == 1 { "mailbox" } else { "mailboxes" },
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

/// The files the daemon opens: as this user (errors), or, as root, as the daemon's user would
/// (warnings). The Sent Items store is built as at start (master secret, CA file, TLS name).
/// True when nothing failed.
fn check_files(config: &submitgate::config::Config, user: &str) -> anyhow::Result<bool> {
    let mut ok = true;
    if config.sent_items.deliver {
        if let Err(e) =
            submitgate::sent_items::store::Store::from_settings(&config.sent_items.store)
        {
            outln!("{}: sent_items.store: {e}", config.path.display())?;
            ok = false;
        }
    }
    let root = rustix::process::geteuid().is_root();
    let daemon_user = if root { User::lookup(user) } else { None };
    for u in access::paths(config) {
        if let Some(user) = &daemon_user {
            if let Err(why) = user.could(&u.path, u.need) {
                outln!("warning: {} ({why})", u.key)?;
            }
        } else if !root && u.need == access::Need::Write {
            // What the daemon reads was read above by the daemon's own loaders.
            if let Err(why) = access::try_as_self(&u.path, u.need) {
                outln!("{}: {why}", u.key)?;
                ok = false;
            }
        }
    }
    Ok(ok)
}
