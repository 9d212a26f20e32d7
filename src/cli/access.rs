//! Whether the daemon's user can use the files of a configuration: `check` run as that user
//! (`runuser -u submitgate -- submitgate check`) opens each one as the daemon would; run as
//! root, it works out from owners and modes whether the user the systemd unit runs as
//! ([`DAEMON_USER`], when it exists) could, and warns when not — root itself reads everything,
//! so a secret left `0600 root` would otherwise pass `check` and stop the daemon.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use submitgate::audit::Target as AuditTarget;
use submitgate::config::{Config, LimiterConfig};
use submitgate::sent_items::store::Settings as StoreSettings;

/// The user the packaged systemd unit runs the daemon as (`User=submitgate`).
pub(super) const DAEMON_USER: &str = "submitgate";

/// What the daemon does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Reads the file.
    Read,
    /// Lists and reads the directory.
    ReadDir,
    /// Creates files in the directory (or appends to the file).
    Write,
}

impl Need {
    fn verb(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::ReadDir => "list",
            Need::Write => "write to",
        }
    }
}

/// One path the daemon opens: the configuration key it comes from, and what it needs of it.
pub(super) struct Use {
    pub key: &'static str,
    pub path: PathBuf,
    pub need: Need,
}

/// The files and directories the daemon opens with `config`.
pub(super) fn paths(config: &Config) -> Vec<Use> {
    let mut out = vec![
        Use {
            key: "the configuration",
            path: config.path.clone(),
            need: Need::Read,
        },
        Use {
            key: "policies",
            path: config.policies_dir.clone(),
            need: Need::ReadDir,
        },
    ];
    if let Some(key) = &config.auth_policy_api_key_file {
        out.push(Use {
            key: "auth_policy_api_key_file",
            path: key.clone(),
            need: Need::Read,
        });
    }
    if config.sent_items.deliver {
        if let StoreSettings::Imap(imap) = &config.sent_items.store {
            out.push(Use {
                key: "sent_items.store.master_password_file",
                path: imap.master_password_file.clone(),
                need: Need::Read,
            });
            if let Some(ca) = &imap.ca_file {
                out.push(Use {
                    key: "sent_items.store.ca_file",
                    path: ca.clone(),
                    need: Need::Read,
                });
            }
        }
    }
    if !config.milter_listeners.is_empty() || config.sent_items.deliver {
        out.push(Use {
            key: "sent_items.spool",
            path: existing_or_parent(&config.sent_items.spool),
            need: Need::Write,
        });
    }
    if let LimiterConfig::Memory {
        state_dir: Some(dir),
    } = &config.limiter
    {
        out.push(Use {
            key: "limiter.state_dir",
            path: existing_or_parent(dir),
            need: Need::Write,
        });
    }
    if let AuditTarget::File(p) = &config.audit.target {
        out.push(Use {
            key: "audit.path",
            path: existing_or_parent(p),
            need: Need::Write,
        });
    }
    out
}

/// A path that does not exist yet is created in its parent directory.
fn existing_or_parent(p: &Path) -> PathBuf {
    if p.exists() {
        p.to_path_buf()
    } else {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// Opens `path` as this process (the daemon's user when run through `runuser`); the error, if
/// it cannot. Writability is asked with `access(2)` (nothing is created).
pub(super) fn try_as_self(path: &Path, need: Need) -> Result<(), String> {
    let result = match need {
        Need::Read => File::open(path).map(drop),
        Need::ReadDir => std::fs::read_dir(path).map(drop),
        Need::Write => {
            rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(io::Error::from)
        }
    };
    result.map_err(|e| {
        format!(
            "{}: cannot {} it: {}",
            path.display(),
            need.verb(),
            os_error(&e)
        )
    })
}

/// An `io::Error` as its text without the repeated "(os error N)".
fn os_error(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A local user: its ids and groups (from /etc/passwd and /etc/group).
pub(super) struct User {
    pub name: String,
    uid: u32,
    gids: Vec<u32>,
}

impl User {
    /// `name` from the local user database, or `None` if there is no such user.
    pub(super) fn lookup(name: &str) -> Option<User> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        let (uid, gid) = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })?;
        let mut gids = vec![gid];
        if let Ok(group) = std::fs::read_to_string("/etc/group") {
            for l in group.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                    if let Ok(g) = f[2].parse() {
                        gids.push(g);
                    }
                }
            }
        }
        Some(User {
            name: name.to_string(),
            uid,
            gids,
        })
    }

    /// Whether this user could do `need` with `path`, from the modes of the path and of every
    /// directory above it (search permission); the reason when not.
    pub(super) fn could(&self, path: &Path, need: Need) -> Result<(), String> {
        let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut dir = PathBuf::new();
        let components: Vec<_> = abs.components().collect();
        for (i, c) in components.iter().enumerate() {
            dir.push(c);
            let meta = match std::fs::metadata(&dir) {
                Ok(m) => m,
                // A missing file is reported by the check that reads it.
                Err(_) => return Ok(()),
            };
            let last = i + 1 == components.len();
            let bits = match (last, need) {
                (false, _) => 0o1,
                (true, Need::Read) => 0o4,
                (true, Need::ReadDir) => 0o5,
                (true, Need::Write) if meta.is_dir() => 0o3,
                (true, Need::Write) => 0o2,
            };
            if !self.allowed(&meta, bits) {
                let what = if last {
                    need.verb()
                } else {
                    "reach (no search permission on a directory above)"
                };
                return Err(format!(
                    "{}: the {} user cannot {what} it ({} owned by {}:{}, mode {:04o})",
                    path.display(),
                    self.name,
                    dir.display(),
                    name_of("/etc/passwd", meta.uid()),
                    name_of("/etc/group", meta.gid()),
                    meta.mode() & 0o7777
                ));
            }
        }
        Ok(())
    }

    /// The owner, group or other permission bits that apply to this user.
    fn allowed(&self, meta: &std::fs::Metadata, bits: u32) -> bool {
        let mode = meta.mode();
        let granted = if meta.uid() == self.uid {
            (mode >> 6) & 0o7
        } else if self.gids.contains(&meta.gid()) {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        };
        granted & bits == bits
    }
}

/// The name of uid/gid `id` in a passwd or group file, or the number.
fn name_of(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}
