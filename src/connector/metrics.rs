//! Counters of every running connector, for the system tables
//! `eddy_catalog.kafka_source_partitions`, `eddy_catalog.kafka_source_errors`
//! and `eddy_catalog.kafka_sinks`. In memory: they restart at zero when
//! eddy restarts (the offsets themselves are durable).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Rejected messages kept per source for `kafka_source_errors`.
const ERRORS_KEPT: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct PartitionStats {
    /// The next offset to read (everything before it is ingested).
    pub offset: i64,
    /// The partition's end (high watermark), as last fetched.
    pub end_offset: Option<i64>,
    pub rows_read: u64,
    pub rows_rejected: u64,
    /// Sources with a watermark: the partition's event-time clock (the
    /// largest watermark value read, microseconds) and whether it is idle.
    pub watermark: Option<i64>,
    pub idle: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct ErrorRecord {
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default)]
pub struct SourceStats {
    pub topic: String,
    pub partitions: BTreeMap<i32, PartitionStats>,
    pub errors: VecDeque<ErrorRecord>,
    /// The connector's last problem (broker unreachable, ...), if not over.
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    pub topic: String,
    pub records: u64,
    /// The last epoch whose output reached Kafka.
    pub published_epoch: u64,
    pub last_error: Option<String>,
    /// Every checkpoint up to this epoch is published (the outbox was
    /// empty after it).
    pub caught_up_epoch: u64,
}

/// Every connector's counters, by name.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sources: Mutex<BTreeMap<String, Arc<Mutex<SourceStats>>>>,
    pub sinks: Mutex<BTreeMap<String, Arc<Mutex<SinkStats>>>>,
}

impl Metrics {
    pub fn source(&self, name: &str, topic: &str) -> Arc<Mutex<SourceStats>> {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(SourceStats { topic: topic.to_string(), ..Default::default() })))
            .clone()
    }

    pub fn sink(&self, name: &str, topic: &str) -> Arc<Mutex<SinkStats>> {
        let mut map = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(SinkStats { topic: topic.to_string(), ..Default::default() })))
            .clone()
    }

    pub fn remove(&self, name: &str) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

impl SourceStats {
    pub fn reject(&mut self, partition: i32, offset: i64, error: String) {
        self.partitions.entry(partition).or_default().rows_rejected += 1;
        if self.errors.len() >= ERRORS_KEPT {
            self.errors.pop_front();
        }
        self.errors.push_back(ErrorRecord { partition, offset, error, at: chrono::Utc::now() });
    }
}
