//! The `eddy_catalog` schema: system tables over the running connectors.
//! - `kafka_source_partitions`: per source (or Kafka table) and partition,
//!   the next offset to read, the partition's end offset, the lag, rows
//!   read and rejected, the partition's event-time clock (`watermark`, the
//!   largest watermark value read) and whether it is `idle` (sources with
//!   a `WATERMARK FOR`), and the connector's last error. A datagen source
//!   or table is one row: topic `datagen`, partition 0, the next row index,
//!   and its sequence's end (if bounded).
//! - `kafka_source_errors`: the latest rejected messages (1000 per
//!   source): partition, offset, error.
//! - `kafka_sinks`: per sink (Kafka, Delta Lake, blackhole), records sent
//!   (a blackhole's: consumed), the last published epoch and the last
//!   error.
//! - `watermarks`: per source or table with a `WATERMARK FOR`, its column,
//!   the watermark as of the last checkpoint and the rows dropped as late.
//! - `memory`: where the server's memory goes, one row per component with
//!   its bytes: the process's resident set, glibc's heap (in use and held:
//!   RocksDB's and librdkafka's allocations), mimalloc's committed memory
//!   (the binary's Rust allocations), the operators' state cache
//!   (its own estimate, next to its budget), and RocksDB's memtables,
//!   table readers (index and bloom filter blocks) and block cache.
//!
//! Each read is a snapshot of in-memory counters (they restart at zero
//! with the server; offsets themselves are durable).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result;

use crate::connector::metrics::Metrics;

pub const SYSTEM_SCHEMA: &str = "eddy_catalog";
const TABLES: &[&str] = &["kafka_source_partitions", "kafka_source_errors", "kafka_sinks", "watermarks", "memory"];

pub struct SystemSchema {
    metrics: Arc<Metrics>,
    watermarks: Option<crate::stream::watermark::WatermarkStatuses>,
    budget: Option<Arc<crate::stream::state::CacheBudget>>,
    db: Option<Arc<rocksdb::DB>>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema").finish_non_exhaustive()
    }
}

impl SystemSchema {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, watermarks: None, budget: None, db: None }
    }

    /// Also answers `watermarks` and the state cache's row of `memory`
    /// from the stream runtime.
    pub fn with_stream(mut self, stream: &crate::stream::StreamRuntime) -> Self {
        self.watermarks = Some(stream.watermark_statuses());
        self.budget = Some(stream.cache_budget());
        self
    }

    /// Also answers RocksDB's rows of `memory`.
    pub fn with_db(mut self, db: Arc<rocksdb::DB>) -> Self {
        self.db = Some(db);
        self
    }

    /// `memory`'s rows: (component, bytes, note).
    fn memory_rows(&self) -> Vec<(String, Option<i64>, Option<String>)> {
        let mut rows = vec![("process_rss".to_string(), process_rss(), None)];
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: mallinfo2 only reads glibc's allocator counters (it
            // needs glibc 2.33, Debian 12's is 2.36; it walks each arena's
            // free lists under its lock: fine for a diagnostic query).
            let m = unsafe { libc::mallinfo2() };
            let note = "glibc malloc: RocksDB and librdkafka (the eddy binary's Rust allocations go to mimalloc)";
            rows.push(("c_heap_in_use".into(), Some((m.uordblks + m.hblkhd) as i64), Some(note.into())));
            rows.push(("c_heap_held".into(), Some((m.arena + m.hblkhd) as i64), Some(note.into())));
        }
        let mut commit = 0usize;
        // SAFETY: every out-parameter but one is null (mimalloc skips those).
        unsafe {
            let null = std::ptr::null_mut();
            libmimalloc_sys::mi_process_info(null, null, null, null, null, &mut commit, null, null);
        }
        rows.push((
            "rust_heap_committed".into(),
            Some(commit as i64),
            Some("mimalloc's committed memory: the eddy binary's Rust allocations".into()),
        ));
        if let Some(b) = &self.budget {
            let used = b.used_bytes.load(std::sync::atomic::Ordering::Relaxed);
            rows.push((
                "state_cache".into(),
                Some(used as i64),
                Some(format!("estimate; budget {} bytes (state_cache_mb)", b.budget_bytes)),
            ));
        }
        if let Some(db) = &self.db {
            for (name, property, note) in [
                ("rocksdb_memtables", "rocksdb.cur-size-all-mem-tables", "active and immutable memtables"),
                ("rocksdb_table_readers", "rocksdb.estimate-table-readers-mem", "index and bloom filter blocks of open SST files"),
                ("rocksdb_block_cache", "rocksdb.block-cache-usage", "decompressed data blocks"),
            ] {
                let bytes = db.property_int_value(property).ok().flatten().map(|v| v as i64);
                rows.push((name.into(), bytes, Some(note.into())));
            }
        }
        rows
    }

    fn build(&self, name: &str) -> Result<Option<RecordBatch>> {
        let s = |v: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let so = |v: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let i64s = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        let sources: Vec<(String, Arc<std::sync::Mutex<crate::connector::metrics::SourceStats>>)> = self
            .metrics
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let batch = match name {
            "kafka_source_partitions" => {
                let (mut src, mut topic, mut part, mut off, mut end, mut lag, mut read, mut rej, mut err) =
                    (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
                let (mut wm, mut idle) = (vec![], vec![]);
                for (n, stats) in &sources {
                    let st = stats.lock().unwrap_or_else(|p| p.into_inner());
                    for (p, ps) in &st.partitions {
                        src.push(n.clone());
                        topic.push(st.topic.clone());
                        part.push(*p);
                        off.push(Some(ps.offset));
                        end.push(ps.end_offset);
                        lag.push(ps.end_offset.map(|e| (e - ps.offset).max(0)));
                        read.push(Some(ps.rows_read as i64));
                        rej.push(Some(ps.rows_rejected as i64));
                        wm.push(ps.watermark);
                        idle.push(ps.idle);
                        err.push(st.last_error.clone());
                    }
                }
                let schema = Arc::new(Schema::new(vec![
                    Field::new("source", DataType::Utf8, false),
                    Field::new("topic", DataType::Utf8, false),
                    Field::new("partition", DataType::Int32, false),
                    Field::new("offset", DataType::Int64, true),
                    Field::new("end_offset", DataType::Int64, true),
                    Field::new("lag", DataType::Int64, true),
                    Field::new("rows_read", DataType::Int64, true),
                    Field::new("rows_rejected", DataType::Int64, true),
                    Field::new("watermark", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                    Field::new("idle", DataType::Boolean, true),
                    Field::new("last_error", DataType::Utf8, true),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        s(src),
                        s(topic),
                        Arc::new(Int32Array::from(part)),
                        i64s(off),
                        i64s(end),
                        i64s(lag),
                        i64s(read),
                        i64s(rej),
                        Arc::new(TimestampMicrosecondArray::from(wm)),
                        Arc::new(datafusion::arrow::array::BooleanArray::from(idle)),
                        so(err),
                    ],
                )?
            }
            "kafka_source_errors" => {
                let (mut src, mut topic, mut part, mut off, mut err, mut at) = (vec![], vec![], vec![], vec![], vec![], vec![]);
                for (n, stats) in &sources {
                    let st = stats.lock().unwrap_or_else(|p| p.into_inner());
                    for e in &st.errors {
                        src.push(n.clone());
                        topic.push(st.topic.clone());
                        part.push(e.partition);
                        off.push(Some(e.offset));
                        err.push(e.error.clone());
                        at.push(e.at.timestamp_micros());
                    }
                }
                let schema = Arc::new(Schema::new(vec![
                    Field::new("source", DataType::Utf8, false),
                    Field::new("topic", DataType::Utf8, false),
                    Field::new("partition", DataType::Int32, false),
                    Field::new("offset", DataType::Int64, true),
                    Field::new("error", DataType::Utf8, false),
                    Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        s(src),
                        s(topic),
                        Arc::new(Int32Array::from(part)),
                        i64s(off),
                        s(err),
                        Arc::new(TimestampMicrosecondArray::from(at).with_timezone("+00:00")),
                    ],
                )?
            }
            "kafka_sinks" => {
                let sinks: Vec<(String, crate::connector::metrics::SinkStats)> = self
                    .metrics
                    .sinks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(k, v)| (k.clone(), v.lock().unwrap_or_else(|p| p.into_inner()).clone()))
                    .collect();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("sink", DataType::Utf8, false),
                    Field::new("topic", DataType::Utf8, false),
                    Field::new("records", DataType::Int64, true),
                    Field::new("published_epoch", DataType::Int64, true),
                    Field::new("last_error", DataType::Utf8, true),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        s(sinks.iter().map(|(n, _)| n.clone()).collect()),
                        s(sinks.iter().map(|(_, st)| st.topic.clone()).collect()),
                        i64s(sinks.iter().map(|(_, st)| Some(st.records as i64)).collect()),
                        i64s(sinks.iter().map(|(_, st)| Some(st.published_epoch as i64)).collect()),
                        so(sinks.iter().map(|(_, st)| st.last_error.clone()).collect()),
                    ],
                )?
            }
            "watermarks" => {
                let list: Vec<crate::stream::watermark::WatermarkStatus> = self
                    .watermarks
                    .as_ref()
                    .map(|w| w.lock().map(|m| m.values().cloned().collect()).unwrap_or_default())
                    .unwrap_or_default();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("column", DataType::Utf8, false),
                    Field::new("watermark", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                    Field::new("late_rows", DataType::Int64, false),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        s(list.iter().map(|w| w.table.clone()).collect()),
                        s(list.iter().map(|w| w.column.clone()).collect()),
                        Arc::new(TimestampMicrosecondArray::from(list.iter().map(|w| w.watermark).collect::<Vec<_>>())),
                        i64s(list.iter().map(|w| Some(w.late_rows as i64)).collect()),
                    ],
                )?
            }
            "memory" => {
                let rows = self.memory_rows();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("component", DataType::Utf8, false),
                    Field::new("bytes", DataType::Int64, true),
                    Field::new("note", DataType::Utf8, true),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        s(rows.iter().map(|r| r.0.clone()).collect()),
                        i64s(rows.iter().map(|r| r.1).collect()),
                        so(rows.iter().map(|r| r.2.clone()).collect()),
                    ],
                )?
            }
            _ => return Ok(None),
        };
        Ok(Some(batch))
    }
}

/// The resident set of this process, from `/proc/self/status` (Linux).
fn process_rss() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(batch) = self.build(name)? else { return Ok(None) };
        Ok(Some(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
