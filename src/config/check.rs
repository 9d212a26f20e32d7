//! The checker every section runs through (Vector's `compile` style): it carries the positioned
//! YAML tree and the list of problems, so a section reports a bad value and goes on with its
//! default; [`Checker::finish`] then returns every problem at once, in file order, each as
//! `file:line:column: dotted.key: message`.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, ConfigErrors};
use crate::endpoint::Endpoint;
use crate::reply::{check_auth_reply, SmtpReply};
use crate::yaml;

/// The examples most duration messages give.
pub(super) const DURATION_EXAMPLES: Option<&str> = Some("30s, 15m, 5d");

/// The problems found so far in one file, and where its keys are.
pub(super) struct Checker {
    file: PathBuf,
    /// The positioned tree; `None` if it could not be built (errors then have no line).
    tree: Option<yaml::Node>,
    errors: Vec<ConfigError>,
}

impl Checker {
    /// A checker for `text`, read from `file`.
    pub(super) fn new(file: &Path, text: &str) -> Checker {
        Checker {
            file: file.to_path_buf(),
            tree: yaml::parse(text).ok(),
            errors: Vec::new(),
        }
    }

    /// A problem with the value at `keys`, reported as `keys.joined: message` at its position.
    pub(super) fn err(&mut self, keys: &[&str], message: impl Into<String>) {
        let (line, column) = self.tree.as_ref().map_or((0, 0), |t| {
            let n = t.locate(keys);
            (n.start.line, n.start.column)
        });
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            kind: crate::yaml::ErrorKind::Config,
            message: format!("{}: {}", keys.join("."), message.into()),
        });
    }

    /// The checked value, or every problem sorted by position (problems at one position keep
    /// the order they were found in).
    pub(super) fn finish<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(self.errors))
    }

    /// A duration setting: `default` when absent, an error (and `default`) when unparsable or
    /// shorter than `min`. `examples` ends the message, e.g. `(e.g. 30s, 15m, 5d)`.
    pub(super) fn duration_at(
        &mut self,
        keys: &[&str],
        value: Option<&str>,
        default: Duration,
        min: Duration,
        examples: Option<&str>,
    ) -> Duration {
        let Some(s) = value else {
            return default;
        };
        match humantime::parse_duration(s) {
            Ok(d) if d >= min => d,
            _ => {
                let examples = examples.map(|e| format!(" (e.g. {e})")).unwrap_or_default();
                self.err(
                    keys,
                    format!(
                        "{s:?} is not a duration of at least {}{examples}",
                        humantime::format_duration(min)
                    ),
                );
                default
            }
        }
    }

    /// A number that must lie in `min..=max`: `default` when absent or out of range.
    pub(super) fn number_at<T: PartialOrd + Display + Copy>(
        &mut self,
        keys: &[&str],
        value: Option<T>,
        (min, max): (T, T),
        default: T,
    ) -> T {
        match value {
            None => default,
            Some(n) if min <= n && n <= max => n,
            Some(n) => {
                self.err(keys, format!("{n} is not between {min} and {max}"));
                default
            }
        }
    }

    /// An octal file mode (`"0660"`, `"0o660"`), at most `0777`.
    pub(super) fn mode_at(&mut self, key: &str, value: Option<&str>, default: u32) -> u32 {
        let Some(s) = value else {
            return default;
        };
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => m,
            _ => {
                self.err(
                    &[key],
                    format!("{s:?} is not an octal file mode (e.g. \"0660\")"),
                );
                default
            }
        }
    }

    /// A list of listener addresses; a bad entry is reported by its 1-based number.
    pub(super) fn endpoints_at(&mut self, key: &str, list: &[String]) -> Vec<Endpoint> {
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            match Endpoint::parse(s) {
                Ok(e) => out.push(e),
                Err(e) => self.err(&[key], format!("entry {}: {e}", i + 1)),
            }
        }
        out
    }

    /// An SMTP reply override (`NNN X.Y.Z text`): replaces `slot` when set and valid.
    pub(super) fn reply_at(&mut self, keys: &[&str], value: Option<&str>, slot: &mut SmtpReply) {
        self.parsed_at(keys, value, SmtpReply::from_str, slot);
    }

    /// A Dovecot auth policy reply text override: replaces `slot` when set and valid.
    pub(super) fn auth_reply_at(&mut self, keys: &[&str], value: Option<&str>, slot: &mut String) {
        self.parsed_at(keys, value, check_auth_reply, slot);
    }

    /// Replaces `slot` with the parsed `value` when it is set and valid.
    fn parsed_at<T>(
        &mut self,
        keys: &[&str],
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
        slot: &mut T,
    ) {
        if let Some(s) = value {
            match parse(s) {
                Ok(v) => *slot = v,
                Err(e) => self.err(keys, e),
            }
        }
    }
}
