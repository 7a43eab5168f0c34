//! The publisher of a Kafka sink: after each durable checkpoint it sends
//! the sink's outbox (the records of every checkpointed epoch, written by
//! [`crate::stream::ops::sink`]) to the topic in epoch order, waits for
//! every delivery, and then deletes what it sent. A broker that is away is
//! retried with backoff (the error shows in `eddy_catalog.kafka_sinks`);
//! the outbox waits on disk meanwhile, so nothing is lost. Delivery is at
//! least once: a crash after a send and before the delete sends that
//! epoch again. Records carry the headers `eddy.sink`, `eddy.epoch` and
//! `eddy.seq` so a consumer can drop repeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rocksdb::DB;
use tokio::sync::watch;

use crate::connector::metrics::SinkStats;
use crate::connector::kafka::set_default;
use crate::connector::spec::KafkaOptions;
use crate::connector::{ConnectorError, ConnectorResult};
use crate::state::{WriterHandle, keys};
use crate::stream::ops::sink::{decode_outbox, outbox_epoch};

pub struct PublisherHandle {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
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
    pub db: Arc<DB>,
    pub writer: WriterHandle,
    pub epochs: watch::Receiver<u64>,
    pub stats: Arc<Mutex<SinkStats>>,
}

pub fn spawn(p: Publisher) -> ConnectorResult<PublisherHandle> {
    let mut config = p.opts.client_config();
    set_default(&mut config, "enable.idempotence", "true");
    set_default(&mut config, "linger.ms", "5");
    set_default(&mut config, "compression.type", "lz4");
    set_default(&mut config, "message.timeout.ms", "30000");
    let producer: FutureProducer = config.create()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(run(p, producer, flag));
    Ok(PublisherHandle { stop, task })
}

fn stats(p: &Publisher) -> std::sync::MutexGuard<'_, SinkStats> {
    p.stats.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(mut p: Publisher, producer: FutureProducer, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match publish_pending(&p, &producer).await {
            Ok(()) => {
                backoff = Duration::from_millis(500);
                stats(&p).last_error = None;
                if p.epochs.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(sink = p.name, "publishing failed: {message}; retrying in {backoff:?}");
                stats(&p).last_error = Some(message);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sends every outbox chunk on disk (all of them belong to durable
/// checkpoints), epoch by epoch.
async fn publish_pending(p: &Publisher, producer: &FutureProducer) -> ConnectorResult<()> {
    let prefix = keys::op_state_prefix(p.sink_id, keys::SINK_OUTBOX_NODE);
    loop {
        // One epoch at a time, so memory holds one epoch's records.
        let db = p.db.clone();
        let prefix_c = prefix.clone();
        let sink_id = p.sink_id;
        let chunks = tokio::task::spawn_blocking(move || -> ConnectorResult<Vec<(Vec<u8>, Vec<u8>)>> {
            let mut it = db.raw_iterator();
            it.seek(&prefix_c);
            let mut out = Vec::new();
            let mut epoch = None;
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
                if !k.starts_with(&prefix_c) {
                    break;
                }
                let e = outbox_epoch(sink_id, k);
                if epoch.is_some() && e != epoch {
                    break;
                }
                epoch = e;
                out.push((k.to_vec(), v.to_vec()));
                it.next();
            }
            it.status().map_err(crate::state::StateError::from)?;
            Ok(out)
        })
        .await
        .map_err(|e| ConnectorError::Option(e.to_string()))??;
        let Some(epoch) = chunks.first().and_then(|(k, _)| outbox_epoch(p.sink_id, k)) else { return Ok(()) };
        let mut deliveries = Vec::new();
        let sink_id = p.sink_id.to_string();
        let epoch_text = epoch.to_string();
        let mut seq = 0u64;
        for (_, value) in &chunks {
            let records = decode_outbox(value).map_err(|e| ConnectorError::Option(e.to_string()))?;
            for r in records {
                let seq_text = seq.to_string();
                seq += 1;
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "eddy.sink", value: Some(sink_id.as_bytes()) })
                    .insert(Header { key: "eddy.epoch", value: Some(epoch_text.as_bytes()) })
                    .insert(Header { key: "eddy.seq", value: Some(seq_text.as_bytes()) });
                let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&p.opts.topic).headers(headers);
                if let Some(k) = &r.key {
                    rec = rec.key(k.as_slice());
                }
                if let Some(v) = &r.value {
                    rec = rec.payload(v.as_slice());
                }
                let mut rec = rec;
                loop {
                    match producer.send_result(rec) {
                        Ok(f) => {
                            deliveries.push(f);
                            break;
                        }
                        Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                            rec = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(ConnectorError::Option("a Kafka delivery was canceled".into())),
            }
        }
        let _ = producer.flush(Duration::from_secs(1));
        let keys_done: Vec<Vec<u8>> = chunks.into_iter().map(|(k, _)| k).collect();
        p.writer
            .write(false, move |txn| {
                for k in keys_done {
                    txn.put_direct(k, None);
                }
                Ok(0)
            })
            .await?;
        let mut s = stats(p);
        s.records += seq;
        s.published_epoch = epoch;
    }
}
