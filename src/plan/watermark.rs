//! Which columns of a stream carry a watermark, and how a watermark moves
//! through an expression.
//!
//! A watermark on column `c` with value `w` promises that no row with
//! `c < w` will arrive any more. Sources produce them (`WATERMARK FOR`);
//! an expression that does not decrease when its input grows (`ts`,
//! `ts + INTERVAL ...`, `date_bin(...)`, `date_trunc(...)`, casts) carries
//! the watermark of the one column it reads: its value at `w` is a
//! watermark of the output column. That is how `TUMBLE`'s `window_start`
//! and `window_end` get watermarks, and so how a GROUP BY over a window
//! knows when the window is closed (RisingWave's model).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use super::PhysExpr;

/// The input column (index in `schema`) whose watermark `e` carries, if
/// `e` is non-decreasing in one column that has a watermark (`wm`) and
/// reads no other column.
pub fn monotone_input(e: &Expr, schema: &DFSchema, wm: &[usize]) -> Option<usize> {
    match e {
        Expr::Alias(a) => monotone_input(&a.expr, schema, wm),
        Expr::Column(c) => {
            let i = schema.index_of_column(c).ok()?;
            wm.contains(&i).then_some(i)
        }
        Expr::Cast(c) if is_time_or_number(c.field.data_type()) => monotone_input(&c.expr, schema, wm),
        Expr::TryCast(c) if is_time_or_number(c.field.data_type()) => monotone_input(&c.expr, schema, wm),
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right }) => match (is_constant(left), is_constant(right)) {
            (true, false) => monotone_input(right, schema, wm),
            (false, true) => monotone_input(left, schema, wm),
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) if is_constant(right) => {
            monotone_input(left, schema, wm)
        }
        Expr::ScalarFunction(f) => {
            let name = f.func.name();
            let (arg, rest): (usize, &[usize]) = match name {
                "date_bin" => (1, &[0, 2]),
                "date_trunc" => (1, &[0]),
                _ => return None,
            };
            let others_constant = rest.iter().all(|&i| f.args.get(i).is_none_or(is_constant));
            if !others_constant {
                return None;
            }
            monotone_input(f.args.get(arg)?, schema, wm)
        }
        _ => None,
    }
}

fn is_time_or_number(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64) || t.is_integer() || t.is_floating()
}

fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Literal(..) => true,
        Expr::Alias(a) => is_constant(&a.expr),
        Expr::Cast(c) => is_constant(&c.expr),
        Expr::TryCast(c) => is_constant(&c.expr),
        _ => false,
    }
}

/// The watermark of `expr`'s output when input column `col` has watermark
/// `value`: the expression evaluated on a row holding `value` (other
/// columns NULL; [`monotone_input`] made sure it reads no other column).
pub fn derive(expr: &PhysExpr, input: &SchemaRef, col: usize, value: &ScalarValue) -> Option<ScalarValue> {
    let columns: Vec<ArrayRef> = input
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == col {
                value.cast_to(f.data_type()).and_then(|v| v.to_array_of_size(1))
            } else {
                Ok(new_null_array(f.data_type(), 1))
            }
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let batch = RecordBatch::try_new(Arc::clone(input), columns).ok()?;
    let out = expr.evaluate(&batch).ok()?.into_array(1).ok()?;
    let v = ScalarValue::try_from_array(&out, 0).ok()?;
    (!v.is_null()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::prelude::*;

    #[test]
    fn window_expressions_carry_the_watermark() {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]);
        let df = DFSchema::try_from(schema.clone()).unwrap();
        let ts = col("ts");
        let bin = datafusion::functions::expr_fn::date_bin(lit(ScalarValue::new_interval_mdn(0, 0, 60_000_000_000)), ts.clone(), lit(ScalarValue::TimestampMicrosecond(Some(0), None)));
        assert_eq!(monotone_input(&bin, &df, &[1]), Some(1));
        assert_eq!(monotone_input(&(ts.clone() - lit(ScalarValue::new_interval_mdn(0, 0, 5))), &df, &[1]), Some(1));
        assert_eq!(monotone_input(&(lit(1) - col("k")), &df, &[0]), None);
        assert_eq!(monotone_input(&(ts.clone() + col("k")), &df, &[1]), None);
        assert_eq!(monotone_input(&ts, &df, &[]), None);
        // Evaluated at the watermark.
        let props = datafusion::execution::context::ExecutionProps::new();
        let minus = ts - lit(ScalarValue::new_interval_mdn(0, 0, 5_000_000_000));
        let ctx = datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default();
        let phys = datafusion::physical_expr::create_physical_expr(&minus, &df, &props, &ctx).unwrap();
        let w = ScalarValue::TimestampMicrosecond(Some(90_000_000), None);
        let out = derive(&phys, &Arc::new(schema), 1, &w);
        assert_eq!(out, Some(ScalarValue::TimestampMicrosecond(Some(85_000_000), None)));
    }
}
