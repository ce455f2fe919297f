//! The worker's source layout keeps its imports one-way: no file reaches, through
//! `crate::…` and `super::…` paths, back to itself; nothing imports the worker's
//! entry (`fleet`) but `lib.rs`. Read from the source text, so it also holds for code
//! that is not compiled in this configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `session/mod.rs` → `["session"]`, `claim/pull.rs` →
/// `["claim", "pull"]`, `lib.rs` → `[]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths named in `code`, resolved against `here` (`crate::a::b`, `super::c`, and
/// the groups of a `use crate::{a, b::c}`).
fn references(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // `super` is the enclosing module, for a `mod.rs` as for any other file.
    let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
        .filter(|w| !w.is_empty())
        .collect();
    for word in words {
        let (base, rest) = if let Some(rest) = word.strip_prefix("crate::") {
            (Vec::new(), rest)
        } else if let Some(rest) = word.strip_prefix("super::") {
            (parent.clone(), rest)
        } else {
            continue;
        };
        let rest = rest.trim_end_matches('{').trim_end_matches("::");
        let mut path = base;
        path.extend(
            rest.split("::")
                .filter(|s| !s.is_empty() && *s != "{")
                .map(str::to_owned),
        );
        found.push(path);
    }
    // `use crate::{a::b, c}` and `use super::{x, y}`: each name in the group.
    for (prefix, base) in [("crate::{", Vec::new()), ("super::{", parent.clone())] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix) {
            let start = from + at + prefix.len();
            let end = start + code[start..].find('}').unwrap_or(0);
            for item in code[start..end].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("");
                if item.is_empty() {
                    continue;
                }
                let mut path = base.clone();
                path.extend(item.split("::").map(|s| s.trim().to_owned()));
                found.push(path);
            }
            from = end;
        }
    }
    found
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// A cycle of `edges`, written `crate::a -> crate::b -> crate::a`, if there is one.
fn cycle(edges: &Graph) -> Option<String> {
    fn visit(
        node: &Vec<String>,
        edges: &Graph,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<String> {
        if done.contains(node) {
            return None;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain([node])
                .map(|m| format!("crate::{}", m.join("::")))
                .collect();
            return Some(names.join(" -> "));
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_worker_s_files_import_each_other_one_way() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|f| (module_of(&root, f), f.clone()))
        .collect();
    // Edges between files: a path names the deepest module that is a file of its own.
    let mut edges: Graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = code(&std::fs::read_to_string(file).unwrap());
        for path in references(&text, module) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            // A module using its own items, or a child using its parent's (`super::*`
            // in the session's files: one actor split over files), is not a layer.
            if &target != module && !module.starts_with(&target) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    for (module, targets) in &edges {
        assert!(
            module.is_empty() || !targets.contains(&vec!["fleet".to_owned()]),
            "{} imports the worker's entry `fleet`",
            module.join("::")
        );
    }
    if let Some(cycle) = cycle(&edges) {
        panic!("import cycle: {cycle}");
    }
    // The check sees the layering it is meant to guard.
    let fleet = &edges[&vec!["fleet".to_owned()]];
    assert!(fleet.contains(&vec!["session".to_owned()]), "{fleet:?}");
    assert!(fleet.contains(&vec!["claim".to_owned(), "pull".to_owned()]));
}

#[test]
fn a_cycle_is_found_where_there_is_one() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let mut edges: Graph = BTreeMap::new();
    edges.entry(m("fleet")).or_default().insert(m("session"));
    edges.entry(m("session")).or_default().insert(m("ctx"));
    assert_eq!(cycle(&edges), None);
    edges.entry(m("ctx")).or_default().insert(m("fleet"));
    assert_eq!(
        cycle(&edges).as_deref(),
        Some("crate::ctx -> crate::fleet -> crate::session -> crate::ctx")
    );
}

#[test]
fn paths_and_use_groups_are_read() {
    let here = vec!["session".to_owned(), "turn".to_owned()];
    let refs = references(
        "use crate::{ctx::Ctx, claim::queue::enqueue};\nuse super::Prompt; crate::fleet::run()",
        &here,
    );
    assert!(refs.contains(&vec!["ctx".to_owned(), "Ctx".to_owned()]));
    assert!(refs.contains(&vec![
        "claim".to_owned(),
        "queue".to_owned(),
        "enqueue".to_owned()
    ]));
    assert!(refs.contains(&vec!["session".to_owned(), "Prompt".to_owned()]));
    assert!(refs.contains(&vec!["fleet".to_owned(), "run".to_owned()]));
}
