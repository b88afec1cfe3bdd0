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

/// Most groups one connection may be in.
pub const GROUPS_PER_CONNECTION_MAX: usize = 1024;
/// Most unacked message ids one connection remembers (oldest forgotten
/// first; a forgotten one is still redelivered and can be acked then).
pub const ACK_ROUTES_PER_CONNECTION_MAX: usize = 65_536;

/// One live WebSocket connection, as its shard sees it.
pub struct ConnHandle {
    pub id: u64,
    pub user: Rc<str>,
    /// Chose `wsu.v1.lz4`: large binary payloads arrive compressed.
    pub wants_lz4: bool,
    pub outbox: RefCell<Outbox>,
    /// Groups this connection joined (left for it when it closes).
    pub groups: RefCell<HashSet<String>>,
    /// For `ack:true` messages delivered here: message id → the shard that
    /// tracks its ack. The ids in arrival order bound it.
    ack_routes: RefCell<(HashMap<String, usize>, VecDeque<String>)>,
    signals: Cell<u8>,
    waker: Cell<Option<Waker>>,
    last_rx: Cell<Instant>,
    last_ping: Cell<Option<Instant>>,
    /// The last ping round trip, in µs (0: none yet).
    last_rtt_us: Cell<u64>,
    /// The command budget (`rate_limit_per_s`, `rate_limit_burst`).
    pub rate_limit: RefCell<TokenBucket>,
    /// The groups its token lets it join (`None`: any).
    pub allowed_groups: RefCell<Option<Vec<String>>>,
    /// Its user's home holds the rest of a mailbox until this connection
    /// has written the batch it was sent.
    pub mailbox_paused: Cell<bool>,
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
            rate_limit: RefCell::new(rate_limit),
            allowed_groups: RefCell::new(None),
            mailbox_paused: Cell::new(false),
            id,
            user,
            wants_lz4,
            outbox: RefCell::new(Outbox::new(outbox_max_bytes)),
            groups: RefCell::new(HashSet::new()),
            ack_routes: RefCell::new((HashMap::new(), VecDeque::new())),
            signals: Cell::new(0),
            waker: Cell::new(None),
            last_rx: Cell::new(now),
            last_ping: Cell::new(None),
            last_rtt_us: Cell::new(0),
        }
    }

    /// Queues a frame and wakes the task. `Overflow` also raises
    /// `SIGNAL_SLOW`: the connection is closed with 1008.
    pub fn enqueue(
        &self,
        item: OutItem,
        now: Instant,
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
        let mut routes = self.ack_routes.borrow_mut();
        let (map, order) = &mut *routes;
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
        let mut routes = self.ack_routes.borrow_mut();
        let (map, order) = &mut *routes;
        let home = map.remove(id)?;
        // Keep `order` from growing with settled ids.
        if order.len() > 2 * map.len() + 64 {
            order.retain(|i| map.contains_key(i));
        }
        Some(home)
    }

    /// When the peer last sent anything (pongs included).
    pub fn last_rx(&self) -> Instant {
        self.last_rx.get()
    }

    /// Records traffic from the peer.
    pub fn heard_at(&self, now: Instant) {
        self.last_rx.set(now);
    }

    /// Records the round trip of the last ping.
    pub fn set_last_rtt_us(&self, rtt_us: u64) {
        self.last_rtt_us.set(rtt_us);
    }

    /// The last ping round trip, in µs (0: none measured yet).
    pub fn last_rtt_us(&self) -> u64 {
        self.last_rtt_us.get()
    }

    /// When we last pinged.
    pub fn last_ping(&self) -> Option<Instant> {
        self.last_ping.get()
    }

    /// Asks the task to send a ping.
    pub fn raise_ping(&self, now: Instant) {
        self.last_ping.set(Some(now));
        self.raise(SIGNAL_PING);
    }

    /// Sets signal bits and wakes the task.
    pub fn raise(&self, signal: u8) {
        self.signals.set(self.signals.get() | signal);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes the pending signal bits.
    pub fn take_signals(&self) -> u8 {
        self.signals.replace(0)
    }

    /// Registers the task's waker.
    pub fn park(&self, waker: &Waker) {
        match self.waker.take() {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }
}
