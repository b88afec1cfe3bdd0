//! Reliable delivery on a home shard, sans-IO: deliveries waiting for an
//! ack (with exponential backoff), offline mailboxes, scheduled messages,
//! TTLs and the dead-letter queue, all driven by one timer structure and a
//! clock passed in. The shard's messaging glue asks it what to do and does
//! the I/O.

pub mod dlq;
pub mod mailbox;
pub mod timers;

use std::collections::HashMap;
use std::sync::Arc;

use crate::routing::envelope::MessageParts;
use crate::routing::{ConnRef, Target};
use crate::store::record::{DurableEntry, StoredAckTarget, StoredMsg, StoredTarget, WalRecord};
use dlq::{DeadLetter, DeadLetterQueue, DeadReason};
use mailbox::{Mailbox, Waiting};
use timers::{TimerKind, Timers};

/// The reliable-delivery settings.
#[derive(Debug, Clone, Copy)]
pub struct ReliableConfig {
    pub ack_timeout_ms: u64,
    pub max_retries: u32,
    pub mailbox_max_msgs: usize,
    pub dlq_max_msgs: usize,
}

impl ReliableConfig {
    /// How long attempt `attempt` (1-based) waits for its ack: the timeout,
    /// doubled for every redelivery (capped at 2^10 times).
    pub fn ack_wait_ms(&self, attempt: u32) -> u64 {
        self.ack_timeout_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(10))
    }

    /// Deliveries tried in all: the first plus `max_retries`.
    pub fn max_attempts(&self) -> u32 {
        1 + self.max_retries
    }
}

/// Identifies a delivery waiting for its ack: for `send` any connection of
/// the user settles it (`conn: None`); for `publish` each member connection
/// acks for itself; for `anycast` the message id alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub id: String,
    pub conn: Option<u64>,
}

/// Who a pending delivery is for, to redeliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckTarget {
    /// Every live connection of the user; back to the mailbox if none.
    User(String),
    /// One member connection of a group (`publish`), of `user`.
    Member {
        group: String,
        at: ConnRef,
        user: String,
    },
    /// Whichever member the strategy picks on each attempt (`anycast`).
    Anycast { group: String },
}

/// Cluster mode: where a message is kept in a user's mailbox Stream in
/// Redis until it is acked. Such deliveries are not journaled: Redis
/// keeps them, so any node can deliver them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub user: String,
    pub entry: String,
}

/// A delivery waiting for its ack.
#[derive(Debug, Clone)]
pub struct PendingAck {
    pub msg: Arc<MessageParts>,
    pub target: AckTarget,
    pub attempt: u32,
    /// Kept in Redis (cluster mode) rather than in this shard's log.
    pub stream: Option<StreamRef>,
    timer: (u64, u64),
}

/// A message held until it is due.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub target: Target,
    pub msg: Arc<MessageParts>,
    pub origin: ConnRef,
    pub due_unix_ms: u64,
}

/// What a timer tick asks the glue to do.
#[derive(Debug)]
pub enum Fired {
    /// A scheduled message is due: handle it as if just sent.
    Due(Scheduled),
    /// No ack in time: redeliver (attempt + 1) or dead-letter, per `next`.
    AckTimeout {
        key: PendingKey,
        pending: PendingAck,
        next: AfterTimeout,
    },
    /// A mailbox or scheduled message's TTL ran out; it is in the DLQ now.
    Expired(String),
    /// No ack in time for a delivery kept in a Redis Stream: the glue
    /// checks it was not acked on another node, then asks
    /// [`ReliableState::decide_timeout`].
    StreamAckTimeout {
        key: PendingKey,
        pending: PendingAck,
    },
}

/// What happens after an ack timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTimeout {
    Redeliver {
        attempt: u32,
    },
    /// Gone to the DLQ with this reason.
    DeadLettered(DeadReason),
}

/// Most timers handled per tick; the rest wait for the next tick.
pub const TIMERS_PER_TICK_MAX: usize = 10_000;

/// A home shard's reliable-delivery state.
#[derive(Debug)]
pub struct ReliableState {
    pub config: ReliableConfig,
    mailboxes: HashMap<String, Mailbox>,
    pending: HashMap<PendingKey, PendingAck>,
    scheduled: HashMap<u64, Scheduled>,
    next_scheduled: u64,
    timers: Timers,
    dlq: DeadLetterQueue,
    next_dead_seq: u64,
    journal: Option<Journal>,
}

/// Log records not yet written, when persistence is on.
#[derive(Debug)]
struct Journal {
    records: Vec<WalRecord>,
    /// Records journaled since start (the log sequence number).
    lsn: u64,
    compress_min_bytes: usize,
}

fn mailbox_key(user: &str, id: &str) -> String {
    format!("m/{user}/{id}")
}

fn pending_key(key: &PendingKey) -> String {
    match key.conn {
        Some(conn) => format!("p/{}/{conn}", key.id),
        None => format!("p/{}/*", key.id),
    }
}

fn scheduled_key(id: &str) -> String {
    format!("s/{id}")
}

fn dead_key(seq: u64) -> String {
    format!("d/{seq}")
}

impl From<&AckTarget> for StoredAckTarget {
    /// The log keeps who waits, not where: connections do not survive a
    /// restart.
    fn from(target: &AckTarget) -> Self {
        match target {
            AckTarget::User(u) => StoredAckTarget::User(u.clone()),
            AckTarget::Member { group, user, .. } => StoredAckTarget::Member {
                group: group.clone(),
                user: user.clone(),
            },
            AckTarget::Anycast { group } => StoredAckTarget::Anycast(group.clone()),
        }
    }
}

impl AckTarget {
    /// Where a replay of a dead-lettered delivery goes: a member's lost
    /// delivery is replayed to its user, not to the whole group again.
    pub fn replay_target(&self) -> Target {
        match self {
            AckTarget::User(user) | AckTarget::Member { user, .. } => Target::User(user.clone()),
            AckTarget::Anycast { group } => Target::Anycast(group.clone()),
        }
    }
}

impl ReliableState {
    pub fn new(config: ReliableConfig) -> Self {
        ReliableState {
            config,
            mailboxes: HashMap::new(),
            pending: HashMap::new(),
            scheduled: HashMap::new(),
            next_scheduled: 0,
            timers: Timers::default(),
            dlq: DeadLetterQueue::default(),
            next_dead_seq: 0,
            journal: None,
        }
    }

    /// Starts journaling every change of durable state as log records.
    pub fn enable_journal(&mut self, compress_min_bytes: usize) {
        self.journal = Some(Journal {
            records: Vec::new(),
            lsn: 0,
            compress_min_bytes,
        });
    }

    /// The sequence number of the last journaled record (0 without a
    /// journal): a change is durable once the log has written this far.
    pub fn journal_lsn(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.lsn)
    }

    /// Takes the records to write, and the lsn of the last one.
    pub fn take_journal(&mut self) -> (Vec<WalRecord>, u64) {
        match &mut self.journal {
            Some(j) => (std::mem::take(&mut j.records), j.lsn),
            None => (Vec::new(), 0),
        }
    }

    /// Whether journaled records wait to be written.
    pub fn has_journal_records(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.records.is_empty())
    }

    fn stored(&self, msg: &MessageParts) -> StoredMsg {
        let min = self
            .journal
            .as_ref()
            .map_or(usize::MAX, |j| j.compress_min_bytes);
        StoredMsg::from_parts(msg, min)
    }

    fn log(&mut self, record: impl FnOnce(&Self) -> WalRecord) {
        if self.journal.is_none() {
            return;
        }
        let record = record(self);
        if let Some(j) = &mut self.journal {
            j.records.push(record);
            j.lsn += 1;
        }
    }

    fn log_remove(&mut self, key: String) {
        self.log(|_| WalRecord::Remove { key });
    }

    /// Stores a message for an offline user (`waiting.attempts_made`: how
    /// many deliveries of it went unacked before). A message evicted from a
    /// full mailbox goes to the DLQ (`mailbox_full`) and is returned.
    pub fn store_offline(&mut self, user: &str, waiting: Waiting, now: u64) -> Option<DeadLetter> {
        self.log(|s| s.mailbox_record(user, &waiting));
        let msg = &waiting.msg;
        if let Some(expires) = msg.expires_unix_ms {
            self.timers.insert(
                expires,
                TimerKind::MailboxExpiry {
                    user: user.to_string(),
                    id: msg.id.clone(),
                },
            );
        }
        let evicted = self
            .mailboxes
            .entry(user.to_string())
            .or_default()
            .push(waiting, self.config.mailbox_max_msgs)?;
        self.log_remove(mailbox_key(user, &evicted.msg.id));
        let target = Target::User(user.to_string());
        Some(self.dead_letter(
            evicted.msg,
            target,
            DeadReason::MailboxFull,
            evicted.attempts_made,
            now,
        ))
    }

    /// Takes a user's mailbox for delivery (priority, then oldest first);
    /// messages whose TTL ran out go to the DLQ instead.
    pub fn take_mailbox(&mut self, user: &str, now: u64) -> Vec<Waiting> {
        let Some(mut mailbox) = self.mailboxes.remove(user) else {
            return Vec::new();
        };
        let taken = mailbox.drain();
        self.unless_expired(user, taken, now)
    }

    /// `taken` (just removed from `user`'s mailbox) with their removal
    /// logged, less those whose TTL ran out: those go to the DLQ.
    fn unless_expired(&mut self, user: &str, taken: Vec<Waiting>, now: u64) -> Vec<Waiting> {
        let mut deliverable = Vec::with_capacity(taken.len());
        for waiting in taken {
            self.log_remove(mailbox_key(user, &waiting.msg.id));
            if waiting.msg.expires_unix_ms.is_some_and(|t| t <= now) {
                self.dead_letter(
                    waiting.msg,
                    Target::User(user.to_string()),
                    DeadReason::Expired,
                    waiting.attempts_made,
                    now,
                );
            } else {
                deliverable.push(waiting);
            }
        }
        deliverable
    }

    /// Takes the first messages of `user`'s mailbox, up to `max_bytes` of
    /// them (at least one), logging their removal like `take_mailbox`.
    /// Also says whether more are left.
    pub fn take_mailbox_batch(
        &mut self,
        user: &str,
        now: u64,
        max_bytes: usize,
    ) -> (Vec<Waiting>, bool) {
        let Some(mailbox) = self.mailboxes.get_mut(user) else {
            return (Vec::new(), false);
        };
        let batch = mailbox.take_batch(max_bytes, MessageParts::size_bytes);
        let more = !mailbox.is_empty();
        if !more {
            self.mailboxes.remove(user);
        }
        (self.unless_expired(user, batch, now), more)
    }

    /// Every mailbox message of the users `foreign` picks (those homed on
    /// another shard: restored from deliveries this shard tracked).
    pub fn foreign_mailbox_messages(
        &self,
        foreign: impl Fn(&str) -> bool,
    ) -> Vec<(String, Waiting)> {
        self.mailboxes
            .iter()
            .filter(|(user, _)| foreign(user))
            .flat_map(|(user, mailbox)| mailbox.iter().map(move |w| (user.clone(), w.clone())))
            .collect()
    }

    /// Removes one message from `user`'s mailbox (logged); whether it was there.
    pub fn remove_mailbox_message(&mut self, user: &str, id: &str) -> bool {
        let Some(mailbox) = self.mailboxes.get_mut(user) else {
            return false;
        };
        let removed = mailbox.remove(id).is_some();
        if mailbox.is_empty() {
            self.mailboxes.remove(user);
        }
        if removed {
            self.log_remove(mailbox_key(user, id));
        }
        removed
    }

    /// Messages waiting in `user`'s mailbox.
    pub fn mailbox_len(&self, user: &str) -> usize {
        self.mailboxes.get(user).map_or(0, Mailbox::len)
    }

    /// Messages waiting in all mailboxes of this shard.
    pub fn mailbox_total(&self) -> usize {
        self.mailboxes.values().map(Mailbox::len).sum()
    }

    /// Tracks a delivery (attempt `attempt`) until it is acked or times out.
    pub fn track(
        &mut self,
        key: PendingKey,
        msg: Arc<MessageParts>,
        target: AckTarget,
        attempt: u32,
        now: u64,
    ) {
        self.track_with(key, msg, target, attempt, now, None);
    }

    /// Tracks a delivery; one kept in a Redis Stream (`stream`) is not
    /// journaled.
    pub fn track_with(
        &mut self,
        key: PendingKey,
        msg: Arc<MessageParts>,
        target: AckTarget,
        attempt: u32,
        now: u64,
        stream: Option<StreamRef>,
    ) {
        let due = now.saturating_add(self.config.ack_wait_ms(attempt));
        if stream.is_none() {
            self.log(|s| s.pending_record(&key, &target, &msg, attempt));
        }
        let timer = self.timers.insert(due, TimerKind::AckTimeout(key.clone()));
        if let Some(old) = self.pending.insert(
            key,
            PendingAck {
                msg,
                target,
                attempt,
                stream,
                timer,
            },
        ) {
            self.timers.cancel(old.timer);
        }
    }

    /// An ack for message `id` from connection `conn`: settles the member's
    /// own delivery, the user's, or the anycast's. Returns whether one was
    /// waiting.
    pub fn settle(&mut self, id: &str, conn: u64) -> bool {
        self.settle_with_stream(id, conn).is_some()
    }

    /// Like [`settle`](Self::settle); `Some(stream)` tells where a settled
    /// delivery was kept in Redis (to delete it there).
    pub fn settle_with_stream(&mut self, id: &str, conn: u64) -> Option<Option<StreamRef>> {
        for key in [
            PendingKey {
                id: id.to_string(),
                conn: Some(conn),
            },
            PendingKey {
                id: id.to_string(),
                conn: None,
            },
        ] {
            if let Some(p) = self.pending.remove(&key) {
                self.timers.cancel(p.timer);
                if p.stream.is_none() {
                    self.log_remove(pending_key(&key));
                }
                return Some(p.stream);
            }
        }
        None
    }

    /// Deliveries waiting for an ack.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Holds a message until `due_unix_ms`, or until its TTL ends if that
    /// comes first (it then goes to the DLQ as `expired`, on time).
    pub fn schedule(&mut self, scheduled: Scheduled) {
        self.log(|s| s.scheduled_record(&scheduled));
        self.next_scheduled += 1;
        let seq = self.next_scheduled;
        let due = scheduled.due_unix_ms;
        let fires_at = scheduled.msg.expires_unix_ms.map_or(due, |e| e.min(due));
        self.timers.insert(fires_at, TimerKind::Scheduled(seq));
        self.scheduled.insert(seq, scheduled);
    }

    /// Messages waiting for their time.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// The earliest time a timer is due.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.next_due()
    }

    /// Everything due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Vec<Fired> {
        let mut fired = Vec::new();
        for timer in self.timers.pop_due(now, TIMERS_PER_TICK_MAX) {
            match timer {
                TimerKind::Scheduled(seq) => {
                    if let Some(s) = self.scheduled.remove(&seq) {
                        self.log_remove(scheduled_key(&s.msg.id));
                        if s.msg.expires_unix_ms.is_some_and(|t| t <= now) {
                            let id = s.msg.id.clone();
                            self.dead_letter(s.msg, s.target, DeadReason::Expired, 0, now);
                            fired.push(Fired::Expired(id));
                        } else {
                            fired.push(Fired::Due(s));
                        }
                    }
                }
                TimerKind::AckTimeout(key) => {
                    let Some(pending) = self.pending.remove(&key) else {
                        continue;
                    };
                    if pending.stream.is_some() {
                        fired.push(Fired::StreamAckTimeout { key, pending });
                        continue;
                    }
                    self.log_remove(pending_key(&key));
                    let next = self.decide_timeout(&pending, now);
                    fired.push(Fired::AckTimeout { key, pending, next });
                }
                TimerKind::MailboxExpiry { user, id } => {
                    let removed = self.mailboxes.get_mut(&user).and_then(|m| m.remove(&id));
                    if let Some(waiting) = removed {
                        self.log_remove(mailbox_key(&user, &id));
                        if self.mailboxes.get(&user).is_some_and(Mailbox::is_empty) {
                            self.mailboxes.remove(&user);
                        }
                        self.dead_letter(
                            waiting.msg,
                            Target::User(user),
                            DeadReason::Expired,
                            waiting.attempts_made,
                            now,
                        );
                        fired.push(Fired::Expired(id));
                    }
                }
            }
        }
        fired
    }

    /// What follows an ack timeout: a redelivery, or the DLQ (`expired`
    /// past its TTL, `ack_timeout` after the last attempt), done here.
    pub fn decide_timeout(&mut self, pending: &PendingAck, now: u64) -> AfterTimeout {
        let target = pending.target.replay_target();
        if pending.msg.expires_unix_ms.is_some_and(|t| t <= now) {
            self.dead_letter(
                pending.msg.clone(),
                target,
                DeadReason::Expired,
                pending.attempt,
                now,
            );
            AfterTimeout::DeadLettered(DeadReason::Expired)
        } else if pending.attempt >= self.config.max_attempts() {
            self.dead_letter(
                pending.msg.clone(),
                target,
                DeadReason::AckTimeout,
                pending.attempt,
                now,
            );
            AfterTimeout::DeadLettered(DeadReason::AckTimeout)
        } else {
            AfterTimeout::Redeliver {
                attempt: pending.attempt + 1,
            }
        }
    }

    /// Users with messages in this shard's own mailboxes.
    pub fn mailbox_users(&self) -> Vec<String> {
        self.mailboxes.keys().cloned().collect()
    }

    /// Puts a message in the DLQ (evicting the oldest when full).
    pub fn dead_letter(
        &mut self,
        msg: Arc<MessageParts>,
        target: Target,
        reason: DeadReason,
        attempts: u32,
        now: u64,
    ) -> DeadLetter {
        self.next_dead_seq += 1;
        let letter = DeadLetter {
            msg,
            target,
            reason,
            at_unix_ms: now,
            attempts,
            seq: self.next_dead_seq,
        };
        self.log_dead(&letter);
        if let Some(evicted) = self.dlq.push(letter.clone(), self.config.dlq_max_msgs) {
            self.log_remove(dead_key(evicted.seq));
        }
        letter
    }

    fn log_dead(&mut self, letter: &DeadLetter) {
        self.log(|s| s.dead_record(letter));
    }

    fn mailbox_record(&self, user: &str, waiting: &Waiting) -> WalRecord {
        let (user, msg) = (user.to_string(), self.stored(&waiting.msg));
        WalRecord::Upsert {
            key: mailbox_key(&user, &waiting.msg.id),
            // Never delivered: the record format 1 knows too.
            entry: match waiting.attempts_made {
                0 => DurableEntry::Mailbox { user, msg },
                attempts_made => DurableEntry::MailboxRedelivery {
                    user,
                    msg,
                    attempts_made,
                },
            },
        }
    }

    fn scheduled_record(&self, s: &Scheduled) -> WalRecord {
        WalRecord::Upsert {
            key: scheduled_key(&s.msg.id),
            entry: DurableEntry::Scheduled {
                target: StoredTarget::from(&s.target),
                msg: self.stored(&s.msg),
                due_unix_ms: s.due_unix_ms,
            },
        }
    }

    fn pending_record(
        &self,
        key: &PendingKey,
        target: &AckTarget,
        msg: &MessageParts,
        attempt: u32,
    ) -> WalRecord {
        WalRecord::Upsert {
            key: pending_key(key),
            entry: DurableEntry::Pending {
                target: StoredAckTarget::from(target),
                msg: self.stored(msg),
                attempt,
            },
        }
    }

    fn dead_record(&self, letter: &DeadLetter) -> WalRecord {
        WalRecord::Upsert {
            key: dead_key(letter.seq),
            entry: DurableEntry::Dead {
                target: StoredTarget::from(&letter.target),
                msg: self.stored(&letter.msg),
                reason: letter.reason.as_str().to_string(),
                at_unix_ms: letter.at_unix_ms,
                attempts: letter.attempts,
                seq: letter.seq,
            },
        }
    }

    pub fn dlq(&self) -> &DeadLetterQueue {
        &self.dlq
    }

    /// Removes dead letters for replay (all, or those with the given ids).
    pub fn take_dead_letters(&mut self, ids: Option<&[String]>) -> Vec<DeadLetter> {
        let taken = self.dlq.take(ids);
        for letter in &taken {
            self.log_remove(dead_key(letter.seq));
        }
        taken
    }

    /// Every durable fact as it stands, for a log snapshot.
    pub fn durable_entries(&self) -> Vec<WalRecord> {
        let mailboxes = self
            .mailboxes
            .iter()
            .flat_map(|(user, mailbox)| mailbox.iter().map(move |w| (user, w)))
            .map(|(user, waiting)| self.mailbox_record(user, waiting));
        let scheduled = self.scheduled.values().map(|s| self.scheduled_record(s));
        let pending = self
            .pending
            .iter()
            .filter(|(_, p)| p.stream.is_none())
            .map(|(key, p)| self.pending_record(key, &p.target, &p.msg, p.attempt));
        let dead = self.dlq.iter().map(|letter| self.dead_record(letter));
        mailboxes
            .chain(scheduled)
            .chain(pending)
            .chain(dead)
            .collect()
    }

    /// Rebuilds the state from a replayed log (the live entries, in log
    /// order). Connections did not survive the restart, so deliveries that
    /// waited for an ack go back to their user's mailbox (anycasts, whose
    /// group is empty now, to the DLQ, from where they can be replayed).
    /// Returns how many entries could not be decoded (each is logged).
    pub fn restore(&mut self, entries: Vec<DurableEntry>, now: u64) -> usize {
        let mut undecodable = 0;
        let mut dead = Vec::new();
        // The dead letters first: those made while restoring the rest (a
        // delivery cut short at its last attempt, an anycast, a full
        // mailbox) are numbered after them. (Numbered from 1 instead, they
        // took the keys of restored ones, and the next restart kept only
        // one of each pair.)
        let (dead_entries, rest): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| matches!(e, DurableEntry::Dead { .. }));
        let mut dead_restored = false;
        for entry in dead_entries.into_iter().chain(rest) {
            if !dead_restored && !matches!(entry, DurableEntry::Dead { .. }) {
                self.restore_dead_letters(std::mem::take(&mut dead));
                dead_restored = true;
            }
            let decoded = match &entry {
                DurableEntry::Mailbox { msg, .. }
                | DurableEntry::MailboxRedelivery { msg, .. }
                | DurableEntry::Scheduled { msg, .. }
                | DurableEntry::Pending { msg, .. }
                | DurableEntry::Dead { msg, .. } => msg.to_parts(),
            };
            let msg = match decoded {
                Ok(parts) => Arc::new(parts),
                Err(e) => {
                    log::error!("log entry not restored: {e}");
                    undecodable += 1;
                    continue;
                }
            };
            match entry {
                DurableEntry::Mailbox { user, .. } => {
                    self.store_offline(&user, Waiting::new(msg), now);
                }
                DurableEntry::MailboxRedelivery {
                    user,
                    attempts_made,
                    ..
                } => {
                    self.store_offline(&user, Waiting::after(msg, attempts_made), now);
                }
                DurableEntry::Scheduled {
                    target,
                    due_unix_ms,
                    ..
                } => self.schedule(Scheduled {
                    target: Target::from(&target),
                    msg,
                    origin: ConnRef {
                        shard: 0,
                        conn: u64::MAX,
                    },
                    due_unix_ms,
                }),
                DurableEntry::Pending {
                    target, attempt, ..
                } => match target {
                    // The delivery cut short by the restart counts: the
                    // next one is attempt `attempt + 1`, unless that was
                    // the last (then the DLQ, as its timeout would have).
                    StoredAckTarget::User(user) | StoredAckTarget::Member { user, .. }
                        if attempt >= self.config.max_attempts() =>
                    {
                        self.dead_letter(
                            msg,
                            Target::User(user),
                            DeadReason::AckTimeout,
                            attempt,
                            now,
                        );
                    }
                    StoredAckTarget::User(user) | StoredAckTarget::Member { user, .. } => {
                        self.store_offline(&user, Waiting::after(msg, attempt), now);
                    }
                    StoredAckTarget::Anycast(group) => {
                        self.dead_letter(
                            msg,
                            Target::Anycast(group),
                            DeadReason::AckTimeout,
                            attempt,
                            now,
                        );
                    }
                },
                DurableEntry::Dead {
                    target,
                    reason,
                    at_unix_ms,
                    attempts,
                    seq,
                    ..
                } => dead.push(DeadLetter {
                    msg,
                    target: Target::from(&target),
                    reason: DeadReason::parse(&reason).unwrap_or(DeadReason::AckTimeout),
                    at_unix_ms,
                    attempts,
                    seq,
                }),
            }
        }
        if !dead_restored {
            self.restore_dead_letters(dead);
        }
        undecodable
    }

    /// Puts restored dead letters back in the DLQ, oldest first; new ones
    /// are numbered after them.
    fn restore_dead_letters(&mut self, mut dead: Vec<DeadLetter>) {
        dead.sort_by_key(|d| d.seq);
        for letter in dead {
            self.next_dead_seq = self.next_dead_seq.max(letter.seq);
            self.log_dead(&letter);
            if let Some(evicted) = self.dlq.push(letter, self.config.dlq_max_msgs) {
                self.log_remove(dead_key(evicted.seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Priority;
    use crate::routing::envelope::MessageBody;

    fn config() -> ReliableConfig {
        ReliableConfig {
            ack_timeout_ms: 100,
            max_retries: 2,
            mailbox_max_msgs: 3,
            dlq_max_msgs: 10,
        }
    }

    fn msg(id: &str, expires: Option<u64>) -> Arc<MessageParts> {
        Arc::new(MessageParts {
            id: id.into(),
            from: "a".into(),
            to: Some("u".into()),
            group: None,
            priority: Priority::Normal,
            ts_unix_ms: 0,
            ack: true,
            expires_unix_ms: expires,
            body: MessageBody::Json("1".into()),
        })
    }

    /// The live entries of a journal, replayed as the log is: the last
    /// write per key wins.
    fn replayed(records: Vec<WalRecord>) -> Vec<DurableEntry> {
        let mut live: Vec<(String, DurableEntry)> = Vec::new();
        for r in records {
            match r {
                WalRecord::Upsert { key, entry } => {
                    live.retain(|(k, _)| *k != key);
                    live.push((key, entry));
                }
                WalRecord::Remove { key } => live.retain(|(k, _)| *k != key),
            }
        }
        live.into_iter().map(|(_, e)| e).collect()
    }

    /// A fresh state restored from `state`'s snapshot (its live facts).
    fn restored_from_snapshot(state: &ReliableState) -> ReliableState {
        let snapshot = state
            .durable_entries()
            .into_iter()
            .map(|r| match r {
                WalRecord::Upsert { entry, .. } => entry,
                WalRecord::Remove { .. } => unreachable!("a snapshot holds live keys"),
            })
            .collect();
        let mut restored = ReliableState::new(config());
        assert_eq!(restored.restore(snapshot, 100), 0);
        restored
    }

    fn key(id: &str) -> PendingKey {
        PendingKey {
            id: id.into(),
            conn: None,
        }
    }

    #[test]
    fn backoff_doubles() {
        let c = config();
        assert_eq!(
            (1..=4).map(|a| c.ack_wait_ms(a)).collect::<Vec<_>>(),
            vec![100, 200, 400, 800]
        );
        assert_eq!(c.max_attempts(), 3);
    }

    #[test]
    fn retries_then_dead_letters_with_exact_attempts() {
        let mut s = ReliableState::new(config());
        s.track(key("m"), msg("m", None), AckTarget::User("u".into()), 1, 0);
        assert!(s.pop_due(99).is_empty());
        let mut now = 100;
        for expected_attempt in [2, 3] {
            let fired = s.pop_due(now);
            let [Fired::AckTimeout { pending, next, .. }] = &fired[..] else {
                panic!("{fired:?}")
            };
            assert_eq!(
                *next,
                AfterTimeout::Redeliver {
                    attempt: expected_attempt
                }
            );
            s.track(
                key("m"),
                pending.msg.clone(),
                pending.target.clone(),
                expected_attempt,
                now,
            );
            now += s.config.ack_wait_ms(expected_attempt);
            assert!(s.pop_due(now - 1).is_empty(), "backoff respected");
        }
        let fired = s.pop_due(now);
        assert!(matches!(
            &fired[..],
            [Fired::AckTimeout {
                next: AfterTimeout::DeadLettered(DeadReason::AckTimeout),
                ..
            }]
        ));
        let dead: Vec<_> = s.dlq().iter().collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn ack_settles_and_cancels() {
        let mut s = ReliableState::new(config());
        s.track(key("m"), msg("m", None), AckTarget::User("u".into()), 1, 0);
        let member = PendingKey {
            id: "p".into(),
            conn: Some(7),
        };
        s.track(
            member,
            msg("p", None),
            AckTarget::Member {
                group: "g".into(),
                at: ConnRef { shard: 0, conn: 7 },
                user: "mem".into(),
            },
            1,
            0,
        );
        assert!(
            s.settle("m", 42),
            "any connection of the user settles a send"
        );
        assert!(!s.settle("p", 8), "a member acks only for itself");
        assert!(s.settle("p", 7));
        assert!(!s.settle("m", 42));
        assert!(s.pop_due(10_000).is_empty());
    }

    #[test]
    fn mailbox_overflow_and_ttl_go_to_the_dlq() {
        let mut s = ReliableState::new(config());
        for i in 0..4 {
            s.store_offline("u", Waiting::new(msg(&format!("m{i}"), None)), i);
        }
        assert_eq!(s.mailbox_len("u"), 3);
        assert_eq!(
            s.dlq().iter().next().unwrap().reason,
            DeadReason::MailboxFull
        );
        s.store_offline("v", Waiting::new(msg("short", Some(50))), 0);
        let fired = s.pop_due(50);
        assert!(matches!(&fired[..], [Fired::Expired(id)] if id == "short"));
        assert_eq!(s.mailbox_len("v"), 0);
        assert_eq!(s.dlq().len(), 2);
        // Taking a mailbox dead-letters what expired meanwhile.
        s.store_offline("w", Waiting::new(msg("late", Some(10))), 0);
        s.store_offline("w", Waiting::new(msg("fine", None)), 0);
        let got = s.take_mailbox("w", 20);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].msg.id, "fine");
    }

    #[test]
    fn journal_replays_to_the_same_state() {
        let mut s = ReliableState::new(config());
        s.enable_journal(16);
        s.store_offline("u", Waiting::new(msg("m1", None)), 0);
        s.store_offline("u", Waiting::new(msg("m2", None)), 0);
        s.track(
            key("p1"),
            msg("p1", None),
            AckTarget::User("v".into()),
            1,
            0,
        );
        s.track(
            key("p2"),
            msg("p2", None),
            AckTarget::Anycast { group: "g".into() },
            1,
            0,
        );
        s.settle("p1", 3);
        s.schedule(Scheduled {
            target: Target::User("w".into()),
            msg: msg("s1", None),
            origin: ConnRef { shard: 0, conn: 1 },
            due_unix_ms: 10_000,
        });
        s.dead_letter(
            msg("d1", None),
            Target::User("x".into()),
            DeadReason::Expired,
            0,
            5,
        );
        let taken = s.take_mailbox("u", 1);
        assert_eq!(taken.len(), 2);
        s.store_offline("u", Waiting::new(msg("m3", None)), 0);
        let (records, lsn) = s.take_journal();
        assert_eq!(lsn as usize, records.len());
        let mut restored = ReliableState::new(config());
        let undecodable = restored.restore(replayed(records), 100);
        assert_eq!(undecodable, 0);
        assert_eq!(restored.mailbox_len("u"), 1, "m3 only");
        assert_eq!(restored.scheduled_len(), 1);
        assert_eq!(
            restored.pending_len(),
            0,
            "no connection survives a restart"
        );
        let reasons: Vec<_> = restored
            .dlq()
            .iter()
            .map(|d| (d.msg.id.clone(), d.reason))
            .collect();
        assert!(reasons.contains(&("d1".into(), DeadReason::Expired)));
        assert!(
            reasons.contains(&("p2".into(), DeadReason::AckTimeout)),
            "{reasons:?}"
        );
        // The snapshot of the restored state holds exactly its live facts.
        assert_eq!(restored.durable_entries().len(), 1 + 1 + 2);
    }

    /// Dead letters made while restoring (here: an anycast that waited for
    /// its ack, logged before the DLQ's letters) are numbered after the
    /// restored ones, so no two share a log key and a second restart keeps
    /// them all.
    #[test]
    fn dead_letters_made_at_restore_are_numbered_after_the_restored_ones() {
        let mut s = ReliableState::new(config());
        s.enable_journal(16);
        s.track(
            key("a1"),
            msg("a1", None),
            AckTarget::Anycast { group: "g".into() },
            1,
            0,
        );
        for id in ["d1", "d2"] {
            s.dead_letter(
                msg(id, None),
                Target::User("x".into()),
                DeadReason::Expired,
                0,
                5,
            );
        }
        let (records, _) = s.take_journal();
        let mut restored = ReliableState::new(config());
        assert_eq!(restored.restore(replayed(records), 100), 0);
        let letters = |s: &ReliableState| -> Vec<(String, u64)> {
            s.dlq().iter().map(|d| (d.msg.id.clone(), d.seq)).collect()
        };
        let expected = [("d1".into(), 1), ("d2".into(), 2), ("a1".into(), 3)];
        assert_eq!(letters(&restored), expected);
        let again = restored_from_snapshot(&restored);
        assert_eq!(letters(&again), expected);
    }

    /// A delivery whose ack never came counts, through the mailbox and a
    /// restart: the next one shows the attempt after it.
    #[test]
    fn unacked_deliveries_keep_counting_through_mailbox_and_restart() {
        let mut s = ReliableState::new(config());
        s.enable_journal(16);
        s.track(
            key("cut"),
            msg("cut", None),
            AckTarget::User("v".into()),
            2,
            0,
        );
        // Its last attempt (max_retries 2: 3 in all) cut short: the DLQ.
        s.track(
            key("last"),
            msg("last", None),
            AckTarget::User("v".into()),
            3,
            0,
        );
        s.store_offline("w", Waiting::after(msg("back", None), 1), 0);
        s.store_offline("w", Waiting::new(msg("new", None)), 0);
        let (records, _) = s.take_journal();
        let live = replayed(records);
        let kinds: Vec<_> = live.iter().map(std::mem::discriminant).collect();
        assert!(
            kinds.contains(&std::mem::discriminant(&DurableEntry::MailboxRedelivery {
                user: String::new(),
                msg: StoredMsg::from_parts(&msg("x", None), 1024),
                attempts_made: 0,
            }))
        );
        let mut restored = ReliableState::new(config());
        assert_eq!(restored.restore(live, 100), 0);
        let next = |s: &mut ReliableState, user: &str| -> Vec<(String, u32)> {
            s.take_mailbox(user, 100)
                .into_iter()
                .map(|w| (w.msg.id.clone(), w.next_attempt()))
                .collect()
        };
        // The snapshot keeps the counts too.
        let mut again = restored_from_snapshot(&restored);
        let dead: Vec<_> = restored
            .dlq()
            .iter()
            .map(|d| (d.msg.id.as_str(), d.reason, d.attempts))
            .collect();
        assert_eq!(dead, [("last", DeadReason::AckTimeout, 3)]);
        for state in [&mut restored, &mut again] {
            assert_eq!(next(state, "v"), [("cut".to_string(), 3)]);
            assert_eq!(
                next(state, "w"),
                [("back".to_string(), 2), ("new".to_string(), 1)]
            );
        }
    }

    #[test]
    fn stream_backed_deliveries_are_not_journaled_and_ask_before_deciding() {
        let mut s = ReliableState::new(config());
        s.enable_journal(16);
        let stream = StreamRef {
            user: "u".into(),
            entry: "1-0".into(),
        };
        s.track_with(
            key("m"),
            msg("m", None),
            AckTarget::User("u".into()),
            1,
            0,
            Some(stream.clone()),
        );
        assert_eq!(s.journal_lsn(), 0, "Redis keeps it, not the log");
        assert!(s.durable_entries().is_empty());
        let fired = s.pop_due(100);
        let [Fired::StreamAckTimeout { pending, .. }] = &fired[..] else {
            panic!("{fired:?}")
        };
        assert_eq!(pending.stream.as_ref(), Some(&stream));
        assert_eq!(
            s.decide_timeout(pending, 100),
            AfterTimeout::Redeliver { attempt: 2 }
        );
        s.track_with(
            key("m"),
            msg("m", None),
            AckTarget::User("u".into()),
            2,
            100,
            Some(stream.clone()),
        );
        assert_eq!(s.settle_with_stream("m", 9), Some(Some(stream)));
        assert_eq!(s.settle_with_stream("m", 9), None);
        assert_eq!(s.journal_lsn(), 0);
    }

    #[test]
    fn scheduled_messages_fire_when_due() {
        let mut s = ReliableState::new(config());
        s.schedule(Scheduled {
            target: Target::User("u".into()),
            msg: msg("later", None),
            origin: ConnRef { shard: 0, conn: 1 },
            due_unix_ms: 500,
        });
        assert_eq!(s.next_due(), Some(500));
        assert!(s.pop_due(499).is_empty());
        assert!(matches!(&s.pop_due(500)[..], [Fired::Due(d)] if d.msg.id == "later"));
        assert_eq!(s.scheduled_len(), 0);
    }

    #[test]
    fn a_scheduled_message_whose_ttl_ends_first_expires_then() {
        let mut s = ReliableState::new(config());
        // Due at 500, expires at 150: dead at 150, never delivered.
        s.schedule(Scheduled {
            target: Target::User("u".into()),
            msg: msg("short", Some(150)),
            origin: ConnRef { shard: 0, conn: 1 },
            due_unix_ms: 500,
        });
        // Due at 300, expires at 900: delivered at 300.
        s.schedule(Scheduled {
            target: Target::User("u".into()),
            msg: msg("long", Some(900)),
            origin: ConnRef { shard: 0, conn: 1 },
            due_unix_ms: 300,
        });
        assert_eq!(s.next_due(), Some(150));
        assert!(s.pop_due(149).is_empty());
        assert!(matches!(&s.pop_due(150)[..], [Fired::Expired(id)] if id == "short"));
        assert_eq!(s.scheduled_len(), 1);
        let dead: Vec<_> = s.dlq().iter().collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].msg.id, "short");
        assert_eq!(dead[0].reason, DeadReason::Expired);
        assert_eq!(dead[0].at_unix_ms, 150);
        assert!(s.pop_due(299).is_empty());
        assert!(matches!(&s.pop_due(300)[..], [Fired::Due(d)] if d.msg.id == "long"));
        assert_eq!(s.scheduled_len(), 0);
    }
}
