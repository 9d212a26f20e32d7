//! `log:`: the operational log's format, target and level, built into [`Settings`].
//!
//! ```yaml
//! log: { format: text, target: stderr, level: info }   # text|json, stderr|journald|syslog|file
//! log: { target: syslog, syslog_socket: /dev/log }
//! log: { target: file, path: /var/log/submitgate/submitgate.log }   # reopened on SIGUSR1
//! ```

use std::path::PathBuf;

use super::check::Checker;
use super::raw::RawLog;
use crate::logging::{Format, Settings, Target, DEFAULT_SYSLOG_SOCKET};

/// Checks the section; without it the journal under systemd, standard error otherwise.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawLog>) -> Settings {
    let Some(l) = raw else {
        return Settings::default();
    };
    let format = match l.format.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(other) => {
            ck.err(
                &["log", "format"],
                format!("{} is not text or json", crate::yaml::quote(other)),
            );
            Format::Text
        }
    };
    let target = match l.target.as_deref() {
        None => None,
        Some("stderr") => Some(Target::Stderr),
        Some("journald") => Some(Target::Journald),
        Some("syslog") => Some(Target::Syslog {
            socket: l
                .syslog_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSLOG_SOCKET)),
        }),
        Some("file") => match &l.path {
            Some(path) => Some(Target::File { path: path.clone() }),
            None => {
                ck.err(&["log", "target"], "file needs log.path");
                None
            }
        },
        Some(other) => {
            ck.err(
                &["log", "target"],
                format!(
                    "{} is not stderr, journald, syslog or file",
                    crate::yaml::quote(other)
                ),
            );
            None
        }
    };
    if l.syslog_socket.is_some() && !matches!(target, Some(Target::Syslog { .. })) {
        ck.err(&["log", "syslog_socket"], "only for target: syslog");
    }
    if l.path.is_some() && !matches!(target, Some(Target::File { .. })) {
        ck.err(&["log", "path"], "only for target: file");
    }
    let level = match l.level.as_deref() {
        None => None,
        Some(s) => match tracing_subscriber::EnvFilter::builder().parse(s) {
            Ok(_) => Some(s.to_string()),
            Err(e) => {
                ck.err(
                    &["log", "level"],
                    format!(
                        "{} is not a level (error, warn, info, debug, trace) or filter: {e}",
                        crate::yaml::quote(s)
                    ),
                );
                None
            }
        },
    };
    Settings {
        format,
        target,
        level,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::logging::{Format, Target};

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(
            Path::new("sg.yaml"),
            &format!("policy: [\"inet:127.0.0.1:1\"]\n{text}"),
        )
    }

    #[test]
    fn defaults_leave_the_target_to_the_environment() {
        let c = parse("").unwrap();
        assert_eq!(c.log.format, Format::Text);
        assert_eq!(c.log.target, None);
        assert_eq!(c.log.level, None);
    }

    #[test]
    fn every_target_and_format() {
        let c = parse("log: { format: json, target: syslog, level: debug }\n").unwrap();
        assert_eq!(c.log.format, Format::Json);
        assert_eq!(
            c.log.target,
            Some(Target::Syslog {
                socket: "/dev/log".into()
            })
        );
        assert_eq!(c.log.level.as_deref(), Some("debug"));
        let c = parse("log: { target: syslog, syslog_socket: /run/x.sock }\n").unwrap();
        assert_eq!(
            c.log.target,
            Some(Target::Syslog {
                socket: "/run/x.sock".into()
            })
        );
        let c = parse("log: { target: journald }\n").unwrap();
        assert_eq!(c.log.target, Some(Target::Journald));
        let c = parse("log: { target: file, path: /var/log/sg.log }\n").unwrap();
        assert_eq!(
            c.log.target,
            Some(Target::File {
                path: "/var/log/sg.log".into()
            })
        );
        let c = parse("log: { level: \"warn,submitgate::milter=debug\" }\n").unwrap();
        assert_eq!(
            c.log.level.as_deref(),
            Some("warn,submitgate::milter=debug")
        );
    }

    #[test]
    fn every_mistake_with_its_position() {
        let e = parse(
            "log:\n  format: xml\n  target: kafka\n  level: \"x=loud\"\n  path: /x\n  syslog_socket: /y\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sg.yaml:3:11: log.format: \"xml\" is not text or json"),
            "{e}"
        );
        assert!(
            e.contains(
                "sg.yaml:4:11: log.target: \"kafka\" is not stderr, journald, syslog or file"
            ),
            "{e}"
        );
        assert!(
            e.contains("sg.yaml:5:10: log.level: \"x=loud\" is not a level"),
            "{e}"
        );
        assert!(
            e.contains("sg.yaml:6:9: log.path: only for target: file"),
            "{e}"
        );
        assert!(
            e.contains("sg.yaml:7:18: log.syslog_socket: only for target: syslog"),
            "{e}"
        );
        let e = parse("log: { target: file }\n").unwrap_err().to_string();
        assert!(
            e.contains("sg.yaml:2:16: log.target: file needs log.path"),
            "{e}"
        );
        let e = parse("log: { colour: red }\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
