//! The docs stay true to the tree: every repository path README.md and
//! docs/*.md name exists, every relative link between docs files (and its
//! `#anchor`) resolves, the README's Layout names each folder of `src/` and
//! only files that exist, and the demo's banner offers every command of the
//! README's tour. Reads files only; starts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// Where the docs name files of the repository.
const PREFIXES: [&str; 7] = [
    "src/",
    "tests/",
    "examples/",
    "charts/",
    "docs/",
    "fuzz/",
    "proto/",
];

/// `path` without a `:line`, `:line:col` or `#anchor` suffix and trailing
/// punctuation.
fn bare(path: &str) -> &str {
    let path = path.trim_end_matches(['.', ',', ';', ')', ':', '\'', '"']);
    let path = path.split('#').next().unwrap_or(path);
    match path.split_once(':') {
        Some((p, _)) => p,
        None => path,
    }
}

/// The repository paths `text` names: words starting with one of
/// [`PREFIXES`], wherever they stand (prose, backticks, links, code blocks).
/// Patterns (`*`, `{a,b}`, `<name>`, `…`) are checked up to the pattern.
fn named_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = PREFIXES.iter().filter_map(|p| rest.find(p)).min() {
            let before = rest[..at].chars().next_back();
            let word: String = rest[at..]
                .chars()
                .take_while(|c| {
                    !c.is_whitespace()
                        && !matches!(c, '`' | '(' | ')' | '[' | ']' | '|' | '"' | '\'')
                })
                .collect();
            rest = &rest[at + word.len().max(1)..];
            // Only a word that starts there: not `policies/src/x` or a URL.
            let starts =
                before.is_none_or(|c| matches!(c, ' ' | '`' | '(' | '[' | '"' | '\'' | '=' | '>'));
            if !starts {
                continue;
            }
            let cut = word
                .find(['*', '{', '<', '…', '$'])
                .map_or(word.as_str(), |i| &word[..i]);
            let cut = if cut.contains("...") {
                cut.split("...").next().unwrap()
            } else {
                cut
            };
            let path = bare(cut);
            if !path.is_empty() {
                found.push((n + 1, path.to_string()));
            }
        }
    }
    found
}

/// What `.gitignore` keeps out of the tree at its root (`/fuzz/corpus`):
/// outputs the docs may name though no checkout has them.
fn ignored() -> Vec<String> {
    std::fs::read_to_string(root().join(".gitignore"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('/'))
        .map(str::to_string)
        .collect()
}

/// The README's Layout block: its names are relative to the folder above
/// them, so the Layout has its own test.
fn without_layout(doc: &Path, text: &str) -> String {
    if doc.file_name().is_some_and(|n| n == "README.md") {
        let block = layout();
        // Blank lines in its place keep the line numbers of what follows.
        text.replacen(&block, &"\n".repeat(block.matches('\n').count()), 1)
    } else {
        text.to_string()
    }
}

#[test]
fn every_path_the_docs_name_exists() {
    let ignored = ignored();
    let mut missing = Vec::new();
    for (doc, text) in documents() {
        for (line, path) in named_paths(&without_layout(&doc, &text)) {
            let target = root().join(&path);
            let generated = ignored.iter().any(|i| path.starts_with(i.as_str()));
            if !target.exists() && !generated {
                missing.push(format!(
                    "{}:{line}: {path}",
                    doc.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.join("\n")
    );
}

/// `path` with `.` and `..` folded away (the file need not exist).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to
/// dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced && let Some(h) = line.strip_prefix('#') {
            let h = h.trim_start_matches('#');
            let mut a = anchor(h);
            // A repeated heading gets -1, -2, …
            let base = a.clone();
            let mut i = 1;
            while out.contains(&a) {
                a = format!("{base}-{i}");
                i += 1;
            }
            out.insert(a);
        }
    }
    out
}

/// The targets of `[text](target)` links in `text`.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_between_docs_resolves() {
    let mut broken = Vec::new();
    for (doc, text) in documents() {
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                doc.clone()
            } else {
                normal(&doc.parent().unwrap().join(file))
            };
            let at = format!(
                "{}:{line}: {target}",
                doc.strip_prefix(root()).unwrap().display()
            );
            if !path.exists() {
                broken.push(format!("{at} (no such file)"));
                continue;
            }
            if let Some(frag) = frag
                && path.extension().is_some_and(|x| x == "md")
                && !anchors(&std::fs::read_to_string(&path).unwrap()).contains(frag)
            {
                broken.push(format!("{at} (no such heading)"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The README's `## Layout` code block.
fn layout() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = readme
        .split("## Layout")
        .nth(1)
        .expect("README has a Layout");
    let block = after.split("```").nth(1).expect("Layout is a code block");
    block.to_string()
}

/// The Layout's entries: (folder or file, relative to the root; the text
/// that describes it). A two-space indented entry sits in the entry above it.
fn layout_entries() -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut top = String::new();
    for line in layout().lines() {
        let indent = line.len() - line.trim_start().len();
        let first = line.split_whitespace().next().unwrap_or("");
        let named = first.ends_with('/') || first.contains('.') || first == "Dockerfile";
        if indent == 0 && named {
            top = first.to_string();
            entries.push((first.to_string(), line[first.len()..].to_string()));
        } else if indent == 2 && named && top.ends_with('/') {
            entries.push((
                format!("{top}{first}"),
                line[indent + first.len()..].to_string(),
            ));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push('\n');
            text.push_str(line);
        }
    }
    entries
}

#[test]
fn the_layout_names_every_source_file_and_only_files_that_exist() {
    let entries = layout_entries();
    let file_name = regex::Regex::new(r"(?:^|[\s(,])([a-z_0-9/]+\.(?:rs|py|sh|yaml))\b").unwrap();
    let mut problems = Vec::new();
    for (entry, text) in &entries {
        let path = root().join(entry);
        if !path.exists() {
            problems.push(format!("{entry} does not exist"));
            continue;
        }
        // Files named in a folder's description are in that folder.
        if path.is_dir() {
            for name in file_name.captures_iter(text).map(|c| c[1].to_string()) {
                // `src/lib.rs` is from the root; `cli.rs`, `tools/x.py` from the folder.
                let rooted = PREFIXES.iter().any(|p| name.starts_with(p));
                let at = if rooted {
                    root().join(&name)
                } else {
                    path.join(&name)
                };
                if !at.exists() {
                    problems.push(format!(
                        "{entry}{name} (named in the Layout) does not exist"
                    ));
                }
            }
        }
    }
    // Every file of src/ is named under its folder (mod.rs aside).
    let src = root().join("src");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                sources.push(inner.unwrap().path());
            }
        } else {
            sources.push(path);
        }
    }
    sources.sort();
    for path in sources {
        let rel = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "mod.rs" {
            continue;
        }
        let folder = path.parent().unwrap().strip_prefix(root()).unwrap();
        let folder = format!("{}/", folder.display());
        let shown = if path.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        let listed = entries.iter().any(|(e, text)| {
            *e == rel
                || *e == format!("{rel}/")
                || (*e == folder
                    && text
                        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ','))
                        .any(|w| w == name || w == shown || w == name.trim_end_matches('/')))
        });
        if !listed {
            problems.push(format!("{rel} is not named in the README's Layout"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_demo_banner_offers_every_command_of_the_tour() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let tour = readme
        .split("## A quick tour")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let demo = std::fs::read_to_string(root().join("examples/demo.sh")).unwrap();
    let banner: Vec<&str> = demo.lines().map(str::trim).collect();
    let commands: Vec<&str> = tour
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    let missing: Vec<&&str> = commands.iter().filter(|c| !banner.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "the demo's banner lacks the tour's:\n{missing:#?}"
    );
}

#[test]
fn the_path_scan_reads_the_forms_the_docs_use() {
    let text = "see `src/app/cli.rs:42`, [x](../tests/cli.rs#L3) and tests/golden/*.yaml; \
                not policies/src/a.rs nor https://x.example/src/y";
    let paths: Vec<String> = named_paths(text).into_iter().map(|(_, p)| p).collect();
    // The link is checked as a link (every_relative_link_between_docs_resolves).
    assert_eq!(paths, ["src/app/cli.rs", "tests/golden/"]);
    assert_eq!(
        anchor("Tokens portcullis validates (`identity.jwt`)"),
        "tokens-portcullis-validates-identityjwt"
    );
}
