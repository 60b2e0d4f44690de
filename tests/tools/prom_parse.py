"""Parses OpenMetrics text (stdin) with the Prometheus client library's own
parser and prints every sample as JSON: [{"name", "labels", "value"}, ...].
Used by tests/observability.rs; a parse error exits non-zero."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type,
                        "name": s.name, "labels": s.labels, "value": s.value})
json.dump(samples, sys.stdout)
