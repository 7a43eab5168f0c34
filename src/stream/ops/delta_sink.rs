//! The last operator of a Delta Lake sink: it turns the epoch's changes
//! into rows for the Delta table and, at the barrier, hands them to the
//! checkpoint as the sink's outbox (Arrow IPC, the query's columns plus
//! `_eddy_delete`). After the checkpoint is durable the sink's committer
//! ([`crate::connector::delta`]) writes them as Parquet and commits them.
//!
//! - Without `primary_key` (append-only input): every inserted row.
//! - With `primary_key`: per key, the epoch's net result — the row as it
//!   is now (`_eddy_delete = false`), or the row that went away
//!   (`_eddy_delete = true`), applied with a Delta MERGE.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::Operator;
use crate::stream::rows::RowCodec;
use crate::stream::{Changes, StateWrite, StreamError, StreamResult};

/// The marker column of deleted rows in the outbox.
pub const DELETE_COLUMN: &str = "_eddy_delete";

pub struct DeltaSinkOp {
    sink_id: u64,
    schema: SchemaRef,
    outbox_schema: SchemaRef,
    key_columns: Vec<usize>,
    key_codec: RowCodec,
    row_codec: RowCodec,
    /// The epoch's input, in order.
    batches: Vec<Changes>,
}

impl DeltaSinkOp {
    pub fn new(sink_id: u64, schema: SchemaRef, key_columns: Vec<usize>) -> StreamResult<Self> {
        let types: Vec<DataType> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
        let key_types: Vec<DataType> = key_columns.iter().map(|&i| types[i].clone()).collect();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
        Ok(Self {
            sink_id,
            outbox_schema: Arc::new(Schema::new(fields)),
            schema,
            key_codec: RowCodec::new(&key_types)?,
            row_codec: RowCodec::new(&types)?,
            key_columns,
            batches: Vec::new(),
        })
    }

    /// The epoch's rows for the outbox (possibly none).
    fn consolidate(&mut self) -> StreamResult<Option<RecordBatch>> {
        let input = std::mem::take(&mut self.batches);
        if input.iter().all(|c| c.is_empty()) {
            return Ok(None);
        }
        let all = concat_batches(&self.schema, input.iter().map(|c| &c.batch))?;
        let weights: Vec<i64> = input.iter().flat_map(|c| c.weights.values().iter().copied()).collect();
        let mut take_rows: Vec<u32> = Vec::new();
        let mut deleted: Vec<bool> = Vec::new();
        if self.key_columns.is_empty() {
            for (i, w) in weights.iter().enumerate() {
                for _ in 0..(*w).max(0) {
                    take_rows.push(i as u32);
                    deleted.push(false);
                }
            }
        } else {
            let key_cols: Vec<ArrayRef> = self.key_columns.iter().map(|&i| all.column(i).clone()).collect();
            let keys = self.key_codec.encode(&key_cols, all.num_rows())?;
            let rows = self.row_codec.encode(all.columns(), all.num_rows())?;
            // Per key: the row it held before the epoch (if it lost one), the row now.
            let mut state: HashMap<&[u8], (Option<Option<usize>>, Option<usize>)> = HashMap::new();
            let mut order: Vec<&[u8]> = Vec::new();
            for (i, w) in weights.iter().enumerate() {
                let key = keys.row(i);
                let entry = state.entry(key).or_insert_with(|| {
                    order.push(key);
                    (None, None)
                });
                if *w > 0 {
                    if entry.0.is_none() {
                        entry.0 = Some(None);
                    }
                    entry.1 = Some(i);
                } else if *w < 0 {
                    if entry.0.is_none() {
                        entry.0 = Some(Some(i));
                    }
                    if entry.1.is_none_or(|now| rows.row(now) == rows.row(i)) {
                        entry.1 = None;
                    }
                }
            }
            for key in order {
                let Some((before, now)) = state.get(key) else { continue };
                match (before.flatten(), now) {
                    (_, Some(now)) => {
                        take_rows.push(*now as u32);
                        deleted.push(false);
                    }
                    (Some(gone), None) => {
                        take_rows.push(gone as u32);
                        deleted.push(true);
                    }
                    (None, None) => {}
                }
            }
        }
        if take_rows.is_empty() {
            return Ok(None);
        }
        let indices = UInt32Array::from(take_rows);
        let mut columns: Vec<ArrayRef> =
            all.columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<Result<_, _>>()?;
        columns.push(Arc::new(BooleanArray::from(deleted)));
        Ok(Some(RecordBatch::try_new(self.outbox_schema.clone(), columns)?))
    }
}

impl Operator for DeltaSinkOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let batch = RecordBatch::try_new(self.schema.clone(), changes.batch.columns().to_vec())?;
        self.batches.push(Changes::new(batch, changes.weights));
        Ok(Vec::new())
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let Some(batch) = self.consolidate()? else { return Ok((Vec::new(), Vec::new())) };
        let mut buf = Vec::new();
        {
            let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())?;
            w.write(&batch)?;
            w.finish()?;
        }
        crate::failpoint::hit("after_sink_flush");
        Ok((Vec::new(), vec![(super::sink::outbox_key(self.sink_id, epoch, 0), Some(buf))]))
    }
}

/// Reads back an outbox value.
pub fn decode_outbox(buf: &[u8]) -> StreamResult<Vec<RecordBatch>> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(buf), None)?;
    reader.map(|b| b.map_err(StreamError::from)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};

    fn changes(schema: &SchemaRef, rows: &[(&str, i64, i64)]) -> Changes {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        Changes::new(batch, Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()))
    }

    #[test]
    fn keyed_epochs_net_out() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]));
        let mut op = DeltaSinkOp::new(3, schema.clone(), vec![0]).unwrap();
        op.process(0, changes(&schema, &[("a", 1, -1), ("a", 2, 1), ("b", 5, 1), ("b", 5, -1), ("c", 9, -1)])).unwrap();
        let (_, writes) = op.barrier(7).unwrap();
        let batches = decode_outbox(writes[0].1.as_deref().unwrap()).unwrap();
        let b = &batches[0];
        let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let del = b.column(2).as_any().downcast_ref::<BooleanArray>().unwrap();
        let got: Vec<(String, bool)> = (0..b.num_rows()).map(|i| (k.value(i).to_string(), del.value(i))).collect();
        assert_eq!(got, vec![("a".to_string(), false), ("c".to_string(), true)]);
        assert!(op.barrier(8).unwrap().1.is_empty());
        let mut append = DeltaSinkOp::new(3, schema.clone(), vec![]).unwrap();
        append.process(0, changes(&schema, &[("x", 1, 2), ("y", 1, 1)])).unwrap();
        let (_, writes) = append.barrier(1).unwrap();
        assert_eq!(decode_outbox(writes[0].1.as_deref().unwrap()).unwrap()[0].num_rows(), 3);
        assert_eq!(del.null_count(), 0);
    }
}
