//! Streaming DDL: `CREATE SOURCE`, `CREATE TABLE ... WITH (connector)`,
//! `CREATE SINK`, `SHOW SOURCES | SINKS`, `DROP SOURCE | SINK`, and
//! starting every connector at start-up.
//!
//! sqlparser does not know these statements: [`crate::connector::sql`]
//! recognises them, and [`carrier`] wraps the text in a statement the rest
//! of the engine passes along unchanged (`EXECUTE eddy_stream_statement
//! ('<text>')`) until [`execute`] parses it for real.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName, Statement, Value};

use super::mv::{DropKind, plan_query, stream_plan};
use super::{Engine, EngineError, EngineResult, Output};
use crate::catalog::{CatalogError, ColumnDef, MvDef, SqlType, Table, WatermarkDef};
use crate::connector::kafka::{self, ingest, sink};
use crate::connector::spec::KafkaOptions;
use crate::connector::sql::{StreamStatement, parse};
use crate::connector::{ConnectorDef, ConnectorError, Format, IncludeKind, SinkDef};

/// The name the carrier statement uses.
pub const CARRIER: &str = "eddy_stream_statement";

/// Wraps a streaming statement's text in a sqlparser statement.
pub fn carrier(sql: &str) -> Statement {
    Statement::Execute {
        name: Some(ObjectName::from(vec![Ident::new(CARRIER)])),
        parameters: vec![Expr::Value(Value::SingleQuotedString(sql.to_string()).into())],
        has_parentheses: true,
        immediate: false,
        into: Vec::new(),
        using: Vec::new(),
        output: false,
        default: false,
    }
}

/// The text inside a carrier statement.
pub fn carried(stmt: &Statement) -> Option<&str> {
    let Statement::Execute { name: Some(name), parameters, .. } = stmt else { return None };
    if name.to_string() != CARRIER {
        return None;
    }
    match parameters.first() {
        Some(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    }
}

pub async fn execute(engine: &Engine, sql: &str) -> EngineResult<Output> {
    let stmt = parse(sql).map_err(|e| EngineError::Syntax { message: e.0, position: None })?;
    match stmt {
        StreamStatement::CreateSource { table, if_not_exists, name, table_sql, connector, watermark, append_only } => {
            let extras = TableExtras { watermark, append_only };
            create_source(engine, table, if_not_exists, name, &table_sql, connector, extras).await
        }
        StreamStatement::CreateTable { if_not_exists, name, table_sql, watermark, append_only } => {
            create_plain_table(engine, if_not_exists, name, &table_sql, TableExtras { watermark, append_only }).await
        }
        StreamStatement::CreateSink { if_not_exists, name, query, sink } => {
            create_sink(engine, if_not_exists, name, &query, sink).await
        }
        StreamStatement::ShowSources => show_sources(engine),
        StreamStatement::ShowSinks => show_sinks(engine),
        StreamStatement::Drop { sink, names, if_exists, cascade } => {
            let kind = if sink { DropKind::Sink } else { DropKind::Source };
            super::mv::drop_named(engine, kind, names, if_exists, cascade).await
        }
    }
}

fn include_type(kind: &IncludeKind, varchar: bool) -> SqlType {
    match kind {
        IncludeKind::Key | IncludeKind::Header(_) if varchar => SqlType::Text,
        IncludeKind::Key | IncludeKind::Header(_) => SqlType::Bytea,
        IncludeKind::Partition => SqlType::Int,
        IncludeKind::Offset => SqlType::BigInt,
        IncludeKind::Timestamp => SqlType::TimestampTz,
    }
}

/// `WATERMARK FOR` and `APPEND ONLY` of a CREATE SOURCE or TABLE.
pub(super) struct TableExtras {
    pub watermark: Option<WatermarkDef>,
    pub append_only: bool,
}

impl TableExtras {
    /// Checks the watermark against the columns; a table with a watermark
    /// must be APPEND ONLY (late rows are dropped from views, which only
    /// works for inserts).
    pub(super) fn check(&self, columns: &[ColumnDef], source: bool) -> EngineResult<()> {
        let Some(w) = &self.watermark else { return Ok(()) };
        if !source && !self.append_only {
            return Err(EngineError::user(
                "42P16",
                "a table with a WATERMARK must be APPEND ONLY: CREATE TABLE t (...) APPEND ONLY",
            ));
        }
        let def = crate::catalog::TableDef {
            id: 0,
            name: String::new(),
            columns: columns.to_vec(),
            primary_key: Vec::new(),
            connector: None,
            source,
            watermark: Some(w.clone()),
            append_only: self.append_only,
        };
        crate::stream::watermark::compile(&def).map_err(|e| EngineError::user("42P16", e.to_string()))?;
        Ok(())
    }
}

/// `CREATE TABLE ... (..., WATERMARK FOR ...) APPEND ONLY` without a connector.
async fn create_plain_table(
    engine: &Engine,
    if_not_exists: bool,
    name: String,
    table_sql: &str,
    extras: TableExtras,
) -> EngineResult<Output> {
    let tag = "CREATE TABLE";
    let Some(Statement::CreateTable(ct)) = engine.parse_plain(table_sql)?.into_iter().next() else {
        return Err(EngineError::user("42601", "could not read the column list"));
    };
    let (columns, primary_key) = super::ddl::table_columns(&ct, &name)?;
    extras.check(&columns, false)?;
    engine
        .catalog
        .create_table_full(name, columns, primary_key, if_not_exists, None, false, extras.watermark, extras.append_only)
        .await?;
    Ok(Output::Command { tag, rows: None })
}

async fn create_source(
    engine: &Engine,
    table: bool,
    if_not_exists: bool,
    name: String,
    table_sql: &str,
    connector: ConnectorDef,
    extras: TableExtras,
) -> EngineResult<Output> {
    let tag = if table { "CREATE TABLE" } else { "CREATE SOURCE" };
    let Some(Statement::CreateTable(ct)) = engine.parse_plain(table_sql)?.into_iter().next() else {
        return Err(EngineError::user("42601", "could not read the column list"));
    };
    let (mut columns, primary_key) = super::ddl::table_columns(&ct, &name)?;
    if crate::connector::datagen::is_generated(&connector.options) {
        extras.check(&columns, !table)?;
        return super::datagen::create_source(engine, table, if_not_exists, name, columns, primary_key, connector, extras)
            .await;
    }
    for inc in &connector.includes {
        if columns.iter().any(|c| c.name == inc.column) {
            return Err(EngineError::user("42701", format!("column \"{}\" specified more than once", inc.column)));
        }
        columns.push(ColumnDef { name: inc.column.clone(), sql_type: include_type(&inc.kind, inc.varchar), nullable: true });
    }
    match connector.format {
        Format::Plain => {}
        Format::Upsert | Format::Debezium if !table => {
            return Err(EngineError::user(
                "0A000",
                "FORMAT UPSERT and FORMAT DEBEZIUM need a table with a primary key: use CREATE TABLE ... (..., PRIMARY KEY (...)) WITH (...) FORMAT ...",
            ));
        }
        Format::Upsert | Format::Debezium if primary_key.is_empty() => {
            return Err(EngineError::user(
                "42P16",
                "FORMAT UPSERT and FORMAT DEBEZIUM need a primary key: add PRIMARY KEY (...) to the table",
            ));
        }
        _ => {}
    }
    if table && connector.encode == crate::connector::Encode::Csv && connector.format != Format::Plain {
        return Err(EngineError::user("0A000", "ENCODE CSV works with FORMAT PLAIN only"));
    }
    extras.check(&columns, !table)?;
    if extras.append_only && connector.format != Format::Plain {
        return Err(EngineError::user("0A000", "an APPEND ONLY table takes FORMAT PLAIN (UPSERT and DEBEZIUM change rows)"));
    }
    let opts = KafkaOptions::for_source(&connector.options)?;
    if engine.catalog.exists(&name) {
        if if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    // The decoder accepts the schema, the broker answers, the topic exists.
    {
        let schema = Arc::new(Schema::new(
            columns.iter().map(|c| c.sql_type.field(&c.name, c.nullable)).collect::<Vec<_>>(),
        ));
        crate::connector::decode::Decoder::new(schema, primary_key.clone(), &connector)
            .map_err(ConnectorError::Option)?;
    }
    kafka::check_topic(&opts).await?;
    let _ddl = engine.ddl_lock.lock().await;
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
    if created {
        if let Some(t) = engine.catalog.get(&name) {
            if let Err(e) = ingest::record_start(engine.store.writer(), t.id(), &opts).await {
                // Not started: undo the CREATE.
                let _ = engine.catalog.drop_table(&name, true).await;
                return Err(e.into());
            }
            start_ingest(engine, t);
        }
    }
    Ok(Output::Command { tag, rows: None })
}

/// Starts reading the topic of a source or Kafka table (or generating
/// the rows of a datagen one).
pub fn start_ingest(engine: &Engine, table: Arc<Table>) {
    if crate::connector::datagen::is_generated_table(&table) {
        let name = table.name().to_string();
        if let Err(e) = super::datagen::start_ingest(engine, table) {
            tracing::error!(source = name, "datagen cannot start: {e}");
        }
        return;
    }
    let topic = table
        .def
        .connector
        .as_ref()
        .and_then(|c| c.options.get("topic").cloned())
        .unwrap_or_default();
    let stats = engine.connectors.metrics.source(table.name(), &topic);
    let id = table.id();
    // One reader per partition, up to one per core.
    let partitions = kafka::stored_offsets(
        |p| engine.store.scan_prefix(p).unwrap_or_default(),
        crate::state::keys::META_SOURCE_OFFSET_PREFIX,
        id,
    )
    .len();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers = partitions.clamp(1, cores);
    register_refetch(engine, &table);
    let handle = ingest::spawn(ingest::Ingest {
        table,
        db: engine.store.db().clone(),
        writer: engine.store.writer().clone(),
        stats,
        runtime: tokio::runtime::Handle::current(),
        check: Arc::new(check),
        row_key: Arc::new(super::dml::row_key),
    }, workers);
    engine.connectors.add_ingest(id, handle);
}

/// The table rules a Kafka message's row must pass (types, NOT NULL,
/// lengths), as ingest and the reader of [`register_refetch`] apply them.
fn check(table: &Table, batch: &RecordBatch) -> Result<RecordBatch, String> {
    super::dml::check_batch(table, batch).map_err(|e| e.to_string())
}

/// Registers how the stream engine reads a Kafka source's logged messages
/// again (their rows are held in memory only until it takes them; see
/// [`crate::state::held`]).
fn register_refetch(engine: &Engine, table: &Arc<Table>) {
    if !table.def.source || crate::connector::datagen::is_generated_table(table) {
        return;
    }
    let t = table.clone();
    let read: crate::state::held::Refetch = Arc::new(move |ranges: &[(i32, i64, i64)]| {
        let (decoder, opts, headers) = kafka::decoder_for(&t).map_err(|e| e.to_string())?;
        let mut parts = Vec::new();
        kafka::read_range(&opts, &decoder, &headers, ranges, &mut |b| {
            parts.push(b);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        let mut kept = Vec::new();
        for b in parts {
            kept.push(ingest::checked(&check, &t, b, |_, _| {}).map_err(|e| e.to_string())?.0);
        }
        datafusion::arrow::compute::concat_batches(&t.schema, &kept).map_err(|e| e.to_string())
    });
    engine.store.writer().held().set_refetch(table.id(), read);
}

/// Registers the readers of every Kafka source (at start-up, before the
/// stream engine replays the log).
pub fn register_refetch_all(engine: &Engine) {
    for t in engine.catalog.list() {
        if t.def.connector.is_some() {
            register_refetch(engine, &t);
        }
    }
}

/// Starts every connector of the catalog (at start-up, after the views).
pub fn start_all(engine: &Engine) {
    for t in engine.catalog.list() {
        if t.def.connector.is_some() {
            start_ingest(engine, t);
        }
    }
}

async fn create_sink(engine: &Engine, if_not_exists: bool, name: String, query: &str, sink: SinkDef) -> EngineResult<Output> {
    if sink.is_delta() {
        return create_delta_sink(engine, if_not_exists, name, query, sink).await;
    }
    if sink.is_blackhole() {
        return super::datagen::create_blackhole_sink(engine, if_not_exists, name, query, sink).await;
    }
    let tag = "CREATE SINK";
    let opts = KafkaOptions::for_sink(&sink.options)?;
    if sink.encode != crate::connector::Encode::Json {
        return Err(EngineError::user("0A000", "Kafka sinks write ENCODE JSON"));
    }
    let _ddl = engine.ddl_lock.lock().await;
    if engine.catalog.exists(&name) {
        if if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    if let Some(from) = &sink.from {
        if engine.catalog.get_mv(from).is_none() && engine.catalog.get(from).is_none() {
            return Err(EngineError::UndefinedTable(from.clone()));
        }
    }
    let Some(Statement::Query(q)) = engine.parse_plain(query)?.into_iter().next() else {
        return Err(EngineError::user("42601", "CREATE SINK ... AS needs a SELECT"));
    };
    let planned = plan_query(engine, &q, &[]).await?;
    let sp = stream_plan(engine, &planned, sink.eowc)?;
    for k in &opts.primary_key {
        if planned.schema.index_of(k).is_err() {
            return Err(EngineError::UndefinedColumn(k.clone()));
        }
    }
    match sink.format {
        Format::Plain => {
            if !crate::plan::append_only(&sp.root) && !opts.force_append_only {
                return Err(EngineError::user(
                    "0A000",
                    "the sink's query can update or delete rows, which FORMAT PLAIN cannot express: use FORMAT UPSERT ENCODE JSON with primary_key = '...', or force_append_only = 'true' to drop updates and deletes",
                ));
            }
        }
        Format::Upsert | Format::Debezium => {
            if opts.primary_key.is_empty() {
                return Err(EngineError::user(
                    "42601",
                    "FORMAT UPSERT and FORMAT DEBEZIUM sinks need primary_key = 'col, ...'",
                ));
            }
        }
    }
    kafka::check_topic(&opts).await?;
    let mut sink = sink;
    let mut opts = opts;
    if opts.delivery == crate::connector::spec::Delivery::ExactlyOnce {
        check_transaction_timeout(engine, &opts)?;
        let probe = opts.clone();
        let supported = tokio::task::spawn_blocking(move || sink::supports_transactions(&probe))
            .await
            .map_err(|e| EngineError::user("XX000", e.to_string()))?;
        match supported {
            // The sink's progress topic is created by its publisher (its
            // name holds the sink's id, not allocated yet).
            Ok(()) => {}
            Err(e) if opts.delivery_given => return Err(e.into()),
            Err(e) => {
                tracing::warn!("sink {name}: {e}; delivering at least once");
                opts.delivery = crate::connector::spec::Delivery::AtLeastOnce;
            }
        }
    }
    // Stored resolved, so a restart delivers the same way.
    let delivery = match opts.delivery {
        crate::connector::spec::Delivery::ExactlyOnce => "exactly_once",
        crate::connector::spec::Delivery::AtLeastOnce => "at_least_once",
    };
    sink.options.insert("sink.delivery".into(), delivery.into());
    let def = engine.stream.attach(sink_def(engine, name, query, &planned, sink), sp, true).await?;
    start_publisher(engine, &def, opts)?;
    engine.catalog.insert_sink(Arc::new(def));
    Ok(Output::Command { tag, rows: None })
}

/// A new sink's catalog entry.
pub(super) fn sink_def(engine: &Engine, name: String, query: &str, planned: &super::mv::Planned, sink: SinkDef) -> MvDef {
    MvDef {
        id: engine.catalog.allocate_id(),
        name,
        sql: query.to_string(),
        depends_on: planned.depends_on.clone(),
        created_seq: 0,
        columns: Vec::new(),
        eowc: sink.eowc,
        sink: Some(sink),
        row_key: None,
    }
}

/// `CREATE SINK ... WITH (connector = 'deltalake', location = ...)`.
async fn create_delta_sink(engine: &Engine, if_not_exists: bool, name: String, query: &str, sink: SinkDef) -> EngineResult<Output> {
    let tag = "CREATE SINK";
    let opts = crate::connector::delta::DeltaOptions::parse(&sink.options, engine.checkpoint_interval_ms)?;
    let _ddl = engine.ddl_lock.lock().await;
    if engine.catalog.exists(&name) {
        if if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    let Some(Statement::Query(q)) = engine.parse_plain(query)?.into_iter().next() else {
        return Err(EngineError::user("42601", "CREATE SINK ... AS needs a SELECT"));
    };
    let planned = plan_query(engine, &q, &[]).await?;
    let sp = stream_plan(engine, &planned, sink.eowc)?;
    let force = sink.options.get("force_append_only").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || sink.options.get("type").is_some_and(|v| v.eq_ignore_ascii_case("append-only"));
    if opts.primary_key.is_empty() && !crate::plan::append_only(&sp.root) && !force {
        return Err(EngineError::user(
            "0A000",
            "the sink's query can update or delete rows: give primary_key = '...' so eddy can MERGE them into the Delta table (or force_append_only = 'true' to drop updates and deletes)",
        ));
    }
    crate::connector::delta::prepare_table(&opts, &sp.schema).await?;
    let schema = sp.schema.clone();
    let def = engine.stream.attach(sink_def(engine, name, query, &planned, sink), sp, true).await?;
    start_committer(engine, &def, opts, schema)?;
    engine.catalog.insert_sink(Arc::new(def));
    Ok(Output::Command { tag, rows: None })
}

fn start_committer(
    engine: &Engine,
    def: &MvDef,
    opts: crate::connector::delta::DeltaOptions,
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> EngineResult<()> {
    let stats = engine.connectors.metrics.sink(&def.name, opts.location.as_str());
    let drain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = crate::connector::delta::spawn(crate::connector::delta::Committer {
        sink_id: def.id,
        name: def.name.clone(),
        app_id: format!("eddy-{}-sink-{}", install_id(engine)?, def.id),
        opts,
        query_schema: schema,
        db: engine.store.db().clone(),
        writer: engine.store.writer().clone(),
        epochs: engine.stream.committed_epoch(),
        stats,
        drain: drain.clone(),
        interval: std::time::Duration::from_millis(engine.checkpoint_interval_ms),
    });
    let stats = handle.stats();
    engine.connectors.add_sink(def.id, kafka::SinkHandle { stop: Box::new(move || handle.stop()), stats, drain: Some(drain) });
    Ok(())
}

/// A transaction must outlive a checkpoint interval plus a restart, or the
/// broker aborts it while eddy is still working on it.
fn check_transaction_timeout(engine: &Engine, opts: &KafkaOptions) -> EngineResult<()> {
    let timeout = match opts.properties.get("transaction.timeout.ms") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| EngineError::user("22023", format!("properties.transaction.timeout.ms must be milliseconds, not '{t}'")))?,
        None => sink::DEFAULT_TRANSACTION_TIMEOUT_MS,
    };
    let needed = engine.checkpoint_interval_ms + 10_000;
    if timeout < needed {
        return Err(EngineError::user(
            "22023",
            format!(
                "properties.transaction.timeout.ms = {timeout} is shorter than the checkpoint interval ({} ms) plus 10 s for a restart; set it to at least {needed}",
                engine.checkpoint_interval_ms
            ),
        ));
    }
    Ok(())
}

fn start_publisher(engine: &Engine, def: &MvDef, opts: KafkaOptions) -> EngineResult<()> {
    let stats = engine.connectors.metrics.sink(&def.name, &opts.topic);
    let handle = sink::spawn(sink::Publisher {
        sink_id: def.id,
        name: def.name.clone(),
        transactional_id: format!("eddy-{}-sink-{}", install_id(engine)?, def.id),
        opts,
        db: engine.store.db().clone(),
        writer: engine.store.writer().clone(),
        epochs: engine.stream.committed_epoch(),
        stats,
    })?;
    let stats = handle.stats.clone();
    engine.connectors.add_sink(def.id, kafka::SinkHandle { stop: Box::new(move || handle.stop()), stats, drain: None });
    Ok(())
}

/// This data directory's id (made at first use): part of every sink's
/// transactional id, so two eddy installations sharing a broker never
/// fence each other, while a copy of one data directory does.
fn install_id(engine: &Engine) -> EngineResult<String> {
    const KEY: &[u8] = b"m/install_id";
    let db = engine.store.db();
    if let Some(v) = db.get(KEY).map_err(crate::state::StateError::from)? {
        return Ok(String::from_utf8_lossy(&v).into_owned());
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    let id = format!("{:016x}", h.finish());
    db.put(KEY, id.as_bytes()).map_err(crate::state::StateError::from)?;
    Ok(id)
}

/// Rebuilds a sink's graph at start-up and starts its publisher.
pub async fn restore_sink(engine: &Engine, def: MvDef) -> EngineResult<()> {
    let Some(sink) = def.sink.clone() else { return Ok(()) };
    if sink.is_blackhole() {
        return super::datagen::restore_blackhole_sink(engine, def).await;
    }
    if sink.is_delta() {
        let opts = crate::connector::delta::DeltaOptions::parse(&sink.options, engine.checkpoint_interval_ms)?;
        let Some(Statement::Query(q)) = engine.parse_plain(&def.sql)?.into_iter().next() else {
            return Err(EngineError::user("XX001", format!("stored definition of sink {} is not a query", def.name)));
        };
        let planned = plan_query(engine, &q, &[]).await?;
        let sp = stream_plan(engine, &planned, sink.eowc)?;
        let schema = sp.schema.clone();
        let def = engine.stream.attach(def, sp, false).await?;
        start_committer(engine, &def, opts, schema)?;
        engine.catalog.insert_sink(Arc::new(def));
        return Ok(());
    }
    let opts = KafkaOptions::for_sink(&sink.options)?;
    let Some(Statement::Query(q)) = engine.parse_plain(&def.sql)?.into_iter().next() else {
        return Err(EngineError::user("XX001", format!("stored definition of sink {} is not a query", def.name)));
    };
    let planned = plan_query(engine, &q, &[]).await?;
    let sp = stream_plan(engine, &planned, sink.eowc)?;
    let def = engine.stream.attach(def, sp, false).await?;
    start_publisher(engine, &def, opts)?;
    engine.catalog.insert_sink(Arc::new(def));
    Ok(())
}

fn rows(schema: Arc<Schema>, columns: Vec<Arc<dyn datafusion::arrow::array::Array>>) -> EngineResult<Output> {
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| EngineError::DataFusion(e.into()))?;
    let stream = datafusion::physical_plan::memory::MemoryStream::try_new(vec![batch], schema.clone(), None)?;
    Ok(Output::Rows { schema, stream: Box::pin(stream) })
}

fn sources_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("Name", DataType::Utf8, false),
        Field::new("Kind", DataType::Utf8, false),
        Field::new("Connector", DataType::Utf8, false),
        Field::new("Topic", DataType::Utf8, true),
        Field::new("Format", DataType::Utf8, false),
    ]))
}

fn sinks_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("Name", DataType::Utf8, false),
        Field::new("Connector", DataType::Utf8, false),
        Field::new("Topic", DataType::Utf8, true),
        Field::new("Format", DataType::Utf8, false),
        Field::new("Records", DataType::Int64, false),
    ]))
}

/// The result columns of a streaming statement (SHOW ...), for Describe.
pub fn result_schema(sql: &str) -> Option<Arc<Schema>> {
    match parse(sql).ok()? {
        StreamStatement::ShowSources => Some(sources_schema()),
        StreamStatement::ShowSinks => Some(sinks_schema()),
        _ => None,
    }
}

fn show_sources(engine: &Engine) -> EngineResult<Output> {
    let list: Vec<Arc<Table>> = engine.catalog.list().into_iter().filter(|t| t.def.connector.is_some()).collect();
    let schema = sources_schema();
    let get = |t: &Table, k: &str| t.def.connector.as_ref().and_then(|c| c.options.get(k).cloned());
    let format = |t: &Table| {
        t.def.connector.as_ref().map(|c| format!("{:?} {:?}", c.format, c.encode).to_uppercase()).unwrap_or_default()
    };
    rows(
        schema,
        vec![
            Arc::new(StringArray::from(list.iter().map(|t| t.name().to_string()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                list.iter().map(|t| if t.def.source { "source" } else { "table" }).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(list.iter().map(|t| get(t, "connector").unwrap_or_default()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(list.iter().map(|t| get(t, "topic")).collect::<Vec<_>>())),
            Arc::new(StringArray::from(list.iter().map(|t| format(t)).collect::<Vec<_>>())),
        ],
    )
}

fn show_sinks(engine: &Engine) -> EngineResult<Output> {
    let list = engine.catalog.list_sinks();
    let schema = sinks_schema();
    let sink = |d: &MvDef, k: &str| d.sink.as_ref().and_then(|s| s.options.get(k).cloned());
    let records = |d: &MvDef| {
        let map = engine.connectors.metrics.sinks.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&d.name).map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).records as i64).unwrap_or(0)
    };
    rows(
        schema,
        vec![
            Arc::new(StringArray::from(list.iter().map(|d| d.name.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(list.iter().map(|d| sink(d, "connector").unwrap_or_default()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(list.iter().map(|d| sink(d, "topic")).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                list.iter()
                    .map(|d| d.sink.as_ref().map(|s| format!("{:?} {:?}", s.format, s.encode).to_uppercase()).unwrap_or_default())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(list.iter().map(|d| records(d)).collect::<Vec<_>>())),
        ],
    )
}
