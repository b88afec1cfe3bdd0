//! The `ws://host:port/path?query` target, parsed once.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed `ws://` URL. `wss://` is refused: TLS would measure the TLS stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    pub host: String,
    pub port: u16,
    /// Path without the query, always starting with `/`.
    pub path: String,
    /// Query string without the leading `?`, possibly empty.
    pub query: String,
}

/// Why a `--url` value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad --url: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl WsUrl {
    /// Parses `ws://host[:port][/path][?query]`; the port defaults to 80.
    pub fn parse(text: &str) -> Result<WsUrl, UrlError> {
        let rest = if let Some(rest) = text.strip_prefix("ws://") {
            rest
        } else if text.starts_with("wss://") {
            return Err(UrlError(
                "wss:// is not supported; benchmark the plain socket".into(),
            ));
        } else {
            return Err(UrlError(format!("{text:?} must start with ws://")));
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        if authority.is_empty() {
            return Err(UrlError(format!("{text:?} has no host")));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| UrlError("unclosed [ in host".into()))?;
            let host = &stripped[..end];
            let port = match stripped[end + 1..].strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| UrlError(format!("bad port {p:?}")))?,
                None => 80,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| UrlError(format!("bad port {p:?}")))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        Ok(WsUrl {
            host,
            port,
            path,
            query: query.to_string(),
        })
    }

    /// Resolves the host once; every connection reuses the address.
    pub fn socket_addr(&self) -> Result<SocketAddr, UrlError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| UrlError(format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| UrlError(format!("{} resolves to nothing", self.host)))
    }

    /// Value of the `Host` header.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Request target, with `user=ID` appended to the query when given.
    pub fn request_target(&self, user: Option<&str>) -> String {
        let mut target = self.path.clone();
        let mut query = self.query.clone();
        if let Some(user) = user {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("user=");
            query.push_str(user);
        }
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        target
    }

    /// `http://host:port/<path>` on the same server, for /metrics.json.
    pub fn http_path(&self, path: &str) -> String {
        format!("http://{}{}", self.host_header(), path)
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ws://{}{}",
            self.host_header(),
            self.request_target(None)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_urls() {
        let url = WsUrl::parse("ws://127.0.0.1:8765/ws?token=x").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8765);
        assert_eq!(url.path, "/ws");
        assert_eq!(url.query, "token=x");
        assert_eq!(url.request_target(Some("u1")), "/ws?token=x&user=u1");
        let bare = WsUrl::parse("ws://localhost").unwrap();
        assert_eq!((bare.port, bare.path.as_str()), (80, "/"));
        assert_eq!(bare.request_target(Some("a")), "/?user=a");
        let v6 = WsUrl::parse("ws://[::1]:9000/x").unwrap();
        assert_eq!(v6.host_header(), "[::1]:9000");
        assert_eq!(url.to_string(), "ws://127.0.0.1:8765/ws?token=x");
    }

    #[test]
    fn refuses_other_schemes() {
        assert!(WsUrl::parse("http://x").is_err());
        assert!(WsUrl::parse("wss://x").is_err());
        assert!(WsUrl::parse("ws://x:notaport/").is_err());
        assert!(WsUrl::parse("ws:///path").is_err());
    }
}
