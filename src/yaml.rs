//! A YAML document as a tree of nodes that remember where they came from (line, column and
//! character range), built from `saphyr-parser` events. Policy and configuration errors use the
//! positions in their messages, and the policy editor uses the ranges to change one value in place.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A problem at a place in a file, shown as `file:line:column: message` (or `file: message`
/// when it concerns the whole file). Configuration and policy errors are both of this kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    pub file: std::path::PathBuf,
    /// 1-based; 0 when the problem is with the file as a whole (unreadable, not UTF-8).
    pub line: usize,
    pub column: usize,
    /// What went wrong, as a fixed label: what the audit log records instead of `message`.
    pub kind: ErrorKind,
    /// The full text for the operator; quotes at most one token of the file (see [`quote`]).
    pub message: String,
}

impl LocatedError {
    /// `file:line:column: kind` (or `file: kind`): the place and the kind, no text taken from
    /// the file. What the audit log gets, since it may be readable by more people than the
    /// policy files are.
    pub fn place_and_kind(&self) -> String {
        if self.line == 0 {
            format!("{}: {}", self.file.display(), self.kind)
        } else {
            format!(
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.kind
            )
        }
    }
}

/// The kind of a [`LocatedError`], a snake_case label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not YAML, or a YAML feature submitgate does not accept (anchors, tags, two documents).
    Syntax,
    /// A file or directory that cannot be read.
    Unreadable,
    /// A file over the size limit.
    TooLarge,
    /// A file that is not UTF-8.
    NotUtf8,
    /// A policy file that is not a regular file (a fifo, a device, a directory).
    NotRegularFile,
    /// A symbolic link that leads out of the policy directory.
    OutsideDirectory,
    UnknownKey,
    DuplicateKey,
    MissingKey,
    /// A value of the wrong type (a list where a mapping belongs, a string for a number).
    WrongType,
    /// A value of the right type that is not allowed (out of range, not a domain).
    InvalidValue,
    DuplicateOrganization,
    DuplicateDomain,
    SecondFallback,
    DuplicateMailbox,
    OutsideDomains,
    /// A daemon configuration error (`submitgate.yaml`).
    Config,
    /// submitgate itself failed (a loader thread panicked).
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&label)
    }
}

/// Longest quotation of file text in an error message, in characters.
pub const MAX_QUOTE: usize = 64;

/// `text` as an error message quotes it: in double quotes, cut to [`MAX_QUOTE`] characters
/// (`…` marks the cut), with control characters, bidirectional overrides and other invisible
/// format characters escaped as `\u{..}`, so that an error never copies more than one short,
/// visible token of a file to a terminal or log.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_QUOTE * 2) + 2);
    out.push('"');
    for (i, c) in text.chars().enumerate() {
        if i == MAX_QUOTE {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The parser's own message (which may show one character of the file) with control and
/// invisible characters escaped and its length bounded.
fn plain(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(200));
    for (i, c) in message.chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        if c.is_control() || is_invisible_format(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode format characters that change how a line displays without showing themselves:
/// bidirectional marks, embeddings, overrides and isolates, zero-width characters, BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c as u32,
        0x061c | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem of one file (the daemon configuration) or one load (the policy directory),
/// shown one per line; the crate's one error-list type (`ConfigErrors`, `PolicyErrors`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<LocatedError>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A position in a file: 1-based line and column, and the character offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    /// Offset in characters (not bytes) from the start of the text.
    pub index: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub start: Pos,
    pub end: Pos,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar with its text and whether it was quoted or a block (never a bool/int/null then).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys in file order; duplicates are kept so validation can report them.
    Map(Vec<(Node, Node)>),
}

/// A typed reading of a scalar under YAML 1.2's core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(&'a str),
}

impl Node {
    /// The scalar's value under YAML 1.2's core schema (`yes`/`no` are strings, as in YAML 1.2).
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        let NodeKind::Scalar { text, quoted } = &self.kind else {
            return None;
        };
        if *quoted {
            return Some(Scalar::Str(text));
        }
        Some(match text.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
            "true" | "True" | "TRUE" => Scalar::Bool(true),
            "false" | "False" | "FALSE" => Scalar::Bool(false),
            t => match parse_int(t) {
                Some(i) => Scalar::Int(i),
                None => Scalar::Str(t),
            },
        })
    }

    /// A short description of what the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
            NodeKind::Scalar { .. } => match self.scalar() {
                Some(Scalar::Null) => "null".to_string(),
                Some(Scalar::Bool(b)) => b.to_string(),
                Some(Scalar::Int(i)) => i.to_string(),
                Some(Scalar::Str(s)) => quote(s),
                None => "a scalar".to_string(),
            },
        }
    }

    /// The mapping's entries, if this is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value of `key` in a mapping (first occurrence).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| matches!(&k.kind, NodeKind::Scalar { text, .. } if text == key))
            .map(|(_, v)| v)
    }

    /// The node at a path of mapping keys (`["replies", "tenant_disabled"]`), or the deepest
    /// node found on the way: used to point an error at the right line.
    pub fn locate(&self, path: &[&str]) -> &Node {
        let mut node = self;
        for key in path {
            match node.as_map().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.text() == Some(key))
                    .map(|(_, v)| v)
            }) {
                Some(next) => node = next,
                None => break,
            }
        }
        node
    }

    /// The key's text, when this node is a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

fn parse_int(t: &str) -> Option<i64> {
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// A syntax error (or an unsupported YAML feature) with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn pos(m: saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line(),
        column: m.col() + 1,
        index: m.index(),
    }
}

/// Deepest nesting accepted: policy files are three levels deep; this bounds recursion on
/// hostile input.
const MAX_DEPTH: usize = 32;

/// Parses a whole file into one document. An empty file is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    parse_inner(text, None)
}

/// Like [`parse`], but when the document is a mapping whose first `key` entry holds a mapping,
/// that mapping's entries are handed to `entry` one by one as they are read, and the tree keeps
/// `key` with an empty mapping that spans the original. A file with a mapping of a million
/// entries then never holds more than one entry's nodes. On a syntax error the entries already
/// handed over are part of a file that is refused as a whole.
pub fn parse_streaming(text: &str, key: &str, entry: EntryFn<'_>) -> Result<Node, SyntaxError> {
    parse_inner(text, Some((key, entry)))
}

/// What [`parse_streaming`] hands each entry of the streamed mapping to: key, value.
pub type EntryFn<'a> = &'a mut dyn FnMut(Node, Node);

/// Where [`parse_streaming`]'s key stands while the top-level mapping is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// The key has not been seen at the top level yet.
    Waiting,
    /// It is the pending key: a mapping that starts now is streamed.
    Next,
    /// Its mapping is being streamed (depth 2 of the stack).
    Open,
    /// Done: later occurrences are kept in the tree (the loader reports them as duplicates).
    Done,
}

fn parse_inner(text: &str, mut stream: Option<(&str, EntryFn<'_>)>) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<(Node, Option<Node>)> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut state = Stream::Waiting;
    loop {
        let (event, span): (Event<'_>, Span) = match parser.next_event() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                return Err(SyntaxError {
                    pos: pos(*e.marker()),
                    message: plain(e.info()),
                })
            }
        };
        let start = pos(span.start);
        let end = pos(span.end);
        let unsupported = |what: &str| SyntaxError {
            pos: start,
            message: format!("{what} are not supported in submitgate files"),
        };
        let node = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos: start,
                        message: "expected one YAML document; found a second".into(),
                    });
                }
                continue;
            }
            Event::Alias(_) => return Err(unsupported("aliases (*name)")),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return Err(unsupported("anchors (&name)"))
            }
            Event::Scalar(_, _, _, Some(_))
            | Event::SequenceStart(_, Some(_))
            | Event::MappingStart(_, Some(_)) => return Err(unsupported("tags (!tag)")),
            Event::Scalar(value, style, _, None) => Node {
                kind: NodeKind::Scalar {
                    text: value.into_owned(),
                    quoted: !matches!(style, ScalarStyle::Plain),
                },
                start,
                end,
            },
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos: start,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    NodeKind::Seq(Vec::new())
                } else {
                    if state == Stream::Next && stack.len() == 1 {
                        state = Stream::Open;
                    }
                    NodeKind::Map(Vec::new())
                };
                stack.push((Node { kind, start, end }, None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some((mut node, _)) => {
                    node.end = end;
                    node
                }
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        message: "unbalanced collection end".into(),
                    })
                }
            },
        };
        // Attach the finished node to its parent (or make it the root).
        let depth = stack.len();
        match stack.last_mut() {
            None => root = Some(node),
            Some((parent, pending_key)) => match &mut parent.kind {
                NodeKind::Seq(items) => items.push(node),
                NodeKind::Map(entries) => match pending_key.take() {
                    None => {
                        if depth == 1 && state == Stream::Waiting {
                            if let Some((key, _)) = &stream {
                                if node.text() == Some(*key) {
                                    state = Stream::Next;
                                }
                            }
                        }
                        *pending_key = Some(node)
                    }
                    Some(key) => match (&mut stream, depth, state) {
                        // An entry of the streamed mapping: handed over, not kept.
                        (Some((_, entry)), 2, Stream::Open) => entry(key, node),
                        _ => {
                            if depth == 1 && state != Stream::Waiting {
                                // The streamed key's value (its empty mapping, or a value
                                // of another kind, which stays in the tree) is complete.
                                state = Stream::Done;
                            }
                            entries.push((key, node))
                        }
                    },
                },
                NodeKind::Scalar { .. } => {
                    return Err(SyntaxError {
                        pos: start,
                        message: "internal: scalar parent".into(),
                    })
                }
            },
        }
    }
    Ok(root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        start: Pos {
            line: 1,
            column: 1,
            index: 0,
        },
        end: Pos {
            line: 1,
            column: 1,
            index: 0,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_tree_with_positions() {
        let doc = parse("a: 1\nb:\n  - x\n  - 'true'\nc: {d: null}\n").unwrap();
        let a = doc.get("a").unwrap();
        assert_eq!(a.scalar(), Some(Scalar::Int(1)));
        assert_eq!((a.start.line, a.start.column), (1, 4));
        let NodeKind::Seq(items) = &doc.get("b").unwrap().kind else {
            panic!("b is a list")
        };
        assert_eq!(items[1].scalar(), Some(Scalar::Str("true")));
        assert_eq!(items[1].start.line, 4);
        let c = doc.get("c").unwrap();
        assert_eq!(c.get("d").unwrap().scalar(), Some(Scalar::Null));
    }

    #[test]
    fn core_schema_scalars() {
        let doc = parse("a: yes\nb: ~\nc: -12\nd: 0x10\ne: 1.5\nf: TRUE\n").unwrap();
        assert_eq!(doc.get("a").unwrap().scalar(), Some(Scalar::Str("yes")));
        assert_eq!(doc.get("b").unwrap().scalar(), Some(Scalar::Null));
        assert_eq!(doc.get("c").unwrap().scalar(), Some(Scalar::Int(-12)));
        assert_eq!(doc.get("d").unwrap().scalar(), Some(Scalar::Int(16)));
        assert_eq!(doc.get("e").unwrap().scalar(), Some(Scalar::Str("1.5")));
        assert_eq!(doc.get("f").unwrap().scalar(), Some(Scalar::Bool(true)));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.pos.line >= 2, "{e:?}");
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert!(e.message.contains("anchors"));
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn empty_is_an_empty_mapping() {
        assert_eq!(parse("").unwrap().as_map().map(|m| m.len()), Some(0));
        assert_eq!(
            parse("# only a comment\n")
                .unwrap()
                .as_map()
                .map(|m| m.len()),
            Some(0)
        );
    }

    #[test]
    fn streaming_hands_over_the_first_mapping_of_the_key() {
        let text = "a: 1\nm:\n  x: {k: 1}\n  y: 2\nb: [m]\nm: {z: 3}\n";
        let mut seen = Vec::new();
        let doc = parse_streaming(text, "m", &mut |k, v| {
            seen.push((k.text().unwrap().to_string(), v.start.line, v))
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].0.as_str(), seen[0].1), ("x", 3));
        assert_eq!(seen[0].2.get("k").unwrap().scalar(), Some(Scalar::Int(1)));
        assert_eq!((seen[1].0.as_str(), seen[1].1), ("y", 4));
        // The tree keeps the key with an empty mapping, and a second `m` as it is.
        let entries = doc.as_map().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1].1.as_map().map(<[_]>::len), Some(0));
        assert_eq!(entries[1].1.start.line, 3);
        assert_eq!(entries[3].1.as_map().map(<[_]>::len), Some(1));
        // Not a mapping, or not at the top level: nothing is streamed.
        let mut count = 0;
        let doc =
            parse_streaming("m: [1, 2]\nn: {m: {a: 1}}\n", "m", &mut |_, _| count += 1).unwrap();
        assert_eq!(count, 0);
        assert!(matches!(doc.get("m").unwrap().kind, NodeKind::Seq(ref s) if s.len() == 2));
        // Same tree as parse() apart from the streamed entries; syntax errors alike.
        assert_eq!(
            parse_streaming(text, "nothing", &mut |_, _| ()).unwrap(),
            parse(text).unwrap()
        );
        let bad = "m:\n  x: 1\n  y: [\n";
        assert_eq!(
            parse_streaming(bad, "m", &mut |_, _| ()).unwrap_err(),
            parse(bad).unwrap_err()
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&text).is_err());
    }
}
