#!/usr/bin/env bash
# Checks that tuning/ws-uring.service's SystemCallFilter lets the server run:
# traces every system call ws-uring makes while the loadgen drives it (ping,
# then publish), and compares them with what the unit allows
# (@system-service minus @privileged and @obsolete).
#
#   tuning/check-syscalls.sh [SERVER_BIN]    (default target/release/ws-uring)
#
# Needs strace, systemd-analyze and target/release/loadgen. Exit 0 when every
# traced call is allowed, 1 otherwise (the list says which to add), 2 when a
# tool is missing. Run it after adding a feature that calls something new
# (a WAL's fdatasync, a new socket option) and before changing the filter.

set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=${1:-$REPO_DIR/target/release/ws-uring}
LOADGEN=$REPO_DIR/target/release/loadgen
WORK=$(mktemp -d /tmp/check-syscalls.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

for tool in strace systemd-analyze; do
    command -v "$tool" >/dev/null || {
        echo "tuning/check-syscalls.sh: $tool not found (apt-get install $tool)" >&2
        exit 2
    }
done
[[ -x $SERVER && -x $LOADGEN ]] || {
    echo "tuning/check-syscalls.sh: build first: cargo build --release -p ws-uring -p loadgen" >&2
    exit 2
}

# Every system call a filter expression allows, groups expanded.
expand() {
    systemd-analyze syscall-filter "$1" | sed 's/^ *//; /^#/d; /^$/d' | while read -r name; do
        [[ $name == "$1" ]] && continue
        if [[ $name == @* ]]; then expand "$name"; else echo "$name"; fi
    done
}

strace -f -qq -c -o "$WORK/strace.txt" "$SERVER" --host 127.0.0.1 --port 0 --shards 2 >"$WORK/server.log" 2>&1 &
TRACER=$!
PORT=''
for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log" | head -1)
    [[ -n $PORT ]] && break
    sleep 0.1
done
[[ -n $PORT ]] || {
    cat "$WORK/server.log" >&2
    exit 1
}
for workload in ping publish; do
    timeout 60 "$LOADGEN" --url "ws://127.0.0.1:$PORT/ws" --workload "$workload" --scenario baseline \
        --duration 3s >"$WORK/loadgen-$workload.log" 2>&1 || echo "loadgen $workload failed (see above); continuing"
done
# SIGTERM goes to the server (strace's child), so the shutdown path is traced too.
kill -TERM "$(pgrep -P "$TRACER")"
wait "$TRACER"

awk 'NR > 2 && $NF !~ /^-|^total$/ { print $NF }' "$WORK/strace.txt" | sort -u >"$WORK/used"
expand @system-service | sort -u >"$WORK/allowed"
{
    expand @privileged
    expand @obsolete
} | sort -u >"$WORK/denied"
missing=$(comm -23 "$WORK/used" "$WORK/allowed")
denied=$(comm -12 "$WORK/used" "$WORK/denied")
echo "system calls traced: $(tr '\n' ' ' <"$WORK/used")"
if [[ -z $missing && -z $denied ]]; then
    echo "all $(wc -l <"$WORK/used") are allowed by SystemCallFilter=@system-service ~@privileged @obsolete"
    exit 0
fi
[[ -n $missing ]] && echo "not in @system-service: $missing"
[[ -n $denied ]] && echo "blocked by ~@privileged @obsolete: $denied"
exit 1
