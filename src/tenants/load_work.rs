//! Tests that count the work of loading a many-rule file (lines walked over
//! to find the lines diagnostics name, routes compared to find rules that can
//! never match), so a step that grows with the square of the rules fails here
//! without timing anything on a noisy machine; and one that bounds, with a
//! wide margin, the reload of two files whose many hosts conflict. Test-only.
//!
//! Never imports: the pipeline or anything above it.

use std::path::Path;

use super::compile::compile;
use super::lines::LINES_READ;
use crate::request::path::COVERS_CALLS;

/// Rules in each file: enough that a scan per rule (or a comparison per pair
/// of rules) costs a hundred times the file.
const RULES: usize = 2_000;

/// Writes the `i`th rule of a file.
type Rule = fn(usize) -> String;

/// A policy file of `RULES` rules, the `i`th written by `rule(i)`, and its
/// line count.
fn file(rule: Rule) -> (String, usize) {
    let mut text = String::from(
        "apiVersion: portcullis/v1\ntenant: big\nhosts: [big.example.com]\nidentity:\n  envoy_jwt_authn:\n    issuers: [https://idp.big.example]\nrules:\n",
    );
    for i in 0..RULES {
        text.push_str(&rule(i));
    }
    let lines = text.lines().count();
    (text, lines)
}

/// Compiles `text` and returns the diagnostics as `line: message` (warnings
/// of a file that loads, else its errors) and the work counted.
fn load(text: &str) -> (Vec<String>, usize, usize) {
    LINES_READ.with(|n| n.set(0));
    COVERS_CALLS.with(|n| n.set(0));
    let found = match compile(Path::new("big.yaml"), text) {
        Ok(tenant) => tenant.warnings,
        Err(errors) => errors,
    };
    let lines = LINES_READ.with(std::cell::Cell::get);
    let covers = COVERS_CALLS.with(std::cell::Cell::get);
    let found = found
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.line.map_or("-".into(), |l| l.to_string()),
                e.message
            )
        })
        .collect();
    (found, lines, covers)
}

/// Each rule's lines are found in work linear in the file, whether the rule
/// loads, is refused on several keys, or is written so that no line has its
/// id (a flow mapping): a lookup that scans the file per rule walks over
/// about `RULES` times more lines. The lines named stay the same.
#[test]
fn finding_every_rules_line_walks_the_file_a_bounded_number_of_times() {
    let shapes: [(&str, Rule); 3] = [
        ("block", |i| {
            format!(
                "  - id: r{i}\n    path: /p{i}\n    methods: [GET]\n    effect: allow\n    when: \"claims.sub == 'x'\"\n"
            )
        }),
        ("flow", |i| {
            format!(
                "  - {{id: r{i}, path: /p{i}, methods: [GET], effect: allow, when: \"claims.zzz == 'x'\"}}\n"
            )
        }),
        ("refused", |i| {
            format!(
                "  - id: r{i}\n    path: p{i}\n    methods: [get]\n    effect: deny\n    public: true\n"
            )
        }),
    ];
    for (shape, rule) in shapes {
        let (text, lines) = file(rule);
        let (found, walked, _) = load(&text);
        assert!(
            walked <= 4 * lines,
            "{shape}: {walked} lines walked over for a file of {lines}"
        );
        let last = RULES - 1;
        match shape {
            "block" => assert!(found.is_empty(), "{found:?}"),
            "flow" => assert_eq!(
                found.last().map(String::as_str),
                Some(format!("-: rule \"r{last}\": condition reads claims.zzz, which is neither a registered claim nor declared under claims:").as_str())
            ),
            _ => {
                // Rule r{last} starts on the file's fifth line from the end.
                let at = lines - 4;
                for want in [
                    format!("{}: rule \"r{last}\": path template must start with '/'", at + 1),
                    format!("{}: rule \"r{last}\": method \"get\" must be an upper-case HTTP method", at + 2),
                    format!("{}: rule \"r{last}\": public applies to allow rules only; deny rules apply to everyone", at + 4),
                ] {
                    assert!(found.contains(&want), "{want} not in {:?}", &found[found.len() - 3..]);
                }
            }
        }
    }
}

/// Rules that can never match are found by looking up the deny rules that
/// cover each rule's route, not by comparing every pair of rules: a file of
/// deny rules without conditions used to compare about `RULES²/2` pairs.
#[test]
fn finding_rules_that_never_match_does_not_compare_every_pair() {
    let (mut text, lines) = file(|i| {
        format!("  - id: r{i}\n    path: /p{i}/{{id}}\n    methods: [GET]\n    effect: deny\n")
    });
    // Shadowed by r7 (which starts on line 8 + 4 × 7), and by nothing else.
    text.push_str("  - id: late\n    path: /p7/x\n    methods: [GET]\n    effect: allow\n");
    let (found, _, covers) = load(&text);
    assert!(
        covers <= RULES,
        "{covers} route comparisons for {RULES} rules"
    );
    assert_eq!(
        found,
        [format!(
            "{}: rule \"late\" can never match: deny rule \"r7\" (line {}) has no condition and denies every request on its route first",
            lines + 1,
            8 + 4 * 7
        )]
    );
}

/// A long list far down the file whose every entry is refused (hosts,
/// audit.log_headers, shared_issuers) has its line found once, not once per
/// entry: a scan per entry walked over the whole file `RULES` times.
#[test]
fn refused_entries_of_a_long_list_find_its_line_once() {
    let (text, _) =
        file(|i| format!("  - id: r{i}\n    path: /p{i}\n    methods: [GET]\n    effect: allow\n"));
    // The lists go last, so the line of each is far from the file's start.
    let mut text = text.replace("hosts: [big.example.com]\n", "");
    let list = |f: fn(usize) -> String| (0..RULES).map(f).collect::<Vec<_>>().join(", ");
    text.push_str(&format!(
        "hosts: [{}]\n",
        list(|i| format!("'bad host {i}'"))
    ));
    text.push_str(&format!(
        "audit:\n  log_headers: [{}]\n",
        list(|i| format!("'bad header {i}'"))
    ));
    text.push_str(&format!(
        "shared_issuers: [{}]\n",
        list(|i| format!("https://other{i}.example"))
    ));
    let lines = text.lines().count();
    let (found, walked, _) = load(&text);
    assert!(
        walked <= 4 * lines,
        "{walked} lines walked over for a file of {lines}"
    );
    let last = RULES - 1;
    for want in [
        format!(
            "{}: host \"bad host {last}\" must be a DNS name or a '*.' wildcard, without port",
            lines - 3
        ),
        format!(
            "{}: audit.log_headers: header name \"bad header {last}\" must be lower-case letters, digits or '-'",
            lines - 1
        ),
        format!(
            "{lines}: shared_issuers: \"https://other{last}.example\" is not an issuer this tenant trusts"
        ),
    ] {
        assert!(found.contains(&want), "{want} not in {:?}", found.last());
    }
}

/// Two files that each name 30,000 hosts and share only the last are told
/// apart by sets, not by searching one file's list for each of the other's
/// hosts (900 million comparisons, 14.5 s in a debug build). The bound is
/// generous for a noisy machine: with sets the reload took 0.34 s.
#[test]
fn a_host_conflict_between_files_of_many_hosts_is_found_without_comparing_every_pair() {
    let dir = tempfile::tempdir().unwrap();
    for t in ["a", "b"] {
        let mut hosts: Vec<String> = (0..30_000).map(|i| format!("{t}{i}.example")).collect();
        hosts.push("shared.example".into());
        let policy = format!(
            "apiVersion: portcullis/v1\ntenant: {t}\nhosts: [{}]\nrules:\n  - id: r\n    path: /x\n    effect: allow\n    public: true\n",
            hosts.join(", ")
        );
        std::fs::write(dir.path().join(format!("{t}.yaml")), policy).unwrap();
    }
    let store = super::store::PolicyStore::new(dir.path());
    let started = std::time::Instant::now();
    let s = store.reload();
    let took = started.elapsed();
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(
        s.errors[0]
            .message
            .contains("host \"shared.example\" is already claimed by tenant \"a\""),
        "{:?}",
        s.errors
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}
