//! tungstenite driven sans-IO: the connection task feeds it the bytes it
//! read and takes back the bytes to write. tungstenite never touches the
//! socket, so it never blocks; running out of input is `WouldBlock`.
//!
//! Frames written between two socket writes accumulate in one buffer, so a
//! burst of replies costs one `send` ("write many frames, flush once").

use std::cell::RefCell;
use std::io::{self, Read, Write};

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// tungstenite's read chunk and initial input capacity. Small, because it is
/// held for every connection, idle or not; it grows for large frames only.
pub const SESSION_READ_CHUNK_BYTES: usize = 1024;

/// Buffers above this capacity are released once drained, so a connection
/// that once sent a large message does not keep its memory while idle.
pub const IDLE_BUFFER_KEEP_BYTES: usize = 16 * 1024;

/// Most output a session holds from replies appended by `append_reply`
/// (one turn's answers, taken by the next write); past it, replies queue in
/// the connection's outbox, which bounds what a peer that does not read
/// can pile up.
pub const DIRECT_REPLIES_MAX_BYTES: usize = 64 * 1024;

/// The in-memory stream tungstenite reads from and writes to.
#[derive(Debug, Default)]
pub struct MemStream {
    inbound: Vec<u8>,
    inbound_pos: usize,
    outbound: Vec<u8>,
    /// Tests: how often tungstenite was told "would block".
    #[cfg(test)]
    would_blocks: usize,
}

impl MemStream {
    /// Starts the inbound buffer over once everything in it was taken
    /// (releasing it if a large message grew it); whether it was drained.
    fn restart_inbound_if_drained(&mut self) -> bool {
        if self.inbound_pos < self.inbound.len() {
            return false;
        }
        self.inbound.clear();
        self.inbound_pos = 0;
        if self.inbound.capacity() > IDLE_BUFFER_KEEP_BYTES {
            self.inbound = Vec::new();
        }
        true
    }
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.restart_inbound_if_drained() {
            #[cfg(test)]
            {
                self.would_blocks += 1;
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let available = &self.inbound[self.inbound_pos..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.inbound_pos += n;
        Ok(n)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// WebSocket opcode of a text frame.
pub const OPCODE_TEXT: u8 = 0x1;
/// WebSocket opcode of a binary frame.
pub const OPCODE_BINARY: u8 = 0x2;

/// Encodes one complete, unmasked server frame (FIN set) from its payload
/// parts, in one allocation. Frames a shard sends to many connections are
/// encoded once this way and shared.
pub fn encode_frame(opcode: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x80 | opcode);
    match len {
        0..=125 => frame.push(len as u8),
        126..=65535 => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// Why a session ended or must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The close handshake finished (or the peer's close was answered).
    Closed,
    /// We failed the connection and sent a close frame with this code.
    Failed { code: u16, reason: String },
}

/// Most pong bytes a connection queues while its socket does not take
/// writes; past it the connection reads no more until the peer reads.
pub const REPLIES_QUEUED_MAX_BYTES: usize = 64 * 1024;

/// Most resting tungstenite states a shard keeps for reuse. Only the
/// connections busy in one wake-up hold one, so a few suffice.
pub const RESTING_SESSIONS_MAX: usize = 256;

thread_local! {
    /// This shard's tungstenite states not in use, with their message cap.
    /// (A shard is one thread: thread-local is shard-local.)
    static RESTING: RefCell<Vec<(usize, Box<WebSocket<MemStream>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// One WebSocket connection's protocol state.
///
/// Between messages a connection needs none of tungstenite's state: when
/// every byte fed so far formed whole frames, no fragmented message is open,
/// the session is open and its output was taken, tungstenite is exactly as
/// a fresh session would be. Then `rest` hands it to a shard-wide pool and
/// the connection keeps only its frame boundary tracker; the next `feed`
/// takes one back. An idle connection holds no tungstenite buffers at all.
pub struct WsSession {
    ws: Option<Box<WebSocket<MemStream>>>,
    frames: FrameTracker,
    max_message_bytes: usize,
    /// Bytes of automatic replies (pongs, the close reply) queued since the
    /// output was last taken: the part of the output the peer controls.
    /// (u32 with the next field: the session stays 48 bytes.)
    replies_queued_bytes: u32,
    /// Messages and control frames whose last byte was fed but that
    /// `next_message` has not returned yet. At 0, at a message boundary,
    /// tungstenite has nothing to give and is not asked: its "would block"
    /// answer after each message was a sixth of an echo's user time.
    messages_fed_unread: u32,
}

impl WsSession {
    /// A server-side session; `leftover` is what arrived after the HTTP head.
    pub fn new(max_message_bytes: usize, leftover: &[u8]) -> Self {
        let mut session = WsSession {
            ws: None,
            frames: FrameTracker::default(),
            max_message_bytes,
            replies_queued_bytes: 0,
            messages_fed_unread: 0,
        };
        if !leftover.is_empty() {
            session.feed(leftover);
        }
        session
    }

    fn fresh(max_message_bytes: usize) -> Box<WebSocket<MemStream>> {
        let config = WebSocketConfig::default()
            .read_buffer_size(SESSION_READ_CHUNK_BYTES)
            // Frames collect in tungstenite's own buffer until `take_output`,
            // which moves them out in one piece. (tungstenite requires its
            // max_write_buffer_size, unbounded, to be above this.)
            .write_buffer_size(usize::MAX / 2)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        Box::new(WebSocket::from_raw_socket(
            MemStream::default(),
            Role::Server,
            Some(config),
        ))
    }

    /// The tungstenite state, taken from the pool if resting.
    fn ws(&mut self) -> &mut WebSocket<MemStream> {
        let max = self.max_message_bytes;
        self.ws.get_or_insert_with(|| {
            RESTING
                .with(|pool| {
                    let mut pool = pool.borrow_mut();
                    let at = pool.iter().rposition(|(m, _)| *m == max)?;
                    Some(pool.swap_remove(at).1)
                })
                .unwrap_or_else(|| Self::fresh(max))
        })
    }

    /// Bytes of pongs queued since the output was last taken. A peer that
    /// pings without reading grows this; the connection stops reading
    /// while it is over `REPLIES_QUEUED_MAX_BYTES` and a write is stuck.
    pub fn replies_queued_bytes(&self) -> usize {
        self.replies_queued_bytes as usize
    }

    /// Whether the tungstenite state is in the pool (nothing in progress).
    pub fn is_resting(&self) -> bool {
        self.ws.is_none()
    }

    /// Returns the tungstenite state to the shard's pool if nothing is in
    /// progress (see the type's docs); the session stays usable.
    pub fn rest(&mut self) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        // A pong tungstenite queued while reading is moved to the stream
        // (and so counts as output not taken): its queue is never pooled.
        let _ = ws.flush();
        let stream = ws.get_ref();
        let idle = self.messages_fed_unread == 0
            && self.frames.at_message_boundary()
            && ws.can_write()
            && stream.inbound_pos == stream.inbound.len()
            && stream.outbound.is_empty();
        if !idle {
            return;
        }
        let mut ws = self.ws.take().expect("checked above");
        ws.get_mut().restart_inbound_if_drained();
        let max = self.max_message_bytes;
        RESTING.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < RESTING_SESSIONS_MAX {
                pool.push((max, ws));
            }
        });
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        let completed = self.frames.feed(bytes);
        self.messages_fed_unread = self.messages_fed_unread.saturating_add(completed);
        let stream = self.ws().get_mut();
        // tungstenite's "would block", which used to do this, is no longer
        // asked for after every message.
        stream.restart_inbound_if_drained();
        stream.inbound.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more input is needed.
    /// Pings are answered and closes replied to automatically. On a
    /// protocol violation the close frame is queued and the end returned.
    pub fn next_message(&mut self) -> Result<Option<Message>, SessionEnd> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(None);
        };
        // Every message fed so far was returned and no frame is under way:
        // tungstenite would only answer "would block". A fragmented message
        // or a partial frame still goes to it at once (it enforces the size
        // limits as bytes arrive), and so does a closing session (it ends
        // the session on its next read).
        if self.messages_fed_unread == 0
            && self.frames.at_message_boundary()
            && ws.can_read()
            && ws.can_write()
        {
            return Ok(None);
        }
        match ws.read() {
            Ok(message) => {
                self.messages_fed_unread = self.messages_fed_unread.saturating_sub(1);
                if let Message::Ping(payload) = &message {
                    // tungstenite queued the pong: header plus payload.
                    self.replies_queued_bytes = self
                        .replies_queued_bytes
                        .saturating_add(payload.len() as u32 + 2);
                }
                Ok(Some(message))
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // All input taken: whatever was counted has been returned.
                self.messages_fed_unread = 0;
                Ok(None)
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(SessionEnd::Closed),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Queues a message; it is written out by the next `take_output`.
    pub fn send(&mut self, message: Message) -> Result<(), SessionEnd> {
        let ws = self.ws();
        match ws.write(message) {
            Ok(()) => Ok(()),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(SessionEnd::Closed),
            // Writing after our close is a no-op for the caller, not a fault.
            Err(WsError::Protocol(_)) if !ws.can_write() => Err(SessionEnd::Closed),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Appends one encoded data frame (a reply) to the output, behind what
    /// tungstenite queued so far; false if the session may not send data
    /// (closing), is resting, or holds `DIRECT_REPLIES_MAX_BYTES` of
    /// output already: the caller queues the frame in the outbox instead.
    pub fn append_reply(&mut self, frame: &[u8]) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        if !ws.can_write() {
            return false;
        }
        // tungstenite's buffered frames (a pong) go first: output keeps
        // the order things were answered in.
        let _ = ws.flush();
        let outbound = &mut ws.get_mut().outbound;
        if outbound.len() + frame.len() > DIRECT_REPLIES_MAX_BYTES {
            return false;
        }
        outbound.extend_from_slice(frame);
        true
    }

    /// Starts the close handshake with `code` (no-op once closing).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.is_open() {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            };
            // Errors here mean the session is already closed: nothing to send.
            let _ = self.ws().close(Some(frame));
        }
    }

    /// Whether we may still send data frames.
    pub fn is_open(&self) -> bool {
        // A resting session is an open one with nothing in progress.
        self.ws.as_ref().is_none_or(|ws| ws.can_write())
    }

    /// Appends all bytes tungstenite queued for the socket (control frames,
    /// close replies, messages given to `send`) to `out`.
    pub fn append_output(&mut self, out: &mut Vec<u8>) {
        self.replies_queued_bytes = 0;
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        // Moves tungstenite's buffered frames into the MemStream.
        let _ = ws.flush();
        let stream = ws.get_mut();
        if out.is_empty() {
            std::mem::swap(out, &mut stream.outbound);
        } else {
            out.extend_from_slice(&stream.outbound);
            stream.outbound.clear();
        }
        if stream.outbound.capacity() > IDLE_BUFFER_KEEP_BYTES {
            stream.outbound = Vec::new();
        }
    }

    /// Moves all bytes queued for the socket into `out` (which is cleared).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.clear();
        self.append_output(out);
    }

    fn fail(&mut self, error: WsError) -> SessionEnd {
        let (code, reason) = match &error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                (1009, "message too large".to_string())
            }
            WsError::Capacity(_) => (1009, "message too large".to_string()),
            WsError::Utf8(_) => (1007, "invalid UTF-8 in text message".to_string()),
            WsError::Protocol(p) => (1002, format!("protocol error: {p}")),
            other => (1011, format!("internal error: {other}")),
        };
        log::debug!("failing WebSocket connection with {code}: {error}");
        self.close(code, &reason);
        SessionEnd::Failed { code, reason }
    }
}

/// Where a stream of client frames stands, from their headers alone: in a
/// header, in a payload, or between frames; and whether a fragmented
/// message is open. Sans-IO, a few bytes per connection.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    header_len: u8,
    payload_left: u64,
    in_fragmented_message: bool,
}

impl FrameTracker {
    /// Follows `bytes`, the next part of the client's stream. Returns how
    /// many frames that end a message (a final data frame, or a control
    /// frame) were completed by them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut messages_completed = 0u32;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 && self.frame_ends_message() {
                    messages_completed += 1;
                }
                continue;
            }
            let len = self.header_len as usize;
            let needed = self.header_needed();
            let n = (needed - len).min(bytes.len());
            self.header[len..len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n as u8;
            bytes = &bytes[n..];
            if self.header_len as usize == self.header_needed() {
                self.complete_header();
                if self.payload_left == 0 && self.frame_ends_message() {
                    messages_completed += 1;
                }
            }
        }
        messages_completed
    }

    /// Whether the current (or just completed) frame ends a message: a
    /// control frame, or a data frame with FIN. Its first header byte stays
    /// in `header[0]` until the next frame's header starts.
    fn frame_ends_message(&self) -> bool {
        let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
        fin || opcode & 0x08 != 0
    }

    /// Whether every byte so far belongs to a whole frame and no
    /// fragmented message is open.
    pub fn at_message_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_fragmented_message
    }

    /// Header bytes needed, as far as what arrived tells.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + mask
    }

    fn complete_header(&mut self) {
        let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
        self.payload_left = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            short => u64::from(short),
        };
        // Control frames (0x8..) may sit inside a fragmented message.
        if opcode & 0x08 == 0 {
            self.in_fragmented_message = !fin;
        }
        self.header_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client-role tungstenite over memory, to produce real masked frames.
    fn client_bytes(messages: Vec<Message>) -> Vec<u8> {
        let mut client = WebSocket::from_raw_socket(MemStream::default(), Role::Client, None);
        for m in messages {
            client.write(m).unwrap();
        }
        client.flush().unwrap();
        std::mem::take(&mut client.get_mut().outbound)
    }

    fn decode_server_output(bytes: &[u8]) -> Vec<Message> {
        let mut stream = MemStream::default();
        stream.inbound.extend_from_slice(bytes);
        let mut client = WebSocket::from_raw_socket(stream, Role::Client, None);
        let mut out = vec![];
        loop {
            match client.read() {
                Ok(m) => out.push(m),
                Err(_) => return out,
            }
        }
    }

    #[test]
    fn reads_messages_split_across_feeds() {
        let bytes = client_bytes(vec![Message::text("hello"), Message::binary(vec![1, 2, 3])]);
        let mut s = WsSession::new(1024, &[]);
        let mut got = vec![];
        for chunk in bytes.chunks(3) {
            s.feed(chunk);
            while let Some(m) = s.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![Message::text("hello"), Message::binary(vec![1, 2, 3])]
        );
    }

    #[test]
    fn many_frames_one_output() {
        let mut s = WsSession::new(1024, &[]);
        for i in 0..10 {
            s.send(Message::text(format!("m{i}"))).unwrap();
        }
        let mut out = Vec::new();
        s.take_output(&mut out);
        let msgs = decode_server_output(&out);
        assert_eq!(msgs.len(), 10);
        assert_eq!(msgs[9], Message::text("m9"));
    }

    #[test]
    fn oversize_message_closes_1009() {
        let bytes = client_bytes(vec![Message::text("x".repeat(2000))]);
        let mut s = WsSession::new(1024, &bytes);
        let end = s.next_message().unwrap_err();
        assert!(matches!(end, SessionEnd::Failed { code: 1009, .. }));
        let mut out = Vec::new();
        s.take_output(&mut out);
        let msgs = decode_server_output(&out);
        match &msgs[..] {
            [Message::Close(Some(f))] => assert_eq!(u16::from(f.code), 1009),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn tungstenite_is_not_asked_again_once_every_message_fed_was_read() {
        let bytes = client_bytes(vec![
            Message::text("one"),
            Message::Ping(vec![7u8].into()),
            Message::binary(vec![2u8; 40]),
        ]);
        let mut s = WsSession::new(1024, &[]);
        s.feed(&bytes);
        let mut got = vec![];
        while let Some(m) = s.next_message().unwrap() {
            got.push(m);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            s.ws().get_ref().would_blocks,
            0,
            "the fourth call answers from the count"
        );
        // Half a frame: tungstenite takes it now (it checks sizes as bytes
        // arrive), says "would block", and the rest completes the message.
        let next = client_bytes(vec![Message::text("two")]);
        s.feed(&next[..3]);
        assert_eq!(s.next_message(), Ok(None));
        assert_eq!(s.ws().get_ref().would_blocks, 1);
        s.feed(&next[3..]);
        assert_eq!(s.next_message(), Ok(Some(Message::text("two"))));
        assert_eq!(s.next_message(), Ok(None));
    }

    #[test]
    fn a_session_stays_small() {
        // Held by every live connection: the idle-memory budget (1 KiB a
        // connection, docs/PERFORMANCE.md) counts these bytes.
        assert!(std::mem::size_of::<WsSession>() <= 48);
        assert!(std::mem::size_of::<FrameTracker>() <= 24);
    }

    #[test]
    fn an_oversize_frame_fails_on_its_header_alone() {
        let bytes = client_bytes(vec![Message::binary(vec![0u8; 5000])]);
        let mut s = WsSession::new(1024, &bytes[..8]);
        assert!(matches!(
            s.next_message(),
            Err(SessionEnd::Failed { code: 1009, .. })
        ));
    }

    #[test]
    fn whole_fragments_over_the_limit_fail_before_the_message_ends() {
        // Non-final fragments end no message; tungstenite still sees each
        // one at once, so their sum cannot pile up unchecked.
        let mut s = WsSession::new(1024, &[]);
        s.feed(&masked(0x02, &[1u8; 120]));
        for _ in 0..7 {
            assert_eq!(s.next_message(), Ok(None));
            s.feed(&masked(0x00, &[1u8; 120]));
        }
        assert_eq!(s.next_message(), Ok(None), "960 bytes so far");
        s.feed(&masked(0x00, &[1u8; 120]));
        assert!(matches!(
            s.next_message(),
            Err(SessionEnd::Failed { code: 1009, .. })
        ));
    }

    #[test]
    fn invalid_utf8_closes_1007() {
        // A masked text frame with mask 0 carrying 0xff.
        let frame = [0x81u8, 0x81, 0, 0, 0, 0, 0xff];
        let mut s = WsSession::new(1024, &frame);
        assert!(matches!(
            s.next_message(),
            Err(SessionEnd::Failed { code: 1007, .. })
        ));
    }

    #[test]
    fn unmasked_frame_closes_1002() {
        let frame = [0x81u8, 0x01, b'a'];
        let mut s = WsSession::new(1024, &frame);
        assert!(matches!(
            s.next_message(),
            Err(SessionEnd::Failed { code: 1002, .. })
        ));
    }

    #[test]
    fn peer_close_is_answered_then_ends() {
        let bytes = client_bytes(vec![Message::Close(None)]);
        let mut s = WsSession::new(1024, &bytes);
        assert!(matches!(s.next_message(), Ok(Some(Message::Close(_)))));
        assert_eq!(s.next_message(), Err(SessionEnd::Closed));
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert!(matches!(
            decode_server_output(&out)[..],
            [Message::Close(_)]
        ));
    }

    #[test]
    fn encoded_frames_decode_as_sent() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'a'; len];
            let mut bytes = encode_frame(OPCODE_TEXT, &[&payload[..len / 2], &payload[len / 2..]]);
            bytes.extend(encode_frame(OPCODE_BINARY, &[b"xy"]));
            let msgs = decode_server_output(&bytes);
            assert_eq!(msgs[0], Message::text("a".repeat(len)), "len {len}");
            assert_eq!(msgs[1], Message::binary(b"xy".to_vec()));
        }
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let bytes = client_bytes(vec![Message::Ping(vec![7u8].into())]);
        let mut s = WsSession::new(1024, &bytes);
        assert!(matches!(s.next_message(), Ok(Some(Message::Ping(_)))));
        assert_eq!(s.next_message(), Ok(None));
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert_eq!(
            decode_server_output(&out),
            vec![Message::Pong(vec![7u8].into())]
        );
    }

    #[test]
    fn a_reply_goes_out_behind_what_was_answered_before_it() {
        let bytes = client_bytes(vec![Message::Ping(vec![7u8].into()), Message::text("hi")]);
        let mut s = WsSession::new(1024, &bytes);
        assert!(matches!(s.next_message(), Ok(Some(Message::Ping(_)))));
        assert!(matches!(s.next_message(), Ok(Some(Message::Text(_)))));
        assert!(s.append_reply(&encode_frame(OPCODE_TEXT, &[b"one"])));
        assert!(s.append_reply(&encode_frame(OPCODE_TEXT, &[b"two"])));
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert_eq!(
            decode_server_output(&out),
            vec![
                Message::Pong(vec![7u8].into()),
                Message::text("one"),
                Message::text("two")
            ]
        );
    }

    #[test]
    fn replies_are_refused_when_closing_resting_or_past_their_bound() {
        // Resting (nothing read yet): the caller queues in the outbox.
        let mut s = WsSession::new(1024, &[]);
        assert!(!s.append_reply(&encode_frame(OPCODE_TEXT, &[b"x"])));

        let bytes = client_bytes(vec![Message::text("hi")]);
        let mut s = WsSession::new(1024, &bytes);
        assert!(matches!(s.next_message(), Ok(Some(Message::Text(_)))));
        let big = encode_frame(OPCODE_TEXT, &[&[b'a'; 1000]]);
        let fit = DIRECT_REPLIES_MAX_BYTES / big.len();
        for _ in 0..fit {
            assert!(s.append_reply(&big));
        }
        assert!(!s.append_reply(&big), "past DIRECT_REPLIES_MAX_BYTES");
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert_eq!(out.len(), fit * big.len());
        // Taken: room again, until the session closes.
        assert!(s.append_reply(&big));
        s.close(1000, "bye");
        assert!(!s.append_reply(&big), "nothing follows a close frame");
        s.take_output(&mut out);
        let messages = decode_server_output(&out);
        assert_eq!(messages.len(), 2);
        assert!(matches!(messages[1], Message::Close(_)));
    }

    #[test]
    fn frame_tracker_knows_message_boundaries() {
        let frames = client_bytes(vec![
            Message::text("x".repeat(10)),
            Message::binary(vec![7u8; 300]),
            Message::binary(vec![1u8; 70_000]),
            Message::Ping(vec![1u8].into()),
        ]);
        // Byte by byte: a boundary exactly at the end of each frame.
        let mut t = FrameTracker::default();
        let mut boundaries = 0;
        for b in &frames {
            t.feed(std::slice::from_ref(b));
            boundaries += t.at_message_boundary() as usize;
        }
        assert_eq!(boundaries, 4);
        assert!(t.at_message_boundary());
        // In any other split, the same verdict at the end.
        let mut t = FrameTracker::default();
        for chunk in frames.chunks(77) {
            t.feed(chunk);
        }
        assert!(t.at_message_boundary());
        t.feed(&frames[..frames.len() - 1]);
        assert!(!t.at_message_boundary(), "one byte short");
    }

    #[test]
    fn frame_tracker_follows_fragmented_messages() {
        // Text "ab" as two fragments with a ping in between (masked, key 0).
        let start = [0x01u8, 0x81, 0, 0, 0, 0, b'a'];
        let ping = [0x89u8, 0x80, 0, 0, 0, 0];
        let end = [0x80u8, 0x81, 0, 0, 0, 0, b'b'];
        let mut t = FrameTracker::default();
        t.feed(&start);
        assert!(!t.at_message_boundary(), "the message is open");
        t.feed(&ping);
        assert!(!t.at_message_boundary(), "a ping does not close it");
        t.feed(&end);
        assert!(t.at_message_boundary());
        // And tungstenite agrees, with the session resting in between.
        let mut s = WsSession::new(1024, &[]);
        s.feed(&start);
        assert_eq!(s.next_message(), Ok(None));
        s.rest();
        assert!(!s.is_resting(), "a fragment is buffered inside tungstenite");
        s.feed(&ping);
        assert!(matches!(s.next_message(), Ok(Some(Message::Ping(_)))));
        assert_eq!(s.next_message(), Ok(None));
        let mut out = Vec::new();
        s.take_output(&mut out);
        s.rest();
        assert!(!s.is_resting());
        s.feed(&end);
        assert_eq!(s.next_message(), Ok(Some(Message::text("ab"))));
        assert_eq!(s.next_message(), Ok(None));
        s.rest();
        assert!(s.is_resting());
    }

    #[test]
    fn a_resting_session_serves_on_as_a_fresh_one() {
        let mut s = WsSession::new(1024, &[]);
        assert!(s.is_resting(), "nothing fed yet");
        assert!(s.is_open());
        let bytes = client_bytes(vec![Message::text("one"), Message::Ping(vec![5u8].into())]);
        // Half a frame: not at rest.
        s.feed(&bytes[..4]);
        assert_eq!(s.next_message(), Ok(None));
        s.rest();
        assert!(!s.is_resting());
        s.feed(&bytes[4..]);
        assert_eq!(s.next_message(), Ok(Some(Message::text("one"))));
        assert!(matches!(s.next_message(), Ok(Some(Message::Ping(_)))));
        assert_eq!(s.next_message(), Ok(None));
        // The pong is still to be taken: not at rest.
        s.rest();
        assert!(!s.is_resting());
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert_eq!(
            decode_server_output(&out),
            vec![Message::Pong(vec![5u8].into())]
        );
        s.rest();
        assert!(s.is_resting());
        // Sending wakes it; so does input, and a violation still closes.
        s.send(Message::text("out")).unwrap();
        s.take_output(&mut out);
        assert_eq!(decode_server_output(&out), vec![Message::text("out")]);
        s.rest();
        s.feed(&client_bytes(vec![Message::text("x".repeat(2000))]));
        assert!(matches!(
            s.next_message(),
            Err(SessionEnd::Failed { code: 1009, .. })
        ));
        s.rest();
        assert!(!s.is_resting(), "a closed session never rests");
        assert!(!s.is_open());
    }

    #[test]
    fn resting_between_any_split_changes_nothing() {
        // Random messages (fragmented ones and pings among them), fed in
        // random chunks, resting whenever possible: the messages and the
        // output are those of a session that never rests.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut total_messages = 0;
        for _round in 0..200 {
            let mut client = WebSocket::from_raw_socket(MemStream::default(), Role::Client, None);
            for _ in 0..1 + next(6) {
                match next(4) {
                    0 => client.write(Message::text("t".repeat(next(300) as usize))),
                    1 => client.write(Message::binary(vec![9u8; next(70_000) as usize])),
                    2 => client.write(Message::Ping(vec![1u8, 2].into())),
                    _ => {
                        // A text message in three fragments, a ping inside.
                        let frames = [
                            (0x01u8, &b"ab"[..]),
                            (0x89, &b"p"[..]),
                            (0x00, &b"cd"[..]),
                            (0x80, &b"ef"[..]),
                        ];
                        for (first, payload) in frames {
                            let raw = crate::ws::tests::masked(first, payload);
                            client.get_mut().outbound.extend_from_slice(&raw);
                        }
                        Ok(())
                    }
                }
                .unwrap();
                client.flush().unwrap();
            }
            let bytes = std::mem::take(&mut client.get_mut().outbound);
            let mut resting = WsSession::new(1 << 20, &[]);
            let mut plain = WsSession::new(1 << 20, &bytes);
            let mut got = (vec![], vec![]);
            let mut out = (vec![], vec![]);
            let mut at = 0;
            while at < bytes.len() {
                let n = (1 + next(5000) as usize).min(bytes.len() - at);
                resting.feed(&bytes[at..at + n]);
                at += n;
                while let Some(m) = resting.next_message().unwrap() {
                    got.0.push(m);
                }
                resting.append_output(&mut out.0);
                resting.rest();
            }
            while let Some(m) = plain.next_message().unwrap() {
                got.1.push(m);
            }
            plain.append_output(&mut out.1);
            assert_eq!(got.0, got.1);
            assert_eq!(out.0, out.1);
            assert!(resting.is_resting(), "all whole messages: at rest");
            total_messages += got.0.len();
        }
        assert!(total_messages > 500, "{total_messages} messages checked");
    }

    /// A masked client frame (mask key 0).
    pub(super) fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }
}
