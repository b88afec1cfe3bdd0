//! What each connection sends and how it reads the answers, sans-IO.
//!
//! Every outgoing message carries the time it was meant to be sent as a
//! fixed-width 15-digit number of nanoseconds since the run started (plus
//! [`STAMP_BASE`], so the width never changes). Frames are built and masked
//! once per connection; sending a message only patches those 15 digits.
//!
//! | workload | sends | completes on | latency |
//! |---|---|---|---|
//! | echo | text frame `<stamp>xxxx…` | the same bytes echoed | round trip |
//! | ping | `{"op":"ping","t":S}` | `{"op":"pong","t":S}` | round trip |
//! | direct | `send` to the paired user | a `msg` from the peer | one way |
//! | publish | `publish` with `echo:true` to its group | its own `msg` back | one way, every delivery |
//! | anycast | clients `anycast` to a worker group; workers `send` it back | the worker's reply | round trip |

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::frame::{encode_client_frame, patch_masked, Opcode};

/// Digits of an embedded timestamp.
pub const STAMP_DIGITS: usize = 15;
/// Added to run-relative nanoseconds so the stamp always has 15 digits and
/// stays below 2^53 (safe even for servers that parse numbers as f64): runs up
/// to ~27 hours.
pub const STAMP_BASE: u64 = 100_000_000_000_000;
/// Connections per publish/anycast group, unless `--group-size` says.
pub const GROUP_SIZE: usize = 10;
/// `ref` of our `join` command, so its `ok` can be recognised.
pub const JOIN_REF: &str = "lg-join";

/// The message pattern of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Echo,
    Ping,
    Direct,
    Publish,
    Anycast,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Echo,
        Workload::Ping,
        Workload::Direct,
        Workload::Publish,
        Workload::Anycast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Ping => "ping",
            Workload::Direct => "direct",
            Workload::Publish => "publish",
            Workload::Anycast => "anycast",
        }
    }

    /// Whether the latency figure is a round trip or one way (sender → receiver).
    pub fn latency_kind(self) -> &'static str {
        match self {
            Workload::Echo | Workload::Ping | Workload::Anycast => "round_trip",
            Workload::Direct | Workload::Publish => "one_way",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (echo, ping, direct, publish, anycast)"))
    }
}

/// The part one connection plays in its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Echo,
    Ping,
    /// Sends to `peer`, who sends back to us.
    Direct {
        peer: String,
    },
    /// Joins `group` and publishes to it with `echo:true`.
    Publisher {
        group: String,
    },
    /// Joins `group` and answers every delivery with a `send` back to its sender.
    AnycastWorker {
        group: String,
    },
    /// Anycasts to `group` and waits for a worker's answer.
    AnycastClient {
        group: String,
    },
}

impl Role {
    /// Whether each message sent expects exactly one completion (so what is
    /// still outstanding at the end of a run was lost).
    pub fn is_request_reply(&self) -> bool {
        matches!(self, Role::Echo | Role::Ping | Role::AnycastClient { .. })
    }

    /// Whether this connection generates load itself (workers only answer).
    pub fn sends(&self) -> bool {
        !matches!(self, Role::AnycastWorker { .. })
    }

    /// Whether stamped messages arrive here to be timed, so that the
    /// connection has a mean latency to report (workers only answer).
    pub fn records_latency(&self) -> bool {
        !matches!(self, Role::AnycastWorker { .. })
    }

    /// Whether it must join a group (and wait for the `ok`) before sending.
    pub fn join_group(&self) -> Option<&str> {
        match self {
            Role::Publisher { group } | Role::AnycastWorker { group } => Some(group),
            _ => None,
        }
    }

    /// Whether the server sends a `welcome` first (every mode but plain echo).
    pub fn expects_json(&self) -> bool {
        !matches!(self, Role::Echo)
    }
}

/// The user id and role of connection slot `slot` of a run.
///
/// User ids are `lg<run>-<slot>` so runs do not read each other's mailboxes.
pub fn identity(workload: Workload, run_id: u32, slot: usize, group_size: usize) -> (String, Role) {
    let group_size = group_size.max(1);
    let user = user_id(run_id, slot);
    let role = match workload {
        Workload::Echo => Role::Echo,
        Workload::Ping => Role::Ping,
        Workload::Direct => Role::Direct {
            peer: user_id(run_id, slot ^ 1),
        },
        Workload::Publish => Role::Publisher {
            group: format!("lg{run_id}-pub-{}", slot / group_size),
        },
        Workload::Anycast => {
            let group = format!("lg{run_id}-any-{}", slot / group_size);
            if slot.is_multiple_of(2) {
                Role::AnycastWorker { group }
            } else {
                Role::AnycastClient { group }
            }
        }
    };
    (user, role)
}

/// The user id of a slot.
pub fn user_id(run_id: u32, slot: usize) -> String {
    format!("lg{run_id}-{slot}")
}

/// Writes `ns` (run-relative) as the 15 stamp digits.
pub fn write_stamp(ns: u64, out: &mut [u8; STAMP_DIGITS]) {
    let mut value = STAMP_BASE + ns;
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Reads 15 stamp digits back into run-relative nanoseconds.
pub fn read_stamp(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < STAMP_DIGITS {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &bytes[..STAMP_DIGITS] {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    value.checked_sub(STAMP_BASE)
}

/// Converts a JSON `t` back to run-relative nanoseconds.
pub fn stamp_value(t: u64) -> Option<u64> {
    t.checked_sub(STAMP_BASE)
}

/// One pre-built, pre-masked message whose stamp is patched per send.
#[derive(Clone, Debug)]
pub struct MessageTemplate {
    frame: Vec<u8>,
    payload_start: usize,
    stamp_offset: usize,
    mask: [u8; 4],
}

impl MessageTemplate {
    /// `payload` must hold [`STAMP_DIGITS`] placeholder digits at `stamp_offset`.
    pub fn new(
        opcode: Opcode,
        payload: &[u8],
        stamp_offset: usize,
        mask: [u8; 4],
    ) -> MessageTemplate {
        assert!(
            stamp_offset + STAMP_DIGITS <= payload.len(),
            "stamp outside payload"
        );
        let mut frame = Vec::with_capacity(payload.len() + 14);
        let payload_start = encode_client_frame(opcode, payload, mask, &mut frame);
        MessageTemplate {
            frame,
            payload_start,
            stamp_offset,
            mask,
        }
    }

    /// Bytes on the wire per message.
    pub fn wire_len(&self) -> usize {
        self.frame.len()
    }

    /// Stamps the frame with `ns` and appends it to `out`.
    pub fn append_stamped(&mut self, ns: u64, out: &mut Vec<u8>) {
        let mut digits = [0u8; STAMP_DIGITS];
        write_stamp(ns, &mut digits);
        patch_masked(
            &mut self.frame,
            self.payload_start,
            self.mask,
            self.stamp_offset,
            &digits,
        );
        out.extend_from_slice(&self.frame);
    }
}

/// Builds the message template for a role; `None` for roles that only answer.
///
/// `size` is the payload size to aim for (padding is added; the JSON envelope
/// may make the frame a little larger than asked).
pub fn build_template(role: &Role, size: usize, mask: [u8; 4]) -> Option<MessageTemplate> {
    const PLACEHOLDER: &str = "100000000000000";
    let (opcode, payload) = match role {
        Role::Echo => {
            let mut p = PLACEHOLDER.as_bytes().to_vec();
            p.resize(size.max(STAMP_DIGITS), b'x');
            (Opcode::Text, p)
        }
        Role::Ping => (Opcode::Text, pad_json(format!("{{\"op\":\"ping\",\"t\":{PLACEHOLDER}"), size)),
        Role::Direct { peer } => (
            Opcode::Text,
            pad_json(format!("{{\"op\":\"send\",\"to\":\"{peer}\",\"data\":{{\"t\":{PLACEHOLDER}"), size),
        ),
        Role::Publisher { group } => (
            Opcode::Text,
            pad_json(
                format!("{{\"op\":\"publish\",\"group\":\"{group}\",\"echo\":true,\"data\":{{\"t\":{PLACEHOLDER}"),
                size,
            ),
        ),
        Role::AnycastClient { group } => (
            Opcode::Text,
            pad_json(format!("{{\"op\":\"anycast\",\"group\":\"{group}\",\"data\":{{\"t\":{PLACEHOLDER}"), size),
        ),
        Role::AnycastWorker { .. } => return None,
    };
    let offset = find(&payload, PLACEHOLDER.as_bytes()).expect("placeholder present");
    Some(MessageTemplate::new(opcode, &payload, offset, mask))
}

/// Closes a JSON prefix, adding a `"p":"xxx"` pad field to approach `size`.
fn pad_json(mut prefix: String, size: usize) -> Vec<u8> {
    // Objects still open in the prefix: one for the command, one more for `data`.
    let open = prefix.matches('{').count() - prefix.matches('}').count();
    let closing = open;
    let pad_overhead = ",\"p\":\"\"".len();
    let current = prefix.len() + closing;
    if size > current + pad_overhead {
        prefix.push_str(",\"p\":\"");
        prefix.extend(std::iter::repeat_n('x', size - current - pad_overhead));
        prefix.push('"');
    }
    prefix.extend(std::iter::repeat_n('}', closing));
    prefix.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The frame a `join` command for `group` becomes.
pub fn join_frame(group: &str, mask: [u8; 4], out: &mut Vec<u8>) {
    let payload = format!("{{\"op\":\"join\",\"group\":\"{group}\",\"ref\":\"{JOIN_REF}\"}}");
    encode_client_frame(Opcode::Text, payload.as_bytes(), mask, out);
}

/// Appends an anycast worker's answer: `send` the stamp back to `to`.
///
/// Uses `scratch` as the payload buffer so nothing is allocated once warm.
pub fn append_worker_reply(
    to: &str,
    stamp_ns: u64,
    mask: [u8; 4],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let mut digits = [0u8; STAMP_DIGITS];
    write_stamp(stamp_ns, &mut digits);
    scratch.clear();
    scratch.extend_from_slice(b"{\"op\":\"send\",\"to\":\"");
    scratch.extend_from_slice(to.as_bytes());
    scratch.extend_from_slice(b"\",\"data\":{\"t\":");
    scratch.extend_from_slice(&digits);
    scratch.extend_from_slice(b"}}");
    encode_client_frame(Opcode::Text, scratch, mask, out);
}

/// What an incoming data frame means to the connection that got it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A stamped message came back to us: an echo, a pong.
    Reply { stamp_ns: u64 },
    /// A `msg` event carrying one of our stamps, sent by user `from`.
    Deliver { stamp_ns: u64, from: &'a str },
    /// The server's greeting.
    Welcome,
    /// `ok` for the command with `ref` (if a string).
    Ok { reference: Option<&'a str> },
    /// `error`, with its code.
    Error { code: &'a str },
    /// Anything else (counted, otherwise ignored).
    Other,
}

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(default)]
    t: Option<u64>,
    #[serde(default, borrow)]
    from: Option<&'a str>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<RefView<'a>>,
    #[serde(default)]
    data: Option<DataView>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RefView<'a> {
    Text(&'a str),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct DataView {
    #[serde(default)]
    t: Option<u64>,
}

/// Classifies one text or binary frame payload.
pub fn classify(payload: &[u8]) -> Inbound<'_> {
    if let Some(stamp_ns) = read_stamp(payload) {
        return Inbound::Reply { stamp_ns };
    }
    if payload.first() != Some(&b'{') {
        return Inbound::Other;
    }
    let Ok(event) = serde_json::from_slice::<EventView<'_>>(payload) else {
        return Inbound::Other;
    };
    match event.op {
        // `ping` is what an echo server sends back for our ping command.
        "pong" | "ping" => match event.t.and_then(stamp_value) {
            Some(stamp_ns) => Inbound::Reply { stamp_ns },
            None => Inbound::Other,
        },
        "msg" => match (
            event.data.and_then(|d| d.t).and_then(stamp_value),
            event.from,
        ) {
            (Some(stamp_ns), Some(from)) => Inbound::Deliver { stamp_ns, from },
            (Some(stamp_ns), None) => Inbound::Deliver { stamp_ns, from: "" },
            _ => Inbound::Other,
        },
        "welcome" => Inbound::Welcome,
        "ok" => Inbound::Ok {
            reference: match event.reference {
                Some(RefView::Text(r)) => Some(r),
                Some(RefView::Other(_)) | None => None,
            },
        },
        "error" => Inbound::Error {
            code: event.code.unwrap_or("unknown"),
        },
        _ => Inbound::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{apply_mask, client_header_len};

    fn unmask(t: &MessageTemplate, ns: u64) -> Vec<u8> {
        let mut t = t.clone();
        let mut out = Vec::new();
        t.append_stamped(ns, &mut out);
        let mut payload = out[t.payload_start..].to_vec();
        apply_mask(&mut payload, t.mask, 0);
        payload
    }

    #[test]
    fn stamps_round_trip() {
        let mut d = [0u8; STAMP_DIGITS];
        for ns in [0u64, 1, 999_999_999, 86_400_000_000_000] {
            write_stamp(ns, &mut d);
            assert_eq!(read_stamp(&d), Some(ns));
        }
        assert_eq!(read_stamp(b"12345"), None);
        assert_eq!(read_stamp(b"1000000000000x0"), None);
    }

    #[test]
    fn templates_are_valid_json_with_stamp() {
        let mask = [3, 1, 4, 1];
        for (workload, slot) in [
            (Workload::Ping, 0),
            (Workload::Direct, 3),
            (Workload::Publish, 12),
            (Workload::Anycast, 1),
        ] {
            let (_, role) = identity(workload, 7, slot, GROUP_SIZE);
            let t = build_template(&role, 200, mask).unwrap();
            let payload = unmask(&t, 42);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let t_value = v
                .get("t")
                .or_else(|| v["data"].get("t"))
                .unwrap()
                .as_u64()
                .unwrap();
            assert_eq!(stamp_value(t_value), Some(42), "{workload}");
            assert!(
                payload.len() >= 195 && payload.len() <= 205,
                "{workload}: {}",
                payload.len()
            );
        }
        let (_, worker) = identity(Workload::Anycast, 7, 0, GROUP_SIZE);
        assert!(build_template(&worker, 64, mask).is_none());
    }

    #[test]
    fn echo_template_is_stamp_then_padding() {
        let t = build_template(&Role::Echo, 64, [0, 0, 0, 0]).unwrap();
        let payload = unmask(&t, 5);
        assert_eq!(payload.len(), 64);
        assert_eq!(read_stamp(&payload), Some(5));
        assert_eq!(t.wire_len(), 64 + client_header_len(64));
        assert_eq!(classify(&payload), Inbound::Reply { stamp_ns: 5 });
    }

    #[test]
    fn identities_pair_and_group() {
        let (u0, r0) = identity(Workload::Direct, 1, 0, GROUP_SIZE);
        let (u1, r1) = identity(Workload::Direct, 1, 1, GROUP_SIZE);
        assert_eq!(r0, Role::Direct { peer: u1 });
        assert_eq!(r1, Role::Direct { peer: u0 });
        assert!(matches!(
            identity(Workload::Anycast, 1, 4, GROUP_SIZE).1,
            Role::AnycastWorker { .. }
        ));
        assert!(matches!(
            identity(Workload::Anycast, 1, 5, GROUP_SIZE).1,
            Role::AnycastClient { .. }
        ));
        assert_eq!(
            identity(Workload::Publish, 1, 19, GROUP_SIZE).1,
            Role::Publisher {
                group: "lg1-pub-1".into()
            }
        );
    }

    #[test]
    fn classifies_protocol_events() {
        assert_eq!(
            classify(br#"{"op":"pong","t":100000000000007}"#),
            Inbound::Reply { stamp_ns: 7 }
        );
        assert_eq!(
            classify(br#"{"op":"ping","t":100000000000007}"#),
            Inbound::Reply { stamp_ns: 7 }
        );
        assert_eq!(
            classify(br#"{"op":"welcome","user":"u","conn":1,"shard":0,"server":"ws-uring/0.1","heartbeat_ms":20000}"#),
            Inbound::Welcome
        );
        assert_eq!(
            classify(br#"{"op":"msg","id":"9","from":"lg1-2","to":null,"group":"g","priority":"normal","ts":1,"data":{"t":100000000000009}}"#),
            Inbound::Deliver { stamp_ns: 9, from: "lg1-2" }
        );
        assert_eq!(
            classify(br#"{"op":"error","ref":null,"code":"unknown_op","reason":"x"}"#),
            Inbound::Error { code: "unknown_op" }
        );
        assert_eq!(
            classify(br#"{"op":"ok","ref":"lg-join"}"#),
            Inbound::Ok {
                reference: Some(JOIN_REF)
            }
        );
        assert_eq!(
            classify(br#"{"op":"ok","ref":5}"#),
            Inbound::Ok { reference: None }
        );
        assert_eq!(classify(b"hello"), Inbound::Other);
    }

    #[test]
    fn worker_reply_is_a_send_back() {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        append_worker_reply("lg1-3", 11, [0; 4], &mut scratch, &mut out);
        let header = client_header_len(scratch.len());
        let v: serde_json::Value = serde_json::from_slice(&out[header..]).unwrap();
        assert_eq!(v["op"], "send");
        assert_eq!(v["to"], "lg1-3");
        assert_eq!(stamp_value(v["data"]["t"].as_u64().unwrap()), Some(11));
    }
}
