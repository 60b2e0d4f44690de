//! Names compared the way case-insensitive binders compare them: Unicode
//! *simple* case folding (CaseFolding.txt statuses C and S), the relation Go's
//! `unicode.SimpleFold` walks and `encoding/json` uses to bind a JSON key to a
//! struct field. Two names with the same [`fold_key`] are one name to such a
//! binder, so the body and query guards treat them as a repeat.
//!
//! The canonical form of a char is `lower(upper(c))`, each step taken only
//! when it gives a single char. That joins every orbit Go joins (proved
//! against Go's own tables by `tests/body_and_query.rs`), and a few more
//! pairs besides (`ı` and `İ` with `i`, as Java's `equalsIgnoreCase` has
//! them): joining more than a binder does only refuses more.
//!
//! Never imports anything from the crate.

/// The canonical member of `c`'s simple case folding orbit.
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    if c == '\u{130}' {
        // `İ` lower-cases to two chars in full, to `i` in the simple mapping
        // Java's `equalsIgnoreCase` uses: joined with `i` as Java joins them.
        return 'i';
    }
    let upper = single(c.to_uppercase()).unwrap_or(c);
    match single(upper.to_lowercase()).unwrap_or(upper) {
        // Unicode 15 put these pairs in one orbit (CaseFolding.txt status S);
        // both chars of each pair upper-case to several chars, so the
        // round trip above leaves them apart.
        '\u{1FD3}' => '\u{0390}',
        '\u{1FE3}' => '\u{03B0}',
        '\u{FB05}' => '\u{FB06}',
        folded => folded,
    }
}

/// `name` with every char folded: equal keys mean one name to a binder that
/// compares names under simple case folding. An ASCII name costs one
/// allocation, as lower-casing it would.
pub fn fold_key(name: &str) -> String {
    if name.is_ascii() {
        return name.to_ascii_lowercase();
    }
    name.chars().map(fold_char).collect()
}

fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_lower_casing_misses_join_their_letters() {
        for (a, b) in [
            ('ſ', 's'),
            ('ς', 'σ'),
            ('ϐ', 'β'),
            ('ϑ', 'θ'),
            ('ϕ', 'φ'),
            ('ϖ', 'π'),
            ('ϰ', 'κ'),
            ('ϱ', 'ρ'),
            ('ϵ', 'ε'),
            ('ẛ', 'ṡ'),
            ('\u{0345}', 'ι'),
            ('\u{1C80}', 'в'),
            ('\u{1C81}', 'д'),
            ('\u{1C82}', 'о'),
            ('\u{1C83}', 'с'),
            ('\u{1C84}', 'т'),
            ('\u{1C85}', 'т'),
            ('\u{1C86}', 'ъ'),
            ('\u{1C87}', 'ѣ'),
            ('\u{1C88}', '\u{A64B}'),
            // Cherokee small letters fold to the capitals.
            ('\u{AB70}', '\u{13A0}'),
            ('\u{13F8}', '\u{13F0}'),
            ('\u{212A}', 'k'),
            ('\u{1E9E}', 'ß'),
            // Beyond Go: Java's equalsIgnoreCase joins these with `i`.
            ('ı', 'i'),
            ('İ', 'I'),
        ] {
            assert_eq!(fold_char(a), fold_char(b), "{a} {b}");
        }
    }

    #[test]
    fn letters_of_different_orbits_stay_apart() {
        for (a, b) in [('s', 't'), ('σ', 'τ'), ('ß', 's'), ('i', 'j')] {
            assert_ne!(fold_char(a), fold_char(b), "{a} {b}");
        }
        assert_eq!(fold_key("Status"), "status");
        assert_eq!(fold_key("ſtatus"), fold_key("STATUS"));
        assert_ne!(fold_key("status"), fold_key("statu"));
    }
}
