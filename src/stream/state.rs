//! Operator state: a key range of RocksDB seen through an in-memory cache.
//!
//! An operator reads and writes its state only through its own
//! [`StateTable`] (keys under `s<mv id><node id>`). Writes stay in the cache
//! as dirty entries until the next barrier, when [`StateTable::take_dirty`]
//! hands them to the checkpoint: state is written at most once per key per
//! epoch. Clean entries are evicted when the process-wide cache budget is
//! exceeded, but only once the checkpoint that wrote them is durable, so a
//! read that misses the cache always finds the current value in RocksDB.
//!
//! The cache also knows which keys RocksDB holds no value for (a read that
//! found nothing, or a key written with [`StateTable::put_new`]): a key
//! that appears and goes away between two checkpoints (a join row expired
//! by the watermark within the epoch it arrived in) is then never written,
//! not even as a tombstone, and leaves the cache at once.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rocksdb::DB;

use super::{StateWrite, StreamResult};
use crate::state::StateError;
use crate::state::keys::prefix_end;

/// Drops from a list of keys changed since the last barrier the ones no
/// longer changed (forgotten since: written and gone within the epoch) and
/// the repeats, once it has at least `min` keys and more than twice `live`
/// (the keys still held). An epoch can be long (a new view's backfill is
/// one), and such lists would otherwise grow with every key it saw.
pub fn compact_key_list(list: &mut Vec<Vec<u8>>, min: usize, live: usize, changed: impl Fn(&[u8]) -> bool) {
    if list.len() < min || list.len() <= 2 * live {
        return;
    }
    list.retain(|k| changed(k));
    list.sort_unstable();
    list.dedup();
}

/// Shared by every state table: the memory budget and the last durable
/// epoch.
#[derive(Debug)]
pub struct CacheBudget {
    pub budget_bytes: usize,
    pub used_bytes: AtomicUsize,
    pub committed_epoch: AtomicU64,
}

impl CacheBudget {
    pub fn new(budget_bytes: usize) -> Arc<Self> {
        Arc::new(Self { budget_bytes, used_bytes: AtomicUsize::new(0), committed_epoch: AtomicU64::new(0) })
    }

    /// Counts a cache growing by `add` bytes and shrinking by `sub`.
    pub fn adjust(&self, add: usize, sub: usize) {
        if add >= sub {
            self.used_bytes.fetch_add(add - sub, Ordering::Relaxed);
        } else {
            let less = sub - add;
            let _ = self.used_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(less)));
        }
    }

    pub fn over(&self) -> bool {
        self.used_bytes.load(Ordering::Relaxed) > self.budget_bytes
    }
}

struct Entry {
    value: Option<Vec<u8>>,
    dirty: bool,
    /// RocksDB may hold a value for the key (or will, once a checkpoint
    /// handed over commits): a deletion must be written.
    durable: bool,
    /// The epoch whose checkpoint wrote this value (0: read from RocksDB).
    epoch: u64,
}

/// B-tree node share, two Vec headers and malloc rounding per entry.
const ENTRY_OVERHEAD: usize = 112;

fn entry_size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

pub struct StateTable {
    db: Arc<DB>,
    prefix: Vec<u8>,
    cache: BTreeMap<Vec<u8>, Entry>,
    dirty: Vec<Vec<u8>>,
    bytes: usize,
    budget: Arc<CacheBudget>,
    /// Prefixes whose every live key is in the cache (after a full scan);
    /// cleared whenever anything is evicted.
    complete: std::collections::HashSet<Vec<u8>, foldhash::fast::RandomState>,
    evict_memo: EvictMemo,
}

/// When an eviction pass last left a cache over budget: the next pass
/// waits until it could free more (a checkpoint made more entries clean,
/// or the cache grew by a quarter), so that an operator whose entries are
/// all dirty does not walk its whole cache on every batch.
#[derive(Default)]
pub struct EvictMemo(Option<(u64, usize)>);

impl EvictMemo {
    /// Whether a pass over a cache of `bytes` is worth it now.
    pub fn worth_trying(&self, committed: u64, bytes: usize) -> bool {
        self.0.is_none_or(|(epoch, at)| committed != epoch || bytes > at + at / 4)
    }

    /// Records the outcome of a pass.
    pub fn record(&mut self, committed: u64, bytes: usize, still_over: bool) {
        self.0 = still_over.then_some((committed, bytes));
    }

    /// One eviction pass over a cache of `*bytes`, when the shared budget
    /// is exceeded and a pass could free something: `evict(committed,
    /// target)` drops clean entries whose checkpoint is durable (epoch at
    /// or below `committed`) until `target` bytes (half the cache) are
    /// freed, and returns how many were. The cache's count and the
    /// budget are updated here.
    pub fn pass(&mut self, budget: &CacheBudget, bytes: &mut usize, evict: impl FnOnce(u64, usize) -> usize) {
        if !budget.over() {
            return;
        }
        let committed = budget.committed_epoch.load(Ordering::Relaxed);
        if !self.worth_trying(committed, *bytes) {
            return;
        }
        let target = *bytes / 2;
        let freed = evict(committed, target);
        *bytes = bytes.saturating_sub(freed);
        budget.adjust(0, freed);
        // Only a pass that ran out of candidates is worth remembering.
        self.record(committed, *bytes, budget.over() && freed < target);
    }
}

impl StateTable {
    pub fn new(db: Arc<DB>, prefix: Vec<u8>, budget: Arc<CacheBudget>) -> Self {
        Self {
            db,
            prefix,
            cache: BTreeMap::new(),
            dirty: Vec::new(),
            bytes: 0,
            budget,
            complete: Default::default(),
            evict_memo: EvictMemo::default(),
        }
    }

    /// The stored value of `key` as of the last checkpoint, bypassing (and
    /// not filling) the cache: for operators that cache decoded values
    /// themselves.
    pub fn read_committed(&self, key: &[u8]) -> StreamResult<Option<Vec<u8>>> {
        Ok(self.db.get(self.full_key(key)).map_err(StateError::from)?)
    }

    /// The shared memory budget.
    pub fn budget(&self) -> &Arc<CacheBudget> {
        &self.budget
    }

    /// Like [`StateTable::get`], but a key under a fully cached `prefix`
    /// that is not in the cache is known to be absent (no RocksDB read).
    pub fn get_under(&mut self, prefix: &[u8], key: &[u8]) -> StreamResult<Option<Vec<u8>>> {
        if let Some(e) = self.cache.get(key) {
            return Ok(e.value.clone());
        }
        if self.complete.contains(prefix) {
            return Ok(None);
        }
        self.get(key)
    }

    /// Whether every live key under `prefix` is in the cache.
    pub fn is_complete(&self, prefix: &[u8]) -> bool {
        self.complete.contains(prefix)
    }

    /// Records that no key exists under `prefix` (the caller knows it, e.g.
    /// from a count of zero), so that reads under it need no RocksDB read.
    pub fn mark_complete(&mut self, prefix: &[u8]) {
        self.complete.insert(prefix.to_vec());
    }

    /// Loads every key under `prefix` into the cache, once.
    pub fn ensure_complete(&mut self, prefix: &[u8]) -> StreamResult<()> {
        if !self.complete.contains(prefix) {
            self.scan_all(prefix)?;
        }
        Ok(())
    }

    /// Every live `(key, value)` under `prefix`, caching them all so that
    /// later scans and [`StateTable::get_under`] of this prefix need no
    /// RocksDB read.
    pub fn scan_all(&mut self, prefix: &[u8]) -> StreamResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.complete.contains(prefix) {
            return self.scan_prefix(prefix, usize::MAX);
        }
        let found = self.scan_prefix(prefix, usize::MAX)?;
        for (k, v) in &found {
            if !self.cache.contains_key(k) {
                let value = Some(v.clone());
                let size = entry_size(k, &value);
                self.cache.insert(k.clone(), Entry { value, dirty: false, durable: true, epoch: 0 });
                self.account(size, 0);
            }
        }
        self.complete.insert(prefix.to_vec());
        Ok(found)
    }

    pub fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn account(&mut self, add: usize, sub: usize) {
        self.bytes = (self.bytes + add).saturating_sub(sub);
        self.budget.adjust(add, sub);
    }

    /// The current value of `key`.
    pub fn get(&mut self, key: &[u8]) -> StreamResult<Option<Vec<u8>>> {
        if let Some(e) = self.cache.get(key) {
            return Ok(e.value.clone());
        }
        let value = self.db.get(self.full_key(key)).map_err(StateError::from)?;
        let size = entry_size(key, &value);
        let durable = value.is_some();
        self.cache.insert(key.to_vec(), Entry { value: value.clone(), dirty: false, durable, epoch: 0 });
        self.account(size, 0);
        Ok(value)
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.set(key, Some(value));
    }

    /// Like [`StateTable::put`] for a key the caller knows RocksDB holds
    /// no value for and no checkpoint is writing (absent from a complete
    /// prefix, or a key whose existence another key implies): if it goes
    /// away before the next barrier, nothing is written for it.
    pub fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if self.cache.contains_key(&key) {
            return self.set(key, Some(value));
        }
        let value = Some(value);
        let size = entry_size(&key, &value);
        self.cache.insert(key.clone(), Entry { value, dirty: true, durable: false, epoch: 0 });
        self.mark_dirty(key);
        self.account(size, 0);
    }

    /// Lists a key as written since the last barrier. Keys forgotten since
    /// (written and deleted within the epoch) leave the list once it is
    /// mostly theirs: an epoch can be long (a new view's backfill is one).
    fn mark_dirty(&mut self, key: Vec<u8>) {
        self.dirty.push(key);
        let cache = &self.cache;
        compact_key_list(&mut self.dirty, 65_536, cache.len(), |k| cache.get(k).is_some_and(|e| e.dirty));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = entry_size(&key, &value);
        match self.cache.get_mut(&key) {
            Some(e) if value.is_none() && !e.durable && e.epoch == 0 => {
                // Never handed to a checkpoint and not in RocksDB: forget it
                // (a read now finds nothing in RocksDB, which is right).
                let old = entry_size(&key, &e.value);
                self.cache.remove(&key);
                self.account(0, old);
            }
            Some(e) => {
                let old = entry_size(&key, &e.value);
                e.value = value;
                let mark = !e.dirty;
                e.dirty = true;
                self.account(size, old);
                if mark {
                    self.mark_dirty(key);
                }
            }
            None => {
                self.cache.insert(key.clone(), Entry { value, dirty: true, durable: true, epoch: 0 });
                self.mark_dirty(key);
                self.account(size, 0);
            }
        }
    }

    /// Every live `(key, value)` whose key starts with `prefix`, in key
    /// order, at most `limit` of them: RocksDB merged with the cache.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> StreamResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if self.complete.contains(prefix) {
            let end = prefix_end(prefix);
            return Ok(self
                .cache
                .range::<[u8], _>((Bound::Included(prefix), Bound::Excluded(end.as_slice())))
                .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), v)))
                .take(limit)
                .collect());
        }
        // An empty prefix is the whole table (no key is above its end).
        let end = (!prefix.is_empty()).then(|| prefix_end(prefix));
        self.scan_range(prefix, end.as_deref(), limit)
    }

    /// Every live `(key, value)` with `from <= key < to` (`None`: to the
    /// end of the table), in key order, at most `limit` of them: RocksDB
    /// merged with the cache.
    pub fn scan_range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> StreamResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit == 0 || to.is_some_and(|t| from >= t) {
            return Ok(out);
        }
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(match to {
            Some(t) => self.full_key(t),
            None => prefix_end(&self.prefix),
        });
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(self.full_key(from));
        let plen = self.prefix.len();
        let upper = match to {
            Some(t) => Bound::Excluded(t),
            None => Bound::Unbounded,
        };
        let mut cached = self.cache.range::<[u8], _>((Bound::Included(from), upper)).peekable();
        loop {
            let db_key = if it.valid() { it.key().map(|k| &k[plen..]) } else { None };
            let cache_key = cached.peek().map(|(k, _)| k.as_slice());
            let (key, value) = match (db_key, cache_key) {
                (None, None) => break,
                (Some(d), Some(c)) if c <= d => {
                    let (k, e) = cached.next().ok_or(StateError::Corrupt("cache"))?;
                    if c == d {
                        it.next();
                    }
                    (k.clone(), e.value.clone())
                }
                (Some(d), _) => {
                    let v = it.value().map(<[u8]>::to_vec);
                    let k = d.to_vec();
                    it.next();
                    (k, v)
                }
                (None, Some(_)) => {
                    let (k, e) = cached.next().ok_or(StateError::Corrupt("cache"))?;
                    (k.clone(), e.value.clone())
                }
            };
            if let Some(v) = value {
                out.push((key, v));
                if out.len() >= limit {
                    break;
                }
            }
        }
        it.status().map_err(StateError::from)?;
        Ok(out)
    }

    /// Keys stored as of the last checkpoint in `[from, to)` (relative to
    /// the table's prefix), bypassing the cache: for operators that keep
    /// their own cache over the same keys.
    pub fn committed_keys(&self, from: &[u8], to: &[u8]) -> StreamResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.committed_range(from, to, usize::MAX, |k, _| out.push(k.to_vec()))?;
        Ok(out)
    }

    /// Like [`StateTable::committed_keys`], with values, for the keys
    /// under `prefix` (at most `limit` of them).
    pub fn committed_prefix(&self, prefix: &[u8], limit: usize) -> StreamResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.committed_range(prefix, &prefix_end(prefix), limit, |k, v| out.push((k.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    /// Visits up to `limit` stored `(key, value)` in `[from, to)`, keys
    /// relative to the table's prefix.
    fn committed_range(&self, from: &[u8], to: &[u8], limit: usize, mut visit: impl FnMut(&[u8], &[u8])) -> StreamResult<()> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(self.full_key(to));
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(self.full_key(from));
        let plen = self.prefix.len();
        let mut seen = 0;
        while it.valid() && seen < limit {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                visit(&k[plen..], v);
                seen += 1;
            }
            it.next();
        }
        it.status().map_err(StateError::from)?;
        Ok(())
    }

    /// Hands this epoch's writes to the checkpoint and marks them clean.
    pub fn take_dirty(&mut self, epoch: u64) -> Vec<StateWrite> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut writes = Vec::with_capacity(dirty.len());
        let prefix = &self.prefix;
        let mut take = |key: &[u8], e: &mut Entry| {
            if !e.dirty {
                return;
            }
            e.dirty = false;
            // Evictable once this epoch commits (also when nothing is
            // written: an earlier tombstone may still be on its way).
            e.epoch = epoch;
            if e.value.is_none() && !e.durable {
                return;
            }
            // After a tombstone RocksDB holds nothing for the key.
            e.durable = e.value.is_some();
            let mut full = Vec::with_capacity(prefix.len() + key.len());
            full.extend_from_slice(prefix);
            full.extend_from_slice(key);
            writes.push((full, e.value.clone()));
        };
        if dirty.len().saturating_mul(4) >= self.cache.len() {
            // Most of the cache is dirty: one ordered pass costs less than
            // a B-tree search per key.
            for (k, e) in self.cache.iter_mut() {
                take(k, e);
            }
        } else {
            for key in dirty {
                if let Some(e) = self.cache.get_mut(&key) {
                    take(&key, e);
                }
            }
        }
        writes
    }

    /// Evicts clean, durable entries while the shared budget is exceeded.
    pub fn evict_if_needed(&mut self) {
        let (cache, complete) = (&mut self.cache, &mut self.complete);
        self.evict_memo.pass(&self.budget, &mut self.bytes, |committed, target| {
            let mut freed = 0usize;
            let mut victims = Vec::new();
            for (k, e) in cache.iter() {
                if freed >= target {
                    break;
                }
                if !e.dirty && e.epoch <= committed {
                    freed += entry_size(k, &e.value);
                    victims.push(k.clone());
                }
            }
            if !victims.is_empty() {
                complete.clear();
            }
            for k in victims {
                cache.remove(&k);
            }
            freed
        });
    }

    /// The full key range of this table, for deleting it.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl Drop for StateTable {
    fn drop(&mut self) {
        self.budget.adjust(0, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare RocksDB (no writer thread: nothing outlives the test to
    /// race the process's exit).
    fn open() -> (tempfile::TempDir, Arc<DB>) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = DB::open_default(dir.path().join("db")).expect("db");
        (dir, Arc::new(db))
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn scan_merges_cache_over_rocksdb_and_respects_deletes() {
        let (_dir, db) = open();
        for (k, v) in [("pa1", "x"), ("pa2", "y"), ("pb1", "z")] {
            db.put(format!("S{k}"), v).expect("put");
        }
        let mut t = StateTable::new(db, b"S".to_vec(), CacheBudget::new(1 << 20));
        t.put(b"pa3".to_vec(), b"w".to_vec());
        t.delete(b"pa1".to_vec());
        t.put(b"pa2".to_vec(), b"Y".to_vec());
        assert_eq!(t.scan_prefix(b"pa", usize::MAX).expect("scan"), kv(&[("pa2", "Y"), ("pa3", "w")]));
        assert_eq!(t.scan_prefix(b"pa", 1).expect("scan"), kv(&[("pa2", "Y")]));
        assert_eq!(t.get(b"pb1").expect("get"), Some(b"z".to_vec()));
        assert_eq!(t.get(b"pa1").expect("get"), None);
    }

    #[test]
    fn keys_that_come_and_go_within_an_epoch_are_never_written() {
        let (_dir, db) = open();
        db.put(b"Sold", b"x").expect("put");
        let mut t = StateTable::new(db, b"S".to_vec(), CacheBudget::new(1 << 20));
        // Known absent (put_new, or a read that found nothing): no tombstone.
        t.put_new(b"a".to_vec(), b"1".to_vec());
        t.delete(b"a".to_vec());
        assert_eq!(t.get(b"b").expect("get"), None);
        t.put(b"b".to_vec(), b"2".to_vec());
        t.delete(b"b".to_vec());
        // Unknown or stored: the deletion is written.
        t.put(b"c".to_vec(), b"3".to_vec());
        t.delete(b"c".to_vec());
        t.delete(b"old".to_vec());
        assert_eq!(t.take_dirty(1), vec![(b"Sc".to_vec(), None), (b"Sold".to_vec(), None)]);
        // Written at a checkpoint, then deleted: a tombstone.
        t.put_new(b"d".to_vec(), b"4".to_vec());
        assert_eq!(t.take_dirty(2), vec![(b"Sd".to_vec(), Some(b"4".to_vec()))]);
        t.delete(b"d".to_vec());
        assert_eq!(t.take_dirty(3), vec![(b"Sd".to_vec(), None)]);
        // Back and gone again within one epoch after that tombstone: the
        // tombstone already covers it.
        t.put(b"d".to_vec(), b"5".to_vec());
        t.delete(b"d".to_vec());
        assert_eq!(t.take_dirty(4), vec![]);
        assert_eq!(t.get(b"d").expect("get"), None);
    }

    #[test]
    fn dirty_entries_survive_eviction_until_their_checkpoint_commits() {
        let (_dir, db) = open();
        let budget = CacheBudget::new(0); // always over budget
        let mut t = StateTable::new(db.clone(), b"S".to_vec(), budget.clone());
        t.put(b"k".to_vec(), b"v1".to_vec());
        t.evict_if_needed();
        assert_eq!(t.get(b"k").expect("get"), Some(b"v1".to_vec()), "dirty entries are never evicted");
        let writes = t.take_dirty(7);
        assert_eq!(writes, vec![(b"Sk".to_vec(), Some(b"v1".to_vec()))]);
        t.evict_if_needed();
        assert_eq!(t.get(b"k").expect("get"), Some(b"v1".to_vec()), "epoch 7 is not durable yet");
        // The checkpoint commits: write it and publish the epoch.
        db.put(b"Sk", b"v1").expect("put");
        budget.committed_epoch.store(7, Ordering::SeqCst);
        t.evict_if_needed();
        assert_eq!(t.get(b"k").expect("get"), Some(b"v1".to_vec()), "read back from RocksDB");
    }

    #[test]
    fn complete_prefixes_answer_from_the_cache_until_an_eviction() {
        let (_dir, db) = open();
        db.put(b"Sp1", b"a").expect("put");
        let budget = CacheBudget::new(1 << 20);
        let mut t = StateTable::new(db.clone(), b"S".to_vec(), budget);
        assert_eq!(t.scan_all(b"p").expect("scan"), kv(&[("p1", "a")]));
        // Written behind the table's back: a complete prefix does not see it.
        db.put(b"Sp2", b"b").expect("put");
        assert_eq!(t.get_under(b"p", b"p2").expect("get"), None);
        t.mark_complete(b"q");
        assert_eq!(t.get_under(b"q", b"q1").expect("get"), None);
    }
}
