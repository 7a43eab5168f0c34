//! Timestamp ± a fixed-length interval as Arrow duration arithmetic.
//!
//! DataFusion adds an `INTERVAL` literal to a timestamp with calendar
//! arithmetic, row by row through chrono (months and days have no fixed
//! length in general). Windows are made of such expressions: `TUMBLE`'s
//! `window_end` is `date_bin(...) + size` and each copy of a `HOP` row is
//! `date_bin(...) - j * slide`, and the calendar path was a sixth of a
//! Nexmark q5 profile. An interval with no months (and, on a timestamp
//! with a time zone, no days: a day there is not always 24 hours) has a
//! fixed length, so the planner turns the literal into a duration in the
//! timestamp's unit before making the physical expression: Arrow then adds
//! plain integers, with the same result and the same type.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};

/// The length of interval literal `e` in `unit` when it is fixed for a
/// timestamp with time zone `tz` (no months; days only without a zone)
/// and a whole number of units.
pub fn fixed_length(e: &Expr, unit: &TimeUnit, has_tz: bool) -> Option<i64> {
    let nanos: i128 = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 && (v.days == 0 || !has_tz) => {
            i128::from(v.days) * 86_400_000_000_000 + i128::from(v.nanoseconds)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) if v.days == 0 || !has_tz => {
            (i128::from(v.days) * 86_400_000 + i128::from(v.milliseconds)) * 1_000_000
        }
        _ => return None,
    };
    let per_unit: i128 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    (nanos % per_unit == 0).then(|| i64::try_from(nanos / per_unit).ok()).flatten()
}

/// `e` with every `timestamp ± fixed interval literal` made `timestamp ±
/// duration literal` (see the module doc). Anything it cannot prove
/// fixed stays as it was.
pub fn fixed_intervals_as_durations(e: &Expr, schema: &DFSchema) -> Expr {
    let rewritten = e.clone().transform_up(|e| {
        let Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::Plus | Operator::Minus), right }) = &e else {
            return Ok(Transformed::no(e));
        };
        let Ok(DataType::Timestamp(unit, tz)) = left.get_type(schema) else { return Ok(Transformed::no(e)) };
        let Some(n) = fixed_length(right, &unit, tz.is_some()) else { return Ok(Transformed::no(e)) };
        let duration = match unit {
            TimeUnit::Second => ScalarValue::DurationSecond(Some(n)),
            TimeUnit::Millisecond => ScalarValue::DurationMillisecond(Some(n)),
            TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(Some(n)),
            TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(Some(n)),
        };
        Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(left.clone(), *op, Box::new(Expr::Literal(duration, None))))))
    });
    match rewritten {
        Ok(t) => t.data,
        Err(_) => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PhysExpr;
    use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::physical_expr::create_physical_expr;
    use datafusion::prelude::*;
    use std::sync::Arc;

    fn eval(e: &Expr, schema: &DFSchema, batch: &RecordBatch) -> ArrayRef {
        let p: PhysExpr = create_physical_expr(e, schema, &ExecutionProps::new(), &PhysicalPlanningContext::default()).unwrap();
        p.evaluate(batch).unwrap().into_array(batch.num_rows()).unwrap()
    }

    #[test]
    fn fixed_intervals_give_the_calendar_answer() {
        for tz in [None, Some("Europe/Paris")] {
            let ty = DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
            let schema = Schema::new(vec![Field::new("ts", ty.clone(), true)]);
            let df = DFSchema::try_from(schema.clone()).unwrap();
            let ts = TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None, Some(-5)]).with_timezone_opt(tz);
            let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap();
            let cases = [
                col("ts") + lit(ScalarValue::new_interval_mdn(0, 0, 10_000_000_000)),
                col("ts") - lit(ScalarValue::new_interval_mdn(0, 0, 2_000_000_000)),
                col("ts") - lit(ScalarValue::new_interval_mdn(0, 1, 0)) + lit(ScalarValue::new_interval_mdn(0, 0, 7_000)),
                col("ts") + lit(ScalarValue::new_interval_mdn(1, 0, 0)),
            ];
            for e in cases {
                let fast = fixed_intervals_as_durations(&e, &df);
                let (a, b) = (eval(&e, &df, &batch), eval(&fast, &df, &batch));
                assert_eq!(a.data_type(), b.data_type(), "{e}");
                assert_eq!(a.as_ref(), b.as_ref(), "{e} vs {fast}");
            }
            // Months (and days with a zone) keep calendar arithmetic.
            let months = col("ts") + lit(ScalarValue::new_interval_mdn(1, 0, 0));
            assert_eq!(fixed_intervals_as_durations(&months, &df), months);
            let days = col("ts") + lit(ScalarValue::new_interval_mdn(0, 1, 0));
            assert_eq!(fixed_intervals_as_durations(&days, &df) == days, tz.is_some());
        }
    }
}
