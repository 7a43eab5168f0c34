//! Materialized-view benchmarks (issue: incremental materialized views).
//!
//! 1. `operator`: the GROUP BY operator alone on changes already in Arrow
//!    batches (count + sum by `value % 10000`), rows per CPU-second.
//! 2. `server`: maintenance through the whole server, fed by COPY, in
//!    changes per CPU-second of the server process: a GROUP BY view with
//!    10k groups and a two-way join view. The same COPY into a table
//!    without views is measured too, so the view's own cost can be read.
//! 3. `incremental`: one batch of 1,000 changes (UPDATE + FLUSH) to a
//!    GROUP BY view over a large table vs. over a 10k-row table.
//! 4. `memory`: a view with one group per row (many millions of groups);
//!    the server's peak RSS against its `state_cache_mb`, and every 10 s
//!    where it goes (`eddy_catalog.memory`).
//!
//! Run: `cargo bench --bench views` (all parts) or `cargo bench --bench
//! views -- operator server` (some). Sizes: EDDY_BENCH_ROWS (server part,
//! default 1,000,000), EDDY_BENCH_BIG (incremental, default 10,000,000),
//! EDDY_BENCH_GROUPS (memory, default 20,000,000; EDDY_BENCH_CACHE_MB sets
//! its state_cache_mb, default 256). It prints numbers and
//! asserts nothing about speed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_expr::expressions::Column;
use eddy::plan::{AggKind, AggSpec, PhysExpr};
use eddy::stream::Changes;
use eddy::stream::ops::Operator;
use eddy::stream::ops::aggregate::AggregateOp;
use eddy::stream::state::{CacheBudget, StateTable};
use common::{Server, connect, cpu_seconds};
use futures::SinkExt;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn operator() {
    let rows = env_usize("EDDY_BENCH_OP_ROWS", 20_000_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let store = eddy::state::Store::open(&tmp.path().join("data"), 64).expect("store");
    let input = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("v", DataType::Int64, true)]));
    let output = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("count", DataType::Int64, true),
        Field::new("sum", DataType::Int64, true),
    ]));
    let k: PhysExpr = Arc::new(Column::new("k", 0));
    let v: PhysExpr = Arc::new(Column::new("v", 1));
    let spec = |kind, label: &str| AggSpec {
        kind,
        arg: v.clone(),
        input_type: DataType::Int64,
        output_type: DataType::Int64,
        label: label.into(),
    };
    for batch_rows in [4096usize, 65_536] {
        let state = StateTable::new(store.db().clone(), b"bench".to_vec(), CacheBudget::new(256 << 20));
        let mut op = AggregateOp::new(vec![k.clone()], vec![spec(AggKind::Count, "count"), spec(AggKind::Sum, "sum")], output.clone(), state, None, false)
            .expect("operator");
        let batches: Vec<Changes> = (0..16)
            .map(|b| {
                let values: Vec<i64> = (0..batch_rows as i64).map(|i| i + b * batch_rows as i64).collect();
                let keys: Vec<i64> = values.iter().map(|x| x % 10_000).collect();
                let batch = RecordBatch::try_new(
                    input.clone(),
                    vec![Arc::new(Int64Array::from(keys)), Arc::new(Int64Array::from(values))],
                )
                .expect("batch");
                Changes::new(batch, Int64Array::from(vec![1i64; batch_rows]))
            })
            .collect();
        let pid = std::process::id();
        let cpu0 = cpu_seconds(pid);
        let t = Instant::now();
        let mut done = 0usize;
        let mut epoch = 0;
        while done < rows {
            for c in &batches {
                let out = op.process(0, c.clone()).expect("process");
                std::hint::black_box(out);
                done += batch_rows;
            }
            epoch += 1;
            let (_, writes) = op.barrier(epoch).expect("barrier");
            std::hint::black_box(writes);
        }
        let cpu = cpu_seconds(pid) - cpu0;
        let wall = t.elapsed().as_secs_f64();
        println!(
            "operator: GROUP BY value % 10000 (count, sum), {batch_rows}-row batches: {:.2}M rows per CPU-second ({done} rows, {cpu:.2} CPU s, {wall:.2} s wall; state written once per group per {} rows)",
            done as f64 / cpu.max(0.01) / 1e6,
            16 * batch_rows
        );
    }
}

fn start(cache_mb: usize) -> Server {
    common::start(&[("EDDY_STATE_CACHE_MB", cache_mb.to_string())])
}

/// COPYs `rows` rows `(id, id % modulo, id)` starting at `first`, in
/// statements of at most `chunk` rows.
async fn copy_chunked(client: &tokio_postgres::Client, table: &str, first: usize, rows: usize, modulo: usize, chunk: usize) {
    let mut start = first;
    while start < first + rows {
        let end = (start + chunk).min(first + rows);
        let mut data = String::with_capacity((end - start) * 24);
        for id in start..end {
            data.push_str(&format!("{id}\t{}\t{id}\n", id % modulo));
        }
        let sink = client.copy_in(&format!("COPY {table} FROM STDIN")).await.expect("copy");
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from(data)).await.expect("copy data");
        sink.as_mut().finish().await.expect("copy done");
        start = end;
    }
}

async fn copy_rows(client: &tokio_postgres::Client, table: &str, first: usize, rows: usize, modulo: usize) {
    copy_chunked(client, table, first, rows, modulo, 500_000).await
}

async fn server_part() {
    let rows = env_usize("EDDY_BENCH_ROWS", 1_000_000);
    let server = start(256);
    let pid = server.child.id();
    let c = connect(server.port).await;
    c.batch_execute(
        "CREATE TABLE plain (id BIGINT PRIMARY KEY, k INT, v BIGINT);
         CREATE TABLE facts (id BIGINT PRIMARY KEY, k INT, v BIGINT);
         CREATE TABLE dim (id BIGINT PRIMARY KEY, k INT, w BIGINT);
         CREATE TABLE l (id BIGINT PRIMARY KEY, k INT, v BIGINT);
         CREATE MATERIALIZED VIEW by_k AS SELECT k, count(*) AS n, sum(v) AS total FROM facts GROUP BY k;
         CREATE MATERIALIZED VIEW joined AS SELECT l.id, l.v, dim.w FROM l JOIN dim ON l.k = dim.id;",
    )
    .await
    .expect("setup");
    copy_rows(&c, "dim", 0, 10_000, 10_000).await;
    c.batch_execute("FLUSH").await.expect("flush");

    let measure = |label: &'static str| async move { (label, cpu_seconds(pid), Instant::now()) };
    let (_, cpu0, t0) = measure("plain").await;
    copy_rows(&c, "plain", 0, rows, 10_000).await;
    let base_cpu = cpu_seconds(pid) - cpu0;
    println!(
        "server: COPY into a table without views: {:.0}k rows per CPU-second ({rows} rows, {base_cpu:.2} CPU s, {:.2} s wall)",
        rows as f64 / base_cpu / 1e3,
        t0.elapsed().as_secs_f64()
    );
    for (label, table) in [("GROUP BY view, 10k groups", "facts"), ("two-way join view", "l")] {
        let cpu0 = cpu_seconds(pid);
        let t = Instant::now();
        copy_rows(&c, table, 0, rows, 10_000).await;
        c.batch_execute("FLUSH").await.expect("flush");
        let cpu = cpu_seconds(pid) - cpu0;
        println!(
            "server: {label}: {:.0}k changes per CPU-second through the whole server ({rows} rows, {cpu:.2} CPU s, {:.2} s wall); view maintenance alone {:.0}k changes per CPU-second",
            rows as f64 / cpu / 1e3,
            t.elapsed().as_secs_f64(),
            rows as f64 / (cpu - base_cpu).max(0.01) / 1e3
        );
    }
}

async fn incremental() {
    let big = env_usize("EDDY_BENCH_BIG", 10_000_000);
    let server = start(256);
    let pid = server.child.id();
    let c = connect(server.port).await;
    let mut results = Vec::new();
    for (name, rows) in [("small", 10_000usize), ("big", big)] {
        c.batch_execute(&format!(
            "CREATE TABLE {name} (id BIGINT PRIMARY KEY, k INT, v BIGINT);
             CREATE MATERIALIZED VIEW {name}_by_k AS SELECT k, count(*) AS n, sum(v) AS total, max(v) AS hi FROM {name} GROUP BY k;"
        ))
        .await
        .expect("setup");
        let t = Instant::now();
        copy_rows(&c, name, 0, rows, 10_000).await;
        c.batch_execute("FLUSH").await.expect("flush");
        println!("incremental: loaded {rows} rows into {name} and its view in {:.1} s", t.elapsed().as_secs_f64());
        // The load leaves RocksDB compactions running for a while; they are
        // the load's cost, not the batches'. Wait until the server is idle
        // (under 5% of a core over a second, at most two minutes).
        let settle = Instant::now();
        let mut last = cpu_seconds(pid);
        while settle.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = cpu_seconds(pid);
            if now - last < 0.05 {
                break;
            }
            last = now;
        }
        println!("incremental: server idle again {:.1} s after the load", settle.elapsed().as_secs_f64());
        let mut times = Vec::new();
        for round in 0..20usize {
            let from = (round * 7919) % (rows - 1000);
            let t = Instant::now();
            c.batch_execute(&format!("UPDATE {name} SET v = v + 1 WHERE id >= {from} AND id < {}", from + 1000))
                .await
                .expect("update");
            c.batch_execute("FLUSH").await.expect("flush");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        println!("incremental: 1,000 changes + FLUSH on a view over {rows} rows: median {median:.1} ms (min {:.1}, max {:.1})", times[0], times[times.len() - 1]);
        results.push(median);
    }
    println!("incremental: big / small = {:.2}x", results[1] / results[0]);
}

async fn memory() {
    let groups = env_usize("EDDY_BENCH_GROUPS", 20_000_000);
    let cache_mb = env_usize("EDDY_BENCH_CACHE_MB", 256);
    let server = start(cache_mb);
    let pid = server.child.id();
    let c = connect(server.port).await;
    c.batch_execute(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, k INT, v BIGINT);
         CREATE MATERIALIZED VIEW per_id AS SELECT id, count(*) AS n, sum(v) AS total FROM events GROUP BY id;",
    )
    .await
    .expect("setup");
    let peak = Arc::new(std::sync::Mutex::new(0f64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = rss_mb(pid);
                if let Ok(mut p) = peak.lock() {
                    *p = p.max(r);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Every 10 s, where the memory goes (eddy_catalog.memory), in MB.
    let breakdown = {
        let stop = stop.clone();
        let c2 = connect(server.port).await;
        tokio::spawn(async move {
            let t = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Ok(rows) = c2.query("SELECT component, bytes FROM eddy_catalog.memory", &[]).await {
                    let parts: Vec<String> = rows
                        .iter()
                        .map(|r| format!("{} {:.0}", r.get::<_, String>(0), r.get::<_, Option<i64>>(1).unwrap_or(0) as f64 / 1048576.0))
                        .collect();
                    eprintln!("memory at {:.0} s (MB): {}", t.elapsed().as_secs_f64(), parts.join(", "));
                }
            }
        })
    };
    let t = Instant::now();
    // Streaming-sized statements (a COPY statement is buffered whole, so
    // 500k-row statements would measure COPY's buffers, not view state).
    copy_chunked(&c, "events", 0, groups, usize::MAX, 50_000).await;
    c.batch_execute("FLUSH").await.expect("flush");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    breakdown.abort();
    let n = c.query_one("SELECT count(*) FROM per_id", &[]).await.expect("count").get::<_, i64>(0);
    let peak = peak.lock().map(|p| *p).unwrap_or(0.0);
    println!(
        "memory: {n} groups in {:.0} s (COPY statements of 50k rows); peak RSS {peak:.0} MB with state_cache_mb = {cache_mb} (bound: cache + 512 MB = {} MB)",
        t.elapsed().as_secs_f64(),
        cache_mb + 512
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |p: &str| args.is_empty() || args.iter().any(|a| a == p);
    if want("operator") {
        operator();
    }
    if want("server") {
        server_part().await;
    }
    if want("incremental") {
        incremental().await;
    }
    if want("memory") {
        memory().await;
    }
}
