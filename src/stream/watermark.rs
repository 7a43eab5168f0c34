//! Watermarks of sources and tables (`WATERMARK FOR col AS expr`).
//!
//! The runtime keeps one [`SourceWatermark`] per table or source with a
//! watermark. Each batch of its changes, in change-log order, first loses
//! its late rows (`col` below the current watermark, or NULL), which are
//! counted; then the watermark becomes the largest `expr` of the rows kept
//! if that is higher (RisingWave's semantics: the watermark is the largest
//! event time seen minus the allowed lateness). The runtime sends the new
//! watermark to every view reading the table after the batch, and writes
//! it in each checkpoint, so that a restart drops the same rows late.
//!
//! The watermark is per source, not per Kafka partition: a partition that
//! goes idle never holds it back, and a partition that lags behind the
//! others by more than the allowed lateness has its rows dropped as late.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{and, is_not_null, max_array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::prelude::SessionContext;

use super::{StreamError, StreamResult};
use crate::catalog::{Table, TableDef};
use crate::plan::PhysExpr;

/// Key prefix of persisted watermarks (`m/wm/<table id>`).
pub const WATERMARK_PREFIX: &[u8] = b"m/wm/";

/// A table's watermark as the runtime tracks it.
pub struct SourceWatermark {
    /// The event-time column (index in the table's schema).
    pub col: usize,
    expr: PhysExpr,
    data_type: DataType,
    pub current: Option<ScalarValue>,
    /// Rows dropped as late since start-up.
    pub late_rows: u64,
    /// Whether `current` changed since the last checkpoint.
    pub dirty: bool,
}

/// Checks a `WATERMARK FOR` against the table's columns: the column is a
/// timestamp and the expression has its type. Returns the column's index
/// and the compiled expression.
pub fn compile(def: &TableDef) -> StreamResult<Option<(usize, PhysExpr, DataType)>> {
    let Some(w) = &def.watermark else { return Ok(None) };
    let col = def
        .column_index(&w.column)
        .ok_or_else(|| StreamError::Failed(format!("WATERMARK FOR names column \"{}\", which the table does not have", w.column)))?;
    let schema = def.arrow_schema();
    let data_type = schema.field(col).data_type().clone();
    if !matches!(data_type, DataType::Timestamp(..)) {
        return Err(StreamError::Failed(format!(
            "WATERMARK FOR needs a TIMESTAMP or TIMESTAMPTZ column; \"{}\" is {data_type}",
            w.column
        )));
    }
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let expr = ctx.parse_sql_expr(&w.expr, &df_schema)?;
    let phys = ctx.create_physical_expr(expr, &df_schema)?;
    let out_type = phys.data_type(&schema)?;
    if out_type != data_type {
        return Err(StreamError::Failed(format!(
            "the watermark expression {} has type {out_type}, not the column's type {data_type}",
            w.expr
        )));
    }
    Ok(Some((col, phys, data_type)))
}

impl SourceWatermark {
    /// The watermark of `table`, resumed from `stored` (its last
    /// checkpointed value, microseconds or the column's unit).
    pub fn new(table: &Table, stored: Option<i64>) -> StreamResult<Option<Self>> {
        let Some((col, expr, data_type)) = compile(&table.def)? else { return Ok(None) };
        let current = match stored {
            Some(v) => Some(ScalarValue::Int64(Some(v)).cast_to(&data_type)?),
            None => None,
        };
        Ok(Some(Self { col, expr, data_type, current, late_rows: 0, dirty: false }))
    }

    /// The current watermark in microseconds since the Unix epoch.
    pub fn micros(&self) -> Option<i64> {
        let v = self.current.as_ref()?.cast_to(&DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None)).ok()?;
        match v {
            ScalarValue::TimestampMicrosecond(m, _) => m,
            _ => None,
        }
    }

    /// The stored form of the current watermark.
    pub fn encoded(&self) -> Option<Vec<u8>> {
        match self.current.as_ref()?.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(v)) => Some(v.to_be_bytes().to_vec()),
            _ => None,
        }
    }

    /// Which rows of `batch` are on time (false: late or no event time);
    /// `None` when all are.
    pub fn on_time(&mut self, batch: &RecordBatch) -> StreamResult<Option<BooleanArray>> {
        let column = batch.column(self.col);
        let mask = match &self.current {
            None if column.null_count() == 0 => return Ok(None),
            None => is_not_null(column)?,
            Some(w) => {
                let scalar = w.to_scalar()?;
                let ge = gt_eq(column, &scalar)?;
                and(&ge, &is_not_null(column)?)?
            }
        };
        let kept = mask.true_count();
        if kept == batch.num_rows() {
            return Ok(None);
        }
        self.late_rows += (batch.num_rows() - kept) as u64;
        Ok(Some(mask))
    }

    /// Raises the watermark from rows that were on time; returns the new
    /// value if it moved.
    pub fn advance(&mut self, batch: &RecordBatch) -> StreamResult<Option<ScalarValue>> {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let values = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let values = datafusion::arrow::compute::cast(&values, &DataType::Int64)?;
        let Some(max) = max_array::<datafusion::arrow::datatypes::Int64Type, _>(
            values.as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().ok_or_else(|| StreamError::Corrupt("watermark values".into()))?,
        ) else {
            return Ok(None);
        };
        let candidate = ScalarValue::Int64(Some(max)).cast_to(&self.data_type)?;
        if self.current.as_ref().is_some_and(|c| *c >= candidate) {
            return Ok(None);
        }
        self.current = Some(candidate.clone());
        self.dirty = true;
        Ok(Some(candidate))
    }
}

/// What `eddy_catalog.watermarks` shows of one table.
#[derive(Debug, Clone, Default)]
pub struct WatermarkStatus {
    pub table: String,
    pub column: String,
    /// Microseconds since the Unix epoch (UTC).
    pub watermark: Option<i64>,
    pub late_rows: u64,
}

pub type WatermarkStatuses = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, WatermarkStatus>>>;
