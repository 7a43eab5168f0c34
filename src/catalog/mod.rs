//! `catalog/`: the durable definitions of everything a user creates.
//!
//! A definition is a JSON value under `m/table/<id>`, `m/mv/<id>` or
//! `m/view/<id>` in the same RocksDB instance as the data, written through
//! the single writer, so a definition and the data that depends on it are
//! never out of step after a crash (a materialized view's entry is written
//! in the checkpoint that first holds its contents). The in-memory maps are
//! a cache of those keys, rebuilt at start-up; views and materialized views
//! are re-planned from their SQL then (by the engine), in creation order.
//! Names are unique across tables, views and materialized views, and a
//! relation that others read cannot be dropped without CASCADE.

pub mod types;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::state::{StateError, Store, keys};
pub use types::SqlType;

/// Errors of catalog operations.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("relation \"{0}\" already exists")]
    AlreadyExists(String),
    #[error("relation \"{0}\" does not exist")]
    NotFound(String),
    #[error("catalog entry is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot drop {name} because other objects depend on it: {}; use DROP ... CASCADE to drop them too", dependents.join(", "))]
    Dependents { name: String, dependents: Vec<String> },
    #[error("\"{name}\" is not a {expected}")]
    WrongKind { name: String, expected: &'static str },
    #[error(transparent)]
    State(#[from] StateError),
}

pub type CatalogResult<T> = Result<T, CatalogError>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: SqlType,
    pub nullable: bool,
}

/// A table's definition as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableDef {
    pub id: u64,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns` of the primary key, in key order; empty means
    /// the table is keyed by a hidden row id.
    pub primary_key: Vec<usize>,
    /// A table fed from Kafka, or a source: its connector.
    #[serde(default)]
    pub connector: Option<crate::connector::ConnectorDef>,
    /// A source (`CREATE SOURCE`): no rows are stored; its messages go to
    /// the change log for the views and sinks that read it.
    #[serde(default)]
    pub source: bool,
    /// `WATERMARK FOR col AS expr`: the event-time column and the
    /// expression of its watermark.
    #[serde(default)]
    pub watermark: Option<WatermarkDef>,
    /// `CREATE TABLE ... APPEND ONLY`: inserts only (no UPDATE or DELETE).
    #[serde(default)]
    pub append_only: bool,
}

/// `WATERMARK FOR column AS expr` (RisingWave's syntax): rows whose
/// `column` is below the largest `expr` seen so far are late.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatermarkDef {
    pub column: String,
    /// SQL text of the expression over the row (`ts - INTERVAL '5' SECOND`).
    pub expr: String,
}

impl TableDef {
    /// Whether the table only ever receives inserts (a source, or a table
    /// created APPEND ONLY).
    pub fn is_append_only(&self) -> bool {
        self.source || self.append_only
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| c.sql_type.field(&c.name, c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// A table as the running server knows it: its definition, its Arrow schema
/// and the next hidden row id.
#[derive(Debug)]
pub struct Table {
    pub def: TableDef,
    pub schema: SchemaRef,
    pub next_row_id: AtomicU64,
}

impl Table {
    fn new(def: TableDef, next_row_id: u64) -> Self {
        let schema = def.arrow_schema();
        Self { def, schema, next_row_id: AtomicU64::new(next_row_id) }
    }

    pub fn id(&self) -> u64 {
        self.def.id
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }
}

/// A materialized view's or view's definition as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MvDef {
    pub id: u64,
    pub name: String,
    /// The defining query (`SELECT ...`).
    pub sql: String,
    /// Relations the query names (tables, views, materialized views).
    pub depends_on: Vec<String>,
    /// Change-log position of the snapshot the view was filled from: its
    /// table sources skip log entries up to and including it.
    #[serde(default)]
    pub created_seq: u64,
    /// Column names given in `CREATE ... VIEW name (a, b)`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// A sink (`CREATE SINK`): where its output goes.
    #[serde(default)]
    pub sink: Option<crate::connector::SinkDef>,
    /// EMIT ON WINDOW CLOSE: windowed aggregates emit each window once,
    /// when the watermark passes its end.
    #[serde(default)]
    pub eowc: bool,
    /// The columns a materialized view's rows are stored under (a unique
    /// key of its query), or none: rows stored whole with their
    /// multiplicity (see [`crate::stream::view_rows`]). Chosen at CREATE.
    #[serde(default)]
    pub row_key: Option<Vec<usize>>,
}

/// A materialized view as the running server knows it.
#[derive(Debug)]
pub struct MatView {
    pub def: MvDef,
    /// Its columns (every column nullable).
    pub schema: SchemaRef,
    /// Whether its rows are only ever added (its plan is append-only), so
    /// a view or a `FORMAT PLAIN` sink reading it sees inserts only.
    pub append_only: bool,
    /// The columns that carry a watermark out of its plan (a window
    /// column of an EMIT ON WINDOW CLOSE aggregate, a source's time
    /// column): views reading it get them too.
    pub watermarks: Vec<usize>,
}

/// A plain view: its definition and its plan, inlined where it is used.
#[derive(Debug)]
pub struct View {
    pub def: MvDef,
    pub plan: datafusion::logical_expr::LogicalPlan,
}

/// A definition loaded at start-up that the engine must still plan.
#[derive(Debug, Clone)]
pub enum PendingDef {
    Materialized(MvDef),
    View(MvDef),
    Sink(MvDef),
}

pub struct Catalog {
    store: Arc<Store>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    mvs: RwLock<BTreeMap<String, Arc<MatView>>>,
    views: RwLock<BTreeMap<String, Arc<View>>>,
    sinks: RwLock<BTreeMap<String, Arc<MvDef>>>,
    pending: std::sync::Mutex<Vec<PendingDef>>,
    next_id: AtomicU64,
    /// Bumped by every CREATE and DROP; cached plans check it.
    version: AtomicU64,
}

impl Catalog {
    /// Loads every definition from the store.
    pub fn load(store: Arc<Store>) -> CatalogResult<Self> {
        let mut tables = BTreeMap::new();
        let mut max_id = 0u64;
        for (_, value) in store.scan_prefix(keys::META_TABLE_PREFIX)? {
            let def: TableDef = serde_json::from_slice(&value)
                .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
            max_id = max_id.max(def.id);
            let next_row_id = if def.primary_key.is_empty() {
                match store.last_key_with_prefix(&keys::table_prefix(def.id))? {
                    Some(k) if k.len() == 17 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&k[9..17]);
                        u64::from_be_bytes(b) + 1
                    }
                    _ => 1,
                }
            } else {
                0
            };
            tables.insert(def.name.clone(), Arc::new(Table::new(def, next_row_id)));
        }
        let mut pending = Vec::new();
        for (prefix, kind) in [(keys::META_MV_PREFIX, 0), (keys::META_VIEW_PREFIX, 1), (keys::META_SINK_PREFIX, 2)] {
            for (_, value) in store.scan_prefix(prefix)? {
                let def: MvDef = serde_json::from_slice(&value)
                    .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
                max_id = max_id.max(def.id);
                pending.push(match kind {
                    0 => PendingDef::Materialized(def),
                    1 => PendingDef::View(def),
                    _ => PendingDef::Sink(def),
                });
            }
        }
        pending.sort_by_key(|d| match d {
            PendingDef::Materialized(d) | PendingDef::View(d) | PendingDef::Sink(d) => d.id,
        });
        Ok(Self {
            store,
            tables: RwLock::new(tables),
            mvs: RwLock::new(BTreeMap::new()),
            views: RwLock::new(BTreeMap::new()),
            sinks: RwLock::new(BTreeMap::new()),
            pending: std::sync::Mutex::new(pending),
            next_id: AtomicU64::new(max_id + 1),
            version: AtomicU64::new(0),
        })
    }

    /// Changes whenever a table is created or dropped.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.read().ok()?.get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Table>> {
        self.tables.read().map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get_mv(&self, name: &str) -> Option<Arc<MatView>> {
        self.mvs.read().ok()?.get(name).cloned()
    }

    pub fn list_mvs(&self) -> Vec<Arc<MatView>> {
        self.mvs.read().map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get_view(&self, name: &str) -> Option<Arc<View>> {
        self.views.read().ok()?.get(name).cloned()
    }

    pub fn list_views(&self) -> Vec<Arc<View>> {
        self.views.read().map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    /// Whether any relation has this name.
    pub fn exists(&self, name: &str) -> bool {
        self.get(name).is_some() || self.get_mv(name).is_some() || self.get_view(name).is_some() || self.get_sink(name).is_some()
    }

    pub fn get_sink(&self, name: &str) -> Option<Arc<MvDef>> {
        self.sinks.read().ok()?.get(name).cloned()
    }

    pub fn list_sinks(&self) -> Vec<Arc<MvDef>> {
        self.sinks.read().map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    /// Makes a sink visible (its entry is already durable).
    pub fn insert_sink(&self, def: Arc<MvDef>) {
        if let Ok(mut m) = self.sinks.write() {
            m.insert(def.name.clone(), def);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn remove_sink(&self, name: &str) -> Option<Arc<MvDef>> {
        let removed = self.sinks.write().ok()?.remove(name);
        self.version.fetch_add(1, Ordering::SeqCst);
        removed
    }

    /// Definitions loaded at start-up that still need planning, oldest first.
    pub fn take_pending(&self) -> Vec<PendingDef> {
        self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }

    /// A fresh id for a new relation.
    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Views and materialized views that name `name`, oldest first.
    pub fn dependents(&self, name: &str) -> Vec<(u64, String, bool)> {
        let mut out: Vec<(u64, String, bool)> = self
            .list_mvs()
            .iter()
            .filter(|m| m.def.depends_on.iter().any(|d| d == name))
            .map(|m| (m.def.id, m.def.name.clone(), true))
            .chain(
                self.list_views()
                    .iter()
                    .filter(|v| v.def.depends_on.iter().any(|d| d == name))
                    .map(|v| (v.def.id, v.def.name.clone(), false)),
            )
            .chain(
                self.list_sinks()
                    .iter()
                    .filter(|s| s.depends_on.iter().any(|d| d == name))
                    .map(|s| (s.id, s.name.clone(), true)),
            )
            .collect();
        out.sort();
        out
    }

    fn refuse_if_depended_on(&self, name: &str) -> CatalogResult<()> {
        let deps = self.dependents(name);
        if deps.is_empty() {
            return Ok(());
        }
        Err(CatalogError::Dependents { name: name.to_string(), dependents: deps.into_iter().map(|d| d.1).collect() })
    }

    /// Makes a materialized view visible (its entry is already durable).
    pub fn insert_mv(&self, mv: Arc<MatView>) {
        if let Ok(mut m) = self.mvs.write() {
            m.insert(mv.def.name.clone(), mv);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Hides a materialized view (before its data is deleted); fails with
    /// `Dependents` if another view reads it.
    pub fn remove_mv(&self, name: &str) -> CatalogResult<Arc<MatView>> {
        self.refuse_if_depended_on(name)?;
        let removed = self.mvs.write().map_err(|_| CatalogError::Corrupt("lock".into()))?.remove(name);
        self.version.fetch_add(1, Ordering::SeqCst);
        removed.ok_or_else(|| CatalogError::NotFound(name.into()))
    }

    /// Makes a view visible without writing it (start-up).
    pub fn insert_view(&self, view: Arc<View>) {
        if let Ok(mut m) = self.views.write() {
            m.insert(view.def.name.clone(), view);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Creates a view durably.
    pub async fn create_view(&self, view: View) -> CatalogResult<()> {
        if self.exists(&view.def.name) {
            return Err(CatalogError::AlreadyExists(view.def.name));
        }
        let id = view.def.id;
        let value = serde_json::to_vec(&view.def).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        self.store
            .writer()
            .write(false, move |txn| {
                txn.put(keys::meta_key(keys::META_VIEW_PREFIX, id), value);
                Ok(0)
            })
            .await?;
        self.insert_view(Arc::new(view));
        Ok(())
    }

    /// Drops a view durably.
    pub async fn drop_view(&self, name: &str) -> CatalogResult<()> {
        self.refuse_if_depended_on(name)?;
        let view = self.get_view(name).ok_or_else(|| CatalogError::NotFound(name.into()))?;
        let id = view.def.id;
        self.store
            .writer()
            .write(false, move |txn| {
                txn.delete(keys::meta_key(keys::META_VIEW_PREFIX, id));
                Ok(0)
            })
            .await?;
        if let Ok(mut m) = self.views.write() {
            m.remove(name);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Creates a table durably. Returns `Ok(false)` when it exists and
    /// `if_not_exists` is set.
    pub async fn create_table(
        &self,
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
        if_not_exists: bool,
    ) -> CatalogResult<bool> {
        self.create_table_with(name, columns, primary_key, if_not_exists, None, false).await
    }

    /// [`Catalog::create_table`] for a table with a connector or a source.
    pub async fn create_table_with(
        &self,
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
        if_not_exists: bool,
        connector: Option<crate::connector::ConnectorDef>,
        source: bool,
    ) -> CatalogResult<bool> {
        self.create_table_full(name, columns, primary_key, if_not_exists, connector, source, None, false).await
    }

    /// [`Catalog::create_table_with`] with a watermark and APPEND ONLY.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_table_full(
        &self,
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
        if_not_exists: bool,
        connector: Option<crate::connector::ConnectorDef>,
        source: bool,
        watermark: Option<WatermarkDef>,
        append_only: bool,
    ) -> CatalogResult<bool> {
        if self.exists(&name) {
            return if if_not_exists { Ok(false) } else { Err(CatalogError::AlreadyExists(name)) };
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let def = TableDef { id, name: name.clone(), columns, primary_key, connector, source, watermark, append_only };
        let value = serde_json::to_vec(&def).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        self.store
            .writer()
            .write(false, move |txn| {
                txn.put(keys::meta_table_key(id), value);
                Ok(0)
            })
            .await?;
        let next_row_id = u64::from(def.primary_key.is_empty());
        let inserted = {
            let mut tables =
                self.tables.write().map_err(|_| CatalogError::Corrupt("lock".into()))?;
            if tables.contains_key(&name) {
                false
            } else {
                tables.insert(name.clone(), Arc::new(Table::new(def, next_row_id)));
                self.version.fetch_add(1, Ordering::SeqCst);
                true
            }
        };
        if !inserted {
            // Lost a race with a concurrent CREATE of the same name: undo ours.
            self.store
                .writer()
                .write(false, move |txn| {
                    txn.delete(keys::meta_table_key(id));
                    Ok(0)
                })
                .await?;
            return if if_not_exists { Ok(false) } else { Err(CatalogError::AlreadyExists(name)) };
        }
        Ok(true)
    }

    /// Drops a table and all its rows durably. Returns `Ok(false)` when it
    /// does not exist and `if_exists` is set.
    pub async fn drop_table(&self, name: &str, if_exists: bool) -> CatalogResult<bool> {
        if self.get(name).is_some() {
            self.refuse_if_depended_on(name)?;
        }
        let table = {
            let mut tables = self.tables.write().map_err(|_| CatalogError::Corrupt("lock".into()))?;
            tables.remove(name)
        };
        let Some(table) = table else {
            return if if_exists { Ok(false) } else { Err(CatalogError::NotFound(name.into())) };
        };
        self.version.fetch_add(1, Ordering::SeqCst);
        let id = table.id();
        let dropped = self
            .store
            .writer()
            .write(true, move |txn| {
                txn.delete(keys::meta_table_key(id));
                let prefix = keys::table_prefix(id);
                txn.delete_range(prefix.clone(), keys::prefix_end(&prefix));
                for p in [keys::META_SOURCE_OFFSET_PREFIX, keys::META_SOURCE_START_PREFIX, keys::META_SOURCE_CLOCK_PREFIX] {
                    let offsets = keys::meta_key(p, id);
                    txn.delete_range(offsets.clone(), keys::prefix_end(&offsets));
                }
                Ok(0)
            })
            .await;
        if let Err(e) = dropped {
            // Not dropped on disk: keep it visible.
            if let Ok(mut tables) = self.tables.write() {
                tables.insert(name.to_string(), table);
            }
            return Err(e.into());
        }
        Ok(true)
    }
}
