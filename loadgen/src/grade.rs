//! Grades A+ … F from latency, errors, connect success and throughput.
//!
//! A scenario gets the best grade whose every limit it meets. Grade C is the
//! seed's bar (P95 < 100 ms, P99 < 200 ms, errors < 1 %); B, A and A+ are our
//! stricter targets. Throughput only counts in open loop, where a target
//! rate exists: the share of the intended messages that were answered.

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// Letter grade, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grade {
    #[serde(rename = "A+")]
    APlus,
    A,
    B,
    C,
    D,
    F,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::APlus => "A+",
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
            Grade::F => "F",
        }
    }
}

/// The limits of one grade. Latencies in microseconds, rates as fractions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub grade: Grade,
    pub p95_us: u64,
    pub p99_us: u64,
    /// `None`: no P99.9 limit (`null` in JSON, where `u64::MAX` would be
    /// past what JavaScript reads exactly).
    pub p999_us: Option<u64>,
    pub max_error_rate: f64,
    pub min_connect_success: f64,
    pub min_throughput_ratio: f64,
}

const MS: u64 = 1_000;

/// Every grade's limits, best first; F is whatever misses D.
pub const LIMITS: [Limits; 5] = [
    Limits {
        grade: Grade::APlus,
        p95_us: 2 * MS,
        p99_us: 5 * MS,
        p999_us: Some(20 * MS),
        max_error_rate: 0.0001,
        min_connect_success: 0.9999,
        min_throughput_ratio: 0.99,
    },
    Limits {
        grade: Grade::A,
        p95_us: 10 * MS,
        p99_us: 25 * MS,
        p999_us: Some(100 * MS),
        max_error_rate: 0.001,
        min_connect_success: 0.999,
        min_throughput_ratio: 0.97,
    },
    Limits {
        grade: Grade::B,
        p95_us: 50 * MS,
        p99_us: 100 * MS,
        p999_us: Some(500 * MS),
        max_error_rate: 0.005,
        min_connect_success: 0.995,
        min_throughput_ratio: 0.95,
    },
    // The seed's targets.
    Limits {
        grade: Grade::C,
        p95_us: 100 * MS,
        p99_us: 200 * MS,
        p999_us: None,
        max_error_rate: 0.01,
        min_connect_success: 0.99,
        min_throughput_ratio: 0.90,
    },
    Limits {
        grade: Grade::D,
        p95_us: 500 * MS,
        p99_us: 1_000 * MS,
        p999_us: None,
        max_error_rate: 0.05,
        min_connect_success: 0.95,
        min_throughput_ratio: 0.50,
    },
];

/// What the grade is computed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradeInput {
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub error_rate: f64,
    pub connect_success: f64,
    /// Open loop: answered / intended. `None` in closed loop.
    pub throughput_ratio: Option<f64>,
    pub messages: u64,
}

impl GradeInput {
    /// Reads the figures from a summary; `intended_per_s` is the open-loop target.
    pub fn from_summary(summary: &Summary, intended_per_s: Option<f64>) -> GradeInput {
        GradeInput {
            p95_us: summary.latency_us.p95,
            p99_us: summary.latency_us.p99,
            p999_us: summary.latency_us.p999,
            error_rate: summary.error_rate,
            connect_success: summary.connect.success_rate,
            throughput_ratio: intended_per_s
                .filter(|&t| t > 0.0)
                .map(|target| summary.msg_per_s / target),
            messages: summary.messages_received,
        }
    }
}

/// The verdict for one scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradeReport {
    pub grade: Grade,
    /// Met the seed's targets: P95 < 100 ms, P99 < 200 ms, errors < 1 %.
    pub seed_targets_met: bool,
    /// Why the next better grade was missed (empty for A+).
    pub reasons: Vec<String>,
}

fn misses(limits: &Limits, input: &GradeInput) -> Vec<String> {
    let mut out = Vec::new();
    let ms = |us: u64| us as f64 / 1000.0;
    if input.p95_us > limits.p95_us {
        out.push(format!(
            "P95 {:.1} ms > {:.0} ms",
            ms(input.p95_us),
            ms(limits.p95_us)
        ));
    }
    if input.p99_us > limits.p99_us {
        out.push(format!(
            "P99 {:.1} ms > {:.0} ms",
            ms(input.p99_us),
            ms(limits.p99_us)
        ));
    }
    if let Some(limit) = limits.p999_us.filter(|limit| input.p999_us > *limit) {
        out.push(format!(
            "P99.9 {:.1} ms > {:.0} ms",
            ms(input.p999_us),
            ms(limit)
        ));
    }
    if input.error_rate > limits.max_error_rate {
        out.push(format!(
            "errors {:.3} % > {:.3} %",
            input.error_rate * 100.0,
            limits.max_error_rate * 100.0
        ));
    }
    if input.connect_success < limits.min_connect_success {
        out.push(format!(
            "connect success {:.2} % < {:.2} %",
            input.connect_success * 100.0,
            limits.min_connect_success * 100.0
        ));
    }
    if let Some(ratio) = input.throughput_ratio {
        if ratio < limits.min_throughput_ratio {
            out.push(format!(
                "throughput {:.1} % of target < {:.0} %",
                ratio * 100.0,
                limits.min_throughput_ratio * 100.0
            ));
        }
    }
    out
}

/// Grades one scenario.
pub fn grade(input: &GradeInput) -> GradeReport {
    let seed = &LIMITS[3];
    let seed_targets_met = input.messages > 0
        && input.p95_us < seed.p95_us
        && input.p99_us < seed.p99_us
        && input.error_rate < seed.max_error_rate;
    if input.messages == 0 {
        return GradeReport {
            grade: Grade::F,
            seed_targets_met,
            reasons: vec!["no message completed".into()],
        };
    }
    let mut reasons = Vec::new();
    for limits in &LIMITS {
        let missed = misses(limits, input);
        if missed.is_empty() {
            return GradeReport {
                grade: limits.grade,
                seed_targets_met,
                reasons,
            };
        }
        reasons = missed;
    }
    GradeReport {
        grade: Grade::F,
        seed_targets_met,
        reasons,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn no_p999_limit_is_null_in_json() {
        let json = serde_json::to_value(LIMITS).unwrap();
        assert_eq!(json[0]["p999_us"], 20_000);
        assert!(json[3]["p999_us"].is_null() && json[4]["p999_us"].is_null());
        // Reports written before still read (their limit was u64::MAX).
        let old: Limits = serde_json::from_str(
            r#"{"grade":"C","p95_us":1,"p99_us":2,"p999_us":18446744073709551615,
                "max_error_rate":0.01,"min_connect_success":0.99,"min_throughput_ratio":0.9}"#,
        )
        .unwrap();
        assert_eq!(old.p999_us, Some(u64::MAX));
    }

    use super::*;

    fn input(p95_ms: f64, p99_ms: f64, error_rate: f64) -> GradeInput {
        GradeInput {
            p95_us: (p95_ms * 1000.0) as u64,
            p99_us: (p99_ms * 1000.0) as u64,
            p999_us: (p99_ms * 1500.0) as u64,
            error_rate,
            connect_success: 1.0,
            throughput_ratio: None,
            messages: 1000,
        }
    }

    #[test]
    fn grades_follow_latency_tiers() {
        assert_eq!(grade(&input(0.5, 1.0, 0.0)).grade, Grade::APlus);
        assert_eq!(grade(&input(5.0, 20.0, 0.0)).grade, Grade::A);
        assert_eq!(grade(&input(40.0, 90.0, 0.0)).grade, Grade::B);
        assert_eq!(grade(&input(90.0, 190.0, 0.0)).grade, Grade::C);
        assert_eq!(grade(&input(300.0, 900.0, 0.0)).grade, Grade::D);
        assert_eq!(grade(&input(900.0, 2000.0, 0.0)).grade, Grade::F);
    }

    #[test]
    fn seed_targets_are_the_c_line() {
        let at_c = grade(&input(99.0, 199.0, 0.0099));
        assert_eq!(at_c.grade, Grade::C);
        assert!(at_c.seed_targets_met);
        let over = grade(&input(101.0, 150.0, 0.0));
        assert!(!over.seed_targets_met);
        assert_eq!(over.grade, Grade::D);
        assert!(
            over.reasons.iter().any(|r| r.contains("P95")),
            "{:?}",
            over.reasons
        );
    }

    #[test]
    fn errors_and_throughput_cap_the_grade() {
        assert_eq!(grade(&input(0.5, 1.0, 0.002)).grade, Grade::B);
        assert_eq!(grade(&input(0.5, 1.0, 0.02)).grade, Grade::D);
        assert_eq!(grade(&input(0.5, 1.0, 0.2)).grade, Grade::F);
        let mut slow = input(0.5, 1.0, 0.0);
        slow.throughput_ratio = Some(0.92);
        assert_eq!(grade(&slow).grade, Grade::C);
        let mut refused = input(0.5, 1.0, 0.0);
        refused.connect_success = 0.98;
        assert_eq!(grade(&refused).grade, Grade::D);
    }

    #[test]
    fn nothing_received_is_f() {
        let mut none = input(0.0, 0.0, 0.0);
        none.messages = 0;
        let report = grade(&none);
        assert_eq!(report.grade, Grade::F);
        assert!(!report.seed_targets_met);
    }

    #[test]
    fn grade_serializes_as_letters() {
        assert_eq!(serde_json::to_string(&Grade::APlus).unwrap(), "\"A+\"");
        assert_eq!(Grade::APlus.as_str(), "A+");
        assert!(Grade::APlus < Grade::F);
    }
}
