#!/usr/bin/env bash
# Tests for scripts/compare_summary.py (and compare.sh --pool), on result
# files made up here: counts, ties, sign-test values, pairing by file and
# round, and the errors for bad input; and compare.sh's ws-uring@KEY=VALUE
# peers, with stand-ins for ws-uring and the loadgen. Runs no real server
# and no loadgen.
#
#   bash scripts/test-compare-summary.sh     prints one line per check, then "N passed, N failed"

set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUMMARY=$REPO_DIR/scripts/compare_summary.py
COMPARE=$REPO_DIR/scripts/compare.sh
WORK=$(mktemp -d /tmp/test-compare-summary.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok   %s\n' "$1"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL %s\n' "$1"
    [[ -n ${2:-} ]] && printf '     %s\n' "$2"
    sed 's/^/     | /' "$WORK/out" | head -20
}

# result FILE CONNECTIONS ROWS...: a compare.sh result; each row is
# "peer:round:msg_per_s:p99_us[:workload[:cpu_us_per_msg]]" (CPU per message
# by default 0.99 s over msg_per_s, as for a server 99 % busy; "none": the
# sampler had no figure, as for a round that received nothing). RATE=R in the environment: an open-loop run at R msg/s.
result() {
    local file=$1 connections=$2
    shift 2
    python3 - "$file" "$connections" "${RATE:-}" "$@" <<'PYEOF'
import json, sys
file, connections, rate, *rows = sys.argv[1:]
peers = []
for row in rows:
    peer, rnd, msgs, p99, *rest = row.split(":")
    workload = rest[0] if rest else "echo"
    cpu = rest[1] if len(rest) > 1 else (round(99e4 / int(msgs), 2) if int(msgs) else "none")
    cpu = None if cpu == "none" else float(cpu)
    peers.append({"peer": peer, "round": int(rnd), "workload": workload,
                  "msg_per_s": int(msgs), "p50_us": int(p99) * 3 // 4, "p99_us": int(p99), "p999_us": int(p99) + 100,
                  "errors": 0, "grade": "A", "errors_by_kind": {}, "server_cpu_percent": 99.0,
                  "server_cpu_us_per_msg": cpu, "slowest_connection_vs_median": 1.0})
json.dump({"schema": "ws-uring-compare/1", "date": "2026-12-05", "connections": int(connections), "duration_s": 10.0,
           "in_flight": 1, "message_bytes": 32, "echo_rate_msg_per_s": int(rate) if rate else None, "peers": peers},
          open(file, "w"))
PYEOF
}

# run ARGS...: the summary's output in $WORK/out, its status in $STATUS.
run() {
    python3 "$SUMMARY" "$@" >"$WORK/out" 2>&1
    STATUS=$?
}

# expect NAME TEXT: the last run exited 0 and printed TEXT.
expect() {
    if [[ $STATUS -ne 0 ]]; then
        fail "$1" "exit status $STATUS"
    elif grep -qF -- "$2" "$WORK/out"; then
        pass "$1"
    else
        fail "$1" "missing: $2"
    fi
}

# refused NAME TEXT: the last run exited 2 and said TEXT.
refused() {
    if [[ $STATUS -eq 2 ]] && grep -qF -- "$2" "$WORK/out"; then
        pass "$1"
    else
        fail "$1" "expected exit 2 and: $2 (status $STATUS)"
    fi
}

# Two files. Against uws-js, ws-uring is faster in rounds a1, a2, b1, b2 and
# slower in a3: 4 of 5, p = 6/32. Its p99 is lower in a1 and b1, level in
# a2, higher in a3 and b2: 2 of the 4 untied, p = 11/16. raw-echo's third
# round has no ws-uring round beside it in file b and is not paired.
result "$WORK/a.json" 2000 \
    ws-uring:1:330000:8000 uws-js:1:300000:8400 \
    ws-uring:2:320000:8100 uws-js:2:310000:8100 \
    ws-uring:3:300000:8500 uws-js:3:330000:8000 \
    ws-uring-pubsub:1:3000000:2000000:publish uws-js-pubsub:1:800000:4000000:publish
result "$WORK/b.json" 2000 \
    ws-uring:1:340000:7900 uws-js:1:320000:8200 raw-echo:1:300000:8800 \
    ws-uring:2:335000:8300 uws-js:2:330000:8200 raw-echo:2:310000:8100 \
    raw-echo:3:999999:1000

run "$WORK/a.json" "$WORK/b.json"
expect "pools both files' rounds" "uws-js               5 rounds"
expect "counts the rounds ws-uring is faster in, with the sign test" \
    "ws-uring faster in 4 of 5; if the two were equal, 4 or more of 5 has p = 0.188"
expect "leaves level p99s out of the test and says so" \
    "ws-uring p99 lower in 2 of 5, level in 1; if the two were equal, 2 or more of 4 has p = 0.688"
expect "lists every round of a peer" "raw-echo             3 rounds"
expect "pairs a round only with ws-uring's round of the same number in the same file" \
    "ws-uring faster in 2 of 2; if the two were equal, 2 or more of 2 has p = 0.25"
expect "reports the peer's median msg/s ratio and range" "msg/s 0.97x (0.91-1.10x)"
expect "reports the median p99 ratio" "p99 ws-uring / uws-js: median 1.000x"
expect "counts the rounds ws-uring spends less CPU per message in" \
    "ws-uring cheaper per message in 4 of 5; if the two were equal, 4 or more of 5 has p = 0.188"
expect "says the runs were closed loop" "pooled echo rounds (closed loop) from 2 files"
if grep -q "pubsub" "$WORK/out"; then
    fail "leaves the fan-out rows out" "a pubsub row was summarized"
else
    pass "leaves the fan-out rows out"
fi

# Open loop: every server carries the offered rate, so no msg/s verdict;
# CPU per message and p99 decide, and a round without its CPU figure is
# left out of the CPU count.
RATE=250000 result "$WORK/open.json" 2000 \
    ws-uring:1:250000:2000:echo:3.40 uws-js:1:250000:2100:echo:3.50 \
    ws-uring:2:250000:2300:echo:3.45 uws-js:2:250000:2200:echo:3.44 \
    ws-uring:3:250000:2400:echo:none uws-js:3:250000:2500:echo:3.50
run "$WORK/open.json"
expect "says the runs were open loop, at which rate" "pooled echo rounds (open loop at 250000 msg/s)"
expect "judges open loop on p99" "ws-uring p99 lower in 2 of 3; if the two were equal, 2 or more of 3 has p = 0.5"
expect "judges open loop on CPU, without the round that lacks it" \
    "ws-uring cheaper per message in 1 of 2; if the two were equal, 1 or more of 2 has p = 0.75"
if grep -q "faster in" "$WORK/out"; then
    fail "gives no msg/s verdict in open loop" "a 'faster in' line was printed"
else
    pass "gives no msg/s verdict in open loop"
fi
run "$WORK/a.json" "$WORK/open.json"
refused "refuses to pool closed and open loop" "echo_rate_msg_per_s None against 250000"

# A round that received nothing (the loadgen reports msg/s 0 and p99 0)
# loses on msg/s and takes no part in the p99 and CPU counts, nor in the
# medians; a CPU figure of 0 (no samples) takes no part in the CPU count.
result "$WORK/failed.json" 2000 \
    ws-uring:1:0:0 uws-js:1:300000:8400 \
    ws-uring:2:330000:8000 uws-js:2:0:0 \
    ws-uring:3:330000:8000:echo:0 uws-js:3:300000:8400 \
    ws-uring:4:330000:8000 uws-js:4:300000:8400
run "$WORK/failed.json"
expect "says how many rounds received nothing" "ws-uring             4 rounds (1 received nothing)  p99 median 8.00 ms"
expect "counts a round that received nothing as lost on msg/s" \
    "ws-uring faster in 3 of 4; if the two were equal, 3 or more of 4 has p = 0.312"
expect "leaves rounds that received nothing out of the p99 count" \
    "ws-uring p99 lower in 2 of 2; if the two were equal, 2 or more of 2 has p = 0.25"
expect "leaves a CPU figure of 0 out of the CPU count" \
    "ws-uring cheaper per message in 1 of 1; if the two were equal, 1 or more of 1 has p = 0.5"
expect "leaves rounds that received nothing out of the p99 ratio" "p99 ws-uring / uws-js: median 0.952x"

# A sign test that clears the bar: 10 wins of 10 is 1/1024.
rows=()
for k in 1 2 3 4 5 6 7 8 9 10; do rows+=("ws-uring:$k:330000:8000" "uws-js:$k:300000:8400"); done
result "$WORK/ten.json" 2000 "${rows[@]}"
run "$WORK/ten.json"
expect "ten wins of ten have p = 1/1024" "10 or more of 10 has p = 0.000977"

bash "$COMPARE" --pool "$WORK/a.json" "$WORK/b.json" >"$WORK/pool" 2>&1
pool_status=$?
python3 "$SUMMARY" "$WORK/a.json" "$WORK/b.json" >"$WORK/direct" 2>&1
if [[ $pool_status -eq 0 ]] && grep -q "^pooled echo rounds" "$WORK/pool" && cmp -s "$WORK/pool" "$WORK/direct"; then
    pass "compare.sh --pool prints the same summary"
else
    cp "$WORK/pool" "$WORK/out"
    fail "compare.sh --pool prints the same summary"
fi
bash "$COMPARE" --rounds 2 --pool "$WORK/a.json" >"$WORK/out" 2>&1
STATUS=$?
refused "compare.sh refuses --pool after run options" "--pool comes first"

# compare.sh's ws-uring@KEY=VALUE peers, with stand-ins for ws-uring (a
# listener that writes down its flags, one line per start; its --help is
# argh's, with two settings that take a value and one switch) and the
# loadgen (one result of 1000 msg/s, 2 ms p99, as the real one writes it).
# A malformed peer is refused before anything is written or started.
cat >"$WORK/fake-ws-uring" <<EOF
#!/usr/bin/env bash
if [ "\$1" = --help ]; then
    echo 'Usage: ws-uring [--echo] [--no-persist] [--port <port>] [--nap-max-us <nap-max-us>] [--hibernate-after-ms <hibernate-after-ms>]'
    printf '\nOptions:\n  --nap-max-us      naps\n  --no-persist      no data directory\n  --help, help      display usage information\n'
    exit 0
fi
echo "\$*" >>"$WORK/fake-args"
# A value the stand-in refuses, as ws-uring refuses a bad setting: at once.
if [[ " \$* " == *" --nap-max-us 7 "* ]]; then echo "error: nap_max_us: 7 is refused" >&2; exit 2; fi
port=""
while [ \$# -gt 0 ]; do [ "\$1" = --port ] && port="\$2"; shift; done
exec python3 -c 'import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
time.sleep(30)' "\$port"
EOF
cat >"$WORK/fake-loadgen" <<'PYEOF'
#!/usr/bin/env python3
import json, sys, time
args = sys.argv[1:]
if args == ["--help"]:
    print("  --no-server-sample")
    sys.exit(0)
summary = {"window_s": 1.0, "msg_per_s": 1000.0, "errors_total": 0, "errors": {},
           "latency_us": {"p50": 1000, "p99": 2000, "p999": 3000}}
scenario = {"name": "baseline", "workload": args[args.index("--workload") + 1],
            "started_unix_ms": int(time.time() * 1000), "measure_from_s": 0.0,
            "summary": summary, "grade": {"grade": "A+"}}
json.dump({"scenarios": [scenario]}, open(args[args.index("--output") + 1], "w"))
PYEOF
chmod +x "$WORK/fake-ws-uring" "$WORK/fake-loadgen"
# compare_only PEERS: compare.sh --only PEERS with the stand-ins; output in
# $WORK/out, status in $STATUS.
compare_only() {
    local here="$WORK"
    rm -rf "$here/peers" "$here/fake-args"
    WS_URING="$here/fake-ws-uring" LOADGEN="$here/fake-loadgen" WORK="$here/peers" \
        bash "$COMPARE" --skip-build --no-fanout --duration 1 --only "$1" >"$WORK/out" 2>&1 </dev/null
    STATUS=$?
}
# refused_early NAME TEXT: refused (as `refused`), nothing written or started.
refused_early() {
    if [[ -e "$WORK/peers" || -e "$WORK/fake-args" ]]; then
        fail "$1" "compare.sh wrote $WORK/peers or started a server before refusing"
    else
        refused "$1" "$2"
    fi
}
compare_only ","
refused_early "compare.sh refuses an --only that names no peer" "--only names no peer"
compare_only "ws-uring,ws-uring@port=9"
refused_early "compare.sh refuses a variant that sets the port" "sets port, which compare.sh sets for every server itself"
compare_only "ws-uring@shards=2"
refused_early "compare.sh refuses a variant that sets the shard count" "sets shards, which compare.sh sets"
compare_only "ws-uring@NAP=1"
refused_early "compare.sh refuses a variant key that is not a setting's name" "'NAP=1' in 'ws-uring@NAP=1' is not KEY=VALUE"
compare_only 'ws-uring@nap_max_us=0;true'
refused_early "compare.sh refuses a variant value with other characters" "is not KEY=VALUE"
compare_only "ws-uring@data_dir=a/b"
refused_early "compare.sh refuses a / in a value (it would be a path in the result names)" "is not KEY=VALUE"
compare_only "ws-uring@nap_max_us"
refused_early "compare.sh refuses a variant setting without a value" "is not KEY=VALUE"
compare_only "ws-uring@"
refused_early "compare.sh refuses a variant with no setting" "'ws-uring@' names no setting"
compare_only "ws-uring@nap_max_us=0@"
refused_early "compare.sh refuses a variant ending in @" "names no setting after its last @"
compare_only "ws-uring@nap_max_uz=0"
refused_early "compare.sh refuses a setting the server does not have" "has no setting nap_max_uz that takes a value (flag --nap-max-uz"
compare_only "ws-uring@nap_max=0"
refused_early "compare.sh refuses a part of a setting's name" "has no setting nap_max that takes a value"
compare_only "ws-uring@no_persist=1"
refused_early "compare.sh refuses a switch given a value" "has no setting no_persist that takes a value"
started_at=$SECONDS
compare_only "ws-uring@nap_max_us=7"
if [[ $STATUS -eq 0 && $((SECONDS - started_at)) -lt 8 ]] && grep -qF "exited before listening" "$WORK/out" \
    && grep -qF "error: nap_max_us: 7 is refused" "$WORK/out"; then
    pass "compare.sh skips a server that exits at start at once, with its last log line"
else
    fail "compare.sh skips a server that exits at start at once, with its last log line" \
        "status $STATUS after $((SECONDS - started_at)) s"
fi
compare_only "ws-uring,ws-uring@nap_max_us=0@hibernate_after_ms=0"
variant_started=$(grep -c -- "^--echo --host 127.0.0.1 --port [0-9]* --shards 1 --nap-max-us 0 --hibernate-after-ms 0$" "$WORK/fake-args" 2>/dev/null)
plain_started=$(grep -c -- "^--echo --host 127.0.0.1 --port [0-9]* --shards 1$" "$WORK/fake-args" 2>/dev/null)
if [[ $STATUS -eq 0 && $variant_started == 1 && $plain_started == 1 ]]; then
    pass "compare.sh starts a variant as ws-uring with its settings' flags, beside plain ws-uring"
else
    fail "compare.sh starts a variant as ws-uring with its settings' flags, beside plain ws-uring" \
        "status $STATUS, started: $(tr '\n' '|' <"$WORK/fake-args" 2>/dev/null)"
fi
variant_rows=$(python3 - "$WORK/peers" <<'PYEOF' 2>&1
import glob, json, sys
doc = json.load(open(glob.glob(sys.argv[1] + "/results/*/compare-*.json")[0]))
print(" ".join(f"{r['peer']}:{r['round']}:{r['ratio_to_ws_uring']}" for r in doc["peers"]))
PYEOF
)
if [[ $variant_rows == "ws-uring:1:1.0 ws-uring@nap_max_us=0@hibernate_after_ms=0:1:1.0" ]]; then
    pass "compare.sh reports a variant as a peer of its own, paired with ws-uring's round"
else
    fail "compare.sh reports a variant as a peer of its own, paired with ws-uring's round" "rows: $variant_rows"
fi

# Bad input: a clear error and exit status 2, never a summary.
result "$WORK/other.json" 1000 ws-uring:1:330000:8000 uws-js:1:300000:8400
run "$WORK/a.json" "$WORK/other.json"
refused "refuses to pool different workloads" "ran another workload than $WORK/a.json (connections 2000 against 1000)"
run "$WORK/missing.json"
refused "refuses a missing file" "cannot read $WORK/missing.json"
printf '{"peers": [' >"$WORK/broken.json"
run "$WORK/broken.json"
refused "refuses a file that is not JSON" "is not JSON"
printf '{"schema": "something-else/1", "peers": []}' >"$WORK/foreign.json"
run "$WORK/foreign.json"
refused "refuses a JSON file that is not a compare.sh result" "is not a compare.sh result"
result "$WORK/fanout.json" 2000 ws-uring-pubsub:1:3000000:2000000:publish
run "$WORK/fanout.json"
refused "refuses results without an echo round" "no echo rounds in"
python3 - "$WORK/a.json" "$WORK/nop99.json" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
del doc["peers"][1]["p99_us"]
json.dump(doc, open(sys.argv[2], "w"))
PYEOF
run "$WORK/nop99.json"
refused "refuses a row without its p99" "a row lacks p99_us"
python3 - "$WORK/a.json" "$WORK/nullp99.json" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["peers"][1]["p99_us"] = None
doc["peers"][2]["round"] = "2"
json.dump(doc, open(sys.argv[2], "w"))
PYEOF
run "$WORK/nullp99.json"
refused "refuses a row whose figures are not numbers" "uws-js has a p99_us that is not a number"
run "$WORK/a.json" "$WORK/b.json" "$WORK/../$(basename "$WORK")/a.json"
refused "refuses a file given twice" "is given twice (also as $WORK/a.json)"
printf '\x1f\x8b\x08\x00\xff\xfe' >"$WORK/binary.json"
run "$WORK/binary.json"
refused "refuses a file that is not text" "is not JSON (not UTF-8 text)"
printf '{"schema": "ws-uring-compare/1", "peers": {"ws-uring": 1}}' >"$WORK/badpeers.json"
run "$WORK/badpeers.json"
refused "refuses peers that are not a list of rows" '"peers" is not a list of rows'
run
refused "refuses to run without a file" "Pools the echo rounds"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
