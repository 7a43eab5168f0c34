//! `catalog/`: the durable definitions of everything a user creates.
//!
//! A definition is a JSON value under `m/table/<id>` in the same RocksDB
//! instance as the data, written through the single writer, so a definition
//! and the data that depends on it are never out of step after a crash.
//! The in-memory map is a cache of those keys, rebuilt at start-up.

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
}

impl TableDef {
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

pub struct Catalog {
    store: Arc<Store>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
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
        Ok(Self {
            store,
            tables: RwLock::new(tables),
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

    /// Creates a table durably. Returns `Ok(false)` when it exists and
    /// `if_not_exists` is set.
    pub async fn create_table(
        &self,
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
        if_not_exists: bool,
    ) -> CatalogResult<bool> {
        if self.get(&name).is_some() {
            return if if_not_exists { Ok(false) } else { Err(CatalogError::AlreadyExists(name)) };
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let def = TableDef { id, name: name.clone(), columns, primary_key };
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
