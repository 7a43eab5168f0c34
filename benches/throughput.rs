//! Foundation benchmark: starts a real eddy server and measures, over the
//! Postgres protocol with tokio-postgres clients:
//! * COPY FROM STDIN throughput with 4 concurrent clients (narrow rows);
//! * multi-row INSERT throughput with 4 concurrent clients;
//! * single-row INSERT throughput with 4 clients (group commit at work);
//! * primary-key point SELECT latency (p50, p99) with a prepared statement;
//! * full scan + GROUP BY rows per second.
//!
//! Run: `cargo bench --bench throughput` (release build). Sizes can be
//! changed with EDDY_BENCH_ROWS (default 1,000,000). It prints numbers; it
//! asserts nothing about speed.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect, start};
use futures::SinkExt;

const CLIENTS: usize = 4;

fn rate(rows: usize, d: Duration) -> String {
    format!("{:.0} rows/s ({rows} rows in {:.2} s)", rows as f64 / d.as_secs_f64(), d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: usize = std::env::var("EDDY_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let per_client = rows / CLIENTS;
    let server = start(&[]);
    let port = server.port;
    let admin = connect(port).await;
    admin
        .batch_execute(
            "CREATE TABLE copy_t (id BIGINT PRIMARY KEY, k INT, v DOUBLE PRECISION);
             CREATE TABLE insert_t (id BIGINT PRIMARY KEY, k INT, v DOUBLE PRECISION);",
        )
        .await
        .expect("create");

    // COPY: each client sends its slice in chunks of 100k rows (one COPY each).
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let client = connect(port).await;
            let chunk = 100_000.min(per_client.max(1));
            let mut start = c * per_client;
            let end = start + per_client;
            while start < end {
                let stop = (start + chunk).min(end);
                let mut data = String::with_capacity((stop - start) * 24);
                for i in start..stop {
                    data.push_str(&format!("{i}\t{}\t{}\n", i % 1000, i as f64 * 0.5));
                }
                let sink = client.copy_in("COPY copy_t FROM STDIN").await.expect("copy");
                futures::pin_mut!(sink);
                sink.send(Bytes::from(data)).await.expect("send");
                sink.finish().await.expect("finish");
                start = stop;
            }
        }));
    }
    for t in tasks {
        t.await.expect("copy task");
    }
    println!("COPY, {CLIENTS} clients: {}", rate(per_client * CLIENTS, t.elapsed()));

    // Multi-row INSERT: 1000 rows per statement.
    let insert_rows = (rows / 4).max(CLIENTS * 1000);
    let per = insert_rows / CLIENTS;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let client = connect(port).await;
            let mut i = c * per;
            let end = i + per;
            while i < end {
                let stop = (i + 1000).min(end);
                let values: Vec<String> = (i..stop).map(|n| format!("({n},{},{})", n % 1000, n as f64 * 0.5)).collect();
                client.batch_execute(&format!("INSERT INTO insert_t VALUES {}", values.join(","))).await.expect("insert");
                i = stop;
            }
        }));
    }
    for t in tasks {
        t.await.expect("insert task");
    }
    println!("multi-row INSERT (1000 rows/statement), {CLIENTS} clients: {}", rate(per * CLIENTS, t.elapsed()));

    // Single-row INSERTs from 4 clients for a fixed time: each is synced
    // before it is acknowledged, so this measures group commit.
    admin.batch_execute("CREATE TABLE single_t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("create");
    let window = Duration::from_secs(3);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let client = connect(port).await;
            let stmt = client.prepare("INSERT INTO single_t VALUES ($1, $2)").await.expect("prepare");
            let mut n = 0usize;
            let start = Instant::now();
            while start.elapsed() < window {
                let id = ((c as i64) << 40) | n as i64;
                client.execute(&stmt, &[&id, &"x"]).await.expect("insert");
                n += 1;
            }
            n
        }));
    }
    let mut single = 0;
    for t in tasks {
        single += t.await.expect("single insert task");
    }
    println!("single-row INSERT (each synced), {CLIENTS} clients: {}", rate(single, t.elapsed()));

    // Point SELECT latency.
    let stmt = admin.prepare("SELECT k, v FROM copy_t WHERE id = $1").await.expect("prepare");
    let n = 5000;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let id = ((i * 7919) % (per_client * CLIENTS)) as i64;
        let t = Instant::now();
        let row = admin.query_one(&stmt, &[&id]).await.expect("point select");
        lat.push(t.elapsed());
        let _: i32 = row.get(0);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!("point SELECT by primary key ({n} queries): p50 {:?}, p99 {:?}", pct(0.50), pct(0.99));

    // Full scan + GROUP BY.
    let t = Instant::now();
    let groups = admin.query("SELECT k, count(*), sum(v) FROM copy_t GROUP BY k", &[]).await.expect("group by");
    let d = t.elapsed();
    assert_eq!(groups.len(), 1000.min(per_client * CLIENTS));
    println!("full scan + GROUP BY: {}", rate(per_client * CLIENTS, d));
}
