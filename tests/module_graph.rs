//! The crate's shape, checked: its module graph has no cycles, and no source file outgrows
//! what a reader takes in at once.
//!
//! A cycle between modules means neither can be read (or changed) without the other, which is
//! how the connection path once became one 1,650-line file. The graph is built from the paths
//! each module's non-test code names — `crate::`, `super::`, `self::`, and a child module's
//! name in its parent (use trees expanded) — each resolved to the deepest module it reaches.
//! A parent that uses its children while they use items defined in it (`super::Error`) is a
//! cycle too: shared items belong in a leaf module both import. Declaring a child (`mod x;`)
//! and visibility (`pub(super)`) are not dependencies. Test modules are left out: they may
//! look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Non-test lines a source file may have.
const MAX_LINES: usize = 600;

/// One module of the crate: its path (`a::b`), file, and whether it is a `mod.rs`/`lib.rs`.
struct Module {
    file: PathBuf,
    owns_dir: bool,
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's modules by path; the binary (`main.rs`) and test modules are not part of it.
fn modules(src: &Path) -> BTreeMap<String, Module> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let owns_dir = matches!(parts.last().map(String::as_str), Some("mod" | "lib"));
        if owns_dir {
            parts.pop();
        }
        if parts.last().is_some_and(|p| p == "tests") || parts == ["main"] {
            continue;
        }
        out.insert(parts.join("::"), Module { file, owns_dir });
    }
    out
}

/// The code of a module without its test module, comments, and visibility qualifiers.
fn code_of(text: &str) -> String {
    let test_mod = Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s*)?mod tests\s*\{").unwrap();
    let text = match test_mod.find(text) {
        Some(m) => &text[..m.start()],
        None => text,
    };
    let comments = Regex::new(r"//[^\n]*").unwrap();
    let visibility = Regex::new(r"pub\s*\([^)]*\)").unwrap();
    let declarations = Regex::new(r"\bmod\s+\w+\s*;").unwrap();
    let code = comments.replace_all(text, "");
    let code = visibility.replace_all(&code, "pub");
    declarations.replace_all(&code, "").into_owned()
}

/// The lines of `text` before its test module.
fn non_test_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

/// Every path in `code` that may name a module of the crate, as segments: rooted at `crate`,
/// `super` or `self`, or at a lower-case name followed by `::` (a child module, or anything
/// else; [`graph`] keeps the children). Use trees are expanded (`crate::a::{b, c::d}` gives
/// `crate::a::b` and `crate::a::c::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let root =
        Regex::new(r"\b(crate|super|self|[a-z_][a-z_0-9]*)((?:::[A-Za-z_0-9]+)*)(::\{)?").unwrap();
    let split = |s: &str| -> Vec<String> {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut out = Vec::new();
    // The end of the last use tree expanded: paths inside it are already counted.
    let mut tree_end = 0;
    for m in root.captures_iter(code) {
        let start = m.get(0).unwrap().start();
        if start < tree_end {
            continue;
        }
        let keyword = matches!(&m[1], "crate" | "super" | "self");
        // The middle of a path (`a::b`), or a plain name (a variable, a crate of its own).
        if code[..start].ends_with(':') || (!keyword && m[2].is_empty() && m.get(3).is_none()) {
            continue;
        }
        let mut base = vec![m[1].to_string()];
        base.extend(split(&m[2]));
        let Some(brace) = m.get(3) else {
            out.push(base);
            continue;
        };
        // The tree's items, at its top level (nested groups keep their prefix).
        let bytes = code.as_bytes();
        let (start, mut depth, mut end) = (brace.end(), 1, brace.end());
        while depth > 0 && end < bytes.len() {
            match bytes[end] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            end += 1;
        }
        tree_end = end;
        let inner = &code[start..end.saturating_sub(1)];
        let (mut level, mut from) = (0, 0);
        let mut items = Vec::new();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => level += 1,
                '}' => level -= 1,
                ',' if level == 0 => {
                    items.push(&inner[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[from..]);
        for item in items {
            let item = item.trim().split(" as ").next().unwrap_or("");
            let head = item.split('{').next().unwrap_or("");
            if item.is_empty() {
                continue;
            }
            let mut path = base.clone();
            path.extend(split(head));
            out.push(path);
        }
    }
    out
}

/// Module → the modules its code names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let resolve = |segs: &[String]| -> Option<String> {
        (0..=segs.len())
            .rev()
            .map(|i| segs[..i].join("::"))
            .find(|c| c.is_empty() || mods.contains_key(c))
    };
    let mut g = BTreeMap::new();
    for (name, module) in &mods {
        if name.is_empty() {
            continue;
        }
        let here: Vec<String> = name.split("::").map(str::to_string).collect();
        let text = std::fs::read_to_string(&module.file).expect("read module");
        let mut deps = BTreeSet::new();
        for path in paths(&code_of(&text)) {
            let (head, rest) = (path[0].as_str(), &path[1..]);
            let absolute: Vec<String> = match head {
                "crate" => rest.to_vec(),
                "self" if module.owns_dir => here.iter().chain(rest).cloned().collect(),
                // `self` in a file module is the module itself.
                "self" => here.clone(),
                "super" => {
                    let mut parent = here[..here.len() - 1].to_vec();
                    let mut rest = rest;
                    while rest.first().is_some_and(|s| s == "super") {
                        parent.pop();
                        rest = &rest[1..];
                    }
                    parent.into_iter().chain(rest.iter().cloned()).collect()
                }
                // A child of this module named by itself; any other name is not ours.
                child => {
                    let path: Vec<String> =
                        here.iter().cloned().chain([child.to_string()]).collect();
                    if !module.owns_dir || !mods.contains_key(&path.join("::")) {
                        continue;
                    }
                    path.into_iter().chain(rest.iter().cloned()).collect()
                }
            };
            if let Some(target) = resolve(&absolute)
                && !target.is_empty()
                && target != *name
            {
                deps.insert(target);
            }
        }
        g.insert(name.clone(), deps);
    }
    g
}

/// The strongly connected components of `g` with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in g.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph(&src());
    // The graph is real: the connection path depends on routing and on backends.
    assert!(g.len() > 40, "{} modules", g.len());
    assert!(
        g["connection::upstream"].contains("backend::connect"),
        "{g:?}"
    );
    assert!(g["connection::negotiate"].contains("connection::upstream"));
    let found = cycles(&g);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .map(|m| {
                    let inside: Vec<&String> = g[m].iter().filter(|d| c.contains(d)).collect();
                    format!("  {m} -> {inside:?}")
                })
                .collect();
            format!("cycle {c:?}\n{}", edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_expands_use_trees() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    let found = paths(
        "use crate::x::{y, z::{w, v}, u as t};\nlet a = super::super::q::r;\nuse raw::Raw; raw.f();",
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::x::y",
            "crate::x::z",
            "crate::x::u",
            "super::super::q::r",
            "raw::Raw"
        ]
    );
    assert!(!code_of("mod raw;\npub mod x;").contains("raw"));
    assert!(!code_of("pub(super) fn f() {}").contains("super"));
}

#[test]
fn no_source_file_is_longer_than_a_reader_takes_in() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
        .filter_map(|f| {
            let n = non_test_lines(&std::fs::read_to_string(f).unwrap());
            (n > MAX_LINES).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(files.len() > 40);
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}
