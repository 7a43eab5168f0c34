//! The publisher of a Kafka sink: after each durable checkpoint it sends
//! the sink's outbox (the records of every checkpointed epoch, written by
//! [`crate::stream::ops::sink`]) to the topic in epoch order, then deletes
//! what it sent. A broker that is away is retried with backoff (the error
//! shows in `eddy_catalog.kafka_sinks`); the outbox waits on disk
//! meanwhile, so nothing is lost.
//!
//! **exactly_once** (`docs/exactly-once.md`): one Kafka transaction per
//! epoch holds the epoch's records and a progress record
//! `(transactional id → epoch)` in the sink's own compacted progress topic
//! ([`progress_topic`]). The transactional id is stable per sink (and per
//! data directory), so a restarted or duplicate eddy fences the old one.
//! At start the publisher reads its last committed epoch (read_committed)
//! and drops outbox epochs at or below it without sending them again.
//!
//! **at_least_once**: the idempotent producer; a crash after a send and
//! before the outbox delete sends that epoch again; each record carries
//! headers `eddy.sink`, `eddy.epoch`, `eddy.seq` to deduplicate on
//! (`sink.headers` turns them on or off in either mode).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureProducer, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::DB;
use tokio::sync::watch;

use crate::connector::kafka::set_default;
use crate::connector::metrics::SinkStats;
use crate::connector::spec::{Delivery, KafkaOptions};
use crate::connector::{ConnectorError, ConnectorResult};
use crate::failpoint;
use crate::state::WriterHandle;
use crate::stream::ops::sink::{clear_outbox_through, for_each_outbox_record, read_next_outbox_epoch};

/// The compacted topic of a sink's exactly-once progress records, one per
/// transactional id. Its own topic, not one shared by every sink: a
/// read_committed reader stops at the first open transaction, and another
/// sink's (left open by a crash until that sink's recovery aborts it, or
/// held by a frozen eddy until its transaction timeout) would hide this
/// sink's last commit, or stall its recovery.
pub fn progress_topic(transactional_id: &str) -> String {
    format!("eddy-progress-{transactional_id}")
}
/// Bounds one transaction's blocking calls.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PublisherHandle {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<Mutex<SinkStats>>,
}

impl PublisherHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

pub struct Publisher {
    pub sink_id: u64,
    pub name: String,
    pub opts: KafkaOptions,
    /// `eddy-<install id>-sink-<sink id>`: stable across restarts.
    pub transactional_id: String,
    pub db: Arc<DB>,
    pub writer: WriterHandle,
    pub epochs: watch::Receiver<u64>,
    pub stats: Arc<Mutex<SinkStats>>,
}

fn producer_config(p: &Publisher) -> ClientConfig {
    let mut config = p.opts.client_config();
    set_default(&mut config, "enable.idempotence", "true");
    set_default(&mut config, "linger.ms", "5");
    set_default(&mut config, "compression.type", "lz4");
    // Failures are all the publisher needs to hear of (flush and commit
    // wait for every record): a report per delivered record cost ~5% of a
    // pass-through's CPU.
    set_default(&mut config, "delivery.report.only.error", "true");
    if p.opts.delivery == Delivery::ExactlyOnce {
        config.set("transactional.id", &p.transactional_id);
        set_default(&mut config, "transaction.timeout.ms", &DEFAULT_TRANSACTION_TIMEOUT_MS.to_string());
    } else {
        set_default(&mut config, "message.timeout.ms", "30000");
    }
    config
}

/// eddy's `transaction.timeout.ms` unless the sink sets one.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// Delivery reports of the publisher's producer: a count and the first
/// failure, read after each epoch's flush (one callback per record, no
/// future or channel per record).
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Option<KafkaError>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.get_or_insert_with(|| e.clone());
        }
    }
}

impl Deliveries {
    fn take_failure(&self) -> Option<KafkaError> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

type Prod = Arc<BaseProducer<Deliveries>>;

pub fn spawn(p: Publisher) -> ConnectorResult<PublisherHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let stats = p.stats.clone();
    let task = tokio::spawn(run(p, flag));
    Ok(PublisherHandle { stop, task, stats })
}

fn stats(p: &Publisher) -> std::sync::MutexGuard<'_, SinkStats> {
    p.stats.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ConnectorResult<T> + Send + 'static) -> ConnectorResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ConnectorError::Option(e.to_string()))?
}

async fn run(mut p: Publisher, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(500);
    let mut producer: Option<Prod> = None;
    let mut published: Option<u64> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let seen = *p.epochs.borrow_and_update();
        let result = async {
            if producer.is_none() {
                let (prod, last) = connect(&p).await?;
                producer = Some(prod);
                published = last;
            }
            let prod = producer.as_ref().ok_or_else(|| ConnectorError::Option("no producer".into()))?;
            publish_pending(&p, prod, &mut published).await
        }
        .await;
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(500);
                {
                    let mut s = stats(&p);
                    s.last_error = None;
                    s.caught_up_epoch = s.caught_up_epoch.max(seen);
                }
                if p.epochs.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let message = e.to_string();
                if is_fenced(&message) {
                    // Another eddy (a copy of this data directory) owns the
                    // sink now: publishing again would duplicate its output.
                    let message = format!("{message}: another eddy with this sink's transactional id took over; this one stops publishing");
                    tracing::error!(sink = p.name, "{message}");
                    stats(&p).last_error = Some(message);
                    return;
                }
                tracing::warn!(sink = p.name, "publishing failed: {message}; retrying in {backoff:?}");
                stats(&p).last_error = Some(message);
                // A transactional producer in an unknown state is rebuilt
                // (fencing aborts whatever it had open).
                if p.opts.delivery == Delivery::ExactlyOnce {
                    producer = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A producer, and for exactly_once the last epoch committed by any
/// earlier instance of this sink (its transactions fenced first).
async fn connect(p: &Publisher) -> ConnectorResult<(Prod, Option<u64>)> {
    let producer: Prod = Arc::new(producer_config(p).create_with_context(Deliveries::default())?);
    if p.opts.delivery != Delivery::ExactlyOnce {
        return Ok((producer, None));
    }
    let topic = progress_topic(&p.transactional_id);
    ensure_progress_topic(&p.opts, &topic).await?;
    let prod = producer.clone();
    blocking(move || Ok(prod.init_transactions(TXN_TIMEOUT)?)).await?;
    failpoint::hit("during_recovery");
    let opts = p.opts.clone();
    let id = p.transactional_id.clone();
    let last = blocking(move || last_committed_epoch(&opts, &topic, &id)).await?;
    Ok((producer, last))
}

/// Creates the compacted progress topic if it is missing.
async fn ensure_progress_topic(opts: &KafkaOptions, name: &str) -> ConnectorResult<()> {
    let admin: AdminClient<DefaultClientContext> = opts.client_config().create()?;
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(ConnectorError::Unreachable(format!("could not create topic {t}: {e}"))),
        }
    }
    Ok(())
}

/// The highest epoch in a committed progress record of `id` in `topic`.
/// Blocking. Reads to the topic's end as it was (the high watermark as a
/// read_uncommitted client sees it): the transaction this instance's
/// `init_transactions` aborted may still hold the last stable offset below
/// it for a moment.
fn last_committed_epoch(opts: &KafkaOptions, topic: &str, id: &str) -> ConnectorResult<Option<u64>> {
    let mut config = crate::connector::kafka::consumer_config(opts);
    config.set("group.id", "eddy-progress-reader");
    config.set("isolation.level", "read_uncommitted");
    let high = {
        let probe: BaseConsumer = config.create()?;
        probe.fetch_watermarks(topic, 0, TXN_TIMEOUT)?.1
    };
    if high == 0 {
        return Ok(None);
    }
    config.set("isolation.level", "read_committed");
    let c: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let mut last = None;
    let deadline = std::time::Instant::now() + TXN_TIMEOUT;
    loop {
        // read_committed stops at the last stable offset; the control
        // record of the last transaction is never delivered.
        let pos = c.position()?.find_partition(topic, 0).map(|e| e.offset());
        if matches!(pos, Some(Offset::Offset(o)) if o >= high) {
            break;
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.key() == Some(id.as_bytes()) {
                    let epoch = m.payload().and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok());
                    if let Some(e) = epoch {
                        last = Some(last.map_or(e, |l: u64| l.max(e)));
                    }
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                if std::time::Instant::now() > deadline {
                    return Err(ConnectorError::Unreachable(format!("reading {topic} timed out")));
                }
                // Done when every transaction that began before `high` has
                // ended (the last stable offset passed it) and what is
                // stable has been read.
                let pos = c.position()?.find_partition(topic, 0).map(|e| e.offset());
                let (_, stable) = c.fetch_watermarks(topic, 0, TXN_TIMEOUT)?;
                if stable >= high && matches!(pos, Some(Offset::Offset(o)) if o >= stable) {
                    break;
                }
            }
        }
    }
    Ok(last)
}

/// Publishes every epoch in the outbox, oldest first.
async fn publish_pending(p: &Publisher, producer: &Prod, published: &mut Option<u64>) -> ConnectorResult<()> {
    let exactly_once = p.opts.delivery == Delivery::ExactlyOnce;
    loop {
        let db = p.db.clone();
        let sink_id = p.sink_id;
        let Some((epoch, chunks)) = blocking(move || Ok(read_next_outbox_epoch(&db, sink_id, 0)?)).await? else {
            return Ok(());
        };
        let already = exactly_once && published.is_some_and(|last| epoch <= last);
        let mut sent = 0u64;
        if !already {
            let prod = producer.clone();
            let topic = p.opts.topic.clone();
            let id = p.transactional_id.clone();
            let timeout = transaction_timeout(&p.opts);
            let headers = p.opts.headers();
            sent = blocking(move || {
                let started = std::time::Instant::now();
                let epoch = Epoch { sink_id, epoch, headers };
                send_epoch(&prod, &topic, &epoch, &chunks, exactly_once.then_some(id.as_str()))
                    .map_err(|e| timed_out_not_fenced(e, started.elapsed(), timeout))
            })
            .await?;
            if exactly_once {
                *published = Some(epoch);
            }
        }
        clear_outbox_through(&p.writer, p.sink_id, epoch).await?;
        let mut s = stats(p);
        s.records += sent;
        s.published_epoch = s.published_epoch.max(epoch);
    }
}

/// The sink's `transaction.timeout.ms`.
fn transaction_timeout(opts: &KafkaOptions) -> Duration {
    let ms = opts.properties.get("transaction.timeout.ms").and_then(|t| t.parse::<u64>().ok()).unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
    Duration::from_millis(ms)
}

/// Whether an error's text is librdkafka's "producer fenced" (it reports
/// the broker's INVALID_PRODUCER_EPOCH and PRODUCER_FENCED as such).
fn is_fenced(message: &str) -> bool {
    message.to_lowercase().contains("fenced")
}

/// A "fenced" error from a transaction that stayed open longer than the
/// transaction timeout (eddy stalled: frozen, swapped out) is the broker's
/// timeout abort, which also bumps the producer epoch, not another eddy
/// taking the sink over: it becomes an ordinary error, so the publisher
/// rebuilds its producer and publishes the epoch again. A fenced error
/// within the timeout still stops the publisher for good.
fn timed_out_not_fenced(e: ConnectorError, open_for: Duration, timeout: Duration) -> ConnectorError {
    if open_for < timeout || !is_fenced(&e.to_string()) {
        return e;
    }
    ConnectorError::Unreachable(format!(
        "the transaction stayed open {} ms, past transaction.timeout.ms ({} ms), and the broker aborted it",
        open_for.as_millis(),
        timeout.as_millis()
    ))
}

/// The epoch a publisher sends, and whether its records carry headers.
struct Epoch {
    sink_id: u64,
    epoch: u64,
    headers: bool,
}

/// Sends one epoch's records and waits until every one is acknowledged;
/// with a transactional id, inside one transaction that also holds the
/// progress record (aborted on any failure). Blocking.
fn send_epoch(producer: &BaseProducer<Deliveries>, topic: &str, e: &Epoch, chunks: &[Vec<u8>], txn: Option<&str>) -> ConnectorResult<u64> {
    if txn.is_some() {
        producer.begin_transaction()?;
    }
    let result = send_records(producer, topic, e, chunks, txn);
    if result.is_err() && txn.is_some() {
        let _ = producer.abort_transaction(TXN_TIMEOUT);
    }
    let sent = result?;
    if txn.is_some() {
        failpoint::hit("before_kafka_commit");
        producer.commit_transaction(TXN_TIMEOUT)?;
        failpoint::hit("after_kafka_commit");
    }
    Ok(sent)
}

fn send_records(producer: &BaseProducer<Deliveries>, topic: &str, e: &Epoch, chunks: &[Vec<u8>], txn: Option<&str>) -> ConnectorResult<u64> {
    use std::fmt::Write;
    let sink_text = e.sink_id.to_string();
    let epoch_text = e.epoch.to_string();
    let mut seq_text = String::new();
    let mut seq = 0u64;
    producer.context().take_failure();
    let mut refused: Option<KafkaError> = None;
    for value in chunks {
        for_each_outbox_record(value, |key, payload| {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if e.headers {
                seq_text.clear();
                let _ = write!(seq_text, "{seq}");
                rec = rec.headers(
                    OwnedHeaders::new_with_capacity(3)
                        .insert(Header { key: "eddy.sink", value: Some(sink_text.as_bytes()) })
                        .insert(Header { key: "eddy.epoch", value: Some(epoch_text.as_bytes()) })
                        .insert(Header { key: "eddy.seq", value: Some(seq_text.as_bytes()) }),
                );
            }
            seq += 1;
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(v) = payload {
                rec = rec.payload(v);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => return Ok(()),
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        // Serves delivery reports, making room.
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        refused = Some(e);
                        return Err(crate::stream::StreamError::Failed("refused".into()));
                    }
                }
            }
        })
        .map_err(|e| refused.take().map(ConnectorError::from).unwrap_or_else(|| ConnectorError::Option(e.to_string())))?;
        producer.poll(Duration::ZERO);
    }
    if let Some(id) = txn {
        let progress_topic = progress_topic(id);
        let rec: BaseRecord<'_, str, str> = BaseRecord::to(&progress_topic).key(id).payload(epoch_text.as_str());
        producer.send(rec).map_err(|(e, _)| e)?;
    }
    producer.flush(TXN_TIMEOUT)?;
    if let Some(e) = producer.context().take_failure() {
        return Err(e.into());
    }
    Ok(seq)
}

/// Whether the brokers can run transactions: a probe producer must get
/// through `init_transactions`. Blocking.
pub fn supports_transactions(opts: &KafkaOptions) -> ConnectorResult<()> {
    let mut config = opts.client_config();
    config.set("transactional.id", format!("eddy-probe-{}", std::process::id()));
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(Duration::from_secs(15)).map_err(|e| {
        ConnectorError::Unsupported(format!(
            "the Kafka brokers at {} cannot run transactions ({e}); use sink.delivery = 'at_least_once'",
            opts.bootstrap()
        ))
    })
}
