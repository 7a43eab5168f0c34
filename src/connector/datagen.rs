//! The datagen connector: a source or table whose rows eddy makes up
//! (RisingWave's `connector = 'datagen'` syntax), for demos, tests and
//! benchmarks. No external system is involved.
//!
//! **Determinism is the invariant everything else rests on**: the value of
//! column `c` in row `i` is a pure function of the column's options (its
//! seed) and `i`, so any range of rows can be made again. A source's
//! "offset" is therefore just the next row index: ingest ([`ingest`])
//! writes it with every chunk of rows in one atomic write (partition 0 of
//! the usual source offset key), a restart resumes from it (nothing twice,
//! nothing skipped), and a new view over a datagen source or a `SELECT` on
//! it regenerates rows `[0, stored offset)` instead of re-reading anything.
//!
//! Per column (`fields.<column>.<option>`):
//! - numbers (`smallint`, `int`, `bigint`, `real`, `double precision`,
//!   `numeric`): `kind = 'sequence'` counts `start, start + 1, ..., end`
//!   (defaults 0 and 32767); the source stops after the row where the
//!   first sequence column reaches its end. `kind = 'random'` (the default)
//!   draws uniformly from `[min, max]` (defaults 0 and 32767) with `seed`.
//! - `varchar` / `text`: random alphanumeric strings of `length`
//!   characters (default 10, at most the column's `VARCHAR(n)`).
//! - `boolean`: random.
//! - `timestamp`, `timestamptz`, `date`: event time advances with the row
//!   index, `start + i × (1 s / rows per second)`; `start` defaults to the
//!   creation time of the source, written into its options at CREATE so it
//!   never changes. `kind = 'random'` (the default) subtracts a random lag
//!   in `[0, max_past]` (an interval, default 0) for out-of-order data; a
//!   `date` is the timestamp's day.
//!
//! `seed` defaults to a hash of the column's name. Source-wide:
//! `datagen.rows.per.second` (default 10) and `datagen.split.num`
//! (accepted for compatibility; there is one split).

pub mod ingest;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, RecordBatchOptions, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;

use super::{ConnectorError, ConnectorResult};
use crate::catalog::{ColumnDef, SqlType, Table};

/// The `connector` option's value.
pub const CONNECTOR: &str = "datagen";
/// Rows per second unless `datagen.rows.per.second` says otherwise.
pub const DEFAULT_ROWS_PER_SECOND: u64 = 10;
/// RisingWave's defaults: sequence `end` and random `max`.
const DEFAULT_END: i64 = 32767;
const DEFAULT_LENGTH: usize = 10;
/// Longest generated string.
const MAX_LENGTH: usize = 1 << 16;
/// Rows generated at once (a chunk of ingest, a batch of a backfill).
pub const CHUNK_ROWS: usize = 16_384;

/// Every `fields.<column>.<option>` there is (each type takes some).
const FIELD_OPTIONS: &[&str] = &["kind", "start", "end", "min", "max", "seed", "length", "max_past"];
const ROWS_PER_SECOND: &str = "datagen.rows.per.second";
const SPLIT_NUM: &str = "datagen.split.num";
const MICROS_PER_DAY: i64 = 86_400_000_000;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Whether a connector's options name a generating connector: datagen, or
/// nexmark ([`super::nexmark`]), which shares all of this module but the
/// making of rows.
pub fn is_generated(options: &BTreeMap<String, String>) -> bool {
    options.get("connector").is_some_and(|c| c.trim().eq_ignore_ascii_case(CONNECTOR)) || super::nexmark::is_nexmark(options)
}

/// Whether a source or table is fed by datagen or nexmark.
pub fn is_generated_table(table: &Table) -> bool {
    table.def.connector.as_ref().is_some_and(|c| is_generated(&c.options))
}

/// The name of a generating connector (`datagen` or `nexmark`).
pub fn connector_name(options: &BTreeMap<String, String>) -> &'static str {
    if super::nexmark::is_nexmark(options) { super::nexmark::CONNECTOR } else { CONNECTOR }
}

/// Fills in what must never change after CREATE: the `start` of every
/// timestamp or date column that has none becomes `now`.
pub fn fix_options(options: &mut BTreeMap<String, String>, columns: &[ColumnDef], now: DateTime<Utc>) {
    if super::nexmark::is_nexmark(options) {
        return super::nexmark::fix_options(options, now.timestamp_millis());
    }
    for c in columns {
        if matches!(c.sql_type, SqlType::Timestamp | SqlType::TimestampTz | SqlType::Date) {
            let key = format!("fields.{}.start", c.name.to_lowercase());
            options.entry(key).or_insert_with(|| now.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
        }
    }
}

/// splitmix64's finalizer: a bijection that scatters nearby inputs.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pseudo-random word of row `i` for `seed`.
fn draw(seed: u64, i: u64) -> u64 {
    mix(mix(seed.wrapping_add(GOLDEN)) ^ i.wrapping_mul(GOLDEN))
}

/// A uniform integer in `[min, max]`.
#[cfg(test)]
fn draw_range(seed: u64, i: u64, min: i128, max: i128) -> i128 {
    let span = (max - min) as u128 + 1;
    match u64::try_from(span) {
        // The same value, without a 128-bit division.
        Ok(span) => min + i128::from(draw(seed, i) % span),
        Err(_) => min + (u128::from(draw(seed, i)) % span) as i128,
    }
}

/// [`draw_range`] for many rows: the same values, with the remainder by
/// the span computed by multiplications ([`FastMod`]), not a division per
/// row (a 64-bit division was most of the cost of a random column).
#[derive(Clone, Copy)]
struct RangeDraw {
    /// `draw`'s first mix of the seed, made once.
    seeded: u64,
    min: i128,
    /// `None`: the span is 2^64 or more (taken by a 128-bit remainder).
    span: Option<FastMod>,
    wide_span: u128,
}

impl RangeDraw {
    fn new(seed: u64, min: i128, max: i128) -> Self {
        // Wrapping: the span of a NUMERIC(38) column's full range is above
        // i128::MAX but fits a u128.
        let wide_span = (max.wrapping_sub(min) as u128).saturating_add(1);
        let seeded = mix(seed.wrapping_add(GOLDEN));
        Self { seeded, min, span: u64::try_from(wide_span).ok().map(FastMod::new), wide_span }
    }

    #[inline]
    fn at(&self, i: u64) -> i128 {
        // `draw(seed, i)`.
        let word = mix(self.seeded ^ i.wrapping_mul(GOLDEN));
        match self.span {
            Some(m) => self.min + i128::from(m.rem(word)),
            None => self.min + (u128::from(word) % self.wide_span) as i128,
        }
    }
}

/// `x % d` for a fixed `d > 0` without a division: Lemire, Kaser and
/// Kurz, "Faster remainder by direct computation" (2019), exact for every
/// 64-bit `x` with a 128-bit magic number `m = ceil(2^128 / d)`.
#[derive(Clone, Copy)]
struct FastMod {
    d: u64,
    m: u128,
}

impl FastMod {
    fn new(d: u64) -> Self {
        // d = 1: m wraps to 0 and every remainder is 0, as it should be.
        Self { d, m: (u128::MAX / u128::from(d.max(1))).wrapping_add(1) }
    }

    #[inline]
    fn rem(self, x: u64) -> u64 {
        let low = self.m.wrapping_mul(u128::from(x));
        let d = u128::from(self.d);
        // The top 64 bits of the 192-bit product low × d.
        let hi = (low >> 64) * d;
        let lo = ((low & u128::from(u64::MAX)) * d) >> 64;
        ((hi + lo) >> 64) as u64
    }
}

/// A uniform float in `[min, max]`.
fn draw_float(seed: u64, i: u64, min: f64, max: f64) -> f64 {
    let unit = (draw(seed, i) >> 11) as f64 / (1u64 << 53) as f64;
    min + unit * (max - min)
}

/// FNV-1a: the default seed of a column, from its name.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

/// How one column's values are made.
#[derive(Debug, Clone, PartialEq)]
enum Gen {
    /// Integers and decimals (unscaled): `start + i × step`.
    Sequence { start: i128, step: i128 },
    /// Integers and decimals (unscaled) in `[min, max]`.
    Random { min: i128, max: i128, seed: u64 },
    FloatSequence { start: f64 },
    FloatRandom { min: f64, max: f64, seed: u64 },
    Bool { seed: u64 },
    Text { length: usize, seed: u64 },
    /// Timestamps (µs since 1970): `start + i × 1 s / rate - lag`, the lag
    /// in `[0, max_past]` (0 for a sequence).
    Time { start: i64, max_past: i64, seed: u64 },
}

/// A validated datagen definition: makes any range of rows of a table.
#[derive(Debug, Clone)]
pub struct Generator {
    schema: SchemaRef,
    columns: Vec<(SqlType, Gen)>,
    /// Set for a nexmark source, which makes its rows instead.
    nexmark: Option<Box<super::nexmark::Nexmark>>,
    pub rows_per_second: u64,
    /// Rows in all when a sequence column bounds the source.
    pub limit: Option<u64>,
}

/// The options of one column, as given.
struct FieldOptions<'a> {
    column: &'a ColumnDef,
    given: BTreeMap<&'a str, &'a str>,
}

impl FieldOptions<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.given.get(key).copied()
    }

    fn name(&self, key: &str) -> String {
        format!("fields.{}.{key}", self.column.name)
    }

    /// Refuses options this column's generator does not take.
    fn only(&self, allowed: &[&str], what: &str) -> ConnectorResult<()> {
        for k in self.given.keys() {
            if !FIELD_OPTIONS.contains(k) {
                return Err(ConnectorError::Option(format!(
                    "unknown option {}; a column takes {}",
                    self.name(k),
                    FIELD_OPTIONS.join(", ")
                )));
            }
            if !allowed.contains(k) {
                return Err(ConnectorError::Option(format!(
                    "option {} does not apply to {what} column \"{}\"; it takes {}",
                    self.name(k),
                    self.column.name,
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn seed(&self) -> ConnectorResult<u64> {
        match self.get("seed") {
            None => Ok(name_seed(&self.column.name)),
            Some(s) => s
                .trim()
                .parse::<u64>()
                .or_else(|_| s.trim().parse::<i64>().map(|v| v as u64))
                .map_err(|_| ConnectorError::Option(format!("{} must be an integer, not '{s}'", self.name("seed")))),
        }
    }

    fn is_sequence(&self) -> ConnectorResult<bool> {
        match self.get("kind").map(|k| k.trim().to_ascii_lowercase()).as_deref() {
            None | Some("random") => Ok(false),
            Some("sequence") => Ok(true),
            Some(other) => Err(ConnectorError::Option(format!(
                "{} must be 'sequence' or 'random', not '{other}'",
                self.name("kind")
            ))),
        }
    }
}

impl Generator {
    /// The generator of a source or table with a datagen connector.
    pub fn for_table(table: &Table) -> ConnectorResult<Self> {
        let def = table
            .def
            .connector
            .as_ref()
            .ok_or_else(|| ConnectorError::Option(format!("{} has no connector", table.name())))?;
        Self::new(&table.def.columns, table.schema.clone(), &def.options)
    }

    /// Validates `options` for `columns` (the table's, `schema` their
    /// Arrow form): every error is the user's (22023, or 0A000 for a
    /// column type datagen cannot make).
    pub fn new(columns: &[ColumnDef], schema: SchemaRef, options: &BTreeMap<String, String>) -> ConnectorResult<Self> {
        if super::nexmark::is_nexmark(options) {
            let nexmark = super::nexmark::Nexmark::new(columns, schema.clone(), options)?;
            let (rows_per_second, limit) = (nexmark.rows_per_second, nexmark.limit);
            return Ok(Self { schema, columns: Vec::new(), nexmark: Some(Box::new(nexmark)), rows_per_second, limit });
        }
        let mut per_column: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new(); columns.len()];
        for (key, value) in options {
            match key.as_str() {
                "connector" | SPLIT_NUM | ROWS_PER_SECOND => continue,
                _ => {}
            }
            let Some(rest) = key.strip_prefix("fields.") else {
                return Err(ConnectorError::Option(format!(
                    "unknown option {key}; datagen takes {ROWS_PER_SECOND}, {SPLIT_NUM} and fields.<column>.<option>"
                )));
            };
            let Some((column, option)) = rest.rsplit_once('.') else {
                return Err(ConnectorError::Option(format!("option {key} must be fields.<column>.<option>")));
            };
            let Some(i) = columns.iter().position(|c| c.name.eq_ignore_ascii_case(column)) else {
                return Err(ConnectorError::Option(format!("option {key}: there is no column \"{column}\"")));
            };
            per_column[i].insert(option, value.as_str());
        }
        let rows_per_second = match options.get(ROWS_PER_SECOND) {
            None => DEFAULT_ROWS_PER_SECOND,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConnectorError::Option(format!(
                        "{ROWS_PER_SECOND} must be a positive integer, not '{v}'"
                    )));
                }
            },
        };
        if let Some(v) = options.get(SPLIT_NUM)
            && !v.trim().parse::<u64>().is_ok_and(|n| n > 0)
        {
            return Err(ConnectorError::Option(format!("{SPLIT_NUM} must be a positive integer, not '{v}'")));
        }
        let mut gens = Vec::with_capacity(columns.len());
        let mut limit: Option<u64> = None;
        for (column, given) in columns.iter().zip(per_column) {
            let field = FieldOptions { column, given };
            let (generator, rows) = column_gen(&field)?;
            if let Some(rows) = rows {
                limit = Some(limit.map_or(rows, |l| l.min(rows)));
            }
            gens.push((column.sql_type.clone(), generator));
        }
        Ok(Self { schema, columns: gens, nexmark: None, rows_per_second, limit })
    }

    /// Rows `[from, from + n)`, cut short at the end of a bounded source.
    pub fn generate(&self, from: u64, n: usize) -> ConnectorResult<RecordBatch> {
        if let Some(nexmark) = &self.nexmark {
            return nexmark.generate(from, n);
        }
        let n = match self.limit {
            Some(limit) => (limit.saturating_sub(from)).min(n as u64) as usize,
            None => n,
        };
        let rows = from..from + n as u64;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (ty, g) in &self.columns {
            arrays.push(self.column(ty, g, rows.clone())?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?)
    }

    /// The event times of `rows` before any lag: `start + i × 1 s / rate`
    /// for each row `i`, exactly, with one division for the first row and
    /// additions for the rest (quotient and remainder step by those of
    /// 1 s / rate).
    fn event_times(&self, start: i64, rows: std::ops::Range<u64>) -> impl Iterator<Item = i64> {
        let rate = u128::from(self.rows_per_second.max(1));
        let first = u128::from(rows.start) * 1_000_000;
        let (mut q, mut r) = (first / rate, first % rate);
        let (step_q, step_r) = (1_000_000 / rate, 1_000_000 % rate);
        rows.map(move |_| {
            let t = start.saturating_add(i64::try_from(q).unwrap_or(i64::MAX));
            q += step_q;
            r += step_r;
            if r >= rate {
                r -= rate;
                q += 1;
            }
            t
        })
    }

    fn column(&self, ty: &SqlType, g: &Gen, rows: std::ops::Range<u64>) -> ConnectorResult<ArrayRef> {
        let ints = |rows: std::ops::Range<u64>| -> Vec<i128> {
            match g {
                Gen::Sequence { start, step } => rows.map(|i| start + i128::from(i) * step).collect(),
                Gen::Random { min, max, seed } => {
                    let d = RangeDraw::new(*seed, *min, *max);
                    rows.map(|i| d.at(i)).collect()
                }
                _ => Vec::new(),
            }
        };
        let floats = |rows: std::ops::Range<u64>| -> Vec<f64> {
            match g {
                Gen::FloatSequence { start } => rows.map(|i| start + i as f64).collect(),
                Gen::FloatRandom { min, max, seed } => rows.map(|i| draw_float(*seed, i, *min, *max)).collect(),
                _ => Vec::new(),
            }
        };
        let times = |rows: std::ops::Range<u64>| -> Vec<i64> {
            match g {
                Gen::Time { start, max_past, seed } if *max_past > 0 => {
                    let lag = RangeDraw::new(*seed, 0, i128::from(*max_past));
                    rows.clone().zip(self.event_times(*start, rows)).map(|(i, t)| t.saturating_sub(lag.at(i) as i64)).collect()
                }
                Gen::Time { start, .. } => self.event_times(*start, rows).collect(),
                _ => Vec::new(),
            }
        };
        // Values were checked against the type's range at CREATE; a
        // sequence past it (i64 overflow) ends as a clear error.
        let overflow = || ConnectorError::Option("datagen: a sequence ran past the range of its column's type".into());
        Ok(match (ty, g) {
            (SqlType::SmallInt, _) => Arc::new(Int16Array::from(
                ints_of(g, rows, i16::MIN.into(), i16::MAX.into(), |v| v as i16).ok_or_else(overflow)?,
            )),
            (SqlType::Int, _) => Arc::new(Int32Array::from(
                ints_of(g, rows, i32::MIN.into(), i32::MAX.into(), |v| v as i32).ok_or_else(overflow)?,
            )),
            (SqlType::BigInt, _) => Arc::new(Int64Array::from(
                ints_of(g, rows, i64::MIN.into(), i64::MAX.into(), |v| v as i64).ok_or_else(overflow)?,
            )),
            (SqlType::Numeric { precision, scale }, _) => Arc::new(
                Decimal128Array::from(ints(rows)).with_precision_and_scale(*precision, *scale)?,
            ),
            (SqlType::Real, _) => Arc::new(Float32Array::from(floats(rows).into_iter().map(|v| v as f32).collect::<Vec<_>>())),
            (SqlType::Double, _) => Arc::new(Float64Array::from(floats(rows))),
            (SqlType::Boolean, Gen::Bool { seed }) => {
                Arc::new(BooleanArray::from(rows.map(|i| draw(*seed, i) & 1 == 1).collect::<Vec<_>>()))
            }
            (SqlType::Text | SqlType::Varchar { .. }, Gen::Text { length, seed }) => {
                let mut b = StringBuilder::with_capacity(rows.end.saturating_sub(rows.start) as usize, 0);
                let mut s = String::with_capacity(*length);
                for i in rows {
                    s.clear();
                    let mut state = draw(*seed, i);
                    for _ in 0..*length {
                        state = state.wrapping_add(GOLDEN);
                        s.push(ALPHANUMERIC[(mix(state) % ALPHANUMERIC.len() as u64) as usize] as char);
                    }
                    b.append_value(&s);
                }
                Arc::new(b.finish())
            }
            (SqlType::Timestamp, _) => Arc::new(TimestampMicrosecondArray::from(times(rows))),
            (SqlType::TimestampTz, _) => {
                Arc::new(TimestampMicrosecondArray::from(times(rows)).with_timezone("+00:00"))
            }
            (SqlType::Date, _) => Arc::new(Date32Array::from(
                times(rows).into_iter().map(|t| t.div_euclid(MICROS_PER_DAY) as i32).collect::<Vec<_>>(),
            )),
            (other, _) => {
                return Err(ConnectorError::Unsupported(format!("datagen cannot generate {}", other.pg_name())));
            }
        })
    }
}

/// The values of an integer column in `[lo, hi]` (its type's range), or
/// `None` if one is outside it. Checked once per chunk, not per value: a
/// sequence is linear, so its first and last rows bound it, and random
/// values lie within their `min` and `max`.
fn ints_of<T>(g: &Gen, rows: std::ops::Range<u64>, lo: i128, hi: i128, cast: impl Fn(i128) -> T) -> Option<Vec<T>> {
    let fits = |v: i128| (lo..=hi).contains(&v);
    match g {
        Gen::Sequence { start, step } => {
            let at = |i: u64| start + i128::from(i) * step;
            if !rows.is_empty() && !(fits(at(rows.start)) && fits(at(rows.end - 1))) {
                return None;
            }
            Some(rows.map(|i| cast(at(i))).collect())
        }
        Gen::Random { min, max, seed } => (fits(*min) && fits(*max)).then(|| {
            let d = RangeDraw::new(*seed, *min, *max);
            rows.map(|i| cast(d.at(i))).collect()
        }),
        _ => Some(Vec::new()),
    }
}

/// A column's generator and, for a sequence, how many rows it allows.
fn column_gen(f: &FieldOptions<'_>) -> ConnectorResult<(Gen, Option<u64>)> {
    let ty = &f.column.sql_type;
    let type_name = ty.pg_name().to_uppercase();
    let sequence = f.is_sequence()?;
    match ty {
        SqlType::SmallInt | SqlType::Int | SqlType::BigInt | SqlType::Numeric { .. } => {
            let (lo, hi, scale) = match ty {
                SqlType::SmallInt => (i128::from(i16::MIN), i128::from(i16::MAX), 0),
                SqlType::Int => (i128::from(i32::MIN), i128::from(i32::MAX), 0),
                SqlType::BigInt => (i128::from(i64::MIN), i128::from(i64::MAX), 0),
                SqlType::Numeric { precision, scale } => {
                    if *scale < 0 {
                        return Err(ConnectorError::Unsupported(format!("datagen cannot generate {}", ty.pg_name())));
                    }
                    let max = 10i128.pow(u32::from(*precision)) - 1;
                    (-max, max, *scale as u32)
                }
                _ => (0, 0, 0),
            };
            let number = |key: &str, default: i64| -> ConnectorResult<i128> {
                let v = match f.get(key) {
                    // RisingWave's default, within what the type holds.
                    None => (i128::from(default) * 10i128.pow(scale)).min(hi),
                    Some(s) => parse_scaled(s, scale).ok_or_else(|| {
                        ConnectorError::Option(format!("{} must be a number, not '{s}'", f.name(key)))
                    })?,
                };
                if v < lo || v > hi {
                    return Err(ConnectorError::Option(format!(
                        "{} = {} is out of range for {type_name}",
                        f.name(key),
                        f.get(key).unwrap_or_default()
                    )));
                }
                Ok(v)
            };
            if sequence {
                f.only(&["kind", "start", "end"], "a sequence")?;
                let (start, end) = (number("start", 0)?, number("end", DEFAULT_END)?);
                if start > end {
                    return Err(ConnectorError::Option(format!(
                        "{} must not be above {}",
                        f.name("start"),
                        f.name("end")
                    )));
                }
                let step = 10i128.pow(scale);
                let rows = u64::try_from((end - start) / step + 1).unwrap_or(u64::MAX);
                Ok((Gen::Sequence { start, step }, Some(rows)))
            } else {
                f.only(&["kind", "min", "max", "seed"], "a random")?;
                let (min, max) = (number("min", 0)?, number("max", DEFAULT_END)?);
                if min > max {
                    return Err(ConnectorError::Option(format!("{} must not be above {}", f.name("min"), f.name("max"))));
                }
                Ok((Gen::Random { min, max, seed: f.seed()? }, None))
            }
        }
        SqlType::Real | SqlType::Double => {
            let number = |key: &str, default: f64| -> ConnectorResult<f64> {
                match f.get(key) {
                    None => Ok(default),
                    Some(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                        ConnectorError::Option(format!("{} must be a number, not '{s}'", f.name(key)))
                    }),
                }
            };
            if sequence {
                f.only(&["kind", "start", "end"], "a sequence")?;
                let (start, end) = (number("start", 0.0)?, number("end", DEFAULT_END as f64)?);
                if start > end {
                    return Err(ConnectorError::Option(format!(
                        "{} must not be above {}",
                        f.name("start"),
                        f.name("end")
                    )));
                }
                Ok((Gen::FloatSequence { start }, Some((end - start).floor() as u64 + 1)))
            } else {
                f.only(&["kind", "min", "max", "seed"], "a random")?;
                let (min, max) = (number("min", 0.0)?, number("max", DEFAULT_END as f64)?);
                if min > max {
                    return Err(ConnectorError::Option(format!("{} must not be above {}", f.name("min"), f.name("max"))));
                }
                Ok((Gen::FloatRandom { min, max, seed: f.seed()? }, None))
            }
        }
        SqlType::Boolean | SqlType::Text | SqlType::Varchar { .. } if sequence => Err(ConnectorError::Option(format!(
            "{} = 'sequence' needs a number column; \"{}\" is {type_name} (use kind = 'random')",
            f.name("kind"),
            f.column.name
        ))),
        SqlType::Boolean => {
            f.only(&["kind", "seed"], "a boolean")?;
            Ok((Gen::Bool { seed: f.seed()? }, None))
        }
        SqlType::Text | SqlType::Varchar { .. } => {
            f.only(&["kind", "length", "seed"], "a string")?;
            let max_len = match ty {
                SqlType::Varchar { max_len: Some(n) } => usize::try_from(*n).unwrap_or(MAX_LENGTH).min(MAX_LENGTH),
                _ => MAX_LENGTH,
            };
            let length = match f.get("length") {
                None => DEFAULT_LENGTH.min(max_len),
                Some(s) => match s.trim().parse::<usize>() {
                    Ok(n) if n <= max_len => n,
                    Ok(n) => {
                        return Err(ConnectorError::Option(format!(
                            "{} = {n} is longer than the column allows ({max_len})",
                            f.name("length")
                        )));
                    }
                    Err(_) => {
                        return Err(ConnectorError::Option(format!(
                            "{} must be a whole number of characters, not '{s}'",
                            f.name("length")
                        )));
                    }
                },
            };
            Ok((Gen::Text { length, seed: f.seed()? }, None))
        }
        SqlType::Timestamp | SqlType::TimestampTz | SqlType::Date => {
            if sequence {
                f.only(&["kind", "start"], "a sequence")?;
            } else {
                f.only(&["kind", "start", "max_past", "seed"], "a random")?;
            }
            let start = match f.get("start") {
                Some(s) => parse_timestamp(s).ok_or_else(|| {
                    ConnectorError::Option(format!(
                        "{} must be a timestamp such as '2024-01-01 00:00:00', not '{s}'",
                        f.name("start")
                    ))
                })?,
                // fix_options fills it in at CREATE.
                None => return Err(ConnectorError::Option(format!("missing option {}", f.name("start")))),
            };
            let max_past = match f.get("max_past") {
                None => 0,
                Some(s) => parse_duration_micros(s).ok_or_else(|| {
                    ConnectorError::Option(format!(
                        "{} must be an interval such as '5 seconds', not '{s}'",
                        f.name("max_past")
                    ))
                })?,
            };
            Ok((Gen::Time { start, max_past, seed: f.seed()? }, None))
        }
        other => Err(ConnectorError::Unsupported(format!(
            "datagen cannot generate column \"{}\" of type {}; it makes numbers, strings, booleans, timestamps and dates",
            f.column.name,
            other.pg_name()
        ))),
    }
}

/// A decimal number as an integer of `scale` decimal places (rounded).
fn parse_scaled(s: &str, scale: u32) -> Option<i128> {
    let mut d = rust_decimal::Decimal::from_str(s.trim()).ok()?;
    d.rescale(scale);
    (d.scale() == scale).then(|| d.mantissa())
}

/// `2024-01-01 12:00:00[.ffffff][+hh:mm]`, `...T...`, or a date, in µs since
/// 1970 (UTC unless an offset is given).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros())
}

/// An interval such as `5 seconds`, `1 minute 30 s`, `250ms` or
/// `00:00:05`, in microseconds (not negative).
pub fn parse_duration_micros(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return None;
        }
        let h: u32 = parts[0].parse().ok()?;
        let m: u32 = parts[1].parse().ok()?;
        let sec: f64 = parts[2].parse().ok()?;
        let total = f64::from(h) * 3600.0 + f64::from(m) * 60.0 + sec;
        return (total >= 0.0).then(|| (total * 1e6).round() as i64);
    }
    let mut total = 0f64;
    let mut rest = s.as_str();
    let mut any = false;
    while !rest.trim_start().is_empty() {
        rest = rest.trim_start();
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = rest[end..].trim_start();
        let uend = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..uend];
        rest = &rest[uend..];
        let micros = match unit {
            "us" | "microsecond" | "microseconds" => 1.0,
            "ms" | "millisecond" | "milliseconds" => 1e3,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
            "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
            "h" | "hour" | "hours" => 3600e6,
            "d" | "day" | "days" => 86_400e6,
            _ => return None,
        };
        total += n * micros;
        any = true;
    }
    (any && total.is_finite() && total < 1e18).then(|| total.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Date32Type, Float64Type, Int32Type, Int64Type, Schema, TimestampMicrosecondType};

    fn col(name: &str, sql_type: SqlType) -> ColumnDef {
        ColumnDef { name: name.into(), sql_type, nullable: true }
    }

    fn generator(columns: &[ColumnDef], options: &[(&str, &str)]) -> ConnectorResult<Generator> {
        let schema = Arc::new(Schema::new(columns.iter().map(|c| c.sql_type.field(&c.name, c.nullable)).collect::<Vec<_>>()));
        let mut opts: BTreeMap<String, String> = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        opts.insert("connector".into(), "datagen".into());
        Generator::new(columns, schema, &opts)
    }

    fn columns() -> Vec<ColumnDef> {
        vec![
            col("id", SqlType::BigInt),
            col("name", SqlType::Varchar { max_len: Some(8) }),
            col("v", SqlType::Double),
            col("ts", SqlType::Timestamp),
            col("n", SqlType::Int),
            col("d", SqlType::Date),
            col("b", SqlType::Boolean),
            col("amount", SqlType::Numeric { precision: 10, scale: 2 }),
        ]
    }

    fn options() -> Vec<(&'static str, &'static str)> {
        vec![
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "1"),
            ("fields.id.end", "1000"),
            ("fields.v.min", "0"),
            ("fields.v.max", "100"),
            ("fields.v.seed", "7"),
            ("fields.name.length", "8"),
            ("fields.ts.start", "2024-01-01 00:00:00"),
            ("fields.ts.max_past", "5 seconds"),
            ("fields.n.min", "-3"),
            ("fields.n.max", "3"),
            ("fields.d.start", "2024-01-01"),
            ("fields.amount.min", "1.50"),
            ("fields.amount.max", "2"),
            ("datagen.rows.per.second", "100"),
        ]
    }

    #[test]
    fn any_range_is_the_same_rows() {
        let g = generator(&columns(), &options()).unwrap();
        let all = g.generate(0, 1000).unwrap();
        let part = g.generate(300, 200).unwrap();
        assert_eq!(all.slice(300, 200), part);
        // Another generator from the same options: the same rows.
        let again = generator(&columns(), &options()).unwrap().generate(0, 1000).unwrap();
        assert_eq!(all, again);
        // A different seed changes that column only.
        let mut other = options();
        other.retain(|(k, _)| *k != "fields.v.seed");
        other.push(("fields.v.seed", "8"));
        let other = generator(&columns(), &other).unwrap().generate(0, 1000).unwrap();
        assert_ne!(all.column(2), other.column(2));
        assert_eq!(all.column(1), other.column(1));
    }

    #[test]
    fn sequences_bound_the_source() {
        let g = generator(&columns(), &options()).unwrap();
        assert_eq!(g.limit, Some(1000));
        let b = g.generate(990, 100).unwrap();
        assert_eq!(b.num_rows(), 10);
        let ids = b.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.value(0), 991);
        assert_eq!(ids.value(9), 1000);
        assert_eq!(g.generate(1000, 10).unwrap().num_rows(), 0);
        let ids: Vec<i64> = g.generate(0, 1000).unwrap().column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
        // The shortest sequence wins.
        let cols = vec![col("a", SqlType::Int), col("b", SqlType::SmallInt)];
        let g = generator(&cols, &[("fields.a.kind", "sequence"), ("fields.b.kind", "sequence"), ("fields.b.start", "10"), ("fields.b.end", "14")]).unwrap();
        assert_eq!(g.limit, Some(5));
        let unbounded = generator(&cols, &[]).unwrap();
        assert_eq!(unbounded.limit, None);
    }

    #[test]
    fn values_stay_in_range() {
        let g = generator(&columns(), &options()).unwrap();
        let b = g.generate(0, 5000).unwrap();
        assert_eq!(b.num_rows(), 1000, "the id sequence ends at 1000");
        let v = b.column(2).as_primitive::<Float64Type>();
        assert!(v.values().iter().all(|x| (0.0..=100.0).contains(x)));
        let n = b.column(4).as_primitive::<Int32Type>();
        assert!(n.values().iter().all(|x| (-3..=3).contains(x)));
        for want in -3..=3 {
            assert!(n.values().contains(&want), "{want} never drawn");
        }
        let names = b.column(1).as_string::<i32>();
        assert!(names.iter().all(|s| s.is_some_and(|s| s.len() == 8 && s.chars().all(|c| c.is_ascii_alphanumeric()))));
        let amount = b.column(7).as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
        assert!(amount.values().iter().all(|x| (150..=200).contains(x)));
        let bools = b.column(6).as_boolean();
        assert!(bools.true_count() > 400 && bools.true_count() < 600, "{}", bools.true_count());
        assert_eq!(b.column(0).null_count(), 0);
    }

    #[test]
    fn fast_paths_match_the_plain_formulas() {
        let mut x = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            x = mix(x.wrapping_add(GOLDEN));
            x
        };
        for d in [1u64, 2, 3, 7, 10, 100, 10_000, 1 << 32, (1 << 32) + 1, u64::MAX / 3, u64::MAX - 1, u64::MAX] {
            let m = FastMod::new(d);
            for v in [0, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1] {
                assert_eq!(m.rem(v), v % d, "{v} % {d}");
            }
            for _ in 0..2000 {
                let v = next();
                assert_eq!(m.rem(v), v % d, "{v} % {d}");
            }
        }
        for (min, max) in [(1i128, 10_000i128), (0, 0), (-5, 5), (i128::from(i64::MIN), i128::from(i64::MAX)), (0, i128::from(u64::MAX))] {
            let seed = next();
            let d = RangeDraw::new(seed, min, max);
            for i in 0..2000u64 {
                assert_eq!(d.at(i), draw_range(seed, i, min, max));
            }
        }
        let mut g = generator(&[col("t", SqlType::Timestamp)], &[("fields.t.start", "2024-01-01 00:00:00")]).unwrap();
        for rate in [1u64, 3, 7, 1000, 999_999, 1_000_000, 1_000_001, 3_000_017, 100_000_000] {
            g.rows_per_second = rate;
            for from in [0u64, 1, 12_345, u64::MAX / 1_000_000 - 10, u64::MAX - 20] {
                let got: Vec<i64> = g.event_times(7, from..from.saturating_add(20)).collect();
                let want: Vec<i64> = (from..from.saturating_add(20))
                    .map(|i| 7i64.saturating_add(i64::try_from(u128::from(i) * 1_000_000 / u128::from(rate)).unwrap_or(i64::MAX)))
                    .collect();
                assert_eq!(got, want, "rate {rate} from {from}");
            }
        }
    }

    #[test]
    fn event_time_advances_with_the_row() {
        let g = generator(&columns(), &options()).unwrap();
        let b = g.generate(0, 1000).unwrap();
        let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
        let start = parse_timestamp("2024-01-01 00:00:00").unwrap();
        let mut out_of_order = 0;
        for i in 0..1000usize {
            let nominal = start + i as i64 * 10_000; // 100 rows per second
            let lag = nominal - ts.value(i);
            assert!((0..=5_000_000).contains(&lag), "row {i}: lag {lag}");
            if i > 0 && ts.value(i) < ts.value(i - 1) {
                out_of_order += 1;
            }
        }
        assert!(out_of_order > 100);
        let d = b.column(5).as_primitive::<Date32Type>();
        assert_eq!(d.value(0), 19723); // 2024-01-01
        // Without max_past: exactly the nominal time.
        let cols = vec![col("t", SqlType::TimestampTz)];
        let g = generator(&cols, &[("fields.t.start", "2024-01-01T00:00:00Z"), ("datagen.rows.per.second", "3")]).unwrap();
        let t = g.generate(0, 4).unwrap();
        let t = t.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(t.values().iter().map(|v| v - start).collect::<Vec<_>>(), vec![0, 333_333, 666_666, 1_000_000]);
    }

    #[test]
    fn creation_time_is_fixed_in_the_options() {
        let mut opts = BTreeMap::new();
        let now = DateTime::parse_from_rfc3339("2024-05-06T07:08:09.5Z").unwrap().with_timezone(&Utc);
        fix_options(&mut opts, &columns(), now);
        assert_eq!(opts.get("fields.ts.start").map(String::as_str), Some("2024-05-06 07:08:09.500000"));
        assert!(opts.contains_key("fields.d.start"));
        assert!(!opts.contains_key("fields.v.start"));
        opts.insert("fields.ts.start".into(), "2020-01-01".into());
        fix_options(&mut opts, &columns(), now);
        assert_eq!(opts.get("fields.ts.start").map(String::as_str), Some("2020-01-01"));
    }

    #[test]
    fn bad_options_are_refused() {
        let cols = columns();
        let refused = |extra: &[(&'static str, &'static str)], needle: &str| {
            let mut o = options();
            o.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            o.extend_from_slice(extra);
            let e = generator(&cols, &o).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            e
        };
        assert_eq!(refused(&[("fields.v.min", "200")], "must not be above").sqlstate(), "22023");
        refused(&[("fields.v.min", "abc")], "must be a number");
        refused(&[("fields.name.kind", "sequence")], "needs a number column");
        refused(&[("fields.id.kind", "zigzag")], "'sequence' or 'random'");
        refused(&[("fields.nope.kind", "random")], "no column \"nope\"");
        refused(&[("fields.v.length", "3")], "does not apply");
        refused(&[("fields.v.colour", "red")], "unknown option fields.v.colour");
        refused(&[("fields.id.min", "3")], "does not apply");
        refused(&[("rows.per.second", "3")], "unknown option rows.per.second");
        refused(&[("datagen.rows.per.second", "0")], "positive integer");
        refused(&[("fields.name.length", "9")], "longer than");
        refused(&[("fields.n.max", "3000000000")], "out of range");
        refused(&[("fields.ts.max_past", "soon")], "interval");
        refused(&[("fields.ts.start", "yesterday")], "timestamp");
        refused(&[("fields.id.start", "5"), ("fields.id.end", "4")], "must not be above");
        let e = generator(&[col("x", SqlType::Bytea)], &[]).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_micros("5 seconds"), Some(5_000_000));
        assert_eq!(parse_duration_micros("1 minute 30 s"), Some(90_000_000));
        assert_eq!(parse_duration_micros("250ms"), Some(250_000));
        assert_eq!(parse_duration_micros("00:00:05"), Some(5_000_000));
        assert_eq!(parse_duration_micros("2"), Some(2_000_000));
        assert_eq!(parse_duration_micros("five"), None);
        assert_eq!(parse_duration_micros(""), None);
    }
}
