//! Kafka benchmarks (issue: Kafka sources, tables and sinks), against the
//! broker of `scripts/kafka.sh start` (or EDDY_BENCH_KAFKA).
//!
//! The input topic (4 partitions) is filled first with ~200-byte JSON
//! messages; then eddy starts and the clock runs from CREATE to the last
//! result. Reported: messages per CPU-second used by the eddy process.
//! 1. `passthrough`: source → JSON decode → filter/project → Kafka JSON
//!    sink (PLAIN); done when the output topic holds every selected row.
//! 2. `aggregate`: source → GROUP BY view (1,000 groups); done when the
//!    view's counts add up to the messages.
//!
//! Run: `cargo bench --bench kafka` (or `-- passthrough`). Size:
//! EDDY_BENCH_MESSAGES (default 1,000,000). Prints numbers; asserts
//! nothing about speed.

mod common;

use std::time::{Duration, Instant};

use common::{connect, cpu_seconds, start};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn bootstrap() -> String {
    std::env::var("EDDY_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("admin");
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await.expect("create topic") {
        r.expect("topic created");
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}", nanos % 1_000_000_000_000)
}

/// Fills `topic` with `n` JSON messages of about 200 bytes.
fn fill(topic: &str, n: usize) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..n {
        let msg = format!(
            r#"{{"id":{i},"account":"acct-{:05}","merchant":"merchant-{:04}","amount":{}.{:02},"currency":"EUR","country":"DE","channel":"web","note":"benchmark message padding text"}}"#,
            i % 1000,
            i % 7919,
            i % 500,
            i % 100
        );
        let key = (i % 1000).to_string();
        let mut rec = BaseRecord::to(topic).payload(&msg).key(&key);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    eprintln!("filled {topic}: {n} messages in {:.1} s", started.elapsed().as_secs_f64());
}

fn topic_count(topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
            hi - lo
        })
        .sum()
}

fn report(name: &str, n: usize, wall: f64, cpu: f64) {
    println!(
        "kafka {name}: {n} messages in {wall:.2} s wall, {cpu:.2} CPU-s: {:.0} msgs/s, {:.0} msgs per CPU-second",
        n as f64 / wall,
        n as f64 / cpu.max(0.001)
    );
}

async fn passthrough(input: &str, n: usize) {
    let output = unique("bench-out");
    create_topic(&output, 4).await;
    let server = start(&[]);
    let c = connect(server.port).await;
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let b = bootstrap();
    c.batch_execute(&format!(
        "CREATE SOURCE txns (id BIGINT, account VARCHAR, merchant VARCHAR, amount DOUBLE PRECISION, currency VARCHAR, country VARCHAR, channel VARCHAR, note VARCHAR) \
         WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON; \
         CREATE SINK big AS SELECT id, account, amount * 1.1 AS gross FROM txns WHERE amount >= 0 \
         WITH (connector = 'kafka', topic = '{output}', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON"
    ))
    .await
    .expect("create");
    loop {
        let out = tokio::task::spawn_blocking({
            let output = output.clone();
            move || topic_count(&output)
        })
        .await
        .expect("count");
        if out >= n as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("passthrough (source → filter/project → sink)", n, t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
}

async fn aggregate(input: &str, n: usize) {
    let server = start(&[]);
    let c = connect(server.port).await;
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let b = bootstrap();
    c.batch_execute(&format!(
        "CREATE SOURCE txns (id BIGINT, account VARCHAR, merchant VARCHAR, amount DOUBLE PRECISION, currency VARCHAR, country VARCHAR, channel VARCHAR, note VARCHAR) \
         WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON; \
         CREATE MATERIALIZED VIEW spend AS SELECT account, count(*) AS n, sum(amount) AS total FROM txns GROUP BY account"
    ))
    .await
    .expect("create");
    loop {
        let row = c.query_one("SELECT coalesce(sum(n), 0)::BIGINT FROM spend", &[]).await.expect("count");
        let seen: i64 = row.get(0);
        if seen >= n as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("aggregate (source → GROUP BY view)", n, t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |p: &str| args.is_empty() || args.iter().any(|a| a == p);
    let n: usize = std::env::var("EDDY_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let input = unique("bench-in");
    create_topic(&input, 4).await;
    {
        let input = input.clone();
        tokio::task::spawn_blocking(move || fill(&input, n)).await.expect("fill");
    }
    if want("passthrough") {
        passthrough(&input, n).await;
    }
    if want("aggregate") {
        aggregate(&input, n).await;
    }
}
