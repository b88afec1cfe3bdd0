#!/usr/bin/env bash
# Runs the client examples against a real server and fails if they do:
# examples/python_client.py (the `websockets` package) and
# examples/client.rs (ws_uring::client). Both assert what they receive.
#
# Usage: scripts/examples-test.sh   (needs target/release/ws-uring and the
#                                     client example, built by test.sh)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${WS_URING_BIN:-$REPO_ROOT/target/release/ws-uring}"
CLIENT="$REPO_ROOT/target/release/examples/client"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "examples-test: FAILED: $*" >&2; exit 1; }

python3 -c 'import websockets' 2>/dev/null \
    || python3 -m pip install -q websockets \
    || python3 -m pip install -q --break-system-packages websockets
[[ -x "$BIN" ]] || fail "$BIN not built"
[[ -x "$CLIENT" ]] || (cd "$REPO_ROOT" && cargo build --release --example client)

"$BIN" --host 127.0.0.1 --port 0 --shards 2 --no-persist >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT="$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/server.log" | cut -d: -f2 || true)"
    [[ -n "$PORT" ]] && break
    sleep 0.1
done
[[ -n "$PORT" ]] || fail "server did not start: $(cat "$WORK/server.log")"
URL="ws://127.0.0.1:$PORT/ws"

timeout 60 python3 "$REPO_ROOT/examples/python_client.py" "$URL" || fail "python_client.py"
timeout 60 "$CLIENT" "$URL" || fail "examples/client.rs"
echo "examples-test: ok (python_client.py and client.rs against $URL)"
