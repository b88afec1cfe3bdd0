//! tungstenite driven sans-IO: the connection task feeds it the bytes it
//! read and takes back the bytes to write. tungstenite never touches the
//! socket, so it never blocks; running out of input is `WouldBlock`.
//!
//! Frames written between two socket writes accumulate in one buffer, so a
//! burst of replies costs one `send` ("write many frames, flush once").

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

/// The in-memory stream tungstenite reads from and writes to.
#[derive(Debug, Default)]
pub struct MemStream {
    inbound: Vec<u8>,
    inbound_pos: usize,
    outbound: Vec<u8>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.inbound[self.inbound_pos..];
        if available.is_empty() {
            self.inbound.clear();
            self.inbound_pos = 0;
            if self.inbound.capacity() > IDLE_BUFFER_KEEP_BYTES {
                self.inbound = Vec::new();
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
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

/// One WebSocket connection's protocol state.
pub struct WsSession {
    ws: WebSocket<MemStream>,
}

impl WsSession {
    /// A server-side session; `leftover` is what arrived after the HTTP head.
    pub fn new(max_message_bytes: usize, leftover: &[u8]) -> Self {
        let config = WebSocketConfig::default()
            .read_buffer_size(SESSION_READ_CHUNK_BYTES)
            // Frames collect in tungstenite's own buffer until `take_output`,
            // which moves them out in one piece. (tungstenite requires its
            // max_write_buffer_size, unbounded, to be above this.)
            .write_buffer_size(usize::MAX / 2)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        let mut stream = MemStream::default();
        stream.inbound.extend_from_slice(leftover);
        WsSession {
            ws: WebSocket::from_raw_socket(stream, Role::Server, Some(config)),
        }
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.ws.get_mut().inbound.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more input is needed.
    /// Pings are answered and closes replied to automatically. On a
    /// protocol violation the close frame is queued and the end returned.
    pub fn next_message(&mut self) -> Result<Option<Message>, SessionEnd> {
        match self.ws.read() {
            Ok(message) => Ok(Some(message)),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(SessionEnd::Closed),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Queues a message; it is written out by the next `take_output`.
    pub fn send(&mut self, message: Message) -> Result<(), SessionEnd> {
        match self.ws.write(message) {
            Ok(()) => Ok(()),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(SessionEnd::Closed),
            // Writing after our close is a no-op for the caller, not a fault.
            Err(WsError::Protocol(_)) if !self.ws.can_write() => Err(SessionEnd::Closed),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Starts the close handshake with `code` (no-op once closing).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.ws.can_write() {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            };
            // Errors here mean the session is already closed: nothing to send.
            let _ = self.ws.close(Some(frame));
        }
    }

    /// Whether we may still send data frames.
    pub fn is_open(&self) -> bool {
        self.ws.can_write()
    }

    /// Appends all bytes tungstenite queued for the socket (control frames,
    /// close replies, messages given to `send`) to `out`.
    pub fn append_output(&mut self, out: &mut Vec<u8>) {
        // Moves tungstenite's buffered frames into the MemStream.
        let _ = self.ws.flush();
        let stream = self.ws.get_mut();
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
}
