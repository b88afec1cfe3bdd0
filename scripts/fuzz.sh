#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (docs/FUZZING.md), one at a time,
# each in one process on one core.
#
# Usage: scripts/fuzz.sh smoke           every target for SMOKE_SECONDS (20 s) each
#        scripts/fuzz.sh long [RUNS]     every target for RUNS executions (10,000,000)
#        scripts/fuzz.sh merge           add what the runs found that adds coverage
#                                        to the committed corpus (fuzz/corpus/)
#        FUZZ_TARGETS="command wal_record" scripts/fuzz.sh ...   only those targets
#
# Needs a nightly toolchain (sanitizer flags); installs cargo-fuzz if missing.
# Exit codes: 0 all ran clean; 1 a target crashed or failed to build (the
# input is in fuzz/artifacts/<target>/); 2 usage; 3 no nightly toolchain;
# 4 a long run hit its time limit (FUZZ_MAX_SECONDS, 4 h per target)
# before RUNS executions.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MODE="${1:-}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
TARGETS="${FUZZ_TARGETS:-command binary_header http_request wal_record}"
SMOKE_SECONDS="${SMOKE_SECONDS:-20}"
MAX_SECONDS="${FUZZ_MAX_SECONDS:-14400}"
# Per-input limit: a slow input is a finding (hang), not a reason to stall.
INPUT_TIMEOUT_S=10
WORK="fuzz/target/corpus-work"

usage() { sed -n '2,16p' "$0"; }

case "$MODE" in
    smoke) ;;
    long)
        RUNS="${2:-10000000}"
        [[ "$RUNS" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: RUNS must be a number" >&2; exit 2; }
        ;;
    merge) ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

# A nightly toolchain is required: cargo-fuzz builds with -Zsanitizer and
# sanitizer-coverage flags that stable rustc refuses. Say so, never pass.
if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1 \
    || ! cargo "+$TOOLCHAIN" --version 2>/dev/null | grep -q nightly; then
    echo "fuzz.sh: no nightly Rust toolchain ('$TOOLCHAIN'): cargo-fuzz cannot build the targets." >&2
    echo "fuzz.sh: install one with 'rustup toolchain install nightly', or rely on" >&2
    echo "fuzz.sh: tests/properties.rs (the same properties under proptest, run by cargo test)." >&2
    echo "fuzz.sh: NOT RUN" >&2
    exit 3
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "==> building the fuzz targets ($(cargo "+$TOOLCHAIN" --version))"
if ! cargo "+$TOOLCHAIN" fuzz build; then
    echo "fuzz.sh: the fuzz targets did not build" >&2
    exit 1
fi

BIN_DIR="fuzz/target/$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')/release"

if [ "$MODE" = merge ]; then
    for t in $TARGETS; do
        mkdir -p "$WORK/$t"
        before=$(ls "fuzz/corpus/$t" | wc -l)
        "$BIN_DIR/$t" -merge=1 "fuzz/corpus/$t" "$WORK/$t" >"fuzz/target/merge-$t.log" 2>&1 \
            || { echo "fuzz.sh: merge of $t failed: fuzz/target/merge-$t.log" >&2; exit 1; }
        echo "$t: $before -> $(ls "fuzz/corpus/$t" | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)"
    done
    exit 0
fi

failed=0
short=0
printf '%-14s %12s %10s %8s %8s %8s %s\n' target execs exec/s seconds cov ft result
summary=()
for t in $TARGETS; do
    mkdir -p "$WORK/$t" "fuzz/artifacts/$t"
    log="fuzz/target/fuzz-$MODE-$t.log"
    if [ "$MODE" = smoke ]; then
        limit=(-max_total_time="$SMOKE_SECONDS")
    else
        limit=(-runs="$RUNS" -max_total_time="$MAX_SECONDS")
    fi
    extra=()
    case "$t" in
        command|binary_header) extra+=(-dict=fuzz/dict/command.dict) ;;
        http_request) extra+=(-dict=fuzz/dict/http_request.dict) ;;
    esac
    echo "==> $t ($MODE), log in $log"
    started=$(date +%s)
    # New inputs go to the work corpus (ignored by git); the committed
    # corpus is only read.
    set +e
    "$BIN_DIR/$t" "${limit[@]}" "${extra[@]}" -timeout="$INPUT_TIMEOUT_S" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "$WORK/$t" "fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    seconds=$(( $(date +%s) - started ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ "$rc" -ne 0 ]; then
        result="CRASH (exit $rc): $(grep -o "Test unit written to .*" "$log" | tail -1)"
        failed=1
        grep -m1 -A3 "panicked at\|ERROR: AddressSanitizer\|ERROR: libFuzzer" "$log" >&2 || tail -20 "$log" >&2
    elif [ "$MODE" = long ] && [ "${execs:-0}" -lt "$RUNS" ]; then
        result="time limit ($MAX_SECONDS s) before $RUNS runs"
        short=1
    else
        result=ok
    fi
    line=$(printf '%-14s %12s %10s %8s %8s %8s %s' "$t" "${execs:-?}" "${rate:-?}" "$seconds" "${cov:-?}" "${ft:-?}" "$result")
    echo "$line"
    summary+=("$line")
done

echo "==> summary ($MODE, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
printf '%-14s %12s %10s %8s %8s %8s %s\n' target execs exec/s seconds cov ft result
printf '%s\n' "${summary[@]}"
if [ "$failed" = 1 ]; then exit 1; fi
if [ "$short" = 1 ]; then exit 4; fi
exit 0
