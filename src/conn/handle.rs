//! The shard's handle on a live WebSocket connection. Deliveries queue
//! frames in its outbox; the sweeper and shutdown raise signals; the
//! connection's own task drains the outbox and acts on the signals.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use super::outbox::{OutItem, Outbox, PushOutcome};
use super::rate_limit::TokenBucket;

/// Send a ping.
pub const SIGNAL_PING: u8 = 1;
/// Close with 1001: silent too long.
pub const SIGNAL_IDLE: u8 = 2;
/// Close with 1001: the server is shutting down.
pub const SIGNAL_SHUTDOWN: u8 = 4;
/// The outbox has new frames.
pub const SIGNAL_OUTBOX: u8 = 8;
/// Close with 1008: the outbox stayed over its bound.
pub const SIGNAL_SLOW: u8 = 16;
/// Close with 1008: the user is at `max_connections_per_user`.
pub const SIGNAL_USER_LIMIT: u8 = 32;
/// Quiet long enough: hibernate if nothing is in progress (`hibernate`).
pub const SIGNAL_HIBERNATE: u8 = 64;

/// Most groups one connection may be in.
pub const GROUPS_PER_CONNECTION_MAX: usize = 1024;
/// Most unacked message ids one connection remembers (oldest forgotten
/// first; a forgotten one is still redelivered and can be acked then).
pub const ACK_ROUTES_PER_CONNECTION_MAX: usize = 65_536;

/// The process's clock origin: handles keep times as ms since it (8 bytes,
/// where an `Instant` takes 16), set on first use.
fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn clock_ms(t: Instant) -> u64 {
    t.saturating_duration_since(clock_origin()).as_millis() as u64
}

fn instant_of(ms: u64) -> Instant {
    clock_origin() + std::time::Duration::from_millis(ms)
}

thread_local! {
    /// The connection whose task is inside its message loop on this thread
    /// now (null: none). A signal a connection raises on itself while its
    /// loop runs (the outbox signal of a reply, above all) needs no wake-up:
    /// the loop reads its signals and its outbox before it parks. Waking
    /// itself cost the task a second, empty run per echoed message. Only
    /// compared, never dereferenced.
    static LOOP_RUNNING: Cell<*const ConnHandle> = const { Cell::new(std::ptr::null()) };
}

/// Message id → the shard tracking its ack, and the ids in arrival order.
type AckRoutes = (HashMap<String, usize>, VecDeque<String>);

/// What few connections have: see `ConnHandle::extras`.
#[derive(Default)]
struct Extras {
    /// Groups this connection joined (left for it when it closes).
    groups: HashSet<String>,
    /// For `ack:true` messages delivered here: message id → the shard that
    /// tracks its ack. The ids in arrival order bound it. Boxed again: a
    /// member of groups that never sees `ack:true` keeps 8 bytes for it,
    /// not 80.
    ack_routes: Option<Box<AckRoutes>>,
    /// The groups its token lets it join (`None`: any).
    allowed_groups: Option<Box<[String]>>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.ack_routes.is_none() && self.allowed_groups.is_none()
    }
}

/// One live WebSocket connection, as its shard sees it.
pub struct ConnHandle {
    pub id: u64,
    pub user: Rc<str>,
    /// Chose `wsu.v1.lz4`: large binary payloads arrive compressed.
    pub wants_lz4: bool,
    pub outbox: RefCell<Outbox>,
    /// Its groups, ack routes and allowed groups: most connections have
    /// none of them, so they share one box (8 bytes in every handle, not
    /// three fields' 48), allocated on first use and freed when all three
    /// are empty again.
    extras: RefCell<Option<Box<Extras>>>,
    signals: Cell<u8>,
    waker: Cell<Option<Waker>>,
    /// When the peer last sent anything, in ms of `clock_ms`.
    last_rx_ms: Cell<u64>,
    /// When we last pinged, in ms of `clock_ms` (0: never).
    last_ping_ms: Cell<u64>,
    /// The last ping round trip, in µs (0: none yet; saturates at ~71 min).
    last_rtt_us: Cell<u32>,
    /// The command budget (`rate_limit_per_s`, `rate_limit_burst`).
    rate_limit: Cell<TokenBucket>,
    /// Its user's home holds the rest of a mailbox until this connection
    /// has written the batch it was sent.
    pub mailbox_paused: Cell<bool>,
    /// May give up its task when quiet (plain TCP; TLS state cannot rest).
    can_hibernate: Cell<bool>,
    /// Its socket while it hibernates (no task; `hibernate`).
    sleeping: Cell<Option<ws_uring_readiness::Sleeper>>,
    /// Hibernating and a resume already asked for: a burst of deliveries
    /// asks once.
    resume_asked: Cell<bool>,
    /// The shard's sweep tick of the last data message in either direction.
    last_data_tick: Cell<u32>,
}

impl ConnHandle {
    pub fn new(
        id: u64,
        user: Rc<str>,
        wants_lz4: bool,
        outbox_max_bytes: usize,
        rate_limit: TokenBucket,
        now: Instant,
    ) -> Self {
        ConnHandle {
            rate_limit: Cell::new(rate_limit),
            mailbox_paused: Cell::new(false),
            can_hibernate: Cell::new(false),
            sleeping: Cell::new(None),
            resume_asked: Cell::new(false),
            last_data_tick: Cell::new(0),
            id,
            user,
            wants_lz4,
            outbox: RefCell::new(Outbox::new(outbox_max_bytes)),
            extras: RefCell::new(None),
            signals: Cell::new(0),
            waker: Cell::new(None),
            last_rx_ms: Cell::new(clock_ms(now)),
            last_ping_ms: Cell::new(0),
            last_rtt_us: Cell::new(0),
        }
    }

    /// Queues a frame and wakes the task. `Overflow` also raises
    /// `SIGNAL_SLOW`: the connection is closed with 1008.
    pub fn enqueue(
        &self,
        item: OutItem,
        now: impl FnOnce() -> Instant,
        evicted: impl FnMut(&OutItem),
    ) -> PushOutcome {
        let outcome = self.outbox.borrow_mut().push(item, now, evicted);
        match outcome {
            PushOutcome::Queued => self.raise(SIGNAL_OUTBOX),
            PushOutcome::Overflow => self.raise(SIGNAL_SLOW),
            PushOutcome::DroppedLow | PushOutcome::Refused => {}
        }
        outcome
    }

    /// Remembers where the ack for message `id` must go.
    pub fn expect_ack(&self, id: &str, home: usize) {
        let mut extras = self.extras.borrow_mut();
        let (map, order) = &mut **extras
            .get_or_insert_with(Default::default)
            .ack_routes
            .get_or_insert_with(Default::default);
        if map.insert(id.to_string(), home).is_none() {
            order.push_back(id.to_string());
        }
        while map.len() > ACK_ROUTES_PER_CONNECTION_MAX {
            match order.pop_front() {
                Some(oldest) => {
                    map.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Where the ack for `id` goes (and forget it), if it was delivered here.
    pub fn take_ack_route(&self, id: &str) -> Option<usize> {
        let mut extras = self.extras.borrow_mut();
        let (map, order) = &mut **extras.as_mut()?.ack_routes.as_mut()?;
        let home = map.remove(id)?;
        // Keep `order` from growing with settled ids.
        if order.len() > 2 * map.len() + 64 {
            order.retain(|i| map.contains_key(i));
        }
        Some(home)
    }

    /// When the peer last sent anything (pongs included).
    pub fn last_rx(&self) -> Instant {
        instant_of(self.last_rx_ms.get())
    }

    /// Takes one command from its budget: `per_s` a second, bursts up to
    /// `burst` (the shard's settings); false when it is spent.
    pub fn take_command(&self, per_s: u64, burst: u64, now: Instant) -> bool {
        let mut bucket = self.rate_limit.get();
        let taken = bucket.try_take(per_s, burst, now);
        self.rate_limit.set(bucket);
        taken
    }

    /// Records traffic from the peer.
    pub fn heard_at(&self, now: Instant) {
        self.last_rx_ms.set(clock_ms(now));
    }

    /// Sets the groups its token lets it join (`None`: any).
    pub fn with_allowed_groups(self, allowed: Option<Vec<String>>) -> Self {
        if let Some(allowed) = allowed {
            self.extras
                .borrow_mut()
                .get_or_insert_with(Default::default)
                .allowed_groups = Some(allowed.into_boxed_slice());
        }
        self
    }

    /// Whether its token lets it join `group` (`crate::auth::group_allowed`).
    pub fn may_join(&self, group: &str) -> bool {
        let extras = self.extras.borrow();
        let allowed = extras.as_ref().and_then(|e| e.allowed_groups.as_deref());
        crate::auth::group_allowed(allowed, group)
    }

    /// Whether it joined `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.extras
            .borrow()
            .as_ref()
            .is_some_and(|e| e.groups.contains(group))
    }

    /// Groups joined.
    pub fn group_count(&self) -> usize {
        self.extras.borrow().as_ref().map_or(0, |e| e.groups.len())
    }

    /// Records a join.
    pub fn add_group(&self, group: &str) {
        self.extras
            .borrow_mut()
            .get_or_insert_with(Default::default)
            .groups
            .insert(group.to_string());
    }

    /// Records a leave.
    pub fn remove_group(&self, group: &str) {
        if let Some(extras) = self.extras.borrow_mut().as_mut() {
            extras.groups.remove(group);
        }
    }

    /// Takes every joined group (the connection is closing).
    pub fn take_groups(&self) -> Vec<String> {
        self.extras
            .borrow_mut()
            .as_mut()
            .map_or_else(Vec::new, |e| e.groups.drain().collect())
    }

    /// Records the round trip of the last ping.
    pub fn set_last_rtt_us(&self, rtt_us: u64) {
        self.last_rtt_us
            .set(u32::try_from(rtt_us).unwrap_or(u32::MAX));
    }

    /// The last ping round trip, in µs (0: none measured yet).
    pub fn last_rtt_us(&self) -> u64 {
        u64::from(self.last_rtt_us.get())
    }

    /// When we last pinged.
    pub fn last_ping(&self) -> Option<Instant> {
        match self.last_ping_ms.get() {
            0 => None,
            ms => Some(instant_of(ms)),
        }
    }

    /// Asks the task to send a ping.
    pub fn raise_ping(&self, now: Instant) {
        self.last_ping_ms.set(clock_ms(now).max(1));
        self.raise(SIGNAL_PING);
    }

    /// Sets signal bits and wakes the task, or asks for a hibernating
    /// connection to be given a task again.
    pub fn raise(&self, signal: u8) {
        self.signals.set(self.signals.get() | signal);
        if self.loop_is_running() {
            return; // it reads its signals before it parks
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
            return;
        }
        if self.is_hibernating() && !self.resume_asked.replace(true) {
            super::hibernate::request_resume(self.id);
        }
    }

    /// Whether signals are waiting for the task.
    pub fn has_signals(&self) -> bool {
        self.signals.get() != 0
    }

    /// Allows hibernation (for plain TCP connections).
    pub fn allow_hibernation(&self) {
        self.can_hibernate.set(true);
    }

    /// Keeps this connection out of hibernation from now on.
    pub fn forbid_hibernation(&self) {
        self.can_hibernate.set(false);
    }

    /// Whether this connection may hibernate at all.
    pub fn can_hibernate(&self) -> bool {
        self.can_hibernate.get()
    }

    /// Whether it is hibernating (has no task).
    pub fn is_hibernating(&self) -> bool {
        // A Cell of a non-Copy value: take it and put it back.
        let sleeper = self.sleeping.take();
        let asleep = sleeper.is_some();
        self.sleeping.set(sleeper);
        asleep
    }

    /// Enters hibernation holding its socket: the task is gone, so its
    /// waker is dropped and `raise` asks for a resume instead.
    pub(super) fn enter_hibernation(&self, sleeper: ws_uring_readiness::Sleeper) {
        self.waker.set(None);
        self.resume_asked.set(false);
        self.sleeping.set(Some(sleeper));
    }

    /// Leaves hibernation, handing back the socket (`None`: was awake).
    pub(super) fn leave_hibernation(&self) -> Option<ws_uring_readiness::Sleeper> {
        self.resume_asked.set(false);
        self.sleeping.take()
    }

    /// Records a data message in or out at sweep tick `tick`.
    pub fn data_at_tick(&self, tick: u32) {
        self.last_data_tick.set(tick);
    }

    /// The sweep tick of the last data message in or out.
    pub fn last_data_tick(&self) -> u32 {
        self.last_data_tick.get()
    }

    /// Frees what an idle connection does not need (empty queue and ack
    /// buffers keep their capacity while busy; a resting one gives it back).
    pub fn release_idle_memory(&self) {
        self.outbox.borrow_mut().release_idle_memory();
        let mut extras = self.extras.borrow_mut();
        if let Some(e) = extras.as_mut() {
            // Emptied maps keep their capacity: a resting one gives it back.
            if e.ack_routes.as_ref().is_some_and(|r| r.0.is_empty()) {
                e.ack_routes = None;
            }
            if e.groups.is_empty() {
                e.groups = HashSet::new();
            }
        }
        if extras.as_ref().is_some_and(|e| e.is_empty()) {
            *extras = None;
        }
    }

    /// Takes the pending signal bits.
    pub fn take_signals(&self) -> u8 {
        self.signals.replace(0)
    }

    /// Clears signal bits the task has acted on without `take_signals`.
    pub fn clear_signals(&self, signals: u8) {
        self.signals.set(self.signals.get() & !signals);
    }

    /// Marks this connection's message loop as running on this thread: its
    /// own `raise`s wake nothing until `loop_parked`.
    pub fn loop_running(&self) {
        LOOP_RUNNING.with(|running| running.set(self));
    }

    /// Marks its message loop as parked (or left): `raise` wakes it again.
    pub fn loop_parked(&self) {
        LOOP_RUNNING.with(|running| {
            if std::ptr::eq(running.get(), self) {
                running.set(std::ptr::null());
            }
        });
    }

    fn loop_is_running(&self) -> bool {
        LOOP_RUNNING.with(|running| std::ptr::eq(running.get(), self))
    }

    /// Registers the task's waker.
    pub fn park(&self, waker: &Waker) {
        match self.waker.take() {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> ConnHandle {
        let now = Instant::now();
        ConnHandle::new(
            7,
            Rc::from("u"),
            false,
            1 << 20,
            TokenBucket::new(10, now),
            now,
        )
    }

    #[test]
    fn a_hibernating_handle_asks_for_its_resume_once() {
        // A sleeper lives in a shard's epoll set, so on an executor.
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async { hibernating_handle_asks_for_its_resume_once() })
            .expect("executor")
            .join()
            .expect("join");
    }

    fn hibernating_handle_asks_for_its_resume_once() {
        let h = handle();
        super::super::hibernate::take_requested_for_test();
        h.raise(SIGNAL_OUTBOX);
        assert!(
            super::super::hibernate::take_requested_for_test().is_empty(),
            "an awake handle (no task parked in this test) asks nothing"
        );
        h.take_signals();
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let stream = ws_uring_readiness::ReadyStream::adopt(ours.into()).unwrap();
        h.enter_hibernation(stream.into_sleeper(7).map_err(|(_, e)| e).unwrap());
        assert!(h.is_hibernating());
        h.raise(SIGNAL_OUTBOX);
        h.raise(SIGNAL_PING);
        assert_eq!(super::super::hibernate::take_requested_for_test(), vec![7]);
        assert_eq!(
            h.take_signals(),
            SIGNAL_OUTBOX | SIGNAL_PING,
            "signals kept for the task"
        );
        assert!(h.leave_hibernation().is_some(), "the socket comes back");
        assert!(!h.is_hibernating());
        assert!(
            h.leave_hibernation().is_none(),
            "a stale wake finds it awake"
        );
        h.raise(SIGNAL_PING);
        assert!(super::super::hibernate::take_requested_for_test().is_empty());
    }

    /// Counts wake-ups of a waker (std's `Wake`, no executor needed).
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_running_loop_is_not_woken_by_its_own_signals_but_others_are() {
        let (a, b) = (handle(), handle());
        let counter = std::sync::Arc::new(CountingWaker(Default::default()));
        let woken = || counter.0.load(std::sync::atomic::Ordering::Relaxed);
        let waker = Waker::from(counter.clone());
        a.park(&waker);
        b.park(&waker);

        a.loop_running();
        a.raise(SIGNAL_OUTBOX);
        assert_eq!(woken(), 0, "a running loop reads its signals itself");
        assert_eq!(a.take_signals(), SIGNAL_OUTBOX, "the signal is kept");
        b.raise(SIGNAL_OUTBOX);
        assert_eq!(woken(), 1, "another connection is woken");

        b.loop_parked();
        a.raise(SIGNAL_PING);
        assert_eq!(woken(), 1, "parking another loop leaves this one running");

        a.loop_parked();
        a.raise(SIGNAL_PING);
        assert_eq!(woken(), 2, "a parked loop is woken again");
        a.clear_signals(SIGNAL_PING);
        assert_eq!(a.take_signals(), 0);
    }

    #[test]
    fn a_handle_with_its_rc_counts_fits_jemallocs_192_byte_class() {
        // Every connection, idle or not, holds one: 256 bytes before the
        // rarely used fields shared a box and the settings left it.
        assert!(std::mem::size_of::<ConnHandle>() + 2 * std::mem::size_of::<usize>() <= 192);
    }

    #[test]
    fn allowed_groups_and_joined_groups_share_the_box_with_ack_routes() {
        let h = handle().with_allowed_groups(Some(vec!["room".into()]));
        assert!(h.may_join("room"));
        assert!(!h.may_join("other"));
        h.add_group("room");
        h.expect_ack("m1", 1);
        assert!(h.in_group("room"));
        assert_eq!(h.take_ack_route("m1"), Some(1));
        assert_eq!(h.take_groups(), vec!["room".to_string()]);
        h.release_idle_memory();
        // The allowed groups stay (they are the token's), so the box does.
        assert!(h.may_join("room") && !h.may_join("other"));
        assert_eq!(h.group_count(), 0);

        let open = handle();
        assert!(open.may_join("anything"), "no groups claim: any group");
        open.add_group("g");
        open.take_groups();
        open.release_idle_memory();
        assert!(
            open.extras.borrow().is_none(),
            "all empty: the box is freed"
        );
    }

    #[test]
    fn idle_memory_release_keeps_pending_ack_routes() {
        let h = handle();
        h.release_idle_memory();
        h.expect_ack("m1", 1);
        h.release_idle_memory();
        assert_eq!(h.take_ack_route("m1"), Some(1), "a route in use is kept");
        assert_eq!(h.take_ack_route("m1"), None);
        h.release_idle_memory();
        assert!(h.extras.borrow().is_none(), "empty routes are freed");
        assert_eq!(h.take_ack_route("m2"), None);
    }

    #[test]
    fn rtt_saturates_instead_of_wrapping() {
        let h = handle();
        h.set_last_rtt_us(u64::from(u32::MAX) + 5);
        assert_eq!(h.last_rtt_us(), u64::from(u32::MAX));
        h.set_last_rtt_us(1234);
        assert_eq!(h.last_rtt_us(), 1234);
    }
}
