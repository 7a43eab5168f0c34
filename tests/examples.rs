//! The use cases in `sql/examples/` (fraud detection, clickstream, IoT
//! telemetry): each view file is tested statement for statement by its
//! `tests/slt/example_<name>.slt` on known data; here each example also runs
//! on its datagen source (the README's demo, no Kafka) and on a real Kafka
//! topic with the slt's data, where the fraud alerts also go out through a
//! FORMAT PLAIN Kafka sink.

mod common;

use std::time::Duration;

use common::kafka::{bootstrap, create_topic, producer, read_all, send, unique};
use common::{TestServer, exec, rows_text, wait_rows};

const EXAMPLES: &[&str] = &["fraud", "clickstream", "iot"];

fn read(path: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The statements of a SQL file, comment lines dropped.
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_example_view_is_in_its_slt() {
    for name in EXAMPLES {
        let slt = normalized(&read(&format!("tests/slt/example_{name}.slt")));
        for stmt in statements(&read(&format!("sql/examples/{name}/views.sql"))) {
            assert!(slt.contains(&normalized(&stmt)), "tests/slt/example_{name}.slt lacks:\n{stmt}");
        }
    }
}

async fn run_file(c: &tokio_postgres::Client, sql: &str) {
    for stmt in statements(sql) {
        exec(c, &stmt).await;
    }
}

/// The README's demo: every example on its datagen source. Windows close
/// with event time, which datagen advances with the clock, so this checks
/// the rules that fire at once and that every view is being fed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_on_datagen() {
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    for name in EXAMPLES {
        run_file(&c, &read(&format!("sql/examples/{name}/source_datagen.sql"))).await;
        run_file(&c, &read(&format!("sql/examples/{name}/views.sql"))).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let large = rows_text(&c, "SELECT count(*) FROM alerts WHERE rule = 'large_transaction'").await;
        let hot = rows_text(&c, "SELECT count(*) FROM threshold_alerts").await;
        if large != ["0"] && hot != ["0"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no alerts from datagen: {large:?} {hot:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let clicks = rows_text(&c, "SELECT count(*) > 0 FROM clicks").await;
    assert_eq!(clicks, ["t"]);
    let marks = rows_text(&c, "SELECT name FROM eddy_catalog.watermarks ORDER BY name").await;
    assert_eq!(marks, ["clicks", "readings", "txns"]);
}

/// Each example on a Kafka topic with its slt's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_on_kafka() {
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    let p = producer();
    let topics = [("fraud", "transactions"), ("clickstream", "clicks"), ("iot", "readings")];
    let mut names = std::collections::HashMap::new();
    for (example, topic) in topics {
        let t = unique(topic);
        create_topic(&t, 2).await;
        let source = read(&format!("sql/examples/{example}/source_kafka.sql"))
            .replace(&format!("'{topic}'"), &format!("'{t}'"))
            .replace("'127.0.0.1:9092'", &format!("'{}'", bootstrap()));
        run_file(&c, &source).await;
        run_file(&c, &read(&format!("sql/examples/{example}/views.sql"))).await;
        names.insert(example, t);
    }
    let alerts_topic = unique("fraud_alerts");
    create_topic(&alerts_topic, 1).await;
    let sink = read("sql/examples/fraud/sink_kafka.sql")
        .replace("'fraud_alerts'", &format!("'{alerts_topic}'"))
        .replace("'127.0.0.1:9092'", &format!("'{}'", bootstrap()));
    run_file(&c, &sink).await;

    let produce = |topic: &str, rows: Vec<String>| {
        let p = p.clone();
        let topic = topic.to_string();
        async move {
            // One partition keeps the order; the other stays idle.
            for r in rows {
                send(&p, &topic, Some(0), None, Some(&r), &[]).await;
            }
        }
    };
    let txn = |id: i64, account: i64, amount: f64, ts: &str| {
        format!(r#"{{"id": {id}, "account": {account}, "amount": {amount}, "ts": "2026-11-27T{ts}"}}"#)
    };
    produce(
        &names["fraud"],
        vec![
            txn(10, 3, 30.0, "09:55:00"),
            txn(1, 1, 100.0, "10:00:05"),
            txn(2, 1, 1500.0, "10:00:20"),
            txn(3, 2, 50.0, "10:00:30"),
            txn(4, 2, 60.0, "10:00:31"),
            txn(5, 2, 70.0, "10:00:32"),
            txn(6, 2, 80.0, "10:00:33"),
            txn(7, 2, 90.0, "10:00:34"),
            txn(8, 2, 10.0, "10:00:35"),
            txn(11, 3, 500.0, "10:00:40"),
            txn(9, 1, 20.0, "10:01:10"),
        ],
    )
    .await;
    let click = |u: i64, page: i64, ts: &str| format!(r#"{{"user_id": {u}, "page_id": {page}, "ts": "2026-11-27T{ts}"}}"#);
    produce(
        &names["clickstream"],
        vec![
            click(1, 1, "10:00:00"),
            click(2, 1, "10:00:30"),
            click(2, 3, "10:00:40"),
            click(1, 5, "10:01:00"),
            click(1, 20, "10:02:30"),
            click(1, 5, "10:03:00"),
            click(2, 3, "10:05:00"),
            click(3, 7, "10:10:30"),
        ],
    )
    .await;
    let reading = |d: i64, t: f64, pr: f64, ts: &str| {
        format!(r#"{{"device_id": {d}, "temperature": {t}, "pressure": {pr}, "ts": "2026-11-27T{ts}"}}"#)
    };
    produce(
        &names["iot"],
        vec![
            reading(1, 50.0, 1000.0, "10:00:10"),
            reading(2, 90.0, 1105.0, "10:00:20"),
            reading(1, 80.0, 1010.0, "10:01:10"),
            reading(1, 98.0, 1005.0, "10:02:10"),
            reading(3, 20.0, 990.0, "10:10:00"),
        ],
    )
    .await;

    wait_rows(
        &c,
        "SELECT rule, account, at, value FROM alerts",
        &[
            "large_transaction|1|2026-11-27 10:00:20|1500",
            "spend_spike|3|2026-11-27 10:00:00|500",
            "velocity|2|2026-11-27 10:00:00|6",
        ],
    )
    .await;
    wait_rows(&c, "SELECT hour, visits, conversions FROM conversion", &["2026-11-27 10:00:00|3|1"]).await;
    wait_rows(&c, "SELECT device_id, count(*) FROM hot_devices GROUP BY device_id", &["1|5", "2|5"]).await;
    // The alerts, read back from Kafka by an independent consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut values: Vec<String>;
    loop {
        values = read_all(&alerts_topic).into_iter().filter_map(|r| r.value).collect();
        values.sort();
        if values.len() >= 3 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        values,
        vec![
            r#"{"rule":"large_transaction","account":1,"at":"2026-11-27T10:00:20","value":1500.0}"#,
            r#"{"rule":"spend_spike","account":3,"at":"2026-11-27T10:00:00","value":500.0}"#,
            r#"{"rule":"velocity","account":2,"at":"2026-11-27T10:00:00","value":6.0}"#,
        ]
    );
}
