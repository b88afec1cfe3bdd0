//! Outgoing mesh traffic, one queue per peer shard, drained by one pump
//! task per peer that sends everything queued as one batch.
//!
//! Queueing never waits, so no shard ever blocks inside a handler while
//! its peer blocks the other way (two shards each waiting for room in the
//! other's channel would deadlock). Client-originated traffic checks
//! `is_congested` first and is refused with `overloaded` past the bound;
//! control traffic (detach, leave, replies) is always queued, and is itself
//! bounded by the number of connections and requests.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::future;
use glommio::channels::channel_mesh::Senders;

use super::mesh::MeshMsg;
use super::Doorbells;

/// Queued messages to one peer past which client requests are refused.
pub const MESH_QUEUE_MAX_MSGS: usize = 65_536;
/// Most room a peer's queue keeps for its next batch (a `MeshMsg` is 128
/// bytes today: 128 KiB), so a burst does not leave an idle queue holding
/// room for `MESH_QUEUE_MAX_MSGS` messages.
pub const MESH_QUEUE_KEPT_CAPACITY_MAX_MSGS: usize = 1024;

/// The per-peer outgoing queues of one shard.
pub struct Outgoing {
    queues: Vec<RefCell<Vec<MeshMsg>>>,
    wakers: Vec<Cell<Option<Waker>>>,
}

impl Outgoing {
    pub fn new(shards: usize) -> Rc<Self> {
        Rc::new(Outgoing {
            queues: (0..shards).map(|_| RefCell::new(Vec::new())).collect(),
            wakers: (0..shards).map(|_| Cell::new(None)).collect(),
        })
    }

    /// Queues `msg` for `peer` and wakes its pump.
    pub fn send(&self, peer: usize, msg: MeshMsg) {
        self.queues[peer].borrow_mut().push(msg);
        if let Some(w) = self.wakers[peer].take() {
            w.wake();
        }
    }

    /// Whether client traffic to `peer` should be refused for now.
    pub fn is_congested(&self, peer: usize) -> bool {
        self.queues[peer].borrow().len() >= MESH_QUEUE_MAX_MSGS
    }

    /// Starts one pump task per peer; they end when the mesh closes.
    pub fn start_pumps(
        self: &Rc<Self>,
        self_id: usize,
        senders: Rc<Senders<MeshMsg>>,
        doorbells: Doorbells,
    ) {
        for peer in (0..self.queues.len()).filter(|p| *p != self_id) {
            let outgoing = self.clone();
            let senders = senders.clone();
            let doorbells = doorbells.clone();
            crate::spawn_local(async move { outgoing.pump(peer, &senders, &doorbells).await })
                .detach();
        }
    }

    async fn pump(&self, peer: usize, senders: &Senders<MeshMsg>, doorbells: &Doorbells) {
        loop {
            let mut batch = future::poll_fn(|cx| {
                let mut queue = self.queues[peer].borrow_mut();
                if queue.is_empty() {
                    self.wakers[peer].set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    // The batch leaves for the peer shard, so the queue
                    // needs a new vector: sized like this batch (up to a
                    // bound), it takes the next one without growing.
                    // Growth from empty showed in a sending shard's
                    // profile (growth and copies, a tenth of its samples
                    // under load), though this alone measured within noise.
                    let capacity = queue.len().min(MESH_QUEUE_KEPT_CAPACITY_MAX_MSGS);
                    Poll::Ready(std::mem::replace(&mut *queue, Vec::with_capacity(capacity)))
                }
            })
            .await;
            let msg = if batch.len() == 1 {
                batch.pop().expect("one message")
            } else {
                MeshMsg::Batch(batch)
            };
            if senders.send_to(peer, msg).await.is_err() {
                log::debug!("mesh to shard {peer} closed; pump stops");
                return;
            }
            // The batch is in the channel: a peer napping in its epoll set
            // would otherwise take it only when the nap ends.
            if let Some(doorbell) = doorbells.get(peer).and_then(|d| d.get()) {
                doorbell.ring();
            }
        }
    }
}
