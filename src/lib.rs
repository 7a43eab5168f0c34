//! eddy: a streaming SQL database that speaks the Postgres wire protocol.
//!
//! The modules follow the path of data (see `docs/architecture.md`):
//! `server` (pgwire sessions) → `engine` (statement execution, the narrow
//! interface the server uses) → `catalog` (durable definitions) → `plan`
//! (a view's query → a tree of incremental operators) → `stream` (the
//! operators, the change-log reader and checkpoints) → `state` (RocksDB:
//! keys, rows, the change log, scans, the group-commit writer). `config`
//! holds the typed configuration. `connector` is where data enters and
//! leaves: Kafka sources, Kafka-fed tables and Kafka sinks.

pub mod catalog;
pub mod config;
pub mod connector;
pub mod engine;
pub mod failpoint;
pub mod plan;
pub mod server;
pub mod state;
pub mod stream;
