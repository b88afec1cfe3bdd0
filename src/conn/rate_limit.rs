//! A token bucket per connection, sans-IO: `rate_limit_per_s` commands a
//! second on average, bursts up to `rate_limit_burst`. A command that finds
//! the bucket empty is refused with `rate_limited` and dropped.

use std::time::Instant;

/// One connection's command budget: what is left of it and when it was
/// last refilled. The rate and the burst are the shard's settings, passed
/// in: every connection of a server has the same, and a copy in each would
/// be 16 more bytes a connection.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            refilled_at: now,
        }
    }

    /// Takes one token if there is one, after refilling `per_s` a second
    /// up to `burst` for the time since the last call.
    pub fn try_take(&mut self, per_s: u64, burst: u64, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_s as f64).min(burst as f64);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, t0);
        let take = |b: &mut TokenBucket, at| b.try_take(10, 5, at);
        assert_eq!((0..8).filter(|_| take(&mut b, t0)).count(), 5, "the burst");
        // 10 a second: one token every 100 ms.
        assert!(!take(&mut b, t0 + Duration::from_millis(50)));
        assert!(take(&mut b, t0 + Duration::from_millis(101)));
        assert!(!take(&mut b, t0 + Duration::from_millis(102)));
        // Refill stops at the burst size.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| take(&mut b, later)).count(), 5);
    }
}
