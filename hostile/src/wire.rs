//! Sans-IO pieces of the attacks: client frames with every knob exposed
//! (FIN, opcode, announced length independent of the payload), reading the
//! server's frames and HTTP answers, and a small PRNG.
//!
//! The well-formed parts (upgrade request, `Sec-WebSocket-Accept`, parsing
//! server frames) are the loadgen's: `loadgen::handshake`, `loadgen::frame`.

pub use loadgen::frame::Opcode;
use loadgen::frame::{parse_server_frame, FrameError};

/// Opcodes as bytes, for frames the loadgen's encoder cannot make.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_PING: u8 = 0x9;

/// Largest server frame we accept: the server's own messages are bounded
/// by `max_message_bytes`; this only keeps a broken server from making us
/// buffer without bound.
pub const SERVER_FRAME_MAX_BYTES: usize = 64 << 20;

/// Appends a masked client frame header announcing `len` payload bytes,
/// whatever follows it. `fin` false makes a fragment.
pub fn frame_header(fin: bool, opcode: u8, len: u64, mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&mask);
}

/// Appends a complete masked client frame carrying `payload`.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    frame_header(fin, opcode, payload.len() as u64, mask, out);
    let start = out.len();
    out.extend_from_slice(payload);
    loadgen::frame::apply_mask(&mut out[start..], mask, 0);
}

/// The status code in a close frame's payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// What the server sent, one frame at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// A text or binary frame (or a fragment of one) of this many bytes.
    Data(usize),
    Ping,
    Pong,
    /// A close frame, with its code when it carries one.
    Close(Option<u16>),
}

/// Accumulates the server's bytes and hands back complete frames.
/// Memory is bounded by [`SERVER_FRAME_MAX_BYTES`] plus one read.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    /// Payload range of the frame `next_event` returned last.
    last: (usize, usize),
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Starts with bytes that came right behind the HTTP answer.
    pub fn with_leftover(leftover: &[u8]) -> Self {
        FrameReader {
            buf: leftover.to_vec(),
            pos: 0,
            last: (0, 0),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.last = (0, 0);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<ServerEvent>, FrameError> {
        let Some(frame) = parse_server_frame(&self.buf[self.pos..], SERVER_FRAME_MAX_BYTES)? else {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
                self.last = (0, 0);
            }
            return Ok(None);
        };
        self.last = (self.pos + frame.payload_start, self.pos + frame.payload_end);
        let payload = &self.buf[self.last.0..self.last.1];
        let event = match frame.opcode {
            Opcode::Close => ServerEvent::Close(close_code(payload)),
            Opcode::Ping => ServerEvent::Ping,
            Opcode::Pong => ServerEvent::Pong,
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                ServerEvent::Data(payload.len())
            }
        };
        self.pos += frame.wire_len();
        Ok(Some(event))
    }
}

impl FrameReader {
    /// The payload of the frame `next_event` returned last (empty once it
    /// returned `None` or more bytes were fed).
    pub fn last_payload(&self) -> &[u8] {
        &self.buf[self.last.0..self.last.1]
    }
}

/// An HTTP answer's status line, once its head is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAnswer {
    Partial,
    Status { code: u16, head_len: usize },
    NotHttp,
}

/// Reads the status of an HTTP answer at the start of `buf`.
pub fn http_answer(buf: &[u8]) -> HttpAnswer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => HttpAnswer::Status {
            code: response.code.unwrap_or(0),
            head_len,
        },
        Ok(httparse::Status::Partial) => HttpAnswer::Partial,
        Err(_) => HttpAnswer::NotHttp,
    }
}

/// The body of a complete `Connection: close` HTTP answer (everything after
/// the head), or `None` when `buf` is not one.
pub fn http_body(buf: &[u8]) -> Option<(u16, &[u8])> {
    match http_answer(buf) {
        HttpAnswer::Status { code, head_len } => Some((code, &buf[head_len..])),
        _ => None,
    }
}

/// xorshift64*: fast, deterministic per seed, good enough for garbage.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so small consecutive seeds diverge at once.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn mask(&mut self) -> [u8; 4] {
        let v = self.next_u64().to_le_bytes();
        [v[0], v[1], v[2], v[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadgen::frame::encode_server_frame;

    /// Decodes a client frame the way a server would (tungstenite is the
    /// server's decoder; here a few lines suffice to check our bytes).
    fn decode_client(bytes: &[u8]) -> (bool, u8, u64, Vec<u8>) {
        let fin = bytes[0] & 0x80 != 0;
        let opcode = bytes[0] & 0x0F;
        assert!(bytes[1] & 0x80 != 0, "client frames are masked");
        let (len, mut at) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as u64, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()), 10),
            n => (n as u64, 2),
        };
        let mask = &bytes[at..at + 4];
        at += 4;
        let payload = bytes[at..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        (fin, opcode, len, payload)
    }

    #[test]
    fn header_announces_any_length() {
        for len in [0u64, 125, 126, 65535, 65536, (1 << 20) + 1, 1 << 62] {
            let mut out = vec![];
            frame_header(true, OP_TEXT, len, [1, 2, 3, 4], &mut out);
            let (fin, op, got, payload) = decode_client(&out);
            assert!(fin);
            assert_eq!(op, OP_TEXT);
            assert_eq!(got, len);
            assert!(payload.is_empty());
        }
    }

    #[test]
    fn fragments_and_pings_round_trip() {
        let mut out = vec![];
        masked_frame(false, OP_CONTINUATION, b"abc", [9, 8, 7, 6], &mut out);
        assert_eq!(
            decode_client(&out),
            (false, OP_CONTINUATION, 3, b"abc".to_vec())
        );
        out.clear();
        masked_frame(true, OP_PING, &[5; 125], [1, 1, 1, 1], &mut out);
        assert_eq!(decode_client(&out), (true, OP_PING, 125, vec![5; 125]));
    }

    #[test]
    fn reader_returns_frames_across_feeds() {
        let mut bytes = vec![];
        encode_server_frame(Opcode::Text, b"{\"op\":\"welcome\"}", &mut bytes);
        encode_server_frame(Opcode::Pong, b"x", &mut bytes);
        encode_server_frame(Opcode::Close, &1009u16.to_be_bytes(), &mut bytes);
        let mut reader = FrameReader::new();
        let mut events = vec![];
        for chunk in bytes.chunks(3) {
            reader.feed(chunk);
            while let Some(e) = reader.next_event().unwrap() {
                if e == ServerEvent::Data(16) {
                    assert_eq!(reader.last_payload(), b"{\"op\":\"welcome\"}");
                }
                events.push(e);
            }
        }
        assert_eq!(
            events,
            vec![
                ServerEvent::Data(16),
                ServerEvent::Pong,
                ServerEvent::Close(Some(1009))
            ]
        );
    }

    #[test]
    fn reader_rejects_masked_server_frames() {
        let mut reader = FrameReader::with_leftover(&[0x81, 0x81, 0, 0, 0, 0, b'a']);
        assert!(reader.next_event().is_err());
    }

    #[test]
    fn http_status_and_body() {
        let answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(http_answer(&answer[..20]), HttpAnswer::Partial);
        assert_eq!(http_body(answer), Some((503, &b"{}"[..])));
        assert_eq!(http_answer(b"\x81\x05hello"), HttpAnswer::NotHttp);
    }

    #[test]
    fn rng_is_deterministic_and_varied() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let mut c = Rng::new(2);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        let mut buf = [0u8; 4096];
        a.fill(&mut buf);
        let distinct = buf.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 200, "{distinct} distinct byte values");
    }
}
