//! Cluster mode on a shard: the glue between the shard's messaging and the
//! cluster's Redis (`crate::cluster`).
//!
//! Every shard has its own command link to Redis, driven by a task on the
//! shard's executor. The home shard of a name does that name's cluster work,
//! as it does its local work: a user's home keeps the user's presence
//! (`wsu:user:<user>`) and drains its Redis mailbox on attach; a group's
//! home keeps the group's per-node summary and routes publishes and
//! anycasts cluster-wide. Shard 0 also keeps the node's registry key and
//! its subscription to `wsu:node:<id>`, and hands what other nodes publish
//! to the home shards as `MeshMsg::Route { source: RouteSource::Node(..) }`.
//!
//! Every command is queued with a continuation (`Then`) that runs when its
//! reply comes back, or at once with an error while Redis is unreachable:
//! one code path for both.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::timer::Timer;
use redis_protocol::resp2::types::BytesFrame;

use super::mesh::{Arrived, Held, MeshMsg, ReplyTo, RouteSource};
use super::messaging::{failure, unix_ms, API_CONN};
use super::ShardState;
use crate::cluster::link::{self, reply, Link, LinkError, LinkEvents, SubscriberEvents};
use crate::cluster::scripts::Script;
use crate::cluster::wire::{self, ClusterMsg, RemoteReply};
use crate::cluster::{self as redis_keys, RedisAddr};
use crate::delivery::dlq::DeadReason;
use crate::delivery::mailbox::Waiting;
use crate::delivery::{AckTarget, AfterTimeout, PendingAck, PendingKey, StreamRef};
use crate::protocol::{ErrorCode, StrategyKind};
use crate::routing::envelope::MessageParts;
use crate::routing::{home_shard, ConnRef, Envelope, Target};
use crate::store::record::{StoredMsg, StoredTarget};

/// How long the sender waits for other nodes to say how many connections
/// took a message before answering with what it has.
pub const REMOTE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a shard looks after its cluster chores.
const MAINTENANCE_PERIOD: Duration = Duration::from_millis(50);
/// Most presence/summary refresh commands queued per maintenance tick.
const REFRESH_PER_TICK_MAX: usize = 4_096;
/// Most messages moved from this shard's own mailboxes to Redis per tick.
const MIGRATE_PER_TICK_MAX_MSGS: usize = 1_000;
/// Longest a shard waits at shutdown for its last commands to leave.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// What the server hands every shard in cluster mode.
#[derive(Debug)]
pub struct ClusterStart {
    pub node: String,
    pub addr: RedisAddr,
    pub sock: SocketAddr,
    /// Set by shard 0 while the node is subscribed to its channel.
    pub subscribed: AtomicBool,
}

/// A shard's cluster state.
pub(super) struct ClusterShard {
    pub(super) node: Arc<str>,
    start: Arc<ClusterStart>,
    link: Rc<Link<Then>>,
    /// Requests waiting for other nodes' replies, by deadline.
    deadlines: RefCell<VecDeque<(Instant, u64)>>,
    /// Groups whose outstanding anycasts changed (least_connections).
    dirty_outstanding: RefCell<HashSet<String>>,
    /// Names whose presence or summary is to be re-asserted.
    refresh_backlog: RefCell<VecDeque<Refresh>>,
    last_refresh: Cell<Option<Instant>>,
    last_heartbeat: Cell<Option<Instant>>,
    stopped: Cell<bool>,
}

enum Refresh {
    User(String),
    Group(String),
}

impl ClusterShard {
    pub(super) fn new(start: Arc<ClusterStart>) -> Self {
        ClusterShard {
            node: Arc::from(start.node.as_str()),
            start,
            link: Link::new(),
            deadlines: RefCell::new(VecDeque::new()),
            dirty_outstanding: RefCell::new(HashSet::new()),
            refresh_backlog: RefCell::new(VecDeque::new()),
            last_refresh: Cell::new(None),
            last_heartbeat: Cell::new(None),
            stopped: Cell::new(false),
        }
    }

    /// Whether this shard can reach Redis and the node is subscribed.
    pub(super) fn redis_up(&self) -> bool {
        self.link.is_up() && self.start.subscribed.load(Ordering::Acquire)
    }
}

/// The continuation of a queued Redis command.
pub(super) enum Then {
    Ignore,
    /// A connection of `user` attached here: `welcome`, then its mailbox.
    Attach {
        user: String,
        at: ConnRef,
        reply: Option<ReplyTo>,
    },
    SendUser {
        user: String,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
        local_parts: u32,
        /// Local connections already have it (non-`ack` sends go out
        /// locally before Redis answers).
        local_done: bool,
    },
    Publish {
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
        local_parts: u32,
    },
    Anycast {
        group: String,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
    },
    /// A membership change is in Redis: answer the member.
    Answer {
        origin: ConnRef,
        reply: Option<ReplyTo>,
    },
    /// Is the Stream entry of a timed-out delivery still there?
    StreamCheck {
        key: PendingKey,
        pending: PendingAck,
    },
    /// A message for an offline user went to its Redis mailbox.
    Store {
        user: String,
        msg: Arc<MessageParts>,
    },
}

fn arg(s: impl Into<Bytes>) -> Bytes {
    s.into()
}

impl ShardState {
    fn cluster_shard(&self) -> &ClusterShard {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// Queues a Redis command; if it cannot be queued, its continuation
    /// runs now with the error.
    fn redis(&self, args: Vec<Bytes>, then: Then) {
        if let Err((e, then)) = self.cluster_shard().link.command(args, then) {
            self.on_cluster_reply(then, Err(e));
        }
    }

    fn redis_script(&self, script: Script, keys: &[String], argv: Vec<Bytes>, then: Then) {
        if let Err((e, then)) = self.cluster_shard().link.script(script, keys, argv, then) {
            self.on_cluster_reply(then, Err(e));
        }
    }

    fn node_arg(&self) -> Bytes {
        arg(self.cluster_shard().node.to_string())
    }

    fn presence_ttl_arg(&self) -> Bytes {
        arg(self.config.cluster_presence_ttl_ms.to_string())
    }

    fn stored(&self, msg: &MessageParts) -> StoredMsg {
        StoredMsg::from_parts(msg, self.config.compress_min_bytes)
    }

    /// Where other nodes answer a request this node waits on.
    fn remote_reply(&self, reply: Option<ReplyTo>) -> Option<RemoteReply> {
        reply.map(|r| RemoteReply {
            node: self.cluster_shard().node.to_string(),
            shard: r.shard as u32,
            request_id: r.request_id,
        })
    }

    /// At the target's home on the sender's node: route cluster-wide.
    pub(super) fn route_cluster(
        &self,
        target: Target,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
    ) {
        match target {
            Target::User(user) => self.send_user_cluster(user, envelope, origin, reply, lsn_before),
            Target::Group { group, echo } => {
                let local_parts = self.publish_here(&group, echo, &envelope, origin, reply);
                let msg = ClusterMsg::Route {
                    target: StoredTarget::Group {
                        group: group.clone(),
                        echo: true,
                    },
                    msg: self.stored(&envelope.parts),
                    attempt: envelope.attempt,
                    strategy: 0,
                    reply: self.remote_reply(reply),
                };
                let then = Then::Publish {
                    origin,
                    reply,
                    lsn_before,
                    local_parts,
                };
                let argv = vec![
                    self.node_arg(),
                    arg(redis_keys::NODE_CHANNEL_PREFIX),
                    arg(wire::encode(&msg)),
                ];
                self.redis_script(
                    Script::PublishGroup,
                    &[redis_keys::group_key(&group)],
                    argv,
                    then,
                );
            }
            Target::Anycast(group) => {
                let msg = ClusterMsg::Route {
                    target: StoredTarget::Anycast(group.clone()),
                    msg: self.stored(&envelope.parts),
                    attempt: envelope.attempt,
                    strategy: 0,
                    reply: self.remote_reply(reply),
                };
                let keys = [
                    redis_keys::group_key(&group),
                    redis_keys::schedule_key(&group),
                    redis_keys::strategy_key(&group),
                ];
                let argv = vec![
                    self.node_arg(),
                    arg(redis_keys::NODE_CHANNEL_PREFIX),
                    arg(wire::encode(&msg)),
                ];
                let then = Then::Anycast {
                    group,
                    envelope,
                    origin,
                    reply,
                    lsn_before,
                };
                self.redis_script(Script::Anycast, &keys, argv, then);
            }
        }
    }

    fn send_user_cluster(
        &self,
        user: String,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
    ) {
        let local_live = self.directory.borrow().user_connection_count(&user) > 0;
        let ack = envelope.ack();
        // Without `ack` local connections need not wait for Redis; with it
        // they wait for the Stream entry that keeps the message until acked.
        let local_done = !ack && local_live;
        let local_parts = if local_done {
            self.deliver_user_here(&user, &envelope, origin, reply, None)
        } else {
            0
        };
        let stored = self.stored(&envelope.parts);
        let msg = ClusterMsg::Route {
            target: StoredTarget::User(user.clone()),
            msg: stored.clone(),
            attempt: envelope.attempt,
            strategy: 0,
            reply: self.remote_reply(reply),
        };
        let keys = [
            redis_keys::presence_key(&user),
            redis_keys::mailbox_key(&user),
        ];
        let argv = vec![
            self.node_arg(),
            arg(redis_keys::NODE_CHANNEL_PREFIX),
            arg(wire::encode_body(&msg)),
            arg(wire::encode_stored(&stored)),
            arg(if ack { "1" } else { "0" }),
            arg(if local_live { "1" } else { "0" }),
            arg(self.config.mailbox_max_msgs.to_string()),
        ];
        let then = Then::SendUser {
            user,
            envelope,
            origin,
            reply,
            lsn_before,
            local_parts,
            local_done,
        };
        self.redis_script(Script::SendUser, &keys, argv, then);
    }

    /// Delivers to `user`'s connections on this node (tracking the ack,
    /// in its Stream when `stream` says where); returns the parts sent.
    pub(super) fn deliver_user_here(
        &self,
        user: &str,
        envelope: &Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        stream: Option<StreamRef>,
    ) -> u32 {
        let by_shard = self
            .directory
            .borrow()
            .user_conns_by_shard(user, self.shard_count);
        if by_shard.iter().all(Vec::is_empty) {
            return 0;
        }
        if envelope.ack() {
            let key = PendingKey {
                id: envelope.id().to_string(),
                conn: None,
            };
            let msg = Arc::new(envelope.parts.clone());
            self.reliable.borrow_mut().track_with(
                key,
                msg,
                AckTarget::User(user.to_string()),
                envelope.attempt,
                unix_ms(),
                stream,
            );
            self.wake_timers();
        }
        let parts = by_shard
            .into_iter()
            .enumerate()
            .map(|(shard, conns)| (shard, Arc::from(conns)))
            .collect();
        self.fan_out(envelope, parts, None, None, origin, reply)
    }

    /// On the node a user-targeted message arrived at: deliver it to the
    /// user's connections here, or keep it in the user's Redis mailbox.
    pub(super) fn route_arrived_user(
        &self,
        user: String,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        arrived: Arrived,
        lsn_before: u64,
    ) {
        let stream = arrived.stream_entry.map(|entry| StreamRef {
            user: user.clone(),
            entry,
        });
        let kept = stream.is_some();
        let parts = self.deliver_user_here(&user, &envelope, origin, reply, stream);
        let held = if parts > 0 {
            Held::No
        } else {
            // The user left this node meanwhile: its mailbox keeps it.
            if !kept {
                self.store_in_redis(&user, Arc::new(envelope.parts.clone()));
            }
            Held::Mailbox
        };
        self.routed(lsn_before, reply, parts, held);
    }

    /// Keeps a message in `user`'s Redis mailbox (this shard's own mailbox
    /// while Redis is unreachable; it moves to Redis later).
    pub(super) fn store_in_redis(&self, user: &str, msg: Arc<MessageParts>) {
        let argv = vec![
            arg(wire::encode_stored(&self.stored(&msg))),
            arg(self.config.mailbox_max_msgs.to_string()),
        ];
        let then = Then::Store {
            user: user.to_string(),
            msg,
        };
        self.redis_script(Script::Store, &[redis_keys::mailbox_key(user)], argv, then);
    }

    /// Delivers a publish to this node's members; returns the parts sent.
    pub(super) fn publish_here(
        &self,
        group: &str,
        echo: bool,
        envelope: &Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) -> u32 {
        let exclude = (!echo).then_some(origin.conn);
        if envelope.ack() {
            let now = unix_ms();
            let members = self.directory.borrow().members_with_users(group);
            let msg = Arc::new(envelope.parts.clone());
            let mut reliable = self.reliable.borrow_mut();
            for (at, user) in members
                .into_iter()
                .filter(|(at, _)| Some(at.conn) != exclude)
            {
                let key = PendingKey {
                    id: envelope.id().to_string(),
                    conn: Some(at.conn),
                };
                let target = AckTarget::Member {
                    group: group.to_string(),
                    at,
                    user,
                };
                reliable.track(key, msg.clone(), target, envelope.attempt, now);
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
        self.fan_out(envelope, parts, exclude, None, origin, reply)
    }

    /// Picks one member on this node (by `strategy` when the cluster named
    /// one) and delivers to it.
    pub(super) fn anycast_here(
        &self,
        group: &str,
        envelope: Arc<Envelope>,
        origin: ConnRef,
        reply: Option<ReplyTo>,
        lsn_before: u64,
        strategy: Option<StrategyKind>,
    ) {
        if let Some(strategy) = strategy {
            let known = self.directory.borrow().strategy(group);
            if known.is_some_and(|k| k != strategy) {
                let _ = self.directory.borrow_mut().set_strategy(group, strategy);
            }
        }
        let picked = self.directory.borrow_mut().pick(group);
        let Some(at) = picked else {
            return self.anycast_without_members(group, &envelope, origin, reply, lsn_before);
        };
        if envelope.ack() {
            let key = PendingKey {
                id: envelope.id().to_string(),
                conn: None,
            };
            let msg = Arc::new(envelope.parts.clone());
            let target = AckTarget::Anycast {
                group: group.to_string(),
            };
            self.reliable
                .borrow_mut()
                .track(key, msg, target, envelope.attempt, unix_ms());
            self.wake_timers();
        }
        self.note_outstanding(group);
        let anycast_group = Some(Arc::from(group));
        let parts = self.fan_out_to_one(&envelope, at, anycast_group, origin, reply);
        self.routed(lsn_before, reply, parts, Held::No);
    }

    /// A connection of `user` attached to this node: presence, then
    /// `welcome`, then the mailbox. Returns false when not in cluster mode.
    pub(super) fn cluster_attach(&self, user: &str, at: ConnRef, reply: Option<ReplyTo>) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let keys = [
            redis_keys::presence_key(user),
            redis_keys::mailbox_key(user),
        ];
        let argv = vec![
            self.node_arg(),
            self.presence_ttl_arg(),
            arg(self.config.mailbox_max_msgs.to_string()),
        ];
        let then = Then::Attach {
            user: user.to_string(),
            at,
            reply,
        };
        self.redis_script(Script::Attach, &keys, argv, then);
        true
    }

    /// A connection of `user` closed here: the last one takes the node out
    /// of the user's presence set.
    pub(super) fn cluster_detached(&self, user: &str) {
        if self.cluster.is_none() || self.directory.borrow().user_connection_count(user) > 0 {
            return;
        }
        let args = vec![
            arg("SREM"),
            arg(redis_keys::presence_key(user)),
            self.node_arg(),
        ];
        self.redis(args, Then::Ignore);
    }

    /// Membership of `group` changed here: update the node's summary, then
    /// answer (at once while Redis is unreachable). Returns false when not
    /// in cluster mode.
    pub(super) fn cluster_group_changed(
        &self,
        group: &str,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let then = Then::Answer { origin, reply };
        self.sync_group(group, then);
        true
    }

    fn sync_group(&self, group: &str, then: Then) {
        let (members, weight) = self.directory.borrow().group_summary(group);
        let key = redis_keys::group_key(group);
        if members == 0 {
            self.redis(vec![arg("HDEL"), arg(key), self.node_arg()], then);
        } else {
            let value = format!("{members} {weight}");
            self.redis(
                vec![arg("HSET"), arg(key.clone()), self.node_arg(), arg(value)],
                Then::Ignore,
            );
            self.redis(
                vec![arg("PEXPIRE"), arg(key), self.presence_ttl_arg()],
                then,
            );
        }
    }

    /// A group's strategy was set here: make it the cluster's. Returns
    /// false when not in cluster mode.
    pub(super) fn cluster_strategy_set(
        &self,
        group: &str,
        strategy: StrategyKind,
        origin: ConnRef,
        reply: Option<ReplyTo>,
    ) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let args = vec![
            arg("SET"),
            arg(redis_keys::strategy_key(group)),
            arg(wire::strategy_name(strategy)),
        ];
        self.redis(args, Then::Answer { origin, reply });
        true
    }

    /// A delivery kept in a Stream was acked: it leaves the Stream.
    pub(super) fn cluster_settled(&self, stream: &StreamRef) {
        if self.cluster.is_some() {
            self.xdel(&stream.user, vec![arg(stream.entry.clone())]);
        }
    }

    fn xdel(&self, user: &str, entries: Vec<Bytes>) {
        let mut args = vec![arg("XDEL"), arg(redis_keys::mailbox_key(user))];
        args.extend(entries);
        self.redis(args, Then::Ignore);
    }

    /// No ack in time for a delivery kept in a Stream: if another node's
    /// connection acked it, the entry is gone and so is the delivery;
    /// otherwise redeliver or dead-letter as usual.
    pub(super) fn cluster_stream_timeout(&self, key: PendingKey, pending: PendingAck) {
        let Some(stream) = pending.stream.clone() else {
            return;
        };
        let args = vec![
            arg("XRANGE"),
            arg(redis_keys::mailbox_key(&stream.user)),
            arg(stream.entry.clone()),
            arg(stream.entry),
        ];
        self.redis(args, Then::StreamCheck { key, pending });
    }

    /// The origin learned how many parts a request went out in: wait for
    /// other nodes' replies at most `REMOTE_REPLY_TIMEOUT`.
    pub(super) fn cluster_routed(&self, request_id: u64) {
        if let Some(c) = &self.cluster {
            if self.messaging.borrow().pending.contains_key(&request_id) {
                c.deadlines
                    .borrow_mut()
                    .push_back((Instant::now() + REMOTE_REPLY_TIMEOUT, request_id));
            }
        }
    }

    /// An anycast left a member's outbox or was picked: least_connections
    /// groups report their load to Redis at the next tick.
    pub(super) fn note_outstanding(&self, group: &str) {
        if let Some(c) = &self.cluster {
            if self.directory.borrow().strategy(group) == Some(StrategyKind::LeastConnections) {
                c.dirty_outstanding.borrow_mut().insert(group.to_string());
            }
        }
    }

    /// Re-asserts every user and group of this shard in Redis (spread over
    /// maintenance ticks).
    pub(super) fn cluster_resync(&self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let directory = self.directory.borrow();
        let mut backlog = c.refresh_backlog.borrow_mut();
        backlog.clear();
        backlog.extend(directory.users().map(|u| Refresh::User(u.to_string())));
        backlog.extend(
            directory
                .group_summaries()
                .map(|(g, _, _)| Refresh::Group(g.to_string())),
        );
        c.last_refresh.set(Some(Instant::now()));
    }

    fn drain_refresh_backlog(&self) {
        let c = self.cluster_shard();
        for _ in 0..REFRESH_PER_TICK_MAX {
            if c.link.queued() > link::LINK_QUEUE_MAX_OPS / 2 {
                return;
            }
            let Some(item) = c.refresh_backlog.borrow_mut().pop_front() else {
                return;
            };
            match item {
                Refresh::User(user) => {
                    if self.directory.borrow().user_connection_count(&user) == 0 {
                        continue;
                    }
                    let key = redis_keys::presence_key(&user);
                    self.redis(
                        vec![arg("SADD"), arg(key.clone()), self.node_arg()],
                        Then::Ignore,
                    );
                    self.redis(
                        vec![arg("PEXPIRE"), arg(key), self.presence_ttl_arg()],
                        Then::Ignore,
                    );
                }
                Refresh::Group(group) => self.sync_group(&group, Then::Ignore),
            }
        }
    }

    fn heartbeat(&self) {
        let c = self.cluster_shard();
        let ttl_ms = 3 * self.config.cluster_heartbeat_ms;
        let info = serde_json::json!({
            "node": &*c.node,
            "shards": self.shard_count,
            "port": self.config.port,
            "heartbeat_unix_ms": unix_ms(),
        });
        self.redis(
            vec![
                arg("SET"),
                arg(redis_keys::node_key(&c.node)),
                arg(info.to_string()),
                arg("PX"),
                arg(ttl_ms.to_string()),
            ],
            Then::Ignore,
        );
        self.redis(
            vec![arg("SADD"), arg(redis_keys::NODES_KEY), self.node_arg()],
            Then::Ignore,
        );
    }

    fn flush_outstanding(&self) {
        let c = self.cluster_shard();
        let groups: Vec<String> = c.dirty_outstanding.borrow_mut().drain().collect();
        for group in groups {
            let outstanding = self.directory.borrow().outstanding_sum(&group);
            self.redis(
                vec![
                    arg("HSET"),
                    arg(redis_keys::schedule_key(&group)),
                    arg(format!("o:{}", c.node)),
                    arg(outstanding.to_string()),
                ],
                Then::Ignore,
            );
        }
    }

    /// Messages in this shard's own mailboxes (from the log, or stored
    /// while Redis was down) move to the users' Redis mailboxes.
    fn migrate_mailboxes(&self) {
        let now = unix_ms();
        let mut moved = 0;
        // (Collected first: the loop body borrows `reliable` mutably.)
        let users = self.reliable.borrow().mailbox_users();
        for user in users {
            if moved >= MIGRATE_PER_TICK_MAX_MSGS {
                break;
            }
            let msgs = self.reliable.borrow_mut().take_mailbox(&user, now);
            moved += msgs.len();
            // (A Redis mailbox entry keeps no attempt count: see
            // docs/CLUSTER.md.)
            for waiting in msgs {
                self.store_in_redis(&user, waiting.msg);
            }
        }
        if moved > 0 {
            log::info!("shard {}: moved {moved} mailbox messages to Redis", self.id);
            self.kick_wal();
        }
    }

    fn expire_remote_deadlines(&self, now: Instant) {
        let c = self.cluster_shard();
        loop {
            let due = {
                let mut deadlines = c.deadlines.borrow_mut();
                match deadlines.front() {
                    Some((at, _)) if *at <= now => deadlines.pop_front().map(|(_, id)| id),
                    _ => None,
                }
            };
            match due {
                Some(request_id) => self.finish(request_id, Ok(())),
                None => return,
            }
        }
    }

    fn dead_letter_stored(&self, user: &str, bytes: &[u8], reason: DeadReason) {
        match wire::decode_stored(bytes).map(|s| s.to_parts()) {
            Ok(Ok(parts)) => {
                self.reliable.borrow_mut().dead_letter(
                    Arc::new(parts),
                    Target::User(user.to_string()),
                    reason,
                    0,
                    unix_ms(),
                );
                self.kick_wal();
            }
            Ok(Err(e)) => log::error!("cluster: a mailbox entry of {user} is damaged: {e}"),
            Err(e) => log::error!("cluster: a mailbox entry of {user} is damaged: {e}"),
        }
    }

    /// A command that needed Redis failed: tell the sender.
    fn cluster_failed(
        &self,
        reply: Option<ReplyTo>,
        origin: ConnRef,
        e: LinkError,
        local_parts: u32,
    ) {
        let code = match e {
            LinkError::Full => ErrorCode::Overloaded,
            LinkError::Down | LinkError::Redis(_) => ErrorCode::ClusterUnavailable,
        };
        let reason = if local_parts > 0 {
            format!("delivered on this node only; other nodes could not be reached: {e}")
        } else {
            format!("other nodes could not be reached: {e}")
        };
        self.answer(reply, origin, Err(failure(code, reason)));
    }

    /// Runs a command's continuation with its reply.
    fn on_cluster_reply(&self, then: Then, result: Result<BytesFrame, LinkError>) {
        match then {
            Then::Ignore => {
                if let Err(LinkError::Redis(e)) = result {
                    log::warn!("shard {}: Redis refused a command: {e}", self.id);
                }
            }
            Then::Answer { origin, reply } => self.answer(reply, origin, Ok(())),
            Then::Attach { user, at, reply } => {
                if let Some(r) = reply {
                    self.to_shard(
                        r.shard,
                        MeshMsg::Done {
                            request_id: r.request_id,
                            result: Ok(()),
                        },
                    );
                }
                self.deliver_mailbox(&user, at);
                match result {
                    Ok(frame) => self.deliver_stream(&user, at, reply::stream_entries(frame)),
                    Err(e) => log::debug!("shard {}: no Redis mailbox for {user}: {e}", self.id),
                }
            }
            Then::SendUser {
                user,
                envelope,
                origin,
                reply,
                lsn_before,
                local_parts,
                local_done,
            } => {
                let items = match result.map(reply::array) {
                    Ok(Some(items)) if items.len() == 3 => items,
                    Ok(_) => {
                        let e = LinkError::Redis("unexpected reply to the send script".into());
                        return self.cluster_failed(reply, origin, e, local_parts);
                    }
                    Err(e) => {
                        let parts = if local_done {
                            local_parts
                        } else {
                            // The log keeps the ack instead of Redis.
                            self.deliver_user_here(&user, &envelope, origin, reply, None)
                        };
                        return self.cluster_failed(reply, origin, e, parts);
                    }
                };
                let reached = reply::int(&items[0]).unwrap_or(0).max(0) as u32;
                let entry = reply::bytes(&items[1]).unwrap_or_default();
                let evicted = reply::bytes(&items[2]).unwrap_or_default();
                if !evicted.is_empty() {
                    self.dead_letter_stored(&user, &evicted, DeadReason::MailboxFull);
                }
                let stream = (!entry.is_empty()).then(|| StreamRef {
                    user: user.clone(),
                    entry: String::from_utf8_lossy(&entry).into_owned(),
                });
                let kept = stream.is_some();
                let parts = if local_done {
                    local_parts
                } else {
                    self.deliver_user_here(&user, &envelope, origin, reply, stream)
                };
                let held = if parts == 0 && reached == 0 && kept {
                    Held::Mailbox
                } else {
                    Held::No
                };
                self.routed(lsn_before, reply, parts + reached, held);
            }
            Then::Publish {
                origin,
                reply,
                lsn_before,
                local_parts,
            } => match result {
                Ok(frame) => {
                    let reached = reply::int(&frame).unwrap_or(0).max(0) as u32;
                    self.routed(lsn_before, reply, local_parts + reached, Held::No);
                }
                Err(e) => self.cluster_failed(reply, origin, e, local_parts),
            },
            Then::Anycast {
                group,
                envelope,
                origin,
                reply,
                lsn_before,
            } => {
                let items = match result.map(reply::array) {
                    Ok(Some(items)) if items.len() == 2 => items,
                    Ok(_) => {
                        let e = LinkError::Redis("unexpected reply to the anycast script".into());
                        return self.cluster_failed(reply, origin, e, 0);
                    }
                    Err(e) => {
                        // Redis is gone: this node's own members still serve.
                        if self.directory.borrow().member_count(&group) > 0 {
                            return self
                                .anycast_here(&group, envelope, origin, reply, lsn_before, None);
                        }
                        return self.cluster_failed(reply, origin, e, 0);
                    }
                };
                let kind = reply::bytes(&items[0]).unwrap_or_default();
                let strategy = reply::bytes(&items[1]).and_then(|s| wire::strategy_named(&s));
                match &kind[..] {
                    b"self" => {
                        self.anycast_here(&group, envelope, origin, reply, lsn_before, strategy)
                    }
                    b"remote" => self.routed(lsn_before, reply, 1, Held::No),
                    _ => self.anycast_without_members(&group, &envelope, origin, reply, lsn_before),
                }
            }
            Then::StreamCheck { key, pending } => {
                let gone = matches!(&result, Ok(BytesFrame::Array(entries)) if entries.is_empty());
                if gone {
                    log::debug!(
                        "shard {}: message {} was acked on another node",
                        self.id,
                        key.id
                    );
                    return;
                }
                let now = unix_ms();
                let next = self.reliable.borrow_mut().decide_timeout(&pending, now);
                match next {
                    AfterTimeout::Redeliver { attempt } => {
                        self.redeliver(key, pending, attempt, now)
                    }
                    AfterTimeout::DeadLettered(_) => {
                        self.kick_wal();
                        if let Some(stream) = &pending.stream {
                            self.cluster_settled(stream);
                        }
                    }
                }
            }
            Then::Store { user, msg } => match result.map(reply::array) {
                Ok(Some(items)) if items.len() == 2 => {
                    let evicted = reply::bytes(&items[1]).unwrap_or_default();
                    if !evicted.is_empty() {
                        self.dead_letter_stored(&user, &evicted, DeadReason::MailboxFull);
                    }
                }
                _ => {
                    // Kept here until Redis takes it (`migrate_mailboxes`).
                    self.reliable
                        .borrow_mut()
                        .store_offline(&user, Waiting::new(msg), unix_ms());
                    self.wake_timers();
                }
            },
        }
    }

    /// Delivers a user's Redis mailbox to its new connection `at`: by
    /// priority, then oldest first. Entries without `ack` leave the Stream
    /// now; the others when acked.
    fn deliver_stream(&self, user: &str, at: ConnRef, entries: Vec<(Bytes, Bytes)>) {
        if entries.is_empty() {
            return;
        }
        let now = unix_ms();
        let mut delete = Vec::new();
        let mut msgs = Vec::with_capacity(entries.len());
        for (entry, bytes) in entries {
            match wire::decode_stored(&bytes).map(|s| s.to_parts()) {
                Ok(Ok(parts)) => msgs.push((entry, parts)),
                Ok(Err(e)) => {
                    log::error!("cluster: dropped a damaged mailbox entry of {user}: {e}");
                    delete.push(entry);
                }
                Err(e) => {
                    log::error!("cluster: dropped a damaged mailbox entry of {user}: {e}");
                    delete.push(entry);
                }
            }
        }
        // Stable: oldest first within a priority.
        msgs.sort_by_key(|(_, m)| std::cmp::Reverse(m.priority));
        let origin = ConnRef {
            shard: self.id,
            conn: API_CONN,
        };
        for (entry, parts) in msgs {
            let msg = Arc::new(parts);
            if msg.expires_unix_ms.is_some_and(|t| t <= now) {
                self.reliable.borrow_mut().dead_letter(
                    msg,
                    Target::User(user.to_string()),
                    DeadReason::Expired,
                    0,
                    now,
                );
                delete.push(entry);
                continue;
            }
            let envelope = Arc::new(Envelope::new(
                (*msg).clone(),
                1,
                self.config.compress_min_bytes,
            ));
            if msg.ack {
                let key = PendingKey {
                    id: msg.id.clone(),
                    conn: None,
                };
                let stream = StreamRef {
                    user: user.to_string(),
                    entry: String::from_utf8_lossy(&entry).into_owned(),
                };
                self.reliable.borrow_mut().track_with(
                    key,
                    msg,
                    AckTarget::User(user.to_string()),
                    1,
                    now,
                    Some(stream),
                );
            } else {
                delete.push(entry);
            }
            self.fan_out_to_one(&envelope, at, None, origin, None);
        }
        if !delete.is_empty() {
            self.xdel(user, delete);
        }
        self.wake_timers();
    }

    /// Shard 0: an envelope another node published to this one.
    fn on_cluster_payload(&self, payload: Bytes) {
        let (stream_entry, msg) = match wire::decode(&payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                log::warn!("cluster: dropped an envelope: {e}");
                return;
            }
        };
        match msg {
            ClusterMsg::Route {
                target,
                msg,
                attempt,
                strategy,
                reply,
            } => {
                let parts = match msg.to_parts() {
                    Ok(parts) => parts,
                    Err(e) => {
                        log::warn!("cluster: dropped an envelope: {e}");
                        return;
                    }
                };
                let target = Target::from(&target);
                let envelope = Arc::new(Envelope::new(
                    parts,
                    attempt.max(1),
                    self.config.compress_min_bytes,
                ));
                let local_reply =
                    reply.and_then(|r| self.wait_for_remote(r, envelope.id().to_string()));
                let home = home_shard(target.name(), self.shard_count);
                self.to_shard(
                    home,
                    MeshMsg::Route {
                        target,
                        envelope,
                        origin: ConnRef {
                            shard: self.id,
                            conn: API_CONN,
                        },
                        reply: local_reply,
                        deliver_at_unix_ms: None,
                        source: RouteSource::Node(Arrived {
                            stream_entry,
                            strategy: wire::strategy_of(strategy),
                        }),
                    },
                );
            }
            ClusterMsg::Delivered {
                shard,
                request_id,
                delivered,
            } => {
                let shard = shard as usize;
                if shard < self.shard_count {
                    self.to_shard(
                        shard,
                        MeshMsg::Delivered {
                            request_id,
                            delivered,
                            refused: 0,
                        },
                    );
                }
            }
        }
    }

    /// Tells another node how many connections here took its message.
    pub(super) fn publish_remote_delivered(&self, to: RemoteReply, delivered: u64) {
        if self.cluster.is_none() {
            return;
        }
        let msg = ClusterMsg::Delivered {
            shard: to.shard,
            request_id: to.request_id,
            delivered,
        };
        let args = vec![
            arg("PUBLISH"),
            arg(redis_keys::node_channel(&to.node)),
            arg(wire::encode(&msg)),
        ];
        self.redis(args, Then::Ignore);
    }

    /// Starts the shard's cluster tasks: its Redis link, its chores, and on
    /// shard 0 the node's subscription.
    pub(super) fn start_cluster_tasks(self: &Rc<Self>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let label = format!("shard {}: Redis link", self.id);
        crate::spawn_local(link::run_link(
            c.link.clone(),
            self.clone(),
            c.start.addr.clone(),
            c.start.sock,
            label,
        ))
        .detach();
        crate::spawn_local(self.clone().run_cluster_maintenance()).detach();
        if self.id == 0 {
            let ping_every = Duration::from_millis(self.config.cluster_heartbeat_ms.max(500));
            crate::spawn_local(link::run_subscriber(
                self.clone(),
                c.start.addr.clone(),
                c.start.sock,
                redis_keys::node_channel(&c.node),
                ping_every,
            ))
            .detach();
        }
    }

    async fn run_cluster_maintenance(self: Rc<Self>) {
        let heartbeat = Duration::from_millis(self.config.cluster_heartbeat_ms);
        let refresh = Duration::from_millis(self.config.cluster_presence_ttl_ms / 3);
        loop {
            Timer::new(MAINTENANCE_PERIOD).await;
            let c = self.cluster_shard();
            if c.stopped.get() {
                return;
            }
            let now = Instant::now();
            self.expire_remote_deadlines(now);
            if !c.link.is_up() || self.is_shutting_down() {
                continue;
            }
            self.flush_outstanding();
            if self.id == 0 && c.last_heartbeat.get().is_none_or(|t| now - t >= heartbeat) {
                c.last_heartbeat.set(Some(now));
                self.heartbeat();
            }
            if c.last_refresh.get().is_none_or(|t| now - t >= refresh) {
                self.cluster_resync();
            }
            self.drain_refresh_backlog();
            if self.reliable.borrow().mailbox_total() > 0 {
                self.migrate_mailboxes();
            }
        }
    }

    /// At shutdown, after the connections closed: leave the registry, let
    /// the last commands (presence removals) reach Redis, stop the tasks.
    pub(super) async fn finish_cluster(&self) {
        let Some(c) = &self.cluster else {
            return;
        };
        if self.id == 0 && c.link.is_up() {
            self.redis(
                vec![arg("DEL"), arg(redis_keys::node_key(&c.node))],
                Then::Ignore,
            );
            self.redis(
                vec![arg("SREM"), arg(redis_keys::NODES_KEY), self.node_arg()],
                Then::Ignore,
            );
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while c.link.is_up() && c.link.queued() > 0 && Instant::now() < deadline {
            Timer::new(Duration::from_millis(10)).await;
        }
        // The batch just written gets a moment for its replies.
        Timer::new(Duration::from_millis(20)).await;
        c.stopped.set(true);
    }
}

impl LinkEvents<Then> for ShardState {
    fn on_reply(&self, then: Then, reply: Result<BytesFrame, LinkError>) {
        self.on_cluster_reply(then, reply);
    }

    fn on_link_up(&self) {
        if self.id == 0 {
            self.heartbeat();
        }
        self.cluster_resync();
    }

    fn on_link_down(&self) {
        if let Some(c) = &self.cluster {
            c.refresh_backlog.borrow_mut().clear();
        }
    }

    fn stopping(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.stopped.get())
    }
}

impl SubscriberEvents for ShardState {
    fn on_published(&self, payload: Bytes) {
        self.on_cluster_payload(payload);
    }

    fn on_subscribed(&self) {
        if let Some(c) = &self.cluster {
            c.start.subscribed.store(true, Ordering::Release);
        }
        // Nodes that published to us while we were away dropped us from
        // presence sets and summaries: every shard re-asserts its names.
        for shard in 0..self.shard_count {
            self.to_shard(shard, MeshMsg::ClusterResync);
        }
    }

    fn on_unsubscribed(&self) {
        if let Some(c) = &self.cluster {
            c.start.subscribed.store(false, Ordering::Release);
        }
    }

    fn stopping(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.stopped.get())
    }
}
