//! Watermarks of sources and tables (`WATERMARK FOR col AS expr`).
//!
//! The runtime keeps one [`SourceWatermark`] per table or source with a
//! watermark and takes its changes in change-log order, row by row: a row
//! whose `col` is below the current watermark (or NULL) is late, dropped
//! and counted; an on-time row raises the watermark to its `expr` if that
//! is higher (RisingWave's semantics: the watermark is the largest event
//! time seen minus the allowed lateness). The runtime sends the new
//! watermark to every view reading the table after the batch, and writes
//! it in each checkpoint, so that a restart drops the same rows late.
//!
//! A Kafka source or table is different: its ingest threads follow each
//! partition's event time and log a marker whenever the watermark (the
//! minimum over active partitions) rises (`connector::kafka::clock`).
//! Its rows never move the watermark here; the markers do, in log order,
//! and rows below the watermark in force are late as above.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, Operator};
use datafusion::prelude::SessionContext;

use super::{StreamError, StreamResult};
use crate::catalog::{Table, TableDef};
use crate::plan::PhysExpr;

/// Key prefix of persisted watermarks (`m/wm/<table id>`).
pub const WATERMARK_PREFIX: &[u8] = b"m/wm/";

/// A table's watermark as the runtime tracks it.
pub struct SourceWatermark {
    expr: WatermarkExpr,
    pub current: Option<ScalarValue>,
    /// Rows dropped as late since start-up.
    pub late_rows: u64,
    /// Whether `current` changed since the last checkpoint.
    pub dirty: bool,
    /// Moved by markers in the change log, not by rows (Kafka).
    by_markers: bool,
}

/// A table's `WATERMARK FOR col AS expr`, checked and compiled.
pub struct WatermarkExpr {
    /// The event-time column (index in the table's schema).
    pub col: usize,
    /// The column's type (a timestamp).
    pub data_type: DataType,
    expr: PhysExpr,
    /// `expr` is `col - <fixed interval>`: the interval in the column's
    /// unit. The common form (`ts - INTERVAL '5' SECOND`) is then one
    /// integer subtraction per row; Arrow's timestamp-minus-interval kernel
    /// goes through calendar arithmetic per row and cost a sixth of a
    /// generated GROUP BY's CPU.
    delay: Option<i64>,
}

impl WatermarkExpr {
    /// The expression's value per row of `batch` (the table's schema), as
    /// integers in the column's unit.
    pub fn values(&self, batch: &RecordBatch) -> StreamResult<Int64Array> {
        match self.delay {
            Some(_) => self.values_from(batch, &self.times(batch)?),
            None => self.values_from(batch, &Int64Array::from(Vec::<i64>::new())),
        }
    }

    /// [`Self::values`] given the batch's [`Self::times`] (used only for
    /// a fixed delay).
    fn values_from(&self, batch: &RecordBatch, times: &Int64Array) -> StreamResult<Int64Array> {
        match self.delay {
            Some(d) => Ok(datafusion::arrow::compute::kernels::arity::unary(times, |t: i64| t.saturating_sub(d))),
            None => as_i64(self.expr.evaluate(batch)?.into_array(batch.num_rows())?.as_ref()),
        }
    }

    /// The event-time column of `batch` as integers in its unit.
    fn times(&self, batch: &RecordBatch) -> StreamResult<Int64Array> {
        as_i64(batch.column(self.col).as_ref())
    }
}

/// An Arrow timestamp (or integer) column as `Int64`.
fn as_i64(a: &dyn Array) -> StreamResult<Int64Array> {
    let c = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
    c.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| StreamError::Corrupt("watermark values".into()))
}

/// Checks a `WATERMARK FOR` against the table's columns: the column is a
/// timestamp and the expression has its type.
pub fn compile(def: &TableDef) -> StreamResult<Option<WatermarkExpr>> {
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
    let delay = fixed_delay(&expr, schema.field(col).name(), &data_type);
    let phys = ctx.create_physical_expr(expr, &df_schema)?;
    let out_type = phys.data_type(&schema)?;
    if out_type != data_type {
        return Err(StreamError::Failed(format!(
            "the watermark expression {} has type {out_type}, not the column's type {data_type}",
            w.expr
        )));
    }
    Ok(Some(WatermarkExpr { col, data_type, expr: phys, delay }))
}

/// `column` or `column - INTERVAL` with a fixed length (no months; days
/// only without a time zone, where a day is always 24 hours) that is a
/// whole number of the column's unit: that length in the unit.
fn fixed_delay(expr: &Expr, column: &str, data_type: &DataType) -> Option<i64> {
    let DataType::Timestamp(unit, tz) = data_type else { return None };
    let is_column = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    if is_column(expr) {
        return Some(0);
    }
    let Expr::BinaryExpr(b) = expr else { return None };
    if b.op != Operator::Minus || !is_column(&b.left) {
        return None;
    }
    crate::plan::durations::fixed_length(&b.right, unit, tz.is_some())
}

impl SourceWatermark {
    /// The watermark of `table`, resumed from `stored` (its last
    /// checkpointed value, microseconds or the column's unit).
    pub fn new(table: &Table, stored: Option<i64>) -> StreamResult<Option<Self>> {
        let Some(expr) = compile(&table.def)? else { return Ok(None) };
        let current = match stored {
            Some(v) => Some(ScalarValue::Int64(Some(v)).cast_to(&expr.data_type)?),
            None => None,
        };
        let by_markers = table.def.connector.is_some() && !crate::connector::datagen::is_generated_table(table);
        Ok(Some(Self { expr, current, late_rows: 0, dirty: false, by_markers }))
    }

    /// The event-time column (index in the table's schema).
    pub fn col(&self) -> usize {
        self.expr.col
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

    /// Takes a batch in order: a row is late when its event time is NULL
    /// or below the watermark as it stands after the rows before it; an
    /// on-time row raises the watermark to its expression. With `statements`
    /// (the change-log entry of each row), rows written by one statement
    /// count as simultaneous: the watermark moves between statements, so a
    /// multi-row INSERT does not depend on its rows' order. Without it
    /// (sources, where messages have an order) it moves after every row.
    /// Returns which rows are on time (`None`: all) and the new watermark
    /// if it moved. The result does not depend on how rows are batched.
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        statements: Option<&[u64]>,
    ) -> StreamResult<(Option<BooleanArray>, Option<ScalarValue>)> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok((None, None));
        }
        let times = self.expr.times(batch)?;
        // Marker-driven sources only check rows: no expression to evaluate.
        // A fixed delay needs no array of values for the fast path below:
        // its largest value is the largest time minus the delay.
        let fixed = self.expr.delay.filter(|_| !self.by_markers && times.null_count() == 0);
        let mut values = match (self.by_markers, fixed) {
            (false, None) => Some(self.expr.values_from(batch, &times)?),
            _ => None,
        };
        let start = self.current_i64();
        // Nothing late, whatever the order, when the earliest time is at or
        // above every watermark the batch can reach: the common case of
        // rows in order within their allowed lateness. Two vectorised
        // passes instead of the row loop.
        if times.null_count() == 0 {
            let top = match fixed {
                Some(d) => datafusion::arrow::compute::max(&times).map(|t| t.saturating_sub(d)),
                None => values.as_ref().and_then(datafusion::arrow::compute::max),
            };
            let reach = match top {
                Some(v) => Some(start.map_or(v, |w| w.max(v))),
                None => start,
            };
            let earliest = datafusion::arrow::compute::min(&times);
            if reach.is_none_or(|r| earliest.is_some_and(|t| t >= r)) {
                let advanced = match reach {
                    Some(v) if reach != start => self.advance_to(v)?,
                    _ => None,
                };
                return Ok((None, advanced));
            }
            if fixed.is_some() {
                values = Some(self.expr.values_from(batch, &times)?);
            }
        }
        let mut running = start;
        // The largest value of the current statement, not yet in force.
        let mut pending: Option<i64> = None;
        let mut keep = Vec::with_capacity(n);
        let mut late = 0u64;
        for i in 0..n {
            let new_statement = match statements {
                None => true,
                Some(s) => i == 0 || s.get(i) != s.get(i - 1),
            };
            if new_statement {
                if let Some(p) = pending.take() {
                    running = Some(running.map_or(p, |w| w.max(p)));
                }
            }
            let on_time = times.is_valid(i) && running.is_none_or(|w| times.value(i) >= w);
            if let Some(values) = values.as_ref().filter(|v| on_time && v.is_valid(i)) {
                let v = values.value(i);
                pending = Some(pending.map_or(v, |p| p.max(v)));
            }
            late += u64::from(!on_time);
            keep.push(on_time);
        }
        if let Some(p) = pending {
            running = Some(running.map_or(p, |w| w.max(p)));
        }
        self.late_rows += late;
        let mask = (late > 0).then(|| BooleanArray::from(keep));
        let advanced = match running {
            Some(v) if running != start => self.advance_to(v)?,
            _ => None,
        };
        Ok((mask, advanced))
    }

    /// A marker from the change log: the watermark rises to `value` (the
    /// column's unit) if that is higher. Returns the new watermark if it
    /// moved.
    pub fn advance_to(&mut self, value: i64) -> StreamResult<Option<ScalarValue>> {
        if self.current_i64().is_some_and(|w| w >= value) {
            return Ok(None);
        }
        let value = self.value_of(value)?;
        self.current = Some(value.clone());
        self.dirty = true;
        Ok(Some(value))
    }

    /// An integer in the column's unit as a watermark value.
    pub fn value_of(&self, value: i64) -> StreamResult<ScalarValue> {
        Ok(ScalarValue::Int64(Some(value)).cast_to(&self.expr.data_type)?)
    }

    /// The current watermark as an integer in the column's unit.
    pub fn current_i64(&self) -> Option<i64> {
        match self.current.as_ref()?.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};

    use super::compile;
    use crate::catalog::{ColumnDef, SqlType, TableDef, WatermarkDef};

    fn def(expr: &str) -> TableDef {
        let col = |name: &str, sql_type| ColumnDef { name: name.into(), sql_type, nullable: true };
        TableDef {
            id: 1,
            name: "t".into(),
            columns: vec![col("k", SqlType::BigInt), col("ts", SqlType::Timestamp)],
            primary_key: Vec::new(),
            connector: None,
            source: false,
            watermark: Some(WatermarkDef { column: "ts".into(), expr: expr.into() }),
            append_only: true,
        }
    }

    /// Fixed intervals take the integer path and agree with DataFusion's
    /// evaluation; anything else is evaluated as written.
    #[test]
    fn fixed_delays_match_the_general_evaluation() {
        let times = [0i64, 1_700_000_000_123_456, -5, 86_400_000_000];
        for (expr, fixed) in [
            ("ts", true),
            ("ts - INTERVAL '5' SECOND", true),
            ("ts - INTERVAL '1 day 2 hours 3 milliseconds'", true),
            ("ts - INTERVAL '1' MONTH", false),
            ("ts + INTERVAL '1' SECOND", false),
        ] {
            let def = def(expr);
            let compiled = compile(&def).unwrap().unwrap();
            assert_eq!(compiled.delay.is_some(), fixed, "{expr}");
            let schema = def.arrow_schema();
            let batch = RecordBatch::try_new(
                schema,
                vec![Arc::new(Int64Array::from(vec![1i64; times.len()])), Arc::new(TimestampMicrosecondArray::from(times.to_vec()))],
            )
            .unwrap();
            let general = super::as_i64(compiled.expr.evaluate(&batch).unwrap().into_array(times.len()).unwrap().as_ref()).unwrap();
            assert_eq!(compiled.values(&batch).unwrap(), general, "{expr}");
        }
    }
}
