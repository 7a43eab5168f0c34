//! Recovery of materialized views: concurrent INSERT/UPDATE/DELETE while
//! the server is SIGKILLed at random moments, several times on one data
//! directory; after each restart every view must equal its query
//! recomputed over the recovered tables, and keep updating. Also: a clean
//! restart, and COPY feeding a view.

mod common;

use std::time::Duration;

use common::{Rng, rows_text};

const VIEWS: &[(&str, &str)] = &[
    ("r_agg", "SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM t GROUP BY k"),
    ("r_join", "SELECT t.id, t.v, u.label FROM t LEFT JOIN u ON t.k = u.k"),
    ("r_top", "SELECT id, v FROM t ORDER BY v DESC, id LIMIT 5"),
    ("r_distinct", "SELECT DISTINCT k FROM t"),
];
/// A view on a view: (name, query over r_agg, the same over the tables).
const NESTED: (&str, &str, &str) = (
    "r_nested",
    "SELECT count(*) AS groups, sum(n) AS rows FROM r_agg",
    "SELECT count(*) AS groups, sum(n) AS rows FROM (SELECT k, count(*) AS n FROM t GROUP BY k) x",
);

async fn check(client: &tokio_postgres::Client, round: usize) {
    client.batch_execute("FLUSH").await.expect("flush");
    for (name, query) in VIEWS {
        let view = rows_text(client, &format!("SELECT * FROM {name}")).await;
        let batch = rows_text(client, query).await;
        assert_eq!(view, batch, "after round {round}, view {name} differs from {query}");
    }
    let view = rows_text(client, &format!("SELECT * FROM {}", NESTED.0)).await;
    let batch = rows_text(client, NESTED.2).await;
    assert_eq!(view, batch, "after round {round}, view {} differs", NESTED.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_recomputation_after_sigkill() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    {
        let server = common::TestServer::start_in(&dir);
        let c = server.connect().await;
        c.batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k INT, v INT);
             CREATE TABLE u (k INT PRIMARY KEY, label TEXT);
             INSERT INTO t VALUES (1, 1, 10), (2, 2, 20);
             INSERT INTO u VALUES (1, 'one');",
        )
        .await
        .expect("setup");
        for (name, query) in VIEWS {
            c.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await.expect(name);
        }
        c.batch_execute(&format!("CREATE MATERIALIZED VIEW {} AS {}", NESTED.0, NESTED.1)).await.expect("nested");
    }
    let mut rng = Rng::new(42);
    for round in 0..4 {
        let mut server = common::TestServer::start_in(&dir);
        {
            let c = server.connect().await;
            check(&c, round).await;
        }
        let mut tasks = Vec::new();
        for client_no in 0..3u64 {
            let conn = server.conn_str();
            let seed = rng.next() ^ client_no;
            tasks.push(tokio::spawn(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await else { return };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let mut r = Rng::new(seed);
                loop {
                    let id = r.range(0, 200);
                    let sql = match r.range(0, 6) {
                        0 | 1 => format!("INSERT INTO t VALUES ({id}, {}, {}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v", r.range(0, 8), r.range(0, 100)),
                        2 => format!("UPDATE t SET k = {}, v = v + 1 WHERE id = {id}", r.range(0, 8)),
                        3 => format!("DELETE FROM t WHERE id = {id}"),
                        4 => format!("INSERT INTO u VALUES ({}, 'l{id}') ON CONFLICT (k) DO UPDATE SET label = EXCLUDED.label", r.range(0, 8)),
                        _ => format!("DELETE FROM u WHERE k = {}", r.range(0, 8)),
                    };
                    match client.batch_execute(&sql).await {
                        Ok(()) => {}
                        Err(e) if e.code().is_some() => {} // e.g. 40001: retryable
                        Err(_) => return,                  // the server died
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.range(700, 2500) as u64)).await;
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
    }
    // Final recovery: equal, and still maintained.
    let server = common::TestServer::start_in(&dir);
    let c = server.connect().await;
    check(&c, 99).await;
    c.batch_execute("INSERT INTO t VALUES (100000, 1, 1); DELETE FROM t WHERE id < 50").await.expect("more changes");
    check(&c, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_survive_clean_restart_and_copy_feeds_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    {
        let server = common::TestServer::start_in(&dir);
        let c = server.connect().await;
        c.batch_execute(
            "CREATE TABLE m (id INT PRIMARY KEY, g TEXT, x INT);
             CREATE MATERIALIZED VIEW per_g AS SELECT g, count(*) AS n, sum(x) AS total FROM m GROUP BY g;
             CREATE VIEW big_g AS SELECT g FROM per_g WHERE n > 1;
             SET implicit_flush = true;",
        )
        .await
        .expect("setup");
        let sink = c.copy_in("COPY m FROM STDIN").await.expect("copy in");
        use futures::SinkExt;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from_static(b"1\ta\t10\n2\ta\t5\n3\tb\t1\n")).await.expect("copy data");
        sink.as_mut().finish().await.expect("copy done");
        assert_eq!(rows_text(&c, "SELECT * FROM per_g").await, vec!["a|2|15", "b|1|1"]);
    }
    // The first server was dropped (SIGKILL); start again and stop cleanly.
    let mut server = common::TestServer::start_in(&dir);
    {
        let c = server.connect().await;
        assert_eq!(rows_text(&c, "SELECT * FROM per_g").await, vec!["a|2|15", "b|1|1"]);
        assert_eq!(rows_text(&c, "SELECT * FROM big_g").await, vec!["a"]);
        c.batch_execute("INSERT INTO m VALUES (4, 'b', 2)").await.expect("insert");
    }
    assert!(server.terminate().success());
    let server = common::TestServer::start_in(&dir);
    let c = server.connect().await;
    c.batch_execute("FLUSH").await.expect("flush");
    assert_eq!(rows_text(&c, "SELECT * FROM per_g").await, vec!["a|2|15", "b|2|3"]);
    assert_eq!(rows_text(&c, "SELECT * FROM big_g").await, vec!["a", "b"]);
}

/// A table's watermark and a view's closed windows survive SIGKILL: after
/// the restart a row that was late stays late, and no window is emitted
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_and_closed_windows_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let closed = "SELECT k, window_start, n FROM closed ORDER BY window_start, k";
    {
        let server = common::TestServer::start_in(&dir);
        let c = server.connect().await;
        c.batch_execute(
            "SET implicit_flush = true;
             CREATE TABLE ev (k INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) APPEND ONLY;
             CREATE MATERIALIZED VIEW closed AS
               SELECT k, window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '10' SECOND)
               GROUP BY k, window_start EMIT ON WINDOW CLOSE;
             INSERT INTO ev VALUES (1, '2026-01-01 00:00:01'), (2, '2026-01-01 00:00:05'), (1, '2026-01-01 00:00:12');",
        )
        .await
        .expect("setup");
        assert_eq!(rows_text(&c, closed).await, vec!["1|2026-01-01 00:00:00|1", "2|2026-01-01 00:00:00|1"]);
    }
    // SIGKILLed when dropped.
    let server = common::TestServer::start_in(&dir);
    let c = server.connect().await;
    c.batch_execute(
        "SET implicit_flush = true;
         INSERT INTO ev VALUES (1, '2026-01-01 00:00:03');
         INSERT INTO ev VALUES (1, '2026-01-01 00:00:15'), (1, '2026-01-01 00:00:25');",
    )
    .await
    .expect("after restart");
    assert_eq!(
        rows_text(&c, closed).await,
        vec!["1|2026-01-01 00:00:00|1", "1|2026-01-01 00:00:10|2", "2|2026-01-01 00:00:00|1"]
    );
    assert_eq!(rows_text(&c, "SELECT name, late_rows FROM eddy_catalog.watermarks").await, vec!["ev|1"]);
}

/// A view over a windowed view still closes its windows after SIGKILL:
/// the watermark travels again from the table through the first view to
/// the second, and a per-window top-N over the first view keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_reach_views_of_views_after_sigkill() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let per_minute = "SELECT device, minute, max_temp FROM device_minute ORDER BY minute, device";
    {
        let server = common::TestServer::start_in(&dir);
        let c = server.connect().await;
        c.batch_execute(
            "SET implicit_flush = true;
             CREATE TABLE readings (device INT, temp DOUBLE PRECISION, ts TIMESTAMP,
                                    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) APPEND ONLY;
             CREATE MATERIALIZED VIEW device_minute AS
               SELECT device, window_start AS minute, max(temp) AS max_temp
               FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE) GROUP BY device, window_start EMIT ON WINDOW CLOSE;
             CREATE MATERIALIZED VIEW hot_minutes AS
               SELECT window_start, count(*) AS hot FROM TUMBLE(device_minute, minute, INTERVAL '5' MINUTE)
               WHERE max_temp > 30 GROUP BY window_start EMIT ON WINDOW CLOSE;
             CREATE MATERIALIZED VIEW hottest AS
               SELECT minute, device FROM (SELECT minute, device,
                 ROW_NUMBER() OVER (PARTITION BY minute ORDER BY max_temp DESC, device) AS rn FROM device_minute) r
               WHERE rn = 1;
             INSERT INTO readings VALUES (1, 31, '2026-11-29 10:00:10'), (2, 40, '2026-11-29 10:01:20'),
                                         (1, 35, '2026-11-29 10:03:10');",
        )
        .await
        .expect("setup");
        assert_eq!(rows_text(&c, per_minute).await, vec!["1|2026-11-29 10:00:00|31", "2|2026-11-29 10:01:00|40"]);
        assert!(rows_text(&c, "SELECT * FROM hot_minutes").await.is_empty());
    }
    // SIGKILLed when dropped.
    let server = common::TestServer::start_in(&dir);
    let c = server.connect().await;
    c.batch_execute(
        "SET implicit_flush = true;
         INSERT INTO readings VALUES (2, 33, '2026-11-29 10:04:10');
         INSERT INTO readings VALUES (2, 20, '2026-11-29 10:07:10');",
    )
    .await
    .expect("after restart");
    assert_eq!(rows_text(&c, "SELECT * FROM hot_minutes").await, vec!["2026-11-29 10:00:00|4"]);
    assert_eq!(
        rows_text(&c, "SELECT * FROM hottest ORDER BY minute").await,
        vec!["2026-11-29 10:00:00|1", "2026-11-29 10:01:00|2", "2026-11-29 10:03:00|1", "2026-11-29 10:04:00|2"]
    );
}
