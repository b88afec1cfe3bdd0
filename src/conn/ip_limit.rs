//! New connections per client IP, shared by every shard without a lock.
//!
//! SO_REUSEPORT spreads one IP's connections over all shards, so a per-shard
//! budget would let an IP through `shards` times. Instead every shard reads
//! one table of token buckets, each packed in an `AtomicU64` and updated by
//! compare-and-swap: 40 bits of milliseconds since start, 24 bits of tokens
//! in sixteenths. An IP picks its bucket by hash (IPv6 by its /64, the
//! smallest block one host usually holds). Two IPs that share a bucket share
//! one budget: a collision can only refuse early, never admit more.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Buckets in the table (a power of two): 512 KiB, allocated only when the
/// limit is on.
pub const IP_BUCKETS: usize = 1 << 16;
/// Largest burst the packed token field holds.
pub const IP_BURST_MAX: u64 = (TOKENS_MASK / SIXTEENTHS) - 1;

const SIXTEENTHS: u64 = 16;
const TOKEN_BITS: u32 = 24;
const TOKENS_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// A bucket never used reads as zero: mark used buckets so "zero" means full.
const UNUSED: u64 = 0;

/// The shared per-IP budget of new connections.
pub struct IpConnectionLimiter {
    per_s: u64,
    burst_sixteenths: u64,
    started_at: Instant,
    buckets: Box<[AtomicU64]>,
}

impl IpConnectionLimiter {
    /// `per_s` new connections a second per IP on average, `burst` at once.
    pub fn new(per_s: u64, burst: u64) -> Self {
        let burst = burst.clamp(1, IP_BURST_MAX);
        IpConnectionLimiter {
            per_s: per_s.max(1),
            burst_sixteenths: burst * SIXTEENTHS,
            started_at: Instant::now(),
            buckets: (0..IP_BUCKETS).map(|_| AtomicU64::new(UNUSED)).collect(),
        }
    }

    /// Takes one connection from `ip`'s budget; false when it is spent.
    pub fn try_admit(&self, ip: IpAddr, now: Instant) -> bool {
        // +1 so that a used bucket is never all zeroes.
        let now_ms = now.saturating_duration_since(self.started_at).as_millis() as u64 + 1;
        let bucket = &self.buckets[bucket_of(ip)];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (tokens, stamp_ms) = if current == UNUSED {
                (self.burst_sixteenths, now_ms)
            } else {
                let tokens = current & TOKENS_MASK;
                let stamp_ms = current >> TOKEN_BITS;
                let elapsed_ms = now_ms.saturating_sub(stamp_ms);
                let refill = elapsed_ms.saturating_mul(self.per_s * SIXTEENTHS) / 1000;
                if refill == 0 {
                    // Keep the old stamp: short gaps still add up to a token.
                    (tokens, stamp_ms)
                } else {
                    ((tokens + refill).min(self.burst_sixteenths), now_ms)
                }
            };
            if tokens < SIXTEENTHS {
                return false;
            }
            let next = (stamp_ms << TOKEN_BITS) | (tokens - SIXTEENTHS);
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

fn bucket_of(ip: IpAddr) -> usize {
    let mut key = [0u8; 9];
    match ip {
        IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => key[..4].copy_from_slice(&v4.octets()),
            None => {
                key[..8].copy_from_slice(&v6.octets()[..8]);
                key[8] = 6;
            }
        },
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as usize & (IP_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let limiter = IpConnectionLimiter::new(10, 5);
        let t0 = limiter.started_at;
        let a = ip("10.0.0.1");
        assert_eq!((0..9).filter(|_| limiter.try_admit(a, t0)).count(), 5);
        // 10 a second: one more every 100 ms.
        assert!(!limiter.try_admit(a, t0 + Duration::from_millis(50)));
        assert!(limiter.try_admit(a, t0 + Duration::from_millis(101)));
        assert!(!limiter.try_admit(a, t0 + Duration::from_millis(110)));
        // Many small gaps add up (the stamp is kept while nothing refills).
        let mut at = t0 + Duration::from_millis(110);
        let mut admitted = 0;
        for _ in 0..100 {
            at += Duration::from_millis(3);
            admitted += limiter.try_admit(a, at) as u32;
        }
        assert_eq!(admitted, 3, "300 ms at 10/s");
        // Refill stops at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.try_admit(a, later)).count(), 5);
    }

    #[test]
    fn ips_have_their_own_budgets_and_v6_counts_per_64() {
        let limiter = IpConnectionLimiter::new(1, 2);
        let t0 = limiter.started_at;
        assert!(limiter.try_admit(ip("10.0.0.1"), t0));
        assert!(limiter.try_admit(ip("10.0.0.1"), t0));
        assert!(!limiter.try_admit(ip("10.0.0.1"), t0));
        assert!(limiter.try_admit(ip("10.0.0.2"), t0), "another IP");
        // The same /64 shares a budget; another /64 does not.
        assert!(limiter.try_admit(ip("2001:db8:1:2::1"), t0));
        assert!(limiter.try_admit(ip("2001:db8:1:2::ffff"), t0));
        assert!(!limiter.try_admit(ip("2001:db8:1:2:abcd::9"), t0));
        assert!(limiter.try_admit(ip("2001:db8:1:3::1"), t0));
        // An IPv4-mapped address is its IPv4 address.
        assert!(!limiter.try_admit(ip("::ffff:10.0.0.1"), t0));
    }

    #[test]
    fn shards_share_one_budget() {
        let limiter = std::sync::Arc::new(IpConnectionLimiter::new(1, 1000));
        let t0 = limiter.started_at;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| limiter.try_admit(ip("192.0.2.7"), t0))
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000, "exactly the burst, across threads");
    }
}
