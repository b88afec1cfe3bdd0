#!/usr/bin/env bash
# The /demo page in real browsers: starts ws-uring on a free loopback port and
# runs tests/browser/demo-test.mjs (playwright-core driving Debian's Chromium):
# two users chat in a group, send a direct message with ack, and get a message
# that waited in the mailbox while the page was closed. Screenshots go to
# $ARTIFACT_DIR (default target/). Exits with the test's status.
#
# Non-interactive and idempotent; run as root (it may apt-get install chromium).
#   scripts/browser-test.sh            needs target/release/ws-uring
#   WS_URING_BIN=path                  another server binary
#   DEMO_FROM_FILE=1                   serve src/demo.html from a separate
#                                      loopback HTTP server (before the server
#                                      has its /demo route) and point the page
#                                      at the server with ?server=
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${WS_URING_BIN:-$REPO_ROOT/target/release/ws-uring}"
TEST_DIR="$REPO_ROOT/tests/browser"
export ARTIFACT_DIR="${ARTIFACT_DIR:-$REPO_ROOT/target}"
export CI="${CI:-true}"
export DEBIAN_FRONTEND=noninteractive
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
WORK="$(mktemp -d)"
SERVER_PID=""
HTTP_PID=""

stop() { # stop PID: TERM, a bounded wait, then KILL
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    stop "$HTTP_PID"
    stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "browser-test: FAILED: $*" >&2; exit 1; }

# ---- tools ----
if [[ ! -x /usr/bin/chromium ]]; then
    echo "browser-test: installing Debian's chromium"
    apt-get update -qq </dev/null && apt-get install -y -qq chromium </dev/null >/dev/null
fi
[[ -x /usr/bin/chromium ]] || fail "/usr/bin/chromium is missing"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "browser-test: installing Debian's nodejs and npm"
    apt-get update -qq </dev/null && apt-get install -y -qq nodejs npm </dev/null >/dev/null
fi
[[ -x "$BIN" ]] || fail "$BIN not built (cargo build --release)"

echo "browser-test: node deps (tests/browser)"
if [[ -f "$TEST_DIR/package-lock.json" ]]; then
    (cd "$TEST_DIR" && npm ci --no-audit --no-fund --loglevel=error </dev/null) || fail "npm ci failed"
else
    (cd "$TEST_DIR" && npm install --no-audit --no-fund --loglevel=error </dev/null) || fail "npm install failed"
fi

# ---- the server ----
"$BIN" --host 127.0.0.1 --port 0 --shards 2 --no-persist </dev/null >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT="$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/server.log" | head -n1 | cut -d: -f2 || true)"
    [[ -n "$PORT" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
[[ -n "$PORT" ]] || fail "server did not start within 10 s: $(cat "$WORK/server.log")"
echo "browser-test: ws-uring on 127.0.0.1:$PORT (pid $SERVER_PID)"

DEMO_URL="http://127.0.0.1:$PORT/demo"
if [[ "${DEMO_FROM_FILE:-0}" == "1" ]]; then
    mkdir -p "$WORK/www"
    cp "$REPO_ROOT/src/demo.html" "$WORK/www/demo.html"
    python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$WORK/www" </dev/null >"$WORK/http.log" 2>&1 &
    HTTP_PID=$!
    HTTP_PORT=""
    for _ in $(seq 1 50); do
        HTTP_PORT="$(grep -o 'port [0-9]*' "$WORK/http.log" | head -n1 | cut -d' ' -f2 || true)"
        [[ -n "$HTTP_PORT" ]] && break
        sleep 0.1
    done
    [[ -n "$HTTP_PORT" ]] || fail "static HTTP server did not start: $(cat "$WORK/http.log")"
    DEMO_URL="http://127.0.0.1:$HTTP_PORT/demo.html"
    export DEMO_SERVER="ws://127.0.0.1:$PORT/ws"
    echo "browser-test: page served from $DEMO_URL, server $DEMO_SERVER"
else
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$DEMO_URL" || true)"
    [[ "$code" == "200" ]] || fail "GET $DEMO_URL answered HTTP $code (is the /demo route in this build? DEMO_FROM_FILE=1 tests src/demo.html without it)"
fi

# ---- the test ----
status=0
(cd "$TEST_DIR" && timeout 90 node demo-test.mjs "$DEMO_URL" </dev/null) || status=$?
if [[ $status -ne 0 ]]; then
    echo "browser-test: server log (last 30 lines):" >&2
    tail -n 30 "$WORK/server.log" >&2
fi

stop "$SERVER_PID"
SERVER_PID=""
exit "$status"
