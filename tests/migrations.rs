//! `--migrations DIR` applies each SQL file once, in name order, across
//! restarts; `--demo` starts the fraud-detection example on generated data
//! (the README's first command) and restarts cleanly.

mod common;

use common::{TestServer, rows_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_in_order() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    std::fs::create_dir_all(&migrations).expect("folder");
    std::fs::write(migrations.join("001_tables.sql"), "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\nINSERT INTO t VALUES (1, 'a');\n")
        .expect("write");
    std::fs::write(
        migrations.join("002_views.sql"),
        "-- a view over t\nCREATE MATERIALIZED VIEW n AS SELECT count(*) AS n FROM t;\n",
    )
    .expect("write");
    std::fs::write(migrations.join("README.txt"), "not SQL").expect("write");
    let env = [("EDDY_MIGRATIONS", migrations.to_str().expect("utf-8 path"))];
    {
        let server = TestServer::start_in_with_env(&dir, &env);
        let c = server.connect().await;
        c.batch_execute("FLUSH").await.expect("flush");
        assert_eq!(rows_text(&c, "SELECT n FROM n").await, ["1"]);
    }
    // Applied files are skipped after a restart; a new one runs.
    std::fs::write(migrations.join("003_more.sql"), "INSERT INTO t VALUES (2, 'b');").expect("write");
    let server = TestServer::start_in_with_env(&dir, &env);
    let c = server.connect().await;
    c.batch_execute("FLUSH").await.expect("flush");
    assert_eq!(rows_text(&c, "SELECT n FROM n").await, ["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_restarts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let env = [("EDDY_DEMO", "true"), ("EDDY_CHECKPOINT_INTERVAL_MS", "200")];
    {
        let server = TestServer::start_in_with_env(&dir, &env);
        let c = server.connect().await;
        let shown = rows_text(&c, "SHOW SOURCES").await;
        assert!(shown.iter().any(|s| s.starts_with("txns")), "{shown:?}");
        assert_eq!(rows_text(&c, "SELECT count(*) >= 0 FROM alerts").await, ["t"]);
    }
    let server = TestServer::start_in_with_env(&dir, &env);
    let c = server.connect().await;
    let mut seen = false;
    for _ in 0..40 {
        if rows_text(&c, "SELECT count(*) > 0 FROM txns").await == ["t"] {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(seen, "the demo's source generates transactions");
}
