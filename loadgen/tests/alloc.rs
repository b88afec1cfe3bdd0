//! Allocation on the hot path, measured with a counting global allocator.
//!
//! - The loadgen's own per-message work (stamp and append a pre-built frame,
//!   parse a server frame, classify it, record it) allocates nothing.
//! - A whole engine run allocates well under one allocation per message; what
//!   remains is glommio's, per wake-up (the poll on the thread's epoll set,
//!   `readiness/`, each time the set is waited for), not per message.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loadgen::engine;
use loadgen::scenario::{RunSettings, ScenarioKind, ScenarioSpec};
use loadgen::url::WsUrl;
use loadgen::workload::Workload;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the test server's threads: their allocations are not the loadgen's.
    static NOT_COUNTED: Cell<bool> = const { Cell::new(false) };
    /// Allocations made by this thread (for the sans-IO check).
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    if !NOT_COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        THREAD_ALLOCATIONS.with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        NOT_COUNTED.with(|c| c.set(true));
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                NOT_COUNTED.with(|c| c.set(true));
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("ws://{addr}/ws")
}

/// (allocations, messages received) of one run of `steady_ms`.
fn run(url: &str, workload: Workload, rate: Option<f64>, steady_ms: u64) -> (u64, u64) {
    let plan = ScenarioSpec {
        kind: ScenarioKind::Baseline,
        connections: 20,
        ramp_up: Duration::from_millis(100),
        steady: Duration::from_millis(steady_ms),
        churn_per_s: 0.0,
    }
    .plan(&RunSettings {
        url: WsUrl::parse(url).unwrap(),
        workload,
        rate,
        send_tick: Duration::from_micros(250),
        nap_max: loadgen::engine::NAP_MAX_DEFAULT,
        in_flight: 4,
        size: 64,
        group_size: loadgen::workload::GROUP_SIZE,
        threads: 1,
        run_id: 3,
        verbose: false,
    });
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let outcome = engine::run(&plan, |_| {}).unwrap();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(
        outcome.stats.errors.is_empty(),
        "{:?}",
        outcome.stats.errors
    );
    (allocations, outcome.stats.totals.received)
}

#[test]
fn per_message_work_allocates_nothing() {
    use loadgen::frame::{encode_server_frame, parse_server_frame, Opcode};
    use loadgen::stats::ThreadStats;
    use loadgen::workload::{append_worker_reply, build_template, classify, identity, Inbound};

    // Everything a connection sets up once.
    let mut templates: Vec<_> = [
        Workload::Echo,
        Workload::Ping,
        Workload::Publish,
        Workload::Anycast,
    ]
    .iter()
    .map(|&w| {
        build_template(
            &identity(w, 1, 1, loadgen::workload::GROUP_SIZE).1,
            64,
            [1, 2, 3, 4],
        )
        .unwrap()
    })
    .collect();
    let mut wbuf = Vec::with_capacity(4096);
    let mut scratch = Vec::with_capacity(256);
    let mut inbound = Vec::new();
    encode_server_frame(
        Opcode::Text,
        b"100000000001234xxxxxxxxxxxxxxxxxxxxxxxx",
        &mut inbound,
    );
    encode_server_frame(
        Opcode::Text,
        br#"{"op":"pong","t":100000000001234}"#,
        &mut inbound,
    );
    encode_server_frame(
        Opcode::Text,
        br#"{"op":"msg","id":"7","from":"lg1-2","to":null,"group":"g","priority":"normal","ts":1,"data":{"t":100000000001234}}"#,
        &mut inbound,
    );
    let mut stats = ThreadStats::new(0);
    stats.on_message(1, 1); // the first second's bucket

    let before = THREAD_ALLOCATIONS.with(Cell::get);
    let mut received = 0u64;
    for i in 0..10_000u64 {
        wbuf.clear();
        for t in templates.iter_mut() {
            t.append_stamped(i, &mut wbuf);
        }
        append_worker_reply("lg1-2", i, [1, 2, 3, 4], &mut scratch, &mut wbuf);
        stats.on_sent(i, 5, wbuf.len() as u64);
        let mut pos = 0;
        while let Some(frame) = parse_server_frame(&inbound[pos..], 1 << 20).unwrap() {
            let payload = &inbound[pos + frame.payload_start..pos + frame.payload_end];
            match classify(payload) {
                Inbound::Reply { stamp_ns } | Inbound::Deliver { stamp_ns, .. } => {
                    stats.on_message(i, i.saturating_sub(stamp_ns));
                    received += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            pos += frame.wire_len();
        }
    }
    let allocations = THREAD_ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(received, 30_000);
    assert_eq!(
        allocations, 0,
        "the per-message path allocated {allocations} times"
    );
}

fn assert_flat(workload: Workload, rate: Option<f64>) {
    let url = echo_server();
    let (short_allocs, short_msgs) = run(&url, workload, rate, 500);
    let (long_allocs, long_msgs) = run(&url, workload, rate, 2500);
    let extra_msgs = long_msgs.saturating_sub(short_msgs);
    assert!(
        extra_msgs > 1000,
        "too few messages to judge: {short_msgs} vs {long_msgs}"
    );
    // glommio allocates a poll source each time the thread's epoll set is
    // waited for (one per batch of ready sockets, often one socket in this
    // small run); the loadgen itself adds nothing per message (see above).
    let extra_allocs = long_allocs.saturating_sub(short_allocs) as f64;
    let per_message = extra_allocs / extra_msgs as f64;
    eprintln!("{workload}: {per_message:.3} allocations per message (glommio, per wake-up)");
    assert!(
        per_message < 1.0,
        "{workload}: {extra_allocs} extra allocations for {extra_msgs} extra messages ({per_message:.4} per message)"
    );
}

#[test]
fn engine_allocates_less_than_once_per_message() {
    // Closed loop keeps the executor busy. (In a mostly idle open-loop run
    // glommio's own park/unpark cycle allocates a few times per wake-up,
    // which then is per message; nothing of the loadgen's.)
    assert_flat(Workload::Echo, None);
    assert_flat(Workload::Ping, None);
}
