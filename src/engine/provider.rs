//! DataFusion's view of eddy's tables: a `SchemaProvider` over the catalog
//! and a `TableProvider` per table that plans a [`ScanExec`] over RocksDB.
//!
//! Filters on a prefix of the primary key become key ranges (equality on
//! leading key columns, then one range or IN-list on the next). Pushed
//! filters are `Inexact`: DataFusion still applies them, so a range only has
//! to be a superset of the matching rows.
//!
//! The hidden schema [`DML_SCHEMA`] shows the same tables with two more
//! columns: [`KEY_COLUMN`], each row's storage key, and [`ROW_COLUMN`], its
//! stored bytes; UPDATE and DELETE select from it to learn which rows to
//! change and to detect a row changed by someone else in the meantime.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::{Catalog, Table};
use crate::state::keys::{self, encode_key_value, prefix_end};
use crate::state::scan::{KeyRange, ScanExec, ScanSpec};
use crate::state::Store;

/// The schema users see.
pub const PUBLIC_SCHEMA: &str = "public";
/// The schema INSERT plans against: the same tables with every column
/// nullable, so that a NULL for a NOT NULL column reaches eddy's own check
/// (23502 naming the column) instead of failing inside DataFusion.
pub const INSERT_SCHEMA: &str = "eddy_insert";
/// The schema that exposes storage keys to UPDATE and DELETE.
pub const DML_SCHEMA: &str = "eddy_internal";
/// The name of the storage-key column in [`DML_SCHEMA`].
pub use crate::state::scan::{KEY_COLUMN_NAME as KEY_COLUMN, ROW_COLUMN_NAME as ROW_COLUMN};

const BATCH_ROWS: usize = 8192;
/// More IN-list values than this scan the table instead.
const MAX_POINT_RANGES: usize = 1024;

/// How a schema shows eddy's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// As declared (NOT NULL columns are non-nullable): `public`.
    Declared,
    /// Every column nullable: INSERT planning.
    Nullable,
    /// Nullable, plus the storage key and row bytes: UPDATE and DELETE.
    WithKey,
}

#[derive(Debug)]
pub struct EddySchema {
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    view: View,
    stream: Arc<crate::stream::StreamRuntime>,
}

impl EddySchema {
    pub fn new(catalog: Arc<Catalog>, store: Arc<Store>, view: View, stream: Arc<crate::stream::StreamRuntime>) -> Self {
        Self { catalog, store, view, stream }
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

#[async_trait]
impl SchemaProvider for EddySchema {
    fn table_names(&self) -> Vec<String> {
        if self.view != View::Declared {
            return Vec::new(); // hidden from catalog listings
        }
        let mut names: Vec<String> = self.catalog.list().iter().map(|t| t.name().to_string()).collect();
        names.extend(self.catalog.list_mvs().iter().map(|m| m.def.name.clone()));
        names.extend(self.catalog.list_views().iter().map(|v| v.def.name.clone()));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.catalog.get(name) {
            if table.def.source && self.view == View::Declared {
                return Ok(Some(Arc::new(super::source_provider::SourceTable::new(table, self.store.db().clone()))));
            }
            return Ok(Some(Arc::new(EddyTable::new(table, self.store.clone(), self.view))));
        }
        if self.view != View::Declared {
            return Ok(None);
        }
        if let Some(mv) = self.catalog.get_mv(name) {
            return Ok(Some(Arc::new(super::mv_provider::MvTable::new(
                mv,
                self.store.db().clone(),
                self.stream.clone(),
            ))));
        }
        if let Some(v) = self.catalog.get_view(name) {
            return Ok(Some(Arc::new(datafusion::catalog::view::ViewTable::new(
                v.plan.clone(),
                Some(v.def.sql.clone()),
            ))));
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.get(name).is_some()
            || (self.view == View::Declared && (self.catalog.get_mv(name).is_some() || self.catalog.get_view(name).is_some()))
    }
}

#[derive(Debug)]
pub struct EddyTable {
    table: Arc<Table>,
    store: Arc<Store>,
    schema: SchemaRef,
    /// The table's columns, all nullable (what scans produce).
    scan_schema: SchemaRef,
    with_key: bool,
}

impl EddyTable {
    pub fn new(table: Arc<Table>, store: Arc<Store>, view: View) -> Self {
        let with_key = view == View::WithKey;
        let (scan_schema, schema) = if view == View::Declared {
            (table.schema.clone(), table.schema.clone())
        } else {
            let relaxed: Vec<Field> = table
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            let scan_schema = Arc::new(Schema::new(relaxed.clone()));
            let schema = if with_key {
                let mut fields = relaxed;
                fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
                fields.push(Field::new(ROW_COLUMN, DataType::Binary, false));
                Arc::new(Schema::new(fields))
            } else {
                scan_schema.clone()
            };
            (scan_schema, schema)
        };
        Self { table, store, schema, scan_schema, with_key }
    }

    /// The key column indexes and their names.
    fn pk_names(&self) -> Vec<&str> {
        self.table.def.primary_key.iter().map(|&i| self.table.def.columns[i].name.as_str()).collect()
    }
}

#[async_trait]
impl TableProvider for EddyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let pk = self.pk_names();
        Ok(filters
            .iter()
            .map(|f| match filter_column(f) {
                Some(c) if pk.contains(&c) => TableProviderFilterPushDown::Inexact,
                _ => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let ranges = key_ranges(&self.table, filters);
        let limit = if filters.is_empty() { limit } else { None };
        Ok(Arc::new(ScanExec::try_new(
            self.store.db().clone(),
            ScanSpec {
                table_name: self.table.name().to_string(),
                table_schema: self.scan_schema.clone(),
                projection: projection.cloned(),
                ranges,
                limit,
                batch_rows: BATCH_ROWS,
                with_key: self.with_key,
            },
        )?))
    }
}

/// The single column a simple comparison filter is on, if any.
fn filter_column(e: &Expr) -> Option<&str> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_cmp(*op) => {
            match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(..)) | (Expr::Literal(..), Expr::Column(c)) => {
                    Some(c.name.as_str())
                }
                _ => None,
            }
        }
        Expr::Between(b) if !b.negated => match (b.expr.as_ref(), b.low.as_ref(), b.high.as_ref()) {
            (Expr::Column(c), Expr::Literal(..), Expr::Literal(..)) => Some(c.name.as_str()),
            _ => None,
        },
        Expr::InList(l) if !l.negated && l.list.iter().all(|e| matches!(e, Expr::Literal(..))) => {
            match l.expr.as_ref() {
                Expr::Column(c) => Some(c.name.as_str()),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_cmp(op: Operator) -> bool {
    matches!(op, Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq)
}


/// Encodes a literal as a key component of `data_type`, only if the value
/// converts to the column's type without loss.
fn encode_literal(value: &ScalarValue, data_type: &DataType) -> Option<Vec<u8>> {
    if value.is_null() {
        return None;
    }
    let array = value.to_array().ok()?;
    let converted: ArrayRef = if array.data_type() == data_type {
        array
    } else {
        let c = cast(&array, data_type).ok()?;
        let back = cast(&c, array.data_type()).ok()?;
        if c.is_null(0) || ScalarValue::try_from_array(&back, 0).ok()? != *value {
            return None;
        }
        c
    };
    let mut out = Vec::new();
    encode_key_value(&converted, 0, &mut out).ok()?;
    Some(out)
}

/// Key ranges that cover every row `filters` can match.
pub fn key_ranges(table: &Table, filters: &[Expr]) -> Vec<KeyRange> {
    let table_prefix = keys::table_prefix(table.id());
    let whole = vec![(table_prefix.clone(), prefix_end(&table_prefix))];
    if table.def.primary_key.is_empty() || filters.is_empty() {
        return whole;
    }
    let conjuncts: Vec<&Expr> =
        filters.iter().flat_map(datafusion::logical_expr::utils::split_conjunction).collect();
    let mut prefixes: Vec<Vec<u8>> = vec![table_prefix];
    for &col_idx in &table.def.primary_key {
        let col = &table.def.columns[col_idx];
        let data_type = col.sql_type.arrow_type();
        // Equality or IN on this column extends every prefix.
        let mut points: Option<Vec<Vec<u8>>> = None;
        let mut lower: Option<(Vec<u8>, bool)> = None; // (value, inclusive)
        let mut upper: Option<(Vec<u8>, bool)> = None;
        for e in &conjuncts {
            if filter_column(e) != Some(col.name.as_str()) {
                continue;
            }
            match e {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (lit, op) = match (left.as_ref(), right.as_ref()) {
                        (Expr::Column(_), Expr::Literal(v, _)) => (v, *op),
                        (Expr::Literal(v, _), Expr::Column(_)) => (v, op.swap().unwrap_or(*op)),
                        _ => continue,
                    };
                    let Some(enc) = encode_literal(lit, &data_type) else { continue };
                    // Keys store -0.0 as 0.0 while Arrow orders -0.0 < 0.0:
                    // keep float bounds inclusive so no matching row is cut.
                    let strict = !matches!(data_type, DataType::Float32 | DataType::Float64);
                    match op {
                        Operator::Eq => points = Some(vec![enc]),
                        Operator::Gt => lower = Some((enc, !strict)),
                        Operator::GtEq => lower = Some((enc, true)),
                        Operator::Lt => upper = Some((enc, !strict)),
                        Operator::LtEq => upper = Some((enc, true)),
                        _ => {}
                    }
                }
                Expr::Between(b) => {
                    if let (Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                        (b.low.as_ref(), b.high.as_ref())
                    {
                        if let (Some(lo), Some(hi)) =
                            (encode_literal(lo, &data_type), encode_literal(hi, &data_type))
                        {
                            lower = Some((lo, true));
                            upper = Some((hi, true));
                        }
                    }
                }
                Expr::InList(l) if points.is_none() => {
                    let encoded: Option<Vec<Vec<u8>>> = l
                        .list
                        .iter()
                        .map(|e| match e {
                            Expr::Literal(v, _) => encode_literal(v, &data_type),
                            _ => None,
                        })
                        .collect();
                    if let Some(mut vals) = encoded {
                        vals.sort();
                        vals.dedup();
                        points = Some(vals);
                    }
                }
                _ => {}
            }
        }
        if let Some(points) = points {
            if prefixes.len() * points.len() > MAX_POINT_RANGES {
                break;
            }
            prefixes = prefixes
                .iter()
                .flat_map(|p| {
                    points.iter().map(move |v| {
                        let mut k = p.clone();
                        k.extend_from_slice(v);
                        k
                    })
                })
                .collect();
            continue;
        }
        if lower.is_none() && upper.is_none() {
            break;
        }
        return prefixes
            .iter()
            .map(|p| {
                let from = match &lower {
                    Some((v, inclusive)) => {
                        let mut k = p.clone();
                        k.extend_from_slice(v);
                        if *inclusive { k } else { prefix_end(&k) }
                    }
                    None => p.clone(),
                };
                let to = match &upper {
                    Some((v, inclusive)) => {
                        let mut k = p.clone();
                        k.extend_from_slice(v);
                        if *inclusive { prefix_end(&k) } else { k }
                    }
                    None => prefix_end(p),
                };
                (from, to)
            })
            .filter(|(from, to)| from < to)
            .collect();
    }
    prefixes.iter().map(|p| (p.clone(), prefix_end(p))).collect()
}
