//! `engine/`: executes statements. The one narrow interface between the
//! protocol layer (`server/`) and everything below it.
//!
//! [`Engine::parse`] turns SQL text into statements, [`Engine::describe`]
//! tells the extended protocol a statement's parameter and result types,
//! and [`Engine::execute`] runs one statement and returns an [`Output`]:
//! rows to stream, a command tag, or a COPY to carry out. A test drives an
//! engine without any socket.

pub mod connect;
pub mod copy;
pub mod datagen;
pub mod ddl;
pub mod dml;
pub mod error;
pub mod migrate;
pub mod mv;
pub mod mv_provider;
pub mod names;
pub mod pg;
pub mod provider;
pub mod session;
pub mod source_provider;
pub mod system;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectType, Statement};

use crate::catalog::Catalog;
use crate::state::Store;
use crate::stream::{StreamConfig, StreamRuntime};
pub use copy::{CopyFormat, CopyIn};
pub use error::{EngineError, EngineResult};
pub use session::SessionVars;

/// The database name clients connect to.
pub const DATABASE: &str = "eddy";

/// What executing one statement produced.
pub enum Output {
    /// A result set.
    Rows { schema: SchemaRef, stream: SendableRecordBatchStream },
    /// A command tag such as `CREATE TABLE` or `INSERT 0 3` (rows appended
    /// by the server when present).
    Command { tag: &'static str, rows: Option<u64> },
    /// The client must now send COPY data; then call [`Engine::copy_in`].
    CopyIn(CopyIn),
    /// Rows to send as COPY data.
    CopyOut { stream: SendableRecordBatchStream, format: CopyFormat },
    /// A session variable changed; report it with ParameterStatus if set.
    Set { report: Option<(String, String)> },
    /// BEGIN, COMMIT, ROLLBACK.
    Transaction(TransactionOp),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOp {
    Begin,
    Commit,
    Rollback,
}

/// What the extended protocol needs to know at Parse/Describe.
pub struct Description {
    pub params: Vec<Option<DataType>>,
    pub result: Option<SchemaRef>,
    /// For a query or an INSERT: its plan (user bound), reusable by every
    /// Execute while the catalog is unchanged.
    pub plan: Option<PreparedPlan>,
}

/// A query or INSERT planned at Parse time (extended protocol).
#[derive(Clone)]
pub struct PreparedPlan {
    stmt: Statement,
    plan: LogicalPlan,
    catalog_version: u64,
}

pub struct Engine {
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub ctx: SessionContext,
    pub stream: Arc<StreamRuntime>,
    /// Serializes CREATE and DROP of views (planning, filling and the
    /// catalog update of one must not interleave with another's).
    pub ddl_lock: tokio::sync::Mutex<()>,
    /// Running Kafka ingest threads and sink publishers, and their counters.
    pub connectors: Arc<crate::connector::kafka::Connectors>,
    /// How often views and sinks checkpoint (sinks check their Kafka
    /// transaction timeout against it).
    pub checkpoint_interval_ms: u64,
    parser: datafusion_pg_catalog::sql::PostgresCompatibilityParser,
}

impl Engine {
    /// Opens the engine over a store: loads the catalog, rebuilds every
    /// view and starts the stream runtime (which replays the change log
    /// since the last checkpoint).
    pub async fn open(store: Arc<Store>, stream_config: StreamConfig) -> EngineResult<Self> {
        let engine = Self::new(store, stream_config)?;
        mv::restore(&engine).await?;
        // Sources' readers first: the log replayed from the last
        // checkpoint names Kafka messages whose rows were held in memory.
        connect::register_refetch_all(&engine);
        engine.stream.start().await?;
        connect::start_all(&engine);
        Ok(engine)
    }

    fn new(store: Arc<Store>, stream_config: StreamConfig) -> EngineResult<Self> {
        let catalog = Arc::new(Catalog::load(store.clone())?);
        let checkpoint_interval_ms = stream_config.checkpoint_interval_ms;
        let stream = Arc::new(StreamRuntime::new(&store, catalog.clone(), stream_config)?);
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, provider::PUBLIC_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let db_catalog = Arc::new(MemoryCatalogProvider::new());
        for (name, view) in [
            (provider::PUBLIC_SCHEMA, provider::View::Declared),
            (provider::INSERT_SCHEMA, provider::View::Nullable),
            (provider::DML_SCHEMA, provider::View::WithKey),
        ] {
            db_catalog.register_schema(
                name,
                Arc::new(provider::EddySchema::new(catalog.clone(), store.clone(), view, stream.clone())),
            )?;
        }
        let connectors = Arc::new(crate::connector::kafka::Connectors::default());
        db_catalog.register_schema(system::SYSTEM_SCHEMA, Arc::new(system::SystemSchema::new(connectors.metrics.clone()).with_stream(&stream).with_db(store.db().clone())))?;
        ctx.register_catalog(DATABASE, db_catalog);
        pg::install(&ctx, catalog.clone())?;
        for f in crate::plan::session::functions() {
            ctx.register_udwf(f);
        }
        Ok(Self {
            store,
            catalog,
            ctx,
            stream,
            ddl_lock: tokio::sync::Mutex::new(()),
            connectors,
            checkpoint_interval_ms,
            parser: datafusion_pg_catalog::sql::PostgresCompatibilityParser::new(),
        })
    }

    /// Parses SQL text (possibly several statements) into statements.
    pub fn parse(&self, sql: &str) -> EngineResult<Vec<Statement>> {
        // `t FOR SYSTEM_TIME AS OF PROCTIME()` (temporal joins).
        let rewritten = crate::plan::window::proctime_text(sql);
        let sql = rewritten.as_deref().unwrap_or(sql);
        let lower = sql.to_ascii_lowercase();
        if ["flush", "source", "sink", "connector", "watermark", "append", "emit"].iter().any(|w| lower.contains(w)) {
            if let Some(stmts) = self.parse_with_flush(sql)? {
                return Ok(stmts);
            }
        }
        self.parse_plain(sql)
    }

    /// `FLUSH` and the streaming statements (`CREATE SOURCE`, ...) are not
    /// in sqlparser's Postgres dialect: split the text into statements,
    /// turn each bare `FLUSH` into a `Statement::Flush` and each streaming
    /// statement into its carrier ([`connect::carrier`]). Returns `None`
    /// when the text holds neither.
    fn parse_with_flush(&self, sql: &str) -> EngineResult<Option<Vec<Statement>>> {
        use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, tokenizer::{Token, Tokenizer}};
        let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else { return Ok(None) };
        let mut pieces: Vec<Vec<Token>> = vec![Vec::new()];
        for t in tokens {
            if t == Token::SemiColon {
                pieces.push(Vec::new());
            } else if let Some(last) = pieces.last_mut() {
                last.push(t);
            }
        }
        let is_flush = |p: &[Token]| {
            let words: Vec<&Token> = p.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
            matches!(words.as_slice(), [Token::Word(w)] if w.value.eq_ignore_ascii_case("flush"))
        };
        let is_stream = |p: &[Token]| crate::connector::sql::is_stream_statement(p);
        let eowc_at = |p: &[Token]| crate::connector::sql::emit_on_window_close_at(p);
        if !pieces.iter().any(|p| is_flush(p) || is_stream(p) || eowc_at(p).is_some()) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for p in pieces {
            if is_flush(&p) {
                out.push(flush_statement());
            } else if is_stream(&p) {
                let text: String = p.iter().map(|t| t.to_string()).collect();
                // Syntax errors surface now, like any other statement's.
                crate::connector::sql::parse(&text).map_err(|e| EngineError::Syntax { message: e.0, position: None })?;
                out.push(connect::carrier(text.trim()));
            } else if let Some(at) = eowc_at(&p) {
                // `CREATE MATERIALIZED VIEW ... EMIT ON WINDOW CLOSE`: the
                // clause becomes the view option `emit_on_window_close`.
                let text: String = p[..at].iter().map(|t| t.to_string()).collect();
                for mut stmt in self.parse_plain(&text)? {
                    let target = match &mut stmt {
                        Statement::Explain { statement, .. } => statement.as_mut(),
                        other => other,
                    };
                    match target {
                        Statement::CreateView(cv) if cv.materialized => mv::set_emit_on_window_close(cv),
                        _ => {
                            return Err(EngineError::Syntax {
                                message: "EMIT ON WINDOW CLOSE belongs to CREATE MATERIALIZED VIEW or CREATE SINK".into(),
                                position: None,
                            });
                        }
                    }
                    out.push(stmt);
                }
            } else if p.iter().any(|t| !matches!(t, Token::Whitespace(_))) {
                let text: String = p.iter().map(|t| t.to_string()).collect();
                out.extend(self.parse_plain(&text)?);
            }
        }
        Ok(Some(out))
    }

    pub(crate) fn parse_plain(&self, sql: &str) -> EngineResult<Vec<Statement>> {
        self.parser.parse(sql).map_err(|e| {
            // The compatibility parser drops token positions; the plain
            // parser's error on the same text carries them.
            use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
            match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
                Err(located) => syntax_error(sql, located),
                Ok(_) => syntax_error(sql, e),
            }
        })
    }

    /// Parameter and result types of a statement, for Parse and Describe.
    pub async fn describe(&self, stmt: &Statement, user: &str) -> EngineResult<Description> {
        let catalog_version = self.catalog.version();
        let mut bound = stmt.clone();
        session::bind_user(&mut bound, user);
        let stmt = &bound;
        let plan = match stmt {
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::CreateView(cv) if cv.materialized) =>
            {
                return Ok(Description { params: vec![], result: Some(mv::text_schema("QUERY PLAN")), plan: None });
            }
            Statement::ShowViews { materialized: true, .. } => {
                return Ok(Description { params: vec![], result: Some(mv::text_schema("Name")), plan: None });
            }
            s if connect::carried(s).is_some() => {
                let result = connect::result_schema(connect::carried(s).unwrap_or_default());
                return Ok(Description { params: vec![], result, plan: None });
            }
            Statement::Query(_) | Statement::Explain { .. } => Some(self.plan(stmt.clone()).await?),
            Statement::Insert(ins) => Some(dml::insert_plan(self, ins.clone()).await?.0),
            Statement::Update(u) => Some(self.plan(dml::update_select(self, u)?).await?),
            Statement::Delete(d) => Some(self.plan(dml::delete_select(self, d)?).await?),
            Statement::ShowVariable { .. } | Statement::ShowTables { .. } => {
                return Ok(Description {
                    params: vec![],
                    result: Some(session::show_schema(stmt)),
                    plan: None,
                });
            }
            _ => None,
        };
        let Some(plan) = plan else {
            return Ok(Description { params: vec![], result: None, plan: None });
        };
        let params = parameter_types(&plan)?;
        let result = match (&plan, stmt) {
            (_, Statement::Query(_) | Statement::Explain { .. }) => {
                Some(names::postgres_names(stmt, Arc::new(plan.schema().as_arrow().clone())))
            }
            _ => None,
        };
        let prepared = matches!(stmt, Statement::Query(_) | Statement::Insert(_)).then(|| PreparedPlan {
            stmt: stmt.clone(),
            plan: plan.clone(),
            catalog_version,
        });
        Ok(Description { params, result, plan: prepared })
    }

    /// Runs a statement prepared by the extended protocol, reusing its plan
    /// when no table was created or dropped since it was made.
    pub async fn execute_prepared(
        &self,
        vars: &mut SessionVars<'_>,
        stmt: Statement,
        prepared: Option<&PreparedPlan>,
        params: &ParamValues,
    ) -> EngineResult<Output> {
        match prepared {
            Some(p) if p.catalog_version == self.catalog.version() => match &p.stmt {
                Statement::Insert(ins) => {
                    let out = dml::insert_prepared(self, ins, p.plan.clone(), params).await?;
                    if vars.implicit_flush() {
                        self.stream.flush().await?;
                    }
                    Ok(out)
                }
                _ => self.run_plan(&p.stmt, p.plan.clone(), params).await,
            },
            _ => self.execute(vars, stmt, params).await,
        }
    }

    /// Runs one statement.
    pub async fn execute(
        &self,
        vars: &mut SessionVars<'_>,
        stmt: Statement,
        params: &ParamValues,
    ) -> EngineResult<Output> {
        let dml = matches!(stmt, Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_));
        let out = self.execute_inner(vars, stmt, params).await?;
        if dml && vars.implicit_flush() {
            self.stream.flush().await?;
        }
        Ok(out)
    }

    async fn execute_inner(
        &self,
        vars: &mut SessionVars<'_>,
        stmt: Statement,
        params: &ParamValues,
    ) -> EngineResult<Output> {
        match stmt {
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::CreateView(cv) if cv.materialized) =>
            {
                match *statement {
                    Statement::CreateView(cv) => mv::explain(self, &cv).await,
                    _ => Err(EngineError::Unsupported("EXPLAIN of this statement".into())),
                }
            }
            Statement::Query(_) | Statement::Explain { .. } => {
                let mut stmt = stmt;
                session::bind_user(&mut stmt, &vars.user());
                self.query(stmt, params).await
            }
            Statement::CreateTable(ct) => ddl::create_table(self, ct).await,
            Statement::Drop {
                object_type: object_type @ (ObjectType::Table | ObjectType::View | ObjectType::MaterializedView),
                if_exists,
                names,
                cascade,
                ..
            } => mv::drop(self, object_type, names, if_exists, cascade).await,
            Statement::CreateView(cv) => mv::create(self, cv).await,
            Statement::ShowViews { materialized: true, .. } => mv::show(self),
            Statement::Flush { .. } => mv::flush(self).await,
            ref s if connect::carried(s).is_some() => {
                let text = connect::carried(s).unwrap_or_default().to_string();
                connect::execute(self, &text).await
            }
            Statement::Insert(ins) => dml::insert(self, ins, params).await,
            Statement::Update(u) => dml::update(self, u, params).await,
            Statement::Delete(d) => dml::delete(self, d, params).await,
            Statement::Copy { source, to, target, options, legacy_options, .. } => {
                copy::start(self, source, to, target, options, legacy_options).await
            }
            Statement::ShowTables { .. } => session::show_tables(self),
            Statement::StartTransaction { .. } => Ok(Output::Transaction(TransactionOp::Begin)),
            Statement::Commit { .. } => Ok(Output::Transaction(TransactionOp::Commit)),
            Statement::Rollback { .. } => Ok(Output::Transaction(TransactionOp::Rollback)),
            Statement::Set(_) | Statement::ShowVariable { .. } | Statement::Reset(_) => {
                vars.execute(stmt)
            }
            other => Err(EngineError::Unsupported(statement_kind(&other))),
        }
    }

    /// Plans a query through DataFusion.
    pub async fn plan(&self, mut stmt: Statement) -> EngineResult<LogicalPlan> {
        crate::plan::window::rewrite(&mut stmt)?;
        let state = self.ctx.state();
        Ok(state.statement_to_plan(DFStatement::Statement(Box::new(stmt))).await?)
    }

    async fn query(&self, stmt: Statement, params: &ParamValues) -> EngineResult<Output> {
        let plan = self.plan(stmt.clone()).await?;
        self.run_plan(&stmt, plan, params).await
    }

    async fn run_plan(&self, stmt: &Statement, plan: LogicalPlan, params: &ParamValues) -> EngineResult<Output> {
        let plan = bind(plan, params)?;
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = names::postgres_names(stmt, Arc::new(df.schema().as_arrow().clone()));
        let stream = df.execute_stream().await?;
        Ok(Output::Rows { schema, stream })
    }
}

/// The statement FLUSH stands for (sqlparser has no Postgres FLUSH).
fn flush_statement() -> Statement {
    use datafusion::sql::sqlparser::ast::FlushType;
    Statement::Flush {
        object_type: FlushType::Tables,
        location: None,
        channel: None,
        read_lock: false,
        export: false,
        tables: Vec::new(),
    }
}

/// Replaces `$n` placeholders with bound values (a no-op without any).
pub fn bind(plan: LogicalPlan, params: &ParamValues) -> EngineResult<LogicalPlan> {
    let empty = match params {
        ParamValues::List(l) => l.is_empty(),
        ParamValues::Map(m) => m.is_empty(),
    };
    if empty {
        return Ok(plan);
    }
    Ok(plan.replace_params_with_values(params)?)
}

/// The types of `$1..$n` in order (None where DataFusion cannot infer).
fn parameter_types(plan: &LogicalPlan) -> EngineResult<Vec<Option<DataType>>> {
    let types = plan.get_parameter_types()?;
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(id, t)| id.trim_start_matches('$').parse::<usize>().ok().map(|n| (n, t)))
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    let count = ordered.last().map(|(n, _)| *n).unwrap_or(0);
    let mut out = vec![None; count];
    for (n, t) in ordered {
        if n >= 1 {
            out[n - 1] = t;
        }
    }
    Ok(out)
}

/// Lower-cases unquoted identifiers, as Postgres does.
pub fn normalize_name(name: &ObjectName) -> EngineResult<String> {
    let last = name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .ok_or_else(|| EngineError::Unsupported(format!("object name {name}")))?;
    if name.0.len() > 1 {
        let schema = name.0[name.0.len() - 2].as_ident().map(|i| i.value.to_lowercase());
        if schema.as_deref() != Some(provider::PUBLIC_SCHEMA) {
            return Err(EngineError::Unsupported(format!("schema-qualified name {name}")));
        }
    }
    Ok(match last.quote_style {
        Some(_) => last.value.clone(),
        None => last.value.to_lowercase(),
    })
}

fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    format!("statement {}", words.join(" "))
}

/// Builds a 42601 error with a 1-based character position from a parser
/// message such as "Expected: ..., found: x at Line: 1, Column: 8".
fn syntax_error(sql: &str, e: impl std::fmt::Display) -> EngineError {
    let message = e.to_string();
    let position = parse_line_col(&message).map(|(line, col)| {
        let offset: usize = sql.split_inclusive('\n').take(line.saturating_sub(1)).map(|l| l.chars().count()).sum();
        offset + col
    });
    let message = match message.find(" at Line:") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    let message = message.trim_start_matches("sql parser error: ").to_string();
    EngineError::Syntax { message: format!("syntax error: {message}"), position }
}

fn parse_line_col(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("Line: ")? + 6..];
    let line: usize = rest.split(',').next()?.trim().parse().ok()?;
    let col_part = &rest[rest.find("Column: ")? + 8..];
    let col: usize = col_part.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_position_is_one_based_offset() {
        let e = syntax_error("SELECT 1;\nSELEC 2", "sql parser error: Expected: an SQL statement, found: SELEC at Line: 2, Column: 1");
        assert_eq!(e.position(), Some(11));
        assert_eq!(e.sqlstate(), "42601");
    }
}
