"""Lints and renders the Helm chart for tests/chart.rs, offline: no cluster, no network.

Reads one JSON request on stdin:

    {"chart": DIR, "kube_version": "1.32.0",
     "scenarios": [{"name", "release", "namespace", "values"}, ...]}

and writes one JSON answer on stdout:

    {"lint": {...helm lint report...},
     "scenarios": {NAME: {"objects": [...], "notes": TEXT,
                          "schema_errors": ["Kind/name: message", ...]}
                   (in sidecar mode "objects" also holds the Pod that NOTES.txt's
                   snippet makes, see sidecar_pod)
                   or {"error": TEXT} when rendering failed}}

Helm is the real Helm 4 library (PyPI's helm-python-sdk); every rendered object of a
core Kubernetes kind is validated with kubernetes-validate in strict mode (unknown
fields are errors) against the pinned Kubernetes version. Objects of CRD kinds
(Istio, Prometheus Operator) have no bundled schema: they are returned unvalidated and
the Rust test checks them against their documented fields. All assertions live in
tests/chart.rs; this script only gathers facts.
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml

# API groups whose kinds are CRDs, not part of Kubernetes' own schemas.
CRD_GROUPS = ("monitoring.coreos.com/", "security.istio.io/", "networking.istio.io/")


def validate(obj, kube_version):
    """Returns the schema errors of one object: empty when valid or a CRD kind."""
    if obj.get("apiVersion", "").startswith(CRD_GROUPS):
        return []
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{where}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: {e.message}"]
    return []


def sidecar_pod(notes, namespace):
    """The pod a workload gets by pasting the sidecar snippet from NOTES.txt, or None.

    The snippet is the text between the "# -- pod template …" markers: annotations,
    containers to add, volumes to add. They are pasted beside an application container,
    as a reader would, so the result is validated like any rendered object.
    """
    marks = ["# -- pod template metadata.annotations (Istio) --",
             "# -- pod template spec.containers: add --",
             "# -- pod template spec.volumes: add --",
             "# -- end --"]
    if not all(m in notes for m in marks):
        return None
    parts = [notes.split(marks[i], 1)[1].split(marks[i + 1], 1)[0] for i in range(3)]
    annotations, containers, volumes = (yaml.safe_load(p) for p in parts)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "workload", "namespace": namespace, "annotations": annotations},
        "spec": {
            "containers": [{"name": "app", "image": "example.com/app:1"}] + containers,
            "volumes": volumes,
        },
    }


def render(chart, scenario, kube_version):
    try:
        manifests = chart.render(
            scenario.get("values", {}),
            name=scenario["release"],
            namespace=scenario["namespace"],
            is_install=True,
        )
    except helm.HelmError as e:
        return {"error": str(e)}
    objects, errors, notes = [], [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if obj is None:
                continue
            objects.append({"template": path, "object": obj})
            errors.extend(validate(obj, kube_version))
    pod = sidecar_pod(notes, scenario["namespace"])
    if pod is not None:
        objects.append({"template": "NOTES.txt (sidecar snippet in a pod)", "object": pod})
        errors.extend(validate(pod, kube_version))
    return {"objects": objects, "notes": notes, "schema_errors": errors}


def main():
    request = json.load(sys.stdin)
    kube_version = request["kube_version"]
    lint = helm.lint(request["chart"], strict=True, kube_version="v" + kube_version)
    answer = {"lint": lint, "scenarios": {}}
    with helm.Chart.load(request["chart"]) as chart:
        for scenario in request["scenarios"]:
            answer["scenarios"][scenario["name"]] = render(chart, scenario, kube_version)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
