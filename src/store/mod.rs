//! Per-shard persistence: an append-only log of durable state changes in
//! `data_dir/shard-N.wal`, written with glommio's file I/O on the shard's
//! own thread, group-committed (`fsync = always | batch | never`), replayed
//! at start-up and compacted into a snapshot when it grows.

pub mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use record::{DurableEntry, LogError, WalRecord};

/// The format of a data directory, written to `meta.json`. 2 added the
/// `MailboxRedelivery` record; a format-1 directory is read as it is and
/// marked 2 when opened, so an older ws-uring refuses it by its meta.json
/// rather than at a record it cannot decode.
pub const DATA_FORMAT: u64 = 2;
/// The oldest format this version reads.
pub const DATA_FORMAT_OLDEST: u64 = 1;
/// A log is compacted once it is past this size…
pub const COMPACT_MIN_BYTES: u64 = 16 << 20;
/// …and this many times the size of its last snapshot.
pub const COMPACT_GROWTH_FACTOR: u64 = 4;

/// When logged changes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// fdatasync before `ok` (records arriving meanwhile share one sync).
    Always,
    /// Wait up to the batch window for more records, then one fdatasync.
    Batch,
    /// Written to the OS; never synced by us.
    Never,
}

impl FsyncMode {
    pub fn parse(s: &str) -> Option<FsyncMode> {
        match s {
            "always" => Some(FsyncMode::Always),
            "batch" => Some(FsyncMode::Batch),
            "never" => Some(FsyncMode::Never),
            _ => None,
        }
    }
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {dir} was written by {found} shards, but {configured} are configured: \
         start with --shards {found}, or move the directory aside to start empty"
    )]
    ShardCountChanged {
        dir: PathBuf,
        found: u64,
        configured: usize,
    },
    #[error("data directory {dir}: meta.json is not ws-uring's ({reason})")]
    BadMeta { dir: PathBuf, reason: String },
    #[error(
        "data directory {dir} has no meta.json but holds the log of shard {highest}, which \
         --shards {configured} would not read: start with --shards {needed} or more, or move \
         the directory aside to start empty"
    )]
    LogsBeyondShards {
        dir: PathBuf,
        highest: usize,
        needed: usize,
        configured: usize,
    },
    #[error("data directory {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("log {path}: {source}")]
    Corrupt { path: PathBuf, source: LogError },
}

/// Creates the data directory or checks that it belongs to this setup.
pub fn prepare_data_dir(dir: &Path, shards: usize) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(StoreError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let meta_path = dir.join("meta.json");
    match std::fs::read_to_string(&meta_path) {
        Ok(text) => {
            let meta: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| StoreError::BadMeta {
                    dir: dir.to_path_buf(),
                    reason: e.to_string(),
                })?;
            let format = meta["format"].as_u64();
            match format {
                Some(f) if (DATA_FORMAT_OLDEST..=DATA_FORMAT).contains(&f) => {}
                Some(f) if f > DATA_FORMAT => {
                    return Err(StoreError::BadMeta {
                        dir: dir.to_path_buf(),
                        reason: format!(
                            "format {f} is newer than this version reads \
                             ({DATA_FORMAT_OLDEST} to {DATA_FORMAT}): run the ws-uring that wrote it, \
                             or a newer one"
                        ),
                    })
                }
                _ => {
                    return Err(StoreError::BadMeta {
                        dir: dir.to_path_buf(),
                        reason: format!(
                            "format {} is not one this version reads ({DATA_FORMAT_OLDEST} to {DATA_FORMAT})",
                            meta["format"]
                        ),
                    })
                }
            }
            let found = meta["shards"].as_u64().unwrap_or(0);
            if found != shards as u64 {
                return Err(StoreError::ShardCountChanged {
                    dir: dir.to_path_buf(),
                    found,
                    configured: shards,
                });
            }
            if format != Some(DATA_FORMAT) {
                log::info!(
                    "data directory {}: format {} marked {DATA_FORMAT} (its logs are read as they are)",
                    dir.display(),
                    meta["format"]
                );
                write_meta(dir, shards).map_err(io)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No record of the shard count: the logs say how many wrote here.
            // A log beyond `shards` would be ignored, its messages lost.
            if let Some(highest) = highest_shard_log(dir).map_err(io)? {
                if highest >= shards {
                    return Err(StoreError::LogsBeyondShards {
                        dir: dir.to_path_buf(),
                        highest,
                        needed: highest + 1,
                        configured: shards,
                    });
                }
            }
            write_meta(dir, shards).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes `meta.json` (this format, `shards`) atomically: a crash leaves
/// the old one or the new one.
fn write_meta(dir: &Path, shards: usize) -> std::io::Result<()> {
    let meta = serde_json::json!({"format": DATA_FORMAT, "shards": shards});
    let tmp = dir.join("meta.json.tmp");
    std::fs::write(&tmp, meta.to_string())?;
    std::fs::rename(&tmp, dir.join("meta.json"))?;
    sync_dir(dir)
}

/// The highest shard number with a non-empty log (`shard-N.wal`) in `dir`.
fn highest_shard_log(dir: &Path) -> std::io::Result<Option<usize>> {
    let mut highest = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.metadata()?.len() > 0 {
            highest = highest.max(Some(n));
        }
    }
    Ok(highest)
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The log file of one shard.
pub fn log_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}.wal"))
}

/// What start-up recovery found in one shard's log.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The live facts, in the order they were last written.
    pub entries: Vec<DurableEntry>,
    pub records: usize,
    pub torn_bytes: u64,
    pub valid_bytes: u64,
}

/// Replays a shard's log (blocking, before the shard serves): last write
/// per key wins. A torn tail is cut off the file; corruption in the middle
/// is an error.
pub fn recover(path: &Path) -> Result<Recovered, StoreError> {
    let io = |source| StoreError::Io {
        dir: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(e) => return Err(io(e)),
    };
    let read = record::read_all(&bytes).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if read.torn_bytes > 0 {
        log::warn!(
            "log {}: cut {} bytes of a torn last record (a crash during a write)",
            path.display(),
            read.torn_bytes
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        file.set_len(read.valid_bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let records = read.records.len();
    let mut order: Vec<String> = Vec::new();
    let mut live: HashMap<String, DurableEntry> = HashMap::new();
    for r in read.records {
        match r {
            WalRecord::Upsert { key, entry } => {
                if live.insert(key.clone(), entry).is_none() {
                    order.push(key);
                }
            }
            WalRecord::Remove { key } => {
                live.remove(&key);
            }
        }
    }
    let entries = order.into_iter().filter_map(|k| live.remove(&k)).collect();
    Ok(Recovered {
        entries,
        records,
        torn_bytes: read.torn_bytes,
        valid_bytes: read.valid_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::record::{encode, StoredMsg, WalRecord};
    use super::*;
    use crate::protocol::Priority;
    use crate::routing::envelope::{MessageBody, MessageParts};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ws-uring-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn upsert(key: &str, id: &str) -> WalRecord {
        WalRecord::Upsert {
            key: key.into(),
            entry: DurableEntry::Mailbox {
                user: "u".into(),
                msg: StoredMsg::from_parts(
                    &MessageParts {
                        id: id.into(),
                        from: "a".into(),
                        to: Some("u".into()),
                        group: None,
                        priority: Priority::Normal,
                        ts_unix_ms: 1,
                        ack: false,
                        expires_unix_ms: None,
                        body: MessageBody::Json("1".into()),
                    },
                    1024,
                ),
            },
        }
    }

    #[test]
    fn without_meta_the_logs_guard_the_shard_count() {
        let dir = temp_dir("no-meta");
        prepare_data_dir(&dir, 2).unwrap();
        std::fs::write(log_path(&dir, 1), b"x").unwrap();
        std::fs::write(log_path(&dir, 2), b"").unwrap();
        std::fs::remove_file(dir.join("meta.json")).unwrap();
        let refused = prepare_data_dir(&dir, 1).unwrap_err().to_string();
        assert!(
            refused.contains("shard 1") && refused.contains("--shards 2"),
            "{refused}"
        );
        assert!(!dir.join("meta.json").exists());
        // Enough shards to read every log (an empty one does not count).
        prepare_data_dir(&dir, 2).unwrap();
        let file = dir.join("meta.json");
        let refused = prepare_data_dir(&file, 2).unwrap_err().to_string();
        assert!(refused.ends_with("is not a directory"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_format_1_directory_is_marked_2_and_a_newer_one_refused() {
        let dir = temp_dir("format");
        std::fs::create_dir_all(&dir).unwrap();
        let meta = dir.join("meta.json");
        std::fs::write(&meta, r#"{"format":1,"shards":2}"#).unwrap();
        prepare_data_dir(&dir, 2).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
        assert_eq!(written, serde_json::json!({"format": 2, "shards": 2}));
        std::fs::write(&meta, r#"{"format":3,"shards":2}"#).unwrap();
        let err = prepare_data_dir(&dir, 2).unwrap_err().to_string();
        assert!(err.contains("format 3 is newer"), "{err}");
        std::fs::write(&meta, r#"{"format":"x","shards":2}"#).unwrap();
        let err = prepare_data_dir(&dir, 2).unwrap_err().to_string();
        assert!(err.contains("1 to 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn meta_guards_the_shard_count() {
        let dir = temp_dir("meta");
        prepare_data_dir(&dir, 3).unwrap();
        prepare_data_dir(&dir, 3).unwrap();
        let err = prepare_data_dir(&dir, 2).unwrap_err().to_string();
        assert!(err.contains("--shards 3"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_keeps_the_last_write_and_cuts_a_torn_tail() {
        let dir = temp_dir("recover");
        std::fs::create_dir_all(&dir).unwrap();
        let path = log_path(&dir, 0);
        let mut log = Vec::new();
        encode(&upsert("m/u/1", "1"), &mut log);
        encode(&upsert("m/u/2", "2"), &mut log);
        encode(
            &WalRecord::Remove {
                key: "m/u/1".into(),
            },
            &mut log,
        );
        encode(&upsert("m/u/3", "3"), &mut log);
        let whole = log.len();
        log.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &log).unwrap();
        let r = recover(&path).unwrap();
        assert_eq!(r.records, 4);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.torn_bytes, 6);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            whole as u64,
            "torn tail cut"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corruption_in_the_middle_stops_recovery() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = log_path(&dir, 0);
        let mut log = Vec::new();
        encode(&upsert("m/u/1", "1"), &mut log);
        encode(&upsert("m/u/2", "2"), &mut log);
        log[12] ^= 0xff;
        std::fs::write(&path, &log).unwrap();
        let err = recover(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("record 0"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
