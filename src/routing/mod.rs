//! Who receives a message: home shards, the directory partition each shard
//! keeps for the names it is home to, and the shared message envelope that
//! crosses shards once.
//!
//! Every user and group has a home shard (a stable hash of its name). The
//! home owns that name's directory entry; other shards reach it only with
//! mesh messages. A message travels: sender's shard → home (who receives it)
//! → each recipient shard once, carrying all of that shard's recipients.

pub mod directory;
pub mod envelope;

use std::hash::Hasher;

pub use directory::{ConnRef, Directory};
pub use envelope::Envelope;

/// The home shard of a user or group name: FNV-1a, stable across runs,
/// builds and machines (a cluster extends it to a home node).
pub fn home_shard(name: &str, shards: usize) -> usize {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(name.as_bytes());
    (hasher.finish() % shards as u64) as usize
}

/// Where a routed message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every live connection of a user (`send`).
    User(String),
    /// Every member connection of a group (`publish`); the sender's own
    /// connection only with `echo`.
    Group { group: String, echo: bool },
    /// One member picked by the group's strategy (`anycast`).
    Anycast(String),
}

impl Target {
    /// The name whose home shard routes this target.
    pub fn name(&self) -> &str {
        match self {
            Target::User(u) => u,
            Target::Group { group, .. } | Target::Anycast(group) => group,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shard_is_stable_and_spread() {
        assert_eq!(home_shard("alice", 8), home_shard("alice", 8));
        // Fixed value: a change here would move every name to a new home.
        assert_eq!(home_shard("alice", 1_000_003), 912597);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_shard(&format!("user-{i}"), 4)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
