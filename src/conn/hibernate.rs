//! Hibernation: a connection with no data in either direction for
//! `hibernate_after_ms` gives up its task and its `ReadyStream` (the bulk
//! of what an idle connection costs). What is left is its `ConnHandle`,
//! which holds the socket as a `Sleeper`: still in the shard's readiness
//! set, its registration now one-shot and carrying the connection id.
//!
//! Two things bring it back, both to the shard's resumer task:
//! - the socket becomes readable (input, a close, an error): the shard's
//!   readiness driver reports the id (`poll_woken_sleepers`), on the
//!   shard's own thread;
//! - anything on the shard raises a signal on its handle (a delivery, a
//!   ping, a close): `ConnHandle::raise` queues the id here.
//!
//! The resumer gives the socket a task again (`Sleeper::wake`: one
//! `epoll_ctl`) and spawns the connection's WebSocket task with a fresh
//! session: a session only rests between messages, with nothing buffered,
//! so a new one is the same. Only plain TCP connections hibernate: TLS
//! state does not rest.
//!
//! Invariants: a sleeping connection's handle holds its `Sleeper`; only
//! `wake` and `forget` take it back. Ids are never reused
//! (generation-tagged registry keys), so a stale wake (the driver's and
//! the shard's for the same sleep) finds the connection awake and does
//! nothing.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::future;

use super::commands::Mode;
use super::{ConnHandle, ReadyStream, Upgraded};
use crate::shard::ShardState;
use crate::ws::WsSession;

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
#[derive(Default)]
pub struct Hibernation {
    /// Connections asleep now.
    asleep: Cell<usize>,
    /// Set if the resumer could not watch the sleepers: connections keep
    /// their tasks.
    disabled: Cell<bool>,
}

impl Hibernation {
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
        let Upgraded {
            stream,
            session,
            handle,
            mode,
            peer,
        } = upgraded;
        let id = handle.id;
        // The socket stays in the shard's readiness set, now as a sleeper.
        let sleeper = match stream.into_sleeper(id) {
            Ok(sleeper) => sleeper,
            Err((stream, e)) => {
                log::warn!("{peer}: cannot hibernate: {e}");
                return Err(Upgraded {
                    stream,
                    session,
                    handle,
                    mode,
                    peer,
                });
            }
        };
        debug_assert!(session.is_resting(), "only a resting session hibernates");
        drop(session);
        handle.release_idle_memory();
        handle.enter_hibernation(sleeper);
        self.asleep.set(self.asleep.get() + 1);
        if handle.has_signals() {
            self.wake(shard, id);
        }
        Ok(())
    }

    /// Gives connection `id` its task back, if it is asleep (a stale wake,
    /// the driver's and the shard's for the same sleep, finds it awake;
    /// ids are never reused).
    fn wake(&self, shard: &Rc<ShardState>, id: u64) {
        let Some(handle) = shard.conn_handle(id) else {
            return;
        };
        let Some(sleeper) = handle.leave_hibernation() else {
            return;
        };
        self.asleep.set(self.asleep.get() - 1);
        let stream = match sleeper.wake() {
            Ok(stream) => stream,
            Err(e) => {
                // Its registration cannot be changed back: the connection
                // cannot be served any more, so it ends (its socket closed).
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
        crate::spawn_local(super::run_upgraded(shard.clone(), upgraded)).detach();
    }

    /// The shard's resumer: wakes sleepers as their ids arrive, from the
    /// shard (`request_resume`) and from its readiness driver. Runs for
    /// the life of the shard.
    pub async fn run_resumer(&self, shard: Rc<ShardState>) {
        let mut ids: Vec<u64> = Vec::new();
        loop {
            let driver_ok = future::poll_fn(|cx| {
                RESUME_QUEUE.with(|q| ids.append(&mut q.borrow_mut()));
                RESUMER_WAKER.with(|w| w.set(Some(cx.waker().clone())));
                match ws_uring_readiness::poll_woken_sleepers(cx, &mut ids) {
                    Poll::Ready(Err(e)) => {
                        log::error!("shard {}: sleepers cannot be watched: {e}", shard.id);
                        Poll::Ready(false)
                    }
                    _ if !ids.is_empty() => Poll::Ready(true),
                    _ => Poll::Pending,
                }
            })
            .await;
            for id in ids.drain(..) {
                self.wake(&shard, id);
            }
            if !driver_ok {
                // The shard's thread has no epoll set and cannot make one
                // (so no socket could have been put to sleep either): hand
                // back anything asleep all the same, and hibernate no more.
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
        if let Some(sleeper) = handle.leave_hibernation() {
            self.asleep.set(self.asleep.get() - 1);
            drop(sleeper);
        }
    }
}
