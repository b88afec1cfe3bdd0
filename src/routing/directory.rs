//! One shard's partition of the directory, sans-IO: for every user and
//! group whose home is this shard, where its connections are, and for
//! groups the members' weights and the anycast strategy state.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::StrategyKind;

/// A connection somewhere in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: usize,
    pub conn: u64,
}

/// A group member and its anycast bookkeeping.
#[derive(Debug, Clone)]
struct Member {
    at: ConnRef,
    user: String,
    weight: u32,
    /// Smooth weighted round robin state (nginx's algorithm).
    current: i64,
    /// Anycasts sent to this member and not yet written to its socket.
    outstanding: u64,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Member>,
    /// conn id → index in `members`.
    index: HashMap<u64, usize>,
    strategy: StrategyKind,
    cursor: usize,
    /// Member conn ids per shard, shared with publishes until membership
    /// changes (rebuilt lazily).
    by_shard: Option<Vec<Arc<[u64]>>>,
}

/// Why a directory change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("this shard already holds {0} groups")]
    TooManyGroups(usize),
    #[error("group has {0} members, the most allowed")]
    GroupFull(usize),
}

/// Most groups one shard's partition holds.
pub const GROUPS_MAX_PER_SHARD: usize = 1_000_000;
/// Most members one group holds.
pub const GROUP_MEMBERS_MAX: usize = 1_000_000;

/// A user's live connections. Most users have one: it is held inline, with
/// no list to allocate.
#[derive(Debug)]
enum UserConns {
    One(ConnRef),
    Many(Vec<ConnRef>),
}

impl UserConns {
    fn as_slice(&self) -> &[ConnRef] {
        match self {
            UserConns::One(c) => std::slice::from_ref(c),
            UserConns::Many(v) => v,
        }
    }

    fn insert(&mut self, at: ConnRef) {
        match self {
            UserConns::One(c) if *c == at => {}
            UserConns::One(c) => *self = UserConns::Many(vec![*c, at]),
            UserConns::Many(v) if v.contains(&at) => {}
            UserConns::Many(v) => v.push(at),
        }
    }

    /// Removes `at`; true when none is left.
    fn remove(&mut self, at: ConnRef) -> bool {
        match self {
            UserConns::One(c) => *c == at,
            UserConns::Many(v) => {
                v.retain(|c| *c != at);
                match v.as_slice() {
                    [] => true,
                    [only] => {
                        *self = UserConns::One(*only);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// One shard's partition of users and groups.
#[derive(Debug, Default)]
pub struct Directory {
    users: HashMap<Box<str>, UserConns>,
    groups: HashMap<String, Group>,
}

impl Directory {
    /// Records that `user` has a live connection at `at`.
    pub fn attach_user(&mut self, user: &str, at: ConnRef) {
        match self.users.get_mut(user) {
            Some(conns) => conns.insert(at),
            None => {
                self.users.insert(user.into(), UserConns::One(at));
            }
        }
    }

    /// Forgets a closed connection of `user`.
    pub fn detach_user(&mut self, user: &str, at: ConnRef) {
        if let Some(conns) = self.users.get_mut(user) {
            if conns.remove(at) {
                self.users.remove(user);
            }
        }
    }

    /// The live connections of `user` grouped by shard (`shards` entries).
    pub fn user_conns_by_shard(&self, user: &str, shards: usize) -> Vec<Vec<u64>> {
        let mut by_shard = vec![Vec::new(); shards];
        for c in self.users.get(user).map(UserConns::as_slice).unwrap_or(&[]) {
            by_shard[c.shard].push(c.conn);
        }
        by_shard
    }

    /// The live connections of `user` as delivery parts: one per shard that
    /// has any, in shard order (empty when the user is offline). What
    /// routing a message to a user needs, without a list per shard.
    pub fn user_parts(&self, user: &str) -> Vec<(usize, std::sync::Arc<[u64]>)> {
        let conns = self.users.get(user).map(UserConns::as_slice).unwrap_or(&[]);
        if let [one] = conns {
            return vec![(one.shard, std::sync::Arc::from([one.conn]))];
        }
        let mut parts: Vec<(usize, Vec<u64>)> = Vec::new();
        for c in conns {
            match parts.iter_mut().find(|(shard, _)| *shard == c.shard) {
                Some((_, on_shard)) => on_shard.push(c.conn),
                None => parts.push((c.shard, vec![c.conn])),
            }
        }
        parts.sort_unstable_by_key(|(shard, _)| *shard);
        parts
            .into_iter()
            .map(|(shard, on_shard)| (shard, std::sync::Arc::from(on_shard)))
            .collect()
    }

    /// Live connections of `user`.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |c| c.as_slice().len())
    }

    /// Adds (or re-weights) a member.
    pub fn join(
        &mut self,
        group: &str,
        at: ConnRef,
        user: &str,
        weight: u32,
    ) -> Result<(), DirectoryError> {
        if !self.groups.contains_key(group) && self.groups.len() >= GROUPS_MAX_PER_SHARD {
            return Err(DirectoryError::TooManyGroups(self.groups.len()));
        }
        let g = self.groups.entry(group.to_string()).or_default();
        match g.index.get(&at.conn) {
            Some(&i) => g.members[i].weight = weight,
            None => {
                if g.members.len() >= GROUP_MEMBERS_MAX {
                    return Err(DirectoryError::GroupFull(g.members.len()));
                }
                g.index.insert(at.conn, g.members.len());
                g.members.push(Member {
                    at,
                    user: user.to_string(),
                    weight,
                    current: 0,
                    outstanding: 0,
                });
                g.by_shard = None;
            }
        }
        Ok(())
    }

    /// Removes a member; returns whether it was one.
    pub fn leave(&mut self, group: &str, conn: u64) -> bool {
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        let Some(i) = g.index.remove(&conn) else {
            return false;
        };
        g.members.swap_remove(i);
        if let Some(moved) = g.members.get(i) {
            g.index.insert(moved.at.conn, i);
        }
        g.by_shard = None;
        if g.members.is_empty() && g.strategy == StrategyKind::default() {
            self.groups.remove(group);
        }
        true
    }

    /// Sets how `anycast` picks in `group` (kept even while it is empty).
    pub fn set_strategy(
        &mut self,
        group: &str,
        strategy: StrategyKind,
    ) -> Result<(), DirectoryError> {
        if !self.groups.contains_key(group) && self.groups.len() >= GROUPS_MAX_PER_SHARD {
            return Err(DirectoryError::TooManyGroups(self.groups.len()));
        }
        let g = self.groups.entry(group.to_string()).or_default();
        g.strategy = strategy;
        for m in &mut g.members {
            m.current = 0;
        }
        if g.members.is_empty() && strategy == StrategyKind::default() {
            self.groups.remove(group);
        }
        Ok(())
    }

    /// Whether connection `conn` is a member of `group`.
    pub fn is_member(&self, group: &str, conn: u64) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.index.contains_key(&conn))
    }

    /// Every member connection with its user (for tracking acks).
    pub fn members_with_users(&self, group: &str) -> Vec<(ConnRef, String)> {
        self.groups.get(group).map_or_else(Vec::new, |g| {
            g.members.iter().map(|m| (m.at, m.user.clone())).collect()
        })
    }

    /// Member count of `group`.
    pub fn member_count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.members.len())
    }

    /// Member conn ids per shard; the slices are shared, not copied, until
    /// membership changes.
    pub fn members_by_shard(&mut self, group: &str, shards: usize) -> Vec<Arc<[u64]>> {
        let Some(g) = self.groups.get_mut(group) else {
            return vec![Arc::from(Vec::new()); shards];
        };
        g.by_shard
            .get_or_insert_with(|| {
                let mut lists = vec![Vec::new(); shards];
                for m in &g.members {
                    lists[m.at.shard].push(m.at.conn);
                }
                lists.into_iter().map(Arc::from).collect()
            })
            .clone()
    }

    /// Picks one member for an anycast by the group's strategy and counts
    /// the message as outstanding on it.
    pub fn pick(&mut self, group: &str) -> Option<ConnRef> {
        let g = self.groups.get_mut(group)?;
        let n = g.members.len();
        if n == 0 {
            return None;
        }
        let i = match g.strategy {
            StrategyKind::RoundRobin => g.cursor % n,
            StrategyKind::LeastConnections => {
                // Least outstanding; ties go round robin so equal members share.
                let start = g.cursor % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&j| g.members[j].outstanding)
                    .expect("group is not empty")
            }
            StrategyKind::Weighted => {
                // Smooth weighted round robin: every member gains its weight,
                // the richest is picked and pays the total. Over any window
                // each member is picked in proportion to its weight, spread
                // out rather than in bursts.
                let total: i64 = g.members.iter().map(|m| m.weight as i64).sum();
                let mut best = 0;
                for j in 0..n {
                    g.members[j].current += g.members[j].weight as i64;
                    if g.members[j].current > g.members[best].current {
                        best = j;
                    }
                }
                g.members[best].current -= total;
                best
            }
        };
        g.cursor = g.cursor.wrapping_add(1);
        let m = &mut g.members[i];
        m.outstanding += 1;
        Some(m.at)
    }

    /// Every user with a live connection here.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|k| &**k)
    }

    /// Every group with members: `(name, members, weight sum)`.
    pub fn group_summaries(&self) -> impl Iterator<Item = (&str, usize, u64)> {
        self.groups
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|(name, g)| (name.as_str(), g.members.len(), weight_sum(g)))
    }

    /// `(members, weight sum)` of one group.
    pub fn group_summary(&self, group: &str) -> (usize, u64) {
        self.groups
            .get(group)
            .map_or((0, 0), |g| (g.members.len(), weight_sum(g)))
    }

    /// Anycasts outstanding on all members of `group`.
    pub fn outstanding_sum(&self, group: &str) -> u64 {
        self.groups
            .get(group)
            .map_or(0, |g| g.members.iter().map(|m| m.outstanding).sum())
    }

    /// The anycast strategy of `group` (`None`: not known here).
    pub fn strategy(&self, group: &str) -> Option<StrategyKind> {
        self.groups.get(group).map(|g| g.strategy)
    }

    /// `n` anycasts to `conn` left its outbox (or it closed): no longer
    /// outstanding.
    pub fn anycast_done(&mut self, group: &str, conn: u64, n: u64) {
        if let Some(g) = self.groups.get_mut(group) {
            if let Some(&i) = g.index.get(&conn) {
                let m = &mut g.members[i];
                m.outstanding = m.outstanding.saturating_sub(n);
            }
        }
    }
}

fn weight_sum(g: &Group) -> u64 {
    g.members.iter().map(|m| m.weight as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(shard: usize, conn: u64) -> ConnRef {
        ConnRef { shard, conn }
    }

    fn group_of(n: u64, weights: impl Fn(u64) -> u32) -> Directory {
        let mut d = Directory::default();
        for c in 0..n {
            d.join("g", at((c % 3) as usize, c), "u", weights(c))
                .unwrap();
        }
        d
    }

    #[test]
    fn users_attach_and_detach() {
        let mut d = Directory::default();
        d.attach_user("u", at(0, 1));
        d.attach_user("u", at(2, 7));
        d.attach_user("u", at(2, 7));
        assert_eq!(d.user_connection_count("u"), 2);
        assert_eq!(
            d.user_conns_by_shard("u", 3),
            vec![vec![1], vec![], vec![7]]
        );
        d.detach_user("u", at(0, 1));
        d.detach_user("u", at(2, 7));
        assert_eq!(d.user_connection_count("u"), 0);
        assert!(d.users.is_empty(), "empty entries are dropped");
    }

    #[test]
    fn user_parts_hold_each_shard_with_connections_once_in_shard_order() {
        let parts = |d: &Directory| -> Vec<(usize, Vec<u64>)> {
            d.user_parts("u")
                .into_iter()
                .map(|(shard, conns)| (shard, conns.to_vec()))
                .collect()
        };
        let mut d = Directory::default();
        assert!(parts(&d).is_empty(), "offline: no parts");
        d.attach_user("u", at(1, 4));
        assert_eq!(parts(&d), vec![(1, vec![4])]);
        d.attach_user("u", at(3, 9));
        d.attach_user("u", at(1, 5));
        d.attach_user("u", at(0, 2));
        assert_eq!(parts(&d), vec![(0, vec![2]), (1, vec![4, 5]), (3, vec![9])]);
        d.detach_user("u", at(1, 4));
        d.detach_user("u", at(0, 2));
        assert_eq!(parts(&d), vec![(1, vec![5]), (3, vec![9])]);
        assert!(d.user_parts("someone else").is_empty());
    }

    #[test]
    fn one_connection_is_held_inline_and_many_shrink_back() {
        let mut d = Directory::default();
        d.attach_user("u", at(0, 1));
        d.attach_user("u", at(0, 1));
        assert!(matches!(d.users["u"], UserConns::One(_)));
        d.attach_user("u", at(1, 2));
        d.attach_user("u", at(1, 3));
        assert_eq!(d.user_connection_count("u"), 3);
        d.detach_user("u", at(1, 9));
        assert_eq!(
            d.user_connection_count("u"),
            3,
            "an unknown one changes nothing"
        );
        d.detach_user("u", at(0, 1));
        d.detach_user("u", at(1, 2));
        assert!(matches!(d.users["u"], UserConns::One(c) if c == at(1, 3)));
        d.detach_user("u", at(0, 1));
        assert_eq!(
            d.user_connection_count("u"),
            1,
            "a stale detach keeps the last one"
        );
        d.detach_user("u", at(1, 3));
        assert!(d.users.is_empty());
    }

    #[test]
    fn join_leave_and_members_by_shard() {
        let mut d = group_of(6, |_| 1);
        let lists = d.members_by_shard("g", 3);
        assert_eq!(&*lists[0], &[0, 3]);
        assert_eq!(&*lists[1], &[1, 4]);
        assert!(d.leave("g", 3));
        assert!(!d.leave("g", 3));
        assert_eq!(&*d.members_by_shard("g", 3)[0], &[0]);
        for c in [0, 1, 2, 4, 5] {
            assert!(d.leave("g", c));
        }
        assert!(d.groups.is_empty(), "empty default groups are dropped");
        assert_eq!(d.pick("g"), None);
    }

    #[test]
    fn round_robin_is_even() {
        let mut d = group_of(7, |_| 1);
        let mut counts = HashMap::new();
        for _ in 0..700 {
            *counts.entry(d.pick("g").unwrap().conn).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn weighted_is_proportional_and_smooth() {
        let mut d = group_of(2, |c| if c == 0 { 1 } else { 3 });
        d.set_strategy("g", StrategyKind::Weighted).unwrap();
        let picks: Vec<u64> = (0..4000).map(|_| d.pick("g").unwrap().conn).collect();
        let heavy = picks.iter().filter(|&&c| c == 1).count();
        assert_eq!(heavy, 3000);
        // Smooth: the light member is picked once in every window of 4.
        for window in picks.chunks(4) {
            assert_eq!(window.iter().filter(|&&c| c == 0).count(), 1, "{window:?}");
        }
    }

    #[test]
    fn least_connections_avoids_a_stalled_member() {
        let mut d = group_of(3, |_| 1);
        d.set_strategy("g", StrategyKind::LeastConnections).unwrap();
        // Members 0 and 2 complete their work; member 1 never does.
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let c = d.pick("g").unwrap().conn;
            *counts.entry(c).or_insert(0) += 1;
            if c != 1 {
                d.anycast_done("g", c, 1);
            }
        }
        assert_eq!(
            counts.get(&1),
            Some(&1),
            "stalled member picked once: {counts:?}"
        );
    }

    #[test]
    fn strategy_survives_an_empty_group() {
        let mut d = Directory::default();
        d.set_strategy("g", StrategyKind::Weighted).unwrap();
        d.join("g", at(0, 1), "u", 5).unwrap();
        d.leave("g", 1);
        d.join("g", at(0, 2), "u", 1).unwrap();
        assert_eq!(d.groups["g"].strategy, StrategyKind::Weighted);
    }

    #[test]
    fn summaries_count_members_weights_and_outstanding() {
        let mut d = group_of(3, |c| c as u32 + 1);
        d.attach_user("u", at(0, 9));
        assert_eq!(d.group_summary("g"), (3, 6));
        assert_eq!(d.group_summaries().collect::<Vec<_>>(), vec![("g", 3, 6)]);
        assert_eq!(d.users().collect::<Vec<_>>(), vec!["u"]);
        d.pick("g");
        d.pick("g");
        assert_eq!(d.outstanding_sum("g"), 2);
        assert_eq!(d.strategy("g"), Some(StrategyKind::RoundRobin));
        assert_eq!(d.strategy("nope"), None);
    }

    #[test]
    fn rejoin_updates_weight() {
        let mut d = Directory::default();
        d.join("g", at(0, 1), "u", 1).unwrap();
        d.join("g", at(0, 1), "u", 9).unwrap();
        assert_eq!(d.member_count("g"), 1);
        assert_eq!(d.groups["g"].members[0].weight, 9);
    }
}
