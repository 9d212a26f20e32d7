//! The layering rule of docs/architecture.md, checked on the source: arrows point from the front
//! ends to `admission` to the leaves, from `daemon`/`config`/the CLI to everything, never back
//! up, and no circle between top-level modules. It reads `src/` as text: every `crate::NAME` and
//! `super::NAME` outside comments and test files counts as an import of module NAME.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The upper layers: only they may import a front end, `daemon` or `config`.
const TOP: &[&str] = &["daemon", "config"];
/// The front ends: they may import `admission`, `context` and the leaves.
const FRONT_ENDS: &[&str] = &["milter", "postfix_policy", "auth_policy", "control"];
/// What the front ends share and the decision step.
const MIDDLE: &[&str] = &["admission", "context"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without its `#[cfg(test)]` items (an inline `mod tests { … }` is skipped to its
/// matching brace; `mod tests;` to its semicolon).
fn without_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.map_or(true, |s| open < s) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (i, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => semi + 1,
            _ => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Top-level module → the top-level modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?;
            Some(first.trim_end_matches(".rs").to_string())
        })
        .filter(|m| m != "main" && m != "lib" && m != "cli")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let name = rel.to_string_lossy();
        if name.contains("tests") {
            continue;
        }
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("module name");
        if !modules.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read source");
        let code = without_test_items(&text);
        let deps = graph.entry(top.clone()).or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for prefix in ["crate::", "super::"] {
                for (i, _) in line.match_indices(prefix) {
                    let rest = &line[i + prefix.len()..];
                    let target: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if target != top && modules.contains(&target) {
                        deps.insert(target);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn no_circles_between_top_level_modules() {
    let graph = graph();
    assert!(graph.len() > 10, "the source was not read: {graph:?}");
    for (from, deps) in &graph {
        for to in deps {
            // A path back from `to` to `from` closes a circle.
            let mut seen = BTreeSet::new();
            let mut stack = vec![to.clone()];
            while let Some(m) = stack.pop() {
                for next in graph.get(&m).into_iter().flatten() {
                    assert!(
                        next != from,
                        "import circle: {from} → {to} → … → {m} → {from}"
                    );
                    if seen.insert(next.clone()) {
                        stack.push(next.clone());
                    }
                }
            }
        }
    }
}

#[test]
fn arrows_point_down() {
    let graph = graph();
    let upper = |m: &str| TOP.contains(&m) || FRONT_ENDS.contains(&m) || MIDDLE.contains(&m);
    for (from, deps) in &graph {
        let from = from.as_str();
        for to in deps.iter().map(String::as_str) {
            let allowed = if TOP.contains(&from) {
                true
            } else if FRONT_ENDS.contains(&from) {
                !TOP.contains(&to) && !FRONT_ENDS.contains(&to)
            } else if MIDDLE.contains(&from) {
                !TOP.contains(&to) && !FRONT_ENDS.contains(&to) && to != "admission"
                    || (from == "admission" && to == "context")
            } else {
                // A leaf.
                !upper(to)
            };
            assert!(allowed, "{from} imports {to}: see docs/architecture.md");
        }
    }
    // The rule is about these modules; make sure they are the ones that exist.
    for m in [
        "admission",
        "context",
        "milter",
        "policy",
        "audit",
        "config",
        "daemon",
    ] {
        assert!(graph.contains_key(m), "no module {m} in src/");
    }
}
