//! One shard: a glommio executor pinned to a core that owns its listener,
//! its connections and their timers. Shards share nothing mutable; they talk
//! over the channel mesh (`mesh.rs`). Everything here is `Rc`/`Cell`: it
//! never leaves the shard's thread.

pub mod cluster;
pub mod mesh;
pub mod messaging;
pub mod observe;
pub mod outgoing;
mod persistence;
mod reliable;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::LocalSender;
use glommio::timer::Timer;

use crate::config::Config;
use crate::conn::liveness::{LivenessAction, LivenessRules};
use crate::conn::ConnHandle;
use crate::conn::{ReadyListener, ReadyStream};
use crate::registry::Registry;
use crate::routing::Directory;
use mesh::{MeshMsg, ShardHealth};
use messaging::MessagingState;
use outgoing::Outgoing;

/// The shard's read buffer size: every connection reads through it.
pub const SHARD_RX_BUFFER_BYTES: usize = 64 * 1024;
/// How long `/health` waits for the other shards' answers.
pub const HEALTH_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often shard 0 looks at the signal flag.
const SIGNAL_POLL_PERIOD: Duration = Duration::from_millis(20);
/// Longest a shard waits at start-up for its hand-offs of restored mailbox
/// messages to be confirmed before it takes connections anyway.
const HANDOFF_WAIT_MAX: Duration = Duration::from_secs(30);
/// Accepts between two yields of the accept loop (an accept returns at
/// once while the backlog has connections).
const ACCEPTS_BETWEEN_YIELDS: usize = 32;

/// What the server hands a shard thread at start-up (all `Send`).
pub struct ShardStart {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub listener: OwnedFd,
    pub mesh: MeshBuilder<MeshMsg, Full>,
    /// Each shard's doorbell, by mesh id, set by the shard once it joined
    /// the mesh (if it naps): its peers ring it after each batch they send.
    pub doorbells: Doorbells,
    /// Set by SIGINT/SIGTERM; shard 0 watches it and tells the others.
    pub shutdown_flag: Arc<AtomicBool>,
    pub started_at: Instant,
    /// Unix time of start-up, in ms: part of every message id.
    pub boot_unix_ms: u64,
    /// Custom processors (shared, read-only).
    pub processors: Arc<crate::processor::Processors>,
    /// Resource figures from the sampler thread (read by shard 0).
    pub resources: Option<observe::SharedResources>,
    /// Where shard 0 sends each interval's figures for `--metrics-export`.
    pub export_tx: Option<std::sync::mpsc::Sender<observe::ExportLine>>,
    /// Terminates TLS when `tls_cert`/`tls_key` are set (shared config).
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// The per-IP new-connection budget every shard shares.
    pub ip_limiter: Option<Arc<crate::conn::ip_limit::IpConnectionLimiter>>,
    /// Told this shard's mesh id once it accepts connections.
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
    /// Cluster mode: the node id and where Redis is.
    pub cluster: Option<Arc<cluster::ClusterStart>>,
}

/// The shards' doorbells by mesh id (see `ShardStart::doorbells`).
pub type Doorbells = Arc<[std::sync::OnceLock<Arc<ws_uring_readiness::Doorbell>>]>;

/// Where the answers to a request this shard waits on arrive, by request id.
type Waiters<T> = RefCell<HashMap<u64, LocalSender<T>>>;

type MetricsAnswer = (
    Box<crate::metrics::ShardSnapshot>,
    Option<Box<observe::MetricsView>>,
);

/// Counters this shard owns (read by `/health`; the metrics issue adds more).
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub connections_opened: Cell<u64>,
    pub connections_closed: Cell<u64>,
    pub stale_closed: Cell<u64>,
    pub slow_consumers_closed: Cell<u64>,
}

/// Everything one shard owns.
pub struct ShardState {
    pub id: usize,
    pub shard_count: usize,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub started_at: Instant,
    pub counters: ShardCounters,
    /// Custom processors, shared by all shards (immutable after start).
    pub processors: Arc<crate::processor::Processors>,
    /// Checks tokens when `auth_secret` is set.
    pub auth: Option<crate::auth::Authenticator>,
    /// Browser origins allowed to upgrade (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Terminates TLS when configured.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// The per-IP new-connection budget (shared by every shard).
    pub ip_limiter: Option<Arc<crate::conn::ip_limit::IpConnectionLimiter>>,
    /// This shard's metrics: counters, gauges, histograms.
    pub metrics: crate::metrics::ShardMetrics,
    metrics_waiters: Waiters<MetricsAnswer>,
    connections_waiters: Waiters<Vec<mesh::ConnectionView>>,
    /// Shard 0 only: interval rates, alerts, export.
    interval: RefCell<Option<observe::IntervalState>>,
    resources: Option<observe::SharedResources>,
    export_tx: Option<std::sync::mpsc::Sender<observe::ExportLine>>,
    /// One receive buffer for all connections: a read is copied out of it
    /// before the task yields, so idle connections hold no read buffer.
    pub rx_buffer: RefCell<Vec<u8>>,
    conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    shutting_down: Cell<bool>,
    shutdown_wakers: RefCell<Vec<Waker>>,
    mesh: Rc<Senders<MeshMsg>>,
    outgoing: Rc<Outgoing>,
    /// The users and groups this shard is home to.
    directory: RefCell<Directory>,
    messaging: RefCell<MessagingState>,
    /// Start-up time in base 36, the prefix of this run's message ids.
    boot_id: String,
    /// Acks, mailboxes, schedules, DLQ of the names this shard is home to.
    reliable: RefCell<crate::delivery::ReliableState>,
    /// When the timer task plans to look next (unix ms; MAX: not sleeping).
    timer_wake_at: Cell<u64>,
    timer_woken: Cell<bool>,
    timer_waker: Cell<Option<Waker>>,
    dlq_waiters: Waiters<reliable::DlqAnswer>,
    /// When logged changes count as durable.
    fsync: crate::store::FsyncMode,
    /// Journal records written (and synced per `fsync`) so far.
    durable_lsn: Cell<u64>,
    durable_waiters: RefCell<persistence::DurableWaiters>,
    wal_waker: Cell<Option<Waker>>,
    wal_closing: Cell<bool>,
    wal_done: Cell<bool>,
    /// Set while the log cannot be written (disk full, I/O error): new
    /// commands that would be stored are refused meanwhile.
    wal_failure: RefCell<Option<persistence::WalFailure>>,
    /// When a log write error was last logged (rate limit across failures).
    wal_error_logged_at: Cell<Option<Instant>>,
    health_waiters: Waiters<ShardHealth>,
    /// Cluster mode: this shard's Redis link and cluster chores.
    cluster: Option<cluster::ClusterShard>,
    /// Restored mailbox messages still to hand to their users' homes.
    handoffs: RefCell<std::collections::VecDeque<(String, crate::delivery::mailbox::Waiting)>>,
    /// Hand-offs sent and not yet confirmed by the home.
    handoffs_in_flight: Cell<usize>,
    /// Quiet connections resting without a task (`hibernate_after_ms` > 0).
    pub hibernation: Option<crate::conn::hibernate::Hibernation>,
    /// Liveness sweeps so far: the coarse clock of `ConnHandle::data_at_tick`.
    sweep_tick: Cell<u32>,
    /// Sweeps without data after which a connection hibernates (0: never).
    hibernate_after_ticks: u32,
}

impl ShardState {
    /// Lets the readiness driver nap (`nap_max_us`; readiness crate docs)
    /// and publishes this shard's doorbell for its peers' pumps to ring. A
    /// shard that cannot make a doorbell does not nap: its mesh messages
    /// would wait for its naps to end.
    fn enable_naps(&self, doorbells: &Doorbells) {
        if self.config.nap_max_us == 0 {
            return;
        }
        if self.cluster.is_some() {
            // The Redis links are glommio streams: their replies would wait
            // for naps to end.
            log::debug!("shard {}: no naps in cluster mode", self.id);
            return;
        }
        let nap_max = Duration::from_micros(self.config.nap_max_us);
        let doorbell = match ws_uring_readiness::Doorbell::new() {
            Ok(bell) => bell,
            Err(e) => {
                log::warn!("shard {}: naps stay off: no doorbell ({e})", self.id);
                return;
            }
        };
        let _ = doorbells[self.id].set(doorbell.clone());
        if let Err(e) = ws_uring_readiness::enable_naps(nap_max, Some(doorbell)) {
            log::warn!("shard {}: naps stay off ({e})", self.id);
        }
    }

    fn new(start: &ShardStart, mesh: Senders<MeshMsg>) -> Self {
        let shard_count = mesh.nr_consumers();
        let mesh_id = mesh.peer_id();
        ShardState {
            id: mesh_id,
            shard_count,
            config: start.config.clone(),
            registry: start.registry.clone(),
            started_at: start.started_at,
            counters: ShardCounters::default(),
            processors: start.processors.clone(),
            allowed_origins: start.config.allowed_origins(),
            tls: start.tls.clone(),
            ip_limiter: start.ip_limiter.clone(),
            auth: (!start.config.auth_secret.is_empty())
                .then(|| crate::auth::Authenticator::new(&start.config.auth_secret)),
            metrics: if start.config.metrics {
                crate::metrics::ShardMetrics::new()
            } else {
                crate::metrics::ShardMetrics::disabled()
            },
            metrics_waiters: RefCell::new(HashMap::new()),
            connections_waiters: RefCell::new(HashMap::new()),
            interval: RefCell::new(None),
            resources: start.resources.clone(),
            export_tx: start.export_tx.clone(),
            rx_buffer: RefCell::new(vec![0; SHARD_RX_BUFFER_BYTES]),
            conns: RefCell::new(HashMap::new()),
            shutting_down: Cell::new(false),
            shutdown_wakers: RefCell::new(Vec::new()),
            mesh: Rc::new(mesh),
            outgoing: Outgoing::new(shard_count),
            directory: RefCell::new(Directory::default()),
            messaging: RefCell::new(MessagingState::default()),
            // Cluster mode: the node id keeps ids unique across nodes.
            boot_id: match &start.cluster {
                Some(c) => format!("{}-{}", base36(start.boot_unix_ms), c.node),
                None => base36(start.boot_unix_ms),
            },
            reliable: RefCell::new(crate::delivery::ReliableState::new(
                crate::delivery::ReliableConfig {
                    ack_timeout_ms: start.config.ack_timeout_ms,
                    max_retries: start.config.max_retries,
                    mailbox_max_msgs: start.config.mailbox_max_msgs,
                    dlq_max_msgs: start.config.dlq_max_msgs,
                },
            )),
            timer_wake_at: Cell::new(u64::MAX),
            timer_woken: Cell::new(false),
            timer_waker: Cell::new(None),
            dlq_waiters: RefCell::new(HashMap::new()),
            fsync: crate::store::FsyncMode::parse(&start.config.fsync)
                .expect("validated in Config::resolve"),
            durable_lsn: Cell::new(0),
            durable_waiters: RefCell::new(persistence::DurableWaiters::default()),
            wal_waker: Cell::new(None),
            wal_closing: Cell::new(false),
            wal_done: Cell::new(true),
            wal_failure: RefCell::new(None),
            wal_error_logged_at: Cell::new(None),
            health_waiters: RefCell::new(HashMap::new()),
            cluster: start.cluster.clone().map(cluster::ClusterShard::new),
            handoffs: RefCell::new(std::collections::VecDeque::new()),
            handoffs_in_flight: Cell::new(0),
            hibernation: (start.config.hibernate_after_ms > 0)
                .then(crate::conn::hibernate::Hibernation::default),
            sweep_tick: Cell::new(0),
            hibernate_after_ticks: hibernate_after_ticks(&start.config),
        }
    }

    /// The current liveness sweep count (see `ConnHandle::data_at_tick`).
    pub fn sweep_tick(&self) -> u32 {
        self.sweep_tick.get()
    }

    /// Whether `handle` has had no data for `hibernate_after_ms` and may
    /// hibernate.
    pub fn quiet_enough_to_hibernate(&self, handle: &ConnHandle) -> bool {
        self.hibernate_after_ticks > 0
            && handle.can_hibernate()
            && self.sweep_tick.get().wrapping_sub(handle.last_data_tick())
                >= self.hibernate_after_ticks
    }

    /// Adds an upgraded connection to this shard's table. With `announce`
    /// (protocol mode) its user's home is told, and `welcome` queued once
    /// the home has it, so a client that saw `welcome` can be reached.
    pub fn add_conn(&self, handle: Rc<ConnHandle>, announce: bool) {
        self.counters
            .connections_opened
            .set(self.counters.connections_opened.get() + 1);
        self.metrics.count_connection_opened();
        if self.shutting_down.get() {
            handle.raise(crate::conn::handle::SIGNAL_SHUTDOWN);
        }
        handle.data_at_tick(self.sweep_tick.get());
        self.conns.borrow_mut().insert(handle.id, handle.clone());
        if announce {
            let welcome = crate::protocol::encode_welcome(&crate::protocol::Welcome {
                user: &handle.user,
                conn: handle.id,
                shard: self.id,
                heartbeat_ms: self.config.ping_interval_ms,
            });
            let frame = crate::ws::encode_frame(crate::ws::OPCODE_TEXT, &[welcome.as_bytes()]);
            self.attach(&handle, bytes::Bytes::from(frame));
        }
    }

    /// Removes a closed connection: tells the homes, settles its outbox.
    pub fn remove_conn(&self, handle: &ConnHandle, stale: bool) {
        if self.conns.borrow_mut().remove(&handle.id).is_some() {
            self.detach(handle, !self.config.echo);
            self.counters
                .connections_closed
                .set(self.counters.connections_closed.get() + 1);
            self.metrics.count_connection_closed();
            if stale {
                self.metrics.count_stale_closed();
                self.counters
                    .stale_closed
                    .set(self.counters.stale_closed.get() + 1);
            }
        }
        self.registry.remove(handle.id);
    }

    /// The handle of live connection `id` on this shard.
    pub fn conn_handle(&self, id: u64) -> Option<Rc<ConnHandle>> {
        self.conns.borrow().get(&id).cloned()
    }

    /// The ids of this shard's live connections.
    pub fn conn_ids(&self) -> Vec<u64> {
        self.conns.borrow().keys().copied().collect()
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
            handle.raise(crate::conn::handle::SIGNAL_SHUTDOWN);
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

    pub(super) fn local_health(&self) -> ShardHealth {
        ShardHealth {
            connections: self.connection_count() as u64,
            stale_closed: self.counters.stale_closed.get(),
            logs_failing: u64::from(self.log_failing()),
        }
    }

    /// Health summed over every shard, asked over the mesh. Shards that do
    /// not answer within `HEALTH_QUERY_TIMEOUT` are counted as missing.
    pub async fn cluster_health(&self) -> mesh::ClusterHealth {
        let mut total = mesh::ClusterHealth {
            shards: self.shard_count,
            shards_answered: 1,
            health: self.local_health(),
            node: self.cluster.as_ref().map(|c| mesh::NodeHealth {
                node: c.node.to_string(),
                redis_up: c.redis_up(),
            }),
        };
        if self.shard_count == 1 {
            return total;
        }
        let from = self.id;
        let peers = (0..self.shard_count).filter(|p| *p != from);
        let answers = self
            .ask_shards(
                &self.health_waiters,
                peers,
                HEALTH_QUERY_TIMEOUT,
                |request_id| MeshMsg::HealthQuery { from, request_id },
            )
            .await;
        for h in &answers {
            total.health.add(h);
        }
        total.shards_answered += answers.len();
        total
    }

    /// A fresh id for a request this shard waits on.
    pub(super) fn new_request_id(&self) -> u64 {
        let mut m = self.messaging.borrow_mut();
        m.next_request_id += 1;
        m.next_request_id
    }

    /// Asks `shards` one question each (`make` builds it around the request
    /// id) and collects their answers, which arrive in `waiters`, for at
    /// most `timeout`: shards that do not answer in time are left out.
    pub(super) async fn ask_shards<T>(
        &self,
        waiters: &Waiters<T>,
        shards: impl Iterator<Item = usize>,
        timeout: Duration,
        make: impl Fn(u64) -> MeshMsg,
    ) -> Vec<T> {
        let request_id = self.new_request_id();
        let (tx, rx) = glommio::channels::local_channel::new_bounded(self.shard_count);
        waiters.borrow_mut().insert(request_id, tx);
        let mut asked = 0;
        for shard in shards {
            asked += 1;
            self.to_shard(shard, make(request_id));
        }
        let mut answers = Vec::with_capacity(asked);
        let collect = async {
            while answers.len() < asked {
                match rx.recv().await {
                    Some(a) => answers.push(a),
                    None => break,
                }
            }
        };
        future::or(collect, async {
            Timer::new(timeout).await;
        })
        .await;
        waiters.borrow_mut().remove(&request_id);
        answers
    }

    /// Handles one message from another shard.
    fn on_mesh(&self, msg: MeshMsg) {
        self.on_messaging(msg);
    }

    /// Tells every other shard to shut down.
    fn broadcast_shutdown(&self) {
        for peer in (0..self.shard_count).filter(|p| *p != self.id) {
            self.outgoing.send(peer, MeshMsg::Shutdown);
        }
    }

    /// Pings quiet connections, closes silent ones and slow consumers, on
    /// one timer for the whole shard instead of one per connection.
    async fn sweep_liveness(self: Rc<Self>) {
        let rules = liveness_rules(&self.config);
        let slow_grace = Duration::from_millis(self.config.slow_consumer_grace_ms);
        let period = sweep_period(&self.config);
        while !self.shutting_down.get() {
            Timer::new(period).await;
            self.sweep_tick.set(self.sweep_tick.get().wrapping_add(1));
            let now = Instant::now();
            for handle in self.conns.borrow().values() {
                match rules.check(now, handle.last_rx(), handle.last_ping()) {
                    LivenessAction::Nothing => {}
                    LivenessAction::Ping => handle.raise_ping(now),
                    LivenessAction::CloseIdle => handle.raise(crate::conn::handle::SIGNAL_IDLE),
                }
                let over_since = handle.outbox.borrow().over_since();
                if over_since.is_some_and(|t| now.saturating_duration_since(t) >= slow_grace) {
                    handle.raise(crate::conn::handle::SIGNAL_SLOW);
                }
                // A waiting task wakes to see it is quiet enough (a task
                // that just ran checks this itself before it waits).
                if !handle.is_hibernating() && self.quiet_enough_to_hibernate(handle) {
                    handle.raise(crate::conn::handle::SIGNAL_HIBERNATE);
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
    shard.enable_naps(&start.doorbells);
    shard
        .outgoing
        .start_pumps(shard.id, shard.mesh.clone(), start.doorbells.clone());
    if !shard.config.no_persist {
        let dir = std::path::PathBuf::from(&shard.config.data_dir);
        match shard.open_log(&dir).await {
            Ok(wal) => {
                shard.wal_done.set(false);
                crate::spawn_local(shard.clone().run_wal(wal)).detach();
            }
            Err(e) => {
                let _ = start.ready.send(Err(format!("shard {}: {e}", shard.id)));
                return;
            }
        }
    }

    for (_peer, rx) in receivers.streams() {
        let shard = shard.clone();
        crate::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.on_mesh(msg);
            }
        })
        .detach();
    }
    // Restored messages reach their users' homes before the shard takes
    // connections, so a user who connects first finds them there.
    shard.hand_off_foreign_mailboxes();
    let handoff_deadline = Instant::now() + HANDOFF_WAIT_MAX;
    while shard.handoffs_pending() && Instant::now() < handoff_deadline {
        Timer::new(Duration::from_millis(2)).await;
    }
    crate::spawn_local(shard.clone().sweep_liveness()).detach();
    if shard.hibernation.is_some() {
        let shard = shard.clone();
        crate::spawn_local(async move {
            if let Some(hibernation) = &shard.hibernation {
                hibernation.run_resumer(shard.clone()).await;
            }
        })
        .detach();
    }
    shard.start_cluster_tasks();
    crate::spawn_local(shard.clone().run_timers()).detach();
    if shard.id == 0 {
        let thresholds = shard.config.alert_thresholds();
        *shard.interval.borrow_mut() = Some(observe::IntervalState::new(
            crate::metrics::alerts::AlertState::new(thresholds),
            shard.started_at,
        ));
        crate::spawn_local(shard.clone().run_metrics_interval()).detach();
    }
    if shard.id == 0 {
        let shard = shard.clone();
        let flag = start.shutdown_flag.clone();
        crate::spawn_local(async move {
            while !flag.load(Ordering::Acquire) && !shard.is_shutting_down() {
                Timer::new(SIGNAL_POLL_PERIOD).await;
            }
            log::info!("shutdown requested: closing connections");
            shard.begin_shutdown();
            shard.broadcast_shutdown();
        })
        .detach();
    }

    let listener = match ReadyListener::adopt(start.listener) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = start.ready.send(Err(format!(
                "shard {}: cannot watch its listener: {e}",
                shard.id
            )));
            return;
        }
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
    if let Some(hibernation) = &shard.hibernation {
        for handle in shard.conns.borrow().values() {
            hibernation.forget(handle);
        }
    }
    shard.finish_cluster().await;
    // Whatever was journaled last reaches the log before the shard stops.
    shard.close_wal().await;
    log::debug!("shard {} stopped", shard.id);
}

async fn accept_until_shutdown(shard: &Rc<ShardState>, listener: &ReadyListener) {
    enum Next {
        Accepted(std::io::Result<ReadyStream>),
        Shutdown,
    }
    let mut last_error_log: Option<Instant> = None;
    let mut accepts = 0usize;
    loop {
        // A connection storm must not keep the shard from its connections:
        // accepting returns at once while the backlog has some.
        accepts += 1;
        if accepts.is_multiple_of(ACCEPTS_BETWEEN_YIELDS) {
            futures_lite::future::yield_now().await;
        }
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
                crate::spawn_local(task).detach();
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

fn liveness_rules(config: &Config) -> LivenessRules {
    LivenessRules {
        ping_interval: Duration::from_millis(config.ping_interval_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    }
}

/// How often the liveness sweeper runs (see `LivenessRules::sweep_period`),
/// also often enough for the slow-consumer grace.
fn sweep_period(config: &Config) -> Duration {
    let slow_grace = Duration::from_millis(config.slow_consumer_grace_ms);
    liveness_rules(config)
        .sweep_period()
        .min(slow_grace.max(Duration::from_millis(20)) / 4)
}

/// `hibernate_after_ms` in sweeps, rounded up (0: hibernation off).
fn hibernate_after_ticks(config: &Config) -> u32 {
    if config.hibernate_after_ms == 0 {
        return 0;
    }
    let period_ms = sweep_period(config).as_millis().max(1) as u64;
    config
        .hibernate_after_ms
        .div_ceil(period_ms)
        .clamp(1, u32::MAX as u64) as u32
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    #[test]
    fn hibernation_delay_in_sweeps_rounds_up() {
        let mut config = crate::config::Config::defaults();
        // Defaults: pings every 20 s, idle 60 s, slow grace 5 s → 1 s sweeps.
        config.hibernate_after_ms = 5_000;
        assert_eq!(
            super::sweep_period(&config),
            std::time::Duration::from_secs(1)
        );
        assert_eq!(super::hibernate_after_ticks(&config), 5);
        config.hibernate_after_ms = 5_001;
        assert_eq!(super::hibernate_after_ticks(&config), 6);
        config.hibernate_after_ms = 1;
        assert_eq!(super::hibernate_after_ticks(&config), 1);
        config.hibernate_after_ms = 0;
        assert_eq!(super::hibernate_after_ticks(&config), 0, "0 turns it off");
        config.hibernate_after_ms = 100;
        config.ping_interval_ms = 300;
        assert_eq!(super::hibernate_after_ticks(&config), 2, "75 ms sweeps");
    }

    #[test]
    fn base36_digits() {
        assert_eq!(super::base36(0), "0");
        assert_eq!(super::base36(35), "z");
        assert_eq!(super::base36(36), "10");
        assert_eq!(super::base36(1_700_000_000_000), "loyw3v28");
    }
}
