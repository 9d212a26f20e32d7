//! Is a login usable as a mailbox at all? [`check`] runs before the policy, for every front end:
//! a login with a control character, an empty local part or domain, or over [`MAX_LOGIN_BYTES`]
//! would otherwise reach lease keys, Sent Items directory names and log lines. [`shown`] is the
//! escaped, bounded form of such a login for the log line and the audit event.

use std::fmt;

use crate::text;

/// Longest login accepted, in bytes: RFC 5321's limit on a path (4.5.3.1.3).
pub const MAX_LOGIN_BYTES: usize = 320;

/// How much of a refused login the log line and the audit event show, in characters.
pub const SHOWN_LOGIN_CHARS: usize = 100;

/// Why a login cannot be a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Longer than [`MAX_LOGIN_BYTES`] (its length in bytes).
    TooLong(usize),
    /// A control character ([`text::is_control`]) at this byte offset.
    ControlCharacter { at: usize, ch: char },
    /// Nothing (but white space) before the `@`, or no login at all.
    EmptyLocalPart,
    /// Nothing after the `@`.
    EmptyDomain,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TooLong(n) => write!(f, "{n} bytes long (at most {MAX_LOGIN_BYTES})"),
            Problem::ControlCharacter { at, ch } => {
                write!(f, "control character U+{:04X} at byte {at}", u32::from(*ch))
            }
            Problem::EmptyLocalPart => f.write_str("empty local part"),
            Problem::EmptyDomain => f.write_str("empty domain"),
        }
    }
}

/// Checks a login as the client gave it, before normalization (which trims white space and
/// may append the default domain).
pub fn check(login: &str) -> Result<(), Problem> {
    if login.len() > MAX_LOGIN_BYTES {
        return Err(Problem::TooLong(login.len()));
    }
    if let Some((at, ch)) = login.char_indices().find(|&(_, c)| text::is_control(c)) {
        return Err(Problem::ControlCharacter { at, ch });
    }
    let login = login.trim();
    let (local, domain) = match login.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (login, None),
    };
    if local.trim().is_empty() {
        return Err(Problem::EmptyLocalPart);
    }
    if domain.is_some_and(|d| d.trim().is_empty()) {
        return Err(Problem::EmptyDomain);
    }
    Ok(())
}

/// A refused login as logs and the audit event show it: escaped, at most
/// [`SHOWN_LOGIN_CHARS`] characters; a blank one in quotes (`"  "`), so that it stays visible
/// and the report has a sender to count it for.
pub fn shown(login: &str) -> String {
    if login.trim().is_empty() {
        return format!("{:?}", text::cell(login, SHOWN_LOGIN_CHARS));
    }
    text::cell(login, SHOWN_LOGIN_CHARS).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_logins_pass() {
        for login in [
            "alice@contoso.com",
            "alice",
            " Alice@Contoso.COM ",
            "josé@exämple.com",
            "first.last+tag@sub.contoso.com",
        ] {
            assert_eq!(check(login), Ok(()), "{login:?}");
        }
        let longest = format!("{}@contoso.com", "a".repeat(MAX_LOGIN_BYTES - 12));
        assert_eq!(longest.len(), MAX_LOGIN_BYTES);
        assert_eq!(check(&longest), Ok(()));
    }

    #[test]
    fn controls_empty_parts_and_length_are_refused() {
        let cases: &[(&str, Problem)] = &[
            (
                "alice\n@contoso.com",
                Problem::ControlCharacter { at: 5, ch: '\n' },
            ),
            (
                "\u{1b}[2Jalice@contoso.com",
                Problem::ControlCharacter {
                    at: 0,
                    ch: '\u{1b}',
                },
            ),
            (
                "alice\u{7f}@contoso.com",
                Problem::ControlCharacter {
                    at: 5,
                    ch: '\u{7f}',
                },
            ),
            (
                "alice\u{85}@contoso.com",
                Problem::ControlCharacter {
                    at: 5,
                    ch: '\u{85}',
                },
            ),
            (
                "moc.\u{202e}alice@contoso.com",
                Problem::ControlCharacter {
                    at: 4,
                    ch: '\u{202e}',
                },
            ),
            (
                "al\u{200b}ice@contoso.com",
                Problem::ControlCharacter {
                    at: 2,
                    ch: '\u{200b}',
                },
            ),
            ("al\0ice", Problem::ControlCharacter { at: 2, ch: '\0' }),
            ("\t", Problem::ControlCharacter { at: 0, ch: '\t' }),
            ("", Problem::EmptyLocalPart),
            ("   ", Problem::EmptyLocalPart),
            ("\u{a0}\u{3000}", Problem::EmptyLocalPart),
            ("@contoso.com", Problem::EmptyLocalPart),
            (" @contoso.com", Problem::EmptyLocalPart),
            ("alice@", Problem::EmptyDomain),
            ("alice@ ", Problem::EmptyDomain),
        ];
        for (login, problem) in cases {
            assert_eq!(check(login), Err(*problem), "{login:?}");
        }
        let long = "a".repeat(MAX_LOGIN_BYTES + 1);
        assert_eq!(check(&long), Err(Problem::TooLong(MAX_LOGIN_BYTES + 1)));
        // Length first: a huge login is not scanned.
        let huge = "\n".repeat(70_000);
        assert_eq!(check(&huge), Err(Problem::TooLong(70_000)));
    }

    #[test]
    fn problems_read_clearly_and_logins_are_shown_escaped_and_bounded() {
        assert_eq!(
            Problem::ControlCharacter {
                at: 3,
                ch: '\u{202e}'
            }
            .to_string(),
            "control character U+202E at byte 3"
        );
        assert_eq!(
            Problem::TooLong(400).to_string(),
            "400 bytes long (at most 320)"
        );
        assert_eq!(shown("a\nb@c"), "a\\nb@c");
        assert_eq!(shown("  "), "\"  \"");
        let s = shown(&"x".repeat(70_000));
        assert_eq!(s.chars().count(), SHOWN_LOGIN_CHARS);
        assert!(s.ends_with('…'));
    }
}
