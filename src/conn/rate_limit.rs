//! A token bucket per connection, sans-IO: `rate_limit_per_s` commands a
//! second on average, bursts up to `rate_limit_burst`. A command that finds
//! the bucket empty is refused with `rate_limited` and dropped.

use std::time::Instant;

/// One connection's command budget.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_s: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_s: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            per_s: per_s as f64,
            burst: burst as f64,
            tokens: burst as f64,
            refilled_at: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
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
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.try_take(t0)).count(), 5, "the burst");
        // 10 a second: one token every 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(101)));
        assert!(!b.try_take(t0 + Duration::from_millis(102)));
        // Refill stops at the burst size.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| b.try_take(later)).count(), 5);
    }
}
