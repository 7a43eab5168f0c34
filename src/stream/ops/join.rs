//! The equi-join operator: inner, left, right and full outer, semi and
//! anti joins.
//!
//! State per side: its rows by join key (`[side, 0, len, key, row]` →
//! multiplicity) and the number of rows per key (`[side, 1, key]` → count,
//! the "degree"), kept decoded in memory over RocksDB by
//! [`SideIndex`](super::join_state::SideIndex). A batch from one side is
//! joined with the other side's current state and then added to its own
//! (Δ(L⋈R) = ΔL⋈R + L'⋈ΔR, taking the batches in arrival order). Outer joins use the degrees: when a
//! key's degree on one side goes from 0 to more, the other side's rows
//! with that key stop being NULL-padded (the padded rows are retracted and
//! the matches emitted), and back again when it returns to 0. Semi and
//! anti joins emit the kept side's rows on the same transitions. Rows with
//! a NULL in the key never match; on a preserved side they are emitted
//! padded without being stored.
//!
//! **Interval and window joins** (an inner join whose keys or condition
//! bound `right.t - left.t` within `[lo, hi]`, both times carrying
//! watermarks; [`TimeBounds`]) also index each side's rows by time
//! (`[side, 2, time, len, key, row]`). When a watermark arrives a left row is
//! deleted once `t < W_left` (it will not change again) and `t + hi <
//! W_right` (no right row to come can match it), a right row once `t <
//! W_right` and `t - lo < W_left`; nothing is emitted for it. Every later
//! change on a side has a time at or above that side's watermark, so the
//! output is the same as with every row kept, and the state holds only
//! rows that can still match. Outer window joins (bounds from keys alone,
//! `[0, 0]`) expire a key's rows on both sides at the same watermark, when
//! its padded or matched rows are final; they pass a watermark only on a
//! side that is never NULL-padded (the left of a LEFT JOIN).
//!
//! A **temporal join** (`stream JOIN t FOR SYSTEM_TIME AS OF PROCTIME()`,
//! inner or left) looks each stream row up in the table as it is when the
//! row arrives: the table's changes update its state and nothing else (a
//! row already joined keeps the version it met), and stream rows are not
//! stored. Its output is append-only when the stream is. Stream rows that
//! arrive before the operator's first barrier wait for it, so that a new
//! view's back-filled stream meets the whole back-filled table. The
//! stream side's watermarks pass through (after any held rows), so an
//! enriched stream can feed an `EMIT ON WINDOW CLOSE` aggregate.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use super::join_state::SideIndex;
use crate::plan::{JoinKind, PhysExpr, TimeBounds};
use crate::stream::rows::{RowCodec, push_len_prefixed, time_key};
use crate::stream::state::StateTable;
use crate::stream::{Changes, StateWrite, StreamResult};

/// Tags 0 and 1 (rows, degrees) belong to [`SideIndex`].
const TIME_TAG: u8 = 2;

pub struct JoinOp {
    kind: JoinKind,
    keys: [Vec<PhysExpr>; 2],
    key_types: Vec<DataType>,
    key_codec: RowCodec,
    row_codecs: [RowCodec; 2],
    schemas: [SchemaRef; 2],
    out_schema: SchemaRef,
    /// Each side's rows and degrees ([`SideIndex`]).
    sides: [SideIndex; 2],
    /// The interval join's time entries; the prefix and budget of all.
    state: StateTable,
    temporal: bool,
    /// Temporal joins: stream rows that arrived before the first barrier,
    /// looked up at that barrier, once the table's own back-filled rows
    /// (which precede the barrier on its input) are all in.
    held: Option<Vec<Changes>>,
    /// Interval and window joins: the time bounds, and each side's
    /// watermark on its time column (raw, in the column's unit).
    bounds: Option<TimeBounds>,
    watermarks: [Option<i64>; 2],
    /// The last watermark received on each side's time column (its type
    /// for the watermarks passed on), and the last ones passed on.
    received: [Option<datafusion::common::ScalarValue>; 2],
    passed: [Option<i64>; 2],
    pending_watermarks: Vec<crate::stream::Watermark>,
    /// Per side: every row below this time is deleted already.
    expired: [Option<i64>; 2],
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
        bounds: Option<TimeBounds>,
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
            sides: [SideIndex::new(0, state.budget().clone()), SideIndex::new(1, state.budget().clone())],
            state,
            temporal,
            held: temporal.then(Vec::new),
            bounds,
            watermarks: [None, None],
            received: [None, None],
            passed: [None, None],
            pending_watermarks: Vec::new(),
            expired: [None, None],
        })
    }

    /// The time below which `side`'s rows can no longer match: at or below
    /// its own watermark, and too early for any row the other side can
    /// still bring. Rows kept in state and rows still to come are at or
    /// above it, so it is also the watermark of that side's time column in
    /// the join's output.
    fn limit(&self, side: usize) -> Option<i64> {
        let b = self.bounds?;
        let (own, other) = (self.watermarks[side]?, self.watermarks[1 - side]?);
        match side {
            0 => b.hi.map(|hi| own.min(other.saturating_sub(hi))),
            _ => b.lo.map(|lo| own.min(other.saturating_add(lo))),
        }
    }

    /// Queues the output watermarks that moved (see [`Self::limit`]).
    fn pass_watermarks(&mut self) {
        let Some(b) = self.bounds else { return };
        let left_width = self.schemas[0].fields().len();
        for side in 0..2 {
            // A side padded with NULLs (the other side is preserved) has
            // rows without a time: no watermark holds for its column.
            if (side == 0 && self.kind.preserves_right()) || (side == 1 && self.kind.preserves_left()) {
                continue;
            }
            let Some(limit) = self.limit(side) else { continue };
            if self.passed[side].is_some_and(|p| p >= limit) {
                continue;
            }
            let Some(value) = self.received[side].as_ref().and_then(|v| with_time(v, limit)) else { continue };
            self.passed[side] = Some(limit);
            let col = if side == 0 { b.cols[0] } else { left_width + b.cols[1] };
            self.pending_watermarks.push(crate::stream::Watermark { col, value });
        }
    }

    /// Deletes the rows no later change can match or retract (see the
    /// module's doc).
    fn expire(&mut self) -> StreamResult<()> {
        if self.bounds.is_none() {
            return Ok(());
        }
        for side in 0..2 {
            let Some(limit) = self.limit(side) else { continue };
            if self.expired[side].is_some_and(|e| e >= limit) {
                continue;
            }
            // Rows below the last limit are gone, and no row below a
            // side's watermark arrives later.
            let mut from = vec![side as u8, TIME_TAG];
            match self.expired[side] {
                Some(e) => from.extend_from_slice(&time_key(Some(e))),
                None => from.push(1),
            }
            self.expired[side] = Some(limit);
            let mut to = vec![side as u8, TIME_TAG];
            to.extend_from_slice(&time_key(Some(limit)));
            let expired = self.state.scan_range(&from, Some(&to), usize::MAX)?;
            if !expired.is_empty() {
                tracing::debug!(side, rows = expired.len(), "join rows dropped by watermark");
            }
            for (k, _) in expired {
                let rest = &k[2 + 9..];
                let (key, row) = crate::stream::rows::split_len_prefixed(rest)?;
                let count = self.sides[side].count(&self.state, key, row)?;
                if count != 0 {
                    self.sides[side].add(&self.state, key, row, -count)?;
                }
                self.state.delete(k);
            }
        }
        Ok(())
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
/// a stored row of the other side (kept once however many pairs use it),
/// or NULL.
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

    /// Takes stored rows (with their multiplicities) for pairs to use:
    /// their indexes, with the multiplicities.
    fn keep(&mut self, rows: Vec<(Vec<u8>, i64)>) -> Vec<(u32, i64)> {
        rows.into_iter()
            .map(|(row, count)| {
                self.stored.push(row);
                ((self.stored.len() - 1) as u32, count)
            })
            .collect()
    }

    fn push(&mut self, batch_row: Option<usize>, stored: Option<u32>, weight: i64) {
        if weight == 0 {
            return;
        }
        self.batch_idx.push(batch_row.map(|r| r as u32));
        self.stored_idx.push(stored);
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
        let times: Option<Int64Array> = match self.bounds {
            Some(b) => {
                let t = cast(changes.batch.column(b.cols[side]), &DataType::Int64)?;
                Some(t.as_any().downcast_ref::<Int64Array>().cloned().ok_or(crate::stream::StreamError::Corrupt("join times".into()))?)
            }
            None => None,
        };
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
            let other_degree = self.sides[other].degree(&self.state, key)?;
            // The other side's rows, when they are output: matched with
            // this side's (a semi or anti join outputs only one side's).
            let mut other_rows = if other_degree > 0 && emits && kept.is_none() {
                pairs.keep(self.sides[other].rows(&self.state, key)?)
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
                        for &(o, c) in &other_rows {
                            pairs.push(Some(i), Some(o), w * c);
                        }
                        if other_degree == 0 && self.preserved(side) {
                            pairs.push(Some(i), None, w);
                        }
                    }
                }
            }
            if !stores {
                continue;
            }
            // Transitions of this side's degree change the other side's
            // padded (outer) or kept (semi/anti) rows.
            let before = self.sides[side].degree(&self.state, key)?;
            let delta: i64 = members.iter().map(|&i| weights[i]).sum();
            let after = before + delta;
            if (before > 0) != (after > 0) && other_degree > 0 && !self.temporal {
                let now_matched = after > 0;
                let sign_for_other = match kept {
                    Some((s, anti)) if s == other => Some(if now_matched != anti { 1 } else { -1 }),
                    Some(_) => None,
                    None if self.preserved(other) => Some(if now_matched { -1 } else { 1 }),
                    None => None,
                };
                if let Some(sign) = sign_for_other {
                    if other_rows.is_empty() {
                        other_rows = pairs.keep(self.sides[other].rows(&self.state, key)?);
                    }
                    for &(o, c) in &other_rows {
                        pairs.push(None, Some(o), sign * c);
                    }
                }
            }
            // Apply to this side's state.
            for &i in members {
                let row = rows.row(i);
                let (old, c) = self.sides[side].add(&self.state, key, row, weights[i])?;
                if let Some(times) = &times
                    && (old > 0) != (c > 0)
                    && times.is_valid(i)
                {
                    let mut tk = vec![side as u8, TIME_TAG];
                    tk.extend_from_slice(&time_key(Some(times.value(i))));
                    push_len_prefixed(&mut tk, key);
                    tk.extend_from_slice(row);
                    if c > 0 {
                        // The row was absent, so was its time entry.
                        self.state.put_new(tk, Vec::new());
                    } else {
                        self.state.delete(tk);
                    }
                }
            }
        }
        self.sides[side].evict_if_needed();
        self.state.evict_if_needed();
        self.build(side, &changes.batch, pairs)
    }

    fn watermark(&mut self, input: usize, wm: &crate::stream::Watermark) -> StreamResult<Vec<crate::stream::Watermark>> {
        if self.temporal {
            // The stream side's watermark holds for the output (its
            // columns come first). Stream rows held for the first barrier
            // are emitted at it: the watermark waits behind them.
            if input != 0 {
                return Ok(Vec::new());
            }
            if self.held.is_some() {
                self.pending_watermarks.push(wm.clone());
                return Ok(Vec::new());
            }
            return Ok(vec![wm.clone()]);
        }
        if let Some(b) = self.bounds
            && b.cols.get(input) == Some(&wm.col)
            && let Some(v) = crate::stream::ops::session::scalar_time(&wm.value)
        {
            self.watermarks[input] = Some(self.watermarks[input].map_or(v, |old| old.max(v)));
            self.received[input] = Some(wm.value.clone());
            // Rows that can no longer match leave now rather than at the
            // barrier: an epoch can span many watermarks, and state that
            // waits for the barrier grows with it. Their output went out
            // when they arrived, so the watermark passes on at once too.
            self.expire()?;
            self.pass_watermarks();
            return Ok(std::mem::take(&mut self.pending_watermarks));
        }
        Ok(Vec::new())
    }

    fn take_watermarks(&mut self) -> Vec<crate::stream::Watermark> {
        std::mem::take(&mut self.pending_watermarks)
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let mut out = Vec::new();
        if let Some(held) = self.held.take() {
            for changes in held {
                out.extend(self.process(0, changes)?);
            }
        }
        self.expire()?;
        self.pass_watermarks();
        // A side may have shrunk (watermark expiry): look again.
        let mut writes = self.state.take_dirty(epoch);
        for side in &mut self.sides {
            side.recount();
            writes.extend(side.take_dirty(&self.state, epoch));
            side.evict_if_needed();
        }
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

/// `like` (a timestamp watermark) with the raw time `t` in its unit.
fn with_time(like: &datafusion::common::ScalarValue, t: i64) -> Option<datafusion::common::ScalarValue> {
    use datafusion::common::ScalarValue as S;
    Some(match like {
        S::TimestampSecond(_, tz) => S::TimestampSecond(Some(t), tz.clone()),
        S::TimestampMillisecond(_, tz) => S::TimestampMillisecond(Some(t), tz.clone()),
        S::TimestampMicrosecond(_, tz) => S::TimestampMicrosecond(Some(t), tz.clone()),
        S::TimestampNanosecond(_, tz) => S::TimestampNanosecond(Some(t), tz.clone()),
        _ => return None,
    })
}


#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::Watermark;
    use crate::stream::state::CacheBudget;

    const MINUTE: i64 = 60_000_000;

    fn batch(schema: &SchemaRef, rows: &[(i64, i64)], weight: i64) -> Changes {
        let ids = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let ws = TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(ws)]).unwrap();
        Changes::new(b, Int64Array::from(vec![weight; rows.len()]))
    }

    fn weights(out: &[Changes]) -> Vec<i64> {
        out.iter().flat_map(|c| c.weights.values().to_vec()).collect()
    }

    /// A LEFT window join (`ON l.id = r.id AND l.ws = r.ws`): once both
    /// watermarks pass a window, its rows leave both sides' state with
    /// nothing emitted; the left window column's watermark passes on, the
    /// right's (NULL in padded rows) does not.
    #[test]
    fn outer_window_join_forgets_closed_windows() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(rocksdb::DB::open_default(dir.path()).unwrap());
        let side: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ws", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let fields: Vec<Field> = side.fields().iter().chain(side.fields().iter()).map(|f| f.as_ref().clone()).collect();
        let out_schema = Arc::new(Schema::new(fields));
        let keys = || -> Vec<PhysExpr> { vec![Arc::new(Column::new("id", 0)), Arc::new(Column::new("ws", 1))] };
        let bounds = TimeBounds { cols: [1, 1], lo: Some(0), hi: Some(0) };
        let state = StateTable::new(db, b"j".to_vec(), CacheBudget::new(1 << 20));
        let mut op = JoinOp::new(JoinKind::Left, keys(), keys(), [side.clone(), side.clone()], out_schema, state, false, Some(bounds)).unwrap();

        let out = op.process(0, batch(&side, &[(1, 0), (2, 0), (3, MINUTE)], 1)).unwrap();
        assert_eq!(weights(&out), vec![1, 1, 1], "three padded rows");
        let out = op.process(1, batch(&side, &[(1, 0)], 1)).unwrap();
        assert_eq!(weights(&out).iter().sum::<i64>(), 0, "the padded row gives way to the match");
        assert_eq!(out.iter().map(|c| c.len()).sum::<usize>(), 2);

        let wm = |v: i64| Watermark { col: 1, value: ScalarValue::TimestampMicrosecond(Some(v), None) };
        assert!(op.watermark(0, &wm(MINUTE)).unwrap().is_empty(), "the right side's watermark is still unknown");
        let passed = op.watermark(1, &wm(MINUTE)).unwrap();
        assert_eq!(passed.iter().map(|w| w.col).collect::<Vec<_>>(), vec![1], "only the left window column's");
        op.barrier(1).unwrap();
        let times = op.state.scan_prefix(&[], usize::MAX).unwrap();
        assert_eq!(times.len(), 1, "only order 3's time entry stays: {times:?}");
        assert_eq!((op.sides[0].live_rows(), op.sides[1].live_rows()), (1, 0), "and its row");

        // The open window still pads and matches.
        let out = op.process(1, batch(&side, &[(3, MINUTE)], 1)).unwrap();
        assert_eq!(weights(&out), vec![1, -1], "the match in, the padded row out");
    }
}
