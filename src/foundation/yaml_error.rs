//! The line a YAML error names: where the broken construct starts when the
//! parser says so, else where the parser stopped.
//!
//! libyaml stops at the first token it cannot use, which for an unclosed `[`
//! or `{` is on the line after the mistake; its message then adds "while
//! parsing a flow sequence at line L column C", the construct's start mark.
//! The error type exposes only the stop position, so the start is read back
//! from the message.
//!
//! Never imports: any other module of the crate.

/// The 1-based line to report for `e`: the start of the construct being
/// parsed when the message names one, else the parser's position.
pub fn line(e: &serde_yaml::Error) -> Option<usize> {
    context_line(&e.to_string()).or_else(|| e.location().map(|l| l.line()))
}

/// The line of "while parsing … at line L column C" (or "while scanning …")
/// in a libyaml message. Not a block mapping's or sequence's: that starts
/// wherever the indentation level began, often the top of the file, while
/// the parser's own position is next to the mistake.
fn context_line(message: &str) -> Option<usize> {
    let (_, context) = message
        .rsplit_once(", while parsing ")
        .or_else(|| message.rsplit_once(", while scanning "))?;
    if context.starts_with("a block ") {
        return None;
    }
    let (_, at) = context.rsplit_once(" at line ")?;
    let (line, _) = at.split_once(" column ")?;
    line.parse().ok().filter(|l| *l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> serde_yaml::Error {
        serde_yaml::from_str::<serde_json::Value>(text).unwrap_err()
    }

    #[test]
    fn an_unclosed_flow_sequence_is_reported_where_it_opens() {
        let e = error_of("a: 1\nhosts: [a.example\nrules: []\n");
        assert_eq!(e.location().map(|l| l.line()), Some(3), "{e}");
        assert_eq!(line(&e), Some(2), "{e}");
    }

    #[test]
    fn an_unclosed_quote_is_reported_where_it_opens() {
        let e = error_of("a: 1\nb: \"open\nc: 2\n");
        assert_eq!(line(&e), Some(2), "{e}");
    }

    #[test]
    fn a_broken_block_mapping_keeps_the_parser_position() {
        // The block mapping starts on line 1; the mistake is on line 4.
        let e = error_of("a:\n  b: 1\n  c: 2\n d: 3\n");
        assert!(e.to_string().contains("block mapping"), "{e}");
        assert_eq!(line(&e), e.location().map(|l| l.line()), "{e}");
        assert_ne!(line(&e), Some(1), "{e}");
    }

    #[test]
    fn an_error_without_a_construct_keeps_the_parser_position() {
        let e = error_of("a: 1\nb: [1]\n@c: 2\n");
        assert_eq!(line(&e), e.location().map(|l| l.line()), "{e}");
        assert_eq!(context_line("no context here"), None);
    }
}
