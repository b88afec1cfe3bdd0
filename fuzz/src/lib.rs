//! The properties ws-uring's decoders must keep on any input, written once
//! and checked two ways: by the cargo-fuzz targets in `fuzz_targets/` (one
//! call per input) and by `tests/properties.rs` (proptest, stable Rust, CI),
//! which includes this file with `#[path]`. Every check panics on a
//! violation, which both harnesses report as a failure with the input.
//!
//! Only ws-uring's public API and its own dependencies are used, so the
//! file compiles the same in both places.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use ws_uring::auth::Authenticator;
use ws_uring::conn::commands::{self, Action, CommandContext, Mode};
use ws_uring::http::router::{self, Endpoint, Route};
use ws_uring::http::upgrade;
use ws_uring::http::{self, HttpError, RequestHead, Response, REQUEST_HEAD_MAX_BYTES};
use ws_uring::processor::{ProcessorContext, ProcessorRequest, Processors};
use ws_uring::protocol::{
    self, compress, identity, Command, CommandError, ErrorCode, Priority, Request, WEIGHT_RANGE,
};
use ws_uring::routing::envelope::MessageBody;
use ws_uring::routing::Target;
use ws_uring::store::record::{self, LogError, WalRecord, FRAME_HEADER_BYTES, RECORD_MAX_BYTES};

/// The sender every command is handled for.
pub const USER: &str = "fuzzer";
/// `max_message_bytes` of the command context (small, so `too_large` is reachable).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// `compress_min_bytes` of the command context.
pub const COMPRESS_MIN_BYTES: usize = 64;
/// The clock of the command context (unix ms).
pub const NOW_UNIX_MS: u64 = 1_800_000_000_000;
/// `schedule_max_ms` of the command context.
pub const SCHEDULE_MAX_MS: u64 = 86_400_000;
/// The op of the custom processor registered in half of the runs.
pub const PROCESSOR_OP: &str = "custom";
/// The JWT secret of the authenticated upgrade checks.
pub const AUTH_SECRET: &str = "fuzz-secret";
/// The origin allowed in the origin-checked upgrade checks.
pub const ALLOWED_ORIGIN: &str = "https://app.example";
/// The WebSocket path routed to.
pub const WS_PATH: &str = "/ws";
/// The body bound `http::body_length` is called with.
pub const BODY_MAX_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;
/// Largest error `reason` a command may cause: errors never echo an
/// unbounded part of the command back.
pub const ERROR_REASON_MAX_BYTES: usize = 1024;

// ---------------------------------------------------------------------------
// (a) Commands: text frames and binary frames through the whole sans-IO path.
// ---------------------------------------------------------------------------

/// One WebSocket data message as a client could send it: decoded as a text
/// command (when it is UTF-8) and as a binary frame, directly and through
/// `conn::commands::handle_message`. A custom processor is registered: it
/// only changes what happens to its own op (unknown ops are still
/// `unknown_op`), so one run covers both.
pub fn command(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        command_text(text);
    }
    command_binary(data);
}

/// A text frame.
pub fn command_text(text: &str) {
    match protocol::decode_command(text) {
        Ok(request) => check_request(text, &request),
        Err(e) => check_command_error(text, &e),
    }
    let action = handle(Message::text(text), Mode::Protocol);
    check_action(&action, None, false);
    // `--echo` mode: the same message back, verbatim.
    match handle(Message::text(text), Mode::Echo) {
        Action::Reply(frame) => assert_eq!(read_frame(&frame), Message::text(text)),
        other => panic!("echo mode did not echo: {other:?}"),
    }
}

/// A binary frame: a JSON header, `\n`, the payload.
pub fn command_binary(frame: &[u8]) {
    if let Ok((header, _)) = protocol::split_binary(frame) {
        match protocol::decode_command(header) {
            Ok(request) => check_request(header, &request),
            Err(e) => check_command_error(header, &e),
        }
    }
    let action = handle(Message::binary(frame.to_vec()), Mode::Protocol);
    let payload = protocol::split_binary(frame).ok().map(|(_, p)| p);
    check_action(&action, payload, false);
}

/// A processor as an application would write one: it passes fields of the
/// client's command on to the server.
fn processors() -> Processors {
    let custom = |req: &ProcessorRequest<'_>, ctx: &mut ProcessorContext| {
        let data = req.command.get("data").cloned().unwrap_or(Value::Null);
        if let Some(to) = req.command.get("to").and_then(Value::as_str) {
            match req.command.get("delay_ms").and_then(Value::as_u64) {
                Some(delay) => ctx.schedule_send(to, data.clone(), Priority::High, delay),
                None => ctx.send(to, data.clone(), Priority::High),
            }
        }
        if let Some(group) = req.command.get("group").and_then(Value::as_str) {
            ctx.publish(group, data, Priority::Low, true);
        }
        match req.command.get("fail").and_then(Value::as_str) {
            Some(reason) => ctx.error(ErrorCode::BadRequest, reason),
            None => ctx.ok(),
        }
    };
    let mut processors = Processors::default();
    processors
        .register(PROCESSOR_OP, Arc::new(custom))
        .expect("a valid op");
    processors
}

fn handle(message: Message, mode: Mode) -> Action {
    let processors = processors();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("fz-0-{n}")
    };
    let mut ctx = CommandContext {
        user: USER,
        max_message_bytes: MAX_MESSAGE_BYTES,
        compress_min_bytes: COMPRESS_MIN_BYTES,
        // A client without `wsu.v1.lz4`: every payload it gets is plain.
        wants_lz4: false,
        taken_in_unix_us: std::cell::OnceCell::from(NOW_UNIX_MS * 1000),
        schedule_max_ms: SCHEDULE_MAX_MS,
        next_message_id: &mut next_id,
        processors: &processors,
        errors: Vec::new(),
    };
    commands::handle_message(message, mode, &mut ctx)
        .expect("a data message always gets an action (a bad command never closes)")
}

/// Reads one server frame as a client would (unmasked, text must be UTF-8),
/// and checks nothing follows it.
pub fn read_frame(frame: &[u8]) -> Message {
    // A small read buffer: tungstenite's 128 KiB default, allocated per
    // call, would dominate the fuzzer's time.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws =
        WebSocket::from_raw_socket(Cursor::new(frame.to_vec()), Role::Client, Some(config));
    let message = ws
        .read()
        .unwrap_or_else(|e| panic!("server frame {frame:?} does not decode: {e}"));
    assert!(
        ws.read().is_err(),
        "more than one message in one server frame"
    );
    message
}

/// A JSON object as a client reads it: the syntax checked, the values kept
/// as raw JSON text. (Not serde_json's `Value`: JSON numbers have no range,
/// and the server forwards the client's `data` and `ref` verbatim, so
/// `1e400` or a 300-digit `ref` are valid in events.)
struct Event(BTreeMap<String, Box<RawValue>>);

impl Event {
    fn parse(text: &str) -> Event {
        match serde_json::from_str(text) {
            Ok(map) => Event(map),
            Err(e) => panic!("not a JSON object: {text:?} ({e})"),
        }
    }

    /// A field's raw JSON text.
    fn raw(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|r| r.get())
    }

    /// A string field's value.
    fn str(&self, key: &str) -> Option<String> {
        self.raw(key)
            .and_then(|r| serde_json::from_str::<String>(r).ok())
    }
}

/// The same JSON value, where serde_json can hold it (numbers beyond f64
/// cannot be compared and are skipped).
fn same_json(raw: &str, value: &Value) -> bool {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => v == *value,
        Err(_) => true,
    }
}

fn is_valid_ref(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    raw.starts_with('"') || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn op_of(command: &Command<'_>) -> &'static str {
    match command {
        Command::Ping { .. } => "ping",
        Command::Echo { .. } => "echo",
        Command::Join { .. } => "join",
        Command::Leave { .. } => "leave",
        Command::Send { .. } => "send",
        Command::Publish { .. } => "publish",
        Command::Anycast { .. } => "anycast",
        Command::Ack { .. } => "ack",
        Command::Strategy { .. } => "strategy",
    }
}

/// The command as canonical JSON text: every field it decoded to, nothing
/// else, raw JSON values spliced in as they came.
pub fn encode_canonical(request: &Request<'_>) -> String {
    fn s(v: &str) -> String {
        serde_json::to_string(v).expect("strings serialise")
    }
    let mut fields: Vec<(&str, String)> = vec![("op", s(op_of(&request.command)))];
    if let Some(r) = request.reference {
        fields.push(("ref", r.get().to_string()));
    }
    let options = |fields: &mut Vec<(&str, String)>, o: &protocol::DeliveryOptions| {
        fields.push(("priority", s(o.priority.as_str())));
        if o.ack {
            fields.push(("ack", "true".into()));
        }
        if let Some(d) = o.delay_ms {
            fields.push(("delay_ms", d.to_string()));
        }
        if let Some(at) = o.at_unix_ms {
            fields.push(("at", at.to_string()));
        }
        if let Some(ttl) = o.ttl_ms {
            fields.push(("ttl_ms", ttl.to_string()));
        }
    };
    match &request.command {
        Command::Ping { t } => {
            if let Some(t) = t {
                fields.push(("t", t.get().to_string()));
            }
        }
        Command::Echo { data } => {
            if let Some(d) = data {
                fields.push(("data", d.get().to_string()));
            }
        }
        Command::Join { group, weight } => {
            fields.push(("group", s(group)));
            fields.push(("weight", weight.to_string()));
        }
        Command::Leave { group } => fields.push(("group", s(group))),
        Command::Send {
            to,
            data,
            options: o,
        } => {
            fields.push(("to", s(to)));
            if let Some(d) = data {
                fields.push(("data", d.get().to_string()));
            }
            options(&mut fields, o);
        }
        Command::Publish {
            group,
            data,
            options: o,
            echo,
        } => {
            fields.push(("group", s(group)));
            if let Some(d) = data {
                fields.push(("data", d.get().to_string()));
            }
            options(&mut fields, o);
            if *echo {
                fields.push(("echo", "true".into()));
            }
        }
        Command::Anycast {
            group,
            data,
            options: o,
        } => {
            fields.push(("group", s(group)));
            if let Some(d) = data {
                fields.push(("data", d.get().to_string()));
            }
            options(&mut fields, o);
        }
        Command::Ack { id } => fields.push(("id", s(id))),
        Command::Strategy { group, strategy } => {
            fields.push(("group", s(group)));
            fields.push(("strategy", s(strategy.as_str())));
        }
    }
    if request.lz4 {
        fields.push(("lz4", "true".into()));
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", s(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A decoded command: it came from a JSON object, holds exactly the fields
/// sent, and its canonical re-encoding decodes to the same command.
fn check_request(text: &str, request: &Request<'_>) {
    let raw: &RawValue = serde_json::from_str(text).expect("a decoded command is valid JSON");
    assert!(
        raw.get().trim_start().starts_with('{'),
        "decoded a non-object"
    );
    if let Some(r) = request.reference {
        assert!(is_valid_ref(r.get()), "invalid ref accepted: {}", r.get());
    }
    match &request.command {
        Command::Join { group, weight } => {
            assert!(identity::is_valid_group_name(group));
            assert!(WEIGHT_RANGE.contains(weight));
        }
        Command::Leave { group }
        | Command::Publish { group, .. }
        | Command::Anycast { group, .. }
        | Command::Strategy { group, .. } => assert!(identity::is_valid_group_name(group)),
        Command::Send { to, .. } => assert!(identity::is_valid_user_id(to)),
        Command::Ping { .. } | Command::Echo { .. } | Command::Ack { .. } => {}
    }
    if let Command::Send { options, .. }
    | Command::Publish { options, .. }
    | Command::Anycast { options, .. } = &request.command
    {
        assert!(
            options.delay_ms.is_none() || options.at_unix_ms.is_none(),
            "both delay_ms and at accepted"
        );
    }

    let canonical = encode_canonical(request);
    let again = protocol::decode_command(&canonical)
        .unwrap_or_else(|e| panic!("re-encoded command {canonical:?} refused: {e:?}"));
    assert_eq!(
        format!("{request:?}"),
        format!("{again:?}"),
        "re-encoding changed the command ({canonical})"
    );

    // The fields decoded are the fields serde_json reads from the same text.
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return; // numbers beyond f64: serde_json's Value cannot hold them
    };
    assert_eq!(
        map.get("op").and_then(Value::as_str),
        Some(op_of(&request.command))
    );
    match (request.reference, map.get("ref")) {
        (Some(r), Some(v)) => assert!(same_json(r.get(), v)),
        (None, None) => {}
        (r, v) => panic!("ref decoded as {r:?}, sent as {v:?}"),
    }
    let text_of = |k: &str| map.get(k).and_then(Value::as_str);
    let raw_matches = |k: &str, raw: Option<&RawValue>| match (raw, map.get(k)) {
        (Some(r), Some(v)) => same_json(r.get(), v),
        (None, None) => true,
        _ => false,
    };
    let options_match = |o: &protocol::DeliveryOptions| {
        o.ack == (map.get("ack") == Some(&Value::Bool(true)))
            && o.delay_ms == map.get("delay_ms").and_then(Value::as_u64)
            && o.at_unix_ms == map.get("at").and_then(Value::as_u64)
            && o.ttl_ms == map.get("ttl_ms").and_then(Value::as_u64)
            && text_of("priority").unwrap_or("normal") == o.priority.as_str()
    };
    let ok = match &request.command {
        Command::Ping { t } => raw_matches("t", *t),
        Command::Echo { data } => raw_matches("data", *data),
        Command::Join { group, weight } => {
            text_of("group") == Some(group)
                && map.get("weight").map_or(Some(1), Value::as_u64) == Some(u64::from(*weight))
        }
        Command::Leave { group } => text_of("group") == Some(group),
        Command::Send { to, data, options } => {
            text_of("to") == Some(to) && raw_matches("data", *data) && options_match(options)
        }
        Command::Publish {
            group,
            data,
            options,
            echo,
        } => {
            text_of("group") == Some(group)
                && raw_matches("data", *data)
                && options_match(options)
                && *echo == (map.get("echo") == Some(&Value::Bool(true)))
        }
        Command::Anycast {
            group,
            data,
            options,
        } => {
            text_of("group") == Some(group) && raw_matches("data", *data) && options_match(options)
        }
        Command::Ack { id } => text_of("id") == Some(id),
        Command::Strategy { group, strategy } => {
            text_of("group") == Some(group) && text_of("strategy") == Some(strategy.as_str())
        }
    };
    assert!(ok, "decoded {request:?} from {text:?}");
    assert_eq!(request.lz4, map.get("lz4") == Some(&Value::Bool(true)));
}

/// A refused command: the error event is well-formed JSON, carries the
/// command's `ref` only when valid, and its reason is bounded.
fn check_command_error(text: &str, e: &CommandError) {
    check_error_event(e);
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            assert_ne!(
                e.code,
                ErrorCode::BadJson,
                "valid JSON called bad: {text:?}"
            );
            if let Some(r) = &e.reference {
                let sent = map.get("ref").expect("a ref the command did not have");
                assert!(same_json(r, sent));
            }
        }
        Ok(_) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{text:?}");
            assert_eq!(e.reference, None);
        }
        Err(_) => {}
    }
}

fn check_error_event(e: &CommandError) {
    assert!(!e.reason.is_empty());
    assert!(
        e.reason.len() <= ERROR_REASON_MAX_BYTES,
        "error reason of {} bytes",
        e.reason.len()
    );
    let event = Event::parse(&protocol::encode_error(e));
    assert_eq!(event.str("op").as_deref(), Some("error"));
    assert_eq!(event.str("code").as_deref(), Some(e.code.as_str()));
    assert_eq!(event.str("reason").as_deref(), Some(e.reason.as_str()));
    match &e.reference {
        Some(r) => {
            assert!(is_valid_ref(r), "error carries invalid ref {r}");
            assert_eq!(event.raw("ref"), Some(r.as_str()), "ref not verbatim");
        }
        None => assert_eq!(event.raw("ref"), Some("null")),
    }
}

/// Everything an action holds is valid: names, schedules, and every frame
/// it would write decodes to a well-formed event. `binary_payload`: what
/// followed the header of a binary frame. `from_processor`: the custom
/// processor chose it, so its reasons and delays are its own.
fn check_action(action: &Action, binary_payload: Option<&[u8]>, from_processor: bool) {
    match action {
        Action::Reply(frame) => match read_frame(frame) {
            Message::Text(t) => {
                let event = Event::parse(&t);
                let op = event.str("op").expect("an op");
                assert!(
                    ["pong", "echo", "error", "ok"].contains(&op.as_str()),
                    "unexpected reply {op}"
                );
                if op == "error" && !from_processor {
                    let reason = event.str("reason").unwrap_or_default();
                    assert!(!reason.is_empty() && reason.len() <= ERROR_REASON_MAX_BYTES);
                }
            }
            Message::Binary(b) => {
                let (header, payload) = protocol::split_binary(&b).expect("a binary reply splits");
                assert_eq!(Event::parse(header).str("op").as_deref(), Some("echo"));
                let sent = binary_payload.expect("a binary reply to a binary frame");
                // An lz4 payload comes back decompressed (to this client,
                // which did not choose `wsu.v1.lz4`), any other as sent.
                assert!(
                    payload == sent
                        || ws_uring::protocol::compress::decompress(sent, MAX_MESSAGE_BYTES)
                            .is_ok_and(|plain| plain == payload),
                    "binary echo changed the payload"
                );
            }
            other => panic!("reply is not a data frame: {other:?}"),
        },
        Action::Join { group, weight, .. } => {
            assert!(identity::is_valid_group_name(group));
            assert!(WEIGHT_RANGE.contains(weight));
        }
        Action::Leave { group, .. } | Action::SetStrategy { group, .. } => {
            assert!(identity::is_valid_group_name(group))
        }
        Action::Ack { .. } => {}
        Action::Route {
            reference,
            target,
            envelope,
            deliver_at_unix_ms,
        } => {
            if let Some(r) = reference {
                assert!(is_valid_ref(r));
            }
            let parts = &envelope.parts;
            assert_eq!(parts.from, USER);
            assert_eq!(parts.ts_unix_ms, NOW_UNIX_MS);
            // One clock read: the delivery latency starts at the timestamp.
            assert_eq!(envelope.accepted_unix_us, NOW_UNIX_MS * 1000);
            match target {
                Target::User(u) => {
                    assert!(identity::is_valid_user_id(u));
                    assert_eq!(
                        (parts.to.as_deref(), parts.group.as_deref()),
                        (Some(&**u), None)
                    );
                }
                Target::Group { group: g, .. } | Target::Anycast(g) => {
                    assert!(identity::is_valid_group_name(g));
                    assert_eq!(
                        (parts.to.as_deref(), parts.group.as_deref()),
                        (None, Some(&**g))
                    );
                }
            }
            if let Some(at) = deliver_at_unix_ms {
                assert!(*at > NOW_UNIX_MS, "scheduled into the past");
                if !from_processor {
                    assert!(
                        at - NOW_UNIX_MS <= SCHEDULE_MAX_MS,
                        "scheduled too far ahead"
                    );
                }
            }
            if let (
                Some(sent),
                MessageBody::Binary {
                    payload,
                    compressed,
                },
            ) = (binary_payload, &parts.body)
            {
                match compressed {
                    Some(c) => {
                        assert_eq!(&c[..], sent);
                        let plain = compress::decompress(sent, MAX_MESSAGE_BYTES);
                        assert_eq!(plain.as_deref(), Ok(&payload[..]));
                    }
                    None => assert_eq!(&payload[..], sent),
                }
            }
            check_msg_frames(envelope);
        }
        Action::Batch(actions) => {
            for a in actions {
                check_action(a, binary_payload, true);
            }
        }
    }
}

fn check_msg_frames(envelope: &ws_uring::routing::Envelope) {
    let parts = &envelope.parts;
    for wants_lz4 in [false, true] {
        match (read_frame(&envelope.frame_for(wants_lz4)), &parts.body) {
            (Message::Text(t), MessageBody::Json(data)) => {
                let event = Event::parse(&t);
                assert_eq!(event.str("op").as_deref(), Some("msg"));
                assert_eq!(event.str("id").as_ref(), Some(&parts.id));
                assert_eq!(event.str("from").as_deref(), Some(USER));
                // The sender's JSON, byte for byte.
                assert_eq!(event.raw("data"), Some(data.as_str()), "msg data changed");
            }
            (Message::Binary(b), MessageBody::Binary { payload, .. }) => {
                let (header, sent) = protocol::split_binary(&b).expect("a msg frame splits");
                let header = Event::parse(header);
                assert_eq!(header.str("op").as_deref(), Some("msg"));
                if header.raw("lz4") == Some("true") {
                    assert!(wants_lz4, "lz4 frame for a client without wsu.v1.lz4");
                    let plain = compress::decompress(sent, usize::MAX).expect("our lz4 decodes");
                    assert_eq!(&plain[..], &payload[..]);
                } else {
                    assert_eq!(sent, &payload[..]);
                }
            }
            (frame, body) => panic!("frame {frame:?} for body {body:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// (b) The binary frame header split, and the lz4 payloads it announces.
// ---------------------------------------------------------------------------

/// `split_binary` cuts at the first `\n` exactly, refuses what it must, and
/// the header decodes like a text command; an lz4 payload decompresses
/// within its bound or is refused.
pub fn binary_header(frame: &[u8]) {
    let newline = frame.iter().position(|&b| b == b'\n');
    match protocol::split_binary(frame) {
        Ok((header, payload)) => {
            let n = newline.expect("split without a newline");
            assert_eq!(header.as_bytes(), &frame[..n]);
            assert_eq!(payload, &frame[n + 1..]);
            assert!(!header.contains('\n'));
            match protocol::decode_command(header) {
                Ok(request) => {
                    check_request(header, &request);
                    if request.lz4 {
                        lz4(payload, MAX_MESSAGE_BYTES);
                    }
                }
                Err(e) => check_command_error(header, &e),
            }
        }
        Err(e) => {
            check_error_event(&e);
            match newline {
                None => assert_eq!(e.code, ErrorCode::BadRequest),
                Some(n) => {
                    assert_eq!(e.code, ErrorCode::BadJson);
                    assert!(std::str::from_utf8(&frame[..n]).is_err());
                }
            }
        }
    }
    // Every payload, read as lz4 or compressed, round-trips or is refused.
    lz4(frame, MAX_MESSAGE_BYTES);
}

/// `compress::decompress` never expands past `max` and never panics;
/// what it accepts re-compresses to something that decodes the same, and
/// `compress` output always decodes back.
pub fn lz4(data: &[u8], max: usize) {
    match compress::decompress(data, max) {
        Ok(plain) => {
            assert!(plain.len() <= max);
            let again = compress::compress(&plain);
            assert_eq!(compress::decompress(&again, max).as_deref(), Ok(&plain[..]));
        }
        Err(compress::Lz4Error::TooLarge { size, max: m }) => assert!(size > m && m == max),
        Err(compress::Lz4Error::Corrupt(reason)) => assert!(!reason.is_empty()),
    }
    let packed = compress::compress(data);
    assert_eq!(
        compress::decompress(&packed, data.len()).as_deref(),
        Ok(data)
    );
    if !data.is_empty() {
        assert!(matches!(
            compress::decompress(&packed, data.len() - 1),
            Err(compress::Lz4Error::TooLarge { .. })
        ));
    }
}

// ---------------------------------------------------------------------------
// (c) HTTP request heads, the router, upgrade checks, query strings.
// ---------------------------------------------------------------------------

/// Bytes as they arrive on the port, before any request head is complete.
pub fn http_request(buf: &[u8]) {
    if let Ok(text) = std::str::from_utf8(buf) {
        query(text);
    }
    match http::parse_request_head(buf) {
        Ok(Some(head)) => check_head(buf, &head),
        Ok(None) => assert!(buf.len() <= REQUEST_HEAD_MAX_BYTES, "unbounded head"),
        Err(HttpError::HeadTooLarge) => assert!(buf.len() > REQUEST_HEAD_MAX_BYTES),
        Err(HttpError::Malformed(reason)) => check_response(&Response::error(
            400,
            &HttpError::Malformed(reason).to_string(),
        )),
    }
}

fn check_head(buf: &[u8], head: &RequestHead) {
    assert!(head.head_len <= buf.len() && head.head_len <= REQUEST_HEAD_MAX_BYTES);
    assert!(head.path.starts_with('/'));
    assert!(!head.path.contains('?'));
    assert!(!head.method.is_empty());
    for (name, value) in &head.headers {
        assert!(!name.is_empty());
        assert!(!value.contains(&b'\n') && !value.contains(&b'\r'));
    }
    // The head is the same whatever follows it…
    assert_eq!(
        http::parse_request_head(&buf[..head.head_len]).as_ref(),
        Ok(&Some(head.clone()))
    );
    // …and a head cut anywhere asks for more: the server parses again after
    // every read, so a request split over segments is never refused.
    let cut = (crc32fast::hash(buf) as usize) % head.head_len;
    assert_eq!(
        http::parse_request_head(&buf[..cut]),
        Ok(None),
        "cut at {cut}"
    );
    if head.head_len > 1 {
        assert_eq!(
            http::parse_request_head(&buf[..head.head_len - 1]),
            Ok(None)
        );
    }

    match router::route(head, WS_PATH) {
        Route::Respond(response) => {
            assert!(matches!(response.status, 404 | 405));
            check_response(&response);
        }
        Route::Serve(endpoint) => {
            let post = matches!(
                endpoint,
                Endpoint::ReplayDeadLetters | Endpoint::ApiSend | Endpoint::ApiPublish
            );
            assert_eq!(head.method, if post { "POST" } else { "GET" });
        }
    }
    match http::body_length(head, BODY_MAX_BYTES) {
        Ok(n) => {
            assert!(n <= BODY_MAX_BYTES);
            assert!(head.header("Transfer-Encoding").is_none());
        }
        Err(response) => {
            assert!(matches!(response.status, 400 | 411 | 413));
            check_response(&response);
        }
    }

    let auth = Authenticator::new(AUTH_SECRET);
    let origins = [ALLOWED_ORIGIN.to_string()];
    for (auth, origins) in [
        (None, None),
        (Some(&auth), None),
        (None, Some(&origins[..])),
    ] {
        match upgrade::check_upgrade(head, auth, origins) {
            Ok(up) => {
                check_upgrade_ok(head, &up, auth.is_some());
                if let (Some(_), Some(origin)) = (origins, head.header("Origin")) {
                    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
                    assert_eq!(origin, ALLOWED_ORIGIN);
                }
            }
            Err(response) => {
                assert!(matches!(response.status, 400 | 401 | 403 | 426));
                check_response(&response);
            }
        }
    }
    query(&head.query);
}

fn check_upgrade_ok(head: &RequestHead, up: &upgrade::Upgrade, authenticated: bool) {
    assert!(head.header_has_token("Upgrade", "websocket"));
    assert!(head.header_has_token("Connection", "upgrade"));
    assert_eq!(head.header("Sec-WebSocket-Version"), Some("13"));
    let key = head.header("Sec-WebSocket-Key").expect("a key");
    assert_eq!(
        up.accept_key,
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    );
    if let Some(user) = &up.user {
        assert!(identity::is_valid_user_id(user));
    }
    if authenticated {
        assert!(up.user.is_some(), "an authenticated upgrade without a user");
    } else {
        assert_eq!(
            up.user,
            identity::user_from_query(&head.query).expect("checked")
        );
        assert_eq!(up.allowed_groups, None);
    }
    // The 101 parses as an HTTP response and accepts the key.
    let bytes = up.response_bytes();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("101 does not parse: {other:?}"),
    };
    assert_eq!(len, bytes.len());
    assert_eq!(resp.code, Some(101));
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name == "Sec-WebSocket-Accept")
        .map(|h| h.value);
    assert_eq!(accept, Some(up.accept_key.as_bytes()));
}

/// A rendered response parses back: status, headers, a body exactly as
/// long as announced, JSON for errors. No request byte can break its framing.
pub fn check_response(response: &Response) {
    let bytes = response.to_bytes();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response does not parse: {other:?}"),
    };
    assert_eq!(parsed.code, Some(response.status));
    assert_eq!(parsed.headers.len(), response.headers.len() + 2);
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name == "Content-Length")
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.parse::<usize>().ok())
        .expect("a Content-Length");
    assert_eq!(length, bytes.len() - head_len);
    assert_eq!(&bytes[head_len..], &response.body[..]);
    if response.status >= 400 {
        Event::parse(std::str::from_utf8(&response.body).expect("UTF-8 error body"));
    }
}

/// `?user=` parsing: an accepted user is valid and survives re-encoding;
/// refusals match what the query holds.
pub fn query(q: &str) {
    let users: Vec<String> = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned())
        .collect();
    match identity::user_from_query(q) {
        Ok(None) => assert!(users.is_empty()),
        Ok(Some(user)) => {
            assert_eq!(users, std::slice::from_ref(&user));
            assert!(identity::is_valid_user_id(&user));
            let encoded = form_urlencoded::Serializer::new(String::new())
                .append_pair("user", &user)
                .finish();
            assert_eq!(identity::user_from_query(&encoded), Ok(Some(user)));
        }
        Err(identity::IdentityError::DuplicateUser) => {
            assert!(users.len() >= 2);
            assert!(identity::is_valid_user_id(&users[0]));
        }
        Err(identity::IdentityError::InvalidUser) => {
            assert!(users.iter().any(|u| !identity::is_valid_user_id(u)))
        }
    }
}

// ---------------------------------------------------------------------------
// (d) The log: CRC-framed rkyv records, read back with the torn-tail rules.
// ---------------------------------------------------------------------------

/// A log file's bytes, read as they are, and read again with every frame's
/// checksum made right (so rkyv's validation sees the fuzzer's payloads);
/// every record found then round-trips through the encoder.
pub fn wal_log(log: &[u8]) {
    let seed = crc32fast::hash(log) as usize;
    if let Some(records) = read_log(log) {
        wal_records(&records, seed, seed >> 8);
    }
    let fixed = with_fixed_checksums(log);
    if let Some(records) = read_log(&fixed) {
        wal_records(&records, seed >> 4, seed >> 12);
    }
}

/// The frames of `log` with their checksums recomputed, as far as whole
/// frames go.
pub fn with_fixed_checksums(log: &[u8]) -> Vec<u8> {
    let mut out = log.to_vec();
    let mut pos = 0;
    while out.len() - pos >= FRAME_HEADER_BYTES {
        let len = u32::from_le_bytes(out[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let end = pos + FRAME_HEADER_BYTES + len;
        if len > RECORD_MAX_BYTES || end > out.len() {
            break;
        }
        let crc = crc32fast::hash(&out[pos + FRAME_HEADER_BYTES..end]);
        out[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
    out
}

/// Reads a log and checks the outcome against the rules; returns the
/// records when it was read.
pub fn read_log(log: &[u8]) -> Option<Vec<WalRecord>> {
    match record::read_all(log) {
        Ok(outcome) => {
            assert_eq!(outcome.valid_bytes + outcome.torn_bytes, log.len() as u64);
            let valid = outcome.valid_bytes as usize;
            // What was kept reads back alone, whole…
            let again = record::read_all(&log[..valid]).expect("the valid part reads");
            assert_eq!(again.records, outcome.records);
            assert_eq!(again.torn_bytes, 0);
            // …and what was cut holds no whole record.
            if outcome.torn_bytes > 0 {
                let tail = record::read_all(&log[valid..]).expect("a torn tail is not corrupt");
                assert!(tail.records.is_empty(), "a whole record was cut off");
                assert_eq!(tail.torn_bytes, outcome.torn_bytes);
            }
            for r in &outcome.records {
                check_stored(r);
            }
            Some(outcome.records)
        }
        Err(LogError::CorruptMiddle {
            index,
            offset,
            reason,
            remaining,
        }) => {
            // "a bad record with more data behind it": there is more data,
            // and everything before the bad record is good.
            assert!(remaining > 0, "corruption reported with nothing after it");
            assert!(!reason.is_empty());
            let offset = offset as usize;
            assert!(offset < log.len());
            let before = record::read_all(&log[..offset]).expect("records before are good");
            assert_eq!(before.records.len(), index);
            assert_eq!(before.torn_bytes, 0);
            None
        }
    }
}

/// The messages a log holds turn back into messages or are refused
/// (restore skips those), never a panic.
fn check_stored(r: &WalRecord) {
    use ws_uring::store::record::DurableEntry;
    if let WalRecord::Upsert { entry, .. } = r {
        let msg = match entry {
            DurableEntry::Mailbox { msg, .. }
            | DurableEntry::MailboxRedelivery { msg, .. }
            | DurableEntry::Scheduled { msg, .. }
            | DurableEntry::Pending { msg, .. }
            | DurableEntry::Dead { msg, .. } => msg,
        };
        // An lz4 body announcing more than this is still refused by
        // to_parts (RECORD_MAX_BYTES), but allocating it per input would
        // only slow the fuzzer down.
        let announced = msg.body.get(..4).map_or(0, |b| {
            u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
        });
        if msg.body_lz4 && announced > 16 << 20 {
            return;
        }
        if let Ok(parts) = msg.to_parts() {
            assert_eq!(parts.id, msg.id);
            match &parts.body {
                MessageBody::Json(_) => assert!(!msg.binary),
                MessageBody::Binary { .. } => assert!(msg.binary),
            }
        }
    }
}

/// Records written by the encoder read back the same, byte for byte; a log
/// cut anywhere gives the records before the cut; one damaged byte never
/// yields a record that was not written nor any record after the damage.
pub fn wal_records(records: &[WalRecord], cut_seed: usize, flip_seed: usize) {
    let mut log = Vec::new();
    let mut ends = Vec::with_capacity(records.len());
    for r in records {
        record::encode(r, &mut log);
        ends.push(log.len());
    }
    let read = record::read_all(&log).expect("an encoded log reads");
    assert_eq!(read.records, records);
    assert_eq!(read.valid_bytes, log.len() as u64);
    assert_eq!(read.torn_bytes, 0);
    let mut again = Vec::new();
    for r in &read.records {
        record::encode(r, &mut again);
    }
    assert_eq!(again, log, "encoding is not deterministic");
    if log.is_empty() {
        return;
    }

    // Cut.
    let cut = cut_seed % log.len();
    let whole = ends.iter().filter(|&&e| e <= cut).count();
    let start = if whole == 0 { 0 } else { ends[whole - 1] };
    let read = record::read_all(&log[..cut]).expect("a cut log reads");
    assert_eq!(read.records, &records[..whole]);
    assert_eq!(read.valid_bytes, start as u64);
    assert_eq!(read.torn_bytes, (cut - start) as u64);

    // Damage one byte.
    let at = flip_seed % log.len();
    let mask = ((flip_seed >> 16) as u8).max(1);
    let mut damaged = log.clone();
    damaged[at] ^= mask;
    let i = ends.iter().filter(|&&e| e <= at).count();
    let frame_start = if i == 0 { 0 } else { ends[i - 1] };
    let is_last = i == records.len() - 1;
    match record::read_all(&damaged) {
        Ok(read) => {
            assert_eq!(
                read.records,
                &records[..i],
                "damage at {at} changed what was read"
            );
            assert_eq!(read.valid_bytes, frame_start as u64);
            // Damage (to a length, a checksum or a payload) is only ever
            // forgiven in the last record: whole records behind it are
            // never cut away.
            assert!(is_last, "damage at {at} in record {i} skipped");
        }
        Err(LogError::CorruptMiddle { index, offset, .. }) => {
            assert_eq!((index, offset), (i, frame_start as u64));
        }
    }
}
