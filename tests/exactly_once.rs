//! Exactly-once Kafka sinks across crashes (real broker): numbered events
//! flow through a source into an append-only pass-through sink and an
//! upsert sink over a GROUP BY view while eddy is SIGKILLed at random
//! moments and aborted once at every failpoint. A read_committed consumer
//! must then see every id exactly once, the upsert topic must equal the
//! GROUP BY recomputed from the input, and a read_uncommitted consumer
//! must show that aborted transactions really happened.
//!
//! Sizes: EDDY_EO_EVENTS (default 20,000) and EDDY_EO_KILLS (default 10).
//! The long version: `EDDY_EO_EVENTS=1000000 EDDY_EO_KILLS=50 cargo test
//! --test exactly_once -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::kafka::{bootstrap, create_topic, producer, read_all_with, send, unique};
use common::{exec, Rng, TestServer, rows_text, run_until_exit, wait_rows};

const FAILPOINTS: &[&str] = &["after_sink_flush", "after_checkpoint", "before_kafka_commit", "after_kafka_commit", "during_recovery"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_delivers_exactly_once() {
    let events = env_usize("EDDY_EO_EVENTS", 20_000);
    let kills = env_usize("EDDY_EO_KILLS", 10);
    let input = unique("eo-in");
    let pass = unique("eo-pass");
    let upsert = unique("eo-upsert");
    create_topic(&input, 4).await;
    create_topic(&pass, 2).await;
    create_topic(&upsert, 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let env = [("EDDY_CHECKPOINT_INTERVAL_MS", "200")];
    {
        let server = TestServer::start_in_with_env(&data, &env);
        let c = server.connect().await;
        let w = |t: &str| format!("connector = 'kafka', topic = '{t}', properties.bootstrap.server = '{}'", bootstrap());
        exec(&c, &format!("CREATE SOURCE ev (id BIGINT, k INT, v INT) WITH ({}) FORMAT PLAIN ENCODE JSON", w(&input))).await;
        exec(&c, &format!("CREATE SINK pass AS SELECT id, k FROM ev WITH ({}) FORMAT PLAIN ENCODE JSON", w(&pass))).await;
        exec(&c, "CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS n, sum(v) AS s FROM ev GROUP BY k").await;
        exec(&c, &format!("CREATE SINK up FROM agg WITH ({}, primary_key = 'k') FORMAT UPSERT ENCODE JSON", w(&upsert))).await;
        let shown = rows_text(&c, "SHOW SINKS").await;
        assert_eq!(shown.len(), 2, "{shown:?}");
    }
    // Events flow for the whole crash loop.
    let produce = {
        let input = input.clone();
        tokio::spawn(async move {
            let p = producer();
            for id in 0..events {
                let msg = format!(r#"{{"id": {id}, "k": {}, "v": {}}}"#, id % 37, id % 11);
                send(&p, &input, Some((id % 4) as i32), None, Some(&msg), &[]).await;
                if id % 200 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let mut rng = Rng::new(42);
    let mut fired = Vec::new();
    for round in 0..kills + FAILPOINTS.len() {
        if round < FAILPOINTS.len() {
            let fp = FAILPOINTS[round];
            let d = data.clone();
            let exited = tokio::task::spawn_blocking(move || {
                run_until_exit(&d, &[("EDDY_CHECKPOINT_INTERVAL_MS", "200"), ("EDDY_FAILPOINTS", fp)], Duration::from_secs(20))
            })
            .await
            .expect("run");
            if exited {
                fired.push(fp);
            }
        } else {
            let mut server = TestServer::start_in_with_env(&data, &env);
            tokio::time::sleep(Duration::from_millis(rng.range(300, 2000) as u64)).await;
            server.kill();
        }
    }
    produce.await.expect("producer");
    // At least the failpoints on the sink's path must have fired.
    for fp in ["after_sink_flush", "before_kafka_commit", "after_kafka_commit"] {
        assert!(fired.contains(&fp), "failpoint {fp} never fired (fired: {fired:?})");
    }
    // A clean run to the end.
    let server = TestServer::start_in_with_env(&data, &env);
    let c = server.connect().await;
    let expected_n = events.to_string();
    wait_rows(&c, "SELECT sum(n) FROM agg", &[expected_n.as_str()]).await;
    // The view equals its recomputation from the input.
    let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for id in 0..events as i64 {
        let e = want.entry(id % 37).or_insert((0, 0));
        e.0 += 1;
        e.1 += id % 11;
    }
    let want_rows: Vec<String> = want.iter().map(|(k, (n, s))| format!("{k}|{n}|{s}")).collect();
    let want_refs: Vec<&str> = want_rows.iter().map(String::as_str).collect();
    wait_rows(&c, "SELECT k, n, s FROM agg", &want_refs).await;
    // Every id exactly once in the pass-through topic (read_committed).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let committed = loop {
        let (b, t) = (bootstrap(), pass.clone());
        let records = tokio::task::spawn_blocking(move || read_all_with(&b, &t, "read_committed")).await.expect("read");
        if records.len() >= events || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut seen = HashSet::new();
    let mut dups = 0;
    for r in &committed {
        let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap_or("null")).expect("json");
        if !seen.insert(v["id"].as_i64().expect("id")) {
            dups += 1;
        }
    }
    assert_eq!(dups, 0, "duplicates in the pass-through sink");
    assert_eq!(seen.len(), events, "ids missing from the pass-through sink");
    // The upsert topic, compacted by key, equals the GROUP BY.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (b, t) = (bootstrap(), upsert.clone());
        let records = tokio::task::spawn_blocking(move || read_all_with(&b, &t, "read_committed")).await.expect("read");
        let mut state: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for r in &records {
            let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap_or("null")).expect("key");
            let k = key["k"].as_i64().expect("k");
            match &r.value {
                Some(v) => {
                    let v: serde_json::Value = serde_json::from_str(v).expect("value");
                    state.insert(k, (v["n"].as_i64().unwrap_or(-1), v["s"].as_i64().unwrap_or(-1)));
                }
                None => {
                    state.remove(&k);
                }
            }
        }
        if state == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upsert topic state differs from the GROUP BY");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Aborted transactions did happen: read_uncommitted sees more, in one
    // sink's topic or the other (whichever sink reached the failpoint
    // before_kafka_commit first).
    let mut counts = Vec::new();
    for topic in [pass.clone(), upsert.clone()] {
        for isolation in ["read_committed", "read_uncommitted"] {
            let (b, t) = (bootstrap(), topic.clone());
            let n = tokio::task::spawn_blocking(move || read_all_with(&b, &t, isolation).len()).await.expect("read");
            counts.push(n);
        }
    }
    assert!(
        counts[1] > counts[0] || counts[3] > counts[2],
        "no aborted records: pass (committed, uncommitted) = ({}, {}), upsert = ({}, {})",
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
}

/// A second eddy on a copy of the data directory takes the sinks over; the
/// first, resumed, is fenced and writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_zombie_is_fenced() {
    let input = unique("zombie-in");
    let out = unique("zombie-out");
    create_topic(&input, 2).await;
    create_topic(&out, 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let env = [("EDDY_CHECKPOINT_INTERVAL_MS", "200")];
    let first = TestServer::start_in_with_env(&data, &env);
    let c = first.connect().await;
    let w = |t: &str| format!("connector = 'kafka', topic = '{t}', properties.bootstrap.server = '{}'", bootstrap());
    exec(&c, &format!("CREATE SOURCE ev (id BIGINT) WITH ({}) FORMAT PLAIN ENCODE JSON", w(&input))).await;
    exec(&c, &format!("CREATE SINK pass AS SELECT id FROM ev WITH ({}) FORMAT PLAIN ENCODE JSON", w(&out))).await;
    let p = producer();
    for id in 0..100 {
        send(&p, &input, Some(id % 2), None, Some(&format!(r#"{{"id": {id}}}"#)), &[]).await;
    }
    let read = |t: String| async move {
        tokio::task::spawn_blocking(move || read_all_with(&bootstrap(), &t, "read_committed")).await.expect("read")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read(out.clone()).await.len() < 100 {
        assert!(std::time::Instant::now() < deadline, "first eddy did not publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Freeze the first; copy its data directory; start a second on the copy.
    let pid = first_pid(&first);
    signal(pid, "STOP");
    let copy = dir.path().join("copy");
    copy_dir(&data, &copy);
    let second = TestServer::start_in_with_env(&copy, &env);
    let c2 = second.connect().await;
    for id in 100..200 {
        send(&p, &input, Some(id % 2), None, Some(&format!(r#"{{"id": {id}}}"#)), &[]).await;
    }
    wait_rows(&c2, "SELECT count(*) FROM ev", &["200"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read(out.clone()).await.len() < 200 {
        assert!(std::time::Instant::now() < deadline, "second eddy did not publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Resume the zombie: its transactions are fenced; nothing is doubled.
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let records = read(out.clone()).await;
    let ids: Vec<i64> = records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap_or("null")).expect("json")["id"].as_i64().unwrap_or(-1))
        .collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 200);
    assert_eq!(ids.len(), 200, "the resumed zombie published again");
    drop(c);
    drop(first);
}

fn first_pid(server: &TestServer) -> u32 {
    server.pid().expect("running")
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(status.success());
}

/// With a short transaction timeout, eddy frozen past it (the broker
/// aborts its open transaction) recovers and the output is still exact;
/// a timeout that cannot cover a checkpoint plus a restart is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_past_the_transaction_timeout() {
    let input = unique("tto-in");
    let out = unique("tto-out");
    create_topic(&input, 2).await;
    create_topic(&out, 1).await;
    let server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "200")]);
    let c = server.connect().await;
    let w = |t: &str| format!("connector = 'kafka', topic = '{t}', properties.bootstrap.server = '{}'", bootstrap());
    exec(&c, &format!("CREATE SOURCE ev (id BIGINT) WITH ({}) FORMAT PLAIN ENCODE JSON", w(&input))).await;
    let refused = c
        .simple_query(&format!(
            "CREATE SINK bad AS SELECT id FROM ev WITH ({}, properties.transaction.timeout.ms = '5000') FORMAT PLAIN ENCODE JSON",
            w(&out)
        ))
        .await
        .expect_err("too short");
    assert_eq!(refused.code().map(|c| c.code()), Some("22023"));
    exec(
        &c,
        &format!(
            "CREATE SINK pass AS SELECT id FROM ev WITH ({}, properties.transaction.timeout.ms = '11000') FORMAT PLAIN ENCODE JSON",
            w(&out)
        ),
    )
    .await;
    let p = producer();
    let pid = server.pid().expect("running");
    let feeder = {
        let input = input.clone();
        tokio::spawn(async move {
            for id in 0..3000 {
                send(&p, &input, Some(id % 2), None, Some(&format!(r#"{{"id": {id}}}"#)), &[]).await;
                if id % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_secs(14)).await;
    signal(pid, "CONT");
    feeder.await.expect("feeder");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let t = out.clone();
        let records = tokio::task::spawn_blocking(move || read_all_with(&bootstrap(), &t, "read_committed")).await.expect("read");
        let ids: Vec<i64> = records
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap_or("null")).expect("json")["id"].as_i64().unwrap_or(-1))
            .collect();
        let distinct: HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(ids.len(), distinct.len(), "duplicates after the transaction timed out");
        if distinct.len() == 3000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {} of 3000 ids arrived", distinct.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGTERM: ingest stops, a last checkpoint is written and the sinks
/// publish it before eddy exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_publishes_the_last_epoch() {
    let input = unique("stop-in");
    let out = unique("stop-out");
    create_topic(&input, 1).await;
    create_topic(&out, 1).await;
    // A long checkpoint interval: only the shutdown's checkpoint publishes.
    let mut server = TestServer::start_with_env(&[("EDDY_CHECKPOINT_INTERVAL_MS", "600000")]);
    let c = server.connect().await;
    let w = |t: &str| format!("connector = 'kafka', topic = '{t}', properties.bootstrap.server = '{}'", bootstrap());
    exec(&c, &format!("CREATE SOURCE ev (id BIGINT) WITH ({}) FORMAT PLAIN ENCODE JSON", w(&input))).await;
    // The transaction timeout must cover the (long) checkpoint interval.
    exec(
        &c,
        &format!("CREATE SINK pass AS SELECT id FROM ev WITH ({}, properties.transaction.timeout.ms = '700000') FORMAT PLAIN ENCODE JSON", w(&out)),
    )
    .await;
    let p = producer();
    for id in 0..50 {
        send(&p, &input, None, None, Some(&format!(r#"{{"id": {id}}}"#)), &[]).await;
    }
    wait_rows(&c, "SELECT sum(rows_read) FROM eddy_catalog.kafka_source_partitions", &["50"]).await;
    let t = out.clone();
    let before = tokio::task::spawn_blocking(move || read_all_with(&bootstrap(), &t, "read_committed")).await.expect("read");
    assert!(before.is_empty(), "published before any checkpoint");
    drop(c);
    assert!(server.terminate().success());
    let t = out.clone();
    let after = tokio::task::spawn_blocking(move || read_all_with(&bootstrap(), &t, "read_committed")).await.expect("read");
    assert_eq!(after.len(), 50);
}
