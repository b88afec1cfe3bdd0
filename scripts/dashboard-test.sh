#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium loads /dashboard from a
# running ws-uring, and we check that the page filled its tiles from
# /metrics.json (the same figures), shows no error banner, and logged no
# console error. A screenshot is kept in target/dashboard.png.
#
# Usage: scripts/dashboard-test.sh   (needs target/release/ws-uring)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${WS_URING_BIN:-$REPO_ROOT/target/release/ws-uring}"
OUT="$REPO_ROOT/target"
WORK="$(mktemp -d)"
SERVER_PID=""

cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "dashboard-test: FAILED: $*" >&2; exit 1; }

if ! command -v chromium >/dev/null; then
    echo "dashboard-test: installing Debian's chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[[ -x "$BIN" ]] || fail "$BIN not built (cargo build --release)"

"$BIN" --host 127.0.0.1 --port 0 --shards 2 --no-persist --metrics-interval-ms 200 \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT="$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/server.log" | cut -d: -f2 || true)"
    [[ -n "$PORT" ]] && break
    sleep 0.1
done
[[ -n "$PORT" ]] || fail "server did not start: $(cat "$WORK/server.log")"

# A connection, so the page has something non-zero to show.
python3 - "$PORT" <<'PY' &
import socket, sys, time, base64, os
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws?user=dash HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
time.sleep(8)
PY
CLIENT_PID=$!
sleep 0.5

CHROME=(chromium --headless --no-sandbox --disable-gpu --disable-quic --disable-background-networking
        --disable-component-update --disable-sync --no-first-run --user-data-dir="$WORK/profile"
        --enable-logging=stderr --v=0 --virtual-time-budget=4000 --window-size=1280,1000)
timeout 60 "${CHROME[@]}" --dump-dom "http://127.0.0.1:$PORT/dashboard" >"$WORK/dom.html" 2>"$WORK/chrome.log" \
    || fail "chromium did not render the page"
timeout 60 "${CHROME[@]}" --screenshot="$OUT/dashboard.png" "http://127.0.0.1:$PORT/dashboard" \
    >/dev/null 2>>"$WORK/chrome.log" || fail "chromium could not take a screenshot"

expected_conns="$(curl -s "http://127.0.0.1:$PORT/metrics.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gauges"]["connections"])')"
shown_conns="$(grep -o 'id="t-conn">[^<]*' "$WORK/dom.html" | sed 's/.*>//')"
server_name="$(grep -o 'id="server">[^<]*' "$WORK/dom.html" | sed 's/.*>//')"
banner="$(grep -o 'id="banner"[^>]*>[^<]*' "$WORK/dom.html" | sed 's/.*>//')"
kill "$CLIENT_PID" 2>/dev/null || true

[[ "$server_name" == ws-uring/* ]] || fail "server name not shown (got '$server_name')"
[[ "$expected_conns" == "1" ]] || fail "/metrics.json should count the one client (got $expected_conns)"
[[ "$shown_conns" == "$expected_conns" ]] || fail "page shows $shown_conns connections, /metrics.json says $expected_conns"
[[ -z "$banner" ]] || fail "error banner shown: $banner"
if grep -E 'Uncaught|ERROR:CONSOLE|"Uncaught' "$WORK/chrome.log" | grep -v -i 'favicon' >/dev/null; then
    grep -E 'Uncaught|CONSOLE' "$WORK/chrome.log" >&2
    fail "console errors"
fi
[[ -s "$OUT/dashboard.png" ]] || fail "no screenshot"
echo "dashboard-test: ok (page shows $shown_conns connection(s) as /metrics.json does; no console errors; screenshot $OUT/dashboard.png)"
