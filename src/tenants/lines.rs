//! Where a key sits in a policy file's text: the line numbers errors name.
//!
//! One-off lookups scan the text ([`line_of`], [`line_of_value`]); a file's
//! many per-rule lookups go through a [`LineIndex`] built once, so locating
//! every rule's lines is linear in the file, not quadratic (a scan per rule of
//! a 10,000-rule file read the file 10,000 times).
//!
//! Never imports: anything of the crate beyond this folder.

use std::collections::HashMap;

/// Quote characters a YAML key may be wrapped in.
const QUOTES: [char; 2] = ['"', '\''];

#[cfg(test)]
thread_local! {
    /// Lines walked over by a scan (skipped ones too) or by building an
    /// index, for the tests that count the work a load does.
    pub(super) static LINES_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one line walked over (tests only).
fn read_one() {
    #[cfg(test)]
    LINES_READ.with(|n| n.set(n.get() + 1));
}

/// `text`'s lines, each counted as it is walked over.
fn walk(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().inspect(|_| read_one()).enumerate()
}

/// A line with its indentation and list markers (`- `) dropped.
fn key_part(line: &str) -> &str {
    line.trim_start().trim_start_matches("- ").trim_start()
}

/// Whether `line` is a `key:` line (the key may be quoted).
fn is_key(line: &str, key: &str) -> bool {
    let t = key_part(line);
    t.strip_prefix(key)
        .and_then(|r| r.trim_start_matches(QUOTES).strip_prefix(':'))
        .is_some()
        || t.strip_prefix('"')
            .or_else(|| t.strip_prefix('\''))
            .and_then(|t| t.strip_prefix(key))
            .is_some_and(|r| r.trim_start_matches(QUOTES).starts_with(':'))
}

/// The first line (1-based) at or after line index `from` whose key is `key`,
/// else the first such line in the file.
pub(super) fn line_of(text: &str, from: usize, key: &str) -> Option<usize> {
    walk(text)
        .skip(from)
        .find(|(_, l)| is_key(l, key))
        .or_else(|| walk(text).find(|(_, l)| is_key(l, key)))
        .map(|(i, _)| i + 1)
}

/// The value of a `key: value` line (the value may be quoted).
pub(super) fn value_of<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    let rest = key_part(line).strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(rest.trim_matches(QUOTES))
}

/// The line of `key: value` (the value may be quoted).
pub(super) fn line_of_value(text: &str, key: &str, value: &str) -> Option<usize> {
    walk(text).find_map(|(i, l)| (value_of(l, key) == Some(value)).then_some(i + 1))
}

/// The names a line answers to in [`is_key`]: up to its first ':', without
/// trailing quotes, read as it stands and after one leading quote. For a key
/// with no ':' that does not end in a quote, `is_key(line, key)` holds exactly
/// when one of these equals `key`.
fn names(line: &str) -> [Option<&str>; 2] {
    fn name(t: &str) -> Option<&str> {
        t.find(':').map(|c| t[..c].trim_end_matches(QUOTES))
    }
    let t = key_part(line);
    let first = name(t);
    let second = t
        .strip_prefix(QUOTES)
        .and_then(name)
        .filter(|n| Some(*n) != first);
    [first, second]
}

/// Whether [`LineIndex`] answers for `key` from its names (see [`names`]).
fn indexable(key: &str) -> bool {
    !key.contains(':') && !key.ends_with(QUOTES)
}

/// A file's keys and `key: value` pairs with their lines, built in one pass so
/// that each lookup is a hash and a binary search: finding every rule's lines
/// is linear in the file rather than quadratic. Answers exactly as
/// [`line_of`] and [`line_of_value`] do.
pub(super) struct LineIndex<'t> {
    text: &'t str,
    /// Each name a line answers to, with those lines (0-based, ascending).
    keys: HashMap<&'t str, Vec<usize>>,
    /// The first line (0-based) of each (key, value) that [`value_of`] reads,
    /// for keys without ':'.
    values: HashMap<(&'t str, &'t str), usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let mut keys: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut values = HashMap::new();
        for (i, line) in walk(text) {
            for name in names(line).into_iter().flatten() {
                keys.entry(name).or_default().push(i);
            }
            // `value_of(line, key)` for a key without ':' reads the key up to
            // the first ':' as it stands.
            let t = key_part(line);
            if let Some(c) = t.find(':') {
                let value = t[c + 1..].trim().trim_matches(QUOTES);
                values.entry((&t[..c], value)).or_insert(i);
            }
        }
        Self { text, keys, values }
    }

    /// As `line_of_value(text, "id", id)`.
    pub(super) fn id_line(&self, id: &str) -> Option<usize> {
        self.value_line("id", id)
    }

    /// As `line_of_value(text, key, value)`, for a `key` without ':'.
    pub(super) fn value_line(&self, key: &str, value: &str) -> Option<usize> {
        if key.contains(':') {
            return line_of_value(self.text, key, value);
        }
        self.values.get(&(key, value)).map(|i| i + 1)
    }

    /// As `line_of(text, from, key)`.
    pub(super) fn line_of(&self, from: usize, key: &str) -> Option<usize> {
        if !indexable(key) {
            // Only a name no header or rule key may have (an error is being
            // reported about it): scanned, as before.
            return line_of(self.text, from, key);
        }
        let lines = self.keys.get(key)?;
        // At or after `from`, else the first in the file.
        let at = lines.partition_point(|&i| i < from);
        lines.get(at).or(lines.first()).map(|i| i + 1)
    }
}

#[cfg(test)]
mod line_index_tests {
    use super::*;

    /// The index answers exactly as the scans it replaces, including repeated
    /// ids, quoted keys and values, keys with quotes or ':' in them, CRLF line
    /// ends, a bare '\r' and an unterminated last line.
    #[test]
    fn line_index_agrees_with_the_scans() {
        let texts = [
            "rules:\n  - id: a\n    path: /x\n  - id: \"b\"\n    when: 'true'\n  - id: a\n    path: /y",
            "rules:\r\n  - id: a\r\n    path: /x\r\n  - id: 'b'\r\n    path: /z\r\n",
            "a\rb\nrules:\n- id: c\n  path: /p\n\n- id: d\n",
            "",
            "response:\n  headers:\n    \"x-a\": b\n    'x:y': c\n    \"id\"\"\": d\n    x-b\": e\n    '\"path\": f\n    : g\n    \"\": h\n  - - id:a\n  - {id: e, path: /q}\n    -id: f\n",
            "rules:\n  - id:\n  - id: \"\"\n  - id : a\n  - \"id\": a\n  - id: a # c\n  - ü: ä\n  - id: ü\n",
        ];
        let keys = [
            "id", "path", "when", "rules", "nope", "", "x-a", "x:y", "x", "id\"", "x-b", "x-b\"",
            "\"path", "path\"", ":", "'", "\"", "ü", "headers", "-id", "- id", " id", "{id",
        ];
        let values = [
            "a", "b", "c", "d", "e", "f", "", "/x", "/q", "a # c", "ü", "ä",
        ];
        for text in texts {
            let index = LineIndex::new(text);
            for id in values {
                assert_eq!(
                    index.id_line(id),
                    line_of_value(text, "id", id),
                    "{text:?} {id}"
                );
                for key in keys {
                    assert_eq!(
                        index.value_line(key, id),
                        line_of_value(text, key, id),
                        "{text:?} {key} {id}"
                    );
                }
            }
            for from in 0..14 {
                for key in keys {
                    assert_eq!(
                        index.line_of(from, key),
                        line_of(text, from, key),
                        "{text:?} {from} {key}"
                    );
                }
            }
        }
    }
}
