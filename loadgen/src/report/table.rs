//! The final plain-text table printed after a run.

use std::fmt::Write;

use super::Report;
use crate::progress::human;

fn ms(us: u64) -> String {
    if us >= 100_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

/// Renders one row per scenario, then the error kinds and grade reasons.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(
        out,
        "\nloadgen {} → {}  workload={} mode={}{} threads={} in_flight={} size={}B",
        report.tool.version,
        c.url,
        c.workload,
        c.mode,
        c.rate
            .map(|r| format!(
                " rate={}/s send_tick={}us",
                human(r),
                c.send_tick_us.unwrap_or(0)
            ))
            .unwrap_or_default(),
        c.threads,
        c.in_flight,
        c.message_bytes
    );
    let header = format!(
        "{:<10} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>5}",
        "scenario",
        "conns",
        "msg/s",
        "MB/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors",
        "err %",
        "conn ok",
        "grade"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    for s in &report.scenarios {
        let m = &s.summary;
        let l = &m.latency_us;
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>9} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.3} {:>7.2}% {:>5}",
            s.name,
            s.connections,
            human(m.msg_per_s),
            m.bytes_per_s / 1e6,
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            m.errors_total,
            m.error_rate * 100.0,
            m.connect.success_rate * 100.0,
            s.grade.grade.as_str()
        );
    }
    for s in &report.scenarios {
        let mut notes = Vec::new();
        if !s.summary.errors.is_empty() {
            let kinds: Vec<String> = s
                .summary
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            notes.push(format!("errors: {}", kinds.join(", ")));
        }
        if !s.grade.reasons.is_empty() {
            notes.push(format!(
                "below the next grade: {}",
                s.grade.reasons.join("; ")
            ));
        }
        notes.push(format!(
            "connect p50/p99 {} / {} ms; seed targets (P95<100ms, P99<200ms, errors<1%) {}",
            ms(s.summary.connect.time_us.p50),
            ms(s.summary.connect.time_us.p99),
            if s.grade.seed_targets_met {
                "met"
            } else {
                "MISSED"
            }
        ));
        let per_connection = &s.summary.per_connection_mean_latency_us;
        let unmeasured = s.summary.connections_without_measured_message;
        if per_connection.count > 0 || unmeasured > 0 {
            let mut line = format!(
                "per connection ({}): mean latency p50 {} / p99 {} / max {} ms; slowest {:.2}x the median",
                per_connection.count,
                ms(per_connection.p50),
                ms(per_connection.p99),
                ms(per_connection.max),
                s.summary.slowest_connection_vs_median
            );
            if unmeasured > 0 {
                line.push_str(&format!(
                    "; {unmeasured} ended without a measured message (ramp-up closes, or starved)"
                ));
            }
            notes.push(line);
        }
        let cpu: Vec<f64> = s.server.iter().filter_map(|x| x.cpu).collect();
        let mem = s.server.iter().filter_map(|x| x.memory_bytes).max();
        if !cpu.is_empty() || mem.is_some() {
            notes.push(format!(
                "server ({}): cpu avg {} max {}, memory max {}",
                s.server.first().map_or("", |x| x.source.as_str()),
                if cpu.is_empty() {
                    "n/a".into()
                } else {
                    format!("{:.0}", cpu.iter().sum::<f64>() / cpu.len() as f64)
                },
                cpu.iter()
                    .cloned()
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                    .map_or("n/a".into(), |v| format!("{v:.0}")),
                mem.map_or("n/a".into(), |m| format!("{:.1} MB", m as f64 / 1e6))
            ));
        }
        if let Some(p) = &s.pauses {
            notes.push(p.summary_line());
        }
        if let Some(t) = &s.latency_trace {
            let mut line = format!(
                "latency trace: {} messages written to {}",
                t.messages,
                report.config.latency_trace.as_deref().unwrap_or("?")
            );
            if t.dropped > 0 {
                line.push_str(&format!(
                    "; {} more not written (past the bound of {} a thread, or after the window's first 71 minutes)",
                    t.dropped,
                    crate::stats::TRACE_MESSAGES_PER_THREAD_MAX
                ));
            }
            notes.push(line);
        }
        if let Some(d) = &s.drift {
            notes.push(format!(
                "drift over the run: p99 {} → {} ms ({:+.1} %), server memory change {}",
                ms(d.p99_first_us),
                ms(d.p99_last_us),
                d.p99_change_pct,
                d.server_memory_change_bytes
                    .map(|b| format!("{:+.1} MB", b as f64 / 1e6))
                    .unwrap_or_else(|| "n/a".into())
            ));
        }
        for note in notes {
            let _ = writeln!(out, "  {:<10} {note}", s.name);
        }
    }
    if let Some(g) = report.overall_grade {
        let _ = writeln!(out, "overall grade: {}", g.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds() {
        assert_eq!(ms(1234), "1.23");
        assert_eq!(ms(250_000), "250");
    }
}
