//! Top-N: `ORDER BY ... LIMIT n [OFFSET m]` and `ROW_NUMBER() OVER
//! (PARTITION BY ... ORDER BY ...)` bounded by a filter `rn <= n`.
//!
//! State: every row of every partition, keyed `[len, partition][sort key,
//! row]` → multiplicity, where the sort key and the row are one Arrow row
//! (sort columns first, with their ASC/DESC and NULLS options), so RocksDB
//! order is the ORDER BY order and ties are broken by the whole row. For
//! each partition a batch touches, the operator reads the visible window
//! (the first `offset + limit` rows) before and after applying the batch
//! and emits the difference, with the row number when asked: deleting a
//! row of the top N brings the next one in.
//!
//! Per-window top-N (a watermarked timestamp among the partition keys,
//! like `PARTITION BY window_start`): each partition is also listed under
//! `[u32::MAX][time][partition]` (no partition's length prefix is
//! `u32::MAX`). The watermark passes on at once (a partition's output
//! changes only when its rows arrive), and at each barrier the partitions
//! below it are closed: their rows and listing are deleted, so the state
//! holds open windows only. Rows of a closed partition that still arrive
//! are dropped (they are late).

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, UInt64Array};
use datafusion::arrow::compute::{SortOptions, cast};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use crate::plan::PhysExpr;
use crate::stream::rows::{RowCodec, TIME_KEY_LEN, decode_count, encode_count, push_len_prefixed, time_key};
use crate::stream::state::StateTable;
use crate::stream::{Changes, StateWrite, StreamResult};

pub struct TopNOp {
    partition: Vec<PhysExpr>,
    order: Vec<PhysExpr>,
    skip: usize,
    limit: Option<usize>,
    rank: bool,
    schema: SchemaRef,
    partition_codec: RowCodec,
    /// Sort columns then every input column.
    entry_codec: RowCodec,
    input_columns: usize,
    state: StateTable,
    /// The input column of the watermarked time among the partition
    /// keys, and its watermark (raw, in the column's unit).
    time: Option<usize>,
    watermark: Option<i64>,
}

/// The first bytes of a closing-index key.
const INDEX_TAG: [u8; 4] = u32::MAX.to_be_bytes();

impl TopNOp {
    pub fn new(
        partition: Vec<PhysExpr>,
        order: Vec<(PhysExpr, SortOptions)>,
        skip: usize,
        limit: Option<usize>,
        rank: bool,
        input_schema: SchemaRef,
        schema: SchemaRef,
        state: StateTable,
        time: Option<usize>,
    ) -> StreamResult<Self> {
        let partition_types =
            partition.iter().map(|e| e.data_type(&input_schema)).collect::<Result<Vec<_>, _>>()?;
        let mut entry_fields = Vec::new();
        for (e, opts) in &order {
            entry_fields.push((e.data_type(&input_schema)?, *opts));
        }
        for f in input_schema.fields() {
            entry_fields.push((f.data_type().clone(), SortOptions::default()));
        }
        Ok(Self {
            partition,
            order: order.into_iter().map(|(e, _)| e).collect(),
            skip,
            limit,
            rank,
            schema,
            partition_codec: RowCodec::new(&partition_types)?,
            entry_codec: RowCodec::with_options(entry_fields)?,
            input_columns: input_schema.fields().len(),
            state,
            time,
            watermark: None,
        })
    }

    /// Per row, its partition's time (raw), when partitions close by
    /// watermark.
    fn row_times(&self, changes: &Changes) -> StreamResult<Option<Int64Array>> {
        let Some(col) = self.time else { return Ok(None) };
        let raw = cast(changes.batch.column(col), &DataType::Int64)?;
        Ok(raw.as_any().downcast_ref::<Int64Array>().cloned())
    }

    /// Deletes every partition whose time is below the watermark.
    fn close_partitions(&mut self) -> StreamResult<()> {
        let Some(w) = self.watermark else { return Ok(()) };
        let mut from = INDEX_TAG.to_vec();
        from.extend_from_slice(&time_key(None));
        let mut to = INDEX_TAG.to_vec();
        to.extend_from_slice(&time_key(Some(w)));
        let closed = self.state.scan_range(&from, Some(&to), usize::MAX)?;
        for (index_key, _) in closed {
            let prefix = index_key[INDEX_TAG.len() + TIME_KEY_LEN..].to_vec();
            for (k, _) in self.state.scan_prefix(&prefix, usize::MAX)? {
                self.state.delete(k);
            }
            self.state.delete(index_key);
        }
        Ok(())
    }

    /// The visible rows of a partition, in order (entries repeated by
    /// multiplicity).
    fn window(&self, prefix: &[u8]) -> StreamResult<Vec<Vec<u8>>> {
        let size = self.limit.map_or(usize::MAX, |l| self.skip.saturating_add(l));
        let mut out = Vec::new();
        if size == 0 {
            return Ok(out);
        }
        for (k, v) in self.state.scan_prefix(prefix, size)? {
            let entry = k[prefix.len()..].to_vec();
            for _ in 0..decode_count(&v)?.max(0) {
                if out.len() >= size {
                    break;
                }
                out.push(entry.clone());
            }
            if out.len() >= size {
                break;
            }
        }
        Ok(out.split_off(self.skip.min(out.len())))
    }
}

impl Operator for TopNOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let n = changes.len();
        let weights = changes.weights.values();
        let eval = |exprs: &[PhysExpr]| {
            exprs
                .iter()
                .map(|e| e.evaluate(&changes.batch).and_then(|v| v.into_array(n)))
                .collect::<Result<Vec<ArrayRef>, _>>()
        };
        let parts = self.partition_codec.encode(&eval(&self.partition)?, n)?;
        let mut entry_cols = eval(&self.order)?;
        entry_cols.extend(changes.batch.columns().iter().cloned());
        let entries = self.entry_codec.encode(&entry_cols, n)?;

        let times = self.row_times(&changes)?;
        let mut groups: HashMap<&[u8], Vec<usize>> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        let mut index_keys: Vec<Vec<u8>> = Vec::new();
        for i in 0..n {
            let p = parts.row(i);
            if let Some(times) = &times {
                let t = times.is_valid(i).then(|| times.value(i));
                if let (Some(t), Some(w)) = (t, self.watermark)
                    && t < w
                {
                    continue; // a closed partition: the row is late
                }
                if !groups.contains_key(p) {
                    let mut k = INDEX_TAG.to_vec();
                    k.extend_from_slice(&time_key(t));
                    push_len_prefixed(&mut k, p);
                    index_keys.push(k);
                }
            }
            groups
                .entry(p)
                .or_insert_with(|| {
                    order.push(p);
                    Vec::new()
                })
                .push(i);
        }
        for k in index_keys {
            self.state.put(k, Vec::new());
        }
        let mut out_entries: Vec<Vec<u8>> = Vec::new();
        let mut out_ranks: Vec<u64> = Vec::new();
        let mut out_weights: Vec<i64> = Vec::new();
        for p in order {
            let mut prefix = Vec::new();
            push_len_prefixed(&mut prefix, p);
            let before = self.window(&prefix)?;
            for &i in &groups[p] {
                let mut k = prefix.clone();
                k.extend_from_slice(entries.row(i));
                let c = match self.state.get(&k)? {
                    Some(v) => decode_count(&v)?,
                    None => 0,
                } + weights[i];
                if c > 0 {
                    self.state.put(k, encode_count(c));
                } else {
                    self.state.delete(k);
                }
            }
            let after = self.window(&prefix)?;
            // Multiset difference of (entry, rank).
            let mut diff: HashMap<(Vec<u8>, u64), i64> = HashMap::new();
            let rank_of = |pos: usize| if self.rank { (self.skip + pos + 1) as u64 } else { 0 };
            for (pos, e) in before.into_iter().enumerate() {
                *diff.entry((e, rank_of(pos))).or_insert(0) -= 1;
            }
            for (pos, e) in after.into_iter().enumerate() {
                *diff.entry((e, rank_of(pos))).or_insert(0) += 1;
            }
            let mut diff: Vec<_> = diff.into_iter().filter(|(_, w)| *w != 0).collect();
            diff.sort_by(|a, b| a.1.cmp(&b.1)); // retractions first
            for ((e, r), w) in diff {
                out_entries.push(e);
                out_ranks.push(r);
                out_weights.push(w);
            }
        }
        self.state.evict_if_needed();
        if out_entries.is_empty() {
            return Ok(Vec::new());
        }
        let decoded = self.entry_codec.decode(out_entries.iter().map(Vec::as_slice))?;
        let mut columns: Vec<ArrayRef> = decoded[decoded.len() - self.input_columns..].to_vec();
        if self.rank {
            let ranks: ArrayRef = std::sync::Arc::new(UInt64Array::from(out_ranks));
            let t = self.schema.field(self.schema.fields().len() - 1).data_type();
            columns.push(if t != &DataType::UInt64 { cast(&ranks, t)? } else { ranks });
        }
        let batch = super::map::with_schema(&self.schema, columns, out_weights.len())?;
        Ok(vec![Changes::new(batch, Int64Array::from(out_weights))])
    }

    fn watermark(&mut self, _input: usize, wm: &crate::stream::Watermark) -> StreamResult<Vec<crate::stream::Watermark>> {
        match self.time {
            Some(col) if col == wm.col => {
                if let Some(v) = super::session::scalar_time(&wm.value) {
                    self.watermark = Some(self.watermark.map_or(v, |old| old.max(v)));
                }
                Ok(vec![wm.clone()])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        self.close_partitions()?;
        let writes = self.state.take_dirty(epoch);
        self.state.evict_if_needed();
        Ok((Vec::new(), writes))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::Watermark;
    use crate::stream::state::CacheBudget;

    const MINUTE: i64 = 60_000_000;

    fn batch(schema: &Arc<Schema>, rows: &[(i64, i64)]) -> Changes {
        let ws = TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let views = Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(ws), Arc::new(views)]).unwrap();
        Changes::new(b, Int64Array::from(vec![1; rows.len()]))
    }

    /// Top 1 per window_start: a watermark closes the windows below it
    /// (their state goes), passes on, and a late row is dropped.
    #[test]
    fn windows_below_the_watermark_close() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(rocksdb::DB::open_default(dir.path()).unwrap());
        let input = Arc::new(Schema::new(vec![
            Field::new("window_start", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("views", DataType::Int64, true),
        ]));
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("rank", DataType::UInt64, true));
        let output = Arc::new(Schema::new(fields));
        let state = StateTable::new(db, b"t".to_vec(), CacheBudget::new(1 << 20));
        let part: PhysExpr = Arc::new(Column::new("window_start", 0));
        let order: PhysExpr = Arc::new(Column::new("views", 1));
        let desc = SortOptions { descending: true, nulls_first: false };
        let mut op = TopNOp::new(vec![part], vec![(order, desc)], 0, Some(1), true, input.clone(), output, state, Some(0)).unwrap();

        let out = op.process(0, batch(&input, &[(0, 5), (0, 7), (MINUTE, 3)])).unwrap();
        assert_eq!(out.iter().map(|c| c.len()).sum::<usize>(), 2, "one row per window");
        let rows_before = op.state.scan_prefix(&[], usize::MAX).unwrap().len();
        assert_eq!(rows_before, 3 + 2, "3 rows and 2 window listings");

        let wm = Watermark { col: 0, value: ScalarValue::TimestampMicrosecond(Some(MINUTE), None) };
        assert_eq!(op.watermark(0, &wm).unwrap(), vec![wm.clone()]);
        op.barrier(1).unwrap();
        let left = op.state.scan_prefix(&[], usize::MAX).unwrap();
        assert_eq!(left.len(), 2, "only the open window's row and listing stay");

        // A late row of the closed window changes nothing.
        assert!(op.process(0, batch(&input, &[(0, 100)])).unwrap().is_empty());
        // The open window still works.
        let out = op.process(0, batch(&input, &[(MINUTE, 9)])).unwrap();
        let weights: Vec<i64> = out.iter().flat_map(|c| c.weights.values().to_vec()).collect();
        assert_eq!(weights, vec![-1, 1]);
        assert!(out.iter().all(|c| c.batch.column(0).null_count() == 0));
    }
}
