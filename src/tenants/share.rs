//! Rule sets shared between tenants: a file whose rules, resources and
//! response have the same [`Inputs`] as one already compiled holds the same
//! `Arc<RuleSet>` (see [`crate::policy::rule_set`]).
//!
//! Never imports: the pipeline or anything above it.

use std::sync::{Arc, LazyLock};

use super::file::{PolicyFile, ResourceSpec, ResponseSpec, RuleSpec};
use super::sections::Texts;
use crate::foundation::intern::{Digest, Interner};
use crate::policy::rule_set::RuleSet;

/// Everything [`RuleSet`]'s compilation and its checks read.
#[derive(Hash)]
pub(super) struct Inputs<'a> {
    sections: Sections<'a>,
    /// Claims the checks know of besides the registered ones.
    claims: &'a [String],
    api_key_claims: Vec<&'a str>,
    /// Whether the tenant may read its token from a cookie (a downstream token
    /// then needs `cookie` removed).
    reads_cookies: bool,
    /// `limits.max_rules_per_tenant` and `limits.max_check_cost`.
    limits: (usize, usize),
}

/// The `rules`, `resources` and `response` sections: as parsed, or as the
/// text they parse from (see [`super::sections`]).
#[derive(Hash)]
enum Sections<'a> {
    Parsed {
        rules: &'a [RuleSpec],
        resources: &'a [ResourceSpec],
        response: &'a ResponseSpec,
    },
    Text(&'a Texts<'a>),
}

impl<'a> Inputs<'a> {
    /// `texts` are the sections' texts when the file was read in pieces; then
    /// `spec`'s own sections are not read.
    pub(super) fn of(
        spec: &'a PolicyFile,
        texts: Option<&'a Texts<'a>>,
        reads_cookies: bool,
        limits: (usize, usize),
    ) -> Inputs<'a> {
        Inputs {
            sections: match texts {
                Some(t) => Sections::Text(t),
                None => Sections::Parsed {
                    rules: &spec.rules,
                    resources: &spec.resources,
                    response: &spec.response,
                },
            },
            claims: &spec.claims,
            api_key_claims: spec
                .identity
                .api_keys
                .iter()
                .flat_map(|k| k.keys.iter().flat_map(|k| k.claims.keys()))
                .map(String::as_str)
                .collect(),
            reads_cookies,
            limits,
        }
    }

    pub(super) fn digest(&self) -> Digest {
        crate::foundation::intern::digest_of("portcullis rule set v2", self)
    }
}

static SHARED: LazyLock<Interner<RuleSet>> = LazyLock::new(Interner::default);

/// A set compiled clean from inputs with this digest, still in use.
pub(super) fn clean(digest: &Digest) -> Option<Arc<RuleSet>> {
    SHARED.get(digest).filter(|s| s.clean)
}

/// `set`, or the equal one already in use.
pub(super) fn share(digest: Digest, set: RuleSet) -> Arc<RuleSet> {
    SHARED.insert(digest, Arc::new(set))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::identity::Identity;
    use crate::policy::{CompiledTenant, Outcome};
    use crate::request::input::Input;
    use crate::tenants::{compile, compile_limited};

    /// Every rule is public, so decisions need no token. A rule that means
    /// "the caller's own tenant" compares with `context.tenant`; the response
    /// header names the tenant too.
    const RULES: &str = r#"rules:
  - id: own
    methods: [GET]
    path: /tenants/{t}/orders
    when: resource.params.t == context.tenant
    effect: allow
    public: true
response:
  headers: { x-tenant: "{tenant}" }
"#;

    fn file(tenant: &str, rules: &str) -> String {
        format!("apiVersion: portcullis/v1\ntenant: {tenant}\n{rules}")
    }

    fn tenant(name: &str, rules: &str) -> CompiledTenant {
        compile(Path::new(&format!("/p/{name}.yaml")), &file(name, rules))
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    fn decide(t: &CompiledTenant, path: &str) -> Outcome {
        let request = crate::app::cli::check_request_from_json(&serde_json::json!({
            "attributes": { "request": { "http": {
                "method": "GET", "host": "api.example", "path": path,
                "headers": { ":authority": "api.example", ":method": "GET", ":path": path }
            } } }
        }))
        .expect("a CheckRequest");
        let input = Input::from_check_request(&request).expect("an input");
        t.evaluate(&input, &Identity::anonymous(), false).outcome
    }

    fn shared(a: &CompiledTenant, b: &CompiledTenant) -> bool {
        Arc::ptr_eq(&a.set, &b.set)
    }

    #[test]
    fn equal_rules_share_one_set_and_each_tenant_decides_with_its_own_id() {
        let a = tenant("share-a", RULES);
        let b = tenant("share-b", RULES);
        assert!(shared(&a, &b), "one compiled set for equal rules");
        assert!(a.set.clean);

        let allowed = Outcome::Allow(Arc::from("own"));
        assert_eq!(decide(&a, "/tenants/share-a/orders"), allowed);
        assert_eq!(decide(&a, "/tenants/share-b/orders"), Outcome::NoMatch);
        assert_eq!(decide(&b, "/tenants/share-b/orders"), allowed);
        assert_eq!(decide(&b, "/tenants/share-a/orders"), Outcome::NoMatch);

        let header = |t: &CompiledTenant| {
            t.response_headers(&Identity::anonymous(), &[])
                .expect("safe headers")
                .set
        };
        assert_eq!(header(&a), [("x-tenant".into(), "share-a".into())]);
        assert_eq!(header(&b), [("x-tenant".into(), "share-b".into())]);
        // Per-tenant values stay per tenant.
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.source, Path::new("/p/share-a.yaml"));
    }

    #[test]
    fn rules_that_differ_by_one_character_get_their_own_set() {
        let a = tenant("differ-a", RULES);
        let b = tenant("differ-b", &RULES.replace("/orders", "/order"));
        assert!(!shared(&a, &b));
        assert_eq!(decide(&b, "/tenants/differ-b/orders"), Outcome::NoMatch);
        assert_eq!(
            decide(&b, "/tenants/differ-b/order"),
            Outcome::Allow(Arc::from("own"))
        );
        // A rule naming its tenant literally is a different rule.
        let c = tenant(
            "differ-c",
            &RULES.replace(
                "resource.params.t == context.tenant",
                "resource.params.t == 'differ-c'",
            ),
        );
        let d = tenant(
            "differ-d",
            &RULES.replace(
                "resource.params.t == context.tenant",
                "resource.params.t == 'differ-d'",
            ),
        );
        assert!(!shared(&c, &d));
        assert_eq!(decide(&d, "/tenants/differ-c/orders"), Outcome::NoMatch);
        assert_eq!(
            decide(&d, "/tenants/differ-d/orders"),
            Outcome::Allow(Arc::from("own"))
        );
    }

    /// Warnings and errors name each file and its own lines, whether the set is
    /// compiled or reused.
    #[test]
    fn messages_name_each_file_and_line() {
        let warned = RULES.replace("context.tenant", "claims.team_id");
        let a = tenant("lines-a", &warned);
        // The same rules four lines further down.
        let b_text = file(
            "lines-b",
            &format!("# one\n# two\n# three\n# four\n{warned}"),
        );
        let b = compile(Path::new("/p/lines-b.yaml"), &b_text).expect("compiles");
        assert!(shared(&a, &b), "the set is shared even with warnings");
        assert!(!a.set.clean);
        let where_ = |t: &CompiledTenant| {
            t.warnings
                .iter()
                .map(|w| (w.file.display().to_string(), w.line))
                .collect::<Vec<_>>()
        };
        assert_eq!(where_(&a), [("/p/lines-a.yaml".to_string(), Some(4))]);
        assert_eq!(where_(&b), [("/p/lines-b.yaml".to_string(), Some(8))]);
        assert_eq!(a.warnings[0].message, b.warnings[0].message);

        // A clean set is reused, and the file's own errors are still found.
        let _keep = tenant("lines-c", RULES);
        let bad = file("lines-d", &format!("hosts: ['bad host']\n{RULES}"));
        let errors = compile(Path::new("/p/lines-d.yaml"), &bad).expect_err("a bad host");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, Path::new("/p/lines-d.yaml"));
        assert_eq!(errors[0].line, Some(3));
    }

    /// What the checks read besides the rules is part of the key: a set that
    /// compiled clean is not reused where the same rules warn or fail.
    #[test]
    fn a_clean_set_is_not_reused_where_the_same_rules_raise_messages() {
        let rules = RULES.replace("context.tenant", "claims.team_id");
        let declared = tenant("key-a", &format!("claims: [team_id]\n{rules}"));
        assert!(declared.set.clean && declared.warnings.is_empty());
        let undeclared = tenant("key-b", &rules);
        assert!(!shared(&declared, &undeclared));
        assert_eq!(undeclared.warnings.len(), 1, "{:?}", undeclared.warnings);

        let text = file("key-c", RULES);
        let limits = crate::foundation::limits::Limits {
            max_rules_per_tenant: 0,
            ..Default::default()
        };
        let _clean = tenant("key-d", RULES);
        let errors = compile_limited(
            Path::new("/p/key-c.yaml"),
            &text,
            &Default::default(),
            &limits,
        )
        .expect_err("over the rule limit");
        assert!(
            errors[0].message.contains("max_rules_per_tenant"),
            "{errors:?}"
        );

        // A downstream token with a cookie token source needs `cookie` removed.
        let minting = format!("{RULES}  downstream_token: {{ audience: svc }}\n");
        let identity = |sources: &str| {
            format!(
                "identity:\n  token_sources: [{sources}]\n  jwt:\n    - {{ issuer: https://idp.example, audiences: [a], algorithms: [RS256], jwks_uri: 'https://idp.example/jwks' }}\n{minting}"
            )
        };
        let _header_only = tenant("key-e", &identity("{ header: authorization }"));
        let text = file(
            "key-f",
            &identity("{ header: authorization }, { cookie: s }"),
        );
        let errors = compile(Path::new("/p/key-f.yaml"), &text).expect_err("cookie kept");
        assert!(errors[0].message.contains("cookie"), "{errors:?}");
    }
}
