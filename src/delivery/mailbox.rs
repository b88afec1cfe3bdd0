//! Offline mailboxes, sans-IO: per user, bounded in messages, delivered by
//! priority then oldest first. The oldest message is evicted (to the DLQ,
//! `mailbox_full`) when a new one arrives at a full mailbox.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::Priority;
use crate::routing::envelope::MessageParts;

/// A message waiting in a mailbox, with how many deliveries of it were
/// made already: a delivery whose ack never came, cut short by its user
/// going offline or by a restart, counts, so the next one is shown as the
/// redelivery it is (`"attempt"`).
#[derive(Debug, Clone)]
pub struct Waiting {
    pub msg: Arc<MessageParts>,
    pub attempts_made: u32,
}

impl Waiting {
    /// A message never delivered.
    pub fn new(msg: Arc<MessageParts>) -> Waiting {
        Waiting::after(msg, 0)
    }

    /// A message delivered `attempts_made` times already.
    pub fn after(msg: Arc<MessageParts>, attempts_made: u32) -> Waiting {
        Waiting { msg, attempts_made }
    }

    /// The attempt number its next delivery carries (1 for the first).
    pub fn next_attempt(&self) -> u32 {
        self.attempts_made.saturating_add(1)
    }
}

/// One user's waiting messages, a queue per priority.
#[derive(Debug, Default)]
pub struct Mailbox {
    /// Index 0 = critical … 3 = low; each message with its arrival number.
    lanes: [VecDeque<(u64, Waiting)>; 4],
    /// The next message's arrival number: ties acceptance times, which
    /// count whole milliseconds, in the order messages came.
    arrivals: u64,
}

fn lane(p: Priority) -> usize {
    match p {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

impl Mailbox {
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    /// Stores a message; returns the message evicted to make room, if the
    /// mailbox already held `max_msgs`.
    pub fn push(&mut self, waiting: Waiting, max_msgs: usize) -> Option<Waiting> {
        let evicted = if self.len() >= max_msgs {
            self.pop_oldest()
        } else {
            None
        };
        self.arrivals += 1;
        self.lanes[lane(waiting.msg.priority)].push_back((self.arrivals, waiting));
        evicted
    }

    /// The oldest message of all lanes: by acceptance time, then arrival
    /// (lanes are FIFO, so only their fronts compete).
    fn pop_oldest(&mut self) -> Option<Waiting> {
        let oldest_lane = (0..4)
            .filter(|&l| !self.lanes[l].is_empty())
            .min_by_key(|&l| {
                self.lanes[l]
                    .front()
                    .map(|(arrival, w)| (w.msg.ts_unix_ms, *arrival))
            })?;
        self.lanes[oldest_lane].pop_front().map(|(_, w)| w)
    }

    /// Takes every message: critical first, oldest first within a priority.
    pub fn drain(&mut self) -> Vec<Waiting> {
        self.lanes
            .iter_mut()
            .flat_map(|l| l.drain(..).map(|(_, w)| w))
            .collect()
    }

    /// Takes messages in delivery order until their `size` adds up to
    /// `max_bytes` (always at least one, if any).
    pub fn take_batch(
        &mut self,
        max_bytes: usize,
        size: impl Fn(&MessageParts) -> usize,
    ) -> Vec<Waiting> {
        let mut taken = Vec::new();
        let mut bytes = 0;
        for lane in &mut self.lanes {
            while let Some((_, front)) = lane.front() {
                let next = size(&front.msg);
                if !taken.is_empty() && bytes + next > max_bytes {
                    return taken;
                }
                bytes += next;
                taken.push(lane.pop_front().expect("front exists").1);
            }
        }
        taken
    }

    /// Removes a message by id; returns it.
    pub fn remove(&mut self, id: &str) -> Option<Waiting> {
        for l in &mut self.lanes {
            if let Some(pos) = l.iter().position(|(_, w)| w.msg.id == id) {
                return l.remove(pos).map(|(_, w)| w);
            }
        }
        None
    }

    /// Every message, in delivery order (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.lanes.iter().flat_map(|l| l.iter().map(|(_, w)| w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::envelope::MessageBody;

    fn msg(id: &str, priority: Priority, ts: u64) -> Waiting {
        Waiting::new(Arc::new(MessageParts {
            id: id.into(),
            from: "a".into(),
            to: Some("u".into()),
            group: None,
            priority,
            ts_unix_ms: ts,
            ack: false,
            expires_unix_ms: None,
            body: MessageBody::Json("1".into()),
        }))
    }

    fn ids(v: &[Waiting]) -> Vec<&str> {
        v.iter().map(|w| w.msg.id.as_str()).collect()
    }

    #[test]
    fn a_full_mailbox_evicts_the_first_arrived_of_one_millisecond() {
        // Three messages accepted in the same millisecond, the first low,
        // the second critical: the low one is the oldest and goes.
        let mut m = Mailbox::default();
        assert!(m.push(msg("a-low", Priority::Low, 7), 2).is_none());
        assert!(m
            .push(msg("b-critical", Priority::Critical, 7), 2)
            .is_none());
        let evicted = m.push(msg("c-normal", Priority::Normal, 7), 2);
        assert_eq!(evicted.unwrap().msg.id, "a-low");
        let evicted = m.push(msg("d-high", Priority::High, 7), 2);
        assert_eq!(evicted.unwrap().msg.id, "b-critical");
        assert_eq!(ids(&m.drain()), ["d-high", "c-normal"]);
    }

    #[test]
    fn batches_follow_delivery_order_and_the_byte_budget() {
        let mut m = Mailbox::default();
        m.push(msg("n1", Priority::Normal, 1), 10);
        m.push(msg("c1", Priority::Critical, 2), 10);
        m.push(msg("n2", Priority::Normal, 3), 10);
        m.push(msg("l1", Priority::Low, 4), 10);
        let size = |_: &MessageParts| 100;
        assert_eq!(ids(&m.take_batch(250, size)), ["c1", "n1"]);
        assert_eq!(ids(&m.take_batch(50, size)), ["n2"], "at least one");
        assert_eq!(ids(&m.take_batch(1000, size)), ["l1"]);
        assert!(m.is_empty());
        assert!(m.take_batch(1000, size).is_empty());
    }

    #[test]
    fn drains_by_priority_then_age() {
        let mut m = Mailbox::default();
        m.push(msg("n1", Priority::Normal, 1), 10);
        m.push(msg("l1", Priority::Low, 2), 10);
        m.push(msg("c1", Priority::Critical, 3), 10);
        m.push(msg("n2", Priority::Normal, 4), 10);
        m.push(msg("h1", Priority::High, 5), 10);
        assert_eq!(ids(&m.drain()), vec!["c1", "h1", "n1", "n2", "l1"]);
        assert!(m.is_empty());
    }

    #[test]
    fn full_mailbox_evicts_the_oldest() {
        let mut m = Mailbox::default();
        assert!(m.push(msg("a", Priority::Critical, 5), 2).is_none());
        assert!(m.push(msg("b", Priority::Low, 1), 2).is_none());
        let evicted = m.push(msg("c", Priority::Normal, 9), 2).unwrap();
        assert_eq!(evicted.msg.id, "b", "oldest by time, whatever its priority");
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("a").unwrap().msg.id, "a");
        assert!(m.remove("a").is_none());
        assert_eq!(ids(&m.drain()), vec!["c"]);
    }

    #[test]
    fn a_message_keeps_its_attempts_while_it_waits() {
        let mut m = Mailbox::default();
        let mut again = msg("again", Priority::Normal, 1);
        again.attempts_made = 2;
        m.push(msg("fresh", Priority::Normal, 2), 10);
        m.push(again, 10);
        let attempts: Vec<(String, u32)> = m
            .iter()
            .map(|w| (w.msg.id.clone(), w.next_attempt()))
            .collect();
        assert_eq!(attempts, [("fresh".into(), 1), ("again".into(), 3)]);
        let evicted = m.push(msg("newest", Priority::Low, 3), 2).unwrap();
        assert_eq!(
            (evicted.msg.id.as_str(), evicted.attempts_made),
            ("fresh", 0)
        );
        let batch = m.take_batch(1, |_| 100);
        assert_eq!(
            (batch[0].msg.id.as_str(), batch[0].next_attempt()),
            ("again", 3)
        );
    }
}
