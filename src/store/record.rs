//! The log's records, sans-IO: what is stored (rkyv), how a record is
//! framed (`[len u32 LE][crc32 u32 LE][rkyv bytes]`), and how a log is read
//! back: a torn tail is cut at the last whole record; a bad record with
//! more data behind it is corruption, reported, never skipped.
//!
//! State is logged as idempotent key/value changes (`Upsert`, `Remove`), so
//! replay is "last write wins" and a snapshot is just the live keys.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use crate::protocol::{compress, Priority};
use crate::routing::envelope::{MessageBody, MessageParts};
use crate::routing::Target;

/// Bytes of the frame header before each record.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest record accepted when reading (a bound against garbage lengths).
pub const RECORD_MAX_BYTES: usize = 512 << 20;

/// A message as the log keeps it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub id: String,
    pub from: String,
    pub to: Option<String>,
    pub group: Option<String>,
    /// 0 low … 3 critical.
    pub priority: u8,
    pub ts_unix_ms: u64,
    pub ack: bool,
    pub expires_unix_ms: Option<u64>,
    /// `data` JSON text when `binary` is false, else the payload.
    pub body: Vec<u8>,
    pub binary: bool,
    /// `body` is lz4 (it was at least `compress_min_bytes`).
    pub body_lz4: bool,
}

/// Where a message goes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StoredTarget {
    User(String),
    Group { group: String, echo: bool },
    Anycast(String),
}

/// Who a pending delivery waits on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StoredAckTarget {
    User(String),
    Member { group: String, user: String },
    Anycast(String),
}

/// One durable fact.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DurableEntry {
    /// Waiting in `user`'s mailbox.
    Mailbox { user: String, msg: StoredMsg },
    /// Held until `due_unix_ms`.
    Scheduled {
        target: StoredTarget,
        msg: StoredMsg,
        due_unix_ms: u64,
    },
    /// Delivered, waiting for its ack.
    Pending {
        target: StoredAckTarget,
        msg: StoredMsg,
        attempt: u32,
    },
    /// In the dead-letter queue.
    Dead {
        target: StoredTarget,
        msg: StoredMsg,
        reason: String,
        at_unix_ms: u64,
        attempts: u32,
        seq: u64,
    },
    /// Waiting in `user`'s mailbox after `attempts_made` deliveries whose
    /// acks never came (data format 2; a never-delivered message is still
    /// a `Mailbox` record). Added last: the variants before it, and so the
    /// records format 1 wrote, keep their encoding.
    MailboxRedelivery {
        user: String,
        msg: StoredMsg,
        attempts_made: u32,
    },
}

/// One log record. (Records are short-lived and built one at a time, so
/// the size difference between the variants costs nothing worth a box.)
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum WalRecord {
    Upsert { key: String, entry: DurableEntry },
    Remove { key: String },
}

/// Why a log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error(
        "record {index} at byte {offset} is corrupt ({reason}) and {remaining} more bytes follow its header: \
         the log is damaged in the middle, so it was not replayed; move the file aside to start empty, \
         cut it at byte {offset} to keep the records before it, or restore it from a backup"
    )]
    CorruptMiddle {
        index: usize,
        offset: u64,
        reason: String,
        remaining: u64,
    },
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<WalRecord>,
    /// Bytes of whole, valid records (where appending continues).
    pub valid_bytes: u64,
    /// Bytes of a torn last record cut off (a crash in mid-write).
    pub torn_bytes: u64,
}

/// Frames one record.
pub fn encode(record: &WalRecord, out: &mut Vec<u8>) {
    let payload =
        rkyv::to_bytes::<rkyv::rancor::Error>(record).expect("log records always serialise");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Reads every record of a log.
pub fn read_all(log: &[u8]) -> Result<ReadOutcome, LogError> {
    let mut outcome = ReadOutcome::default();
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < log.len() {
        let rest = &log[pos..];
        let torn = |outcome: &mut ReadOutcome| {
            outcome.valid_bytes = pos as u64;
            outcome.torn_bytes = rest.len() as u64;
        };
        if rest.len() < FRAME_HEADER_BYTES {
            torn(&mut outcome);
            return Ok(outcome);
        }
        let (len, crc) = frame_header(rest);
        let end = FRAME_HEADER_BYTES + len;
        if len > RECORD_MAX_BYTES || end > rest.len() {
            // Runs past the end. A write cut short leaves a prefix of one
            // record (or zeros where the file grew first). A length no
            // writer makes, or whole records behind it, is damage instead:
            // cutting there would throw those records away.
            let zeros = rest.iter().all(|&b| b == 0);
            let impossible = len > RECORD_MAX_BYTES && rest.len() > FRAME_HEADER_BYTES;
            let damaged_length = impossible || whole_record_within(&rest[1..]);
            if zeros || !damaged_length {
                torn(&mut outcome);
                return Ok(outcome);
            }
            return Err(LogError::CorruptMiddle {
                index,
                offset: pos as u64,
                reason: if len > RECORD_MAX_BYTES {
                    format!(
                        "its length, {len} bytes, is over the {RECORD_MAX_BYTES} any record has"
                    )
                } else {
                    format!(
                        "its length, {len} bytes, runs past the end, and whole records follow it"
                    )
                },
                remaining: (rest.len() - FRAME_HEADER_BYTES) as u64,
            });
        }
        let payload = &rest[FRAME_HEADER_BYTES..end];
        // A bad record is a torn write only as the last one (a zero-filled
        // tail, where the file grew but its data never landed, counts as
        // nothing behind it) and with no whole record inside it: a damaged
        // length can stretch a frame over the records that follow.
        let torn_write = || {
            (end == rest.len() || rest[end..].iter().all(|&b| b == 0))
                && !whole_record_within(&rest[1..])
        };
        let bad = |reason: String| LogError::CorruptMiddle {
            index,
            offset: pos as u64,
            reason,
            remaining: (rest.len() - FRAME_HEADER_BYTES) as u64,
        };
        if crc32fast::hash(payload) != crc {
            if torn_write() {
                torn(&mut outcome);
                return Ok(outcome);
            }
            return Err(bad("checksum mismatch".into()));
        }
        match decode_payload(payload) {
            Ok(record) => outcome.records.push(record),
            // Like a bad checksum. (Eight zero bytes pass the checksum.)
            Err(_) if torn_write() => {
                torn(&mut outcome);
                return Ok(outcome);
            }
            Err(e) => return Err(bad(format!("undecodable record: {e}"))),
        }
        pos += end;
        index += 1;
    }
    outcome.valid_bytes = pos as u64;
    Ok(outcome)
}

/// Whether `bytes` holds, at any offset, a whole frame whose checksum
/// matches and whose payload decodes: a record a torn write cannot leave
/// behind the point where it was cut. Only read when a log looks torn.
fn whole_record_within(bytes: &[u8]) -> bool {
    (0..bytes.len().saturating_sub(FRAME_HEADER_BYTES)).any(|at| {
        let rest = &bytes[at..];
        let (len, crc) = frame_header(rest);
        if len == 0 || len > rest.len() - FRAME_HEADER_BYTES {
            return false;
        }
        let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
        crc32fast::hash(payload) == crc && decode_payload(payload).is_ok()
    })
}

/// A frame's length and checksum (`rest` holds at least the header).
fn frame_header(rest: &[u8]) -> (usize, u32) {
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    (len, crc)
}

/// A record from its payload (copied to rkyv's alignment first).
fn decode_payload(payload: &[u8]) -> Result<WalRecord, rkyv::rancor::Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<WalRecord, rkyv::rancor::Error>(&aligned)
}

fn priority_code(p: Priority) -> u8 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

fn priority_of(code: u8) -> Priority {
    match code {
        0 => Priority::Low,
        2 => Priority::High,
        3 => Priority::Critical,
        _ => Priority::Normal,
    }
}

impl StoredMsg {
    /// The stored form; bodies of at least `compress_min_bytes` are lz4.
    pub fn from_parts(parts: &MessageParts, compress_min_bytes: usize) -> StoredMsg {
        let (raw, binary): (&[u8], bool) = match &parts.body {
            MessageBody::Json(s) => (s.as_bytes(), false),
            MessageBody::Binary { payload, .. } => (payload, true),
        };
        let body_lz4 = raw.len() >= compress_min_bytes;
        let body = if body_lz4 {
            compress::compress(raw)
        } else {
            raw.to_vec()
        };
        StoredMsg {
            id: parts.id.clone(),
            from: parts.from.clone(),
            to: parts.to.clone(),
            group: parts.group.clone(),
            priority: priority_code(parts.priority),
            ts_unix_ms: parts.ts_unix_ms,
            ack: parts.ack,
            expires_unix_ms: parts.expires_unix_ms,
            body,
            binary,
            body_lz4,
        }
    }

    /// Back to a message (the body decompressed and checked).
    pub fn to_parts(&self) -> Result<MessageParts, String> {
        let raw = if self.body_lz4 {
            compress::decompress(&self.body, RECORD_MAX_BYTES).map_err(|e| e.to_string())?
        } else {
            self.body.clone()
        };
        let body = if self.binary {
            MessageBody::Binary {
                payload: Bytes::from(raw),
                compressed: None,
            }
        } else {
            let text =
                String::from_utf8(raw).map_err(|_| "stored JSON data is not UTF-8".to_string())?;
            MessageBody::Json(text)
        };
        Ok(MessageParts {
            id: self.id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            group: self.group.clone(),
            priority: priority_of(self.priority),
            ts_unix_ms: self.ts_unix_ms,
            ack: self.ack,
            expires_unix_ms: self.expires_unix_ms,
            body,
        })
    }
}

impl From<&Target> for StoredTarget {
    fn from(t: &Target) -> Self {
        match t {
            Target::User(u) => StoredTarget::User(u.clone()),
            Target::Group { group, echo } => StoredTarget::Group {
                group: group.clone(),
                echo: *echo,
            },
            Target::Anycast(g) => StoredTarget::Anycast(g.clone()),
        }
    }
}

impl From<&StoredTarget> for Target {
    fn from(t: &StoredTarget) -> Self {
        match t {
            StoredTarget::User(u) => Target::User(u.clone()),
            StoredTarget::Group { group, echo } => Target::Group {
                group: group.clone(),
                echo: *echo,
            },
            StoredTarget::Anycast(g) => Target::Anycast(g.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body: MessageBody) -> MessageParts {
        MessageParts {
            id: "b-0-1".into(),
            from: "alice".into(),
            to: Some("bob".into()),
            group: None,
            priority: Priority::Critical,
            ts_unix_ms: 1_700_000_000_000,
            ack: true,
            expires_unix_ms: Some(1_700_000_005_000),
            body,
        }
    }

    fn records() -> Vec<WalRecord> {
        let big = MessageBody::Json(format!("\"{}\"", "x".repeat(5000)));
        vec![
            WalRecord::Upsert {
                key: "m/bob/b-0-1".into(),
                entry: DurableEntry::Mailbox {
                    user: "bob".into(),
                    msg: StoredMsg::from_parts(&parts(MessageBody::Json("{\"a\":1}".into())), 1024),
                },
            },
            WalRecord::Upsert {
                key: "s/b-0-2".into(),
                entry: DurableEntry::Scheduled {
                    target: StoredTarget::Group {
                        group: "g".into(),
                        echo: true,
                    },
                    msg: StoredMsg::from_parts(&parts(big), 1024),
                    due_unix_ms: 9,
                },
            },
            WalRecord::Remove {
                key: "m/bob/b-0-1".into(),
            },
        ]
    }

    /// One record of every kind as data format 1 wrote them: the fixture
    /// `tests/fixtures/wal-format-1.bin` holds these, framed.
    fn format_1_records() -> Vec<WalRecord> {
        let msg = |id: &str, body: MessageBody| {
            let mut p = parts(body);
            p.id = id.into();
            StoredMsg::from_parts(&p, 1024)
        };
        let binary = MessageBody::Binary {
            payload: Bytes::from_static(&[0, 1, 2, 255]),
            compressed: None,
        };
        vec![
            WalRecord::Upsert {
                key: "m/bob/f-1".into(),
                entry: DurableEntry::Mailbox {
                    user: "bob".into(),
                    msg: msg("f-1", MessageBody::Json("{\"a\":1}".into())),
                },
            },
            WalRecord::Upsert {
                key: "s/f-2".into(),
                entry: DurableEntry::Scheduled {
                    target: StoredTarget::Group {
                        group: "g".into(),
                        echo: true,
                    },
                    msg: msg(
                        "f-2",
                        MessageBody::Json(format!("\"{}\"", "x".repeat(2000))),
                    ),
                    due_unix_ms: 1_700_000_009_000,
                },
            },
            WalRecord::Upsert {
                key: "p/f-3".into(),
                entry: DurableEntry::Pending {
                    target: StoredAckTarget::Member {
                        group: "g".into(),
                        user: "carol".into(),
                    },
                    msg: msg("f-3", binary),
                    attempt: 3,
                },
            },
            WalRecord::Upsert {
                key: "p/f-4".into(),
                entry: DurableEntry::Pending {
                    target: StoredAckTarget::Anycast("workers".into()),
                    msg: msg("f-4", MessageBody::Json("null".into())),
                    attempt: 1,
                },
            },
            WalRecord::Upsert {
                key: "d/7".into(),
                entry: DurableEntry::Dead {
                    target: StoredTarget::User("dave".into()),
                    msg: msg("f-5", MessageBody::Json("[1,2]".into())),
                    reason: "ack_timeout".into(),
                    at_unix_ms: 1_700_000_010_000,
                    attempts: 4,
                    seq: 7,
                },
            },
            WalRecord::Remove {
                key: "m/bob/f-1".into(),
            },
        ]
    }

    /// Logs written by earlier versions stay readable: the fixture was
    /// written by format 1's encoder from `format_1_records`.
    #[test]
    fn reads_a_log_written_in_format_1() {
        let log = include_bytes!("../../tests/fixtures/wal-format-1.bin");
        let outcome = read_all(log).unwrap();
        assert_eq!(outcome.records, format_1_records());
        assert_eq!(outcome.valid_bytes, log.len() as u64);
        assert_eq!(outcome.torn_bytes, 0);
        assert_eq!(log_of(&format_1_records()), log.to_vec());
    }

    fn log_of(records: &[WalRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(r, &mut out);
        }
        out
    }

    #[test]
    fn round_trip() {
        let log = log_of(&records());
        let read = read_all(&log).unwrap();
        assert_eq!(read.records, records());
        assert_eq!(read.valid_bytes, log.len() as u64);
        assert_eq!(read.torn_bytes, 0);
    }

    #[test]
    fn messages_survive_storage_compressed_or_not() {
        for body in [
            MessageBody::Json("[1,2]".into()),
            MessageBody::Json(format!("\"{}\"", "y".repeat(4000))),
            MessageBody::Binary {
                payload: Bytes::from(vec![0u8, 255, 10, 13]),
                compressed: None,
            },
        ] {
            let p = parts(body);
            let stored = StoredMsg::from_parts(&p, 1024);
            assert_eq!(stored.to_parts().unwrap(), p);
        }
        assert!(
            StoredMsg::from_parts(
                &parts(MessageBody::Json(format!("\"{}\"", "z".repeat(4000)))),
                1024
            )
            .body_lz4
        );
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_whole_record() {
        let log = log_of(&records());
        let whole_two = log_of(&records()[..2]).len();
        for cut in [
            log.len() - 1,
            whole_two + 3,
            whole_two + FRAME_HEADER_BYTES + 1,
        ] {
            let read = read_all(&log[..cut]).unwrap();
            assert_eq!(read.records.len(), 2, "cut at {cut}");
            assert_eq!(read.valid_bytes, whole_two as u64);
            assert_eq!(read.torn_bytes, (cut - whole_two) as u64);
        }
        // A last record whose bytes are garbage (checksum fails) is torn too.
        let mut bad_last = log.clone();
        let n = bad_last.len();
        bad_last[n - 1] ^= 0xff;
        let read = read_all(&bad_last).unwrap();
        assert_eq!(read.records.len(), 2);
    }

    #[test]
    fn a_damaged_length_with_records_behind_it_is_corruption_not_a_torn_tail() {
        let log = log_of(&records());
        let second = log_of(&records()[..1]).len();
        // Past RECORD_MAX_BYTES, and within it but past the end of the log.
        for len in [0x7fff_ffffu32, (log.len() - second) as u32] {
            let mut damaged = log.clone();
            damaged[second..second + 4].copy_from_slice(&len.to_le_bytes());
            match read_all(&damaged) {
                Err(LogError::CorruptMiddle { index, offset, .. }) => {
                    assert_eq!((index, offset), (1, second as u64), "length {len}")
                }
                other => panic!("length {len}: {other:?}"),
            }
        }
        // On the last record: a length no writer makes is damage, not a
        // crash, and is refused too; a possible one with nothing whole
        // behind it is a torn write, cut.
        let last = log_of(&records()[..2]).len();
        let mut damaged = log.clone();
        damaged[last..last + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(matches!(
            read_all(&damaged),
            Err(LogError::CorruptMiddle { index: 2, .. })
        ));
        let mut torn = log.clone();
        torn[last..last + 4].copy_from_slice(&(log.len() as u32).to_le_bytes());
        let read = read_all(&torn).unwrap();
        assert_eq!((read.records.len(), read.valid_bytes), (2, last as u64));
    }

    #[test]
    fn a_zero_filled_tail_is_torn_however_long() {
        let log = log_of(&records());
        for zeros in [FRAME_HEADER_BYTES + 1, 4096] {
            let mut grown = log.clone();
            grown.resize(log.len() + zeros, 0);
            let read = read_all(&grown).unwrap();
            assert_eq!(read.records, records());
            assert_eq!(read.torn_bytes, zeros as u64);
        }
    }

    #[test]
    fn an_undecodable_last_record_is_torn_not_corrupt_middle() {
        // Found by the wal_record fuzz target: a last record whose checksum
        // is right but whose bytes are not a record was reported as
        // corruption "with 0 more bytes after it". The smallest such tail
        // is 8 zero bytes (length 0, and the CRC32 of nothing is 0).
        let log = log_of(&records());
        for tail in [vec![0u8; FRAME_HEADER_BYTES], {
            let junk = b"not an rkyv record";
            let mut frame = (junk.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32fast::hash(junk).to_le_bytes());
            frame.extend_from_slice(junk);
            frame
        }] {
            let mut damaged = log.clone();
            damaged.extend_from_slice(&tail);
            let read = read_all(&damaged).unwrap();
            assert_eq!(read.records, records());
            assert_eq!(read.valid_bytes, log.len() as u64);
            assert_eq!(read.torn_bytes, tail.len() as u64);
            // With data behind it, the same record is still corruption.
            damaged.extend_from_slice(&log);
            assert!(matches!(
                read_all(&damaged),
                Err(LogError::CorruptMiddle { index: 3, .. })
            ));
        }
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_not_a_skip() {
        let mut log = log_of(&records());
        log[FRAME_HEADER_BYTES + 3] ^= 0x55;
        match read_all(&log) {
            Err(LogError::CorruptMiddle {
                index: 0,
                offset: 0,
                remaining,
                ..
            }) => assert!(remaining > 0),
            other => panic!("{other:?}"),
        }
    }
}
