//! `ScanExec`: a DataFusion leaf operator that reads table rows from one
//! RocksDB snapshot.
//!
//! It scans a list of key ranges (the whole table, or the primary-key ranges
//! derived from a query's filters), decodes only the projected columns and
//! yields Arrow batches of at most `batch_rows` rows. The reading happens on
//! a blocking thread and feeds a bounded channel, so a slow client applies
//! backpressure to the scan instead of buffering the table in memory.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::arrow::array::{ArrayRef, BinaryBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use rocksdb::DB;

use super::row::RowDecoder;

/// Name of the storage-key column of a `with_key` scan.
pub const KEY_COLUMN_NAME: &str = "__eddy_key";
/// Name of the column of a `with_key` scan that holds the row's stored
/// bytes, so a writer can check that the row has not changed since.
pub const ROW_COLUMN_NAME: &str = "__eddy_row";

/// A key range `[from, to)`.
pub type KeyRange = (Vec<u8>, Vec<u8>);

/// What to scan: a table's rows in some key ranges.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub table_name: String,
    /// The table's columns, in stored order.
    pub table_schema: SchemaRef,
    /// Output columns (indexes; with `with_key`, the key and the row bytes
    /// are the two indexes after the table's columns).
    pub projection: Option<Vec<usize>>,
    pub ranges: Vec<KeyRange>,
    pub limit: Option<usize>,
    pub batch_rows: usize,
    /// Whether the storage key and stored row bytes are available as two
    /// more columns.
    pub with_key: bool,
}

#[derive(Debug)]
pub struct ScanExec {
    db: Arc<DB>,
    table_name: String,
    table_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    ranges: Vec<KeyRange>,
    limit: Option<usize>,
    batch_rows: usize,
    with_key: bool,
    props: Arc<PlanProperties>,
}

impl ScanExec {
    pub fn try_new(db: Arc<DB>, spec: ScanSpec) -> Result<Self> {
        let ScanSpec { table_name, table_schema, projection, ranges, limit, batch_rows, with_key } = spec;
        let full_schema = if with_key {
            let mut fields: Vec<Field> =
                table_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(KEY_COLUMN_NAME, DataType::Binary, false));
            fields.push(Field::new(ROW_COLUMN_NAME, DataType::Binary, false));
            Arc::new(Schema::new(fields))
        } else {
            table_schema.clone()
        };
        let out_schema = match &projection {
            Some(p) => Arc::new(full_schema.project(p)?),
            None => full_schema,
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(out_schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            db,
            table_name,
            table_schema,
            projection,
            ranges,
            limit,
            batch_rows: batch_rows.max(1),
            with_key,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for ScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "EddyScan: table={}, key_ranges={}", self.table_name, self.ranges.len())?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ScanExec {
    fn name(&self) -> &str {
        "EddyScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ncols = self.table_schema.fields().len();
        let all: Vec<usize> = (0..ncols + 2 * usize::from(self.with_key)).collect();
        let projection = self.projection.clone().unwrap_or(all);
        // Table columns to decode, and where the key and row columns go.
        let table_proj: Vec<usize> = projection.iter().copied().filter(|&i| i < ncols).collect();
        let key_pos = projection.iter().position(|&i| i == ncols);
        let row_pos = projection.iter().position(|&i| i == ncols + 1);
        let mut decoder = RowDecoder::new(self.table_schema.clone(), Some(&table_proj), self.batch_rows)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = self.props.eq_properties.schema().clone();
        let out_schema = schema.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        let db = self.db.clone();
        let ranges = self.ranges.clone();
        let limit = self.limit.unwrap_or(usize::MAX);
        let batch_rows = self.batch_rows;
        tokio::task::spawn_blocking(move || {
            let snapshot = db.snapshot();
            let mut produced = 0usize;
            let mut key_builder = key_pos.map(|_| BinaryBuilder::new());
            let mut row_builder = row_pos.map(|_| BinaryBuilder::new());
            let flush = |decoder: &mut RowDecoder,
                         keys: &mut Option<BinaryBuilder>,
                         rows: &mut Option<BinaryBuilder>|
             -> Result<RecordBatch> {
                let batch = decoder.flush().map_err(|e| DataFusionError::External(Box::new(e)))?;
                if key_pos.is_none() && row_pos.is_none() {
                    return Ok(batch);
                }
                // Insert the extra columns in projection order.
                let mut extra: Vec<(usize, ArrayRef)> = Vec::new();
                if let (Some(kb), Some(pos)) = (keys.as_mut(), key_pos) {
                    extra.push((pos, Arc::new(kb.finish())));
                }
                if let (Some(rb), Some(pos)) = (rows.as_mut(), row_pos) {
                    extra.push((pos, Arc::new(rb.finish())));
                }
                extra.sort_by_key(|(pos, _)| *pos);
                let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                for (pos, col) in extra {
                    columns.insert(pos, col);
                }
                Ok(RecordBatch::try_new_with_options(
                    out_schema.clone(),
                    columns,
                    &datafusion::arrow::record_batch::RecordBatchOptions::new()
                        .with_row_count(Some(batch.num_rows())),
                )?)
            };
            let send = |batch: Result<RecordBatch>| tx.blocking_send(batch).is_ok();
            for (from, to) in ranges {
                let mut opts = rocksdb::ReadOptions::default();
                opts.set_iterate_upper_bound(to);
                opts.set_snapshot(&snapshot);
                let mut it = db.raw_iterator_opt(opts);
                it.seek(&from);
                while it.valid() && produced < limit {
                    let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
                    if let Err(e) = decoder.push(v) {
                        send(Err(DataFusionError::External(Box::new(e))));
                        return;
                    }
                    if let Some(kb) = key_builder.as_mut() {
                        kb.append_value(k);
                    }
                    if let Some(rb) = row_builder.as_mut() {
                        rb.append_value(v);
                    }
                    produced += 1;
                    if decoder.len() >= batch_rows {
                        let batch = flush(&mut decoder, &mut key_builder, &mut row_builder);
                        let failed = batch.is_err();
                        if !send(batch) || failed {
                            return;
                        }
                    }
                    it.next();
                }
                if let Err(e) = it.status() {
                    send(Err(DataFusionError::External(Box::new(e))));
                    return;
                }
            }
            if !decoder.is_empty() {
                send(flush(&mut decoder, &mut key_builder, &mut row_builder));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
