//! The fuzz targets' properties on stable Rust, for CI: the checks of
//! `fuzz/src/lib.rs` (included below, the same code the cargo-fuzz targets
//! call) run on proptest-generated inputs, and on every input of the
//! committed corpus (`fuzz/corpus/`, seeds plus what fuzzing kept), so a
//! crash the fuzzer once found stays fixed. See docs/FUZZING.md.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

use bytes::Bytes;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::collection::vec;
use proptest::prelude::*;

use ws_uring::protocol::{compress, Priority};
use ws_uring::routing::envelope::{MessageBody, MessageParts};
use ws_uring::store::record::{
    self, DurableEntry, StoredAckTarget, StoredMsg, StoredTarget, WalRecord,
};

// ---------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Names valid and not: user ids, group names, empty, too long, anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.:@/-]{1,12}",
        1 => "[a-z]{126,130}",
        1 => Just(String::new()),
        2 => ".{0,8}",
    ]
}

/// Words the protocol gives meaning to, as JSON strings.
fn word() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ping",
        "echo",
        "join",
        "leave",
        "send",
        "publish",
        "anycast",
        "ack",
        "strategy",
        "custom",
        "nope",
        "low",
        "normal",
        "high",
        "critical",
        "urgent",
        "round_robin",
        "least_connections",
        "weighted",
        "random",
    ])
    .prop_map(json_string)
}

/// JSON values, written by hand so that forms serde_json would not write
/// itself (`1e400`, `-0`, `1.0`, numbers past u64) come up too.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2000).prop_map(|n| n.to_string()),
        (u64::MAX - 10_000_000_000_000..=u64::MAX).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "1e400",
            "-0",
            "1.0",
            "18446744073709551616",
            "1.5e3",
            "-1"
        ])
        .prop_map(str::to_string),
        name().prop_map(|s| json_string(&s)),
        word(),
        any::<String>().prop_map(|s| json_string(&s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            vec((name(), inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json_string(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

const FIELDS: [&str; 18] = [
    "op", "ref", "data", "t", "group", "to", "weight", "strategy", "priority", "ack", "delay_ms",
    "at", "ttl_ms", "echo", "lz4", "id", "fail", "other",
];

/// A command object: usually an `op` from the protocol, then any of the
/// fields commands read (values of every kind, duplicates possible).
fn command_json() -> impl Strategy<Value = String> {
    let op = prop_oneof![3 => word(), 1 => json_value()];
    let field = (
        prop::sample::select(FIELDS.to_vec()),
        prop_oneof![word(), json_value()],
    );
    (
        prop::option::weighted(0.9, op),
        vec(field, 0..7),
        prop::sample::select(vec![",", " , ", ",\n"]),
    )
        .prop_map(|(op, fields, sep)| {
            let mut parts: Vec<String> = Vec::new();
            if let Some(op) = op {
                parts.push(format!("\"op\":{op}"));
            }
            for (k, v) in fields {
                parts.push(format!("{}:{v}", json_string(k)));
            }
            format!("{{{}}}", parts.join(sep))
        })
}

/// A payload: plain, lz4 of something, or lz4 damaged.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(any::<u8>(), 0..4096).prop_map(|p| compress::compress(&p)),
        (vec(0u8..4, 0..100_000), any::<usize>(), any::<u8>()).prop_map(|(p, at, x)| {
            let mut c = compress::compress(&p);
            let i = at % c.len();
            c[i] ^= x;
            c
        }),
        (vec(any::<u8>(), 0..512), any::<usize>()).prop_map(|(p, cut)| {
            let mut c = compress::compress(&p);
            c.truncate(cut % (c.len() + 1));
            c
        }),
    ]
}

fn binary_frame() -> impl Strategy<Value = Vec<u8>> {
    (command_json(), payload()).prop_map(|(header, payload)| {
        let mut f = header.into_bytes();
        f.push(b'\n');
        f.extend_from_slice(&payload);
        f
    })
}

fn token() -> impl Strategy<Value = String> {
    (
        name(),
        prop::option::of(vec(name(), 0..3)),
        prop::option::of(0u64..4_000_000_000),
        prop::sample::select(vec![checks::AUTH_SECRET, "another-secret"]),
    )
        .prop_map(|(sub, groups, exp, secret)| {
            let mut claims = serde_json::json!({ "sub": sub });
            if let Some(g) = groups {
                claims["groups"] = serde_json::json!(g);
            }
            if let Some(exp) = exp {
                claims["exp"] = serde_json::json!(exp);
            }
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        })
}

fn query_string() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        name(),
        "(%[0-9A-Fa-f]{2}|[a-z+]){0,6}",
        token(),
        "[0-9]{1,25}",
    ];
    let pair = (
        prop::sample::select(vec![
            "user", "token", "offset", "limit", "sort", "u%73er", "x",
        ]),
        value,
    );
    vec(pair, 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn header() -> impl Strategy<Value = (String, String)> {
    let names = prop::sample::select(vec![
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Origin",
        "Authorization",
        "Content-Length",
        "Transfer-Encoding",
        "X-Junk",
    ])
    .prop_map(str::to_string);
    let values = prop_oneof![
        Just("websocket".to_string()),
        Just("keep-alive, Upgrade".to_string()),
        Just("dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        Just("13".to_string()),
        Just("chat, wsu.v1.lz4".to_string()),
        Just(format!("{}/", checks::ALLOWED_ORIGIN)),
        Just("https://evil.example".to_string()),
        token().prop_map(|t| format!("Bearer {t}")),
        "[0-9]{1,22}",
        "[ -~]{0,30}",
    ];
    (prop_oneof![4 => names, 1 => "[!-~]{1,10}"], values)
}

/// Request heads, well-formed and not, often an upgrade, sometimes cut.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            prop::sample::select(vec!["GET", "POST", "DELETE"]).prop_map(str::to_string),
            "[A-Z]{1,8}",
        ],
        prop_oneof![
            Just("/ws".to_string()),
            Just("/health".to_string()),
            Just("/api/send".to_string()),
            Just("/admin/dlq".to_string()),
            Just("/admin/dlq/replay".to_string()),
            Just("/metrics".to_string()),
            Just("*".to_string()),
            Just("http://x/ws".to_string()),
            "/[a-z/?&=%]{0,12}",
        ],
        prop::option::of(query_string()),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x"]),
        any::<bool>(),
        vec(header(), 0..6),
        prop::sample::select(vec!["\r\n", "\n"]),
        vec(any::<u8>(), 0..32),
        prop::option::weighted(0.2, any::<usize>()),
    )
        .prop_map(
            |(method, path, query, version, upgrade, headers, eol, body, cut)| {
                let mut text = format!("{method} {path}");
                if let Some(q) = query {
                    text.push('?');
                    text.push_str(&q);
                }
                text.push_str(&format!(" {version}{eol}"));
                if upgrade {
                    for h in [
                        "Upgrade: websocket",
                        "Connection: Upgrade",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version: 13",
                    ] {
                        text.push_str(h);
                        text.push_str(eol);
                    }
                }
                for (n, v) in headers {
                    text.push_str(&format!("{n}: {v}{eol}"));
                }
                text.push_str(eol);
                let mut bytes = text.into_bytes();
                bytes.extend_from_slice(&body);
                if let Some(cut) = cut {
                    bytes.truncate(cut % (bytes.len() + 1));
                }
                bytes
            },
        )
}

fn priority() -> impl Strategy<Value = Priority> {
    prop::sample::select(vec![
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ])
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        json_value().prop_map(MessageBody::Json),
        vec(any::<u8>(), 0..2048).prop_map(|p| MessageBody::Binary {
            payload: Bytes::from(p),
            compressed: None,
        }),
        (0u8..3, 0usize..5000).prop_map(|(b, n)| MessageBody::Binary {
            payload: Bytes::from(vec![b; n]),
            compressed: None,
        }),
    ]
}

/// Stored messages as the server makes them, and with any field values.
fn stored_msg() -> impl Strategy<Value = StoredMsg> {
    let parts = (
        any::<String>(),
        name(),
        prop::option::of(name()),
        prop::option::of(name()),
        priority(),
        any::<u64>(),
        any::<bool>(),
        prop::option::of(any::<u64>()),
        body(),
    )
        .prop_map(
            |(id, from, to, group, priority, ts_unix_ms, ack, expires_unix_ms, body)| {
                MessageParts {
                    id,
                    from,
                    to,
                    group,
                    priority,
                    ts_unix_ms,
                    ack,
                    expires_unix_ms,
                    body,
                }
            },
        );
    let raw = (
        (any::<String>(), any::<String>()),
        prop::option::of(any::<String>()),
        prop::option::of(any::<String>()),
        any::<u8>(),
        any::<u64>(),
        any::<bool>(),
        prop::option::of(any::<u64>()),
        payload(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                (id, from),
                to,
                group,
                priority,
                ts_unix_ms,
                ack,
                expires,
                body,
                binary,
                body_lz4,
            )| {
                StoredMsg {
                    id,
                    from,
                    to,
                    group,
                    priority,
                    ts_unix_ms,
                    ack,
                    expires_unix_ms: expires,
                    body,
                    binary,
                    body_lz4,
                }
            },
        );
    prop_oneof![
        (parts, prop::sample::select(vec![0usize, 64, 1024]))
            .prop_map(|(p, min)| StoredMsg::from_parts(&p, min)),
        raw,
    ]
}

fn stored_target() -> impl Strategy<Value = StoredTarget> {
    prop_oneof![
        name().prop_map(StoredTarget::User),
        (name(), any::<bool>()).prop_map(|(group, echo)| StoredTarget::Group { group, echo }),
        name().prop_map(StoredTarget::Anycast),
    ]
}

fn wal_record() -> impl Strategy<Value = WalRecord> {
    let ack_target = prop_oneof![
        name().prop_map(StoredAckTarget::User),
        (name(), name()).prop_map(|(group, user)| StoredAckTarget::Member { group, user }),
        name().prop_map(StoredAckTarget::Anycast),
    ];
    let entry = prop_oneof![
        (name(), stored_msg()).prop_map(|(user, msg)| DurableEntry::Mailbox { user, msg }),
        (name(), stored_msg(), any::<u32>()).prop_map(|(user, msg, attempts_made)| {
            DurableEntry::MailboxRedelivery {
                user,
                msg,
                attempts_made,
            }
        }),
        (stored_target(), stored_msg(), any::<u64>()).prop_map(|(target, msg, due_unix_ms)| {
            DurableEntry::Scheduled {
                target,
                msg,
                due_unix_ms,
            }
        }),
        (ack_target, stored_msg(), any::<u32>()).prop_map(|(target, msg, attempt)| {
            DurableEntry::Pending {
                target,
                msg,
                attempt,
            }
        }),
        (
            stored_target(),
            stored_msg(),
            any::<String>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(target, msg, reason, at_unix_ms, attempts, seq)| {
                DurableEntry::Dead {
                    target,
                    msg,
                    reason,
                    at_unix_ms,
                    attempts,
                    seq,
                }
            }),
    ];
    prop_oneof![
        3 => (any::<String>(), entry).prop_map(|(key, entry)| WalRecord::Upsert { key, entry }),
        1 => any::<String>().prop_map(|key| WalRecord::Remove { key }),
    ]
}

/// Whole numbers, the edges of u64 included.
fn whole_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..100_000,
        u64::MAX - 10_000_000_000_000..=u64::MAX,
    ]
}

/// A command for the custom processor, which passes the client's fields on.
fn processor_command() -> impl Strategy<Value = String> {
    (
        prop::option::of(name()),
        prop::option::of(name()),
        prop::option::of(whole_number()),
        prop::option::of(".{0,8}"),
        json_value(),
    )
        .prop_map(|(to, group, delay, fail, data)| {
            let mut fields = vec![
                format!("\"op\":{}", json_string(checks::PROCESSOR_OP)),
                format!("\"data\":{data}"),
            ];
            if let Some(to) = to {
                fields.push(format!("\"to\":{}", json_string(&to)));
            }
            if let Some(group) = group {
                fields.push(format!("\"group\":{}", json_string(&group)));
            }
            if let Some(delay) = delay {
                fields.push(format!("\"delay_ms\":{delay}"));
            }
            if let Some(fail) = fail {
                fields.push(format!("\"fail\":{}", json_string(&fail)));
            }
            format!("{{{}}}", fields.join(","))
        })
}

/// A frame whose checksum is right but whose payload is anything: what
/// rkyv's validation must refuse without trusting it.
fn checksummed_frame() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64).prop_map(|payload| {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    })
}

fn encoded(records: &[WalRecord]) -> Vec<u8> {
    let mut log = Vec::new();
    for r in records {
        record::encode(r, &mut log);
    }
    log
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    // (a) commands

    #[test]
    fn any_text_is_a_command_or_an_error(text in any::<String>()) {
        checks::command_text(&text);
    }

    #[test]
    fn command_objects_decode_consistently(text in command_json()) {
        checks::command_text(&text);
    }

    #[test]
    fn processor_commands_decode_consistently(text in processor_command()) {
        checks::command_text(&text);
    }

    #[test]
    fn any_bytes_are_a_binary_command_or_an_error(data in vec(any::<u8>(), 0..512)) {
        checks::command(&data);
    }

    #[test]
    fn binary_commands_decode_consistently(frame in binary_frame()) {
        checks::command_binary(&frame);
    }

    // (b) the binary header split and lz4

    #[test]
    fn binary_headers_split_at_the_first_newline(frame in binary_frame()) {
        checks::binary_header(&frame);
    }

    #[test]
    fn any_bytes_split_or_are_refused(data in vec(any::<u8>(), 0..512)) {
        checks::binary_header(&data);
    }

    #[test]
    fn lz4_never_expands_past_its_bound(data in payload(), max in 0usize..200_000) {
        checks::lz4(&data, max);
    }

    // (c) HTTP

    #[test]
    fn request_heads_parse_consistently(request in request()) {
        checks::http_request(&request);
    }

    #[test]
    fn any_bytes_are_a_head_or_refused(data in vec(any::<u8>(), 0..512)) {
        checks::http_request(&data);
    }

    #[test]
    fn queries_parse_consistently(q in query_string()) {
        checks::query(&q);
    }

    #[test]
    fn any_query_parses_consistently(q in any::<String>()) {
        checks::query(&q);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    // (d) the log

    #[test]
    fn records_round_trip_cut_and_damaged(
        records in vec(wal_record(), 1..5),
        cut in any::<usize>(),
        flip in any::<usize>(),
    ) {
        checks::wal_records(&records, cut, flip);
    }

    #[test]
    fn encoded_logs_with_damage_read_by_the_rules(
        records in vec(wal_record(), 1..4),
        damage in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut log = encoded(&records);
        for (at, x) in damage {
            let i = at % log.len();
            log[i] ^= x;
        }
        log.truncate(cut % (log.len() + 1));
        checks::wal_log(&log);
    }

    #[test]
    fn checksummed_garbage_is_torn_at_the_end_and_corrupt_before_data(
        before in vec(wal_record(), 0..3),
        garbage in checksummed_frame(),
        after in vec(wal_record(), 0..2),
    ) {
        let mut log = encoded(&before);
        log.extend_from_slice(&garbage);
        log.extend_from_slice(&encoded(&after));
        checks::wal_log(&log);
    }

    #[test]
    fn any_bytes_are_a_log_or_refused(data in vec(any::<u8>(), 0..1024)) {
        checks::wal_log(&data);
    }
}

/// Every input of the committed corpus still passes its target's checks
/// (this replays the crashes fuzzing found, after their fixes).
#[test]
fn committed_fuzz_corpus_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("command", checks::command),
        ("binary_header", checks::binary_header),
        ("http_request", checks::http_request),
        ("wal_record", checks::wal_log),
    ];
    for (target, check) in targets {
        let dir = root.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                panic!("{target}: {} fails: {panic:?}", path.display());
            }
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for {target}");
    }
}
