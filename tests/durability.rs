//! Durability: several clients insert concurrently and record what the
//! server acknowledged; the server is SIGKILLed mid-stream and restarted on
//! the same data directory; every acknowledged row must be there. Repeated
//! several times on one data directory.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENTS: i64 = 4;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inserts_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    {
        let server = common::TestServer::start_in(&dir);
        let c = server.connect().await;
        c.batch_execute("CREATE TABLE acks (id BIGINT PRIMARY KEY, client INT, payload TEXT)").await.expect("create");
    }
    for round in 0..ROUNDS {
        let mut server = common::TestServer::start_in(&dir);
        let mut tasks = Vec::new();
        for client_no in 0..CLIENTS {
            let conn = server.conn_str();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await else { return };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let Ok(stmt) = client.prepare("INSERT INTO acks VALUES ($1, $2, $3)").await else { return };
                for i in 0.. {
                    // Unique ids across rounds and clients.
                    let id = ((round as i64) << 40) | (client_no << 32) | i;
                    let payload = format!("round {round} client {client_no} row {i}");
                    match client.execute(&stmt, &[&id, &(client_no as i32), &payload]).await {
                        Ok(1) => {
                            if let Ok(mut a) = acked.lock() {
                                a.insert(id);
                            }
                        }
                        _ => return, // the server died
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500 + 500 * round as u64)).await;
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
        let server = common::TestServer::start_in(&dir);
        let client = server.connect().await;
        let rows = client.query("SELECT id FROM acks", &[]).await.expect("read back");
        let present: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let acked_now = acked.lock().map(|a| a.clone()).unwrap_or_default();
        let missing: Vec<&i64> = acked_now.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: {} acknowledged rows lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
        assert!(!acked_now.is_empty(), "round {round}: no insert was acknowledged");
        println!("round {round}: {} acknowledged, {} present", acked_now.len(), present.len());
    }
}
