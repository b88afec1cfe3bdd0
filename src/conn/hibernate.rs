//! Hibernation: a connection with no data in either direction for
//! `hibernate_after_ms` gives up its task and its `ReadyStream` (the
//! socket leaves the shard's readiness set), the bulk of what an idle
//! connection costs. What is left is its `ConnHandle`, which holds the
//! socket, and that socket's registration in the sleepers' epoll set (the
//! `polling` crate) under the connection id.
//!
//! Two things bring it back, both to the shard's resumer task:
//! - the socket becomes readable (input, a close, an error): a watcher
//!   thread blocked in `epoll_wait` writes the connection id to a socket
//!   pair the resumer reads through glommio;
//! - anything on the shard raises a signal on its handle (a delivery, a
//!   ping, a close): `ConnHandle::raise` queues the id here, on the
//!   shard's thread.
//!
//! The resumer gives the socket back to the readiness set and spawns the
//! connection's WebSocket task again, with a fresh session: a session
//! only rests between messages, with nothing buffered, so a new one is the
//! same. Only plain TCP connections hibernate: TLS state does not rest.
//!
//! Invariants: a sleeping connection's handle holds its socket, which is
//! registered one-shot in the epoll set under the connection id; only
//! `wake` and `forget` take the socket back, deleting it from the set
//! first. Ids are never reused (generation-tagged registry keys), so a
//! stale wake (the watcher's and the shard's for the same sleep) finds
//! the connection awake and does nothing.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use futures_lite::{future, AsyncRead};
use glommio::net::UnixStream;
use polling::{Event, Events, Poller};

use super::commands::Mode;
use super::{ConnHandle, ReadyStream, Upgraded};
use crate::shard::ShardState;
use crate::ws::WsSession;

/// Ids read from the watcher per wake-up, at most (8 bytes each).
const WATCHER_READ_BYTES: usize = 8 * 512;

thread_local! {
    /// Ids of sleepers something on this shard asked back.
    static RESUME_QUEUE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The shard's resumer task, parked.
    static RESUMER_WAKER: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// Asks the shard's resumer (this thread's) to give connection `id` a
/// task again.
pub(super) fn request_resume(id: u64) {
    RESUME_QUEUE.with(|q| q.borrow_mut().push(id));
    if let Some(waker) = RESUMER_WAKER.with(Cell::take) {
        waker.wake();
    }
}

/// The connection ids asked back so far on this thread (tests only).
#[cfg(test)]
pub(super) fn take_requested_for_test() -> Vec<u64> {
    RESUME_QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

/// A shard's hibernating connections. A sleeper is its `ConnHandle`
/// (still in the shard's connection table) holding the socket: a resting
/// session is the same as a new one and its mode is the shard's, so
/// nothing else is kept, and no table of sleepers either.
pub struct Hibernation {
    poller: Arc<Poller>,
    /// Connections asleep now.
    asleep: Cell<usize>,
    /// The resumer's end of the watcher's socket pair (taken once).
    from_watcher: RefCell<Option<UnixStream>>,
    watcher_stop: Arc<AtomicBool>,
    /// Set if the watcher failed: connections keep their tasks.
    disabled: Cell<bool>,
}

impl Hibernation {
    /// The epoll set and its watcher thread for shard `shard_id`.
    pub fn start(shard_id: usize) -> io::Result<Hibernation> {
        let poller = Arc::new(Poller::new()?);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let watcher_stop = Arc::new(AtomicBool::new(false));
        {
            let poller = poller.clone();
            let stop = watcher_stop.clone();
            std::thread::Builder::new()
                .name(format!("wsu-hibernate-{shard_id}"))
                .spawn(move || watch(&poller, &stop, theirs))?;
        }
        // SAFETY: a connected Unix socket we own; ownership moves into glommio.
        let from_watcher = unsafe { UnixStream::from_raw_fd(ours.into_raw_fd()) };
        Ok(Hibernation {
            poller,
            asleep: Cell::new(0),
            from_watcher: RefCell::new(Some(from_watcher)),
            watcher_stop,
            disabled: Cell::new(false),
        })
    }

    /// Connections hibernating now.
    pub fn len(&self) -> usize {
        self.asleep.get()
    }

    pub fn is_empty(&self) -> bool {
        self.asleep.get() == 0
    }

    /// Puts a connection to sleep; on failure it is handed back to keep
    /// its task.
    // The connection moves in and (rarely) back out by value, once per
    // hibernation; boxing it would allocate on every one.
    #[allow(clippy::result_large_err)]
    pub(super) fn sleep(
        &self,
        shard: &Rc<ShardState>,
        upgraded: Upgraded<ReadyStream>,
    ) -> Result<(), Upgraded<ReadyStream>> {
        if self.disabled.get() {
            return Err(upgraded);
        }
        let id = upgraded.handle.id;
        // SAFETY: the socket is deleted from the poller before it is closed
        // (in `wake` and `forget`), and only those two take it from the handle.
        if let Err(e) = unsafe {
            self.poller
                .add(upgraded.stream.as_raw_fd(), Event::readable(id as usize))
        } {
            log::warn!("{}: cannot hibernate: {e}", upgraded.peer);
            return Err(upgraded);
        }
        let Upgraded {
            stream,
            session,
            handle,
            mode: _,
            peer: _,
        } = upgraded;
        debug_assert!(session.is_resting(), "only a resting session hibernates");
        drop(session);
        // The socket leaves the shard's readiness set for the sleepers' one.
        let fd = stream.into_owned_fd();
        handle.release_idle_memory();
        handle.enter_hibernation(fd);
        self.asleep.set(self.asleep.get() + 1);
        if handle.has_signals() {
            self.wake(shard, id);
        }
        Ok(())
    }

    /// Gives connection `id` its task back, if it is asleep (a stale wake,
    /// the watcher's and the shard's for the same sleep, finds it awake;
    /// ids are never reused).
    fn wake(&self, shard: &Rc<ShardState>, id: u64) {
        let Some(handle) = shard.conn_handle(id) else {
            return;
        };
        let Some(fd) = handle.leave_hibernation() else {
            return;
        };
        self.asleep.set(self.asleep.get() - 1);
        if let Err(e) = self.poller.delete(fd.as_fd()) {
            log::warn!("connection {id}: epoll delete failed: {e}");
        }
        let stream = match ReadyStream::adopt(fd) {
            Ok(stream) => stream,
            Err(e) => {
                // No room in the readiness set: the connection cannot be
                // served any more, so it ends (its socket closes here).
                log::warn!("connection {id}: cannot resume: {e}");
                shard.remove_conn(&handle, false);
                return;
            }
        };
        // The peer address (only for logs) is not kept while asleep.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let upgraded = Upgraded {
            stream,
            session: WsSession::new(shard.config.max_message_bytes, &[]),
            handle,
            mode: Mode::of(&shard.config),
            peer,
        };
        glommio::spawn_local(super::run_upgraded(shard.clone(), upgraded)).detach();
    }

    /// The shard's resumer: wakes sleepers as their ids arrive.
    pub async fn run_resumer(&self, shard: Rc<ShardState>) {
        let Some(mut from_watcher) = self.from_watcher.borrow_mut().take() else {
            return;
        };
        let mut buf = vec![0u8; WATCHER_READ_BYTES];
        // A read may end inside an id: its first bytes wait here.
        let mut partial: Vec<u8> = Vec::with_capacity(8);
        let mut ids: Vec<u64> = Vec::new();
        loop {
            let watcher_open = future::poll_fn(|cx| {
                RESUME_QUEUE.with(|q| ids.append(&mut q.borrow_mut()));
                if !ids.is_empty() {
                    return Poll::Ready(true);
                }
                RESUMER_WAKER.with(|w| w.set(Some(cx.waker().clone())));
                match Pin::new(&mut from_watcher).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(false),
                    Poll::Ready(Ok(n)) => {
                        partial.extend_from_slice(&buf[..n]);
                        let whole = partial.len() / 8 * 8;
                        ids.extend(
                            partial[..whole]
                                .chunks_exact(8)
                                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                        );
                        partial.drain(..whole);
                        Poll::Ready(true)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            for id in ids.drain(..) {
                self.wake(&shard, id);
            }
            if !watcher_open {
                // Without the watcher, input would not wake a sleeper: wake
                // them all and hibernate no more.
                log::error!(
                    "shard {}: hibernation watcher gone; hibernation off",
                    shard.id
                );
                self.disabled.set(true);
                for id in shard.conn_ids() {
                    self.wake(&shard, id);
                }
                return;
            }
        }
    }

    /// Closes a sleeper's socket without waking it (shard end).
    pub fn forget(&self, handle: &ConnHandle) {
        if let Some(fd) = handle.leave_hibernation() {
            self.asleep.set(self.asleep.get() - 1);
            let _ = self.poller.delete(fd.as_fd());
        }
    }

    /// Stops the watcher (at shard end, after the connections were asked
    /// to close and `forget` was called for any still asleep).
    pub fn shutdown(&self) {
        self.watcher_stop.store(true, Ordering::Release);
        let _ = self.poller.notify();
    }
}

/// The watcher thread: reports readable sleepers' ids to the resumer.
fn watch(poller: &Poller, stop: &AtomicBool, mut to_resumer: std::os::unix::net::UnixStream) {
    let mut events = Events::new();
    let mut bytes = Vec::new();
    while !stop.load(Ordering::Acquire) {
        events.clear();
        if let Err(e) = poller.wait(&mut events, None) {
            log::error!("hibernation watcher: epoll_wait failed: {e}");
            return;
        }
        bytes.clear();
        for event in events.iter() {
            bytes.extend_from_slice(&(event.key as u64).to_le_bytes());
        }
        // Blocks only while the resumer is behind; fails once it is gone.
        if !bytes.is_empty() && to_resumer.write_all(&bytes).is_err() {
            return;
        }
    }
}
