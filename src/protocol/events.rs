//! Events (server → client), encoded without building a JSON tree: raw
//! client JSON (`data`, `ref`, `t`) is spliced in byte for byte.

use serde_json::value::RawValue;

use super::{CommandError, Priority};

/// Appends JSON events to a buffer without building a tree.
pub(crate) struct EventWriter {
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

/// The header of a binary `echo` reply, `{"op":"echo"}` (with
/// `"lz4":true` when its payload is compressed), without the `\n`.
pub fn encode_echo_header(reference: Option<&RawValue>, lz4: bool) -> String {
    let w = EventWriter::new("echo", 40).reference(reference.map(RawValue::get));
    if lz4 {
        w.raw("lz4", "true").finish()
    } else {
        w.finish()
    }
}

/// `{"op":"error","ref":R|null,"code":CODE,"reason":"..."}`
pub fn encode_error(err: &CommandError) -> String {
    EventWriter::new("error", 64 + err.reason.len())
        .raw("ref", err.reference.as_deref().unwrap_or("null"))
        .string("code", err.code.as_str())
        .string("reason", &err.reason)
        .finish()
}

/// `{"op":"ok","ref":R[,"id":ID][,"delivered":N]}`
pub fn encode_ok(reference: Option<&str>, id: Option<&str>, delivered: Option<u64>) -> String {
    let mut w = EventWriter::new("ok", 64).reference(reference);
    if let Some(id) = id {
        w = w.string("id", id);
    }
    if let Some(n) = delivered {
        w = w.number("delivered", n);
    }
    w.finish()
}

/// `ok` for `send`/`publish`/`anycast`: the message id, how many
/// connections it was queued to, and, when it waits, where (`"held"`:
/// `"mailbox"` or `"scheduled"`).
pub fn encode_route_ok(reference: &str, id: &str, delivered: u64, held: Option<&str>) -> String {
    let w = EventWriter::new("ok", 96)
        .raw("ref", reference)
        .string("id", id)
        .number("delivered", delivered);
    match held {
        Some(h) => w.string("held", h).finish(),
        None => w.finish(),
    }
}

/// The fields of a `msg` event, everything but its `data`.
#[derive(Debug, Clone)]
pub struct MsgHeader<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: Option<&'a str>,
    pub group: Option<&'a str>,
    pub priority: Priority,
    pub ts_unix_ms: u64,
    pub ack: bool,
    /// Delivery attempt: 1 for the first, shown from 2 on (redeliveries).
    pub attempt: u32,
}

impl MsgHeader<'_> {
    fn writer(&self, capacity: usize) -> EventWriter {
        let w = EventWriter::new("msg", 128 + capacity)
            .string("id", self.id)
            .string("from", self.from);
        let w = match self.to {
            Some(to) => w.string("to", to),
            None => w.raw("to", "null"),
        };
        let w = match self.group {
            Some(g) => w.string("group", g),
            None => w.raw("group", "null"),
        };
        let w = w
            .string("priority", self.priority.as_str())
            .number("ts", self.ts_unix_ms);
        let w = if self.ack { w.raw("ack", "true") } else { w };
        if self.attempt >= 2 {
            w.number("attempt", self.attempt as u64)
        } else {
            w
        }
    }

    /// The text event: `{"op":"msg",...,"data":D}`.
    pub fn encode_text(&self, data: &RawValue) -> String {
        self.encode_text_raw(data.get())
    }

    /// The text event with `data` given as JSON text (already validated).
    pub fn encode_text_raw(&self, data_json: &str) -> String {
        self.writer(data_json.len()).raw("data", data_json).finish()
    }

    /// The header of the binary event (no `\n`), with `"lz4":true` when the
    /// payload that follows is compressed.
    pub fn encode_binary_header(&self, lz4: bool) -> String {
        let w = self.writer(0);
        if lz4 {
            w.raw("lz4", "true").finish()
        } else {
            w.finish()
        }
    }
}
