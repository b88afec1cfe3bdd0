//! The cross-shard table of live WebSocket connections.
//!
//! A `sharded-slab`: each shard thread inserts into its own slab shard
//! without locks, and any shard can read any entry by key. The key is the
//! connection id clients see in `welcome`. Admission control
//! (`max_connections`) is one atomic counter beside it: it is touched once
//! per connect and once per close, never per message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use sharded_slab::Slab;

/// What every shard may know about a live connection. Compact: one per
/// connection, idle ones included (64 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub shard: u32,
    pub user: Box<str>,
    pub peer: SocketAddr,
    /// Milliseconds since the Unix epoch.
    pub connected_unix_ms: u64,
}

/// Slab layout: keys stay below 2^53 so connection ids survive JSON
/// numbers in JavaScript clients.
struct RegistryLayout;

impl sharded_slab::Config for RegistryLayout {
    const MAX_THREADS: usize = 1024;
    const MAX_PAGES: usize = 20;
    const INITIAL_PAGE_SIZE: usize = 32;
    const RESERVED_BITS: usize = 11;
}

/// Largest connection id a client can see (exclusive).
pub const CONN_ID_LIMIT: u64 = 1 << 53;

/// The live-connection table, shared by every shard (`Arc`).
pub struct Registry {
    slab: Slab<ConnInfo, RegistryLayout>,
    live: AtomicUsize,
    max_connections: usize,
}

/// A reserved place under `max_connections`; released on drop unless
/// turned into a registered connection.
pub struct Admission<'a> {
    registry: &'a Registry,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.registry.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("max_connections ({0}) reached")]
    Full(usize),
    #[error("connection table exhausted for this thread")]
    TableExhausted,
}

impl Registry {
    pub fn new(max_connections: usize) -> Self {
        Registry {
            slab: Slab::new_with_config::<RegistryLayout>(),
            live: AtomicUsize::new(0),
            max_connections,
        }
    }

    /// Reserves a place for one more connection, or says the server is full.
    pub fn admit(&self) -> Result<Admission<'_>, RegistryError> {
        let previous = self.live.fetch_add(1, Ordering::AcqRel);
        let admission = Admission { registry: self };
        if previous >= self.max_connections {
            return Err(RegistryError::Full(self.max_connections));
        }
        Ok(admission)
    }

    /// Registers an admitted connection; returns its id.
    pub fn insert(&self, admission: Admission<'_>, info: ConnInfo) -> Result<u64, RegistryError> {
        self.insert_with(admission, |_| info)
    }

    /// Registers an admitted connection whose entry depends on its own id
    /// (an anonymous user is `anon-<conn id>`); returns the id.
    pub fn insert_with(
        &self,
        admission: Admission<'_>,
        make: impl FnOnce(u64) -> ConnInfo,
    ) -> Result<u64, RegistryError> {
        let entry = self
            .slab
            .vacant_entry()
            .ok_or(RegistryError::TableExhausted)?;
        let key = entry.key();
        debug_assert!((key as u64) < CONN_ID_LIMIT);
        entry.insert(make(key as u64));
        // The place stays taken until `remove`.
        std::mem::forget(admission);
        Ok(key as u64)
    }

    /// Removes a connection at close and frees its place.
    pub fn remove(&self, conn_id: u64) {
        if self.slab.remove(conn_id as usize) {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A copy of a live connection's entry, readable from any shard.
    pub fn get(&self, conn_id: u64) -> Option<ConnInfo> {
        self.slab.get(conn_id as usize).map(|e| e.clone())
    }

    /// Connections registered or admitted right now, over all shards.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn info(shard: u32) -> ConnInfo {
        ConnInfo {
            shard,
            user: format!("u{shard}").into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            connected_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn an_entry_stays_small() {
        assert!(std::mem::size_of::<ConnInfo>() <= 64);
    }

    #[test]
    fn admission_is_bounded_and_released() {
        let r = Registry::new(2);
        let a = r.admit().unwrap();
        let id = r.insert(a, info(0)).unwrap();
        let b = r.admit().unwrap();
        assert_eq!(r.admit().err(), Some(RegistryError::Full(2)));
        drop(b);
        assert_eq!(r.live(), 1);
        r.remove(id);
        assert_eq!(r.live(), 0);
        assert!(r.get(id).is_none());
    }

    #[test]
    fn readable_from_other_threads() {
        let r = Arc::new(Registry::new(100));
        let id = r.insert(r.admit().unwrap(), info(3)).unwrap();
        let r2 = r.clone();
        let seen = std::thread::spawn(move || r2.get(id)).join().unwrap();
        assert_eq!(seen.unwrap().shard, 3);
    }

    #[test]
    fn ids_stay_javascript_safe_and_stale_ids_miss() {
        let r = Registry::new(10);
        let first = r.insert(r.admit().unwrap(), info(0)).unwrap();
        r.remove(first);
        let mut last = 0;
        for _ in 0..10_000 {
            let id = r.insert(r.admit().unwrap(), info(0)).unwrap();
            assert!(id < CONN_ID_LIMIT);
            last = id;
            r.remove(id);
        }
        assert!(r.get(first).is_none());
        assert!(r.get(last).is_none());
        assert_eq!(r.live(), 0);
    }
}
