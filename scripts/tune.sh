#!/usr/bin/env bash
# Kernel settings and process limits for ws-uring: apply, check, persist, revert.
#
#   sudo scripts/tune.sh                 apply the runtime values (default)
#   sudo scripts/tune.sh --persist       apply, and install tuning/ files for the next boot
#   scripts/tune.sh --check              table of current vs recommended; exit 1 when short
#   scripts/tune.sh --dry-run            print what apply (or --revert) would change
#   sudo scripts/tune.sh --revert        restore the values saved before the first apply
#
# The recommended values live in tuning/sysctl.conf and tuning/limits.conf;
# docs/TUNING.md explains each one. Apply never lowers a value that is already
# better, saves every original once (so applying twice and reverting once
# restores the true originals), and says what still works when this
# environment cannot raise something (a container without CAP_SYS_RESOURCE).
#
# Every path can be redirected, which is how scripts/test-tune.sh exercises
# apply/revert without touching the machine:
#   TUNE_PROC_SYS    sysctl tree                   (default /proc/sys)
#   TUNE_STATE_DIR   saved originals               (default /var/lib/ws-uring-tune)
#   TUNE_SYSCTL_D    where --persist puts sysctls  (default /etc/sysctl.d)
#   TUNE_LIMITS_D    where --persist puts limits   (default /etc/security/limits.d)
#   TUNE_SYSTEMD_DIR where --persist puts the unit (default /etc/systemd/system)
#   TUNE_TUNING_DIR  the recommended values        (default <repo>/tuning)
#
# Exit status: 0 done (or, with --check, nothing short); 1 --check found
# something short (or --strict apply left something short); 2 usage error;
# 3 needs root; 4 cannot record state (nothing was changed).

set -uo pipefail

readonly PROG=scripts/tune.sh
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR
readonly TUNING_DIR=${TUNE_TUNING_DIR:-$REPO_DIR/tuning}
readonly PROC_SYS=${TUNE_PROC_SYS:-/proc/sys}
readonly STATE_DIR=${TUNE_STATE_DIR:-/var/lib/ws-uring-tune}
readonly SYSCTL_D=${TUNE_SYSCTL_D:-/etc/sysctl.d}
readonly LIMITS_D=${TUNE_LIMITS_D:-/etc/security/limits.d}
readonly SYSTEMD_DIR=${TUNE_SYSTEMD_DIR:-/etc/systemd/system}
readonly STATE_FILE=$STATE_DIR/saved
readonly INSTALL_NAME=60-ws-uring.conf

# Locked memory glommio demands per shard, and descriptors the server uses
# beyond one per connection (listeners, io_uring rings, eventfds, data files);
# the same figure as NOFILE_OVERHEAD in src/limits.rs, so both say the same.
readonly MEMLOCK_PER_SHARD_BYTES=$((512 * 1024))
readonly NOFILE_HEADROOM=64

usage() {
    cat <<EOF
usage: $PROG [apply] [--persist] [--dry-run] [--strict]
       $PROG --check
       $PROG --revert [--dry-run]
options:
  --check                 compare current values with the recommended ones; exit 1 when short
  --dry-run               print what would change, change nothing (no root needed)
  --persist               also install tuning/sysctl.conf, tuning/limits.conf and
                          tuning/ws-uring.service so the settings survive a reboot
  --revert                restore everything saved before the first apply
  --strict                with apply: exit 1 if anything is still short afterwards
  --max-connections N     size the nofile check for this max_connections (default 100000)
  --shards N              size the memlock check for this many shards (default: cores, $(nproc))
  --pid PID               process whose nofile/memlock limits to check and raise
                          (default: the shell that ran this script, through sudo)
  --no-limits             leave process limits alone (sysctls only)
  --only PREFIX           only sysctl keys starting with PREFIX (repeatable), e.g. --only net.
  -h, --help              this text
EOF
}

die() {
    local status=$1
    shift
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "$status"
}
note() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- arguments

ORIGINAL_ARGS=("$@")
MODE=apply
DRY_RUN=0
PERSIST=0
STRICT=0
LIMITS=1
MAX_CONNECTIONS=100000
SHARDS=$(nproc)
TARGET_PID=
ONLY=()

while (($#)); do
    case $1 in
        apply) MODE=apply ;;
        --check | check) MODE=check ;;
        --revert | revert) MODE=revert ;;
        --dry-run | -n) DRY_RUN=1 ;;
        --persist) PERSIST=1 ;;
        --strict) STRICT=1 ;;
        --no-limits) LIMITS=0 ;;
        --max-connections | --shards | --pid | --only)
            (($# >= 2)) || die 2 "$1 needs a value"
            case $1 in
                --max-connections) MAX_CONNECTIONS=$2 ;;
                --shards) SHARDS=$2 ;;
                --pid) TARGET_PID=$2 ;;
                --only) ONLY+=("$2") ;;
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

for number in "$MAX_CONNECTIONS" "$SHARDS" ${TARGET_PID:+"$TARGET_PID"}; do
    [[ $number =~ ^[0-9]+$ && $number -gt 0 ]] || die 2 "expected a positive integer, got '$number'"
done
[[ $PERSIST == 0 || $MODE == apply ]] || die 2 "--persist goes with apply only"
[[ -r $TUNING_DIR/sysctl.conf && -r $TUNING_DIR/limits.conf ]] ||
    die 2 "cannot read $TUNING_DIR/sysctl.conf and limits.conf"

# ---------------------------------------------------------------- values

# Normalises whitespace so "32768\t60999" and "32768 60999" compare equal.
normalize() { tr -s ' \t\n' '   ' <<<"$1" | sed 's/^ //; s/ $//'; }

# Whether the live value satisfies the rule against the recommended value.
satisfies() {
    local rule=$1 current=$2 wanted=$3
    local -a cur_f want_f
    read -ra cur_f <<<"$current"
    read -ra want_f <<<"$wanted"
    if [[ $rule == exact || ${#cur_f[@]} -ne ${#want_f[@]} ]]; then
        [[ $current == "$wanted" ]]
        return
    fi
    local i
    for i in "${!want_f[@]}"; do
        [[ ${cur_f[i]} =~ ^-?[0-9]+$ && ${want_f[i]} =~ ^-?[0-9]+$ ]] || {
            [[ $current == "$wanted" ]]
            return
        }
    done
    case $rule in
        min) for i in "${!want_f[@]}"; do ((cur_f[i] >= want_f[i])) || return 1; done ;;
        max) for i in "${!want_f[@]}"; do ((cur_f[i] <= want_f[i])) || return 1; done ;;
        range) ((cur_f[0] <= want_f[0] && cur_f[${#cur_f[@]} - 1] >= want_f[${#want_f[@]} - 1])) || return 1 ;;
        *) return 1 ;;
    esac
}

# The value apply writes: the recommended one, but never worse than the live
# one field by field (a wider port range or bigger buffer stays).
target_value() {
    local rule=$1 current=$2 wanted=$3
    local -a cur_f want_f out
    read -ra cur_f <<<"$current"
    read -ra want_f <<<"$wanted"
    if [[ $rule == exact || ${#cur_f[@]} -ne ${#want_f[@]} ]] || ! satisfies_numeric "$current $wanted"; then
        printf '%s' "$wanted"
        return
    fi
    local i
    case $rule in
        min) for i in "${!want_f[@]}"; do out+=($((cur_f[i] > want_f[i] ? cur_f[i] : want_f[i]))); done ;;
        max) for i in "${!want_f[@]}"; do out+=($((cur_f[i] < want_f[i] ? cur_f[i] : want_f[i]))); done ;;
        range)
            out=("${want_f[@]}")
            ((cur_f[0] < want_f[0])) && out[0]=${cur_f[0]}
            ((cur_f[1] > want_f[1])) && out[1]=${cur_f[1]}
            ;;
    esac
    printf '%s' "${out[*]}"
}
satisfies_numeric() { [[ $1 =~ ^[-0-9\ ]+$ ]]; }

# ---------------------------------------------------------------- sysctls

# Parsed tuning/sysctl.conf: parallel arrays, one entry per key.
KEYS=() WANTED=() RULES=() OPTIONAL=() WHYS=()

load_sysctl_conf() {
    local line rule=min why='' key value optional
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^#\ \[(min|max|exact|range)\]\ (.*)$ ]]; then
            rule=${BASH_REMATCH[1]}
            why=${BASH_REMATCH[2]}
            continue
        fi
        [[ $line =~ ^[[:space:]]*(#|;|$) ]] && continue
        [[ $line == *=* ]] || die 2 "$TUNING_DIR/sysctl.conf: cannot parse: $line"
        key=$(normalize "${line%%=*}")
        value=$(normalize "${line#*=}")
        optional=0
        if [[ $key == -* ]]; then
            optional=1
            key=${key#-}
        fi
        if ((${#ONLY[@]})); then
            local prefix keep=0
            for prefix in "${ONLY[@]}"; do [[ $key == "$prefix"* ]] && keep=1; done
            ((keep)) || continue
        fi
        KEYS+=("$key") WANTED+=("$value") RULES+=("$rule") OPTIONAL+=("$optional") WHYS+=("$why")
        rule=min why=''
    done <"$TUNING_DIR/sysctl.conf"
}

sysctl_path() { printf '%s/%s' "$PROC_SYS" "${1//.//}"; }

read_sysctl() {
    local path
    path=$(sysctl_path "$1")
    [[ -f $path ]] || return 1
    local value
    value=$(cat "$path" 2>/dev/null) || return 1
    normalize "$value"
}

# Writes a sysctl; prints the reason and fails when the kernel refuses.
write_sysctl() {
    local key=$1 value=$2 path error
    path=$(sysctl_path "$key")
    if ! error=$({ printf '%s\n' "$value" >"$path"; } 2>&1); then
        error=${error##*: }
        case $error in
            *"Read-only file system"*) error="/proc/sys is read-only here (container); set it on the host" ;;
            *"Permission denied"* | *"Operation not permitted"*)
                error="the kernel refused it (global setting in a non-initial namespace, or a container without CAP_SYS_ADMIN)" ;;
        esac
        printf '%s' "$error"
        return 1
    fi
}

# ---------------------------------------------------------------- limits

# Recommended nofile/memlock from tuning/limits.conf (the '*' soft lines); memlock in bytes.
WANT_NOFILE='' WANT_MEMLOCK=''
load_limits_conf() {
    local domain type item value
    while read -r domain type item value _; do
        [[ $domain == '*' && ($type == soft || $type == -) ]] || continue
        case $item in
            nofile) WANT_NOFILE=$value ;;
            memlock) [[ $value == unlimited ]] && WANT_MEMLOCK=unlimited || WANT_MEMLOCK=$((value * 1024)) ;;
        esac
    done < <(grep -v '^[[:space:]]*#' "$TUNING_DIR/limits.conf")
    [[ -n $WANT_NOFILE && -n $WANT_MEMLOCK ]] ||
        die 2 "$TUNING_DIR/limits.conf must set '*' soft nofile and memlock"
}

# The shell the user typed the command in: our parent, skipping sudo/su.
invoking_shell_pid() {
    local pid=$PPID comm
    while ((pid > 1)); do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
        case $comm in
            sudo | sudo-rs | su | doas | run0) pid=$(awk '{print $4}' "/proc/$pid/stat") ;;
            *)
                printf '%s' "$pid"
                return 0
                ;;
        esac
    done
    return 1
}

process_label() { printf 'pid %s %s' "$1" "$(cat "/proc/$1/comm" 2>/dev/null || echo '?')"; }
# Start time in clock ticks, so revert never touches a recycled pid.
process_start() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# "SOFT HARD" for nofile or memlock of a pid ("unlimited" spelled out).
read_limit() { prlimit --pid "$1" "--$2" --raw --noheadings --output SOFT,HARD 2>/dev/null; }

# a >= b where either may be "unlimited".
limit_ge() {
    [[ $1 == unlimited ]] && return 0
    [[ $2 == unlimited ]] && return 1
    (($1 >= $2))
}

has_cap_sys_resource() {
    local capeff
    capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    (((0x$capeff >> 24) & 1))
}

human_bytes() {
    local b=$1
    if [[ $b == unlimited ]]; then
        printf 'unlimited'
    elif ((b >= 1 << 20 && b % (1 << 20) == 0)); then
        printf '%d MiB' $((b >> 20))
    elif ((b >= 1024 && b % 1024 == 0)); then
        printf '%d KiB' $((b >> 10))
    else
        printf '%d B' "$b"
    fi
}

# ---------------------------------------------------------------- state

require_root() {
    local what=$1
    ((EUID == 0)) && return 0
    # A redirected sysctl tree (tests) needs no privileges.
    [[ -n ${TUNE_PROC_SYS:-} ]] && return 0
    cat >&2 <<EOF
$PROG: $what needs root: it writes /proc/sys and raises hard limits. Run:
    sudo $PROG ${ORIGINAL_ARGS[*]}
Without root you can still:
    $PROG --check          see what is short
    $PROG --dry-run        see what apply would change
    ulimit -n \$(ulimit -Hn)  raise your own soft nofile limit to the hard one
EOF
    exit 3
}

open_state() {
    ((DRY_RUN)) && return 0
    if ! mkdir -p "$STATE_DIR" 2>/dev/null || ! touch "$STATE_FILE" 2>/dev/null; then
        die 4 "cannot write $STATE_FILE (set TUNE_STATE_DIR); nothing was changed"
    fi
    exec 9>"$STATE_DIR/lock"
    flock -n 9 || die 4 "another $PROG is running (lock $STATE_DIR/lock)"
}

# Records an original value unless one is already recorded for that id, so
# applying twice keeps the values from before the first apply.
save_once() {
    local id=$1 line=$2
    ((DRY_RUN)) && return 0
    grep -qF -- "$id"$'\t' "$STATE_FILE" 2>/dev/null && return 0
    printf '%s\t%s\n' "$id" "$line" >>"$STATE_FILE" || die 4 "cannot write $STATE_FILE"
}

# ---------------------------------------------------------------- check

SHORT=0
check_sysctls() {
    local i current status
    for i in "${!KEYS[@]}"; do
        if ! current=$(read_sysctl "${KEYS[i]}"); then
            if ((OPTIONAL[i])); then status="absent (optional)"; else status="n/a (not in this kernel or namespace)"; fi
            current=-
        elif satisfies "${RULES[i]}" "$current" "${WANTED[i]}"; then
            status=ok
        else
            status=SHORT
            SHORT=$((SHORT + 1))
        fi
        printf '%-34s %-24s %-24s %-6s %s\n' "${KEYS[i]}" "$current" "${WANTED[i]}" "${RULES[i]}" "$status"
    done
}

check_limits() {
    local pid=$1 label need_nofile need_memlock nofile_l memlock_l
    label=$(process_label "$pid")
    need_nofile=$((MAX_CONNECTIONS + NOFILE_HEADROOM))
    need_memlock=$((SHARDS * MEMLOCK_PER_SHARD_BYTES))
    read -r -a nofile_l <<<"$(read_limit "$pid" nofile)"
    read -r -a memlock_l <<<"$(read_limit "$pid" memlock)"
    if ((${#nofile_l[@]} != 2 || ${#memlock_l[@]} != 2)); then
        warn "cannot read the limits of $label"
        return
    fi
    limit_row "nofile soft ($label)" "${nofile_l[0]}" "$need_nofile" "${nofile_l[0]}"
    limit_row "nofile hard" "${nofile_l[1]}" "$need_nofile" "${nofile_l[1]}"
    limit_row "memlock soft" "$(human_bytes "${memlock_l[0]}")" "$(human_bytes "$need_memlock")" "${memlock_l[0]}" "$need_memlock"
    limit_row "memlock hard" "$(human_bytes "${memlock_l[1]}")" "$(human_bytes "$need_memlock")" "${memlock_l[1]}" "$need_memlock"
    note "  (nofile needed = max_connections $MAX_CONNECTIONS + $NOFILE_HEADROOM; memlock needed = shards $SHARDS x 512 KiB)"
    note "  with the soft limits of $label: $(what_fits "${nofile_l[0]}" "${memlock_l[0]}")"
}

limit_row() {
    local name=$1 shown=$2 need_shown=$3 value=$4 need=${5:-$3} status=ok
    if ! limit_ge "$value" "$need"; then
        status=SHORT
        SHORT=$((SHORT + 1))
    fi
    printf '%-34s %-24s %-24s %-6s %s\n' "$name" "$shown" "$need_shown" min "$status"
}

run_check() {
    printf '%-34s %-24s %-24s %-6s %s\n' SETTING CURRENT RECOMMENDED RULE STATUS
    check_sysctls
    if ((LIMITS)) && [[ -n $TARGET_PID ]]; then check_limits "$TARGET_PID"; fi
    if ((SHORT)); then
        note "$SHORT setting(s) short: run 'sudo $PROG' (docs/TUNING.md says why each matters)"
        return 1
    fi
    note "all settings meet the recommendation"
}

# ---------------------------------------------------------------- apply

CHANGED=0 UNCHANGED=0 FAILED=0
FAILURES=()

apply_sysctls() {
    local i key current target error
    for i in "${!KEYS[@]}"; do
        key=${KEYS[i]}
        if ! current=$(read_sysctl "$key"); then
            ((OPTIONAL[i])) || note "skip   $key: not in this kernel or namespace"
            continue
        fi
        if satisfies "${RULES[i]}" "$current" "${WANTED[i]}"; then
            UNCHANGED=$((UNCHANGED + 1))
            continue
        fi
        target=$(target_value "${RULES[i]}" "$current" "${WANTED[i]}")
        if ((DRY_RUN)); then
            note "would  $key: $current -> $target"
            CHANGED=$((CHANGED + 1))
            continue
        fi
        save_once "sysctl:$key" "$current"
        if ! error=$(write_sysctl "$key" "$target"); then
            note "FAILED $key: $current -> $target: $error"
            FAILED=$((FAILED + 1))
            FAILURES+=("$key ($error)")
            continue
        fi
        local now
        now=$(read_sysctl "$key")
        if [[ $now != "$target" ]]; then
            note "capped $key: asked $target, the kernel kept $now"
        else
            note "set    $key: $current -> $now"
        fi
        CHANGED=$((CHANGED + 1))
    done
}

# Raises one limit of a pid toward the recommendation; when the hard limit
# cannot be raised (no CAP_SYS_RESOURCE), raises the soft limit to the hard one.
apply_limit() {
    local pid=$1 resource=$2 want=$3 label soft hard
    label=$(process_label "$pid")
    read -r soft hard <<<"$(read_limit "$pid" "$resource")"
    [[ -n $soft && -n $hard ]] || {
        warn "cannot read $resource of $label"
        return
    }
    if [[ $resource == nofile && $want != unlimited ]]; then
        # The kernel refuses nofile above fs.nr_open.
        local nr_open
        nr_open=$(read_sysctl fs.nr_open 2>/dev/null) && ((want > nr_open)) && want=$nr_open
    fi
    if limit_ge "$soft" "$want" && limit_ge "$hard" "$want"; then
        UNCHANGED=$((UNCHANGED + 1))
        return
    fi
    local new_hard=$hard
    limit_ge "$hard" "$want" || new_hard=$want
    if ((DRY_RUN)); then
        if [[ $new_hard != "$hard" ]] && ! has_cap_sys_resource; then
            note "would  $resource of $label: $soft:$hard -> $hard:$hard (soft:hard); no CAP_SYS_RESOURCE here, so not $want"
            FAILED=$((FAILED + 1))
            FAILURES+=("$resource of $label (no CAP_SYS_RESOURCE here, so the hard limit stays at $hard)")
            [[ $soft != "$hard" ]] && CHANGED=$((CHANGED + 1))
        else
            note "would  $resource of $label: $soft:$hard -> $want:$new_hard (soft:hard)"
            CHANGED=$((CHANGED + 1))
        fi
        return
    fi
    save_once "limit:$pid:$(process_start "$pid"):$resource" "$soft:$hard"
    if prlimit --pid "$pid" "--$resource=$want:$new_hard" 2>/dev/null; then
        note "set    $resource of $label: $soft:$hard -> $want:$new_hard"
        CHANGED=$((CHANGED + 1))
        return
    fi
    # Could not raise the hard limit: use what is allowed.
    local why="cannot raise the hard limit"
    has_cap_sys_resource || why="no CAP_SYS_RESOURCE here (a container?), so the hard limit stays"
    if [[ $soft != "$hard" ]] && prlimit --pid "$pid" "--$resource=$hard:$hard" 2>/dev/null; then
        note "capped $resource of $label: soft $soft -> $hard; $why at $hard"
        CHANGED=$((CHANGED + 1))
    else
        note "capped $resource of $label: stays $soft:$hard; $why"
    fi
    FAILED=$((FAILED + 1))
    FAILURES+=("$resource of $label ($why at $hard)")
}

# What the server can do with given soft nofile and memlock limits.
FIT_CONNECTIONS='' FIT_SHARDS=''
what_fits() {
    local nofile=$1 memlock=$2
    FIT_CONNECTIONS=unlimited FIT_SHARDS=unlimited
    [[ $nofile == unlimited ]] || FIT_CONNECTIONS=$((nofile > NOFILE_HEADROOM ? nofile - NOFILE_HEADROOM : 0))
    [[ $memlock == unlimited ]] || FIT_SHARDS=$((memlock / MEMLOCK_PER_SHARD_BYTES))
    printf 'max_connections up to %s, shards up to %s' "$FIT_CONNECTIONS" "$FIT_SHARDS"
}

# What still works with the limits the server will actually get.
explain_capped_limits() {
    local pid=$1 nofile memlock
    read -r nofile _ <<<"$(read_limit "$pid" nofile)"
    read -r memlock _ <<<"$(read_limit "$pid" memlock)"
    [[ -n $nofile && -n $memlock ]] || return 0
    what_fits "$nofile" "$memlock" >/dev/null
    cat <<EOF
What still works here: every sysctl reported 'set' or already fine. With nofile $nofile
and memlock $(human_bytes "$memlock"), $(process_label "$pid") can run ws-uring with up to
$FIT_SHARDS shard(s) and about $FIT_CONNECTIONS connections: start it with
--max-connections $FIT_CONNECTIONS or less. To go further, raise the limits where they are
granted: docker run --ulimit nofile=1048576 --ulimit memlock=-1, LimitNOFILE and
LimitMEMLOCK in tuning/ws-uring.service, or tuning/limits.conf on the host.
EOF
}

# ---------------------------------------------------------------- persist

persist_file() {
    local source=$1 dest=$2
    if [[ -f $dest ]] && cmp -s "$source" "$dest"; then
        UNCHANGED=$((UNCHANGED + 1))
        return
    fi
    if ((DRY_RUN)); then
        note "would  install $dest"
        CHANGED=$((CHANGED + 1))
        return
    fi
    local backup=-
    if [[ -e $dest ]]; then
        backup=$STATE_DIR/backup/$(basename "$dest").$(date +%s)
        if ! mkdir -p "$STATE_DIR/backup" || ! cp -p "$dest" "$backup"; then
            die 4 "cannot back up $dest"
        fi
    fi
    save_once "file:$dest" "$backup"
    if mkdir -p "$(dirname "$dest")" && install -m 0644 "$source" "$dest"; then
        note "installed $dest"
        CHANGED=$((CHANGED + 1))
    else
        note "FAILED install $dest"
        FAILED=$((FAILED + 1))
        FAILURES+=("install $dest")
    fi
}

run_persist() {
    persist_file "$TUNING_DIR/sysctl.conf" "$SYSCTL_D/$INSTALL_NAME"
    persist_file "$TUNING_DIR/limits.conf" "$LIMITS_D/$INSTALL_NAME"
    persist_file "$TUNING_DIR/ws-uring.service" "$SYSTEMD_DIR/ws-uring.service"
    if ((!DRY_RUN)) && [[ -z ${TUNE_SYSTEMD_DIR:-} && -d /run/systemd/system ]]; then
        systemctl daemon-reload && note "systemctl daemon-reload done"
    fi
    note "persisted: sysctls load at boot; limits apply from the next login;"
    note "  the service needs: install -m 0755 target/release/ws-uring /usr/local/bin/ && systemctl enable --now ws-uring"
}

run_apply() {
    ((DRY_RUN)) || require_root apply
    open_state
    apply_sysctls
    if ((LIMITS)) && [[ -n $TARGET_PID ]]; then
        apply_limit "$TARGET_PID" nofile "$WANT_NOFILE"
        apply_limit "$TARGET_PID" memlock "$WANT_MEMLOCK"
    fi
    ((PERSIST)) && run_persist
    if ((DRY_RUN)); then
        note "would change $CHANGED, already fine $UNCHANGED, could not $FAILED"
    else
        note "changed $CHANGED, already fine $UNCHANGED, could not $FAILED"
    fi
    if ((FAILED)); then
        local failure
        for failure in "${FAILURES[@]}"; do warn "not applied: $failure"; done
        ((LIMITS)) && [[ -n $TARGET_PID ]] && explain_capped_limits "$TARGET_PID"
    fi
    if ((!DRY_RUN && CHANGED)); then
        note "originals saved in $STATE_FILE; undo with: sudo $PROG --revert"
    fi
    if ((STRICT && !DRY_RUN)); then
        SHORT=0
        run_check >/dev/null || return 1
    fi
    return 0
}

# ---------------------------------------------------------------- revert

run_revert() {
    ((DRY_RUN)) || require_root revert
    if [[ ! -s $STATE_FILE ]]; then
        note "nothing to revert ($STATE_FILE is empty or missing)"
        return 0
    fi
    open_state
    local id saved restored=0 failed=0 verb=restored
    ((DRY_RUN)) && verb="would restore"
    # Limits, then sysctls (fs.nr_open last matters little: lowering it never
    # fails), then files; each in the order they were saved.
    local kind
    for kind in limit sysctl file; do
        while IFS=$'\t' read -r id saved; do
            [[ $id == "$kind":* ]] || continue
            case $kind in
                sysctl)
                    local key=${id#sysctl:} error
                    if [[ $(read_sysctl "$key") == "$saved" ]]; then
                        note "same   $key = $saved (never changed, or already back)"
                    elif ((DRY_RUN)); then
                        note "$verb $key = $saved (now $(read_sysctl "$key" || echo absent))"
                    elif error=$(write_sysctl "$key" "$saved"); then
                        note "$verb $key = $saved"
                    else
                        note "FAILED $key = $saved: $error"
                        failed=$((failed + 1))
                        continue
                    fi
                    ;;
                limit)
                    local rest=${id#limit:} pid start resource
                    IFS=: read -r pid start resource <<<"$rest"
                    if [[ $(process_start "$pid") != "$start" ]]; then
                        note "skip   $resource of pid $pid: that process has exited"
                        continue
                    fi
                    if ((DRY_RUN)); then
                        note "$verb $resource of $(process_label "$pid") = $saved (soft:hard)"
                    elif prlimit --pid "$pid" "--$resource=$saved"; then
                        note "$verb $resource of $(process_label "$pid") = $saved (soft:hard)"
                    else
                        failed=$((failed + 1))
                        continue
                    fi
                    ;;
                file)
                    local dest=${id#file:}
                    if ((DRY_RUN)); then
                        if [[ $saved == - ]]; then note "would remove $dest"; else note "would restore $dest from $saved"; fi
                    elif [[ $saved == - ]]; then
                        rm -f "$dest" && note "removed $dest"
                    else
                        cp -p "$saved" "$dest" && rm -f "$saved" && note "restored $dest"
                    fi
                    ;;
            esac
            restored=$((restored + 1))
        done <"$STATE_FILE"
    done
    if ((DRY_RUN)); then
        note "would restore $restored item(s)"
    elif ((failed)); then
        warn "$failed item(s) could not be restored; $STATE_FILE kept for another try"
        return 1
    else
        rm -f "$STATE_FILE"
        note "reverted $restored item(s); $STATE_FILE removed"
    fi
    return 0
}

# ---------------------------------------------------------------- main

load_sysctl_conf
load_limits_conf
if ((LIMITS)) && [[ -z $TARGET_PID ]]; then
    TARGET_PID=$(invoking_shell_pid) || TARGET_PID=
fi
if ((LIMITS)) && [[ -n $TARGET_PID && ! -d /proc/$TARGET_PID ]]; then
    die 2 "no process $TARGET_PID"
fi

case $MODE in
    check) run_check ;;
    apply) run_apply ;;
    revert) run_revert ;;
esac
