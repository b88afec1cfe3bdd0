//! RFC 6455 opening handshake, server side: validate the request, choose the
//! subprotocol, resolve the identity, render the 101 response.

use super::{RequestHead, Response};
use crate::auth::{AuthError, Authenticator};
use crate::protocol::identity::{self, IdentityError};

/// The subprotocols ws-uring speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// `wsu.v1` (also what no `Sec-WebSocket-Protocol` header means).
    V1,
    /// `wsu.v1.lz4`: large binary payloads may be lz4-compressed.
    V1Lz4,
}

impl Subprotocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::V1 => "wsu.v1",
            Subprotocol::V1Lz4 => "wsu.v1.lz4",
        }
    }
}

/// An upgrade request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub accept_key: String,
    /// The subprotocol to echo; `None` when the client offered none we speak.
    pub subprotocol: Option<Subprotocol>,
    /// The user the client asked to be, or its token names (`None`:
    /// assign `anon-<conn>`).
    pub user: Option<String>,
    /// The groups its token lets it join (`None`: any).
    pub allowed_groups: Option<Vec<String>>,
}

impl Upgrade {
    /// Whether this connection's payloads may be lz4-compressed.
    pub fn wants_lz4(&self) -> bool {
        self.subprotocol == Some(Subprotocol::V1Lz4)
    }

    /// The `101 Switching Protocols` response.
    pub fn response_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept_key
        );
        if let Some(p) = self.subprotocol {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(p.as_str());
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Checks an upgrade request; the `Err` is the response to send instead.
pub fn check_upgrade(
    head: &RequestHead,
    auth: Option<&Authenticator>,
    allowed_origins: Option<&[String]>,
) -> Result<Upgrade, Response> {
    if !head.header_has_token("Upgrade", "websocket")
        || !head.header_has_token("Connection", "upgrade")
    {
        return Err(Response::error(
            400,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    if head.header("Sec-WebSocket-Version") != Some("13") {
        return Err(
            Response::error(426, "only WebSocket version 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    // Browsers always send Origin; other clients usually do not, and are
    // not asked to.
    if let (Some(allowed), Some(origin)) = (allowed_origins, head.header("Origin")) {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if !allowed.contains(&origin) {
            return Err(Response::error(
                403,
                &format!("origin {origin:?} is not in allowed_origins"),
            ));
        }
    }
    let key = head.header("Sec-WebSocket-Key").unwrap_or_default();
    if !is_valid_key(key) {
        return Err(Response::error(
            400,
            "Sec-WebSocket-Key must be 16 random bytes in base64",
        ));
    }
    let asked = identity::user_from_query(&head.query).map_err(|e| match e {
        IdentityError::InvalidUser | IdentityError::DuplicateUser => {
            Response::error(400, &e.to_string())
        }
    })?;
    let (user, allowed_groups) = match auth {
        None => (asked, None),
        Some(auth) => {
            let unauthorized = |reason: String| {
                Response::error(401, &reason).with_header("WWW-Authenticate", "Bearer")
            };
            let token = token_of(head)
                .map_err(|reason| Response::error(400, &reason))?
                .ok_or_else(|| unauthorized(AuthError::Missing.to_string()))?;
            let identity = auth
                .verify(&token)
                .map_err(|e| unauthorized(e.to_string()))?;
            if asked.as_ref().is_some_and(|u| *u != identity.user) {
                return Err(unauthorized(format!(
                    "the token is for user {:?}, not the one in ?user=",
                    identity.user
                )));
            }
            (Some(identity.user), identity.groups)
        }
    };
    Ok(Upgrade {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        subprotocol: choose_subprotocol(head),
        user,
        allowed_groups,
    })
}

/// The JWT of a request: `?token=` or `Authorization: Bearer`. Two
/// different tokens (or `?token=` twice) are refused rather than one of
/// them picked.
fn token_of(head: &RequestHead) -> Result<Option<String>, String> {
    let mut from_query = form_urlencoded::parse(head.query.as_bytes())
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let first = from_query.next();
    if from_query.next().is_some() {
        return Err("?token= is given more than once".into());
    }
    match (first, head.bearer()) {
        (Some(q), Some(h)) if q != h => {
            Err("two different tokens: one in ?token=, one in Authorization".into())
        }
        (Some(t), _) => Ok(Some(t)),
        (None, h) => Ok(h.map(str::to_string)),
    }
}

/// The first subprotocol, in the client's order of preference, that we
/// speak; no header at all means `wsu.v1`.
fn choose_subprotocol(head: &RequestHead) -> Option<Subprotocol> {
    let offered: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return None;
    }
    offered.into_iter().find_map(|p| match p {
        "wsu.v1" => Some(Subprotocol::V1),
        "wsu.v1.lz4" => Some(Subprotocol::V1Lz4),
        _ => None,
    })
}

/// 16 bytes in base64: 22 characters of the alphabet and `==`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_head(extra: &[(&str, &str)], query: &str) -> RequestHead {
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("Host".into(), b"x".to_vec()),
            ("Upgrade".into(), b"websocket".to_vec()),
            ("Connection".into(), b"Upgrade".to_vec()),
            ("Sec-WebSocket-Version".into(), b"13".to_vec()),
            (
                "Sec-WebSocket-Key".into(),
                b"dGhlIHNhbXBsZSBub25jZQ==".to_vec(),
            ),
        ];
        for (n, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(n));
            headers.push((n.to_string(), v.as_bytes().to_vec()));
        }
        RequestHead {
            method: "GET".into(),
            path: "/ws".into(),
            query: query.into(),
            headers,
            head_len: 0,
        }
    }

    #[test]
    fn one_token_from_the_query_or_a_bearer_header_of_any_case() {
        let token = |extra: &[(&str, &str)], query: &str| token_of(&upgrade_head(extra, query));
        assert_eq!(token(&[], "token=q"), Ok(Some("q".into())));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let header = format!("{scheme} h");
            assert_eq!(
                token(&[("Authorization", &header)], ""),
                Ok(Some("h".into()))
            );
        }
        assert_eq!(token(&[("Authorization", "Basic h")], ""), Ok(None));
        assert_eq!(token(&[], ""), Ok(None));
        // The same token both ways is one; two different ones are refused.
        assert_eq!(
            token(&[("Authorization", "Bearer q")], "token=q"),
            Ok(Some("q".into()))
        );
        assert!(token(&[("Authorization", "Bearer h")], "token=q").is_err());
        assert!(token(&[], "token=q&token=q2").is_err());
    }

    #[test]
    fn rfc_sample_key() {
        let up = check_upgrade(&upgrade_head(&[], ""), None, None).unwrap();
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.subprotocol, None);
        assert_eq!(up.user, None);
        let text = String::from_utf8(up.response_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn subprotocol_choice_follows_client_order() {
        let h = upgrade_head(
            &[("Sec-WebSocket-Protocol", "chat, wsu.v1.lz4, wsu.v1")],
            "",
        );
        let up = check_upgrade(&h, None, None).unwrap();
        assert_eq!(up.subprotocol, Some(Subprotocol::V1Lz4));
        assert!(up.wants_lz4());
        assert!(String::from_utf8(up.response_bytes())
            .unwrap()
            .contains("Sec-WebSocket-Protocol: wsu.v1.lz4\r\n"));
        let h = upgrade_head(&[("Sec-WebSocket-Protocol", "chat")], "");
        assert_eq!(check_upgrade(&h, None, None).unwrap().subprotocol, None);
    }

    #[test]
    fn refusals() {
        let status = |h: RequestHead| check_upgrade(&h, None, None).unwrap_err().status;
        assert_eq!(status(upgrade_head(&[("Upgrade", "h2c")], "")), 400);
        assert_eq!(
            status(upgrade_head(&[("Connection", "keep-alive")], "")),
            400
        );
        assert_eq!(
            status(upgrade_head(&[("Sec-WebSocket-Version", "8")], "")),
            426
        );
        assert_eq!(
            status(upgrade_head(&[("Sec-WebSocket-Key", "short")], "")),
            400
        );
        assert_eq!(status(upgrade_head(&[], "user=bad%20name")), 400);
    }

    #[test]
    fn origins_are_checked_when_listed() {
        let allowed = vec!["https://app.example".to_string()];
        let h = upgrade_head(&[("Origin", "https://App.example/")], "");
        assert!(check_upgrade(&h, None, Some(&allowed)).is_ok());
        let h = upgrade_head(&[("Origin", "https://evil.example")], "");
        assert_eq!(
            check_upgrade(&h, None, Some(&allowed)).unwrap_err().status,
            403
        );
        // No Origin header (not a browser): allowed.
        assert!(check_upgrade(&upgrade_head(&[], ""), None, Some(&allowed)).is_ok());
    }

    #[test]
    fn user_from_query() {
        let up = check_upgrade(&upgrade_head(&[], "user=alice"), None, None).unwrap();
        assert_eq!(up.user.as_deref(), Some("alice"));
    }
}
