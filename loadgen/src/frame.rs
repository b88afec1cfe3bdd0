//! RFC 6455 framing for the client side, sans-IO: encode masked client frames
//! and parse the server's unmasked frames out of a byte buffer.
//!
//! Hot-path rule: nothing here allocates per message. Encoding appends to a
//! caller-owned buffer that keeps its capacity; parsing hands back ranges into
//! the caller's read buffer.

/// Frame opcodes this client sends or understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_u8(byte: u8) -> Option<Opcode> {
        match byte {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may appear between fragments.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Length of the header of a masked client frame carrying `payload_len` bytes.
pub fn client_header_len(payload_len: usize) -> usize {
    let len_bytes = if payload_len < 126 {
        0
    } else if payload_len <= u16::MAX as usize {
        2
    } else {
        8
    };
    2 + len_bytes + 4
}

/// Appends one final, masked client frame to `out`.
///
/// Returns the offset in `out` where the (masked) payload starts, so a
/// template can later patch bytes in place (see [`patch_masked`]).
pub fn encode_client_frame(
    opcode: Opcode,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut Vec<u8>,
) -> usize {
    out.push(0x80 | opcode.to_u8());
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    start
}

/// XORs `data` with the mask, as if `data` started at payload offset `offset`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

/// Overwrites payload bytes of an already masked frame, masking them on the way.
///
/// `payload_start` is the value [`encode_client_frame`] returned for the
/// frame inside `frame`; `offset` is relative to the payload.
pub fn patch_masked(
    frame: &mut [u8],
    payload_start: usize,
    mask: [u8; 4],
    offset: usize,
    plain: &[u8],
) {
    let dst = &mut frame[payload_start + offset..payload_start + offset + plain.len()];
    for (i, (d, p)) in dst.iter_mut().zip(plain).enumerate() {
        *d = p ^ mask[(offset + i) & 3];
    }
}

/// One frame parsed from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: Opcode,
    /// Byte range of the payload inside the buffer handed to [`parse_server_frame`].
    pub payload_start: usize,
    pub payload_end: usize,
}

impl ServerFrame {
    /// Total bytes the frame occupies in the buffer (header + payload).
    pub fn wire_len(&self) -> usize {
        self.payload_end
    }
}

/// Why the server's byte stream is not valid RFC 6455 for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A server must not mask its frames (RFC 6455 §5.1).
    MaskedServerFrame,
    ReservedBits,
    UnknownOpcode(u8),
    /// Control frames must be final and at most 125 bytes.
    BadControlFrame,
    TooLarge(u64),
}

impl FrameError {
    /// Short stable name used as an error kind in the statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::MaskedServerFrame => "protocol_masked_frame",
            FrameError::ReservedBits => "protocol_reserved_bits",
            FrameError::UnknownOpcode(_) => "protocol_bad_opcode",
            FrameError::BadControlFrame => "protocol_bad_control",
            FrameError::TooLarge(_) => "protocol_too_large",
        }
    }
}

/// Parses one frame at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. Frames larger than `max_payload`
/// are rejected so a broken server cannot make us buffer without bound.
pub fn parse_server_frame(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<ServerFrame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 != 0 {
        return Err(FrameError::MaskedServerFrame);
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        short => (short as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin,
        opcode,
        payload_start: header,
        payload_end: end,
    }))
}

/// Encodes an unmasked server frame; used by tests and in-process test servers.
pub fn encode_server_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode.to_u8());
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frame_unmasks_to_payload() {
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        let start = encode_client_frame(Opcode::Text, b"hello", mask, &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        assert_eq!(&out[2..6], &mask);
        let mut payload = out[start..].to_vec();
        apply_mask(&mut payload, mask, 0);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn extended_lengths_round_trip_through_header_len() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            let start = encode_client_frame(Opcode::Binary, &payload, [9, 9, 9, 9], &mut out);
            assert_eq!(start, client_header_len(len));
            assert_eq!(out.len(), start + len);
        }
    }

    #[test]
    fn patch_keeps_mask_alignment() {
        let mask = [0xAA, 0xBB, 0xCC, 0xDD];
        let mut out = Vec::new();
        let start = encode_client_frame(Opcode::Text, b"t=000000", mask, &mut out);
        patch_masked(&mut out, start, mask, 2, b"123456");
        let mut payload = out[start..].to_vec();
        apply_mask(&mut payload, mask, 0);
        assert_eq!(payload, b"t=123456");
    }

    #[test]
    fn parses_partial_and_complete_server_frames() {
        let mut buf = Vec::new();
        encode_server_frame(Opcode::Text, &vec![b'x'; 300], &mut buf);
        assert_eq!(parse_server_frame(&buf[..1], 1 << 20), Ok(None));
        assert_eq!(parse_server_frame(&buf[..3], 1 << 20), Ok(None));
        assert_eq!(parse_server_frame(&buf[..100], 1 << 20), Ok(None));
        let frame = parse_server_frame(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.opcode, Opcode::Text);
        assert!(frame.fin);
        assert_eq!(frame.payload_end - frame.payload_start, 300);
        assert_eq!(frame.wire_len(), buf.len());
    }

    #[test]
    fn rejects_masked_and_oversized_frames() {
        assert_eq!(
            parse_server_frame(&[0x81, 0x85, 0, 0], 100),
            Err(FrameError::MaskedServerFrame)
        );
        let mut buf = Vec::new();
        encode_server_frame(Opcode::Binary, &[0; 200], &mut buf);
        assert_eq!(
            parse_server_frame(&buf, 100),
            Err(FrameError::TooLarge(200))
        );
        assert_eq!(
            parse_server_frame(&[0x09, 0x00], 100),
            Err(FrameError::BadControlFrame)
        );
    }
}
