//! How should a shard talk to Redis? Measures the two candidates on the
//! same Redis, the same machine, the same commands (`PUBLISH` to a channel
//! nobody listens on, so Redis does the least work and the access path is
//! what is measured):
//!
//! 1. `link`: what ws-uring uses, `ws_uring::cluster::link::Link` on a
//!    glommio executor: a glommio `TcpStream` and the `redis-protocol`
//!    RESP codec, commands queued without waiting and written as pipelined
//!    batches, replies handed back on the same thread.
//! 2. `bridge`: the `redis` crate (synchronous) on its own bridge thread,
//!    requests and replies over bounded std channels, the bridge pipelining
//!    whatever is queued. The caller here is a plain thread blocking on
//!    the reply channel: a lower bound for a shard, which would need a
//!    cross-thread wake-up on top.
//!
//! Round trip: one command at a time, p50/p99. Throughput: `N` commands
//! queued as fast as possible, completions per second.
//!
//! ```sh
//! redis-server --port 6399 --save '' &
//! cargo run --release --example redis_access_bench -- redis://127.0.0.1:6399 100000
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use ws_uring::cluster::link::{self, Link, LinkError, LinkEvents, LINK_QUEUE_MAX_OPS};
use ws_uring::cluster::RedisAddr;

const ROUND_TRIPS: usize = 20_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let addr = RedisAddr::parse(&url).expect("a redis:// URL");

    let (rtt, rate) = bench_link(&addr, n);
    report(
        "link (glommio + redis-protocol, on the shard)",
        &rtt,
        rate,
        n,
    );
    let (rtt, rate) = bench_bridge(&url, n);
    report(
        "bridge (redis crate on a thread, std channels)",
        &rtt,
        rate,
        n,
    );
}

fn report(name: &str, rtt: &[Duration], rate: f64, n: usize) {
    let mut sorted = rtt.to_vec();
    sorted.sort();
    let q = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    println!(
        "{name}: round trip p50 {:.1} us, p99 {:.1} us ({} samples); pipelined {:.0} commands/s ({n} commands)",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        sorted.len(),
        rate
    );
}

fn publish_args(i: usize) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"PUBLISH"),
        Bytes::from_static(b"wsu:bench:nobody"),
        Bytes::from(format!("payload-{i:08}-0123456789abcdef0123456789abcdef")),
    ]
}

/// The link's events: counts replies and wakes the waiting task.
struct Counter {
    done: Cell<usize>,
    waker: Cell<Option<Waker>>,
    up: Cell<bool>,
    stop: Cell<bool>,
}

impl LinkEvents<usize> for Counter {
    fn on_reply(&self, _then: usize, reply: Result<BytesFrame, LinkError>) {
        reply.expect("Redis answered");
        self.done.set(self.done.get() + 1);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    fn on_link_up(&self) {
        self.up.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    fn on_link_down(&self) {}
    fn stopping(&self) -> bool {
        self.stop.get()
    }
}

impl Counter {
    async fn until(&self, f: impl Fn(&Counter) -> bool) {
        futures_lite::future::poll_fn(|cx| {
            if f(self) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

fn bench_link(addr: &RedisAddr, n: usize) -> (Vec<Duration>, f64) {
    let addr = addr.clone();
    let sock = addr.resolve().expect("Redis resolves");
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .expect("an io_uring executor");
    executor.run(async move {
        let link: Rc<Link<usize>> = Link::new();
        let counter = Rc::new(Counter {
            done: Cell::new(0),
            waker: Cell::new(None),
            up: Cell::new(false),
            stop: Cell::new(false),
        });
        glommio::spawn_local(link::run_link(
            link.clone(),
            counter.clone(),
            addr,
            sock,
            "bench".into(),
        ))
        .detach();
        counter.until(|c| c.up.get()).await;

        let rtt = RefCell::new(Vec::with_capacity(ROUND_TRIPS));
        for i in 0..ROUND_TRIPS {
            let before = counter.done.get();
            let t = Instant::now();
            link.command(publish_args(i), i).expect("queued");
            counter.until(|c| c.done.get() > before).await;
            rtt.borrow_mut().push(t.elapsed());
        }

        let start_done = counter.done.get();
        let t = Instant::now();
        let mut queued = 0;
        while queued < n {
            while queued < n && link.queued() < LINK_QUEUE_MAX_OPS {
                link.command(publish_args(queued), queued).expect("queued");
                queued += 1;
            }
            let target = start_done + queued;
            counter
                .until(|c| {
                    c.done.get() + LINK_QUEUE_MAX_OPS / 2 >= target || c.done.get() >= target
                })
                .await;
        }
        counter.until(|c| c.done.get() >= start_done + n).await;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        counter.stop.set(true);
        (rtt.into_inner(), rate)
    })
}

type Request = (Vec<Bytes>, mpsc::SyncSender<i64>);

fn bench_bridge(url: &str, n: usize) -> (Vec<Duration>, f64) {
    let client = redis::Client::open(url).expect("a redis:// URL");
    let mut conn = client.get_connection().expect("connect");
    let (tx, rx) = mpsc::sync_channel::<Request>(LINK_QUEUE_MAX_OPS);
    let bridge = std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < link::LINK_BATCH_MAX_OPS {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for (args, _) in &batch {
                let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
                for a in &args[1..] {
                    cmd.arg(&a[..]);
                }
                pipe.add_command(cmd);
            }
            let replies: Vec<i64> = pipe.query(&mut conn).expect("Redis answered");
            for ((_, reply_tx), reply) in batch.into_iter().zip(replies) {
                let _ = reply_tx.send(reply);
            }
        }
    });

    let (reply_tx, reply_rx) = mpsc::sync_channel::<i64>(LINK_QUEUE_MAX_OPS);
    let mut rtt = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let t = Instant::now();
        tx.send((publish_args(i), reply_tx.clone())).unwrap();
        reply_rx.recv().unwrap();
        rtt.push(t.elapsed());
    }
    let t = Instant::now();
    let producer = {
        let tx = tx.clone();
        let reply_tx = reply_tx.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                tx.send((publish_args(i), reply_tx.clone())).unwrap();
            }
        })
    };
    for _ in 0..n {
        reply_rx.recv().unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    producer.join().unwrap();
    drop(tx);
    bridge.join().unwrap();
    (rtt, rate)
}
