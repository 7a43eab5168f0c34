//! Runs every `tests/slt/*.slt` file against a real eddy server over the
//! Postgres protocol, twice: once with the simple query protocol and once
//! with the extended protocol (Parse/Bind/Execute, binary results).
//! `EDDY_SLT=name` runs only files whose name contains `name`.

mod common;

use std::path::PathBuf;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

#[derive(Debug)]
struct DbError(tokio_postgres::Error);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for DbError {}

struct Eddy {
    client: Client,
    extended: bool,
}

#[async_trait]
impl sqllogictest::AsyncDB for Eddy {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        if self.extended { self.run_extended(sql).await } else { self.run_simple(sql).await }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        if self.extended { "eddy-extended" } else { "eddy-simple" }
    }

    fn error_sql_state(err: &DbError) -> Option<String> {
        err.0.code().map(|c| c.code().to_string())
    }
}

fn cell(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(s) => s.into(),
    }
}

impl Eddy {
    async fn run_simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let messages = self.client.simple_query(sql).await.map_err(DbError)?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut affected = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => columns = Some(cols.len()),
                SimpleQueryMessage::Row(r) => {
                    columns = Some(r.len());
                    rows.push((0..r.len()).map(|i| cell(r.get(i))).collect());
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        match columns {
            Some(n) => Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; n], rows }),
            None => Ok(DBOutput::StatementComplete(affected)),
        }
    }

    async fn run_extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let stmt = self.client.prepare(sql).await.map_err(DbError)?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await.map_err(DbError)?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let result = self.client.query(&stmt, &[]).await.map_err(DbError)?;
        let rows = result
            .iter()
            .map(|row| (0..row.len()).map(|i| cell(text_of(row, i).as_deref())).collect())
            .collect();
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; stmt.columns().len()], rows })
    }
}

/// A binary result value rendered as Postgres' text output would show it.
fn text_of(row: &tokio_postgres::Row, i: usize) -> Option<String> {
    let ty = row.columns()[i].type_().clone();
    match ty {
        Type::BOOL => row.get::<_, Option<bool>>(i).map(|b| if b { "t".into() } else { "f".into() }),
        Type::INT2 => row.get::<_, Option<i16>>(i).map(|v| v.to_string()),
        Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| v.to_string()),
        Type::INT8 => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
        Type::FLOAT4 => row.get::<_, Option<f32>>(i).map(|v| float_text(f64::from(v))),
        Type::FLOAT8 => row.get::<_, Option<f64>>(i).map(float_text),
        Type::NUMERIC => row.get::<_, Option<rust_decimal::Decimal>>(i).map(|v| v.to_string()),
        Type::DATE => row.get::<_, Option<chrono::NaiveDate>>(i).map(|v| v.to_string()),
        Type::TIME => row.get::<_, Option<chrono::NaiveTime>>(i).map(|v| trim_frac(v.format("%H:%M:%S%.6f").to_string())),
        Type::TIMESTAMP => row
            .get::<_, Option<chrono::NaiveDateTime>>(i)
            .map(|v| trim_frac(v.format("%Y-%m-%d %H:%M:%S%.6f").to_string())),
        Type::TIMESTAMPTZ => row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
            .map(|v| trim_frac(v.format("%Y-%m-%d %H:%M:%S%.6f").to_string()) + "+00"),
        Type::BYTEA => row.get::<_, Option<Vec<u8>>>(i).map(|v| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\x{hex}")
        }),
        Type::JSON | Type::JSONB => row.get::<_, Option<serde_json::Value>>(i).map(|v| v.to_string()),
        Type::INTERVAL => row.get::<_, Option<RawInterval>>(i).map(|v| v.0),
        _ => row.get::<_, Option<String>>(i),
    }
}

/// Drops a zero fractional part as Postgres does (`05.250000` → `05.25`).
fn trim_frac(s: String) -> String {
    match s.rfind('.') {
        Some(dot) => {
            let t = s.trim_end_matches('0');
            if t.len() == dot + 1 { s[..dot].to_string() } else { t.to_string() }
        }
        None => s,
    }
}

fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        v.to_string()
    }
}

/// An interval decoded from its binary form and printed as Postgres does.
struct RawInterval(String);

impl<'a> tokio_postgres::types::FromSql<'a> for RawInterval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() != 16 {
            return Err("bad interval".into());
        }
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?);
        let months = i32::from_be_bytes(raw[12..16].try_into()?);
        let mut parts = Vec::new();
        let (years, months) = (months / 12, months % 12);
        let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n.abs() == 1 { "" } else { "s" });
        if years != 0 {
            parts.push(plural(years.into(), "year"));
        }
        if months != 0 {
            parts.push(plural(months.into(), "mon"));
        }
        if days != 0 {
            parts.push(plural(days.into(), "day"));
        }
        if micros != 0 || parts.is_empty() {
            let sign = if micros < 0 { "-" } else { "" };
            let m = micros.unsigned_abs();
            let (h, rem) = (m / 3_600_000_000, m % 3_600_000_000);
            let (min, rem) = (rem / 60_000_000, rem % 60_000_000);
            let (s, us) = (rem / 1_000_000, rem % 1_000_000);
            let frac = if us == 0 { String::new() } else { format!(".{us:06}").trim_end_matches('0').to_string() };
            parts.push(format!("{sign}{h:02}:{min:02}:{s:02}{frac}"));
        }
        Ok(RawInterval(parts.join(" ")))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let filter = std::env::var("EDDY_SLT").unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| p.to_string_lossy().contains(&filter))
        .collect();
    files.sort();
    files
}

async fn run_file(path: &PathBuf, extended: bool) -> Result<(), String> {
    let server = common::TestServer::start();
    let conn = server.conn_str();
    let mut runner = sqllogictest::Runner::new(move || {
        let conn = conn.clone();
        async move {
            let (client, connection) =
                tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.map_err(DbError)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Eddy { client, extended })
        }
    });
    runner.add_label(if extended { "extended" } else { "simple" });
    runner.with_column_validator(|_, _| true);
    runner.run_file_async(path).await.map_err(|e| e.display(true).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found");
    let mut failures = Vec::new();
    let mut passed = 0;
    for file in &files {
        for extended in [false, true] {
            let mode = if extended { "extended" } else { "simple" };
            match run_file(file, extended).await {
                Ok(()) => {
                    passed += 1;
                    println!("ok   {} ({mode})", file.display());
                }
                Err(e) => {
                    println!("FAIL {} ({mode})\n{e}", file.display());
                    failures.push(format!("{} ({mode})", file.display()));
                }
            }
        }
    }
    println!("slt: {passed} passed, {} failed", failures.len());
    assert!(failures.is_empty(), "failed slt files: {failures:#?}");
}
