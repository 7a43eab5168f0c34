//! One side of a join's state, held decoded in memory: per join key, its
//! degree (how many rows have the key) and, once needed, its rows with
//! their multiplicities.
//!
//! RocksDB keeps the layout the join has always written (`[side, 0, len,
//! key, row]` → multiplicity, `[side, 1, key]` → degree); this index is the
//! hot set over it. Changes stay in memory until the barrier, which writes
//! each changed row and degree once. Whole keys are evicted, clean ones
//! whose checkpoint is durable, while the shared state budget is exceeded,
//! so a key that is not in memory has its current state in RocksDB.
//!
//! Why not the generic [`StateTable`] cache: its ordered map of whole
//! encoded keys cost every row several B-tree searches comparing long
//! shared prefixes (most of the join's time in the join-view benchmark);
//! here a row costs a hash lookup of its key and one of its bytes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::stream::rows::{decode_count, encode_count, push_len_prefixed};
use crate::stream::state::{CacheBudget, EvictMemo, StateTable, compact_key_list};
use crate::stream::{StateWrite, StreamError, StreamResult};

pub const ROWS_TAG: u8 = 0;
pub const DEGREE_TAG: u8 = 1;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A side with at most this many join keys has all its degrees in memory,
/// so that looking up a key it lacks (most keys, when a stream meets a
/// small aggregate) costs no RocksDB read and caches nothing.
const SMALL_SIDE_KEYS: usize = 16_384;

/// Approximate heap bytes of a cached key and of a cached row (hash table
/// entries, the key or row allocation, malloc rounding).
const SLOT_OVERHEAD: usize = 160;
const ROW_OVERHEAD: usize = 64;

struct Row {
    count: i64,
    /// RocksDB may hold a multiplicity for the row: a deletion is written.
    durable: bool,
    dirty: bool,
}

struct Slot {
    degree: i64,
    degree_durable: bool,
    /// `None`: not loaded (RocksDB holds them as they are).
    rows: Option<FastMap<Vec<u8>, Row>>,
    /// Rows changed since the last barrier.
    changed: Vec<Vec<u8>>,
    dirty: bool,
    /// The epoch whose checkpoint wrote this key last (0: read only).
    epoch: u64,
    bytes: usize,
}

impl Slot {
    /// No rows under the key (a slot whose rows are not loaded is empty
    /// only if its degree says so).
    fn is_empty(&self) -> bool {
        self.degree == 0 && self.rows.as_ref().is_none_or(|r| r.is_empty())
    }

    fn new(key: &[u8], degree: i64) -> Self {
        Slot {
            degree,
            degree_durable: degree > 0,
            rows: None,
            changed: Vec::new(),
            dirty: false,
            epoch: 0,
            bytes: key.len() + SLOT_OVERHEAD,
        }
    }
}

pub struct SideIndex {
    side: u8,
    slots: FastMap<Vec<u8>, Slot>,
    /// Keys changed since the last barrier.
    dirty: Vec<Vec<u8>>,
    bytes: usize,
    budget: Arc<CacheBudget>,
    /// Every key of this side with rows is in `slots` (a small side,
    /// loaded whole): a key not there has none. Cleared by an eviction.
    complete: bool,
    /// The side had more than [`SMALL_SIDE_KEYS`] keys when last counted
    /// (this epoch): its degrees are read key by key.
    large: bool,
    evict_memo: EvictMemo,
    /// Keys left without rows by a barrier that wrote their deletion:
    /// dropped from memory once that checkpoint is durable.
    emptied: Vec<(u64, Vec<u8>)>,
}

impl SideIndex {
    pub fn new(side: usize, budget: Arc<CacheBudget>) -> Self {
        Self {
            side: side as u8,
            slots: FastMap::default(),
            dirty: Vec::new(),
            bytes: 0,
            budget,
            complete: false,
            large: false,
            evict_memo: EvictMemo::default(),
            emptied: Vec::new(),
        }
    }

    /// The stored key of a row (relative to the join's state prefix).
    pub fn row_key(&self, key: &[u8], row: &[u8]) -> Vec<u8> {
        let mut k = self.rows_prefix(key);
        k.extend_from_slice(row);
        k
    }

    fn rows_prefix(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 6);
        k.extend_from_slice(&[self.side, ROWS_TAG]);
        push_len_prefixed(&mut k, key);
        k
    }

    fn degree_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 2);
        k.extend_from_slice(&[self.side, DEGREE_TAG]);
        k.extend_from_slice(key);
        k
    }

    fn account(&mut self, add: usize, sub: usize) {
        self.bytes = (self.bytes + add).saturating_sub(sub);
        self.budget.adjust(add, sub);
    }

    fn insert_slot(&mut self, key: &[u8], slot: Slot) {
        self.account(slot.bytes, 0);
        self.slots.insert(key.to_vec(), slot);
    }

    /// How many rows have `key` (0 for a key the side lacks).
    pub fn degree(&mut self, state: &StateTable, key: &[u8]) -> StreamResult<i64> {
        if let Some(s) = self.slots.get(key) {
            return Ok(s.degree);
        }
        if !self.complete && !self.large {
            self.load_if_small(state)?;
            if let Some(s) = self.slots.get(key) {
                return Ok(s.degree);
            }
        }
        if self.complete {
            return Ok(0);
        }
        let degree = match state.read_committed(&self.degree_key(key))? {
            Some(v) => decode_count(&v)?,
            None => 0,
        };
        self.insert_slot(key, Slot::new(key, degree));
        Ok(degree)
    }

    /// Loads every degree of the side if it has few keys (see
    /// [`SMALL_SIDE_KEYS`]). Keys already in memory are newer than RocksDB;
    /// every other key's state there is current.
    fn load_if_small(&mut self, state: &StateTable) -> StreamResult<()> {
        let prefix = [self.side, DEGREE_TAG];
        let found = state.committed_prefix(&prefix, SMALL_SIDE_KEYS + 1)?;
        if found.len() > SMALL_SIDE_KEYS {
            self.large = true;
            return Ok(());
        }
        for (k, v) in found {
            let key = &k[prefix.len()..];
            if !self.slots.contains_key(key) {
                let degree = decode_count(&v)?;
                self.insert_slot(key, Slot::new(key, degree));
            }
        }
        self.complete = true;
        Ok(())
    }

    /// Makes sure `key`'s rows are in memory.
    fn load_rows(&mut self, state: &StateTable, key: &[u8]) -> StreamResult<()> {
        let degree = self.degree(state, key)?;
        match self.slots.get(key) {
            Some(s) if s.rows.is_some() => return Ok(()),
            Some(_) => {}
            // A complete side lacks the key: it has no rows.
            None => self.insert_slot(key, Slot::new(key, 0)),
        }
        let mut rows = FastMap::default();
        let mut added = 0;
        if degree > 0 {
            let prefix = self.rows_prefix(key);
            for (k, v) in state.committed_prefix(&prefix, usize::MAX)? {
                let row = k[prefix.len()..].to_vec();
                added += row.len() + ROW_OVERHEAD;
                rows.insert(row, Row { count: decode_count(&v)?, durable: true, dirty: false });
            }
        }
        let slot = self.slots.get_mut(key).ok_or_else(|| StreamError::Corrupt("join key slot".into()))?;
        slot.rows = Some(rows);
        slot.bytes += added;
        self.account(added, 0);
        Ok(())
    }

    /// `key`'s rows with a positive multiplicity.
    pub fn rows(&mut self, state: &StateTable, key: &[u8]) -> StreamResult<Vec<(Vec<u8>, i64)>> {
        self.load_rows(state, key)?;
        Ok(self
            .slots
            .get(key)
            .and_then(|s| s.rows.as_ref())
            .map(|rows| rows.iter().filter(|(_, r)| r.count > 0).map(|(k, r)| (k.clone(), r.count)).collect())
            .unwrap_or_default())
    }

    /// The multiplicity of `row` under `key`.
    pub fn count(&mut self, state: &StateTable, key: &[u8], row: &[u8]) -> StreamResult<i64> {
        self.load_rows(state, key)?;
        Ok(self.slots.get(key).and_then(|s| s.rows.as_ref()).and_then(|r| r.get(row)).map_or(0, |r| r.count))
    }

    /// Adds `delta` to the multiplicity of `row` under `key` and to the
    /// key's degree; returns the row's multiplicity before and after.
    pub fn add(&mut self, state: &StateTable, key: &[u8], row: &[u8], delta: i64) -> StreamResult<(i64, i64)> {
        if !self.slots.get(key).is_some_and(|s| s.rows.is_some()) {
            self.load_rows(state, key)?;
        }
        let slot = self.slots.get_mut(key).ok_or_else(|| StreamError::Corrupt("join key slot".into()))?;
        let rows = slot.rows.as_mut().ok_or_else(|| StreamError::Corrupt("join rows".into()))?;
        let mut added = 0;
        let entry = match rows.get_mut(row) {
            Some(e) => e,
            None => {
                added = row.len() + ROW_OVERHEAD;
                rows.entry(row.to_vec()).or_insert(Row { count: 0, durable: false, dirty: false })
            }
        };
        let old = entry.count;
        entry.count += delta;
        let new = entry.count;
        let mut freed = 0;
        if new == 0 && !entry.durable {
            // Came and went since the last barrier: nothing to write for
            // it (`take_dirty` skips rows no longer in the map).
            rows.remove(row);
            freed = row.len() + ROW_OVERHEAD;
        } else if !entry.dirty {
            entry.dirty = true;
            slot.changed.push(row.to_vec());
            // Rows listed, gone and listed again within a long epoch.
            compact_key_list(&mut slot.changed, 1024, rows.len(), |r| rows.get(r).is_some_and(|e| e.dirty));
        }
        slot.degree += delta;
        slot.bytes = (slot.bytes + added).saturating_sub(freed);
        let emptied = slot.degree == 0;
        self.account(added, freed);
        if emptied && self.forgettable(key) {
            // Nothing of the key to write and nothing of it in RocksDB:
            // forget it now, not at the barrier (an epoch can be long: a
            // new view's backfill is one).
            if let Some(slot) = self.slots.remove(key) {
                self.account(0, slot.bytes);
            }
            return Ok((old, new));
        }
        let Some(slot) = self.slots.get_mut(key) else { return Ok((old, new)) };
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key.to_vec());
            let slots = &self.slots;
            compact_key_list(&mut self.dirty, 65_536, slots.len(), |k| slots.get(k).is_some_and(|s| s.dirty));
        }
        Ok((old, new))
    }

    /// Whether `key` has no rows and RocksDB holds nothing of it, as of
    /// its last durable checkpoint and of every write on its way (so that
    /// a read after forgetting it finds the truth there). Only small keys
    /// are looked at: the check reads every row in memory.
    fn forgettable(&self, key: &[u8]) -> bool {
        let committed = self.budget.committed_epoch.load(std::sync::atomic::Ordering::Relaxed);
        self.slots.get(key).is_some_and(|s| {
            s.degree == 0
                && !s.degree_durable
                && s.epoch <= committed
                && s.rows.as_ref().is_some_and(|rows| rows.len() <= 64 && rows.values().all(|r| r.count == 0 && !r.durable))
        })
    }

    /// Hands this epoch's changes to the checkpoint: each changed row's
    /// multiplicity (or its deletion) and each changed key's degree.
    ///
    /// A key left with no rows leaves memory too, or a stream joined on a
    /// key that keeps changing (q7's prices) would keep one empty entry per
    /// key it ever saw: at once if nothing of it was ever written (its rows
    /// came and went within the epoch), else once the checkpoint that
    /// deletes it is durable (until then RocksDB still holds it).
    pub fn take_dirty(&mut self, state: &StateTable, epoch: u64) -> Vec<StateWrite> {
        let mut writes = Vec::new();
        let mut freed = 0;
        let committed = self.budget.committed_epoch.load(std::sync::atomic::Ordering::Relaxed);
        let mut emptied = std::mem::take(&mut self.emptied);
        emptied.retain(|(e, key)| {
            if *e > committed {
                return true;
            }
            if self.slots.get(key).is_some_and(|s| s.is_empty() && !s.dirty && s.epoch <= committed) {
                if let Some(slot) = self.slots.remove(key) {
                    freed += slot.bytes;
                }
            }
            false
        });
        self.emptied = emptied;
        for key in std::mem::take(&mut self.dirty) {
            let degree_key = state.full_key(&self.degree_key(&key));
            let prefix = state.full_key(&self.rows_prefix(&key));
            let written = writes.len();
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            slot.dirty = false;
            slot.epoch = epoch;
            if slot.degree > 0 {
                writes.push((degree_key, Some(encode_count(slot.degree))));
                slot.degree_durable = true;
            } else if slot.degree_durable {
                writes.push((degree_key, None));
                slot.degree_durable = false;
            }
            let Some(rows) = slot.rows.as_mut() else { continue };
            for row in std::mem::take(&mut slot.changed) {
                let Some(r) = rows.get_mut(&row) else { continue };
                r.dirty = false;
                let mut k = Vec::with_capacity(prefix.len() + row.len());
                k.extend_from_slice(&prefix);
                k.extend_from_slice(&row);
                if r.count > 0 {
                    r.durable = true;
                    writes.push((k, Some(encode_count(r.count))));
                } else {
                    if r.durable {
                        writes.push((k, None));
                    }
                    rows.remove(&row);
                    let size = row.len() + ROW_OVERHEAD;
                    slot.bytes -= size.min(slot.bytes);
                    freed += size;
                }
            }
            if slot.is_empty() {
                if writes.len() == written {
                    freed += slot.bytes;
                    self.slots.remove(&key);
                } else {
                    self.emptied.push((epoch, key));
                }
            }
        }
        self.account(0, freed);
        writes
    }

    /// Drops clean keys whose checkpoint is durable while the shared
    /// budget is exceeded.
    pub fn evict_if_needed(&mut self) {
        let (slots, complete) = (&mut self.slots, &mut self.complete);
        self.evict_memo.pass(&self.budget, &mut self.bytes, |committed, target| {
            let mut freed = 0usize;
            slots.retain(|_, slot| {
                if freed >= target || slot.dirty || slot.epoch > committed {
                    return true;
                }
                freed += slot.bytes;
                false
            });
            if freed > 0 {
                *complete = false;
            }
            freed
        });
    }

    /// Forgets the count of keys made at the last barrier: a side may have
    /// shrunk (watermark expiry), so it is counted again.
    pub fn recount(&mut self) {
        self.large = false;
    }

    /// Rows with a positive multiplicity in memory (tests).
    #[cfg(test)]
    pub fn live_rows(&self) -> usize {
        self.slots.values().filter_map(|s| s.rows.as_ref()).map(|r| r.values().filter(|r| r.count > 0).count()).sum()
    }
}

impl Drop for SideIndex {
    fn drop(&mut self) {
        self.budget.adjust(0, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn open() -> (tempfile::TempDir, Arc<rocksdb::DB>) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = rocksdb::DB::open_default(dir.path().join("db")).expect("db");
        (dir, Arc::new(db))
    }

    /// Changes are written once per row and key at the barrier, read back
    /// from RocksDB after an eviction, and a row that comes and goes
    /// within an epoch writes nothing.
    #[test]
    fn rows_and_degrees_round_trip_through_rocksdb() {
        let (_dir, db) = open();
        let budget = CacheBudget::new(0); // always over budget
        let state = StateTable::new(db.clone(), b"j".to_vec(), budget.clone());
        let mut side = SideIndex::new(1, budget.clone());
        assert_eq!(side.add(&state, b"k", b"r1", 1).unwrap(), (0, 1));
        assert_eq!(side.add(&state, b"k", b"r1", 1).unwrap(), (1, 2));
        assert_eq!(side.add(&state, b"k", b"r2", 1).unwrap(), (0, 1));
        assert_eq!(side.add(&state, b"k", b"r2", -1).unwrap(), (1, 0));
        assert_eq!(side.degree(&state, b"k").unwrap(), 2);
        let writes = side.take_dirty(&state, 1);
        assert_eq!(writes.len(), 2, "the degree and r1, nothing for r2: {writes:?}");
        for (k, v) in &writes {
            db.put(k, v.as_ref().unwrap()).unwrap();
        }
        budget.committed_epoch.store(1, Ordering::SeqCst);
        side.evict_if_needed();
        assert_eq!(side.live_rows(), 0, "evicted");

        assert_eq!(side.rows(&state, b"k").unwrap(), vec![(b"r1".to_vec(), 2)]);
        assert_eq!(side.add(&state, b"k", b"r1", -2).unwrap(), (2, 0));
        let writes = side.take_dirty(&state, 2);
        assert!(writes.iter().all(|(_, v)| v.is_none()), "the row and the degree deleted: {writes:?}");
        assert_eq!(writes.len(), 2);
        assert_eq!(side.degree(&state, b"k").unwrap(), 0);
        assert_eq!(side.degree(&state, b"other").unwrap(), 0);
    }

    /// Keys left without rows leave memory: at once when nothing of them
    /// was written, after the deleting checkpoint is durable otherwise.
    #[test]
    fn empty_keys_are_forgotten() {
        let (_dir, db) = open();
        let budget = CacheBudget::new(usize::MAX);
        let state = StateTable::new(db.clone(), b"j".to_vec(), budget.clone());
        let mut side = SideIndex::new(0, budget.clone());
        side.add(&state, b"brief", b"r", 1).unwrap();
        side.add(&state, b"brief", b"r", -1).unwrap();
        assert!(!side.slots.contains_key(b"brief".as_slice()), "forgotten before the barrier");
        side.add(&state, b"kept", b"r", 1).unwrap();
        for (k, v) in side.take_dirty(&state, 1) {
            db.put(k, v.unwrap()).unwrap();
        }
        assert!(!side.slots.contains_key(b"brief".as_slice()), "came and went within the epoch");
        budget.committed_epoch.store(1, Ordering::SeqCst);
        side.add(&state, b"kept", b"r", -1).unwrap();
        let writes = side.take_dirty(&state, 2);
        assert_eq!(writes.len(), 2, "the row and the degree deleted: {writes:?}");
        assert!(side.slots.contains_key(b"kept".as_slice()), "RocksDB holds it until checkpoint 2 is durable");
        for (k, _) in writes {
            db.delete(k).unwrap();
        }
        budget.committed_epoch.store(2, Ordering::SeqCst);
        assert!(side.take_dirty(&state, 3).is_empty());
        assert!(!side.slots.contains_key(b"kept".as_slice()));
        assert_eq!(side.degree(&state, b"kept").unwrap(), 0);
        assert_eq!(side.bytes, 0, "memory accounted back");
    }
}
