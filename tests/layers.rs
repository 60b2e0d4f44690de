//! The crate's floors hold: every `crate::` path in `src/` points at the
//! module's own floor-module or one on a lower floor, with the floors read from
//! the table beside the map in `src/lib.rs`; and inside a floor-module, its
//! parts do not import each other in a cycle.
//!
//! `cargo test --test layers -- --nocapture module_graph` prints the graph
//! (which module imports which) and every cycle in it, and fails when there is
//! one; it needs no table, so it runs (and prints) on any checkout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A reference from one module to another: where it was seen.
#[derive(Debug, Clone)]
struct Seen {
    file: String,
    line: usize,
}

/// Every `.rs` file under `src/` (but the crate roots), as (path relative to
/// `src/`, text).
fn sources(root: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel != "lib.rs" && rel != "main.rs" {
                    out.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// The module path of a file: `request/input.rs` is `["request", "input"]`,
/// `decision/mod.rs` is `["decision"]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// `text` with comments blanked and `#[cfg(test)]` items removed (a unit test
/// may build what it tests from a floor above), keeping every line break so
/// line numbers stay right. String literals stay: a serde `with = "crate::…"`
/// is a real dependency.
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            if c == b'\\' && i + 1 < bytes.len() {
                out.push(c as char);
                out.push(bytes[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                if bytes[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        // A raw string, `r"…"` or `r#"…"#`: copied whole, nothing inside counts
        // as code.
        if c == b'r' && (i == 0 || !is_ident(bytes[i - 1])) {
            let hashes = text[i + 1..].bytes().take_while(|b| *b == b'#').count();
            if bytes.get(i + 1 + hashes) == Some(&b'"') {
                let close = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                let end = text[body..]
                    .find(&close)
                    .map_or(text.len(), |e| body + e + close.len());
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
        }
        // A char literal (`'"'`, `'\''`); a lifetime's quote is copied alone.
        if c == b'\'' {
            let end = if bytes.get(i + 1) == Some(&b'\\') {
                text[i + 2..].find('\'').map(|e| i + 2 + e + 1)
            } else {
                let len = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                (bytes.get(i + 1 + len) == Some(&b'\'')).then_some(i + 2 + len)
            };
            if let Some(end) = end {
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
        }
        if c == b'"' {
            in_str = true;
        }
        if text[i..].starts_with("#[cfg(test)]") {
            // Skip the attribute and the item it guards: to its `;` or past
            // its balanced braces.
            let mut j = i + "#[cfg(test)]".len();
            let mut depth = 0usize;
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    b';' if depth == 0 => {
                        j += 1;
                        break;
                    }
                    b'\n' => out.push('\n'),
                    _ => {}
                }
                j += 1;
            }
            i = j;
            continue;
        }
        // Non-ASCII bytes only ever sit in comments and strings; copy them whole.
        let len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + len]);
        i += len;
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every `crate::a::b…` path in `code`, as its segments (up to two) and line;
/// a group `crate::{a, b::c}` gives one path per member.
fn crate_paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if start > 0 && is_ident(bytes[start - 1]) {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        let members: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').collect()
        } else {
            vec![rest]
        };
        for member in members {
            let segs: Vec<String> = member
                .trim_start()
                .split("::")
                .map(|s| {
                    s.trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .take(2)
                .collect();
            if !segs.is_empty() {
                out.push((segs, line));
            }
        }
    }
    out
}

/// Top-level module → modules it reaches, with one place each is reached.
type Graph = BTreeMap<String, BTreeMap<String, Seen>>;

/// The graph between top-level modules, and inside each one the graph between
/// its parts (`crate::m::part` or `super::part` from a sibling part).
fn graphs(files: &[(String, String)]) -> (Graph, BTreeMap<String, Graph>) {
    let mut top: Graph = BTreeMap::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    let parts: BTreeSet<Vec<String>> = files.iter().map(|(r, _)| module_of(r)).collect();
    for (rel, text) in files {
        let module = module_of(rel);
        let code = code_of(text);
        top.entry(module[0].clone()).or_default();
        for (segs, line) in crate_paths(&code) {
            let seen = Seen {
                file: format!("src/{rel}"),
                line,
            };
            if segs[0] != module[0] {
                top.entry(module[0].clone())
                    .or_default()
                    .entry(segs[0].clone())
                    .or_insert(seen);
            } else if module.len() > 1 && segs.len() > 1 && segs[1] != module[1] {
                // A part naming a sibling part through the crate path.
                if parts.contains(&vec![segs[0].clone(), segs[1].clone()]) {
                    inner
                        .entry(module[0].clone())
                        .or_default()
                        .entry(module[1].clone())
                        .or_default()
                        .entry(segs[1].clone())
                        .or_insert(seen);
                }
            }
        }
        if module.len() == 2 {
            let bytes = code.as_bytes();
            let mut from = 0;
            while let Some(at) = code[from..].find("super::") {
                let start = from + at;
                from = start + "super::".len();
                if start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == b':') {
                    continue;
                }
                let name: String = code[from..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let sibling = vec![module[0].clone(), name.clone()];
                if name != module[1] && parts.contains(&sibling) {
                    let line = code[..start].matches('\n').count() + 1;
                    inner
                        .entry(module[0].clone())
                        .or_default()
                        .entry(module[1].clone())
                        .or_default()
                        .entry(name)
                        .or_insert(Seen {
                            file: format!("src/{rel}"),
                            line,
                        });
                }
            }
        }
    }
    (top, inner)
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(v.keys().map(String::as_str)))
        .collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The floor table in `lib.rs`: rows `//! | 3 | [`policy`] | … |`.
fn floors(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.trim().strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 2 {
            continue;
        }
        let (Ok(floor), Some(name)) = (
            cells[0].parse::<usize>(),
            cells[1]
                .strip_prefix("[`")
                .and_then(|c| c.strip_suffix("`]")),
        ) else {
            continue;
        };
        assert!(
            out.insert(name.to_string(), floor).is_none(),
            "{name} is in the floor table twice"
        );
    }
    out
}

/// Everything wrong with `files` under the floors of `lib`, one line each.
fn violations(lib: &str, files: &[(String, String)]) -> Vec<String> {
    let floors = floors(lib);
    let mut out = Vec::new();
    if floors.is_empty() {
        out.push("src/lib.rs has no floor table".to_string());
        return out;
    }
    let (top, inner) = graphs(files);
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")?
                .strip_suffix(';')
                .map(String::from)
        })
        .collect();
    for module in top.keys().chain(declared.iter()) {
        if !floors.contains_key(module) {
            out.push(format!(
                "module {module} has no floor in src/lib.rs's table"
            ));
        }
    }
    for module in floors.keys() {
        if !declared.contains(module) {
            out.push(format!(
                "the floor table names {module}, which lib.rs does not declare"
            ));
        }
    }
    for (from, edges) in &top {
        let Some(&f) = floors.get(from) else { continue };
        for (to, seen) in edges {
            match floors.get(to) {
                Some(&t) if t < f => {}
                Some(&t) => out.push(format!(
                    "{}:{}: {from} (floor {f}) imports {to} (floor {t}): {}",
                    seen.file,
                    seen.line,
                    if t == f {
                        "a neighbour on its own floor"
                    } else {
                        "a floor above"
                    }
                )),
                None => out.push(format!(
                    "{}:{}: {from} imports {to}, which is no module",
                    seen.file, seen.line
                )),
            }
        }
    }
    for (module, graph) in &inner {
        for cycle in cycles(graph) {
            let example = graph
                .get(&cycle[0])
                .and_then(|e| e.iter().find(|(k, _)| cycle.contains(k)))
                .map(|(k, s)| format!(" ({}:{}: {} → {k})", s.file, s.line, cycle[0]))
                .unwrap_or_default();
            out.push(format!(
                "a cycle inside {module}: {}{example}",
                cycle.join(" ↔ ")
            ));
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_goes_down_a_floor() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let problems = violations(&lib, &sources(&src()));
    assert!(
        problems.is_empty(),
        "the floors do not hold:\n{}",
        problems.join("\n")
    );
}

#[test]
fn module_graph() {
    let files = sources(&src());
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap_or_default();
    let floors = floors(&lib);
    let (top, inner) = graphs(&files);
    let mut modules: Vec<&String> = top.keys().collect();
    modules.sort_by_key(|m| (floors.get(*m).copied().unwrap_or(usize::MAX), m.to_string()));
    println!(
        "module graph of src/ ({} top-level modules):",
        modules.len()
    );
    for m in &modules {
        let floor = floors.get(*m).map_or("-".to_string(), |f| f.to_string());
        let to: Vec<&str> = top[*m].keys().map(String::as_str).collect();
        println!("  [{floor}] {m} -> {}", to.join(" "));
    }
    let top_cycles = cycles(&top);
    println!("cycles between top-level modules: {}", top_cycles.len());
    for c in &top_cycles {
        println!("  {} modules: {}", c.len(), c.join(" "));
    }
    let inner_cycles: usize = inner.values().map(|g| cycles(g).len()).sum();
    println!("cycles inside a top-level module: {inner_cycles}");
    // Read from the imports alone, whatever the floor table says.
    assert!(
        top_cycles.is_empty() && inner_cycles == 0,
        "src/ has module cycles"
    );
}

/// The checker itself can fail: a planted back-import, a sideways import, a
/// cycle of parts and a module missing from the table are each found.
#[test]
fn the_check_goes_red_on_a_planted_back_import() {
    let lib = "//! | floor | module | what |\n//! |---|---|---|\n//! | 0 | [`base`] | a |\n//! | 1 | [`low`] | b |\n//! | 1 | [`side`] | c |\n//! | 2 | [`high`] | d |\npub mod base;\npub mod low;\npub mod side;\npub mod high;\n";
    let file = |p: &str, t: &str| (p.to_string(), t.to_string());
    let good = vec![
        file("base.rs", "pub struct B;\n"),
        file(
            "low/mod.rs",
            "pub mod a;\npub mod b;\nuse crate::base::B;\n",
        ),
        file("low/a.rs", "use super::b::X;\n"),
        file("low/b.rs", "pub struct X;\n"),
        file(
            "side.rs",
            "// crate::high in a comment is no import\nconst Q: char = '\"';\nconst R: &str = r#\"say \"hi\"#; // crate::high\n/* crate::high */\n",
        ),
        file(
            "high.rs",
            "use crate::{low::a, side};\n#[cfg(test)]\nmod tests { use crate::high; }\n",
        ),
    ];
    assert_eq!(violations(lib, &good), Vec::<String>::new());

    let mut back = good.clone();
    back[0] = file("base.rs", "pub struct B;\nfn f() { crate::high::g() }\n");
    let found = violations(lib, &back);
    assert!(
        found.len() == 1
            && found[0].starts_with("src/base.rs:2: base (floor 0) imports high (floor 2)"),
        "{found:?}"
    );

    let mut sideways = good.clone();
    sideways[4] = file("side.rs", "use crate::low::a;\n");
    let found = violations(lib, &sideways);
    assert!(
        found.len() == 1 && found[0].contains("a neighbour on its own floor"),
        "{found:?}"
    );

    let mut cycle = good.clone();
    cycle[3] = file("low/b.rs", "pub struct X;\nuse crate::low::a;\n");
    let found = violations(lib, &cycle);
    assert!(
        found.len() == 1 && found[0].starts_with("a cycle inside low: a ↔ b"),
        "{found:?}"
    );

    let mut stray = good;
    stray.push(file("extra.rs", "use crate::base::B;\n"));
    let found = violations(lib, &stray);
    assert_eq!(
        found,
        vec!["module extra has no floor in src/lib.rs's table".to_string()]
    );
}
