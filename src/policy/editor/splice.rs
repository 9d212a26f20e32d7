//! Text splicing for the policy editor: finds a key or a mailbox entry in the YAML position
//! tree and replaces, inserts or removes exactly its bytes, block or flow style, so that the rest
//! of the file stays byte-identical.

use crate::yaml::{Node, NodeKind, Scalar};

/// Character offsets from the parser → byte offsets in the text.
struct Offsets(Option<Vec<usize>>);

impl Offsets {
    fn new(text: &str) -> Offsets {
        if text.is_ascii() {
            Offsets(None)
        } else {
            let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
            v.push(text.len());
            Offsets(Some(v))
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.0 {
            None => char_index,
            Some(v) => v.get(char_index).copied().unwrap_or_else(|| v[v.len() - 1]),
        }
    }
}

fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut s = String::with_capacity(text.len() + with.len());
    s.push_str(&text[..start]);
    s.push_str(with);
    s.push_str(&text[end..]);
    s
}

fn is_flow(text: &str, off: &Offsets, node: &Node) -> bool {
    matches!(
        text[off.byte(node.start.index)..].chars().next(),
        Some('{' | '[')
    )
}

/// Where a node's content really ends (block collections end at their last child; the
/// parser puts their end at the next token).
fn content_end(text: &str, off: &Offsets, node: &Node) -> usize {
    match &node.kind {
        NodeKind::Map(entries) if !is_flow(text, off, node) => {
            entries.last().map_or(off.byte(node.start.index), |(_, v)| {
                content_end(text, off, v)
            })
        }
        NodeKind::Seq(items) if !is_flow(text, off, node) => items
            .last()
            .map_or(off.byte(node.start.index), |v| content_end(text, off, v)),
        NodeKind::Map(_) | NodeKind::Seq(_) => flow_end(text, off, node),
        NodeKind::Scalar { .. } => off.byte(node.end.index),
    }
}

/// Just past the bracket that closes the flow collection starting at `node` (the parser's end
/// marker may lie beyond it, over whitespace and comments). Scans for the matching bracket,
/// skipping quoted strings and comments.
fn flow_end(text: &str, off: &Offsets, node: &Node) -> usize {
    let start = off.byte(node.start.index);
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b'\'' => {
                // '' is an escaped quote inside a single-quoted scalar.
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' if i > 0 && bytes[i - 1].is_ascii_whitespace() => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    off.byte(node.end.index).min(text.len())
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |p| p + 1)
}

/// The offset just past the newline that ends the line containing `at` (or the end of text).
fn line_end(text: &str, at: usize) -> usize {
    text[at..].find('\n').map_or(text.len(), |p| at + p + 1)
}

fn is_null(node: &Node) -> bool {
    node.scalar() == Some(Scalar::Null)
}

fn find_key(map: &Node, key: &str) -> Option<usize> {
    map.as_map()?
        .iter()
        .position(|(k, _)| k.text() == Some(key))
}

pub(super) fn find_address(map: &Node, address: &str) -> Option<usize> {
    map.as_map()?.iter().position(|(k, _)| {
        k.text()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(address))
    })
}

/// Sets `key: value` in mapping `map`: replaces the value when the key exists, else inserts
/// the entry (after entry `after` when given and present, else at the end).
pub(super) fn set_key(
    text: &str,
    map: &Node,
    key: &str,
    value: &str,
    after: Option<&str>,
) -> Result<String, String> {
    let off = Offsets::new(text);
    match find_key(map, key) {
        Some(i) => {
            let (_, v) = &map.as_map().ok_or("not a mapping")?[i];
            replace_scalar(text, &off, v, value)
        }
        None => insert_entry(text, &off, map, key, value, after),
    }
}

fn replace_scalar(text: &str, off: &Offsets, v: &Node, value: &str) -> Result<String, String> {
    if !matches!(v.kind, NodeKind::Scalar { .. }) {
        return Err(format!(
            "line {}: expected a single value, found {}",
            v.start.line,
            v.describe()
        ));
    }
    let (s, e) = (off.byte(v.start.index), off.byte(v.end.index));
    if s == e {
        // `key:` with nothing after it; the parser places the empty value at the colon.
        let at = if text[s..].starts_with(':') { s + 1 } else { s };
        return Ok(splice(text, at, at, &format!(" {value}")));
    }
    Ok(splice(text, s, e, value))
}

fn insert_entry(
    text: &str,
    off: &Offsets,
    map: &Node,
    key: &str,
    value: &str,
    after: Option<&str>,
) -> Result<String, String> {
    let entries = map
        .as_map()
        .ok_or_else(|| format!("line {}: not a mapping", map.start.line))?;
    if is_flow(text, off, map) {
        let open = off.byte(map.start.index);
        let close = flow_end(text, off, map);
        return Ok(match entries.last() {
            None => splice(text, open, close, &format!("{{ {key}: {value} }}")),
            Some((_, v)) => {
                let at = content_end(text, off, v);
                splice(text, at, at, &format!(", {key}: {value}"))
            }
        });
    }
    let Some((first_key, _)) = entries.first() else {
        return Err(format!("line {}: empty block mapping", map.start.line));
    };
    let indent = " ".repeat(first_key.start.column - 1);
    let anchor = after
        .and_then(|a| entries.iter().find(|(k, _)| k.text() == Some(a)))
        .or(entries.last())
        .map(|(_, v)| v)
        .ok_or("empty mapping")?;
    let at = line_end(text, content_end(text, off, anchor));
    let newline = if at > 0 && !text[..at].ends_with('\n') {
        "\n"
    } else {
        ""
    };
    Ok(splice(
        text,
        at,
        at,
        &format!("{newline}{indent}{key}: {value}\n"),
    ))
}

/// Removes entry `i` of mapping `map` (block: its lines, with the comment lines right above
/// it; flow: the entry and one separating comma).
pub(super) fn remove_entry(text: &str, map: &Node, i: usize) -> Result<String, String> {
    let off = Offsets::new(text);
    let entries = map.as_map().ok_or("not a mapping")?;
    let (k, v) = entries.get(i).ok_or("no such entry")?;
    if is_flow(text, &off, map) {
        let (s, e) = (off.byte(k.start.index), content_end(text, &off, v));
        if entries.len() == 1 {
            let (open, close) = (off.byte(map.start.index), flow_end(text, &off, map));
            return Ok(splice(text, open, close, "{}"));
        }
        return Ok(if i + 1 < entries.len() {
            // Up to the start of the next entry.
            let next = off.byte(entries[i + 1].0.start.index);
            splice(text, s, next, "")
        } else {
            // From the end of the previous entry.
            let prev = content_end(text, &off, &entries[i - 1].1);
            splice(text, prev, e, "")
        });
    }
    let mut start = line_start(text, off.byte(k.start.index));
    let end = line_end(text, content_end(text, &off, v));
    if text[start..off.byte(k.start.index)].trim() != "" {
        return Err(format!(
            "line {}: the entry shares its line with another",
            k.start.line
        ));
    }
    // Comment lines directly above belong to the entry.
    while start > 0 {
        let prev = line_start(text, start - 1);
        if text[prev..start].trim_start().starts_with('#') {
            start = prev;
        } else {
            break;
        }
    }
    Ok(splice(text, start, end, ""))
}

/// Sets (or, with `None`, removes) `key` in the settings of `address`, creating the entry and
/// the `mailboxes` mapping when missing.
pub(super) fn set_mailbox_key(
    text: &str,
    doc: &Node,
    address: &str,
    key: &str,
    value: Option<&str>,
) -> Result<String, String> {
    let off = Offsets::new(text);
    let Some(mailboxes) = doc.get("mailboxes") else {
        let Some(value) = value else {
            return Ok(text.to_string());
        };
        // No `mailboxes:` yet: add it at the end of the file.
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        return Ok(format!(
            "{text}{sep}mailboxes:\n  {address}: {{ {key}: {value} }}\n"
        ));
    };
    let entry = find_address(mailboxes, address);
    match (entry, value) {
        (None, None) => Ok(text.to_string()),
        (None, Some(value)) => {
            let new_value = format!("{{ {key}: {value} }}");
            if is_null(mailboxes) {
                // `mailboxes:` with nothing under it: add the first entry on the next line.
                let at = line_end(text, off.byte(mailboxes.start.index));
                let nl = if text[..at].ends_with('\n') { "" } else { "\n" };
                return Ok(splice(
                    text,
                    at,
                    at,
                    &format!("{nl}  {address}: {new_value}\n"),
                ));
            }
            if mailboxes.as_map().is_none() {
                return Err(format!(
                    "line {}: mailboxes is not a mapping",
                    mailboxes.start.line
                ));
            }
            insert_entry(text, &off, mailboxes, address, &new_value, None)
        }
        (Some(i), value) => {
            let settings = &mailboxes.as_map().ok_or("mailboxes is not a mapping")?[i].1;
            match value {
                Some(value) if is_null(settings) => {
                    replace_scalar(text, &off, settings, &format!("{{ {key}: {value} }}"))
                }
                Some(value) => set_key(text, settings, key, value, None),
                None => match find_key(settings, key) {
                    Some(j) => remove_entry(text, settings, j),
                    None => Ok(text.to_string()),
                },
            }
        }
    }
}
