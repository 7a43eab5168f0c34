//! Test support: start a real `eddy` server process on a free port with
//! its own data directory, connect to it, and kill it.

#![allow(dead_code)]

pub mod kafka;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A free port for a test server, below Linux's ephemeral range
/// (32768-60999) and never handed out before in this test process. From
/// the ephemeral range, a port could be taken again by any outgoing
/// connection (the Kafka clients of other tests), and `wait_ready`'s own
/// connect could even meet itself (TCP self-connect) and report a server
/// that is not there.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl TestServer {
    /// Starts a server on a new, empty data directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on a new, empty data directory with extra
    /// environment variables (settings such as `EDDY_STATE_CACHE_MB`).
    pub fn start_with_env(envs: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in_with_env(&dir, envs);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir` (existing data is recovered).
    pub fn start_in(dir: &Path) -> Self {
        Self::start_in_with_env(dir, &[])
    }

    pub fn start_in_with_env(dir: &Path, envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .envs(envs.iter().copied())
            .env("EDDY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn eddy");
        let mut server = Self { child: Some(child), port, data_dir: dir.to_path_buf(), _tmp: None };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("eddy exited during start-up: {status}");
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("eddy did not start listening on port {}", self.port);
    }

    pub fn conn_str(&self) -> String {
        format!("host=127.0.0.1 port={} user=eddy dbname=eddy", self.port)
    }

    pub fn url(&self) -> String {
        format!("postgresql://eddy@127.0.0.1:{}/eddy", self.port)
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        child.wait().expect("wait for eddy")
    }
}

/// Connects with a connection string and drives the connection on a task.
///
/// A refused or reset first connection is tried again a few times: CI
/// once saw "Connection reset by peer" right after the server's port
/// answered (cause not found); a server that is really down still fails.
pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let mut attempt = 0;
    let (client, conn) = loop {
        match tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(e) if attempt < 5 && e.as_db_error().is_none() => {
                attempt += 1;
                eprintln!("connect to eddy failed ({e}); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect to eddy: {e}"),
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A query's rows as sorted text lines (`a|b|NULL`), for comparing result
/// multisets.
pub async fn rows_text(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect::<Vec<_>>().join("|"),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A small deterministic random generator (xorshift64*), for randomized
/// tests that must be reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Runs eddy on `dir` until it exits by itself or `timeout` passes (then
/// SIGKILL); returns whether it exited by itself (a failpoint fired).
pub fn run_until_exit(dir: &Path, envs: &[(&str, &str)], timeout: Duration) -> bool {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .envs(envs.iter().copied())
        .env("EDDY_LOG", "error")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn eddy");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Polls `sql` until its sorted rows equal `expected` (30 s), for results
/// that arrive asynchronously (Kafka ingest); panics with the last rows.
pub async fn wait_rows(client: &tokio_postgres::Client, sql: &str, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rows_text(client, sql).await;
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{sql}: expected {want:?}, got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a statement; panics with the server's message if it fails.
pub async fn exec(c: &tokio_postgres::Client, sql: &str) {
    if let Err(e) = c.simple_query(sql).await {
        panic!("{sql}: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()));
    }
}

/// The SQLSTATE of a failing statement.
pub async fn error_code(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("{e}")),
    }
}
