//! Reliable delivery on a shard: the timer task (scheduled messages, ack
//! timeouts with redelivery, mailbox TTLs), mailbox delivery after
//! `welcome`, and the dead-letter queue's query and replay across shards.
//! The rules are in `crate::delivery`; this file does what they decide.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::future;
use glommio::timer::Timer;
use ws_uring_readiness::ReadyTimer;

use super::mesh::{DeadLetterView, MeshMsg, RouteSource};
use super::messaging::{unix_ms, API_CONN};
use super::ShardState;

/// Restored mailbox messages handed to their home shard at once; each
/// reply sends the next.
const HANDOFFS_IN_FLIGHT_MAX: usize = 256;
use crate::delivery::dlq::DeadReason;
use crate::delivery::mailbox::Waiting;
use crate::delivery::{AckTarget, AfterTimeout, Fired, PendingAck, PendingKey};
use crate::routing::{home_shard, ConnRef, Envelope, Target};

/// Longest the timer task sleeps without looking (a bound, not a tick:
/// it wakes at the earliest due time, or sooner when one is added).
const TIMER_IDLE_SLEEP_MS: u64 = 1000;
/// How long a DLQ query or replay waits for the other shards.
pub const DLQ_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers collected from the shards for a DLQ request.
#[derive(Debug)]
pub(super) enum DlqAnswer {
    Letters(Vec<DeadLetterView>, u64),
    Replayed(u64),
}

impl ShardState {
    /// Wakes the timer task if a timer now falls due before it planned to
    /// look again.
    pub(super) fn wake_timers(&self) {
        self.kick_wal();
        let next = self.reliable.borrow().next_due();
        if next.is_some_and(|due| due < self.timer_wake_at.get()) {
            self.timer_woken.set(true);
            if let Some(w) = self.timer_waker.take() {
                w.wake();
            }
        }
    }

    /// The shard's one timer loop: sleeps until the earliest due timer.
    pub(super) async fn run_timers(self: std::rc::Rc<Self>) {
        // Kept by the readiness driver, so due times are kept while the
        // shard naps (a glommio timer waits for the next reactor visit, up
        // to `nap_max_us`); a glommio timer only if the thread cannot make
        // one (out of descriptors).
        let mut ready_timer = match ReadyTimer::new(Duration::ZERO) {
            Ok(timer) => Some(timer),
            Err(e) => {
                log::warn!("shard {}: reliable timer on glommio ({e}): naps may delay scheduled deliveries and ack timeouts", self.id);
                None
            }
        };
        while !self.is_shutting_down() {
            let now = unix_ms();
            let fired = self.reliable.borrow_mut().pop_due(now);
            let busy = !fired.is_empty();
            for f in fired {
                self.on_fired(f, now);
            }
            if busy {
                self.kick_wal();
            }
            let next = self.reliable.borrow().next_due();
            let sleep_ms = next
                .map_or(TIMER_IDLE_SLEEP_MS, |due| due.saturating_sub(unix_ms()))
                .min(TIMER_IDLE_SLEEP_MS);
            if sleep_ms == 0 || busy && next.is_some_and(|due| due <= unix_ms()) {
                glommio::yield_if_needed().await;
                continue;
            }
            self.timer_wake_at.set(unix_ms() + sleep_ms);
            self.timer_woken.set(false);
            let woken = future::poll_fn(|cx| {
                if self.timer_woken.replace(false) {
                    Poll::Ready(())
                } else {
                    self.timer_waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            });
            let sleep = Duration::from_millis(sleep_ms);
            future::or(woken, async {
                match ready_timer.as_mut() {
                    Some(timer) => {
                        timer.reset(sleep);
                        timer.await;
                    }
                    None => {
                        Timer::new(sleep).await;
                    }
                }
            })
            .await;
            self.timer_wake_at.set(u64::MAX);
        }
    }

    fn origin_here(&self) -> ConnRef {
        ConnRef {
            shard: self.id,
            conn: API_CONN,
        }
    }

    fn on_fired(&self, fired: Fired, now: u64) {
        match fired {
            Fired::Due(s) => {
                let envelope = Arc::new(Envelope::new(
                    (*s.msg).clone(),
                    1,
                    self.config.compress_min_bytes,
                ));
                self.route(s.target, envelope, s.origin, None);
            }
            Fired::AckTimeout { key, pending, next } => match next {
                AfterTimeout::Redeliver { attempt } => self.redeliver(key, pending, attempt, now),
                AfterTimeout::DeadLettered(reason) => {
                    log::debug!(
                        "shard {}: message {} dead-lettered ({}) after {} attempts",
                        self.id,
                        key.id,
                        reason.as_str(),
                        pending.attempt
                    );
                }
            },
            Fired::Expired(id) => {
                log::debug!(
                    "shard {}: message {id} expired before delivery (in a mailbox or a schedule)",
                    self.id
                )
            }
            Fired::StreamAckTimeout { key, pending } => self.cluster_stream_timeout(key, pending),
        }
    }

    /// Delivers again after an ack timeout, as attempt `attempt`.
    pub(super) fn redeliver(&self, key: PendingKey, pending: PendingAck, attempt: u32, now: u64) {
        let envelope = Arc::new(Envelope::new(
            (*pending.msg).clone(),
            attempt,
            self.config.compress_min_bytes,
        ));
        let origin = self.origin_here();
        match pending.target {
            AckTarget::User(user) => {
                let by_shard = self
                    .directory
                    .borrow()
                    .user_conns_by_shard(&user, self.shard_count);
                if by_shard.iter().all(Vec::is_empty) {
                    // The user went offline: back to the mailbox (one kept
                    // in a Redis Stream is still there), its unacked
                    // deliveries counted.
                    if pending.stream.is_none() {
                        let waiting = Waiting::after(pending.msg, pending.attempt);
                        self.reliable
                            .borrow_mut()
                            .store_offline(&user, waiting, now);
                    }
                    return;
                }
                self.reliable.borrow_mut().track_with(
                    key,
                    pending.msg,
                    AckTarget::User(user),
                    attempt,
                    now,
                    pending.stream,
                );
                let parts = by_shard
                    .into_iter()
                    .enumerate()
                    .map(|(shard, conns)| (shard, Arc::from(conns)))
                    .collect();
                self.fan_out(&envelope, parts, None, None, origin, None);
            }
            AckTarget::Member { group, at, user } => {
                if !self.directory.borrow().is_member(&group, at.conn) {
                    // The member left: nobody else may ack for it.
                    let target = Target::User(user);
                    let mut reliable = self.reliable.borrow_mut();
                    reliable.dead_letter(
                        pending.msg,
                        target,
                        DeadReason::AckTimeout,
                        pending.attempt,
                        now,
                    );
                    return;
                }
                let target = AckTarget::Member { group, at, user };
                self.reliable
                    .borrow_mut()
                    .track(key, pending.msg, target, attempt, now);
                self.fan_out_to_one(&envelope, at, None, origin, None);
            }
            AckTarget::Anycast { group } => {
                // The strategy may pick another member this time.
                let picked = self.directory.borrow_mut().pick(&group);
                let target = AckTarget::Anycast {
                    group: group.clone(),
                };
                self.reliable
                    .borrow_mut()
                    .track(key, pending.msg, target, attempt, now);
                if let Some(at) = picked {
                    self.note_outstanding(&group);
                    let group = Some(Arc::from(group.as_str()));
                    self.fan_out_to_one(&envelope, at, group, origin, None);
                }
            }
        }
        self.wake_timers();
    }

    /// Delivers a user's mailbox to its connection `at`, a batch of at
    /// most half an outbox at a time: the connection asks for the next one
    /// (`MailboxMore`) once it has written this one, so a mailbox larger
    /// than the outbox bound is neither dropped nor refused.
    pub(super) fn deliver_mailbox(&self, user: &str, at: ConnRef) {
        let now = unix_ms();
        let batch_bytes = (self.config.outbox_max_bytes / 2).max(1);
        let (msgs, more) = self
            .reliable
            .borrow_mut()
            .take_mailbox_batch(user, now, batch_bytes);
        if msgs.is_empty() {
            return;
        }
        let origin = self.origin_here();
        for waiting in msgs {
            let attempt = waiting.next_attempt();
            let msg = waiting.msg;
            let envelope = Arc::new(Envelope::new(
                (*msg).clone(),
                attempt,
                self.config.compress_min_bytes,
            ));
            if msg.ack {
                let key = PendingKey {
                    id: msg.id.clone(),
                    conn: None,
                };
                let target = AckTarget::User(user.to_string());
                self.reliable
                    .borrow_mut()
                    .track(key, msg, target, attempt, now);
            }
            self.fan_out_to_one(&envelope, at, None, origin, None);
        }
        if more {
            // Behind the batch on the same channel: it arrives after it.
            self.to_shard(at.shard, MeshMsg::MailboxPaused { conn: at.conn });
        }
        self.wake_timers();
    }

    /// At start-up: mailbox messages of users homed elsewhere (restored
    /// from deliveries this shard tracked for group members) go to their
    /// user's home, which delivers them when the user connects. Each one
    /// is removed here only once the home has logged it, so a crash in
    /// between delivers it twice at worst, never loses it.
    pub(super) fn hand_off_foreign_mailboxes(&self) {
        if self.cluster.is_some() {
            // Cluster mode moves every mailbox of this shard to the users'
            // Redis mailboxes instead (`migrate_mailboxes`), whatever their
            // home.
            return;
        }
        let (id, shards) = (self.id, self.shard_count);
        let strays = self
            .reliable
            .borrow()
            .foreign_mailbox_messages(|user| home_shard(user, shards) != id);
        if strays.is_empty() {
            return;
        }
        log::info!(
            "shard {}: handing {} restored mailbox messages to their users' home shards",
            self.id,
            strays.len()
        );
        self.handoffs.borrow_mut().extend(strays);
        for _ in 0..HANDOFFS_IN_FLIGHT_MAX {
            self.hand_off_next();
        }
    }

    /// Whether hand-offs are queued or waiting for their home.
    pub(super) fn handoffs_pending(&self) -> bool {
        self.handoffs_in_flight.get() > 0 || !self.handoffs.borrow().is_empty()
    }

    /// A hand-off was answered (done or failed): send the next.
    pub(super) fn handoff_answered(&self) {
        self.handoffs_in_flight
            .set(self.handoffs_in_flight.get().saturating_sub(1));
        self.hand_off_next();
    }

    /// Sends the next queued hand-off, if any.
    pub(super) fn hand_off_next(&self) {
        let Some((user, waiting)) = self.handoffs.borrow_mut().pop_front() else {
            return;
        };
        let msg = waiting.msg;
        let Some(reply) = self.wait_for_handoff(&user, &msg.id) else {
            // Too many requests pending: it stays here, handed off next start.
            return;
        };
        self.handoffs_in_flight
            .set(self.handoffs_in_flight.get() + 1);
        // The home keeps the attempt count: it stores the message as
        // delivered `attempt - 1` times.
        let envelope = Arc::new(Envelope::new(
            (*msg).clone(),
            waiting.attempts_made.saturating_add(1),
            self.config.compress_min_bytes,
        ));
        self.to_shard(
            home_shard(&user, self.shard_count),
            MeshMsg::Route {
                target: Target::User(user),
                envelope,
                origin: self.origin_here(),
                reply: Some(reply),
                deliver_at_unix_ms: None,
                source: RouteSource::Server,
            },
        );
    }

    /// On a connection's shard: once a paused mailbox batch is written,
    /// asks the user's home for the next.
    pub(crate) fn mailbox_written(&self, handle: &crate::conn::ConnHandle) {
        if handle.mailbox_paused.get() && handle.outbox.borrow().bytes() == 0 {
            handle.mailbox_paused.set(false);
            let home = home_shard(&handle.user, self.shard_count);
            let at = ConnRef {
                shard: self.id,
                conn: handle.id,
            };
            self.to_shard(
                home,
                MeshMsg::MailboxMore {
                    user: handle.user.to_string(),
                    at,
                },
            );
        }
    }

    pub(super) fn answer_dlq_query(&self, from: usize, request_id: u64) {
        let (letters, evicted) = {
            let reliable = self.reliable.borrow();
            let letters = reliable
                .dlq()
                .iter()
                .map(|letter| DeadLetterView {
                    letter: letter.clone(),
                    shard: self.id,
                })
                .collect();
            (letters, reliable.dlq().evicted())
        };
        self.to_shard(
            from,
            MeshMsg::DlqReply {
                request_id,
                letters,
                evicted,
            },
        );
    }

    pub(super) fn collect_dlq_reply(
        &self,
        request_id: u64,
        letters: Vec<DeadLetterView>,
        evicted: u64,
    ) {
        if let Some(tx) = self.dlq_waiters.borrow().get(&request_id) {
            let _ = tx.try_send(DlqAnswer::Letters(letters, evicted));
        }
    }

    pub(super) fn collect_dlq_replayed(&self, request_id: u64, replayed: u64) {
        if let Some(tx) = self.dlq_waiters.borrow().get(&request_id) {
            let _ = tx.try_send(DlqAnswer::Replayed(replayed));
        }
    }

    /// Routes dead letters again, as new first attempts.
    pub(super) fn replay_dead_letters(&self, ids: Option<&[String]>) -> u64 {
        let letters = self.reliable.borrow_mut().take_dead_letters(ids);
        self.kick_wal();
        let count = letters.len() as u64;
        let origin = self.origin_here();
        let now = unix_ms();
        for letter in letters {
            let envelope = Arc::new(Envelope::new(
                letter.replayed_message(now),
                1,
                self.config.compress_min_bytes,
            ));
            let home = home_shard(letter.target.name(), self.shard_count);
            self.to_shard(
                home,
                MeshMsg::Route {
                    target: letter.target,
                    envelope,
                    origin,
                    reply: None,
                    deliver_at_unix_ms: None,
                    source: RouteSource::Server,
                },
            );
        }
        count
    }

    /// Asks every shard (this one included) and collects the answers.
    async fn ask_all_shards(&self, make: impl Fn(u64) -> MeshMsg) -> Vec<DlqAnswer> {
        self.ask_shards(
            &self.dlq_waiters,
            0..self.shard_count,
            DLQ_QUERY_TIMEOUT,
            make,
        )
        .await
    }

    /// Every shard's dead letters, oldest first, and how many were evicted.
    pub async fn dead_letters(&self) -> (Vec<DeadLetterView>, u64) {
        let from = self.id;
        let answers = self
            .ask_all_shards(|request_id| MeshMsg::DlqQuery { from, request_id })
            .await;
        let mut all = Vec::new();
        let mut evicted = 0;
        for answer in answers {
            if let DlqAnswer::Letters(letters, e) = answer {
                all.extend(letters);
                evicted += e;
            }
        }
        all.sort_by(|a, b| {
            (a.letter.at_unix_ms, &a.letter.msg.id).cmp(&(b.letter.at_unix_ms, &b.letter.msg.id))
        });
        (all, evicted)
    }

    /// Replays dead letters on every shard; returns how many.
    pub async fn replay_all_dead_letters(&self, ids: Option<Vec<String>>) -> u64 {
        let from = self.id;
        let ids: Option<Arc<[String]>> = ids.map(Arc::from);
        let answers = self
            .ask_all_shards(|request_id| MeshMsg::DlqReplay {
                from,
                request_id,
                ids: ids.clone(),
            })
            .await;
        answers
            .into_iter()
            .map(|a| match a {
                DlqAnswer::Replayed(n) => n,
                DlqAnswer::Letters(..) => 0,
            })
            .sum()
    }
}
