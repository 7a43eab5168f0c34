//! The ingest thread of a source or Kafka-fed table: reads every
//! partition of the topic, decodes chunks of messages, and writes each
//! chunk — the rows (a table) or a change-log entry naming the chunk's
//! offsets with its rows held in memory (a source, see
//! [`crate::state::held`]), plus the next offset of every partition it
//! advanced — in one atomic write. While the stream engine has not taken
//! [`HELD_BYTES`](crate::state::held::HELD_BYTES) of held rows the thread
//! waits (at most [`HOLD_WAIT`]; then the chunk's rows go into the log
//! itself).
//! Rejected messages are counted, listed in `kafka_source_errors` and,
//! with `dead_letter_topic`, copied there. Partitions added to the topic
//! later are picked up (read from their beginning). A broker that goes
//! away is retried by librdkafka; the error shows in
//! `kafka_source_partitions.last_error` until messages flow again.
//! With a `WATERMARK FOR`, each chunk also advances the partitions'
//! event-time clocks and, when the watermark rises, logs a marker after
//! its rows ([`super::clock`]); a partition going idle does so with no
//! rows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::DB;

use crate::connector::reader::lock;
use super::clock::SourceClock;
use super::{CHUNK_MESSAGES, consumer, decoder_for, message_ref, start_offset, stored_offsets};
use crate::catalog::Table;
use crate::connector::datagen::ingest::{CheckFn, RowKeyFn};
use crate::connector::decode::{Decoded, RowOp};
use crate::connector::metrics::SourceStats;
use crate::connector::spec::Startup;
use crate::connector::{ConnectorError, ConnectorResult};
use crate::state::held::HELD_BYTES;
use crate::state::row::encode_row;
use crate::state::{StateError, WriterHandle, keys};

/// How often new partitions and end offsets are looked up.
const METADATA_INTERVAL: Duration = Duration::from_secs(5);
/// How long a chunk waits to fill before it is written.
const CHUNK_WAIT: Duration = Duration::from_millis(50);
/// How long a source's chunk waits for room among the held rows before
/// its rows are written into the log instead (the stream engine is
/// stalled or not started yet); later chunks do not wait until half of
/// [`HELD_BYTES`] is taken.
const HOLD_WAIT: Duration = Duration::from_secs(5);

pub struct IngestHandle {
    stop: Arc<AtomicBool>,
}

/// Where a new source or Kafka table starts: every partition the topic has
/// now, at `startup`, written (as start and next offset) before ingest
/// begins. Partitions that appear later are read from their beginning.
pub async fn record_start(
    writer: &WriterHandle,
    table_id: u64,
    opts: &crate::connector::spec::KafkaOptions,
) -> ConnectorResult<()> {
    let o = opts.clone();
    let starts = tokio::task::spawn_blocking(move || -> ConnectorResult<Vec<(i32, i64)>> {
        let client = consumer(&o, None)?;
        let parts = super::partitions(&client, &o, super::CONNECT_TIMEOUT)?;
        parts.into_iter().map(|p| Ok((p, start_offset(&client, &o.topic, p, o.startup)?))).collect()
    })
    .await
    .map_err(|e| ConnectorError::Unreachable(e.to_string()))??;
    writer
        .write(false, move |txn| {
            for (p, o) in &starts {
                txn.put(keys::source_offset_key(keys::META_SOURCE_START_PREFIX, table_id, *p), o.to_be_bytes().to_vec());
                txn.put(keys::source_offset_key(keys::META_SOURCE_OFFSET_PREFIX, table_id, *p), o.to_be_bytes().to_vec());
            }
            Ok(0)
        })
        .await?;
    Ok(())
}

impl IngestHandle {
    /// A handle that stops whatever watches `stop` (datagen's thread).
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        Self { stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What the thread needs.
pub struct Ingest {
    pub table: Arc<Table>,
    pub db: Arc<DB>,
    pub writer: WriterHandle,
    pub stats: Arc<Mutex<SourceStats>>,
    pub runtime: tokio::runtime::Handle,
    /// Validates and converts a decoded batch for the table (types,
    /// NOT NULL, lengths); `Err` names the problem.
    pub check: CheckFn,
    /// The table's storage key of a row (primary key or a new row id).
    pub row_key: RowKeyFn,
}

/// Starts `workers` threads; worker `i` reads the partitions `p` with
/// `p % workers == i` (each writes its own partitions' offsets, so they
/// need no coordination).
pub fn spawn(ingest: Ingest, workers: usize) -> IngestHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let clock = match clock_for(&ingest) {
        Ok(c) => c,
        Err(e) => {
            // The table was checked at CREATE; a definition that no longer
            // compiles leaves windows open but rows still flow.
            tracing::error!(source = ingest.table.name(), "event-time clock: {e}");
            lock(&ingest.stats).last_error = Some(format!("watermark: {e}"));
            None
        }
    };
    let ingest = Arc::new(ingest);
    let workers = workers.max(1);
    for worker in 0..workers {
        spawn_worker(ingest.clone(), clock.clone(), stop.clone(), worker, workers);
    }
    IngestHandle { stop }
}

fn clock_for(ingest: &Ingest) -> ConnectorResult<Option<Arc<SourceClock>>> {
    let (_, opts, _) = decoder_for(&ingest.table)?;
    let scan = |p: &[u8]| crate::state::scan_prefix(ingest.db.raw_iterator(), p).unwrap_or_default();
    SourceClock::for_table(&ingest.table, opts.idle_timeout, scan)
}

fn spawn_worker(ingest: Arc<Ingest>, clock: Option<Arc<SourceClock>>, flag: Arc<AtomicBool>, worker: usize, workers: usize) {
    let name = format!("eddy-ingest-{}-{worker}", ingest.table.name());
    let (source, stats) = (ingest.table.name().to_string(), ingest.stats.clone());
    crate::connector::reader::spawn(name, source, stats, flag, move |stop| run(&ingest, clock.as_ref(), stop, worker, workers));
}

/// Runs until stopped; `Err` when the consumer must be rebuilt.
fn run(ingest: &Ingest, clock: Option<&Arc<SourceClock>>, stop: &AtomicBool, worker: usize, workers: usize) -> ConnectorResult<()> {
    let table = &ingest.table;
    let (decoder, opts, header_names) = decoder_for(table)?;
    let group = opts.properties.get("group.id").cloned().unwrap_or_else(|| format!("eddy-{}", table.name()));
    let client: BaseConsumer = consumer(&opts, Some(&group))?;
    let dead_letters: Option<BaseProducer> = match &opts.dead_letter_topic {
        Some(_) => Some(opts.client_config().create()?),
        None => None,
    };
    // Offsets: the stored ones (see record_start); new partitions start
    // at their beginning.
    let mut offsets: BTreeMap<i32, i64> =
        stored_offsets(|p| crate::state::scan_prefix(ingest.db.raw_iterator(), p).unwrap_or_default(), keys::META_SOURCE_OFFSET_PREFIX, table.id());
    let mut next_metadata = Instant::now();
    let mut assigned: BTreeMap<i32, i64> = BTreeMap::new();
    // The idle-advance last written (so a source no view reads is not
    // written to every poll).
    let mut idle_tried: Option<i64> = None;
    // Writing chunks' rows into the log (see HOLD_WAIT).
    let mut spilling = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if Instant::now() >= next_metadata {
            next_metadata = Instant::now() + METADATA_INTERVAL;
            refresh(ingest, clock, &client, &opts, (worker, workers), &mut offsets, &mut assigned)?;
        }
        // Fill a chunk.
        let mut held = Vec::new();
        let started = Instant::now();
        // The clock is read every 64 messages and after every empty poll
        // (reading it per message cost 3% of a pass-through's CPU).
        let mut until_clock = 0u32;
        while held.len() < CHUNK_MESSAGES {
            if until_clock == 0 {
                if started.elapsed() >= CHUNK_WAIT {
                    break;
                }
                until_clock = 64;
            }
            until_clock -= 1;
            match client.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => held.push(m),
                Some(Err(e)) => {
                    lock(&ingest.stats).last_error = Some(format!("kafka: {e}"));
                    break;
                }
                None => {
                    until_clock = 0;
                    if held.is_empty() && stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                }
            }
        }
        if held.is_empty() {
            if let Some(c) = clock {
                idle_tick(ingest, c, &mut idle_tried)?;
            }
            continue;
        }
        let refs: Vec<_> = held.iter().map(|m| message_ref(m, &header_names)).collect();
        let Decoded { batch, ops, message, mut rejected } = decoder.decode(&refs);
        // Per partition the offsets read, [first, next).
        let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for m in &refs {
            let (first, next) = spans.entry(m.partition).or_insert((m.offset, m.offset + 1));
            *first = (*first).min(m.offset);
            *next = (*next).max(m.offset + 1);
        }
        let next: BTreeMap<i32, i64> = spans.iter().map(|(p, (_, to))| (*p, *to)).collect();
        let ranges: Vec<(i32, i64, i64)> = spans.into_iter().map(|(p, (from, to))| (p, from, to)).collect();
        // Table rules (types, NOT NULL, lengths): reject offending rows.
        let (batch, kept) = checked(ingest.check.as_ref(), table, batch, |i, e| {
            let m = &refs[message[i]];
            rejected.push(crate::connector::decode::Rejected { partition: m.partition, offset: m.offset, error: e });
        })?;
        let (ops, message): (Vec<RowOp>, Vec<usize>) = match kept {
            None => (ops, message),
            Some(kept) => kept.iter().map(|&i| (ops[i], message[i])).unzip(),
        };
        // Dead letters first: at least once, before the offsets move on.
        if let (Some(producer), Some(topic)) = (&dead_letters, &opts.dead_letter_topic) {
            for r in &rejected {
                if let Some(m) = held.iter().find(|m| m.partition() == r.partition && m.offset() == r.offset) {
                    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
                    if let Some(k) = m.key() {
                        rec = rec.key(k);
                    }
                    if let Some(p) = m.payload() {
                        rec = rec.payload(p);
                    }
                    let headers = rdkafka::message::OwnedHeaders::new()
                        .insert(rdkafka::message::Header { key: "eddy.error", value: Some(r.error.as_bytes()) })
                        .insert(rdkafka::message::Header { key: "eddy.source", value: Some(table.name().as_bytes()) });
                    let _ = producer.send(rec.headers(headers));
                }
            }
            let _ = producer.flush(Duration::from_secs(30));
        }
        let rows_per_partition = count_rows(&refs, &message);
        let maxima = match clock {
            Some(c) => Some((c.clone(), c.chunk_maxima(&batch, |i| refs[message[i]].partition, next.keys().copied())?)),
            None => None,
        };
        // A source's rows are held in memory, unless the stream engine is
        // too far behind to take them: after one wait in vain, chunks go
        // into the log without waiting until half the held rows are taken.
        let hold = table.def.source && {
            let held = ingest.writer.held();
            let room = if spilling { held.bytes() <= HELD_BYTES / 2 } else { held.wait_for_room(HOLD_WAIT) };
            spilling = !room;
            room
        };
        if !write_chunk(ingest, batch, ops, &next, maxima, hold.then_some(ranges))? {
            return Ok(()); // the table was dropped
        }
        {
            let mut stats = lock(&ingest.stats);
            stats.last_error = None;
            for (p, o) in &next {
                stats.partitions.entry(*p).or_default().offset = *o;
            }
            for (p, n) in rows_per_partition {
                stats.partitions.entry(p).or_default().rows_read += n;
            }
            for r in rejected {
                stats.reject(r.partition, r.offset, r.error);
            }
            if let Some(c) = clock {
                c.show(&mut stats);
            }
        }
        for (p, o) in &next {
            offsets.insert(*p, *o);
        }
        // Tell the consumer group (best effort: eddy's own offsets rule).
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &next {
            let _ = tpl.add_partition_offset(&opts.topic, *p, Offset::Offset(*o));
        }
        let _ = client.commit(&tpl, CommitMode::Async);
    }
}


/// `batch` as the table takes it (types, NOT NULL, lengths): rows that
/// break a rule are dropped and passed to `reject` (their position and
/// the error). Also returns, when some were dropped, the positions of the
/// rows kept.
pub fn checked(
    check: &dyn Fn(&Table, &RecordBatch) -> Result<RecordBatch, String>,
    table: &Table,
    batch: RecordBatch,
    mut reject: impl FnMut(usize, String),
) -> ConnectorResult<(RecordBatch, Option<Vec<usize>>)> {
    if let Ok(b) = check(table, &batch) {
        return Ok((b, None));
    }
    let mut parts = Vec::new();
    let mut kept = Vec::new();
    for i in 0..batch.num_rows() {
        match check(table, &batch.slice(i, 1)) {
            Ok(b) => {
                parts.push(b);
                kept.push(i);
            }
            Err(e) => reject(i, e),
        }
    }
    let merged = if parts.is_empty() {
        RecordBatch::new_empty(table.schema.clone())
    } else {
        datafusion::arrow::compute::concat_batches(&parts[0].schema(), &parts)?
    };
    Ok((merged, Some(kept)))
}

fn count_rows(refs: &[crate::connector::decode::MessageRef<'_>], message: &[usize]) -> BTreeMap<i32, u64> {
    let mut out = BTreeMap::new();
    for &i in message {
        *out.entry(refs[i].partition).or_insert(0) += 1;
    }
    out
}

/// Finds new partitions (resolving where they start, durably) and
/// refreshes end offsets for lag.
fn refresh(
    ingest: &Ingest,
    clock: Option<&Arc<SourceClock>>,
    client: &BaseConsumer,
    opts: &crate::connector::spec::KafkaOptions,
    (worker, workers): (usize, usize),
    offsets: &mut BTreeMap<i32, i64>,
    assigned: &mut BTreeMap<i32, i64>,
) -> ConnectorResult<()> {
    let topic = opts.topic.as_str();
    let parts = match super::partitions(client, opts, Duration::from_secs(5)) {
        Ok(p) => p.into_iter().filter(|p| (*p as usize) % workers == worker).collect::<Vec<_>>(),
        Err(e) => {
            lock(&ingest.stats).last_error = Some(e.to_string());
            return Ok(());
        }
    };
    let mut new_starts = BTreeMap::new();
    for p in &parts {
        if !offsets.contains_key(p) {
            let o = start_offset(client, topic, *p, Startup::Earliest)?;
            new_starts.insert(*p, o);
        }
    }
    if !new_starts.is_empty() {
        let id = ingest.table.id();
        let starts = new_starts.clone();
        ingest.runtime.block_on(ingest.writer.write(false, move |txn| {
            for (p, o) in &starts {
                txn.put(keys::source_offset_key(keys::META_SOURCE_START_PREFIX, id, *p), o.to_be_bytes().to_vec());
                txn.put(keys::source_offset_key(keys::META_SOURCE_OFFSET_PREFIX, id, *p), o.to_be_bytes().to_vec());
            }
            Ok(0)
        }))?;
        if let Some(c) = clock {
            new_starts.keys().for_each(|p| c.add_partition(*p));
        }
        offsets.extend(new_starts);
    }
    let unassigned: Vec<i32> = parts.iter().copied().filter(|p| !assigned.contains_key(p)).collect();
    if !unassigned.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in &unassigned {
            let o = offsets.get(p).copied().unwrap_or(0);
            tpl.add_partition_offset(topic, *p, Offset::Offset(o))?;
            assigned.insert(*p, o);
        }
        client.incremental_assign(&tpl)?;
    }
    let mut stats = lock(&ingest.stats);
    for p in &parts {
        let entry = stats.partitions.entry(*p).or_default();
        entry.offset = offsets.get(p).copied().unwrap_or(0);
        if let Ok((_, high)) = client.fetch_watermarks(topic, *p, Duration::from_secs(2)) {
            entry.end_offset = Some(high);
        }
    }
    Ok(())
}

/// With no message this poll: if a partition went idle and so the
/// watermark rose, logs the marker (once per value).
fn idle_tick(ingest: &Ingest, clock: &Arc<SourceClock>, tried: &mut Option<i64>) -> ConnectorResult<()> {
    clock.show(&mut lock(&ingest.stats));
    let Some(w) = clock.idle_advance() else { return Ok(()) };
    if *tried == Some(w) {
        return Ok(());
    }
    *tried = Some(w);
    let (c, id) = (clock.clone(), ingest.table.id());
    ingest.runtime.block_on(ingest.writer.write(false, move |txn| {
        // No rows: logs the marker if it is still due.
        c.in_write(txn, id, &BTreeMap::new());
        Ok(0)
    }))?;
    Ok(())
}

/// The chunk's largest watermark value per partition, and the clock.
type ChunkTimes = Option<(Arc<SourceClock>, BTreeMap<i32, Option<i64>>)>;

/// One atomic write: the chunk's rows (or log entries: with `held`, the
/// offsets read, the rows held in memory), the offsets, and with a
/// watermark the partitions' clocks and a marker.
fn write_chunk(
    ingest: &Ingest,
    batch: RecordBatch,
    ops: Vec<RowOp>,
    next: &BTreeMap<i32, i64>,
    times: ChunkTimes,
    held: Option<Vec<(i32, i64, i64)>>,
) -> ConnectorResult<bool> {
    let table = ingest.table.clone();
    let next = next.clone();
    let row_key = ingest.row_key.clone();
    let written = ingest.runtime.block_on(ingest.writer.write(false, move |txn| {
        let id = table.id();
        if txn.get(&keys::meta_table_key(id))?.is_none() {
            return Err(StateError::rejected("42P01", format!("relation \"{}\" was dropped", table.name())));
        }
        let rows = batch.num_rows() as u64;
        if let Some(ranges) = &held {
            // (A chunk of rejected messages only moves the offsets.)
            if rows > 0 {
                txn.log_append_held(id, ranges, batch);
            }
        } else {
            let mut capacity = 64;
            for row in 0..batch.num_rows() {
                let mut value = Vec::with_capacity(capacity);
                if table.def.source {
                    encode_row(batch.columns(), row, &mut value)?;
                    capacity = capacity.max(value.len());
                    txn.log_append(id, value);
                    continue;
                }
                let key = row_key(&table, &batch, row)?;
                match ops[row] {
                    RowOp::Upsert => {
                        encode_row(batch.columns(), row, &mut value)?;
                        capacity = capacity.max(value.len());
                        txn.put(key, value);
                    }
                    RowOp::Delete => txn.delete(key),
                }
            }
        }
        for (p, o) in &next {
            txn.put(keys::source_offset_key(keys::META_SOURCE_OFFSET_PREFIX, id, *p), o.to_be_bytes().to_vec());
        }
        if let Some((clock, maxima)) = &times {
            clock.in_write(txn, id, maxima);
        }
        Ok(rows)
    }));
    match written {
        Ok(_) => Ok(true),
        Err(StateError::Rejected { sqlstate: "42P01", .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

