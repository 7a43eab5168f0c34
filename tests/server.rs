//! Protocol-level behaviour checked with tokio-postgres against a real
//! server: COPY, parameters and type OIDs, EXPLAIN, the database name,
//! cancellation, statement timeout, the data-directory lock and shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use tokio_postgres::types::Type;

#[tokio::test]
async fn copy_from_stdin_text_and_csv_and_copy_to_stdout() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE c (id INT PRIMARY KEY, name TEXT, amount NUMERIC(8,2), seen DATE, ok BOOLEAN)")
        .await
        .expect("create");

    let sink = client.copy_in("COPY c FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tann\t10.50\t2024-01-01\tt\n2\t\\N\t\\N\t\\N\tf\n")).await.expect("send");
    sink.send(Bytes::from_static(b"3\ttab\\there\t0\t2024-12-31\tt\n")).await.expect("send");
    let n = sink.finish().await.expect("finish");
    assert_eq!(n, 3);

    let sink = client
        .copy_in("COPY c (id, name, ok) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .expect("copy csv");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"id,name,ok\n4,\"a, \"\"quoted\"\" name\",true\n5,,false\n")).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);

    let rows = client.query("SELECT id, name, amount::text, ok FROM c ORDER BY id", &[]).await.expect("select");
    let got: Vec<(i32, Option<String>, Option<String>, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        vec![
            (1, Some("ann".into()), Some("10.50".into()), true),
            (2, None, None, false),
            (3, Some("tab\there".into()), Some("0.00".into()), true),
            (4, Some("a, \"quoted\" name".into()), None, true),
            (5, None, None, false),
        ]
    );

    // A bad value fails the whole COPY and leaves the connection usable.
    let sink = client.copy_in("COPY c FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"6\tx\t1\t2024-01-01\tt\n7\ty\tnot-a-number\t2024-01-01\tt\n")).await.expect("send");
    let err = sink.finish().await.expect_err("bad number");
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err:?}");
    let count: i64 = client.query_one("SELECT count(*) FROM c", &[]).await.expect("count").get(0);
    assert_eq!(count, 5);

    let out = client.copy_out("COPY (SELECT id, name, ok FROM c WHERE id <= 2 ORDER BY id) TO STDOUT").await.expect("copy out");
    let chunks: Vec<Bytes> = out.try_collect().await.expect("copy data");
    let text: String = chunks.iter().map(|c| String::from_utf8_lossy(c).to_string()).collect();
    assert_eq!(text, "1\tann\tt\n2\t\\N\tf\n");

    let out = client.copy_out("COPY c (id, name) TO STDOUT WITH (FORMAT csv, HEADER true)").await.expect("copy out csv");
    let chunks: Vec<Bytes> = out.try_collect().await.expect("copy data");
    let text: String = chunks.iter().map(|c| String::from_utf8_lossy(c).to_string()).collect();
    assert!(text.starts_with("id,name\n1,ann\n2,\n3,tab\there\n4,\"a, \"\"quoted\"\" name\"\n"), "{text}");
}

/// COPY of many rows takes the bulk path (keys sorted and checked in one
/// walk, rows written without a read each): the key checks, the change
/// log that views read, and tables without a primary key.
#[tokio::test]
async fn bulk_copy_checks_keys_and_feeds_views() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE b (id BIGINT PRIMARY KEY, k INT);
             CREATE TABLE nk (k INT, v TEXT);
             CREATE MATERIALIZED VIEW bv AS SELECT k, count(*) AS n, sum(id) AS s FROM b GROUP BY k;
             CREATE MATERIALIZED VIEW nkv AS SELECT k, count(*) AS n FROM nk GROUP BY k;",
        )
        .await
        .expect("create");
    let copy = |ids: Vec<i64>| {
        let client = &client;
        async move {
            let data: String = ids.iter().map(|id| format!("{id}\t{}\n", id % 7)).collect();
            let sink = client.copy_in("COPY b FROM STDIN").await.expect("copy in");
            futures::pin_mut!(sink);
            sink.send(Bytes::from(data)).await.expect("send");
            sink.finish().await
        }
    };
    // Even ids, out of order.
    let evens: Vec<i64> = (0..5000).rev().map(|i| i * 2).collect();
    assert_eq!(copy(evens).await.expect("evens"), 5000);
    // Odd ids fall between stored keys: no conflict.
    assert_eq!(copy((0..3000).map(|i| i * 2 + 1).collect()).await.expect("odds"), 3000);
    // One stored key in the middle of new ones.
    let mut clash: Vec<i64> = (0..2000).map(|i| 20_001 + i * 2).collect();
    clash.push(4242);
    let err = copy(clash).await.expect_err("stored key");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err:?}");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("Key (id)=(4242)")), "{err:?}");
    // A key twice in the same COPY.
    let mut twice: Vec<i64> = (0..2000).map(|i| 30_000 + i).collect();
    twice.push(30_500);
    let err = copy(twice).await.expect_err("duplicate in the data");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err:?}");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("Key (id)=(30500)")), "{err:?}");

    // No primary key: every row is new.
    let data: String = (0..3000).map(|i| format!("{}\tv{i}\n", i % 5)).collect();
    let sink = client.copy_in("COPY nk FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data)).await.expect("send");
    assert_eq!(sink.finish().await.expect("no key"), 3000);

    client.batch_execute("FLUSH").await.expect("flush");
    let total: i64 = client.query_one("SELECT count(*) FROM b", &[]).await.expect("count").get(0);
    assert_eq!(total, 8000, "the failed COPYs wrote nothing");
    let view = common::rows_text(&client, "SELECT k, n, s::BIGINT FROM bv ORDER BY k").await;
    let batch = common::rows_text(&client, "SELECT k, count(*), sum(id)::BIGINT FROM b GROUP BY k ORDER BY k").await;
    assert_eq!(view.len(), 7);
    assert_eq!(view, batch);
    let nkv: Vec<(i32, i64)> =
        client.query("SELECT k, n FROM nkv ORDER BY k", &[]).await.expect("nkv").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(nkv, (0..5).map(|k| (k, 600)).collect::<Vec<_>>());
}

#[tokio::test]
async fn parameters_and_type_oids() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE p (id BIGINT PRIMARY KEY, name VARCHAR(10), score DOUBLE PRECISION, born DATE, at TIMESTAMPTZ, doc JSONB, blob BYTEA, n NUMERIC(6,2))",
        )
        .await
        .expect("create");
    let insert = client.prepare("INSERT INTO p (id, name, score) VALUES ($1, $2, $3)").await.expect("prepare");
    assert_eq!(insert.params(), &[Type::INT8, Type::TEXT, Type::FLOAT8]);
    for i in 0..5i64 {
        let n = client.execute(&insert, &[&i, &format!("n{i}"), &(i as f64 * 1.5)]).await.expect("insert");
        assert_eq!(n, 1);
    }
    let select = client.prepare("SELECT id, name, score, born, at, doc, blob, n FROM p WHERE id = $1").await.expect("prepare");
    assert_eq!(select.params(), &[Type::INT8]);
    let types: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![Type::INT8, Type::VARCHAR, Type::FLOAT8, Type::DATE, Type::TIMESTAMPTZ, Type::JSON, Type::BYTEA, Type::NUMERIC]
    );
    let row = client.query_one(&select, &[&3i64]).await.expect("select");
    assert_eq!(row.get::<_, String>(1), "n3");
    assert_eq!(row.get::<_, f64>(2), 4.5);

    let update = client.prepare("UPDATE p SET score = score + $1 WHERE id >= $2").await.expect("prepare update");
    assert_eq!(client.execute(&update, &[&1.0f64, &3i64]).await.expect("update"), 2);
    let delete = client.prepare("DELETE FROM p WHERE name = $1").await.expect("prepare delete");
    assert_eq!(client.execute(&delete, &[&"n0"]).await.expect("delete"), 1);
    let sum: f64 = client.query_one("SELECT sum(score) FROM p", &[]).await.expect("sum").get(0);
    assert_eq!(sum, 1.5 + 3.0 + 5.5 + 7.0);
}

#[tokio::test]
async fn explain_shows_primary_key_range_scan() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client.batch_execute("CREATE TABLE x (id INT PRIMARY KEY, v TEXT)").await.expect("create");
    let rows = client.simple_query("EXPLAIN SELECT v FROM x WHERE id = 3").await.expect("explain");
    let text: String = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("EddyScan: table=x, key_ranges=1"), "{text}");
}

#[tokio::test]
async fn unknown_database_is_3d000() {
    let server = common::TestServer::start();
    let conn = format!("host=127.0.0.1 port={} user=eddy dbname=postgres", server.port);
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err:?}");
}

#[tokio::test]
async fn cancel_and_statement_timeout() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client.batch_execute("CREATE TABLE big (n BIGINT)").await.expect("create");
    client
        .batch_execute("INSERT INTO big SELECT value FROM generate_series(1, 40000) AS g(value)")
        .await
        .expect("fill");
    // A join of 8e8 rows: seconds of work (the answer is not awaited).
    let slow = "SELECT count(*) FROM big a JOIN big b ON a.n % 2 = b.n % 2";

    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client.simple_query(slow).await.expect_err("canceled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    canceller.await.expect("join").expect("cancel sent");

    client.batch_execute("SET statement_timeout = '300ms'").await.expect("set");
    let err = client.simple_query(slow).await.expect_err("timed out");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    client.batch_execute("SET statement_timeout = 0").await.expect("reset");
    let one: i64 = client.query_one("SELECT 1", &[]).await.expect("still usable").get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn second_process_on_same_data_dir_is_refused() {
    let server = common::TestServer::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .expect("run eddy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another eddy process"), "{stderr}");
    // The first server is unaffected.
    let client = server.connect().await;
    client.batch_execute("CREATE TABLE still_fine (a INT)").await.expect("works");
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_data_survives() {
    let mut server = common::TestServer::start();
    {
        let client = server.connect().await;
        client.batch_execute("CREATE TABLE keep (a INT PRIMARY KEY); INSERT INTO keep VALUES (1), (2)").await.expect("write");
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let server = common::TestServer::start_in(&server.data_dir.clone());
    let client = server.connect().await;
    let n: i64 = client.query_one("SELECT count(*) FROM keep", &[]).await.expect("count").get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_broken_connection_does_not_affect_others() {
    use tokio::io::AsyncWriteExt;
    let server = common::TestServer::start();
    // Garbage instead of a startup packet, then a client that vanishes mid-query.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    raw.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).await.expect("write");
    drop(raw);
    let client = server.connect().await;
    let one: i64 = client.query_one("SELECT 1", &[]).await.expect("server still serves").get(0);
    assert_eq!(one, 1);
    let _ = client.simple_query("SELECT 2").await;
    let rows = client.simple_query("SELECT 3").await.expect("select").into_iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn result_columns_are_named_like_postgres() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client.batch_execute("CREATE TABLE n (id INT PRIMARY KEY, v TEXT)").await.expect("create");
    let stmt = client
        .prepare("SELECT id, count(*), 1 + 1, upper(v), v AS renamed, CAST('7' AS INT) FROM n GROUP BY id, v")
        .await
        .expect("prepare");
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["id", "count", "?column?", "upper", "renamed", "int4"]);
}

#[tokio::test]
async fn syntax_errors_carry_a_position_and_stop_a_multi_statement_query() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    let err = client.simple_query("SELECT 1;\nSELEC 2").await.expect_err("syntax error");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601");
    match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => assert_eq!(*p, 11),
        other => panic!("expected a position, got {other:?}"),
    }
    // Statements after a failing one in the same query string do not run.
    client.batch_execute("CREATE TABLE m (a INT PRIMARY KEY)").await.expect("create");
    let err = client
        .batch_execute("INSERT INTO m VALUES (1); INSERT INTO m VALUES (1); INSERT INTO m VALUES (2)")
        .await
        .expect_err("duplicate key");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    let rows = client.query("SELECT a FROM m ORDER BY a", &[]).await.expect("select");
    let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_not_lost() {
    let server = common::TestServer::start();
    let setup = server.connect().await;
    setup.batch_execute("CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT); INSERT INTO counter VALUES (1, 0)").await.expect("setup");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let conn = server.conn_str();
        tasks.push(tokio::spawn(async move {
            let client = common::connect(&conn).await;
            let mut retries = 0;
            for _ in 0..25 {
                loop {
                    match client.execute("UPDATE counter SET n = n + 1 WHERE id = 1", &[]).await {
                        Ok(1) => break,
                        Err(e) if e.code().map(|c| c.code()) == Some("40001") => retries += 1,
                        other => panic!("unexpected update result: {other:?}"),
                    }
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.expect("task");
    }
    let n: i64 = setup.query_one("SELECT n FROM counter WHERE id = 1", &[]).await.expect("read").get(0);
    assert_eq!(n, 100, "every increment counted ({retries} retries)");
}

#[tokio::test]
async fn prepared_statements_see_tables_recreated_after_prepare() {
    let server = common::TestServer::start();
    let client = server.connect().await;
    client.batch_execute("CREATE TABLE r (id INT PRIMARY KEY, v TEXT); INSERT INTO r VALUES (1, 'old')").await.expect("setup");
    let stmt = client.prepare("SELECT v FROM r WHERE id = $1").await.expect("prepare");
    let insert = client.prepare("INSERT INTO r VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v").await.expect("prepare insert");
    let v: String = client.query_one(&stmt, &[&1i32]).await.expect("first").get(0);
    assert_eq!(v, "old");
    client.batch_execute("DROP TABLE r; CREATE TABLE r (id INT PRIMARY KEY, v TEXT); INSERT INTO r VALUES (1, 'new')").await.expect("recreate");
    let v: String = client.query_one(&stmt, &[&1i32]).await.expect("after recreate").get(0);
    assert_eq!(v, "new");
    for (id, v) in [(2, "two"), (2, "deux"), (3, "three")] {
        assert_eq!(client.execute(&insert, &[&id, &v]).await.expect("prepared insert"), 1);
    }
    let n: i64 = client.query_one("SELECT count(*) FROM r", &[]).await.expect("count").get(0);
    assert_eq!(n, 3);
    let v: String = client.query_one(&stmt, &[&2i32]).await.expect("upserted").get(0);
    assert_eq!(v, "deux");
    client.batch_execute("DROP TABLE r").await.expect("drop");
    let err = client.query_one(&stmt, &[&1i32]).await.expect_err("table gone");
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "{err:?}");
}
