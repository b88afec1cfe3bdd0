//! When to ping a connection and when to give up on it, sans-IO: the shard's
//! sweeper passes in the clock, this decides.

use std::time::{Duration, Instant};

/// The heartbeat rules from the config.
#[derive(Debug, Clone, Copy)]
pub struct LivenessRules {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// What the sweeper should do to one connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessAction {
    Nothing,
    /// Send a WebSocket ping: nothing heard and nothing sent for an interval.
    Ping,
    /// Close with 1001 and count as stale: silent past `idle_timeout`.
    CloseIdle,
}

impl LivenessRules {
    /// Decides for a connection last heard from at `last_rx` and last pinged
    /// at `last_ping` (`None`: never).
    pub fn check(
        &self,
        now: Instant,
        last_rx: Instant,
        last_ping: Option<Instant>,
    ) -> LivenessAction {
        let silent = now.saturating_duration_since(last_rx);
        if silent >= self.idle_timeout {
            return LivenessAction::CloseIdle;
        }
        let since_ping = last_ping.map_or(silent, |p| now.saturating_duration_since(p).min(silent));
        if since_ping >= self.ping_interval {
            LivenessAction::Ping
        } else {
            LivenessAction::Nothing
        }
    }

    /// How often the sweeper runs: a quarter of the shortest rule, between
    /// 5 ms and 1 s, so deadlines are met within 25% without a timer per
    /// connection.
    pub fn sweep_period(&self) -> Duration {
        (self.ping_interval.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(5), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LivenessRules {
        LivenessRules {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn quiet_connection_gets_pinged_then_closed() {
        let t0 = Instant::now();
        let r = rules();
        assert_eq!(
            r.check(t0 + Duration::from_secs(5), t0, None),
            LivenessAction::Nothing
        );
        assert_eq!(
            r.check(t0 + Duration::from_secs(20), t0, None),
            LivenessAction::Ping
        );
        let pinged = t0 + Duration::from_secs(20);
        assert_eq!(
            r.check(t0 + Duration::from_secs(30), t0, Some(pinged)),
            LivenessAction::Nothing
        );
        assert_eq!(
            r.check(t0 + Duration::from_secs(40), t0, Some(pinged)),
            LivenessAction::Ping
        );
        assert_eq!(
            r.check(t0 + Duration::from_secs(60), t0, Some(pinged)),
            LivenessAction::CloseIdle
        );
    }

    #[test]
    fn traffic_postpones_pings() {
        let t0 = Instant::now();
        let heard = t0 + Duration::from_secs(19);
        assert_eq!(
            rules().check(t0 + Duration::from_secs(25), heard, None),
            LivenessAction::Nothing
        );
    }

    #[test]
    fn sweep_period_is_bounded() {
        assert_eq!(rules().sweep_period(), Duration::from_secs(1));
        let fast = LivenessRules {
            ping_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(400),
        };
        assert_eq!(fast.sweep_period(), Duration::from_millis(25));
        let tiny = LivenessRules {
            ping_interval: Duration::from_millis(1),
            idle_timeout: Duration::from_millis(1),
        };
        assert_eq!(tiny.sweep_period(), Duration::from_millis(5));
    }
}
