//! A connection's outgoing queue, sans-IO: five lanes (command replies,
//! then critical, high, normal, low), FIFO within a lane, bounded in bytes.
//!
//! Over `outbox_max_bytes`, low messages are dropped first (the shard counts
//! them in its `dropped_low` metric: the outbox keeps no count); other
//! messages are still queued, but the connection is then "over" and the
//! shard closes it with 1008 if it stays over for `slow_consumer_grace_ms`.
//! Past twice the bound it is closed at once. Messages sent with `ack:true`
//! are never dropped silently: they are refused, and the sender told.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::protocol::Priority;

/// The lanes, drained in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// Answers to this connection's own commands (`ok`, `error`, `pong`...).
    Reply = 0,
    Critical = 1,
    High = 2,
    Normal = 3,
    Low = 4,
}

impl From<Priority> for Lane {
    fn from(p: Priority) -> Lane {
        match p {
            Priority::Critical => Lane::Critical,
            Priority::High => Lane::High,
            Priority::Normal => Lane::Normal,
            Priority::Low => Lane::Low,
        }
    }
}

const LANES: usize = 5;

/// One encoded WebSocket frame waiting to be written.
#[derive(Debug, Clone)]
pub struct OutItem {
    pub frame: Bytes,
    pub lane: Lane,
    pub ack: bool,
    /// Set for anycasts: the group whose home counts this as outstanding
    /// until it leaves the outbox.
    pub anycast_group: Option<Arc<str>>,
    /// When the message was accepted (unix µs), for the delivery latency;
    /// 0 for replies to the connection's own commands.
    pub accepted_unix_us: u64,
}

/// What happened to a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// A low-priority message dropped for lack of room (the caller counts it).
    DroppedLow,
    /// An `ack:true` message refused for lack of room: tell the sender.
    Refused,
    /// Past twice the bound: close the connection with 1008 now.
    Overflow,
}

/// The bounded, prioritised queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    /// Allocated on the first push, freed by `release_idle_memory`: a
    /// quiet connection carries 8 bytes here, not five empty queues.
    lanes: Option<Box<[VecDeque<OutItem>; LANES]>>,
    queued_bytes: usize,
    /// Bytes taken by the writer and not yet reported written.
    in_flight_bytes: usize,
    max_bytes: usize,
    over_since: Option<Instant>,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Outbox {
            lanes: None,
            queued_bytes: 0,
            in_flight_bytes: 0,
            max_bytes,
            over_since: None,
        }
    }

    /// Bytes queued or being written.
    pub fn bytes(&self) -> usize {
        self.queued_bytes + self.in_flight_bytes
    }

    /// Messages waiting in all lanes.
    pub fn len(&self) -> usize {
        self.lanes
            .as_ref()
            .map_or(0, |lanes| lanes.iter().map(VecDeque::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.lanes
            .as_ref()
            .is_none_or(|lanes| lanes.iter().all(VecDeque::is_empty))
    }

    /// Frees the lanes if empty (a resting connection keeps no queue; a
    /// busy one keeps its buffers between messages).
    pub fn release_idle_memory(&mut self) {
        if self.is_empty() {
            self.lanes = None;
        }
    }

    fn lanes_mut(&mut self) -> &mut [VecDeque<OutItem>; LANES] {
        self.lanes.get_or_insert_with(Default::default)
    }

    /// Since when the queue has been over its bound, if it is.
    pub fn over_since(&self) -> Option<Instant> {
        self.over_since
    }

    /// Queues `item` (or drops or refuses it, see the module doc). Evicted
    /// messages are passed to `evicted`, to be counted and their anycast
    /// groups told. `now` is read only when the queue goes over its bound:
    /// a reply costs no clock read.
    pub fn push(
        &mut self,
        item: OutItem,
        now: impl FnOnce() -> Instant,
        mut evicted: impl FnMut(&OutItem),
    ) -> PushOutcome {
        let size = item.frame.len();
        // Every frame has a header: `queued_bytes == 0` means no items.
        debug_assert!(size > 0, "an empty frame in an outbox");
        if self.bytes() == 0 {
            // The bound limits what piles up, not how large one message may
            // be (up to max_message_bytes): an empty queue takes anything.
            self.queued_bytes += size;
            self.lanes_mut()[item.lane as usize].push_back(item);
            return PushOutcome::Queued;
        }
        if self.bytes() + size > self.max_bytes {
            if item.lane == Lane::Low {
                if item.ack {
                    return PushOutcome::Refused;
                }
                return PushOutcome::DroppedLow;
            }
            self.evict_low(size, &mut evicted);
        }
        let total = self.bytes() + size;
        if total > self.max_bytes {
            if item.ack {
                return PushOutcome::Refused;
            }
            if total > self.max_bytes.saturating_mul(2) {
                return PushOutcome::Overflow;
            }
            self.over_since.get_or_insert_with(now);
        }
        self.queued_bytes += size;
        self.lanes_mut()[item.lane as usize].push_back(item);
        PushOutcome::Queued
    }

    /// Drops queued low-priority messages, oldest first, until `incoming`
    /// more bytes fit (`ack:true` ones are kept: they may not vanish).
    fn evict_low(&mut self, incoming: usize, evicted: &mut impl FnMut(&OutItem)) {
        let Some(lanes) = self.lanes.as_mut() else {
            return;
        };
        let low = &mut lanes[Lane::Low as usize];
        let mut kept = VecDeque::new();
        while self.queued_bytes + self.in_flight_bytes + incoming > self.max_bytes {
            let Some(item) = low.pop_front() else { break };
            if item.ack {
                kept.push_back(item);
                continue;
            }
            self.queued_bytes -= item.frame.len();
            evicted(&item);
        }
        while let Some(item) = kept.pop_back() {
            low.push_front(item);
        }
    }

    /// Moves frames into `out`, highest lane first, until about `max_bytes`
    /// (at least one frame). Calls `taken` for each; returns bytes moved.
    pub fn take_into(
        &mut self,
        out: &mut Vec<u8>,
        max_bytes: usize,
        mut taken: impl FnMut(&OutItem),
    ) -> usize {
        let mut moved = 0;
        // Empty: the lanes (three cache lines of a connection that greeted
        // once, cold by its next message) are not looked at.
        if self.queued_bytes == 0 {
            return 0;
        }
        let Some(lanes) = self.lanes.as_mut() else {
            return 0;
        };
        for lane in lanes.iter_mut() {
            while let Some(item) = lane.front() {
                if moved > 0 && moved + item.frame.len() > max_bytes {
                    break;
                }
                let item = lane.pop_front().expect("front exists");
                out.extend_from_slice(&item.frame);
                moved += item.frame.len();
                taken(&item);
            }
            if moved >= max_bytes {
                break;
            }
        }
        self.queued_bytes -= moved;
        self.in_flight_bytes += moved;
        moved
    }

    /// The writer put `n` taken bytes on the socket.
    pub fn wrote(&mut self, n: usize) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(n);
        if self.bytes() <= self.max_bytes {
            self.over_since = None;
        }
    }

    /// Empties the queue (connection closing); `each` sees every item.
    pub fn drain(&mut self, mut each: impl FnMut(OutItem)) {
        if let Some(lanes) = self.lanes.take() {
            for lane in *lanes {
                lane.into_iter().for_each(&mut each);
            }
        }
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(lane: Lane, tag: u8, len: usize) -> OutItem {
        OutItem {
            frame: Bytes::from(vec![tag; len]),
            lane,
            ack: false,
            anycast_group: None,
            accepted_unix_us: 0,
        }
    }

    fn drain_tags(o: &mut Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        let mut tags = Vec::new();
        o.take_into(&mut out, usize::MAX, |i| tags.push(i.frame[0]));
        o.wrote(out.len());
        tags
    }

    #[test]
    fn idle_memory_is_released_only_when_empty_and_lanes_come_back() {
        let now = Instant::now();
        let mut o = Outbox::new(1 << 20);
        assert!(o.lanes.is_none(), "a new outbox allocates no lanes");
        o.push(item(Lane::Normal, 1, 10), || now, |_| {});
        o.push(item(Lane::High, 2, 10), || now, |_| {});
        o.release_idle_memory();
        assert_eq!(o.len(), 2, "queued frames survive a release");
        assert_eq!(drain_tags(&mut o), vec![2, 1]);
        assert!(o.lanes.is_some(), "a busy outbox keeps its lanes");
        o.release_idle_memory();
        assert!(o.lanes.is_none() && o.is_empty());
        assert_eq!(o.len(), 0);
        assert_eq!(o.take_into(&mut Vec::new(), usize::MAX, |_| {}), 0);
        o.push(item(Lane::Low, 3, 10), || now, |_| {});
        assert_eq!(
            drain_tags(&mut o),
            vec![3],
            "lanes come back on the next push"
        );
    }

    #[test]
    fn lanes_drain_by_priority_fifo_within() {
        let now = Instant::now();
        let mut o = Outbox::new(1 << 20);
        for (lane, tag) in [
            (Lane::Low, 1),
            (Lane::Normal, 2),
            (Lane::Critical, 3),
            (Lane::High, 4),
            (Lane::Normal, 5),
            (Lane::Reply, 6),
            (Lane::Critical, 7),
        ] {
            assert_eq!(
                o.push(item(lane, tag, 10), || now, |_| {}),
                PushOutcome::Queued
            );
        }
        assert_eq!(drain_tags(&mut o), vec![6, 3, 7, 4, 2, 5, 1]);
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn low_is_dropped_first_when_full() {
        let now = Instant::now();
        let mut o = Outbox::new(100);
        assert_eq!(
            o.push(item(Lane::Low, 1, 40), || now, |_| {}),
            PushOutcome::Queued
        );
        assert_eq!(
            o.push(item(Lane::Low, 2, 40), || now, |_| {}),
            PushOutcome::Queued
        );
        // A low message that does not fit is dropped.
        assert_eq!(
            o.push(item(Lane::Low, 3, 40), || now, |_| {}),
            PushOutcome::DroppedLow
        );
        // A normal one evicts the oldest low.
        let mut evicted = 0;
        assert_eq!(
            o.push(item(Lane::Normal, 4, 40), || now, |_| evicted += 1),
            PushOutcome::Queued
        );
        assert_eq!(evicted, 1);
        assert!(o.over_since().is_none());
        assert_eq!(drain_tags(&mut o), vec![4, 2]);
    }

    #[test]
    fn over_the_bound_then_overflow() {
        let now = Instant::now();
        let mut o = Outbox::new(100);
        assert_eq!(
            o.push(item(Lane::Normal, 1, 90), || now, |_| {}),
            PushOutcome::Queued
        );
        assert_eq!(
            o.push(item(Lane::Normal, 2, 60), || now, |_| {}),
            PushOutcome::Queued
        );
        assert_eq!(o.over_since(), Some(now));
        assert_eq!(
            o.push(item(Lane::Normal, 3, 60), || now, |_| {}),
            PushOutcome::Overflow
        );
        // Draining below the bound clears the state.
        drain_tags(&mut o);
        assert_eq!(o.over_since(), None);
    }

    #[test]
    fn ack_messages_are_refused_not_dropped() {
        let now = Instant::now();
        let mut o = Outbox::new(100);
        let mut acked = item(Lane::Low, 1, 60);
        acked.ack = true;
        assert_eq!(o.push(acked.clone(), || now, |_| {}), PushOutcome::Queued);
        // Neither evicted by a normal push...
        assert_eq!(
            o.push(item(Lane::Normal, 2, 60), || now, |_| {}),
            PushOutcome::Queued
        );
        // ...nor accepted past the bound.
        let mut acked_normal = item(Lane::Normal, 3, 10);
        acked_normal.ack = true;
        assert_eq!(o.push(acked_normal, || now, |_| {}), PushOutcome::Refused);
        assert_eq!(o.push(acked, || now, |_| {}), PushOutcome::Refused);
        assert_eq!(drain_tags(&mut o), vec![2, 1]);
    }

    #[test]
    fn an_empty_queue_takes_a_message_larger_than_the_bound() {
        let now = Instant::now();
        let mut o = Outbox::new(100);
        assert_eq!(
            o.push(item(Lane::Normal, 1, 1000), || now, |_| {}),
            PushOutcome::Queued
        );
        assert_eq!(o.over_since(), None);
        // Behind it, the bound applies again.
        assert_eq!(
            o.push(item(Lane::Low, 2, 10), || now, |_| {}),
            PushOutcome::DroppedLow
        );
        assert_eq!(
            o.push(item(Lane::Normal, 3, 10), || now, |_| {}),
            PushOutcome::Overflow
        );
    }

    #[test]
    fn take_respects_the_batch_size_and_in_flight_counts() {
        let now = Instant::now();
        let mut o = Outbox::new(1000);
        for t in 0..10 {
            o.push(item(Lane::Normal, t, 100), || now, |_| {});
        }
        let mut out = Vec::new();
        assert_eq!(o.take_into(&mut out, 250, |_| {}), 200);
        assert_eq!(o.bytes(), 1000, "taken bytes count until written");
        o.wrote(200);
        assert_eq!(o.bytes(), 800);
        // A frame larger than the batch still goes alone.
        let mut o = Outbox::new(1000);
        o.push(item(Lane::Normal, 1, 500), || now, |_| {});
        let mut out = Vec::new();
        assert_eq!(o.take_into(&mut out, 100, |_| {}), 500);
    }
}
