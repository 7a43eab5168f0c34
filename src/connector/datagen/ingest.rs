//! The ingest thread of a datagen source or table, and the regeneration of
//! its rows for a new view (backfill) and for `SELECT` on a source.
//!
//! The thread makes the rows that are due at `datagen.rows.per.second`
//! since it started (so a restart does not burst to catch up), at most
//! [`CHUNK_ROWS`] at a time (a source: [`SOURCE_RANGE_ROWS`]), and writes
//! each chunk — the rows (a table) or one change-log entry naming the
//! range of rows (a source: the stream
//! engine generates them from it, see [`crate::state::log`]), plus the next
//! row index as the offset of partition 0 — in one atomic write. With a rate the write path cannot
//! keep up with it simply writes chunks back to back. A bounded source
//! (a sequence column) ends its thread after the last row.

use crate::connector::reader::{lock, sleep_unless};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use rocksdb::DB;

use super::{CHUNK_ROWS, Generator};
use crate::catalog::Table;
use crate::connector::kafka::ingest::IngestHandle;
use crate::connector::metrics::SourceStats;
use crate::connector::{ConnectorError, ConnectorResult};
use crate::state::row::encode_row;
use crate::state::{StateError, WriterHandle, keys};

/// The most rows one log entry of a source names. A range entry is a few
/// bytes however many rows it names, and each write is a synced commit:
/// at 30M rows per second, ranges of [`CHUNK_ROWS`] made 1,900 syncs per
/// second (a fifth of the process's CPU went to syncing and switching
/// threads). The stream engine makes a range's rows in batches of
/// [`CHUNK_ROWS`]; only a backlog makes ranges this long. Not longer: the
/// engine reads at least one entry at a time, so this also bounds the
/// rows it makes ahead of the operators (256k-row ranges cost a
/// pass-through 20 MB more peak memory and no speed).
const SOURCE_RANGE_ROWS: usize = 1 << 16;

/// How long the thread waits when no row is due.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// Validates a batch for the table (types, NOT NULL, lengths).
pub type CheckFn = Arc<dyn Fn(&Table, &RecordBatch) -> Result<RecordBatch, String> + Send + Sync>;
/// The table's storage key of a row (primary key or a new row id).
pub type RowKeyFn = Arc<dyn Fn(&Table, &RecordBatch, usize) -> Result<Vec<u8>, StateError> + Send + Sync>;

/// What the thread needs.
pub struct Ingest {
    pub table: Arc<Table>,
    pub generator: Generator,
    pub db: Arc<DB>,
    pub writer: WriterHandle,
    pub stats: Arc<Mutex<SourceStats>>,
    pub runtime: tokio::runtime::Handle,
    pub check: CheckFn,
    pub row_key: RowKeyFn,
}

/// The next row index of a datagen source as stored (0 before any row).
pub fn stored_offset(read: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>, table_id: u64) -> ConnectorResult<u64> {
    let key = keys::source_offset_key(keys::META_SOURCE_OFFSET_PREFIX, table_id, 0);
    let value = read(&key).map_err(StateError::from)?;
    Ok(match value.as_deref().and_then(|v| v.get(..8)).and_then(|v| <[u8; 8]>::try_from(v).ok()) {
        Some(b) => u64::try_from(i64::from_be_bytes(b)).unwrap_or(0),
        None => 0,
    })
}

/// Starts the thread.
pub fn spawn(ingest: Ingest) -> IngestHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let name = format!("eddy-datagen-{}", ingest.table.name());
    let (source, stats) = (ingest.table.name().to_string(), ingest.stats.clone());
    crate::connector::reader::spawn(name, source, stats, stop.clone(), move |flag| run(&ingest, flag));
    IngestHandle::new(stop)
}


/// Runs until stopped, dropped or (bounded) done; `Err` to start over from
/// the stored offset.
fn run(ingest: &Ingest, stop: &AtomicBool) -> ConnectorResult<()> {
    let table = &ingest.table;
    let generator = &ingest.generator;
    let mut offset = stored_offset(|k| ingest.db.get(k), table.id())?;
    let (first, started) = (offset, Instant::now());
    let rate = u128::from(generator.rows_per_second);
    {
        let mut stats = lock(&ingest.stats);
        let p = stats.partitions.entry(0).or_default();
        p.offset = offset as i64;
        p.end_offset = generator.limit.map(|l| l as i64);
    }
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let limit = generator.limit.unwrap_or(u64::MAX);
        if offset >= limit {
            return Ok(()); // a bounded source is done
        }
        let due = first.saturating_add(u64::try_from(started.elapsed().as_nanos() * rate / 1_000_000_000).unwrap_or(u64::MAX));
        let due = due.min(limit);
        if due <= offset {
            sleep_unless(stop, IDLE_WAIT);
            continue;
        }
        let max = if table.def.source { SOURCE_RANGE_ROWS } else { CHUNK_ROWS };
        let n = (due - offset).min(max as u64) as usize;
        let chunk = if table.def.source {
            // A source stores no rows: its log entry is the range, and the
            // stream engine makes the rows from it.
            Chunk::Range(offset, n as u32)
        } else {
            let batch = generator.generate(offset, n)?;
            Chunk::Rows((ingest.check)(table, &batch).map_err(ConnectorError::Option)?)
        };
        let next = offset + chunk.len() as u64;
        if !write_chunk(ingest, chunk, next)? {
            return Ok(()); // the table was dropped
        }
        let mut stats = lock(&ingest.stats);
        stats.last_error = None;
        let p = stats.partitions.entry(0).or_default();
        p.rows_read += next - offset;
        p.offset = next as i64;
        offset = next;
    }
}

/// What one write adds: a table's rows, or a source's range of rows.
enum Chunk {
    Rows(RecordBatch),
    Range(u64, u32),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Rows(b) => b.num_rows(),
            Chunk::Range(_, n) => *n as usize,
        }
    }
}

/// One atomic write: the rows (or the source's log entry) and the next
/// row index.
fn write_chunk(ingest: &Ingest, chunk: Chunk, next: u64) -> ConnectorResult<bool> {
    let table = ingest.table.clone();
    let row_key = ingest.row_key.clone();
    let written = ingest.runtime.block_on(ingest.writer.write(false, move |txn| {
        let id = table.id();
        if txn.get(&keys::meta_table_key(id))?.is_none() {
            return Err(StateError::rejected("42P01", format!("relation \"{}\" was dropped", table.name())));
        }
        match &chunk {
            Chunk::Range(from, n) => txn.log_append_generated(id, *from, *n),
            Chunk::Rows(batch) => {
                let mut capacity = 64;
                for row in 0..batch.num_rows() {
                    let mut value = Vec::with_capacity(capacity);
                    encode_row(batch.columns(), row, &mut value)?;
                    capacity = capacity.max(value.len());
                    txn.put(row_key(&table, batch, row)?, value);
                }
            }
        }
        let offset = i64::try_from(next).unwrap_or(i64::MAX);
        txn.put(keys::source_offset_key(keys::META_SOURCE_OFFSET_PREFIX, id, 0), offset.to_be_bytes().to_vec());
        Ok(chunk.len() as u64)
    }));
    match written {
        Ok(_) => Ok(true),
        Err(StateError::Rejected { sqlstate: "42P01", .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Rows `[0, end)` in batches of [`CHUNK_ROWS`].
fn chunks(generator: &Generator, end: u64) -> impl Iterator<Item = ConnectorResult<RecordBatch>> + '_ {
    let end = generator.limit.map_or(end, |l| l.min(end));
    (0..end).step_by(CHUNK_ROWS).map(move |from| generator.generate(from, (end - from).min(CHUNK_ROWS as u64) as usize))
}

/// Fills a new view from a datagen source: the rows before the offset in
/// `snapshot` (the change log after the snapshot holds the rest).
pub fn backfill_source(
    snapshot: &rocksdb::Snapshot<'_>,
    table: &Table,
    projection: Option<&[usize]>,
    out: &mut dyn FnMut(RecordBatch) -> crate::stream::StreamResult<()>,
) -> crate::stream::StreamResult<()> {
    let fail = |e: ConnectorError| crate::stream::StreamError::Failed(format!("regenerating source {}: {e}", table.name()));
    let end = stored_offset(|k| snapshot.get(k), table.id()).map_err(fail)?;
    let generator = Generator::for_table(table).map_err(fail)?;
    for batch in chunks(&generator, end) {
        let batch = batch.map_err(fail)?;
        out(match projection {
            Some(p) => batch.project(p)?,
            None => batch,
        })?;
    }
    Ok(())
}

/// `SELECT` on a datagen source: every row generated so far. Blocking.
pub fn read_now(db: &DB, table: &Table) -> ConnectorResult<Vec<RecordBatch>> {
    let end = stored_offset(|k| db.get(k), table.id())?;
    let generator = Generator::for_table(table)?;
    chunks(&generator, end).collect()
}
