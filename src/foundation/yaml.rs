//! Reading YAML without letting a file stall the reader: a linear pre-scan
//! that bounds nesting depth and alias expansion before the parser spends any
//! time, and [`from_str`], the one way the crate parses a YAML file.
//!
//! The parser's time grows with the square of the nesting depth (200 KB of
//! `[[[…` took ~50 s), and an alias re-reads its anchored node each time it
//! is used (`yaml_serde` stops at 100 × the document's events, which is still
//! far too much for a file of a few MiB). So every file is scanned first, in
//! one pass, and refused with its line when it nests deeper than
//! [`MAX_DEPTH`] or its aliases would add more than [`MAX_ALIAS_NODES`] nodes.
//!
//! The scan follows the tokenizer of libyaml (which `yaml_serde` uses) as far
//! as depth is concerned: a flow `[`/`{` opens a level wherever the tokenizer
//! reads it as an indicator, and so does a key inside a flow sequence
//! (`[a: b]` is a sequence of one mapping); a block mapping or sequence opens a level where
//! the tokenizer would raise its indentation (a `key:` or `- ` at a deeper
//! column, and a `- ` sequence at its mapping's column); quoted scalars,
//! plain scalars (including their continuation lines), block scalars (`|`,
//! `>`, by libyaml's indentation rule) and comments are skipped. Where it is
//! unsure it is meant to count a level too many rather than one too few; the
//! `differential` tests hold it to that against the parser itself. A file the
//! scan passes can still be refused by the parser, with the parser's error.
//!
//! Never imports: any other module of the crate but [`super::yaml_error`]
//! (the line a parser error names).

use std::collections::HashMap;
use std::fmt;

/// Deepest nesting a YAML file may have: flow collections plus block
/// collections, counted as the scan describes. The deepest bundled file (an
/// Envoy configuration) nests 18 levels; `yaml_serde` itself stops at 128.
pub const MAX_DEPTH: usize = 64;

/// Most nodes the aliases of one YAML file may add, counting each use of an
/// anchor as a copy of the anchored node (nested aliases multiply).
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// Why a YAML text was refused, with the line (1-based) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// [`check`]s `text`, then parses it.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    check(text)?;
    serde_yaml::from_str(text).map_err(|e| YamlError {
        line: super::yaml_error::line(&e),
        message: e.to_string(),
    })
}

/// Refuses `text` when it nests deeper than [`MAX_DEPTH`] or its aliases add
/// more than [`MAX_ALIAS_NODES`] nodes. One pass, no allocation per byte.
pub fn check(text: &str) -> Result<(), YamlError> {
    Scan::new(text.as_bytes()).run()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Map,
    Seq,
    /// A block sequence at its parent mapping's column (`key:\n- a`).
    IndentlessSeq,
}

/// An anchor whose node has not ended yet.
struct Open<'a> {
    name: &'a [u8],
    /// The depth the anchor was read at; its node ends at the next node that
    /// starts at this depth or above.
    depth: usize,
    line: usize,
    /// Nodes counted before the anchored node.
    start: u64,
    /// The line of the anchored node's first token, once it started.
    first: Option<usize>,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    /// Column of `b[i]`, in characters.
    col: usize,
    /// Whether the byte before `b[i]` was a blank or a line break.
    after_blank: bool,
    /// Open flow collections, plus the single-pair mappings inside them.
    flow: usize,
    /// Each open flow collection: whether it is a sequence, and whether a
    /// single-pair mapping (`[a: b]`) is open in it.
    brackets: Vec<(bool, bool)>,
    levels: Vec<(usize, Level)>,
    /// Inside a plain scalar that may go on.
    plain: bool,
    /// Where the latest node on a line started (for `key:`).
    node: (usize, usize),
    /// Where the anchor or tag of the next node started: a key's column is
    /// that of its properties.
    props: Option<(usize, usize)>,
    nodes: u64,
    added: u64,
    anchors: HashMap<&'a [u8], u64>,
    open: Vec<Open<'a>>,
    /// The deepest nesting seen.
    deepest: usize,
}

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Scan<'a> {
        Scan {
            b,
            i: 0,
            line: 1,
            col: 0,
            after_blank: true,
            flow: 0,
            brackets: Vec::new(),
            levels: Vec::new(),
            plain: false,
            node: (0, 0),
            props: None,
            nodes: 0,
            added: 0,
            anchors: HashMap::new(),
            open: Vec::new(),
            deepest: 0,
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.i + ahead).copied()
    }

    fn bump(&mut self) {
        let Some(c) = self.peek(0) else { return };
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
            self.col = 0;
            self.after_blank = true;
        } else {
            // A UTF-8 continuation byte is not a character of its own.
            if c & 0xC0 != 0x80 {
                self.col += 1;
            }
            self.after_blank = matches!(c, b' ' | b'\t' | b'\r');
        }
    }

    /// Whether the byte `ahead` is a blank, a line break or the end.
    fn blank_at(&self, ahead: usize) -> bool {
        matches!(self.peek(ahead), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
    }

    fn depth(&self) -> usize {
        self.levels.len() + self.flow
    }

    /// The column of the innermost block collection, or -1 outside any.
    fn indent(&self) -> i64 {
        self.levels.last().map_or(-1, |(c, _)| *c as i64)
    }

    fn refuse(&self, message: String) -> Result<(), YamlError> {
        Err(YamlError {
            line: Some(self.line),
            message,
        })
    }

    fn too_deep(&mut self) -> Result<(), YamlError> {
        self.deepest = self.deepest.max(self.depth());
        if self.depth() > MAX_DEPTH {
            return self.refuse(format!(
                "YAML nests deeper than {MAX_DEPTH} levels; refused before parsing"
            ));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), YamlError> {
        while self.i < self.b.len() {
            self.line_start()?;
            self.rest_of_line()?;
        }
        Ok(())
    }

    /// Indentation, blank and comment lines, document markers, and which
    /// block collections the line's first token closes.
    fn line_start(&mut self) -> Result<(), YamlError> {
        while self.peek(0) == Some(b' ') {
            self.bump();
        }
        let indent = self.col;
        match self.peek(0) {
            None | Some(b'\n') => return Ok(()),
            Some(b'\r') if self.peek(1) == Some(b'\n') => return Ok(()),
            Some(b'#') => {
                self.plain = false;
                return Ok(());
            }
            _ => {}
        }
        if self.flow > 0 {
            return Ok(());
        }
        let marker =
            |s: &Self, c: u8| indent == 0 && (0..3).all(|k| s.peek(k) == Some(c)) && s.blank_at(3);
        if marker(self, b'-') || marker(self, b'.') {
            self.plain = false;
            self.levels.clear();
            self.close_anchors(0);
            for _ in 0..3 {
                self.bump();
            }
            return Ok(());
        }
        if indent == 0 && self.peek(0) == Some(b'%') {
            self.plain = false;
            self.skip_line();
            return Ok(());
        }
        if self.plain && indent as i64 > self.indent() {
            // A plain scalar's continuation line: its characters are text.
            return Ok(());
        }
        self.plain = false;
        let dash = self.peek(0) == Some(b'-') && self.blank_at(1);
        while self.levels.last().is_some_and(|(c, _)| *c > indent) {
            self.levels.pop();
        }
        if !dash && self.levels.last() == Some(&(indent, Level::IndentlessSeq)) {
            self.levels.pop();
        }
        Ok(())
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == b'\n' {
                break;
            }
            self.bump();
        }
    }

    /// The tokens up to and including the line break (a quoted scalar may
    /// take more lines).
    fn rest_of_line(&mut self) -> Result<(), YamlError> {
        while let Some(c) = self.peek(0) {
            if c == b'\n' {
                self.bump();
                return Ok(());
            }
            if matches!(c, b' ' | b'\t' | b'\r') {
                self.bump();
                continue;
            }
            if self.plain {
                if c == b'#' && self.after_blank {
                    self.plain = false;
                    self.skip_line();
                    continue;
                }
                if c == b':' && self.blank_at(1) {
                    self.plain = false;
                    self.value_indicator()?;
                    self.bump();
                    continue;
                }
                if !(self.flow > 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}')) {
                    self.bump();
                    continue;
                }
                self.plain = false;
            }
            // A block scalar ends where a line starts: the caller reads it.
            let block = matches!(c, b'|' | b'>') && self.flow == 0;
            self.token(c)?;
            if block {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One token that starts at `c` (not inside a scalar).
    fn token(&mut self, c: u8) -> Result<(), YamlError> {
        let flow = self.flow > 0;
        match c {
            b'#' => self.skip_line(),
            b'[' | b'{' => {
                self.node_start()?;
                self.brackets.push((c == b'[', false));
                self.flow += 1;
                self.bump();
                self.too_deep()?;
            }
            b']' | b'}' => {
                if let Some((_, pair)) = self.brackets.pop() {
                    self.flow -= 1 + usize::from(pair);
                }
                self.bump();
            }
            b',' => {
                if let Some(top) = self.brackets.last_mut()
                    && top.1
                {
                    top.1 = false;
                    self.flow -= 1;
                }
                self.bump();
            }
            b'"' => {
                self.node_start()?;
                self.bump();
                while let Some(c) = self.peek(0) {
                    self.bump();
                    match c {
                        b'\\' => self.bump(),
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b'\'' => {
                self.node_start()?;
                self.bump();
                while let Some(c) = self.peek(0) {
                    self.bump();
                    if c == b'\'' {
                        if self.peek(0) == Some(b'\'') {
                            self.bump();
                        } else {
                            break;
                        }
                    }
                }
            }
            b'&' => {
                self.props.get_or_insert((self.line, self.col));
                self.bump();
                let name = self.name();
                self.open.push(Open {
                    name,
                    depth: self.depth(),
                    line: self.line,
                    start: self.nodes,
                    first: None,
                });
            }
            b'*' => {
                self.node_start()?;
                self.bump();
                let name = self.name();
                let size = match self.anchors.get(name) {
                    Some(size) => *size,
                    None => self
                        .open
                        .iter()
                        .rev()
                        .find(|a| a.name == name)
                        .map_or(1, |a| self.nodes - a.start),
                };
                self.nodes = self.nodes.saturating_add(size);
                self.added = self.added.saturating_add(size);
                if self.added > MAX_ALIAS_NODES {
                    return self.refuse(format!(
                        "YAML aliases expand to more than {MAX_ALIAS_NODES} nodes; refused before parsing"
                    ));
                }
            }
            b'!' => {
                self.props.get_or_insert((self.line, self.col));
                while let Some(c) = self.peek(0) {
                    if matches!(c, b' ' | b'\t' | b'\r' | b'\n')
                        || (flow && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                    {
                        break;
                    }
                    self.bump();
                }
            }
            b'|' | b'>' if !flow => {
                self.node_start()?;
                self.block_scalar();
            }
            b'-' if !flow && self.blank_at(1) => {
                self.roll(self.col, Level::Seq)?;
                self.bump();
            }
            b'?' if flow || self.blank_at(1) => {
                if flow {
                    self.flow_pair()?;
                } else {
                    let col = self.key_col();
                    self.roll(col, Level::Map)?;
                }
                self.bump();
            }
            b':' if flow || self.blank_at(1) => {
                self.value_indicator()?;
                self.bump();
            }
            _ => {
                self.node_start()?;
                self.plain = true;
                self.bump();
            }
        }
        Ok(())
    }

    /// An anchor or alias name: up to a blank or a flow indicator.
    fn name(&mut self) -> &'a [u8] {
        let b = self.b;
        let from = self.i;
        while let Some(c) = self.peek(0) {
            if matches!(
                c,
                b' ' | b'\t' | b'\r' | b'\n' | b',' | b'[' | b']' | b'{' | b'}'
            ) {
                break;
            }
            self.bump();
        }
        &b[from..self.i]
    }

    /// A `:` that separates a key from its value. In block context the key
    /// (on this line) opens a mapping at its column.
    fn value_indicator(&mut self) -> Result<(), YamlError> {
        if self.flow > 0 {
            return self.flow_pair();
        }
        // An anchor on the key itself (`&k key: v`) anchors only the key.
        let depth = self.depth();
        while let Some(a) = self.open.last() {
            if a.depth >= depth && a.first == Some(a.line) && a.line == self.line {
                self.close_last();
            } else {
                break;
            }
        }
        let col = self.key_col();
        self.roll(col, Level::Map)
    }

    /// The column of the key a `:` or `?` here belongs to: where its node (or
    /// the anchor or tag before it) started on this line, else here.
    fn key_col(&mut self) -> usize {
        match self.props.take() {
            Some((line, col)) if line == self.line => col,
            _ if self.node.0 == self.line => self.node.1,
            _ => self.col,
        }
    }

    /// A key in a flow sequence opens a single-pair mapping (`[a: b]`), which
    /// the next `,` or `]` closes.
    fn flow_pair(&mut self) -> Result<(), YamlError> {
        if let Some(top) = self.brackets.last_mut()
            && top.0
            && !top.1
        {
            top.1 = true;
            self.flow += 1;
            self.nodes += 1;
            self.too_deep()?;
        }
        Ok(())
    }

    /// A block collection that starts at `col`, if the indentation rises.
    fn roll(&mut self, col: usize, kind: Level) -> Result<(), YamlError> {
        let push = match self.levels.last() {
            None => true,
            Some((c, _)) if *c < col => true,
            Some((c, Level::Map)) => *c == col && kind == Level::Seq,
            Some(_) => false,
        };
        if push {
            let kind = match self.levels.last() {
                Some((c, _)) if *c == col => Level::IndentlessSeq,
                _ => kind,
            };
            self.levels.push((col, kind));
            self.nodes += 1;
            self.too_deep()?;
        }
        Ok(())
    }

    /// A node starts here: it ends the anchored nodes it is not part of, and
    /// begins the one whose anchor was just read.
    fn node_start(&mut self) -> Result<(), YamlError> {
        self.close_anchors(self.depth());
        if let Some(a) = self.open.last_mut()
            && a.first.is_none()
        {
            a.first = Some(self.line);
        }
        self.node = match self.props.take() {
            Some(props) if props.0 == self.line => props,
            _ => (self.line, self.col),
        };
        self.nodes += 1;
        Ok(())
    }

    /// Ends every started anchored node read at `depth` or deeper.
    fn close_anchors(&mut self, depth: usize) {
        while self
            .open
            .last()
            .is_some_and(|a| a.first.is_some() && a.depth >= depth)
        {
            self.close_last();
        }
    }

    fn close_last(&mut self) {
        if let Some(a) = self.open.pop() {
            self.anchors.insert(a.name, self.nodes - a.start);
        }
    }

    /// A `|` or `>` scalar: its header, then every line that libyaml counts
    /// as its content (blank, or indented at least as far as its first line,
    /// and deeper than the enclosing collection).
    fn block_scalar(&mut self) {
        self.bump();
        let mut explicit = None;
        while let Some(c) = self.peek(0) {
            if c == b'\n' {
                break;
            }
            if (b'1'..=b'9').contains(&c) && explicit.is_none() {
                explicit = Some(usize::from(c - b'0'));
            }
            if c == b'#' && self.after_blank {
                self.skip_line();
                break;
            }
            self.bump();
        }
        self.bump();
        let parent = self.indent();
        let floor = (parent + 1).max(1) as usize;
        let mut indent = explicit.map(|inc| {
            if parent >= 0 {
                parent as usize + inc
            } else {
                inc
            }
        });
        let mut widest_blank = 0;
        loop {
            // Look at the next line without consuming a line that ends it.
            let mut k = self.i;
            while self.b.get(k) == Some(&b' ') {
                k += 1;
            }
            let spaces = k - self.i;
            let rest = &self.b[k..];
            let blank = rest.is_empty()
                || rest[0] == b'\n'
                || (rest[0] == b'\r' && rest.get(1) == Some(&b'\n'));
            if rest.is_empty() {
                return;
            }
            if blank {
                widest_blank = widest_blank.max(spaces);
                self.skip_line();
                self.bump();
                continue;
            }
            let need = *indent.get_or_insert_with(|| spaces.max(widest_blank).max(floor));
            if spaces < need {
                return;
            }
            self.skip_line();
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn depth_error(text: &str) -> Option<usize> {
        match check(text) {
            Ok(()) => None,
            Err(e) => {
                assert!(e.message.contains("nests deeper"), "{e}");
                e.line
            }
        }
    }

    fn block(levels: usize, seq: bool) -> String {
        let mut text = String::new();
        for d in 0..levels {
            let pad = " ".repeat(d * 2);
            if seq {
                text.push_str(&format!("{pad}- k{d}:\n"));
            } else {
                text.push_str(&format!("{pad}k{d}:\n"));
            }
        }
        text.push_str(&" ".repeat(levels * 2));
        text.push_str("leaf\n");
        text
    }

    #[test]
    fn flow_nesting_is_bounded_and_named_by_line() {
        let at = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(depth_error(&at), None);
        let over = format!("a: 1\nb: {}", "[".repeat(MAX_DEPTH));
        // One block level (the mapping) plus the brackets.
        assert_eq!(depth_error(&over), Some(2));
        assert_eq!(depth_error(&"{a: ".repeat(MAX_DEPTH + 1)), Some(1));
    }

    #[test]
    fn block_nesting_is_bounded() {
        assert_eq!(depth_error(&block(MAX_DEPTH, false)), None);
        assert_eq!(
            depth_error(&block(MAX_DEPTH + 1, false)),
            Some(MAX_DEPTH + 1)
        );
        // `- k:` opens a sequence and a mapping at each step.
        assert_eq!(depth_error(&block(MAX_DEPTH / 2, true)), None);
        assert!(depth_error(&block(MAX_DEPTH / 2 + 1, true)).is_some());
        // A sequence at its mapping's column is a level too.
        let indentless = format!("k:\n{}", block(MAX_DEPTH / 2, true));
        assert_eq!(depth_error(&indentless), Some(MAX_DEPTH / 2 + 1));
        assert_eq!(depth_error(&"- ".repeat(MAX_DEPTH + 1)), Some(1));
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let deep = "[".repeat(500);
        for text in [
            format!("a: \"{deep}\"\n"),
            format!("a: '{deep}'\n"),
            format!("a: 'it''s {deep}'\n"),
            format!("a: \"\\\" {deep}\"\n"),
            format!("a: b{deep}\n"),
            format!("a: b\n  c{deep}\n"),
            format!("# {deep}\na: 1 # {deep}\n"),
            format!("a: |\n  {deep}\n  more\nb: >-\n    {deep}\n"),
            format!("- |2\n   {deep}\n"),
            format!("a: [x, \"{deep}\", '{deep}', y]\n"),
        ] {
            assert_eq!(check(&text), Ok(()), "{text}");
            // The parser agrees that these nest shallowly.
            serde_yaml::from_str::<serde_json::Value>(&text).unwrap();
        }
    }

    #[test]
    fn what_ends_a_scalar_in_the_parser_ends_it_in_the_scan() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        for text in [
            // A quote inside a plain scalar is text; the brackets are not.
            format!("a: don't\nb: {deep}\n"),
            // A plain scalar's continuation line starting with a quote.
            format!("a: x\n  'y\nb: {deep}\n"),
            // A block scalar ends at a line indented no deeper than its key.
            format!("a: |\n  text\nb: {deep}\n"),
            format!("- a: |\n    t\n  b: {deep}\n"),
            // Leading blank lines wider than the first line end it sooner.
            format!("a: |\n      \n  x: {deep}\n"),
            // A comment needs a blank before it.
            format!("[a#b, {deep}\n"),
            // In flow, `:` glued to a plain scalar is text.
            format!("[a:'b, {deep}\n"),
        ] {
            assert!(depth_error(&text).is_some(), "{text}");
        }
    }

    #[test]
    fn aliases_are_bounded_by_what_they_expand_to() {
        // The classic: each level repeats the one before ten times.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            laughs.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let e = check(&laughs).unwrap_err();
        assert!(e.message.contains("aliases"), "{e}");
        assert_eq!(e.line, Some(5));
        // Ordinary reuse passes.
        let mut reuse = String::from("defaults: &d\n  method: GET\n  tags: [a, b]\nrules:\n");
        for i in 0..1000 {
            reuse.push_str(&format!("  - {{ id: r{i}, <<: *d }}\n"));
        }
        assert_eq!(check(&reuse), Ok(()));
        // An anchor on a key anchors the key alone.
        let mut keys = String::from("&k key: [1, 2, 3]\n");
        for i in 0..MAX_ALIAS_NODES {
            keys.push_str(&format!("n{i}: *k\n"));
        }
        assert_eq!(check(&keys), Ok(()));
    }

    #[test]
    fn hostile_files_are_refused_fast() {
        let size = 200 * 1024;
        let started = Instant::now();
        for text in [
            "[".repeat(size),
            "{a: ".repeat(size / 4),
            "- ".repeat(size / 2),
            block(450, false),
        ] {
            assert!(depth_error(&text).is_some());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn from_str_reports_the_parser_line() {
        let e = from_str::<serde_json::Value>("a: 1\nb: [\n").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
        let v: serde_json::Value = from_str("a: [1, {b: c}]\n").unwrap();
        assert_eq!(v["a"][1]["b"], "c");
    }

    /// Every YAML file the repository ships (examples, chart, fixtures)
    /// passes the scan: the bound refuses only what no real file needs.
    #[test]
    fn every_bundled_yaml_file_passes() {
        fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name == "target" {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, found);
                } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                    found.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["examples", "tests", "charts", "docs", "fuzz"] {
            walk(&root.join(dir), &mut files);
        }
        assert!(files.len() > 20, "{files:?}");
        let mut deepest = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut scan = Scan::new(text.as_bytes());
            assert_eq!(scan.run(), Ok(()), "{}", file.display());
            deepest = deepest.max(scan.deepest);
        }
        // Far from the bound: the deepest (an Envoy configuration) nests 18.
        assert!(deepest <= MAX_DEPTH / 2, "{deepest}");
    }
}

/// The scan against the parser itself: over many small texts built from YAML's
/// indicators, it never counts fewer levels than the value the parser builds.
#[cfg(test)]
mod differential {
    use super::*;

    fn value_depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether the scan counted at least the parser's depth (texts the parser
    /// refuses say nothing).
    fn agrees(text: &str) -> bool {
        let Ok(v) = serde_yaml::from_str::<serde_json::Value>(text) else {
            return true;
        };
        let mut scan = Scan::new(text.as_bytes());
        let _ = scan.run();
        scan.deepest >= value_depth(&v)
    }

    #[test]
    fn cases_the_random_search_found() {
        for text in [
            // A key's column is its anchor's.
            "&x \\, \"q\"b: \n- >",
            "&x : # #\n  - #'",
            // ... but not an anchor's on an earlier line.
            "&x  #---\n\\  }b: \n- c]b: -}-|-",
            // A key in a flow sequence is a mapping of its own.
            "[b: 'b'  ]",
        ] {
            assert!(agrees(text), "{text:?}");
        }
    }

    #[test]
    fn the_scan_never_counts_less_than_the_parser_nests() {
        // Aliases are left out: the parser's value repeats the anchored node,
        // deeper than the text nests.
        let pieces = [
            "[", "]", "{", "}", ", ", ": ", "- ", "\n", " ", "  ", "'", "\"", " #", "|", ">", "a",
            "b: ", "&x ", "? ", "\\", "---\n", "\n  ", "\n    ", "c", ":", "-", "'b'", "\"q\"",
        ];
        let mut seed: u64 = 0x9876_5432;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        for _ in 0..100_000 {
            let len = 1 + next() % 40;
            let text: String = (0..len).map(|_| pieces[next() % pieces.len()]).collect();
            assert!(agrees(&text), "{text:?}");
        }
    }
}
