//! DML: INSERT (with ON CONFLICT), UPDATE and DELETE.
//!
//! DataFusion computes the rows: the VALUES or SELECT of an INSERT (already
//! cast to the table's types), and for UPDATE and DELETE a SELECT over the
//! hidden `eddy_internal` schema that returns the new values and each row's
//! storage key. The rows are then applied in one closure on the storage
//! writer, which checks keys and constraints against the current data and
//! makes the statement durable (all rows or none) before it is acknowledged.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, ConflictTarget, Delete, ExprWithAlias, FromTable, Ident, Insert, ObjectName,
    OnConflictAction,
    OnInsert, Statement, TableFactor, TableObject, Update, UpdateTableFromKind,
};
use futures::TryStreamExt;

use super::provider::{DML_SCHEMA, INSERT_SCHEMA, KEY_COLUMN, ROW_COLUMN};
use super::{Engine, EngineError, EngineResult, Output, bind, normalize_name};
use crate::catalog::{SqlType, Table};
use crate::state::keys::{encode_key_value, table_prefix};
use crate::state::row::{RowDecoder, encode_row};
use crate::state::{StateError, StateResult, Txn};

/// What to do when an inserted row's key already exists.
pub enum Conflict {
    Error,
    Nothing,
    Update(ConflictUpdate),
}

/// `ON CONFLICT ... DO UPDATE SET ... [WHERE ...]`, compiled against a
/// schema of the existing row's columns followed by the `excluded` ones.
pub struct ConflictUpdate {
    combined: SchemaRef,
    assignments: Vec<(usize, Arc<dyn PhysicalExpr>)>,
    selection: Option<Arc<dyn PhysicalExpr>>,
}

/// Plans an INSERT (without its ON CONFLICT clause) and returns the plan
/// and the clause.
pub async fn insert_plan(
    engine: &Engine,
    mut ins: Insert,
) -> EngineResult<(LogicalPlan, Option<OnInsert>, Option<String>)> {
    if ins.returning.is_some() {
        return Err(EngineError::Unsupported("INSERT ... RETURNING".into()));
    }
    let on = ins.on.take();
    let alias = insert_alias(&ins);
    ins.table_alias = None;
    if let TableObject::TableName(name) = &ins.table {
        let table = normalize_name(name)?;
        if engine.catalog.get(&table).is_none() {
            return Err(EngineError::UndefinedTable(table));
        }
        // Plan against the all-nullable view of the table (see INSERT_SCHEMA).
        ins.table = TableObject::TableName(ObjectName::from(vec![
            Ident::new(INSERT_SCHEMA),
            Ident::with_quote('"', table),
        ]));
    }
    let plan = engine.plan(Statement::Insert(ins)).await?;
    Ok((plan, on, alias))
}

/// `INSERT INTO t AS alias`: the name ON CONFLICT expressions use for the
/// existing row.
fn insert_alias(ins: &Insert) -> Option<String> {
    ins.table_alias.as_ref().map(|a| a.alias.value.to_lowercase())
}

pub async fn insert(engine: &Engine, ins: Insert, params: &ParamValues) -> EngineResult<Output> {
    let (plan, on, alias) = insert_plan(engine, ins).await?;
    insert_planned(engine, plan, on, alias, params).await
}

/// An INSERT whose plan was made at Parse time (extended protocol).
pub async fn insert_prepared(
    engine: &Engine,
    ins: &Insert,
    plan: LogicalPlan,
    params: &ParamValues,
) -> EngineResult<Output> {
    insert_planned(engine, plan, ins.on.clone(), insert_alias(ins), params).await
}

async fn insert_planned(
    engine: &Engine,
    plan: LogicalPlan,
    on: Option<OnInsert>,
    alias: Option<String>,
    params: &ParamValues,
) -> EngineResult<Output> {
    let plan = bind(plan, params)?;
    let LogicalPlan::Dml(dml) = plan else {
        return Err(EngineError::Unsupported("this form of INSERT".into()));
    };
    if !matches!(dml.op, WriteOp::Insert(_)) {
        return Err(EngineError::Unsupported("this form of INSERT".into()));
    }
    let table_name = dml.table_name.table().to_string();
    let table = engine
        .catalog
        .get(&table_name)
        .ok_or_else(|| EngineError::UndefinedTable(table_name.clone()))?;
    let conflict = match on {
        None => Conflict::Error,
        Some(OnInsert::OnConflict(oc)) => {
            check_conflict_target(&table, oc.conflict_target.as_ref())?;
            match oc.action {
                OnConflictAction::DoNothing => Conflict::Nothing,
                OnConflictAction::DoUpdate(_) if table.def.append_only => {
                    return Err(EngineError::user(
                        "0A000",
                        format!("\"{}\" is an APPEND ONLY table: ON CONFLICT DO UPDATE would change rows", table.name()),
                    ));
                }
                OnConflictAction::DoUpdate(du) => {
                    let qualifier = alias.unwrap_or_else(|| table.name().to_string());
                    Conflict::Update(compile_conflict_update(engine, &table, &qualifier, du)?)
                }
            }
        }
        Some(OnInsert::DuplicateKeyUpdate(_)) => {
            return Err(EngineError::Unsupported("ON DUPLICATE KEY UPDATE".into()));
        }
        Some(other) => return Err(EngineError::Unsupported(format!("INSERT {other}"))),
    };
    let df = engine.ctx.execute_logical_plan(dml.input.as_ref().clone()).await?;
    let batches: Vec<RecordBatch> = df.execute_stream().await?.try_collect().await?;
    let rows = write_rows(engine, table, batches, conflict).await?;
    Ok(Output::Command { tag: "INSERT", rows: Some(rows) })
}

fn check_conflict_target(table: &Table, target: Option<&ConflictTarget>) -> EngineResult<()> {
    if table.def.primary_key.is_empty() {
        return Err(no_matching_constraint());
    }
    match target {
        None => Ok(()),
        Some(ConflictTarget::Columns(cols)) => {
            let mut named: Vec<usize> = Vec::new();
            for c in cols {
                let name = if c.quote_style.is_some() { c.value.clone() } else { c.value.to_lowercase() };
                let idx = table
                    .def
                    .column_index(&name)
                    .ok_or_else(|| EngineError::UndefinedColumn(name.clone()))?;
                named.push(idx);
            }
            let mut pk = table.def.primary_key.clone();
            named.sort_unstable();
            named.dedup();
            pk.sort_unstable();
            if named == pk { Ok(()) } else { Err(no_matching_constraint()) }
        }
        Some(ConflictTarget::OnConstraint(name)) => {
            let expected = format!("{}_pkey", table.name());
            if normalize_name(name)? == expected { Ok(()) } else { Err(no_matching_constraint()) }
        }
    }
}

fn no_matching_constraint() -> EngineError {
    EngineError::user(
        "42P10",
        "there is no unique or exclusion constraint matching the ON CONFLICT specification",
    )
}

fn compile_conflict_update(
    engine: &Engine,
    table: &Table,
    qualifier: &str,
    du: datafusion::sql::sqlparser::ast::DoUpdate,
) -> EngineResult<ConflictUpdate> {
    let existing = DFSchema::try_from_qualified_schema(qualifier, &table.schema)?;
    let excluded = DFSchema::try_from_qualified_schema("excluded", &table.schema)?;
    let combined = existing.join(&excluded)?;
    let state = engine.ctx.state();
    let compile = |expr: datafusion::sql::sqlparser::ast::Expr| -> EngineResult<Arc<dyn PhysicalExpr>> {
        let logical = state
            .create_logical_expr_from_sql_expr(ExprWithAlias { expr, alias: None }, &combined)?;
        Ok(state.create_physical_expr(logical, &combined)?)
    };
    let mut assignments = Vec::new();
    for a in du.assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            return Err(EngineError::Unsupported("tuple assignment in ON CONFLICT".into()));
        };
        let col = normalize_name(name)?;
        let idx = table.def.column_index(&col).ok_or_else(|| EngineError::UndefinedColumn(col.clone()))?;
        if table.def.primary_key.contains(&idx) {
            return Err(EngineError::Unsupported(
                "ON CONFLICT DO UPDATE of a primary-key column".into(),
            ));
        }
        assignments.push((idx, compile(a.value)?));
    }
    let selection = du.selection.map(compile).transpose()?;
    Ok(ConflictUpdate { combined: Arc::new(combined.as_arrow().clone()), assignments, selection })
}

fn eval_err(e: impl std::fmt::Display) -> StateError {
    let msg = e.to_string();
    let code = if msg.contains("Divide by zero") || msg.contains("division by zero") {
        "22012"
    } else if msg.contains("Cast") || msg.contains("cast") {
        "22P02"
    } else {
        "XX000"
    };
    StateError::rejected(code, msg)
}

impl ConflictUpdate {
    /// The new row for a conflicting insert, or None if the WHERE of the
    /// DO UPDATE rejects it.
    fn apply(&self, table: &Table, existing: &[u8], incoming: &RecordBatch, row: usize) -> StateResult<Option<Vec<ArrayRef>>> {
        let mut dec = RowDecoder::new(table.schema.clone(), None, 1)?;
        dec.push(existing)?;
        let old = dec.flush()?;
        let inc = incoming.slice(row, 1);
        let mut columns: Vec<ArrayRef> = old.columns().to_vec();
        columns.extend(inc.columns().iter().cloned());
        let combined = RecordBatch::try_new(self.combined.clone(), columns).map_err(eval_err)?;
        if let Some(sel) = &self.selection {
            let v = sel.evaluate(&combined).and_then(|v| v.into_array(1)).map_err(eval_err)?;
            let keep = v.as_any().downcast_ref::<BooleanArray>().is_some_and(|b| b.is_valid(0) && b.value(0));
            if !keep {
                return Ok(None);
            }
        }
        let mut new_cols: Vec<ArrayRef> = old.columns().to_vec();
        for (idx, expr) in &self.assignments {
            let v = expr.evaluate(&combined).and_then(|v| v.into_array(1)).map_err(eval_err)?;
            new_cols[*idx] = coerce(v, &table.schema.field(*idx).data_type().clone(), &table.def.columns[*idx].name)?;
        }
        Ok(Some(new_cols))
    }
}

/// Casts a computed column to the table column's type (errors, not NULLs,
/// on values that do not fit).
fn coerce(array: ArrayRef, to: &DataType, column: &str) -> StateResult<ArrayRef> {
    if array.data_type() == to {
        return Ok(array);
    }
    let options = CastOptions { safe: false, ..Default::default() };
    cast_with_options(&array, to, &options).map_err(|e| {
        StateError::rejected("22P02", format!("invalid input value for column \"{column}\": {e}"))
    })
}

/// Validates rows (in table column order) against the table's constraints,
/// normalises JSONB and decodes `\x` hex text in BYTEA columns.
fn check_columns(table: &Table, input: &[ArrayRef]) -> StateResult<RecordBatch> {
    let mut columns = Vec::with_capacity(input.len());
    for (i, col) in table.def.columns.iter().enumerate() {
        let array = coerce(input[i].clone(), &table.schema.field(i).data_type().clone(), &col.name)?;
        if !col.nullable && array.null_count() > 0 {
            return Err(not_null(table, &col.name));
        }
        let array = match &col.sql_type {
            SqlType::Real | SqlType::Double => positive_zero(&array)?,
            SqlType::Jsonb => normalize_json(&array)?,
            SqlType::Bytea => decode_hex_bytea(&array)?,
            SqlType::Varchar { max_len: Some(n) } => {
                let strings = array.as_string::<i32>();
                if strings.iter().flatten().any(|s| s.chars().count() as u64 > *n) {
                    return Err(StateError::rejected(
                        "22001",
                        format!("value too long for type character varying({n})"),
                    ));
                }
                array
            }
            _ => array,
        };
        columns.push(array);
    }
    RecordBatch::try_new(table.schema.clone(), columns).map_err(|e| StateError::Arrow(e.to_string()))
}

/// Stores -0.0 as 0.0 (they are equal in SQL and share one key).
fn positive_zero(array: &ArrayRef) -> StateResult<ArrayRef> {
    use datafusion::arrow::datatypes::{Float32Type, Float64Type};
    Ok(match array.data_type() {
        DataType::Float64 => Arc::new(
            array.as_primitive::<Float64Type>().unary::<_, Float64Type>(|v| if v == 0.0 { 0.0 } else { v }),
        ),
        DataType::Float32 => Arc::new(
            array.as_primitive::<Float32Type>().unary::<_, Float32Type>(|v| if v == 0.0 { 0.0 } else { v }),
        ),
        _ => array.clone(),
    })
}

pub(crate) fn check_batch(table: &Table, batch: &RecordBatch) -> StateResult<RecordBatch> {
    check_columns(table, batch.columns())
}

/// A BYTEA value written as SQL text arrives as the text's bytes; Postgres
/// reads `\x<hex>` text as hex. A value that is exactly `\x` followed by
/// an even number of hex digits is decoded (binary parameters are
/// extremely unlikely to look like that); anything else is kept as is.
fn decode_hex_bytea(array: &ArrayRef) -> StateResult<ArrayRef> {
    let bin = array.as_binary::<i32>();
    let looks_hex = |v: &[u8]| {
        v.len() >= 2 && v[0] == b'\\' && v[1] == b'x' && (v.len() - 2) % 2 == 0
            && v[2..].iter().all(u8::is_ascii_hexdigit)
    };
    if !bin.iter().flatten().any(looks_hex) {
        return Ok(array.clone());
    }
    let mut out = datafusion::arrow::array::BinaryBuilder::new();
    for v in bin.iter() {
        match v {
            None => out.append_null(),
            Some(v) if looks_hex(v) => {
                let text = std::str::from_utf8(&v[..]).map_err(|e| StateError::rejected("22P02", e.to_string()))?;
                let bytes = super::copy::decode_bytea(text).map_err(|e| StateError::rejected("22P02", e))?;
                out.append_value(bytes);
            }
            Some(v) => out.append_value(v),
        }
    }
    Ok(Arc::new(out.finish()))
}

fn not_null(table: &Table, column: &str) -> StateError {
    StateError::rejected(
        "23502",
        format!(
            "null value in column \"{column}\" of relation \"{}\" violates not-null constraint",
            table.name()
        ),
    )
}

fn normalize_json(array: &ArrayRef) -> StateResult<ArrayRef> {
    let strings = array.as_string::<i32>();
    let mut out = datafusion::arrow::array::StringBuilder::with_capacity(strings.len(), 64);
    for v in strings.iter() {
        match v {
            None => out.append_null(),
            Some(text) => {
                let parsed: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    StateError::rejected("22P02", format!("invalid input syntax for type json: {e}"))
                })?;
                out.append_value(parsed.to_string());
            }
        }
    }
    Ok(Arc::new(out.finish()))
}

fn duplicate_key(table: &Table, batch: &RecordBatch, row: usize) -> StateError {
    let names: Vec<&str> = table.def.primary_key.iter().map(|&i| table.def.columns[i].name.as_str()).collect();
    let values: Vec<String> = table
        .def
        .primary_key
        .iter()
        .map(|&i| {
            datafusion::arrow::util::display::array_value_to_string(batch.column(i), row)
                .unwrap_or_default()
        })
        .collect();
    StateError::rejected(
        "23505",
        format!(
            "duplicate key value violates unique constraint \"{}_pkey\": Key ({})=({}) already exists.",
            table.name(),
            names.join(", "),
            values.join(", ")
        ),
    )
}

/// The storage key of `batch[row]`, or a new hidden row id.
pub(crate) fn row_key(table: &Table, batch: &RecordBatch, row: usize) -> StateResult<Vec<u8>> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&table_prefix(table.id()));
    if table.def.primary_key.is_empty() {
        let id = table.next_row_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        key.extend_from_slice(&id.to_be_bytes());
    } else {
        for &i in &table.def.primary_key {
            encode_key_value(batch.column(i), row, &mut key)?;
        }
    }
    Ok(key)
}

/// Fails the write if the table was dropped after the statement was planned.
fn check_exists(txn: &Txn<'_>, table: &Table) -> StateResult<()> {
    match txn.get(&crate::state::keys::meta_table_key(table.id()))? {
        Some(_) => Ok(()),
        None => Err(StateError::rejected("42P01", format!("relation \"{}\" does not exist", table.name()))),
    }
}

/// Runs `work` on the storage writer after checking that `table` was not
/// dropped since the statement was planned; resolves once durable.
async fn write_table<F>(engine: &Engine, table: Arc<Table>, work: F) -> EngineResult<u64>
where
    F: FnOnce(&mut Txn<'_>, &Table) -> StateResult<u64> + Send + 'static,
{
    if table.def.source {
        return Err(EngineError::user(
            "42809",
            format!("\"{}\" is a source: it stores no rows and cannot be written to (CREATE TABLE ... WITH (connector = ...) stores rows)", table.name()),
        ));
    }
    Ok(engine
        .store
        .writer()
        .write(false, move |txn| {
            check_exists(txn, &table)?;
            work(txn, &table)
        })
        .await?)
}

/// Inserts rows (already in the table's column order) durably.
pub async fn write_rows(
    engine: &Engine,
    table: Arc<Table>,
    batches: Vec<RecordBatch>,
    conflict: Conflict,
) -> EngineResult<u64> {
    let batches = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| check_batch(&table, b))
        .collect::<StateResult<Vec<_>>>()?;
    if batches.is_empty() {
        return Ok(0);
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let bulk = rows >= BULK_ROWS && (table.def.primary_key.is_empty() || matches!(conflict, Conflict::Error));
    write_table(engine, table, move |txn, table| {
            if bulk {
                return insert_bulk(txn, table, &batches);
            }
            let has_pk = !table.def.primary_key.is_empty();
            let mut written = 0u64;
            let mut touched: HashSet<Vec<u8>> = HashSet::new();
            let mut row_capacity = 64;
            for batch in &batches {
                for row in 0..batch.num_rows() {
                    let key = row_key(table, batch, row)?;
                    if has_pk {
                        if let Some(existing) = txn.get(&key)? {
                            match &conflict {
                                Conflict::Error => return Err(duplicate_key(table, batch, row)),
                                Conflict::Nothing => continue,
                                Conflict::Update(u) => {
                                    if touched.contains(&key) {
                                        return Err(StateError::rejected(
                                            "21000",
                                            "ON CONFLICT DO UPDATE command cannot affect row a second time",
                                        ));
                                    }
                                    let Some(cols) = u.apply(table, &existing, batch, row)? else {
                                        continue;
                                    };
                                    let checked = check_columns(table, &cols)?;
                                    let mut value = Vec::new();
                                    encode_row(checked.columns(), 0, &mut value)?;
                                    txn.put(key.clone(), value);
                                    touched.insert(key);
                                    written += 1;
                                    continue;
                                }
                            }
                        }
                        if matches!(conflict, Conflict::Update(_)) {
                            touched.insert(key.clone());
                        }
                    }
                    let mut value = Vec::with_capacity(row_capacity);
                    encode_row(batch.columns(), row, &mut value)?;
                    row_capacity = row_capacity.max(value.len());
                    txn.put(key, value);
                    written += 1;
                }
            }
            Ok(written)
        })
        .await
}

/// Rows from which an INSERT or COPY takes the bulk path.
const BULK_ROWS: usize = 1024;

/// Inserts many rows that must all be new (no ON CONFLICT): every key is
/// made first, duplicates within the statement are found by sorting and
/// stored ones by one walk over the sorted keys ([`Txn::first_present`]);
/// then the rows go in without a read each ([`Txn::insert_new`]), in key
/// order. Keys of a table without a primary key are new row ids.
fn insert_bulk(txn: &mut Txn<'_>, table: &Table, batches: &[RecordBatch]) -> StateResult<u64> {
    let mut keys: Vec<(Vec<u8>, usize, usize)> = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, batch) in batches.iter().enumerate() {
        for row in 0..batch.num_rows() {
            keys.push((row_key(table, batch, row)?, b, row));
        }
    }
    if !table.def.primary_key.is_empty() {
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        // The later of two equal keys is the one that violates the key.
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(duplicate_key(table, &batches[w[1].1], w[1].2));
        }
        let sorted: Vec<&[u8]> = keys.iter().map(|k| k.0.as_slice()).collect();
        if let Some(i) = txn.first_present(&sorted)? {
            return Err(duplicate_key(table, &batches[keys[i].1], keys[i].2));
        }
    }
    let mut row_capacity = 64;
    let written = keys.len() as u64;
    for (key, b, row) in keys {
        let mut value = Vec::with_capacity(row_capacity);
        encode_row(batches[b].columns(), row, &mut value)?;
        row_capacity = row_capacity.max(value.len());
        txn.insert_new(key, value);
    }
    Ok(written)
}

/// A row read by UPDATE or DELETE was changed by another statement before
/// this one could write: Postgres' serialization failure, which clients
/// retry.
fn concurrent_update() -> StateError {
    StateError::rejected(
        "40001",
        "could not serialize access due to concurrent update; retry the statement",
    )
}

/// Whether the row at `key` is still the one the statement read: `false`
/// if it is gone, 40001 if another statement changed it.
fn still_current(txn: &Txn<'_>, key: &[u8], read: &[u8]) -> StateResult<bool> {
    match txn.get(key)? {
        None => Ok(false),
        Some(current) if current != read => Err(concurrent_update()),
        Some(_) => Ok(true),
    }
}

/// The target table and alias of an UPDATE or DELETE.
fn target(factor: &TableFactor) -> EngineResult<(String, String)> {
    match factor {
        TableFactor::Table { name, alias, args: None, .. } => {
            let table = normalize_name(name)?;
            let alias = alias.as_ref().map(|a| a.name.value.to_lowercase()).unwrap_or_else(|| table.clone());
            Ok((table, alias))
        }
        other => Err(EngineError::Unsupported(format!("UPDATE or DELETE target {other}"))),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn parse_one(engine: &Engine, sql: &str) -> EngineResult<Statement> {
    let mut stmts = engine.parse(sql)?;
    match (stmts.pop(), stmts.is_empty()) {
        (Some(s), true) => Ok(s),
        _ => Err(EngineError::Unsupported("this form of UPDATE or DELETE".into())),
    }
}

/// `UPDATE t SET a = e WHERE w` as `SELECT <new row>, key FROM ... WHERE w`.
pub fn update_select(engine: &Engine, u: &Update) -> EngineResult<Statement> {
    if u.returning.is_some() {
        return Err(EngineError::Unsupported("UPDATE ... RETURNING".into()));
    }
    if !u.table.joins.is_empty() || u.limit.is_some() || !u.order_by.is_empty() {
        return Err(EngineError::Unsupported("UPDATE with JOIN, ORDER BY or LIMIT".into()));
    }
    let (table_name, alias) = target(&u.table.relation)?;
    let table = engine.catalog.get(&table_name).ok_or_else(|| EngineError::UndefinedTable(table_name.clone()))?;
    let mut values: Vec<Option<String>> = vec![None; table.def.columns.len()];
    for a in &u.assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            return Err(EngineError::Unsupported("tuple assignment in UPDATE".into()));
        };
        let col = normalize_name(name)?;
        let idx = table.def.column_index(&col).ok_or_else(|| EngineError::UndefinedColumn(col.clone()))?;
        if values[idx].is_some() {
            return Err(EngineError::user("42601", format!("multiple assignments to same column \"{col}\"")));
        }
        values[idx] = Some(a.value.to_string());
    }
    let items: Vec<String> = table
        .def
        .columns
        .iter()
        .zip(values)
        .map(|(c, v)| match v {
            Some(expr) => format!("{expr} AS {}", quote(&c.name)),
            None => format!("{}.{}", quote(&alias), quote(&c.name)),
        })
        .collect();
    let from = match &u.from {
        Some(UpdateTableFromKind::AfterSet(t)) | Some(UpdateTableFromKind::BeforeSet(t)) => {
            format!(", {}", t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "))
        }
        None => String::new(),
    };
    let selection = u.selection.as_ref().map(|w| format!(" WHERE {w}")).unwrap_or_default();
    let sql = format!(
        "SELECT {}, {}.{KEY_COLUMN}, {}.{ROW_COLUMN} FROM {DML_SCHEMA}.{} AS {}{from}{selection}",
        items.join(", "),
        quote(&alias),
        quote(&alias),
        quote(&table_name),
        quote(&alias),
    );
    parse_one(engine, &sql)
}

/// `DELETE FROM t WHERE w` as `SELECT key FROM ... WHERE w`.
pub fn delete_select(engine: &Engine, d: &Delete) -> EngineResult<Statement> {
    if d.returning.is_some() {
        return Err(EngineError::Unsupported("DELETE ... RETURNING".into()));
    }
    if d.limit.is_some() || !d.order_by.is_empty() || !d.tables.is_empty() {
        return Err(EngineError::Unsupported("DELETE with ORDER BY, LIMIT or several targets".into()));
    }
    let from = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [first] = from.as_slice() else {
        return Err(EngineError::Unsupported("DELETE from several tables".into()));
    };
    if !first.joins.is_empty() {
        return Err(EngineError::Unsupported("DELETE with JOIN".into()));
    }
    let (table_name, alias) = target(&first.relation)?;
    if engine.catalog.get(&table_name).is_none() {
        return Err(EngineError::UndefinedTable(table_name));
    }
    let using = match &d.using {
        Some(t) => format!(", {}", t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")),
        None => String::new(),
    };
    let selection = d.selection.as_ref().map(|w| format!(" WHERE {w}")).unwrap_or_default();
    let sql = format!(
        "SELECT DISTINCT {}.{KEY_COLUMN}, {}.{ROW_COLUMN} FROM {DML_SCHEMA}.{} AS {}{using}{selection}",
        quote(&alias),
        quote(&alias),
        quote(&table_name),
        quote(&alias),
    );
    parse_one(engine, &sql)
}

async fn run_select(engine: &Engine, stmt: Statement, params: &ParamValues) -> EngineResult<Vec<RecordBatch>> {
    let plan = bind(engine.plan(stmt).await?, params)?;
    let df = engine.ctx.execute_logical_plan(plan).await?;
    Ok(df.execute_stream().await?.try_collect().await?)
}

/// The table an UPDATE or DELETE changes (not an APPEND ONLY one).
fn key_target(u_or_d: &TableFactor, engine: &Engine) -> EngineResult<Arc<Table>> {
    let (name, _) = target(u_or_d)?;
    let table = engine.catalog.get(&name).ok_or(EngineError::UndefinedTable(name))?;
    if table.def.append_only {
        return Err(EngineError::user(
            "0A000",
            format!("\"{}\" is an APPEND ONLY table: it takes INSERT and COPY only", table.name()),
        ));
    }
    Ok(table)
}

pub async fn update(engine: &Engine, u: Update, params: &ParamValues) -> EngineResult<Output> {
    let select = update_select(engine, &u)?;
    let table = key_target(&u.table.relation, engine)?;
    let batches = run_select(engine, select, params).await?;
    let ncols = table.def.columns.len();
    // Split each batch into the new row and the old key; cast and check.
    let mut rows: Vec<(RecordBatch, ArrayRef, ArrayRef)> = Vec::new();
    for b in batches.into_iter().filter(|b| b.num_rows() > 0) {
        let keys = b.column(ncols).clone();
        let old_rows = b.column(ncols + 1).clone();
        let cols: Vec<ArrayRef> = b.columns()[..ncols].to_vec();
        let mut coerced = Vec::with_capacity(ncols);
        for (i, c) in cols.into_iter().enumerate() {
            coerced.push(coerce(c, &table.schema.field(i).data_type().clone(), &table.def.columns[i].name)?);
        }
        rows.push((check_columns(&table, &coerced)?, keys, old_rows));
    }
    if rows.is_empty() {
        return Ok(Output::Command { tag: "UPDATE", rows: Some(0) });
    }
    let n = write_table(engine, table, move |txn, table| {
            let has_pk = !table.def.primary_key.is_empty();
            let mut seen_old: HashSet<Vec<u8>> = HashSet::new();
            let mut pending: Vec<(Vec<u8>, &RecordBatch, usize)> = Vec::new();
            // Pass 1: remove every old row that still exists.
            for (batch, keys, old_rows) in &rows {
                let keys = keys.as_binary::<i32>();
                let old_rows = old_rows.as_binary::<i32>();
                for row in 0..batch.num_rows() {
                    let old = keys.value(row).to_vec();
                    if !seen_old.insert(old.clone()) {
                        continue; // the same row joined twice (UPDATE ... FROM)
                    }
                    if !still_current(txn, &old, old_rows.value(row))? {
                        continue; // deleted concurrently: nothing to update
                    }
                    txn.delete(old.clone());
                    pending.push((old, batch, row));
                }
            }
            // Pass 2: write the new rows; a key taken by any other row is a
            // unique violation (checked after all old rows are gone, so
            // `SET id = id + 1` works whatever the scan order).
            for (old, batch, row) in &pending {
                let key = if has_pk { row_key(table, batch, *row)? } else { old.clone() };
                if has_pk && txn.get(&key)?.is_some() {
                    return Err(duplicate_key(table, batch, *row));
                }
                let mut value = Vec::new();
                encode_row(batch.columns(), *row, &mut value)?;
                txn.put(key, value);
            }
            Ok(pending.len() as u64)
        })
        .await?;
    Ok(Output::Command { tag: "UPDATE", rows: Some(n) })
}

pub async fn delete(engine: &Engine, d: Delete, params: &ParamValues) -> EngineResult<Output> {
    let select = delete_select(engine, &d)?;
    let from = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let table = match from.first() {
        Some(t) => key_target(&t.relation, engine)?,
        None => return Err(EngineError::Unsupported("DELETE without a table".into())),
    };
    let batches = run_select(engine, select, params).await?;
    let keys: Vec<(ArrayRef, ArrayRef)> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| (b.column(0).clone(), b.column(1).clone()))
        .collect();
    if keys.is_empty() {
        return Ok(Output::Command { tag: "DELETE", rows: Some(0) });
    }
    let n = write_table(engine, table, move |txn, _table| {
            let mut n = 0u64;
            for (key_array, row_array) in &keys {
                let key_array = key_array.as_binary::<i32>();
                let row_array = row_array.as_binary::<i32>();
                for i in 0..key_array.len() {
                    let k = key_array.value(i);
                    if still_current(txn, k, row_array.value(i))? {
                        txn.delete(k.to_vec());
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
        .await?;
    Ok(Output::Command { tag: "DELETE", rows: Some(n) })
}
