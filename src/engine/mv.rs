//! Views and materialized views: CREATE, DROP (with CASCADE), SHOW
//! MATERIALIZED VIEWS, EXPLAIN CREATE MATERIALIZED VIEW, FLUSH, and
//! re-planning every view at start-up.
//!
//! A materialized view's query is planned by DataFusion, optimized, and
//! turned into a stream plan ([`crate::plan`]); the stream runtime fills
//! and maintains it. A plain view keeps its logical plan, which DataFusion
//! inlines wherever the view is read.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::sqlparser::ast::{CreateView, ObjectName, ObjectType, Query, Statement};

use super::{Engine, EngineError, EngineResult, Output, names, normalize_name};
use crate::catalog::{CatalogError, MatView, MvDef, PendingDef, View};
use crate::plan::{self, StreamPlan};

/// A view's query, planned.
pub(crate) struct Planned {
    /// The unoptimized plan with the view's column names.
    pub plan: LogicalPlan,
    /// The view's columns (Postgres names or the given column list).
    pub schema: SchemaRef,
    pub depends_on: Vec<String>,
}

pub(crate) async fn plan_query(engine: &Engine, query: &Query, columns: &[String]) -> EngineResult<Planned> {
    let stmt = Statement::Query(Box::new(query.clone()));
    let plan = engine.plan(stmt.clone()).await?;
    let depends_on = plan::referenced_relations(&plan);
    let named = names::postgres_names(&stmt, Arc::new(plan.schema().as_arrow().clone()));
    let names: Vec<String> = if columns.is_empty() {
        named.fields().iter().map(|f| f.name().clone()).collect()
    } else if columns.len() > named.fields().len() {
        return Err(EngineError::user("42601", "CREATE VIEW specifies more column names than columns"));
    } else {
        columns
            .iter()
            .cloned()
            .chain(named.fields().iter().skip(columns.len()).map(|f| f.name().clone()))
            .collect()
    };
    let schema = Arc::new(Schema::new(
        named
            .fields()
            .iter()
            .zip(&names)
            .map(|(f, n)| f.as_ref().clone().with_name(n))
            .collect::<Vec<Field>>(),
    ));
    Ok(Planned { plan, schema, depends_on })
}

/// The stream plan of a materialized view's query.
pub(crate) fn stream_plan(engine: &Engine, planned: &Planned, eowc: bool) -> EngineResult<StreamPlan> {
    plan::check_deterministic(&planned.plan)?;
    let optimized = engine.ctx.state().optimize(&planned.plan)?;
    Ok(plan::build(&engine.catalog, &optimized, &planned.schema, eowc)?)
}

/// The view option `emit_on_window_close`, which `EMIT ON WINDOW CLOSE`
/// becomes when parsed.
const EOWC_OPTION: &str = "emit_on_window_close";

/// Marks a CREATE MATERIALIZED VIEW as EMIT ON WINDOW CLOSE.
pub(crate) fn set_emit_on_window_close(cv: &mut CreateView) {
    use datafusion::sql::sqlparser::ast::{CreateTableOptions, Ident, SqlOption, Value};
    let option = SqlOption::KeyValue { key: Ident::new(EOWC_OPTION), value: datafusion::sql::sqlparser::ast::Expr::Value(Value::Boolean(true).into()) };
    match &mut cv.options {
        CreateTableOptions::With(list) => list.push(option),
        other => *other = CreateTableOptions::With(vec![option]),
    }
}

/// Whether a CREATE MATERIALIZED VIEW emits on window close; other view
/// options are refused.
fn emit_on_window_close(cv: &CreateView) -> EngineResult<bool> {
    use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption};
    let list = match &cv.options {
        CreateTableOptions::None => return Ok(false),
        CreateTableOptions::With(list) => list,
        other => return Err(EngineError::Unsupported(format!("view options {other}"))),
    };
    let mut eowc = false;
    for o in list {
        match o {
            SqlOption::KeyValue { key, value } if key.value.eq_ignore_ascii_case(EOWC_OPTION) => {
                eowc = value.to_string().eq_ignore_ascii_case("true");
            }
            other => return Err(EngineError::Unsupported(format!("the view option {other}"))),
        }
    }
    Ok(eowc)
}

/// A view's plan with its column names applied.
fn renamed_plan(planned: &Planned) -> EngineResult<LogicalPlan> {
    let exprs: Vec<Expr> = planned
        .plan
        .schema()
        .columns()
        .into_iter()
        .zip(planned.schema.fields())
        .map(|(c, f)| Expr::Column(c).alias(f.name()))
        .collect();
    Ok(LogicalPlanBuilder::from(planned.plan.clone()).project(exprs)?.build()?)
}

fn column_names(cv: &CreateView) -> Vec<String> {
    cv.columns.iter().map(|c| c.name.value.clone()).collect()
}

pub async fn create(engine: &Engine, cv: CreateView) -> EngineResult<Output> {
    let tag = if cv.materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE VIEW" };
    if cv.or_replace || cv.or_alter {
        return Err(EngineError::Unsupported("CREATE OR REPLACE VIEW".into()));
    }
    let name = normalize_name(&cv.name)?;
    let _ddl = engine.ddl_lock.lock().await;
    if engine.catalog.exists(&name) {
        if cv.if_not_exists {
            return Ok(Output::Command { tag, rows: None });
        }
        return Err(CatalogError::AlreadyExists(name).into());
    }
    let eowc = emit_on_window_close(&cv)?;
    if eowc && !cv.materialized {
        return Err(EngineError::Unsupported("EMIT ON WINDOW CLOSE on a view that is not materialized".into()));
    }
    let planned = plan_query(engine, &cv.query, &column_names(&cv)).await?;
    let def = MvDef {
        id: engine.catalog.allocate_id(),
        name,
        sql: cv.query.to_string(),
        depends_on: planned.depends_on.clone(),
        created_seq: 0,
        columns: column_names(&cv),
        sink: None,
        eowc,
        row_key: None,
    };
    if !cv.materialized {
        let plan = renamed_plan(&planned)?;
        engine.catalog.create_view(View { def, plan }).await?;
        return Ok(Output::Command { tag, rows: None });
    }
    let sp = stream_plan(engine, &planned, eowc)?;
    let schema = sp.schema.clone();
    let append_only = plan::append_only(&sp.root);
    let watermarks = sp.root.watermarks.clone();
    let def = engine.stream.attach(def, sp, true).await?;
    engine.catalog.insert_mv(Arc::new(MatView { def, schema, append_only, watermarks }));
    Ok(Output::Command { tag, rows: None })
}

/// Plans every view and materialized view loaded from disk, oldest first,
/// and rebuilds the materialized views' graphs over their state.
pub async fn restore(engine: &Engine) -> EngineResult<()> {
    for pending in engine.catalog.take_pending() {
        let (def, materialized) = match pending {
            PendingDef::Materialized(d) => (d, true),
            PendingDef::View(d) => (d, false),
            PendingDef::Sink(d) => {
                let name = d.name.clone();
                if let Err(e) = super::connect::restore_sink(engine, d).await {
                    tracing::error!("could not restore sink {name}: {e}");
                }
                continue;
            }
        };
        let name = def.name.clone();
        if let Err(e) = restore_one(engine, def, materialized).await {
            tracing::error!("could not restore view {name}: {e}");
        }
    }
    Ok(())
}

async fn restore_one(engine: &Engine, def: MvDef, materialized: bool) -> EngineResult<()> {
    let stmts = engine.parse(&def.sql)?;
    let Some(Statement::Query(query)) = stmts.into_iter().next() else {
        return Err(EngineError::user("XX001", format!("stored definition of {} is not a query", def.name)));
    };
    let planned = plan_query(engine, &query, &def.columns).await?;
    if !materialized {
        let plan = renamed_plan(&planned)?;
        engine.catalog.insert_view(Arc::new(View { def, plan }));
        return Ok(());
    }
    let sp = stream_plan(engine, &planned, def.eowc)?;
    let schema = sp.schema.clone();
    let append_only = plan::append_only(&sp.root);
    let watermarks = sp.root.watermarks.clone();
    let def = engine.stream.attach(def, sp, false).await?;
    engine.catalog.insert_mv(Arc::new(MatView { def, schema, append_only, watermarks }));
    Ok(())
}

/// EXPLAIN CREATE MATERIALIZED VIEW: the stream plan, one operator a line.
pub async fn explain(engine: &Engine, cv: &CreateView) -> EngineResult<Output> {
    let name = normalize_name(&cv.name)?;
    let planned = plan_query(engine, &cv.query, &column_names(cv)).await?;
    let sp = stream_plan(engine, &planned, emit_on_window_close(cv)?)?;
    text_rows("QUERY PLAN", sp.explain(&name))
}

/// SHOW MATERIALIZED VIEWS.
pub fn show(engine: &Engine) -> EngineResult<Output> {
    text_rows("Name", engine.catalog.list_mvs().iter().map(|m| m.def.name.clone()).collect())
}

/// A one-text-column result schema.
pub fn text_schema(column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]))
}

fn text_rows(column: &str, lines: Vec<String>) -> EngineResult<Output> {
    let schema = text_schema(column);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])
        .map_err(|e| EngineError::DataFusion(e.into()))?;
    let stream = datafusion::physical_plan::memory::MemoryStream::try_new(vec![batch], schema.clone(), None)?;
    Ok(Output::Rows { schema, stream: Box::pin(stream) })
}

/// What a DROP statement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    Table,
    View,
    MaterializedView,
    Source,
    Sink,
}

/// DROP TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] names [CASCADE].
pub async fn drop(
    engine: &Engine,
    object_type: ObjectType,
    names: Vec<ObjectName>,
    if_exists: bool,
    cascade: bool,
) -> EngineResult<Output> {
    let kind = match object_type {
        ObjectType::Table => DropKind::Table,
        ObjectType::View => DropKind::View,
        _ => DropKind::MaterializedView,
    };
    let names = names.iter().map(normalize_name).collect::<EngineResult<Vec<_>>>()?;
    drop_named(engine, kind, names, if_exists, cascade).await
}

/// DROP of any kind, by normalized names.
pub async fn drop_named(
    engine: &Engine,
    kind: DropKind,
    names: Vec<String>,
    if_exists: bool,
    cascade: bool,
) -> EngineResult<Output> {
    let _ddl = engine.ddl_lock.lock().await;
    let (tag, kind_name) = match kind {
        DropKind::Table => ("DROP TABLE", "table"),
        DropKind::View => ("DROP VIEW", "view"),
        DropKind::MaterializedView => ("DROP MATERIALIZED VIEW", "materialized view"),
        DropKind::Source => ("DROP SOURCE", "source"),
        DropKind::Sink => ("DROP SINK", "sink"),
    };
    let mut resolved = Vec::new();
    for name in names {
        let found = match kind {
            DropKind::Table => engine.catalog.get(&name).is_some_and(|t| !t.def.source),
            DropKind::Source => engine.catalog.get(&name).is_some_and(|t| t.def.source),
            DropKind::View => engine.catalog.get_view(&name).is_some(),
            DropKind::MaterializedView => engine.catalog.get_mv(&name).is_some(),
            DropKind::Sink => engine.catalog.get_sink(&name).is_some(),
        };
        if !found {
            if engine.catalog.exists(&name) {
                return Err(CatalogError::WrongKind { name, expected: kind_name }.into());
            }
            if if_exists {
                continue;
            }
            return Err(EngineError::UndefinedTable(name));
        }
        if !cascade {
            let deps = engine.catalog.dependents(&name);
            if !deps.is_empty() {
                return Err(CatalogError::Dependents { name, dependents: deps.into_iter().map(|d| d.1).collect() }.into());
            }
        }
        resolved.push(name);
    }
    for name in resolved {
        drop_dependents(engine, &name).await?;
        drop_one(engine, &name).await?;
    }
    Ok(Output::Command { tag, rows: None })
}

/// Drops everything that reads `name`, newest first (CASCADE).
async fn drop_dependents(engine: &Engine, name: &str) -> EngineResult<()> {
    loop {
        let Some((_, dep, _)) = engine.catalog.dependents(name).pop() else { return Ok(()) };
        Box::pin(drop_dependents(engine, &dep)).await?;
        drop_one(engine, &dep).await?;
    }
}

async fn drop_one(engine: &Engine, name: &str) -> EngineResult<()> {
    if let Some(table) = engine.catalog.get(name) {
        engine.connectors.stop_ingest(table.id(), name);
        engine.store.writer().held().remove_source(table.id());
        engine.catalog.drop_table(name, true).await?;
    } else if let Some(sink) = engine.catalog.get_sink(name) {
        engine.connectors.stop_sink(sink.id, name);
        engine.catalog.remove_sink(name);
        if let Err(e) = engine.stream.detach(sink.id).await {
            engine.catalog.insert_sink(sink);
            return Err(e.into());
        }
    } else if engine.catalog.get_view(name).is_some() {
        engine.catalog.drop_view(name).await?;
    } else if engine.catalog.get_mv(name).is_some() {
        let mv = engine.catalog.remove_mv(name)?;
        if let Err(e) = engine.stream.detach(mv.def.id).await {
            engine.catalog.insert_mv(mv);
            return Err(e.into());
        }
    }
    Ok(())
}

/// FLUSH: waits until every change committed so far is in every view.
pub async fn flush(engine: &Engine) -> EngineResult<Output> {
    engine.stream.flush().await?;
    Ok(Output::Command { tag: "FLUSH", rows: None })
}
