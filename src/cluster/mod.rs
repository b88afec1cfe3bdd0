//! Cluster mode: several ws-uring nodes sharing one Redis, the way
//! Centrifugo's Redis engine and socket.io's Redis adapter scale out.
//!
//! Each node keeps serving its own connections exactly as a single node
//! does (home shards, the channel mesh, the per-shard log). Redis adds what
//! no node can know alone:
//!
//! - the node registry (`wsu:node:<id>`, a key with a TTL refreshed every
//!   `cluster_heartbeat_ms`, and the set `wsu:nodes`);
//! - where users are (`wsu:user:<user>`: the set of nodes with a live
//!   connection of that user, TTL refreshed);
//! - who is in a group, summarised per node (`wsu:group:<group>`: node →
//!   `"<members> <weight sum>"`, TTL refreshed), the anycast strategy
//!   (`wsu:gstrat:<group>`) and the node-level anycast state
//!   (`wsu:gsched:<group>`);
//! - offline mailboxes (`wsu:mbox:<user>`: a Stream, bounded by
//!   `mailbox_max_msgs`), so a user finds them on whichever node it
//!   reconnects to;
//! - envelopes between nodes: pub/sub on `wsu:node:<id>`, rkyv-encoded
//!   (`wire`).
//!
//! Decisions that must not race (offline or online? which node gets this
//! anycast?) are Lua scripts (`scripts`), atomic in Redis. The Redis I/O
//! runs on every shard as a glommio task over a glommio `TcpStream`, with
//! the `redis-protocol` RESP codec (`link`): no thread, lock or channel
//! outside the shard. `crate::shard::cluster` is the glue.

pub mod link;
pub mod scripts;
pub mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// Prefix of every key and channel ws-uring uses in Redis.
pub const KEY_PREFIX: &str = "wsu:";
/// Pub/sub channel prefix: a node listens on `wsu:node:<id>`.
pub const NODE_CHANNEL_PREFIX: &str = "wsu:node:";
/// The set of registered node ids (a node leaves it at graceful shutdown;
/// `wsu:node:<id>` existing tells whether a member is alive).
pub const NODES_KEY: &str = "wsu:nodes";
/// Longest node id.
pub const NODE_ID_MAX_CHARS: usize = 64;
/// Where a generated node id is kept, inside `data_dir`.
pub const NODE_ID_FILE: &str = "node-id";

/// A node's registry key (TTL: three heartbeats).
pub fn node_key(node: &str) -> String {
    format!("{NODE_CHANNEL_PREFIX}{node}")
}

/// The pub/sub channel a node receives envelopes on.
pub fn node_channel(node: &str) -> String {
    format!("{NODE_CHANNEL_PREFIX}{node}")
}

/// The set of nodes holding a live connection of `user`.
pub fn presence_key(user: &str) -> String {
    format!("wsu:user:{user}")
}

/// The Stream holding `user`'s offline mailbox.
pub fn mailbox_key(user: &str) -> String {
    format!("wsu:mbox:{user}")
}

/// The per-node member summary of `group`.
pub fn group_key(group: &str) -> String {
    format!("wsu:group:{group}")
}

/// The anycast strategy of `group`, cluster-wide.
pub fn strategy_key(group: &str) -> String {
    format!("wsu:gstrat:{group}")
}

/// The node-level anycast state of `group` (smooth weighted round robin
/// counters, outstanding anycasts per node).
pub fn schedule_key(group: &str) -> String {
    format!("wsu:gsched:{group}")
}

/// Where the cluster's Redis is, from `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddr {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisAddr {
    /// Parses a `redis://` URL; the error says what is wrong and what is
    /// expected.
    pub fn parse(url: &str) -> Result<RedisAddr, String> {
        const EXPECTED: &str =
            "expected redis://HOST:PORT, redis://HOST:PORT/DB or redis://:PASSWORD@HOST:PORT";
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            if url.starts_with("rediss://") {
                "TLS (rediss://) is not supported yet; use redis:// on a private network"
                    .to_string()
            } else {
                format!("the scheme must be redis://; {EXPECTED}")
            }
        })?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(info.to_string())),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| format!("missing port; {EXPECTED}"))?;
            (h.to_string(), p)
        } else {
            let (h, p) = hostport
                .rsplit_once(':')
                .ok_or_else(|| format!("missing port; {EXPECTED}"))?;
            (h.to_string(), p)
        };
        if host.is_empty() {
            return Err(format!("missing host; {EXPECTED}"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port:?} is not 1-65535; {EXPECTED}"))?;
        let db = match path.trim_end_matches('/') {
            "" => 0,
            d => d
                .parse()
                .map_err(|_| format!("database {d:?} is not a number; {EXPECTED}"))?,
        };
        Ok(RedisAddr {
            host,
            port,
            db,
            username,
            password,
        })
    }

    /// Resolves the host (once, at start-up).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

impl std::fmt::Display for RedisAddr {
    /// The address without the password (for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Checks a node id: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.chars().count() <= NODE_ID_MAX_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to {NODE_ID_MAX_CHARS} characters of A-Z a-z 0-9 _ . -"
        ))
    }
}

/// A fresh random node id: `n` and 12 hex digits.
pub fn generate_node_id() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom(2) writes at most `len` bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No entropy source: time and pid are unique enough per machine.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 40);
        bytes.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("n{hex}")
}

/// The node id: `configured` when given, else the one kept in
/// `data_dir/node-id` (generated and written there the first time), so a
/// node keeps its id across restarts. Without a data directory a fresh id
/// is generated per run.
pub fn resolve_node_id(configured: &str, data_dir: Option<&Path>) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let Some(dir) = data_dir else {
        return Ok(generate_node_id());
    };
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            check_node_id(&id)
                .map_err(|e| format!("{}: bad node id {id:?}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate_node_id();
            let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse_or_say_why_not() {
        let a = RedisAddr::parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 6390, 0));
        let a = RedisAddr::parse("redis://:s3cret@localhost:6379/2").unwrap();
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        assert_eq!(a.username, None);
        assert_eq!(a.db, 2);
        assert_eq!(
            a.to_string(),
            "redis://localhost:6379/2",
            "no password in logs"
        );
        let a = RedisAddr::parse("redis://app:pw@[::1]:7000").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert_eq!(a.username.as_deref(), Some("app"));
        for (bad, says) in [
            ("http://127.0.0.1:6379", "scheme"),
            ("rediss://h:1", "TLS"),
            ("redis://127.0.0.1", "missing port"),
            ("redis://:6379", "missing host"),
            ("redis://h:0", "not 1-65535"),
            ("redis://h:99999", "not 1-65535"),
            ("redis://h:1/x", "database"),
        ] {
            let err = RedisAddr::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn node_ids_are_checked_and_kept() {
        assert!(check_node_id("node-1.a_b").is_ok());
        assert!(check_node_id("").is_err());
        assert!(check_node_id("a b").is_err());
        assert!(check_node_id(&"x".repeat(65)).is_err());
        let generated = generate_node_id();
        assert!(check_node_id(&generated).is_ok(), "{generated}");
        assert_ne!(generated, generate_node_id());

        let dir = std::env::temp_dir().join(format!("wsu-node-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = resolve_node_id("", Some(&dir)).unwrap();
        assert_eq!(resolve_node_id("", Some(&dir)).unwrap(), first, "stable");
        assert_eq!(resolve_node_id("given", Some(&dir)).unwrap(), "given");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_prefixed() {
        for key in [
            node_key("n"),
            presence_key("u"),
            mailbox_key("u"),
            group_key("g"),
            strategy_key("g"),
            schedule_key("g"),
            NODES_KEY.to_string(),
        ] {
            assert!(key.starts_with(KEY_PREFIX), "{key}");
        }
    }
}
