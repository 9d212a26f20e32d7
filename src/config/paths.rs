//! Relative paths in `submitgate.yaml` are relative to the directory of the file itself, not
//! to the directory the command runs in: `submitgate status --config /etc/submitgate/x.yaml`
//! finds the same control socket from anywhere. Defaults (`./policies`, `./spool`, …) count as
//! relative paths too. A file named without a directory (`--config sg.yaml`) changes nothing.

use std::path::{Path, PathBuf};

use super::Config;
use crate::audit::Target as AuditTarget;
use crate::endpoint::Endpoint;
use crate::logging::Target as LogTarget;
use crate::sent_items::store::Settings as StoreSettings;

/// Makes every relative path of `config` relative to `base` (the configuration's directory).
pub(super) fn resolve(config: &mut Config, base: &Path) {
    if base.as_os_str().is_empty() {
        return;
    }
    let file = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    let endpoint = |e: &mut Endpoint| {
        if let Endpoint::Unix(p) = e {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    };
    file(&mut config.policies_dir);
    config.policy_listeners.iter_mut().for_each(endpoint);
    config.milter_listeners.iter_mut().for_each(endpoint);
    config.auth_policy_listeners.iter_mut().for_each(endpoint);
    config.metrics_listeners.iter_mut().for_each(endpoint);
    if let Some(control) = &mut config.control {
        endpoint(control);
    }
    if let AuditTarget::File(p) = &mut config.audit.target {
        file(p);
    }
    file(&mut config.sent_items.spool);
    if let super::LimiterConfig::Memory {
        state_dir: Some(dir),
    } = &mut config.limiter
    {
        file(dir);
    }
    match &mut config.sent_items.store {
        StoreSettings::Maildir { root } => {
            if Path::new(root.as_str()).is_relative() {
                *root = base.join(root.as_str()).to_string_lossy().into_owned();
            }
        }
        StoreSettings::Imap(imap) => {
            if let Some(ca) = &mut imap.ca_file {
                file(ca);
            }
            file(&mut imap.master_password_file);
        }
    }
    if let Some(key) = &mut config.auth_policy_api_key_file {
        file(key);
    }
    match &mut config.log.target {
        Some(LogTarget::File { path }) => file(path),
        Some(LogTarget::Syslog { socket }) => file(socket),
        Some(LogTarget::Stderr | LogTarget::Journald) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;
    use crate::endpoint::Endpoint;

    const TEXT: &str = "\
milter: [\"unix:run/milter.sock\", \"inet:127.0.0.1:1\"]
control: \"unix:./control.sock\"
policies: ../policies
audit: { path: ./audit.log }
sent_items:
  spool: /var/lib/submitgate/spool
  store: { backend: maildir, root: \"mail/{domain}/{local}/Maildir\" }
auth_policy_api_key_file: key
log: { target: file, path: log/submitgate.log }
";

    #[test]
    fn relative_paths_follow_the_configuration_file() {
        let c = Config::parse(Path::new("/etc/sg/submitgate.yaml"), TEXT).unwrap();
        assert_eq!(c.policies_dir, PathBuf::from("/etc/sg/../policies"));
        assert_eq!(
            c.milter_listeners[0],
            Endpoint::Unix("/etc/sg/run/milter.sock".into())
        );
        assert_eq!(
            c.control,
            Some(Endpoint::Unix("/etc/sg/./control.sock".into()))
        );
        assert_eq!(
            c.audit.target,
            crate::audit::Target::File("/etc/sg/./audit.log".into())
        );
        assert_eq!(
            c.sent_items.spool,
            PathBuf::from("/var/lib/submitgate/spool")
        );
        assert_eq!(
            c.sent_items.store,
            crate::sent_items::store::Settings::Maildir {
                root: "/etc/sg/mail/{domain}/{local}/Maildir".into()
            }
        );
        assert_eq!(
            c.auth_policy_api_key_file,
            Some(PathBuf::from("/etc/sg/key"))
        );
        assert_eq!(
            c.log.target,
            Some(crate::logging::Target::File {
                path: "/etc/sg/log/submitgate.log".into()
            })
        );
    }

    #[test]
    fn a_file_in_the_working_directory_changes_nothing() {
        let c = Config::parse(Path::new("submitgate.yaml"), TEXT).unwrap();
        assert_eq!(c.policies_dir, PathBuf::from("../policies"));
        let c = Config::parse(
            Path::new("/etc/sg/s.yaml"),
            "policy: [\"inet:127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(c.policies_dir, PathBuf::from("/etc/sg/./policies"));
        assert_eq!(c.sent_items.spool, PathBuf::from("/etc/sg/./spool"));
    }
}
