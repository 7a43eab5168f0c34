//! The pgwire handlers: simple and extended query, COPY, errors.
//!
//! Each statement goes to [`Engine::execute`]; this file only translates:
//! parameters in, rows and tags out, [`EngineError`] to an ErrorResponse
//! with its SQLSTATE. Per-connection state (session variables, a COPY in
//! progress, the cancel token) lives in pgwire's per-connection metadata
//! and extensions, so it ends with the connection.
//!
//! Transactions: eddy commits every statement on its own. `BEGIN`,
//! `COMMIT` and `ROLLBACK` are accepted and drive the protocol's
//! transaction status (so drivers that wrap work in transactions run), but
//! `ROLLBACK` does not undo statements. After an error inside a block, the
//! block is failed (25P02) until ROLLBACK or COMMIT, as in Postgres.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::Statement;
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_describe_response};
use pgwire::api::results::DescribeResponse;
use pgwire::api::store::Entry;
use pgwire::api::DEFAULT_NAME;
use pgwire::messages::extendedquery::Describe;
use pgwire::api::results::{CopyResponse, DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::messages::data::DataRow;
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;
use tokio_util::sync::CancellationToken;

use super::startup::QueryCancel;
use crate::catalog::types::SQL_TYPE_METADATA;
use crate::engine::{CopyIn, Description, Engine, EngineError, Output, PreparedPlan, SessionVars, TransactionOp};

/// Largest COPY FROM STDIN accepted in one statement.
const MAX_COPY_BYTES: usize = 1 << 30;

/// A statement prepared by the extended protocol.
#[derive(Clone)]
pub struct Prepared {
    stmt: Option<Statement>,
    plan: Option<PreparedPlan>,
    params: Vec<Option<DataType>>,
    result: Option<SchemaRef>,
}

/// Describe-statement answer whose "no data" depends on the result columns
/// alone.
struct StatementDescription {
    parameters: Vec<Type>,
    fields: Vec<FieldInfo>,
}

impl DescribeResponse for StatementDescription {
    fn parameters(&self) -> Option<&[Type]> {
        Some(&self.parameters)
    }

    fn fields(&self) -> &[FieldInfo] {
        &self.fields
    }

    fn no_data() -> Self {
        Self { parameters: vec![], fields: vec![] }
    }

    fn is_no_data(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A COPY FROM STDIN in progress on a connection.
#[derive(Default)]
struct CopyState(Mutex<Option<(Arc<CopyIn>, Vec<u8>)>>);

pub struct Handler {
    engine: Arc<Engine>,
}

impl Handler {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// Converts an engine error into the ErrorResponse pgwire sends.
pub fn pg_error(e: EngineError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

fn error_info(e: &EngineError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string());
    info.position = e.position().map(|p| p.to_string());
    info
}

fn aborted() -> EngineError {
    EngineError::user(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// The pg type of an output column (eddy's JSONB and VARCHAR columns are
/// Arrow Utf8 with a marker in the field metadata).
fn fields(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let mut out = arrow_pg::datatypes::arrow_schema_to_pg_fields(schema.as_ref(), format, None)?;
    for (i, f) in schema.fields().iter().enumerate() {
        let ty = match f.metadata().get(SQL_TYPE_METADATA).map(String::as_str) {
            Some("jsonb") => Type::JSON,
            Some(s) if s.starts_with("character varying") => Type::VARCHAR,
            _ => continue,
        };
        out[i] = FieldInfo::new(f.name().clone(), None, None, ty, format.format_for(i));
    }
    Ok(out)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a batch stream on its own task and returns a stream of its results
/// that a cancel request or the statement timeout ends with 57014 at once,
/// even while the query is in the middle of a long computation (the task
/// is aborted when the returned stream is dropped). Ends after an error.
fn guarded(
    mut stream: SendableRecordBatchStream,
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> impl Stream<Item = Result<RecordBatch, EngineError>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, EngineError>>(2);
    let producer = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item.map_err(EngineError::from)).await.is_err() || failed {
                return;
            }
        }
    });
    let state = (rx, token, AbortOnDrop(producer));
    futures::stream::unfold(Some(state), move |state| async move {
        let (mut rx, token, producer) = state?;
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => futures::future::pending().await,
            }
        };
        let item = tokio::select! {
            biased;
            _ = token.cancelled() => Err(EngineError::Canceled),
            _ = timeout => Err(EngineError::Timeout),
            next = rx.recv() => match next {
                None => return None,
                Some(r) => r,
            },
        };
        let next_state = if item.is_ok() { Some((rx, token, producer)) } else { None };
        Some((item, next_state))
    })
}

/// Encodes a result set. The first batch is computed before the response
/// is returned, so most execution errors are reported as a plain error
/// rather than after a RowDescription.
async fn rows_response(
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    format: &Format,
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    collect_all: bool,
) -> Result<Response, EngineError> {
    let fields = Arc::new(fields(&schema, format).map_err(|e| EngineError::user("XX000", e.to_string()))?);
    let mut batches = Box::pin(guarded(stream, token, deadline).fuse());
    let mut head: Vec<RecordBatch> = Vec::new();
    loop {
        match batches.next().await {
            Some(Ok(b)) => {
                let empty = b.num_rows() == 0;
                head.push(b);
                if !collect_all && !empty {
                    break;
                }
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    let encode_fields = fields.clone();
    let text_format = format.clone();
    let rest = futures::stream::iter(head.into_iter().map(Ok)).chain(batches);
    let rows = rest.flat_map(move |batch| {
        let items: Vec<PgWireResult<_>> = match batch {
            Ok(b) => encode_rows(&encode_fields, &super::text::for_text(b, &text_format)),
            Err(e) => vec![Err(pg_error(e))],
        };
        futures::stream::iter(items)
    });
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

/// Encodes a batch as DataRows with arrow-pg's value encoders, except NULL
/// intervals, which arrow-pg 0.16 would encode as a zero interval.
fn encode_rows(fields: &Arc<Vec<FieldInfo>>, batch: &RecordBatch) -> Vec<PgWireResult<DataRow>> {
    use arrow_pg::encoder::Encoder;
    let mut enc = DataRowEncoder::new(fields.clone());
    let schema = batch.schema();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut result = Ok(());
        for (c, col) in batch.columns().iter().enumerate() {
            result = if col.is_null(row) && matches!(col.data_type(), DataType::Interval(_)) {
                Encoder::encode_field(&mut enc, &None::<i64>, &fields[c])
            } else {
                arrow_pg::encoder::encode_value(&mut enc, col, row, schema.field(c), &fields[c])
            };
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => out.push(Ok(Encoder::take_row(&mut enc))),
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

fn command(tag: &'static str, rows: Option<u64>) -> Response {
    let t = Tag::new(tag);
    let t = match (tag, rows) {
        ("INSERT", Some(n)) => t.with_oid(0).with_rows(n as usize),
        (_, Some(n)) => t.with_rows(n as usize),
        _ => t,
    };
    Response::Execution(t)
}

impl Handler {
    /// Runs one statement for either protocol.
    async fn run<C>(
        &self,
        client: &mut C,
        stmt: Statement,
        prepared: Option<&PreparedPlan>,
        params: &ParamValues,
        format: &Format,
        collect_all: bool,
    ) -> Result<Response, EngineError>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let failed = client.transaction_status() == TransactionStatus::Error;
        if failed && !matches!(stmt, Statement::Commit { .. } | Statement::Rollback { .. }) {
            return Err(aborted());
        }
        let token = client
            .session_extensions()
            .get::<QueryCancel>()
            .map(|q| q.start())
            .unwrap_or_default();
        let timeout_ms = SessionVars::new(client.metadata_mut()).statement_timeout_ms();
        let deadline = (timeout_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
        let output = {
            let mut vars = SessionVars::new(client.metadata_mut());
            let work = self.engine.execute_prepared(&mut vars, stmt, prepared, params);
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = token.cancelled() => return Err(EngineError::Canceled),
                _ = timeout => return Err(EngineError::Timeout),
                out = work => out?,
            }
        };
        Ok(match output {
            Output::Rows { schema, stream } => {
                rows_response(schema, stream, format, token, deadline, collect_all).await?
            }
            Output::Command { tag, rows } => command(tag, rows),
            Output::Set { report } => {
                if let Some((name, value)) = report {
                    client
                        .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(name, value)))
                        .await
                        .map_err(|e| EngineError::user("08006", PgWireError::from(e).to_string()))?;
                }
                Response::Execution(Tag::new("SET"))
            }
            Output::Transaction(TransactionOp::Begin) => Response::TransactionStart(Tag::new("BEGIN")),
            Output::Transaction(TransactionOp::Commit) if failed => {
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            Output::Transaction(TransactionOp::Commit) => Response::TransactionEnd(Tag::new("COMMIT")),
            Output::Transaction(TransactionOp::Rollback) => {
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            Output::CopyIn(copy) => {
                let ncols = copy.columns.len();
                let state = client.session_extensions().get_or_insert_with(CopyState::default);
                if let Ok(mut s) = state.0.lock() {
                    *s = Some((Arc::new(copy), Vec::new()));
                }
                Response::CopyIn(CopyResponse::new(0, ncols, futures::stream::empty()))
            }
            Output::CopyOut { stream, format: copy_format } => {
                let ncols = stream.schema().fields().len();
                let batches = guarded(stream, token, deadline);
                let mut header = copy_format.header;
                let data = batches.flat_map(move |batch| {
                    let items: Vec<PgWireResult<CopyData>> = match batch.and_then(|b| {
                        let lines = crate::engine::copy::format_rows(&b, &copy_format, header);
                        if b.num_rows() > 0 {
                            header = false;
                        }
                        lines
                    }) {
                        Ok(lines) => lines.into_iter().map(|l| Ok(CopyData::new(l.into()))).collect(),
                        Err(e) => vec![Err(pg_error(e))],
                    };
                    futures::stream::iter(items)
                });
                Response::CopyOut(CopyResponse::new(0, ncols, data))
            }
            Output::Empty => Response::EmptyQuery,
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match self.engine.parse(query) {
            Ok(s) => s,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e)))]),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let many = statements.len() > 1;
        let mut responses = Vec::with_capacity(statements.len());
        for stmt in statements {
            match self.run(client, stmt, None, &ParamValues::List(vec![]), &Format::UnifiedText, many).await {
                Ok(r) => responses.push(r),
                Err(e) => {
                    // An error ends a multi-statement query, as in Postgres.
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

pub struct Parser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.engine.parse(sql).map_err(pg_error)?;
        if statements.len() > 1 {
            return Err(pg_error(EngineError::user(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(stmt) = statements.pop() else {
            return Ok(Some(Prepared { stmt: None, plan: None, params: vec![], result: None }));
        };
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let Description { params, result, plan } =
            self.engine.describe(&stmt, &user).await.map_err(pg_error)?;
        Ok(Some(Prepared { stmt: Some(stmt), plan, params, result }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        stmt.params
            .iter()
            .map(|t| match t {
                Some(t) => arrow_pg::datatypes::into_pg_type(t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(&self, stmt: &Prepared, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.result {
            Some(schema) => fields(schema, column_format.unwrap_or(&Format::UnifiedText)),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser { engine: self.engine.clone() })
    }

    /// Like pgwire's default, except that a statement with parameters and
    /// no result columns (an INSERT with `$1`) is answered with NoData, not
    /// an empty RowDescription, which pgjdbc takes for a result set.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == b'S' {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(stmt)) = client.portal_store().get_statement(name) {
                let described = self.do_describe_statement(client, &stmt).await?;
                let response = StatementDescription {
                    parameters: described.parameters,
                    fields: described.fields,
                };
                return send_describe_response(client, &response).await;
            }
        }
        self._on_describe(client, message).await
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let Some(stmt) = prepared.stmt.clone() else {
            return Ok(Response::EmptyQuery);
        };
        let refs: Vec<Option<&DataType>> = prepared.params.iter().map(Option::as_ref).collect();
        let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &refs)?;
        self.run(client, stmt, prepared.plan.as_ref(), &params, &portal.result_column_format, true)
            .await
            .map_err(pg_error)
    }
}

#[async_trait]
impl CopyHandler for Handler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let state = client.session_extensions().get_or_insert_with(CopyState::default);
        let mut guard = state.0.lock().map_err(|_| pg_error(EngineError::user("XX000", "copy state poisoned")))?;
        if let Some((_, buf)) = guard.as_mut() {
            if buf.len() + copy_data.data.len() > MAX_COPY_BYTES {
                *guard = None;
                return Err(pg_error(EngineError::user(
                    "54000",
                    format!("COPY data exceeds {MAX_COPY_BYTES} bytes; split it into several COPY statements"),
                )));
            }
            buf.extend_from_slice(&copy_data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let state = client.session_extensions().get_or_insert_with(CopyState::default);
        let job = state.0.lock().ok().and_then(|mut s| s.take());
        let Some((copy, data)) = job else {
            return Err(pg_error(EngineError::user("08P01", "COPY data received without a COPY in progress")));
        };
        let n = crate::engine::copy::copy_in(&self.engine, &copy, &data).await.map_err(pg_error)?;
        if SessionVars::new(client.metadata_mut()).implicit_flush() {
            self.engine.stream.flush().await.map_err(|e| pg_error(e.into()))?;
        }
        client
            .send(PgWireBackendMessage::CommandComplete(Tag::new("COPY").with_rows(n as usize).into()))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let state = client.session_extensions().get_or_insert_with(CopyState::default);
        if let Ok(mut s) = state.0.lock() {
            *s = None;
        }
        pg_error(EngineError::user("57014", format!("COPY from stdin failed: {}", fail.message)))
    }
}

/// Logs errors that reach the client at debug level.
pub struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!("sending error: {error}");
    }
}
