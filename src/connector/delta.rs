//! Delta Lake sinks: options, creating or checking the table, and the
//! committer that turns the sink's outbox into Delta commits, exactly once
//! (`docs/delta.md`).
//!
//! After a checkpoint is durable the committer takes the outbox epochs
//! (rows written by [`crate::stream::ops::delta_sink`]) and, every
//! `commit_checkpoint_interval` epochs, writes them as Parquet files and
//! commits them in ONE Delta commit carrying the action
//! `txn(appId = <sink's id>, version = <last epoch in it>)`. On start it
//! reads the table's txn version for its appId and drops outbox epochs at
//! or below it: an epoch is never committed twice. Files written by a
//! commit that never happened stay unreferenced (VACUUM removes them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use rocksdb::DB;
use tokio::sync::watch;

use super::metrics::SinkStats;
use super::spec::column_list;
use super::{ConnectorError, ConnectorResult};
use crate::failpoint;
use crate::state::WriterHandle;
use crate::stream::ops::delta_sink::{DELETE_COLUMN, decode_outbox};
use crate::stream::ops::sink::{clear_outbox_through, outbox_first_epoch, read_next_outbox_epoch};

/// A Delta sink's validated options.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    pub location: url::Url,
    pub partition_by: Vec<String>,
    pub primary_key: Vec<String>,
    /// Epochs per Delta commit.
    pub commit_every: u64,
    /// `s3.*` (and other object-store settings), passed through.
    pub storage: HashMap<String, String>,
}

const OPTIONS: &[&str] = &["connector", "location", "partition_by", "primary_key", "commit_checkpoint_interval", "type", "force_append_only"];

impl DeltaOptions {
    pub fn parse(options: &BTreeMap<String, String>, checkpoint_interval_ms: u64) -> ConnectorResult<Self> {
        let location = options
            .get("location")
            .ok_or_else(|| ConnectorError::Option("missing option location (for example location = 'file:///data/lake/t')".into()))?;
        let location = if location.contains("://") {
            url::Url::parse(location).map_err(|e| ConnectorError::Option(format!("location '{location}': {e}")))?
        } else {
            url::Url::from_directory_path(location)
                .map_err(|_| ConnectorError::Option(format!("location '{location}' must be an absolute path or a URL")))?
        };
        if matches!(location.scheme(), "s3" | "s3a") && !cfg!(feature = "s3") {
            return Err(ConnectorError::Unsupported(format!(
                "location '{location}': this eddy was built without S3 support; build it with `cargo build --release --features s3`"
            )));
        }
        if !matches!(location.scheme(), "file" | "s3" | "s3a") {
            return Err(ConnectorError::Unsupported(format!(
                "location '{location}': eddy writes Delta tables to file:// (and s3:// when built with --features s3) locations"
            )));
        }
        let mut storage = HashMap::new();
        for (k, v) in options {
            if k.starts_with("s3.") || k.starts_with("azure.") || k.starts_with("gcs.") {
                storage.insert(storage_key(k), v.clone());
            } else if !OPTIONS.contains(&k.as_str()) {
                return Err(ConnectorError::Option(format!("unknown option {k}; options here are {} and s3.*", OPTIONS.join(", "))));
            }
        }
        let commit_every = match options.get("commit_checkpoint_interval") {
            Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConnectorError::Option(format!("commit_checkpoint_interval must be a positive number of checkpoints, not '{v}'"))
            })?,
            // About 10 s between commits.
            None => (10_000 / checkpoint_interval_ms.max(1)).max(1),
        };
        Ok(Self { location, partition_by: column_list(options, "partition_by"), primary_key: column_list(options, "primary_key"), commit_every, storage })
    }
}

/// The object-store setting of a `s3.*` (`azure.*`, `gcs.*`) option:
/// RisingWave's names (`s3.access.key`, `s3.secret.key`, `s3.region`,
/// `s3.endpoint`) become delta-rs's; any other is passed on without its
/// prefix (`s3.AWS_S3_LOCKING_PROVIDER` → `AWS_S3_LOCKING_PROVIDER`).
fn storage_key(option: &str) -> String {
    match option {
        "s3.access.key" => "AWS_ACCESS_KEY_ID".into(),
        "s3.secret.key" => "AWS_SECRET_ACCESS_KEY".into(),
        "s3.region" => "AWS_REGION".into(),
        "s3.endpoint" => "AWS_ENDPOINT_URL".into(),
        other => other.split_once('.').map(|(_, rest)| rest).unwrap_or_default().to_string(),
    }
}

/// The Delta type eddy writes for an Arrow column type (TIME and INTERVAL
/// have no Delta type: they are written as text).
pub fn delta_arrow_type(t: &DataType) -> DataType {
    match t {
        DataType::Time64(_) | DataType::Interval(_) => DataType::Utf8,
        other => other.clone(),
    }
}

/// The sink's rows as Delta stores them.
pub fn table_schema(query: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        query.fields().iter().map(|f| Field::new(f.name(), delta_arrow_type(f.data_type()), true)).collect::<Vec<_>>(),
    ))
}

async fn open(opts: &DeltaOptions) -> ConnectorResult<DeltaTable> {
    DeltaTable::try_from_url_with_storage_options(opts.location.clone(), opts.storage.clone())
        .await
        .map_err(delta_error)
}

fn delta_error(e: deltalake::DeltaTableError) -> ConnectorError {
    ConnectorError::Delta(e.to_string())
}

/// At CREATE SINK: creates a missing table with the query's schema, or
/// checks that an existing one has every column with a matching type.
pub async fn prepare_table(opts: &DeltaOptions, query: &Schema) -> ConnectorResult<()> {
    for c in opts.partition_by.iter().chain(&opts.primary_key) {
        if query.index_of(c).is_err() {
            return Err(ConnectorError::Option(format!("column \"{c}\" is not in the sink's query")));
        }
    }
    if opts.location.scheme() == "file" {
        if let Ok(path) = opts.location.to_file_path() {
            std::fs::create_dir_all(&path)
                .map_err(|e| ConnectorError::Delta(format!("cannot create {}: {e}", path.display())))?;
        }
    }
    let table = open(opts).await?;
    let wanted = table_schema(query);
    if table.version().is_some() {
        let existing: Schema = {
            use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;
            let snapshot = table.snapshot().map_err(delta_error)?;
            let s: Schema = snapshot.schema().as_ref().try_into_arrow().map_err(|e: datafusion::arrow::error::ArrowError| ConnectorError::Delta(e.to_string()))?;
            s
        };
        let mut problems = Vec::new();
        for f in wanted.fields() {
            match existing.field_with_name(f.name()) {
                Err(_) => problems.push(format!("column \"{}\" is missing from the table", f.name())),
                Ok(e) if !same_type(e.data_type(), f.data_type()) => problems.push(format!(
                    "column \"{}\" is {} in the table but {} in the query",
                    f.name(),
                    e.data_type(),
                    f.data_type()
                )),
                Ok(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(ConnectorError::Option(format!(
                "the Delta table at {} does not match the sink's query: {}",
                opts.location,
                problems.join("; ")
            )));
        }
        return Ok(());
    }
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let kernel: deltalake::kernel::StructType =
        wanted.as_ref().try_into_kernel().map_err(|e: datafusion::arrow::error::ArrowError| ConnectorError::Delta(e.to_string()))?;
    table
        .create()
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(opts.partition_by.clone())
        .await
        .map_err(delta_error)?;
    Ok(())
}

fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::Timestamp(u1, z1), DataType::Timestamp(u2, z2)) => {
            // Delta stores microseconds; UTC is spelled several ways.
            let _ = (u1, u2);
            z1.is_some() == z2.is_some()
        }
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
        (DataType::Binary | DataType::LargeBinary | DataType::BinaryView, DataType::Binary | DataType::LargeBinary | DataType::BinaryView) => true,
        _ => a == b,
    }
}

pub struct CommitterHandle {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Mutex<SinkStats>>,
}

impl CommitterHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
    }

    pub fn stats(&self) -> Arc<Mutex<SinkStats>> {
        self.stats.clone()
    }
}

pub struct Committer {
    pub sink_id: u64,
    pub name: String,
    /// The txn appId: stable per sink and data directory.
    pub app_id: String,
    pub opts: DeltaOptions,
    pub query_schema: SchemaRef,
    pub db: Arc<DB>,
    pub writer: WriterHandle,
    pub epochs: watch::Receiver<u64>,
    pub stats: Arc<Mutex<SinkStats>>,
    /// Commit whatever is pending at once (shutdown).
    pub drain: Arc<AtomicBool>,
    /// The checkpoint interval: epochs that wait longer than
    /// `commit_every` intervals are committed even if no more come.
    pub interval: Duration,
}

pub fn spawn(c: Committer) -> CommitterHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = c.stats.clone();
    let task = tokio::spawn(run(c, stop.clone()));
    CommitterHandle { stop, task, stats }
}

fn stats(c: &Committer) -> std::sync::MutexGuard<'_, SinkStats> {
    c.stats.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(mut c: Committer, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(500);
    let mut committed: Option<u64> = None;
    let mut first: Option<u64> = None;
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let seen = *c.epochs.borrow_and_update();
        let overdue = waiting_since.is_some_and(|t| t.elapsed() >= c.interval * c.opts.commit_every as u32);
        match commit_pending(&c, &mut committed, &mut first, seen, overdue).await {
            Ok(all) => {
                backoff = Duration::from_millis(500);
                {
                    let mut s = stats(&c);
                    s.last_error = None;
                    if all {
                        s.caught_up_epoch = s.caught_up_epoch.max(seen);
                    }
                }
                if all {
                    waiting_since = None;
                } else if waiting_since.is_none() {
                    waiting_since = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    changed = c.epochs.changed() => if changed.is_err() { return },
                    // Epochs wait: look again soon (time or a drain may commit them).
                    _ = tokio::time::sleep(Duration::from_millis(100)), if !all => {}
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(sink = c.name, "Delta commit failed: {message}; retrying in {backoff:?}");
                stats(&c).last_error = Some(message);
                committed = None; // re-read the table's txn version
                first = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Runs a blocking outbox read off the async threads.
async fn blocking<T: Send + 'static>(
    c: &Committer,
    f: impl FnOnce(&DB, u64) -> crate::state::StateResult<T> + Send + 'static,
) -> ConnectorResult<T> {
    let db = c.db.clone();
    let sink_id = c.sink_id;
    tokio::task::spawn_blocking(move || f(&db, sink_id))
        .await
        .map_err(|e| ConnectorError::Delta(e.to_string()))?
        .map_err(ConnectorError::from)
}

/// The rows of the first outbox epoch at or after `from`.
async fn next_epoch(c: &Committer, from: u64) -> ConnectorResult<Option<(u64, Vec<RecordBatch>)>> {
    let Some((epoch, values)) = blocking(c, move |db, id| read_next_outbox_epoch(db, id, from)).await? else { return Ok(None) };
    let mut batches = Vec::new();
    for v in &values {
        batches.extend(decode_outbox(v).map_err(|e| ConnectorError::Delta(e.to_string()))?);
    }
    Ok(Some((epoch, batches)))
}

/// Commits the outbox when enough epochs wait (or when draining);
/// returns whether the outbox is now empty.
///
/// Whether to commit is judged from the oldest waiting epoch (`first`,
/// remembered between calls until a commit) and the newest durable one
/// `seen`: the outbox is read only to commit it, an epoch at a time (an
/// append sink streams each into the Parquet writer), and is deleted by
/// range. So neither polling nor a large commit reads every waiting row
/// again or holds them all in memory.
async fn commit_pending(
    c: &Committer,
    committed: &mut Option<u64>,
    first: &mut Option<u64>,
    seen: u64,
    overdue: bool,
) -> ConnectorResult<bool> {
    if first.is_none() {
        *first = blocking(c, outbox_first_epoch).await?;
    }
    let Some(oldest) = *first else { return Ok(true) };
    let draining = c.drain.load(Ordering::SeqCst);
    let ready = |oldest: u64| seen.saturating_sub(oldest) + 1 >= c.opts.commit_every || overdue || draining;
    if committed.is_some() && !ready(oldest) {
        return Ok(false); // nothing to read from the table yet
    }
    let mut table = open(&c.opts).await?;
    if committed.is_none() {
        let snapshot = table.snapshot().map_err(delta_error)?;
        let v = snapshot.transaction_version(table.log_store().as_ref(), &c.app_id).await.map_err(delta_error)?;
        *committed = Some(v.map(|v| v as u64).unwrap_or(0));
    }
    let done = committed.unwrap_or(0);
    if oldest <= done {
        // Epochs the table already has: never again.
        clear_outbox_through(&c.writer, c.sink_id, done).await?;
        *first = blocking(c, outbox_first_epoch).await?;
    }
    let Some(oldest) = *first else { return Ok(true) };
    if !ready(oldest) {
        return Ok(false);
    }
    let (rows, last) = if c.opts.primary_key.is_empty() {
        append(c, &mut table, oldest).await?
    } else {
        let mut batches = Vec::new();
        let mut last = oldest;
        let mut from = oldest;
        while let Some((e, b)) = next_epoch(c, from).await? {
            batches.extend(b);
            last = e;
            from = e + 1;
        }
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        merge(table, &c.opts.primary_key, &c.query_schema, batches, txn_of(c, last)).await?;
        (rows, last)
    };
    failpoint::hit("after_delta_commit");
    *committed = Some(last);
    clear_outbox_through(&c.writer, c.sink_id, last).await?;
    *first = None;
    let mut s = stats(c);
    s.records += rows as u64;
    s.published_epoch = last;
    Ok(true)
}

/// The commit's `txn(appId, version = last epoch)`.
fn txn_of(c: &Committer, last: u64) -> CommitProperties {
    CommitProperties::default().with_application_transaction(Transaction::new(&c.app_id, last as i64))
}

/// The outbox rows as the table stores them (no marker column; TIME and
/// INTERVAL as text).
fn table_rows(batch: &RecordBatch) -> ConnectorResult<RecordBatch> {
    let n = batch.num_columns() - 1;
    let schema = table_schema(&Schema::new(batch.schema().fields()[..n].to_vec()));
    let columns = batch.columns()[..n]
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Parquet files roll over at about this size (a long run at a high rate
/// writes files of this size, not one file per commit and partition).
const TARGET_FILE_BYTES: u64 = 128 << 20;

/// Writes the outbox epochs from `oldest` on as Parquet files (streamed,
/// an epoch at a time) and commits them in one Delta commit; returns the
/// rows written and the last epoch.
async fn append(c: &Committer, table: &mut DeltaTable, oldest: u64) -> ConnectorResult<(usize, u64)> {
    let mut writer = RecordBatchWriter::for_table(table).map_err(delta_error)?.with_target_file_size(TARGET_FILE_BYTES);
    let mut rows = 0;
    let mut last = oldest;
    let mut from = oldest;
    while let Some((e, batches)) = next_epoch(c, from).await? {
        for b in batches {
            if b.num_rows() > 0 {
                rows += b.num_rows();
                writer.write(table_rows(&b)?).await.map_err(delta_error)?;
            }
        }
        last = e;
        from = e + 1;
    }
    let txn = txn_of(c, last);
    let adds = writer.flush().await.map_err(delta_error)?;
    failpoint::hit("before_delta_commit");
    let snapshot = table.snapshot().map_err(delta_error)?;
    let partition_cols: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_cols.is_empty()).then_some(partition_cols),
        predicate: None,
    };
    CommitBuilder::from(txn)
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(delta_error)?;
    Ok((rows, last))
}

/// Upserts and deletes by key in one MERGE (later epochs win per key).
async fn merge(
    table: DeltaTable,
    key: &[String],
    query: &Schema,
    batches: Vec<RecordBatch>,
    txn: CommitProperties,
) -> ConnectorResult<()> {
    // Consolidate across epochs: the last row per key.
    let Some(first) = batches.first() else { return Ok(()) };
    let schema = first.schema();
    let all = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
    let key_idx: Vec<usize> = key.iter().filter_map(|k| schema.index_of(k).ok()).collect();
    let types: Vec<DataType> = key_idx.iter().map(|&i| schema.field(i).data_type().clone()).collect();
    let codec = crate::stream::rows::RowCodec::new(&types).map_err(|e| ConnectorError::Delta(e.to_string()))?;
    let cols: Vec<_> = key_idx.iter().map(|&i| all.column(i).clone()).collect();
    let encoded = codec.encode(&cols, all.num_rows()).map_err(|e| ConnectorError::Delta(e.to_string()))?;
    let mut last: HashMap<&[u8], usize> = HashMap::new();
    for i in 0..all.num_rows() {
        last.insert(encoded.row(i), i);
    }
    let mut keep: Vec<u32> = last.into_values().map(|i| i as u32).collect();
    keep.sort_unstable();
    let indices = datafusion::arrow::array::UInt32Array::from(keep);
    let columns = all
        .columns()
        .iter()
        .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    let source = RecordBatch::try_new(schema.clone(), columns)?;
    let deleted = source.column(source.num_columns() - 1).as_boolean().clone();
    let mut data = table_rows(&source)?;
    let mut fields: Vec<Field> = data.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
    let mut columns = data.columns().to_vec();
    columns.push(Arc::new(deleted));
    data = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let ctx = datafusion::prelude::SessionContext::new();
    let df = ctx.read_batch(data).map_err(|e| ConnectorError::Delta(e.to_string()))?;
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let predicate = key.iter().map(|k| format!("target.{q} = source.{q}", q = quote(k))).collect::<Vec<_>>().join(" AND ");
    let names: Vec<String> = query.fields().iter().map(|f| f.name().clone()).collect();
    let deletes = format!("source.{}", quote(DELETE_COLUMN));
    let upserts = format!("NOT source.{}", quote(DELETE_COLUMN));
    table
        .merge(df, predicate)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(txn)
        .when_matched_delete(|d| d.predicate(deletes.clone()))
        .map_err(delta_error)?
        .when_matched_update(|mut u| {
            for n in &names {
                u = u.update(quote(n), format!("source.{}", quote(n)));
            }
            u.predicate(upserts.clone())
        })
        .map_err(delta_error)?
        .when_not_matched_insert(|mut i| {
            for n in &names {
                i = i.set(quote(n), format!("source.{}", quote(n)));
            }
            i.predicate(upserts.clone())
        })
        .map_err(delta_error)?
        .await
        .map_err(delta_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> ConnectorResult<DeltaOptions> {
        let options: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DeltaOptions::parse(&options, 1000)
    }

    #[test]
    fn storage_options_and_locations() {
        assert_eq!(storage_key("s3.access.key"), "AWS_ACCESS_KEY_ID");
        assert_eq!(storage_key("s3.endpoint"), "AWS_ENDPOINT_URL");
        assert_eq!(storage_key("s3.AWS_S3_LOCKING_PROVIDER"), "AWS_S3_LOCKING_PROVIDER");
        let local = parse(&[("location", "/tmp/t"), ("s3.region", "eu-west-1")]).expect("local");
        assert_eq!(local.location.scheme(), "file");
        assert_eq!(local.storage.get("AWS_REGION").map(String::as_str), Some("eu-west-1"));
        assert_eq!(local.commit_every, 10);
        let s3 = parse(&[("location", "s3://bucket/t"), ("s3.secret.key", "x")]);
        if cfg!(feature = "s3") {
            assert_eq!(s3.expect("s3").storage.get("AWS_SECRET_ACCESS_KEY").map(String::as_str), Some("x"));
        } else {
            assert!(matches!(s3, Err(ConnectorError::Unsupported(m)) if m.contains("--features s3")));
        }
        assert!(matches!(parse(&[("location", "gs://b/t")]), Err(ConnectorError::Unsupported(_))));
        assert!(matches!(parse(&[("location", "/tmp/t"), ("colour", "red")]), Err(ConnectorError::Option(_))));
    }
}
