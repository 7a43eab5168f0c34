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

use std::collections::HashMap;

use datafusion::arrow::array::{ArrayRef, Int64Array, UInt64Array};
use datafusion::arrow::compute::{SortOptions, cast};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use crate::plan::PhysExpr;
use crate::stream::rows::{RowCodec, decode_count, encode_count, push_len_prefixed};
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
}

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
        })
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

        let mut groups: HashMap<&[u8], Vec<usize>> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for i in 0..n {
            let p = parts.row(i);
            groups
                .entry(p)
                .or_insert_with(|| {
                    order.push(p);
                    Vec::new()
                })
                .push(i);
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

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let writes = self.state.take_dirty(epoch);
        self.state.evict_if_needed();
        Ok((Vec::new(), writes))
    }
}
