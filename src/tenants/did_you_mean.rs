//! "Did you mean `hosts`?": the hint added to serde's "unknown field" message
//! when a known field is one or two edits away.
//!
//! Never imports: the pipeline, observability, transport or the app.

use crate::policy::cel::suggest;

/// `message` with a hint after its first "unknown field `x`" when one of the
/// fields serde lists as expected is close to `x`; otherwise `message` as is.
pub fn hint(message: &str) -> String {
    const UNKNOWN: &str = "unknown field `";
    let Some(start) = message.find(UNKNOWN).map(|i| i + UNKNOWN.len()) else {
        return message.to_string();
    };
    let Some(len) = message[start..].find('`') else {
        return message.to_string();
    };
    let name = &message[start..start + len];
    let after = start + len + 1;
    let rest = &message[after..];
    // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`".
    let expected = rest
        .strip_prefix(", expected ")
        .map(|list| list.split(" at line ").next().unwrap_or(list))
        .unwrap_or("");
    let known = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty());
    match suggest(name, known) {
        Some(k) => format!("{} (did you mean `{k}`?){rest}", &message[..after]),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_names_the_close_one() {
        let m = "unknown field `host`, expected one of `apiVersion`, `tenant`, `hosts`, `rules` at line 3 column 1";
        assert_eq!(
            hint(m),
            "unknown field `host` (did you mean `hosts`?), expected one of `apiVersion`, `tenant`, `hosts`, `rules` at line 3 column 1"
        );
        assert_eq!(
            hint("rules[0]: unknown field `pth`, expected `id` or `path`"),
            "rules[0]: unknown field `pth` (did you mean `path`?), expected `id` or `path`"
        );
    }

    #[test]
    fn a_field_close_to_none_gets_no_hint() {
        let m = "unknown field `zzzzzz`, expected one of `hosts`, `rules`";
        assert_eq!(hint(m), m);
        assert_eq!(hint("invalid type: string"), "invalid type: string");
    }
}
