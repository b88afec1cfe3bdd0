//! End-to-end runs of the engine against in-process servers on 127.0.0.1.

mod support;

use std::time::Duration;

use loadgen::engine::{self, RunPlan};
use loadgen::scenario::{RunSettings, ScenarioKind, ScenarioSpec};
use loadgen::stats::ThreadStats;
use loadgen::url::WsUrl;
use loadgen::workload::Workload;

fn plan(
    url: &str,
    workload: Workload,
    connections: usize,
    steady_ms: u64,
    rate: Option<f64>,
) -> RunPlan {
    let spec = ScenarioSpec {
        kind: ScenarioKind::Baseline,
        connections,
        ramp_up: Duration::from_millis(300),
        steady: Duration::from_millis(steady_ms),
        churn_per_s: 0.0,
    };
    let mut plan = spec.plan(&RunSettings {
        url: WsUrl::parse(url).unwrap(),
        workload,
        rate,
        send_tick: Duration::from_micros(250),
        nap_max: loadgen::engine::NAP_MAX_DEFAULT,
        in_flight: 2,
        size: 64,
        group_size: loadgen::workload::GROUP_SIZE,
        threads: 2,
        run_id: 42,
        verbose: false,
    });
    plan.grace = Duration::from_millis(500);
    plan
}

/// One engine run at a time: each saturates the machine's two cores, and
/// parallel tests would only measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(plan: &RunPlan) -> ThreadStats {
    run_timed(plan).0
}

/// `run`, and how long the run took: timed once this test holds `SERIAL`,
/// so the wait for another test's run does not count.
fn run_timed(plan: &RunPlan) -> (ThreadStats, Duration) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let stats = engine::run(plan, |_| {}).expect("engine runs").stats;
    (stats, started.elapsed())
}

fn assert_clean(stats: &ThreadStats, connections: u64) {
    assert_eq!(
        stats.connects_succeeded, connections,
        "errors: {:?}",
        stats.errors
    );
    assert!(stats.errors.is_empty(), "errors: {:?}", stats.errors);
    assert!(
        stats.measured.received > 100,
        "received {}",
        stats.measured.received
    );
    assert!(stats.latency.len() > 100);
}

#[test]
fn closed_loop_echo_50_connections_has_no_errors() {
    let server = support::echo_server();
    let stats = run(&plan(&server.url(), Workload::Echo, 50, 1500, None));
    assert_clean(&stats, 50);
    let summary = stats.summary(1.5);
    assert!(summary.msg_per_s > 100.0, "{summary:?}");
    assert!(summary.bytes_per_s > 0.0);
    assert!(summary.latency_us.p50 > 0);
    // Every connection reports its own mean.
    let per_connection = summary.per_connection_mean_latency_us;
    assert_eq!(per_connection.count, 50, "{per_connection:?}");
    assert_eq!(summary.connections_without_measured_message, 0);
    // Closed loop: everything sent was answered (2 in flight × 50 at most lost to the cut-off).
    assert!(stats.totals.sent - stats.totals.received <= 100);
}

#[test]
fn the_latency_trace_holds_every_measured_message_of_every_connection() {
    let server = support::echo_server();
    let mut plan = plan(&server.url(), Workload::Echo, 20, 800, None);
    plan.latency_trace = true;
    let stats = run(&plan);
    assert_clean(&stats, 20);
    let trace = stats.trace.expect("a trace was asked for").sorted();
    assert_eq!(trace.dropped, 0);
    assert_eq!(trace.entries.len() as u64, stats.measured.received);
    assert_eq!(trace.entries.len() as u64, stats.latency.len());
    let window_us = (plan.duration - plan.measure_from).as_micros() as u32;
    let grace_us = plan.grace.as_micros() as u32;
    assert!(trace.entries.last().unwrap().at_us <= window_us + grace_us);
    let mut seen = [false; 20];
    for e in &trace.entries {
        seen[e.connection as usize] = true;
        assert!(e.latency_us as u64 >= stats.latency.min());
        assert!(e.latency_us as u64 <= stats.latency.max());
    }
    assert!(seen.iter().all(|s| *s), "every connection traced: {seen:?}");
    // Without the flag there is none.
    let untraced = run(&self::plan(&server.url(), Workload::Echo, 5, 300, None));
    assert!(untraced.trace.is_none());
}

#[test]
fn ping_workload_against_plain_echo_server() {
    // An echo server returns the ping command itself, which counts as the answer.
    let server = support::echo_server();
    let stats = run(&plan(&server.url(), Workload::Ping, 50, 1000, None));
    assert_clean(&stats, 50);
}

#[test]
fn open_loop_keeps_the_intended_rate() {
    let server = support::echo_server();
    let stats = run(&plan(&server.url(), Workload::Echo, 50, 1500, Some(2000.0)));
    assert_clean(&stats, 50);
    let rate = stats.summary(1.5).msg_per_s;
    // Loose bounds: a busy CI machine delays timers, never adds messages.
    assert!((1400.0..2200.0).contains(&rate), "open loop rate {rate}");
}

#[test]
fn long_naps_make_neither_sends_nor_connects_late() {
    // Threads that may nap 100 ms at a time: a send timer or a connect that
    // waited for glommio's reactor would be up to that late, a median of
    // tens of ms. Send times are `ReadyTimer`s (a nap ends at the earliest)
    // and a connect holds naps off.
    let server = support::echo_server();
    let mut plan = plan(&server.url(), Workload::Echo, 20, 1500, Some(400.0));
    plan.nap_max = Duration::from_millis(100);
    let stats = run(&plan);
    assert_clean(&stats, 20);
    let summary = stats.summary(1.5);
    assert!(
        summary.latency_us.p50 < 10_000,
        "send timers waited for naps: latency {:?}",
        summary.latency_us
    );
    assert!(
        summary.connect.time_us.p50 < 10_000,
        "connects waited for naps: {:?}",
        summary.connect.time_us
    );
}

#[test]
fn dropped_connections_are_counted_as_errors() {
    let server = support::dropping_echo_server(20);
    let stats = run(&plan(&server.url(), Workload::Echo, 50, 1000, None));
    let dropped: u64 = ["eof", "reset", "broken_pipe"]
        .iter()
        .map(|k| stats.errors.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(dropped >= 50, "errors: {:?}", stats.errors);
    assert!(
        stats.errors.get("lost_in_flight").copied().unwrap_or(0) > 0,
        "{:?}",
        stats.errors
    );
    // Slots reconnect after a drop.
    assert!(stats.connects_attempted > 50);
    let summary = stats.summary(1.0);
    assert!(summary.error_rate > 0.0);
    // Each connection a slot opened is counted once when it ends.
    let ended =
        summary.per_connection_mean_latency_us.count + summary.connections_without_measured_message;
    assert!(
        ended > 50 && ended <= stats.connects_succeeded,
        "{ended} of {}",
        stats.connects_succeeded
    );
}

#[test]
fn connection_refused_is_counted() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stats = run(&plan(
        &format!("ws://{addr}/ws"),
        Workload::Echo,
        5,
        500,
        None,
    ));
    assert_eq!(stats.connects_succeeded, 0);
    assert!(
        stats.errors.get("connect_refused").copied().unwrap_or(0) >= 5,
        "{:?}",
        stats.errors
    );
}

#[test]
fn a_server_that_never_answers_cannot_hold_the_run_past_its_hard_stop() {
    // The kernel completes TCP connects to a listener that never accepts:
    // every slot then waits for a WebSocket handshake that never comes
    // (CONNECT_TIMEOUT, 10 s). The thread's hard stop (end + 3 × grace)
    // cancels them long before.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let plan = plan(&format!("ws://{addr}/ws"), Workload::Echo, 5, 500, None);
    let hard_stop = plan.duration + 3 * plan.grace;
    assert!(hard_stop + Duration::from_secs(3) < engine::CONNECT_TIMEOUT);
    let (stats, took) = run_timed(&plan);
    assert!(
        took < hard_stop + Duration::from_secs(3),
        "the run took {took:?}; hard stop at {hard_stop:?}"
    );
    assert_eq!(stats.connects_succeeded, 0, "{:?}", stats.errors);
    drop(listener);
}

#[test]
fn direct_publish_and_anycast_against_protocol_model() {
    let server = support::protocol_server();
    for workload in [
        Workload::Ping,
        Workload::Direct,
        Workload::Publish,
        Workload::Anycast,
    ] {
        let stats = run(&plan(&server.url(), workload, 20, 1200, None));
        assert_eq!(
            stats.connects_succeeded, 20,
            "{workload}: {:?}",
            stats.errors
        );
        assert!(stats.errors.is_empty(), "{workload}: {:?}", stats.errors);
        assert!(
            stats.measured.received > 50,
            "{workload}: received {}",
            stats.measured.received
        );
        // Every connection that times messages has a mean (anycast workers
        // only answer, and are left out rather than counted as unmeasured).
        let summary = stats.summary(1.2);
        assert!(
            summary.per_connection_mean_latency_us.count > 0,
            "{workload}"
        );
        assert_eq!(
            summary.connections_without_measured_message, 0,
            "{workload}: {:?}",
            summary.per_connection_mean_latency_us
        );
    }
}

#[test]
fn publish_fans_out_to_the_group() {
    let server = support::protocol_server();
    let stats = run(&plan(
        &server.url(),
        Workload::Publish,
        20,
        1000,
        Some(200.0),
    ));
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    // Each publish reaches the 10 members of its group (the sender included).
    let ratio = stats.totals.received as f64 / stats.totals.sent as f64;
    assert!(ratio > 8.0 && ratio <= 10.0, "fan-out ratio {ratio}");
}
