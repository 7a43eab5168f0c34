//! The equi-join operator: inner, left, right and full outer, semi and
//! anti joins.
//!
//! State per side: its rows by join key (`[side, 0, len, key, row]` →
//! multiplicity) and the number of rows per key (`[side, 1, key]` → count,
//! the "degree"). A batch from one side is joined with the other side's
//! current state and then added to its own (Δ(L⋈R) = ΔL⋈R + L'⋈ΔR, taking
//! the batches in arrival order). Outer joins use the degrees: when a
//! key's degree on one side goes from 0 to more, the other side's rows
//! with that key stop being NULL-padded (the padded rows are retracted and
//! the matches emitted), and back again when it returns to 0. Semi and
//! anti joins emit the kept side's rows on the same transitions. Rows with
//! a NULL in the key never match; on a preserved side they are emitted
//! padded without being stored.
//!
//! A **temporal join** (`stream JOIN t FOR SYSTEM_TIME AS OF PROCTIME()`,
//! inner or left) looks each stream row up in the table as it is when the
//! row arrives: the table's changes update its state and nothing else (a
//! row already joined keeps the version it met), and stream rows are not
//! stored. Its output is append-only when the stream is. Stream rows that
//! arrive before the operator's first barrier wait for it, so that a new
//! view's back-filled stream meets the whole back-filled table.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use crate::plan::{JoinKind, PhysExpr};
use crate::stream::rows::{RowCodec, decode_count, encode_count, push_len_prefixed};
use crate::stream::state::StateTable;
use crate::stream::{Changes, StateWrite, StreamResult};

const ROWS_TAG: u8 = 0;
const DEGREE_TAG: u8 = 1;

pub struct JoinOp {
    kind: JoinKind,
    keys: [Vec<PhysExpr>; 2],
    key_types: Vec<DataType>,
    key_codec: RowCodec,
    row_codecs: [RowCodec; 2],
    schemas: [SchemaRef; 2],
    out_schema: SchemaRef,
    state: StateTable,
    temporal: bool,
    /// Temporal joins: stream rows that arrived before the first barrier,
    /// looked up at that barrier, once the table's own back-filled rows
    /// (which precede the barrier on its input) are all in.
    held: Option<Vec<Changes>>,
}

impl JoinOp {
    pub fn new(
        kind: JoinKind,
        left_keys: Vec<PhysExpr>,
        right_keys: Vec<PhysExpr>,
        input_schemas: [SchemaRef; 2],
        out_schema: SchemaRef,
        state: StateTable,
        temporal: bool,
    ) -> StreamResult<Self> {
        let key_types = left_keys
            .iter()
            .map(|k| k.data_type(&input_schemas[0]))
            .collect::<Result<Vec<_>, _>>()?;
        let types = |s: &SchemaRef| s.fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>();
        Ok(Self {
            kind,
            key_codec: RowCodec::new(&key_types)?,
            key_types,
            keys: [left_keys, right_keys],
            row_codecs: [RowCodec::new(&types(&input_schemas[0]))?, RowCodec::new(&types(&input_schemas[1]))?],
            schemas: input_schemas,
            out_schema,
            state,
            temporal,
            held: temporal.then(Vec::new),
        })
    }

    fn rows_prefix(side: usize, key: &[u8]) -> Vec<u8> {
        let mut k = vec![side as u8, ROWS_TAG];
        push_len_prefixed(&mut k, key);
        k
    }

    fn degree_key(side: usize, key: &[u8]) -> Vec<u8> {
        let mut k = vec![side as u8, DEGREE_TAG];
        k.extend_from_slice(key);
        k
    }

    fn degree(&mut self, side: usize, key: &[u8]) -> StreamResult<i64> {
        match self.state.get(&Self::degree_key(side, key))? {
            Some(v) => decode_count(&v),
            None => Ok(0),
        }
    }

    /// Whether `side`'s rows appear in the output even without a match.
    fn preserved(&self, side: usize) -> bool {
        if side == 0 { self.kind.preserves_left() } else { self.kind.preserves_right() }
    }

    /// For semi/anti joins: the side whose rows are output.
    fn kept(&self) -> Option<(usize, bool)> {
        match self.kind {
            JoinKind::LeftSemi => Some((0, false)),
            JoinKind::LeftAnti => Some((0, true)),
            JoinKind::RightSemi => Some((1, false)),
            JoinKind::RightAnti => Some((1, true)),
            _ => None,
        }
    }
}

/// Output rows under construction: each side is a row of the input batch,
/// a stored row of the other side, or NULL.
struct Pairs {
    batch_idx: Vec<Option<u32>>,
    stored: Vec<Vec<u8>>,
    stored_idx: Vec<Option<u32>>,
    weights: Vec<i64>,
}

impl Pairs {
    fn new() -> Self {
        Self { batch_idx: Vec::new(), stored: Vec::new(), stored_idx: Vec::new(), weights: Vec::new() }
    }

    fn push(&mut self, batch_row: Option<usize>, stored: Option<&[u8]>, weight: i64) {
        if weight == 0 {
            return;
        }
        self.batch_idx.push(batch_row.map(|r| r as u32));
        self.stored_idx.push(stored.map(|s| {
            self.stored.push(s.to_vec());
            (self.stored.len() - 1) as u32
        }));
        self.weights.push(weight);
    }
}

impl Operator for JoinOp {
    fn process(&mut self, side: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        if side == 0 {
            if let Some(held) = &mut self.held {
                held.push(changes);
                return Ok(Vec::new());
            }
        }
        let other = 1 - side;
        let n = changes.len();
        let weights = changes.weights.values();
        let key_cols = self.keys[side]
            .iter()
            .zip(&self.key_types)
            .map(|(e, t)| {
                let a = e.evaluate(&changes.batch)?.into_array(n)?;
                Ok(if a.data_type() != t { cast(&a, t)? } else { a })
            })
            .collect::<StreamResult<Vec<ArrayRef>>>()?;
        let keys = self.key_codec.encode(&key_cols, n)?;
        let rows = self.row_codecs[side].encode(changes.batch.columns(), n)?;
        let mut pairs = Pairs::new();
        let kept = self.kept();

        // Rows by key; NULL keys never match.
        let mut groups: HashMap<&[u8], Vec<usize>, foldhash::fast::RandomState> = HashMap::default();
        let mut order: Vec<&[u8]> = Vec::new();
        // Temporal: the table side (1) only updates the lookup state; the
        // stream side (0) is only looked up, never stored.
        let emits = !(self.temporal && side == 1);
        let stores = !(self.temporal && side == 0);
        for i in 0..n {
            if key_cols.iter().any(|c| c.is_null(i)) {
                if emits && (self.preserved(side) || kept == Some((side, true))) {
                    pairs.push(Some(i), None, weights[i]);
                }
                continue;
            }
            let k = keys.row(i);
            groups
                .entry(k)
                .or_insert_with(|| {
                    order.push(k);
                    Vec::new()
                })
                .push(i);
        }

        for key in order {
            let members = &groups[key];
            let other_degree = self.degree(other, key)?;
            let other_rows: Vec<(Vec<u8>, i64)> = if other_degree > 0 {
                let prefix = Self::rows_prefix(other, key);
                self.state
                    .scan_all(&prefix)?
                    .into_iter()
                    .map(|(k, v)| Ok((k[prefix.len()..].to_vec(), decode_count(&v)?)))
                    .collect::<StreamResult<_>>()?
            } else {
                Vec::new()
            };
            // This side's rows against the other side's state.
            for &i in members.iter().filter(|_| emits) {
                let w = weights[i];
                match kept {
                    Some((s, anti)) if s == side => {
                        if (other_degree > 0) != anti {
                            pairs.push(Some(i), None, w);
                        }
                    }
                    Some(_) => {}
                    None => {
                        for (o, c) in &other_rows {
                            pairs.push(Some(i), Some(o), w * c);
                        }
                        if other_degree == 0 && self.preserved(side) {
                            pairs.push(Some(i), None, w);
                        }
                    }
                }
            }
            // Transitions of this side's degree change the other side's
            // padded (outer) or kept (semi/anti) rows.
            let before = self.degree(side, key)?;
            let delta: i64 = members.iter().map(|&i| weights[i]).sum();
            let after = before + delta;
            if !stores {
                continue;
            }
            if (before > 0) != (after > 0) && other_degree > 0 && !self.temporal {
                let now_matched = after > 0;
                let sign_for_other = match kept {
                    Some((s, anti)) if s == other => Some(if now_matched != anti { 1 } else { -1 }),
                    Some(_) => None,
                    None if self.preserved(other) => Some(if now_matched { -1 } else { 1 }),
                    None => None,
                };
                if let Some(sign) = sign_for_other {
                    for (o, c) in &other_rows {
                        pairs.push(None, Some(o), sign * c);
                    }
                }
            }
            // Apply to this side's state (loaded once per key, so that
            // each row's count needs no RocksDB read).
            let prefix = Self::rows_prefix(side, key);
            if before > 0 {
                self.state.ensure_complete(&prefix)?;
            } else {
                self.state.mark_complete(&prefix);
            }
            for &i in members {
                let mut k = prefix.clone();
                k.extend_from_slice(rows.row(i));
                let c = match self.state.get_under(&prefix, &k)? {
                    Some(v) => decode_count(&v)?,
                    None => 0,
                } + weights[i];
                if c > 0 {
                    self.state.put(k, encode_count(c));
                } else {
                    self.state.delete(k);
                }
            }
            let dk = Self::degree_key(side, key);
            if after > 0 {
                self.state.put(dk, encode_count(after));
            } else {
                self.state.delete(dk);
            }
        }
        self.state.evict_if_needed();
        self.build(side, &changes.batch, pairs)
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let mut out = Vec::new();
        if let Some(held) = self.held.take() {
            for changes in held {
                out.extend(self.process(0, changes)?);
            }
        }
        let writes = self.state.take_dirty(epoch);
        self.state.evict_if_needed();
        Ok((out, writes))
    }
}

impl JoinOp {
    fn build(&self, side: usize, batch: &RecordBatch, pairs: Pairs) -> StreamResult<Vec<Changes>> {
        let m = pairs.weights.len();
        if m == 0 {
            return Ok(Vec::new());
        }
        let other = 1 - side;
        let batch_idx = UInt32Array::from(pairs.batch_idx);
        let side_cols = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &batch_idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        let other_cols: Vec<ArrayRef> = if pairs.stored.is_empty() {
            self.schemas[other].fields().iter().map(|f| new_null_array(f.data_type(), m)).collect()
        } else {
            let decoded = self.row_codecs[other].decode(pairs.stored.iter().map(Vec::as_slice))?;
            let idx = UInt32Array::from(pairs.stored_idx);
            decoded.iter().map(|c| take(c.as_ref(), &idx, None)).collect::<Result<Vec<_>, _>>()?
        };
        let columns = match self.kept() {
            Some((s, _)) if s == side => side_cols,
            Some(_) => other_cols,
            None if side == 0 => side_cols.into_iter().chain(other_cols).collect(),
            None => other_cols.into_iter().chain(side_cols).collect(),
        };
        let out = super::map::with_schema(&self.out_schema, columns, m)?;
        Ok(vec![Changes::new(out, Int64Array::from(pairs.weights))])
    }
}
