//! Per-partition event-time clocks of a Kafka source (or Kafka table) with
//! a `WATERMARK FOR`, and the watermark they give.
//!
//! Each partition's clock is the largest value of the watermark expression
//! (`ts - INTERVAL ...`) over the messages read from it. The source's
//! watermark is the minimum over the partitions that are active; a
//! partition that has sent nothing for `watermark.idle.timeout.ms`
//! (default [`DEFAULT_IDLE_TIMEOUT`]) is idle and left out until it sends
//! again, and when every partition is idle the watermark is the largest
//! clock. An active partition that has sent nothing yet holds the
//! watermark back until it goes idle. So a partition that lags behind the
//! others keeps its rows (they are late only against its own progress and
//! the slowest active partition), and an empty or quiet one does not hold
//! windows open forever.
//!
//! The ingest threads of one source share one [`PartitionClocks`] and
//! advance it inside their chunk's write (the writer runs closures one at
//! a time, in commit order), and write a watermark marker into the change
//! log after the chunk's rows whenever the watermark rises. The stream
//! runtime moves the source's watermark only at these markers
//! ([`crate::stream::watermark`]), so replaying the log after a crash
//! drops exactly the same rows. The clocks themselves are stored with the
//! offsets (`m/srcwm/<table><partition>`) so a restart resumes them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use super::stored_offsets;
use crate::catalog::Table;
use crate::connector::metrics::SourceStats;
use crate::connector::{ConnectorError, ConnectorResult};
use crate::stream::watermark::WatermarkExpr;
use crate::state::{Txn, keys};

/// Idle timeout when `watermark.idle.timeout.ms` is not given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Clock {
    /// Largest watermark-expression value read (the column's unit).
    max: Option<i64>,
    /// When the partition last sent a message (or was first seen).
    active_at: Instant,
}

/// The clocks of every partition of one source.
#[derive(Debug)]
pub struct PartitionClocks {
    /// `None`: partitions never go idle.
    idle_timeout: Option<Duration>,
    parts: BTreeMap<i32, Clock>,
    /// The last watermark written to the change log.
    emitted: Option<i64>,
}

/// What `kafka_source_partitions` shows of one partition's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockStatus {
    pub max: Option<i64>,
    pub idle: bool,
}

impl PartitionClocks {
    /// Clocks for `partitions` (all seen as active now), resumed from
    /// `stored` values.
    pub fn new(idle_timeout: Option<Duration>, partitions: impl IntoIterator<Item = i32>, stored: &BTreeMap<i32, i64>, now: Instant) -> Self {
        let parts = partitions.into_iter().map(|p| (p, Clock { max: stored.get(&p).copied(), active_at: now })).collect();
        Self { idle_timeout, parts, emitted: None }
    }

    /// A partition found later (active from now, no clock yet).
    pub fn add_partition(&mut self, partition: i32, now: Instant) {
        self.parts.entry(partition).or_insert(Clock { max: None, active_at: now });
    }

    /// Messages arrived on `partition`; `max` is the largest watermark
    /// value among them (`None` if every event time was NULL).
    pub fn observe(&mut self, partition: i32, max: Option<i64>, now: Instant) {
        let clock = self.parts.entry(partition).or_insert(Clock { max: None, active_at: now });
        clock.active_at = now;
        if let Some(m) = max {
            clock.max = Some(clock.max.map_or(m, |c| c.max(m)));
        }
    }

    fn idle(&self, clock: &Clock, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|t| now.saturating_duration_since(clock.active_at) >= t)
    }

    /// The source's watermark now: the minimum clock over active
    /// partitions (`None` while an active one has no clock), or the
    /// largest clock when every partition is idle.
    pub fn watermark(&self, now: Instant) -> Option<i64> {
        let mut active = self.parts.values().filter(|c| !self.idle(c, now)).peekable();
        if active.peek().is_none() {
            return self.parts.values().filter_map(|c| c.max).max();
        }
        active.map(|c| c.max).try_fold(i64::MAX, |acc, m| m.map(|m| acc.min(m)))
    }

    /// The watermark if it is above the last one written; the caller
    /// writes it and then calls [`PartitionClocks::emitted`].
    pub fn advanced(&self, now: Instant) -> Option<i64> {
        self.watermark(now).filter(|w| self.emitted.is_none_or(|e| *w > e))
    }

    pub fn emitted(&mut self, value: i64) {
        self.emitted = Some(self.emitted.map_or(value, |e| e.max(value)));
    }

    /// The stored clock of a partition.
    pub fn max(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).and_then(|c| c.max)
    }

    pub fn status(&self, now: Instant) -> BTreeMap<i32, ClockStatus> {
        self.parts.iter().map(|(p, c)| (*p, ClockStatus { max: c.max, idle: self.idle(c, now) })).collect()
    }
}

/// The event-time tracking of one source's ingest threads.
pub struct SourceClock {
    clocks: Mutex<PartitionClocks>,
    /// The watermark expression, evaluated on each decoded chunk.
    expr: WatermarkExpr,
    unit: TimeUnit,
}

impl SourceClock {
    /// The clock of `table` if it has a `WATERMARK FOR`, resumed from the
    /// stored clocks of its known partitions.
    pub fn for_table(
        table: &Table,
        idle_timeout: Option<Duration>,
        scan: impl Fn(&[u8]) -> Vec<(Vec<u8>, Vec<u8>)>,
    ) -> ConnectorResult<Option<Arc<Self>>> {
        let compiled = crate::stream::watermark::compile(&table.def).map_err(|e| ConnectorError::Option(e.to_string()))?;
        let Some(expr) = compiled else { return Ok(None) };
        let DataType::Timestamp(unit, _) = expr.data_type else { return Ok(None) };
        let partitions = stored_offsets(&scan, keys::META_SOURCE_OFFSET_PREFIX, table.id());
        let stored = stored_offsets(&scan, keys::META_SOURCE_CLOCK_PREFIX, table.id());
        let clocks = PartitionClocks::new(idle_timeout, partitions.into_keys(), &stored, Instant::now());
        Ok(Some(Arc::new(Self { clocks: Mutex::new(clocks), expr, unit })))
    }

    fn lock(&self) -> MutexGuard<'_, PartitionClocks> {
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest watermark value per partition of a decoded chunk
    /// (`partition_of(row)`); every partition in `read` (messages arrived,
    /// whether or not they made rows) is present.
    pub fn chunk_maxima(
        &self,
        batch: &RecordBatch,
        partition_of: impl Fn(usize) -> i32,
        read: impl IntoIterator<Item = i32>,
    ) -> ConnectorResult<BTreeMap<i32, Option<i64>>> {
        let mut out: BTreeMap<i32, Option<i64>> = read.into_iter().map(|p| (p, None)).collect();
        let n = batch.num_rows();
        if n == 0 {
            return Ok(out);
        }
        let values = self.expr.values(batch).map_err(|e| ConnectorError::Option(format!("watermark expression: {e}")))?;
        for i in (0..n).filter(|i| values.is_valid(*i)) {
            let slot = out.entry(partition_of(i)).or_insert(None);
            *slot = Some(slot.map_or(values.value(i), |m| m.max(values.value(i))));
        }
        Ok(out)
    }

    /// Inside a chunk's write: advances the partitions' clocks, stores
    /// them, and logs a marker after the chunk's rows if the watermark
    /// rose.
    pub fn in_write(&self, txn: &mut Txn<'_>, table_id: u64, maxima: &BTreeMap<i32, Option<i64>>) {
        let now = Instant::now();
        let mut clocks = self.lock();
        for (p, m) in maxima {
            clocks.observe(*p, *m, now);
            if let Some(v) = clocks.max(*p) {
                txn.put(keys::source_offset_key(keys::META_SOURCE_CLOCK_PREFIX, table_id, *p), v.to_be_bytes().to_vec());
            }
        }
        if let Some(w) = clocks.advanced(now)
            && txn.log_watermark(table_id, w)
        {
            clocks.emitted(w);
        }
    }

    /// The watermark if it rose with no message (a partition went idle).
    pub fn idle_advance(&self) -> Option<i64> {
        self.lock().advanced(Instant::now())
    }

    pub fn add_partition(&self, partition: i32) {
        self.lock().add_partition(partition, Instant::now());
    }

    /// Shows each partition's clock (as a timestamp) and idleness in the
    /// source's counters.
    pub fn show(&self, stats: &mut SourceStats) {
        let status = self.lock().status(Instant::now());
        for (p, s) in status {
            let entry = stats.partitions.entry(p).or_default();
            entry.watermark = s.max.map(|v| to_micros(v, self.unit));
            entry.idle = Some(s.idle);
        }
    }
}

fn to_micros(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1_000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks(timeout_ms: u64, parts: &[i32]) -> (PartitionClocks, Instant) {
        let now = Instant::now();
        (PartitionClocks::new(Some(Duration::from_millis(timeout_ms)), parts.iter().copied(), &BTreeMap::new(), now), now)
    }

    #[test]
    fn minimum_over_active_partitions() {
        let (mut c, t0) = clocks(1000, &[0, 1]);
        c.observe(0, Some(100), t0);
        // Partition 1 has sent nothing and is not idle yet: no watermark.
        assert_eq!(c.watermark(t0), None);
        c.observe(1, Some(40), t0);
        assert_eq!(c.watermark(t0), Some(40));
        c.observe(1, Some(70), t0);
        assert_eq!(c.advanced(t0), Some(70));
        c.emitted(70);
        assert_eq!(c.advanced(t0), None);
        // A smaller value never lowers a clock.
        c.observe(0, Some(10), t0);
        assert_eq!(c.watermark(t0), Some(70));
    }

    #[test]
    fn idle_partitions_are_left_out() {
        let (mut c, t0) = clocks(1000, &[0, 1, 2]);
        let t1 = t0 + Duration::from_millis(1500);
        c.observe(0, Some(100), t1);
        // 1 and 2 have been quiet since t0: idle.
        assert_eq!(c.watermark(t1), Some(100));
        // Partition 2 sends again (behind): it is active and counts.
        c.observe(2, Some(60), t1);
        assert_eq!(c.watermark(t1), Some(60));
        // Everything idle: the largest clock.
        let t2 = t1 + Duration::from_millis(1500);
        assert_eq!(c.watermark(t2), Some(100));
        assert!(c.status(t2).values().all(|s| s.idle));
    }

    #[test]
    fn no_timeout_means_never_idle() {
        let now = Instant::now();
        let mut c = PartitionClocks::new(None, [0, 1], &BTreeMap::new(), now);
        c.observe(0, Some(5), now);
        assert_eq!(c.watermark(now + Duration::from_secs(3600)), None);
    }

    #[test]
    fn resumes_from_stored_clocks() {
        let now = Instant::now();
        let stored = BTreeMap::from([(0, 50), (1, 30)]);
        let c = PartitionClocks::new(Some(Duration::from_secs(5)), [0, 1], &stored, now);
        assert_eq!(c.watermark(now), Some(30));
        assert_eq!(c.max(0), Some(50));
    }
}
