//! One timer structure per shard, sans-IO: entries ordered by due time (a
//! B-tree keyed by `(due, seq)`), not a task per message. A million entries
//! cost a million small tree nodes and nothing else.

use std::collections::BTreeMap;

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerKind {
    /// A scheduled message is due (`delay_ms` / `at`).
    Scheduled(u64),
    /// A delivery waiting for its ack timed out.
    AckTimeout(super::PendingKey),
    /// A mailbox message's TTL ran out.
    MailboxExpiry { user: String, id: String },
}

/// Timers by due time (unix ms).
#[derive(Debug, Default)]
pub struct Timers {
    entries: BTreeMap<(u64, u64), TimerKind>,
    next_seq: u64,
}

impl Timers {
    /// Adds a timer; returns its handle (for cancelling).
    pub fn insert(&mut self, due_unix_ms: u64, kind: TimerKind) -> (u64, u64) {
        self.next_seq += 1;
        let key = (due_unix_ms, self.next_seq);
        self.entries.insert(key, kind);
        key
    }

    /// Cancels a timer (no-op if it fired already).
    pub fn cancel(&mut self, key: (u64, u64)) {
        self.entries.remove(&key);
    }

    /// The earliest due time, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.entries.keys().next().map(|(due, _)| *due)
    }

    /// Removes and returns every timer due at or before `now`, earliest
    /// first, at most `max` of them (the rest wait for the next call, so a
    /// burst cannot stall the shard).
    pub fn pop_due(&mut self, now_unix_ms: u64, max: usize) -> Vec<TimerKind> {
        let mut fired = Vec::new();
        while fired.len() < max {
            match self.entries.first_key_value() {
                Some((&(due, _), _)) if due <= now_unix_ms => {
                    let (_, kind) = self.entries.pop_first().expect("checked above");
                    fired.push(kind);
                }
                _ => break,
            }
        }
        fired
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_due_order_and_only_when_due() {
        let mut t = Timers::default();
        t.insert(30, TimerKind::Scheduled(3));
        t.insert(10, TimerKind::Scheduled(1));
        let cancelled = t.insert(20, TimerKind::Scheduled(2));
        t.insert(10, TimerKind::Scheduled(4));
        t.cancel(cancelled);
        assert_eq!(t.next_due(), Some(10));
        assert_eq!(t.pop_due(9, 100), vec![]);
        assert_eq!(
            t.pop_due(25, 100),
            vec![TimerKind::Scheduled(1), TimerKind::Scheduled(4)]
        );
        assert_eq!(t.pop_due(100, 100), vec![TimerKind::Scheduled(3)]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_million_timers_fit_and_pop_in_bounded_batches() {
        let mut t = Timers::default();
        for i in 0..1_000_000u64 {
            t.insert(1_000 + (i * 7919) % 100_000, TimerKind::Scheduled(i));
        }
        assert_eq!(t.len(), 1_000_000);
        let mut last_due_seen = 0;
        let mut total = 0;
        loop {
            let batch = t.pop_due(u64::MAX, 10_000);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 10_000);
            total += batch.len();
            last_due_seen += 1;
        }
        assert_eq!(total, 1_000_000);
        assert_eq!(last_due_seen, 100);
    }
}
