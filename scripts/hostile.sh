#!/usr/bin/env bash
# Hostile-client suite: starts ws-uring on a free loopback port with a fresh
# data directory, runs 500 well-behaved loadgen clients and, meanwhile, every
# attack of the `hostile` tool (slowloris, random bytes, oversize and endless
# frames, ping floods, never-readers, a connection flood past
# max_connections). Samples the server's RSS every 500 ms, then checks the
# server is healthy. Prints a summary; exits non-zero when the good clients'
# P99 >= 50 ms, they saw any error, an attack was not defended as
# documented, the server is not healthy afterwards, or its RSS peak is over
# the stated bound. Loopback only; everything stops by itself.
#
# Usage: scripts/hostile.sh [--quick] [--control] [--no-build] [--out DIR]
#   --quick     CI size: one round, fewer attackers (about 35 s)
#   --control   the same run without the attacks: the good clients' figures
#               on this machine as it is now, to compare with (shared cores)
#   --no-build  use the binaries already in target/release
#   --out DIR   keep the logs and JSON there (default: a fresh /tmp dir)
# Environment: GOOD_RATE (good clients' total msg/s, default 5000),
#   RSS_BOUND_MIB (override the computed RSS bound), WS_URING_BIN (another
#   server binary to attack, e.g. a branch's build).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

QUICK=0
CONTROL=0
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --control) CONTROL=1 ;;
        --no-build) BUILD=0 ;;
        --out) OUT="${2:?--out needs a directory}"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "hostile.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

# --- the run's shape --------------------------------------------------------
# The server's limits, passed to the server and to the hostile tool alike.
# Defaults everywhere except max_connections, lowered so that the flood
# (free slots + extra) fits this process's 20,000 descriptors.
MAX_CONNECTIONS=3000
MAX_MESSAGE_BYTES=1048576
HANDSHAKE_TIMEOUT_MS=10000
OUTBOX_MAX_BYTES=1048576
SLOW_CONSUMER_GRACE_MS=5000
SHUTDOWN_TIMEOUT_MS=2000
GOOD_CONNECTIONS=500
GOOD_RATE="${GOOD_RATE:-5000}"
P99_LIMIT_MS=50
if [ "$QUICK" = 1 ]; then
    HOSTILE_FLAGS=(--quick)
    SLOWLORIS=5000; RANDOM_CLIENTS=2000; FRAGMENT=20; NEVER_READ=10
    GOOD_SECONDS=24        # covers the quick attack run (about 18 s) with margin
    HOSTILE_LIMIT_S=60
else
    HOSTILE_FLAGS=(--rounds 2)
    SLOWLORIS=5000; RANDOM_CLIENTS=2000; FRAGMENT=50; NEVER_READ=20
    GOOD_SECONDS=56        # covers the two full rounds (about 50 s) with margin
    HOSTILE_LIMIT_S=110
fi
# RSS bound, from the documented per-connection limits: 64 MiB for the
# process itself (shards, rings, metrics, allocator slack); each endless
# fragmenter may hold one message of max_message_bytes (twice, counting the
# read buffer); each never-reader up to twice outbox_max_bytes plus one
# write: a 64 KiB batch from the outbox and up to 64 KiB of replies put
# straight into it; every socket (live, slowloris, random) 16 KiB.
MIB=$((1024 * 1024))
RSS_BOUND_BYTES=$((64 * MIB \
    + FRAGMENT * 2 * MAX_MESSAGE_BYTES \
    + NEVER_READ * (2 * OUTBOX_MAX_BYTES + 131072) \
    + (MAX_CONNECTIONS + SLOWLORIS + RANDOM_CLIENTS) * 16384))
if [ -n "${RSS_BOUND_MIB:-}" ]; then RSS_BOUND_BYTES=$((RSS_BOUND_MIB * MIB)); fi

# --- set-up and clean-up ----------------------------------------------------
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    WORK="$(cd "$OUT" && pwd)"
else
    WORK="$(mktemp -d /tmp/wsu-hostile.XXXXXX)"
fi
rm -rf "$WORK/data"
SERVER_PID=""; LOADGEN_PID=""; SAMPLER_PID=""
cleanup() {
    for pid in $SAMPLER_PID $LOADGEN_PID; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BUILD" = 1 ]; then
    echo "==> building (release)"
    cargo build --release -q -p ws-uring -p loadgen -p hostile
fi
BIN="$REPO_ROOT/target/release"
for b in ws-uring loadgen hostile; do
    [ -x "$BIN/$b" ] || { echo "hostile.sh: $BIN/$b missing (drop --no-build)" >&2; exit 1; }
done
SERVER_BIN="${WS_URING_BIN:-$BIN/ws-uring}"
[ -x "$SERVER_BIN" ] || { echo "hostile.sh: $SERVER_BIN is not executable" >&2; exit 1; }

echo "==> machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), ulimit -n $(ulimit -n)"
echo "==> work dir $WORK"

# --- the server -------------------------------------------------------------
RUST_LOG=info "$SERVER_BIN" --host 127.0.0.1 --port 0 --data-dir "$WORK/data" \
    --max-connections "$MAX_CONNECTIONS" --max-message-bytes "$MAX_MESSAGE_BYTES" \
    --handshake-timeout-ms "$HANDSHAKE_TIMEOUT_MS" --outbox-max-bytes "$OUTBOX_MAX_BYTES" \
    --slow-consumer-grace-ms "$SLOW_CONSUMER_GRACE_MS" \
    --shutdown-timeout-ms "$SHUTDOWN_TIMEOUT_MS" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
    PORT="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log" | head -1)"
    [ -n "$PORT" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$PORT" ]; then
    echo "hostile.sh: the server did not start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi
URL="ws://127.0.0.1:$PORT/ws"
echo "==> server $SERVER_BIN, pid $SERVER_PID, on $URL (max_connections $MAX_CONNECTIONS)"

# RSS every 500 ms: "<ms since start> <VmRSS kB>".
(
    t0=$(date +%s%N)
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$(( ($(date +%s%N) - t0) / 1000000 )) $rss"
        sleep 0.5
    done
) >"$WORK/rss.txt" &
SAMPLER_PID=$!

# --- good clients, then the attacks ----------------------------------------
echo "==> $GOOD_CONNECTIONS good clients: ping, open loop at $GOOD_RATE msg/s for ${GOOD_SECONDS} s"
timeout $((GOOD_SECONDS + 60)) "$BIN/loadgen" --url "$URL" --scenario moderate \
    --connections "$GOOD_CONNECTIONS" --workload ping --rate "$GOOD_RATE" \
    --duration "${GOOD_SECONDS}s" --output "$WORK/good.json" >"$WORK/loadgen.log" 2>&1 &
LOADGEN_PID=$!
sleep 4   # the moderate scenario's 3 s ramp-up: all good clients connected

HOSTILE_RC=0
if [ "$CONTROL" = 1 ]; then
    echo "==> control run: no attacks"
else
    echo "==> attacks (hostile ${HOSTILE_FLAGS[*]:-full})"
    # The attackers would not share the server's cores in the wild: on this
    # one machine they run at a lower priority so that their own CPU use
    # does not count against the server (what the attacks cost the server
    # still does).
    nice -n 10 timeout $((HOSTILE_LIMIT_S + 15)) "$BIN/hostile" --url "$URL" "${HOSTILE_FLAGS[@]}" \
        --server-pid "$SERVER_PID" --time-limit-s "$HOSTILE_LIMIT_S" \
        --slowloris "$SLOWLORIS" --random "$RANDOM_CLIENTS" --fragment "$FRAGMENT" \
        --never-read "$NEVER_READ" \
        --max-connections "$MAX_CONNECTIONS" --max-message-bytes "$MAX_MESSAGE_BYTES" \
        --handshake-timeout-ms "$HANDSHAKE_TIMEOUT_MS" --outbox-max-bytes "$OUTBOX_MAX_BYTES" \
        --slow-consumer-grace-ms "$SLOW_CONSUMER_GRACE_MS" \
        --shutdown-timeout-ms "$SHUTDOWN_TIMEOUT_MS" \
        --output "$WORK/hostile.json" >"$WORK/hostile.log" 2>&1 || HOSTILE_RC=$?
    # 0 and 1 are verdicts (summarised below); anything else is the tool failing.
    case "$HOSTILE_RC" in 0|1) ;; *) cat "$WORK/hostile.log" ;; esac
fi

LOADGEN_RC=0
wait "$LOADGEN_PID" || LOADGEN_RC=$?
LOADGEN_PID=""

# --- afterwards: alive, healthy, and a fresh client can echo ---------------
ALIVE=1
kill -0 "$SERVER_PID" 2>/dev/null || ALIVE=0
CHECK_RC=0
timeout 30 "$BIN/hostile" --url "$URL" --check --time-limit-s 20 \
    --output "$WORK/after.json" >"$WORK/after.log" 2>&1 || CHECK_RC=$?
HEALTH="$(python3 - "$PORT" <<'EOF' 2>&1 || true
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5) as r:
        body = json.load(r)
        print(r.status, body.get("status"), "connections", body.get("connections"))
except Exception as e:
    print("error", e)
EOF
)"
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

# --- summary ----------------------------------------------------------------
set +e
python3 - "$WORK" "$HOSTILE_RC" "$LOADGEN_RC" "$CHECK_RC" "$ALIVE" "$HEALTH" \
    "$P99_LIMIT_MS" "$RSS_BOUND_BYTES" "$CONTROL" <<'EOF'
import json, os, sys

work, hostile_rc, loadgen_rc, check_rc, alive, health, p99_limit_ms, rss_bound, control = sys.argv[1:10]
control = control == "1"
hostile_rc, loadgen_rc, check_rc, alive = int(hostile_rc), int(loadgen_rc), int(check_rc), alive == "1"
p99_limit_ms, rss_bound = float(p99_limit_ms), int(rss_bound)
failures = []

def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except Exception as e:
        failures.append(f"{name}: {e}")
        return None

hostile = None if control else load("hostile.json")
good = load("good.json")
after = load("after.json")
MiB = 1024 * 1024

print()
if control:
    print("control run: no attacks")
else:
    print(f"{'attack':<20} {'count':>6}  {'result':<6} {'ended min/p50/max ms':<22} outcome")
if hostile:
    several = len(hostile["rounds"]) > 1
    for t in hostile["attacks"]:
        name = f"{t['mode']} #{t['round']}" if several else t["mode"]
        d = t["disconnect"]
        timing = f"{d['min_ms']}/{d['p50_ms']}/{d['max_ms']}" if d["count"] else "-"
        outcome = ", ".join(f"{v}x {k}" for k, v in sorted(t["outcomes"].items(), key=lambda kv: -kv[1]))
        print(f"{name:<20} {t['clients']:>6}  {'PASS' if t['pass'] else 'FAIL':<6} {timing:<22} {outcome}")
        for f in t["failures"]:
            print(f"{'':<28} ! {f}")
        if not t["pass"]:
            failures.append(f"attack {name} not defended as documented")
if hostile_rc not in (0, 1):
    failures.append(f"hostile exited {hostile_rc}")
if hostile:
    for r in hostile["rounds"]:
        if r["server_rss_peak_bytes"] is not None:
            print(f"round {r['round']}: {r['wall_ms'] / 1000:.1f} s, server RSS peak "
                  f"{r['server_rss_peak_bytes'] / MiB:.1f} MiB, end {r['server_rss_end_bytes'] / MiB:.1f} MiB")

print()
if good and good.get("scenarios"):
    s = good["scenarios"][0]["summary"]
    lat = s["latency_us"]
    errors = s["errors_total"]
    p99_ms = lat["p99"] / 1000
    worst_second = max((p.get("p99_us") or 0 for p in good["scenarios"][0]["series"]), default=0) / 1000
    print(f"good clients: {good['scenarios'][0]['connections']} connections, "
          f"{s['msg_per_s']:.0f} msg/s, p50 {lat['p50'] / 1000:.2f} ms, p99 {p99_ms:.2f} ms, "
          f"p99.9 {lat['p999'] / 1000:.2f} ms, max {lat['max'] / 1000:.2f} ms, errors {errors}"
          + (f" {s['errors']}" if errors else ""))
    print(f"              worst one-second p99 {worst_second:.2f} ms; connect success "
          f"{s['connect']['succeeded']}/{s['connect']['attempted']}")
    series = good["scenarios"][0]["series"]
    print("              p99 per second (ms): "
          + " ".join(f"{(p.get('p99_us') or 0) / 1000:.0f}" for p in series))
    if p99_ms >= p99_limit_ms:
        failures.append(f"good clients' p99 {p99_ms:.2f} ms >= {p99_limit_ms:.0f} ms")
    if errors > 0:
        failures.append(f"good clients saw {errors} errors: {s['errors']}")
    if s["messages_received"] == 0:
        failures.append("good clients received nothing")
    # The good clients' measured window must cover the attacks.
    sc = good["scenarios"][0]
    if hostile:
        attacks_end_s = (hostile["started_unix_ms"] + hostile["wall_ms"] - sc["started_unix_ms"]) / 1000
        window_end_s = sc["measure_from_s"] + sc["duration_s"]
        print(f"              measured {sc['measure_from_s']:.0f}-{window_end_s:.0f} s; attacks "
              f"{(hostile['started_unix_ms'] - sc['started_unix_ms']) / 1000:.0f}-{attacks_end_s:.0f} s")
        if attacks_end_s > window_end_s:
            failures.append(f"the good clients stopped at {window_end_s:.0f} s, before the attacks "
                            f"({attacks_end_s:.0f} s): raise GOOD_SECONDS")
else:
    failures.append(f"no good-client results (loadgen exited {loadgen_rc})")

rss = []
with open(os.path.join(work, "rss.txt")) as f:
    for line in f:
        parts = line.split()
        if len(parts) == 2:
            rss.append((int(parts[0]), int(parts[1]) * 1024))
if rss:
    start, end = rss[0][1], rss[-1][1]
    peak_t, peak = max(rss, key=lambda x: x[1])
    print(f"server RSS:   start {start / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
          f"(at {peak_t / 1000:.1f} s), end {end / MiB:.1f} MiB; bound {rss_bound / MiB:.0f} MiB; "
          f"{len(rss)} samples")
    timeline = [f"{kb / MiB:.0f}" for t, kb in rss if t // 500 % 4 == 0]
    print("              RSS every 2 s (MiB): " + " ".join(timeline))
    if peak > rss_bound:
        failures.append(f"server RSS peak {peak / MiB:.1f} MiB over the bound {rss_bound / MiB:.0f} MiB")
else:
    failures.append("no RSS samples")

ok_after = alive and check_rc == 0 and health.startswith("200 ok")
echo = ", ".join(after["aftermath"]["outcomes"]) if after else "no result"
print(f"afterwards:   server {'alive' if alive else 'DEAD'}; /health: {health}; fresh client: {echo}")
if not ok_after:
    failures.append("server not healthy afterwards")

print()
if failures:
    for f in failures:
        print(f"FAIL: {f}")
    print("hostile.sh: FAIL")
    sys.exit(1)
print("hostile.sh: PASS")
EOF
RC=$?
set -e
echo "(load average now $(cut -d' ' -f1-3 /proc/loadavg); logs and JSON in $WORK)"
exit "$RC"
