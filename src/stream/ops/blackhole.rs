//! The last operator of a blackhole sink (`CREATE SINK ... WITH
//! (connector = 'blackhole')`): it consumes every change, inserts and
//! retractions alike, and keeps nothing — no outbox, no state — so a
//! benchmark measures the pipeline in front of it. It counts the rows it
//! consumed (the absolute weights) in the sink's counters
//! (`eddy_catalog.kafka_sinks`, `SHOW SINKS`), and marks each epoch
//! published at its barrier.

use super::Operator;
use crate::connector::spec::SinkCounter;
use crate::stream::{Changes, StateWrite, StreamResult};

pub struct BlackholeOp {
    counter: Option<SinkCounter>,
    /// Rows consumed since the last barrier.
    pending: u64,
}

impl BlackholeOp {
    pub fn new(counter: Option<SinkCounter>) -> Self {
        Self { counter, pending: 0 }
    }

    fn publish(&mut self, epoch: Option<u64>) {
        let Some(SinkCounter(stats)) = &self.counter else { return };
        let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.records += std::mem::take(&mut self.pending);
        if let Some(epoch) = epoch {
            stats.published_epoch = epoch;
            stats.caught_up_epoch = epoch;
        }
    }
}

impl Operator for BlackholeOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        self.pending += changes.weights.values().iter().map(|w| w.unsigned_abs()).sum::<u64>();
        if self.pending >= 1 << 16 {
            self.publish(None);
        }
        Ok(Vec::new())
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        self.publish(Some(epoch));
        Ok((Vec::new(), Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::connector::metrics::SinkStats;

    #[test]
    fn counts_inserts_and_retractions() {
        let stats = Arc::new(Mutex::new(SinkStats::default()));
        let mut op = BlackholeOp::new(Some(SinkCounter(stats.clone())));
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let out = op.process(0, Changes::new(batch, Int64Array::from(vec![1, -1, 2]))).unwrap();
        assert!(out.is_empty());
        let (out, writes) = op.barrier(4).unwrap();
        assert!(out.is_empty() && writes.is_empty());
        let s = stats.lock().unwrap();
        assert_eq!((s.records, s.published_epoch, s.caught_up_epoch), (4, 4, 4));
    }
}
