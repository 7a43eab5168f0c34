//! `connector/`: where data enters and leaves eddy: Kafka sources and
//! Kafka-fed tables (read by [`kafka::ingest`]), Kafka sinks
//! ([`kafka::sink`]), Delta Lake sinks ([`delta`]), generated sources and
//! tables ([`datagen`]; blackhole sinks are an operator,
//! `stream::ops::blackhole`), and what they share: the `WITH (...)` / `FORMAT ...
//! ENCODE ...` clauses ([`spec`], [`sql`]), message decoding ([`decode`])
//! and per-partition counters ([`metrics`]).
//!
//! A connector's definition is part of its catalog entry ([`ConnectorDef`]
//! in a table or source definition, [`SinkDef`] in a sink's), so it is
//! re-read at start-up and the connector resumes where its checkpoint
//! left it.

pub mod datagen;
pub mod decode;
pub mod delta;
pub mod kafka;
pub mod metrics;
pub mod nexmark;
pub mod reader;
pub mod spec;
pub mod sql;

pub use spec::{ConnectorDef, Encode, Format, Include, IncludeKind, SinkDef};

/// Errors of connectors: bad options, an unreachable broker, a missing topic.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A `WITH (...)` option or FORMAT clause that is wrong (42601/22023).
    #[error("{0}")]
    Option(String),
    /// Valid syntax eddy does not do yet (0A000).
    #[error("{0}")]
    Unsupported(String),
    /// The broker cannot be reached (08001).
    #[error("{0}")]
    Unreachable(String),
    /// The topic does not exist (42704).
    #[error("{0}")]
    NoTopic(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("arrow error: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A Delta Lake table operation failed (58030).
    #[error("delta: {0}")]
    Delta(String),
}

impl ConnectorError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Option(_) => "22023",
            Self::Unsupported(_) => "0A000",
            Self::Unreachable(_) => "08001",
            Self::NoTopic(_) => "42704",
            Self::Kafka(_) => "58000",
            Self::Delta(_) => "58030",
            Self::State(_) | Self::Arrow(_) => "XX000",
        }
    }
}

pub type ConnectorResult<T> = Result<T, ConnectorError>;

/// Fills a new view from a source as of `snapshot`: datagen regenerates
/// its rows, Kafka reads its topic again. Blocking.
pub fn backfill_source(
    snapshot: &rocksdb::Snapshot<'_>,
    table: &crate::catalog::Table,
    projection: Option<&[usize]>,
    out: &mut dyn FnMut(datafusion::arrow::array::RecordBatch) -> crate::stream::StreamResult<()>,
) -> crate::stream::StreamResult<()> {
    if datagen::is_generated_table(table) {
        datagen::ingest::backfill_source(snapshot, table, projection, out)
    } else {
        kafka::backfill_source(snapshot, table, projection, out)
    }
}
