//! Messaging on a shard: carrying out the actions of its connections'
//! commands, serving the directory partition it is home to, delivering into
//! its connections' outboxes, and answering the commands that waited on
//! other shards.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tungstenite::Message;

use super::mesh::{Failure, MeshMsg, ReplyTo};
use super::ShardState;
use crate::conn::commands::{self, Action, CommandContext, Mode};
use crate::conn::handle::GROUPS_PER_CONNECTION_MAX;
use crate::conn::outbox::{Lane, OutItem, PushOutcome};
use crate::conn::ConnHandle;
use crate::protocol::{self, CommandError, ErrorCode};
use crate::routing::{home_shard, ConnRef, Envelope, Target};
use crate::ws::{encode_frame, OPCODE_TEXT};

/// Most requests one shard waits on at once; past it, commands with `ref`
/// that need other shards are refused with `overloaded`.
pub const PENDING_REQUESTS_MAX: usize = 1_000_000;

/// A command answered only once other shards have done their part.
#[derive(Debug)]
pub(super) struct PendingRequest {
    conn: u64,
    kind: PendingKind,
}

#[derive(Debug)]
enum PendingKind {
    /// `welcome` goes out once the user's home has the connection.
    Welcome(Bytes),
    /// `join`, `leave`, `strategy`: `ok` when the home confirms.
    Membership { reference: String },
    /// `send`, `publish`, `anycast`: `ok` with `delivered` once every part
    /// reported.
    Route {
        reference: String,
        id: String,
        parts: Option<u32>,
        reported: u32,
        delivered: u64,
        refused: u64,
    },
}

/// Per-shard messaging state (owned by `ShardState`).
#[derive(Debug, Default)]
pub(super) struct MessagingState {
    pub(super) pending: HashMap<u64, PendingRequest>,
    pub(super) next_request_id: u64,
    pub(super) next_message_seq: u64,
}

fn text_frame(event: &str) -> Bytes {
    Bytes::from(encode_frame(OPCODE_TEXT, &[event.as_bytes()]))
}

fn failure(code: ErrorCode, reason: impl Into<String>) -> Failure {
    Failure {
        code,
        reason: reason.into(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ShardState {
    /// Handles one data message from a connection of this shard.
    pub fn handle_message(self: &Rc<Self>, handle: &ConnHandle, message: Message, mode: Mode) {
        let shard = self.clone();
        let mut next_id = || shard.next_message_id();
        let mut ctx = CommandContext {
            user: &handle.user,
            max_message_bytes: self.config.max_message_bytes,
            compress_min_bytes: self.config.compress_min_bytes,
            now_unix_ms: unix_ms(),
            next_message_id: &mut next_id,
        };
        if let Some(action) = commands::handle_message(message, mode, &mut ctx) {
            self.execute(handle, action);
        }
    }

    /// A message id unique across shards and restarts: boot time, shard,
    /// sequence.
    fn next_message_id(&self) -> String {
        let mut m = self.messaging.borrow_mut();
        m.next_message_seq += 1;
        format!("{}-{}-{}", self.boot_id, self.id, m.next_message_seq)
    }

    fn execute(&self, handle: &ConnHandle, action: Action) {
        let origin = ConnRef {
            shard: self.id,
            conn: handle.id,
        };
        match action {
            Action::Reply(frame) => self.reply(handle, frame),
            Action::Join {
                reference,
                group,
                weight,
            } => {
                let home = home_shard(&group, self.shard_count);
                {
                    let mut groups = handle.groups.borrow_mut();
                    if !groups.contains(&group) && groups.len() >= GROUPS_PER_CONNECTION_MAX {
                        drop(groups);
                        return self.reply_error(
                            handle,
                            reference,
                            failure(
                                ErrorCode::BadRequest,
                                format!("a connection may join at most {GROUPS_PER_CONNECTION_MAX} groups"),
                            ),
                        );
                    }
                    groups.insert(group.clone());
                }
                let reply = self.wait_for(
                    handle,
                    reference.map(|reference| PendingKind::Membership { reference }),
                );
                self.to_shard(
                    home,
                    MeshMsg::GroupJoin {
                        group,
                        at: origin,
                        weight,
                        reply,
                    },
                );
            }
            Action::Leave { reference, group } => {
                handle.groups.borrow_mut().remove(&group);
                let home = home_shard(&group, self.shard_count);
                let reply = self.wait_for(
                    handle,
                    reference.map(|reference| PendingKind::Membership { reference }),
                );
                self.to_shard(
                    home,
                    MeshMsg::GroupLeave {
                        group,
                        at: origin,
                        reply,
                    },
                );
            }
            Action::SetStrategy {
                reference,
                group,
                strategy,
            } => {
                let home = home_shard(&group, self.shard_count);
                let reply = self.wait_for(
                    handle,
                    reference.map(|reference| PendingKind::Membership { reference }),
                );
                self.to_shard(
                    home,
                    MeshMsg::SetStrategy {
                        group,
                        strategy,
                        origin,
                        reply,
                    },
                );
            }
            Action::Route {
                reference,
                target,
                envelope,
            } => {
                let home = home_shard(target.name(), self.shard_count);
                if home != self.id && self.outgoing.is_congested(home) {
                    return self.reply_error(
                        handle,
                        reference,
                        failure(
                            ErrorCode::Overloaded,
                            "the server is overloaded: try again shortly",
                        ),
                    );
                }
                let id = envelope.id.clone();
                let reply = self.wait_for(
                    handle,
                    reference.map(|reference| PendingKind::Route {
                        reference,
                        id,
                        parts: None,
                        reported: 0,
                        delivered: 0,
                        refused: 0,
                    }),
                );
                self.to_shard(
                    home,
                    MeshMsg::Route {
                        target,
                        envelope,
                        origin,
                        reply,
                    },
                );
            }
        }
    }

    /// Registers a request to answer later; `None` kind: nothing to wait for.
    fn wait_for(&self, handle: &ConnHandle, kind: Option<PendingKind>) -> Option<ReplyTo> {
        let kind = kind?;
        let mut m = self.messaging.borrow_mut();
        if m.pending.len() >= PENDING_REQUESTS_MAX {
            log::warn!(
                "shard {}: {PENDING_REQUESTS_MAX} requests pending; not tracking more",
                self.id
            );
            return None;
        }
        m.next_request_id += 1;
        let request_id = m.next_request_id;
        m.pending.insert(
            request_id,
            PendingRequest {
                conn: handle.id,
                kind,
            },
        );
        Some(ReplyTo {
            shard: self.id,
            request_id,
        })
    }

    /// Sends to a shard: handled in place when it is this one.
    pub(super) fn to_shard(&self, shard: usize, msg: MeshMsg) {
        if shard == self.id {
            self.on_messaging(msg);
        } else {
            self.outgoing.send(shard, msg);
        }
    }

    /// Queues a frame on the reply lane of one of this shard's connections.
    fn reply(&self, handle: &ConnHandle, frame: Bytes) {
        let item = OutItem {
            frame,
            lane: Lane::Reply,
            ack: false,
            anycast_group: None,
        };
        handle.enqueue(item, Instant::now(), |evicted| {
            self.evicted(handle, evicted)
        });
    }

    fn reply_error(&self, handle: &ConnHandle, reference: Option<String>, f: Failure) {
        let e = CommandError {
            reference,
            code: f.code,
            reason: f.reason,
        };
        self.reply(handle, commands::error_frame(&e));
    }

    fn reply_to_conn(&self, conn: u64, frame: Bytes) {
        let handle = self.conns.borrow().get(&conn).cloned();
        if let Some(handle) = handle {
            self.reply(&handle, frame);
        }
    }

    /// Greets a new connection once its user's home has it.
    pub(super) fn attach(&self, handle: &ConnHandle, welcome: Bytes) {
        let home = home_shard(&handle.user, self.shard_count);
        let reply = self.wait_for(handle, Some(PendingKind::Welcome(welcome)));
        self.to_shard(
            home,
            MeshMsg::UserAttach {
                user: handle.user.to_string(),
                at: ConnRef {
                    shard: self.id,
                    conn: handle.id,
                },
                reply,
            },
        );
    }

    /// Tells the homes that a connection is gone, and settles its outbox.
    pub(super) fn detach(&self, handle: &ConnHandle, announced: bool) {
        let at = ConnRef {
            shard: self.id,
            conn: handle.id,
        };
        if announced {
            let home = home_shard(&handle.user, self.shard_count);
            self.to_shard(
                home,
                MeshMsg::UserDetach {
                    user: handle.user.to_string(),
                    at,
                },
            );
        }
        for group in handle.groups.borrow_mut().drain() {
            let home = home_shard(&group, self.shard_count);
            self.to_shard(
                home,
                MeshMsg::GroupLeave {
                    group,
                    at,
                    reply: None,
                },
            );
        }
        let mut anycasts: Vec<Arc<str>> = Vec::new();
        handle.outbox.borrow_mut().drain(|item| {
            if let Some(g) = item.anycast_group {
                anycasts.push(g);
            }
        });
        for group in anycasts {
            self.anycast_done(&group, handle.id, 1);
        }
    }

    /// An anycast to `conn` left its outbox: its group's home stops
    /// counting it as outstanding.
    pub fn anycast_done(&self, group: &Arc<str>, conn: u64, n: u64) {
        let home = home_shard(group, self.shard_count);
        self.to_shard(
            home,
            MeshMsg::AnycastDone {
                group: group.clone(),
                conn,
                n,
            },
        );
    }

    fn evicted(&self, handle: &ConnHandle, item: &OutItem) {
        self.counters
            .dropped_low
            .set(self.counters.dropped_low.get() + 1);
        if let Some(group) = &item.anycast_group {
            self.anycast_done(group, handle.id, 1);
        }
    }

    /// Counts a connection closed for staying over its outbox bound.
    pub fn count_slow_consumer(&self) {
        self.counters
            .slow_consumers_closed
            .set(self.counters.slow_consumers_closed.get() + 1);
    }

    /// Queues `envelope` to each of `conns` on this shard. Returns
    /// (delivered, refused): refused are `ack:true` messages that found no
    /// room.
    fn deliver_local(
        &self,
        envelope: &Envelope,
        conns: &[u64],
        exclude: Option<u64>,
        anycast_group: Option<&Arc<str>>,
    ) -> (u64, u64) {
        let now = Instant::now();
        let (mut delivered, mut refused) = (0, 0);
        let lane = Lane::from(envelope.priority);
        for &conn in conns {
            if Some(conn) == exclude {
                continue;
            }
            let handle = self.conns.borrow().get(&conn).cloned();
            let queued = match handle {
                None => false,
                Some(handle) => {
                    let item = OutItem {
                        frame: envelope.frame_for(handle.wants_lz4),
                        lane,
                        ack: envelope.ack,
                        anycast_group: anycast_group.cloned(),
                    };
                    match handle.enqueue(item, now, |evicted| self.evicted(&handle, evicted)) {
                        PushOutcome::Queued => true,
                        PushOutcome::Refused => {
                            refused += 1;
                            false
                        }
                        PushOutcome::DroppedLow => {
                            self.counters
                                .dropped_low
                                .set(self.counters.dropped_low.get() + 1);
                            false
                        }
                        PushOutcome::Overflow => false,
                    }
                }
            };
            if queued {
                delivered += 1;
            } else if let Some(group) = anycast_group {
                // Not queued: not outstanding at the group's home either.
                self.anycast_done(group, conn, 1);
            }
        }
        (delivered, refused)
    }

    /// Handles the messaging part of a mesh message (from a peer or from
    /// this shard itself).
    pub(super) fn on_messaging(&self, msg: MeshMsg) {
        match msg {
            MeshMsg::UserAttach { user, at, reply } => {
                self.directory.borrow_mut().attach_user(&user, at);
                if let Some(reply) = reply {
                    self.to_shard(
                        reply.shard,
                        MeshMsg::Done {
                            request_id: reply.request_id,
                            result: Ok(()),
                        },
                    );
                }
            }
            MeshMsg::UserDetach { user, at } => self.directory.borrow_mut().detach_user(&user, at),
            MeshMsg::GroupJoin {
                group,
                at,
                weight,
                reply,
            } => {
                let result = self
                    .directory
                    .borrow_mut()
                    .join(&group, at, weight)
                    .map_err(|e| failure(ErrorCode::Overloaded, e.to_string()));
                self.answer(reply, at, result);
            }
            MeshMsg::GroupLeave { group, at, reply } => {
                self.directory.borrow_mut().leave(&group, at.conn);
                self.answer(reply, at, Ok(()));
            }
            MeshMsg::SetStrategy {
                group,
                strategy,
                origin,
                reply,
            } => {
                let result = self
                    .directory
                    .borrow_mut()
                    .set_strategy(&group, strategy)
                    .map_err(|e| failure(ErrorCode::Overloaded, e.to_string()));
                self.answer(reply, origin, result);
            }
            MeshMsg::Route {
                target,
                envelope,
                origin,
                reply,
            } => self.route(target, envelope, origin, reply),
            MeshMsg::Deliver {
                envelope,
                conns,
                exclude,
                anycast_group,
                origin,
                reply,
            } => {
                let (delivered, refused) =
                    self.deliver_local(&envelope, &conns, exclude, anycast_group.as_ref());
                match reply {
                    Some(reply) => self.to_shard(
                        reply.shard,
                        MeshMsg::Delivered {
                            request_id: reply.request_id,
                            delivered,
                            refused,
                        },
                    ),
                    None if refused > 0 => self.to_shard(
                        origin.shard,
                        MeshMsg::Failed {
                            origin,
                            failure: refused_failure(refused),
                        },
                    ),
                    None => {}
                }
            }
            MeshMsg::Routed { request_id, parts } => self.update_route(request_id, |p, _, _, _| {
                *p = Some(parts);
            }),
            MeshMsg::Delivered {
                request_id,
                delivered,
                refused,
            } => self.update_route(request_id, |_, r, d, x| {
                *r += 1;
                *d += delivered;
                *x += refused;
            }),
            MeshMsg::Done { request_id, result } => self.finish(request_id, result),
            MeshMsg::Failed { origin, failure } => {
                let e = CommandError {
                    reference: None,
                    code: failure.code,
                    reason: failure.reason,
                };
                self.reply_to_conn(origin.conn, commands::error_frame(&e));
            }
            MeshMsg::AnycastDone { group, conn, n } => {
                self.directory.borrow_mut().anycast_done(&group, conn, n)
            }
            MeshMsg::Shutdown
            | MeshMsg::HealthQuery { .. }
            | MeshMsg::HealthReply { .. }
            | MeshMsg::Batch(_) => unreachable!("handled by ShardState::on_mesh"),
        }
    }

    /// Answers a membership request: to the waiting request, or, without
    /// one, tells the connection only about a failure.
    fn answer(&self, reply: Option<ReplyTo>, origin: ConnRef, result: Result<(), Failure>) {
        match (reply, result) {
            (Some(reply), result) => self.to_shard(
                reply.shard,
                MeshMsg::Done {
                    request_id: reply.request_id,
                    result,
                },
            ),
            (None, Err(failure)) => {
                self.to_shard(origin.shard, MeshMsg::Failed { origin, failure })
            }
            (None, Ok(())) => {}
        }
    }

    /// At the target's home: find the recipients, send each shard its part.
    fn route(
        &self,
        target: Target,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) {
        let mut parts = 0u32;
        let mut deliver =
            |shard: usize, conns: Arc<[u64]>, exclude: Option<u64>, anycast: Option<Arc<str>>| {
                parts += 1;
                self.to_shard(
                    shard,
                    MeshMsg::Deliver {
                        envelope: envelope.clone(),
                        conns,
                        exclude,
                        anycast_group: anycast,
                        origin,
                        reply,
                    },
                );
            };
        match &target {
            Target::User(user) => {
                let by_shard = self
                    .directory
                    .borrow()
                    .user_conns_by_shard(user, self.shard_count);
                for (shard, conns) in by_shard.into_iter().enumerate() {
                    if !conns.is_empty() {
                        deliver(shard, Arc::from(conns), None, None);
                    }
                }
            }
            Target::Group { group, echo } => {
                let lists = self
                    .directory
                    .borrow_mut()
                    .members_by_shard(group, self.shard_count);
                let exclude = (!echo).then_some(origin.conn);
                for (shard, conns) in lists.into_iter().enumerate() {
                    let only_sender = conns.len() == 1 && Some(conns[0]) == exclude;
                    if !conns.is_empty() && !only_sender {
                        deliver(shard, conns, exclude, None);
                    }
                }
            }
            Target::Anycast(group) => {
                let picked = self.directory.borrow_mut().pick(group);
                match picked {
                    Some(at) => deliver(
                        at.shard,
                        Arc::from(vec![at.conn]),
                        None,
                        Some(Arc::from(group.as_str())),
                    ),
                    None => {
                        let f = failure(
                            ErrorCode::NoMembers,
                            format!("group {group:?} has no members"),
                        );
                        return self.answer(reply, origin, Err(f));
                    }
                }
            }
        }
        if let Some(reply) = reply {
            self.to_shard(
                reply.shard,
                MeshMsg::Routed {
                    request_id: reply.request_id,
                    parts,
                },
            );
        }
    }

    fn update_route(
        &self,
        request_id: u64,
        update: impl FnOnce(&mut Option<u32>, &mut u32, &mut u64, &mut u64),
    ) {
        let complete = {
            let mut m = self.messaging.borrow_mut();
            let Some(PendingRequest {
                kind:
                    PendingKind::Route {
                        parts,
                        reported,
                        delivered,
                        refused,
                        ..
                    },
                ..
            }) = m.pending.get_mut(&request_id)
            else {
                return;
            };
            update(parts, reported, delivered, refused);
            *parts == Some(*reported)
        };
        if complete {
            self.finish(request_id, Ok(()));
        }
    }

    /// Completes a pending request and answers its connection.
    fn finish(&self, request_id: u64, result: Result<(), Failure>) {
        let Some(request) = self.messaging.borrow_mut().pending.remove(&request_id) else {
            return;
        };
        let frame = match (request.kind, result) {
            (PendingKind::Welcome(welcome), _) => welcome,
            (PendingKind::Membership { reference }, Ok(())) => {
                text_frame(&protocol::encode_ok(Some(&reference), None, None))
            }
            (
                PendingKind::Route {
                    reference,
                    id,
                    delivered,
                    refused,
                    ..
                },
                Ok(()),
            ) => {
                if refused > 0 {
                    let f = refused_failure(refused);
                    commands::error_frame(&CommandError {
                        reference: Some(reference),
                        code: f.code,
                        reason: f.reason,
                    })
                } else {
                    text_frame(&protocol::encode_ok(
                        Some(&reference),
                        Some(&id),
                        Some(delivered),
                    ))
                }
            }
            (
                PendingKind::Membership { reference } | PendingKind::Route { reference, .. },
                Err(f),
            ) => commands::error_frame(&CommandError {
                reference: Some(reference),
                code: f.code,
                reason: f.reason,
            }),
        };
        self.reply_to_conn(request.conn, frame);
    }
}

fn refused_failure(refused: u64) -> Failure {
    failure(
        ErrorCode::Overloaded,
        format!(
            "{refused} recipient connection(s) have full queues; a message sent with ack:true is refused rather than dropped"
        ),
    )
}
