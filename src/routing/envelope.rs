//! A message on its way to recipients. `MessageParts` is the message itself
//! (what the dead-letter queue, mailboxes and the log keep); `Envelope` adds
//! the `msg` event encoded once, as complete WebSocket frames, at the
//! sender's shard. It crosses shards in an `Arc` and every recipient
//! connection queues a cheap `Bytes` clone of the same frame: never
//! re-serialised per recipient.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::protocol::events::MsgHeader;
use crate::protocol::{compress, Priority};
use crate::ws::{encode_frame, OPCODE_BINARY, OPCODE_TEXT};

/// Now, in unix microseconds.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A message's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// JSON, exactly as the sender wrote it (sent in text frames).
    Json(String),
    /// A raw payload (sent in binary frames), with the sender's own lz4
    /// form when it sent one.
    Binary {
        payload: Bytes,
        compressed: Option<Bytes>,
    },
}

/// Everything that defines a message, independent of any recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts {
    pub id: String,
    pub from: String,
    pub to: Option<String>,
    pub group: Option<String>,
    pub priority: Priority,
    pub ts_unix_ms: u64,
    pub ack: bool,
    /// After this unix time (ms) an undelivered message is dead-lettered
    /// as `expired` (`ttl_ms`).
    pub expires_unix_ms: Option<u64>,
    pub body: MessageBody,
}

impl MessageParts {
    fn header(&self, attempt: u32) -> MsgHeader<'_> {
        MsgHeader {
            id: &self.id,
            from: &self.from,
            to: self.to.as_deref(),
            group: self.group.as_deref(),
            priority: self.priority,
            ts_unix_ms: self.ts_unix_ms,
            ack: self.ack,
            attempt,
        }
    }

    /// Bytes this message holds in memory, for bounds and metrics.
    pub fn size_bytes(&self) -> usize {
        let body = match &self.body {
            MessageBody::Json(s) => s.len(),
            MessageBody::Binary {
                payload,
                compressed,
            } => payload.len() + compressed.as_ref().map_or(0, Bytes::len),
        };
        body + self.id.len() + self.from.len() + 64
    }
}

/// The frames of one message.
#[derive(Debug)]
enum Frames {
    /// JSON data: one text frame for everybody.
    Text(Bytes),
    /// Raw payload: a binary frame, plain for everybody, and for clients of
    /// `wsu.v1.lz4` a compressed variant when the payload is large enough.
    Binary {
        plain: Bytes,
        lz4_header: String,
        lz4: OnceLock<Option<Bytes>>,
        compress_min_bytes: usize,
    },
}

/// One message to deliver, shared by all its recipients.
#[derive(Debug)]
pub struct Envelope {
    pub parts: MessageParts,
    /// 1 for the first delivery; redeliveries count up.
    pub attempt: u32,
    /// When this delivery attempt was accepted (unix µs): the start of the
    /// delivery latency.
    pub accepted_unix_us: u64,
    frames: Frames,
}

impl Envelope {
    /// Encodes the frames of `parts` for delivery attempt `attempt`.
    pub fn new(parts: MessageParts, attempt: u32, compress_min_bytes: usize) -> Envelope {
        Envelope::accepted_at(parts, attempt, compress_min_bytes, unix_us())
    }

    /// `new`, for an attempt accepted at `accepted_unix_us` (a time the
    /// caller already read).
    pub fn accepted_at(
        parts: MessageParts,
        attempt: u32,
        compress_min_bytes: usize,
        accepted_unix_us: u64,
    ) -> Envelope {
        let header = parts.header(attempt);
        let frames = match &parts.body {
            MessageBody::Json(data) => {
                let event = header.encode_text_raw(data);
                Frames::Text(Bytes::from(encode_frame(OPCODE_TEXT, &[event.as_bytes()])))
            }
            MessageBody::Binary {
                payload,
                compressed,
            } => {
                let plain_header = header.encode_binary_header(false);
                let lz4_header = header.encode_binary_header(true);
                let plain = encode_frame(OPCODE_BINARY, &[plain_header.as_bytes(), b"\n", payload]);
                let lz4 = OnceLock::new();
                if let Some(compressed) = compressed {
                    let frame =
                        encode_frame(OPCODE_BINARY, &[lz4_header.as_bytes(), b"\n", compressed]);
                    let _ = lz4.set(Some(Bytes::from(frame)));
                }
                Frames::Binary {
                    plain: Bytes::from(plain),
                    lz4_header,
                    lz4,
                    compress_min_bytes,
                }
            }
        };
        Envelope {
            parts,
            attempt,
            accepted_unix_us,
            frames,
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.parts.id
    }

    pub fn priority(&self) -> Priority {
        self.parts.priority
    }

    pub fn ack(&self) -> bool {
        self.parts.ack
    }

    /// The frame for one recipient: compressed for `wsu.v1.lz4` clients when
    /// the payload is at least `compress_min_bytes` and compression helps.
    pub fn frame_for(&self, wants_lz4: bool) -> Bytes {
        match &self.frames {
            Frames::Text(frame) => frame.clone(),
            Frames::Binary {
                plain,
                lz4_header,
                lz4,
                compress_min_bytes,
            } => {
                let MessageBody::Binary { payload, .. } = &self.parts.body else {
                    unreachable!("binary frames come from binary bodies")
                };
                if !wants_lz4 || payload.len() < *compress_min_bytes {
                    return plain.clone();
                }
                // Compressed once, by the first shard that needs it.
                let compressed = lz4.get_or_init(|| {
                    let packed = compress::compress(payload);
                    (packed.len() < payload.len()).then(|| {
                        Bytes::from(encode_frame(
                            OPCODE_BINARY,
                            &[lz4_header.as_bytes(), b"\n", &packed],
                        ))
                    })
                });
                compressed.clone().unwrap_or_else(|| plain.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::{Role, WebSocket};
    use tungstenite::Message;

    fn parts(body: MessageBody) -> MessageParts {
        MessageParts {
            id: "m1".into(),
            from: "alice".into(),
            to: None,
            group: Some("room".into()),
            priority: Priority::High,
            ts_unix_ms: 5,
            ack: false,
            expires_unix_ms: None,
            body,
        }
    }

    fn decode(frame: &[u8]) -> Message {
        let mut ws =
            WebSocket::from_raw_socket(std::io::Cursor::new(frame.to_vec()), Role::Client, None);
        ws.read().unwrap()
    }

    fn split(m: &Message) -> (serde_json::Value, Vec<u8>) {
        let Message::Binary(b) = m else {
            panic!("binary expected: {m:?}")
        };
        let (h, p) = crate::protocol::split_binary(b).unwrap();
        (serde_json::from_str(h).unwrap(), p.to_vec())
    }

    fn binary(payload: &[u8], compressed: Option<Vec<u8>>) -> MessageBody {
        MessageBody::Binary {
            payload: Bytes::copy_from_slice(payload),
            compressed: compressed.map(Bytes::from),
        }
    }

    #[test]
    fn text_frame_is_shared() {
        let e = Envelope::new(parts(MessageBody::Json("{\"a\":1}".into())), 1, 1024);
        let a = e.frame_for(false);
        let b = e.frame_for(true);
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes for every recipient");
        match decode(&a) {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["op"], "msg");
                assert_eq!(v["data"]["a"], 1);
                assert_eq!(v["priority"], "high");
                assert_eq!(v["group"], "room");
                assert_eq!(v["to"], serde_json::Value::Null);
                assert_eq!(v.get("attempt"), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redeliveries_carry_the_attempt() {
        let e = Envelope::new(parts(MessageBody::Json("1".into())), 3, 1024);
        match decode(&e.frame_for(false)) {
            Message::Text(t) => assert!(t.contains("\"attempt\":3"), "{t}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_lz4_only_for_those_who_want_it() {
        let payload = vec![7u8; 5000];
        let e = Envelope::new(parts(binary(&payload, None)), 1, 1024);
        let (h, p) = split(&decode(&e.frame_for(false)));
        assert_eq!(h.get("lz4"), None);
        assert_eq!(p, payload);
        let (h, p) = split(&decode(&e.frame_for(true)));
        assert_eq!(h["lz4"], true);
        assert_eq!(compress::decompress(&p, 1 << 20).unwrap(), payload);
        // Small payloads stay plain.
        let e = Envelope::new(parts(binary(b"tiny", None)), 1, 1024);
        let (h, _) = split(&decode(&e.frame_for(true)));
        assert_eq!(h.get("lz4"), None);
    }

    #[test]
    fn senders_compressed_form_is_reused() {
        let payload = vec![1u8; 4000];
        let packed = compress::compress(&payload);
        let e = Envelope::new(parts(binary(&payload, Some(packed.clone()))), 1, 1024);
        let (_, p) = split(&decode(&e.frame_for(true)));
        assert_eq!(p, packed);
    }
}
