//! Open-loop send schedule, sans-IO.
//!
//! Message `k` of a connection is *meant* to leave at `first_ns + k *
//! interval_ns`, whatever happened to earlier messages. The stamp carries that
//! intended time, so a stalled server shows up as latency instead of quietly
//! lowering the send rate (coordinated omission).

/// Most messages sent in one batch when a connection has fallen behind, so one
/// connection cannot starve the others on its executor.
pub const MAX_BURST: u64 = 256;

/// Intended send times of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenLoopSchedule {
    first_ns: u64,
    interval_ns: u64,
    next_k: u64,
}

impl OpenLoopSchedule {
    /// `rate_per_conn` messages a second, starting at `start_ns`, shifted by
    /// `phase` ∈ [0, 1) of an interval so connections do not send in lockstep.
    pub fn new(start_ns: u64, rate_per_conn: f64, phase: f64) -> OpenLoopSchedule {
        assert!(rate_per_conn > 0.0, "open loop needs a positive rate");
        let interval_ns = ((1e9 / rate_per_conn).round() as u64).max(1);
        let offset = (interval_ns as f64 * phase.clamp(0.0, 0.999_999)) as u64;
        OpenLoopSchedule {
            first_ns: start_ns + offset,
            interval_ns,
            next_k: 0,
        }
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Intended time of the next message not yet taken.
    pub fn next_due_ns(&self) -> u64 {
        self.first_ns + self.next_k * self.interval_ns
    }

    /// Messages due at `now_ns` (at most [`MAX_BURST`]); each is returned with
    /// its intended time through `emit`, and marked as taken.
    pub fn take_due(&mut self, now_ns: u64, mut emit: impl FnMut(u64)) -> u64 {
        let mut taken = 0;
        while taken < MAX_BURST && self.next_due_ns() <= now_ns {
            emit(self.next_due_ns());
            self.next_k += 1;
            taken += 1;
        }
        taken
    }

    /// Messages due up to `now_ns` that were not taken yet.
    pub fn backlog(&self, now_ns: u64) -> u64 {
        if now_ns < self.first_ns {
            0
        } else {
            ((now_ns - self.first_ns) / self.interval_ns + 1).saturating_sub(self.next_k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_from_start() {
        let mut s = OpenLoopSchedule::new(1_000, 1000.0, 0.0);
        assert_eq!(s.interval_ns(), 1_000_000);
        let mut times = Vec::new();
        assert_eq!(s.take_due(999, |t| times.push(t)), 0);
        assert_eq!(s.take_due(2_001_000, |t| times.push(t)), 3);
        assert_eq!(times, vec![1_000, 1_001_000, 2_001_000]);
        assert_eq!(s.next_due_ns(), 3_001_000);
    }

    #[test]
    fn stall_keeps_intended_times_not_actual() {
        // A 10 ms stall at 1 kHz: the 10 overdue messages keep their own
        // intended times, so their latency includes the stall.
        let mut s = OpenLoopSchedule::new(0, 1000.0, 0.0);
        s.take_due(0, |_| {});
        let mut late = Vec::new();
        s.take_due(10_000_000, |t| late.push(t));
        assert_eq!(late.len(), 10);
        assert_eq!(late[0], 1_000_000);
        assert_eq!(*late.last().unwrap(), 10_000_000);
    }

    #[test]
    fn bursts_are_bounded_and_backlog_drains() {
        let mut s = OpenLoopSchedule::new(0, 1_000_000.0, 0.0);
        let now = 1_000_000; // 1 ms at 1 MHz: 1001 messages due
        assert_eq!(s.backlog(now), 1001);
        assert_eq!(s.take_due(now, |_| {}), MAX_BURST);
        assert_eq!(s.backlog(now), 1001 - MAX_BURST);
        while s.take_due(now, |_| {}) > 0 {}
        assert_eq!(s.backlog(now), 0);
    }

    #[test]
    fn phase_shifts_first_send() {
        let s = OpenLoopSchedule::new(0, 100.0, 0.5);
        assert_eq!(s.next_due_ns(), 5_000_000);
    }
}
