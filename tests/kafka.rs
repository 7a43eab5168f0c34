//! Kafka sources, Kafka-fed tables and sinks against a real Apache Kafka
//! broker (`scripts/kafka.sh start`, or `EDDY_TEST_KAFKA`): JSON, CSV,
//! UPSERT and DEBEZIUM; metadata columns; startup modes; bad messages and
//! the dead-letter topic; partitions added later; sinks read back by an
//! independent consumer; SIGKILL and restart with nothing lost or doubled;
//! a broker that goes away and comes back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{self, bootstrap, create_topic, producer, read_all, send, unique};
use common::{exec, TestServer, error_code, rows_text, wait_rows};

fn with(topic: &str) -> String {
    format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}'", bootstrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_source_metadata_views_and_bad_messages() {
    let topic = unique("json");
    let dlq = unique("dlq");
    create_topic(&topic, 3).await;
    create_topic(&dlq, 1).await;
    let p = producer();
    send(&p, &topic, Some(0), Some("k1"), Some(r#"{"id": 1, "account": "a", "amount": 10.5}"#), &[("trace", "t1")]).await;
    send(&p, &topic, Some(1), Some("k2"), Some(r#"{"id": 2, "account": "b", "amount": 20}"#), &[]).await;
    send(&p, &topic, Some(2), None, Some("not json at all"), &[]).await;
    send(&p, &topic, Some(2), None, Some(r#"{"id": 3, "account": "a", "amount": "lots"}"#), &[]).await;
    send(&p, &topic, Some(2), None, Some(r#"{"account": "a", "amount": 1}"#), &[]).await; // id is NOT NULL
    send(&p, &topic, Some(2), None, Some(r#"{"id": 4, "account": "a", "amount": 5, "extra": true}"#), &[]).await;

    let server = TestServer::start();
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE txns (id BIGINT NOT NULL, account VARCHAR, amount DOUBLE PRECISION) \
             INCLUDE key AS k VARCHAR INCLUDE partition AS part INCLUDE offset AS off INCLUDE timestamp AS ts \
             INCLUDE header 'trace' AS trace VARCHAR \
             WITH ({}, scan.startup.mode = 'earliest', dead_letter_topic = '{dlq}') FORMAT PLAIN ENCODE JSON",
            with(&topic)
        ),
    )
    .await;
    // A view created before ingest caught up, and one after: both see all.
    exec(&c, "CREATE MATERIALIZED VIEW spend AS SELECT account, count(*) AS n, sum(amount) AS total FROM txns GROUP BY account").await;
    wait_rows(&c, "SELECT * FROM spend", &["a|2|15.5", "b|1|20"]).await;
    exec(&c, "CREATE MATERIALIZED VIEW big AS SELECT id, k, part, off, trace FROM txns WHERE amount > 6").await;
    wait_rows(&c, "SELECT * FROM big", &["1|k1|0|0|t1", "2|k2|1|0|NULL"]).await;
    // SELECT on a source reads the topic as it is now.
    let rows = rows_text(&c, "SELECT id, account, ts IS NOT NULL FROM txns").await;
    assert_eq!(rows, vec!["1|a|t", "2|b|t", "4|a|t"]);
    // Rejected messages: counted, listed with partition and offset, copied.
    wait_rows(
        &c,
        "SELECT partition, offset FROM eddy_catalog.kafka_source_errors WHERE source = 'txns'",
        &["2|0", "2|1", "2|2"],
    )
    .await;
    let errors = rows_text(&c, "SELECT error FROM eddy_catalog.kafka_source_errors ORDER BY offset").await;
    assert!(errors.iter().any(|e| e.contains("invalid JSON")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("amount")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("missing value for column \"id\"")), "{errors:?}");
    let parts = rows_text(
        &c,
        "SELECT partition, offset, end_offset, lag, rows_read, rows_rejected FROM eddy_catalog.kafka_source_partitions WHERE source = 'txns'",
    )
    .await;
    assert_eq!(parts, vec!["0|1|1|0|1|0", "1|1|1|0|1|0", "2|4|4|0|1|3"]);
    let dead = read_all(&dlq);
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|r| r.headers.iter().any(|(k, _)| k == "eddy.error")));
    assert_eq!(dead[0].value.as_deref(), Some("not json at all"));
    // Later messages keep flowing into both views.
    send(&p, &topic, Some(1), None, Some(r#"{"id": 5, "account": "b", "amount": 7}"#), &[]).await;
    wait_rows(&c, "SELECT * FROM spend", &["a|2|15.5", "b|2|27"]).await;
    // Sources store nothing and take no writes.
    assert_eq!(error_code(&c, "INSERT INTO txns (id) VALUES (9)").await, "42809");
    assert_eq!(error_code(&c, "DROP SOURCE txns").await, "2BP01");
    assert_eq!(error_code(&c, "DROP TABLE txns").await, "42809");
    let shown = rows_text(&c, "SHOW SOURCES").await;
    assert_eq!(shown, vec![format!("txns|source|kafka|{topic}|PLAIN JSON")]);
    exec(&c, "DROP SOURCE txns CASCADE").await;
    assert!(rows_text(&c, "SHOW SOURCES").await.is_empty());
    assert!(rows_text(&c, "SHOW MATERIALIZED VIEWS").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_table_and_startup_modes() {
    let topic = unique("csv");
    create_topic(&topic, 1).await;
    let p = producer();
    send(&p, &topic, None, None, Some("1;ann;2024-01-01 10:00:00"), &[]).await;
    send(&p, &topic, None, None, Some("2;bob;not a time"), &[]).await;
    send(&p, &topic, None, None, Some("3;cy;2024-01-02 11:30:00"), &[]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&p, &topic, None, None, Some("4;dee;2024-01-03 00:00:00"), &[]).await;

    let server = TestServer::start();
    let c = server.connect().await;
    // A table stores what it reads: SELECT reads eddy's rows, not Kafka.
    exec(
        &c,
        &format!(
            "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(10), seen TIMESTAMP) WITH ({}) FORMAT PLAIN ENCODE CSV (delimiter = ';')",
            with(&topic)
        ),
    )
    .await;
    wait_rows(&c, "SELECT * FROM people", &["1|ann|2024-01-01 10:00:00", "3|cy|2024-01-02 11:30:00", "4|dee|2024-01-03 00:00:00"]).await;
    // Tables with a connector still take DML, and views see both.
    exec(&c, "INSERT INTO people VALUES (10, 'local', NULL)").await;
    exec(&c, "CREATE MATERIALIZED VIEW n AS SELECT count(*) FROM people").await;
    wait_rows(&c, "SELECT * FROM n", &["4"]).await;
    // Startup modes: latest sees only what comes after; timestamp from the cutoff.
    exec(
        &c,
        &format!("CREATE SOURCE late (id INT, name VARCHAR, seen TIMESTAMP) WITH ({}, scan.startup.mode = 'latest') FORMAT PLAIN ENCODE CSV (delimiter = ';')", with(&topic)),
    )
    .await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE since (id INT, name VARCHAR, seen TIMESTAMP) WITH ({}, scan.startup.mode = 'timestamp', scan.startup.timestamp.millis = {cutoff}) FORMAT PLAIN ENCODE CSV (delimiter = ';')",
            with(&topic)
        ),
    )
    .await;
    exec(&c, "CREATE MATERIALIZED VIEW late_ids AS SELECT id FROM late").await;
    assert_eq!(rows_text(&c, "SELECT id FROM since").await, vec!["4"]);
    // Give the latest-mode reader its start position before producing.
    wait_rows(&c, "SELECT count(*) FROM eddy_catalog.kafka_source_partitions WHERE source = 'late'", &["1"]).await;
    send(&p, &topic, None, None, Some("5;eve;2024-01-04 00:00:00"), &[]).await;
    wait_rows(&c, "SELECT * FROM late_ids", &["5"]).await;
    wait_rows(&c, "SELECT id FROM people WHERE id < 10", &["1", "3", "4", "5"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_and_debezium_tables() {
    let up = unique("upsert");
    let cdc = unique("cdc");
    create_topic(&up, 2).await;
    create_topic(&cdc, 1).await;
    let p = producer();
    send(&p, &up, Some(0), Some(r#"{"id": 1}"#), Some(r#"{"id": 1, "name": "ann", "score": 1}"#), &[]).await;
    send(&p, &up, Some(0), Some(r#"{"id": 2}"#), Some(r#"{"id": 2, "name": "bob", "score": 2}"#), &[]).await;
    send(&p, &up, Some(0), Some(r#"{"id": 1}"#), Some(r#"{"id": 1, "name": "anna", "score": 3}"#), &[]).await;
    send(&p, &up, Some(0), Some("2"), None, &[]).await; // tombstone with a bare key
    send(&p, &up, Some(1), Some(r#"{"id": 3}"#), Some(r#"{"id": 3, "name": "cy", "score": 4}"#), &[]).await;
    let cdc_msgs = [
        r#"{"before": null, "after": {"id": 1, "city": "Oslo"}, "op": "c"}"#,
        r#"{"payload": {"before": null, "after": {"id": 2, "city": "Rome"}, "op": "r"}}"#,
        r#"{"before": {"id": 1, "city": "Oslo"}, "after": {"id": 1, "city": "Bergen"}, "op": "u"}"#,
        r#"{"before": {"id": 2, "city": "Rome"}, "after": null, "op": "d"}"#,
        r#"{"before": null, "after": {"id": 7, "city": "Lima"}, "op": "c"}"#,
        r#"{"op": "x"}"#,
    ];
    for m in cdc_msgs {
        send(&p, &cdc, None, Some("k"), Some(m), &[]).await;
    }
    send(&p, &cdc, None, Some("k"), None, &[]).await; // Debezium's tombstone: ignored

    let server = TestServer::start();
    let c = server.connect().await;
    assert_eq!(
        error_code(&c, &format!("CREATE SOURCE u (id INT, name VARCHAR) WITH ({}) FORMAT UPSERT ENCODE JSON", with(&up))).await,
        "0A000"
    );
    assert_eq!(
        error_code(&c, &format!("CREATE TABLE u (id INT, name VARCHAR) WITH ({}) FORMAT UPSERT ENCODE JSON", with(&up))).await,
        "42P16"
    );
    exec(&c, &format!("CREATE TABLE u (id INT PRIMARY KEY, name VARCHAR, score INT) WITH ({}) FORMAT UPSERT ENCODE JSON", with(&up))).await;
    exec(&c, &format!("CREATE TABLE cities (id INT PRIMARY KEY, city VARCHAR) WITH ({}) FORMAT DEBEZIUM ENCODE JSON", with(&cdc))).await;
    exec(&c, "CREATE MATERIALIZED VIEW total AS SELECT sum(score) AS s, count(*) AS n FROM u").await;
    wait_rows(&c, "SELECT * FROM u", &["1|anna|3", "3|cy|4"]).await;
    wait_rows(&c, "SELECT * FROM total", &["7|2"]).await;
    wait_rows(&c, "SELECT * FROM cities", &["1|Bergen", "7|Lima"]).await;
    wait_rows(&c, "SELECT count(*) FROM eddy_catalog.kafka_source_errors WHERE source = 'cities'", &["1"]).await;
    send(&p, &up, Some(1), Some(r#"{"id": 3}"#), None, &[]).await;
    wait_rows(&c, "SELECT * FROM total", &["3|1"]).await;
}

/// Final state per key of an upsert topic.
fn upsert_state(records: &[kafka::Record]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for r in records {
        let key = r.key.clone().expect("upsert records have keys");
        match &r.value {
            Some(v) => {
                state.insert(key, v.clone());
            }
            None => {
                state.remove(&key);
            }
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_read_back_by_a_consumer() {
    let input = unique("sink-in");
    let upsert_out = unique("sink-upsert");
    let plain_out = unique("sink-plain");
    let cdc_out = unique("sink-cdc");
    for t in [&input, &upsert_out, &plain_out, &cdc_out] {
        create_topic(t, 2).await;
    }
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    exec(&c, "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR, amount INT)").await;
    exec(&c, &format!("CREATE SOURCE clicks (page VARCHAR, ms INT) WITH ({}) FORMAT PLAIN ENCODE JSON", with(&input))).await;
    exec(&c, "CREATE MATERIALIZED VIEW by_customer AS SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer").await;
    // PLAIN refuses a query that retracts, naming UPSERT.
    let refused = c
        .simple_query(&format!("CREATE SINK bad FROM by_customer WITH ({})", with(&plain_out)))
        .await
        .expect_err("PLAIN over a GROUP BY");
    let message = refused.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("FORMAT UPSERT"), "{message}");
    assert_eq!(
        error_code(&c, &format!("CREATE SINK bad FROM by_customer WITH ({}) FORMAT UPSERT ENCODE JSON", with(&upsert_out))).await,
        "42601"
    );
    exec(
        &c,
        &format!("CREATE SINK totals FROM by_customer WITH ({}, primary_key = 'customer') FORMAT UPSERT ENCODE JSON", with(&upsert_out)),
    )
    .await;
    exec(
        &c,
        &format!("CREATE SINK changes FROM by_customer WITH ({}, primary_key = 'customer') FORMAT DEBEZIUM ENCODE JSON", with(&cdc_out)),
    )
    .await;
    exec(
        &c,
        &format!("CREATE SINK slow_pages AS SELECT page, ms FROM clicks WHERE ms > 100 WITH ({}, sink.headers = 'true') FORMAT PLAIN ENCODE JSON", with(&plain_out)),
    )
    .await;
    assert_eq!(error_code(&c, &format!("CREATE SINK h AS SELECT page FROM clicks WITH ({}, sink.headers = 'maybe')", with(&plain_out))).await, "22023");
    exec(&c, &format!("CREATE SINK forced FROM by_customer WITH ({}, force_append_only = 'true')", with(&plain_out))).await;
    exec(&c, "DROP SINK forced").await;

    exec(&c, "INSERT INTO orders VALUES (1, 'ann', 10), (2, 'bob', 5), (3, 'ann', 1)").await;
    exec(&c, "UPDATE orders SET amount = 20 WHERE id = 2").await;
    exec(&c, "DELETE FROM orders WHERE id = 3").await;
    exec(&c, "INSERT INTO orders VALUES (4, 'cy', 7)").await;
    exec(&c, "DELETE FROM orders WHERE customer = 'cy'").await;
    let p = producer();
    for (page, ms) in [("/a", 50), ("/b", 150), ("/c", 300)] {
        send(&p, &input, None, None, Some(&format!(r#"{{"page": "{page}", "ms": {ms}}}"#)), &[]).await;
    }
    exec(&c, "FLUSH").await;
    // Wait until the sinks have published everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = upsert_state(&read_all(&upsert_out));
        let plain = read_all(&plain_out);
        let expected: BTreeMap<String, String> = [
            (r#"{"customer":"ann"}"#.to_string(), r#"{"customer":"ann","total":10,"n":1}"#.to_string()),
            (r#"{"customer":"bob"}"#.to_string(), r#"{"customer":"bob","total":20,"n":1}"#.to_string()),
        ]
        .into();
        if state == expected && plain.len() >= 2 {
            let mut values: Vec<String> = plain.iter().filter_map(|r| r.value.clone()).collect();
            values.sort();
            assert_eq!(values, vec![r#"{"page":"/b","ms":150}"#, r#"{"page":"/c","ms":300}"#]);
            // With sink.headers, every record names its sink, epoch and
            // sequence number; exactly-once sinks carry none by default.
            assert!(plain.iter().all(|r| ["eddy.sink", "eddy.epoch", "eddy.seq"]
                .iter()
                .all(|h| r.headers.iter().any(|(k, _)| k == h))));
            assert!(read_all(&upsert_out).iter().all(|r| r.headers.is_empty()));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upsert topic state {state:?}, plain {plain:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Debezium: the events replay to the same final state.
    let mut cdc_state = BTreeMap::new();
    for r in read_all(&cdc_out) {
        let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap_or("null")).expect("json");
        let key = r.key.clone().unwrap_or_default();
        match v["op"].as_str() {
            Some("c") | Some("u") => {
                cdc_state.insert(key, v["after"].to_string());
            }
            Some("d") => {
                cdc_state.remove(&key);
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    assert_eq!(cdc_state.len(), 2, "{cdc_state:?}");
    let shown = rows_text(&c, "SELECT sink, last_error FROM eddy_catalog.kafka_sinks").await;
    assert_eq!(shown, vec!["changes|NULL", "slow_pages|NULL", "totals|NULL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connector_settings_fail_clearly() {
    let server = TestServer::start();
    let c = server.connect().await;
    let started = std::time::Instant::now();
    let code = error_code(
        &c,
        "CREATE SOURCE s (a INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '127.0.0.1:1') FORMAT PLAIN ENCODE JSON",
    )
    .await;
    assert_eq!(code, "08001");
    assert!(started.elapsed() < Duration::from_secs(30));
    let missing = unique("missing");
    assert_eq!(
        error_code(&c, &format!("CREATE SOURCE s (a INT) WITH ({}) FORMAT PLAIN ENCODE JSON", with(&missing))).await,
        "42704"
    );
    assert_eq!(
        error_code(&c, &format!("CREATE SOURCE s (a INT) WITH ({}, scan.startup.mod = 'earliest') FORMAT PLAIN ENCODE JSON", with(&missing))).await,
        "22023"
    );
    assert_eq!(error_code(&c, "CREATE SOURCE s (a INT) WITH (connector = 'kafka') FORMAT PLAIN ENCODE AVRO").await, "42601");
    assert_eq!(error_code(&c, "DROP SINK nope").await, "42P01");
    c.simple_query("DROP SOURCE IF EXISTS nope").await.expect("IF EXISTS");
    // The server is fine afterwards.
    assert_eq!(rows_text(&c, "SELECT 1").await, vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_later_are_read() {
    let topic = unique("grow");
    create_topic(&topic, 1).await;
    let server = TestServer::start();
    let c = server.connect().await;
    exec(&c, &format!("CREATE TABLE g (n INT) WITH ({}) FORMAT PLAIN ENCODE JSON", with(&topic))).await;
    let p = producer();
    send(&p, &topic, Some(0), None, Some(r#"{"n": 1}"#), &[]).await;
    wait_rows(&c, "SELECT n FROM g", &["1"]).await;
    kafka::add_partitions(&topic, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = producer(); // a new producer knows the new partitions
    send(&p, &topic, Some(2), None, Some(r#"{"n": 3}"#), &[]).await;
    send(&p, &topic, Some(1), None, Some(r#"{"n": 2}"#), &[]).await;
    wait_rows(&c, "SELECT n FROM g", &["1", "2", "3"]).await;
}

/// SIGKILL while messages flow: after restart, the table and the view
/// hold every message exactly once, and ingest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_loses_and_doubles_nothing() {
    let topic = unique("crash");
    create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut server = TestServer::start_in(&data);
    let c = server.connect().await;
    exec(&c, &format!("CREATE TABLE ev (n INT) WITH ({}) FORMAT PLAIN ENCODE JSON", with(&topic))).await;
    exec(&c, &format!("CREATE SOURCE evs (n INT) WITH ({}) FORMAT PLAIN ENCODE JSON", with(&topic))).await;
    exec(&c, "CREATE MATERIALIZED VIEW stats AS SELECT count(*) AS c, sum(n) AS s, count(DISTINCT n) AS d FROM evs").await;
    let p = producer();
    let total = 3000;
    let producer_task = tokio::spawn(async move {
        for n in 1..=total {
            send(&p, &topic, Some(n % 2), None, Some(&format!(r#"{{"n": {n}}}"#)), &[]).await;
            if n % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill();
    drop(c);
    producer_task.await.expect("producer");
    let server = TestServer::start_in(&data);
    let c = server.connect().await;
    let sum = total * (total + 1) / 2;
    wait_rows(&c, "SELECT count(*), sum(n), count(DISTINCT n) FROM ev", &[&format!("{total}|{sum}|{total}")]).await;
    wait_rows(&c, "SELECT * FROM stats", &[&format!("{total}|{sum}|{total}")]).await;
}

/// A source's rows reach its views in memory; the log names only the
/// offsets. With `forget_held_rows` the engine ignores the rows in memory
/// and reads every chunk back from Kafka (what it does after a restart):
/// the views get the same rows, metadata columns and rejections included,
/// and the rejected message is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_chunks_are_read_back_from_kafka() {
    let topic = unique("reread");
    create_topic(&topic, 2).await;
    let p = producer();
    for n in 1..=400 {
        send(&p, &topic, Some(n % 2), Some(&format!("k{}", n % 3)), Some(&format!(r#"{{"n": {n}}}"#)), &[("h", "v")]).await;
    }
    send(&p, &topic, Some(1), None, Some(r#"{"m": 1}"#), &[]).await; // n is NOT NULL
    let server = TestServer::start_with_env(&[("EDDY_FAILPOINTS", "forget_held_rows")]);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE s (n INT NOT NULL) INCLUDE key AS k VARCHAR INCLUDE partition AS part INCLUDE offset AS off INCLUDE header 'h' AS h VARCHAR WITH ({}) FORMAT PLAIN ENCODE JSON",
            with(&topic)
        ),
    )
    .await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW by_key AS SELECT k, part, count(*) AS c, sum(n) AS s, max(off) AS last, min(h) AS h FROM s GROUP BY k, part",
    )
    .await;
    // Chunks logged after the view exists go through the log (and so are
    // read back); send more and wait for all of it.
    for n in 401..=600 {
        send(&p, &topic, Some(n % 2), Some(&format!("k{}", n % 3)), Some(&format!(r#"{{"n": {n}}}"#)), &[("h", "v")]).await;
        if n == 500 {
            // Rejected again when its chunk is read back.
            send(&p, &topic, Some(0), None, Some(r#"{"m": 2}"#), &[]).await;
        }
    }
    let total: i64 = (1..=600).sum();
    wait_rows(&c, "SELECT sum(c), sum(s) FROM by_key", &[&format!("600|{total}")]).await;
    // Partition 1 holds a rejected message at offset 200, partition 0 at
    // offset 250.
    let rows = rows_text(&c, "SELECT k, part, c, s, last, h FROM by_key ORDER BY k, part").await;
    let expected =
        ["k0|0|100|30300|300|v", "k0|1|100|30000|299|v", "k1|0|100|30100|299|v", "k1|1|100|29800|298|v", "k2|0|100|29900|298|v", "k2|1|100|30200|300|v"];
    assert_eq!(rows, expected);
    wait_rows(&c, "SELECT sum(rows_rejected) FROM eddy_catalog.kafka_source_partitions WHERE source = 's'", &["2"]).await;
}

/// A broker of its own (port 9192) that the test stops and restarts while
/// eddy reads from it and writes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted() {
    let port = "9192";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let broker = |cmd: &str| {
        let status = std::process::Command::new("bash")
            .args([script, cmd])
            .env("KAFKA_PORT", port)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run kafka.sh");
        assert!(status.success(), "kafka.sh {cmd}");
    };
    broker("start");
    let boot = format!("127.0.0.1:{port}");
    let input = unique("flaky-in");
    let output = unique("flaky-out");
    kafka::create_topic_on(&boot, &input, 2).await;
    kafka::create_topic_on(&boot, &output, 1).await;
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    let w = |t: &str| format!("connector = 'kafka', topic = '{t}', properties.bootstrap.server = '{boot}'");
    exec(&c, &format!("CREATE TABLE f (n INT) WITH ({}) FORMAT PLAIN ENCODE JSON", w(&input))).await;
    exec(&c, &format!("CREATE SINK fo AS SELECT n FROM f WITH ({}, force_append_only = 'true') FORMAT PLAIN ENCODE JSON", w(&output))).await;
    let p = kafka::producer_on(&boot);
    for n in 1..=100 {
        send(&p, &input, Some(n % 2), None, Some(&format!(r#"{{"n": {n}}}"#)), &[]).await;
    }
    wait_rows(&c, "SELECT count(*) FROM f", &["100"]).await;
    broker("stop");
    // While the broker is away, eddy keeps serving; table writes go on.
    exec(&c, "INSERT INTO f VALUES (1000)").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rows_text(&c, "SELECT count(*) FROM f").await, vec!["101"]);
    broker("start");
    for n in 101..=200 {
        send(&p, &input, Some(n % 2), None, Some(&format!(r#"{{"n": {n}}}"#)), &[]).await;
    }
    wait_rows(&c, "SELECT count(*), count(DISTINCT n) FROM f", &["201|201"]).await;
    // Every row reached the sink's topic (at least once).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = {
            let boot = boot.clone();
            let output = output.clone();
            tokio::task::spawn_blocking(move || kafka::read_all_on(&boot, &output))
            .await
            .expect("read")
        };
        let distinct: std::collections::BTreeSet<String> = records.iter().filter_map(|r| r.value.clone()).collect();
        if distinct.len() == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sink topic holds {} distinct rows", distinct.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    broker("stop");
}

/// The README's Kafka example (`sql/kafka_example.sql`) runs as written,
/// on topics of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_kafka_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let sql = std::fs::read_to_string(format!("{root}/sql/kafka_example.sql")).expect("example");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    assert!(readme.contains(&sql), "README.md must show sql/kafka_example.sql as it is");
    let input = unique("transactions");
    let output = unique("spend");
    create_topic(&input, 3).await;
    create_topic(&output, 1).await;
    let p = producer();
    for m in [r#"{"id":1,"account":"a","amount":10}"#, r#"{"id":2,"account":"b","amount":5}"#, r#"{"id":3,"account":"a","amount":2.5}"#] {
        send(&p, &input, None, None, Some(m), &[]).await;
    }
    let sql = sql
        .replace("'transactions'", &format!("'{input}'"))
        .replace("'spend'", &format!("'{output}'"))
        .replace("'127.0.0.1:9092'", &format!("'{}'", bootstrap()));
    let server = TestServer::start();
    let c = server.connect().await;
    for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty() && !s.lines().all(|l| l.starts_with("--"))) {
        exec(&c, stmt).await;
    }
    wait_rows(&c, "SELECT * FROM spend", &["a|2|12.5", "b|1|5"]).await;
    wait_rows(&c, "SELECT sum(rows_read) FROM eddy_catalog.kafka_source_partitions", &["3"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = upsert_state(&read_all(&output));
        if state.get(r#"{"account":"a"}"#).map(String::as_str) == Some(r#"{"account":"a","n":2,"total":12.5}"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{state:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A Kafka source with a watermark: one of its two partitions stays idle,
/// and once it is idle (`watermark.idle.timeout.ms`) windows still close;
/// an EMIT ON WINDOW CLOSE sink writes each window once, FORMAT PLAIN
/// (docs/event-time.md); a late message is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_close_windows_with_an_idle_partition() {
    let input = unique("wm-in");
    let out = unique("wm-spend");
    create_topic(&input, 2).await;
    create_topic(&out, 1).await;
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE txns (id BIGINT, account VARCHAR, amount DOUBLE PRECISION, ts TIMESTAMP,
                                 WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
             WITH ({}, scan.startup.mode = 'earliest', watermark.idle.timeout.ms = '1000') FORMAT PLAIN ENCODE JSON",
            with(&input)
        ),
    )
    .await;
    exec(
        &c,
        &format!(
            "CREATE SINK spend_out AS
             SELECT account, window_start, sum(amount) AS total
             FROM TUMBLE(txns, ts, INTERVAL '1' MINUTE)
             GROUP BY account, window_start EMIT ON WINDOW CLOSE
             WITH ({}) FORMAT PLAIN ENCODE JSON",
            with(&out)
        ),
    )
    .await;
    let p = producer();
    // Everything goes to partition 0; partition 1 stays idle.
    let events = [
        (1, "a", 10.0, "2026-11-27T10:00:01"),
        (2, "b", 5.0, "2026-11-27T10:00:20"),
        (3, "a", 2.5, "2026-11-27T10:00:59"),
        (4, "a", 1.0, "2026-11-27T10:01:10"),
        // Late: the watermark is 10:01:05 by now.
        (5, "b", 100.0, "2026-11-27T10:00:30"),
        (6, "b", 1.0, "2026-11-27T10:02:30"),
    ];
    for (i, (id, account, amount, ts)) in events.into_iter().enumerate() {
        if i == 4 {
            // Partition 1 goes idle, so partition 0 alone moves the
            // watermark.
            wait_rows(&c, "SELECT name, watermark FROM eddy_catalog.watermarks", &["txns|2026-11-27 10:01:05"]).await;
            wait_rows(
                &c,
                "SELECT partition, watermark, partition = 0 OR idle FROM eddy_catalog.kafka_source_partitions WHERE source = 'txns'",
                &["0|2026-11-27 10:01:05|t", "1|NULL|t"],
            )
            .await;
        }
        let v = format!(r#"{{"id": {id}, "account": "{account}", "amount": {amount}, "ts": "{ts}"}}"#);
        send(&p, &input, Some(0), None, Some(&v), &[]).await;
    }
    // The 10:00 and 10:01 windows close; 10:02 stays open.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut values: Vec<String>;
    loop {
        values = read_all(&out).into_iter().filter_map(|r| r.value).collect();
        values.sort();
        if values.len() >= 3 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        values,
        vec![
            r#"{"account":"a","window_start":"2026-11-27T10:00:00","total":12.5}"#,
            r#"{"account":"a","window_start":"2026-11-27T10:01:00","total":1.0}"#,
            r#"{"account":"b","window_start":"2026-11-27T10:00:00","total":5.0}"#,
        ]
    );
    wait_rows(&c, "SELECT name, late_rows FROM eddy_catalog.watermarks", &["txns|1"]).await;
}

/// The watermark of a Kafka source is the minimum over its partitions: a
/// partition behind the others keeps its rows (they are not late) and
/// holds windows open until it catches up. The partitions' clocks survive
/// a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_is_the_minimum_over_partitions() {
    let topic = unique("wm-min");
    create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let envs = [("EDDY_CHECKPOINT_INTERVAL_MS", "200")];
    let mut server = TestServer::start_in_with_env(&data, &envs);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE ev (id INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
             WITH ({}, watermark.idle.timeout.ms = '600000') FORMAT PLAIN ENCODE JSON",
            with(&topic)
        ),
    )
    .await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW per_minute AS
         SELECT window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE)
         GROUP BY window_start EMIT ON WINDOW CLOSE",
    )
    .await;
    let p = producer();
    let event = |id: i32, ts: &str| format!(r#"{{"id": {id}, "ts": "2026-11-27T{ts}"}}"#);
    // Partition 0 runs five minutes ahead of partition 1.
    send(&p, &topic, Some(0), None, Some(&event(1, "10:05:00")), &[]).await;
    send(&p, &topic, Some(1), None, Some(&event(2, "10:00:30")), &[]).await;
    send(&p, &topic, Some(1), None, Some(&event(3, "10:00:40")), &[]).await;
    wait_rows(&c, "SELECT watermark, late_rows FROM eddy_catalog.watermarks", &["2026-11-27 10:00:35|0"]).await;
    assert_eq!(rows_text(&c, "SELECT * FROM per_minute").await, Vec::<String>::new());
    // Crash and restart: the clocks come back from the store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    drop(c);
    let server = TestServer::start_in_with_env(&data, &envs);
    let c = server.connect().await;
    // Partition 1 catches up: the watermark is partition 0's again.
    send(&p, &topic, Some(1), None, Some(&event(4, "10:06:00")), &[]).await;
    wait_rows(&c, "SELECT watermark FROM eddy_catalog.watermarks", &["2026-11-27 10:04:55"]).await;
    wait_rows(&c, "SELECT window_start, n FROM per_minute", &["2026-11-27 10:00:00|2"]).await;
    wait_rows(
        &c,
        "SELECT partition, watermark, idle FROM eddy_catalog.kafka_source_partitions WHERE source = 'ev'",
        &["0|2026-11-27 10:04:55|f", "1|2026-11-27 10:05:55|f"],
    )
    .await;
    // A row behind the watermark is late now.
    send(&p, &topic, Some(1), None, Some(&event(5, "10:01:00")), &[]).await;
    wait_rows(&c, "SELECT late_rows FROM eddy_catalog.watermarks", &["1"]).await;
}
