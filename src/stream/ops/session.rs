//! Session windows (`SESSION(rel, ts, gap, key ...)`, see
//! [`crate::plan::session`]): every input row comes out with its session's
//! `window_start` / `window_end`. A row can move every row of its key into
//! another session (it may bridge two sessions), so the operator keeps the
//! rows of each key and emits the difference: retractions of rows whose
//! session changed and their insertion with the new bounds.
//!
//! State: `[len, key][time][row]` → multiplicity, where `time` is 9 bytes
//! (0 for NULL, else 1 and the value with its sign bit flipped, big-endian)
//! so RocksDB order is time order, and `row` is the whole input row (Arrow
//! row format). For each key a batch touches, the operator reads the key's
//! rows before and after applying the batch, assigns sessions to both with
//! [`crate::plan::session::assign`] and emits the multiset difference.
//!
//! With a watermark on the time column and append-only input (`prune`), a
//! session whose end is at or below the watermark can never change (every
//! later row is at or after the watermark, so it cannot come within the
//! gap): its rows are deleted when the key is next touched, and keys whose
//! newest row's session has ended are deleted at the barrier. State holds
//! open sessions only, however long the stream runs. The session ends
//! carry the watermark on; the starts do not (a merge moves a start back).

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;

use super::Operator;
use crate::plan::PhysExpr;
use crate::plan::session::assign;
use crate::stream::rows::{RowCodec, TIME_KEY_LEN, decode_count, encode_count, push_len_prefixed, split_len_prefixed, time_key};
use crate::stream::state::StateTable;
use crate::stream::{Changes, StateWrite, StreamError, StreamResult, Watermark};

const TIME_LEN: usize = TIME_KEY_LEN;

pub struct SessionOp {
    partition: Vec<PhysExpr>,
    time: PhysExpr,
    time_type: DataType,
    gap: i64,
    ends: Vec<bool>,
    time_col: Option<usize>,
    prune: bool,
    schema: SchemaRef,
    input_columns: usize,
    partition_codec: RowCodec,
    row_codec: RowCodec,
    /// The time column's watermark, in its unit.
    watermark: Option<i64>,
    /// Per key prefix, its newest time; `None` until built from state at
    /// the first barrier that prunes (state may hold keys from before a
    /// restart), kept up to date by `process` after that.
    newest: Option<HashMap<Vec<u8>, i64>>,
    state: StateTable,
}

fn time_of(entry: &[u8]) -> StreamResult<Option<i64>> {
    match entry.first() {
        Some(0) => Ok(None),
        Some(1) => {
            let b: [u8; 8] = entry.get(1..TIME_LEN).and_then(|b| b.try_into().ok()).ok_or(StreamError::Corrupt("session time".into()))?;
            Ok(Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64))
        }
        _ => Err(StreamError::Corrupt("session time".into())),
    }
}

/// A timestamp scalar's raw value (in its unit).
pub(crate) fn scalar_time(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampSecond(t, _)
        | ScalarValue::TimestampMillisecond(t, _)
        | ScalarValue::TimestampMicrosecond(t, _)
        | ScalarValue::TimestampNanosecond(t, _) => *t,
        _ => None,
    }
}

impl SessionOp {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: Vec<PhysExpr>,
        time: PhysExpr,
        gap: i64,
        ends: Vec<bool>,
        time_col: Option<usize>,
        prune: bool,
        input_schema: SchemaRef,
        schema: SchemaRef,
        state: StateTable,
    ) -> StreamResult<Self> {
        let partition_types = partition.iter().map(|e| e.data_type(&input_schema)).collect::<Result<Vec<_>, _>>()?;
        let row_types: Vec<DataType> = input_schema.fields().iter().map(|f| f.data_type().clone()).collect();
        Ok(Self {
            time_type: time.data_type(&input_schema)?,
            partition,
            time,
            gap,
            ends,
            time_col,
            prune,
            schema,
            input_columns: row_types.len(),
            partition_codec: RowCodec::new(&partition_types)?,
            row_codec: RowCodec::new(&row_types)?,
            watermark: None,
            newest: None,
            state,
        })
    }

    /// A key's entries (`[time][row]`) and multiplicities, in time order.
    fn load(&mut self, prefix: &[u8]) -> StreamResult<Vec<(Vec<u8>, i64)>> {
        self.state
            .scan_all(prefix)?
            .into_iter()
            .map(|(k, v)| Ok((k[prefix.len()..].to_vec(), decode_count(&v)?)))
            .collect()
    }

    fn sessions(&self, entries: &[(Vec<u8>, i64)]) -> StreamResult<Vec<Option<(i64, i64)>>> {
        let times = entries.iter().map(|(e, _)| time_of(e)).collect::<StreamResult<Vec<_>>>()?;
        Ok(assign(&times, self.gap))
    }

    /// Deletes a key's entries whose session the watermark has closed.
    fn prune_closed(&mut self, prefix: &[u8], entries: &[(Vec<u8>, i64)], bounds: &[Option<(i64, i64)>]) {
        let Some(w) = self.watermark.filter(|_| self.prune) else { return };
        for ((e, _), b) in entries.iter().zip(bounds) {
            if b.is_some_and(|(_, end)| end <= w) {
                let mut k = prefix.to_vec();
                k.extend_from_slice(e);
                self.state.delete(k);
            }
        }
    }
}

impl Operator for SessionOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let n = changes.len();
        let weights = changes.weights.values().clone();
        let parts = {
            let cols = self
                .partition
                .iter()
                .map(|e| e.evaluate(&changes.batch).and_then(|v| v.into_array(n)))
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            self.partition_codec.encode(&cols, n)?
        };
        let times = cast(&self.time.evaluate(&changes.batch)?.into_array(n)?, &DataType::Int64)?;
        let times = times.as_any().downcast_ref::<Int64Array>().ok_or(StreamError::Corrupt("session times".into()))?;
        let rows = self.row_codec.encode(changes.batch.columns(), n)?;

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
        let mut out_rows: Vec<Vec<u8>> = Vec::new();
        let mut out_bounds: Vec<Option<(i64, i64)>> = Vec::new();
        let mut out_weights: Vec<i64> = Vec::new();
        for p in order {
            let mut prefix = Vec::new();
            push_len_prefixed(&mut prefix, p);
            let before = self.load(&prefix)?;
            let mut newest = None;
            for &i in &groups[p] {
                let t = times.is_valid(i).then(|| times.value(i));
                newest = newest.max(t);
                let mut k = prefix.clone();
                k.extend_from_slice(&time_key(t));
                k.extend_from_slice(rows.row(i));
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
            let after = self.load(&prefix)?;
            let (old, new) = (self.sessions(&before)?, self.sessions(&after)?);
            // Multiset difference of (entry, session).
            let mut diff: HashMap<(&[u8], Option<(i64, i64)>), i64> = HashMap::new();
            for ((e, c), b) in before.iter().zip(&old) {
                *diff.entry((e.as_slice(), *b)).or_insert(0) -= c;
            }
            for ((e, c), b) in after.iter().zip(&new) {
                *diff.entry((e.as_slice(), *b)).or_insert(0) += c;
            }
            let mut diff: Vec<_> = diff.into_iter().filter(|(_, w)| *w != 0).collect();
            diff.sort_by_key(|(_, w)| *w); // retractions first
            for ((e, b), w) in diff {
                out_rows.push(e[TIME_LEN..].to_vec());
                out_bounds.push(b);
                out_weights.push(w);
            }
            self.prune_closed(&prefix, &after, &new);
            if let (Some(map), Some(t)) = (self.newest.as_mut(), newest) {
                let slot = map.entry(prefix).or_insert(t);
                *slot = (*slot).max(t);
            }
        }
        self.state.evict_if_needed();
        if out_rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut columns = self.row_codec.decode(out_rows.iter().map(Vec::as_slice))?;
        columns.truncate(self.input_columns);
        for &end in &self.ends {
            let raw: Int64Array = out_bounds.iter().map(|b| b.map(|(s, e)| if end { e } else { s })).collect();
            columns.push(cast(&raw, &self.time_type)?);
        }
        let batch = super::map::with_schema(&self.schema, columns, out_weights.len())?;
        Ok(vec![Changes::new(batch, Int64Array::from(out_weights))])
    }

    fn watermark(&mut self, _input: usize, wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        if self.time_col != Some(wm.col) {
            return Ok(Vec::new());
        }
        let Some(w) = scalar_time(&wm.value) else { return Ok(Vec::new()) };
        self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
        Ok(self
            .ends
            .iter()
            .enumerate()
            .filter(|(_, end)| **end)
            .map(|(j, _)| Watermark { col: self.input_columns + j, value: wm.value.clone() })
            .collect())
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        if let Some(w) = self.watermark.filter(|_| self.prune) {
            if self.newest.is_none() {
                // After a restart: every key's newest time, from state.
                let mut map: HashMap<Vec<u8>, i64> = HashMap::new();
                for (k, _) in self.state.scan_prefix(&[], usize::MAX)? {
                    let (part, entry) = split_len_prefixed(&k)?;
                    if let Some(t) = time_of(entry)? {
                        let mut prefix = Vec::new();
                        push_len_prefixed(&mut prefix, part);
                        let slot = map.entry(prefix).or_insert(t);
                        *slot = (*slot).max(t);
                    }
                }
                self.newest = Some(map);
            }
            let gap = self.gap;
            let closed: Vec<Vec<u8>> = self
                .newest
                .as_ref()
                .map(|m| m.iter().filter(|(_, t)| t.saturating_add(gap) <= w).map(|(p, _)| p.clone()).collect())
                .unwrap_or_default();
            for prefix in closed {
                for (k, _) in self.state.scan_prefix(&prefix, usize::MAX)? {
                    self.state.delete(k);
                }
                if let Some(m) = self.newest.as_mut() {
                    m.remove(&prefix);
                }
            }
        }
        let writes = self.state.take_dirty(epoch);
        self.state.evict_if_needed();
        Ok((Vec::new(), writes))
    }
}
