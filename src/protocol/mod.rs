//! The wire protocol, sans-IO: commands decoded from frames, events encoded
//! into frame payloads. No sockets, no executor: plain functions over bytes.
//!
//! Decoding borrows from the frame (`&RawValue`), so `data` is forwarded as
//! the client's own JSON bytes and never re-serialised.

pub mod identity;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The error codes of `{"op":"error"}` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownOp,
    Forbidden,
    NoMembers,
    TooLarge,
    RateLimited,
    Overloaded,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NoMembers => "no_members",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A command that could not be carried out: answered with an `error` event,
/// never by closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `ref` as raw JSON, when it had a valid one.
    pub reference: Option<String>,
    pub code: ErrorCode,
    pub reason: String,
}

impl CommandError {
    fn new(reference: Option<&RawValue>, code: ErrorCode, reason: impl Into<String>) -> Self {
        CommandError {
            reference: reference.map(|r| r.get().to_string()),
            code,
            reason: reason.into(),
        }
    }
}

/// One decoded command. Borrowed fields point into the frame.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// `ping`: answered at once with `pong` carrying `t`.
    Ping { t: Option<&'a RawValue> },
    /// `echo`: answered with `echo` carrying `data`.
    Echo { data: Option<&'a RawValue> },
}

/// A command together with its correlation `ref`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub reference: Option<&'a RawValue>,
    pub command: Command<'a>,
}

/// The fields any command may carry; unknown fields are ignored so clients
/// written for newer servers keep working.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    t: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as `Some("null")`: `"data": null` is data.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes a text frame (or the header of a binary frame) into a command.
pub fn decode_command(text: &str) -> Result<Request<'_>, CommandError> {
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Distinguish "not JSON" from "JSON but not an object".
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => CommandError::new(
                None,
                ErrorCode::BadRequest,
                "a command must be a JSON object",
            ),
            Err(e) => CommandError::new(None, ErrorCode::BadJson, format!("invalid JSON: {e}")),
        });
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::BadRequest
        } else {
            ErrorCode::BadJson
        };
        CommandError::new(None, code, format!("invalid command: {e}"))
    })?;

    let reference = match envelope.reference {
        None => None,
        Some(raw) if is_valid_ref(raw) => Some(raw),
        Some(_) => {
            return Err(CommandError::new(
                None,
                ErrorCode::BadRequest,
                "`ref` must be a string or an integer",
            ))
        }
    };
    let op_raw = envelope
        .op
        .ok_or_else(|| CommandError::new(reference, ErrorCode::BadRequest, "missing field `op`"))?;
    let op: std::borrow::Cow<str> = serde_json::from_str(op_raw.get()).map_err(|_| {
        CommandError::new(reference, ErrorCode::BadRequest, "`op` must be a string")
    })?;

    let command = match op.as_ref() {
        "ping" => Command::Ping { t: envelope.t },
        "echo" => Command::Echo {
            data: envelope.data,
        },
        other => {
            return Err(CommandError::new(
                reference,
                ErrorCode::UnknownOp,
                format!("unknown op {:?}", truncate(other, 64)),
            ))
        }
    };
    Ok(Request { reference, command })
}

/// `ref` is a JSON string or a JSON integer (no fraction, no exponent).
fn is_valid_ref(raw: &RawValue) -> bool {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Splits a binary frame into its JSON header and raw payload at the first
/// `\n`. The header must be valid UTF-8.
pub fn split_binary(frame: &[u8]) -> Result<(&str, &[u8]), CommandError> {
    let newline = frame.iter().position(|&b| b == b'\n').ok_or_else(|| {
        CommandError::new(
            None,
            ErrorCode::BadRequest,
            "a binary frame is a JSON header, a `\\n` byte, then the payload",
        )
    })?;
    let header = std::str::from_utf8(&frame[..newline]).map_err(|_| {
        CommandError::new(None, ErrorCode::BadJson, "binary frame header is not UTF-8")
    })?;
    Ok((header, &frame[newline + 1..]))
}

/// Appends JSON events to a buffer without building a tree.
struct EventWriter {
    out: Vec<u8>,
}

impl EventWriter {
    fn new(op: &str, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(op.as_bytes());
        out.push(b'"');
        EventWriter { out }
    }

    fn raw(mut self, key: &str, raw_json: &str) -> Self {
        self.key(key);
        self.out.extend_from_slice(raw_json.as_bytes());
        self
    }

    fn string(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        serde_json::to_writer(&mut self.out, value).expect("writing to a Vec cannot fail");
        self
    }

    fn number(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.out.extend_from_slice(value.to_string().as_bytes());
        self
    }

    fn reference(self, reference: Option<&str>) -> Self {
        match reference {
            Some(r) => self.raw("ref", r),
            None => self,
        }
    }

    fn key(&mut self, key: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn finish(mut self) -> String {
        self.out.push(b'}');
        // Every piece written is valid UTF-8: literals, raw JSON taken from
        // a `str`, and serde_json's string output.
        String::from_utf8(self.out).expect("events are built from UTF-8 pieces")
    }
}

/// What a new connection is told first.
#[derive(Debug, Clone)]
pub struct Welcome<'a> {
    pub user: &'a str,
    pub conn: u64,
    pub shard: usize,
    pub heartbeat_ms: u64,
}

/// The server's name on the wire, `ws-uring/VERSION`.
pub const SERVER_NAME: &str = concat!("ws-uring/", env!("CARGO_PKG_VERSION"));

/// `{"op":"welcome",...}`
pub fn encode_welcome(w: &Welcome<'_>) -> String {
    EventWriter::new("welcome", 128)
        .string("user", w.user)
        .number("conn", w.conn)
        .number("shard", w.shard as u64)
        .string("server", SERVER_NAME)
        .number("heartbeat_ms", w.heartbeat_ms)
        .finish()
}

/// `{"op":"pong","t":T}`, with `ref` when the ping had one; `t` is omitted
/// when the ping carried none.
pub fn encode_pong(reference: Option<&RawValue>, t: Option<&RawValue>) -> String {
    let w = EventWriter::new("pong", 48).reference(reference.map(RawValue::get));
    match t {
        Some(t) => w.raw("t", t.get()).finish(),
        None => w.finish(),
    }
}

/// `{"op":"echo","data":D}`, with `ref` when the command had one.
pub fn encode_echo(reference: Option<&RawValue>, data: &RawValue) -> String {
    EventWriter::new("echo", 24 + data.get().len())
        .reference(reference.map(RawValue::get))
        .raw("data", data.get())
        .finish()
}

/// The header of a binary `echo` reply, `{"op":"echo"}`, without the `\n`.
pub fn encode_echo_header(reference: Option<&RawValue>) -> String {
    EventWriter::new("echo", 32)
        .reference(reference.map(RawValue::get))
        .finish()
}

/// `{"op":"error","ref":R|null,"code":CODE,"reason":"..."}`
pub fn encode_error(err: &CommandError) -> String {
    EventWriter::new("error", 64 + err.reason.len())
        .raw("ref", err.reference.as_deref().unwrap_or("null"))
        .string("code", err.code.as_str())
        .string("reason", &err.reason)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn ping_with_and_without_t() {
        let r = decode_command(r#"{"op":"ping","t":{"a":[1,2]}}"#).unwrap();
        let Command::Ping { t } = r.command else {
            panic!("not a ping")
        };
        assert_eq!(
            json(&encode_pong(r.reference, t)),
            json(r#"{"op":"pong","t":{"a":[1,2]}}"#)
        );
        let r = decode_command(r#"{"op":"ping","ref":7}"#).unwrap();
        let Command::Ping { t } = r.command else {
            panic!("not a ping")
        };
        assert_eq!(
            json(&encode_pong(r.reference, t)),
            json(r#"{"op":"pong","ref":7}"#)
        );
    }

    #[test]
    fn echo_forwards_data_bytes_verbatim() {
        let text = r#"{"op":"echo","ref":"a","data":{"x" : 1.50e3, "s":"\u00e9"}}"#;
        let r = decode_command(text).unwrap();
        let Command::Echo { data: Some(data) } = r.command else {
            panic!("not an echo with data")
        };
        let out = encode_echo(r.reference, data);
        assert_eq!(
            out,
            r#"{"op":"echo","ref":"a","data":{"x" : 1.50e3, "s":"\u00e9"}}"#
        );
    }

    #[test]
    fn explicit_null_data_is_present() {
        let r = decode_command(r#"{"op":"echo","data":null}"#).unwrap();
        assert!(matches!(r.command, Command::Echo { data: Some(d) } if d.get() == "null"));
        let r = decode_command(r#"{"op":"echo"}"#).unwrap();
        assert!(matches!(r.command, Command::Echo { data: None }));
    }

    #[test]
    fn error_codes() {
        let cases = [
            ("not json", ErrorCode::BadJson, None),
            ("{\"op\":", ErrorCode::BadJson, None),
            ("[1,2]", ErrorCode::BadRequest, None),
            ("\"ping\"", ErrorCode::BadRequest, None),
            ("{}", ErrorCode::BadRequest, None),
            (r#"{"op":5,"ref":1}"#, ErrorCode::BadRequest, Some("1")),
            (
                r#"{"op":"nope","ref":"x"}"#,
                ErrorCode::UnknownOp,
                Some("\"x\""),
            ),
            (r#"{"op":"ping","ref":1.5}"#, ErrorCode::BadRequest, None),
            (
                r#"{"op":"ping","ref":{"a":1}}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (r#"{"op":"ping","op":"echo"}"#, ErrorCode::BadRequest, None),
        ];
        for (text, code, reference) in cases {
            let err = decode_command(text).unwrap_err();
            assert_eq!(err.code, code, "{text}");
            assert_eq!(err.reference.as_deref(), reference, "{text}");
            let event = json(&encode_error(&err));
            assert_eq!(event["op"], "error");
            assert_eq!(event["code"], code.as_str());
            assert!(event["reason"].as_str().is_some_and(|r| !r.is_empty()));
            match reference {
                Some(r) => assert_eq!(event["ref"], json(r)),
                None => assert_eq!(event["ref"], Value::Null),
            }
        }
    }

    #[test]
    fn negative_and_string_refs_are_valid() {
        for r in ["-3", "0", "\"abc\"", "\"\""] {
            let text = format!(r#"{{"op":"ping","ref":{r}}}"#);
            assert_eq!(decode_command(&text).unwrap().reference.unwrap().get(), r);
        }
    }

    #[test]
    fn welcome_shape() {
        let w = json(&encode_welcome(&Welcome {
            user: "al\"ice",
            conn: 42,
            shard: 1,
            heartbeat_ms: 20000,
        }));
        assert_eq!(w["op"], "welcome");
        assert_eq!(w["user"], "al\"ice");
        assert_eq!(w["conn"], 42);
        assert_eq!(w["shard"], 1);
        assert_eq!(w["heartbeat_ms"], 20000);
        assert!(w["server"].as_str().unwrap().starts_with("ws-uring/"));
    }

    #[test]
    fn binary_split() {
        let (h, p) = split_binary(b"{\"op\":\"echo\"}\n\x00\x01\n").unwrap();
        assert_eq!(h, "{\"op\":\"echo\"}");
        assert_eq!(p, b"\x00\x01\n");
        assert_eq!(
            split_binary(b"no newline").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            split_binary(b"\xff\xfe\n").unwrap_err().code,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn unknown_op_reason_is_bounded() {
        let long = "x".repeat(10_000);
        let err = decode_command(&format!(r#"{{"op":"{long}"}}"#)).unwrap_err();
        assert!(err.reason.len() < 100);
    }
}
