//! The materialize operator: the root of every view. It consolidates an
//! epoch's changes per distinct row and, at the barrier, applies them to
//! the view's stored rows (laid out as [`crate::stream::view_rows`] says)
//! in the checkpoint, and passes the consolidated changes to the views that read
//! this one. A SELECT on the view reads the stored rows, which change only
//! when a checkpoint commits: it always sees a complete epoch.
//!
//! Watermarks reaching it are passed on to those views after the
//! barrier's changes (the latest per column, once it moves), so a view
//! over a windowed view can close its own windows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::Int64Array;
use rocksdb::DB;

use super::Operator;
use crate::stream::view_rows::ViewRows;
use crate::stream::{Changes, StateWrite, StreamResult};

pub struct MaterializeOp {
    db: Arc<DB>,
    layout: ViewRows,
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
    pub fn new(db: Arc<DB>, layout: ViewRows, distinct: bool) -> StreamResult<Self> {
        Ok(Self { db, layout, distinct, pending: HashMap::default(), watermarks: Default::default() })
    }
}

impl Operator for MaterializeOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let rows = self.layout.codec().encode(changes.batch.columns(), changes.len())?;
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
        let mut rows: Vec<Vec<u8>> = Vec::with_capacity(self.pending.len());
        let mut deltas = Vec::with_capacity(self.pending.len());
        for (row, delta) in std::mem::take(&mut self.pending) {
            if delta != 0 {
                rows.push(row);
                deltas.push(delta);
            }
        }
        if rows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let batch = self.layout.decode(&rows)?;
        let writes = self.layout.writes(&self.db, self.distinct, rows, &deltas, batch.columns())?;
        Ok((vec![Changes::new(batch, Int64Array::from(deltas))], writes))
    }
}
