#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time and prints, per target, the
# executions and the findings (crash, timeout and leak artifacts).
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all targets)
#
# Installs cargo-fuzz into the git-ignored .tools/cargo when it is missing. Builds
# with the nightly toolchain when rustup has one; otherwise with stable and
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags). No sanitizer (-s none): the
# crate forbids unsafe code, and the C in aws-lc builds faster without ASan;
# what is looked for is panics, aborts and hangs. See docs/fuzzing.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-60}"
shift || true
export PATH="$root/.tools/cargo/bin:$PATH"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz into .tools/cargo" >&2
    cargo install --locked --root "$root/.tools/cargo" cargo-fuzz >&2
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

cargo "${toolchain[@]}" fuzz build -s none -O >&2

status=0
printf '%-16s %12s %10s %s\n' target execs findings note
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    before=$(find "artifacts/$t" -type f | wc -l)
    log="$(mktemp)"
    # -max_total_time bounds the run; -timeout flags any single input over 10 s
    # as a hang; -rss_limit_mb a leak or a blow-up.
    set +e
    cargo "${toolchain[@]}" fuzz run -s none -O "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -close_fd_mask=3 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    findings=$((after - before))
    note=""
    if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then
        status=1
        note="exit $rc; see artifacts/$t and $log"
        grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" >&2 || true
    else
        rm -f "$log"
    fi
    printf '%-16s %12s %10s %s\n' "$t" "${execs:-?}" "$findings" "$note"
done
exit "$status"
