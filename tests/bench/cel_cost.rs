//! The CEL cost bound, measured: `cargo bench --bench cel_cost`.
//!
//! Each case is one rule whose condition walks the largest input portcullis
//! parses (a 64 KiB JSON body of two 256-element lists, the most a body may
//! hold) the slowest way we found that still passes the static bound of
//! `portcullis::policy::cost`. Every case runs through `Pipeline::check`; the
//! figure to read is each case's time next to `baseline` (the same request
//! and body, condition `true`), measured in the same run. Conditions the
//! bound refuses are listed as refused, with their estimate.
//!
//! A plain timing loop rather than criterion: the point is the worst case, so
//! the table reports the median and the slowest of the runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

/// The condition of `matches_heaviest_pattern` with `[0-9a-z]{k}`.
fn heavy(k: usize) -> String {
    format!(r#"resource.body.a.exists(x, x.matches("^[0-9a-z]{{{k}}}$"))"#)
}

/// The largest `k` for which [`heavy`] passes the bound: the literal pattern
/// that costs `matches` most per call, inside the longest loop.
fn heaviest_pattern() -> String {
    let fits = |k: usize| {
        let program = cel::Program::compile(&heavy(k)).unwrap();
        portcullis::policy::cost::check(program.expression()).is_ok()
    };
    let (mut lo, mut hi) = (1, 100_000);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    heavy(lo)
}

const CASES: [(&str, &str); 10] = [
    ("baseline", "true"),
    (
        "in_quadratic",
        "resource.body.a.exists(x, x in resource.body.b)",
    ),
    (
        "filter_in",
        "resource.body.a.filter(x, x in resource.body.b).size() > 0",
    ),
    (
        "matches_literal",
        r#"resource.body.a.all(x, x.matches("^a+[0-9]*$")) && false"#,
    ),
    ("matches_heaviest_pattern", "HEAVIEST"),
    ("map_concat", "resource.body.a.map(x, x + x).size() == 0"),
    (
        "contains",
        "resource.body.b.exists(x, resource.body.s.contains(x))",
    ),
    (
        "equality_of_lists",
        "resource.body.a.all(x, resource.body.a == resource.body.b) && false",
    ),
    (
        "refused_data_quadratic",
        "data.users.exists(u, u in data.admins)",
    ),
    (
        "refused_regex_from_input",
        "resource.body.a.exists(x, x.matches(resource.body.s))",
    ),
];

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::new();
    let heaviest = heaviest_pattern();
    println!("heaviest accepted pattern in a loop: {heaviest}");
    for (i, (name, condition)) in CASES.iter().enumerate() {
        let condition = &condition.replace("HEAVIEST", &heaviest);
        let program = cel::Program::compile(condition).unwrap();
        match portcullis::policy::cost::check(program.expression()) {
            Ok(cost) => {
                println!("{name:<26} estimate {cost:>10} steps");
                rules.push_str(&format!(
                    "  - {{ id: {name}, methods: [POST], path: /c/{i}, public: true, when: '{condition}', effect: allow }}\n"
                ));
            }
            Err(e) => println!("{name:<26} refused: {e}"),
        }
    }
    std::fs::write(
        dir.path().join("acme.yaml"),
        format!("apiVersion: portcullis/v1\ntenant: acme\nrules:\n{rules}"),
    )
    .unwrap();
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    let p = Pipeline::new(Arc::new(store), TenantResolver::default());

    // The largest body: two lists of 256 strings of 100 bytes that never
    // match each other, and a string of 8 KiB.
    let item = |tag: char, i: usize| format!("{}{tag}{i:03}", "a".repeat(96));
    let body = json!({
        "a": (0..256).map(|i| item('0', i)).collect::<Vec<_>>(),
        "b": (0..256).map(|i| item('x', i)).collect::<Vec<_>>(),
        "s": "a".repeat(8 * 1024),
    })
    .to_string();
    assert!(
        body.len() <= portcullis::request::input::MAX_BODY_BYTES,
        "{}",
        body.len()
    );

    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>8}",
        "case", "median", "slowest", "ratio"
    );
    let mut base = Duration::ZERO;
    for (i, (name, _)) in CASES.iter().enumerate() {
        if name.starts_with("refused") {
            continue;
        }
        let request = portcullis::app::cli::check_request_from_json(&json!({
            "attributes": { "contextExtensions": { "tenant": "acme" }, "request": { "http": {
                "method": "POST", "host": "acme.example", "path": format!("/c/{i}"),
                "headers": { "content-type": "application/json" }, "body": body } } }
        }))
        .unwrap();
        let first = p.check(&request);
        assert!(
            first.reason.code() != "policy_error" && first.reason.code() != "body_unavailable",
            "{name}: {:?} {:?}",
            first.reason,
            first.detail
        );
        let mut times: Vec<Duration> = (0..30)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(p.check(&request));
                t.elapsed()
            })
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        if *name == "baseline" {
            base = median;
        }
        println!(
            "{name:<26} {:>12?} {:>12?} {:>7.1}x",
            median,
            times[times.len() - 1],
            median.as_secs_f64() / base.as_secs_f64()
        );
    }
}
