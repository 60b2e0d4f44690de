//! Reading a templated policy file without parsing its shared sections again.
//!
//! Parsing YAML is most of what loading a policy file costs, and in files made
//! from one template most of the text is the same `rules:`, `resources:` and
//! `response:` sections. [`split`] cuts a file at its top-level keys; the rest
//! of the file is parsed with each shared section replaced by a sentinel line,
//! and the sections' texts key the compiled rule set (see [`super::rule_set`]),
//! so a section seen before is not parsed again.
//!
//! The cut is a guess from the lines; what makes it safe is the check, not the
//! guess. The rest must parse with each sentinel as the value of its top-level
//! key, which holds only if YAML is at a top-level key where the section
//! starts (not inside a quoted scalar or a flow collection); each section must
//! parse on its own as a one-key mapping, which holds only if it closes
//! everything it opens and names no anchor outside it. Together these make the
//! pieces' values those of the whole file. Anything else, and the caller
//! parses the whole file as before.

use serde::Deserialize;

use super::file::{PolicyFile, ResourceSpec, ResponseSpec, RuleSpec};
use crate::foundation::document::API_VERSION;

/// The sections shared between templated files, with the one-line value that
/// stands in for each in the rest of the file. The sentinels hold a NUL, which
/// no real rule id, path or header name may contain.
const SECTIONS: [(&str, &str); 3] = [
    ("rules", r#"[{id: "\0", path: "\0", effect: deny}]"#),
    ("resources", r#"[{path: "\0", attributes: {}}]"#),
    ("response", r#"{remove: ["\0"]}"#),
];

/// The texts of a file's shared sections (absent ones are `None`), in
/// [`SECTIONS`] order, each from its key line to the next top-level key.
pub(super) type Texts<'t> = [Option<&'t str>; 3];

/// A file read in pieces: everything but the shared sections, parsed, and the
/// sections' texts, not yet parsed.
pub(super) struct Split<'t> {
    /// `rules`, `resources` and `response` are empty: see `texts`.
    pub(super) spec: PolicyFile,
    pub(super) texts: Texts<'t>,
}

/// `text` in pieces, when it can be cut safely and the rest parses as a
/// current policy file.
pub(super) fn split(text: &str) -> Option<Split<'_>> {
    if has_other_line_breaks(text) {
        return None;
    }
    let mut texts: Texts = [None; 3];
    let mut rest = String::with_capacity(text.len() / 2);
    // The section the current line belongs to, and where it started.
    let mut open: Option<(usize, usize)> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let first = line.as_bytes()[0];
        if first == b' ' || first == b'#' || first == b'-' || line.trim().is_empty() {
            // Within the section or top-level entry above.
            if line.starts_with("---") || line.starts_with('\t') {
                return None;
            }
            match open {
                Some(_) => rest.push('\n'),
                None => rest.push_str(line),
            }
            continue;
        }
        // A top-level key: letters, digits and '_', then ':'.
        let name_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let after = line[name_len..].trim_start_matches(' ');
        if name_len == 0 || !after.starts_with(':') {
            return None;
        }
        if let Some((i, from)) = open.take() {
            texts[i] = Some(&text[from..start]);
        }
        let name = &line[..name_len];
        match SECTIONS.iter().position(|(s, _)| *s == name) {
            Some(i) if texts[i].is_some() => return None,
            Some(i) => {
                open = Some((i, start));
                rest.push_str(name);
                rest.push_str(": ");
                rest.push_str(SECTIONS[i].1);
                rest.push('\n');
            }
            None => rest.push_str(line),
        }
    }
    if let Some((i, from)) = open {
        texts[i] = Some(&text[from..]);
    }
    if texts.iter().all(Option::is_none) || has_alias(&rest) {
        return None;
    }
    let mut spec: PolicyFile = serde_yaml::from_str(&rest).ok()?;
    let sentinel = |s: &str| s == "\0";
    let in_place = [
        spec.rules.len() == 1 && sentinel(&spec.rules[0].id) && sentinel(&spec.rules[0].path),
        spec.resources.len() == 1 && sentinel(&spec.resources[0].path),
        spec.response.headers.is_empty()
            && spec.response.downstream_token.is_none()
            && spec.response.remove.len() == 1
            && sentinel(&spec.response.remove[0]),
    ];
    let empty = [
        spec.rules.is_empty(),
        spec.resources.is_empty(),
        unset(&spec.response),
    ];
    // Each sentinel stands where its section was, and a section the cut did
    // not see has no value in the rest either.
    for ((text, placed), empty) in texts.iter().zip(in_place).zip(empty) {
        if if text.is_some() { !placed } else { !empty } {
            return None;
        }
    }
    if spec.api_version != API_VERSION {
        return None;
    }
    spec.rules = Vec::new();
    spec.resources = Vec::new();
    spec.response = ResponseSpec::default();
    Some(Split { spec, texts })
}

/// Each shared section's text on its own, as the file's top-level mapping
/// would read it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
    #[serde(default)]
    response: ResponseSpec,
}

/// Fills `spec`'s shared sections from their texts; `None` when one does not
/// parse on its own (the caller then parses the whole file).
pub(super) fn parse_into(texts: &Texts, spec: &mut PolicyFile) -> Option<()> {
    let [rules, resources, response] = texts;
    // A section's text holds its own key and nothing else.
    let alone = |text: &str, own: usize| -> Option<Section> {
        let section = serde_yaml::from_str::<Section>(text).ok()?;
        let empty = [
            section.rules.is_empty(),
            section.resources.is_empty(),
            unset(&section.response),
        ];
        (0..3).all(|i| i == own || empty[i]).then_some(section)
    };
    if let Some(text) = rules {
        spec.rules = alone(text, 0)?.rules;
    }
    if let Some(text) = resources {
        spec.resources = alone(text, 1)?.resources;
    }
    if let Some(text) = response {
        spec.response = alone(text, 2)?.response;
    }
    Some(())
}

fn unset(response: &ResponseSpec) -> bool {
    response.headers.is_empty() && response.remove.is_empty() && response.downstream_token.is_none()
}

/// Whether `text` has a line break YAML reads that the cut, which splits at
/// `\n`, would not: a CR not before LF, NEL, LS or PS. A key after one is a
/// top-level key to YAML and part of the line above to the cut.
fn has_other_line_breaks(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        || text.contains(['\u{85}', '\u{2028}', '\u{2029}'])
}

/// Whether `text` may use an alias (`*name`): an anchor in a section could
/// be redefined there and so change what the alias means in the whole file.
/// Any `*` that starts a node counts, and some that do not (in a quoted
/// scalar after `: `), which only costs the fast path.
fn has_alias(text: &str) -> bool {
    let mut prev = b'\n';
    for b in text.bytes() {
        if b == b'*' && matches!(prev, b'\n' | b':' | b'-' | b'[' | b',' | b'{' | b'?') {
            return true;
        }
        if !matches!(b, b' ' | b'\t') {
            prev = b;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read in pieces, `text` means what the whole file means; or it is not
    /// read in pieces. Returns whether it was.
    fn agrees(text: &str) -> bool {
        let whole = serde_yaml::from_str::<PolicyFile>(text);
        let Some(mut split) = split(text) else {
            return false;
        };
        if parse_into(&split.texts, &mut split.spec).is_none() {
            return false;
        }
        let whole =
            whole.unwrap_or_else(|e| panic!("read in pieces, but the file fails: {e}\n{text}"));
        assert_eq!(format!("{:?}", split.spec), format!("{whole:?}"), "{text}");
        true
    }

    const HEAD: &str = "apiVersion: portcullis/v1\ntenant: t1\nclaims: [tenant]\n";
    const RULES: &str = "rules:\n  - id: a\n    methods: [GET]\n    path: /t/{t}/a\n    when: '\"a:read\" in claims.scope && resource.params.t == claims.tenant'\n    effect: allow\n";

    #[test]
    fn templated_layouts_read_in_pieces_as_the_whole_file() {
        let response = "response:\n  headers: { x-tenant: \"{tenant}\" }\n  remove: [cookie]\n";
        let resources = "resources:\n- path: /t/{t}/a\n  attributes: { kind: a }\n";
        let texts = [
            format!("{HEAD}{RULES}{response}"),
            format!("{RULES}{HEAD}"),
            format!(
                "{HEAD}{resources}# a comment\n\n{RULES}# trailing\n{response}default: allow\n"
            ),
            format!("{HEAD}rules:\n- id: a\n  path: /a\n  effect: deny\n"),
            format!("{HEAD}{RULES}").replace('\n', "\r\n"),
            format!(
                "{HEAD}rules :\n  - {{ id: a, path: /a, effect: deny }}\nhosts: ['*.x.example']\n"
            ),
            format!("{HEAD}rules: []\n"),
            format!(
                "{HEAD}rules:\n  - id: a\n    path: /a\n    effect: deny\n    when: |\n      claims.sub == \"x\"\n\n"
            ),
            // A sentinel written by hand is a section like any other.
            format!(
                "{HEAD}rules: [{{id: \"\\0\", path: \"\\0\", effect: deny}}]\nresponse:\n  remove: [x]\n"
            ),
        ];
        for text in &texts {
            assert!(agrees(text), "not read in pieces:\n{text}");
        }
        // The real policies in the repository: in pieces or not, the same.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["examples/policies", "tests/fixtures/broken"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("a directory") {
                let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("text");
                agrees(&text);
            }
        }
    }

    #[test]
    fn files_the_cut_could_misread_are_read_whole() {
        let misread = [
            // A quoted scalar that runs over a line that looks like a key.
            format!("{HEAD}hosts: [\"x\n{RULES}audit: {{ log_headers: [] }}\"]\n"),
            format!("apiVersion: portcullis/v1\ntenant: t1\nclaims: ['x\n{RULES}audit: x']\n"),
            // A flow collection over lines.
            format!("{HEAD}hosts: [a.example,\n{RULES}]\n"),
            // An alias whose anchor a section could redefine.
            format!("{HEAD}hosts: [&h a.example]\n{RULES}shared_issuers: [*h]\n"),
            // Duplicate sections, documents, a directive.
            format!("{HEAD}{RULES}{RULES}"),
            format!("---\n{HEAD}{RULES}"),
            format!("%YAML 1.2\n---\n{HEAD}{RULES}"),
            format!("{HEAD}{RULES}---\n{HEAD}"),
            // Not a mapping at the top.
            format!("{{apiVersion: portcullis/v1, tenant: t1,\n{RULES}}}"),
            "\u{feff}apiVersion: portcullis/v1\ntenant: t\nrules: []\n".to_string(),
            // A line break the cut does not split at, before a section (its
            // value would be dropped), inside one (a section hidden in it)
            // or before an alias.
            format!("{HEAD}hosts: [a.example]\r{RULES}"),
            format!("{HEAD}hosts: [a.example]\u{85}{RULES}"),
            format!("{HEAD}hosts: [a.example]\u{2028}{RULES}"),
            format!("{HEAD}hosts: [a.example]\u{2029}{RULES}"),
            format!("{HEAD}{RULES}\rresponse: {{remove: [x-secret]}}\n"),
            "apiVersion: portcullis/v1\ntenant: t1\nclaims: [&m dry_run]\nrules:\n  - {id: &m enforce, path: /a, effect: deny}\nmode:\r  *m\n".to_string(),
            // A section hidden after such a break when another is seen.
            format!("{HEAD}response: {{remove: [x-a]}}\nhosts: [a.example]\rrules: [{{id: b, path: /admin, effect: deny}}]\n"),
            // No section at all, and a section that does not parse alone.
            HEAD.to_string(),
            format!("{HEAD}rules:\n  - id: a\n    path: *p\n    effect: deny\n"),
        ];
        for text in &misread {
            assert!(!agrees(text), "read in pieces:\n{text}");
        }
    }
}
