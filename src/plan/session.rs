//! Session windows: what `SESSION(rel, ts, gap [, key ...])` means, once,
//! for both ways eddy answers it.
//!
//! [`super::window`] rewrites the table function into two window functions
//! over the relation, `eddy_session_start(ts, gap) OVER (PARTITION BY keys
//! ORDER BY ts)` and `eddy_session_end(...)`, named `window_start` and
//! `window_end`. A plain SELECT runs them as DataFusion window functions
//! ([`SessionBound`], registered by the engine); a materialized view turns
//! the window node into the session operator (`stream::ops::session`). Both
//! call [`assign`], so a view holds what the SELECT answers.
//!
//! A session is a maximal run of a key's rows whose consecutive times are
//! less than `gap` apart (Flink's rule: a row at exactly `gap` after the
//! previous one starts a new session). `window_start` is its first row's
//! time, `window_end` its last row's time plus `gap` (exclusive, like a
//! TUMBLE's end). A row with a NULL time is in no session: both are NULL.
//! `gap` is passed in microseconds.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl};

/// The window functions' names.
pub const START: &str = "eddy_session_start";
pub const END: &str = "eddy_session_end";

/// `gap` (µs) in a timestamp's unit, rounded up.
pub fn gap_in(unit: TimeUnit, micros: i64) -> i64 {
    match unit {
        TimeUnit::Second => micros.div_euclid(1_000_000) + i64::from(micros.rem_euclid(1_000_000) != 0),
        TimeUnit::Millisecond => micros.div_euclid(1_000) + i64::from(micros.rem_euclid(1_000) != 0),
        TimeUnit::Microsecond => micros,
        TimeUnit::Nanosecond => micros.saturating_mul(1_000),
    }
}

/// The sessions of one key's rows: for each time (in any order), its
/// session's `(start, end)`, or `None` for a NULL time.
pub fn assign(times: &[Option<i64>], gap: i64) -> Vec<Option<(i64, i64)>> {
    let mut order: Vec<(i64, usize)> = times.iter().enumerate().filter_map(|(i, t)| t.map(|t| (t, i))).collect();
    order.sort_unstable();
    let mut out = vec![None; times.len()];
    let mut first = 0;
    while first < order.len() {
        let mut last = first;
        while last + 1 < order.len() && order[last + 1].0 - order[last].0 < gap {
            last += 1;
        }
        let bounds = (order[first].0, order[last].0.saturating_add(gap));
        for &(_, i) in &order[first..=last] {
            out[i] = Some(bounds);
        }
        first = last + 1;
    }
    out
}

/// The two functions as DataFusion window functions.
pub fn functions() -> [WindowUDF; 2] {
    [WindowUDF::from(SessionBound::new(false)), WindowUDF::from(SessionBound::new(true))]
}

/// `eddy_session_start(ts, gap)` or `eddy_session_end(ts, gap)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionBound {
    end: bool,
    signature: Signature,
}

impl SessionBound {
    fn new(end: bool) -> Self {
        Self { end, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl WindowUDFImpl for SessionBound {
    fn name(&self) -> &str {
        if self.end { END } else { START }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(Evaluator { end: self.end }))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        match args.get_input_field(0).map(|f| f.data_type().clone()) {
            Some(t @ DataType::Timestamp(_, _)) => Ok(Arc::new(Field::new(args.name(), t, true))),
            Some(other) => plan_err!("SESSION's time column must be a TIMESTAMP, not {other}"),
            None => plan_err!("SESSION needs a time column"),
        }
    }
}

#[derive(Debug)]
struct Evaluator {
    end: bool,
}

impl PartitionEvaluator for Evaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let (Some(ts), Some(gap)) = (values.first(), values.get(1)) else {
            return exec_err!("SESSION takes a time and a gap");
        };
        let DataType::Timestamp(unit, _) = ts.data_type() else {
            return exec_err!("SESSION's time column must be a TIMESTAMP");
        };
        let gap = match (gap.len() > 0).then(|| ScalarValue::try_from_array(gap, 0)).transpose()? {
            Some(ScalarValue::Int64(Some(g))) if g > 0 => gap_in(*unit, g),
            _ => return exec_err!("SESSION's gap must be a positive constant"),
        };
        let raw = cast(ts, &DataType::Int64)?;
        let raw = raw.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("session times".into())
        })?;
        let times: Vec<Option<i64>> = raw.iter().collect();
        let bounds = assign(&times, gap);
        let out: Int64Array =
            bounds.iter().take(num_rows).map(|b| b.map(|(s, e)| if self.end { e } else { s })).collect();
        Ok(cast(&out, ts.data_type())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_closer_than_the_gap_are_one_session() {
        let t = [Some(10), Some(0), Some(5), Some(20), None, Some(29)];
        let s = assign(&t, 10);
        assert_eq!(s[1], Some((0, 20)));
        assert_eq!(s[2], Some((0, 20)));
        assert_eq!(s[0], Some((0, 20)));
        // 20 - 10 = gap: a new session (Flink's rule).
        assert_eq!(s[3], Some((20, 39)));
        assert_eq!(s[5], Some((20, 39)));
        assert_eq!(s[4], None);
        assert_eq!(gap_in(TimeUnit::Millisecond, 1_500), 2);
        assert_eq!(gap_in(TimeUnit::Nanosecond, 2), 2_000);
    }
}
