//! Delta Lake sinks, read back with the Python `deltalake` package (an
//! independent reader, `tests/python/read_delta.py`): append-only and
//! upsert (MERGE) sinks, partition folders, schema checks, and a crash loop
//! with failpoints after which every row is in the table exactly once and
//! each committed epoch appears once as a txn version.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{exec, Rng, TestServer, run_until_exit, wait_rows};

/// What the independent reader sees (retried: a read racing a commit can fail).
fn read_delta(path: &std::path::Path) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_delta.py");
    let mut last = String::new();
    for _ in 0..5 {
        let out = std::process::Command::new("python3").arg(script).arg(path).output().expect("run python3");
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("json");
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("read_delta.py: {last}");
}

fn rows_of(v: &serde_json::Value, cols: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| cols.iter().map(|c| r[*c].to_string()).collect::<Vec<_>>().join("|"))
        .collect();
    out.sort();
    out
}

/// Polls the table until `cols` of its rows equal `want` (30 s).
async fn wait_table(path: &std::path::Path, cols: &[&str], want: &[&str]) -> serde_json::Value {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if path.join("_delta_log").exists() {
            let p = path.to_path_buf();
            let v = tokio::task::spawn_blocking(move || read_delta(&p)).await.expect("read");
            if rows_of(&v, cols) == want {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!("delta table rows {:?}, want {want:?}", rows_of(&v, cols));
            }
        } else if std::time::Instant::now() > deadline {
            panic!("no Delta table at {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_upsert_sinks_read_back_independently() {
    let lake = tempfile::tempdir().expect("tmp");
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    exec(&c, "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR, region VARCHAR, amount BIGINT, placed TIMESTAMP)").await;
    exec(&c, "CREATE MATERIALIZED VIEW by_customer AS SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer").await;
    let events = lake.path().join("events");
    let totals = lake.path().join("totals");
    // A retracting query without a key is refused, naming primary_key.
    let refused = c
        .simple_query(&format!("CREATE SINK bad FROM by_customer WITH (connector = 'deltalake', location = 'file://{}')", totals.display()))
        .await
        .expect_err("no key");
    assert!(refused.as_db_error().map(|d| d.message().contains("primary_key")).unwrap_or(false), "{refused:?}");
    exec(
        &c,
        &format!(
            "CREATE SINK lake_totals FROM by_customer WITH (connector = 'deltalake', location = 'file://{}', primary_key = 'customer', commit_checkpoint_interval = 2)",
            totals.display()
        ),
    )
    .await;
    exec(
        &c,
        &format!(
            "CREATE SINK lake_events AS SELECT id, customer, region, amount, placed FROM orders \
             WITH (connector = 'deltalake', location = 'file://{}', partition_by = 'region', force_append_only = 'true', commit_checkpoint_interval = 1)",
            events.display()
        ),
    )
    .await;
    exec(
        &c,
        "INSERT INTO orders VALUES (1, 'ann', 'eu', 10, '2024-01-01 10:00:00'), (2, 'bob', 'us', 5, '2024-01-01 11:00:00'), (3, 'ann', 'eu', 1, NULL)",
    )
    .await;
    exec(&c, "UPDATE orders SET amount = 20 WHERE id = 2").await;
    exec(&c, "DELETE FROM orders WHERE id = 3").await;
    exec(&c, "INSERT INTO orders VALUES (4, 'cy', 'apac', 7, NULL)").await;
    exec(&c, "DELETE FROM orders WHERE customer = 'cy'").await;
    exec(&c, "FLUSH").await;
    let v = wait_table(&totals, &["customer", "total", "n"], &["\"ann\"|10|1", "\"bob\"|20|1"]).await;
    assert_eq!(v["schema"][0][0], "customer");
    // The append-only sink has every inserted row (the update's new row too).
    let v = wait_table(
        &events,
        &["id", "customer", "region", "amount"],
        &["1|\"ann\"|\"eu\"|10", "2|\"bob\"|\"us\"|5", "2|\"bob\"|\"us\"|20", "3|\"ann\"|\"eu\"|1", "4|\"cy\"|\"apac\"|7"],
    )
    .await;
    let parts: Vec<String> = v["partitions"].as_array().expect("partitions").iter().map(|p| p.as_str().unwrap_or("").to_string()).collect();
    assert_eq!(parts, vec!["region=apac", "region=eu", "region=us"]);
    // Every commit carries eddy's txn action; versions only grow.
    let txns = v["txns"].as_array().expect("txns");
    assert!(!txns.is_empty());
    let versions: Vec<i64> = txns.iter().map(|t| t[1].as_i64().unwrap_or(-1)).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    // A table whose schema does not match is refused, naming the column.
    let other = lake.path().join("other");
    exec(&c, &format!("CREATE SINK s1 AS SELECT id, customer FROM orders WITH (connector = 'deltalake', location = 'file://{}', force_append_only = 'true')", other.display())).await;
    let bad = c
        .simple_query(&format!("CREATE SINK s2 AS SELECT id, amount FROM orders WITH (connector = 'deltalake', location = 'file://{}', force_append_only = 'true')", other.display()))
        .await
        .expect_err("mismatch");
    let msg = bad.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(msg.contains("\"amount\""), "{msg}");
    let shown = common::rows_text(&c, "SELECT sink, last_error FROM eddy_catalog.kafka_sinks WHERE sink LIKE 'lake%'").await;
    assert_eq!(shown, vec!["lake_events|NULL", "lake_totals|NULL"]);
}

const FAILPOINTS: &[&str] = &["after_sink_flush", "after_checkpoint", "before_delta_commit", "after_delta_commit"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_commits_each_epoch_once() {
    let lake = tempfile::tempdir().expect("tmp");
    let table = lake.path().join("t");
    let agg = lake.path().join("agg");
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let env = [("EDDY_CHECKPOINT_INTERVAL_MS", "150")];
    let total = 6000i64;
    {
        let server = TestServer::start_in_with_env(&data, &env);
        let c = server.connect().await;
        exec(&c, "CREATE TABLE ev (id BIGINT PRIMARY KEY, k INT)").await;
        exec(&c, &format!("CREATE SINK raw AS SELECT id, k FROM ev WITH (connector = 'deltalake', location = 'file://{}', force_append_only = 'true', commit_checkpoint_interval = 1)", table.display())).await;
        exec(&c, "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM ev GROUP BY k").await;
        exec(&c, &format!("CREATE SINK agg AS SELECT k, n FROM per_k WITH (connector = 'deltalake', location = 'file://{}', primary_key = 'k', commit_checkpoint_interval = 1)", agg.display())).await;
    }
    // Rows go in between and during crashes, in committed statements (a
    // statement cut by a crash is retried after the restart).
    let mut next = 0i64;
    let mut rng = Rng::new(7);
    let mut fired = Vec::new();
    for round in 0..(FAILPOINTS.len() + 6) {
        // Insert a batch with a server, then crash it one way or another.
        if round < FAILPOINTS.len() {
            let fp = FAILPOINTS[round];
            let server = TestServer::start_in_with_env(&data, &env);
            let c = server.connect().await;
            let end = (next + 500).min(total);
            exec(&c, &format!("INSERT INTO ev SELECT value, value % 13 FROM generate_series({next}, {})", end - 1)).await;
            next = end;
            drop(c);
            let mut server = server;
            server.kill();
            let d = data.clone();
            let exited = tokio::task::spawn_blocking(move || {
                run_until_exit(&d, &[("EDDY_CHECKPOINT_INTERVAL_MS", "150"), ("EDDY_FAILPOINTS", fp)], Duration::from_secs(15))
            })
            .await
            .expect("run");
            if exited {
                fired.push(fp);
            }
        } else {
            let mut server = TestServer::start_in_with_env(&data, &env);
            let c = server.connect().await;
            let end = (next + 500).min(total);
            exec(&c, &format!("INSERT INTO ev SELECT value, value % 13 FROM generate_series({next}, {})", end - 1)).await;
            next = end;
            tokio::time::sleep(Duration::from_millis(rng.range(50, 600) as u64)).await;
            server.kill();
        }
    }
    for fp in ["before_delta_commit", "after_delta_commit"] {
        assert!(fired.contains(&fp), "failpoint {fp} never fired (fired: {fired:?})");
    }
    let server = TestServer::start_in_with_env(&data, &env);
    let c = server.connect().await;
    if next < total {
        exec(&c, &format!("INSERT INTO ev SELECT value, value % 13 FROM generate_series({next}, {})", total - 1)).await;
    }
    exec(&c, "FLUSH").await;
    wait_rows(&c, "SELECT count(*) FROM ev", &[&total.to_string()]).await;
    // Every id exactly once in the append-only table.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let v = loop {
        let p = table.clone();
        let v = tokio::task::spawn_blocking(move || read_delta(&p)).await.expect("read");
        if v["rows"].as_array().map(|r| r.len() as i64 >= total).unwrap_or(false) || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ids: Vec<i64> = v["rows"].as_array().expect("rows").iter().map(|r| r["id"].as_i64().unwrap_or(-1)).collect();
    let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len() as i64, total, "rows missing from the Delta table");
    assert_eq!(ids.len() as i64, total, "rows committed twice");
    // Each txn version appears once.
    let versions: Vec<i64> = v["txns"].as_array().expect("txns").iter().map(|t| t[1].as_i64().unwrap_or(-1)).collect();
    let unique: std::collections::BTreeSet<i64> = versions.iter().copied().collect();
    assert_eq!(unique.len(), versions.len(), "an epoch was committed twice: {versions:?}");
    // The upsert table equals the GROUP BY.
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    for id in 0..total {
        *want.entry(id % 13).or_default() += 1;
    }
    let want_rows: Vec<String> = want.iter().map(|(k, n)| format!("{k}|{n}")).collect();
    let want_refs: Vec<&str> = want_rows.iter().map(String::as_str).collect();
    wait_table(&agg, &["k", "n"], &want_refs).await;
}
