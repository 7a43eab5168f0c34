//! `stream/`: the runtime that keeps materialized views current.
//!
//! Changes travel as [`Changes`]: an Arrow batch plus a weight per row
//! (`+1` a row appeared, `-1` it went away; an update is both). Operators
//! ([`ops`]) run as tokio tasks joined by bounded channels, so a slow
//! operator holds back its inputs (backpressure). The [`runtime`] reads the
//! table change log ([`crate::state::log`]), feeds the sources of every
//! view, and every `checkpoint_interval_ms` sends a barrier through all of
//! them: each operator hands the state it changed in that epoch to the
//! runtime, which writes all of it, the view contents and the log position
//! in one synced RocksDB write (the checkpoint). Operator state lives in
//! [`state::StateTable`]s: RocksDB with a bounded in-memory cache.

mod backfill;
pub mod ops;
pub mod rows;
pub mod runtime;
pub mod state;
pub mod view_rows;
pub mod watermark;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::array::BooleanArray;

use crate::state::StateError;

pub use runtime::{StreamConfig, StreamRuntime};

/// Errors of the streaming runtime and its operators.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("arrow error: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("operator state is corrupt: {0}")]
    Corrupt(String),
    #[error("the stream runtime has stopped")]
    Stopped,
    #[error("{0}")]
    Failed(String),
}

pub type StreamResult<T> = Result<T, StreamError>;

/// A batch of row changes: `batch` row `i` changes by `weights[i]`.
#[derive(Debug, Clone)]
pub struct Changes {
    pub batch: RecordBatch,
    pub weights: Int64Array,
}

impl Changes {
    pub fn new(batch: RecordBatch, weights: Int64Array) -> Self {
        debug_assert_eq!(batch.num_rows(), weights.len());
        Self { batch, weights }
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Keeps the rows where `mask` is true.
    pub fn filter(&self, mask: &BooleanArray) -> StreamResult<Self> {
        let batch = filter_record_batch(&self.batch, mask)?;
        let weights = datafusion::arrow::compute::filter(&self.weights, mask)?;
        let weights = weights
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| StreamError::Corrupt("weights column".into()))?;
        Ok(Self { batch, weights })
    }
}

/// What flows along an edge of the operator graph.
#[derive(Debug, Clone)]
pub enum Message {
    Data(Changes),
    /// The end of epoch `n`: everything before it belongs to that epoch.
    Barrier(u64),
    /// No row with a smaller value in this column will follow.
    Watermark(Watermark),
}

/// A watermark: column `col` of the edge's rows will not go below `value`
/// any more (see [`crate::plan::watermark`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub col: usize,
    pub value: datafusion::common::ScalarValue,
}

/// A state write handed to the checkpoint: the full key and the new value
/// (`None` deletes).
pub type StateWrite = (Vec<u8>, Option<Vec<u8>>);

/// What operators report to the runtime.
#[derive(Debug)]
pub enum Ack {
    /// State an operator changed in `epoch`.
    Writes { epoch: u64, mv_id: u64, writes: Vec<StateWrite> },
    /// A view's materialize operator finished `epoch` (always after every
    /// `Writes` of that view for the epoch).
    Done { epoch: u64, mv_id: u64, failure: Option<String> },
}
