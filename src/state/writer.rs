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

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::{StateError, StateResult};

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
}

/// A staged view of the store for one write closure.
pub struct Txn<'a> {
    db: &'a DB,
    group: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
    staged: HashMap<Vec<u8>, Option<Vec<u8>>>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
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
        Ok(self.db.get(key)?)
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
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

/// Starts the writer thread. `group_max` bounds the requests in one group.
pub fn spawn(db: Arc<DB>, group_max: usize) -> WriterHandle {
    let (tx, rx) = mpsc::channel::<Request>(4096);
    let spawned = std::thread::Builder::new()
        .name("eddy-writer".into())
        .spawn(move || run(db, rx, group_max.max(1)));
    if let Err(e) = spawned {
        // Without a writer every write fails with WriterGone; say why.
        tracing::error!("could not start the storage writer thread: {e}");
    }
    WriterHandle { tx }
}

struct Group {
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    acks: Vec<(oneshot::Sender<StateResult<u64>>, u64)>,
}

impl Group {
    fn new() -> Self {
        Self { batch: WriteBatch::default(), overlay: HashMap::new(), acks: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

fn run(db: Arc<DB>, mut rx: mpsc::Receiver<Request>, group_max: usize) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    while let Some(first) = rx.blocking_recv() {
        let mut group = Group::new();
        apply(&db, &mut group, first, &sync);
        while group.acks.len() < group_max {
            let Ok(next) = rx.try_recv() else { break };
            if next.scans && !group.is_empty() {
                commit(&db, std::mem::replace(&mut group, Group::new()), &sync);
            }
            apply(&db, &mut group, next, &sync);
        }
        commit(&db, group, &sync);
    }
    tracing::debug!("storage writer stopped");
}

fn apply(db: &DB, group: &mut Group, req: Request, sync: &WriteOptions) {
    if req.scans && !group.is_empty() {
        commit(db, std::mem::replace(group, Group::new()), sync);
    }
    let mut txn = Txn { db, group: &group.overlay, staged: HashMap::new(), ranges: Vec::new() };
    // A panic in a closure (a bug, or in a function evaluated for
    // ON CONFLICT) fails that statement only; the writer keeps running.
    let work = req.work;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut txn)))
        .unwrap_or_else(|_| Err(StateError::rejected("XX000", "internal error while writing; the statement was not applied")));
    let Txn { staged, ranges, .. } = txn;
    match result {
        Ok(value) => {
            for (from, to) in &ranges {
                group.batch.delete_range(from, to);
            }
            for (k, v) in staged {
                match &v {
                    Some(val) => group.batch.put(&k, val),
                    None => group.batch.delete(&k),
                }
                group.overlay.insert(k, v);
            }
            group.acks.push((req.reply, value));
            if !ranges.is_empty() {
                // The overlay cannot express a range delete: make it durable
                // now so later closures read it from RocksDB.
                commit(db, std::mem::replace(group, Group::new()), sync);
            }
        }
        Err(e) => {
            let _ = req.reply.send(Err(e));
        }
    }
}

fn commit(db: &DB, group: Group, sync: &WriteOptions) {
    if group.acks.is_empty() {
        return;
    }
    match db.write_opt(group.batch, sync) {
        Ok(()) => {
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
