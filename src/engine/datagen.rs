//! The connectors that need no outside system: `connector = 'datagen'` and
//! `connector = 'nexmark'` sources and tables ([`crate::connector::datagen`],
//! [`crate::connector::nexmark`]) and `connector =
//! 'blackhole'` sinks ([`crate::stream::ops::blackhole`]). [`super::connect`]
//! hands their CREATE, start-up and restore here.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::Statement;

use super::mv::{plan_query, stream_plan};
use super::{Engine, EngineError, EngineResult, Output};
use crate::catalog::{CatalogError, ColumnDef, MvDef, Table};
use crate::connector::datagen::{self, Generator};
use crate::connector::spec::SinkCounter;
use crate::connector::{ConnectorDef, ConnectorError, Format, SinkDef};

/// `CREATE SOURCE | TABLE ... WITH (connector = 'datagen', ...)`.
pub(super) async fn create_source(
    engine: &Engine,
    table: bool,
    if_not_exists: bool,
    name: String,
    columns: Vec<ColumnDef>,
    primary_key: Vec<usize>,
    mut connector: ConnectorDef,
    extras: super::connect::TableExtras,
) -> EngineResult<Output> {
    let tag = if table { "CREATE TABLE" } else { "CREATE SOURCE" };
    let kind = datagen::connector_name(&connector.options);
    if !connector.includes.is_empty() {
        return Err(EngineError::user("0A000", format!("INCLUDE adds Kafka metadata; a {kind} source has none")));
    }
    if connector.format != Format::Plain {
        return Err(EngineError::user("0A000", format!("a {kind} source is FORMAT PLAIN (or has no FORMAT clause)")));
    }
    // The start of event time is fixed now, so the rows never change.
    datagen::fix_options(&mut connector.options, &columns, chrono::Utc::now());
    let schema = Arc::new(Schema::new(columns.iter().map(|c| c.sql_type.field(&c.name, c.nullable)).collect::<Vec<_>>()));
    Generator::new(&columns, schema, &connector.options)?;
    let _ddl = engine.ddl_lock.lock().await;
    if engine.catalog.exists(&name) {
        if if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    let created = engine
        .catalog
        .create_table_full(
            name.clone(),
            columns,
            primary_key,
            if_not_exists,
            Some(connector),
            !table,
            extras.watermark,
            extras.append_only,
        )
        .await?;
    if created && let Some(t) = engine.catalog.get(&name) {
        start_ingest(engine, t)?;
    }
    Ok(Output::Command { tag, rows: None })
}

/// Starts generating the rows of a datagen source or table.
pub fn start_ingest(engine: &Engine, table: Arc<Table>) -> EngineResult<()> {
    let generator = Generator::for_table(&table)?;
    let kind = table.def.connector.as_ref().map_or(datagen::CONNECTOR, |c| datagen::connector_name(&c.options));
    let stats = engine.connectors.metrics.source(table.name(), kind);
    let id = table.id();
    let handle = datagen::ingest::spawn(datagen::ingest::Ingest {
        table,
        generator,
        db: engine.store.db().clone(),
        writer: engine.store.writer().clone(),
        stats,
        runtime: tokio::runtime::Handle::current(),
        check: Arc::new(|t, b| super::dml::check_batch(t, b).map_err(|e| e.to_string())),
        row_key: Arc::new(super::dml::row_key),
    });
    engine.connectors.add_ingest(id, handle);
    Ok(())
}

/// `CREATE SINK ... WITH (connector = 'blackhole')`: any query, updates and
/// deletes included; its output is counted and dropped.
pub async fn create_blackhole_sink(
    engine: &Engine,
    if_not_exists: bool,
    name: String,
    query: &str,
    sink: SinkDef,
) -> EngineResult<Output> {
    let tag = "CREATE SINK";
    check_blackhole_options(&sink)?;
    let _ddl = engine.ddl_lock.lock().await;
    if engine.catalog.exists(&name) {
        if if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    if let Some(from) = &sink.from
        && engine.catalog.get_mv(from).is_none()
        && engine.catalog.get(from).is_none()
    {
        return Err(EngineError::UndefinedTable(from.clone()));
    }
    let Some(Statement::Query(q)) = engine.parse_plain(query)?.into_iter().next() else {
        return Err(EngineError::user("42601", "CREATE SINK ... AS needs a SELECT"));
    };
    let planned = plan_query(engine, &q, &[]).await?;
    let sp = stream_plan(engine, &planned, sink.eowc)?;
    let def = super::connect::sink_def(engine, name, query, &planned, sink);
    let def = attach_blackhole(engine, def, sp, true).await?;
    engine.catalog.insert_sink(Arc::new(def));
    Ok(Output::Command { tag, rows: None })
}

/// Rebuilds a blackhole sink's graph at start-up.
pub async fn restore_blackhole_sink(engine: &Engine, def: MvDef) -> EngineResult<()> {
    let Some(Statement::Query(q)) = engine.parse_plain(&def.sql)?.into_iter().next() else {
        return Err(EngineError::user("XX001", format!("stored definition of sink {} is not a query", def.name)));
    };
    let planned = plan_query(engine, &q, &[]).await?;
    let sp = stream_plan(engine, &planned, def.eowc)?;
    let def = attach_blackhole(engine, def, sp, false).await?;
    engine.catalog.insert_sink(Arc::new(def));
    Ok(())
}

/// Builds the graph with the sink's counters in place.
async fn attach_blackhole(engine: &Engine, mut def: MvDef, sp: crate::plan::StreamPlan, create: bool) -> EngineResult<MvDef> {
    let stats = engine.connectors.metrics.sink(&def.name, "blackhole");
    if let Some(sink) = def.sink.as_mut() {
        sink.counter = Some(SinkCounter(stats));
    }
    let name = def.name.clone();
    match engine.stream.attach(def, sp, create).await {
        Ok(def) => Ok(def),
        Err(e) => {
            engine.connectors.metrics.remove(&name);
            Err(e.into())
        }
    }
}

fn check_blackhole_options(sink: &SinkDef) -> Result<(), ConnectorError> {
    // RisingWave's sink options that mean nothing here are accepted.
    const ALLOWED: &[&str] = &["connector", "type", "force_append_only"];
    match sink.options.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        Some(k) => Err(ConnectorError::Option(format!(
            "unknown option {k}; a blackhole sink takes {}",
            ALLOWED.join(", ")
        ))),
        None => Ok(()),
    }
}
