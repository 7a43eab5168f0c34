//! Nexmark q0, q1, q2, q5, q7 and q8 (RisingWave's versions of the Flink
//! SQL queries) from `connector = 'nexmark'` sources into a blackhole sink.
//!
//! Each query runs in a fresh server: its sources are bounded to their
//! share of EDDY_BENCH_EVENTS events (default 2,000,000; bids are 46 of
//! every 50 events, auctions 3, people 1) and generated as fast as eddy
//! goes (`nexmark.min.event.gap.in.ns = '0'`), then the sink is created,
//! and the run ends when every event has been read and a FLUSH has pushed
//! it through the query. Reported: events read per CPU-second of the eddy
//! process (user + system), wall time and peak resident memory.
//!
//! Run: `cargo bench --bench nexmark` (or `-- q5 q7`). Prints numbers;
//! asserts nothing about speed.

mod common;

use std::time::{Duration, Instant};

use common::{connect, cpu_seconds, start};

fn events() -> u64 {
    std::env::var("EDDY_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000)
}

/// The three sources, each bounded to its share of `n` events.
fn source(name: &str, n: u64) -> String {
    let (ty, columns, share) = match name {
        "person" => (
            "Person",
            "id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, state VARCHAR,
             date_time TIMESTAMP, extra VARCHAR",
            1,
        ),
        "auction" => (
            "Auction",
            "id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT,
             date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR",
            3,
        ),
        _ => ("Bid", "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, extra VARCHAR", 46),
    };
    format!(
        "CREATE SOURCE {name} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'nexmark', nexmark.table.type = '{ty}', nexmark.event.num = '{}',
               nexmark.min.event.gap.in.ns = '0')",
        n * share / 50
    )
}

struct Query {
    name: &'static str,
    sources: &'static [&'static str],
    sql: &'static str,
}

const QUERIES: &[Query] = &[
    Query { name: "q0", sources: &["bid"], sql: "SELECT auction, bidder, price, date_time FROM bid" },
    Query { name: "q1", sources: &["bid"], sql: "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid" },
    Query {
        name: "q2",
        sources: &["bid"],
        sql: "SELECT auction, price FROM bid WHERE auction = 1007 OR auction = 1020 OR auction = 2001 OR auction = 2019 OR auction = 2087",
    },
    Query {
        name: "q5",
        sources: &["bid"],
        sql: "SELECT AuctionBids.auction, AuctionBids.num FROM (
                SELECT bid.auction, count(*) AS num, window_start AS starttime
                FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
                GROUP BY window_start, bid.auction
              ) AS AuctionBids
              JOIN (
                SELECT max(CountBids.num) AS maxn, CountBids.starttime_c
                FROM (
                  SELECT count(*) AS num, window_start AS starttime_c
                  FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
                  GROUP BY bid.auction, window_start
                ) AS CountBids
                GROUP BY CountBids.starttime_c
              ) AS MaxBids
              ON AuctionBids.starttime = MaxBids.starttime_c AND AuctionBids.num >= MaxBids.maxn",
    },
    Query {
        name: "q7",
        sources: &["bid"],
        sql: "SELECT B.auction, B.price, B.bidder, B.date_time
              FROM bid B
              JOIN (
                SELECT max(price) AS maxprice, window_end AS date_time
                FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
                GROUP BY window_end
              ) B1 ON B.price = B1.maxprice
              WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time",
    },
    Query {
        name: "q8",
        sources: &["person", "auction"],
        sql: "SELECT P.id, P.name, P.starttime
              FROM (
                SELECT id, name, window_start AS starttime, window_end AS endtime
                FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
                GROUP BY id, name, window_start, window_end
              ) P
              JOIN (
                SELECT seller, window_start AS starttime, window_end AS endtime
                FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
                GROUP BY seller, window_start, window_end
              ) A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
    },
];

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
        Err(e) => panic!("{sql}: {e}"),
    }
}

async fn run(q: &Query, n: u64) {
    let server = start(&[("EDDY_CHECKPOINT_INTERVAL_MS", "1000".into())]);
    let pid = server.child.id();
    let c = connect(server.port).await;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut target = 0;
    for s in q.sources {
        c.batch_execute(&source(s, n)).await.expect("source");
        target += n * match *s {
            "person" => 1,
            "auction" => 3,
            _ => 46,
        } / 50;
    }
    c.batch_execute(&format!("CREATE SINK {} AS {} WITH (connector = 'blackhole')", q.name, q.sql))
        .await
        .expect("sink");
    let deadline = Instant::now() + Duration::from_secs(3600);
    while scalar(&c, "SELECT coalesce(sum(rows_read), 0) FROM eddy_catalog.kafka_source_partitions").await < target as i64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.batch_execute("FLUSH").await.expect("flush");
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let out = scalar(&c, &format!("SELECT records FROM eddy_catalog.kafka_sinks WHERE sink = '{}'", q.name)).await;
    println!(
        "{:<3} {target} events: {:>10.0} events/CPU-s ({:.1} CPU-s, {:.1} s wall, {:.0} events/s); {out} rows out; peak RSS {:.0} MiB",
        q.name,
        target as f64 / cpu.max(1e-9),
        cpu,
        wall,
        target as f64 / wall,
        peak_rss_mib(pid)
    );
}

#[tokio::main]
async fn main() {
    let n = events();
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for q in QUERIES {
        if wanted.is_empty() || wanted.iter().any(|w| w == q.name) {
            run(q, n).await;
        }
    }
}
