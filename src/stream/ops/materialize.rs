//! The materialize operator: the root of every view. It consolidates an
//! epoch's changes per distinct row and, at the barrier, applies them to
//! the view's stored rows (`v<mv id><row>` → multiplicity) in the
//! checkpoint, and passes the consolidated changes to the views that read
//! this one. A SELECT on the view reads the stored rows, which change only
//! when a checkpoint commits: it always sees a complete epoch.
//!
//! Watermarks reaching it are passed on to those views after the
//! barrier's changes (the latest per column, once it moves), so a view
//! over a windowed view can close its own windows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use rocksdb::DB;

use super::Operator;
use crate::state::StateError;
use crate::stream::rows::{RowCodec, decode_count, encode_count};
use crate::stream::{Changes, StateWrite, StreamError, StreamResult};

pub struct MaterializeOp {
    db: Arc<DB>,
    prefix: Vec<u8>,
    schema: SchemaRef,
    codec: RowCodec,
    /// The plan emits every row at most once ([`crate::plan::distinct_rows`]):
    /// a row's stored multiplicity is 0 or 1 and follows from the sign of
    /// its delta, so the barrier writes without reading the view.
    distinct: bool,
    pending: HashMap<Vec<u8>, i64, foldhash::fast::RandomState>,
    /// Per column, the latest watermark received and whether it moved
    /// since the last barrier.
    watermarks: std::collections::BTreeMap<usize, (datafusion::common::ScalarValue, bool)>,
}

impl MaterializeOp {
    pub fn new(db: Arc<DB>, prefix: Vec<u8>, schema: SchemaRef, distinct: bool) -> StreamResult<Self> {
        let types: Vec<_> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
        Ok(Self {
            db,
            prefix,
            codec: RowCodec::new(&types)?,
            distinct,
            schema,
            pending: HashMap::default(),
            watermarks: Default::default(),
        })
    }
}

impl Operator for MaterializeOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let rows = self.codec.encode(changes.batch.columns(), changes.len())?;
        for i in 0..rows.len() {
            let w = changes.weights.value(i);
            if w != 0 {
                *self.pending.entry(rows.row(i).to_vec()).or_insert(0) += w;
            }
        }
        Ok(Vec::new())
    }

    fn watermark(&mut self, _input: usize, wm: &crate::stream::Watermark) -> StreamResult<Vec<crate::stream::Watermark>> {
        let entry = self.watermarks.entry(wm.col).or_insert_with(|| (wm.value.clone(), true));
        if wm.value > entry.0 {
            *entry = (wm.value.clone(), true);
        }
        Ok(Vec::new())
    }

    fn take_watermarks(&mut self) -> Vec<crate::stream::Watermark> {
        let mut out = Vec::new();
        for (col, (value, moved)) in self.watermarks.iter_mut() {
            if std::mem::take(moved) {
                out.push(crate::stream::Watermark { col: *col, value: value.clone() });
            }
        }
        out
    }

    fn barrier(&mut self, _epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let mut writes = Vec::new();
        let mut out_rows: Vec<Vec<u8>> = Vec::new();
        let mut out_weights = Vec::new();
        for (row, delta) in std::mem::take(&mut self.pending) {
            if delta == 0 {
                continue;
            }
            let mut key = self.prefix.clone();
            key.extend_from_slice(&row);
            let current = match self.distinct {
                // Present before exactly when it goes now.
                true => i64::from(delta < 0),
                false => match self.db.get(&key).map_err(StateError::from)? {
                    Some(v) => decode_count(&v)?,
                    None => 0,
                },
            };
            let next = current + delta;
            if next < 0 || (self.distinct && next > 1) {
                return Err(StreamError::Corrupt(format!(
                    "a row of the view would occur {next} times; its input retracted a row it never emitted"
                )));
            }
            writes.push((key, (next > 0).then(|| encode_count(next))));
            out_rows.push(row);
            out_weights.push(delta);
        }
        if out_rows.is_empty() {
            return Ok((Vec::new(), writes));
        }
        let columns = self.codec.decode(out_rows.iter().map(Vec::as_slice))?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(out_rows.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok((vec![Changes::new(batch, Int64Array::from(out_weights))], writes))
    }
}
