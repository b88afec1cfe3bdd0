//! Sockets driven by one epoll set per thread (per shard, in ws-uring;
//! per engine thread, in the loadgen) instead of glommio's per-read
//! io_uring poll.
//!
//! Why: glommio's `TcpStream` arms a one-shot `IORING_OP_POLL_ADD` after
//! every read that did not fill the buffer, so each echoed message pays a
//! poll arm, a completion run as task work, and its reaping. With 2000
//! connections and one message in flight each, that was most of the
//! shard's time (docs/PERFORMANCE.md, third pass). Here every connection
//! socket is registered once, edge-triggered, in its shard's epoll set; a
//! connection reads and writes with plain non-blocking `recv`/`send` and,
//! on `EAGAIN`, leaves its waker in its slot. The shard's readiness driver
//! waits for the epoll set itself through glommio (one poll per batch of
//! ready sockets, not one per message), takes the ready list with
//! `epoll_wait(0)` and wakes the waiting tasks. Timers, files, the
//! channel mesh and the cluster links stay on glommio.
//!
//! A socket with no task to serve it (a hibernating connection, in
//! ws-uring) stays in the same set as a `Sleeper`: its registration is
//! modified to carry a token instead of a slot, one-shot, for input or a
//! hang-up only, and the driver hands the token to whoever waits in
//! `poll_woken_sleepers`. No second epoll set, no thread to watch it.
//!
//! Naps (opt-in per thread, `enable_naps`): when the set is empty and no
//! other task of the thread is runnable, the driver may wait for the set
//! itself, in `epoll_wait` with a timeout, instead of parking through
//! glommio. glommio's park costs ~10 system calls a wake-up (its
//! `io_uring_enter`s and a `membarrier`) on top of the wait; a nap costs
//! the one `epoll_wait`. While the driver naps, glommio's reactor is not
//! running, so its timers, io_uring completions and channel messages wait;
//! the driver bounds that by visiting the reactor at least every
//! `nap_max`, and a `Doorbell` lets another thread that has just handed this
//! one a message end a nap at once (the shard mesh rings it).
//!
//! Timers (`ReadyTimer`) can be kept by the driver instead of glommio's
//! reactor, for a thread that naps and must still keep time (the loadgen's
//! send schedule): a nap ends when the earliest is due, and before the
//! driver parks through glommio it arms a timerfd in the set for the
//! earliest (re-armed if a task glommio runs meanwhile makes an earlier
//! one). glommio's own timers still wait for a reactor visit.
//!
//! Invariants:
//! - a task only waits after the socket was found drained (a `recv`/`send`
//!   that came back short or said `EAGAIN`) with no edge taken since, and
//!   parks its waker in the same poll, so an edge that arrives later
//!   always finds its waker (the shard is one thread: nothing runs in
//!   between); the driver marks the slot readable/writable on every edge,
//!   whether or not a task waits;
//! - an event carries a pointer to its socket's slot, kept alive by the
//!   registration's own reference: a socket leaves the epoll set (which
//!   also drops its events not yet taken) before that reference is dropped
//!   and before its descriptor is closed or handed on (`Drop`,
//!   `into_owned_fd`); the driver wakes tasks but runs none while it walks
//!   a batch, so no slot is freed under it;
//! - an event's data is either a slot pointer (aligned: low bit clear) or
//!   a sleeper's token shifted left with the low bit set; a registration
//!   is modified from one to the other in place (`epoll_ctl(MOD)`), and an
//!   event not yet taken carries the data of the registration as it is
//!   when taken, so a slot is released only after its socket's
//!   registration stopped pointing at it;
//! - the driver never spins: it waits through glommio between batches, and
//!   if it cannot (no descriptor left to duplicate the epoll set) it polls
//!   on a timer of `FALLBACK_POLL_PERIOD` until it can again;
//! - the driver naps only when no other task ran between its last yield
//!   and now (`counted` tasks bump `TASK_POLLS`; a yield puts the driver
//!   behind every task runnable at that moment, so a task woken by one that
//!   ran since may still be queued behind it, and the driver yields again
//!   instead), never while a `NapHold` lives, and only until `nap_max`
//!   (at least `REACTOR_TURN_PERIOD_MAX`) after its last visit to glommio's
//!   reactor; after `nap_max` without any ready socket it parks through
//!   glommio;
//! - a waiting `ReadyTimer` has an entry keyed by its deadline; the driver
//!   wakes every entry due on each pass and takes it out, naps no later
//!   than the earliest, and parks through glommio only with the timerfd
//!   armed for a time no later than the earliest (`Parked`), so a timer
//!   fires late by at most a pass of the driver, or a glommio turn when it
//!   parks; a timer reset or dropped takes its entry out first;
//! - a `Doorbell` is rung after the message it announces is in its channel:
//!   the ringer bumps `rung`, then reads `napping`; the napper sets
//!   `napping`, then reads `rung` (all sequentially consistent), so either
//!   the ringer sees the nap and writes the eventfd, or the napper sees the
//!   ring and visits the reactor instead of napping.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};

/// Ready sockets taken from the epoll set per `epoll_wait`; more wait for
/// the next batch (the set stays readable, so the driver comes straight
/// back).
const EVENTS_PER_WAIT_MAX: usize = 1024;
/// Longest the driver keeps taking batches without a turn through glommio's
/// reactor (see `drive`): bounds how late a timer can fire under load.
const REACTOR_TURN_PERIOD_MAX: Duration = Duration::from_micros(250);
/// The low bit of a sleeper's event data (see the module docs).
const SLEEPER_BIT: u64 = 1;
/// Tokens a sleeper may carry: all but the top bit, which the shift drops.
pub const SLEEPER_TOKEN_MAX: u64 = u64::MAX >> 1;
/// How often the driver polls the set when it cannot wait through glommio.
const FALLBACK_POLL_PERIOD: Duration = Duration::from_millis(1);
/// The event data of a thread's doorbell in its set: even (not a sleeper)
/// and never a slot's address (slots are heap-allocated, far above it).
const DOORBELL_DATA: u64 = 2;
/// The event data of a thread's timerfd (`ReadyTimer`s): even, and below
/// any slot's address like `DOORBELL_DATA`.
const TIMERFD_DATA: u64 = 4;

/// The wakers of one socket's waiting reader and writer, and what the
/// socket may have for them.
struct Slot {
    reader: Cell<Option<Waker>>,
    writer: Cell<Option<Waker>>,
    /// False once a read came back short (or `EAGAIN`): the socket is
    /// drained, and the next edge (every arrival raises one) sets it again.
    /// A read is then skipped rather than made only to hear `EAGAIN`.
    readable: Cell<bool>,
    /// The same for room to write: false after a short write.
    writable: Cell<bool>,
    /// The peer hung up or the socket failed: final, so no edge may follow
    /// and every read and write goes to the kernel (which answers 0 or the
    /// error) instead of waiting.
    hung_up: Cell<bool>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            reader: Cell::new(None),
            writer: Cell::new(None),
            // Unknown at registration: try once.
            readable: Cell::new(true),
            writable: Cell::new(true),
            hung_up: Cell::new(false),
        }
    }
}

/// What a socket served for a task is registered for: edge-triggered,
/// both ways, and the peer's hang-up.
const SERVED_EVENTS: epoll::EventFlags = epoll::EventFlags::IN
    .union(epoll::EventFlags::OUT)
    .union(epoll::EventFlags::RDHUP)
    .union(epoll::EventFlags::ET);

impl Slot {
    /// A fresh slot and the registration's own reference to it (given back
    /// in `ReadyStream::deregister`, or by the caller if registering fails).
    fn registered() -> (Rc<Slot>, *const Slot) {
        let slot = Rc::new(Slot::default());
        let registration = Rc::into_raw(slot.clone());
        (slot, registration)
    }

    /// A registration's event data: the pointer to its slot.
    fn event_data(registration: *const Slot) -> epoll::EventData {
        epoll::EventData::new_ptr(registration as *mut std::ffi::c_void)
    }

    /// One read or write (`io`, of `len` bytes asked) under the drained
    /// rule: skipped, with the waker parked, while `ready` is false and no
    /// hang-up was seen; `ready` falls after a short transfer or `EAGAIN`,
    /// and the driver raises it again on the next edge.
    fn poll_io(
        &self,
        ready: &Cell<bool>,
        waiter: &Cell<Option<Waker>>,
        cx: &Context<'_>,
        len: usize,
        mut io: impl FnMut() -> Result<usize, Errno>,
    ) -> Poll<io::Result<usize>> {
        if !ready.get() && !self.hung_up.get() {
            Slot::park(waiter, cx.waker());
            return Poll::Pending;
        }
        loop {
            match io() {
                Ok(n) => {
                    if 0 < n && n < len {
                        ready.set(false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    ready.set(false);
                    Slot::park(waiter, cx.waker());
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn park(cell: &Cell<Option<Waker>>, waker: &Waker) {
        match cell.take() {
            Some(old) if old.will_wake(waker) => cell.set(Some(old)),
            _ => cell.set(Some(waker.clone())),
        }
    }
}

/// Wakes a parked task and keeps its waker in the slot: the task parks
/// again with the same waker (`Slot::park` then clones nothing), so a
/// message costs no waker clone and drop (6 % of echo throughput, measured
/// against uWS.js in one run). A task woken by an edge it no longer waits
/// for polls once for nothing, which futures allow. The waker (a reference
/// to the task) goes with the slot, when the task's stream is dropped.
fn wake_and_keep(cell: &Cell<Option<Waker>>) {
    if let Some(waker) = cell.take() {
        waker.wake_by_ref();
        cell.set(Some(waker));
    }
}

/// A shard's epoll set. Each registered socket's event data is a pointer
/// to its `Slot` (no table to look up, and none to keep sized for the
/// busiest moment).
struct Readiness {
    epoll: OwnedFd,
    /// Sockets in the set now with a slot (served for a task).
    registered: Cell<usize>,
    /// Sockets in the set now as sleepers.
    sleeping: Cell<usize>,
    /// Tokens of sleepers the driver found ready, not yet taken.
    woken_sleepers: RefCell<Vec<u64>>,
    /// Who waits for them (`poll_woken_sleepers`).
    sleepers_waker: Cell<Option<Waker>>,
    /// Whether this thread's driver task is alive (it dies with its
    /// executor; the next stream on the thread starts another).
    driver_running: Cell<bool>,
    /// Batches the driver has taken (tests: it must not spin).
    batches: Cell<u64>,
    /// `enable_naps`: the longest the driver naps in the set, and the
    /// longest it keeps glommio's reactor waiting while it does. `None`:
    /// it never naps.
    nap_max: Cell<Option<Duration>>,
    /// Rung by other threads after handing this one a message.
    doorbell: RefCell<Option<Arc<Doorbell>>>,
    /// The doorbell's `rung` as of the driver's last visit to the reactor
    /// (which takes every message sent before it).
    rung_seen: Cell<u64>,
    /// The doorbell rang (or had rung) since that visit: visit again.
    doorbell_pending: Cell<bool>,
    /// Naps taken (tests).
    naps: Cell<u64>,
    /// An eventfd whose count is never read: always readable
    /// (`visit_reactor`).
    always_ready: OwnedFd,
    /// Live `NapHold`s: while any is, the driver does not nap.
    nap_holds: Cell<usize>,
    /// Waiting `ReadyTimer`s by deadline (then age, so none share a key).
    timers: RefCell<BTreeMap<TimerKey, Waker>>,
    /// The age of the next timer entry.
    timer_entries: Cell<u64>,
    /// `fire_due_timers`' list, kept for its capacity.
    due_wakers: Cell<Vec<Waker>>,
    /// Made by the first `ReadyTimer`, in the set from then on: armed for
    /// the earliest timer while the driver parks through glommio, so the
    /// set reports it when that timer is due.
    timerfd: OnceCell<OwnedFd>,
    /// The driver waits through glommio now (see `drive`).
    parked: Cell<bool>,
    /// When the timerfd goes off, if it is armed and has not been reported.
    timerfd_armed_for: Cell<Option<Instant>>,
}

/// A timer's place among the waiting ones: deadline, then age.
type TimerKey = (Instant, u64);

/// Lets another thread end this thread's nap when it hands it something
/// the epoll set does not show (a message in a glommio channel): see
/// `enable_naps`. Shared as an `Arc`; `ring` may be called from any thread.
#[derive(Debug)]
pub struct Doorbell {
    /// In the owning thread's set, level-triggered, read empty by its
    /// driver when it reports.
    eventfd: OwnedFd,
    /// The owner is in (or about to start) a nap.
    napping: AtomicBool,
    /// Rings so far.
    rung: AtomicU64,
}

/// A non-blocking eventfd whose count starts at `count`.
fn eventfd(count: u32) -> io::Result<OwnedFd> {
    let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
    Ok(rustix::event::eventfd(count, flags)?)
}

impl Doorbell {
    pub fn new() -> io::Result<Arc<Doorbell>> {
        Ok(Arc::new(Doorbell {
            eventfd: eventfd(0)?,
            napping: AtomicBool::new(false),
            rung: AtomicU64::new(0),
        }))
    }

    /// Call after the message is in the channel: ends the owner's nap, if
    /// it naps, so its reactor takes the message now rather than at the
    /// end of the nap. Costs two atomic operations when it does not nap.
    pub fn ring(&self) {
        self.rung.fetch_add(1, Ordering::SeqCst);
        if self.napping.load(Ordering::SeqCst) {
            // Fails only if the counter would overflow (2^64 - 2 rings not
            // yet read), when the set reports it readable anyway.
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }
}

thread_local! {
    /// Polls of `counted` tasks on this thread (see the module docs).
    static TASK_POLLS: Cell<u64> = const { Cell::new(0) };
}

fn task_polls() -> u64 {
    TASK_POLLS.with(Cell::get)
}

/// A future whose polls the readiness driver counts (`counted`).
pub struct Counted<F> {
    inner: F,
}

impl<F: std::future::Future> std::future::Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        TASK_POLLS.with(|polls| polls.set(polls.get().wrapping_add(1)));
        // SAFETY: `inner` is never moved out of a pinned `Counted`.
        unsafe { self.map_unchecked_mut(|c| &mut c.inner) }.poll(cx)
    }
}

/// Wraps a task's future so the driver sees when it runs. On a thread with
/// naps enabled, every task spawned there must be `counted`: the driver
/// naps only when none ran since its last yield, and a task it cannot see
/// could sit queued behind a nap (at most `nap_max`).
pub fn counted<F: std::future::Future>(inner: F) -> Counted<F> {
    Counted { inner }
}

thread_local! {
    static READINESS: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

/// This thread's readiness, its driver started if it is not running.
/// Must be called from inside a glommio executor.
fn readiness() -> io::Result<Rc<Readiness>> {
    let readiness = READINESS.with(|cell| -> io::Result<Rc<Readiness>> {
        let mut cell = cell.borrow_mut();
        if let Some(r) = cell.as_ref() {
            return Ok(r.clone());
        }
        let r = Rc::new(Readiness {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            registered: Cell::new(0),
            sleeping: Cell::new(0),
            woken_sleepers: RefCell::new(Vec::new()),
            sleepers_waker: Cell::new(None),
            driver_running: Cell::new(false),
            batches: Cell::new(0),
            nap_max: Cell::new(None),
            doorbell: RefCell::new(None),
            rung_seen: Cell::new(0),
            doorbell_pending: Cell::new(false),
            naps: Cell::new(0),
            always_ready: eventfd(1)?,
            nap_holds: Cell::new(0),
            timers: RefCell::new(BTreeMap::new()),
            timer_entries: Cell::new(0),
            due_wakers: Cell::new(Vec::new()),
            timerfd: OnceCell::new(),
            parked: Cell::new(false),
            timerfd_armed_for: Cell::new(None),
        });
        *cell = Some(r.clone());
        Ok(r)
    })?;
    if !readiness.driver_running.get() {
        readiness.driver_running.set(true);
        glommio::spawn_local(drive(readiness.clone())).detach();
    }
    Ok(readiness)
}

/// Sockets in this thread's epoll set now (0 before the first): the
/// shard's awake connections and its listener, and its sleepers. A metric,
/// so the set's size can be checked against the connection counts.
pub fn registered_sockets() -> usize {
    READINESS.with(|cell| {
        cell.borrow()
            .as_ref()
            .map_or(0, |r| r.registered.get() + r.sleeping.get())
    })
}

/// Moves the tokens of sleepers found ready since the last call into
/// `into`: `Ready(Ok)` if there were any, else `Pending` with the waker
/// kept (one waiter per thread: a later call replaces it). A token is
/// reported once per `ReadyStream::into_sleeper`; one whose sleeper was
/// woken or dropped since may still be reported, and means nothing then.
/// Fails only if this thread has no epoll set and cannot make one. Must be
/// called from inside a glommio executor.
pub fn poll_woken_sleepers(cx: &Context<'_>, into: &mut Vec<u64>) -> Poll<io::Result<()>> {
    let readiness = match readiness() {
        Ok(readiness) => readiness,
        Err(e) => return Poll::Ready(Err(e)),
    };
    let mut woken = readiness.woken_sleepers.borrow_mut();
    if woken.is_empty() {
        Slot::park(&readiness.sleepers_waker, cx.waker());
        return Poll::Pending;
    }
    into.append(&mut woken);
    Poll::Ready(Ok(()))
}

/// The longest `nap_max` the server and the loadgen accept: naps keep
/// glommio's timers and I/O waiting, and more than 100 ms of that is never
/// what anyone wants.
pub const NAP_MAX_US_LIMIT: u64 = 100_000;

/// Lets this thread's driver nap (see the module docs) for at most
/// `nap_max` at a time, which is also the longest glommio's reactor then
/// waits for a visit (its timers can fire that late, and its I/O and
/// channel messages wait that long, unless `doorbell` is rung). Every task
/// on the thread must be `counted`. `doorbell`, if any, joins the set; the
/// threads that send this one messages ring it. Must be called from inside
/// a glommio executor; a second call replaces the first's settings.
pub fn enable_naps(nap_max: Duration, doorbell: Option<Arc<Doorbell>>) -> io::Result<()> {
    let readiness = readiness()?;
    if let Some(bell) = &doorbell {
        let already = readiness
            .doorbell
            .borrow()
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bell));
        if !already {
            if let Some(old) = readiness.doorbell.borrow_mut().take() {
                let _ = epoll::delete(&readiness.epoll, &old.eventfd);
            }
            epoll::add(
                &readiness.epoll,
                &bell.eventfd,
                epoll::EventData::new_u64(DOORBELL_DATA),
                epoll::EventFlags::IN,
            )?;
            readiness.rung_seen.set(bell.rung.load(Ordering::SeqCst));
            *readiness.doorbell.borrow_mut() = Some(bell.clone());
        }
    }
    readiness.nap_max.set(Some(nap_max));
    Ok(())
}

/// Keeps this thread's driver from napping while it lives: for work that
/// waits on glommio's reactor and must not wait for a nap to end (a log
/// write whose answers are held until it completes). `None` if the thread
/// has no epoll set and cannot make one (then there are no naps either).
pub fn hold_naps() -> Option<NapHold> {
    let readiness = readiness().ok()?;
    readiness.nap_holds.set(readiness.nap_holds.get() + 1);
    Some(NapHold(readiness))
}

/// See `hold_naps`.
pub struct NapHold(Rc<Readiness>);

impl Drop for NapHold {
    fn drop(&mut self) {
        self.0.nap_holds.set(self.0.nap_holds.get() - 1);
    }
}

/// A timer kept by this thread's readiness driver instead of glommio's
/// reactor: it fires on time while the driver naps (a nap ends when the
/// earliest one is due) and while it parks through glommio (a timerfd in
/// the set is armed for the earliest). Re-armed with `reset`, never
/// re-created, like glommio's `Timer`; fires once per arming (polled again
/// after firing, it is ready at once). Must be made and polled on the
/// thread whose executor made it.
pub struct ReadyTimer {
    readiness: Rc<Readiness>,
    deadline: Instant,
    /// Its entry among the driver's timers while it waits to fire; gone
    /// from there (with this still set) once the driver fired it.
    entry: Option<TimerKey>,
}

impl ReadyTimer {
    /// A timer due `after` from now. Must be called from inside a glommio
    /// executor.
    pub fn new(after: Duration) -> io::Result<ReadyTimer> {
        ReadyTimer::at(Instant::now() + after)
    }

    /// A timer due at `deadline` (at once if that has passed). Fails
    /// only if this thread has no epoll set or timerfd and cannot make
    /// them.
    pub fn at(deadline: Instant) -> io::Result<ReadyTimer> {
        let readiness = readiness()?;
        readiness.timerfd()?;
        Ok(ReadyTimer {
            readiness,
            deadline,
            entry: None,
        })
    }

    /// Re-arms the timer for `after` from now, fired or not.
    pub fn reset(&mut self, after: Duration) {
        self.reset_at(Instant::now() + after);
    }

    /// Re-arms the timer for `deadline`, fired or not.
    pub fn reset_at(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if self.entry.is_some_and(|key| key.0 != deadline) {
            self.leave();
        }
    }

    /// When it is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes its entry out of the driver's timers, if it is there.
    fn leave(&mut self) {
        if let Some(key) = self.entry.take() {
            self.readiness.timers.borrow_mut().remove(&key);
        }
    }
}

impl std::future::Future for ReadyTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(key) = this.entry {
            let mut timers = this.readiness.timers.borrow_mut();
            return match timers.get_mut(&key) {
                Some(waker) => {
                    if !waker.will_wake(cx.waker()) {
                        let old = std::mem::replace(waker, cx.waker().clone());
                        drop(timers);
                        // Dropped with the map released, like a wake.
                        drop(old);
                    }
                    Poll::Pending
                }
                None => {
                    // The driver took the entry out when it fired it.
                    drop(timers);
                    this.entry = None;
                    Poll::Ready(())
                }
            };
        }
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        let readiness = &this.readiness;
        let age = readiness.timer_entries.get();
        readiness.timer_entries.set(age.wrapping_add(1));
        let key = (this.deadline, age);
        readiness
            .timers
            .borrow_mut()
            .insert(key, cx.waker().clone());
        this.entry = Some(key);
        if readiness.parked.get() {
            // The driver waits through glommio with the timerfd armed for
            // the earliest timer as it was then (or not at all). Arming
            // fails only for an invalid timerfd (logged).
            readiness.arm_timerfd(this.deadline);
        }
        Poll::Pending
    }
}

impl Drop for ReadyTimer {
    fn drop(&mut self) {
        self.leave();
    }
}

/// `ReadyTimer`s waiting on this thread (tests).
#[cfg(test)]
fn timers_waiting() -> usize {
    READINESS.with(|cell| {
        cell.borrow()
            .as_ref()
            .map_or(0, |r| r.timers.borrow().len())
    })
}

/// Naps this thread's driver has taken (tests).
#[cfg(test)]
fn naps_taken() -> u64 {
    READINESS.with(|cell| cell.borrow().as_ref().map_or(0, |r| r.naps.get()))
}

/// Batches taken by this thread's driver so far (tests).
#[cfg(test)]
fn batches_for_test() -> u64 {
    READINESS.with(|cell| cell.borrow().as_ref().map_or(0, |r| r.batches.get()))
}

/// Marks the driver gone when its task is dropped with its executor.
struct DriverRunning(Rc<Readiness>);

impl Drop for DriverRunning {
    fn drop(&mut self) {
        self.0.driver_running.set(false);
    }
}

/// The shard's readiness driver: waits for the epoll set through glommio,
/// takes a batch of ready sockets and wakes their tasks, again and again.
///
/// While sockets keep becoming ready, it does not go back to the reactor
/// after each batch: it lets the woken tasks run (a yield puts it behind
/// them) and then looks at the set again with a plain `epoll_wait(0)`. Each
/// trip through the reactor costs a poll armed in io_uring, a turn of the
/// executor loop (several `io_uring_enter`s) and, when the poll is armed on
/// an empty set, a cross-thread wake-up by whoever sends next (an
/// interrupt, costly in a VM). It goes back once a look finds nothing, or
/// after `REACTOR_TURN_PERIOD_MAX`, so glommio's timers, channels and other
/// I/O are served at least that often. With naps enabled, see
/// `serve_until_idle`.
async fn drive(readiness: Rc<Readiness>) {
    let running = DriverRunning(readiness);
    let readiness = &running.0;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_PER_WAIT_MAX);
    let mut fallback_logged = false;
    loop {
        readiness.before_reactor_visit();
        let parked = Parked::new(readiness);
        let waited = if parked.timer_unarmed {
            // Cannot happen with a valid timerfd; if it does, the timers
            // are looked at every `FALLBACK_POLL_PERIOD` instead.
            glommio::timer::Timer::new(FALLBACK_POLL_PERIOD).await;
            Ok(())
        } else {
            wait_readable(&readiness.epoll).await
        };
        drop(parked);
        if let Err(e) = waited {
            if !fallback_logged {
                log::warn!("readiness: cannot wait for the epoll set ({e}); polling it every {FALLBACK_POLL_PERIOD:?} until it can");
                fallback_logged = true;
            }
            glommio::timer::Timer::new(FALLBACK_POLL_PERIOD).await;
        }
        serve_until_idle(readiness, &mut events).await;
    }
}

/// The driver parks through glommio while this lives: the timerfd is
/// armed for the earliest `ReadyTimer`, and for any earlier one made
/// meanwhile (by a task glommio runs), so the set wakes the driver for it.
struct Parked<'a> {
    readiness: &'a Readiness,
    /// A timer waits and the timerfd could not be armed for it: the park
    /// must not be unbounded.
    timer_unarmed: bool,
}

impl<'a> Parked<'a> {
    fn new(readiness: &'a Readiness) -> Parked<'a> {
        readiness.parked.set(true);
        let timer_unarmed = readiness
            .next_timer()
            .is_some_and(|deadline| !readiness.arm_timerfd(deadline));
        Parked {
            readiness,
            timer_unarmed,
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // The timerfd stays armed: if it goes off for nothing, the driver
        // reads it once, which costs less than disarming it every time.
        self.readiness.parked.set(false);
    }
}

/// Takes batches and wakes their tasks until the set has been empty for a
/// while, then returns (the driver then parks through glommio).
///
/// Without naps: until a look finds the set empty, or
/// `REACTOR_TURN_PERIOD_MAX` after the reactor let the driver go (the
/// driver's wait through the reactor finds the set ready then, so that
/// trip does not park).
///
/// With naps: an empty set, once no other task ran since the driver's last
/// yield, is waited for in `epoll_wait` (a nap) until `nap_max` after the
/// last ready socket; it returns only then. Every `nap_max` (at least
/// `REACTOR_TURN_PERIOD_MAX`), or when the doorbell rang, it visits the
/// reactor without parking (`visit_reactor`).
async fn serve_until_idle(readiness: &Readiness, events: &mut Vec<epoll::Event>) {
    let mut back_from_reactor = Instant::now();
    let mut last_ready = back_from_reactor;
    // `TASK_POLLS` when the driver last yielded; `None` until it has, this
    // turn (tasks woken before it came back may be queued behind it).
    let mut polls_at_yield: Option<u64> = None;
    loop {
        let mut ready = take_batch(readiness, events, None) + readiness.fire_due_timers();
        let naps = readiness
            .nap_max
            .get()
            .filter(|_| readiness.nap_holds.get() == 0);
        let Some(nap_max) = naps else {
            if ready == 0 || back_from_reactor.elapsed() >= REACTOR_TURN_PERIOD_MAX {
                return;
            }
            futures_lite::future::yield_now().await;
            continue;
        };
        let turn_max = nap_max.max(REACTOR_TURN_PERIOD_MAX);
        if ready == 0 && !readiness.doorbell_pending.get() {
            let polls = task_polls();
            if polls_at_yield != Some(polls) {
                // Tasks ran since the driver last yielded: what they woke
                // may wait behind it. Let that run first.
                polls_at_yield = Some(polls);
                futures_lite::future::yield_now().await;
                continue;
            }
            let now = Instant::now();
            let next_timer = readiness.next_timer();
            // A timer due within a nap keeps the driver napping: parking
            // through glommio for it would cost more than the nap.
            let timer_soon = next_timer.is_some_and(|due| due < now + nap_max);
            let idle_at = last_ready + nap_max;
            if now >= idle_at && !timer_soon {
                return;
            }
            // A nap ends no later than the visit is due (and no earlier,
            // or the driver would spin until it), the idle bound or the
            // next timer.
            let reactor_due = back_from_reactor + turn_max;
            if now < reactor_due {
                let mut nap_until = reactor_due;
                if idle_at > now {
                    nap_until = nap_until.min(idle_at);
                }
                if let Some(due) = next_timer {
                    nap_until = nap_until.min(due);
                }
                ready = readiness.nap(events, nap_until.saturating_duration_since(now));
                ready += readiness.fire_due_timers();
                if ready == 0 && !readiness.doorbell_pending.get() {
                    // Nothing until the nap's end: the idle bound or the
                    // reactor's turn, decided on the next pass.
                    continue;
                }
            }
        }
        let now = Instant::now();
        if ready > 0 {
            last_ready = now;
        }
        if readiness.doorbell_pending.get() || now.duration_since(back_from_reactor) >= turn_max {
            readiness.before_reactor_visit();
            visit_reactor(readiness).await;
            back_from_reactor = Instant::now();
            polls_at_yield = None;
            continue;
        }
        polls_at_yield = Some(task_polls());
        futures_lite::future::yield_now().await;
    }
}

/// One turn through glommio's reactor (timers, completions, channel
/// messages) that does not park: the same wait as for the set, on an
/// eventfd that is always readable, so the poll completes as it is
/// submitted. (A timer cannot do this: one due at once is ready without
/// the reactor, one due later may park the thread until then.)
async fn visit_reactor(readiness: &Readiness) {
    if let Err(e) = wait_readable(&readiness.always_ready).await {
        log::debug!("readiness: reactor visit by timer ({e})");
        glommio::timer::Timer::new(FALLBACK_POLL_PERIOD).await;
    }
}

impl Readiness {
    /// Notes what the reactor visit about to start will take: every
    /// message rung for so far.
    fn before_reactor_visit(&self) {
        self.doorbell_pending.set(false);
        if let Some(bell) = self.doorbell.borrow().as_ref() {
            self.rung_seen.set(bell.rung.load(Ordering::SeqCst));
        }
    }

    /// The earliest waiting `ReadyTimer`'s deadline.
    fn next_timer(&self) -> Option<Instant> {
        self.timers.borrow().first_key_value().map(|(key, _)| key.0)
    }

    /// Wakes the tasks of the `ReadyTimer`s due now, taking them out of
    /// the waiting ones; returns how many.
    fn fire_due_timers(&self) -> usize {
        let mut due = self.due_wakers.take();
        {
            let mut timers = self.timers.borrow_mut();
            if !timers.is_empty() {
                let now = Instant::now();
                while let Some(entry) = timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    due.push(entry.remove());
                }
            }
        }
        // Woken with the map released: a waker may touch a `ReadyTimer`.
        // The list goes back with its capacity, due or not.
        let fired = due.len();
        for waker in due.drain(..) {
            waker.wake();
        }
        self.due_wakers.set(due);
        fired
    }

    /// This thread's timerfd, made and added to the set on first use.
    fn timerfd(&self) -> io::Result<&OwnedFd> {
        if let Some(timerfd) = self.timerfd.get() {
            return Ok(timerfd);
        }
        let timerfd = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &self.epoll,
            &timerfd,
            epoll::EventData::new_u64(TIMERFD_DATA),
            epoll::EventFlags::IN,
        )?;
        Ok(self.timerfd.get_or_init(|| timerfd))
    }

    /// Makes sure the timerfd goes off by `deadline` (the driver parks
    /// through glommio, and only the set can wake it); false if it could
    /// not be armed.
    fn arm_timerfd(&self, deadline: Instant) -> bool {
        if self
            .timerfd_armed_for
            .get()
            .is_some_and(|armed| armed <= deadline)
        {
            return true;
        }
        // Made with the first timer (`ReadyTimer::at`): this cannot fail.
        let Ok(timerfd) = self.timerfd() else {
            return false;
        };
        // Zero would disarm it: a timer already due goes off in 1 ns.
        let after = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = rustix::time::Itimerspec {
            it_interval: Timespec::default(),
            it_value: Timespec {
                tv_sec: after.as_secs() as _,
                tv_nsec: after.subsec_nanos() as _,
            },
        };
        match rustix::time::timerfd_settime(
            timerfd,
            rustix::time::TimerfdTimerFlags::empty(),
            &spec,
        ) {
            Ok(_) => {
                self.timerfd_armed_for.set(Some(deadline));
                true
            }
            Err(e) => {
                log::error!("readiness: cannot arm the timerfd: {e}");
                false
            }
        }
    }

    /// Waits up to `wait` for the set (a nap); returns the batch taken, as
    /// `take_batch`. A doorbell rung since the last reactor visit (seen
    /// before or during the nap) sets `doorbell_pending` instead.
    fn nap(&self, events: &mut Vec<epoll::Event>, wait: Duration) -> usize {
        // A shared borrow: `take_batch` only reads the doorbell too.
        let doorbell = self.doorbell.borrow();
        if let Some(bell) = doorbell.as_ref() {
            bell.napping.store(true, Ordering::SeqCst);
            if bell.rung.load(Ordering::SeqCst) != self.rung_seen.get() {
                bell.napping.store(false, Ordering::SeqCst);
                self.doorbell_pending.set(true);
                return 0;
            }
        }
        self.naps.set(self.naps.get() + 1);
        let ready = take_batch(self, events, Some(wait));
        if let Some(bell) = doorbell.as_ref() {
            bell.napping.store(false, Ordering::SeqCst);
        }
        ready
    }
}

/// Takes the ready sockets (up to `EVENTS_PER_WAIT_MAX`), waiting up to
/// `wait` for the first (`None`: not at all), marks their slots and wakes
/// their tasks. Returns how many were ready (a doorbell's report counts,
/// the timerfd's does not).
fn take_batch(
    readiness: &Readiness,
    events: &mut Vec<epoll::Event>,
    wait: Option<Duration>,
) -> usize {
    events.clear();
    let waited = match wait {
        Some(wait) if !wait.is_zero() => epoll_wait_for(&readiness.epoll, events, wait),
        _ => epoll::wait(
            &readiness.epoll,
            spare_capacity(events),
            Some(&Timespec::default()),
        )
        .map(|_| ()),
    };
    match waited {
        Ok(()) | Err(Errno::INTR) => {}
        Err(e) => {
            log::error!("readiness: epoll_wait failed: {e}");
            return 0;
        }
    }
    readiness.batches.set(readiness.batches.get() + 1);
    let mut sleepers_woken = false;
    let mut timerfd_reports = 0;
    for event in events.iter() {
        // Copied out: the kernel's struct is packed.
        let (flags, data) = (event.flags, event.data);
        if data.u64() & SLEEPER_BIT != 0 {
            readiness.woken_sleepers.borrow_mut().push(data.u64() >> 1);
            sleepers_woken = true;
            continue;
        }
        if data.u64() == DOORBELL_DATA {
            if let Some(bell) = readiness.doorbell.borrow().as_ref() {
                let mut count = [0u8; 8];
                // Empties the counter; `EAGAIN` if another report did.
                let _ = rustix::io::read(&bell.eventfd, &mut count);
            }
            readiness.doorbell_pending.set(true);
            continue;
        }
        if data.u64() == TIMERFD_DATA {
            if let Some(timerfd) = readiness.timerfd.get() {
                let mut expirations = [0u8; 8];
                // Disarms the report; `EAGAIN` if it was re-armed since.
                let _ = rustix::io::read(timerfd, &mut expirations);
            }
            readiness.timerfd_armed_for.set(None);
            // Not counted: `fire_due_timers` counts what it wakes, and a
            // report for a timer since reset must not delay the park.
            timerfd_reports += 1;
            continue;
        }
        // SAFETY: the registration holds a reference to the slot until
        // the socket has left the set or its registration was modified to
        // a sleeper's (either way an event not yet taken no longer carries
        // the pointer); nothing in this loop can change a registration.
        let slot = unsafe { &*(data.ptr() as *const Slot) };
        if flags
            .intersects(epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
        {
            slot.hung_up.set(true);
        }
        if flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::HUP
                | epoll::EventFlags::ERR,
        ) {
            slot.readable.set(true);
            wake_and_keep(&slot.reader);
        }
        if flags
            .intersects(epoll::EventFlags::OUT | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
        {
            slot.writable.set(true);
            wake_and_keep(&slot.writer);
        }
    }
    if sleepers_woken {
        if let Some(waker) = readiness.sleepers_waker.take() {
            waker.wake();
        }
    }
    events.len() - timerfd_reports
}

/// Set once `epoll_pwait2` failed other than by a signal: Linux before
/// 5.11 (`ENOSYS`), or a seccomp filter that refuses it.
static EPOLL_PWAIT2_MISSING: AtomicBool = AtomicBool::new(false);

/// The kernel's `struct __kernel_timespec`: 64-bit fields on every target
/// (`libc::timespec`'s seconds are 32 bits on 32-bit targets).
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `epoll_wait` for up to `wait`, to the nanosecond: a nap bounded by a
/// `ReadyTimer` due in 250 µs must not last a millisecond, which is all
/// `epoll_wait`'s own timeout can say (rustix uses it unless built for
/// Linux 5.11, and then uses only `epoll_pwait2`). Falls back to it for
/// good, with the wait rounded up to the millisecond, the first time
/// `epoll_pwait2` fails other than by a signal.
fn epoll_wait_for(
    epoll: &OwnedFd,
    events: &mut Vec<epoll::Event>,
    wait: Duration,
) -> Result<(), Errno> {
    let timeout = Timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    if !EPOLL_PWAIT2_MISSING.load(Ordering::Relaxed) {
        let kernel_timeout = KernelTimespec {
            tv_sec: wait.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        // SAFETY: the buffer is `events`' spare capacity, whose element
        // type is the kernel's `struct epoll_event` (rustix's `Event` has
        // its layout); the kernel writes at most `capacity` of them and
        // says how many; no signal mask (NULL) is passed.
        let taken = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epoll.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::c_void>(),
                events.capacity() as libc::c_int,
                &kernel_timeout as *const KernelTimespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if taken >= 0 {
            // SAFETY: the kernel initialised the first `taken` events.
            unsafe { events.set_len(taken as usize) };
            return Ok(());
        }
        let errno =
            Errno::from_raw_os_error(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        if errno == Errno::INTR {
            return Err(errno);
        }
        // `ENOSYS` before 5.11; `EPERM` (or another error) from a seccomp
        // filter that does not know the call. The old call says what is
        // really wrong, if anything is.
        log::debug!(
            "readiness: epoll_pwait2 unavailable ({errno}); naps wait in whole milliseconds"
        );
        EPOLL_PWAIT2_MISSING.store(true, Ordering::Relaxed);
    }
    epoll::wait(epoll, spare_capacity(events), Some(&timeout)).map(|_| ())
}

/// Waits, through glommio's reactor, until the epoll set has ready sockets.
///
/// glommio 0.9 has no public "wait until this descriptor is readable", but
/// its `TcpStream` built from a descriptor arms exactly that poll when it is
/// made, and its first read waits for it. The read then fails (an epoll
/// descriptor is not a socket: `ENOTSOCK`), which here means "ready". The
/// stream owns a duplicate of the epoll descriptor, closed when it drops;
/// `tests::driver_sleeps_while_idle` pins this behaviour down.
async fn wait_readable(epoll: &OwnedFd) -> io::Result<()> {
    let duplicate = epoll.try_clone()?;
    // SAFETY: a descriptor we own, moved into the stream (closed on drop).
    let mut probe = unsafe { glommio::net::TcpStream::from_raw_fd(duplicate.into_raw_fd()) };
    match probe.read(&mut [0u8; 1]).await {
        Err(e) if e.raw_os_error() == Some(Errno::NOTSOCK.raw_os_error()) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(io::Error::other("read an epoll descriptor as a socket")),
    }
}

/// A connected TCP socket served through its shard's readiness driver.
pub struct ReadyStream {
    /// `None` only after `into_owned_fd`.
    fd: Option<OwnedFd>,
    slot: Rc<Slot>,
    readiness: Rc<Readiness>,
}

impl ReadyStream {
    /// Takes over a connected socket (from glommio's accept, or back from
    /// hibernation) and registers it with this shard's epoll set.
    pub fn adopt(fd: OwnedFd) -> io::Result<ReadyStream> {
        let readiness = readiness()?;
        let (slot, registration) = Slot::registered();
        let added = epoll::add(
            &readiness.epoll,
            &fd,
            Slot::event_data(registration),
            SERVED_EVENTS,
        );
        if let Err(e) = added {
            // SAFETY: not in the set, so no event points at it.
            drop(unsafe { Rc::from_raw(registration) });
            return Err(e.into());
        }
        readiness.registered.set(readiness.registered.get() + 1);
        Ok(ReadyStream {
            fd: Some(fd),
            slot,
            readiness,
        })
    }

    /// Takes over a socket glommio made (a `connect`, say). glommio's
    /// stream has no `into_raw_fd`: the socket is duplicated and glommio's
    /// copy dropped.
    pub fn from_glommio(stream: glommio::net::TcpStream) -> io::Result<ReadyStream> {
        // SAFETY: the descriptor is open for as long as `stream` lives.
        let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let fd = borrowed.try_clone_to_owned()?;
        drop(stream);
        ReadyStream::adopt(fd)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("socket taken").as_fd()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.fd())
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("peer is not an IP socket"))
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.fd()).set_nodelay(nodelay)
    }

    /// Leaves the epoll set and hands the socket on (to a caller that
    /// serves it some other way; hibernation uses `into_sleeper`).
    pub fn into_owned_fd(mut self) -> OwnedFd {
        self.deregister();
        self.fd.take().expect("socket taken")
    }

    /// Puts the socket to sleep under `token` (at most
    /// `SLEEPER_TOKEN_MAX`): no task waits on it any more, and the first
    /// input, hang-up or error reports `token` once, through
    /// `poll_woken_sleepers`. The socket stays in the set (one
    /// `epoll_ctl`, no second set): `Sleeper::wake` gives it a task again.
    /// On failure the stream is handed back unchanged.
    pub fn into_sleeper(mut self, token: u64) -> Result<Sleeper, (ReadyStream, io::Error)> {
        assert!(
            token <= SLEEPER_TOKEN_MAX,
            "sleeper token {token} over the maximum"
        );
        let modified = epoll::modify(
            &self.readiness.epoll,
            self.fd(),
            epoll::EventData::new_u64((token << 1) | SLEEPER_BIT),
            // Level-triggered and one-shot: input already waiting reports
            // at once, and a sleeper is reported once.
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT,
        );
        if let Err(e) = modified {
            return Err((self, e.into()));
        }
        let readiness = &self.readiness;
        readiness.registered.set(readiness.registered.get() - 1);
        readiness.sleeping.set(readiness.sleeping.get() + 1);
        // SAFETY: the registration's reference from `adopt`; the
        // registration no longer points at the slot.
        drop(unsafe { Rc::from_raw(Rc::as_ptr(&self.slot)) });
        Ok(Sleeper {
            fd: self.fd.take().expect("socket taken"),
            _thread_bound: std::marker::PhantomData,
        })
    }

    fn deregister(&self) {
        let Some(fd) = &self.fd else {
            return;
        };
        match epoll::delete(&self.readiness.epoll, fd) {
            Ok(()) => {
                let registered = &self.readiness.registered;
                registered.set(registered.get() - 1);
                // SAFETY: the registration's reference from `adopt`; the
                // socket is out of the set, so no event points at it now.
                drop(unsafe { Rc::from_raw(Rc::as_ptr(&self.slot)) });
            }
            Err(e) => {
                // Still in the set (it cannot be, with the descriptor
                // open): its slot is kept for good rather than freed under
                // a possible event.
                log::error!("readiness: cannot leave the epoll set: {e}");
            }
        }
    }
}

/// A socket asleep in this thread's epoll set (`ReadyStream::into_sleeper`):
/// just the descriptor, so a sleeper costs no more memory than its socket.
/// It must be woken or dropped on the thread that put it to sleep; dropping
/// it takes the socket out of the set and closes it.
#[derive(Debug)]
pub struct Sleeper {
    /// A plain descriptor, so that an `Option<Sleeper>` (what a hibernating
    /// connection keeps) is no larger than one.
    fd: OwnedFd,
    /// Neither `Send` nor `Sync`: it belongs to its thread's set.
    _thread_bound: std::marker::PhantomData<Rc<()>>,
}

impl Sleeper {
    /// Gives the socket a task again: its registration carries a new slot,
    /// edge-triggered as before, and input that arrived while asleep is
    /// reported at once. On failure the socket is closed (it leaves the set).
    pub fn wake(self) -> io::Result<ReadyStream> {
        let readiness = readiness()?;
        let (slot, registration) = Slot::registered();
        // From here on the stream, or the error path, owns the socket:
        // taken out without running `Drop` (which would close it).
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: read once from a value that is never used or dropped again.
        let fd = unsafe { std::ptr::read(&this.fd) };
        let modified = epoll::modify(
            &readiness.epoll,
            &fd,
            Slot::event_data(registration),
            SERVED_EVENTS,
        );
        readiness.sleeping.set(readiness.sleeping.get() - 1);
        if let Err(e) = modified {
            // SAFETY: the registration does not point at the slot.
            drop(unsafe { Rc::from_raw(registration) });
            let _ = epoll::delete(&readiness.epoll, &fd);
            return Err(e.into());
        }
        readiness.registered.set(readiness.registered.get() + 1);
        Ok(ReadyStream {
            fd: Some(fd),
            slot,
            readiness,
        })
    }
}

impl AsRawFd for Sleeper {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Sleeper {
    /// Leaves the set; the descriptor then closes (the field's own drop).
    fn drop(&mut self) {
        // (At thread exit the set may be gone already: closing suffices.)
        let _ = READINESS.try_with(|cell| {
            if let Some(readiness) = cell.borrow().as_ref() {
                readiness.sleeping.set(readiness.sleeping.get() - 1);
                if let Err(e) = epoll::delete(&readiness.epoll, &self.fd) {
                    log::error!("readiness: a sleeper cannot leave the epoll set: {e}");
                }
            }
        });
    }
}

/// A listening socket in the shard's readiness set: accepts without glommio,
/// so an accepted socket needs no duplicate to leave it.
pub struct ReadyListener {
    socket: ReadyStream,
}

impl ReadyListener {
    /// Takes over a bound, listening socket (made non-blocking: `accept`
    /// has no per-call "don't wait" flag).
    pub fn adopt(fd: OwnedFd) -> io::Result<ReadyListener> {
        socket2::SockRef::from(&fd).set_nonblocking(true)?;
        Ok(ReadyListener {
            socket: ReadyStream::adopt(fd)?,
        })
    }

    /// The next connection, registered in the readiness set.
    pub async fn accept(&self) -> io::Result<ReadyStream> {
        let accepted = std::future::poll_fn(|cx| loop {
            match rustix::net::accept_with(
                self.socket.fd(),
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => return Poll::Ready(Ok(fd)),
                // Interrupted, or the peer gave up while queued: next one.
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(Errno::AGAIN) => {
                    Slot::park(&self.socket.slot.reader, cx.waker());
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(io::Error::from(e))),
            }
        })
        .await?;
        ReadyStream::adopt(accepted)
    }
}

impl Drop for ReadyStream {
    fn drop(&mut self) {
        if self.fd.is_some() {
            self.deregister();
        }
    }
}

impl AsRawFd for ReadyStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }
}

impl AsyncRead for ReadyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        let slot = &self.slot;
        // Short means drained: an edge-triggered socket raises a new event
        // for whatever arrives after this read, so the next read can wait
        // for it instead of asking the kernel for `EAGAIN` first (tokio does
        // the same, tokio#5866). End of stream (0) stays readable: it reads
        // 0 again. After a hang-up no edge follows: see `hung_up`.
        slot.poll_io(&slot.readable, &slot.reader, cx, buf.len(), || {
            #[cfg(test)]
            tests::RECV_CALLS.with(|c| c.set(c.get() + 1));
            rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT).map(|(n, _)| n)
        })
    }
}

impl AsyncWrite for ReadyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        let slot = &self.slot;
        // Short means the send buffer is full; the kernel raises an edge
        // when room frees up.
        slot.poll_io(&slot.writable, &slot.writer, cx, buf.len(), || {
            rustix::net::send(fd, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A half-close: FIN goes out, reads go on.
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match rustix::net::shutdown(self.fd(), Shutdown::Write) {
            Ok(()) | Err(Errno::NOTCONN) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncWriteExt;
    use glommio::timer::Timer;
    use glommio::LocalExecutorBuilder;
    use std::os::unix::net::UnixStream;

    fn run<F: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        LocalExecutorBuilder::default()
            .spawn(move || async move { test().await })
            .expect("executor")
            .join()
            .expect("join");
    }

    /// A connected pair: ours through the readiness driver, theirs plain.
    fn pair() -> (ReadyStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        (
            ReadyStream::adopt(OwnedFd::from(ours)).expect("adopt"),
            theirs,
        )
    }

    #[test]
    fn reads_what_arrives_later_and_sees_the_close() {
        run(|| async {
            let (mut ours, theirs) = pair();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut theirs = theirs;
                for i in 0..50u8 {
                    std::thread::sleep(Duration::from_millis(2));
                    theirs.write_all(&[i; 3]).expect("write");
                }
            });
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = ours.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            writer.join().expect("writer");
            let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 3]).collect();
            assert_eq!(got, want);
        });
    }

    thread_local! {
        /// `recv` calls made on this thread.
        pub(super) static RECV_CALLS: Cell<u64> = const { Cell::new(0) };
    }

    fn recv_calls() -> u64 {
        RECV_CALLS.with(|c| c.get())
    }

    #[test]
    fn a_drained_socket_waits_for_the_next_edge_without_a_read() {
        run(|| async {
            use std::io::Write;
            let (mut ours, theirs) = pair();
            (&theirs).write_all(b"one").expect("write");
            let mut buf = [0u8; 64];
            let before = recv_calls();
            assert_eq!(ours.read(&mut buf).await.expect("read"), 3);
            // Short: drained. The next read waits for the edge of the next
            // arrival, without asking the kernel first.
            let later = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                (&theirs).write_all(b"two").expect("write");
                theirs
            });
            assert_eq!(ours.read(&mut buf).await.expect("read"), 3);
            assert_eq!(&buf[..3], b"two");
            assert_eq!(recv_calls() - before, 2, "one read per arrival, no EAGAIN");
            // A full buffer is not proof of a drained socket: read on.
            let theirs = later.join().expect("writer");
            (&theirs).write_all(&[7u8; 100]).expect("write");
            Timer::new(Duration::from_millis(10)).await;
            let mut small = [0u8; 64];
            assert_eq!(ours.read(&mut small).await.expect("read"), 64);
            assert_eq!(ours.read(&mut small).await.expect("read"), 36);
        });
    }

    #[test]
    fn the_end_of_stream_is_seen_after_a_short_read() {
        run(|| async {
            use std::io::Write;
            let (mut ours, theirs) = pair();
            // Data and the hang-up both arrive before the first read: the
            // short read drains the data, and the hang-up's edge is already
            // taken, so no edge follows. The next read must still see 0.
            (&theirs).write_all(b"last words").expect("write");
            drop(theirs);
            Timer::new(Duration::from_millis(10)).await;
            let mut buf = [0u8; 64];
            assert_eq!(ours.read(&mut buf).await.expect("read"), 10);
            let eof = futures_lite::future::or(
                async { Some(ours.read(&mut buf).await.expect("read")) },
                async {
                    Timer::new(Duration::from_secs(2)).await;
                    None
                },
            )
            .await;
            assert_eq!(eof, Some(0), "the end of stream was not seen");
        });
    }

    #[test]
    fn a_full_socket_waits_for_room_and_loses_nothing() {
        run(|| async {
            let (mut ours, theirs) = pair();
            const TOTAL: usize = 8 << 20;
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                let mut theirs = theirs;
                let mut sum = 0u64;
                let mut len = 0usize;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    // Slow at first, so our side fills up and must wait.
                    if len < TOTAL / 4 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let n = theirs.read(&mut buf).expect("read");
                    if n == 0 {
                        return (len, sum);
                    }
                    len += n;
                    sum += buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>();
                }
            });
            let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
            ours.write_all(&data).await.expect("write");
            ours.close().await.expect("close");
            let (len, sum) = reader.join().expect("reader");
            assert_eq!(len, TOTAL);
            assert_eq!(sum, data.iter().map(|&b| u64::from(b)).sum::<u64>());
        });
    }

    #[test]
    fn a_listener_accepts_every_queued_connection_and_then_waits() {
        run(|| async {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = std_listener.local_addr().expect("addr");
            let listener = ReadyListener::adopt(OwnedFd::from(std_listener)).expect("adopt");
            // Three queued before the first accept, two more while it waits.
            let early: Vec<_> = (0..3)
                .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
                .collect();
            let late = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                (0..2)
                    .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
                    .collect::<Vec<_>>()
            });
            let mut accepted = Vec::new();
            for _ in 0..5 {
                accepted.push(listener.accept().await.expect("accept"));
            }
            let late = late.join().expect("late clients");
            // Each accepted socket is the far end of one client: say so
            // through it and read it back on the client side.
            let mut clients: Vec<_> = early.into_iter().chain(late).collect();
            let mut peers: Vec<SocketAddr> = clients
                .iter()
                .map(|c| c.local_addr().expect("addr"))
                .collect();
            let mut seen: Vec<SocketAddr> = accepted
                .iter()
                .map(|s| s.peer_addr().expect("peer"))
                .collect();
            peers.sort();
            seen.sort();
            assert_eq!(peers, seen);
            for s in &mut accepted {
                s.write_all(b"hi").await.expect("write");
            }
            for c in &mut clients {
                use std::io::Read;
                let mut buf = [0u8; 2];
                c.read_exact(&mut buf).expect("read");
                assert_eq!(&buf, b"hi");
            }
            // With the backlog empty, accepting waits without holding the
            // thread: a timer due before the next client arrives fires first.
            let timer_fired = Rc::new(Cell::new(false));
            let fired = timer_fired.clone();
            glommio::spawn_local(async move {
                Timer::new(Duration::from_millis(20)).await;
                fired.set(true);
            })
            .detach();
            let sixth = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::net::TcpStream::connect(addr).expect("connect")
            });
            let _accepted = listener.accept().await.expect("accept");
            assert!(timer_fired.get(), "accept blocked the shard's thread");
            drop(sixth.join().expect("sixth client"));
        });
    }

    #[test]
    fn driver_sleeps_while_idle() {
        run(|| async {
            let (mut ours, theirs) = pair();
            // Let the driver start and settle.
            Timer::new(Duration::from_millis(20)).await;
            let before = batches_for_test();
            Timer::new(Duration::from_millis(200)).await;
            let idle_batches = batches_for_test() - before;
            assert!(
                idle_batches <= 2,
                "the driver woke {idle_batches} times with nothing ready"
            );
            // And it still wakes for input.
            {
                use std::io::Write;
                (&theirs).write_all(b"x").expect("write");
            }
            let mut buf = [0u8; 4];
            assert_eq!(ours.read(&mut buf).await.expect("read"), 1);
        });
    }

    #[test]
    fn timers_fire_on_time_while_sockets_never_stop_being_ready() {
        run(|| async {
            // Two tasks bounce a byte across a pair whose both ends are in
            // the set: every batch the driver takes holds the next edge, so
            // only `REACTOR_TURN_PERIOD_MAX` sends it back to glommio's
            // reactor, which fires timers. Without that bound a timer
            // waits for the executor's preempt timer (100 ms here).
            let (left, right) = UnixStream::pair().expect("pair");
            let mut left = ReadyStream::adopt(OwnedFd::from(left)).expect("adopt");
            let mut right = ReadyStream::adopt(OwnedFd::from(right)).expect("adopt");
            let stop = Rc::new(Cell::new(false));
            let bounces = Rc::new(Cell::new(0u64));
            let echo = {
                glommio::spawn_local(async move {
                    // Until the other side hangs up (`read_exact` fails).
                    let mut byte = [0u8; 1];
                    while right.read_exact(&mut byte).await.is_ok() {
                        right.write_all(&byte).await.expect("write");
                    }
                })
            };
            let serve = {
                let (stop, bounces) = (stop.clone(), bounces.clone());
                glommio::spawn_local(async move {
                    let mut byte = [1u8; 1];
                    while !stop.get() {
                        left.write_all(&byte).await.expect("write");
                        left.read_exact(&mut byte).await.expect("read");
                        bounces.set(bounces.get() + 1);
                    }
                })
            };
            const TIMER: Duration = Duration::from_millis(1);
            let mut late = Vec::new();
            for _ in 0..20 {
                let started = Instant::now();
                Timer::new(TIMER).await;
                late.push(started.elapsed() - TIMER);
            }
            stop.set(true);
            let bounced = bounces.get();
            // One more bounce ends the serving loop, whose hang-up ends
            // the echo.
            serve.await;
            echo.await;
            late.sort();
            let median = late[late.len() / 2];
            assert!(
                bounced > 100,
                "the sockets were not kept busy ({bounced} bounces)"
            );
            assert!(
                median < Duration::from_millis(20),
                "1 ms timers fired {median:?} late (median of {}) with sockets always ready",
                late.len()
            );
        });
    }

    /// The sleeper tokens reported within `wait` (all of them, in order).
    async fn woken_within(wait: Duration) -> Vec<u64> {
        let mut woken = Vec::new();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            futures_lite::future::or(
                async {
                    std::future::poll_fn(|cx| poll_woken_sleepers(cx, &mut woken))
                        .await
                        .expect("epoll set");
                },
                async {
                    Timer::new(deadline.saturating_duration_since(Instant::now())).await;
                },
            )
            .await;
        }
        woken
    }

    /// Longest a test waits for something that must come.
    const MUST_COME_WAIT_MAX: Duration = Duration::from_secs(5);
    /// How long a test watches for a token reported twice.
    const DUPLICATE_WINDOW: Duration = Duration::from_millis(50);

    /// `what`'s output, or `None` if it had not finished after
    /// `MUST_COME_WAIT_MAX` (a test then fails instead of hanging).
    async fn in_time<T>(what: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(what.await) }, async {
            Timer::new(MUST_COME_WAIT_MAX).await;
            None
        })
        .await
    }

    /// The tokens reported: waits (bounded) for the first, then watches a
    /// little longer for more.
    async fn tokens_reported() -> Vec<u64> {
        let mut woken = Vec::new();
        let came = in_time(std::future::poll_fn(|cx| {
            poll_woken_sleepers(cx, &mut woken)
        }))
        .await
        .map(|polled| polled.expect("epoll set"))
        .is_some();
        if came {
            woken.extend(woken_within(DUPLICATE_WINDOW).await);
        }
        woken
    }

    /// One read, which must bring something (or the end) in time.
    async fn read_soon(stream: &mut ReadyStream, buf: &mut [u8]) -> usize {
        in_time(stream.read(buf))
            .await
            .expect("nothing to read: the socket is not served")
            .expect("read")
    }

    #[test]
    fn a_sleeper_reports_its_token_once_and_wakes_with_its_input() {
        run(|| async {
            use std::io::Write;
            let (ours, theirs) = pair();
            let (quiet, _quiet_peer) = pair();
            assert_eq!(registered_sockets(), 2);
            let sleeper = ours.into_sleeper(41).map_err(|(_, e)| e).expect("sleep");
            let _quiet_sleeper = quiet.into_sleeper(7).map_err(|(_, e)| e).expect("sleep");
            assert_eq!(registered_sockets(), 2, "sleepers stay in the set");
            assert!(
                woken_within(Duration::from_millis(30)).await.is_empty(),
                "reported with nothing to read"
            );
            (&theirs).write_all(b"wake").expect("write");
            (&theirs).write_all(b" up").expect("write");
            assert_eq!(
                tokens_reported().await,
                vec![41],
                "once, and only the sleeper with input"
            );
            let mut back = sleeper.wake().expect("wake");
            let mut buf = [0u8; 16];
            let n = read_soon(&mut back, &mut buf).await;
            assert_eq!(&buf[..n], b"wake up");
            // Served by the driver again: it waits for the next edge, and
            // later input is read too.
            (&theirs).write_all(b"!").expect("write");
            assert_eq!(read_soon(&mut back, &mut buf).await, 1);
            assert_eq!(registered_sockets(), 2);
        });
    }

    #[test]
    fn input_waiting_before_sleep_and_a_hang_up_report_the_token() {
        run(|| async {
            use std::io::Write;
            let (ours, theirs) = pair();
            // Arrived (and raised its edge) while the socket had a slot;
            // the driver may not have taken the event yet.
            (&theirs).write_all(b"early").expect("write");
            let sleeper = ours.into_sleeper(5).map_err(|(_, e)| e).expect("sleep");
            assert_eq!(tokens_reported().await, vec![5]);
            let mut back = sleeper.wake().expect("wake");
            let mut buf = [0u8; 16];
            assert_eq!(read_soon(&mut back, &mut buf).await, 5);
            let sleeper = back.into_sleeper(6).map_err(|(_, e)| e).expect("sleep");
            drop(theirs);
            assert_eq!(tokens_reported().await, vec![6]);
            let mut back = sleeper.wake().expect("wake");
            assert_eq!(read_soon(&mut back, &mut buf).await, 0, "end of stream");
        });
    }

    #[test]
    fn a_dropped_sleeper_leaves_the_set_and_closes_its_socket() {
        run(|| async {
            use std::io::Read;
            // What a hibernating connection keeps of its socket.
            assert_eq!(
                std::mem::size_of::<Option<Sleeper>>(),
                std::mem::size_of::<OwnedFd>()
            );
            let (ours, mut theirs) = pair();
            theirs
                .set_read_timeout(Some(MUST_COME_WAIT_MAX))
                .expect("timeout");
            let sleeper = ours.into_sleeper(9).map_err(|(_, e)| e).expect("sleep");
            assert_eq!(registered_sockets(), 1);
            drop(sleeper);
            assert_eq!(registered_sockets(), 0);
            let mut buf = [0u8; 4];
            assert_eq!(theirs.read(&mut buf).expect("read"), 0, "closed");
        });
    }

    #[test]
    fn a_handed_on_socket_leaves_the_set_and_comes_back() {
        run(|| async {
            let (ours, theirs) = pair();
            let fd = ours.into_owned_fd();
            {
                use std::io::Write;
                (&theirs).write_all(b"while away").expect("write");
            }
            let mut back = ReadyStream::adopt(fd).expect("adopt again");
            let mut buf = [0u8; 32];
            let n = back.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"while away");
            let registered = registered_sockets;
            assert_eq!(registered(), 1, "the first registration is gone");
            assert_eq!(
                Rc::strong_count(&back.slot),
                2,
                "ours and the registration's"
            );
            let slot = back.slot.clone();
            drop(back);
            assert_eq!(registered(), 0);
            assert_eq!(
                Rc::strong_count(&slot),
                1,
                "the registration's reference is given back"
            );
        });
    }

    /// `run`, with naps of at most `nap_max` (and no doorbell) on the test's
    /// executor, whose main task is counted like a shard's.
    fn run_napping<F: std::future::Future<Output = ()> + 'static>(
        nap_max: Duration,
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        run(move || async move {
            enable_naps(nap_max, None).expect("naps");
            counted(test()).await
        });
    }

    #[test]
    fn a_nap_ends_when_a_socket_becomes_readable() {
        run_napping(Duration::from_secs(5), || async {
            let (mut ours, theirs) = pair();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                for i in 0..20u8 {
                    std::thread::sleep(Duration::from_millis(5));
                    (&theirs).write_all(&[i]).expect("write");
                }
                theirs
            });
            let started = Instant::now();
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            while got.len() < 20 {
                let n = read_soon(&mut ours, &mut buf).await;
                got.extend_from_slice(&buf[..n]);
            }
            drop(writer.join().expect("writer"));
            assert_eq!(got, (0..20u8).collect::<Vec<_>>());
            assert!(naps_taken() > 0, "the driver never napped");
            // Twenty writes 5 ms apart, against naps of up to 5 s each.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "input waited for naps to end: {:?}",
                started.elapsed()
            );
        });
    }

    #[test]
    fn a_task_woken_by_another_runs_before_the_driver_naps() {
        run_napping(MUST_COME_WAIT_MAX * 2, || async {
            // The reader's task wakes a second task for each byte. That one
            // is queued behind the driver (which yielded before the reader
            // ran): a driver that napped now would leave it waiting until
            // the next input, seconds later.
            let (mut ours, theirs) = pair();
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<Instant>(4);
            let reader = glommio::spawn_local(counted(async move {
                let mut buf = [0u8; 1];
                while ours.read(&mut buf).await.expect("read") == 1 {
                    tx.send(Instant::now()).await.expect("send");
                }
            }));
            let relayed = glommio::spawn_local(counted(async move {
                let read_at = rx.recv().await.expect("relayed");
                read_at.elapsed()
            }));
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                std::thread::sleep(Duration::from_millis(20));
                (&theirs).write_all(b"x").expect("write");
                std::thread::sleep(MUST_COME_WAIT_MAX);
                drop(theirs);
            });
            let waited = relayed.await;
            assert!(
                waited < Duration::from_secs(1),
                "the relayed task ran {waited:?} after the read"
            );
            reader.await;
            writer.join().expect("writer");
        });
    }

    #[test]
    fn timers_fire_on_time_while_the_driver_naps() {
        run_napping(Duration::from_millis(2), || async {
            // A byte every millisecond: the set is never quiet for a whole
            // nap, so the driver never parks; only its visits to the
            // reactor every `nap_max` fire timers.
            let (mut ours, theirs) = pair();
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                        if (&theirs).write_all(b"x").is_err() {
                            break;
                        }
                    }
                })
            };
            let reader = glommio::spawn_local(counted(async move {
                let mut buf = [0u8; 64];
                while ours.read(&mut buf).await.expect("read") > 0 {}
                drop(ours);
            }));
            const TIMER: Duration = Duration::from_millis(1);
            let naps_before = naps_taken();
            let mut late = Vec::new();
            for _ in 0..20 {
                let started = Instant::now();
                Timer::new(TIMER).await;
                late.push(started.elapsed() - TIMER);
            }
            let naps = naps_taken() - naps_before;
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("writer");
            reader.await;
            late.sort();
            let median = late[late.len() / 2];
            assert!(naps > 10, "the driver napped {naps} times");
            assert!(
                median < Duration::from_millis(20),
                "1 ms timers fired {median:?} late (median of {}) while the driver napped",
                late.len()
            );
        });
    }

    #[test]
    fn a_rung_doorbell_ends_a_nap() {
        // The receiver naps (input just arrived, then nothing for seconds);
        // a message from another executor reaches it through a glommio
        // channel, which glommio announces only to executors it parked.
        const NAP_MAX: Duration = Duration::from_secs(10);
        let doorbell = Doorbell::new().expect("doorbell");
        let (sender, receiver) = glommio::channels::shared_channel::new_bounded::<Instant>(4);
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let ringer = doorbell.clone();
        let sending = LocalExecutorBuilder::default()
            .spawn(move || async move {
                use std::io::Write;
                let sender = sender.connect().await;
                Timer::new(Duration::from_millis(100)).await;
                (&theirs).write_all(b"x").expect("write");
                // The receiver reads it, then naps.
                Timer::new(Duration::from_millis(200)).await;
                sender.send(Instant::now()).await.expect("send");
                ringer.ring();
                Timer::new(MUST_COME_WAIT_MAX).await;
                drop(theirs);
            })
            .expect("sender");
        run(move || async move {
            enable_naps(NAP_MAX, Some(doorbell)).expect("naps");
            counted(async move {
                let mut ours = ReadyStream::adopt(OwnedFd::from(ours)).expect("adopt");
                let receiver = receiver.connect().await;
                let mut buf = [0u8; 1];
                assert_eq!(ours.read(&mut buf).await.expect("read"), 1);
                let sent_at = receiver.recv().await.expect("message");
                let waited = sent_at.elapsed();
                assert!(naps_taken() > 0, "the receiver never napped");
                assert!(
                    waited < Duration::from_secs(1),
                    "the message waited {waited:?}: the nap went on"
                );
            })
            .await
        });
        sending.join().expect("sender");
    }

    #[test]
    fn a_nap_hold_keeps_the_driver_from_napping() {
        run_napping(MUST_COME_WAIT_MAX, || async {
            let (mut ours, theirs) = pair();
            let mut buf = [0u8; 4];
            let hold = hold_naps().expect("hold");
            let before = naps_taken();
            for _ in 0..5 {
                use std::io::Write;
                (&theirs).write_all(b"x").expect("write");
                read_soon(&mut ours, &mut buf).await;
                Timer::new(Duration::from_millis(5)).await;
            }
            assert_eq!(naps_taken(), before, "napped while held");
            drop(hold);
            {
                use std::io::Write;
                (&theirs).write_all(b"y").expect("write");
            }
            read_soon(&mut ours, &mut buf).await;
            Timer::new(Duration::from_millis(5)).await;
            assert!(naps_taken() > before, "no nap once the hold was gone");
        });
    }
    /// Waits for `timer`, or fails the test after `MUST_COME_WAIT_MAX`;
    /// returns how late it fired.
    async fn late_by(timer: &mut ReadyTimer) -> Duration {
        let deadline = timer.deadline();
        let fired = in_time(timer).await.is_some();
        assert!(
            fired,
            "a ready timer due in ms had not fired after {MUST_COME_WAIT_MAX:?}"
        );
        Instant::now().saturating_duration_since(deadline)
    }

    fn median(mut samples: Vec<Duration>) -> Duration {
        samples.sort();
        samples[samples.len() / 2]
    }

    /// How late one ready timer, re-armed `times` times for `period`,
    /// fired: the median.
    async fn median_lateness(period: Duration, times: usize) -> Duration {
        let mut timer = ReadyTimer::new(period).expect("timer");
        let mut late = Vec::with_capacity(times);
        for _ in 0..times {
            timer.reset(period);
            late.push(late_by(&mut timer).await);
        }
        median(late)
    }

    /// One byte in and read: the driver naps from here on (with naps
    /// enabled) until `nap_max` passes with nothing ready. Keep both ends.
    async fn napping_after_input() -> (ReadyStream, UnixStream) {
        let (mut ours, theirs) = pair();
        {
            use std::io::Write;
            (&theirs).write_all(b"x").expect("write");
        }
        let mut buf = [0u8; 4];
        assert_eq!(read_soon(&mut ours, &mut buf).await, 1);
        (ours, theirs)
    }

    #[test]
    fn ready_timers_fire_on_time_while_the_driver_parks() {
        run(|| async {
            // No naps and no sockets: the driver parks through glommio, and
            // only the armed timerfd can wake it for the timers.
            let median = median_lateness(Duration::from_millis(2), 20).await;
            assert!(
                median < Duration::from_millis(20),
                "2 ms ready timers fired {median:?} late (median of 20) while the driver parked"
            );
            assert_eq!(timers_waiting(), 0, "fired timers leave the driver's list");
        });
    }

    #[test]
    fn a_ready_timer_made_while_the_driver_parks_wakes_it_in_time() {
        run(|| async {
            // The driver parks with the timerfd armed for a far timer; a
            // task glommio runs (its own timer) then makes a near one.
            let far = glommio::spawn_local(async {
                let mut far = ReadyTimer::new(MUST_COME_WAIT_MAX * 2).expect("timer");
                (&mut far).await;
            });
            Timer::new(Duration::from_millis(30)).await;
            let mut late = Vec::new();
            for _ in 0..5 {
                Timer::new(Duration::from_millis(5)).await;
                let mut near = ReadyTimer::new(Duration::from_millis(3)).expect("timer");
                late.push(late_by(&mut near).await);
            }
            let median = median(late);
            assert!(
                median < Duration::from_millis(20),
                "a near ready timer made while the driver parked fired {median:?} late"
            );
            drop(far);
        });
    }

    #[test]
    fn ready_timers_fire_on_time_while_the_driver_naps() {
        run_napping(Duration::from_secs(1), || async {
            // One byte in: the driver then naps (up to a second) instead of
            // parking. Only a nap that ends at the next timer fires it.
            let _ends = napping_after_input().await;
            let naps_before = naps_taken();
            let median = median_lateness(Duration::from_millis(2), 20).await;
            let naps = naps_taken() - naps_before;
            assert!(naps >= 10, "the driver napped {naps} times");
            assert!(
                median < Duration::from_millis(20),
                "2 ms ready timers fired {median:?} late (median of 20) while the driver napped"
            );
        });
    }

    #[test]
    fn ready_timers_fire_in_deadline_order_and_a_reset_or_drop_moves_them() {
        run(|| async {
            let start = Instant::now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, after_ms) in [(3u8, 30u64), (1, 10), (2, 20)] {
                let order = order.clone();
                tasks.push(glommio::spawn_local(async move {
                    ReadyTimer::at(start + Duration::from_millis(after_ms))
                        .expect("timer")
                        .await;
                    order.borrow_mut().push(name);
                }));
            }
            // Armed and polled once, then moved later, then dropped: it
            // must neither fire nor stay in the list.
            let others = timers_waiting();
            let mut moved = ReadyTimer::new(Duration::from_millis(5)).expect("timer");
            assert!(futures_lite::future::poll_once(&mut moved).await.is_none());
            assert_eq!(timers_waiting(), others + 1);
            moved.reset(Duration::from_secs(60));
            assert_eq!(timers_waiting(), others, "a reset takes the old entry out");
            assert!(futures_lite::future::poll_once(&mut moved).await.is_none());
            for task in tasks {
                let finished = in_time(task).await.is_some();
                assert!(
                    finished,
                    "a ready timer due in ms had not fired after {MUST_COME_WAIT_MAX:?}"
                );
            }
            assert_eq!(*order.borrow(), vec![1, 2, 3]);
            assert_eq!(timers_waiting(), 1, "only the moved timer waits");
            drop(moved);
            assert_eq!(timers_waiting(), 0, "a dropped timer leaves the list");
            // A timer due in the past is ready at once, and stays ready.
            let mut past = ReadyTimer::at(start).expect("timer");
            assert!(futures_lite::future::poll_once(&mut past).await.is_some());
            assert!(futures_lite::future::poll_once(&mut past).await.is_some());
        });
    }

    #[test]
    fn a_nap_ends_at_a_ready_timer_to_well_under_a_millisecond() {
        run_napping(Duration::from_secs(1), || async {
            // Timers 200 µs apart, as on the loadgen's send grid: a nap
            // whose timeout could say only whole milliseconds (plain
            // `epoll_wait`) would fire each at least 800 µs late.
            let _ends = napping_after_input().await;
            let median = median_lateness(Duration::from_micros(200), 50).await;
            if EPOLL_PWAIT2_MISSING.load(Ordering::Relaxed) {
                // Before Linux 5.11 (or under a filter refusing the call)
                // naps can only say whole milliseconds.
                eprintln!("epoll_pwait2 unavailable: sub-millisecond naps not checked");
                return;
            }
            assert!(
                median < Duration::from_micros(700),
                "200 µs ready timers fired {median:?} late (median of 50) while the driver napped"
            );
        });
    }
}
