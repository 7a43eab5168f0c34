//! `state/`: everything eddy keeps on disk, in one RocksDB instance.
//!
//! Owns the data directory (and its lock file), the key encoding
//! ([`keys`]), the row codec ([`row`]), snapshot scans ([`scan`]) and the
//! single writer that applies every mutation with group commit
//! ([`writer`]), and the Kafka sources' rows handed to the stream engine
//! in memory next to the change log entries that name them ([`held`]).
//! Invariant: a write is acknowledged only after the WAL holding it has
//! been synced to disk.

pub mod held;
pub mod keys;
pub mod log;
pub mod row;
pub mod scan;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{DB, Options};

pub use writer::{Txn, WriterHandle};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "data directory {path} is in use by another eddy process; stop it or choose another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("type {0} cannot be stored yet")]
    UnsupportedType(String),
    #[error("a primary key value is NULL")]
    NullKey,
    #[error("arrow error: {0}")]
    Arrow(String),
    #[error("the storage writer has stopped")]
    WriterGone,
    /// A write was refused by its own validation (unique or not-null
    /// violation, a bad value): carries the SQLSTATE to report.
    #[error("{message}")]
    Rejected { sqlstate: &'static str, message: String },
}

impl StateError {
    pub fn rejected(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self::Rejected { sqlstate, message: message.into() }
    }
}

pub type StateResult<T> = Result<T, StateError>;

/// The open data directory: the RocksDB instance, its lock, its writer.
pub struct Store {
    db: Arc<DB>,
    writer: WriterHandle,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the data directory. Fails with
    /// [`StateError::Locked`] if another process holds it.
    pub fn open(data_dir: &Path, group_commit_max: usize) -> StateResult<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StateError::DataDir { path: data_dir.to_path_buf(), source })?;
        let lock_path = data_dir.join("eddy.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::DataDir { path: lock_path.clone(), source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked { path: data_dir.to_path_buf() });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateError::DataDir { path: lock_path, source });
            }
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Bloom filters make a lookup of a key that does not exist (a new
        // group, a new join key, a unique check) cheap; a block cache keeps
        // hot state blocks decompressed. Index and filter blocks stay with
        // their table readers (about 10 bits per key): caching them in the
        // block cache made every lookup re-read whole filter blocks once the
        // data outgrew the cache.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(64 << 20));
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(32 << 20);
        // Large values (a sink's outbox of an epoch: megabytes of Arrow IPC)
        // go to blob files when the memtable is flushed, so compactions do
        // not decompress and rewrite them over and over; blob GC reclaims
        // the files of published (deleted) outboxes.
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(256 << 10);
        opts.set_enable_blob_gc(true);
        let db = Arc::new(DB::open(&opts, data_dir.join("db"))?);
        let last_log = Self::last_key_in(&db, &[keys::LOG_PREFIX])?.and_then(|k| keys::log_seq(&k));
        let checkpoint = read_checkpoint(&db)?;
        let last_seq = last_log.unwrap_or(0).max(checkpoint.seq);
        let writer = writer::spawn(db.clone(), group_commit_max, last_seq);
        Ok(Self { db, writer, _lock: lock })
    }

    /// The last complete checkpoint (zeros before the first).
    pub fn checkpoint(&self) -> StateResult<Checkpoint> {
        read_checkpoint(&self.db)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// Reads every value whose key starts with `prefix` (catalog loading).
    pub fn scan_prefix(&self, prefix: &[u8]) -> StateResult<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_prefix(self.db.raw_iterator(), prefix)
    }

    /// The last key under `prefix`, if any (used to resume row-id counters).
    pub fn last_key_with_prefix(&self, prefix: &[u8]) -> StateResult<Option<Vec<u8>>> {
        Self::last_key_in(&self.db, prefix)
    }

    fn last_key_in(db: &DB, prefix: &[u8]) -> StateResult<Option<Vec<u8>>> {
        let mut it = db.raw_iterator();
        it.seek_for_prev(keys::prefix_end(prefix));
        let found = match it.key() {
            Some(k) if k.starts_with(prefix) => Some(k.to_vec()),
            _ => None,
        };
        it.status()?;
        Ok(found)
    }
}

/// A complete checkpoint: every operator's state as of `epoch`, which has
/// consumed the change log up to and including `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch: u64,
    pub seq: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.epoch.to_be_bytes().to_vec();
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }
}

fn read_checkpoint(db: &DB) -> StateResult<Checkpoint> {
    match db.get(keys::META_CHECKPOINT)? {
        None => Ok(Checkpoint::default()),
        Some(v) if v.len() == 16 => {
            let mut e = [0u8; 8];
            let mut s = [0u8; 8];
            e.copy_from_slice(&v[..8]);
            s.copy_from_slice(&v[8..]);
            Ok(Checkpoint { epoch: u64::from_be_bytes(e), seq: u64::from_be_bytes(s) })
        }
        Some(_) => Err(StateError::Corrupt("checkpoint record")),
    }
}

/// Every `(key, value)` under `prefix`, read with `it` (from the database
/// or a snapshot).
pub fn scan_prefix<D: rocksdb::DBAccess>(
    mut it: rocksdb::DBRawIteratorWithThreadMode<'_, D>,
    prefix: &[u8],
) -> StateResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    it.seek(prefix);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
        it.next();
    }
    it.status()?;
    Ok(out)
}
