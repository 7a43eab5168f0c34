//! Kafka helpers for tests: the broker `scripts/kafka.sh` started (or
//! `EDDY_TEST_KAFKA`), topics with unique names, a producer and a
//! read_committed consumer that are not eddy's code paths.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub fn bootstrap() -> String {
    std::env::var("EDDY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

pub async fn create_topic_on(bootstrap: &str, name: &str, partitions: i32) {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin(bootstrap).create_topics([&topic], &AdminOptions::new()).await.expect("create topic");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&bootstrap(), name, partitions).await
}

pub async fn add_partitions(name: &str, total: usize) {
    let p = NewPartitions::new(name, total);
    let res = admin(&bootstrap()).create_partitions([&p], &AdminOptions::new()).await.expect("create partitions");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("add partitions {t}: {e}"));
    }
}

pub fn producer_on(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

pub fn producer() -> FutureProducer {
    producer_on(&bootstrap())
}

/// Sends one message (key, value: `None` is a tombstone) to a partition.
pub async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: Option<&str>,
    headers: &[(&str, &str)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(topic).headers(h);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    if let Some(part) = partition {
        rec = rec.partition(part);
    }
    p.send(rec, Duration::from_secs(60)).await.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Every committed record of `topic` (all partitions) up to its end now.
pub fn read_all(topic: &str) -> Vec<Record> {
    read_all_on(&bootstrap(), topic)
}

pub fn read_all_on(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_all_with(bootstrap, topic, "read_committed")
}

/// `isolation`: `read_committed` or `read_uncommitted`.
pub fn read_all_with(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test-reader"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in &parts {
        let (_, high) = c.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks");
        ends.insert(*p, high);
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = parts.iter().all(|p| {
            let pos = c.position().ok().and_then(|tpl| tpl.find_partition(topic, *p).map(|e| e.offset()));
            matches!(pos, Some(Offset::Offset(o)) if o >= ends[p]) || ends[p] == 0
        });
        if done || std::time::Instant::now() > deadline {
            break;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), s(h.value).unwrap_or_default())).collect())
                .unwrap_or_default();
            out.push(Record { key: s(m.key()), value: s(m.payload()), headers });
        }
    }
    out
}
