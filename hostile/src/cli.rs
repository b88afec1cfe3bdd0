//! The command line (argh) → a [`Plan`](crate::suite::Plan).

use std::time::Duration;

use argh::FromArgs;

use crate::modes::flood::Flood;
use crate::modes::fragment::Fragment;
use crate::modes::never_read::NeverRead;
use crate::modes::oversize::Oversize;
use crate::modes::ping_flood::PingFlood;
use crate::modes::random::RandomBytes;
use crate::modes::slowloris::Slowloris;
use crate::modes::ServerLimits;
use crate::suite::{Mode, Plan};

/// Hostile clients against a ws-uring server on this machine (127.0.0.0/8
/// only): slowloris, random bytes, oversize and endlessly fragmented
/// frames, ping floods, never-readers and a connection flood past
/// max_connections. Every attack is bounded in clients, bytes and time.
/// Exits 0 when the server defended itself as documented against every
/// attack, 1 when not, 2 on a bad flag, 3 past --time-limit-s.
#[derive(FromArgs, Debug, Clone, PartialEq)]
pub struct Args {
    /// websocket URL of the server (default ws://127.0.0.1:8765/ws); must be in 127.0.0.0/8
    #[argh(option, default = "String::from(\"ws://127.0.0.1:8765/ws\")")]
    pub url: String,

    /// attacks, comma-separated: slowloris, random, oversize, fragment,
    /// ping-flood, never-read, flood, or all (default all)
    #[argh(option, default = "String::from(\"all\")")]
    pub modes: String,

    /// shorter run with fewer clients (for CI)
    #[argh(switch)]
    pub quick: bool,

    /// attack nothing: only check the server is healthy (/health answers
    /// ok and a fresh client's echo comes back)
    #[argh(switch)]
    pub check: bool,

    /// the server's pid, to watch its RSS during the ping flood and never-read attacks
    #[argh(option)]
    pub server_pid: Option<u32>,

    /// write the results as JSON to this file
    #[argh(option)]
    pub output: Option<String>,

    /// slowloris sockets (default 5000; quick 5000)
    #[argh(option)]
    pub slowloris: Option<usize>,

    /// slowloris: milliseconds between two bytes of one socket (default 1000)
    #[argh(option, default = "1000")]
    pub slowloris_interval_ms: u64,

    /// random-bytes clients, half before and half after the upgrade (default 2000; quick 2000)
    #[argh(option)]
    pub random: Option<usize>,

    /// oversize-frame clients (default 100; quick 50)
    #[argh(option)]
    pub oversize: Option<usize>,

    /// endlessly fragmenting clients (default 50; quick 20)
    #[argh(option)]
    pub fragment: Option<usize>,

    /// fragmenting pace per client, payload bytes a second (default 524288)
    #[argh(option, default = "512 * 1024")]
    pub fragment_rate: usize,

    /// ping-flood clients that read their pongs (default 10; quick 6)
    #[argh(option)]
    pub ping_flood: Option<usize>,

    /// pings a second per reading ping-flood client (default 5000)
    #[argh(option, default = "5000")]
    pub ping_rate: usize,

    /// ping-flood clients that never read (default 2)
    #[argh(option, default = "2")]
    pub ping_no_read: usize,

    /// pings a second per non-reading ping-flood client (default 40000)
    #[argh(option, default = "40_000")]
    pub ping_no_read_rate: usize,

    /// seconds each ping-flood client floods (default 10; quick 5)
    #[argh(option)]
    pub ping_seconds: Option<u64>,

    /// never-reading clients (default 20; quick 10)
    #[argh(option)]
    pub never_read: Option<usize>,

    /// never-read: messages a second fed to each (default 200)
    #[argh(option, default = "200")]
    pub never_read_rate: usize,

    /// never-read: data bytes per message (default 8192)
    #[argh(option, default = "8192")]
    pub never_read_bytes: usize,

    /// flood: upgrade attempts past the free slots (default 1000; quick 500)
    #[argh(option)]
    pub flood_extra: Option<usize>,

    /// flood: upgrades in progress at once (default 256)
    #[argh(option, default = "256")]
    pub flood_concurrency: usize,

    /// the server's max_connections (default 100000)
    #[argh(option, default = "100_000")]
    pub max_connections: usize,

    /// the server's max_message_bytes (default 1048576)
    #[argh(option, default = "1 << 20")]
    pub max_message_bytes: usize,

    /// the server's handshake_timeout_ms (default 10000)
    #[argh(option, default = "10_000")]
    pub handshake_timeout_ms: u64,

    /// the server's outbox_max_bytes (default 1048576)
    #[argh(option, default = "1 << 20")]
    pub outbox_max_bytes: usize,

    /// the server's slow_consumer_grace_ms (default 5000)
    #[argh(option, default = "5000")]
    pub slow_consumer_grace_ms: u64,

    /// the server's shutdown_timeout_ms (default 2000)
    #[argh(option, default = "2000")]
    pub shutdown_timeout_ms: u64,

    /// scheduling slack allowed on top of the server's timers, ms (default 3000)
    #[argh(option, default = "3000")]
    pub slack_ms: u64,

    /// run the attacks this many times, one round after the other, to see
    /// that the server's memory does not creep (default 1)
    #[argh(option, default = "1")]
    pub rounds: u32,

    /// hard cap on the whole run, seconds (default 150)
    #[argh(option, default = "150")]
    pub time_limit_s: u64,
}

/// Every attack, in the order they start.
pub const ALL_MODES: [Mode; 7] = [
    Mode::Slowloris,
    Mode::Random,
    Mode::Oversize,
    Mode::Fragment,
    Mode::PingFlood,
    Mode::NeverRead,
    Mode::Flood,
];

impl Args {
    pub fn to_plan(&self) -> Result<Plan, String> {
        let mut modes = Vec::new();
        for name in self
            .modes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if name == "all" {
                modes.extend(ALL_MODES);
                continue;
            }
            let mode = ALL_MODES
                .iter()
                .copied()
                .find(|m| m.name() == name)
                .ok_or_else(|| format!("unknown mode {name:?} (try: all, slowloris, random, oversize, fragment, ping-flood, never-read, flood)"))?;
            modes.push(mode);
        }
        modes.sort();
        modes.dedup();
        if self.check {
            modes.clear();
        } else if modes.is_empty() {
            return Err("--modes names no attack".into());
        }
        let q = self.quick;
        let pick = |given: Option<usize>, full: usize, quick: usize| {
            given.unwrap_or(if q { quick } else { full })
        };
        if self.slowloris_interval_ms == 0
            || self.ping_rate == 0
            || self.ping_no_read_rate == 0
            || self.never_read_rate == 0
        {
            return Err("intervals and rates must be above 0".into());
        }
        if self.fragment_rate < 1024 {
            return Err("--fragment-rate must be at least 1024 bytes a second".into());
        }
        Ok(Plan {
            url: self.url.clone(),
            modes,
            quick: q,
            server_pid: self.server_pid,
            limits: ServerLimits {
                max_connections: self.max_connections,
                max_message_bytes: self.max_message_bytes,
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                outbox_max_bytes: self.outbox_max_bytes,
                slow_consumer_grace: Duration::from_millis(self.slow_consumer_grace_ms),
                shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            },
            slack: Duration::from_millis(self.slack_ms),
            time_limit: Duration::from_secs(self.time_limit_s.max(1)),
            rounds: self.rounds.max(1),
            slowloris: Slowloris {
                sockets: pick(self.slowloris, 5000, 5000),
                interval: Duration::from_millis(self.slowloris_interval_ms),
                ramp: Duration::from_millis(2500),
            },
            random: RandomBytes {
                clients: pick(self.random, 2000, 2000),
                ramp: Duration::from_secs(if q { 3 } else { 5 }),
            },
            oversize: Oversize {
                clients: pick(self.oversize, 100, 50),
                ramp: Duration::from_secs(2),
            },
            fragment: Fragment {
                clients: pick(self.fragment, 50, 20),
                ramp: Duration::from_secs(2),
                fragment_bytes: 16 * 1024,
                bytes_per_s: self.fragment_rate,
            },
            ping_flood: PingFlood {
                readers: pick(self.ping_flood, 10, 6),
                rate: self.ping_rate,
                non_readers: self.ping_no_read,
                non_reader_rate: self.ping_no_read_rate,
                ramp: Duration::from_secs(1),
                duration: Duration::from_secs(
                    self.ping_seconds.unwrap_or(if q { 5 } else { 10 }).max(1),
                ),
            },
            never_read: NeverRead {
                clients: pick(self.never_read, 20, 10),
                ramp: Duration::from_secs(1),
                message_bytes: self.never_read_bytes,
                rate: self.never_read_rate,
            },
            flood: Flood {
                extra: pick(self.flood_extra, 1000, 500),
                concurrency: self.flood_concurrency.max(1),
                ramp: Duration::from_secs(2),
                hold: Duration::from_secs(if q { 1 } else { 3 }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        Args::from_args(&["hostile"], list).map_err(|e| e.output)
    }

    #[test]
    fn defaults_are_the_issue_counts() {
        let plan = args(&[]).unwrap().to_plan().unwrap();
        assert_eq!(plan.modes, ALL_MODES.to_vec());
        assert_eq!(plan.slowloris.sockets, 5000);
        assert_eq!(plan.random.clients, 2000);
        assert_eq!(plan.limits.max_message_bytes, 1 << 20);
        assert_eq!(plan.limits.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn modes_are_selectable() {
        let plan = args(&["--modes", "flood,oversize"])
            .unwrap()
            .to_plan()
            .unwrap();
        assert_eq!(plan.modes, vec![Mode::Oversize, Mode::Flood]);
        assert!(args(&["--modes", "bogus"]).unwrap().to_plan().is_err());
        assert!(args(&["--modes", ","]).unwrap().to_plan().is_err());
        assert!(args(&["--check"])
            .unwrap()
            .to_plan()
            .unwrap()
            .modes
            .is_empty());
    }

    #[test]
    fn quick_is_smaller_but_explicit_counts_win() {
        let plan = args(&["--quick", "--oversize", "7"])
            .unwrap()
            .to_plan()
            .unwrap();
        assert_eq!(plan.oversize.clients, 7);
        assert_eq!(plan.fragment.clients, 20);
        assert_eq!(plan.ping_flood.duration, Duration::from_secs(5));
    }
}
