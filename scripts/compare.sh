#!/usr/bin/env bash
# Peer comparison: builds echo peers in /tmp from the package registries, runs
# each pinned to core 0 (taskset) with the loadgen pinned to core 1, the same
# workload for every peer, one run each; prints a ratio table and writes JSON.
#
#   ws-uring (--echo, 1 shard)       this repository
#   raw-echo (glommio, no library)   the ceiling: handshake + unmask/reframe only
#   tokio-tungstenite                crates.io, current-thread runtime
#   fastwebsockets                   crates.io, current-thread runtime
#   python websockets+uvloop+orjson  PyPI, in a venv
#   node ws                          npm
#   uWS.js                           npm `uwebsockets@3.0.6` (prebuilt for Node 20, --ignore-scripts)
# and, for fan-out, ws-uring `publish` against a uWS.js pub/sub peer.
# A peer named ws-uring@KEY=VALUE[@KEY=VALUE...] in --only is ws-uring in
# echo mode with those settings (its flags: --key-with-dashes VALUE), run and
# summarised as a peer of its own: a setting against the default (peer
# ws-uring) in the same alternated rounds, e.g.
#   --only ws-uring,ws-uring@nap_max_us=0,uws-js
#
# Each run also measures the server's CPU (utime + stime of its process, from
# /proc, over the loadgen's measured window) and reports it per message: the
# figure to compare when the loadgen's own core sets the pace, and the only
# one when every peer is offered the same open-loop load (--rate).
# With --rounds N the echo peers run N times, alternated (each round starts
# one peer later in the list), and the table ends with each peer's median
# ratios to ws-uring over the rounds, its slowest connection against its
# median one, and in how many rounds ws-uring was faster, had a lower p99
# and spent less CPU per message, each with an exact sign test
# (scripts/compare_summary.py).
# --pool pools the echo rounds of earlier results into that same summary:
# one run's rounds are too few to tell a few per cent from the host's drift.
#
# Not part of CI. Peer code is generated under $WORK (default /tmp/wsu-peers)
# and never lands in the repository. Results: $WORK/results/<UTC time>/compare-<date>.json
# (and each run's loadgen JSON, PEER.rK.json, and CPU samples, PEER.rK.cpu)
#
# Usage: scripts/compare.sh [--connections N] [--duration SECS] [--in-flight K]
#                           [--size BYTES] [--only a,b,...] [--skip-build] [--no-fanout]
#                           [--fanout-members N]  (fan-out: N members in one group, default 2000)
#                           [--rate MSG_PER_S]    (echo in open loop at this total rate)
#                           [--rounds N]          (echo rounds, alternated; default 1)
#                           (--only may name ws-uring@KEY=VALUE[@KEY=VALUE...]: see above)
#        scripts/compare.sh --pool RESULTS.json [RESULTS.json ...]
#                           (no run: the summary over these results' echo rounds)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/tmp/wsu-peers}"
CONNECTIONS=100
DURATION=10
IN_FLIGHT=16
SIZE=64
ONLY=""
SKIP_BUILD=0
FANOUT=1
FANOUT_MEMBERS=2000
RATE=""
ROUNDS=1
SERVER_CORE="${SERVER_CORE:-0}"
LOADGEN_CORE="${LOADGEN_CORE:-1}"

if [ "${1:-}" = --pool ]; then
    shift
    exec python3 "$REPO/scripts/compare_summary.py" "$@"
fi

while [ $# -gt 0 ]; do
    case "$1" in
        --pool) echo "compare.sh: --pool comes first and takes only result files" >&2; exit 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --in-flight) IN_FLIGHT="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --no-fanout) FANOUT=0; shift ;;
        --fanout-members) FANOUT_MEMBERS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

case "$ROUNDS" in ''|*[!0-9]*|0) echo "compare.sh: --rounds takes a whole number of at least 1, not '$ROUNDS'" >&2; exit 2 ;; esac
case "$RATE" in *[!0-9]*|0) echo "compare.sh: --rate takes a whole number of messages a second (at least 1), not '$RATE'" >&2; exit 2 ;; esac

PEERS_ALL="ws-uring raw-echo tokio-tungstenite fastwebsockets python-websockets node-ws uws-js"
PEERS="${ONLY//,/ }"
PEERS="${PEERS:-$PEERS_ALL}"

# variant_flags NAME: sets VARIANT_FLAGS to ws-uring's flags for a peer
# named ws-uring@KEY=VALUE[@KEY=VALUE...]; says why and fails if the name is
# not one (a key must be a setting's name, a value plain characters: the
# flags are passed as words, never through a shell, and the name becomes
# part of result file names).
VARIANT_FLAGS=()
variant_flags() {
    local name="$1" spec="${1#ws-uring@}" setting key value settings
    VARIANT_FLAGS=()
    if [[ -z "$spec" || "$spec" == *@ ]]; then
        echo "compare.sh: '$name' names no setting after its last @: ws-uring@KEY=VALUE[@KEY=VALUE...], e.g. ws-uring@nap_max_us=0" >&2
        return 1
    fi
    IFS=@ read -r -a settings <<<"$spec"
    for setting in "${settings[@]}"; do
        key="${setting%%=*}"
        value="${setting#*=}"
        if [[ "$setting" != *=* || ! "$key" =~ ^[a-z][a-z0-9_]*$ || ! "$value" =~ ^[A-Za-z0-9._:-]+$ ]]; then
            echo "compare.sh: '$setting' in '$name' is not KEY=VALUE with a setting's name (such as nap_max_us=0) and a value of letters, digits and . _ : -" >&2
            return 1
        fi
        case "$key" in
            host|port|echo|shards) echo "compare.sh: '$name' sets $key, which compare.sh sets for every server itself" >&2; return 1 ;;
        esac
        VARIANT_FLAGS+=("--${key//_/-}" "$value")
    done
}
# Split on spaces only (never glob-expanded).
read -r -a PEER_NAMES <<<"$PEERS"
[ "${#PEER_NAMES[@]}" -gt 0 ] || { echo "compare.sh: --only names no peer" >&2; exit 2; }
for peer in "${PEER_NAMES[@]}"; do
    case "$peer" in ws-uring@*) variant_flags "$peer" || exit 2 ;; esac
done

# check_variant_settings: every variant's settings must be settings of this
# ws-uring that take a value (its usage line lists them as
# "[--key <key>]"): a misspelt one, or a switch, would only show as a
# server that never listened, round after round.
check_variant_settings() {
    local peer help flag key i
    for peer in "${PEER_NAMES[@]}"; do
        case "$peer" in
            ws-uring@*)
                [ -x "$WS_URING" ] || { echo "compare.sh: cannot check $peer's settings: $WS_URING is missing" >&2; exit 2; }
                variant_flags "$peer" || exit 2
                help="$("$WS_URING" --help 2>/dev/null || true)"
                for ((i = 0; i < ${#VARIANT_FLAGS[@]}; i += 2)); do
                    flag="${VARIANT_FLAGS[i]}"
                    key="${flag#--}"
                    grep -qF -- "[$flag <" <<<"$help" \
                        || { echo "compare.sh: $WS_URING has no setting ${key//-/_} that takes a value (flag $flag; see its --help)" >&2; exit 2; }
                done
                ;;
        esac
    done
}
DATE="$(date -u +%Y-%m-%d)"
# One directory per run: a second run the same day keeps the first's files
# (its loadgen JSON holds the per-second series and the errors by kind).
RESULTS="$WORK/results/$(date -u +%Y-%m-%dT%H%M%SZ)"
# Set LOADGEN / WS_URING to use existing binaries instead of building them here.
BUILD_REPO=1
[ -n "${LOADGEN:-}${WS_URING:-}" ] && BUILD_REPO=0
LOADGEN="${LOADGEN:-$REPO/target/release/loadgen}"
WS_URING="${WS_URING:-$REPO/target/release/ws-uring}"
# A ws-uring not built here is checked before anything is written or built;
# one built here, right after its build.
WS_URING_BUILT_HERE=0
[ "$SKIP_BUILD" = 0 ] && [ "$BUILD_REPO" = 1 ] && WS_URING_BUILT_HERE=1
[ "$WS_URING_BUILT_HERE" = 1 ] || check_variant_settings
mkdir -p "$WORK" "$RESULTS"

log() { echo "compare: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- peer sources
write_sources() {
    mkdir -p "$WORK/raw-echo/src" "$WORK/tokio-tungstenite/src" "$WORK/fastwebsockets/src" "$WORK/node" "$WORK/python"

    cat > "$WORK/raw-echo/Cargo.toml" <<'EOF'
[package]
name = "peer-raw-echo"
version = "0.1.0"
edition = "2021"

[dependencies]
glommio = "0.9"
futures-lite = "1"
sha1 = "0.10"
data-encoding = "2"
EOF
    cat > "$WORK/raw-echo/src/main.rs" <<'EOF'
//! Ceiling peer: the least a WebSocket echo can do on one glommio core. Answers
//! the upgrade, then turns each masked client frame into an unmasked server
//! frame (copy + unmask) and writes a whole read's worth back in one write.
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use sha1::{Digest, Sha1};

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    let mut filled = 0;
    let head_end = loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 { return Ok(()); }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") { break i + 4; }
        if filled == buf.len() { return Ok(()); }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
    }).unwrap_or_default();
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = data_encoding::BASE64.encode(&sha.finalize());
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    s.write_all(resp.as_bytes()).await?;
    buf.copy_within(head_end..filled, 0);
    filled -= head_end;
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        let mut pos = 0;
        loop {
            let b = &buf[pos..filled];
            if b.len() < 2 { break; }
            let masked = b[1] & 0x80 != 0;
            let (len, hl) = match b[1] & 0x7f {
                126 => { if b.len() < 4 { break; } (u16::from_be_bytes([b[2], b[3]]) as usize, 4) }
                127 => { if b.len() < 10 { break; } (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10) }
                l => (l as usize, 2),
            };
            let ml = if masked { 4 } else { 0 };
            if b.len() < hl + ml + len { break; }
            let opcode = b[0] & 0x0f;
            out.push(b[0]);
            out.push(b[1] & 0x7f);
            out.extend_from_slice(&b[2..hl]);
            let start = out.len();
            out.extend_from_slice(&b[hl + ml..hl + ml + len]);
            if masked {
                let m = [b[hl], b[hl + 1], b[hl + 2], b[hl + 3]];
                for (i, x) in out[start..].iter_mut().enumerate() { *x ^= m[i & 3]; }
            }
            if opcode == 0x9 { out[start - hl] = (out[start - hl] & 0xf0) | 0xA; }
            pos += hl + ml + len;
            if opcode == 0x8 { s.write_all(&out).await?; return Ok(()); }
        }
        if !out.is_empty() { s.write_all(&out).await?; out.clear(); }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        if filled == buf.len() { buf.resize(buf.len() * 2, 0); }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 { return Ok(()); }
        filled += n;
    }
}

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(9001);
    LocalExecutorBuilder::new(Placement::Unbound).spawn(move || async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        eprintln!("listening on {}", listener.local_addr().unwrap());
        loop {
            if let Ok(s) = listener.accept().await {
                glommio::spawn_local(async move { let _ = serve(s).await; }).detach();
            }
        }
    }).unwrap().join().unwrap();
}
EOF

    cat > "$WORK/tokio-tungstenite/Cargo.toml" <<'EOF'
[package]
name = "peer-tokio-tungstenite"
version = "0.1.0"
edition = "2021"

[dependencies]
tokio = { version = "1", features = ["rt", "net", "macros"] }
tokio-tungstenite = "0.26"
futures-util = { version = "0.3", default-features = false, features = ["sink", "std"] }
EOF
    cat > "$WORK/tokio-tungstenite/src/main.rs" <<'EOF'
//! Echo peer: tokio (current-thread runtime: one core) + tokio-tungstenite.
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "9002".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    eprintln!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    if tx.send(msg).await.is_err() { return; }
                } else if msg.is_close() {
                    return;
                }
            }
        });
    }
}
EOF

    cat > "$WORK/fastwebsockets/Cargo.toml" <<'EOF'
[package]
name = "peer-fastwebsockets"
version = "0.1.0"
edition = "2021"

[dependencies]
tokio = { version = "1", features = ["rt", "net", "macros", "io-util"] }
fastwebsockets = "0.10"
sha1 = "0.10"
base64 = "0.22"
EOF
    cat > "$WORK/fastwebsockets/src/main.rs" <<'EOF'
//! Echo peer: tokio (current-thread runtime: one core) + fastwebsockets.
//! The upgrade is answered by hand so no HTTP library is in the way.
use base64::Engine;
use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn serve(mut stream: TcpStream) -> Option<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 16384 { return None; }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
    })?;
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    stream.write_all(resp.as_bytes()).await.ok()?;
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    loop {
        let frame = ws.read_frame().await.ok()?;
        match frame.opcode {
            OpCode::Close => return Some(()),
            // A read frame keeps the client's mask key; a server frame must not carry one.
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(Frame::new(true, frame.opcode, None, frame.payload)).await.ok()?
            }
            _ => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "9003".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    eprintln!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move { let _ = serve(stream).await; });
    }
}
EOF

    cat > "$WORK/python/echo.py" <<'EOF'
"""Echo peer: websockets + uvloop; JSON `ping` answered with orjson."""
import asyncio, sys
import orjson, uvloop
from websockets.asyncio.server import serve

async def handler(ws):
    async for message in ws:
        if isinstance(message, str) and message.startswith('{"op":"ping"'):
            cmd = orjson.loads(message)
            await ws.send(orjson.dumps({"op": "pong", "t": cmd.get("t")}).decode())
        else:
            await ws.send(message)

async def main(port):
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=1 << 20) as server:
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await server.serve_forever()

uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9004))
EOF

    cat > "$WORK/node/echo-ws.js" <<'EOF'
// Echo peer: node + ws.
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2] || 9005);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
wss.on('listening', () => console.error(`listening on 127.0.0.1:${port}`));
EOF
    cat > "$WORK/node/echo-uws.js" <<'EOF'
// Echo peer: uWebSockets.js (npm `uwebsockets`, prebuilt).
const uWS = require('uwebsockets');
const port = Number(process.argv[2] || 9006);
uWS.App().ws('/*', {
  compression: uWS.DISABLED, maxPayloadLength: 1 << 20, idleTimeout: 0,
  message: (ws, message, isBinary) => { ws.send(message, isBinary); },
}).listen('127.0.0.1', port, (token) => {
  if (!token) { console.error('listen failed'); process.exit(1); }
  console.error(`listening on 127.0.0.1:${port}`);
});
EOF
    cat > "$WORK/node/pubsub-uws.js" <<'EOF'
// Fan-out peer: uWebSockets.js pub/sub speaking the subset of the ws-uring
// protocol the loadgen's `publish` workload uses: welcome, join (+ok), publish
// (echo:true includes the sender), ping.
const uWS = require('uwebsockets');
const port = Number(process.argv[2] || 9007);
let nextId = 1, nextConn = 1;
const app = uWS.App();
app.ws('/*', {
  compression: uWS.DISABLED, maxPayloadLength: 1 << 20, idleTimeout: 0,
  upgrade: (res, req, context) => {
    const q = new URLSearchParams(req.getQuery() || '');
    res.upgrade({ user: q.get('user') || `anon-${nextConn}`, conn: nextConn++ },
      req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => {
    const d = ws.getUserData();
    ws.send(JSON.stringify({ op: 'welcome', user: d.user, conn: d.conn, shard: 0, server: 'uws-pubsub', heartbeat_ms: 20000 }));
  },
  message: (ws, message) => {
    let cmd;
    try { cmd = JSON.parse(Buffer.from(message).toString()); } catch (e) {
      ws.send('{"op":"error","ref":null,"code":"bad_json","reason":"bad json"}'); return;
    }
    if (cmd.op === 'join') {
      ws.subscribe(cmd.group);
      if (cmd.ref !== undefined) ws.send(JSON.stringify({ op: 'ok', ref: cmd.ref }));
    } else if (cmd.op === 'publish') {
      const ev = JSON.stringify({ op: 'msg', id: String(nextId++), from: ws.getUserData().user, to: null,
        group: cmd.group, priority: 'normal', ts: Date.now(), data: cmd.data });
      if (cmd.echo) app.publish(cmd.group, ev); else ws.publish(cmd.group, ev);
    } else if (cmd.op === 'ping') {
      ws.send(JSON.stringify({ op: 'pong', t: cmd.t }));
    } else {
      ws.send(JSON.stringify({ op: 'error', ref: cmd.ref ?? null, code: 'unknown_op', reason: cmd.op }));
    }
  },
}).listen('127.0.0.1', port, (token) => {
  if (!token) { console.error('listen failed'); process.exit(1); }
  console.error(`listening on 127.0.0.1:${port}`);
});
EOF
}

# ---------------------------------------------------------------- builds
build_all() {
    if [ "$BUILD_REPO" = 1 ]; then
        log "building loadgen and ws-uring (release)"
        (cd "$REPO" && cargo build --release -p loadgen -p ws-uring)
    fi
    for crate in raw-echo tokio-tungstenite fastwebsockets; do
        log "building peer $crate in $WORK"
        (cd "$WORK/$crate" && CARGO_TARGET_DIR="$WORK/target" cargo build --release) \
            || log "build of $crate failed: that peer is skipped"
    done
    if have python3; then
        log "installing websockets uvloop orjson into $WORK/python/venv"
        [ -x "$WORK/python/venv/bin/python" ] || python3 -m venv "$WORK/python/venv"
        "$WORK/python/venv/bin/pip" install -q websockets uvloop orjson \
            || log "pip install failed: python-websockets is skipped"
    fi
    if have npm; then
        log "installing ws and uwebsockets@3.0.6 (--ignore-scripts) into $WORK/node"
        (cd "$WORK/node" && { [ -f package.json ] || npm init -y >/dev/null; } \
            && npm install --ignore-scripts --no-audit --no-fund ws uwebsockets@3.0.6 >/dev/null) \
            || log "npm install failed: node peers are skipped"
    fi
}

# ---------------------------------------------------------------- running
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

SERVER_PID=""
PEER_URL=""
# running PID: the process is alive (a child that exited stays a zombie,
# state Z, until it is waited for).
running() {
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ]
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

# start_peer NAME PORT: starts the peer pinned to $SERVER_CORE; sets PEER_URL.
start_peer() {
    local name="$1" port="$2" cmd=()
    case "$name" in
        ws-uring) cmd=("$WS_URING" --echo --host 127.0.0.1 --port "$port" --shards 1) ;;
        ws-uring@*) variant_flags "$name" || return 1
            cmd=("$WS_URING" --echo --host 127.0.0.1 --port "$port" --shards 1 "${VARIANT_FLAGS[@]}") ;;
        ws-uring-pubsub) cmd=("$WS_URING" --host 127.0.0.1 --port "$port" --shards 1) ;;
        raw-echo) cmd=("$WORK/target/release/peer-raw-echo" "$port") ;;
        tokio-tungstenite) cmd=("$WORK/target/release/peer-tokio-tungstenite" "$port") ;;
        fastwebsockets) cmd=("$WORK/target/release/peer-fastwebsockets" "$port") ;;
        python-websockets) cmd=("$WORK/python/venv/bin/python" "$WORK/python/echo.py" "$port") ;;
        node-ws) cmd=(node "$WORK/node/echo-ws.js" "$port") ;;
        uws-js) cmd=(node "$WORK/node/echo-uws.js" "$port") ;;
        uws-js-pubsub) cmd=(node "$WORK/node/pubsub-uws.js" "$port") ;;
        *) log "unknown peer $name"; return 1 ;;
    esac
    [ -e "${cmd[0]}" ] || have "${cmd[0]}" || { log "skip $name: ${cmd[0]} missing"; return 1; }
    (cd "$WORK/node" 2>/dev/null || true; exec taskset -c "$SERVER_CORE" "${cmd[@]}") >"$RESULTS/$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            PEER_URL="ws://127.0.0.1:$port/ws"
            return 0
        fi
        # A server that refused its settings is gone at once: no need to
        # wait out the 10 s.
        if ! running "$SERVER_PID"; then
            log "skip $name: it exited before listening on $port (see $RESULTS/$name.log: $(tail -n 1 "$RESULTS/$name.log" 2>/dev/null))"
            stop_server
            return 1
        fi
        sleep 0.1
    done
    log "skip $name: did not listen on $port (see $RESULTS/$name.log)"
    stop_server
    return 1
}

# sample_cpu PID FILE: appends "unix_ms cpu_ticks" (utime + stime of PID)
# every 0.2 s until PID is gone; the table takes the loadgen's measured
# window out of it. One process that only sleeps between reads: a loop
# forking cat, date and sleep (15 processes a second) stalled the
# loadgen's core often enough to widen every server's p99 by a fifth
# (docs/PERFORMANCE.md, twelfth pass).
sample_cpu() {
    exec python3 - "$1" "$2" <<'PYEOF'
import sys, time
pid, path = sys.argv[1:]
with open(path, "a") as out:
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        # Fields after the parenthesised command name: utime is the 12th, stime the 13th.
        fields = stat.rsplit(")", 1)[1].split()
        out.write(f"{time.time_ns() // 1_000_000} {int(fields[11]) + int(fields[12])}\n")
        out.flush()
        time.sleep(0.2)
PYEOF
}

# run_loadgen NAME URL WORKLOAD [CONNECTIONS IN_FLIGHT GROUP RATE]: one
# baseline run, loadgen pinned to $LOADGEN_CORE, the server's CPU sampled;
# files are $RESULTS/NAME.*.
run_loadgen() {
    local name="$1" url="$2" workload="$3" connections="${4:-$CONNECTIONS}" in_flight="${5:-$IN_FLIGHT}" group="${6:-10}" rate="${7:-}"
    local rate_args=() sampler
    [ -n "$rate" ] && rate_args=(--rate "$rate")
    sample_cpu "$SERVER_PID" "$RESULTS/$name.cpu" &
    sampler=$!
    # Off the server's core: the sampler's own processes would be measured.
    taskset -pc "$LOADGEN_CORE" "$sampler" >/dev/null 2>&1 || true
    taskset -c "$LOADGEN_CORE" "$LOADGEN" --url "$url" --scenario baseline --workload "$workload" \
        --connections "$connections" --duration "$DURATION" --threads 1 --in-flight "$in_flight" \
        --size "$SIZE" --group-size "$group" "${rate_args[@]}" "${NO_SERVER_SAMPLE[@]}" \
        --output "$RESULTS/$name.json" >"$RESULTS/$name.table" 2>"$RESULTS/$name.loadgen.log" \
        || log "loadgen failed against $name (see $RESULTS/$name.loadgen.log)"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
}

# ---------------------------------------------------------------- main
write_sources
[ "$SKIP_BUILD" = 1 ] || build_all
[ -x "$LOADGEN" ] || { log "missing $LOADGEN"; exit 1; }
# The loadgen must not poll ws-uring's /metrics.json during a round (work on
# the measured core that a peer without the endpoint never gets). A loadgen
# built before --no-server-sample (an older LOADGEN=) still polls: say so
# rather than fail every round.
NO_SERVER_SAMPLE=(--no-server-sample)
if ! "$LOADGEN" --help 2>/dev/null | grep -q -- '--no-server-sample'; then
    NO_SERVER_SAMPLE=()
    log "note: $LOADGEN has no --no-server-sample: it polls ws-uring's /metrics.json once a second"
fi

[ "$WS_URING_BUILT_HERE" = 0 ] || check_variant_settings

RAN=()
for round in $(seq "$ROUNDS"); do
    # Round k starts with the k-th peer, so no peer always runs first.
    shift_by=$(( (round - 1) % ${#PEER_NAMES[@]} ))
    for peer in "${PEER_NAMES[@]:shift_by}" "${PEER_NAMES[@]:0:shift_by}"; do
        port="$(free_port)"
        if start_peer "$peer" "$port"; then
            log "round $round/$ROUNDS: running echo${RATE:+ at $RATE msg/s} against $peer ($PEER_URL)"
            run_loadgen "$peer.r$round" "$PEER_URL" echo "$CONNECTIONS" "$IN_FLIGHT" 10 "$RATE"
            stop_server
            RAN+=("$peer.r$round")
            sleep 1
        fi
    done
done
if [ "$FANOUT" = 1 ]; then
    for peer in ws-uring-pubsub uws-js-pubsub; do
        port="$(free_port)"
        if start_peer "$peer" "$port"; then
            # Fan-out: every connection in ONE group of $FANOUT_MEMBERS members,
            # each publishing (echo) with one message in flight: every publish
            # is delivered to all members.
            log "running publish ($FANOUT_MEMBERS members, one group) against $peer ($PEER_URL)"
            run_loadgen "$peer.r1" "$PEER_URL" publish "$FANOUT_MEMBERS" 1 "$FANOUT_MEMBERS"
            stop_server
            RAN+=("$peer.r1")
            sleep 1
        fi
    done
fi

OUT="$RESULTS/compare-$DATE.json"
python3 - "$RESULTS" "$OUT" "$DATE" "$CONNECTIONS" "$DURATION" "$IN_FLIGHT" "$SIZE" "$(getconf CLK_TCK)" "${RATE:-0}" "${RAN[@]}" <<'EOF'
import json, os, platform, sys
results, out, date, conns, duration, in_flight, size, clk_tck, rate, *runs = sys.argv[1:]
clk_tck, rate = int(clk_tck), int(rate)

def cpu_s_between(path, start_ms, end_ms):
    """Server CPU seconds between two unix-ms times, from the sampler's file
    (the samples nearest inside the window; None if too few)."""
    if not os.path.exists(path):
        return None, None
    samples = [tuple(map(int, l.split())) for l in open(path) if len(l.split()) == 2]
    inside = [s for s in samples if start_ms <= s[0] <= end_ms]
    if len(inside) < 2:
        return None, None
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return (c1 - c0) / clk_tck, (t1 - t0) / 1000.0

rows = []
for run in runs:
    path = os.path.join(results, run + ".json")
    if not os.path.exists(path):
        continue
    peer, _, rnd = run.rpartition(".r")
    s = json.load(open(path))["scenarios"][0]
    m = s["summary"]
    start_ms = s["started_unix_ms"] + s["measure_from_s"] * 1000
    cpu_s, cpu_window_s = cpu_s_between(os.path.join(results, run + ".cpu"), start_ms, start_ms + m["window_s"] * 1000)
    cpu_us = round(cpu_s * 1e6 / (m["msg_per_s"] * cpu_window_s), 2) if cpu_s is not None and m["msg_per_s"] > 0 else None
    rows.append({
        "peer": peer, "round": int(rnd), "workload": s["workload"], "msg_per_s": round(m["msg_per_s"]),
        "p50_us": m["latency_us"]["p50"], "p99_us": m["latency_us"]["p99"],
        "p999_us": m["latency_us"]["p999"], "errors": m["errors_total"], "grade": s["grade"]["grade"],
        "errors_by_kind": m.get("errors") or {},
        "server_cpu_percent": round(100 * cpu_s / cpu_window_s, 1) if cpu_s is not None else None,
        "server_cpu_us_per_msg": cpu_us,
        # The slowest connection's mean latency over the median one's (a
        # starved connection stands out); None from loadgens without it.
        "slowest_connection_vs_median": m.get("slowest_connection_vs_median"),
    })
def base(r):
    ref = "ws-uring" if r["workload"] == "echo" else "ws-uring-pubsub"
    return next((b for b in rows if b["peer"] == ref and b["round"] == r["round"]), None)
for r in rows:
    b = base(r)
    r["ratio_to_ws_uring"] = round(r["msg_per_s"] / b["msg_per_s"], 3) if b else None
    # Above 1: the peer spends more CPU per message than ws-uring.
    r["cpu_ratio_to_ws_uring"] = (round(r["server_cpu_us_per_msg"] / b["server_cpu_us_per_msg"], 3)
                                  if b and r["server_cpu_us_per_msg"] and b["server_cpu_us_per_msg"] else None)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
doc = {"schema": "ws-uring-compare/1", "date": date, "machine": {"cpu": cpu, "cores": os.cpu_count(),
       "kernel": platform.release()}, "connections": int(conns), "duration_s": float(duration),
       "in_flight": int(in_flight), "message_bytes": int(size), "server_core": 0, "loadgen_core": 1,
       "echo_rate_msg_per_s": rate or None, "peers": rows}
json.dump(doc, open(out, "w"), indent=2)
fmt = lambda v, spec: format(v, spec) if v is not None else "-"
# Wide enough for a variant's name (ws-uring@KEY=VALUE...).
pw = max([20] + [len(r["peer"]) for r in rows])
print(f"\n{'peer':<{pw}} {'round':>5} {'workload':<8} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'errors':>7} {'grade':>5} "
      f"{'srv cpu %':>9} {'us/msg':>7} {'vs ws-uring':>11} {'cpu vs':>7}")
for r in rows:
    ratio = f"{r['ratio_to_ws_uring']:.2f}x" if r["ratio_to_ws_uring"] is not None else "-"
    cpu_ratio = f"{r['cpu_ratio_to_ws_uring']:.2f}x" if r["cpu_ratio_to_ws_uring"] is not None else "-"
    print(f"{r['peer']:<{pw}} {r['round']:>5} {r['workload']:<8} {r['msg_per_s']:>10} {r['p50_us']/1000:>8.2f} {r['p99_us']/1000:>8.2f} "
          f"{r['p999_us']/1000:>8.2f} {r['errors']:>7} {r['grade']:>5} {fmt(r['server_cpu_percent'], '>9.1f')} "
          f"{fmt(r['server_cpu_us_per_msg'], '>7.2f')} {ratio:>11} {cpu_ratio:>7}")
for r in rows:
    if r["errors_by_kind"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["errors_by_kind"].items()))
        print(f"  {r['peer']} (round {r['round']}) errors: {kinds}")
print(f"\nwrote {out}")
EOF
if [ "$ROUNDS" -gt 1 ]; then
    echo
    # No echo round (every peer skipped) is reported, not a failed run.
    python3 "$REPO/scripts/compare_summary.py" "$OUT" || log "no summary of the rounds (above)"
fi
