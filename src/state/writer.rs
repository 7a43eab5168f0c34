//! The single writer: every mutation of the store goes through here.
//!
//! Callers send a closure that reads and stages writes through a [`Txn`].
//! One dedicated thread runs the closures one after another, so a
//! read-check-write (a unique check, an `ON CONFLICT`) never races another
//! writer. Closures that arrive while a sync is in progress join the next
//! group: the thread stages all of them into one `WriteBatch`, writes it
//! with `sync = true` once, and only then acknowledges every member
//! (group commit). A closure that fails has its staged writes discarded and
//! is answered at once; it never affects the others in its group.
//!
//! A closure that needs a range scan (UPDATE, DELETE, DROP) declares it;
//! the writer commits the open group first so that the scan sees every
//! earlier write in RocksDB itself.
//!
//! **Change log.** For tables that materialized views read ("logged"
//! tables), the writer turns each successful closure's net row changes into
//! one change-log entry `l<seq>` (see [`crate::state::log`]) written in the
//! same `WriteBatch` as the rows themselves, so the log and the tables can
//! never disagree after a crash. Every table change passes here in commit
//! order, which is what makes the log complete without any cooperation
//! from the statements that write. After each durable commit the highest
//! committed sequence number is published on a watch channel.
//!
//! **Held rows.** A Kafka source's chunk is logged as the offsets it read,
//! its decoded rows handed over in memory ([`super::held`]): the writer
//! puts them there once the entry is durable, before publishing its
//! sequence number, so the stream engine finds them when it reads the
//! entry.

use std::collections::HashSet;

/// Maps keyed by storage keys, with a fast (non-DoS-resistant) hasher: the
/// keys are eddy's own.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot, watch};

use datafusion::arrow::array::RecordBatch;

use super::held::HeldRows;
use super::log::LogEntryBuilder;
use super::{StateError, StateResult, keys};

type Work = Box<dyn FnOnce(&mut Txn<'_>) -> StateResult<u64> + Send>;

struct Request {
    scans: bool,
    work: Work,
    reply: oneshot::Sender<StateResult<u64>>,
}

/// Sends work to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
    committed: watch::Receiver<u64>,
    held: Arc<HeldRows>,
}

impl WriterHandle {
    /// Runs `work` on the writer thread and resolves once its writes are
    /// durable. `scans` must be true if `work` iterates over key ranges.
    /// Returns what `work` returned (by convention a row count).
    pub async fn write<F>(&self, scans: bool, work: F) -> StateResult<u64>
    where
        F: FnOnce(&mut Txn<'_>) -> StateResult<u64> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { scans, work: Box::new(work), reply })
            .await
            .map_err(|_| StateError::WriterGone)?;
        rx.await.map_err(|_| StateError::WriterGone)?
    }

    /// The highest change-log sequence number that is durable.
    pub fn committed_seq(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Rows of committed log entries held in memory for the stream
    /// engine.
    pub fn held(&self) -> &Arc<HeldRows> {
        &self.held
    }
}

/// A staged view of the store for one write closure.
pub struct Txn<'a> {
    db: &'a DB,
    group: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
    staged: HashMap<Vec<u8>, Option<Vec<u8>>>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Writes that no other closure reads through a `Txn` (operator state,
    /// view rows): straight into the batch, no staging.
    direct: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Lists of such writes, shared with a caller that may retry them
    /// (a checkpoint): copied into the batch, never cloned.
    shared: Vec<Arc<Vec<(Vec<u8>, Option<Vec<u8>>)>>>,
    logged: &'a mut HashSet<u64>,
    /// Values of logged-table keys read from RocksDB by this closure: the
    /// change log needs each key's value before the closure, and most
    /// writes have just read it (a unique check) — no second read.
    preimages: std::cell::RefCell<HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Rows appended to a source's change log without being stored (with
    /// their weight: 1, or [`super::log::GENERATED`] for a range).
    appended: Vec<(u64, i8, Vec<u8>)>,
    /// Rows of the [`super::log::HELD`] changes in `appended`, by table.
    held: Vec<(u64, RecordBatch)>,
    /// Table rows whose keys the closure proved absent ([`Txn::insert_new`]).
    fresh: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Txn<'_> {
    /// Reads a key, seeing this closure's own writes and those of earlier
    /// closures in the same (not yet synced) group.
    pub fn get(&self, key: &[u8]) -> StateResult<Option<Vec<u8>>> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.group.get(key) {
            return Ok(v.clone());
        }
        let value = self.db.get(key)?;
        if keys::table_id_of(key).is_some_and(|t| self.logged.contains(&t)) {
            self.preimages.borrow_mut().insert(key.to_vec(), value.clone());
        }
        Ok(value)
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// Inserts a table row whose key is stored nowhere (the caller checked
    /// with [`Txn::first_present`], or the key is a new hidden row id, and
    /// the closure writes it once): no read, no staging; the change log
    /// gets it as an insert. The group holding a closure that inserts this
    /// way is committed right after it, so later closures read its rows
    /// from RocksDB. For bulk writes (COPY, large INSERTs).
    pub fn insert_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.fresh.push((key, value));
    }

    /// The position of the first of `keys` (sorted ascending) that holds a
    /// value: written by this closure, by an earlier one of the group, or
    /// stored. One iterator walks RocksDB alongside the keys (a seek where
    /// they jump), instead of a point read per key.
    pub fn first_present(&self, keys: &[&[u8]]) -> StateResult<Option<usize>> {
        // What this closure and the group wrote decides first.
        let written = |k: &[u8]| self.staged.get(k).or_else(|| self.group.get(k));
        if !self.staged.is_empty() || !self.group.is_empty() {
            if let Some(i) = keys.iter().position(|k| matches!(written(k), Some(Some(_)))) {
                return Ok(Some(i));
            }
        }
        let Some(first) = keys.first() else { return Ok(None) };
        let mut it = self.db.raw_iterator();
        it.seek(first);
        let mut i = 0;
        while i < keys.len() {
            let Some(stored) = it.key() else { break };
            match stored.cmp(keys[i]) {
                std::cmp::Ordering::Equal => {
                    // Unless an earlier closure of the group deleted it.
                    if written(keys[i]).is_none() {
                        return Ok(Some(i));
                    }
                    i += 1;
                }
                std::cmp::Ordering::Less => it.seek(keys[i]),
                std::cmp::Ordering::Greater => i += keys[i..].partition_point(|k| *k < stored),
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Writes a key that no closure reads back through a `Txn` (checkpoint
    /// state): cheaper than [`Txn::put`], invisible to [`Txn::get`].
    pub fn put_direct(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.direct.push((key, value));
    }

    /// [`Txn::put_direct`] for a shared list of writes, applied in order.
    pub fn put_direct_all(&mut self, writes: Arc<Vec<(Vec<u8>, Option<Vec<u8>>)>>) {
        self.shared.push(writes);
    }

    /// Appends a row (`+1`) of source `table_id` to the change log without
    /// storing it (a source keeps no rows); dropped when no view reads
    /// the source.
    pub fn log_append(&mut self, table_id: u64, row: Vec<u8>) {
        if self.logged.contains(&table_id) {
            self.appended.push((table_id, 1, row));
        }
    }

    /// Appends rows `[from, from + n)` of generated source `table_id` to
    /// the change log as a range (see [`super::log`]).
    pub fn log_append_generated(&mut self, table_id: u64, from: u64, n: u32) {
        if self.logged.contains(&table_id) {
            self.appended.push((table_id, super::log::GENERATED, super::log::encode_range(from, n).to_vec()));
        }
    }

    /// Appends a chunk of Kafka source `table_id` to the change log: the
    /// offsets it read (`ranges`: partition, from, to), its rows held in
    /// memory for the stream engine (see [`super::held`]); dropped when
    /// no view reads the source.
    pub fn log_append_held(&mut self, table_id: u64, ranges: &[(i32, i64, i64)], rows: RecordBatch) {
        if self.logged.contains(&table_id) {
            let n = u32::try_from(rows.num_rows()).unwrap_or(u32::MAX);
            self.appended.push((table_id, super::log::HELD, super::log::encode_held(n, ranges)));
            self.held.push((table_id, rows));
        }
    }

    /// Appends a watermark marker of Kafka source or table `table_id` to
    /// the change log, after this closure's rows (see [`super::log`]).
    /// Returns whether it was logged (not when no view reads the table).
    pub fn log_watermark(&mut self, table_id: u64, value: i64) -> bool {
        let logged = self.logged.contains(&table_id);
        if logged {
            self.appended.push((table_id, super::log::WATERMARK, value.to_le_bytes().to_vec()));
        }
        logged
    }

    /// Starts (or stops) writing changes of table `table_id` to the change
    /// log, from the next closure on.
    pub fn set_logged(&mut self, table_id: u64, logged: bool) {
        if logged {
            self.logged.insert(table_id);
        } else {
            self.logged.remove(&table_id);
        }
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, from: Vec<u8>, to: Vec<u8>) {
        self.ranges.push((from, to));
    }

    /// Visits every stored `(key, value)` with `from <= key < to`, in order.
    /// Only valid in a closure sent with `scans = true`; writes staged by
    /// this closure are not visible to the scan.
    pub fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> StateResult<()>,
    ) -> StateResult<()> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            visit(k, v)?;
            it.next();
        }
        it.status()?;
        Ok(())
    }
}

/// Starts the writer thread. `group_max` bounds the requests in one group;
/// `last_seq` is the highest change-log sequence number already used.
pub fn spawn(db: Arc<DB>, group_max: usize, last_seq: u64) -> WriterHandle {
    let (tx, rx) = mpsc::channel::<Request>(4096);
    let (committed_tx, committed) = watch::channel(last_seq);
    let held = Arc::new(HeldRows::default());
    let log = Log { next_seq: last_seq + 1, logged: HashSet::new(), committed: committed_tx, held: held.clone() };
    let spawned = std::thread::Builder::new()
        .name("eddy-writer".into())
        .spawn(move || run(db, rx, group_max.max(1), log));
    if let Err(e) = spawned {
        // Without a writer every write fails with WriterGone; say why.
        tracing::error!("could not start the storage writer thread: {e}");
    }
    WriterHandle { tx, committed, held }
}

/// A write whose batch would pass this size reserves it whole.
const RESERVE_FROM_BYTES: usize = 1 << 20;

/// The writer thread's change-log state.
struct Log {
    next_seq: u64,
    logged: HashSet<u64>,
    committed: watch::Sender<u64>,
    held: Arc<HeldRows>,
}

struct Group {
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    acks: Vec<(oneshot::Sender<StateResult<u64>>, u64)>,
    /// The highest log sequence number written by this group, if any.
    last_seq: Option<u64>,
    /// Held rows of the group's entries, by sequence number.
    held: Vec<(u64, Vec<(u64, RecordBatch)>)>,
}

impl Group {
    fn new() -> Self {
        Self { batch: WriteBatch::default(), overlay: HashMap::default(), acks: Vec::new(), last_seq: None, held: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

fn run(db: Arc<DB>, mut rx: mpsc::Receiver<Request>, group_max: usize, mut log: Log) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    while let Some(first) = rx.blocking_recv() {
        let mut group = Group::new();
        apply(&db, &mut group, first, &sync, &mut log);
        while group.acks.len() < group_max {
            let Ok(next) = rx.try_recv() else { break };
            if next.scans && !group.is_empty() {
                commit(&db, std::mem::replace(&mut group, Group::new()), &sync, &log);
            }
            apply(&db, &mut group, next, &sync, &mut log);
        }
        commit(&db, group, &sync, &log);
    }
    tracing::debug!("storage writer stopped");
}

/// The net change a closure made to logged tables, as one log entry.
fn log_entry(
    db: &DB,
    overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>,
    staged: &HashMap<Vec<u8>, Option<Vec<u8>>>,
    logged: &HashSet<u64>,
    preimages: &HashMap<Vec<u8>, Option<Vec<u8>>>,
    appended: &[(u64, i8, Vec<u8>)],
    fresh: &[(Vec<u8>, Vec<u8>)],
) -> StateResult<Option<Vec<u8>>> {
    if logged.is_empty() {
        return Ok(None);
    }
    let mut entry = LogEntryBuilder::default();
    let marker = |w: &i8| *w == super::log::WATERMARK;
    for (table_id, weight, row) in appended.iter().filter(|a| !marker(&a.1)) {
        entry.push(*table_id, *weight, row);
    }
    let mut last: Option<(u64, bool)> = None;
    for (key, new) in fresh {
        let Some(id) = keys::table_id_of(key) else { continue };
        let on = match last {
            Some((l, on)) if l == id => on,
            _ => last.insert((id, logged.contains(&id))).1,
        };
        if on {
            entry.push(id, 1, new);
        }
    }
    for (key, new) in staged {
        let Some(table_id) = keys::table_id_of(key) else { continue };
        if !logged.contains(&table_id) {
            continue;
        }
        let old = match overlay.get(key) {
            Some(v) => v.clone(),
            None => match preimages.get(key) {
                Some(v) => v.clone(),
                None => db.get(key)?,
            },
        };
        if old == *new {
            continue;
        }
        if let Some(old) = old {
            entry.push(table_id, -1, &old);
        }
        if let Some(new) = new {
            entry.push(table_id, 1, new);
        }
    }
    // Watermark markers follow the rows they were computed from.
    for (table_id, weight, row) in appended.iter().filter(|a| marker(&a.1)) {
        entry.push(*table_id, *weight, row);
    }
    Ok(entry.finish())
}

fn apply(db: &DB, group: &mut Group, req: Request, sync: &WriteOptions, log: &mut Log) {
    if req.scans && !group.is_empty() {
        commit(db, std::mem::replace(group, Group::new()), sync, log);
    }
    let mut txn = Txn {
        db,
        group: &group.overlay,
        staged: HashMap::default(),
        direct: Vec::new(),
        shared: Vec::new(),
        ranges: Vec::new(),
        logged: &mut log.logged,
        preimages: Default::default(),
        appended: Vec::new(),
        held: Vec::new(),
        fresh: Vec::new(),
    };
    // A panic in a closure (a bug, or in a function evaluated for
    // ON CONFLICT) fails that statement only; the writer keeps running.
    let work = req.work;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut txn)))
        .unwrap_or_else(|_| Err(StateError::rejected("XX000", "internal error while writing; the statement was not applied")));
    let Txn { staged, ranges, preimages, direct, shared, appended, held, fresh, .. } = txn;
    let preimages = preimages.into_inner();
    let result = result.and_then(|value| {
        log_entry(db, &group.overlay, &staged, &log.logged, &preimages, &appended, &fresh).map(|entry| (value, entry))
    });
    match result {
        Ok((value, entry)) => {
            if group.batch.is_empty() {
                // A large write (a checkpoint, a bulk COPY) gets its batch
                // in one allocation: grown by doubling, the batch's buffer
                // was copied into fresh pages over and over (the writer
                // thread's main source of page faults).
                let put = |k: &[u8], v: Option<&Vec<u8>>| k.len() + v.map_or(0, Vec::len) + 11;
                let needed = entry.as_ref().map_or(0, |e| e.len() + 24)
                    + direct.iter().chain(shared.iter().flat_map(|w| w.iter())).map(|(k, v)| put(k, v.as_ref())).sum::<usize>()
                    + staged.iter().map(|(k, v)| put(k, v.as_ref())).sum::<usize>()
                    + fresh.iter().map(|(k, v)| put(k, Some(v))).sum::<usize>()
                    + ranges.iter().map(|(from, to)| from.len() + to.len() + 11).sum::<usize>();
                if needed > RESERVE_FROM_BYTES {
                    group.batch = WriteBatch::with_capacity_bytes(needed + 12);
                }
            }
            if let Some(entry) = entry {
                let seq = log.next_seq;
                log.next_seq += 1;
                group.batch.put(keys::log_key(seq), entry);
                group.last_seq = Some(seq);
                if !held.is_empty() {
                    group.held.push((seq, held));
                }
            }
            for (from, to) in &ranges {
                group.batch.delete_range(from, to);
            }
            for (k, v) in direct.iter().chain(shared.iter().flat_map(|w| w.iter())) {
                match v {
                    Some(val) => group.batch.put(k, val),
                    None => group.batch.delete(k),
                }
            }
            for (k, v) in staged {
                match &v {
                    Some(val) => group.batch.put(&k, val),
                    None => group.batch.delete(&k),
                }
                group.overlay.insert(k, v);
            }
            for (k, v) in &fresh {
                group.batch.put(k, v);
            }
            group.acks.push((req.reply, value));
            if !ranges.is_empty() || !fresh.is_empty() {
                // The overlay cannot express a range delete, and does not
                // hold fresh rows: make them durable now so later closures
                // read them from RocksDB.
                commit(db, std::mem::replace(group, Group::new()), sync, log);
            }
        }
        Err(e) => {
            let _ = req.reply.send(Err(e));
        }
    }
}

fn commit(db: &DB, group: Group, sync: &WriteOptions, log: &Log) {
    if group.acks.is_empty() {
        return;
    }
    match db.write_opt(group.batch, sync) {
        Ok(()) => {
            for (seq, held) in group.held {
                log.held.insert(seq, held);
            }
            if let Some(seq) = group.last_seq {
                log.committed.send_replace(seq);
            }
            for (reply, value) in group.acks {
                let _ = reply.send(Ok(value));
            }
        }
        Err(e) => {
            tracing::error!("group commit failed: {e}");
            for (reply, _) in group.acks {
                let _ = reply.send(Err(StateError::Rocks(e.clone())));
            }
        }
    }
}
