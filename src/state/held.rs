//! Rows of Kafka-source log entries handed to the stream engine in
//! memory.
//!
//! A Kafka source stores no rows: what the stream engine needs from its
//! change log is the decoded messages of each chunk. Writing them into the
//! log cost every message a row encoding, a pass through RocksDB's WAL,
//! memtable and flushes, and a decoding back into Arrow (a fifth of a
//! Kafka pass-through's CPU). Instead the log entry names the messages —
//! per partition the offsets `[from, to)` (see [`super::log`]) — and the
//! decoded batch waits here, keyed by the entry's sequence number, until
//! the stream coordinator takes it. The entry and the source's offsets
//! still commit in one atomic write, so the log stays the one order of
//! every change; only the rows' bytes skip the disk.
//!
//! After a restart (or whenever a batch is not here) the coordinator
//! reads the named offsets from Kafka again through the source's
//! registered [`Refetch`], as Flink and RisingWave re-read a topic from a
//! checkpoint's offsets; so the messages of the last second before a
//! crash must still be in the topic (Kafka's retention is days by
//! default). The ingest thread waits while more than [`HELD_BYTES`] are
//! held (backpressure: a backlog stays in Kafka, not in memory).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;

/// The decoded bytes held at most before ingest threads wait.
pub const HELD_BYTES: usize = 48 << 20;

/// Reads a source's messages in `ranges` (partition, from, to: exclusive)
/// again and decodes them as its ingest did. Blocking.
pub type Refetch = Arc<dyn Fn(&[(i32, i64, i64)]) -> Result<RecordBatch, String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// `(log sequence number, table id)` → the batches of that entry's
    /// held changes of the table, in log order.
    batches: HashMap<(u64, u64), Vec<RecordBatch>>,
    bytes: usize,
    refetch: HashMap<u64, Refetch>,
}

/// The batches waiting for the stream coordinator, and the readers that
/// make them again.
#[derive(Default)]
pub struct HeldRows {
    inner: Mutex<Inner>,
    taken: Condvar,
}

impl HeldRows {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the batches of entry `seq` (the writer, once it is durable;
    /// the stream coordinator, putting back what a failed read took).
    pub fn insert(&self, seq: u64, held: Vec<(u64, RecordBatch)>) {
        if held.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (table_id, batch) in held {
            inner.bytes += batch.get_array_memory_size();
            inner.batches.entry((seq, table_id)).or_default().push(batch);
        }
    }

    /// Takes the next held batch of `table_id` in entry `seq`, if it is
    /// here.
    pub fn take(&self, seq: u64, table_id: u64) -> Option<RecordBatch> {
        let mut inner = self.lock();
        let list = inner.batches.get_mut(&(seq, table_id))?;
        let batch = (!list.is_empty()).then(|| list.remove(0));
        if list.is_empty() {
            inner.batches.remove(&(seq, table_id));
        }
        if let Some(b) = &batch {
            inner.bytes = inner.bytes.saturating_sub(b.get_array_memory_size());
            self.taken.notify_all();
        }
        batch
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits until at most [`HELD_BYTES`] are held, or `timeout` passed;
    /// returns whether there is room.
    pub fn wait_for_room(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while inner.bytes > HELD_BYTES {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = match self.taken.wait_timeout(inner, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Registers how to read source `table_id`'s messages again.
    pub fn set_refetch(&self, table_id: u64, refetch: Refetch) {
        self.lock().refetch.insert(table_id, refetch);
    }

    /// Forgets a dropped source.
    pub fn remove_source(&self, table_id: u64) {
        let mut inner = self.lock();
        inner.refetch.remove(&table_id);
        let gone: Vec<(u64, u64)> = inner.batches.keys().filter(|k| k.1 == table_id).copied().collect();
        for k in gone {
            if let Some(list) = inner.batches.remove(&k) {
                let freed: usize = list.iter().map(RecordBatch::get_array_memory_size).sum();
                inner.bytes = inner.bytes.saturating_sub(freed);
            }
        }
        self.taken.notify_all();
    }

    /// The reader of source `table_id`, if registered.
    pub fn refetch(&self, table_id: u64) -> Option<Refetch> {
        self.lock().refetch.get(&table_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from_iter_values(0..n)) as _)]).expect("batch")
    }

    #[test]
    fn batches_come_out_in_order_once_and_free_their_bytes() {
        let held = HeldRows::default();
        held.insert(7, vec![(1, batch(3)), (2, batch(4)), (1, batch(5))]);
        assert!(held.bytes() > 0);
        assert_eq!(held.take(7, 1).map(|b| b.num_rows()), Some(3));
        assert_eq!(held.take(7, 1).map(|b| b.num_rows()), Some(5));
        assert!(held.take(7, 1).is_none());
        assert!(held.take(8, 2).is_none());
        held.remove_source(2);
        assert_eq!(held.bytes(), 0);
        assert!(held.take(7, 2).is_none());
        assert!(held.wait_for_room(Duration::from_millis(1)));
    }
}
