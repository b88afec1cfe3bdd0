//! What each attack observed, counted, and the verdict: did the server
//! defend itself the way its documentation says?

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// How one hostile client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEnd {
    /// Stable kind: `eof`, `reset`, `http_400`, `close_1009`, `connect_timeout`…
    pub outcome: String,
    /// From the start of the attack on this connection (connected, or
    /// upgraded) to the server ending it, when it did.
    pub disconnect_ms: Option<u64>,
    /// Bytes this client got the server to accept.
    pub bytes_sent: u64,
}

impl ClientEnd {
    pub fn new(outcome: impl Into<String>) -> Self {
        ClientEnd {
            outcome: outcome.into(),
            disconnect_ms: None,
            bytes_sent: 0,
        }
    }

    pub fn after_ms(mut self, ms: u64) -> Self {
        self.disconnect_ms = Some(ms);
        self
    }

    pub fn sent(mut self, bytes: u64) -> Self {
        self.bytes_sent = bytes;
        self
    }
}

/// Minimum, median, 99th percentile and maximum of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub count: u64,
    pub min_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Spread {
    pub fn of(values: &[u64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Spread {
            count: sorted.len() as u64,
            min_ms: sorted[0],
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: sorted[sorted.len() - 1],
        }
    }
}

/// One attack's result.
#[derive(Debug, Clone, Serialize)]
pub struct Tally {
    pub mode: String,
    /// Which round of the run (1 when there is one).
    pub round: u32,
    /// What the server is documented to do, and the setting that says so.
    pub expected: String,
    pub clients: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Time from the attack's start on a connection to the server ending it.
    pub disconnect: Spread,
    pub bytes_sent: u64,
    /// Mode-specific figures (pongs received, server counters, RSS…).
    pub figures: Map<String, Value>,
    pub pass: bool,
    /// Why it did not pass (empty when it did).
    pub failures: Vec<String>,
    pub wall_ms: u64,
}

impl Tally {
    pub fn new(mode: &str, expected: impl Into<String>, ends: &[ClientEnd]) -> Tally {
        let mut outcomes = BTreeMap::new();
        let mut times = Vec::new();
        let mut bytes_sent = 0;
        for end in ends {
            *outcomes.entry(end.outcome.clone()).or_insert(0) += 1;
            if let Some(ms) = end.disconnect_ms {
                times.push(ms);
            }
            bytes_sent += end.bytes_sent;
        }
        Tally {
            mode: mode.to_string(),
            round: 1,
            expected: expected.into(),
            clients: ends.len() as u64,
            outcomes,
            disconnect: Spread::of(&times),
            bytes_sent,
            figures: Map::new(),
            pass: true,
            failures: Vec::new(),
            wall_ms: 0,
        }
    }

    /// Clients that ended with `outcome`.
    pub fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// Clients whose outcome satisfies `pred`.
    pub fn count_where(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| v)
            .sum()
    }

    /// Records a requirement; a false `ok` fails the mode with `why`.
    pub fn require(&mut self, ok: bool, why: impl Into<String>) {
        if !ok {
            self.pass = false;
            self.failures.push(why.into());
        }
    }

    /// Requires every client to have ended in one of `allowed` outcomes.
    pub fn require_only(&mut self, allowed: &[&str]) {
        let others: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, v)| format!("{v}× {k}"))
            .collect();
        self.require(
            others.is_empty(),
            format!(
                "outcomes other than {}: {}",
                allowed.join("/"),
                others.join(", ")
            ),
        );
    }

    pub fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.insert(name.to_string(), value.into());
    }

    /// `2000× http_400, 3× eof` in descending count.
    pub fn outcome_line(&self) -> String {
        let mut items: Vec<(&String, &u64)> = self.outcomes.iter().collect();
        items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        items
            .iter()
            .map(|(k, v)| format!("{v}× {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_values() {
        let v: Vec<u64> = (1..=100).collect();
        let s = Spread::of(&v);
        assert_eq!((s.count, s.min_ms, s.max_ms), (100, 1, 100));
        assert_eq!(s.p50_ms, 51);
        assert_eq!(s.p99_ms, 99);
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn requirements_fail_the_mode() {
        let ends = vec![
            ClientEnd::new("close_1009").after_ms(3),
            ClientEnd::new("close_1009").after_ms(5),
            ClientEnd::new("eof").after_ms(7).sent(10),
        ];
        let mut t = Tally::new("oversize", "1009", &ends);
        assert!(t.pass);
        assert_eq!(t.count("close_1009"), 2);
        assert_eq!(t.count_where(|k| k.starts_with("close_")), 2);
        assert_eq!(t.bytes_sent, 10);
        assert_eq!(t.outcome_line(), "2× close_1009, 1× eof");
        t.require_only(&["close_1009"]);
        assert!(!t.pass);
        assert_eq!(
            t.failures,
            vec!["outcomes other than close_1009: 1× eof".to_string()]
        );
    }
}
