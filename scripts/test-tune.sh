#!/usr/bin/env bash
# Tests for scripts/tune.sh that never alter this machine: apply/check/revert
# run against a fake sysctl tree (TUNE_PROC_SYS) and temp install dirs, limits
# are raised on a sleep process this test starts, and the real-kernel run
# happens inside a throwaway network namespace (net.* sysctls are per
# namespace), with the host values compared before and after.
#
#   bash scripts/test-tune.sh        prints one line per check, then "N passed, N failed"

set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TUNE=$REPO_DIR/scripts/tune.sh
WORK=$(mktemp -d /tmp/test-tune.XXXXXX)
chmod 0755 "$WORK"
PASSED=0
FAILED=0
CHILDREN=()

cleanup() {
    local pid
    for pid in "${CHILDREN[@]}"; do kill "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok   %s\n' "$1"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL %s\n' "$1"
    [[ -n ${2:-} ]] && printf '     %s\n' "$2"
    [[ -f $WORK/out ]] && sed 's/^/     | /' "$WORK/out" | head -40
    return 0
}
skip() { printf 'skip %s\n' "$1"; }

# Runs tune.sh with output in $WORK/out and status in $STATUS.
STATUS=0
tune() {
    "$TUNE" "$@" >"$WORK/out" 2>&1
    STATUS=$?
}
expect_status() {
    local name=$1 want=$2
    if [[ $STATUS == "$want" ]]; then pass "$name"; else fail "$name" "exit status $STATUS, expected $want"; fi
}
expect_output() {
    local name=$1 pattern=$2
    if grep -Eq -- "$pattern" "$WORK/out"; then pass "$name"; else fail "$name" "output lacks /$pattern/"; fi
}
normalize() { tr -s ' \t\n' '   ' | sed 's/^ //; s/ $//'; }
value_of() { normalize <"$FAKE/${1//.//}"; }
expect_value() {
    local key=$1 want=$2 got
    got=$(value_of "$key")
    if [[ $got == "$want" ]]; then pass "$key = $want"; else fail "$key = $want" "got '$got'"; fi
}
tree_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum; }
limits_of() { prlimit --pid "$1" "--$2" --raw --noheadings --output SOFT,HARD | normalize; }

# A fake /proc/sys with stock kernel values. netdev_max_backlog is missing on
# purpose (as inside a network namespace), nf_conntrack_max too (module not
# loaded), fs.file-max is already above the recommendation and must stay.
FAKE=$WORK/proc/sys
make_fake_tree() {
    rm -rf "$WORK/proc"
    local key value
    while read -r key value; do
        mkdir -p "$(dirname "$FAKE/${key//.//}")"
        printf '%b\n' "$value" >"$FAKE/${key//.//}"
    done <<'EOF'
net.core.somaxconn 4096
net.ipv4.tcp_max_syn_backlog 1024
net.ipv4.tcp_syncookies 1
net.ipv4.ip_local_port_range 32768\t60999
net.ipv4.tcp_tw_reuse 2
net.ipv4.tcp_fin_timeout 60
net.ipv4.tcp_max_tw_buckets 131072
fs.file-max 9223372036854775807
fs.nr_open 1048576
net.core.rmem_max 212992
net.core.wmem_max 212992
net.ipv4.tcp_rmem 4096\t131072\t6291456
net.ipv4.tcp_wmem 4096\t16384\t4194304
net.ipv4.tcp_slow_start_after_idle 1
kernel.io_uring_disabled 0
EOF
}

# A process with low limits, standing in for the shell the server starts from.
start_target() {
    sleep 600 &
    TARGET=$!
    CHILDREN+=("$TARGET")
    prlimit --pid "$TARGET" --nofile=1024:4096 --memlock=65536:1048576
}

export TUNE_PROC_SYS=$FAKE
export TUNE_STATE_DIR=$WORK/state
export TUNE_SYSCTL_D=$WORK/etc/sysctl.d
export TUNE_LIMITS_D=$WORK/etc/security/limits.d
export TUNE_SYSTEMD_DIR=$WORK/etc/systemd/system

echo "== usage"
tune --bogus
expect_status "unknown argument exits 2" 2
tune --shards 0
expect_status "--shards 0 exits 2" 2
tune --revert --persist
expect_status "--persist with --revert exits 2" 2

echo "== check on a stock tree"
make_fake_tree
start_target
tune --check --pid "$TARGET"
expect_status "--check exits 1 when short" 1
expect_output "--check flags somaxconn SHORT" '^net\.core\.somaxconn +4096 +65536 +min +SHORT'
expect_output "--check shows a range rule" '^net\.ipv4\.ip_local_port_range +32768 60999 +10000 65535 +range +SHORT'
expect_output "--check accepts a higher fs.file-max" '^fs\.file-max +9223372036854775807 .* ok$'
expect_output "--check reports a key absent in this namespace" '^net\.core\.netdev_max_backlog .*n/a'
expect_output "--check reports an optional key absent" '^net\.netfilter\.nf_conntrack_max .*absent \(optional\)'
expect_output "--check rows for the target's nofile" "^nofile soft \\(pid $TARGET sleep\\) +1024 +100064 +min +SHORT"
expect_output "--check says what fits the limits" 'max_connections up to 960, shards up to 0'

echo "== dry run"
before=$(tree_hash "$FAKE")
limits_before="$(limits_of "$TARGET" nofile) / $(limits_of "$TARGET" memlock)"
tune --dry-run --pid "$TARGET"
expect_status "--dry-run exits 0" 0
expect_output "--dry-run shows the change" '^would  net\.core\.somaxconn: 4096 -> 65536$'
expect_output "--dry-run keeps the wider half of a vector" '^would  net\.ipv4\.tcp_rmem: 4096 131072 6291456 -> 4096 131072 16777216$'
expect_output "--dry-run shows the limit change" "^would  nofile of pid $TARGET sleep: 1024:4096 -> (1048576:1048576|4096:4096)"
if [[ $(tree_hash "$FAKE") == "$before" ]]; then pass "--dry-run changes no sysctl"; else fail "--dry-run changes no sysctl"; fi
if [[ "$(limits_of "$TARGET" nofile) / $(limits_of "$TARGET" memlock)" == "$limits_before" ]]; then
    pass "--dry-run changes no limit"
else
    fail "--dry-run changes no limit"
fi
if [[ ! -e $TUNE_STATE_DIR/saved ]]; then pass "--dry-run records no state"; else fail "--dry-run records no state"; fi

echo "== apply"
tune --pid "$TARGET"
expect_status "apply exits 0" 0
expect_value net.core.somaxconn 65536
expect_value net.ipv4.tcp_max_syn_backlog 65536
expect_value net.ipv4.ip_local_port_range "10000 65535"
expect_value net.ipv4.tcp_tw_reuse 1
expect_value net.ipv4.tcp_fin_timeout 15
expect_value net.ipv4.tcp_rmem "4096 131072 16777216"
expect_value net.ipv4.tcp_wmem "4096 65536 16777216"
expect_value net.ipv4.tcp_slow_start_after_idle 0
expect_value fs.file-max 9223372036854775807
if [[ ! -e $FAKE/net/core/netdev_max_backlog ]]; then pass "apply creates no absent key"; else fail "apply creates no absent key"; fi
read -r soft hard <<<"$(limits_of "$TARGET" nofile)"
if ((soft == hard && soft >= 4096)); then
    pass "apply raises nofile soft to the hard limit at least ($soft:$hard)"
else
    fail "apply raises nofile soft to the hard limit at least" "got $soft:$hard"
fi
read -r soft hard <<<"$(limits_of "$TARGET" memlock)"
if ((soft == hard && soft >= 1048576)); then
    pass "apply raises memlock soft to the hard limit at least ($soft:$hard)"
else
    fail "apply raises memlock soft to the hard limit at least" "got $soft:$hard"
fi
if grep -q 'CapEff:.*' /proc/self/status && ! (($(printf '%d' "0x$(awk '/^CapEff:/ {print $2}' /proc/self/status)") >> 24 & 1)); then
    expect_output "apply explains a hard limit it cannot raise" 'no CAP_SYS_RESOURCE here'
    expect_output "apply says what still works" '^What still works here: .*'
fi
saved_after_first=$(sha256sum <"$TUNE_STATE_DIR/saved")
expect_output "apply says how to undo" 'undo with: sudo scripts/tune.sh --revert'

tune --check --pid "$TARGET" --max-connections 1000 --shards 1
expect_status "--check exits 0 after apply (sized for 1000 connections, 1 shard)" 0

echo "== apply is idempotent"
hash_applied=$(tree_hash "$FAKE")
tune --pid "$TARGET"
expect_status "second apply exits 0" 0
expect_output "second apply changes nothing" '^changed 0, '
if [[ $(tree_hash "$FAKE") == "$hash_applied" ]]; then pass "second apply leaves the tree alone"; else fail "second apply leaves the tree alone"; fi
if [[ $(sha256sum <"$TUNE_STATE_DIR/saved") == "$saved_after_first" ]]; then
    pass "second apply keeps the first originals"
else
    fail "second apply keeps the first originals"
fi

echo "== revert"
tune --revert --dry-run
expect_status "--revert --dry-run exits 0" 0
expect_output "--revert --dry-run lists the restore" '^would restore net\.core\.somaxconn = 4096 \(now 65536\)'
if [[ $(tree_hash "$FAKE") == "$hash_applied" ]]; then pass "--revert --dry-run changes nothing"; else fail "--revert --dry-run changes nothing"; fi
tune --revert
expect_status "revert exits 0" 0
expect_value net.core.somaxconn 4096
expect_value net.ipv4.tcp_max_syn_backlog 1024
expect_value net.ipv4.ip_local_port_range "32768 60999"
expect_value net.ipv4.tcp_tw_reuse 2
expect_value net.ipv4.tcp_fin_timeout 60
expect_value net.ipv4.tcp_rmem "4096 131072 6291456"
expect_value net.ipv4.tcp_slow_start_after_idle 1
expect_value fs.file-max 9223372036854775807
limits_now="$(limits_of "$TARGET" nofile) / $(limits_of "$TARGET" memlock)"
if [[ $limits_now == "$limits_before" ]]; then
    pass "revert restores the limits ($limits_now)"
else
    fail "revert restores the limits" "got $limits_now, expected $limits_before"
fi
if [[ ! -e $TUNE_STATE_DIR/saved ]]; then pass "revert clears the saved state"; else fail "revert clears the saved state"; fi
tune --revert
expect_status "a second revert exits 0" 0
expect_output "a second revert has nothing to do" '^nothing to revert'

echo "== persist"
mkdir -p "$TUNE_LIMITS_D"
echo "# the admin's own file" >"$TUNE_LIMITS_D/60-ws-uring.conf"
tune --persist --no-limits
expect_status "apply --persist exits 0" 0
if cmp -s "$REPO_DIR/tuning/sysctl.conf" "$TUNE_SYSCTL_D/60-ws-uring.conf" &&
    cmp -s "$REPO_DIR/tuning/limits.conf" "$TUNE_LIMITS_D/60-ws-uring.conf" &&
    cmp -s "$REPO_DIR/tuning/ws-uring.service" "$TUNE_SYSTEMD_DIR/ws-uring.service"; then
    pass "--persist installs the three files"
else
    fail "--persist installs the three files"
fi
tune --persist --no-limits
expect_output "a second --persist changes nothing" '^changed 0, '
tune --revert
expect_status "revert after --persist exits 0" 0
if [[ ! -e $TUNE_SYSCTL_D/60-ws-uring.conf && ! -e $TUNE_SYSTEMD_DIR/ws-uring.service ]]; then
    pass "revert removes the installed files"
else
    fail "revert removes the installed files"
fi
if [[ $(cat "$TUNE_LIMITS_D/60-ws-uring.conf") == "# the admin's own file" ]]; then
    pass "revert restores a file that was there before"
else
    fail "revert restores a file that was there before"
fi
expect_value net.core.somaxconn 4096

echo "== not root"
if ((EUID == 0)) && command -v setpriv >/dev/null; then
    # A copy nobody can read, outside any private home directory.
    mkdir -p "$WORK/repo/scripts" && cp "$TUNE" "$WORK/repo/scripts/" && cp -r "$REPO_DIR/tuning" "$WORK/repo/"
    chmod -R a+rX "$WORK/repo"
    env -u TUNE_PROC_SYS -u TUNE_STATE_DIR setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$WORK/repo/scripts/tune.sh" --no-limits >"$WORK/out" 2>&1
    STATUS=$?
    expect_status "apply as non-root on the real /proc/sys exits 3" 3
    expect_output "non-root apply says to use sudo" 'needs root'
    expect_output "non-root apply says what still works" 'scripts/tune.sh --check'
    env -u TUNE_PROC_SYS -u TUNE_STATE_DIR setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$WORK/repo/scripts/tune.sh" --check --no-limits >"$WORK/out" 2>&1
    STATUS=$?
    if [[ $STATUS == 0 || $STATUS == 1 ]]; then pass "--check works without root"; else fail "--check works without root" "exit $STATUS"; fi
else
    skip "not root (needs root and setpriv to switch to nobody)"
fi

echo "== read-only /proc/sys (container)"
if ((EUID == 0)) && unshare --mount true 2>/dev/null; then
    make_fake_tree
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount bash -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" --no-limits' \
        _ "$FAKE" "$TUNE" >"$WORK/out" 2>&1
    STATUS=$?
    expect_status "apply on a read-only tree still exits 0" 0
    expect_output "apply names the read-only tree" 'FAILED net\.core\.somaxconn: .*read-only'
    expect_output "apply counts what it could not do" 'could not [1-9]'
    expect_value net.core.somaxconn 4096
    tune --revert
    expect_value net.core.somaxconn 4096
else
    skip "read-only tree (needs root and unshare --mount)"
fi

echo "== real kernel, inside a network namespace"
if ((EUID == 0)) && unshare --net true 2>/dev/null; then
    host_before=$(sysctl -n net.core.somaxconn net.ipv4.ip_local_port_range net.ipv4.tcp_tw_reuse | normalize)
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --net bash -c '
        set -u
        cat /proc/sys/net/core/somaxconn >"$1/ns-before"
        env -u TUNE_PROC_SYS "$2" --only net. --no-limits >"$1/ns-apply" 2>&1; echo $? >"$1/ns-apply-status"
        cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/ip_local_port_range >"$1/ns-applied"
        env -u TUNE_PROC_SYS "$2" --check --only net. --no-limits >"$1/ns-check" 2>&1; echo $? >"$1/ns-check-status"
        env -u TUNE_PROC_SYS "$2" --revert >"$1/ns-revert" 2>&1; echo $? >"$1/ns-revert-status"
        cat /proc/sys/net/core/somaxconn >"$1/ns-after"
    ' _ "$WORK" "$TUNE"
    cp "$WORK/ns-apply" "$WORK/out"
    STATUS=$(cat "$WORK/ns-apply-status")
    expect_status "apply --only net. in a namespace exits 0" 0
    if [[ $(normalize <"$WORK/ns-applied") == "65536 10000 65535" ]]; then
        pass "the kernel took somaxconn 65536 and the port range"
    else
        fail "the kernel took somaxconn 65536 and the port range" "got $(normalize <"$WORK/ns-applied")"
    fi
    if grep -q 'nf_conntrack_max' "$WORK/ns-apply" && ! grep -q 'FAILED net.netfilter.nf_conntrack_max: .*refused' "$WORK/ns-apply"; then
        fail "a refused global key is reported" "$(grep nf_conntrack "$WORK/ns-apply")"
    else
        pass "a refused global key is reported (or absent)"
    fi
    cp "$WORK/ns-check" "$WORK/out"
    STATUS=$(cat "$WORK/ns-check-status")
    # Keys the namespace shows but only the initial namespace may set
    # (nf_conntrack_max, and rmem_max/wmem_max on some kernels) stay short;
    # every short key must be one apply reported as refused.
    short_keys=$(awk '$NF == "SHORT" {print $1}' "$WORK/ns-check" | sort)
    refused_keys=$(sed -n 's/^FAILED \([^:]*\): .*refused.*/\1/p' "$WORK/ns-apply" | sort)
    if [[ $short_keys == "$refused_keys" ]]; then
        pass "--check in the namespace: short only where the kernel refused (${short_keys//$'\n'/ })"
    else
        fail "--check in the namespace: short only where the kernel refused" "short: $short_keys; refused: $refused_keys"
    fi
    if [[ -z $short_keys ]]; then expect_status "--check exits 0 when nothing is short" 0; else expect_status "--check exits 1 while keys are short" 1; fi
    cp "$WORK/ns-revert" "$WORK/out"
    STATUS=$(cat "$WORK/ns-revert-status")
    expect_status "revert in the namespace exits 0" 0
    if [[ $(cat "$WORK/ns-after") == "$(cat "$WORK/ns-before")" ]]; then
        pass "revert restores the namespace's somaxconn ($(cat "$WORK/ns-after"))"
    else
        fail "revert restores the namespace's somaxconn" "$(cat "$WORK/ns-before") -> $(cat "$WORK/ns-after")"
    fi
    host_after=$(sysctl -n net.core.somaxconn net.ipv4.ip_local_port_range net.ipv4.tcp_tw_reuse | normalize)
    if [[ $host_after == "$host_before" ]]; then pass "the host's own values are untouched"; else fail "the host's own values are untouched"; fi
else
    skip "network namespace (needs root and unshare --net)"
fi

echo "== the service unit"
if command -v systemd-analyze >/dev/null; then
    sed 's|^ExecStart=.*|ExecStart=/bin/true|' "$REPO_DIR/tuning/ws-uring.service" >"$WORK/ws-uring.service"
    if systemd-analyze verify "$WORK/ws-uring.service" >"$WORK/out" 2>&1 && ! grep -q . "$WORK/out"; then
        pass "systemd-analyze verify is clean"
    else
        fail "systemd-analyze verify is clean"
    fi
    if systemd-analyze security --offline=yes --threshold=20 "$WORK/ws-uring.service" >"$WORK/out" 2>&1; then
        pass "systemd-analyze security: $(grep -o 'exposure level.*' "$WORK/out" | sed 's/exposure level for [^:]*: //')"
    else
        fail "systemd-analyze security exposure at most 2.0"
    fi
else
    skip "service unit (no systemd-analyze)"
fi

rm -f "$WORK/out"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
