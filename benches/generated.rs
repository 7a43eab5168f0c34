//! Benchmarks on generated data (no Kafka, no JSON): a `datagen` source
//! into a `blackhole` sink or a view, and into Delta Lake tables. The
//! shapes of the head-to-head with Spark Structured Streaming's `rate`
//! source (issue: event time) and the Delta sink's throughput (issue:
//! Delta Lake sink).
//!
//! Each case creates a bounded datagen source of EDDY_BENCH_ROWS rows
//! (default 2,000,000) generated as fast as eddy can (`rows.per.second` far
//! above what it reaches), then its consumer, and runs until every row is
//! accounted for. Reported: rows per CPU-second of the eddy process (user +
//! system, from the CREATE to the last row), wall time, time from CREATE to
//! the first result, and the process's peak resident memory.
//!
//! 1. `filter`: pass-through with a filter into a blackhole sink.
//! 2. `tumble`: TUMBLE(1 s) count per key (100 keys) into a view.
//! 3. `group_by`: GROUP BY over 10,000 keys (count, sum) into a view.
//! 4. `delta_narrow` / `delta_wide`: into a Delta table (3 and 20 columns),
//!    done when the sink has committed every row.
//! 5. `eowc_memory`: EDDY_BENCH_EOWC_ROWS rows (default 100,000,000)
//!    through a TUMBLE count with EMIT ON WINDOW CLOSE, 100 ms windows;
//!    resident memory at a quarter and at the end shows whether it is flat.
//!
//! Run: `cargo bench --bench generated` (or `-- filter group_by`). Prints
//! numbers; asserts nothing about speed.

mod common;

use std::time::{Duration, Instant};

use common::{connect, cpu_seconds, start};

fn rows() -> u64 {
    std::env::var("EDDY_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000)
}

/// Peak resident memory of `pid` in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn scalar(c: &tokio_postgres::Client, sql: &str) -> i64 {
    match c.simple_query(sql).await {
        Ok(msgs) => msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<i64>().ok()),
                _ => None,
            })
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn source_sql(n: u64, wide: bool, rate: u64) -> String {
    let extra: String = if wide {
        (0..17).map(|i| format!(", c{i} {}", if i % 2 == 0 { "BIGINT" } else { "DOUBLE PRECISION" })).collect()
    } else {
        String::new()
    };
    format!(
        "CREATE SOURCE gen (id BIGINT, k INT, v DOUBLE PRECISION, ts TIMESTAMP{extra},
                            WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
         WITH (connector = 'datagen', fields.id.kind = 'sequence', fields.id.start = '1', fields.id.end = '{n}',
               fields.k.min = '1', fields.k.max = '10000', fields.v.min = '0', fields.v.max = '100',
               fields.ts.start = '2026-01-01 00:00:00', datagen.rows.per.second = '{rate}')"
    )
}

/// Rows per second of the throughput cases: far above what eddy reaches.
const FAST: u64 = 100_000_000;
/// Rows per second (so per second of event time) of the memory case.
const EOWC_RATE: u64 = 10_000_000;

struct Case {
    name: &'static str,
    consumer: String,
    /// A query whose single number reaches `target` when done.
    progress: &'static str,
    target: i64,
    wide: bool,
    /// Rows of the source, and its `datagen.rows.per.second` (which also
    /// sets how fast its timestamps advance).
    rows: u64,
    rate: u64,
}

/// Resident memory of `pid` now, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn run(case: Case) {
    let n = case.rows;
    let server = start(&[("EDDY_CHECKPOINT_INTERVAL_MS", "1000".into())]);
    let pid = server.child.id();
    let c = connect(server.port).await;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    c.batch_execute(&source_sql(n, case.wide, case.rate)).await.expect("source");
    c.batch_execute(&case.consumer).await.expect("consumer");
    let mut first = None;
    let mut rss_quarter = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done = scalar(&c, case.progress).await;
        if done > 0 && first.is_none() {
            first = Some(t0.elapsed());
        }
        if done >= case.target / 4 && rss_quarter.is_none() {
            rss_quarter = Some(rss_mib(pid));
        }
        if done >= case.target || Instant::now() > deadline {
            break;
        }
        // Often until the first result (its time is reported), then less
        // often: the progress query scans the view, and its CPU counts.
        tokio::time::sleep(Duration::from_millis(if first.is_none() { 20 } else { 200 })).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let rss_end = rss_mib(pid);
    println!(
        "{:<13} {n} rows: {:>10.0} rows/CPU-s ({:.1} CPU-s, {:.1} s wall, {:.0} rows/s); first result after {:.2} s; \
         RSS {:.0} MiB at a quarter, {:.0} MiB at the end, peak {:.0} MiB",
        case.name,
        n as f64 / cpu.max(1e-9),
        cpu,
        wall,
        n as f64 / wall,
        first.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        rss_quarter.unwrap_or(f64::NAN),
        rss_end,
        peak_rss_mib(pid)
    );
}

#[tokio::main]
async fn main() {
    let n = rows();
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.starts_with(w.as_str()));
    let eowc_rows: u64 = std::env::var("EDDY_BENCH_EOWC_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000_000);
    let lake = tempfile::tempdir().expect("tmp");
    let cases = vec![
        Case {
            name: "filter",
            consumer: "CREATE SINK out AS SELECT id, k, v FROM gen WHERE id % 2 = 0 WITH (connector = 'blackhole')".into(),
            progress: "SELECT records FROM eddy_catalog.kafka_sinks WHERE sink = 'out'",
            target: (n / 2) as i64,
            wide: false,
            rows: n,
            rate: FAST,
        },
        Case {
            name: "tumble",
            consumer: "CREATE MATERIALIZED VIEW out AS SELECT k % 100 AS key, window_start, count(*) AS n
                       FROM TUMBLE(gen, ts, INTERVAL '1' SECOND) GROUP BY k % 100, window_start"
                .into(),
            progress: "SELECT sum(n) FROM out",
            target: n as i64,
            wide: false,
            rows: n,
            rate: FAST,
        },
        Case {
            name: "group_by",
            consumer: "CREATE MATERIALIZED VIEW out AS SELECT k, count(*) AS n, sum(v) AS total FROM gen GROUP BY k".into(),
            progress: "SELECT sum(n) FROM out",
            target: n as i64,
            wide: false,
            rows: n,
            rate: FAST,
        },
        Case {
            name: "delta_narrow",
            consumer: format!(
                "CREATE SINK out AS SELECT id, k, v FROM gen WITH (connector = 'deltalake', location = 'file://{}/narrow')",
                lake.path().display()
            ),
            progress: "SELECT records FROM eddy_catalog.kafka_sinks WHERE sink = 'out'",
            target: n as i64,
            wide: false,
            rows: n,
            rate: FAST,
        },
        Case {
            name: "delta_wide",
            consumer: format!(
                "CREATE SINK out AS SELECT * FROM gen WITH (connector = 'deltalake', location = 'file://{}/wide')",
                lake.path().display()
            ),
            progress: "SELECT records FROM eddy_catalog.kafka_sinks WHERE sink = 'out'",
            target: n as i64,
            wide: true,
            rows: n,
            rate: FAST,
        },
        // 100M rows through a TUMBLE (100 ms windows, so a window closes
        // every 1M rows) with EMIT ON WINDOW CLOSE: memory must stay flat.
        // Done when every window the final watermark (last ts - 1 s)
        // closes has been emitted.
        Case {
            name: "eowc_memory",
            consumer: "CREATE MATERIALIZED VIEW out AS SELECT k % 100 AS key, window_start, count(*) AS n
                       FROM TUMBLE(gen, ts, INTERVAL '100' MILLISECOND) GROUP BY k % 100, window_start
                       EMIT ON WINDOW CLOSE"
                .into(),
            progress: "SELECT sum(n) FROM out",
            target: (eowc_rows.saturating_sub(EOWC_RATE) / (EOWC_RATE / 10)).saturating_sub(1) as i64 * (EOWC_RATE / 10) as i64,
            wide: false,
            rows: eowc_rows,
            rate: EOWC_RATE,
        },
    ];
    for case in cases {
        if want(case.name) {
            run(case).await;
        }
    }
}
