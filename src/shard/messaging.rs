//! Messaging on a shard: carrying out the actions of its connections'
//! commands, serving the directory partition it is home to, delivering into
//! its connections' outboxes, and answering the commands that waited on
//! other shards. Reliable delivery (acks, mailboxes, schedules, the DLQ)
//! lives in `reliable.rs`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use glommio::channels::local_channel::LocalSender;
use tungstenite::Message;

use super::mesh::{Arrived, Failure, Held, MeshMsg, ReplyTo, RouteSource};
use super::ShardState;
use crate::cluster::wire::RemoteReply;
use crate::conn::commands::{self, Action, CommandContext, Mode};
use crate::conn::handle::GROUPS_PER_CONNECTION_MAX;
use crate::conn::outbox::{Lane, OutItem, PushOutcome};
use crate::conn::ConnHandle;
use crate::delivery::mailbox::Waiting;
use crate::delivery::{AckTarget, PendingKey, Scheduled};
use crate::protocol::{self, CommandError, ErrorCode};
use crate::routing::{home_shard, ConnRef, Envelope, Target};
use crate::ws::{encode_frame, OPCODE_TEXT};

/// Most requests one shard waits on at once; past it, commands with `ref`
/// that need other shards are answered without waiting for the outcome.
pub const PENDING_REQUESTS_MAX: usize = 1_000_000;

/// Furthest ahead `delay_ms` / `at` may schedule: a year.
pub const SCHEDULE_HORIZON_MS: u64 = 366 * 24 * 3600 * 1000;

/// The connection id used for messages injected over `/api/*`: no
/// connection ever has it, so nothing is excluded or answered by mistake.
pub const API_CONN: u64 = u64::MAX;

/// A command answered only once other shards have done their part.
#[derive(Debug)]
pub(super) struct PendingRequest {
    conn: u64,
    kind: PendingKind,
}

/// The outcome of a routed request, for `/api/*` callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    Ok {
        id: String,
        delivered: u64,
        held: Held,
    },
    Failed(Failure),
}

#[derive(Debug)]
pub(super) enum PendingKind {
    /// `welcome` goes out once the user's home has the connection.
    Welcome(Bytes),
    /// `join`, `leave`, `strategy`: `ok` when the home confirms.
    Membership { reference: String },
    /// `send`, `publish`, `anycast`: `ok` with `delivered` once every part
    /// reported (to a connection, or to an `/api/*` caller).
    Route {
        answer: RouteAnswer,
        id: String,
        parts: Option<u32>,
        held: Held,
        reported: u32,
        delivered: u64,
    },
    /// A restored mailbox message handed to its user's home: removed here
    /// once the home has it durably.
    Handoff { user: String, id: String },
}

#[derive(Debug)]
pub(super) enum RouteAnswer {
    Conn {
        reference: String,
    },
    Api(LocalSender<RouteOutcome>),
    /// Cluster mode: another node waits for the count.
    Remote(RemoteReply),
}

/// Per-shard messaging state (owned by `ShardState`).
#[derive(Debug, Default)]
pub(super) struct MessagingState {
    pub(super) pending: HashMap<u64, PendingRequest>,
    pub(super) next_request_id: u64,
    pub(super) next_message_seq: u64,
}

pub(super) fn text_frame(event: &str) -> Bytes {
    Bytes::from(encode_frame(OPCODE_TEXT, &[event.as_bytes()]))
}

pub(super) fn failure(code: ErrorCode, reason: impl Into<String>) -> Failure {
    Failure {
        code,
        reason: reason.into(),
    }
}

/// `boot-shard-seq`, built by hand: `format!` was most of the cost of a
/// message id (and 8 % of a direct message's server time).
fn message_id(boot_id: &str, shard: usize, seq: u64) -> String {
    let mut shard_digits = itoa::Buffer::new();
    let mut seq_digits = itoa::Buffer::new();
    let (shard, seq) = (shard_digits.format(shard), seq_digits.format(seq));
    let mut id = String::with_capacity(boot_id.len() + shard.len() + seq.len() + 2);
    id.push_str(boot_id);
    id.push('-');
    id.push_str(shard);
    id.push('-');
    id.push_str(seq);
    id
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ShardState {
    /// Handles one data message from a connection of this shard.
    ///
    /// With `take_reply` (the connection's loop has no write under way), a
    /// command answered by one reply frame gets it back instead of queued,
    /// if the outbox is empty (so it cannot overtake a queued reply): the
    /// loop puts it straight into its next write. The outbox would cost an
    /// echo two touches of its cold lanes and a quarter of its user time.
    pub fn handle_message(
        self: &Rc<Self>,
        handle: &ConnHandle,
        message: Message,
        mode: Mode,
        take_reply: bool,
    ) -> Option<Bytes> {
        let mut next_id = || self.next_message_id();
        let mut ctx = CommandContext {
            user: &handle.user,
            max_message_bytes: self.config.max_message_bytes,
            compress_min_bytes: self.config.compress_min_bytes,
            wants_lz4: handle.wants_lz4,
            taken_in_unix_us: std::cell::OnceCell::new(),
            schedule_max_ms: SCHEDULE_HORIZON_MS,
            next_message_id: &mut next_id,
            processors: &self.processors,
            errors: Vec::new(),
        };
        let action = commands::handle_message(message, mode, &mut ctx);
        for code in ctx.errors {
            self.metrics.count_error(code.as_str());
        }
        match action {
            Some(Action::Reply(frame)) if take_reply && handle.outbox.borrow().bytes() == 0 => {
                Some(frame)
            }
            Some(action) => {
                self.execute(handle, action);
                None
            }
            None => None,
        }
    }

    /// Answers a command dropped by the connection's rate limit.
    pub fn refuse_rate_limited(&self, handle: &ConnHandle, message: &Message) {
        // Only the `ref` is read, and only on this (refusal) path.
        let text = match message {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(b) => protocol::split_binary(b).ok().map(|(h, _)| h),
            _ => None,
        };
        let reference = text
            .and_then(|t| protocol::decode_command(t).ok())
            .and_then(|r| r.reference.map(|r| r.get().to_string()));
        let limit = self.config.rate_limit_per_s;
        self.reply_error(
            handle,
            reference,
            failure(
                ErrorCode::RateLimited,
                format!("over {limit} commands a second: this command was dropped"),
            ),
        );
    }

    /// A message id for `/api/*` messages (same scheme).
    pub fn next_api_message_id(&self) -> String {
        self.next_message_id()
    }

    /// A message id unique across shards and restarts: boot time, shard,
    /// sequence.
    pub(super) fn next_message_id(&self) -> String {
        let mut m = self.messaging.borrow_mut();
        m.next_message_seq += 1;
        message_id(&self.boot_id, self.id, m.next_message_seq)
    }

    fn execute(&self, handle: &ConnHandle, action: Action) {
        let origin = ConnRef {
            shard: self.id,
            conn: handle.id,
        };
        let membership = |reference: Option<String>| {
            reference.map(|reference| PendingKind::Membership { reference })
        };
        match action {
            Action::Batch(actions) => {
                for action in actions {
                    self.execute(handle, action);
                }
            }
            Action::Reply(frame) => self.reply(handle, frame),
            Action::Join {
                reference,
                group,
                weight,
            } => {
                if !handle.may_join(&group) {
                    let reason = format!("your token does not allow joining {group:?}");
                    return self.reply_error(
                        handle,
                        reference,
                        failure(ErrorCode::Forbidden, reason),
                    );
                }
                if !handle.in_group(&group) && handle.group_count() >= GROUPS_PER_CONNECTION_MAX {
                    let reason =
                        format!("a connection may join at most {GROUPS_PER_CONNECTION_MAX} groups");
                    return self.reply_error(
                        handle,
                        reference,
                        failure(ErrorCode::BadRequest, reason),
                    );
                }
                handle.add_group(&group);
                let home = home_shard(&group, self.shard_count);
                let reply = self.wait_for(handle.id, membership(reference));
                let user = handle.user.to_string();
                self.to_shard(
                    home,
                    MeshMsg::GroupJoin {
                        group,
                        at: origin,
                        user,
                        weight,
                        reply,
                    },
                );
            }
            Action::Leave { reference, group } => {
                handle.remove_group(&group);
                let home = home_shard(&group, self.shard_count);
                let reply = self.wait_for(handle.id, membership(reference));
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
                let reply = self.wait_for(handle.id, membership(reference));
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
            Action::Ack { reference, id } => {
                let home = handle.take_ack_route(&id);
                match home {
                    Some(home) => {
                        self.to_shard(home, MeshMsg::Ack { id, at: origin });
                        if let Some(reference) = reference {
                            self.reply(
                                handle,
                                text_frame(&protocol::encode_ok(Some(&reference), None, None)),
                            );
                        }
                    }
                    None => self.reply_error(
                        handle,
                        reference,
                        failure(
                            ErrorCode::BadRequest,
                            format!(
                                "no delivery of message {id:?} awaits an ack on this connection"
                            ),
                        ),
                    ),
                }
            }
            Action::Route {
                reference,
                target,
                envelope,
                deliver_at_unix_ms,
            } => {
                let answer = reference.map(|reference| RouteAnswer::Conn { reference });
                if let Err(f) =
                    self.submit_route(handle.id, answer, target, envelope, deliver_at_unix_ms)
                {
                    self.reply_error(handle, None, f);
                }
            }
        }
    }

    /// Sends a message to its target's home; with an answer, the outcome
    /// comes back to it. Fails at once only when the mesh is congested.
    fn submit_route(
        &self,
        conn: u64,
        answer: Option<RouteAnswer>,
        target: Target,
        envelope: Arc<Envelope>,
        deliver_at_unix_ms: Option<u64>,
    ) -> Result<(), Failure> {
        let home = home_shard(target.name(), self.shard_count);
        if home != self.id && self.outgoing.is_congested(home) {
            let f = failure(
                ErrorCode::Overloaded,
                "the server is overloaded: try again shortly",
            );
            if let Some(RouteAnswer::Api(tx)) = &answer {
                let _ = tx.try_send(RouteOutcome::Failed(f.clone()));
            }
            return Err(f);
        }
        let id = envelope.id().to_string();
        let reply = self.wait_for(
            conn,
            answer.map(|answer| PendingKind::Route {
                answer,
                id,
                parts: None,
                held: Held::No,
                reported: 0,
                delivered: 0,
            }),
        );
        let origin = ConnRef {
            shard: self.id,
            conn,
        };
        self.to_shard(
            home,
            MeshMsg::Route {
                target,
                envelope,
                origin,
                reply,
                deliver_at_unix_ms,
                source: RouteSource::Client,
            },
        );
        Ok(())
    }

    /// Routes a message injected over `/api/*` (`from` is `"api"`); the
    /// outcome arrives on `tx`.
    pub fn submit_api_route(
        &self,
        target: Target,
        envelope: Arc<Envelope>,
        deliver_at_unix_ms: Option<u64>,
        tx: LocalSender<RouteOutcome>,
    ) {
        let _ = self.submit_route(
            API_CONN,
            Some(RouteAnswer::Api(tx)),
            target,
            envelope,
            deliver_at_unix_ms,
        );
    }

    /// Cluster mode: a request another node waits on (`reply`), answered
    /// once this node's deliveries are counted.
    pub(super) fn wait_for_remote(&self, reply: RemoteReply, id: String) -> Option<ReplyTo> {
        self.wait_for(
            API_CONN,
            Some(PendingKind::Route {
                answer: RouteAnswer::Remote(reply),
                id,
                parts: None,
                held: Held::No,
                reported: 0,
                delivered: 0,
            }),
        )
    }

    /// Registers a request to answer later; `None` kind: nothing to wait for.
    fn wait_for(&self, conn: u64, kind: Option<PendingKind>) -> Option<ReplyTo> {
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
        m.pending.insert(request_id, PendingRequest { conn, kind });
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
    pub fn reply(&self, handle: &ConnHandle, frame: Bytes) {
        let item = OutItem {
            frame,
            lane: Lane::Reply,
            ack: false,
            anycast_group: None,
            accepted_unix_us: 0,
        };
        handle.enqueue(item, Instant::now, |evicted| self.evicted(handle, evicted));
    }

    fn reply_error(&self, handle: &ConnHandle, reference: Option<String>, f: Failure) {
        self.metrics.count_error(f.code.as_str());
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
        let reply = self.wait_for(handle.id, Some(PendingKind::Welcome(welcome)));
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
        for group in handle.take_groups() {
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
        self.metrics.count_dropped_low();
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

    /// Queues `envelope` to each of `conns` on this shard; returns how many
    /// took it. `ack:true` messages that find no room are not lost: their
    /// home redelivers them when the ack times out.
    fn deliver_local(
        &self,
        envelope: &Envelope,
        conns: &[u64],
        exclude: Option<u64>,
        anycast_group: Option<&Arc<str>>,
        ack_home: Option<usize>,
    ) -> u64 {
        // Read only if some outbox is over its bound.
        let now_cell = std::cell::OnceCell::new();
        let now = || *now_cell.get_or_init(Instant::now);
        let mut delivered = 0;
        let lane = Lane::from(envelope.priority());
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
                        ack: envelope.ack(),
                        anycast_group: anycast_group.cloned(),
                        accepted_unix_us: envelope.accepted_unix_us,
                    };
                    match handle.enqueue(item, now, |evicted| self.evicted(&handle, evicted)) {
                        PushOutcome::Queued => {
                            if let Some(home) = ack_home {
                                handle.expect_ack(envelope.id(), home);
                            }
                            true
                        }
                        PushOutcome::DroppedLow => {
                            self.metrics.count_dropped_low();
                            false
                        }
                        PushOutcome::Refused | PushOutcome::Overflow => false,
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
        delivered
    }

    /// Sends `envelope` to each connection in `parts` (per shard), telling
    /// recipients where acks go. Returns the number of `Deliver`s sent.
    pub(super) fn fan_out(
        &self,
        envelope: &Arc<Envelope>,
        parts: Vec<(usize, Arc<[u64]>)>,
        exclude: Option<u64>,
        anycast_group: Option<Arc<str>>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) -> u32 {
        let ack_home = envelope.ack().then_some(self.id);
        let mut sent = 0;
        for (shard, conns) in parts {
            if conns.is_empty() {
                continue;
            }
            sent += 1;
            self.to_shard(
                shard,
                MeshMsg::Deliver {
                    envelope: envelope.clone(),
                    conns,
                    exclude,
                    anycast_group: anycast_group.clone(),
                    ack_home,
                    origin,
                    reply,
                },
            );
        }
        sent
    }

    /// Sends `envelope` to the one connection `at`.
    pub(super) fn fan_out_to_one(
        &self,
        envelope: &Arc<Envelope>,
        at: ConnRef,
        anycast_group: Option<Arc<str>>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) -> u32 {
        let parts = vec![(at.shard, Arc::from(vec![at.conn]))];
        self.fan_out(envelope, parts, None, anycast_group, origin, reply)
    }

    /// Handles the messaging part of a mesh message (from a peer or from
    /// this shard itself).
    pub(super) fn on_messaging(&self, msg: MeshMsg) {
        match msg {
            MeshMsg::UserAttach { user, at, reply } => {
                let limit = self.config.max_connections_per_user;
                let count = self.directory.borrow().user_connection_count(&user);
                if limit > 0 && count >= limit {
                    if let Some(reply) = reply {
                        let reason = format!(
                            "user {user} already has {count} connections (max_connections_per_user)"
                        );
                        self.to_shard(
                            reply.shard,
                            MeshMsg::Done {
                                request_id: reply.request_id,
                                result: Err(Failure {
                                    code: ErrorCode::Forbidden,
                                    reason,
                                }),
                            },
                        );
                    }
                    return;
                }
                self.directory.borrow_mut().attach_user(&user, at);
                // Cluster mode: presence in Redis first, then the same.
                if self.cluster_attach(&user, at, reply) {
                    return;
                }
                if let Some(reply) = reply {
                    self.to_shard(
                        reply.shard,
                        MeshMsg::Done {
                            request_id: reply.request_id,
                            result: Ok(()),
                        },
                    );
                }
                // Right behind `welcome` (same path, FIFO): the mailbox.
                self.deliver_mailbox(&user, at);
            }
            MeshMsg::UserDetach { user, at } => {
                self.directory.borrow_mut().detach_user(&user, at);
                self.cluster_detached(&user);
                // A mailbox drain may have been going to `at`: carry it on
                // with another connection of the user, if there is one.
                if self.reliable.borrow().mailbox_len(&user) > 0 {
                    let next = self
                        .directory
                        .borrow()
                        .user_conns_by_shard(&user, self.shard_count)
                        .into_iter()
                        .enumerate()
                        .find_map(|(shard, conns)| {
                            conns.first().map(|&conn| ConnRef { shard, conn })
                        });
                    if let Some(next) = next {
                        self.deliver_mailbox(&user, next);
                    }
                }
            }
            MeshMsg::MailboxPaused { conn } => {
                let handle = self.conns.borrow().get(&conn).cloned();
                if let Some(handle) = handle {
                    handle.mailbox_paused.set(true);
                    self.mailbox_written(&handle);
                }
            }
            MeshMsg::MailboxMore { user, at } => {
                let attached = self
                    .directory
                    .borrow()
                    .user_conns_by_shard(&user, self.shard_count)
                    .get(at.shard)
                    .is_some_and(|conns| conns.contains(&at.conn));
                if attached {
                    self.deliver_mailbox(&user, at);
                }
            }
            MeshMsg::GroupJoin {
                group,
                at,
                user,
                weight,
                reply,
            } => {
                let result = self
                    .directory
                    .borrow_mut()
                    .join(&group, at, &user, weight)
                    .map_err(|e| failure(ErrorCode::Overloaded, e.to_string()));
                if result.is_ok() && self.cluster_group_changed(&group, at, reply) {
                    return;
                }
                self.answer(reply, at, result);
            }
            MeshMsg::GroupLeave { group, at, reply } => {
                self.directory.borrow_mut().leave(&group, at.conn);
                if self.cluster_group_changed(&group, at, reply) {
                    return;
                }
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
                if result.is_ok() && self.cluster_strategy_set(&group, strategy, origin, reply) {
                    return;
                }
                self.answer(reply, origin, result);
            }
            MeshMsg::Route {
                target,
                envelope,
                origin,
                reply,
                deliver_at_unix_ms,
                source,
            } => {
                if matches!(source, RouteSource::Client) {
                    let refusal =
                        self.refusal_while_log_fails(&target, &envelope, deliver_at_unix_ms);
                    if let Some(refusal) = refusal {
                        return self.answer(reply, origin, Err(refusal));
                    }
                }
                let arrived = match source {
                    RouteSource::Node(arrived) => Some(arrived),
                    RouteSource::Client | RouteSource::Server => None,
                };
                match deliver_at_unix_ms {
                    Some(due) if due > unix_ms() => {
                        let lsn_before = self.reliable.borrow().journal_lsn();
                        self.reliable.borrow_mut().schedule(Scheduled {
                            target,
                            msg: Arc::new(envelope.parts.clone()),
                            origin,
                            due_unix_ms: due,
                        });
                        self.wake_timers();
                        self.routed(lsn_before, reply, 0, Held::Scheduled);
                    }
                    _ => self.route_from(target, envelope, origin, reply, arrived),
                }
            }
            MeshMsg::Deliver {
                envelope,
                conns,
                exclude,
                anycast_group,
                ack_home,
                origin: _,
                reply,
            } => {
                let delivered = self.deliver_local(
                    &envelope,
                    &conns,
                    exclude,
                    anycast_group.as_ref(),
                    ack_home,
                );
                if let Some(reply) = reply {
                    self.to_shard(
                        reply.shard,
                        MeshMsg::Delivered {
                            request_id: reply.request_id,
                            delivered,
                            refused: 0,
                        },
                    );
                }
            }
            MeshMsg::Routed { request_id, .. } if self.is_handoff(request_id) => {
                self.handoff_done(request_id);
            }
            MeshMsg::Routed {
                request_id,
                parts,
                held,
            } => {
                self.update_route(request_id, |p, h, _, _| {
                    *p = Some(parts);
                    *h = held;
                });
                self.cluster_routed(request_id);
            }
            MeshMsg::Delivered {
                request_id,
                delivered,
                ..
            } => self.update_route(request_id, |_, _, r, d| {
                *r += 1;
                *d += delivered;
            }),
            MeshMsg::Done { request_id, result } => self.finish(request_id, result),
            MeshMsg::Failed { origin, failure } => {
                self.metrics.count_error(failure.code.as_str());
                let e = CommandError {
                    reference: None,
                    code: failure.code,
                    reason: failure.reason,
                };
                self.reply_to_conn(origin.conn, commands::error_frame(&e));
            }
            MeshMsg::AnycastDone { group, conn, n } => {
                self.directory.borrow_mut().anycast_done(&group, conn, n);
                self.note_outstanding(&group);
            }
            MeshMsg::Ack { id, at } => {
                let settled = self.reliable.borrow_mut().settle_with_stream(&id, at.conn);
                match settled {
                    Some(Some(stream)) => self.cluster_settled(&stream),
                    Some(None) => self.kick_wal(),
                    None => {}
                }
            }
            MeshMsg::ClusterResync => self.cluster_resync(),
            MeshMsg::DlqQuery { from, request_id } => self.answer_dlq_query(from, request_id),
            MeshMsg::DlqReply {
                request_id,
                letters,
                evicted,
            } => self.collect_dlq_reply(request_id, letters, evicted),
            MeshMsg::DlqReplay {
                from,
                request_id,
                ids,
            } => {
                let replayed = self.replay_dead_letters(ids.as_deref());
                self.to_shard(
                    from,
                    MeshMsg::DlqReplayed {
                        request_id,
                        replayed,
                    },
                );
            }
            MeshMsg::DlqReplayed {
                request_id,
                replayed,
            } => self.collect_dlq_replayed(request_id, replayed),
            MeshMsg::MetricsQuery { from, request_id } => {
                self.answer_metrics_query(from, request_id)
            }
            MeshMsg::ConnectionsQuery { from, request_id } => {
                self.answer_connections_query(from, request_id)
            }
            MeshMsg::ConnectionsReply {
                request_id,
                connections,
            } => {
                if let Some(tx) = self.connections_waiters.borrow().get(&request_id) {
                    let _ = tx.try_send(connections);
                }
            }
            MeshMsg::MetricsReply {
                request_id,
                snapshot,
                view,
            } => self.collect_metrics_reply(request_id, snapshot, view),
            MeshMsg::Shutdown => self.begin_shutdown(),
            MeshMsg::HealthQuery { from, request_id } => {
                let reply = MeshMsg::HealthReply {
                    request_id,
                    health: self.local_health(),
                };
                self.to_shard(from, reply);
            }
            MeshMsg::HealthReply { request_id, health } => {
                if let Some(tx) = self.health_waiters.borrow().get(&request_id) {
                    let _ = tx.try_send(health);
                }
            }
            MeshMsg::Batch(batch) => {
                for msg in batch {
                    self.on_messaging(msg);
                }
            }
        }
    }

    /// Answers a membership request: to the waiting request, or, without
    /// one, tells the connection only about a failure.
    pub(super) fn answer(
        &self,
        reply: Option<ReplyTo>,
        origin: ConnRef,
        result: Result<(), Failure>,
    ) {
        match (reply, result) {
            (Some(reply), result) => self.to_shard(
                reply.shard,
                MeshMsg::Done {
                    request_id: reply.request_id,
                    result,
                },
            ),
            (None, Err(failure)) if origin.conn != API_CONN => {
                self.to_shard(origin.shard, MeshMsg::Failed { origin, failure })
            }
            (None, _) => {}
        }
    }

    /// Tells the origin how a message was routed, once whatever it made
    /// durable (mailbox, schedule, pending ack) is on disk.
    /// An anycast whose group has no member now. A live command is answered
    /// `no_members`. Otherwise nobody waits for an answer (a scheduled
    /// message falling due, a DLQ replay): an `ack:true` message is kept
    /// pending, as when a retry finds no member, so it is tried again at its
    /// ack timeout and dead-lettered (`ack_timeout`) only after its retries;
    /// any other message fails, and its sender, if connected, is told which.
    pub(super) fn anycast_without_members(
        &self,
        group: &str,
        envelope: &Envelope,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
    ) {
        if reply.is_none() && envelope.ack() {
            let key = PendingKey {
                id: envelope.id().to_string(),
                conn: None,
            };
            let target = AckTarget::Anycast {
                group: group.to_string(),
            };
            self.reliable.borrow_mut().track(
                key,
                Arc::new(envelope.parts.clone()),
                target,
                envelope.attempt,
                unix_ms(),
            );
            self.wake_timers();
            return self.routed(lsn_before, reply, 0, Held::No);
        }
        let reason = match reply {
            Some(_) => format!("group {group:?} has no members"),
            None => format!(
                "group {group:?} has no members for message {}",
                envelope.id()
            ),
        };
        self.answer(reply, origin, Err(failure(ErrorCode::NoMembers, reason)));
    }

    /// Whether a message to `user` goes to its mailbox: offline, or online
    /// with a mailbox still being drained (a new message waits its turn
    /// behind the stored ones).
    pub(super) fn held_in_mailbox(&self, user: &str, offline: bool) -> bool {
        offline || self.reliable.borrow().mailbox_len(user) > 0
    }

    pub(super) fn routed(&self, lsn_before: u64, reply: Option<ReplyTo>, parts: u32, held: Held) {
        if let Some(reply) = reply {
            let msg = MeshMsg::Routed {
                request_id: reply.request_id,
                parts,
                held,
            };
            self.when_durable(lsn_before, reply.shard, msg);
        } else if self.reliable.borrow().journal_lsn() > lsn_before {
            self.kick_wal();
        }
    }

    /// At the target's home: find the recipients, send each shard its part,
    /// track acks, or store for an offline user. In cluster mode: across
    /// every node.
    pub(super) fn route(
        &self,
        target: Target,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) {
        self.route_from(target, envelope, origin, reply, None)
    }

    /// `route`, for a message that `arrived` from another node (cluster
    /// mode): then only this node's recipients get it.
    pub(super) fn route_from(
        &self,
        target: Target,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        arrived: Option<Arrived>,
    ) {
        // Read once, and only when needed: a plain message to an online
        // user needs no clock here (clock reads were a tenth of a direct
        // message's server time).
        let now_cell = std::cell::OnceCell::new();
        let now = || *now_cell.get_or_init(unix_ms);
        let lsn_before = self.reliable.borrow().journal_lsn();
        if envelope.parts.expires_unix_ms.is_some_and(|t| t <= now()) {
            let msg = Arc::new(envelope.parts.clone());
            let mut reliable = self.reliable.borrow_mut();
            // (A hand-off's envelope carries the attempts made so far.)
            reliable.dead_letter(
                msg,
                target,
                crate::delivery::dlq::DeadReason::Expired,
                envelope.attempt.saturating_sub(1),
                now(),
            );
            drop(reliable);
            return self.routed(lsn_before, reply, 0, Held::No);
        }
        if self.cluster.is_some() {
            return match (arrived, target) {
                (None, target) => self.route_cluster(target, envelope, origin, reply, lsn_before),
                (Some(arrived), Target::User(user)) => {
                    self.route_arrived_user(user, envelope, origin, reply, arrived, lsn_before)
                }
                (Some(_), Target::Group { group, echo }) => {
                    let parts = self.publish_here(&group, echo, &envelope, origin, reply);
                    self.routed(lsn_before, reply, parts, Held::No);
                }
                (Some(arrived), Target::Anycast(group)) => self.anycast_here(
                    &group,
                    envelope,
                    origin,
                    reply,
                    lsn_before,
                    arrived.strategy,
                ),
            };
        }
        let ack = envelope.ack();
        // The id keys ack tracking only.
        let id = || envelope.id().to_string();
        let (parts, held) = match &target {
            Target::User(user) => {
                let parts = self.directory.borrow().user_parts(user);
                if self.held_in_mailbox(user, parts.is_empty()) {
                    // The mailbox, delivered after the next welcome (a
                    // redelivery handed over keeps its attempt count).
                    let msg = Arc::new(envelope.parts.clone());
                    let waiting = Waiting::after(msg, envelope.attempt.saturating_sub(1));
                    self.reliable
                        .borrow_mut()
                        .store_offline(user, waiting, now());
                    self.wake_timers();
                    (0, Held::Mailbox)
                } else {
                    if ack {
                        let key = PendingKey {
                            id: id(),
                            conn: None,
                        };
                        let msg = Arc::new(envelope.parts.clone());
                        let target = AckTarget::User(user.clone());
                        self.reliable
                            .borrow_mut()
                            .track(key, msg, target, envelope.attempt, now());
                        self.wake_timers();
                    }
                    (
                        self.fan_out(&envelope, parts, None, None, origin, reply),
                        Held::No,
                    )
                }
            }
            Target::Group { group, echo } => {
                let exclude = (!echo).then_some(origin.conn);
                if ack {
                    let members = self.directory.borrow().members_with_users(group);
                    let msg = Arc::new(envelope.parts.clone());
                    let mut reliable = self.reliable.borrow_mut();
                    for (at, user) in members
                        .into_iter()
                        .filter(|(at, _)| Some(at.conn) != exclude)
                    {
                        let key = PendingKey {
                            id: id(),
                            conn: Some(at.conn),
                        };
                        let target = AckTarget::Member {
                            group: group.clone(),
                            at,
                            user,
                        };
                        reliable.track(key, msg.clone(), target, envelope.attempt, now());
                    }
                    drop(reliable);
                    self.wake_timers();
                }
                let lists = self
                    .directory
                    .borrow_mut()
                    .members_by_shard(group, self.shard_count);
                let parts = lists
                    .into_iter()
                    .enumerate()
                    .filter(|(_, conns)| !(conns.len() == 1 && Some(conns[0]) == exclude))
                    .collect();
                (
                    self.fan_out(&envelope, parts, exclude, None, origin, reply),
                    Held::No,
                )
            }
            Target::Anycast(group) => {
                let picked = self.directory.borrow_mut().pick(group);
                let Some(at) = picked else {
                    return self
                        .anycast_without_members(group, &envelope, origin, reply, lsn_before);
                };
                if ack {
                    let key = PendingKey {
                        id: id(),
                        conn: None,
                    };
                    let msg = Arc::new(envelope.parts.clone());
                    let target = AckTarget::Anycast {
                        group: group.clone(),
                    };
                    self.reliable
                        .borrow_mut()
                        .track(key, msg, target, envelope.attempt, now());
                    self.wake_timers();
                }
                let group = Some(Arc::from(group.as_str()));
                (
                    self.fan_out_to_one(&envelope, at, group, origin, reply),
                    Held::No,
                )
            }
        };
        self.routed(lsn_before, reply, parts, held);
    }

    fn update_route(
        &self,
        request_id: u64,
        update: impl FnOnce(&mut Option<u32>, &mut Held, &mut u32, &mut u64),
    ) {
        let complete = {
            let mut m = self.messaging.borrow_mut();
            let Some(PendingRequest {
                kind:
                    PendingKind::Route {
                        parts,
                        held,
                        reported,
                        delivered,
                        ..
                    },
                ..
            }) = m.pending.get_mut(&request_id)
            else {
                return;
            };
            update(parts, held, reported, delivered);
            *parts == Some(*reported)
        };
        if complete {
            self.finish(request_id, Ok(()));
        }
    }

    fn is_handoff(&self, request_id: u64) -> bool {
        matches!(
            self.messaging.borrow().pending.get(&request_id),
            Some(PendingRequest {
                kind: PendingKind::Handoff { .. },
                ..
            })
        )
    }

    /// Tracks a restored message handed to its user's home (`None` when
    /// too many requests are pending: it stays here until the next start).
    pub(super) fn wait_for_handoff(&self, user: &str, id: &str) -> Option<ReplyTo> {
        let kind = PendingKind::Handoff {
            user: user.to_string(),
            id: id.to_string(),
        };
        self.wait_for(API_CONN, Some(kind))
    }

    /// The home has the handed-off message durably: forget it here.
    fn handoff_done(&self, request_id: u64) {
        let Some(request) = self.messaging.borrow_mut().pending.remove(&request_id) else {
            return;
        };
        if let PendingKind::Handoff { user, id } = request.kind {
            self.reliable
                .borrow_mut()
                .remove_mailbox_message(&user, &id);
            self.kick_wal();
            self.handoff_answered();
        }
    }

    /// Completes a pending request and answers its connection (or caller).
    pub(super) fn finish(&self, request_id: u64, result: Result<(), Failure>) {
        let Some(request) = self.messaging.borrow_mut().pending.remove(&request_id) else {
            return;
        };
        let frame = match (request.kind, result) {
            (PendingKind::Handoff { user, id }, _) => {
                // It stays here and is handed off again at the next start.
                log::warn!("shard {}: handing {id} to {user}'s home failed", self.id);
                self.handoff_answered();
                return;
            }
            (PendingKind::Welcome(welcome), Ok(())) => welcome,
            (PendingKind::Welcome(_), Err(f)) => {
                // The user's home refused the connection: no welcome, close.
                log::debug!("connection {}: {}", request.conn, f.reason);
                self.metrics.count_refused_user_limit();
                let handle = self.conns.borrow().get(&request.conn).cloned();
                if let Some(handle) = handle {
                    handle.raise(crate::conn::handle::SIGNAL_USER_LIMIT);
                }
                return;
            }
            (PendingKind::Membership { reference }, Ok(())) => {
                text_frame(&protocol::encode_ok(Some(&reference), None, None))
            }
            (PendingKind::Membership { reference }, Err(f)) => {
                self.metrics.count_error(f.code.as_str());
                error_frame(reference, f)
            }
            (
                PendingKind::Route {
                    answer,
                    id,
                    delivered,
                    held,
                    ..
                },
                result,
            ) => {
                let outcome = match result {
                    Ok(()) => RouteOutcome::Ok {
                        id,
                        delivered,
                        held,
                    },
                    Err(f) => RouteOutcome::Failed(f),
                };
                match answer {
                    RouteAnswer::Api(tx) => {
                        let _ = tx.try_send(outcome);
                        return;
                    }
                    RouteAnswer::Remote(to) => {
                        let delivered = match outcome {
                            RouteOutcome::Ok { delivered, .. } => delivered,
                            RouteOutcome::Failed(_) => 0,
                        };
                        self.publish_remote_delivered(to, delivered);
                        return;
                    }
                    RouteAnswer::Conn { reference } => match outcome {
                        RouteOutcome::Ok {
                            id,
                            delivered,
                            held,
                        } => text_frame(&protocol::encode_route_ok(
                            &reference,
                            &id,
                            delivered,
                            held_word(held),
                        )),
                        RouteOutcome::Failed(f) => {
                            self.metrics.count_error(f.code.as_str());
                            error_frame(reference, f)
                        }
                    },
                }
            }
        };
        self.reply_to_conn(request.conn, frame);
    }
}

/// How `ok` says where a message waits (`None`: delivered now).
pub fn held_word(held: Held) -> Option<&'static str> {
    match held {
        Held::No => None,
        Held::Mailbox => Some("mailbox"),
        Held::Scheduled => Some("scheduled"),
    }
}

fn error_frame(reference: String, f: Failure) -> Bytes {
    commands::error_frame(&CommandError {
        reference: Some(reference),
        code: f.code,
        reason: f.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_ids_read_boot_shard_sequence() {
        assert_eq!(message_id("1764806400123", 0, 1), "1764806400123-0-1");
        assert_eq!(
            message_id("node-a.7", 12, u64::MAX),
            format!("node-a.7-12-{}", u64::MAX)
        );
        assert_eq!(message_id("", 3, 0), "-3-0");
    }
}
