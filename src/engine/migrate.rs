//! SQL migrations: the `*.sql` files of a folder, applied once each in
//! file-name order at start-up (`eddy serve --migrations DIR`), and the
//! built-in demo (`eddy serve --demo`: the fraud-detection example on
//! generated data, `sql/examples/fraud/`).
//!
//! A file is applied statement by statement; once all of it succeeded its
//! name and a hash of its text are stored (`m/migration/<name>`), so a
//! restart skips it. A file that fails stops the start-up with its error
//! (statements before the failing one stay applied: DDL is not
//! transactional in eddy). A file whose text changed after it was applied
//! is not applied again; eddy warns about it.

use std::collections::HashMap;
use std::path::Path;

use datafusion::common::ParamValues;

use super::{Engine, EngineError, EngineResult, SessionVars};

const MIGRATION_PREFIX: &[u8] = b"m/migration/";

/// The demo: the fraud example's datagen source and views.
const DEMO: &[(&str, &str)] = &[
    ("demo/fraud/source_datagen.sql", include_str!("../../sql/examples/fraud/source_datagen.sql")),
    ("demo/fraud/views.sql", include_str!("../../sql/examples/fraud/views.sql")),
];

fn hash(text: &str) -> Vec<u8> {
    // FNV-1a: stable across builds (unlike the std hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

fn key(name: &str) -> Vec<u8> {
    let mut k = MIGRATION_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Applies one named SQL text unless it was applied before. Returns
/// whether it ran.
pub async fn apply(engine: &Engine, name: &str, sql: &str) -> EngineResult<bool> {
    let digest = hash(sql);
    if let Some(stored) = engine.store.db().get(key(name)).map_err(crate::state::StateError::from)? {
        if stored != digest {
            tracing::warn!(migration = name, "changed since it was applied; not applied again");
        }
        return Ok(false);
    }
    let mut map = HashMap::new();
    let mut vars = SessionVars::new(&mut map);
    for stmt in engine.parse(sql)? {
        engine
            .execute(&mut vars, stmt, &ParamValues::List(Vec::new()))
            .await
            .map_err(|e| EngineError::user(e.sqlstate(), format!("migration {name}: {e}")))?;
    }
    let k = key(name);
    engine
        .store
        .writer()
        .write(true, move |txn| {
            txn.put(k, digest);
            Ok(0)
        })
        .await?;
    tracing::info!(migration = name, "applied");
    Ok(true)
}

/// Applies every `*.sql` file of `dir` not applied yet, in name order.
pub async fn apply_dir(engine: &Engine, dir: &Path) -> EngineResult<usize> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| EngineError::user("58030", format!("migrations folder {}: {e}", dir.display())))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut applied = 0;
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let sql = std::fs::read_to_string(&f)
            .map_err(|e| EngineError::user("58030", format!("migration {}: {e}", f.display())))?;
        if apply(engine, &name, &sql).await? {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Starts the demo (once per data directory).
pub async fn demo(engine: &Engine) -> EngineResult<()> {
    for (name, sql) in DEMO {
        apply(engine, name, sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_stable() {
        assert_eq!(super::hash("a"), 0xaf63_dc4c_8601_ec8cu64.to_be_bytes().to_vec());
    }
}
