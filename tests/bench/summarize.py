"""Turns run.sh's results.tsv into summary.md: medians over runs, and each
figure beside its baseline from the same run, as a ratio (the median of the
per-run ratios, so that drift between runs cancels).

    summarize.py RESULTS RUNS DUR TENANTS DISTINCT
"""

import collections
import statistics
import sys

path, runs, dur, tenants, distinct = sys.argv[1:6]
data = collections.defaultdict(dict)  # (section, name, metric) -> {run: value}
for line in open(path):
    section, name, run, metric, value = line.rstrip("\n").split("\t")
    try:
        data[(section, name, metric)][run] = float(value)
    except ValueError:
        data[(section, name, metric)][run] = value


def values(section, name, metric):
    return data.get((section, name, metric), {})


def median(section, name, metric):
    v = [x for x in values(section, name, metric).values() if isinstance(x, float)]
    return statistics.median(v) if v else None


def spread(section, name, metric):
    """(max - min) / median over runs, as a percentage: how noisy it was."""
    v = [x for x in values(section, name, metric).values() if isinstance(x, float)]
    if len(v) < 2 or not statistics.median(v):
        return "–"
    return f"±{100 * (max(v) - min(v)) / 2 / statistics.median(v):.0f}%"


def ratio(a, b, metric, section, a_metric=None):
    """Median over runs of a/b, both from the same run."""
    av, bv = values(section, a, a_metric or metric), values(section, b, metric)
    r = [av[k] / bv[k] for k in av if k in bv and isinstance(av[k], float) and bv[k]]
    return statistics.median(r) if r else None


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


out = []
p = out.append
p(f"Runs: {runs} interleaved, {dur} s each; tenants: {tenants} templated, {distinct} distinct.\n")

STOCK_NOTE = (
    "The constant server runs on portcullis' transport (TCP_NODELAY, non-vectored writes), "
    "so the ratio is the cost of deciding; the same server on stock tonic is shown beside it.\n"
)


def closed_loop_table(name, metrics, section="grpc_closed"):
    """`name` against both constant servers and, for the cache-off server, the cached one."""
    extra = name != "portcullis"
    p(
        f"| measure | {'portcullis, cache off' if extra else 'portcullis'} | constant server | ratio | constant, stock tonic | ratio |"
        + (" portcullis, cache on | off / on |" if extra else "")
    )
    p("|---|---|---|---|---|---|" + ("---|---|" if extra else ""))
    for metric, label in metrics:
        row = (
            f"| {label} | {fmt(median(section, name, metric))} | "
            f"{fmt(median(section, 'const', metric))} | "
            f"{fmt(ratio(name, 'const', metric, section), 2)}× | "
            f"{fmt(median(section, 'const_stock', metric))} | "
            f"{fmt(ratio(name, 'const_stock', metric, section), 2)}× |"
        )
        if extra:
            row += (
                f" {fmt(median(section, 'portcullis', metric))} | "
                f"{fmt(ratio(name, 'portcullis', metric, section), 2)}× |"
            )
        p(row)
    p("")
    p(
        f"Spread of Check/s: portcullis {spread(section, name, 'rps')}, "
        f"constant {spread(section, 'const', 'rps')}, stock {spread(section, 'const_stock', 'rps')}. "
        f"Correctness: failed requests portcullis {fmt(sum(values(section, name, 'failed').values()))}, "
        f"constant {fmt(sum(values(section, 'const', 'failed').values()))}, "
        f"stock {fmt(sum(values(section, 'const_stock', 'failed').values()))}; "
        f"portcullis allow decisions counted by its /metrics {fmt(sum(values(section, name, 'allowed').values()))} "
        f"for {fmt(sum(values(section, name, 'succeeded').values()))} measured responses (the metric also counts warm-up).\n"
    )


SHAPES = (("grpc_closed", "4 connections × 16 streams"), ("grpc_closed_2x8", "2 connections × 8 streams"))
for section, shape in SHAPES:
    if values(section, "const", "rps"):
        p(f"## gRPC Check, direct (h2load, {shape}, closed loop)\n")
        p(STOCK_NOTE)
        closed_loop_table(
            "portcullis",
            (("rps", "Check/s"), ("p50_us", "p50 µs"), ("p90_us", "p90 µs"), ("p99_us", "p99 µs")),
            section,
        )
    if values(section, "portcullis_nocache", "rps"):
        p(f"## gRPC Check, direct, {shape}, token cache off (`limits.token_cache_size: 0`: every RS256 token verified in full)\n")
        closed_loop_table("portcullis_nocache", (("rps", "Check/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs")), section)
SAME_REGO = (
    ("opa_envoy", "OPA-Envoy, Rego"),
    ("portcullis_rego", "portcullis, Rego"),
    ("portcullis_rego_nocache", "portcullis, Rego, cache off"),
    ("portcullis_cedar", "portcullis, Cedar"),
    ("portcullis", "portcullis, YAML"),
    ("portcullis_nocache", "portcullis, YAML, cache off"),
    ("const", "constant server"),
)
for section, shape in SHAPES:
    if not (values(section, "portcullis_rego", "rps") or values(section, "portcullis_cedar", "rps")):
        continue
    p(f"## gRPC Check, direct, {shape}: the same Rego policy on OPA-Envoy and portcullis, and the rule in Cedar\n")
    p(
        "OPA-Envoy and portcullis' Rego tenant run the same files (tests/bench/opa/authz.rego, the "
        "JWKS as `data.bench.jwks`) on the same request; portcullis' YAML tenant decides the same "
        "request by its rules. On OPA-Envoy the policy's `io.jwt.decode_verify` verifies the RS256 "
        "token in full on every check; on portcullis it shares the tenant's verified-token cache with "
        "the identity stage, and with the cache off the token is verified in full twice (identity "
        "stage, then the builtin). portcullis' Cedar tenant decides the same object-level rule with one "
        "`permit` (examples/bench/fixtures.rs), the token verified by the identity stage only. Ratios "
        "are to the constant-answer server in the same run.\n"
    )
    p("| server | Check/s | / constant | p50 µs | p99 µs | failed | allow decisions counted |")
    p("|---|---|---|---|---|---|---|")
    for name, label in SAME_REGO:
        if not values(section, name, "rps"):
            continue
        allowed = values(section, name, "allowed")
        p(
            f"| {label} | {fmt(median(section, name, 'rps'))} | "
            f"{fmt(ratio(name, 'const', 'rps', section), 3)}× | "
            f"{fmt(median(section, name, 'p50_us'))} | {fmt(median(section, name, 'p99_us'))} | "
            f"{fmt(sum(values(section, name, 'failed').values()))} | "
            f"{fmt(sum(allowed.values())) if allowed else '–'} |"
        )
    p("")
    if values(section, "opa_envoy", "rps"):
        p(
            f"portcullis-Rego / OPA-Envoy: {fmt(ratio('portcullis_rego', 'opa_envoy', 'rps', section), 2)}× "
            f"Check/s (cache off {fmt(ratio('portcullis_rego_nocache', 'opa_envoy', 'rps', section), 2)}×; "
            f"issue 18's target ≥ 10×); portcullis-YAML / OPA-Envoy: "
            f"{fmt(ratio('portcullis', 'opa_envoy', 'rps', section), 2)}× "
            f"(cache off {fmt(ratio('portcullis_nocache', 'opa_envoy', 'rps', section), 2)}×). "
            f"Spread of Check/s: OPA-Envoy {spread(section, 'opa_envoy', 'rps')}, "
            f"portcullis-Rego {spread(section, 'portcullis_rego', 'rps')}.\n"
        )
    else:
        p("OPA-Envoy was not measured (not built, or it did not allow the fixture's request).\n")
    if values(section, "portcullis_cedar", "rps"):
        p(
            f"portcullis-Cedar Check/s: / constant {fmt(ratio('portcullis_cedar', 'const', 'rps', section), 3)}×, "
            f"/ portcullis-YAML {fmt(ratio('portcullis_cedar', 'portcullis', 'rps', section), 2)}×, "
            f"/ portcullis-Rego {fmt(ratio('portcullis_cedar', 'portcullis_rego', 'rps', section), 2)}×, "
            f"/ OPA-Envoy {fmt(ratio('portcullis_cedar', 'opa_envoy', 'rps', section), 2)}×. "
            f"Spread of Check/s: portcullis-Cedar {spread(section, 'portcullis_cedar', 'rps')}.\n"
        )
if values("memory", "rego_after_load", "rss_kb"):
    p(
        f"Memory after load: OPA-Envoy {fmt(median('memory', 'opa_envoy_after_load', 'rss_kb'))} KiB, "
        f"portcullis-Rego {fmt(median('memory', 'rego_after_load', 'rss_kb'))} KiB, portcullis-Cedar "
        f"{fmt(median('memory', 'cedar_after_load', 'rss_kb'))} KiB, portcullis-YAML "
        f"{fmt(median('memory', 'after_load', 'rss_kb'))} KiB.\n"
    )
if values("profile", "const", "instructions_per_check"):
    p("## Per check: instructions and allocations (callgrind, the server under h2load)\n")
    p("| server | instructions / check | ratio | heap allocations / check | ratio | failed |")
    p("|---|---|---|---|---|---|")
    for name, label in (("const", "constant server"), ("one", "portcullis"), ("nocache", "portcullis, token cache off"),
                        ("rego", "portcullis, Rego tenant"), ("cedar", "portcullis, Cedar tenant")):
        p(
            f"| {label} | {fmt(median('profile', name, 'instructions_per_check'))} | "
            f"{fmt(ratio(name, 'const', 'instructions_per_check', 'profile'), 2)}× | "
            f"{fmt(median('profile', name, 'mallocs_per_check'), 1)} | "
            f"{fmt(ratio(name, 'const', 'mallocs_per_check', 'profile'), 2)}× | "
            f"{fmt(median('profile', name, 'failed'))} |"
        )
    p("")
    p(
        "Instructions include the server's whole process (HTTP/2, gRPC, decoding, the decision). "
        "`tests/bench/stages.sh` splits them by stage.\n"
    )
if values("grpc_open", "const", "p99_us"):
    p("## gRPC Check, direct, open loop at 5,000 requests/s (h2load --rps, 10 connections)\n")
    p("| measure | portcullis | constant server | ratio | constant, stock tonic | ratio |")
    p("|---|---|---|---|---|---|")
    for metric, label in (("rps", "achieved /s"), ("p50_us", "p50 µs"), ("p90_us", "p90 µs"), ("p99_us", "p99 µs")):
        p(
            f"| {label} | {fmt(median('grpc_open', 'portcullis', metric))} | "
            f"{fmt(median('grpc_open', 'const', metric))} | {fmt(ratio('portcullis', 'const', metric, 'grpc_open'), 2)}× | "
            f"{fmt(median('grpc_open', 'const_stock', metric))} | {fmt(ratio('portcullis', 'const_stock', metric, 'grpc_open'), 2)}× |"
        )
    failed = lambda name: fmt(sum(values("grpc_open", name, "failed").values()))
    p(f"\nFailed: portcullis {failed('portcullis')}, constant {failed('const')}, stock {failed('const_stock')}.\n")

if values("envoy", "none", "rps"):
    p("## Through Envoy (wrk, 1 thread × 16 connections, direct_response route)\n")
    p("| config | rps | p50 µs | p99 µs | added p50 µs | added p99 µs | non-2xx | check with / without token |")
    p("|---|---|---|---|---|---|---|---|")
    added = {}
    for name in ("none", "jwt_rbac", "ext_const", "ext_portcullis", "ext_const_stock", "http_const", "http_portcullis"):
        for metric in ("p50_us", "p99_us"):
            a, b = values("envoy", name, metric), values("envoy", "none", metric)
            d = [a[k] - b[k] for k in a if k in b]
            added[(name, metric)] = statistics.median(d) if d else None
        p(
            f"| {name} | {fmt(median('envoy', name, 'rps'))} | {fmt(median('envoy', name, 'p50_us'))} | "
            f"{fmt(median('envoy', name, 'p99_us'))} | {fmt(added[(name, 'p50_us')])} | {fmt(added[(name, 'p99_us')])} | "
            f"{fmt(sum(values('envoy', name, 'non_2xx').values()))} | "
            f"{values('envoy_check', name, 'with_token').get('0', '–'):.0f} / {values('envoy_check', name, 'without_token').get('0', 0):.0f} |"
        )
    pc, cc = added[("ext_portcullis", "p50_us")], added[("ext_const", "p50_us")]
    sc = added[("ext_const_stock", "p50_us")]
    p(
        f"\nAdded p50, portcullis over the constant ext_authz server: {fmt(pc / cc if pc and cc else None, 2)}× "
        f"(over the stock-tonic one: {fmt(pc / sc if pc and sc else None, 2)}×) "
        f"(rps ratio {fmt(ratio('ext_portcullis', 'ext_const', 'rps', 'envoy'), 2)}×; "
        f"rps vs no authorization: portcullis {fmt(ratio('ext_portcullis', 'none', 'rps', 'envoy'), 2)}×, "
        f"constant {fmt(ratio('ext_const', 'none', 'rps', 'envoy'), 2)}×, "
        f"jwt_authn+RBAC {fmt(ratio('jwt_rbac', 'none', 'rps', 'envoy'), 2)}×).\n"
    )
    hp, hc = added[("http_portcullis", "p50_us")], added[("http_const", "p50_us")]
    hp99, hc99 = added[("http_portcullis", "p99_us")], added[("http_const", "p99_us")]
    p(
        f"HTTP mode (`http_service`): added p50 portcullis {fmt(hp)} µs vs the constant HTTP server "
        f"{fmt(hc)} µs ({fmt(hp / hc if hp and hc else None, 2)}×); added p99 {fmt(hp99)} µs vs {fmt(hc99)} µs "
        f"({fmt(hp99 / hc99 if hp99 and hc99 else None, 2)}×); gRPC mode beside it: added p50 {fmt(pc)} µs, "
        f"p99 {fmt(added[('ext_portcullis', 'p99_us')])} µs.\n"
    )

p("## Memory and scale\n")
p("| measure | value | baseline | ratio |")
p("|---|---|---|---|")
idle = median("memory", "idle", "rss_kb")
const_idle = median("memory", "const_idle", "rss_kb")
for name, label in (
    ("idle", "RSS idle, one tenant (KB)"),
    ("after_load", "RSS after the gRPC load (KB)"),
    ("many", f"RSS, {tenants} tenants × 20 templated rules (KB)"),
    ("many_after_load", f"RSS, {tenants} tenants, after reload runs (KB)"),
    ("distinct", f"RSS, {distinct} tenants × 20 distinct rules (KB)"),
):
    v = median("memory", name, "rss_kb")
    p(f"| {label} | {fmt(v)} | constant server idle {fmt(const_idle)} | {fmt(v / const_idle if v and const_idle else None, 1)}× |")
one = median("scale", "one", "load_seconds")
for name, label in (("one", "start to ready, one tenant (s)"), ("many", f"start to ready, {tenants} tenants (s)"), ("distinct", f"start to ready, {distinct} distinct tenants (s)")):
    v = median("scale", name, "load_seconds")
    p(f"| {label} | {fmt(v, 2)} | one tenant {fmt(one, 2)} | {fmt(v / one if v and one else None, 1)}× |")
p("")

if values("reload", "quiet", "p99_us"):
    p(f"## Reload of one tenant under load ({tenants} tenants, open loop 2,000 rps)\n")
    p("| measure | while reloading | quiet | ratio |")
    p("|---|---|---|---|")
    for metric, label in (("rps", "achieved /s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("failed", "failed")):
        p(
            f"| {label} | {fmt(median('reload', 'reloading', metric))} | {fmt(median('reload', 'quiet', metric))} | "
            f"{fmt(ratio('reloading', 'quiet', metric, 'reload'), 2)}× |"
        )
    p(f"\nSuccessful reloads of the tenant: {fmt(median('reload', 'reloading', 'reloads_ok'))}.\n")

# Every ratio against both floors in one table, first in the summary.
head = ["## Ratios at a glance (portcullis / floor, same run)\n",
        "| measure | / constant, same transport | / constant, stock tonic | target (issue 23) |",
        "|---|---|---|---|"]
for section, shape in SHAPES:
    for name, what, target in (("portcullis", "Check/s, cache on", "≥ 0.75× same transport"),
                               ("portcullis_nocache", "Check/s, cache off", "≥ 0.35× same transport")):
        if values(section, name, "rps"):
            head.append(
                f"| {what}, {shape} | {fmt(ratio(name, 'const', 'rps', section), 2)}× | "
                f"{fmt(ratio(name, 'const_stock', 'rps', section), 2)}× | {target} |"
            )
for metric in ("p50_us", "p99_us"):
    if values("grpc_open", "portcullis", metric):
        head.append(
            f"| open loop 5,000 rps, {metric.split('_')[0]} | {fmt(ratio('portcullis', 'const', metric, 'grpc_open'), 2)}× | "
            f"{fmt(ratio('portcullis', 'const_stock', metric, 'grpc_open'), 2)}× | "
            f"{'≤ 1.3×' if metric == 'p50_us' else '–'} |"
        )
for metric, what, target in (("instructions_per_check", "instructions / check (callgrind)", "≤ 1.3×"),
                             ("mallocs_per_check", "allocations / check (callgrind)", "≤ 1.5×")):
    if values("profile", "one", metric):
        head.append(f"| {what} | {fmt(ratio('one', 'const', metric, 'profile'), 2)}× | – | {target} |")
for section, shape in SHAPES:
    for name, what in (("opa_envoy", "OPA-Envoy, the Rego policy"), ("portcullis_rego", "portcullis, the same Rego policy"),
                       ("portcullis_cedar", "portcullis, the rule in Cedar"),
                       ("portcullis", "portcullis, YAML rules, same request")):
        if (values(section, "portcullis_rego", "rps") or values(section, "portcullis_cedar", "rps")) and values(
            section, name, "rps"
        ):
            head.append(
                f"| Check/s {what}, {shape} | {fmt(ratio(name, 'const', 'rps', section), 3)}× | "
                f"{fmt(ratio(name, 'const_stock', 'rps', section), 3)}× | – |"
            )
    if values(section, "portcullis_rego", "rps") and values(section, "opa_envoy", "rps"):
        head.append(
            f"| Check/s portcullis-Rego / OPA-Envoy, {shape} | "
            f"{fmt(ratio('portcullis_rego', 'opa_envoy', 'rps', section), 2)}× (a ratio of the two) | – | "
            f"≥ 10× (issue 18) |"
        )
    for other, label in (("portcullis", "portcullis-YAML"), ("portcullis_rego", "portcullis-Rego"), ("opa_envoy", "OPA-Envoy")):
        if values(section, "portcullis_cedar", "rps") and values(section, other, "rps"):
            head.append(
                f"| Check/s portcullis-Cedar / {label}, {shape} | "
                f"{fmt(ratio('portcullis_cedar', other, 'rps', section), 2)}× (a ratio of the two) | – | – |"
            )
if len(head) > 3:
    out[1:1] = head + [""]

print("\n".join(out))
