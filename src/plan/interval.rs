//! Interval and window joins: which joins bound the distance between
//! a left and a right time column, so that the join operator can forget
//! rows the watermarks have left behind (`stream::ops::join`).
//!
//! From the join's keys and condition, for a left column `l` and a right
//! column `r` that both carry a watermark, the bounds of `r - l`:
//! - a key `l = r` (a window join on `window_start`): `[0, 0]`;
//! - conditions `r >= l + c`, `r <= l + c`, `l BETWEEN r - a AND r + b`
//!   and the like, with constant intervals: `lo` and `hi` as given.
//!
//! Inner joins qualify with either; outer joins only with keys (the
//! planner refuses other conditions in an outer join), so that a key's
//! rows on both sides expire together and its padded rows are final by
//! then.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Join, Operator};

/// The time columns of an interval or window join (left's in the left
/// input, right's in the right input) and the bounds of `right - left`, in
/// the columns' unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub cols: [usize; 2],
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

/// The bounds of `j` if it is an interval or window join; `watermarks`
/// are the columns of the left and right inputs that carry one.
pub fn time_bounds(j: &Join, watermarks: [&[usize]; 2]) -> Option<TimeBounds> {
    let schemas = [j.left.schema().as_ref(), j.right.schema().as_ref()];
    let mut found: Vec<TimeBounds> = Vec::new();
    let mut add = |l: usize, r: usize, lo: Option<i64>, hi: Option<i64>| {
        match found.iter_mut().find(|b| b.cols == [l, r]) {
            Some(b) => {
                b.lo = max_opt(b.lo, lo);
                b.hi = min_opt(b.hi, hi);
            }
            None => found.push(TimeBounds { cols: [l, r], lo, hi }),
        }
    };
    for (l, r) in &j.on {
        if let (Some((ls, li, 0)), Some((rs, ri, 0))) = (term(l, schemas), term(r, schemas))
            && ls == 0
            && rs == 1
        {
            add(li, ri, Some(0), Some(0));
        }
    }
    if let Some(filter) = &j.filter {
        for conjunct in split_conjunction(filter) {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else { continue };
            let (Some(a), Some(b)) = (term(left, schemas), term(right, schemas)) else { continue };
            // a.col + a.off OP b.col + b.off, one on each side.
            let ((li, lo_off), (ri, r_off), op) = match (a.0, b.0) {
                (0, 1) => ((a.1, a.2), (b.1, b.2), *op),
                (1, 0) => ((b.1, b.2), (a.1, a.2), match op.swap() {
                    Some(o) => o,
                    None => continue,
                }),
                _ => continue,
            };
            // l + lo_off OP r + r_off  ⇔  r - l (reverse OP) lo_off - r_off.
            let c = lo_off.saturating_sub(r_off);
            match op {
                Operator::GtEq | Operator::Gt => add(li, ri, None, Some(c)),
                Operator::LtEq | Operator::Lt => add(li, ri, Some(c), None),
                Operator::Eq => add(li, ri, Some(c), Some(c)),
                _ => {}
            }
        }
    }
    let unit = |s: usize, c: usize| match schemas[s].field(c).data_type() {
        DataType::Timestamp(u, _) => Some(*u),
        _ => None,
    };
    found.into_iter().filter(|b| b.lo.is_some() || b.hi.is_some()).find(|b| {
        watermarks[0].contains(&b.cols[0])
            && watermarks[1].contains(&b.cols[1])
            && unit(0, b.cols[0]).is_some()
            && unit(0, b.cols[0]) == unit(1, b.cols[1])
    })
    .map(|b| {
        // Offsets were taken in microseconds; convert to the columns' unit.
        let u = unit(0, b.cols[0]).unwrap_or(TimeUnit::Microsecond);
        TimeBounds { lo: b.lo.map(|v| scale(v, u)), hi: b.hi.map(|v| scale(v, u)), ..b }
    })
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Microseconds in `unit`, rounded away from zero (a looser bound).
fn scale(micros: i64, unit: TimeUnit) -> i64 {
    let div = |d: i64| micros / d + i64::from(micros % d != 0) * micros.signum();
    match unit {
        TimeUnit::Second => div(1_000_000),
        TimeUnit::Millisecond => div(1_000),
        TimeUnit::Microsecond => micros,
        TimeUnit::Nanosecond => micros.saturating_mul(1_000),
    }
}

/// `col`, `col + interval` or `col - interval`: (side, column index,
/// offset in µs).
fn term(e: &Expr, schemas: [&DFSchema; 2]) -> Option<(usize, usize, i64)> {
    match e {
        Expr::Column(c) => {
            let in_left = schemas[0].index_of_column(c).ok();
            let in_right = schemas[1].index_of_column(c).ok();
            match (in_left, in_right) {
                (Some(i), None) => Some((0, i, 0)),
                (None, Some(i)) => Some((1, i, 0)),
                _ => None,
            }
        }
        // Only a cast that keeps every time distinct (to a timestamp of the
        // same or a finer unit): `CAST(ts AS DATE)` maps a whole day to one
        // value, so rows a day apart can still match.
        Expr::Cast(c) => {
            let (side, col, off) = term(&c.expr, schemas)?;
            match (schemas[side].field(col).data_type(), c.field.data_type()) {
                (DataType::Timestamp(from, _), DataType::Timestamp(to, _)) if rank(to) >= rank(from) => Some((side, col, off)),
                _ => None,
            }
        }
        Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::Plus | Operator::Minus), right }) => {
            let (side, col, off) = term(left, schemas)?;
            let v = interval_micros(right)?;
            let v = if *op == Operator::Minus { v.checked_neg()? } else { v };
            Some((side, col, off.checked_add(v)?))
        }
        _ => None,
    }
}

/// Coarsest (0) to finest (3).
fn rank(unit: &TimeUnit) -> u8 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    }
}

fn interval_micros(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            i64::from(v.days).checked_mul(86_400_000_000)?.checked_add(v.nanoseconds / 1000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            i64::from(v.days).checked_mul(86_400_000_000)?.checked_add(i64::from(v.milliseconds) * 1000)
        }
        _ => None,
    }
}
