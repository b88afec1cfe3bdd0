//! HTTP/1.1 on the WebSocket port, sans-IO: request heads parsed with
//! `httparse`, responses rendered to bytes, a router, and the upgrade rules.
//! Plain HTTP requests are answered once and the connection closed
//! (`Connection: close`), so no request can leave a socket hanging.

pub mod router;
pub mod upgrade;

/// Largest request head (request line + headers) accepted.
pub const REQUEST_HEAD_MAX_BYTES: usize = 16 * 1024;
/// Most headers accepted in one request.
pub const REQUEST_HEADERS_MAX: usize = 64;

/// A parsed request head. Header names are kept as sent; look-ups ignore case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string without `?` (empty when absent).
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes the head took in the buffer; what follows is body or frames.
    pub head_len: usize,
}

impl RequestHead {
    /// The first header of that name, as text (`None` if absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The credentials of `Authorization: Bearer ...` (the scheme's case
    /// ignored, as RFC 7235 has it).
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, credentials) = self.header("Authorization")?.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    }

    /// Whether a comma-separated header (all its occurrences) holds `token`,
    /// ignoring case: `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// How many body bytes a request announces: `Ok(0)` without a body.
/// Chunked bodies are refused (they have no length to bound up front).
pub fn body_length(head: &RequestHead, max_bytes: usize) -> Result<usize, Response> {
    if head.header("Transfer-Encoding").is_some() {
        return Err(Response::error(
            411,
            "Transfer-Encoding is not supported: send a Content-Length",
        ));
    }
    match head.header("Content-Length") {
        None => Ok(0),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= max_bytes => Ok(n),
            Ok(n) => Err(Response::error(
                413,
                &format!("body of {n} bytes is over the {max_bytes} byte limit"),
            )),
            Err(_) => Err(Response::error(400, "invalid Content-Length")),
        },
    }
}

/// A request that cannot be parsed: answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request head larger than {REQUEST_HEAD_MAX_BYTES} bytes")]
    HeadTooLarge,
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete,
/// read more.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            if head_len > REQUEST_HEAD_MAX_BYTES {
                return Err(HttpError::HeadTooLarge);
            }
            let method = req.method.unwrap_or_default().to_string();
            let target = req.path.unwrap_or_default();
            if req.version != Some(1) && req.version != Some(0) {
                return Err(HttpError::Malformed("unsupported HTTP version".into()));
            }
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, q),
                None => (target, ""),
            };
            if !path.starts_with('/') {
                return Err(HttpError::Malformed(
                    "request target must be an absolute path".into(),
                ));
            }
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            Ok(Some(RequestHead {
                method,
                path: path.to_string(),
                query: query.to_string(),
                headers,
                head_len,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > REQUEST_HEAD_MAX_BYTES => {
            Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::Malformed(format!(
            "more than {REQUEST_HEADERS_MAX} headers"
        ))),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// A response to render. Plain responses always close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of the given content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }

    /// A JSON error body `{"error":"..."}` whose text says what to fix.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::json(status, body)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The response as bytes, with `Content-Length` and `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }
}

/// The standard reason phrase of the statuses we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        504 => "Gateway Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_head_and_reports_its_length() {
        let raw =
            b"GET /ws?user=a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\nREST";
        let head = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query, "user=a");
        assert_eq!(&raw[head.head_len..], b"REST");
        assert!(head.header_has_token("connection", "upgrade"));
        assert_eq!(head.header("HOST"), Some("x"));
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\nHo"), Ok(None));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_request_head(b"\x00\x01\x02 nonsense\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_request_head(b"GET nopath HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', REQUEST_HEAD_MAX_BYTES + 10));
        assert_eq!(parse_request_head(&raw), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn renders_responses() {
        let r = Response::json(200, "{}").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
