//! `audit:`: the JSON-lines audit log's target, queue and file mode, built into [`Settings`].

use std::path::PathBuf;

use super::check::Checker;
use super::raw::RawAudit;
use crate::audit::{Settings, Target, DEFAULT_MODE, DEFAULT_QUEUE};

/// Checks the section; `./audit.log` when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawAudit>) -> Settings {
    let Some(a) = raw else {
        return Settings::default();
    };
    let target = match a.path.as_str() {
        "-" => Target::Stdout,
        "" => {
            ck.err(&["audit", "path"], "must be a file path or \"-\" (stdout)");
            Target::Stdout
        }
        p => Target::File(PathBuf::from(p)),
    };
    let queue = ck.number_at(&["audit", "queue"], a.queue, (1, 1_000_000), DEFAULT_QUEUE);
    let mode = match a.mode.as_deref() {
        None => DEFAULT_MODE,
        Some(s) => match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => m,
            _ => {
                ck.err(
                    &["audit", "mode"],
                    format!(
                        "{} is not an octal file mode (e.g. \"0640\")",
                        crate::yaml::quote(s)
                    ),
                );
                DEFAULT_MODE
            }
        },
    };
    Settings {
        target,
        queue,
        mode,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(Path::new("sg.yaml"), text)
    }

    #[test]
    fn mode_defaults_to_0640_and_is_octal() {
        let base = "policy: [\"inet:127.0.0.1:1\"]\n";
        assert_eq!(parse(base).unwrap().audit.mode, 0o640);
        let c = parse(&format!("{base}audit: {{ path: ./a.log }}\n")).unwrap();
        assert_eq!(c.audit.mode, 0o640);
        let c = parse(&format!(
            "{base}audit: {{ path: ./a.log, mode: \"0600\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.audit.mode, 0o600);
        let e = parse(&format!(
            "{base}audit:\n  path: ./a.log\n  mode: \"0999\"\n"
        ))
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sg.yaml:4:9: audit.mode: \"0999\" is not an octal file mode"),
            "{s}"
        );
    }
}
