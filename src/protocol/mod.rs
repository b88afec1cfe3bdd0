//! The wire protocol, sans-IO: commands decoded from frames, events encoded
//! into frame payloads. No sockets, no executor: plain functions over bytes.
//!
//! Decoding borrows from the frame (`&RawValue`), so `data` is forwarded as
//! the client's own JSON bytes and never re-serialised.

pub mod compress;
pub mod events;
pub mod identity;

use std::borrow::Cow;

pub use events::*;

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
    /// Cluster mode: the shared Redis is unreachable, so other nodes could
    /// not be reached (what this node could do itself was done).
    ClusterUnavailable,
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
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
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

/// Message priority: the lane a message waits in at each recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }
}

/// How `anycast` picks one member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StrategyKind {
    #[default]
    RoundRobin,
    LeastConnections,
    Weighted,
}

impl StrategyKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::Weighted => "weighted",
        }
    }
}

/// Options shared by `send`, `publish` and `anycast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryOptions {
    pub priority: Priority,
    pub ack: bool,
    /// Deliver this many ms from now (`delay_ms`).
    pub delay_ms: Option<u64>,
    /// Deliver at this unix time in ms (`at`).
    pub at_unix_ms: Option<u64>,
    /// Give up (to the DLQ) if not delivered within this many ms.
    pub ttl_ms: Option<u64>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            priority: Priority::Normal,
            ack: false,
            delay_ms: None,
            at_unix_ms: None,
            ttl_ms: None,
        }
    }
}

/// Smallest and largest `weight` for `join`.
pub const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

/// One decoded command. Borrowed fields point into the frame; `data` is the
/// client's raw JSON (absent in binary frames, whose payload is the data).
#[derive(Debug, Clone)]
pub enum Command<'a> {
    /// `ping`: answered at once with `pong` carrying `t`.
    Ping { t: Option<&'a RawValue> },
    /// `echo`: answered with `echo` carrying `data`.
    Echo { data: Option<&'a RawValue> },
    /// `join`: this connection joins `group` with `weight`.
    Join { group: Cow<'a, str>, weight: u32 },
    /// `leave`: this connection leaves `group`.
    Leave { group: Cow<'a, str> },
    /// `send`: to every live connection of user `to`.
    Send {
        to: Cow<'a, str>,
        data: Option<&'a RawValue>,
        options: DeliveryOptions,
    },
    /// `publish`: to every member connection of `group`.
    Publish {
        group: Cow<'a, str>,
        data: Option<&'a RawValue>,
        options: DeliveryOptions,
        echo: bool,
    },
    /// `anycast`: to one member connection of `group`.
    Anycast {
        group: Cow<'a, str>,
        data: Option<&'a RawValue>,
        options: DeliveryOptions,
    },
    /// `ack`: confirms delivery of message `id`.
    Ack { id: Cow<'a, str> },
    /// `strategy`: how `anycast` picks in `group`.
    Strategy {
        group: Cow<'a, str>,
        strategy: StrategyKind,
    },
}

/// A command together with its correlation `ref`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub reference: Option<&'a RawValue>,
    pub command: Command<'a>,
    /// `"lz4":true` in a binary frame header: the payload is compressed.
    pub lz4: bool,
}

/// The fields any command may carry; unknown fields are ignored so clients
/// written for newer servers keep working. Everything is captured raw and
/// checked field by field, so an error can name the field.
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
    #[serde(borrow, default, deserialize_with = "present")]
    group: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    weight: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    strategy: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    priority: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    ack: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    delay_ms: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    at: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    ttl_ms: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    echo: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    lz4: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as `Some("null")`: `"data": null` is data.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Checks fields one by one, naming the field in every error.
struct Fields<'a> {
    reference: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    fn error(&self, reason: impl Into<String>) -> CommandError {
        CommandError::new(self.reference, ErrorCode::BadRequest, reason)
    }

    fn required<T>(&self, name: &str, value: Option<T>) -> Result<T, CommandError> {
        value.ok_or_else(|| self.error(format!("missing field `{name}`")))
    }

    fn string(&self, name: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, CommandError> {
        serde_json::from_str::<Cow<'a, str>>(raw.get())
            .map_err(|_| self.error(format!("`{name}` must be a string")))
    }

    fn group(&self, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, CommandError> {
        let group = self.string("group", self.required("group", raw)?)?;
        if !identity::is_valid_group_name(&group) {
            return Err(self.error("`group` must be 1-128 characters of A-Z a-z 0-9 _ . : @ / -"));
        }
        Ok(group)
    }

    fn user(&self, name: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, CommandError> {
        let user = self.string(name, self.required(name, raw)?)?;
        if !identity::is_valid_user_id(&user) {
            return Err(self.error(format!(
                "`{name}` must be a user id: 1-128 characters of A-Z a-z 0-9 _ . : @ -"
            )));
        }
        Ok(user)
    }

    fn boolean(&self, name: &str, raw: Option<&'a RawValue>) -> Result<bool, CommandError> {
        match raw.map(RawValue::get) {
            None => Ok(false),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(self.error(format!("`{name}` must be true or false"))),
        }
    }

    fn unsigned(&self, name: &str, raw: Option<&'a RawValue>) -> Result<Option<u64>, CommandError> {
        raw.map(|r| {
            r.get()
                .parse::<u64>()
                .map_err(|_| self.error(format!("`{name}` must be a whole number of 0 or more")))
        })
        .transpose()
    }

    fn options(&self, env: &Envelope<'a>) -> Result<DeliveryOptions, CommandError> {
        let priority = match env.priority {
            None => Priority::Normal,
            Some(raw) => {
                let name = self.string("priority", raw)?;
                Priority::parse(&name).ok_or_else(|| {
                    self.error("`priority` must be one of low, normal, high, critical")
                })?
            }
        };
        let options = DeliveryOptions {
            priority,
            ack: self.boolean("ack", env.ack)?,
            delay_ms: self.unsigned("delay_ms", env.delay_ms)?,
            at_unix_ms: self.unsigned("at", env.at)?,
            ttl_ms: self.unsigned("ttl_ms", env.ttl_ms)?,
        };
        if options.delay_ms.is_some() && options.at_unix_ms.is_some() {
            return Err(self.error("give `delay_ms` or `at`, not both"));
        }
        Ok(options)
    }
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
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::BadRequest
        } else {
            ErrorCode::BadJson
        };
        CommandError::new(None, code, format!("invalid command: {e}"))
    })?;

    let reference = match env.reference {
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
    let fields = Fields { reference };
    let op_raw = fields.required("op", env.op)?;
    let op = fields.string("op", op_raw)?;

    let command = match op.as_ref() {
        "ping" => Command::Ping { t: env.t },
        "echo" => Command::Echo { data: env.data },
        "join" => {
            // One message for every bad weight: a whole number in range.
            let out_of_range = || fields.error("`weight` must be a whole number from 1 to 1000");
            let weight = match fields
                .unsigned("weight", env.weight)
                .map_err(|_| out_of_range())?
            {
                None => 1,
                Some(w) if WEIGHT_RANGE.contains(&(w.min(u32::MAX as u64) as u32)) => w as u32,
                Some(_) => return Err(out_of_range()),
            };
            Command::Join {
                group: fields.group(env.group)?,
                weight,
            }
        }
        "leave" => Command::Leave {
            group: fields.group(env.group)?,
        },
        "send" => Command::Send {
            to: fields.user("to", env.to)?,
            data: env.data,
            options: fields.options(&env)?,
        },
        "publish" => Command::Publish {
            group: fields.group(env.group)?,
            data: env.data,
            options: fields.options(&env)?,
            echo: fields.boolean("echo", env.echo)?,
        },
        "anycast" => Command::Anycast {
            group: fields.group(env.group)?,
            data: env.data,
            options: fields.options(&env)?,
        },
        "ack" => Command::Ack {
            id: fields.string("id", fields.required("id", env.id)?)?,
        },
        "strategy" => {
            let name = fields.string("strategy", fields.required("strategy", env.strategy)?)?;
            let strategy = match name.as_ref() {
                "round_robin" => StrategyKind::RoundRobin,
                "least_connections" => StrategyKind::LeastConnections,
                "weighted" => StrategyKind::Weighted,
                _ => {
                    return Err(fields.error(
                        "`strategy` must be one of round_robin, least_connections, weighted",
                    ))
                }
            };
            Command::Strategy {
                group: fields.group(env.group)?,
                strategy,
            }
        }
        other => {
            return Err(CommandError::new(
                reference,
                ErrorCode::UnknownOp,
                format!("unknown op {:?}", truncate(other, 64)),
            ))
        }
    };
    Ok(Request {
        reference,
        command,
        lz4: fields.boolean("lz4", env.lz4)?,
    })
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

/// At most `max_chars` characters of `s` (for quoting input in reasons).
pub(crate) fn truncate(s: &str, max_chars: usize) -> &str {
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
    fn every_bad_weight_gets_the_same_reason() {
        for weight in ["0", "1001", "-1", "1.5", "2.0", "\"3\"", "null"] {
            let text = format!(r#"{{"op":"join","group":"g","weight":{weight}}}"#);
            let err = decode_command(&text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(
                err.reason, "`weight` must be a whole number from 1 to 1000",
                "{text}"
            );
        }
        for weight in ["1", "1000"] {
            let text = format!(r#"{{"op":"join","group":"g","weight":{weight}}}"#);
            assert!(decode_command(&text).is_ok(), "{text}");
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
