#!/usr/bin/env bash
# Installs what the tests need and runs them all: formatting, lints, unit and
# integration tests, and the Autobahn|Testsuite conformance run.
# Exits non-zero on the first failing step; the last line summarises.
#
# Usage: scripts/test.sh [--no-autobahn]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

RUN_AUTOBAHN=1
for arg in "$@"; do
    case "$arg" in
        --no-autobahn) RUN_AUTOBAHN=0 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

passed=0
failed=0
step() {
    local name="$1"; shift
    echo "==> $name"
    local started=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "==> $name: ok ($((SECONDS - started)) s)"
    else
        failed=$((failed + 1))
        echo "==> $name: FAILED ($((SECONDS - started)) s)"
        echo "steps: $passed passed, $failed failed"
        exit 1
    fi
}

ensure_toolchain() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; return 1; }
    if command -v rustup >/dev/null; then
        cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
        cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
    fi
    # Autobahn and the metrics tests need python3; the Prometheus test
    # parses /metrics with the reference client library.
    command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-pip; }
    # jemalloc (the server's allocator) and ring build C with cc and make.
    command -v make >/dev/null && command -v cc >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential </dev/null
    }
    # The cluster tests run a real Redis (Debian's package).
    command -v redis-server >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server </dev/null
    }
    python3 -c 'import prometheus_client' 2>/dev/null \
        || python3 -m pip install -q prometheus_client \
        || python3 -m pip install -q --break-system-packages prometheus_client
}

step "toolchain" ensure_toolchain
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --release -- -D warnings
# Release build: the same binary then serves Autobahn without a second build.
step "cargo test" cargo test --workspace --release
step "hostile clients" scripts/hostile.sh --quick
step "client examples" scripts/examples-test.sh
step "dashboard in chromium" scripts/dashboard-test.sh
step "browser demo" scripts/browser-test.sh
step "tune.sh" bash scripts/test-tune.sh
step "compare summary" bash scripts/test-compare-summary.sh
step "latency trace" python3 scripts/test_latency_trace.py
if [ "$RUN_AUTOBAHN" = 1 ]; then
    step "autobahn" scripts/autobahn.sh
fi
echo "steps: $passed passed, $failed failed"
