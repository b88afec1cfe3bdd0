#!/usr/bin/env bash
# CPU profile of ws-uring under a loadgen scenario: perf record → flamegraph SVG
# and a top-functions report.
#
#   scripts/profile.sh                                  echo workload, scenario high, 20 s
#   scripts/profile.sh --workload ping --shards 1 --duration 10s --svg docs/flamegraph-ping.svg
#
# Steps: build the `profiling` cargo profile (release + full debug info), start
# the server on 127.0.0.1 with an ephemeral port, attach `perf record` (cycles
# when the CPU exposes hardware counters, cpu-clock otherwise, as in most VMs)
# and `perf stat`, drive it with target/release/loadgen for the scenario, stop
# everything, then fold the stacks with inferno into:
#   OUT/flamegraph.svg      the flamegraph (inferno-flamegraph)
#   OUT/top-functions.txt   top functions by self and by inclusive samples
#   OUT/perf-stat.txt       counters for the measured window
#   OUT/loadgen.json        the loadgen's results for the same window
#   OUT/stacks.folded       the folded stacks, for inferno-diff-folded
#
# Needs: perf (Debian: apt-get install linux-perf), inferno (cargo install
# inferno), root or kernel.perf_event_paranoid <= 1, and target/release/loadgen
# (cargo build --release -p loadgen). PROFILE_LOAD_CMD replaces the loadgen
# with any shell command; it gets WS_URL, CONNECTIONS, DURATION_S, WORKLOAD
# and LOADGEN_THREADS in its environment.
#
# Exit status: 0 done; 1 a step failed (the message says which); 2 usage or a
# missing tool.

set -uo pipefail

readonly PROG=scripts/profile.sh
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR

SCENARIO=high
WORKLOAD="echo"
CONNECTIONS=
DURATION=20s
SHARDS=$(nproc)
SERVER_MODE=--echo
FREQ=499
CALL_GRAPH=dwarf,16384
OUT=
SVG=
TOP=25
SERVER_BIN=
BUILD=1
LOADGEN_THREADS=
LABEL=

usage() {
    cat <<EOF
usage: $PROG [options]
  --scenario NAME       loadgen scenario (default high)
  --workload NAME       echo or ping (default echo)
  --connections N       override the scenario's connection count
  --duration D          measured phase, as loadgen takes it: 20s, 500ms, 1m (default 20s)
  --shards N            server shards (default: cores, $(nproc))
  --loadgen-threads N   loadgen executor threads (default: the loadgen's, all cores)
  --protocol            run the server in protocol mode (default: --echo mode)
  --freq HZ             samples per second per CPU (default 499)
  --call-graph MODE     perf call-graph mode: dwarf[,STACK_BYTES] or fp (default dwarf,16384)
  --out DIR             output directory (default target/profile/SCENARIO-WORKLOAD)
  --svg PATH            also copy the flamegraph here (e.g. docs/flamegraph-echo.svg)
  --top N               functions in the text report (default 25)
  --server PATH         profile this binary instead of building the profiling profile
  --label TEXT          added to the flamegraph title and report header (e.g. a commit)
EOF
}

die() {
    local status=$1
    shift
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "$status"
}
step() { printf '==> %s\n' "$*"; }

while (($#)); do
    case $1 in
        --protocol) SERVER_MODE= ;;
        --scenario | --workload | --connections | --duration | --shards | --loadgen-threads | --freq | --call-graph | --out | --svg | --top | --server | --label)
            (($# >= 2)) || die 2 "$1 needs a value"
            case $1 in
                --scenario) SCENARIO=$2 ;;
                --workload) WORKLOAD=$2 ;;
                --connections) CONNECTIONS=$2 ;;
                --duration) DURATION=$2 ;;
                --shards) SHARDS=$2 ;;
                --loadgen-threads) LOADGEN_THREADS=$2 ;;
                --freq) FREQ=$2 ;;
                --call-graph) CALL_GRAPH=$2 ;;
                --out) OUT=$2 ;;
                --svg) SVG=$2 ;;
                --top) TOP=$2 ;;
                --label) LABEL=$2 ;;
                --server)
                    SERVER_BIN=$2
                    BUILD=0
                    ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die 2 "unknown argument: $1"
            ;;
    esac
    shift
done

OUT=${OUT:-$REPO_DIR/target/profile/$SCENARIO-$WORKLOAD}
LOADGEN=$REPO_DIR/target/release/loadgen

# Seconds in a loadgen duration (30, 30s, 500ms, 2m, 1h), rounded up.
duration_seconds() {
    local d=$1
    case $d in
        *ms) echo $(((${d%ms} + 999) / 1000)) ;;
        *s) echo "${d%s}" ;;
        *m) echo $((${d%m} * 60)) ;;
        *h) echo $((${d%h} * 3600)) ;;
        *) echo "$d" ;;
    esac
}
DURATION_S=$(duration_seconds "$DURATION")
[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -gt 0 ]] || die 2 "cannot read --duration $DURATION"
for number in "$SHARDS" "$FREQ" "$TOP" ${CONNECTIONS:+"$CONNECTIONS"} ${LOADGEN_THREADS:+"$LOADGEN_THREADS"}; do
    [[ $number =~ ^[0-9]+$ && $number -gt 0 ]] || die 2 "expected a positive integer, got '$number'"
done

# ---------------------------------------------------------------- tools

command -v perf >/dev/null || die 2 "perf not found: apt-get install linux-perf (Debian) or linux-tools-\$(uname -r) (Ubuntu)"
for tool in inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || die 2 "$tool not found: cargo install inferno (and put ~/.cargo/bin on PATH)"
done
if [[ -z ${PROFILE_LOAD_CMD:-} && ! -x $LOADGEN ]]; then
    die 2 "loadgen not found at $LOADGEN: build it with 'cargo build --release -p loadgen' (or set PROFILE_LOAD_CMD)"
fi
if ! perf record -q -e cpu-clock -o /dev/null -- true 2>/dev/null; then
    die 2 "perf cannot sample: run as root, or lower kernel.perf_event_paranoid to 1 (sysctl -w kernel.perf_event_paranoid=1)"
fi

# Hardware counters exist on bare metal and on VMs that pass the PMU through;
# elsewhere the only sampling clock is the cpu-clock software event.
if perf stat -x, -e cycles -- true 2>&1 | grep -q '^[0-9]'; then
    EVENT=cycles
    STAT_EVENTS=task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions,branches,branch-misses,cache-references,cache-misses
else
    EVENT=cpu-clock
    STAT_EVENTS=task-clock,context-switches,cpu-migrations,page-faults
fi

# ---------------------------------------------------------------- build

if ((BUILD)); then
    step "building the profiling profile (release + debug info)"
    cargo_args=(build --profile profiling -p ws-uring)
    if ! grep -q '^\[profile\.profiling\]' "$REPO_DIR/Cargo.toml"; then
        echo "    Cargo.toml has no [profile.profiling]; passing it on the command line"
        cargo_args+=(--config 'profile.profiling.inherits="release"' --config 'profile.profiling.debug=true')
    fi
    (cd "$REPO_DIR" && cargo "${cargo_args[@]}") || die 1 "the profiling build failed (see above)"
    SERVER_BIN=$REPO_DIR/target/profiling/ws-uring
    if [[ -z $LABEL ]] && commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null); then
        LABEL="commit $commit"
        [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null) ]] && LABEL+=" + uncommitted changes"
    fi
fi
[[ -x $SERVER_BIN ]] || die 2 "no server binary at $SERVER_BIN"

mkdir -p "$OUT" || die 1 "cannot create $OUT"
rm -f "$OUT"/perf.data "$OUT"/perf.data.old

# ---------------------------------------------------------------- run

SERVER_PID='' RECORD_PID='' STAT_PID=''
cleanup() {
    local pid
    for pid in "$RECORD_PID" "$STAT_PID" "$SERVER_PID"; do
        [[ -n $pid ]] && kill "$pid" 2>/dev/null
    done
}
trap cleanup EXIT

step "starting $(basename "$SERVER_BIN") on 127.0.0.1 ($SHARDS shard(s)${SERVER_MODE:+, echo mode})"
# shellcheck disable=SC2086 # SERVER_MODE is one flag or nothing
RUST_LOG=${RUST_LOG:-info} "$SERVER_BIN" --host 127.0.0.1 --port 0 --shards "$SHARDS" $SERVER_MODE \
    >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
PORT=
for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$OUT/server.log" | head -1)
    [[ -n $PORT ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
[[ -n $PORT ]] || {
    cat "$OUT/server.log" >&2
    die 1 "the server did not log 'listening on 127.0.0.1:PORT' within 10 s"
}
WS_URL=ws://127.0.0.1:$PORT/ws

step "perf record -e $EVENT -F $FREQ --call-graph $CALL_GRAPH on pid $SERVER_PID"
perf record -q -e "$EVENT" -F "$FREQ" --call-graph "$CALL_GRAPH" -p "$SERVER_PID" -o "$OUT/perf.data" \
    2>"$OUT/perf-record.log" &
RECORD_PID=$!
perf stat -e "$STAT_EVENTS" -p "$SERVER_PID" -o "$OUT/perf-stat.txt" 2>/dev/null &
STAT_PID=$!
sleep 0.5

# The loadgen's own ramp-up is inside the sampled window too; a bounded wait
# (measured phase + 120 s for ramp-up and connection set-up) caps the run.
step "load: $WORKLOAD, scenario $SCENARIO, ${CONNECTIONS:-default} connections, $DURATION measured"
export WS_URL WORKLOAD DURATION_S CONNECTIONS LOADGEN_THREADS
if [[ -n ${PROFILE_LOAD_CMD:-} ]]; then
    timeout $((DURATION_S + 120)) bash -c "$PROFILE_LOAD_CMD" 2>&1 | tee "$OUT/load.log"
    load_status=${PIPESTATUS[0]}
else
    load_args=(--url "$WS_URL" --workload "$WORKLOAD" --scenario "$SCENARIO" --duration "$DURATION"
        --output "$OUT/loadgen.json")
    [[ -n $CONNECTIONS ]] && load_args+=(--connections "$CONNECTIONS")
    [[ -n $LOADGEN_THREADS ]] && load_args+=(--threads "$LOADGEN_THREADS")
    timeout $((DURATION_S + 120)) "$LOADGEN" "${load_args[@]}" 2>&1 | tee "$OUT/load.log"
    load_status=${PIPESTATUS[0]}
fi

kill -INT "$RECORD_PID" "$STAT_PID" 2>/dev/null
wait "$RECORD_PID" "$STAT_PID" 2>/dev/null
RECORD_PID='' STAT_PID=''
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
server_status=$?
SERVER_PID=''
((load_status == 0)) || die 1 "the load command failed with status $load_status (see $OUT/load.log)"
((server_status == 0)) || die 1 "the server exited with status $server_status on SIGTERM (see $OUT/server.log)"
[[ -s $OUT/perf.data ]] || die 1 "perf recorded nothing (see $OUT/perf-record.log)"

# ---------------------------------------------------------------- report

step "folding stacks and drawing the flamegraph"
# Without the period field every sample counts 1 (cpu-clock periods are
# nanoseconds); --kernel marks kernel frames with _[k], which the java palette
# draws orange (Rust paths with :: yellow, C red).
perf script -i "$OUT/perf.data" -F comm,pid,tid,time,event,ip,sym,dso 2>/dev/null |
    inferno-collapse-perf --kernel >"$OUT/stacks.folded" ||
    die 1 "perf script | inferno-collapse-perf failed"
[[ -s $OUT/stacks.folded ]] || die 1 "no stacks in $OUT/perf.data"
title="ws-uring ${SERVER_MODE:+echo mode }· $WORKLOAD · $SCENARIO · $SHARDS shard(s) · $EVENT @ ${FREQ} Hz${LABEL:+ · $LABEL}"
inferno-flamegraph --title "$title" --countname samples --minwidth 0.25 --colors java <"$OUT/stacks.folded" >"$OUT/flamegraph.svg" ||
    die 1 "inferno-flamegraph failed"

# Self = samples whose innermost frame is the function; inclusive = samples
# with the function anywhere on the stack (counted once per stack).
top_functions() {
    local total kind title
    total=$(awk '{ s += $NF } END { print s + 0 }' "$OUT/stacks.folded")
    printf '%d samples\n\n' "$total"
    # Innermost frame in the kernel or in user space, and the system call
    # (the frame after do_syscall_64) each kernel sample ran under.
    awk -v total="$total" -v calls_file="$OUT/syscalls.tsv" '
        {
            count = $NF
            n = split(substr($0, 1, length($0) - length(count) - 1), frames, ";")
            if (frames[n] !~ /_\[k\]$/) { user += count; next }
            kernel += count
            call = "(no system call: interrupts, scheduler, io_uring workers)"
            for (i = 1; i < n; i++) if (frames[i] == "do_syscall_64_[k]") { call = frames[i + 1]; break }
            calls[call] += count
        }
        END {
            printf "Where the CPU was\n%8d %6.2f%%  user space (ws-uring, glommio, std, libc)\n", user, 100 * user / total
            printf "%8d %6.2f%%  kernel\n", kernel, 100 * kernel / total
            for (c in calls) printf "%d\t%s\n", calls[c], c >calls_file
        }
    ' "$OUT/stacks.folded"
    printf '\nKernel samples by system call\n'
    sort -t $'\t' -k1,1nr "$OUT/syscalls.tsv" | head -n 8 |
        awk -F '\t' -v total="$total" '{ sub(/_\[k\]$/, "", $2); printf "%8d %6.2f%%  %s\n", $1, 100 * $1 / total, $2 }'
    rm -f "$OUT/syscalls.tsv"
    echo
    for kind in self inclusive; do
        if [[ $kind == self ]]; then
            title="Top functions by self samples (innermost frame, inlined functions included; [k] = kernel)"
        else
            title="Top functions by inclusive samples (anywhere on the stack; thread roots on >= 98% of stacks left out)"
        fi
        printf '%s\n%8s %7s  %s\n' "$title" samples share function
        awk -v kind="$kind" -v total="$total" '
            {
                count = $NF
                n = split(substr($0, 1, length($0) - length(count) - 1), frames, ";")
                if (kind == "self") { sum[frames[n]] += count; next }
                split("", seen)
                for (i = 1; i <= n; i++)
                    if (!(frames[i] in seen)) { sum[frames[i]] += count; seen[frames[i]] = 1 }
            }
            END { for (name in sum) if (kind == "self" || sum[name] < 0.98 * total) printf "%d\t%s\n", sum[name], name }
        ' "$OUT/stacks.folded" | sort -t $'\t' -k1,1nr | head -n "$TOP" |
            awk -F '\t' -v total="$total" '{ sub(/_\[k\]$/, " [k]", $2); printf "%8d %6.2f%%  %s\n", $1, 100 * $1 / total, $2 }'
        echo
    done
}
{
    echo "# $title"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r), $(nproc) CPU(s), $SERVER_BIN"
    echo "# load ($(grep -m1 -o 'workload=.*' "$OUT/load.log" || echo "$WORKLOAD"), scenario $SCENARIO):"
    grep -E "^(scenario|$SCENARIO) " "$OUT/load.log" | sed 's/^/#   /'
    echo "# server CPU: $(grep -m1 'task-clock' "$OUT/perf-stat.txt" | sed 's/^ *//; s/  */ /g')"
    echo
    top_functions
    echo "perf stat over the same window:"
    grep -v '^#' "$OUT/perf-stat.txt" | sed '/^$/d'
} >"$OUT/top-functions.txt"

if [[ -n $SVG ]]; then
    if ! mkdir -p "$(dirname "$SVG")" || ! cp "$OUT/flamegraph.svg" "$SVG"; then
        die 1 "cannot write $SVG"
    fi
fi

step "done"
sed -n '/^Where the CPU was/,/^Top functions by inclusive/p' "$OUT/top-functions.txt" | head -n 30
echo "flamegraph:    $OUT/flamegraph.svg${SVG:+ (copied to $SVG)}"
echo "top functions: $OUT/top-functions.txt"
echo "perf data:     $OUT/perf.data (perf report -i $OUT/perf.data)"
