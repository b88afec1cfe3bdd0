//! One shard: a glommio executor pinned to a core that owns its listener,
//! its connections and their timers. Shards share nothing mutable; they talk
//! over the channel mesh (`mesh.rs`). Everything here is `Rc`/`Cell`: it
//! never leaves the shard's thread.

pub mod mesh;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpListener;
use glommio::timer::Timer;

use crate::config::Config;
use crate::conn::liveness::{LivenessAction, LivenessRules};
use crate::conn::ConnHandle;
use crate::registry::Registry;
use mesh::{MeshMsg, ShardHealth};

/// The shard's read buffer size: every connection reads through it.
pub const SHARD_RX_BUFFER_BYTES: usize = 64 * 1024;
/// How long `/health` waits for the other shards' answers.
pub const HEALTH_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often shard 0 looks at the signal flag.
const SIGNAL_POLL_PERIOD: Duration = Duration::from_millis(20);

/// What the server hands a shard thread at start-up (all `Send`).
pub struct ShardStart {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub listener: OwnedFd,
    pub mesh: MeshBuilder<MeshMsg, Full>,
    /// Set by SIGINT/SIGTERM; shard 0 watches it and tells the others.
    pub shutdown_flag: Arc<AtomicBool>,
    pub started_at: Instant,
    /// Told this shard's mesh id once it accepts connections.
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
}

/// Counters this shard owns (read by `/health`; the metrics issue adds more).
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub connections_opened: Cell<u64>,
    pub connections_closed: Cell<u64>,
    pub stale_closed: Cell<u64>,
}

/// Everything one shard owns.
pub struct ShardState {
    pub id: usize,
    pub shard_count: usize,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub started_at: Instant,
    pub counters: ShardCounters,
    /// One receive buffer for all connections: a read is copied out of it
    /// before the task yields, so idle connections hold no read buffer.
    pub rx_buffer: RefCell<Vec<u8>>,
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    shutting_down: Cell<bool>,
    shutdown_wakers: RefCell<Vec<Waker>>,
    mesh: Senders<MeshMsg>,
    health_waiters: RefCell<HashMap<u64, LocalSender<ShardHealth>>>,
    next_request_id: Cell<u64>,
}

impl ShardState {
    fn new(start: &ShardStart, mesh: Senders<MeshMsg>) -> Self {
        ShardState {
            id: mesh.peer_id(),
            shard_count: mesh.nr_consumers(),
            config: start.config.clone(),
            registry: start.registry.clone(),
            started_at: start.started_at,
            counters: ShardCounters::default(),
            rx_buffer: RefCell::new(vec![0; SHARD_RX_BUFFER_BYTES]),
            conns: RefCell::new(HashMap::new()),
            shutting_down: Cell::new(false),
            shutdown_wakers: RefCell::new(Vec::new()),
            mesh,
            health_waiters: RefCell::new(HashMap::new()),
            next_request_id: Cell::new(0),
        }
    }

    /// Adds an upgraded connection to this shard's table.
    pub fn add_conn(&self, handle: Rc<ConnHandle>) {
        self.counters
            .connections_opened
            .set(self.counters.connections_opened.get() + 1);
        if self.shutting_down.get() {
            handle.raise_shutdown();
        }
        self.conns.borrow_mut().insert(handle.id, handle);
    }

    /// Removes a closed connection.
    pub fn remove_conn(&self, conn_id: u64, stale: bool) {
        if self.conns.borrow_mut().remove(&conn_id).is_some() {
            self.counters
                .connections_closed
                .set(self.counters.connections_closed.get() + 1);
            if stale {
                self.counters
                    .stale_closed
                    .set(self.counters.stale_closed.get() + 1);
            }
        }
        self.registry.remove(conn_id);
    }

    /// Live connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Stops accepting and asks every connection to close with 1001.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        log::debug!("shard {}: shutting down", self.id);
        for handle in self.conns.borrow().values() {
            handle.raise_shutdown();
        }
        for waker in self.shutdown_wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        future::poll_fn(|cx| {
            if self.shutting_down.get() {
                return Poll::Ready(());
            }
            // The accept loop polls this once per accepted connection:
            // keep one waker per waiting task, not one per poll.
            let mut wakers = self.shutdown_wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn local_health(&self) -> ShardHealth {
        ShardHealth {
            connections: self.connection_count() as u64,
            stale_closed: self.counters.stale_closed.get(),
        }
    }

    /// Health summed over every shard, asked over the mesh. Shards that do
    /// not answer within `HEALTH_QUERY_TIMEOUT` are counted as missing.
    pub async fn cluster_health(&self) -> mesh::ClusterHealth {
        let mut total = mesh::ClusterHealth {
            shards: self.shard_count,
            shards_answered: 1,
            health: self.local_health(),
        };
        if self.shard_count == 1 {
            return total;
        }
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id + 1);
        let (tx, rx) = glommio::channels::local_channel::new_bounded(self.shard_count);
        self.health_waiters.borrow_mut().insert(request_id, tx);
        for peer in (0..self.shard_count).filter(|p| *p != self.id) {
            let query = MeshMsg::HealthQuery {
                from: self.id,
                request_id,
            };
            if self.mesh.send_to(peer, query).await.is_err() {
                log::warn!("shard {}: health query to shard {peer} failed", self.id);
            }
        }
        let collect = async {
            while total.shards_answered < self.shard_count {
                match rx.recv().await {
                    Some(h) => {
                        total.health.add(&h);
                        total.shards_answered += 1;
                    }
                    None => break,
                }
            }
        };
        future::or(collect, async {
            Timer::new(HEALTH_QUERY_TIMEOUT).await;
        })
        .await;
        self.health_waiters.borrow_mut().remove(&request_id);
        total
    }

    /// Handles one message from another shard.
    fn on_mesh(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Shutdown => self.begin_shutdown(),
            MeshMsg::HealthQuery { from, request_id } => {
                let reply = MeshMsg::HealthReply {
                    request_id,
                    health: self.local_health(),
                };
                // Sent from its own task so a full channel to `from` never
                // stalls this shard's receive loop.
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let _ = shard.mesh.send_to(from, reply).await;
                })
                .detach();
            }
            MeshMsg::HealthReply { request_id, health } => {
                if let Some(tx) = self.health_waiters.borrow().get(&request_id) {
                    let _ = tx.try_send(health);
                }
            }
        }
    }

    /// Tells every other shard to shut down.
    async fn broadcast_shutdown(&self) {
        for peer in (0..self.shard_count).filter(|p| *p != self.id) {
            let _ = self.mesh.send_to(peer, MeshMsg::Shutdown).await;
        }
    }

    /// Pings quiet connections and closes silent ones, on one timer for the
    /// whole shard instead of one per connection.
    async fn sweep_liveness(self: Rc<Self>) {
        let rules = LivenessRules {
            ping_interval: Duration::from_millis(self.config.ping_interval_ms),
            idle_timeout: Duration::from_millis(self.config.idle_timeout_ms),
        };
        let period = rules.sweep_period();
        while !self.shutting_down.get() {
            Timer::new(period).await;
            let now = Instant::now();
            for handle in self.conns.borrow().values() {
                match rules.check(now, handle.last_rx(), handle.last_ping()) {
                    LivenessAction::Nothing => {}
                    LivenessAction::Ping => handle.raise_ping(now),
                    LivenessAction::CloseIdle => handle.raise_idle(),
                }
            }
        }
    }
}

/// The shard's life: join the mesh, serve until shutdown, drain, return.
pub async fn run(start: ShardStart) {
    let (senders, mut receivers) = match start.mesh.clone().join().await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = start
                .ready
                .send(Err(format!("cannot join the shard mesh: {e}")));
            return;
        }
    };
    let shard = Rc::new(ShardState::new(&start, senders));

    for (_peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.on_mesh(msg);
            }
        })
        .detach();
    }
    glommio::spawn_local(shard.clone().sweep_liveness()).detach();
    if shard.id == 0 {
        let shard = shard.clone();
        let flag = start.shutdown_flag.clone();
        glommio::spawn_local(async move {
            while !flag.load(Ordering::Acquire) && !shard.is_shutting_down() {
                Timer::new(SIGNAL_POLL_PERIOD).await;
            }
            log::info!("shutdown requested: closing connections");
            shard.begin_shutdown();
            shard.broadcast_shutdown().await;
        })
        .detach();
    }

    // SAFETY: the fd is a listening TCP socket made by the server for this
    // shard alone; ownership moves into the glommio listener.
    let listener = unsafe {
        use std::os::fd::FromRawFd;
        TcpListener::from_raw_fd(start.listener.into_raw_fd())
    };
    let _ = start.ready.send(Ok(shard.id));
    accept_until_shutdown(&shard, &listener).await;
    drop(listener);

    // Wait for connections to finish their close handshakes, bounded.
    let deadline = Instant::now()
        + Duration::from_millis(shard.config.shutdown_timeout_ms)
        + Duration::from_millis(500);
    while shard.connection_count() > 0 && Instant::now() < deadline {
        Timer::new(Duration::from_millis(10)).await;
    }
    if shard.connection_count() > 0 {
        log::warn!(
            "shard {}: {} connections did not close in time; dropping them",
            shard.id,
            shard.connection_count()
        );
    }
    log::debug!("shard {} stopped", shard.id);
}

async fn accept_until_shutdown(shard: &Rc<ShardState>, listener: &TcpListener) {
    enum Next {
        Accepted(glommio::Result<glommio::net::TcpStream, ()>),
        Shutdown,
    }
    let mut last_error_log: Option<Instant> = None;
    loop {
        let next = future::or(async { Next::Accepted(listener.accept().await) }, async {
            shard.shutdown_started().await;
            Next::Shutdown
        })
        .await;
        match next {
            Next::Shutdown => return,
            Next::Accepted(Ok(stream)) => {
                let task = crate::conn::serve(shard.clone(), stream);
                log::trace!("connection task: {} bytes", std::mem::size_of_val(&task));
                glommio::spawn_local(task).detach();
            }
            Next::Accepted(Err(e)) => {
                // Out of descriptors or memory: back off instead of spinning,
                // and say so at most once a second.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    log::warn!(
                        "shard {}: accept failed: {e} (check `ulimit -n` against max_connections)",
                        shard.id
                    );
                    last_error_log = Some(Instant::now());
                }
                Timer::new(Duration::from_millis(10)).await;
            }
        }
    }
}
