//! Filling a new view from what its inputs hold now (backfill).
//!
//! The coordinator takes a RocksDB snapshot and, on a blocking thread,
//! sends every input the rows it holds in that snapshot: a table's stored
//! rows, a view's rows (with their multiplicities), a source's messages
//! read again from Kafka, or a generated source's rows made again.
//!
//! **Watermarks in a generated source's backfill**: a datagen or Nexmark
//! source is made in order and costs nothing to log, so a view created a
//! while after its source backfills a long stretch of event time. Sent as
//! bare rows, all of it would reach the view before any watermark: every
//! window of the stretch stays open, and a join keeps all its rows, until
//! the backfill ends (a 7M-event Nexmark q5 peaked at 4.2 GB). So the
//! backfill replays the source's watermark over the rows exactly as the
//! live path does ([`SourceWatermark::apply`], from no watermark at the
//! first row): rows the live path would have dropped as late are dropped,
//! and each rise goes to the view after the batch that raised it, so
//! windows close and join state is pruned as the backfill goes. The final
//! value is returned so that the coordinator's watermark (which only
//! tracks the rows it dispatched since some view first read the source)
//! does not stay behind the one the view has already seen.
//!
//! A Kafka source's backfill and a table's are sent without watermarks:
//! a Kafka source's watermark follows each partition's clock through
//! markers in the log, and a table's stored rows are in key order, not in
//! the order they came.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use rocksdb::DB;
use tokio::sync::mpsc::Sender;

use super::view_rows::ViewRows;
use super::watermark::SourceWatermark;
use super::{Changes, Message, StreamError, StreamResult, Watermark};
use crate::catalog::Table;
use crate::state::StateError;
use crate::state::keys::{self, prefix_end};
use crate::state::row::RowDecoder;

/// Rows per batch read from a table or view.
const BATCH_ROWS: usize = super::runtime::SOURCE_BATCH_ROWS;

/// One input of a new view to fill.
pub(super) enum Backfill {
    Table { table: Arc<Table>, projection: Option<Vec<usize>>, tx: Sender<Message> },
    Mv { layout: ViewRows, tx: Sender<Message> },
}

/// What a backfill covered.
pub(super) struct Filled {
    /// The log position the snapshot contains.
    pub created_seq: u64,
    /// Per generated source with a watermark: the watermark its rows
    /// reached (an integer in the column's unit).
    pub watermarks: Vec<(u64, i64)>,
}

/// `batch` with only the columns of `projection` (all without one).
pub(super) fn project(batch: &RecordBatch, projection: Option<&[usize]>) -> StreamResult<RecordBatch> {
    match projection {
        Some(p) => Ok(batch.project(p)?),
        None => Ok(batch.clone()),
    }
}

/// Where column `col` of a table is among an input's `projection` columns.
pub(super) fn projected_col(projection: Option<&[usize]>, col: usize) -> Option<usize> {
    match projection {
        Some(p) => p.iter().position(|&c| c == col),
        None => Some(col),
    }
}

/// Fills a new view's inputs from one snapshot (runs on a blocking
/// thread).
pub(super) fn backfill(db: &DB, read_seq: u64, inputs: Vec<Backfill>) -> StreamResult<Filled> {
    let snapshot = db.snapshot();
    let mut it = snapshot.raw_iterator();
    it.seek_for_prev(prefix_end(&[keys::LOG_PREFIX]));
    let last_logged = it.key().and_then(keys::log_seq).unwrap_or(0);
    it.status().map_err(StateError::from)?;
    drop(it);
    let created_seq = last_logged.max(read_seq);
    // A generated source read by several inputs (a HOP's copies, a
    // self-join) is made once for all of them.
    let mut generated: Vec<(Arc<Table>, Vec<(Option<Vec<usize>>, Sender<Message>)>)> = Vec::new();
    let mut others = Vec::new();
    for input in inputs {
        match input {
            Backfill::Table { table, projection, tx } if crate::connector::datagen::is_generated_table(&table) && table.def.source => {
                match generated.iter_mut().find(|(t, _)| t.id() == table.id()) {
                    Some((_, targets)) => targets.push((projection, tx)),
                    None => generated.push((table, vec![(projection, tx)])),
                }
            }
            other => others.push(other),
        }
    }
    let mut watermarks = Vec::new();
    for (table, targets) in generated {
        let mut wm = SourceWatermark::new(&table, None)?;
        crate::connector::backfill_source(&snapshot, &table, None, &mut |batch| {
            let (batch, advanced) = match wm.as_mut() {
                None => (batch, None),
                Some(w) => match w.apply(&batch, None)? {
                    (Some(on_time), advanced) => (datafusion::arrow::compute::filter_record_batch(&batch, &on_time)?, advanced),
                    (None, advanced) => (batch, advanced),
                },
            };
            let col = wm.as_ref().map(|w| w.col());
            for (projection, tx) in &targets {
                if batch.num_rows() > 0 {
                    send_blocking(tx, project(&batch, projection.as_deref())?, None)?;
                }
                if let (Some(value), Some(col)) = (&advanced, col) {
                    if let Some(col) = projected_col(projection.as_deref(), col) {
                        tx.blocking_send(Message::Watermark(Watermark { col, value: value.clone() }))
                            .map_err(|_| StreamError::Stopped)?;
                    }
                }
            }
            Ok(())
        })?;
        if let Some(v) = wm.and_then(|w| w.current_i64()) {
            watermarks.push((table.id(), v));
        }
    }
    for input in others {
        match input {
            Backfill::Table { table, projection, tx } if table.def.source => {
                crate::connector::backfill_source(&snapshot, &table, projection.as_deref(), &mut |batch| {
                    send_blocking(&tx, batch, None)
                })?;
            }
            Backfill::Table { table, projection, tx } => {
                let mut decoder = RowDecoder::new(table.schema.clone(), projection.as_deref(), BATCH_ROWS)?;
                let prefix = keys::table_prefix(table.id());
                let mut it = snapshot.raw_iterator();
                it.seek(&prefix);
                while it.valid() {
                    let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    decoder.push(v)?;
                    if decoder.len() >= BATCH_ROWS {
                        send_blocking(&tx, decoder.flush()?, None)?;
                    }
                    it.next();
                }
                it.status().map_err(StateError::from)?;
                if !decoder.is_empty() {
                    send_blocking(&tx, decoder.flush()?, None)?;
                }
            }
            Backfill::Mv { layout, tx } => {
                layout.read(&snapshot, BATCH_ROWS, &mut |batch, counts| send_blocking(&tx, batch, Some(counts)))?;
            }
        }
    }
    Ok(Filled { created_seq, watermarks })
}

fn send_blocking(tx: &Sender<Message>, batch: RecordBatch, weights: Option<Vec<i64>>) -> StreamResult<()> {
    let n = batch.num_rows();
    let weights = Int64Array::from(weights.unwrap_or_else(|| vec![1; n]));
    tx.blocking_send(Message::Data(Changes::new(batch, weights))).map_err(|_| StreamError::Stopped)
}
