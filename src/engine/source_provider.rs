//! `SELECT` on a source: reads the topic from the source's start position
//! (its `scan.startup.mode`) up to the current end of every partition, and
//! returns those rows. A source stores nothing, so this is a bounded Kafka
//! read each time (for a datagen source: the rows generated so far, made
//! again).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::Table;
use crate::connector::kafka;
use rdkafka::consumer::Consumer;

#[derive(Debug)]
pub struct SourceTable {
    table: Arc<Table>,
    schema: SchemaRef,
    db: Arc<rocksdb::DB>,
}

impl SourceTable {
    pub fn new(table: Arc<Table>, db: Arc<rocksdb::DB>) -> Self {
        let schema = crate::plan::nullable(&table.schema);
        Self { table, schema, db }
    }
}

/// Reads the whole of a source's topic as it is now. Blocking.
fn read_now(table: &Table) -> crate::connector::ConnectorResult<Vec<RecordBatch>> {
    let (decoder, opts, headers) = kafka::decoder_for(table)?;
    let client = kafka::consumer(&opts, None)?;
    let parts = kafka::partitions(&client, &opts, kafka::CONNECT_TIMEOUT)?;
    let mut ranges = Vec::new();
    for p in parts {
        let from = kafka::start_offset(&client, &opts.topic, p, opts.startup)?;
        let (_, to) = client.fetch_watermarks(&opts.topic, p, kafka::CONNECT_TIMEOUT)?;
        ranges.push((p, from, to));
    }
    drop(client);
    let mut out = Vec::new();
    kafka::read_range(&opts, &decoder, &headers, &ranges, &mut |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        let table = self.table.clone();
        let db = self.db.clone();
        let batches = tokio::task::spawn_blocking(move || {
            if crate::connector::datagen::is_generated_table(&table) {
                crate::connector::datagen::ingest::read_now(&db, &table)
            } else {
                read_now(&table)
            }
        })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(super::EngineError::from(e))))?;
        let batches = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?)
    }
}
