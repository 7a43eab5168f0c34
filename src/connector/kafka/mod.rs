//! Kafka: the ingest of sources and Kafka-fed tables ([`ingest`]), the
//! sink publisher ([`sink`]), and the bounded reads that serve `SELECT`
//! on a source and fill a new view from a source ([`read_range`]).
//!
//! Offsets are eddy's, not the consumer group's: every ingested chunk is
//! written with the next offset of each partition in one atomic write
//! (`m/srcoff/...`), so after a crash ingest resumes exactly after the
//! last durable row. The offsets are also committed to the consumer group
//! `eddy-<name>` (or `properties.group.id`) so standard tools show lag.

pub mod clock;
pub mod ingest;
pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::decode::{Decoder, MessageRef};
use super::metrics::Metrics;
use super::spec::{IncludeKind, KafkaOptions, Startup};
use super::{ConnectorError, ConnectorResult};
use crate::catalog::Table;
use crate::state::keys;

/// How long CREATE waits for the broker before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages decoded and written together.
pub const CHUNK_MESSAGES: usize = 16_384;

/// The running ingest threads and sink publishers, by catalog id.
#[derive(Default)]
pub struct Connectors {
    pub metrics: Arc<Metrics>,
    ingest: Mutex<HashMap<u64, ingest::IngestHandle>>,
    sinks: Mutex<HashMap<u64, SinkHandle>>,
}

/// A running sink publisher (Kafka) or committer (Delta).
pub struct SinkHandle {
    pub stop: Box<dyn Fn() + Send + Sync>,
    pub stats: Arc<Mutex<super::metrics::SinkStats>>,
    /// Set to make it publish what is pending at once (shutdown).
    pub drain: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Connectors {
    pub fn add_ingest(&self, id: u64, handle: ingest::IngestHandle) {
        if let Some(old) = self.ingest.lock().unwrap_or_else(|p| p.into_inner()).insert(id, handle) {
            old.stop();
        }
    }

    pub fn stop_ingest(&self, id: u64, name: &str) {
        if let Some(h) = self.ingest.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            h.stop();
        }
        self.metrics.remove(name);
    }

    pub fn add_sink(&self, id: u64, handle: SinkHandle) {
        if let Some(old) = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).insert(id, handle) {
            (old.stop)();
        }
    }

    pub fn stop_sink(&self, id: u64, name: &str) {
        if let Some(h) = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            (h.stop)();
        }
        self.metrics.remove(name);
    }

    /// Stops every ingest thread (first step of a shutdown).
    pub fn stop_ingest_all(&self) {
        for (_, h) in self.ingest.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            h.stop();
        }
    }

    /// Waits until every sink has published everything up to `epoch` (the
    /// final checkpoint of a shutdown), at most `timeout` in all.
    pub async fn drain_sinks(&self, epoch: u64, timeout: std::time::Duration) {
        let sinks: Vec<(u64, Arc<Mutex<super::metrics::SinkStats>>)> = {
            let map = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
            for h in map.values() {
                if let Some(d) = &h.drain {
                    d.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            map.iter().map(|(id, h)| (*id, h.stats.clone())).collect()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        for (id, stats) in sinks {
            loop {
                let caught_up = stats.lock().unwrap_or_else(|p| p.into_inner()).caught_up_epoch;
                if caught_up >= epoch {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    tracing::warn!("sink {id} did not publish its last epoch before shutdown; it will after the restart");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops every connector (server shutdown).
    pub fn stop_all(&self) {
        for (_, h) in self.ingest.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            h.stop();
        }
        for (_, h) in self.sinks.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            (h.stop)();
        }
    }
}

/// Sets `key` unless the user's `properties.*` did.
pub fn set_default(config: &mut rdkafka::ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// A consumer's settings for `opts`: the user's `properties.*` without
/// the producer-only ones (a sink's would each log a warning), and
/// eddy's own offset handling.
pub fn consumer_config(opts: &KafkaOptions) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in &opts.properties {
        if !["transaction", "linger", "acks", "enable.idempotence"].iter().any(|p| k.starts_with(p)) {
            config.set(k, v);
        }
    }
    config.set("enable.auto.commit", "false");
    config
}

/// A consumer for `opts` (no group commits unless `group` is given).
pub fn consumer(opts: &KafkaOptions, group: Option<&str>) -> ConnectorResult<BaseConsumer> {
    let mut config = consumer_config(opts);
    config.set("enable.auto.offset.store", "false");
    config.set("enable.partition.eof", "false");
    set_default(&mut config, "isolation.level", "read_committed");
    set_default(&mut config, "auto.offset.reset", "earliest");
    set_default(&mut config, "client.id", "eddy");
    match group {
        Some(g) => {
            set_default(&mut config, "group.id", g);
        }
        None => {
            set_default(&mut config, "group.id", "eddy-reader");
        }
    }
    Ok(config.create()?)
}

/// The topic's partitions; a clear error when the broker cannot be
/// reached or the topic does not exist. Blocking.
pub fn partitions(client: &BaseConsumer, opts: &KafkaOptions, timeout: Duration) -> ConnectorResult<Vec<i32>> {
    let md = client.fetch_metadata(Some(&opts.topic), timeout).map_err(|e| {
        ConnectorError::Unreachable(format!("could not reach the Kafka broker(s) at {}: {e}", opts.bootstrap()))
    })?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == opts.topic)
        .ok_or_else(|| ConnectorError::NoTopic(format!("Kafka topic \"{}\" does not exist", opts.topic)))?;
    if let Some(err) = topic.error() {
        let err = rdkafka::types::RDKafkaRespErr::from(err);
        return Err(match err {
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART => {
                ConnectorError::NoTopic(format!("Kafka topic \"{}\" does not exist", opts.topic))
            }
            other => ConnectorError::Unreachable(format!("Kafka topic \"{}\": {other:?}", opts.topic)),
        });
    }
    let mut parts: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    if parts.is_empty() {
        return Err(ConnectorError::NoTopic(format!("Kafka topic \"{}\" does not exist", opts.topic)));
    }
    parts.sort_unstable();
    Ok(parts)
}

/// Checks at CREATE that the broker answers and the topic exists.
pub async fn check_topic(opts: &KafkaOptions) -> ConnectorResult<Vec<i32>> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&opts, None)?;
        partitions(&c, &opts, CONNECT_TIMEOUT)
    })
    .await
    .map_err(|e| ConnectorError::Unreachable(e.to_string()))?
}

/// Where reading `partition` starts for `startup`: a concrete offset.
pub fn start_offset(client: &BaseConsumer, topic: &str, partition: i32, startup: Startup) -> ConnectorResult<i64> {
    let (low, high) = client.fetch_watermarks(topic, partition, CONNECT_TIMEOUT)?;
    match startup {
        Startup::Earliest => Ok(low),
        Startup::Latest => Ok(high),
        Startup::Timestamp(ms) => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(ms))?;
            let found = client.offsets_for_times(tpl, CONNECT_TIMEOUT)?;
            let offset = found
                .find_partition(topic, partition)
                .map(|e| e.offset())
                .unwrap_or(Offset::End);
            Ok(match offset {
                Offset::Offset(o) => o,
                _ => high,
            })
        }
    }
}

/// Reads `ranges` (partition, from, to: exclusive) and hands decoded
/// batches to `out`. Blocking. Rejected messages are skipped.
pub fn read_range(
    opts: &KafkaOptions,
    decoder: &Decoder,
    header_names: &[Option<String>],
    ranges: &[(i32, i64, i64)],
    out: &mut dyn FnMut(RecordBatch) -> ConnectorResult<()>,
) -> ConnectorResult<()> {
    let todo: Vec<&(i32, i64, i64)> = ranges.iter().filter(|(_, from, to)| to > from).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let client = consumer(opts, None)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (p, from, to) in &todo {
        // Kafka may have deleted old messages: start at the earliest kept.
        let (low, _) = client.fetch_watermarks(&opts.topic, *p, CONNECT_TIMEOUT)?;
        let from = (*from).max(low);
        if from < *to {
            tpl.add_partition_offset(&opts.topic, *p, Offset::Offset(from))?;
            remaining.insert(*p, *to);
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    client.assign(&tpl)?;
    let mut last_progress = Instant::now();
    let mut held = Vec::new();
    while !remaining.is_empty() {
        match client.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let p = m.partition();
                let Some(&end) = remaining.get(&p) else { continue };
                if m.offset() >= end {
                    remaining.remove(&p);
                    continue;
                }
                if m.offset() + 1 >= end {
                    remaining.remove(&p);
                }
                held.push(m);
                if held.len() >= CHUNK_MESSAGES {
                    emit(decoder, header_names, &held, out)?;
                    held.clear();
                }
            }
            Some(Err(e)) => {
                if last_progress.elapsed() > Duration::from_secs(30) {
                    return Err(e.into());
                }
            }
            None => {
                if last_progress.elapsed() > Duration::from_secs(30) {
                    return Err(ConnectorError::Unreachable(format!(
                        "reading Kafka topic \"{}\" made no progress for 30 s",
                        opts.topic
                    )));
                }
                // Transactions' control records use offsets too: a range may
                // end on one that is never delivered.
                let positions = client.position()?;
                for e in positions.elements() {
                    if let (Offset::Offset(pos), Some(&end)) = (e.offset(), remaining.get(&e.partition())) {
                        if pos >= end {
                            remaining.remove(&e.partition());
                        }
                    }
                }
            }
        }
    }
    if !held.is_empty() {
        emit(decoder, header_names, &held, out)?;
    }
    Ok(())
}

fn emit(
    decoder: &Decoder,
    header_names: &[Option<String>],
    held: &[rdkafka::message::BorrowedMessage<'_>],
    out: &mut dyn FnMut(RecordBatch) -> ConnectorResult<()>,
) -> ConnectorResult<()> {
    let refs: Vec<MessageRef<'_>> = held.iter().map(|m| message_ref(m, header_names)).collect();
    let decoded = decoder.decode(&refs);
    if decoded.batch.num_rows() > 0 {
        out(decoded.batch)?;
    }
    Ok(())
}

/// Header names of a connector's includes, one slot per include.
pub fn header_names(def: &super::ConnectorDef) -> Vec<Option<String>> {
    def.includes
        .iter()
        .map(|i| match &i.kind {
            IncludeKind::Header(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

pub fn message_ref<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, header_names: &[Option<String>]) -> MessageRef<'a> {
    let headers = header_names
        .iter()
        .map(|name| {
            let name = name.as_deref()?;
            let hs = m.headers()?;
            hs.iter().find(|h| h.key == name).and_then(|h| h.value)
        })
        .collect();
    MessageRef {
        key: m.key(),
        payload: m.payload(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        headers,
    }
}

/// A decoder for a source or Kafka table.
pub fn decoder_for(table: &Table) -> ConnectorResult<(Decoder, KafkaOptions, Vec<Option<String>>)> {
    let def = table
        .def
        .connector
        .as_ref()
        .ok_or_else(|| ConnectorError::Option(format!("{} has no connector", table.name())))?;
    let opts = KafkaOptions::for_source(&def.options)?;
    let decoder = Decoder::new(table.schema.clone(), table.def.primary_key.clone(), def).map_err(ConnectorError::Option)?;
    Ok((decoder, opts, header_names(def)))
}

/// Stored offsets of a source: `partition → offset` under `prefix`.
pub fn stored_offsets(
    read: impl Fn(&[u8]) -> Vec<(Vec<u8>, Vec<u8>)>,
    prefix: &[u8],
    table_id: u64,
) -> BTreeMap<i32, i64> {
    let base = keys::meta_key(prefix, table_id);
    read(&base)
        .into_iter()
        .filter_map(|(k, v)| {
            let p = keys::source_offset_partition(&k)?;
            let o = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            Some((p, o))
        })
        .collect()
}

/// Fills a new view from a source: the messages from where ingest began
/// up to the offsets in `snapshot` (the log after the snapshot holds the
/// rest). Blocking.
pub fn backfill_source(
    snapshot: &rocksdb::Snapshot<'_>,
    table: &Table,
    projection: Option<&[usize]>,
    out: &mut dyn FnMut(RecordBatch) -> crate::stream::StreamResult<()>,
) -> crate::stream::StreamResult<()> {
    let fail = |e: ConnectorError| crate::stream::StreamError::Failed(format!("reading source {}: {e}", table.name()));
    let (decoder, opts, headers) = decoder_for(table).map_err(fail)?;
    let scan = |p: &[u8]| crate::state::scan_prefix(snapshot.raw_iterator(), p).unwrap_or_default();
    let starts = stored_offsets(scan, keys::META_SOURCE_START_PREFIX, table.id());
    let ends = stored_offsets(scan, keys::META_SOURCE_OFFSET_PREFIX, table.id());
    let ranges: Vec<(i32, i64, i64)> =
        ends.iter().map(|(p, end)| (*p, starts.get(p).copied().unwrap_or(0), *end)).collect();
    let mut error = None;
    read_range(&opts, &decoder, &headers, &ranges, &mut |batch| {
        let batch = match projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        out(batch).map_err(|e| {
            let msg = e.to_string();
            error = Some(e);
            ConnectorError::Option(msg)
        })
    })
    .map_err(|e| error.take().unwrap_or_else(|| fail(e)))
}
