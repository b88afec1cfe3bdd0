//! A message on its way to recipients: the `msg` event encoded once, as a
//! complete WebSocket frame, at the sender's shard. It crosses shards in an
//! `Arc` and every recipient connection queues a cheap `Bytes` clone of the
//! same frame: never re-serialised per recipient.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::protocol::events::MsgHeader;
use crate::protocol::{compress, Priority};
use crate::ws::{encode_frame, OPCODE_BINARY, OPCODE_TEXT};

/// The frames of one message.
#[derive(Debug)]
enum Body {
    /// JSON data: one text frame for everybody.
    Text(Bytes),
    /// Raw payload: a binary frame, plain for everybody, and for clients of
    /// `wsu.v1.lz4` a compressed variant when the payload is large enough.
    Binary {
        plain: Bytes,
        payload_offset: usize,
        lz4_header: String,
        lz4: OnceLock<Option<Bytes>>,
        compress_min_bytes: usize,
    },
}

/// One message to deliver, shared by all its recipients.
#[derive(Debug)]
pub struct Envelope {
    pub id: String,
    pub priority: Priority,
    pub ack: bool,
    body: Body,
}

impl Envelope {
    /// A message whose data is JSON (sent in a text frame).
    pub fn text(header: &MsgHeader<'_>, data: &RawValue) -> Envelope {
        let event = header.encode_text(data);
        Envelope {
            id: header.id.to_string(),
            priority: header.priority,
            ack: header.ack,
            body: Body::Text(Bytes::from(encode_frame(OPCODE_TEXT, &[event.as_bytes()]))),
        }
    }

    /// A message whose data is a raw payload (sent in a binary frame).
    /// `compressed` is the sender's own lz4 form of `payload`, when it sent
    /// one, so it is reused instead of compressing again.
    pub fn binary(
        header: &MsgHeader<'_>,
        payload: &[u8],
        compressed: Option<&[u8]>,
        compress_min_bytes: usize,
    ) -> Envelope {
        let plain_header = header.encode_binary_header(false);
        let lz4_header = header.encode_binary_header(true);
        let plain = encode_frame(OPCODE_BINARY, &[plain_header.as_bytes(), b"\n", payload]);
        let payload_offset = plain.len() - payload.len();
        let lz4 = OnceLock::new();
        if let Some(compressed) = compressed {
            let frame = encode_frame(OPCODE_BINARY, &[lz4_header.as_bytes(), b"\n", compressed]);
            let _ = lz4.set(Some(Bytes::from(frame)));
        }
        Envelope {
            id: header.id.to_string(),
            priority: header.priority,
            ack: header.ack,
            body: Body::Binary {
                plain: Bytes::from(plain),
                payload_offset,
                lz4_header,
                lz4,
                compress_min_bytes,
            },
        }
    }

    /// The frame for one recipient: compressed for `wsu.v1.lz4` clients when
    /// the payload is at least `compress_min_bytes` and compression helps.
    pub fn frame_for(&self, wants_lz4: bool) -> Bytes {
        match &self.body {
            Body::Text(frame) => frame.clone(),
            Body::Binary {
                plain,
                payload_offset,
                lz4_header,
                lz4,
                compress_min_bytes,
            } => {
                let payload = &plain[*payload_offset..];
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

    fn header() -> MsgHeader<'static> {
        MsgHeader {
            id: "m1",
            from: "alice",
            to: None,
            group: Some("room"),
            priority: Priority::High,
            ts_unix_ms: 5,
            ack: false,
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

    #[test]
    fn text_frame_is_shared() {
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let e = Envelope::text(&header(), &data);
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
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_lz4_only_for_those_who_want_it() {
        let payload = vec![7u8; 5000];
        let e = Envelope::binary(&header(), &payload, None, 1024);
        let (h, p) = split(&decode(&e.frame_for(false)));
        assert_eq!(h.get("lz4"), None);
        assert_eq!(p, payload);
        let (h, p) = split(&decode(&e.frame_for(true)));
        assert_eq!(h["lz4"], true);
        assert_eq!(compress::decompress(&p, 1 << 20).unwrap(), payload);
        // Small payloads stay plain.
        let e = Envelope::binary(&header(), b"tiny", None, 1024);
        let (h, _) = split(&decode(&e.frame_for(true)));
        assert_eq!(h.get("lz4"), None);
    }

    #[test]
    fn senders_compressed_form_is_reused() {
        let payload = vec![1u8; 4000];
        let packed = compress::compress(&payload);
        let e = Envelope::binary(&header(), &payload, Some(&packed), 1024);
        let (_, p) = split(&decode(&e.frame_for(true)));
        assert_eq!(p, packed);
    }
}
