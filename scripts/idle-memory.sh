#!/usr/bin/env bash
# Memory per idle connection, and whether N connections are held: starts
# target/release/ws-uring on 127.0.0.1 (protocol mode, persistence on, its
# defaults otherwise), opens N WebSocket clients (Python `websockets`, 200
# connecting at a time, each waiting for `welcome`), lets them sit idle, and
# reports the server's VmRSS growth per connection, how many hibernated
# (`connections_hibernated` in /metrics.json), and that a sample of them
# still answers (an `echo` each) before all close. Bounded: gives up after
# 10 minutes. Not part of CI (it needs ~2 N file descriptors).
#
# Usage: scripts/idle-memory.sh [--connections N] [--idle-seconds S] [-- SERVER FLAGS...]
#        (defaults: 10000 connections, 8 s idle: past hibernate_after_ms)
# Prints one line of JSON last.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVER="${WS_URING:-$REPO/target/release/ws-uring}"
CONNECTIONS=10000
IDLE_SECONDS=8
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --idle-seconds) IDLE_SECONDS="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "idle-memory.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$SERVER" ] || { echo "idle-memory.sh: build first: cargo build --release" >&2; exit 2; }
python3 -c 'import websockets' 2>/dev/null || { echo "idle-memory.sh: needs python3 -m pip install websockets" >&2; exit 2; }

# Both ends need a descriptor per connection.
ulimit -n "$(ulimit -Hn)"
need=$((CONNECTIONS + 64))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    echo "idle-memory.sh: ulimit -n is $(ulimit -n), $need needed" >&2
    exit 2
fi

WORK="$(mktemp -d /tmp/wsu-idle.XXXXXX)"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

"$SERVER" --host 127.0.0.1 --port 0 --data-dir "$WORK/data" "$@" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log" | head -1)
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/server.log" >&2; echo "idle-memory.sh: server did not start" >&2; exit 1; }
sleep 1

timeout 600 python3 - "$PORT" "$SERVER_PID" "$CONNECTIONS" "$IDLE_SECONDS" <<'EOF'
import asyncio, json, random, sys, time, urllib.request
import websockets

port, pid, n, idle_s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
url = f"ws://127.0.0.1:{port}/ws"

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

def gauges():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=10) as r:
        return json.load(r)["gauges"]

async def open_one(i, conns):
    ws = await websockets.connect(f"{url}?user=idle{i}", ping_interval=None, max_queue=4,
                                  open_timeout=60)
    welcome = json.loads(await ws.recv())
    assert welcome["op"] == "welcome", welcome
    conns[i] = ws

async def main():
    before = rss_kib()
    conns = [None] * n
    started = time.time()
    for batch in range(0, n, 200):
        await asyncio.gather(*(open_one(i, conns) for i in range(batch, min(batch + 200, n))))
    connect_s = time.time() - started
    await asyncio.sleep(idle_s)
    after = rss_kib()
    g = gauges()
    # A sample answers: hibernated connections wake for their input.
    sample = random.sample(range(n), min(100, n))
    t0 = time.time()
    for i in sample:
        await conns[i].send(json.dumps({"op": "echo", "data": i, "ref": "s"}))
        answer = json.loads(await asyncio.wait_for(conns[i].recv(), 10))
        assert answer["data"] == i, answer
    sample_ms = (time.time() - t0) * 1000 / len(sample)
    result = {
        "connections": n, "held": g["connections"], "hibernated": g["connections_hibernated"],
        "rss_before_kib": before, "rss_after_kib": after,
        "bytes_per_connection": round((after - before) * 1024 / n),
        "connect_seconds": round(connect_s, 1), "idle_seconds": idle_s,
        "sample_echo_ms": round(sample_ms, 2),
    }
    print(f"{n} connections: {g['connections']} held, {g['connections_hibernated']} hibernating; "
          f"server RSS {before} -> {after} KiB: {result['bytes_per_connection']} bytes per idle "
          f"connection; a sample of {len(sample)} answered in {sample_ms:.2f} ms each")
    print(json.dumps(result))
    await asyncio.gather(*(ws.close() for ws in conns))
    if g["connections"] != n:
        sys.exit(f"only {g['connections']} of {n} connections held")

asyncio.run(main())
EOF
