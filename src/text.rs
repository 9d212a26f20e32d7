//! Text from peers and files made safe to show: which characters are controls ([`is_control`]),
//! the escaped form written to logs ([`escape`]) and the bounded table cell the CLI prints
//! ([`cell`]). A leaf module: it imports nothing from the crate.

use std::borrow::Cow;

/// Widest table cell the CLI prints, in characters; a longer value ends in `…`.
pub const CELL_MAX_CHARS: usize = 64;

/// Whether `c` is a control character: C0 (with TAB and newlines), DEL, C1, the line and
/// paragraph separators, and the Unicode format controls (general category `Cf`: bidi
/// embeddings, overrides and isolates, zero-width characters, the BOM, tag characters). Such a
/// character can hide or reorder what an operator reads in a log, a table or a directory name.
pub fn is_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// `s` with every control character written as a Rust escape (`\n`, `\u{1b}`, `\u{202e}`), so
/// that the text shows on one line, in order, as it is; borrowed when there is nothing to
/// escape. A backslash stays as it is: the result is for reading, not for parsing back, and
/// escaping text that is already escaped changes nothing.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` escaped and cut to at most `max` (at least 1) characters, the last one `…` when it was cut: a table
/// cell that cannot break the table's alignment, however long or odd the value.
pub fn cell(s: &str, max: usize) -> Cow<'_, str> {
    let escaped = escape(s);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut out: String = escaped.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_the_c0_c1_and_format_characters() {
        for c in [
            '\0',
            '\n',
            '\r',
            '\t',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{200b}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{2028}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(is_control(c), "{c:?}");
        }
        for c in ['a', ' ', '@', '.', 'é', 'ß', '日', '\u{a0}', '\u{a1}', '😀'] {
            assert!(!is_control(c), "{c:?}");
        }
    }

    #[test]
    fn escape_writes_controls_as_escapes() {
        assert!(matches!(escape("alice@contoso.com"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\u{1b}[31m\u{202e}moc\\x"),
            "a\\nb\\u{1b}[31m\\u{202e}moc\\x"
        );
        let once = escape("a\n\u{7f}");
        assert_eq!(escape(&once), once);
        assert_eq!(escape("josé@exämple.com"), "josé@exämple.com");
    }

    #[test]
    fn a_cell_is_escaped_and_cut_with_an_ellipsis() {
        assert_eq!(cell("short", CELL_MAX_CHARS), "short");
        let exact = "x".repeat(CELL_MAX_CHARS);
        assert_eq!(cell(&exact, CELL_MAX_CHARS), exact);
        let long = "é".repeat(70_000);
        let c = cell(&long, CELL_MAX_CHARS);
        assert_eq!(c.chars().count(), CELL_MAX_CHARS);
        assert!(c.ends_with('…'));
        assert!(c.starts_with("éé"));
        // The escapes count towards the width: the cell never grows past it.
        let rlo = "\u{202e}".repeat(100);
        let c = cell(&rlo, 10);
        assert_eq!(c, "\\u{202e}\\…");
    }
}
