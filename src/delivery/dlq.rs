//! The dead-letter queue, sans-IO: messages that could not be delivered,
//! with why. Bounded: the oldest entry is evicted (and counted) when full.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::routing::envelope::MessageParts;
use crate::routing::Target;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Not acknowledged after `max_retries` redeliveries.
    AckTimeout,
    /// Its `ttl_ms` ran out before delivery.
    Expired,
    /// Evicted from a full offline mailbox.
    MailboxFull,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::AckTimeout => "ack_timeout",
            DeadReason::Expired => "expired",
            DeadReason::MailboxFull => "mailbox_full",
        }
    }

    pub fn parse(s: &str) -> Option<DeadReason> {
        match s {
            "ack_timeout" => Some(DeadReason::AckTimeout),
            "expired" => Some(DeadReason::Expired),
            "mailbox_full" => Some(DeadReason::MailboxFull),
            _ => None,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub msg: Arc<MessageParts>,
    /// Where a replay sends it.
    pub target: Target,
    pub reason: DeadReason,
    pub at_unix_ms: u64,
    /// Deliveries tried before giving up.
    pub attempts: u32,
    /// Unique per shard: the letter's key in the log.
    pub seq: u64,
}

impl DeadLetter {
    /// The message a replay at `now_unix_ms` sends: the same, as a new first
    /// attempt, with its TTL (if it had one) counted again from the replay.
    /// A message that expired would otherwise be dead again on arrival.
    pub fn replayed_message(&self, now_unix_ms: u64) -> MessageParts {
        let mut msg = (*self.msg).clone();
        if let Some(expires) = msg.expires_unix_ms {
            let ttl_ms = expires.saturating_sub(msg.ts_unix_ms);
            msg.expires_unix_ms = Some(now_unix_ms.saturating_add(ttl_ms));
        }
        msg
    }
}

/// One shard's dead letters, oldest first.
#[derive(Debug, Default)]
pub struct DeadLetterQueue {
    entries: VecDeque<DeadLetter>,
    evicted: u64,
}

impl DeadLetterQueue {
    /// Adds a dead letter; returns the entry evicted to make room, if any.
    pub fn push(&mut self, letter: DeadLetter, max_msgs: usize) -> Option<DeadLetter> {
        let evicted = if self.entries.len() >= max_msgs {
            self.evicted += 1;
            self.entries.pop_front()
        } else {
            None
        };
        self.entries.push_back(letter);
        evicted
    }

    /// Removes the entries whose ids are listed (all when `ids` is `None`).
    pub fn take(&mut self, ids: Option<&[String]>) -> Vec<DeadLetter> {
        match ids {
            None => self.entries.drain(..).collect(),
            Some(ids) => {
                let (taken, kept): (Vec<_>, Vec<_>) = self
                    .entries
                    .drain(..)
                    .partition(|e| ids.iter().any(|id| *id == e.msg.id));
                self.entries = kept.into();
                taken
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeadLetter> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted because the queue was full, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Priority;
    use crate::routing::envelope::MessageBody;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            msg: Arc::new(MessageParts {
                id: id.into(),
                from: "a".into(),
                to: Some("u".into()),
                group: None,
                priority: Priority::Normal,
                ts_unix_ms: 1,
                ack: true,
                expires_unix_ms: None,
                body: MessageBody::Json("1".into()),
            }),
            target: Target::User("u".into()),
            reason: DeadReason::AckTimeout,
            at_unix_ms: 2,
            attempts: 4,
            seq: 1,
        }
    }

    #[test]
    fn a_replay_counts_the_ttl_again_from_the_replay() {
        let mut dead = letter("a");
        assert_eq!(dead.replayed_message(5_000).expires_unix_ms, None);
        // Accepted at 1 with a 150 ms TTL, replayed at 5,000.
        let mut msg = (*dead.msg).clone();
        msg.expires_unix_ms = Some(151);
        dead.msg = Arc::new(msg);
        let replayed = dead.replayed_message(5_000);
        assert_eq!(replayed.expires_unix_ms, Some(5_150));
        assert_eq!((replayed.id.as_str(), replayed.ts_unix_ms), ("a", 1));
    }

    #[test]
    fn bounded_oldest_evicted_and_counted() {
        let mut q = DeadLetterQueue::default();
        assert!(q.push(letter("a"), 2).is_none());
        assert!(q.push(letter("b"), 2).is_none());
        assert_eq!(q.push(letter("c"), 2).unwrap().msg.id, "a");
        assert_eq!(q.evicted(), 1);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn take_by_ids_or_all() {
        let mut q = DeadLetterQueue::default();
        for id in ["a", "b", "c"] {
            q.push(letter(id), 10);
        }
        let taken = q.take(Some(&["b".to_string(), "zz".to_string()]));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].msg.id, "b");
        assert_eq!(q.take(None).len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            DeadReason::AckTimeout,
            DeadReason::Expired,
            DeadReason::MailboxFull,
        ] {
            assert_eq!(DeadReason::parse(r.as_str()), Some(r));
        }
    }
}
