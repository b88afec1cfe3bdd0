//! What nodes publish to each other on `wsu:node:<id>`, sans-IO: rkyv
//! values (the same `StoredMsg` / `StoredTarget` the log keeps, bodies of
//! `compress_min_bytes` or more lz4-compressed), behind a one-byte-length
//! prefix that carries the mailbox Stream entry id when the message is also
//! kept in a user's Stream (`ack:true` sends):
//!
//! ```text
//! [id length: u8][stream entry id: ASCII][rkyv ClusterMsg]
//! ```
//!
//! The prefix is what lets a Lua script add the entry id it just created
//! without decoding the message.

use rkyv::{Archive, Deserialize, Serialize};

use crate::protocol::StrategyKind;
use crate::store::record::{StoredMsg, StoredTarget};

/// Where a node answers how a routed message went.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub node: String,
    pub shard: u32,
    pub request_id: u64,
}

/// One envelope between nodes. (Built one at a time and short-lived, so
/// the size difference between the variants costs nothing worth a box.)
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum ClusterMsg {
    /// Deliver `msg` to the receiving node's own recipients of `target`
    /// (never forwarded further).
    Route {
        target: StoredTarget,
        msg: StoredMsg,
        attempt: u32,
        /// For anycasts: the group's cluster-wide strategy (see
        /// [`strategy_code`]).
        strategy: u8,
        reply: Option<RemoteReply>,
    },
    /// The answer to a `Route` with a `reply`: how many connections of the
    /// node took it.
    Delivered {
        shard: u32,
        request_id: u64,
        delivered: u64,
    },
}

/// Why a published payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty cluster payload")]
    Empty,
    #[error("cluster payload cut short in its stream-id prefix")]
    ShortPrefix,
    #[error("stream entry id is not ASCII")]
    BadStreamId,
    #[error("undecodable cluster message: {0}")]
    Undecodable(String),
}

/// Encodes `msg` with an empty stream-id prefix.
pub fn encode(msg: &ClusterMsg) -> Vec<u8> {
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(msg).expect("cluster messages serialise");
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(0);
    out.extend_from_slice(&body);
    out
}

/// The rkyv body alone (what scripts prefix with a stream id themselves).
pub fn encode_body(msg: &ClusterMsg) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(msg)
        .expect("cluster messages serialise")
        .to_vec()
}

/// Decodes a published payload: the stream entry id (if any) and the message.
pub fn decode(payload: &[u8]) -> Result<(Option<String>, ClusterMsg), WireError> {
    let (&len, rest) = payload.split_first().ok_or(WireError::Empty)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(WireError::ShortPrefix);
    }
    let (id, body) = rest.split_at(len);
    let id = if id.is_empty() {
        None
    } else {
        Some(
            std::str::from_utf8(id)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or(WireError::BadStreamId)?
                .to_string(),
        )
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let msg = rkyv::from_bytes::<ClusterMsg, rkyv::rancor::Error>(&aligned)
        .map_err(|e| WireError::Undecodable(e.to_string()))?;
    Ok((id, msg))
}

/// Decodes a `StoredMsg` kept in a mailbox Stream entry.
pub fn decode_stored(bytes: &[u8]) -> Result<StoredMsg, WireError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<StoredMsg, rkyv::rancor::Error>(&aligned)
        .map_err(|e| WireError::Undecodable(e.to_string()))
}

/// Encodes a `StoredMsg` for a mailbox Stream entry.
pub fn encode_stored(msg: &StoredMsg) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(msg)
        .expect("stored messages serialise")
        .to_vec()
}

/// A strategy on the wire (0: none given).
pub fn strategy_code(s: Option<StrategyKind>) -> u8 {
    match s {
        None => 0,
        Some(StrategyKind::RoundRobin) => 1,
        Some(StrategyKind::LeastConnections) => 2,
        Some(StrategyKind::Weighted) => 3,
    }
}

/// The strategy a wire code names.
pub fn strategy_of(code: u8) -> Option<StrategyKind> {
    match code {
        1 => Some(StrategyKind::RoundRobin),
        2 => Some(StrategyKind::LeastConnections),
        3 => Some(StrategyKind::Weighted),
        _ => None,
    }
}

/// The strategy's name as Redis keeps it (`wsu:gstrat:<group>`).
pub fn strategy_name(s: StrategyKind) -> &'static str {
    match s {
        StrategyKind::RoundRobin => "round_robin",
        StrategyKind::LeastConnections => "least_connections",
        StrategyKind::Weighted => "weighted",
    }
}

/// The strategy a name in Redis stands for.
pub fn strategy_named(name: &[u8]) -> Option<StrategyKind> {
    match name {
        b"round_robin" => Some(StrategyKind::RoundRobin),
        b"least_connections" => Some(StrategyKind::LeastConnections),
        b"weighted" => Some(StrategyKind::Weighted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Priority;
    use crate::routing::envelope::{MessageBody, MessageParts};

    fn stored() -> StoredMsg {
        StoredMsg::from_parts(
            &MessageParts {
                id: "b-n1-0-1".into(),
                from: "alice".into(),
                to: Some("bob".into()),
                group: None,
                priority: Priority::High,
                ts_unix_ms: 7,
                ack: true,
                expires_unix_ms: None,
                body: MessageBody::Json("{\"x\":1}".into()),
            },
            1024,
        )
    }

    #[test]
    fn round_trip_with_and_without_stream_id() {
        let msg = ClusterMsg::Route {
            target: StoredTarget::User("bob".into()),
            msg: stored(),
            attempt: 1,
            strategy: 0,
            reply: Some(RemoteReply {
                node: "n1".into(),
                shard: 1,
                request_id: 42,
            }),
        };
        let plain = encode(&msg);
        assert_eq!(decode(&plain).unwrap(), (None, msg.clone()));
        // What the send script publishes: the entry id in front.
        let id = b"1700000000000-0";
        let mut prefixed = vec![id.len() as u8];
        prefixed.extend_from_slice(id);
        prefixed.extend_from_slice(&encode_body(&msg));
        let (got_id, got) = decode(&prefixed).unwrap();
        assert_eq!(got_id.as_deref(), Some("1700000000000-0"));
        assert_eq!(got, msg);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(WireError::Empty));
        assert_eq!(decode(&[5, b'a']), Err(WireError::ShortPrefix));
        assert!(matches!(
            decode(&[0, 1, 2, 3]),
            Err(WireError::Undecodable(_))
        ));
        let s = stored();
        assert_eq!(decode_stored(&encode_stored(&s)).unwrap(), s);
    }

    #[test]
    fn strategies_round_trip() {
        for s in [
            StrategyKind::RoundRobin,
            StrategyKind::LeastConnections,
            StrategyKind::Weighted,
        ] {
            assert_eq!(strategy_of(strategy_code(Some(s))), Some(s));
            assert_eq!(strategy_named(strategy_name(s).as_bytes()), Some(s));
        }
        assert_eq!(strategy_of(0), None);
    }
}
