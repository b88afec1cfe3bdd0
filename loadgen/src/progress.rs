//! The live progress line: one indicatif bar per scenario, updated from the
//! engine's live counters four times a second. Hidden when stderr is not a
//! terminal; `--verbose` then logs a line a second instead.

use std::collections::VecDeque;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::LiveSnapshot;

/// Formats a count with k/M suffixes.
pub fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Progress of one scenario run.
pub struct Progress {
    bar: ProgressBar,
    /// Snapshots of the last second or so: the rate is taken over that
    /// window so it does not alias with the threads' publishing period.
    recent: VecDeque<LiveSnapshot>,
    verbose: bool,
    last_log_s: u64,
    name: String,
}

impl Progress {
    pub fn new(name: &str, total: Duration, verbose: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>9} [{bar:20}] {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Progress {
            bar,
            recent: VecDeque::new(),
            verbose,
            last_log_s: 0,
            name: name.to_string(),
        }
    }

    /// Updates the line from a new snapshot.
    pub fn tick(&mut self, snap: LiveSnapshot) {
        self.recent.push_back(snap);
        while self.recent.len() > 2
            && snap.elapsed.saturating_sub(self.recent[1].elapsed) >= Duration::from_secs(1)
        {
            self.recent.pop_front();
        }
        let oldest = self.recent.front().copied().unwrap_or_default();
        let dt = (snap.elapsed.as_secs_f64() - oldest.elapsed.as_secs_f64()).max(1e-3);
        let rate = snap.received.saturating_sub(oldest.received) as f64 / dt;
        let msg = format!(
            "{} conns · {} msg/s · {} recv · {} err",
            snap.open_connections,
            human(rate),
            human(snap.received as f64),
            snap.errors
        );
        self.bar.set_position(snap.elapsed.as_millis() as u64);
        if self.verbose && self.bar.is_hidden() && snap.elapsed.as_secs() > self.last_log_s {
            self.last_log_s = snap.elapsed.as_secs();
            eprintln!("[{} {:>4}s] {msg}", self.name, self.last_log_s);
        }
        self.bar.set_message(msg);
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_suffixes() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1500.0), "1.5k");
        assert_eq!(human(2_500_000.0), "2.50M");
    }
}
