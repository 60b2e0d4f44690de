//! Where a key sits in a policy file's text: the line numbers errors name.
//!
//! Never imports: anything of the crate beyond this folder.

/// The first line at or after `from` (0-based) whose key is `key`.
pub(super) fn line_of(text: &str, from: usize, key: &str) -> Option<usize> {
    line_of_skipping(text, text.lines().skip(from), from, key)
}

/// [`line_of`] over `rest`, the lines of `text` from line index `from` on.
pub(super) fn line_of_skipping<'t>(
    text: &'t str,
    rest: impl Iterator<Item = &'t str>,
    from: usize,
    key: &str,
) -> Option<usize> {
    let is_key = |line: &str| {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        t.strip_prefix(key)
            .and_then(|r| r.trim_start_matches(['"', '\'']).strip_prefix(':'))
            .is_some()
            || t.strip_prefix('"')
                .or_else(|| t.strip_prefix('\''))
                .and_then(|t| t.strip_prefix(key))
                .is_some_and(|r| r.trim_start_matches(['"', '\'']).starts_with(':'))
    };
    rest.enumerate()
        .map(|(i, l)| (i + from, l))
        .find(|(_, l)| is_key(l))
        .or_else(|| text.lines().enumerate().find(|(_, l)| is_key(l)))
        .map(|(i, _)| i + 1)
}

/// The value of a `key: value` line (the value may be quoted).
pub(super) fn value_of<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let rest = t.strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(rest.trim_matches(['"', '\'']))
}

/// The line of `key: value` (the value may be quoted).
pub(super) fn line_of_value(text: &str, key: &str, value: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| (value_of(l, key) == Some(value)).then_some(i + 1))
}

/// A file's line starts and the first line of each `id:` value, built once so
/// that finding every rule's line is linear in the file rather than quadratic
/// (each lookup used to scan the file from its start). Answers exactly as
/// [`line_of`] and [`line_of_value`] do.
pub(super) struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset of each line `str::lines` yields.
    starts: Vec<usize>,
    ids: std::collections::HashMap<&'t str, usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let mut starts = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let mut at = 0;
        for (i, line) in text.lines().enumerate() {
            starts.push(at);
            // `lines` drops the '\n' (and a '\r' before it); step past both.
            at += line.len();
            if text[at..].starts_with("\r\n") {
                at += 2;
            } else if text[at..].starts_with('\n') {
                at += 1;
            }
            if let Some(v) = value_of(line, "id") {
                ids.entry(v).or_insert(i + 1);
            }
        }
        Self { text, starts, ids }
    }

    /// As `line_of_value(text, "id", id)`.
    pub(super) fn id_line(&self, id: &str) -> Option<usize> {
        self.ids.get(id).copied()
    }

    /// As `line_of(text, from, key)`.
    pub(super) fn line_of(&self, from: usize, key: &str) -> Option<usize> {
        let rest = self
            .starts
            .get(from)
            .map_or("", |&start| &self.text[start..]);
        line_of_skipping(self.text, rest.lines(), from, key)
    }
}

#[cfg(test)]
mod line_index_tests {
    use super::*;

    /// The index answers exactly as the scans it replaces, including repeated
    /// ids, quoted values, CRLF line ends, a bare '\r' and an unterminated
    /// last line.
    #[test]
    fn line_index_agrees_with_the_scans() {
        let texts = [
            "rules:\n  - id: a\n    path: /x\n  - id: \"b\"\n    when: 'true'\n  - id: a\n    path: /y",
            "rules:\r\n  - id: a\r\n    path: /x\r\n  - id: 'b'\r\n    path: /z\r\n",
            "a\rb\nrules:\n- id: c\n  path: /p\n\n- id: d\n",
            "",
        ];
        for text in texts {
            let index = LineIndex::new(text);
            for id in ["a", "b", "c", "d", "e", ""] {
                assert_eq!(
                    index.id_line(id),
                    line_of_value(text, "id", id),
                    "{text:?} {id}"
                );
            }
            for from in 0..12 {
                for key in ["id", "path", "when", "rules", "nope"] {
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
