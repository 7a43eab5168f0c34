//! The GROUP BY operator (also DISTINCT, which is a GROUP BY on every
//! column without aggregates).
//!
//! Input is pre-aggregated: rows are mapped to their groups (Arrow row
//! format keys, one hash lookup per row; a single integer key by value,
//! through an array when its values are dense) and every aggregate's
//! weighted delta is summed per group in one columnar pass (into a column
//! per accumulator field, `Deltas`), across all batches of
//! the epoch. Only at the barrier (or when 64k groups are pending) is state
//! touched — once per group — and the changed output rows emitted; state
//! is written once per group per epoch. Per group the state holds the row count and one
//! accumulator per aggregate:
//!
//! | aggregate | accumulator |
//! |---|---|
//! | count(x) | non-null count |
//! | sum, avg | sum (i128 or f64) and non-null count |
//! | min, max | non-null count and the current extreme; plus a multiset value → count |
//! | count(DISTINCT x) | distinct count; plus a multiset value → count |
//! | bool_and, bool_or | true count and false count |
//!
//! so every aggregate retracts exactly: MIN/MAX losing their extreme find
//! the next one as the first key of the group's multiset in RocksDB order.
//! On append-only input (a source, an APPEND ONLY table, an append-only
//! view: nothing can retract) MIN/MAX keep no multiset: the extreme only
//! ever improves, so the batch's best value per group is compared with the
//! stored one and nothing else is written.
//! For each touched group the operator emits the old output row (-1) and
//! the new one (+1) when they differ. A global aggregate (no GROUP BY)
//! always has exactly one row, emitted at the first barrier if no input
//! came.
//!
//! **Windows**: when the first group column is a window with a watermark
//! ([`crate::plan::WindowAgg`]), the group keys sort by window first, so
//! the groups of windows the watermark has passed are a key range. At each
//! barrier those groups are closed: with EMIT ON WINDOW CLOSE their final
//! row is emitted (once, append-only; nothing is emitted before), and in
//! both modes their state is deleted, so state holds open windows only.
//! A watermark that passes the end of an open window closes it at once
//! (pending deltas applied, rows emitted, the watermark passed on) rather
//! than at the next barrier: an epoch can span many windows, and operators
//! downstream (a join pruning by the window's watermark) would otherwise
//! hold every row of the epoch.

use std::collections::HashMap;

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, UInt32Array,
    new_null_array,
};
use datafusion::arrow::compute::{SortOptions, cast, take};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef};
use datafusion::common::ScalarValue;

use super::Operator;
use crate::plan::{AggKind, AggSpec, PhysExpr, WindowAgg};
use crate::stream::rows::{RowCodec, decode_count, encode_count, push_len_prefixed};
use crate::stream::state::{StateTable, compact_key_list};
use crate::stream::{Changes, StateWrite, StreamError, StreamResult, Watermark};

const GROUP_TAG: u8 = 0;
const MULTISET_TAG: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq)]
struct Acc {
    a: i64,
    b: i64,
    int: i128,
    float: f64,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct GroupState {
    rows: i64,
    accs: Vec<Acc>,
}

impl GroupState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.accs.len() * 48);
        out.extend_from_slice(&self.rows.to_le_bytes());
        for a in &self.accs {
            out.extend_from_slice(&a.a.to_le_bytes());
            out.extend_from_slice(&a.b.to_le_bytes());
            out.extend_from_slice(&a.int.to_le_bytes());
            out.extend_from_slice(&a.float.to_le_bytes());
            match &a.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    push_len_prefixed(&mut out, v);
                }
            }
        }
        out
    }

    fn decode(buf: &[u8], n: usize) -> StreamResult<Self> {
        let bad = || StreamError::Corrupt("aggregate state".into());
        let take = |buf: &mut &[u8], k: usize| -> StreamResult<Vec<u8>> {
            let (h, t) = buf.split_at_checked(k).ok_or_else(bad)?;
            *buf = t;
            Ok(h.to_vec())
        };
        let mut buf = buf;
        let i64_of = |v: Vec<u8>| -> StreamResult<i64> { Ok(i64::from_le_bytes(v.try_into().map_err(|_| bad())?)) };
        let rows = i64_of(take(&mut buf, 8)?)?;
        let mut accs = Vec::with_capacity(n);
        for _ in 0..n {
            let a = i64_of(take(&mut buf, 8)?)?;
            let b = i64_of(take(&mut buf, 8)?)?;
            let int = i128::from_le_bytes(take(&mut buf, 16)?.try_into().map_err(|_| bad())?);
            let float = f64::from_le_bytes(take(&mut buf, 8)?.try_into().map_err(|_| bad())?);
            let flag = take(&mut buf, 1)?[0];
            let value = if flag == 1 {
                let len = u32::from_be_bytes(take(&mut buf, 4)?.try_into().map_err(|_| bad())?) as usize;
                Some(take(&mut buf, len)?)
            } else {
                None
            };
            accs.push(Acc { a, b, int, float, value });
        }
        Ok(Self { rows, accs })
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A cached group: its decoded state (`None`: known not to exist).
struct Slot {
    state: Option<GroupState>,
    dirty: bool,
    /// The epoch whose checkpoint wrote it (0: read from RocksDB).
    epoch: u64,
    /// RocksDB holds a state for the group, or will once a checkpoint
    /// handed one is durable: a group without it may leave memory as soon
    /// as it has no state (nothing to delete).
    stored: bool,
}

/// Approximate heap bytes of a cached group (hash table entry, key and
/// accumulator allocations, malloc rounding), measured, not guessed low:
/// the budget is only as good as this estimate.
fn slot_size(key: &[u8], n_aggs: usize, windowed: bool) -> usize {
    // A windowed aggregate also keeps the key in its ordered index.
    key.len() + 144 + n_aggs * 88 + if windowed { key.len() + 48 } else { 0 }
}

pub struct AggregateOp {
    group: Vec<PhysExpr>,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    group_codec: RowCodec,
    /// Per aggregate: the codec of its values (min/max/count distinct).
    value_codecs: Vec<Option<RowCodec>>,
    /// Multisets (and, through `groups`, the durable group states).
    state: StateTable,
    /// Decoded group states: the hot set, written once per epoch.
    groups: FastMap<Vec<u8>, Slot>,
    dirty: Vec<Vec<u8>>,
    bytes: usize,
    global_checked: bool,
    /// This epoch's input, pre-aggregated per group, not yet applied.
    pending: Pending,
    window: Option<WindowState>,
    /// The input never retracts: MIN/MAX keep only their extreme.
    append_only: bool,
    evict_memo: crate::stream::state::EvictMemo,
}

/// A windowed GROUP BY's watermark bookkeeping.
struct WindowState {
    spec: WindowAgg,
    /// The aggregate's input schema (to derive the window's watermark).
    input: SchemaRef,
    /// Encodes a window value as the first column of a group key.
    codec: RowCodec,
    /// Windows below this value close at the next barrier.
    watermark: Option<ScalarValue>,
    /// Encoded bound below which every group is closed already.
    closed_below: Option<Vec<u8>>,
    /// Passed on after the barrier that closed the windows.
    emit: Option<Watermark>,
    /// Output of windows closed on a watermark, before the barrier.
    early: Vec<Changes>,
    /// The keys of `groups` in order (window first), so that closing a
    /// window finds its cached groups without looking at every group.
    cached: std::collections::BTreeSet<Vec<u8>>,
}

/// Input deltas accumulated since the last flush: group → index.
#[derive(Default)]
struct Pending {
    index: FastMap<Vec<u8>, usize>,
    /// The same index by value when the only group column is an integer
    /// (not windowed): no key encoding or byte comparison per row.
    int_index: FastMap<Option<i64>, usize>,
    /// The integer keys of a dense range, by array position instead of
    /// by hash (`int_index` holds only keys outside its range).
    dense: DenseIndex,
    order: Vec<Vec<u8>>,
    deltas: Deltas,
    /// Per aggregate: group index → value → weight (min/max/distinct).
    multisets: Vec<HashMap<usize, HashMap<Vec<u8>, i64>>>,
}

/// Group numbers of integer keys in an array over `[base, base + len)`
/// (0: no group yet, else the group's number + 1). When a batch's keys
/// are dense (10k keys: a 40 KB array) a row's group is one array read,
/// not a hash probe whose buckets miss the cache.
#[derive(Default)]
struct DenseIndex {
    base: i64,
    slots: Vec<u32>,
}

/// The most slots of a [`DenseIndex`] (4 MB), and the most per group it
/// may come to hold: sparser keys stay in the hash index.
const DENSE_MAX_SLOTS: u64 = 1 << 20;
const DENSE_SLOTS_PER_GROUP: u64 = 16;

impl DenseIndex {
    fn contains(&self, v: i64) -> bool {
        v >= self.base && ((v as i128 - self.base as i128) as u128) < self.slots.len() as u128
    }

    /// Widens the range to take in `[lo, hi]` if it stays within the
    /// limits for `groups` groups at most, moving the keys of `hashed`
    /// that fall in it. Whether the range now covers `[lo, hi]`.
    fn cover(&mut self, lo: i64, hi: i64, groups: usize, hashed: &mut FastMap<Option<i64>, usize>) -> bool {
        if self.contains(lo) && self.contains(hi) {
            return true;
        }
        let (new_lo, new_hi) = match self.slots.is_empty() {
            true => (lo, hi),
            false => (lo.min(self.base), hi.max(self.base + (self.slots.len() as i64 - 1))),
        };
        let span = (new_hi as i128 - new_lo as i128 + 1) as u128;
        if span > u128::from(DENSE_MAX_SLOTS) || span > u128::from(DENSE_SLOTS_PER_GROUP * groups.max(1) as u64) {
            return false;
        }
        let mut slots = vec![0u32; span as usize];
        let shift = (self.base as i128 - new_lo as i128) as usize;
        if !self.slots.is_empty() {
            slots[shift..shift + self.slots.len()].copy_from_slice(&self.slots);
        }
        self.base = new_lo;
        self.slots = slots;
        hashed.retain(|k, g| match k {
            Some(v) if self.contains(*v) => {
                self.slots[(*v - self.base) as usize] = *g as u32 + 1;
                false
            }
            _ => true,
        });
        true
    }
}

/// Groups pre-aggregated before the operator applies them mid-epoch.
const MAX_PENDING_GROUPS: usize = 65_536;

impl AggregateOp {
    pub fn new(
        group: Vec<PhysExpr>,
        aggs: Vec<AggSpec>,
        schema: SchemaRef,
        state: StateTable,
        window: Option<(WindowAgg, SchemaRef)>,
        append_only: bool,
    ) -> StreamResult<Self> {
        let group_types: Vec<DataType> =
            schema.fields().iter().take(group.len()).map(|f| f.data_type().clone()).collect();
        let group_codec = RowCodec::new(&group_types)?;
        let value_codecs = aggs
            .iter()
            .map(|a| match a.kind {
                AggKind::Min | AggKind::CountDistinct => {
                    RowCodec::with_options(vec![(a.input_type.clone(), SortOptions::default())]).map(Some)
                }
                AggKind::Max => RowCodec::with_options(vec![(
                    a.input_type.clone(),
                    SortOptions { descending: true, nulls_first: false },
                )])
                .map(Some),
                _ => Ok(None),
            })
            .collect::<StreamResult<Vec<_>>>()?;
        let window = match (window, schema.fields().first()) {
            (Some((spec, input)), Some(f)) => Some(WindowState {
                spec,
                input,
                codec: RowCodec::new(std::slice::from_ref(f.data_type()))?,
                watermark: None,
                closed_below: None,
                emit: None,
                early: Vec::new(),
                cached: Default::default(),
            }),
            _ => None,
        };
        Ok(Self {
            window,
            group,
            aggs,
            schema,
            group_codec,
            value_codecs,
            state,
            groups: FastMap::default(),
            dirty: Vec::new(),
            bytes: 0,
            global_checked: false,
            pending: Pending::default(),
            append_only,
            evict_memo: Default::default(),
        })
    }

    fn is_global(&self) -> bool {
        self.group.is_empty()
    }

    fn group_key(group: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(group.len() + 1);
        k.push(GROUP_TAG);
        k.extend_from_slice(group);
        k
    }

    fn multiset_prefix(agg: usize, group: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(group.len() + 6);
        k.push(MULTISET_TAG);
        k.push(agg as u8);
        push_len_prefixed(&mut k, group);
        k
    }

    /// A group's current state (cached, else read from RocksDB).
    fn load(&mut self, group: &[u8]) -> StreamResult<Option<GroupState>> {
        if let Some(slot) = self.groups.get(group) {
            return Ok(slot.state.clone());
        }
        let state = match self.state.read_committed(&Self::group_key(group))? {
            Some(v) => Some(GroupState::decode(&v, self.aggs.len())?),
            None => None,
        };
        self.cache_new(group, Slot { stored: state.is_some(), state: state.clone(), dirty: false, epoch: 0 });
        Ok(state)
    }

    /// Caches a group not cached yet: its memory is counted, and a
    /// windowed aggregate's ordered index gets its key.
    fn cache_new(&mut self, group: &[u8], slot: Slot) {
        let size = slot_size(group, self.aggs.len(), self.window.is_some());
        self.bytes += size;
        self.state.budget().adjust(size, 0);
        self.groups.insert(group.to_vec(), slot);
        if let Some(w) = &mut self.window {
            w.cached.insert(group.to_vec());
        }
    }

    /// Drops a group that has no state and never had any in RocksDB from
    /// memory at once, not at the barrier: an epoch can span many windows
    /// (a new view's backfill is one epoch), and the closed windows' groups
    /// would otherwise stay until it ends.
    fn forget_if_unstored(&mut self, group: &[u8]) {
        if !self.groups.get(group).is_some_and(|s| s.state.is_none() && !s.stored) {
            return;
        }
        self.groups.remove(group);
        let size = slot_size(group, self.aggs.len(), self.window.is_some());
        self.bytes = self.bytes.saturating_sub(size);
        self.state.budget().adjust(0, size);
        if let Some(w) = &mut self.window {
            w.cached.remove(group);
        }
        // The list of dirty groups names it until the barrier.
        let groups = &self.groups;
        compact_key_list(&mut self.dirty, 65_536, groups.len(), |g| groups.get(g).is_some_and(|s| s.dirty));
    }

    fn store(&mut self, group: &[u8], state: Option<GroupState>) {
        match self.groups.get_mut(group) {
            Some(slot) => {
                slot.state = state;
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(group.to_vec());
                }
            }
            None => {
                // Not cached: RocksDB may hold it (a closing window's evicted
                // group), so its state, even none, must be written.
                self.cache_new(group, Slot { state, dirty: true, epoch: 0, stored: true });
                self.dirty.push(group.to_vec());
            }
        }
    }

    /// Drops clean groups whose checkpoint is durable while over budget.
    fn evict_if_needed(&mut self) {
        self.state.evict_if_needed();
        let budget = self.state.budget().clone();
        let n_aggs = self.aggs.len();
        let (groups, window) = (&mut self.groups, &mut self.window);
        let windowed = window.is_some();
        self.evict_memo.pass(&budget, &mut self.bytes, |committed, target| {
            let mut freed = 0usize;
            groups.retain(|k, slot| {
                if freed >= target || slot.dirty || slot.epoch > committed {
                    return true;
                }
                freed += slot_size(k, n_aggs, windowed);
                false
            });
            if let Some(w) = window
                && freed > 0
            {
                w.cached.retain(|k| groups.contains_key(k));
            }
            freed
        });
    }

    /// One output value from a group's state (the general path).
    fn output(&self, i: usize, spec: &AggSpec, acc: &Acc) -> StreamResult<ScalarValue> {
        let null = || ScalarValue::try_from(&spec.output_type);
        let v = match spec.kind {
            AggKind::Count | AggKind::CountDistinct => ScalarValue::Int64(Some(acc.a)),
            AggKind::Sum if acc.a == 0 => null()?,
            AggKind::Sum => match &spec.output_type {
                DataType::Float64 | DataType::Float32 => ScalarValue::Float64(Some(acc.float)),
                DataType::Decimal128(p, s) => ScalarValue::Decimal128(Some(acc.int), *p, *s),
                DataType::UInt64 => ScalarValue::UInt64(Some(acc.int as u64)),
                _ => ScalarValue::Int64(Some(acc.int as i64)),
            },
            AggKind::Avg if acc.a == 0 => null()?,
            AggKind::Avg => match (&spec.output_type, &spec.input_type) {
                (DataType::Decimal128(p, s_out), DataType::Decimal128(_, s_in)) => {
                    let shift = i32::from(*s_out) - i32::from(*s_in);
                    let factor = 10i128.checked_pow(shift.unsigned_abs()).ok_or_else(|| overflow("avg"))?;
                    let scaled = if shift >= 0 {
                        acc.int.checked_mul(factor).ok_or_else(|| overflow("avg"))?
                    } else {
                        acc.int / factor
                    };
                    ScalarValue::Decimal128(Some(scaled / i128::from(acc.a)), *p, *s_out)
                }
                (_, t) if t.is_floating() => ScalarValue::Float64(Some(acc.float / acc.a as f64)),
                _ => ScalarValue::Float64(Some(acc.int as f64 / acc.a as f64)),
            },
            AggKind::Min | AggKind::Max => match (&acc.value, &self.value_codecs[i]) {
                (Some(bytes), Some(codec)) => {
                    let cols = codec.decode([bytes.as_slice()])?;
                    ScalarValue::try_from_array(&cols[0], 0)?
                }
                _ => null()?,
            },
            AggKind::BoolAnd if acc.a + acc.b == 0 => null()?,
            AggKind::BoolAnd => ScalarValue::Boolean(Some(acc.b == 0)),
            AggKind::BoolOr if acc.a + acc.b == 0 => null()?,
            AggKind::BoolOr => ScalarValue::Boolean(Some(acc.a > 0)),
        };
        if v.data_type() != spec.output_type {
            return Ok(v.cast_to(&spec.output_type)?);
        }
        Ok(v)
    }

    /// One output column for aggregate `j` over the emitted states
    /// (columnar for the common types).
    fn output_column(&self, j: usize, states: &[GroupState]) -> StreamResult<ArrayRef> {
        let spec = &self.aggs[j];
        let accs = states.iter().map(|s| &s.accs[j]);
        let array: ArrayRef = match (spec.kind, &spec.output_type) {
            (AggKind::Count | AggKind::CountDistinct, _) => Arc::new(Int64Array::from_iter_values(accs.map(|a| a.a))),
            (AggKind::Sum, DataType::Int64) => {
                Arc::new(Int64Array::from_iter(accs.map(|a| (a.a != 0).then_some(a.int as i64))))
            }
            (AggKind::Sum, DataType::Float64) => {
                Arc::new(Float64Array::from_iter(accs.map(|a| (a.a != 0).then_some(a.float))))
            }
            (AggKind::Sum, DataType::Decimal128(p, s)) => Arc::new(
                Decimal128Array::from_iter(accs.map(|a| (a.a != 0).then_some(a.int))).with_precision_and_scale(*p, *s)?,
            ),
            (AggKind::Avg, DataType::Float64) if !matches!(spec.input_type, DataType::Decimal128(..)) => {
                let float = spec.input_type.is_floating();
                Arc::new(Float64Array::from_iter(accs.map(|a| {
                    (a.a != 0).then(|| if float { a.float } else { a.int as f64 } / a.a as f64)
                })))
            }
            (AggKind::BoolAnd, _) => {
                Arc::new(BooleanArray::from_iter(accs.map(|a| (a.a + a.b != 0).then_some(a.b == 0))))
            }
            (AggKind::BoolOr, _) => {
                Arc::new(BooleanArray::from_iter(accs.map(|a| (a.a + a.b != 0).then_some(a.a > 0))))
            }
            (AggKind::Min | AggKind::Max, _) => {
                let codec = self.value_codecs[j].as_ref().ok_or_else(|| StreamError::Corrupt("value codec".into()))?;
                let present: Vec<&[u8]> = states.iter().filter_map(|s| s.accs[j].value.as_deref()).collect();
                if present.is_empty() {
                    new_null_array(&spec.input_type, states.len())
                } else {
                    let values = codec.decode(present)?;
                    let mut next = 0u32;
                    let idx: UInt32Array = states
                        .iter()
                        .map(|s| {
                            s.accs[j].value.as_ref().map(|_| {
                                next += 1;
                                next - 1
                            })
                        })
                        .collect();
                    take(values[0].as_ref(), &idx, None)?
                }
            }
            _ => {
                let values = states.iter().map(|s| self.output(j, spec, &s.accs[j])).collect::<StreamResult<Vec<_>>>()?;
                ScalarValue::iter_to_array(values)?
            }
        };
        if array.data_type() != &spec.output_type {
            return Ok(cast(&array, &spec.output_type)?);
        }
        Ok(array)
    }

    fn empty_state(&self) -> GroupState {
        GroupState { rows: 0, accs: vec![Acc::default(); self.aggs.len()] }
    }

    /// Emits the global aggregate's row once, even with no input.
    fn ensure_global(&mut self, out: &mut Emitted) -> StreamResult<()> {
        if !self.is_global() || self.global_checked {
            return Ok(());
        }
        self.global_checked = true;
        if self.load(&[])?.is_none() {
            let s = self.empty_state();
            out.push(Vec::new(), s.clone(), 1);
            self.store(&[], Some(s));
        }
        Ok(())
    }

    fn build(&self, out: Emitted) -> StreamResult<Vec<Changes>> {
        if out.weights.is_empty() {
            return Ok(Vec::new());
        }
        let n = out.weights.len();
        let mut columns: Vec<ArrayRef> = self.group_codec.decode(out.groups.iter().map(Vec::as_slice))?;
        for j in 0..self.aggs.len() {
            columns.push(self.output_column(j, &out.states)?);
        }
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(vec![Changes::new(batch, Int64Array::from(out.weights))])
    }
}

fn overflow(what: &str) -> StreamError {
    StreamError::Failed(format!("numeric value out of range in {what}"))
}

#[derive(Default)]
struct Emitted {
    groups: Vec<Vec<u8>>,
    states: Vec<GroupState>,
    weights: Vec<i64>,
}

impl Emitted {
    fn push(&mut self, group: Vec<u8>, state: GroupState, weight: i64) {
        self.groups.push(group);
        self.states.push(state);
        self.weights.push(weight);
    }
}

/// The pending deltas of every group as a struct of arrays: a column per
/// field, indexed by the group's number. The per-row loops of a batch
/// touch one compact array per aggregate field, which for 10k groups
/// stays in a core's L2 cache; a `Vec<Acc>` per group (64 bytes per
/// aggregate behind a pointer) made nearly every row a cache miss: count
/// + sum by 10k keys took 76 ns per row.
#[derive(Default)]
struct Deltas {
    rows: Vec<i64>,
    accs: Vec<AccColumn>,
}

/// One aggregate's pending deltas, a column per [`Acc`] field.
#[derive(Default)]
struct AccColumn {
    a: Vec<i64>,
    b: Vec<i64>,
    int: Vec<i128>,
    float: Vec<f64>,
    value: Vec<Option<Vec<u8>>>,
}

impl AccColumn {
    fn push(&mut self, acc: Acc) {
        self.a.push(acc.a);
        self.b.push(acc.b);
        self.int.push(acc.int);
        self.float.push(acc.float);
        self.value.push(acc.value);
    }

    /// Group `g`'s delta (its value moved out).
    fn take(&mut self, g: usize) -> Acc {
        Acc { a: self.a[g], b: self.b[g], int: self.int[g], float: self.float[g], value: self.value[g].take() }
    }
}

impl Deltas {
    /// Appends an empty delta for a new group.
    fn push_empty(&mut self, n_aggs: usize) {
        self.accs.resize_with(n_aggs, AccColumn::default);
        self.rows.push(0);
        for col in &mut self.accs {
            col.push(Acc::default());
        }
    }

    /// Removes group `g`; the last group takes its place.
    fn swap_remove(&mut self, g: usize) {
        self.rows.swap_remove(g);
        for col in &mut self.accs {
            col.a.swap_remove(g);
            col.b.swap_remove(g);
            col.int.swap_remove(g);
            col.float.swap_remove(g);
            col.value.swap_remove(g);
        }
    }

    /// Appends group `g` of `from` (its values moved out).
    fn push_from(&mut self, from: &mut Deltas, g: usize) {
        self.accs.resize_with(from.accs.len(), AccColumn::default);
        self.rows.push(from.rows[g]);
        for (to, col) in self.accs.iter_mut().zip(&mut from.accs) {
            to.push(col.take(g));
        }
    }
}

impl Pending {
    /// A new group with an empty delta; its index.
    fn add(&mut self, key: Vec<u8>, n_aggs: usize) -> usize {
        let g = self.order.len();
        self.index.insert(key.clone(), g);
        self.order.push(key);
        self.deltas.push_empty(n_aggs);
        g
    }

    /// Moves the groups whose key is at or above `bound` (windows still
    /// open: the window is the key's first column) into a new `Pending`,
    /// keeping the ones below. Only the closing groups move (most of the
    /// pending groups are usually in open windows: rebuilding the whole
    /// index at every window edge was a fifth of q5's CPU).
    fn split_off_from(&mut self, bound: &[u8]) -> Pending {
        let closing: Vec<usize> =
            self.order.iter().enumerate().filter(|(_, k)| k.as_slice() < bound).map(|(g, _)| g).collect();
        if closing.is_empty() {
            return std::mem::take(self);
        }
        if closing.len() == self.order.len() {
            return Pending::default();
        }
        let mut closed = Pending { multisets: vec![HashMap::new(); self.multisets.len()], ..Pending::default() };
        // Highest first, so that the group swapped into a freed place is
        // never one still to move.
        for &g in closing.iter().rev() {
            self.swap_remove_into(g, &mut closed);
        }
        std::mem::replace(self, closed)
    }

    /// Moves group `g` to the end of `to`; the last group takes its place.
    fn swap_remove_into(&mut self, g: usize, to: &mut Pending) {
        let last = self.order.len() - 1;
        let idx = to.order.len();
        to.deltas.push_from(&mut self.deltas, g);
        self.deltas.swap_remove(g);
        for (j, m) in self.multisets.iter_mut().enumerate() {
            if let Some(values) = m.remove(&g) {
                to.multisets[j].insert(idx, values);
            }
            if g != last {
                if let Some(values) = m.remove(&last) {
                    m.insert(g, values);
                }
            }
        }
        let key = self.order.swap_remove(g);
        self.index.remove(&key);
        if g != last {
            if let Some(i) = self.index.get_mut(&self.order[g]) {
                *i = g;
            }
        }
        to.index.insert(key.clone(), idx);
        to.order.push(key);
    }
}

impl AggregateOp {
    /// Adds a batch to the pending per-group deltas (one hash lookup or array read per
    /// row, one columnar pass per aggregate).
    fn accumulate_batch(&mut self, changes: &Changes) -> StreamResult<()> {
        let n = changes.len();
        let weights = changes.weights.values();
        let group_cols = self
            .group
            .iter()
            .map(|e| e.evaluate(&changes.batch).and_then(|v| v.into_array(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let n_aggs = self.aggs.len();
        if self.pending.multisets.len() != n_aggs {
            self.pending.multisets = vec![HashMap::new(); n_aggs];
        }
        self.pending.deltas.accs.resize_with(n_aggs, AccColumn::default);
        let mut group_of = Vec::with_capacity(n);
        let int_key = match group_cols.as_slice() {
            [c] if self.window.is_none() && c.data_type().is_integer() && c.data_type() != &DataType::UInt64 => {
                Some(cast(c, &DataType::Int64)?)
            }
            _ => None,
        };
        if let Some(ints) = &int_key {
            let ints = ints.as_primitive::<Int64Type>();
            let p = &mut self.pending;
            if let (Some(lo), Some(hi)) = (datafusion::arrow::compute::min(ints), datafusion::arrow::compute::max(ints)) {
                p.dense.cover(lo, hi, p.order.len() + n, &mut p.int_index);
            }
            for i in 0..n {
                let v = ints.is_valid(i).then(|| ints.value(i));
                // The key's place in the dense array, if it has one; else
                // the hash index holds it.
                let slot = v.filter(|v| p.dense.contains(*v)).map(|v| (v - p.dense.base) as usize);
                let known = match slot {
                    Some(s) => p.dense.slots[s].checked_sub(1).map(|g| g as usize),
                    None => p.int_index.get(&v).copied(),
                };
                let g = match known {
                    Some(g) => g,
                    None => {
                        let k = self.group_codec.encode(&[group_cols[0].slice(i, 1)], 1)?.row(0).to_vec();
                        let g = p.add(k, n_aggs);
                        match slot {
                            Some(s) => p.dense.slots[s] = g as u32 + 1,
                            None => {
                                p.int_index.insert(v, g);
                            }
                        }
                        g
                    }
                };
                p.deltas.rows[g] += weights[i];
                group_of.push(g);
            }
        } else {
            let keys = self.group_codec.encode(&group_cols, n)?;
            let p = &mut self.pending;
            for i in 0..n {
                let k = keys.row(i);
                let g = match p.index.get(k) {
                    Some(&g) => g,
                    None => p.add(k.to_vec(), n_aggs),
                };
                p.deltas.rows[g] += weights[i];
                group_of.push(g);
            }
        }
        let p = &mut self.pending;
        for (j, spec) in self.aggs.iter().enumerate() {
            let arg = spec.arg.evaluate(&changes.batch)?.into_array(n)?;
            let multiset = keeps_multiset(spec, self.append_only).then_some(&mut p.multisets[j]);
            let col = &mut p.deltas.accs[j];
            accumulate(spec, &arg, weights, &group_of, col, self.value_codecs[j].as_ref(), multiset)?;
        }
        Ok(())
    }

    /// Applies the pending deltas to the groups' state (once per group)
    /// and emits the changed output rows.
    fn flush_pending(&mut self, out: &mut Emitted) -> StreamResult<()> {
        let Pending { order, mut deltas, mut multisets, .. } = std::mem::take(&mut self.pending);
        deltas.accs.resize_with(self.aggs.len(), AccColumn::default);
        if multisets.len() != self.aggs.len() {
            multisets = vec![HashMap::new(); self.aggs.len()];
        }
        let global = self.is_global();
        for (g, group) in order.iter().enumerate() {
            let old = self.load(group)?;
            let mut s = old.clone().unwrap_or_else(|| self.empty_state());
            s.rows += deltas.rows[g];
            for (j, spec) in self.aggs.iter().enumerate() {
                let acc = &mut s.accs[j];
                let da = &deltas.accs[j].take(g);
                match spec.kind {
                    AggKind::Count | AggKind::Sum | AggKind::Avg | AggKind::BoolAnd | AggKind::BoolOr => {
                        acc.a += da.a;
                        acc.b += da.b;
                        acc.int = acc.int.wrapping_add(da.int);
                        acc.float += da.float;
                        if matches!(spec.kind, AggKind::Sum | AggKind::Avg) && acc.a == 0 {
                            // No values left: drop any float rounding residue.
                            acc.int = 0;
                            acc.float = 0.0;
                        }
                    }
                    AggKind::Min | AggKind::Max | AggKind::CountDistinct => {
                        acc.a += da.a;
                        if self.append_only && spec.kind != AggKind::CountDistinct {
                            // Encoded so that the extreme sorts first.
                            if let Some(v) = &da.value
                                && acc.value.as_ref().is_none_or(|cur| v < cur)
                            {
                                acc.value = Some(v.clone());
                            }
                        }
                    }
                }
            }
            // Multisets of this group.
            for (j, spec) in self.aggs.iter().enumerate() {
                if !keeps_multiset(spec, self.append_only) {
                    continue;
                }
                let prefix = Self::multiset_prefix(j, group);
                let mut touched = false;
                // MIN/MAX: the extreme moves to a value that appears, or
                // must be looked up only when the current one goes away.
                let current = s.accs[j].value.clone();
                let mut lost = false;
                let mut best_new: Option<Vec<u8>> = None;
                let entries = multisets[j].remove(&g).unwrap_or_default();
                for (value, w) in entries {
                    if w == 0 {
                        continue;
                    }
                    let mut key = prefix.clone();
                    key.extend_from_slice(&value);
                    let before = match self.state.get(&key)? {
                        Some(v) => decode_count(&v)?,
                        None => 0,
                    };
                    let after = before + w;
                    if after > 0 {
                        self.state.put(key, encode_count(after));
                    } else {
                        self.state.delete(key);
                    }
                    if spec.kind == AggKind::CountDistinct {
                        s.accs[j].a += i64::from(after > 0) - i64::from(before > 0);
                    }
                    if before > 0 && after <= 0 && current.as_deref() == Some(&value[..]) {
                        lost = true;
                    }
                    if before <= 0 && after > 0 && best_new.as_ref().is_none_or(|b| value < *b) {
                        best_new = Some(value);
                    }
                    touched = true;
                }
                if touched && spec.kind != AggKind::CountDistinct {
                    // Values are encoded so that the extreme sorts first.
                    s.accs[j].value = match (current, lost) {
                        (Some(cur), false) => Some(match best_new {
                            Some(b) if b < cur => b,
                            _ => cur,
                        }),
                        _ => {
                            let first = self.state.scan_prefix(&prefix, 1)?;
                            first.into_iter().next().map(|(k, _)| k[prefix.len()..].to_vec())
                        }
                    };
                }
            }
            if s.rows < 0 {
                return Err(StreamError::Corrupt("a group's row count went below zero".into()));
            }
            let old_visible = old.filter(|o| o.rows > 0 || global);
            let new_visible = s.rows > 0 || global;
            let changed = match &old_visible {
                Some(o) => !new_visible || o.accs != s.accs || global,
                None => new_visible,
            };
            if changed {
                if let Some(o) = old_visible {
                    out.push(group.to_vec(), o, -1);
                }
                if new_visible {
                    out.push(group.to_vec(), s.clone(), 1);
                }
            }
            self.store(group, if s.rows == 0 && !global { None } else { Some(s) });
        }
        self.evict_if_needed();
        Ok(())
    }
}

impl Operator for AggregateOp {
    /// Pre-aggregates the batch into the epoch's pending deltas; output
    /// comes at the barrier (views change visibly only at checkpoints, so
    /// nothing is delayed that anyone could see), or earlier when many
    /// groups are pending.
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let mut out = Emitted::default();
        self.ensure_global(&mut out)?;
        if !changes.is_empty() {
            self.accumulate_batch(&changes)?;
        }
        if self.pending.order.len() >= MAX_PENDING_GROUPS {
            self.flush_pending(&mut out)?;
        }
        if self.emits_on_close() {
            return Ok(Vec::new());
        }
        self.build(out)
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let mut out = Emitted::default();
        self.ensure_global(&mut out)?;
        self.apply_and_close(&mut out)?;
        let changes = self.build(out)?;
        let mut writes = self.state.take_dirty(epoch);
        for group in std::mem::take(&mut self.dirty) {
            if let Some(slot) = self.groups.get_mut(&group) {
                if slot.dirty {
                    slot.dirty = false;
                    slot.epoch = epoch;
                    slot.stored |= slot.state.is_some();
                    let key = self.state.full_key(&Self::group_key(&group));
                    writes.push((key, slot.state.as_ref().map(GroupState::encode)));
                }
            }
        }
        self.forget_closed();
        self.evict_if_needed();
        Ok((changes, writes))
    }

    fn watermark(&mut self, _input: usize, wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        let Some(w) = &mut self.window else { return Ok(Vec::new()) };
        if wm.col != w.spec.input_col {
            return Ok(Vec::new());
        }
        if let Some(v) = crate::plan::watermark::derive(&self.group[0], &w.input, wm.col, &wm.value) {
            if w.watermark.as_ref().is_none_or(|cur| v > *cur) {
                w.watermark = Some(v);
            }
        }
        let Some(bound) = self.window_bound()? else { return Ok(Vec::new()) };
        // Only the closing windows' pending deltas are applied now; open
        // windows keep theirs until the barrier (no extra output churn).
        let open = self.pending.split_off_from(&bound);
        let mut out = Emitted::default();
        self.apply_and_close(&mut out)?;
        self.pending = open;
        let changes = self.build(out)?;
        let Some(w) = &mut self.window else { return Ok(Vec::new()) };
        w.early.extend(changes);
        Ok(w.emit.take().into_iter().collect())
    }

    fn take_output(&mut self) -> Vec<Changes> {
        self.window.as_mut().map(|w| std::mem::take(&mut w.early)).unwrap_or_default()
    }

    fn take_watermarks(&mut self) -> Vec<Watermark> {
        self.window.as_mut().and_then(|w| w.emit.take()).into_iter().collect()
    }
}

impl AggregateOp {
    /// The window column's encoded bound if the watermark moved it (once
    /// per window edge for TUMBLE and HOP, whose derived watermark is a
    /// window edge), so that windows may close.
    fn window_bound(&self) -> StreamResult<Option<Vec<u8>>> {
        let Some(w) = &self.window else { return Ok(None) };
        let Some(value) = &w.watermark else { return Ok(None) };
        let bound = w.codec.encode(&[value.to_array()?], 1)?.row(0).to_vec();
        Ok(w.closed_below.as_ref().is_none_or(|c| *c < bound).then_some(bound))
    }

    /// Applies the pending deltas and closes the windows below the
    /// watermark; with EMIT ON WINDOW CLOSE only the closed windows' rows
    /// stay in `out`.
    fn apply_and_close(&mut self, out: &mut Emitted) -> StreamResult<()> {
        self.flush_pending(out)?;
        if self.emits_on_close() {
            *out = Emitted::default();
        }
        self.close_windows(out)
    }

    fn emits_on_close(&self) -> bool {
        self.window.as_ref().is_some_and(|w| w.spec.emit_on_close)
    }

    /// Closes the groups of every window below the watermark: emits their
    /// final rows (EMIT ON WINDOW CLOSE) and deletes their state.
    fn close_windows(&mut self, out: &mut Emitted) -> StreamResult<()> {
        let Some(w) = &self.window else { return Ok(()) };
        let Some(value) = w.watermark.clone() else { return Ok(()) };
        let bound = {
            let encoded = w.codec.encode(&[value.to_array()?], 1)?;
            encoded.row(0).to_vec()
        };
        if w.closed_below.as_ref().is_some_and(|c| *c >= bound) {
            return Ok(());
        }
        let from = w.closed_below.clone().unwrap_or_default();
        let emit = w.spec.emit_on_close;
        // Closing groups: committed ones and ones only in the cache.
        let mut closing: std::collections::BTreeSet<Vec<u8>> = self
            .state
            .committed_keys(&Self::group_key(&from), &Self::group_key(&bound))?
            .into_iter()
            .map(|k| k[1..].to_vec())
            .collect();
        closing.extend(w.cached.range::<[u8], _>((std::ops::Bound::Included(from.as_slice()), std::ops::Bound::Excluded(bound.as_slice()))).cloned());
        for group in closing {
            if emit {
                let Some(state) = self.load(&group)? else { continue };
                if state.rows > 0 {
                    out.push(group.clone(), state, 1);
                }
            } else if self.groups.get(&group).is_some_and(|slot| slot.state.is_none()) {
                continue; // known gone
            }
            // Without EMIT ON WINDOW CLOSE the view has the group's final
            // row already: its state goes without being read.
            self.store(&group, None);
            self.forget_if_unstored(&group);
            for (j, spec) in self.aggs.iter().enumerate() {
                if keeps_multiset(spec, self.append_only) {
                    let prefix = Self::multiset_prefix(j, &group);
                    for (k, _) in self.state.scan_prefix(&prefix, usize::MAX)? {
                        self.state.delete(k);
                    }
                }
            }
        }
        if let Some(w) = &mut self.window {
            w.closed_below = Some(bound);
            w.emit = Some(Watermark { col: 0, value });
        }
        Ok(())
    }

    /// Drops closed groups from the cache once their deletion is on its way
    /// to the checkpoint (they never come back: later rows are late).
    fn forget_closed(&mut self) {
        let Some(w) = &mut self.window else { return };
        let Some(bound) = w.closed_below.clone() else { return };
        let n_aggs = self.aggs.len();
        let mut freed = 0usize;
        let open = w.cached.split_off(bound.as_slice());
        for k in std::mem::replace(&mut w.cached, open) {
            match self.groups.get(&k) {
                Some(slot) if !slot.dirty && slot.state.is_none() => {
                    self.groups.remove(&k);
                    freed += slot_size(&k, n_aggs, true);
                }
                Some(_) => {
                    w.cached.insert(k);
                }
                None => {}
            }
        }
        self.bytes = self.bytes.saturating_sub(freed);
        self.state.budget().adjust(0, freed);
    }
}

/// Whether aggregate `spec` keeps a multiset of its values in state.
fn keeps_multiset(spec: &AggSpec, append_only: bool) -> bool {
    match spec.kind {
        AggKind::Min | AggKind::Max => !append_only,
        AggKind::CountDistinct => true,
        _ => false,
    }
}

/// Adds one aggregate's weighted contributions of a batch to the per-group
/// deltas (columnar: one pass over the argument array). MIN/MAX without a
/// `multiset` (append-only input) keep the batch's best encoded value per
/// group instead (the codec sorts the extreme first); a retraction there
/// is a planning bug, reported as such.
#[allow(clippy::too_many_arguments)]
fn accumulate(
    spec: &AggSpec,
    arg: &ArrayRef,
    weights: &[i64],
    group_of: &[usize],
    col: &mut AccColumn,
    codec: Option<&RowCodec>,
    multiset: Option<&mut HashMap<usize, HashMap<Vec<u8>, i64>>>,
) -> StreamResult<()> {
    let n = arg.len();
    // Without NULLs every row counts (no per-row validity call).
    let no_nulls = arg.null_count() == 0;
    let valid = |i: usize| no_nulls || arg.is_valid(i);
    match spec.kind {
        AggKind::Count => {
            let a = &mut col.a;
            for i in 0..n {
                if valid(i) {
                    a[group_of[i]] += weights[i];
                }
            }
        }
        AggKind::Sum | AggKind::Avg => {
            if spec.input_type.is_floating() {
                let a = cast(arg, &DataType::Float64)?;
                let a = a.as_primitive::<Float64Type>();
                let (counts, sums) = (&mut col.a, &mut col.float);
                for i in 0..n {
                    if valid(i) {
                        let g = group_of[i];
                        counts[g] += weights[i];
                        sums[g] += a.value(i) * weights[i] as f64;
                    }
                }
            } else if let DataType::Decimal128(..) = spec.input_type {
                let a = arg.as_primitive::<Decimal128Type>();
                let (counts, sums) = (&mut col.a, &mut col.int);
                for i in 0..n {
                    if valid(i) {
                        let g = group_of[i];
                        counts[g] += weights[i];
                        sums[g] = sums[g].wrapping_add(a.value(i).wrapping_mul(i128::from(weights[i])));
                    }
                }
            } else {
                // Not a lossy cast: a value beyond i64 fails the view.
                let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
                let a = datafusion::arrow::compute::cast_with_options(arg, &DataType::Int64, &options)?;
                let a = a.as_primitive::<Int64Type>();
                let (counts, sums) = (&mut col.a, &mut col.int);
                for i in 0..n {
                    if valid(i) {
                        let g = group_of[i];
                        counts[g] += weights[i];
                        sums[g] += i128::from(a.value(i)) * i128::from(weights[i]);
                    }
                }
            }
        }
        AggKind::BoolAnd | AggKind::BoolOr => {
            let a = cast(arg, &DataType::Boolean)?;
            let a = a.as_boolean();
            for i in 0..n {
                if valid(i) {
                    let g = group_of[i];
                    if a.value(i) {
                        col.a[g] += weights[i];
                    } else {
                        col.b[g] += weights[i];
                    }
                }
            }
        }
        AggKind::Min | AggKind::Max | AggKind::CountDistinct => {
            let codec = codec.ok_or_else(|| StreamError::Corrupt("value codec".into()))?;
            let rows = codec.encode(std::slice::from_ref(arg), n)?;
            let mut multiset = multiset;
            for i in (0..n).filter(|i| valid(*i)) {
                let g = group_of[i];
                if spec.kind != AggKind::CountDistinct {
                    col.a[g] += weights[i];
                }
                let v = rows.row(i);
                match multiset.as_deref_mut() {
                    Some(m) => *m.entry(group_of[i]).or_default().entry(v.to_vec()).or_insert(0) += weights[i],
                    None if weights[i] <= 0 => {
                        return Err(StreamError::Corrupt("a retraction reached MIN/MAX over append-only input".into()));
                    }
                    None => {
                        if col.value[g].as_deref().is_none_or(|cur| v < cur) {
                            col.value[g] = Some(v.to_vec());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting at a window bound keeps each group's delta and multiset
    /// with it, and both halves' indexes point at their own groups.
    #[test]
    fn split_moves_closing_groups_with_their_deltas() {
        let mut p = Pending { multisets: vec![HashMap::new()], ..Pending::default() };
        let keys: [&[u8]; 6] = [b"b1", b"a1", b"c1", b"a2", b"b2", b"a3"];
        for (i, k) in keys.iter().enumerate() {
            let g = p.add(k.to_vec(), 1);
            p.deltas.rows[g] = i as i64 + 1;
            p.deltas.accs[0].a[g] = 10 * (i as i64 + 1);
            p.multisets[0].insert(g, HashMap::from([(k.to_vec(), i as i64)]));
        }
        let check = |p: &Pending, want: &[&[u8]]| {
            let mut got: Vec<&[u8]> = p.order.iter().map(|k| k.as_slice()).collect();
            got.sort();
            assert_eq!(got, want);
            for (g, k) in p.order.iter().enumerate() {
                let i = keys.iter().position(|x| *x == k.as_slice()).unwrap() as i64;
                assert_eq!(p.index[k], g);
                assert_eq!((p.deltas.rows[g], p.deltas.accs[0].a[g]), (i + 1, 10 * (i + 1)));
                assert_eq!(p.multisets[0][&g], HashMap::from([(k.clone(), i)]));
            }
            assert_eq!(p.index.len(), p.order.len());
        };
        let open = p.split_off_from(b"b");
        check(&p, &[b"a1", b"a2", b"a3"]);
        check(&open, &[b"b1", b"b2", b"c1"]);
        let mut open = open;
        assert!(open.split_off_from(b"a").order.len() == 3 && open.order.is_empty(), "nothing closes");
        let mut all = Pending { multisets: vec![HashMap::new()], ..Pending::default() };
        all.add(b"a".to_vec(), 1);
        assert!(all.split_off_from(b"z").order.is_empty() && all.order.len() == 1, "everything closes");
    }

    #[test]
    fn dense_index_takes_in_hashed_keys_and_refuses_sparse_ranges() {
        let mut hashed: FastMap<Option<i64>, usize> = FastMap::default();
        let mut d = DenseIndex::default();
        // Sparse: two keys a million apart for two groups stay hashed.
        assert!(!d.cover(0, 1_000_000, 2, &mut hashed));
        assert!(!d.contains(0));
        hashed.insert(Some(5), 0);
        hashed.insert(Some(40), 1);
        hashed.insert(None, 2);
        hashed.insert(Some(-7), 3);
        assert!(d.cover(1, 30, 4, &mut hashed));
        assert_eq!(d.slots[(5 - d.base) as usize], 1);
        assert!(!d.contains(40) && hashed.get(&Some(40)) == Some(&1));
        // Widening keeps the slots it had and takes in the rest.
        assert!(d.cover(-10, 45, 4, &mut hashed));
        assert_eq!((d.base, d.slots.len()), (-10, 56));
        assert_eq!(d.slots[(5 - d.base) as usize], 1);
        assert_eq!(d.slots[(40 - d.base) as usize], 2);
        assert_eq!(d.slots[(-7 - d.base) as usize], 4);
        assert_eq!(hashed.len(), 1); // only NULL is left
        assert!(!d.contains(i64::MIN) && !d.contains(i64::MAX));
    }
}
