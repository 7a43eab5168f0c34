//! Serving materialized views: a `TableProvider` over a view's stored rows
//! and the `MvScanExec` leaf that reads them from one RocksDB snapshot.
//!
//! A view's rows change only when a checkpoint commits, so any snapshot
//! shows a complete epoch; SELECT never recomputes the view's query. Rows
//! are stored once with their multiplicity and repeated on the way out.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use rocksdb::DB;

use crate::catalog::MatView;
use crate::stream::StreamRuntime;
use crate::stream::view_rows::ViewRows;

const BATCH_ROWS: usize = 8192;

#[derive(Debug)]
pub struct MvTable {
    mv: Arc<MatView>,
    db: Arc<DB>,
    stream: Arc<StreamRuntime>,
}

impl std::fmt::Debug for StreamRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamRuntime")
    }
}

impl MvTable {
    pub fn new(mv: Arc<MatView>, db: Arc<DB>, stream: Arc<StreamRuntime>) -> Self {
        Self { mv, db, stream }
    }
}

#[async_trait]
impl TableProvider for MvTable {
    fn schema(&self) -> SchemaRef {
        self.mv.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(reason) = self.stream.failure(self.mv.def.id) {
            return Err(DataFusionError::External(Box::new(crate::engine::EngineError::user(
                "XX000",
                format!(
                    "materialized view \"{}\" stopped updating: {reason}; drop and re-create it once the input is fixed",
                    self.mv.def.name
                ),
            ))));
        }
        let out = match projection {
            Some(p) => Arc::new(self.mv.schema.project(p)?),
            None => self.mv.schema.clone(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(MvScanExec {
            db: self.db.clone(),
            mv: self.mv.clone(),
            projection: projection.cloned(),
            props: Arc::new(props),
        }))
    }
}

#[derive(Debug)]
pub struct MvScanExec {
    db: Arc<DB>,
    mv: Arc<MatView>,
    projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
}

impl DisplayAs for MvScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MaterializedViewScan: view={}", self.mv.def.name)
    }
}

/// Each row as often as it occurs in the view.
fn repeat_rows(batch: RecordBatch, counts: &[i64]) -> Result<RecordBatch> {
    if counts.iter().all(|&c| c == 1) {
        return Ok(batch);
    }
    let indices: datafusion::arrow::array::UInt32Array = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i as u32, c.max(0) as usize))
        .collect();
    Ok(datafusion::arrow::compute::take_record_batch(&batch, &indices)?)
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl ExecutionPlan for MvScanExec {
    fn name(&self) -> &str {
        "MaterializedViewScan"
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
    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let layout =
            ViewRows::new(self.mv.def.id, self.mv.schema.clone(), self.mv.def.row_key.as_deref()).map_err(external)?;
        let schema = self.props.eq_properties.schema().clone();
        let out_schema = schema.clone();
        let projection = self.projection.clone();
        let db = self.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        tokio::task::spawn_blocking(move || {
            let snapshot = db.snapshot();
            let mut emit = |batch: RecordBatch, counts: Vec<i64>| -> crate::stream::StreamResult<()> {
                let out = repeat_rows(batch, &counts).and_then(|batch| {
                    let batch = match &projection {
                        Some(p) => batch.project(p)?,
                        None => batch,
                    };
                    let n = batch.num_rows();
                    Ok(RecordBatch::try_new_with_options(
                        out_schema.clone(),
                        batch.columns().to_vec(),
                        &RecordBatchOptions::new().with_row_count(Some(n)),
                    )?)
                });
                let failed = out.is_err();
                if tx.blocking_send(out).is_err() || failed {
                    return Err(crate::stream::StreamError::Stopped);
                }
                Ok(())
            };
            match layout.read(&snapshot, BATCH_ROWS, &mut emit) {
                Ok(()) | Err(crate::stream::StreamError::Stopped) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(external(e)));
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
