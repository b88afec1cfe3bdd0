//! ws-uring's load generator, grader and peer comparator.
//!
//! Modules in the order data flows through them:
//! - [`cli`]: the argh command line → a [`suite::SuiteConfig`].
//! - [`scenario`]: named scenarios (baseline … churn) → [`engine::RunPlan`]s.
//! - [`engine`]: glommio executors, one per thread, pinned; each runs its
//!   connection slots (connect, handshake, message loop) and owns its stats.
//! - [`url`], [`handshake`], [`frame`], [`workload`], [`schedule`]: sans-IO
//!   pieces the engine drives: target URL, RFC 6455 handshake and framing,
//!   what each workload sends and how answers are read, open-loop timing.
//! - [`stats`]: per-thread counters and hdrhistograms, merged after the run.
//! - [`server_metrics`]: samples the server's `/metrics.json`, if it has one.
//! - [`pauses`]: one real-time sampler thread per CPU: did the machine itself
//!   stop during the run?
//! - [`grade`]: A+ … F from latency, errors and throughput.
//! - [`report`]: final table, JSON (`--output`), HTML (`--report`).
//! - [`progress`]: the live progress line.
//! - [`suite`]: runs the chosen scenarios one after the other.

pub mod cli;
pub mod engine;
pub mod frame;
pub mod grade;
pub mod handshake;
pub mod pauses;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod server_metrics;
pub mod stats;
pub mod suite;
pub mod url;
pub mod workload;
