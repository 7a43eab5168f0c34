//! Real clients outside Rust: the `psql` binary (meta-commands and a SQL
//! file) and Python's psycopg 3. Both must be installed (`scripts/test.sh`
//! and `.ci/run` install them); a missing client fails the test.

mod common;

use std::process::Command;

fn psql(server: &common::TestServer, args: &[&str]) -> String {
    let out = Command::new("psql")
        .arg(server.url())
        .args(["-X", "-v", "ON_ERROR_STOP=1", "--no-psqlrc"])
        .args(args)
        .output()
        .expect("psql must be installed (apt-get install postgresql-client)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "psql {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn psql_meta_commands_and_sql_file() {
    let server = common::TestServer::start();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/quickstart.sql");
    let out = psql(&server, &["-f", file]);
    assert!(out.contains("widget"), "quickstart output:\n{out}");
    // The materialized view reflects the INSERT and DELETE after FLUSH:
    // gadget has orders 2 and 5 (1 + 3 units at 10.00).
    assert!(out.contains("gadget |      2 |     4 |   40.00"), "quickstart view output:\n{out}");

    let dm = psql(&server, &["-c", "\\d product_revenue"]);
    assert!(dm.contains("revenue") && dm.contains("units"), "\\d product_revenue:\n{dm}");

    let dt = psql(&server, &["-c", "\\dt"]);
    assert!(dt.contains("products") && dt.contains("orders"), "\\dt:\n{dt}");

    let d = psql(&server, &["-c", "\\d products"]);
    assert!(d.contains("id") && d.contains("name") && d.contains("price"), "\\d products:\n{d}");
    assert!(d.contains("not null"), "\\d products shows NOT NULL:\n{d}");

    let l = psql(&server, &["-c", "\\l"]);
    assert!(l.contains("eddy"), "\\l:\n{l}");

    let dn = psql(&server, &["-c", "\\dn"]);
    assert!(dn.contains("public"), "\\dn:\n{dn}");

    let csv = psql(&server, &["--csv", "-c", "SELECT id, name FROM products ORDER BY id"]);
    assert!(csv.starts_with("id,name\n1,widget\n"), "csv:\n{csv}");
}

#[test]
fn python_psycopg3() {
    let server = common::TestServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_psycopg.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(server.port.to_string())
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("psycopg checks passed"));
}

/// pgjdbc's jar, fetched by `scripts/test.sh` with Maven.
fn pgjdbc_jar() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    std::path::Path::new(&home).join(".m2/repository/org/postgresql/postgresql/42.7.14/postgresql-42.7.14.jar")
}

#[test]
fn java_pgjdbc() {
    let jar = pgjdbc_jar();
    assert!(
        jar.exists(),
        "{} is missing: run mvn dependency:get -Dartifact=org.postgresql:postgresql:42.7.14",
        jar.display()
    );
    let server = common::TestServer::start();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/JdbcCheck.java");
    let out = Command::new("java")
        .arg("-cp")
        .arg(&jar)
        .arg(source)
        .arg(server.port.to_string())
        .output()
        .expect("java must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgjdbc check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("jdbc checks passed"));
}
