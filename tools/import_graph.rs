//! The import graph of `src/`: which room (top-level module) uses which, and whether every arrow
//! points down the floors written in `FLOORS`.
//!
//! Plain std and a line scanner instead of `cargo modules`: it runs inside `cargo test` on a fresh
//! machine with nothing else installed, and the rule it checks is simple enough to read here.
//! A room may use only rooms on lower floors, so the rooms cannot form a circle, and neither can
//! files of different rooms. `tests/architecture.rs` runs [`check`] in CI; `tools/import-graph.sh`
//! prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The floors, bottom first. A room uses only rooms on floors below its own; rooms that share a
/// floor do not use each other. `docs/architecture.md` describes the same table.
pub const FLOORS: &[&[&str]] = &[
    &["vm"],
    &["storage"],
    &["ledger", "guest_image", "accel", "egress"],
    &["backend"],
    &["session"],
    &["view"],
    &["mcp"],
    &["http"],
    &["client"],
    &["cli"],
    &["bench"],
    &["main"],
];

/// One use of a room by a file of another room.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Arrow {
    pub from: String,
    pub to: String,
    pub file: String,
    pub line: usize,
}

/// The rooms found under `src` and every arrow between two of them.
pub struct Graph {
    pub rooms: BTreeSet<String>,
    pub arrows: Vec<Arrow>,
}

/// Reads every `.rs` file under `src` (the crate root's `lib.rs` only declares the rooms).
pub fn scan(src: &Path) -> std::io::Result<Graph> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    files.sort();
    let mut graph = Graph {
        rooms: BTreeSet::new(),
        arrows: Vec::new(),
    };
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let Some(room) = room_of(rel) else { continue };
        graph.rooms.insert(room.clone());
        let text = std::fs::read_to_string(&file)?;
        // The binary names the library `deskvm::`; inside the library it is `crate::`.
        let root = if room == "main" { "deskvm" } else { "crate" };
        for (line, to) in uses(&text, root) {
            if to != room {
                graph.arrows.push(Arrow {
                    from: room.clone(),
                    to,
                    file: rel.display().to_string(),
                    line,
                });
            }
        }
    }
    Ok(graph)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `session/lane.rs` → `session`, `accel.rs` → `accel`; `lib.rs` belongs to no room.
fn room_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Every room a file names through `root::room` or `root::{room, …}`, with its line number.
/// Comments are dropped first: doc comments name other rooms in backticks without using them.
fn uses(text: &str, root: &str) -> Vec<(usize, String)> {
    let code = without_comments(text);
    let needle = format!("{root}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            for name in group_heads(group) {
                found.push((line, name));
            }
        } else if let Some(name) = ident(rest) {
            found.push((line, name));
        }
    }
    found
}

/// The first path segment of each item of a `{a::b, c, d::{e, f}}` group (text after the `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && !c.is_whitespace() => {
                at_item = false;
                if let Some(name) = ident(&group[i..]) {
                    if name != "self" {
                        heads.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

/// The text with comments and the insides of string and char literals blanked (newlines kept,
/// so line numbers stay): a doc comment or a message may name a room without using it, and a
/// `//` inside `"http://…"` starts no comment.
fn without_comments(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let next = c.get(i + 1).copied();
        let prev_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            i += 2;
            while i < c.len() && !(c[i] == '*' && c.get(i + 1) == Some(&'/')) {
                blank(&mut out, c[i]);
                i += 1;
            }
            i += 2;
        } else if c[i] == 'r' && !prev_ident && matches!(next, Some('"') | Some('#')) {
            // r"…" or r#"…"#: ends at a quote followed by as many hashes.
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            if c.get(i + 1 + hashes) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            i += hashes + 2;
            while i < c.len()
                && !(c[i] == '"'
                    && c[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes)
            {
                blank(&mut out, c[i]);
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    blank(&mut out, ch);
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('"', '\''); a lone quote is a lifetime and stays.
            i += 1;
            if c.get(i) == Some(&'\\') {
                i += 1;
            }
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The floor of a room, bottom = 0.
pub fn floor_of(room: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&room))
}

/// What breaks the rule: rooms without a floor, and arrows that do not point down.
pub fn check(graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    for room in &graph.rooms {
        if floor_of(room).is_none() {
            problems.push(format!(
                "room `{room}` has no floor: add it to FLOORS in tools/import_graph.rs and to docs/architecture.md"
            ));
        }
    }
    for a in &graph.arrows {
        let (Some(from), Some(to)) = (floor_of(&a.from), floor_of(&a.to)) else {
            continue;
        };
        if to >= from {
            let how = if to == from { "across its floor" } else { "up" };
            problems.push(format!(
                "{}:{}: `{}` (floor {from}) uses `{}` (floor {to}), {how}",
                a.file, a.line, a.from, a.to
            ));
        }
    }
    problems
}

/// The graph as text: each room with its floor and the rooms it uses (how many files).
pub fn render(graph: &Graph) -> String {
    let mut uses: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for a in &graph.arrows {
        uses.entry(&a.from)
            .or_default()
            .entry(&a.to)
            .or_default()
            .insert(&a.file);
    }
    let mut out = String::new();
    for (floor, rooms) in FLOORS.iter().enumerate().rev() {
        for room in rooms.iter().filter(|r| graph.rooms.contains(**r)) {
            let targets: Vec<String> = uses
                .get(room)
                .map(|m| {
                    m.iter()
                        .map(|(to, f)| format!("{to}({})", f.len()))
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(out, "{floor:>2} {room:<12} → {}", targets.join(" "));
        }
    }
    let arrows: BTreeSet<(&str, &str)> = graph
        .arrows
        .iter()
        .map(|a| (a.from.as_str(), a.to.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "{} rooms on {} floors, {} arrows",
        graph.rooms.len(),
        FLOORS.len(),
        arrows.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_paths_and_comments() {
        let text = "use crate::{a::b, c, d::{e, f}};\n// crate::hidden\nlet x = crate::g::h(\"http://crate::no\", '\"', r#\"crate::raw\"#);\n/* crate::also */ use crate::{self, i};";
        let names: Vec<String> = uses(text, "crate").into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["a", "c", "d", "g", "i"]);
        assert_eq!(uses(text, "crate")[3].0, 3);
    }

    #[test]
    fn an_arrow_up_or_across_is_a_problem() {
        let arrow = |from: &str, to: &str| Arrow {
            from: from.into(),
            to: to.into(),
            file: "f.rs".into(),
            line: 1,
        };
        let graph = Graph {
            rooms: ["vm", "storage", "ledger", "accel"]
                .map(String::from)
                .into(),
            arrows: vec![
                arrow("storage", "vm"),
                arrow("vm", "storage"),
                arrow("ledger", "accel"),
            ],
        };
        let problems = check(&graph);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`vm` (floor 0) uses `storage` (floor 1), up"));
        assert!(problems[1].contains("across its floor"));
    }
}
