//! Kafka benchmarks (issue: Kafka sources, tables and sinks), against the
//! broker of `scripts/kafka.sh start` (or EDDY_BENCH_KAFKA).
//!
//! The input topic (4 partitions) is filled first with ~200-byte JSON
//! messages; then eddy starts and the clock runs from CREATE to the last
//! result. Reported: messages per CPU-second used by the eddy process.
//! 1. `passthrough`: source → JSON decode → filter/project → Kafka JSON
//!    sink (PLAIN); done when the output topic holds every selected row.
//!    Run once with `sink.delivery = 'exactly_once'` and once with
//!    `'at_least_once'`: the cost of transactions.
//! 2. `aggregate`: source → GROUP BY view (1,000 groups); done when the
//!    view's counts add up to the messages.
//! 3. `latency`: messages produced at a steady rate (EDDY_BENCH_RATE,
//!    default half the pass-through rate measured here, else 50,000/s) for
//!    EDDY_BENCH_SECONDS (default 20) through an exactly-once pass-through
//!    sink with 1 s checkpoints; a read_committed consumer reports produce →
//!    visible latency, p50 and p99.
//!
//! 4. `recovery`: a GROUP BY view with one group per message
//!    (EDDY_BENCH_GROUPS, default 2,000,000) builds up state; eddy is
//!    SIGKILLed and restarted; reported: the state's size on disk and the
//!    time from the restart to a new message being visible in the view.
//!
//! Run: `cargo bench --bench kafka` (or `-- passthrough latency`). Size:
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

/// The benchmark's source over the messages `fill` writes.
fn source_sql(input: &str) -> String {
    format!(
        "CREATE SOURCE txns (id BIGINT, account VARCHAR, merchant VARCHAR, amount DOUBLE PRECISION, currency VARCHAR, country VARCHAR, channel VARCHAR, note VARCHAR) \
         WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{}') FORMAT PLAIN ENCODE JSON",
        bootstrap()
    )
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

async fn passthrough(input: &str, n: usize, delivery: &str) -> f64 {
    let output = unique("bench-out");
    create_topic(&output, 4).await;
    let server = start(&[]);
    let c = connect(server.port).await;
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let b = bootstrap();
    c.batch_execute(&format!(
        "{}; \
         CREATE SINK big AS SELECT id, account, amount * 1.1 AS gross FROM txns WHERE amount >= 0 \
         WITH (connector = 'kafka', topic = '{output}', properties.bootstrap.server = '{b}', sink.delivery = '{delivery}') FORMAT PLAIN ENCODE JSON",
        source_sql(input)
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
    let wall = t0.elapsed().as_secs_f64();
    report(&format!("passthrough {delivery} (source → filter/project → sink)"), n, wall, cpu_seconds(pid) - cpu0);
    n as f64 / wall
}

async fn latency(rate: usize, seconds: u64) {
    let input = unique("bench-lat-in");
    let output = unique("bench-lat-out");
    create_topic(&input, 4).await;
    create_topic(&output, 4).await;
    let server = start(&[]);
    let c = connect(server.port).await;
    let b = bootstrap();
    c.batch_execute(&format!(
        "CREATE SOURCE ev (id BIGINT, t BIGINT, note VARCHAR) \
         WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON; \
         CREATE SINK out AS SELECT id, t FROM ev \
         WITH (connector = 'kafka', topic = '{output}', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON"
    ))
    .await
    .expect("create");
    let now_us = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    let total = rate * seconds as usize;
    // The consumer: read_committed, from the start of the output topic.
    let reader = {
        let output = output.clone();
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", unique("bench-lat"))
                .set("isolation.level", "read_committed")
                .set("auto.offset.reset", "earliest")
                .create()
                .expect("consumer");
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition_offset(&output, p, rdkafka::Offset::Beginning).expect("tpl");
            }
            c.assign(&tpl).expect("assign");
            let mut lat = Vec::with_capacity(total);
            let deadline = Instant::now() + Duration::from_secs(seconds + 60);
            while lat.len() < total && Instant::now() < deadline {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let v: serde_json::Value = serde_json::from_slice(rdkafka::Message::payload(&m).unwrap_or(b"null")).unwrap_or_default();
                    if let Some(t) = v["t"].as_i64() {
                        lat.push(now_us() - t);
                    }
                }
            }
            lat
        })
    };
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("linger.ms", "2").create().expect("producer");
    let start_at = Instant::now();
    let pad = "x".repeat(150);
    for i in 0..total {
        let due = start_at + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let msg = format!(r#"{{"id":{i},"t":{},"note":"{pad}"}}"#, now_us());
        let mut rec = BaseRecord::<(), str>::to(&input).payload(&msg);
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
    producer.flush(Duration::from_secs(60)).expect("flush");
    let mut lat = reader.join().expect("reader");
    // The first seconds include start-up; keep the steady state.
    let skip = (rate * 2).min(lat.len() / 4);
    let mut steady: Vec<i64> = lat.drain(skip..).collect();
    steady.sort_unstable();
    let pct = |p: f64| steady.get(((steady.len() as f64 * p) as usize).min(steady.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    println!(
        "kafka latency at {rate} msgs/s for {seconds} s (exactly_once, 1 s checkpoints): {} records seen, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        steady.len() + skip,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

async fn aggregate(input: &str, n: usize) {
    let server = start(&[]);
    let c = connect(server.port).await;
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    c.batch_execute(&format!(
        "{}; \
         CREATE MATERIALIZED VIEW spend AS SELECT account, count(*) AS n, sum(amount) AS total FROM txns GROUP BY account",
        source_sql(input)
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

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn recovery(groups: usize) {
    let input = unique("bench-rec");
    create_topic(&input, 4).await;
    {
        let input = input.clone();
        tokio::task::spawn_blocking(move || fill(&input, groups)).await.expect("fill");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut server = common::start_in(&data, &[]);
    let c = connect(server.port).await;
    c.batch_execute(&format!(
        "{}; \
         CREATE MATERIALIZED VIEW per_id AS SELECT id, merchant, note, count(*) AS n, sum(amount) AS total, max(account) AS a FROM txns GROUP BY id, merchant, note",
        source_sql(&input)
    ))
    .await
    .expect("create");
    let t0 = Instant::now();
    loop {
        let n: i64 = c.query_one("SELECT count(*) FROM per_id", &[]).await.expect("count").get(0);
        if n >= groups as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let built = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let size = dir_size(&data);
    drop(c);
    server.kill();
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("producer");
    let t1 = Instant::now();
    let server = common::start_in(&data, &[]);
    let listening = t1.elapsed().as_secs_f64();
    let c = connect(server.port).await;
    let marker = r#"{"id":-1,"account":"x","merchant":"m","amount":1,"currency":"EUR","country":"DE","channel":"web","note":"after restart"}"#;
    producer.send(BaseRecord::<(), str>::to(&input).payload(marker)).map_err(|(e, _)| e).expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    loop {
        let n: i64 = c.query_one("SELECT count(*) FROM per_id WHERE id = -1", &[]).await.expect("count").get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "kafka recovery: {groups} groups ({:.0} MB on disk, built in {built:.1} s); SIGKILL → listening {listening:.2} s, → a new message visible in the view {:.2} s",
        size as f64 / 1e6,
        t1.elapsed().as_secs_f64()
    );
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
    let mut rate = None;
    if want("passthrough") {
        rate = Some(passthrough(&input, n, "exactly_once").await);
        passthrough(&input, n, "at_least_once").await;
    }
    if want("aggregate") {
        aggregate(&input, n).await;
    }
    if want("recovery") {
        let groups = std::env::var("EDDY_BENCH_GROUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
        recovery(groups).await;
    }
    if want("latency") {
        let rate = std::env::var("EDDY_BENCH_RATE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| rate.map(|r| (r / 2.0) as usize).unwrap_or(50_000));
        let seconds = std::env::var("EDDY_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        latency(rate, seconds).await;
    }
}
