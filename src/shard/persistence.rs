//! A shard's log: start-up recovery, the writer task (group commit), the
//! answers that wait for durability, and compaction. Only this shard's
//! thread touches its log.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::io::{BufferedFile, OpenOptions};
use glommio::timer::Timer;

use super::mesh::{Failure, MeshMsg};
use super::messaging::{failure, unix_ms};
use super::ShardState;
use crate::protocol::ErrorCode;
use crate::routing::{Envelope, Target};
use crate::store::{self, record, FsyncMode, COMPACT_GROWTH_FACTOR, COMPACT_MIN_BYTES};

/// Back-off after a failed log write before trying again.
const WRITE_RETRY_DELAY: Duration = Duration::from_millis(100);
/// While log writes keep failing (or fail again soon after working),
/// how often the error is logged again.
const WRITE_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// While a log write fails for want of room, how often a snapshot (which
/// may be much smaller than the log) is tried instead.
const SNAPSHOT_FOR_ROOM_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed compaction, how long before the next try.
const COMPACT_RETRY_DELAY: Duration = Duration::from_secs(10);

/// A log that cannot be written now: since when, why, how often tried.
#[derive(Debug)]
pub(super) struct WalFailure {
    since: Instant,
    reason: String,
    attempts: u64,
    /// Whether this failure's error was logged (a failure soon after the
    /// last logged one waits for the interval).
    logged: bool,
    /// When a snapshot was last tried to make room.
    snapshot_tried_at: Option<Instant>,
}

/// Whether a write failed for want of room: disk full, over the
/// file-size limit, over quota.
fn out_of_room(error: &glommio::GlommioError<()>) -> bool {
    let source = match error {
        glommio::GlommioError::EnhancedIoError { source, .. }
        | glommio::GlommioError::IoError(source) => source,
        _ => return false,
    };
    matches!(
        source.raw_os_error(),
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT)
    )
}

/// The open log of a shard.
pub(super) struct WalFile {
    file: BufferedFile,
    path: PathBuf,
    pos: u64,
    snapshot_bytes: u64,
}

/// Answers held until the log is durable up to `lsn`.
#[derive(Default)]
pub(super) struct DurableWaiters {
    queue: VecDeque<(u64, usize, MeshMsg)>,
}

impl ShardState {
    /// Sends `msg` to `shard` once every record journaled so far is
    /// durable: synced (`fsync` always or batch) or at least written to the
    /// kernel (`never`: survives a crash of the process, not of the OS); at
    /// once without persistence.
    pub(super) fn when_durable(&self, lsn_before: u64, shard: usize, msg: MeshMsg) {
        let lsn = self.reliable.borrow().journal_lsn();
        let must_wait = lsn > lsn_before && lsn > self.durable_lsn.get();
        if must_wait {
            self.durable_waiters
                .borrow_mut()
                .queue
                .push_back((lsn, shard, msg));
            self.kick_wal();
        } else {
            self.to_shard(shard, msg);
            if lsn > lsn_before {
                self.kick_wal();
            }
        }
    }

    /// Wakes the log writer.
    pub(super) fn kick_wal(&self) {
        if let Some(w) = self.wal_waker.take() {
            w.wake();
        }
    }

    fn release_durable(&self, durable: u64) {
        self.durable_lsn.set(durable);
        loop {
            let next = {
                let mut waiters = self.durable_waiters.borrow_mut();
                match waiters.queue.front() {
                    Some((lsn, _, _)) if *lsn <= durable => waiters.queue.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some((_, shard, msg)) => self.to_shard(shard, msg),
                None => break,
            }
        }
    }

    /// Replays this shard's log into its state and opens it for appending,
    /// starting from a fresh snapshot. Blocking reads are fine here: the
    /// shard does not serve yet.
    pub(super) async fn open_log(&self, dir: &std::path::Path) -> Result<WalFile, String> {
        let path = store::log_path(dir, self.id);
        let started = Instant::now();
        let recovered = store::recover(&path).map_err(|e| e.to_string())?;
        let entries = recovered.entries.len();
        {
            let mut reliable = self.reliable.borrow_mut();
            // Journaling starts after the restore: the snapshot written
            // below already holds everything the restore rebuilt.
            let undecodable = reliable.restore(recovered.entries, unix_ms());
            reliable.enable_journal(self.config.compress_min_bytes);
            if undecodable > 0 {
                return Err(format!(
                    "{}: {undecodable} entries could not be decoded; not starting over a damaged log",
                    path.display()
                ));
            }
        }
        if recovered.records > 0 {
            let r = self.reliable.borrow();
            log::info!(
                "shard {}: replayed {} log records ({} live) in {:.1} ms: {} mailbox messages, {} scheduled, {} dead letters",
                self.id,
                recovered.records,
                entries,
                started.elapsed().as_secs_f64() * 1000.0,
                r.mailbox_total(),
                r.scheduled_len(),
                r.dlq().len()
            );
        }
        let wal = self
            .write_snapshot(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.durable_lsn.set(self.reliable.borrow().journal_lsn());
        Ok(wal)
    }

    /// Writes the live state as a new log (`.tmp`, synced, renamed over the
    /// old one, directory synced) and returns it open for appending.
    async fn write_snapshot(&self, path: &std::path::Path) -> std::io::Result<WalFile> {
        let tmp = path.with_extension("wal.tmp");
        let mut buf = Vec::new();
        for r in self.reliable.borrow().durable_entries() {
            record::encode(&r, &mut buf);
        }
        let len = buf.len() as u64;
        let written = async {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .buffered_open(&tmp)
                .await
                .map_err(std::io::Error::from)?;
            if len > 0 {
                let n = file.write_at(buf, 0).await.map_err(std::io::Error::from)?;
                if (n as u64) < len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("snapshot cut short: {n} of {len} bytes written"),
                    ));
                }
            }
            file.fdatasync().await.map_err(std::io::Error::from)?;
            Ok(file)
        }
        .await;
        let mut file = match written {
            Ok(file) => file,
            Err(e) => {
                // What was written of it would only take room (on a full
                // disk, the room the log needs). A rare error path: a
                // blocking unlink is fine.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        file.rename(path).await.map_err(std::io::Error::from)?;
        if let Some(dir) = path.parent() {
            store::sync_dir(dir)?;
        }
        Ok(WalFile {
            file,
            path: path.to_path_buf(),
            pos: len,
            snapshot_bytes: len,
        })
    }

    /// The log writer: takes what was journaled, appends it in one write,
    /// syncs per `fsync`, releases the answers that waited, compacts.
    pub(super) async fn run_wal(self: Rc<Self>, mut wal: WalFile) {
        let mut compact_retry_at: Option<Instant> = None;
        loop {
            let ready = future::poll_fn(|cx| {
                if self.reliable.borrow().has_journal_records() {
                    Poll::Ready(true)
                } else if self.wal_closing.get() {
                    Poll::Ready(false)
                } else {
                    self.wal_waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            if !ready {
                break;
            }
            // Answers wait for this write: the shard's driver must not nap
            // through its timer and completions (they come through
            // glommio's reactor, which a nap keeps waiting).
            let _no_naps = ws_uring_readiness::hold_naps();
            if self.fsync == FsyncMode::Batch && self.config.fsync_batch_ms > 0 {
                // Let more records join this commit.
                Timer::new(Duration::from_millis(self.config.fsync_batch_ms)).await;
            }
            self.write_pending(&mut wal).await;
            if wal.pos > COMPACT_MIN_BYTES
                && wal.pos > wal.snapshot_bytes.saturating_mul(COMPACT_GROWTH_FACTOR)
                && compact_retry_at.is_none_or(|at| Instant::now() >= at)
            {
                match self.write_snapshot(&wal.path.clone()).await {
                    Ok(fresh) => {
                        log::info!(
                            "shard {}: log compacted from {} to {} bytes",
                            self.id,
                            wal.pos,
                            fresh.pos
                        );
                        wal = fresh;
                        compact_retry_at = None;
                    }
                    Err(e) => {
                        log::error!(
                            "shard {}: log compaction failed ({e}); next try in {} s",
                            self.id,
                            COMPACT_RETRY_DELAY.as_secs()
                        );
                        compact_retry_at = Some(Instant::now() + COMPACT_RETRY_DELAY);
                    }
                }
            }
        }
        self.wal_done.set(true);
    }

    /// Writes (and syncs) everything journaled; retries until it succeeds,
    /// since answers wait on it. While it fails for want of room, a
    /// snapshot of the live state is tried every few seconds instead: it
    /// holds these records' effects and may fit where the grown log does
    /// not (a log of mostly removed messages against a file-size limit).
    async fn write_pending(&self, wal: &mut WalFile) {
        let (records, lsn) = self.reliable.borrow_mut().take_journal();
        if records.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(records.len() * 128);
        for r in &records {
            record::encode(r, &mut buf);
        }
        let len = buf.len() as u64;
        loop {
            let result = async {
                let mut written = 0usize;
                while written < buf.len() {
                    let n = wal
                        .file
                        .write_at(buf[written..].to_vec(), wal.pos + written as u64)
                        .await?;
                    if n == 0 {
                        return Err(glommio::GlommioError::IoError(std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            "log write made no progress",
                        )));
                    }
                    written += n;
                }
                if self.fsync != FsyncMode::Never {
                    wal.file.fdatasync().await?;
                }
                Ok::<(), glommio::GlommioError<()>>(())
            }
            .await;
            match result {
                Ok(()) => {
                    wal.pos += len;
                    break;
                }
                Err(e) => {
                    let room = out_of_room(&e);
                    self.log_write_failed(&wal.path, e);
                    if room && self.snapshot_for_room_due() {
                        let before = wal.pos;
                        match self.write_snapshot(&wal.path.clone()).await {
                            Ok(fresh) => {
                                log::warn!(
                                    "shard {}: no room to append to the log; compacted it from {before} to {} bytes instead",
                                    self.id,
                                    fresh.pos
                                );
                                *wal = fresh;
                                break;
                            }
                            Err(e) => log::debug!(
                                "shard {}: a snapshot to make room failed too: {e}",
                                self.id
                            ),
                        }
                    }
                    Timer::new(WRITE_RETRY_DELAY).await;
                }
            }
        }
        if let Some(failure) = self.wal_failure.borrow_mut().take() {
            if failure.logged {
                log::warn!(
                    "shard {}: log written again after {:.1} s ({} failed attempts); commands are stored again",
                    self.id,
                    failure.since.elapsed().as_secs_f64(),
                    failure.attempts
                );
            }
        }
        self.release_durable(lsn);
    }

    /// Whether to try a snapshot for room now (at a failure's first
    /// attempt, then every `SNAPSHOT_FOR_ROOM_INTERVAL`); notes the try.
    fn snapshot_for_room_due(&self) -> bool {
        let mut failing = self.wal_failure.borrow_mut();
        let Some(f) = failing.as_mut() else {
            return false;
        };
        let now = Instant::now();
        let due = f
            .snapshot_tried_at
            .is_none_or(|at| now.duration_since(at) >= SNAPSHOT_FOR_ROOM_INTERVAL);
        if due {
            f.snapshot_tried_at = Some(now);
        }
        due
    }

    /// Notes a failed log write. Its error is logged at once, then at most
    /// every `WRITE_FAILURE_LOG_INTERVAL`, also across failures in quick
    /// succession (a nearly full disk where small writes still fit).
    fn log_write_failed(&self, path: &std::path::Path, error: glommio::GlommioError<()>) {
        // Clients are told the OS error only ("No space left on device
        // (os error 28)"), not glommio's description with the file's path.
        let reason = match &error {
            glommio::GlommioError::EnhancedIoError { source, .. }
            | glommio::GlommioError::IoError(source) => source.to_string(),
            other => other.to_string(),
        };
        let now = Instant::now();
        let log_now = self
            .wal_error_logged_at
            .get()
            .is_none_or(|at| now.duration_since(at) >= WRITE_FAILURE_LOG_INTERVAL);
        let mut failing = self.wal_failure.borrow_mut();
        let failure = failing.get_or_insert_with(|| WalFailure {
            since: now,
            reason: String::new(),
            attempts: 0,
            logged: false,
            snapshot_tried_at: None,
        });
        failure.attempts += 1;
        failure.reason = reason;
        if log_now {
            if failure.attempts == 1 {
                log::error!(
                    "shard {}: writing {} failed ({error}); commands that must be stored are \
                     refused until it succeeds, answers already promised wait; retrying every {} ms",
                    self.id,
                    path.display(),
                    WRITE_RETRY_DELAY.as_millis()
                );
            } else {
                log::error!(
                    "shard {}: writing {} still fails after {:.0} s ({} attempts): {error}",
                    self.id,
                    path.display(),
                    failure.since.elapsed().as_secs_f64(),
                    failure.attempts
                );
            }
            failure.logged = true;
            self.wal_error_logged_at.set(Some(now));
        }
    }

    /// Whether this shard's log is failing now.
    pub(super) fn log_failing(&self) -> bool {
        self.wal_failure.borrow().is_some()
    }

    /// The answer for a client's command that this shard would store (a
    /// schedule, an `ack:true` delivery, a mailbox message) while its log
    /// cannot be written: refused, rather than promised with only memory
    /// holding it. `None` when the log is fine or nothing would be stored.
    pub(super) fn refusal_while_log_fails(
        &self,
        target: &Target,
        envelope: &Envelope,
        deliver_at_unix_ms: Option<u64>,
    ) -> Option<Failure> {
        let failing = self.wal_failure.borrow();
        let f = failing.as_ref()?;
        let scheduled = deliver_at_unix_ms.is_some_and(|due| due > unix_ms());
        let stored_here = scheduled
            || match (self.cluster.is_some(), target) {
                // A user's messages, acked or waiting offline, are kept in
                // its Redis Stream, not in this log.
                (true, Target::User(_)) => false,
                (false, Target::User(user)) => {
                    envelope.ack() || {
                        let offline = self.directory.borrow().user_parts(user).is_empty();
                        self.held_in_mailbox(user, offline)
                    }
                }
                (_, Target::Group { .. } | Target::Anycast(_)) => envelope.ack(),
            };
        if !stored_here {
            return None;
        }
        Some(failure(
            ErrorCode::Overloaded,
            format!(
                "not sent: this message must be stored, and the server's log (shard {}) has \
                 failed to write for {:.0} s ({}); try again later",
                self.id,
                f.since.elapsed().as_secs_f64(),
                f.reason
            ),
        ))
    }

    /// At shutdown: write what is left and stop the writer.
    pub(super) async fn close_wal(&self) {
        self.wal_closing.set(true);
        self.kick_wal();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.wal_done.get() && Instant::now() < deadline {
            Timer::new(Duration::from_millis(5)).await;
        }
    }
}
