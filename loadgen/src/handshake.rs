//! The RFC 6455 opening handshake, client side, sans-IO: build the request,
//! then check the server's `101 Switching Protocols` answer with httparse.

use sha1::{Digest, Sha1};

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 32;

/// Why the server did not accept the upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with another HTTP status (503 when full, 401, 400...).
    Status(u16),
    /// The answer is not HTTP or misses the upgrade headers.
    Invalid(&'static str),
    /// `Sec-WebSocket-Accept` does not match our key.
    BadAccept,
}

impl HandshakeError {
    /// Stable error kind for the statistics.
    pub fn kind(&self) -> String {
        match self {
            HandshakeError::Status(code) => format!("handshake_http_{code}"),
            HandshakeError::Invalid(_) => "handshake_invalid".to_string(),
            HandshakeError::BadAccept => "handshake_bad_accept".to_string(),
        }
    }
}

/// Base64 of 16 bytes derived from `seed`; unpredictability does not matter
/// to a load generator, only uniqueness per connection.
pub fn make_key(seed: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(
        &seed
            .rotate_left(29)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes(),
    );
    data_encoding::BASE64.encode(&bytes)
}

/// The value the server must send back in `Sec-WebSocket-Accept`.
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    data_encoding::BASE64.encode(&sha.finalize())
}

/// The upgrade request bytes.
pub fn request(host_header: &str, target: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ws-uring-loadgen\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the response at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(n))`: accepted, the first `n`
/// bytes were the HTTP head and anything after is already WebSocket frames.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Invalid("not an HTTP response")),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    match header("upgrade") {
        Some(v) if v.eq_ignore_ascii_case("websocket") => {}
        _ => return Err(HandshakeError::Invalid("missing Upgrade: websocket")),
    }
    match header("sec-websocket-accept") {
        Some(v) if v == accept_for(key) => Ok(Some(head_len)),
        Some(_) => Err(HandshakeError::BadAccept),
        None => Err(HandshakeError::Invalid("missing Sec-WebSocket-Accept")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_accepting_response_with_trailing_frame() {
        let key = make_key(7);
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(&key)
        )
        .into_bytes();
        let head = resp.len();
        resp.extend_from_slice(&[0x81, 0x01, b'x']);
        assert_eq!(parse_response(&resp[..10], &key), Ok(None));
        assert_eq!(parse_response(&resp, &key), Ok(Some(head)));
    }

    #[test]
    fn reports_status_and_bad_accept() {
        let key = make_key(1);
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", &key),
            Err(HandshakeError::Status(503))
        );
        let bad = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(parse_response(bad, &key), Err(HandshakeError::BadAccept));
        assert_eq!(HandshakeError::Status(503).kind(), "handshake_http_503");
    }

    #[test]
    fn keys_differ_per_seed() {
        assert_ne!(make_key(1), make_key(2));
        assert_eq!(make_key(1).len(), 24);
    }
}
