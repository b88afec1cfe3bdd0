//! The text table printed at the end of a run.

use std::fmt::Write;

use crate::suite::Report;
use crate::tally::Tally;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn row(out: &mut String, t: &Tally, rounds: usize) {
    let name = if rounds > 1 {
        format!("{} #{}", t.mode, t.round)
    } else {
        t.mode.clone()
    };
    let timing = if t.disconnect.count > 0 {
        format!(
            "{}/{}/{} ms",
            t.disconnect.min_ms, t.disconnect.p50_ms, t.disconnect.max_ms
        )
    } else {
        "-".to_string()
    };
    let _ = writeln!(
        out,
        "{:<20} {:>6}  {:<6} {:<18} {}",
        name,
        t.clients,
        if t.pass { "PASS" } else { "FAIL" },
        timing,
        t.outcome_line()
    );
    for failure in &t.failures {
        let _ = writeln!(out, "{:<20} {:>6}  ! {failure}", "", "");
    }
}

/// One line per attack: clients, verdict, time to disconnect
/// (min/median/max), what happened; failures underneath.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>6}  {:<6} {:<18} outcomes",
        "attack", "count", "result", "ended min/p50/max"
    );
    let rounds = report.rounds.len();
    for t in &report.attacks {
        row(&mut out, t, rounds);
    }
    row(&mut out, &report.aftermath, 1);
    for r in &report.rounds {
        if let (Some(peak), Some(end)) = (r.server_rss_peak_bytes, r.server_rss_end_bytes) {
            let _ = writeln!(
                out,
                "round {}: {:.1} s, server RSS peak {}, end {}",
                r.round,
                r.wall_ms as f64 / 1000.0,
                mib(peak),
                mib(end)
            );
        }
    }
    if let Some(rss) = report.server_rss {
        let _ = writeln!(
            out,
            "server RSS: start {}, peak {}, end {}",
            mib(rss.start_bytes),
            mib(rss.peak_bytes),
            mib(rss.end_bytes)
        );
    }
    let _ = writeln!(
        out,
        "hostile: {} in {:.1} s",
        if report.pass { "PASS" } else { "FAIL" },
        report.wall_ms as f64 / 1000.0
    );
    out
}
