#!/usr/bin/env bash
# The measurements behind the scaling guidance in docs/TUNING.md, re-runnable
# on any machine: everything targets 127.0.0.1 and every run is bounded.
#
#   tuning/measure.sh [cpu] [memory] [burst]     (default: all three)
#
#   cpu     echo throughput and server CPU per message, 1 shard vs all cores
#   memory  server RSS and kernel TCP memory with N mostly idle connections
#   burst   a connection spike inside a private network namespace, with the
#           namespace's stock net.* sysctls and then after scripts/tune.sh
#
# Needs target/release/ws-uring and target/release/loadgen
# (cargo build --release -p ws-uring -p loadgen); burst needs root for
# `unshare --net`. Results go to target/measure/ (JSON per run) and a
# markdown table on stdout. The loadgen runs on the same machine, so on a
# small box it competes with the server for CPU: the tables say how many
# cores each side had.
#
# Environment: MEASURE_OUT (default target/measure), MEASURE_MEMORY_CONNS
# (default "1000 5000 10000 18000"), MEASURE_BURST_CONNS (default 15000),
# MEASURE_BURST_ROUNDS (default 3), MEASURE_SECONDS (steady phase per run, default 10).

set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=${MEASURE_SERVER:-$REPO_DIR/target/release/ws-uring}
LOADGEN=${MEASURE_LOADGEN:-$REPO_DIR/target/release/loadgen}
OUT=${MEASURE_OUT:-$REPO_DIR/target/measure}
SECONDS_PER_RUN=${MEASURE_SECONDS:-10}
MEMORY_CONNS=${MEASURE_MEMORY_CONNS:-"1000 5000 10000 18000"}
BURST_CONNS=${MEASURE_BURST_CONNS:-15000}
BURST_ROUNDS=${MEASURE_BURST_ROUNDS:-3}
CORES=$(nproc)
TICKS=$(getconf CLK_TCK)

die() {
    printf 'tuning/measure.sh: %s\n' "$*" >&2
    exit 1
}
[[ -x $SERVER && -x $LOADGEN ]] || die "build first: cargo build --release -p ws-uring -p loadgen"
mkdir -p "$OUT" || die "cannot create $OUT"

SERVER_PID=''
trap '[[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null' EXIT

# Starts the echo server on an ephemeral port, optionally on the given CPUs
# (its shards pin themselves to the CPUs they are allowed); sets SERVER_PID and PORT.
start_server() {
    local shards=$1 log=$2 cpus=${3:-}
    ${cpus:+taskset -c "$cpus"} "$SERVER" --host 127.0.0.1 --port 0 --shards "$shards" --echo \
        --idle-timeout-ms 600000 --ping-interval-ms 300000 >"$log" 2>&1 &
    SERVER_PID=$!
    PORT=''
    local _
    for _ in $(seq 1 100); do
        PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
        [[ -n $PORT ]] && return 0
        sleep 0.1
    done
    cat "$log" >&2
    die "the server did not start"
}
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=''
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
tcp_mem_pages() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# ---------------------------------------------------------------- cpu

measure_cpu() {
    echo "### Echo throughput and server CPU per message ($CORES cores, loadgen on the same machine)"
    echo
    echo "| shards (CPUs) | loadgen threads (CPUs) | connections | msg/s | p50 ms | p99 ms | server CPU (cores) | server CPU µs/msg |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    local shards server_cpus threads loadgen_cpus conns last=$((CORES - 1))
    # One shard and one loadgen thread sharing CPU 0; one shard on its own
    # CPU against a loadgen on the others; every CPU shared by both sides.
    for run in "1 0 1 0 1000" "1 0 $((CORES > 2 ? CORES - 1 : 1)) 1-$last 100" \
        "1 0 $((CORES > 2 ? CORES - 1 : 1)) 1-$last 1000" "$CORES 0-$last $CORES 0-$last 1000"; do
        read -r shards server_cpus threads loadgen_cpus conns <<<"$run"
        local tag=cpu-s$shards-$server_cpus-t$threads-$loadgen_cpus-c$conns
        start_server "$shards" "$OUT/$tag.server.log" "$server_cpus"
        local t0 c0 t1 c1
        t0=$(date +%s.%N) c0=$(cpu_ticks "$SERVER_PID")
        timeout $((SECONDS_PER_RUN + 60)) taskset -c "$loadgen_cpus" "$LOADGEN" --url "ws://127.0.0.1:$PORT/ws" \
            --workload echo --scenario high --connections "$conns" --threads "$threads" \
            --duration "${SECONDS_PER_RUN}s" --output "$OUT/$tag.json" >"$OUT/$tag.loadgen.log" 2>&1 ||
            die "loadgen failed: $OUT/$tag.loadgen.log"
        t1=$(date +%s.%N) c1=$(cpu_ticks "$SERVER_PID")
        stop_server
        local s="d['scenarios'][0]['summary']"
        local total rate p50 p99
        total=$(json "$OUT/$tag.json" "${s}['total_received']")
        rate=$(json "$OUT/$tag.json" "round(${s}['msg_per_s'])")
        p50=$(json "$OUT/$tag.json" "${s}['latency_us']['p50']/1000")
        p99=$(json "$OUT/$tag.json" "${s}['latency_us']['p99']/1000")
        awk -v sh="$shards ($server_cpus)" -v th="$threads ($loadgen_cpus)" -v co="$conns" -v rate="$rate" \
            -v p50="$p50" -v p99="$p99" -v cpu=$((c1 - c0)) -v ticks="$TICKS" -v t0="$t0" -v t1="$t1" -v total="$total" \
            'BEGIN { wall = t1 - t0; printf "| %s | %s | %d | %d | %.2f | %.2f | %.2f | %.2f |\n",
                sh, th, co, rate, p50, p99, cpu / ticks / wall, cpu / ticks * 1e6 / total }'
    done
    echo
}

# ---------------------------------------------------------------- memory

measure_memory() {
    echo "### Memory with N connections (1 shard, 100 msg/s in total, 64-byte echo)"
    echo
    echo "| connections | server RSS MiB | RSS KiB/conn over idle | kernel TCP memory MiB (both ends) |"
    echo "|---:|---:|---:|---:|"
    local conns base_rss=''
    start_server 1 "$OUT/memory-idle.server.log"
    sleep 1
    base_rss=$(rss_kib "$SERVER_PID")
    stop_server
    awk -v rss="$base_rss" 'BEGIN { printf "| 0 (started, idle) | %.1f | - | - |\n", rss / 1024 }'
    for conns in $MEMORY_CONNS; do
        local tag=memory-c$conns
        start_server 1 "$OUT/$tag.server.log"
        timeout $((SECONDS_PER_RUN + 90)) "$LOADGEN" --url "ws://127.0.0.1:$PORT/ws" --workload echo \
            --scenario high --connections "$conns" --rate 100 --duration "${SECONDS_PER_RUN}s" \
            --output "$OUT/$tag.json" >"$OUT/$tag.loadgen.log" 2>&1 &
        local lg=$! max_rss=0 max_tcp=0 rss tcp
        while kill -0 "$lg" 2>/dev/null; do
            rss=$(rss_kib "$SERVER_PID") tcp=$(tcp_mem_pages)
            ((rss > max_rss)) && max_rss=$rss
            ((tcp > max_tcp)) && max_tcp=$tcp
            sleep 0.5
        done
        wait "$lg" || die "loadgen failed: $OUT/$tag.loadgen.log"
        stop_server
        local ok
        ok=$(json "$OUT/$tag.json" "d['scenarios'][0]['summary']['connect']['succeeded']")
        awk -v c="$ok" -v rss="$max_rss" -v base="$base_rss" -v tcp="$max_tcp" \
            'BEGIN { printf "| %d | %.1f | %.1f | %.1f |\n", c, rss / 1024, (rss - base) / c, tcp * 4 / 1024 }'
    done
    echo
}

# ---------------------------------------------------------------- burst

# TcpExt counters (this network namespace) named in $@, as "name value" lines.
tcpext() {
    awk -v want=" $* " '$1 == "TcpExt:" {
        if (!header) { for (i = 2; i <= NF; i++) name[i] = $i; header = 1; next }
        for (i = 2; i <= NF; i++) if (index(want, " " name[i] " ")) print name[i], $i
    }' /proc/net/netstat
}

# One spike run inside the current (private) network namespace.
burst_once() {
    local tag=burst-$1 label=$2
    local counters="ListenOverflows TCPReqQFullDrop SyncookiesSent"
    tcpext "$counters" >"$OUT/$tag.before"
    start_server "$CORES" "$OUT/$tag.server.log"
    timeout 120 "$LOADGEN" --url "ws://127.0.0.1:$PORT/ws" --workload ping --scenario spike \
        --connections "$BURST_CONNS" --rate 1000 --duration 6s \
        --output "$OUT/$tag.json" >"$OUT/$tag.loadgen.log" 2>&1
    stop_server
    tcpext "$counters" >"$OUT/$tag.after"
    local deltas
    deltas=$(awk 'NR == FNR { before[$1] = $2; next } { d[$1] = $2 - before[$1] }
        END { printf "%d | %d | %d", d["ListenOverflows"], d["TCPReqQFullDrop"], d["SyncookiesSent"] }' \
        "$OUT/$tag.before" "$OUT/$tag.after")
    local s="d['scenarios'][0]['summary']['connect']"
    printf '| %s | %s | %.0f | %.0f | %.0f | %s |\n' "$label" \
        "$(json "$OUT/$tag.json" "f\"{${s}['succeeded']}/{${s}['attempted']}\"")" \
        "$(json "$OUT/$tag.json" "${s}['time_us']['p50']/1000")" \
        "$(json "$OUT/$tag.json" "${s}['time_us']['p99']/1000")" \
        "$(json "$OUT/$tag.json" "${s}['time_us']['max']/1000")" \
        "$deltas"
}

measure_burst() {
    if ((EUID != 0)) || ! unshare --net true 2>/dev/null; then
        echo "(burst skipped: needs root and unshare --net)"
        return
    fi
    echo "### Connection spike: $BURST_CONNS connections then 10% more at once ($CORES shards, loadgen on the same machine)"
    echo
    echo "Each row runs in a fresh network namespace, so no TIME_WAIT sockets carry over."
    echo
    echo "| sysctls | connected | connect p50 ms | connect p99 ms | connect max ms | listen overflows | SYN queue drops | syncookies sent |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    export -f burst_once tcpext start_server stop_server json die
    export SERVER LOADGEN OUT BURST_CONNS CORES REPO_DIR
    local configs round tag label setup
    # tag | label | commands run inside the namespace before the spike
    configs=$(
        cat <<'EOF'
stock|namespace defaults (somaxconn 4096, syn backlog 2048, ports 32768-60999)|true
legacy|somaxconn 128, syn backlog 128 (defaults before kernel 5.4)|echo 128 >/proc/sys/net/core/somaxconn && echo 128 >/proc/sys/net/ipv4/tcp_max_syn_backlog
ports|defaults + ip_local_port_range 10000 65535 only|echo 10000 65535 >/proc/sys/net/ipv4/ip_local_port_range
tuned|scripts/tune.sh --only net. (every net.* setting)|TUNE_STATE_DIR=$(mktemp -d) "$REPO_DIR/scripts/tune.sh" --only net. --no-limits >"$OUT/burst-tune.log" 2>&1
EOF
    )
    # Rounds interleave the configurations, so drift on a shared machine hits all alike.
    for round in $(seq 1 "$BURST_ROUNDS"); do
        while IFS='|' read -r tag label setup; do
            # shellcheck disable=SC2016 # expanded by the inner bash
            unshare --net bash -c 'ip link set lo up && eval "$3" && burst_once "$1" "$2"' \
                _ "$tag-$round" "$label, run $round" "$setup"
        done <<<"$configs"
    done
    echo
}

sections=("$@")
((${#sections[@]})) || sections=(cpu memory burst)
echo "## ws-uring measurements: $(date -u +%Y-%m-%d), kernel $(uname -r), $CORES cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
echo
for section in "${sections[@]}"; do
    # Other work on the machine skews every figure: say how busy it was.
    echo "_load average before '$section': $(cut -d' ' -f1-3 /proc/loadavg)_"
    echo
    case $section in
        cpu) measure_cpu ;;
        memory) measure_memory ;;
        burst) measure_burst ;;
        *) die "unknown section $section (cpu, memory, burst)" ;;
    esac
done
