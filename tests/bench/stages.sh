#!/usr/bin/env bash
# Where the instructions of a check go (issue 23, step 1): runs the constant
# floor and portcullis (token cache on, the `one` fixture) under callgrind with
# the load of run.sh's profile section (warm-up, counters zeroed, N checks at
# 4 connections × 16 streams, dump), then attributes the instructions per check
# to stages from callgrind_annotate's inclusive per-function costs.
#
#   BIN_DIR=/tmp/bin tests/bench/stages.sh      # prints the per-stage table
#
# Environment: BIN_DIR (prebuilt portcullis, examples/const_authz and
# examples/fixtures; otherwise a release build), PROFILE_N (checks, 10000),
# OUT, SERVER_CPU, LOAD_CPU, PORT_BASE. Loopback only; every process started
# here is stopped by pid. Re-run only the attribution on kept profiles with
#   tests/bench/stages.sh --annotate OUT
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROFILE_N=${PROFILE_N:-10000}
ANNOTATE_ONLY=
if [[ ${1:-} == --annotate ]]; then ANNOTATE_ONLY=1; OUT=$2; fi
OUT=${OUT:-$(mktemp -d /tmp/portcullis-stages.XXXXXX)}
PORT_BASE=${PORT_BASE:-19400}
if (($(nproc) >= 2)); then
  SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
else
  SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-0}
fi
mkdir -p "$OUT"
PIDS=()
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

annotate() { # the per-stage table of $OUT/callgrind-{const,one}.out.1, markdown
  python3 - "$OUT" <<'PY'
import re, subprocess, sys

out = sys.argv[1]

def load(name):
    """Inclusive instructions per function and per call edge
    (callgrind_annotate --inclusive=yes --tree=calling)."""
    path = f"{out}/callgrind-{name}.out.1"
    n = int(open(f"{out}/callgrind-{name}.n").read())
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=calling",
                           "--threshold=100", path],
                          check=True, capture_output=True, text=True).stdout
    total, incl, edges, caller = None, {}, {}, None
    for line in text.split("\n"):
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\*|>)?\s*(\S+?):(.*?)(?: \(([\d,]+)x\))? \[[^\]]*\]$", line)
        if m:
            value, mark, fn = int(m.group(1).replace(",", "")), m.group(2), m.group(4)
            if mark == ">" and caller is not None:
                edges[(caller, fn)] = edges.get((caller, fn), 0) + value
            else:
                incl[fn] = max(incl.get(fn, 0), value)
                caller = fn if mark == "*" else None
            continue
        if not line.strip():
            caller = None
        m = re.match(r"\s*([\d,]+) .*PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
    return n, total, incl, edges

def coster(incl):
    def cost(*names):
        """Inclusive cost of the function named exactly NAME (first found);
        recursive entries (NAME'2) are not counted twice."""
        for name in names:
            if name in incl:
                return incl[name]
        return 0
    def like(pattern):
        """The largest inclusive cost of a function whose name matches."""
        return max([c for f, c in incl.items() if re.search(pattern, f)] or [0])
    return cost, like

AS = "<portcullis::foundation::proto::envoy::service::auth::v3::authorization_server::AuthorizationServer<T> as tower_service::Service<http::request::Request<B>>>::call::{{closure}}"
H2STREAM = "<hyper::proto::h2::server::H2Stream<F,B,Ex> as core::future::future::Future>::poll"
CONN = "tonic::transport::server::serve_connection::{{closure}}"
BODY = "<tonic::codec::decode::Streaming<T> as futures_core::stream::Stream>::poll_next"
DECODE = "prost::message::Message::decode"
ENCODE = "prost::message::Message::encode"
# Since issue 23 the generated service encodes with src/foundation/codec.rs.
FAST_ENCODE = "<portcullis::foundation::codec::FastEncoder<T> as tonic::codec::Encoder>::encode"
FAST_MD = "portcullis::foundation::codec::encode_struct_field"
CHECK_P = "<portcullis::transport::server::AuthzService as portcullis::foundation::proto::envoy::service::auth::v3::authorization_server::Authorization>::check::{{closure}}"
# Since issue 23 step 3 the server mounts its own route (src/transport/check_route.rs),
# whose answer is written from the Decision by src/decision/wire.rs.
CHECK_R = "<portcullis::transport::check_route::CheckCall as tonic::server::service::UnaryService<portcullis::foundation::proto::envoy::service::auth::v3::CheckRequest>>::call::{{closure}}"
WIRE_ENCODE = "<portcullis::transport::check_route::AnswerEncoder as tonic::codec::Encoder>::encode"
CHECK_C = "<const_authz::Constant as portcullis::foundation::proto::envoy::service::auth::v3::authorization_server::Authorization>::check::{{closure}}"
ALLOC = ["mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "mi_free", "malloc", "free", "realloc", "calloc"]

rows = []  # (level, stage, floor, portcullis)
def table(name):
    n, total, incl, edges = load(name)
    cost, like = coster(incl)
    def edge(caller, callee):
        """Inclusive cost of CALLER's calls into CALLEE."""
        return edges.get((caller, callee), 0)
    c = {}
    c["total"] = total
    c["conn"] = cost(CONN)
    c["stream"] = cost(H2STREAM)
    c["body"] = cost(BODY)
    c["decode"] = cost(DECODE)
    c["encode"] = cost(WIRE_ENCODE, FAST_ENCODE, ENCODE)
    c["check"] = cost(CHECK_R, CHECK_P, CHECK_C)
    c["stream_rest"] = c["stream"] - c["body"] - c["encode"] - c["check"]
    c["rest"] = total - c["conn"] - c["stream"]
    c["alloc"] = sum(cost(f) for f in ALLOC)
    c["memcpy"] = like(r"^__memcpy_avx_unaligned_erms$|^__memmove")
    c["sip"] = cost("<core::hash::sip::Hasher<S> as core::hash::Hasher>::write")
    # portcullis' handler, stage by stage
    c["run"] = cost("portcullis::pipeline::Pipeline::run", "portcullis::pipeline::Pipeline::run_async::{{closure}}")
    c["authn"] = cost("portcullis::identity::authenticate::authenticate")
    c["verify_cached"] = cost("portcullis::identity::jwt::verify_cached")
    vc = "portcullis::identity::jwt::verify_cached"
    # SHA-256 of the token before issue 23; the keyed SipHash since (inlined
    # into verify_cached or not, by the name of what it calls).
    c["sha"] = (edge(vc, "sha2::sha256::soft::compress") + edge(vc, "digest::FixedOutput::finalize_fixed")
                + edge(vc, "portcullis::identity::cache_key::CacheKey::of")
                + edge(vc, "<siphasher::sip128::Hasher<S> as core::hash::Hasher>::write")
                + edge(vc, "<siphasher::sip128::Hasher<S> as siphasher::sip128::Hasher128>::finish128"))
    c["cache_get"] = edge(vc, "<dashmap::DashMap<K,V,S> as dashmap::t::Map<K,V,S>>::_get")
    c["counters"] = edge(vc, "portcullis::identity::counters::token_cache")
    c["hit_clone"] = edge(vc, "<portcullis::identity::jwt::Verified as core::clone::Clone>::clone")
    c["evaluate"] = cost("portcullis::policy::evaluate::<impl portcullis::policy::tenant::CompiledTenant>::evaluate_within")
    c["read"] = cost("portcullis::request::read::read")
    c["outcome"] = cost("portcullis::decision::respond::outcome")
    c["identified"] = cost("portcullis::decision::respond::identified")
    c["begin"] = cost("portcullis::decision::respond::begin")
    c["tenant"] = cost("portcullis::request::tenancy::TenantResolver::resolve")
    c["revocation"] = cost("portcullis::tenants::store::PolicyStore::revocation_unavailable") + cost("portcullis::tenants::store::PolicyStore::revocations")
    c["drop_input"] = cost("core::ptr::drop_in_place<portcullis::request::input::Input>")
    c["uuid"] = cost("<uuid::rng::imp::RngImp as uuid::rng::Rng>::u128") + cost("uuid::fmt::format_simple")
    rd = "portcullis::request::input::Input::from_check_request_within"
    c["read_maps"] = edge(rd, "<alloc::collections::btree::map::BTreeMap<K,V> as core::iter::traits::collect::FromIterator<(K,V)>>::from_iter")
    c["read_path"] = edge(rd, "portcullis::request::path::canonical_segments")
    c["read_body"] = edge(rd, "portcullis::request::body::body_of")
    ev = "portcullis::policy::evaluate::<impl portcullis::policy::tenant::CompiledTenant>::evaluate_within"
    c["holds"] = edge(ev, "portcullis::policy::evaluate::<impl portcullis::policy::tenant::CompiledTenant>::holds")
    c["render"] = cost("portcullis::decision::render::render")
    c["render_md"] = edge("portcullis::decision::render::render", "alloc::collections::btree::map::BTreeMap<K,V,A>::insert")
    c["encode_md"] = (edge(ENCODE, "prost::encoding::btree_map::encode") + edge(ENCODE, "prost::encoding::btree_map::encoded_len")
                      + cost(FAST_MD) + edge(WIRE_ENCODE, "portcullis::decision::wire::dynamic_metadata"))
    c["metrics_labels"] = edge("portcullis::observe::metrics::Metrics::observe_decision", "hashbrown::map::HashMap<K,V,S,A>::get")
    c["metrics"] = cost("portcullis::observe::metrics::Metrics::observe_decision")
    c["telemetry"] = sum(cost("portcullis::observe::telemetry::" + f) for f in ("parent_from_metadata", "client_link", "trace_id", "attach"))
    # The handler's own calls into tracing (the spans inside Pipeline::run
    # are inlined there and, at RUST_LOG=warn, disabled).
    c["tracing"] = sum(v for (a, b), v in edges.items()
                       if a in (CHECK_P, CHECK_R) and re.match(r"(core::ptr::drop_in_place<)?tracing", b))
    c["audit"] = cost("portcullis::observe::audit::RequestSummary::of") + cost("portcullis::observe::audit::DecisionLog::record")
    c["drop_request"] = cost("core::ptr::drop_in_place<tonic::request::Request<portcullis::foundation::proto::envoy::service::auth::v3::CheckRequest>>")
    c["drop_decision"] = cost("core::ptr::drop_in_place<portcullis::decision::Decision>")
    c["timeout"] = cost("portcullis::transport::server::grpc_timeout")
    return n, {k: v / n for k, v in c.items()}

nf, f = table("const")
np_, p = table("one")
T = p["total"]
def line(stage, key, floor=True):
    fv = f"{f[key]:,.0f}" if floor else "—"
    fp = f"{100 * f[key] / f['total']:.1f}%" if floor else ""
    print(f"| {stage} | {fv} | {fp} | {p[key]:,.0f} | {100 * p[key] / T:.1f}% |")
def derived(stage, value, fvalue=None):
    fv = f"{fvalue:,.0f}" if fvalue is not None else "—"
    fp = f"{100 * fvalue / f['total']:.1f}%" if fvalue is not None else ""
    print(f"| {stage} | {fv} | {fp} | {value:,.0f} | {100 * value / T:.1f}% |")

print(f"Checks profiled: {nf:,} (floor), {np_:,} (portcullis).")
print()
print("| stage (inclusive) | floor instr/check | % of floor | portcullis instr/check | % of portcullis |")
print("|---|---:|---:|---:|---:|")
line("**whole process** (PROGRAM TOTALS)", "total")
line("transport: connection task (h2 frame read/write, HPACK; user space only)", "conn")
line("transport: request body + prost decode of CheckRequest", "body")
line("&nbsp;&nbsp;of which prost decode (`Message::decode`)", "decode")
line("transport: encode of CheckResponse (prost; the one-pass codec after issue 23)", "encode")
line("&nbsp;&nbsp;of which the dynamic metadata `Struct` (btree_map encode + encoded_len; `encode_struct_field`)", "encode_md")
line("transport: rest of the stream task (hyper/tonic/tower stack, response headers, trailers)", "stream_rest")
line("runtime: rest of the process (tokio scheduler, I/O driver, wakers)", "rest")
line("**handler** (`Authorization::check` future)", "check")
run_rest = p["run"] - p["authn"] - p["evaluate"] - p["read"] - p["outcome"] - p["identified"] - p["begin"] - p["tenant"] - p["revocation"] - p["drop_input"] - p["uuid"]
line("&nbsp;&nbsp;input: `request::read` (`Input::from_check_request`, headers, path, query, body)", "read", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which owned header + context-extension `BTreeMap`s", "read_maps", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which canonical path segments", "read_path", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which body", "read_body", False)
line("&nbsp;&nbsp;input: dropping the owned `Input`", "drop_input", False)
line("&nbsp;&nbsp;tenant: `TenantResolver::resolve`", "tenant", False)
line("&nbsp;&nbsp;decision id (uuid v4 + text)", "uuid", False)
line("&nbsp;&nbsp;identity: `identity::authenticate`", "authn", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which token hash (cache key: SHA-256 before issue 23, keyed SipHash-2-4 after)", "sha", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which cache lookup (`DashMap` get)", "cache_get", False)
derived("&nbsp;&nbsp;&nbsp;&nbsp;of which cache hit copy (`Verified::clone`) and hit counter", p["hit_clone"] + p["counters"])
derived("&nbsp;&nbsp;&nbsp;&nbsp;of which the rest (bearer parse, DPoP scheme, binding, claims)", p["authn"] - p["sha"] - p["cache_get"] - p["hit_clone"] - p["counters"])
line("&nbsp;&nbsp;revocation checks", "revocation", False)
line("&nbsp;&nbsp;evaluation: `policy::evaluate` (`evaluate_within`)", "evaluate", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which the rule's conditions (`holds`)", "holds", False)
derived("&nbsp;&nbsp;response: `respond::begin` + `identified` + `outcome` (headers, seal)", p["begin"] + p["identified"] + p["outcome"])
derived("&nbsp;&nbsp;rest of `Pipeline::run` (stage glue, Decision moves)", run_rest)
line("&nbsp;&nbsp;response: `decision::render` (CheckResponse, dynamic metadata)", "render", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which dynamic metadata fields (`BTreeMap` inserts)", "render_md", False)
line("&nbsp;&nbsp;metrics: `Metrics::observe_decision`", "metrics", False)
line("&nbsp;&nbsp;&nbsp;&nbsp;of which label-set lookup (`HashMap::get`)", "metrics_labels", False)
line("&nbsp;&nbsp;tracing: span enter/record (spans off at `RUST_LOG=warn`)", "tracing", False)
line("&nbsp;&nbsp;telemetry: trace context from metadata, client link, trace id", "telemetry", False)
line("&nbsp;&nbsp;audit: `RequestSummary::of` + `DecisionLog::record` (log off)", "audit", False)
line("&nbsp;&nbsp;dropping the decoded `CheckRequest`", "drop_request", True)
derived("&nbsp;&nbsp;rest of the handler (grpc-timeout, Decision drop, copies, permits)",
        p["check"] - p["run"] - p["render"] - p["metrics"] - p["tracing"] - p["telemetry"] - p["audit"] - p["drop_request"])
print()
print("Cross-cutting, already inside the rows above (not to be added):")
print()
print("| inside the rows above | floor instr/check | % of floor | portcullis instr/check | % of portcullis |")
print("|---|---:|---:|---:|---:|")
line("allocator (mimalloc + libc malloc/free entry points)", "alloc")
line("memcpy/memmove", "memcpy")
line("SipHash (std `HashMap` keys: decoded header maps, label sets)", "sip")
PY
}

if [[ -n $ANNOTATE_ONLY ]]; then
  annotate
  exit 0
fi

for tool in valgrind callgrind_annotate callgrind_control h2load curl taskset; do
  command -v "$tool" >/dev/null || { log "$tool missing"; exit 1; }
done
if [[ -z ${BIN_DIR:-} ]]; then
  log "building (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example const_authz --example fixtures)
  BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
FIX=$OUT/fixtures
"$BIN_DIR/examples/fixtures" "$FIX" 200 50 >&2

GRPC_PATH=/envoy.service.auth.v3.Authorization/Check
# shellcheck source=tests/bench/callgrind_load.sh
. "$ROOT/tests/bench/callgrind_load.sh"
profile() { # NAME PORT ARGS...: as run.sh's profile()
  local name=$1
  local out=$OUT/callgrind-$name
  callgrind_load "$@" || return 1
  grep '^requests:' "$out.h2load" >&2
  echo "$PROFILE_N" >"$out.n"
}

log "callgrind: const floor, $PROFILE_N checks"
profile const "$PORT_BASE" "$BIN_DIR/examples/const_authz" "127.0.0.1:$PORT_BASE" --transport portcullis
cat >"$OUT/one.yaml" <<YAML
listen: 127.0.0.1:$((PORT_BASE + 1))
admin_listen: 127.0.0.1:$((PORT_BASE + 2))
policies: $FIX/one
tenancy: { sources: [context_extension] }
reload: { debounce: 50ms, rescan_interval: 1h }
decision_log: { output: "off" }
YAML
log "callgrind: portcullis (token cache on), $PROFILE_N checks"
RUST_LOG=warn profile one "$((PORT_BASE + 1))" "$BIN_DIR/portcullis" serve --config "$OUT/one.yaml"
annotate
for name in const one; do
  printf '%s: ' "$name"
  python3 "$ROOT/tests/bench/callgrind_counts.py" "$OUT/callgrind-$name.out.1" "$PROFILE_N" | tr '\n' ' '
  echo
done
log "profiles kept under $OUT"
