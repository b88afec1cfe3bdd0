//! Writes the seed corpus, `fuzz/corpus/<target>/seed-*`: the commands of
//! docs/PROTOCOL.md, binary frames, real upgrade and API requests, and logs
//! produced by ws-uring's own record encoder. Not a fuzz target:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Re-running it rewrites the same files (the inputs are fixed).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ws_uring::protocol::{compress, Priority};
use ws_uring::routing::envelope::{MessageBody, MessageParts};
use ws_uring::store::record::{
    self, DurableEntry, StoredAckTarget, StoredMsg, StoredTarget, WalRecord,
};
use ws_uring_fuzz::{ALLOWED_ORIGIN, AUTH_SECRET, PROCESSOR_OP};

/// Named inputs of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn commands() -> Seeds {
    let text = [
        ("ping", r#"{"op":"ping","t":123,"ref":1}"#.to_string()),
        ("ping-bare", r#"{"op":"ping"}"#.into()),
        ("echo", r#"{"op":"echo","data":[1,2],"ref":2}"#.into()),
        ("echo-null", r#"{"op":"echo","data":null}"#.into()),
        ("echo-raw", r#"{"op":"echo","ref":"a","data":{"x" : 1.50e3, "s":"\u00e9"}}"#.into()),
        ("join", r#"{"op":"join","group":"room","weight":3,"ref":3}"#.into()),
        ("leave", r#"{"op":"leave","group":"room","ref":4}"#.into()),
        (
            "send",
            r#"{"op":"send","to":"bob","data":{"x":1},"priority":"high","ack":true,"ref":5}"#.into(),
        ),
        (
            "send-delay-ttl",
            r#"{"op":"send","to":"bob@example.com","data":"later","delay_ms":5000,"ttl_ms":60000,"ref":"s1"}"#.into(),
        ),
        (
            "send-at",
            r#"{"op":"send","to":"bob","data":1,"at":1800000005000,"priority":"critical"}"#.into(),
        ),
        ("publish", r#"{"op":"publish","group":"room","data":"hi","echo":true,"ref":6}"#.into()),
        ("anycast", r#"{"op":"anycast","group":"workers","data":{"job":7},"ref":7}"#.into()),
        (
            "strategy",
            r#"{"op":"strategy","group":"workers","strategy":"least_connections","ref":8}"#.into(),
        ),
        ("ack", r#"{"op":"ack","id":"mwyw03rq-0-5","ref":9}"#.into()),
        ("unknown", r#"{"op":"fly","ref":-3}"#.into()),
        (
            "custom",
            format!(r#"{{"op":"{PROCESSOR_OP}","to":"bob","group":"room","data":[true],"delay_ms":10,"ref":10}}"#),
        ),
        ("custom-fail", format!(r#"{{"op":"{PROCESSOR_OP}","fail":"no"}}"#)),
        ("dup-field", r#"{"op":"ping","op":"echo"}"#.into()),
        ("bad-json", "{\"op\":".into()),
        ("not-object", "[1,2]".into()),
        ("delay-and-at", r#"{"op":"send","to":"b","data":1,"delay_ms":5,"at":9}"#.into()),
    ];
    let mut out: Seeds = text.into_iter().map(|(n, t)| (n, t.into_bytes())).collect();
    out.extend(binary_frames());
    out
}

fn frame(header: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = header.as_bytes().to_vec();
    f.push(b'\n');
    f.extend_from_slice(payload);
    f
}

fn binary_frames() -> Seeds {
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
    vec![
        (
            "bin-echo",
            frame(r#"{"op":"echo","ref":1}"#, b"\x00\x01\n\xff"),
        ),
        ("bin-send", frame(r#"{"op":"send","to":"bob"}"#, b"payload")),
        (
            "bin-publish-lz4",
            frame(
                r#"{"op":"publish","group":"g","lz4":true,"ref":2}"#,
                &compress::compress(&big),
            ),
        ),
        (
            "bin-anycast-big",
            frame(r#"{"op":"anycast","group":"g","priority":"low"}"#, &big),
        ),
        ("bin-no-newline", b"{\"op\":\"echo\"}".to_vec()),
        ("bin-bad-utf8", b"\xff\xfe\n\x00".to_vec()),
    ]
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(AUTH_SECRET.as_bytes()),
    )
    .expect("HS256 signs")
}

fn http_requests() -> Seeds {
    let upgrade = |target: &str, extra: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    let alice = token(serde_json::json!({"sub": "alice", "groups": ["room", "team-*"]}));
    let mut after_head = upgrade("/ws?user=carol", "");
    after_head.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    let body = br#"{"to":"bob","data":{"x":1},"priority":"high"}"#;
    vec![
        ("upgrade", upgrade("/ws", "")),
        ("upgrade-user", upgrade("/ws?user=alice", "")),
        (
            "upgrade-lz4",
            upgrade(
                "/ws?user=a%40b.c&x=1",
                "Sec-WebSocket-Protocol: chat, wsu.v1.lz4, wsu.v1\r\nConnection: keep-alive, Upgrade\r\n",
            ),
        ),
        ("upgrade-token-query", upgrade(&format!("/ws?token={alice}"), "")),
        (
            "upgrade-bearer",
            upgrade("/ws?user=alice", &format!("Authorization: Bearer {alice}\r\n")),
        ),
        (
            "upgrade-origin",
            upgrade("/ws", &format!("Origin: {}/\r\n", ALLOWED_ORIGIN.to_uppercase())),
        ),
        ("upgrade-frames-after", after_head),
        ("upgrade-bad-version", upgrade("/ws", "Sec-WebSocket-Version: 8\r\n")),
        ("health", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("metrics-http10", b"GET /metrics HTTP/1.0\r\n\r\n".to_vec()),
        (
            "dlq-query",
            b"GET /admin/dlq?offset=0&limit=10 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k3n\r\n\r\n"
                .to_vec(),
        ),
        (
            "api-send",
            [
                format!(
                    "POST /api/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
                body,
            ]
            .concat(),
        ),
        (
            "chunked",
            b"POST /admin/dlq/replay HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("wrong-method", b"DELETE /health HTTP/1.1\r\n\r\n".to_vec()),
        ("partial", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpg".to_vec()),
        ("query-only", b"user=bob&user=eve".to_vec()),
    ]
}

fn parts(body: MessageBody, priority: Priority) -> MessageParts {
    MessageParts {
        id: "mwyw03rq-0-5".into(),
        from: "alice".into(),
        to: Some("bob".into()),
        group: None,
        priority,
        ts_unix_ms: 1_800_000_000_000,
        ack: true,
        expires_unix_ms: Some(1_800_000_060_000),
        body,
    }
}

fn wal_logs() -> Seeds {
    let json = StoredMsg::from_parts(
        &parts(MessageBody::Json(r#"{"text":"hi"}"#.into()), Priority::High),
        1024,
    );
    let lz4 = StoredMsg::from_parts(
        &parts(
            MessageBody::Json(format!("\"{}\"", "x".repeat(2000))),
            Priority::Low,
        ),
        1024,
    );
    let binary = StoredMsg::from_parts(
        &parts(
            MessageBody::Binary {
                payload: Bytes::from_static(b"\x00\x01\x02\n\xff"),
                compressed: None,
            },
            Priority::Critical,
        ),
        1024,
    );
    let records = vec![
        WalRecord::Upsert {
            key: "m/bob/mwyw03rq-0-5".into(),
            entry: DurableEntry::Mailbox {
                user: "bob".into(),
                msg: json.clone(),
            },
        },
        WalRecord::Upsert {
            key: "s/mwyw03rq-0-6".into(),
            entry: DurableEntry::Scheduled {
                target: StoredTarget::Group {
                    group: "room".into(),
                    echo: true,
                },
                msg: lz4,
                due_unix_ms: 1_800_000_005_000,
            },
        },
        WalRecord::Upsert {
            key: "p/bob/mwyw03rq-0-7".into(),
            entry: DurableEntry::Pending {
                target: StoredAckTarget::Member {
                    group: "workers".into(),
                    user: "bob".into(),
                },
                msg: binary.clone(),
                attempt: 2,
            },
        },
        WalRecord::Upsert {
            key: "d/9".into(),
            entry: DurableEntry::Dead {
                target: StoredTarget::Anycast("workers".into()),
                msg: binary,
                reason: "expired".into(),
                at_unix_ms: 1_800_000_009_000,
                attempts: 5,
                seq: 9,
            },
        },
        WalRecord::Upsert {
            key: "s/mwyw03rq-0-8".into(),
            entry: DurableEntry::Scheduled {
                target: StoredTarget::User("carol".into()),
                msg: json.clone(),
                due_unix_ms: 7,
            },
        },
        WalRecord::Upsert {
            key: "m/dave/mwyw03rq-0-9".into(),
            entry: DurableEntry::MailboxRedelivery {
                user: "dave".into(),
                msg: json,
                attempts_made: 2,
            },
        },
        WalRecord::Remove {
            key: "m/bob/mwyw03rq-0-5".into(),
        },
    ];
    let log_of = |rs: &[WalRecord]| {
        let mut out = Vec::new();
        for r in rs {
            record::encode(r, &mut out);
        }
        out
    };
    let mut out: Seeds = Vec::new();
    let names = [
        "mailbox",
        "scheduled-lz4",
        "pending-binary",
        "dead",
        "scheduled-user",
        "mailbox-redelivery",
        "remove",
    ];
    for (name, r) in names.into_iter().zip(&records) {
        out.push((name, log_of(std::slice::from_ref(r))));
    }
    let all = log_of(&records);
    let mut torn = all.clone();
    torn.truncate(all.len() - 5);
    let mut corrupt = all.clone();
    corrupt[FRAME_OFFSET] ^= 0x55;
    out.push(("log", all));
    out.push(("log-torn", torn));
    out.push(("log-corrupt-middle", corrupt));
    out
}

/// A byte inside the first record's payload.
const FRAME_OFFSET: usize = record::FRAME_HEADER_BYTES + 3;

fn main() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut command_seeds = commands();
    command_seeds.sort();
    let sets: [(&str, Seeds); 4] = [
        ("command", command_seeds),
        ("binary_header", binary_frames()),
        ("http_request", http_requests()),
        ("wal_record", wal_logs()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in &seeds {
            write(&dir, name, bytes);
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
}
