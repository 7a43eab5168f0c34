//! Postgres' text output for the types where the encoder we use
//! (arrow-pg) differs from Postgres: floats (shortest round-trip digits,
//! exponent outside 1e-4..1e15, `1e+20`), times and timestamps (fractional
//! seconds only when non-zero; `+00` for timestamptz, shown in UTC).
//! Only columns sent in text format are rewritten; binary format is exact
//! already.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Schema, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType,
};
use pgwire::api::portal::Format;

/// Rewrites text-format columns that need Postgres formatting as strings.
pub fn for_text(batch: RecordBatch, format: &Format) -> RecordBatch {
    let needs = |i: usize, dt: &DataType| {
        !format.is_binary(i)
            && matches!(
                dt,
                DataType::Float32
                    | DataType::Float64
                    | DataType::Time64(TimeUnit::Microsecond)
                    | DataType::Timestamp(TimeUnit::Microsecond, _)
            )
    };
    let schema = batch.schema();
    if !schema.fields().iter().enumerate().any(|(i, f)| needs(i, f.data_type())) {
        return batch;
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, (f, col)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        if needs(i, f.data_type()) {
            columns.push(Arc::new(render(col)));
            fields.push(Field::new(f.name(), DataType::Utf8, true));
        } else {
            columns.push(col.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap_or(batch)
}

fn render(col: &ArrayRef) -> datafusion::arrow::array::StringArray {
    let mut out = StringBuilder::with_capacity(col.len(), col.len() * 12);
    for row in 0..col.len() {
        if col.is_null(row) {
            out.append_null();
            continue;
        }
        let text = match col.data_type() {
            DataType::Float64 => float_text(col.as_primitive::<Float64Type>().value(row), 15),
            DataType::Float32 => float32_text(col.as_primitive::<Float32Type>().value(row)),
            DataType::Time64(_) => time_text(col.as_primitive::<Time64MicrosecondType>().value(row)),
            DataType::Timestamp(_, tz) => {
                let micros = col.as_primitive::<TimestampMicrosecondType>().value(row);
                let mut s = timestamp_text(micros);
                if tz.is_some() {
                    s.push_str("+00");
                }
                s
            }
            _ => String::new(),
        };
        out.append_value(text);
    }
    out.finish()
}

fn float32_text(v: f32) -> String {
    // f32's own shortest digits, not those of its f64 widening.
    shortest(&format!("{v:e}"), 6, v.is_nan(), v.is_infinite(), v.is_sign_negative())
}

/// Postgres' float8 output (extra_float_digits = 1, the default).
pub fn float_text(v: f64, threshold: i32) -> String {
    shortest(&format!("{v:e}"), threshold, v.is_nan(), v.is_infinite(), v.is_sign_negative())
}

fn shortest(sci: &str, threshold: i32, nan: bool, inf: bool, negative: bool) -> String {
    if nan {
        return "NaN".into();
    }
    if inf {
        return if negative { "-Infinity".into() } else { "Infinity".into() };
    }
    let Some((mantissa, exp)) = sci.split_once('e') else { return sci.to_string() };
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if exp < -4 || exp >= threshold {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
        }
    } else {
        format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
    }
}

fn frac_text(micros: i64) -> String {
    if micros == 0 {
        return String::new();
    }
    format!(".{micros:06}").trim_end_matches('0').to_string()
}

fn time_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    format!("{:02}:{:02}:{:02}{}", secs / 3600, (secs / 60) % 60, secs % 60, frac_text(frac))
}

fn timestamp_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(dt) => format!("{}{}", dt.format("%Y-%m-%d %H:%M:%S"), frac_text(frac)),
        None => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_postgres() {
        assert_eq!(float_text(90.0, 15), "90");
        assert_eq!(float_text(1.5, 15), "1.5");
        assert_eq!(float_text(0.1 + 0.2, 15), "0.30000000000000004");
        assert_eq!(float_text(1e20, 15), "1e+20");
        assert_eq!(float_text(1e15, 15), "1e+15");
        assert_eq!(float_text(123456.0, 15), "123456");
        assert_eq!(float_text(0.0001, 15), "0.0001");
        assert_eq!(float_text(0.00001, 15), "1e-05");
        assert_eq!(float_text(-2.5e-7, 15), "-2.5e-07");
        assert_eq!(float32_text(1.1), "1.1");
        assert_eq!(float32_text(1e6), "1e+06");
    }

    #[test]
    fn times_like_postgres() {
        assert_eq!(time_text(49_501_000_000), "13:45:01");
        assert_eq!(time_text(49_501_250_000), "13:45:01.25");
        assert_eq!(timestamp_text(1_704_164_645_250_000), "2024-01-02 03:04:05.25");
    }
}
