//! Postgres compatibility for clients' metadata queries: the `pg_catalog`
//! schema (from `datafusion-pg-catalog`, built from DataFusion's catalog
//! list, so every eddy table shows up in `pg_class` and `pg_attribute`),
//! DataFusion's `information_schema`, and the functions clients call on
//! connect (`version()`, `current_database()`, `current_schema()`, ...).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;

use super::{DATABASE, EngineResult};
use crate::catalog::Catalog;

/// The text of `SELECT version()`: Postgres-shaped, so tools that parse it
/// (pgjdbc, Metabase) read a version they support.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {} (eddy {}) on {}-linux, a streaming SQL database",
        super::session::SERVER_VERSION,
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

pub fn install(ctx: &SessionContext, _catalog: Arc<Catalog>) -> EngineResult<()> {
    datafusion_pg_catalog::setup_pg_catalog(ctx, DATABASE, EmptyContextProvider).map_err(|e| *e)?;
    let version = version_string();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            let array: ArrayRef = Arc::new(StringArray::from(vec![version.clone()]));
            Ok(ColumnarValue::Array(array))
        }),
    ));
    Ok(())
}
