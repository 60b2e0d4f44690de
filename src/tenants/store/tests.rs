//! The store's unit tests: reloads over real directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, SystemTime};

use super::reader::Stamp;
use super::*;

fn write(dir: &Path, name: &str, body: &str) {
    // Atomic replace, as operators are told to do.
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, body).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn policy(tenant: &str, host: &str, rule: &str) -> String {
    format!(
        "apiVersion: portcullis/v1\ntenant: {tenant}\nhosts: [{host}]\nrules:\n  - id: {rule}\n    path: /x\n    effect: allow\n    public: true\n"
    )
}

#[test]
fn broken_file_keeps_old_rules_and_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "acme.yaml",
        &policy("acme", "acme.example", "r1"),
    );
    let store = PolicyStore::new(dir.path());
    let s = store.reload();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(store.is_ready());
    let first = store.tenant("acme").unwrap();

    write(
        dir.path(),
        "acme.yaml",
        "apiVersion: portcullis/v1\ntenant: acme\nrules:\n  - id: r2\n    path: /x\n    effect: allow\n    when: 'claims.a =='\n",
    );
    let s = store.reload();
    assert_eq!(s.errors.len(), 1);
    let e = &s.errors[0];
    assert!(e.file.ends_with("acme.yaml"));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(
        e.message.contains("r2") && e.message.contains("parse"),
        "{e}"
    );
    let still = store.tenant("acme").unwrap();
    assert!(Arc::ptr_eq(&first, &still));
    assert_eq!(s.generation, 1);

    write(
        dir.path(),
        "acme.yaml",
        &policy("acme", "acme.example", "r3"),
    );
    let s = store.reload();
    assert!(s.errors.is_empty());
    assert_eq!(s.generation, 2);
    assert_ne!(store.tenant("acme").unwrap().digest, first.digest);
}

#[test]
fn deleted_file_removes_tenant_but_empty_or_missing_dir_keeps_all() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    let store = PolicyStore::new(dir.path());
    store.reload();
    fs::remove_file(dir.path().join("b.yaml")).unwrap();
    store.reload();
    assert!(store.tenant("b").is_none());
    assert!(store.tenant_for_host("b.example").is_none());

    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let s = store.reload();
    assert!(store.tenant("a").is_some());
    assert!(s.notes[0].contains("no policy files"));

    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
    let s = store.reload();
    assert!(store.tenant("a").is_some());
    assert!(s.notes[0].contains("cannot be read"));
}

#[test]
fn conflicts_go_to_the_smallest_path_whoever_came_first() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.yaml", &policy("b", "shared.example", "r"));
    let store = PolicyStore::new(dir.path());
    store.reload();
    assert_eq!(&*store.tenant_for_host("shared.example").unwrap().id, "b");
    // a.yaml comes later, but its path is smaller: it wins, b is refused.
    write(dir.path(), "a.yaml", &policy("a", "shared.example", "r"));
    let s = store.reload();
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].file.ends_with("b.yaml"));
    assert!(s.errors[0].message.contains("a.yaml"));
    assert_eq!(&*store.tenant_for_host("shared.example").unwrap().id, "a");
    assert!(store.tenant("b").is_none());

    // A larger path claiming a served id is refused.
    write(dir.path(), "c.yaml", &policy("a", "c.example", "r"));
    let s = store.reload();
    assert!(
        s.errors
            .iter()
            .any(|e| e.file.ends_with("c.yaml") && e.message.contains("already defined"))
    );

    // Once a releases the host, b is admitted (its file is retried).
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    fs::remove_file(dir.path().join("c.yaml")).unwrap();
    let s = store.reload();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(&*store.tenant_for_host("shared.example").unwrap().id, "b");
}

/// What a store serves and reports, to compare two replicas.
fn served(
    dir: &Path,
    store: &PolicyStore,
    status: &StoreStatus,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut tenants: Vec<(String, String)> = status
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.digest.clone()))
        .collect();
    tenants.sort();
    for host in ["shared.example", "x.example", "y.example"] {
        tenants.push((
            host.into(),
            store
                .tenant_for_host(host)
                .map_or("-".into(), |t| t.id.to_string()),
        ));
    }
    // Each replica has its own directory; the names in it are what count.
    let at = format!("{}/", dir.display());
    let mut errors: Vec<String> = status
        .error_lines()
        .iter()
        .map(|e| e.replace(&at, ""))
        .collect();
    errors.sort();
    (tenants, errors)
}

#[test]
fn replicas_fed_the_same_files_in_any_order_serve_and_report_alike() {
    // Four files in conflict by id and by host, in a chain: 1 and 2 share
    // a host, 2 and 3 a tenant id, 3 and 4 a host.
    let files = [
        ("t1.yaml", policy("one", "shared.example", "r")),
        ("t2.yaml", policy("two", "shared.example", "r")),
        ("t3.yaml", policy("two", "x.example", "r")),
        ("t4.yaml", policy("four", "x.example", "r")),
        ("t5.yaml", policy("five", "y.example", "r")),
    ];
    // Every store sees all files in the end; what differs is the order they
    // arrived in and when the store (re)started.
    let orders: [&[usize]; 4] = [
        &[0, 1, 2, 3, 4],
        &[4, 3, 2, 1, 0],
        &[1, 3, 0, 4, 2],
        &[2, 1, 4, 0, 3],
    ];
    let mut seen = Vec::new();
    for order in orders {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PolicyStore::new(dir.path());
        for (step, &i) in order.iter().enumerate() {
            write(dir.path(), files[i].0, &files[i].1);
            store.reload();
            if step == 2 {
                // A restart midway: a new store on the same directory.
                store = PolicyStore::new(dir.path());
                store.reload();
            }
        }
        let status = store.reload();
        seen.push(served(dir.path(), &store, &status));
    }
    // And one that started with every file already there.
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in &files {
        write(dir.path(), name, body);
    }
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    seen.push(served(dir.path(), &store, &status));
    for other in &seen[1..] {
        assert_eq!(&seen[0], other);
    }
    // The smallest path of each conflict wins: t1 over t2 (host), so t3
    // holds tenant two, and t3 over t4 (host).
    let ids: Vec<&str> = seen[0].0.iter().take(3).map(|(t, _)| t.as_str()).collect();
    assert_eq!(ids, ["five", "one", "two"]);
    assert_eq!(seen[0].1.len(), 2, "{:?}", seen[0].1);
}

#[test]
fn an_unshared_issuer_conflicts_with_the_first_file_that_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = |t: &str, shared: bool| {
        let shared = if shared {
            "shared_issuers: [https://idp.example]\n"
        } else {
            ""
        };
        format!(
            "apiVersion: portcullis/v1\ntenant: {t}\n{shared}identity:\n  envoy_jwt_authn: {{ issuers: [https://idp.example] }}\nrules: []\n"
        )
    };
    for t in ["b", "c", "e"] {
        write(dir.path(), &format!("{t}.yaml"), &file(t, true));
    }
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    // Not shared in d: it conflicts with every sharer, and the first in
    // path order is named.
    write(dir.path(), "d.yaml", &file("d", false));
    let s = store.reload();
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].file.ends_with("d.yaml"));
    assert!(
        s.errors[0].message.contains("tenant \"b\" in") && s.errors[0].message.contains("b.yaml"),
        "{}",
        s.errors[0]
    );
    // Shared in a: admitted beside the others.
    fs::remove_file(dir.path().join("d.yaml")).unwrap();
    write(dir.path(), "a.yaml", &file("a", true));
    let s = store.reload();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(store.tenant("a").is_some());
    // A changed file does not conflict with its own previous version.
    write(
        dir.path(),
        "a.yaml",
        &format!("{}# changed\n", file("a", true)),
    );
    assert!(store.reload().errors.is_empty());
}

#[test]
fn hidden_and_configmap_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_01_01");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("a.yaml"), policy("a", "a.example", "r")).unwrap();
    std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/a.yaml", dir.path().join("a.yaml")).unwrap();
    fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
    fs::write(dir.path().join("README.md"), "not policy").unwrap();
    let files = list_policy_files(dir.path()).unwrap();
    assert_eq!(files, vec![dir.path().join("a.yaml")]);
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    assert!(store.tenant_for_host("a.example").is_some());
}

fn digests(store: &PolicyStore) -> BTreeMap<String, String> {
    store
        .status()
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.digest.clone()))
        .collect()
}

#[test]
fn a_reload_of_one_path_reads_and_swaps_that_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let t = format!("t{i}");
        write(
            dir.path(),
            &format!("{t}.yaml"),
            &policy(&t, &format!("{t}.example"), "r"),
        );
    }
    let store = PolicyStore::new(dir.path());
    let first = store.reload();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.files_read, 40);
    let before = digests(&store);
    let t1 = store.tenant("t1").unwrap();

    // t7 changes and is named; t3 changes too but is not named.
    write(dir.path(), "t7.yaml", &policy("t7", "t7.example", "new"));
    write(dir.path(), "t3.yaml", &policy("t3", "t3.example", "new"));
    let s = store.reload_paths(&[dir.path().join("t7.yaml")]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.files_read, 1, "only the named file is read");
    assert_eq!(s.generation, first.generation + 1);
    let after = digests(&store);
    let moved: Vec<&String> = after.keys().filter(|t| before[*t] != after[*t]).collect();
    assert_eq!(moved, ["t7"]);
    assert_eq!(&*store.tenant("t7").unwrap().digest, after["t7"].as_str());
    assert!(Arc::ptr_eq(&t1, &store.tenant("t1").unwrap()));
    assert!(store.tenant_for_host("t7.example").is_some());

    // The same bytes again: read, not compiled, no new generation.
    let s = store.reload_paths(&[dir.path().join("t7.yaml")]);
    assert_eq!((s.files_read, s.generation), (1, first.generation + 1));

    // A rescan finds t3 by its metadata, and reads nothing else that
    // settled (the others were written just now, so they are read too,
    // but not compiled: their bytes are the same).
    let s = store.reload();
    assert_eq!(s.generation, first.generation + 2);
    let last = digests(&store);
    let moved: Vec<&String> = last.keys().filter(|t| after[*t] != last[*t]).collect();
    assert_eq!(moved, ["t3"]);
}

#[test]
fn a_rescan_reads_only_files_whose_metadata_changed_or_is_too_recent() {
    let dir = tempfile::tempdir().unwrap();
    let set_old = |name: &str, secs: u64| {
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join(name))
            .unwrap();
        let t = SystemTime::now() - Duration::from_secs(secs);
        f.set_modified(t).unwrap();
    };
    for t in ["a", "b", "c"] {
        write(
            dir.path(),
            &format!("{t}.yaml"),
            &policy(t, &format!("{t}.example"), "r"),
        );
        set_old(&format!("{t}.yaml"), 3600);
    }
    let store = PolicyStore::new(dir.path());
    assert_eq!(store.reload().files_read, 3);
    // Nothing changed and every mtime is settled: nothing is read.
    let s = store.reload();
    assert_eq!((s.files_read, s.generation), (0, 1));
    // b's metadata changes (its mtime): b alone is read; same bytes, so
    // nothing is compiled and the generation stays.
    set_old("b.yaml", 1800);
    let s = store.reload();
    assert_eq!((s.files_read, s.generation), (1, 1));
    assert_eq!(store.reload().files_read, 0);
}

#[test]
fn a_rewrite_in_the_same_timestamp_tick_and_size_is_still_seen_by_a_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.yaml");
    fs::write(&path, policy("a", "a.example", "r1")).unwrap();
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    // Rewritten in place with the same size; as if within the same tick,
    // the metadata the scan recorded is exactly what is there now.
    fs::write(&path, policy("a", "a.example", "r2")).unwrap();
    {
        let mut state = store.state.lock().unwrap();
        let seen = state.seen.get_mut(&path).unwrap();
        seen.stamp = Stamp::of(&fs::metadata(&path).unwrap());
    }
    let s = store.reload();
    assert_eq!(s.files_read, 1);
    assert!(store.tenant("a").unwrap().rule_ids().any(|r| r == "r2"));
    assert_eq!(s.generation, 2);
}

#[test]
fn a_changed_file_that_now_conflicts_with_an_unchanged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    let b = store.tenant("b").unwrap();

    write(dir.path(), "b.yaml", &policy("b", "a.example", "r"));
    let s = store.reload_paths(&[dir.path().join("b.yaml")]);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].file.ends_with("b.yaml"));
    assert!(s.errors[0].message.contains("a.yaml"), "{}", s.errors[0]);
    assert!(Arc::ptr_eq(&b, &store.tenant("b").unwrap()), "old b serves");
    assert_eq!(&*store.tenant_for_host("a.example").unwrap().id, "a");
    assert_eq!(s.generation, 1);
    // Still refused at the next reload, whatever it names.
    let s = store.reload_paths::<PathBuf>(&[]);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);

    // a releases the host: b, unchanged, is admitted.
    write(dir.path(), "a.yaml", &policy("a", "a2.example", "r"));
    let s = store.reload_paths(&[dir.path().join("a.yaml")]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(&*store.tenant_for_host("a.example").unwrap().id, "b");
    assert!(store.tenant_for_host("b.example").is_none());
}

#[test]
fn a_broken_file_named_by_a_reload_keeps_its_rules_and_is_reported_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    let store = PolicyStore::new(dir.path());
    store.reload();
    let a = store.tenant("a").unwrap();
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: portcullis/v1\ntenant: a\nrules: [\n",
    );
    let s = store.reload_paths(&[dir.path().join("a.yaml")]);
    assert_eq!(s.errors.len(), 1);
    assert!(s.errors[0].file.ends_with("a.yaml") && s.errors[0].line.is_some());
    assert!(Arc::ptr_eq(&a, &store.tenant("a").unwrap()));
    // Another file's reload reports it again.
    write(dir.path(), "b.yaml", &policy("b", "b2.example", "r"));
    let s = store.reload_paths(&[dir.path().join("b.yaml")]);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    // Back to the bytes that serve: no error, nothing recompiled.
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    let s = store.reload_paths(&[dir.path().join("a.yaml")]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(Arc::ptr_eq(&a, &store.tenant("a").unwrap()));
}

#[test]
fn removals_and_new_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    let store = PolicyStore::new(dir.path());
    store.reload();
    // Renamed: b goes, c (same tenant id) comes, in one reload.
    fs::rename(dir.path().join("b.yaml"), dir.path().join("c.yaml")).unwrap();
    let s = store.reload_paths(&[dir.path().join("b.yaml"), dir.path().join("c.yaml")]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(store.tenant("b").unwrap().source, dir.path().join("c.yaml"));
    assert!(store.tenant_for_host("b.example").is_some());
    fs::remove_file(dir.path().join("c.yaml")).unwrap();
    store.reload_paths(&[dir.path().join("c.yaml")]);
    assert!(store.tenant("b").is_none());
    assert!(store.tenant_for_host("b.example").is_none());
    // The last file removed: every tenant is kept, as by a rescan.
    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let s = store.reload_paths(&[dir.path().join("a.yaml")]);
    assert!(store.tenant("a").is_some());
    assert!(s.notes[0].contains("no policy files"), "{:?}", s.notes);
}

#[test]
fn a_configmap_data_swap_changes_every_file_and_a_rescan_loads_them() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let publish = |stamp: &str, rule: &str| {
        fs::create_dir(root.join(stamp)).unwrap();
        for t in ["a", "b"] {
            let name = format!("{t}.yaml");
            fs::write(
                root.join(stamp).join(&name),
                policy(t, &format!("{t}.example"), rule),
            )
            .unwrap();
            if fs::symlink_metadata(root.join(&name)).is_err() {
                symlink(format!("..data/{name}"), root.join(&name)).unwrap();
            }
        }
        symlink(stamp, root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    };
    publish("..2026_01_01", "r1");
    let store = PolicyStore::new(root);
    assert!(store.reload().errors.is_empty());
    assert!(store.has_links(), "a watch must rescan on hidden entries");
    publish("..2026_01_02", "r2");
    let s = store.reload();
    assert_eq!(s.generation, 2, "one swap, one generation");
    for t in ["a", "b"] {
        assert!(
            store.tenant(t).unwrap().rule_ids().any(|r| r == "r2"),
            "{t}"
        );
    }
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "a.yaml", &policy("a", "a.example", "r"));
    let store = PolicyStore::new(plain.path());
    store.reload();
    assert!(!store.has_links());
}

#[test]
fn wildcard_hosts_prefer_exact_then_longest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy("a", "'*.example.com'", "r"));
    write(
        dir.path(),
        "b.yaml",
        &policy("b", "'*.eu.example.com'", "r"),
    );
    write(dir.path(), "c.yaml", &policy("c", "x.eu.example.com", "r"));
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    let t = |h: &str| store.tenant_for_host(h).map(|t| t.id.to_string());
    assert_eq!(t("shop.example.com").as_deref(), Some("a"));
    assert_eq!(t("shop.eu.example.com").as_deref(), Some("b"));
    assert_eq!(t("x.eu.example.com").as_deref(), Some("c"));
    assert_eq!(t("example.com"), None);
}

/// The store is what a check's tenancy looks tenants up in: by the route's id
/// first, then by host, and an id that names no tenant does not fall through.
#[test]
fn tenancy_resolves_through_the_store() {
    use crate::request::input::Resource;
    use crate::request::tenancy::TenantResolver;

    let dir = tempfile::tempdir().unwrap();
    for (t, h) in [("acme", "acme.example"), ("globex", "globex.example")] {
        write(dir.path(), &format!("{t}.yaml"), &policy(t, h, "r"));
    }
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    let resource = |host: &str, ext: Option<&str>| {
        let mut r = Resource {
            host: host.into(),
            ..Default::default()
        };
        if let Some(t) = ext {
            r.context_extensions.insert("tenant".into(), t.into());
        }
        r
    };
    let r = TenantResolver::default();
    let id = |res: &Resource| r.resolve(res, &store).map(|t| t.id.to_string());
    assert_eq!(
        id(&resource("acme.example", Some("globex"))).as_deref(),
        Some("globex")
    );
    assert_eq!(id(&resource("acme.example", None)).as_deref(), Some("acme"));
    assert_eq!(id(&resource("acme.example", Some("nope"))), None);
    assert_eq!(id(&resource("other.example", None)), None);
}

const REVOKE_MALLORY: &str =
    "apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n  - { sub: mallory }\n";
/// Names its tenant, but one entry names two kinds.
const REVOKE_BROKEN: &str =
    "apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n  - { sub: mallory, jti: j }\n";

fn revoked_subjects(store: &PolicyStore, tenant: &str) -> Option<usize> {
    store.revocations(tenant).map(|l| l.len())
}

#[test]
fn a_revocation_list_that_never_loaded_leaves_its_tenant_unavailable_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "acme.yaml",
        &policy("acme", "acme.example", "r"),
    );
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    write(dir.path(), "acme.revoked.yaml", REVOKE_BROKEN);
    let store = PolicyStore::new(dir.path());
    let s = store.reload();
    assert_eq!(revoked_subjects(&store, "acme"), None);
    let why = store
        .revocation_unavailable("acme")
        .expect("acme is unavailable");
    assert!(
        why.contains("acme.revoked.yaml") && why.contains("revoked[0]"),
        "{why}"
    );
    assert_eq!(
        store.revocation_unavailable("b"),
        None,
        "b has no list to miss"
    );
    assert_eq!(
        s.revocation_unavailable.len(),
        1,
        "{:?}",
        s.revocation_unavailable
    );
    assert!(s.revocation_unavailable[0].contains("\"acme\""));
    assert!(
        s.error_lines()
            .iter()
            .any(|e| e.contains("acme.revoked.yaml"))
    );

    // Fixed: the list serves and nothing is unavailable.
    write(dir.path(), "acme.revoked.yaml", REVOKE_MALLORY);
    let s = store.reload();
    assert_eq!(revoked_subjects(&store, "acme"), Some(1));
    assert_eq!(store.revocation_unavailable("acme"), None);
    assert!(s.revocation_unavailable.is_empty() && s.errors.is_empty());

    // Broken again on a running store: the last good list keeps serving, and
    // the status says so.
    write(dir.path(), "acme.revoked.yaml", REVOKE_BROKEN);
    let s = store.reload();
    assert_eq!(revoked_subjects(&store, "acme"), Some(1));
    assert_eq!(store.revocation_unavailable("acme"), None);
    assert!(s.revocation_unavailable.is_empty());
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("keeping the last good revocation list")),
        "{:?}",
        s.notes
    );
    assert!(
        s.error_lines()
            .iter()
            .any(|e| e.contains("acme.revoked.yaml"))
    );

    // A fresh store over the same files (a restart) fails closed again.
    let restarted = PolicyStore::new(dir.path());
    restarted.reload();
    assert!(restarted.revocation_unavailable("acme").is_some());
}

#[test]
fn two_revocation_files_for_one_tenant_are_both_refused_in_either_order() {
    let list = |sub: &str| {
        format!("apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n  - {{ sub: {sub} }}\n")
    };
    for (first, second) in [("mallory", "eve"), ("eve", "mallory")] {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "acme.yaml",
            &policy("acme", "acme.example", "r"),
        );
        write(dir.path(), "a.revoked.yaml", &list(first));
        write(dir.path(), "z.revoked.yaml", &list(second));
        let store = PolicyStore::new(dir.path());
        let s = store.reload();
        assert_eq!(revoked_subjects(&store, "acme"), None, "no file wins");
        let why = store.revocation_unavailable("acme").unwrap();
        assert!(
            why.contains("a.revoked.yaml") && why.contains("z.revoked.yaml"),
            "{why}"
        );
        let files: BTreeSet<_> = s.errors.iter().map(|e| e.file.clone()).collect();
        assert_eq!(files.len(), 2, "both files are reported: {:?}", s.errors);

        // Removing one lets the other serve.
        fs::remove_file(dir.path().join("z.revoked.yaml")).unwrap();
        let s = store.reload();
        assert!(s.errors.is_empty() && s.revocation_unavailable.is_empty());
        assert_eq!(revoked_subjects(&store, "acme"), Some(1));
    }

    // On a running store, a second file keeps the list that served.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "acme.yaml",
        &policy("acme", "acme.example", "r"),
    );
    write(dir.path(), "z.revoked.yaml", &list("mallory"));
    let store = PolicyStore::new(dir.path());
    store.reload();
    let served = store.revocations("acme").unwrap();
    write(dir.path(), "a.revoked.yaml", &list("eve"));
    let s = store.reload();
    assert!(Arc::ptr_eq(&served, &store.revocations("acme").unwrap()));
    assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
    assert!(s.revocation_unavailable.is_empty());
    // Removing the file that served does not keep its list: the other is
    // still broken by nothing, so it serves.
    fs::remove_file(dir.path().join("z.revoked.yaml")).unwrap();
    store.reload();
    assert!(!Arc::ptr_eq(&served, &store.revocations("acme").unwrap()));
}

#[test]
fn a_revocation_file_whose_tenant_cannot_be_read_fails_every_tenant_without_a_list() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "acme.yaml",
        &policy("acme", "acme.example", "r"),
    );
    write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
    write(dir.path(), "acme.revoked.yaml", REVOKE_MALLORY);
    write(dir.path(), "x.revoked.yaml", "{ not yaml");
    let store = PolicyStore::new(dir.path());
    let s = store.reload();
    assert_eq!(
        store.revocation_unavailable("acme"),
        None,
        "acme has its list"
    );
    let why = store.revocation_unavailable("b").unwrap();
    assert!(why.contains("x.revoked.yaml"), "{why}");
    assert!(s.revocation_unavailable[0].contains("every tenant without"));
    fs::remove_file(dir.path().join("x.revoked.yaml")).unwrap();
    store.reload();
    assert_eq!(store.revocation_unavailable("b"), None);
}

/// 200 KB nested three ways, after `prefix`.
fn hostile(prefix: &str) -> [String; 3] {
    let size = 200 * 1024;
    let mut block = String::from(prefix);
    block.push_str("x:\n");
    let mut d = 1;
    while block.len() < size {
        block.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        d += 1;
    }
    [
        format!("{prefix}x: {}", "[".repeat(size)),
        format!("{prefix}x: {}", "{a: ".repeat(size / 4)),
        block,
    ]
}

#[test]
fn deeply_nested_files_are_refused_fast_with_their_line_at_load_and_reload() {
    let head = |tenant: &str| format!("apiVersion: portcullis/v1\ntenant: {tenant}\n");
    for nested in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "good.yaml",
            &policy("good", "good.example", "r"),
        );
        write(dir.path(), "deep.yaml", &hostile(&head("deep"))[nested]);
        write(
            dir.path(),
            "good.data.yaml",
            &hostile(&head("good"))[nested],
        );
        write(
            dir.path(),
            "good.revoked.yaml",
            &hostile(&head("good"))[nested],
        );
        let store = PolicyStore::new(dir.path());
        let started = std::time::Instant::now();
        let s = store.reload();
        let took = started.elapsed();
        for file in ["deep.yaml", "good.data.yaml", "good.revoked.yaml"] {
            let e = s
                .errors
                .iter()
                .find(|e| e.file.ends_with(file))
                .unwrap_or_else(|| panic!("{file}: {:?}", s.errors));
            assert!(e.message.contains("nests deeper than 64"), "{e}");
            assert!(e.line.is_some_and(|l| l >= 3), "{e}");
        }
        assert!(store.tenant("good").is_some() && store.tenant("deep").is_none());
        // Its list did not load: fail closed.
        assert!(store.revocation_unavailable("good").is_some());
        assert!(took < Duration::from_secs(2), "{took:?}");

        // On reload: a good file replaced by a hostile one keeps its rules.
        let before = store.tenant("good").unwrap();
        write(dir.path(), "good.yaml", &hostile(&head("good"))[nested]);
        let started = std::time::Instant::now();
        let s = store.reload();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            s.errors
                .iter()
                .any(|e| e.file.ends_with("good.yaml") && e.message.contains("nests deeper"))
        );
        assert!(Arc::ptr_eq(&before, &store.tenant("good").unwrap()));
    }
}
