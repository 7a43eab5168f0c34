//! Row codec: one table row <-> the bytes stored as a RocksDB value.
//!
//! A row is the concatenation of its columns in table order. Each column is a
//! presence byte (`0` NULL, `1` value) followed, when present, by a payload:
//! fixed-width little-endian for numbers and times (16 bytes for decimals and
//! intervals), and a `u32` length plus the bytes for text and bytea.
//! The codec is schema-driven: the catalog's Arrow schema is the only type
//! information, and adding a type means adding it here and in `keys.rs`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, SchemaRef, Time64MicrosecondType,
    TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

use super::{StateError, StateResult};

/// Appends the encoding of row `row` of `columns` to `out`.
pub fn encode_row(columns: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> StateResult<()> {
    for array in columns {
        if array.is_null(row) {
            out.push(0);
            continue;
        }
        out.push(1);
        match array.data_type() {
            DataType::Boolean => out.push(u8::from(array.as_boolean().value(row))),
            DataType::Int16 => {
                out.extend_from_slice(&array.as_primitive::<Int16Type>().value(row).to_le_bytes())
            }
            DataType::Int32 => {
                out.extend_from_slice(&array.as_primitive::<Int32Type>().value(row).to_le_bytes())
            }
            DataType::Date32 => {
                out.extend_from_slice(&array.as_primitive::<Date32Type>().value(row).to_le_bytes())
            }
            DataType::Int64 => {
                out.extend_from_slice(&array.as_primitive::<Int64Type>().value(row).to_le_bytes())
            }
            DataType::Time64(_) => out.extend_from_slice(
                &array.as_primitive::<Time64MicrosecondType>().value(row).to_le_bytes(),
            ),
            DataType::Timestamp(_, _) => out.extend_from_slice(
                &array.as_primitive::<TimestampMicrosecondType>().value(row).to_le_bytes(),
            ),
            DataType::Float32 => out
                .extend_from_slice(&array.as_primitive::<Float32Type>().value(row).to_le_bytes()),
            DataType::Float64 => out
                .extend_from_slice(&array.as_primitive::<Float64Type>().value(row).to_le_bytes()),
            DataType::Decimal128(_, _) => out.extend_from_slice(
                &array.as_primitive::<Decimal128Type>().value(row).to_le_bytes(),
            ),
            DataType::Interval(_) => {
                let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
                out.extend_from_slice(&v.months.to_le_bytes());
                out.extend_from_slice(&v.days.to_le_bytes());
                out.extend_from_slice(&v.nanoseconds.to_le_bytes());
            }
            DataType::Utf8 => put_bytes(array.as_string::<i32>().value(row).as_bytes(), out),
            DataType::Binary => put_bytes(array.as_binary::<i32>().value(row), out),
            other => return Err(StateError::UnsupportedType(other.to_string())),
        }
    }
    Ok(())
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A typed Arrow builder for one column.
enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Interval(IntervalMonthDayNanoBuilder),
}

impl ColumnBuilder {
    fn new(dt: &DataType, capacity: usize) -> StateResult<Self> {
        Ok(match dt {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int16 => Self::Int16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(p, s) => {
                Self::Decimal(Decimal128Builder::with_capacity(capacity), *p, *s)
            }
            DataType::Utf8 => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 8)),
            DataType::Date32 => Self::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Time64(_) => Self::Time64(Time64MicrosecondBuilder::with_capacity(capacity)),
            DataType::Timestamp(_, tz) => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                tz.clone(),
            ),
            DataType::Interval(_) => {
                Self::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            other => return Err(StateError::UnsupportedType(other.to_string())),
        })
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, _, _) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date32(b) => b.append_null(),
            Self::Time64(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
            Self::Interval(b) => b.append_null(),
        }
    }

    /// Reads one present value from `buf` and appends it (if `keep`);
    /// returns the number of bytes consumed.
    fn read_value(&mut self, buf: &[u8], keep: bool) -> StateResult<usize> {
        fn fixed<const N: usize>(buf: &[u8]) -> StateResult<[u8; N]> {
            buf.get(..N)
                .and_then(|s| s.try_into().ok())
                .ok_or(StateError::Corrupt("row value truncated"))
        }
        let used = match self {
            Self::Boolean(b) => {
                let v = fixed::<1>(buf)?;
                if keep {
                    b.append_value(v[0] != 0)
                }
                1
            }
            Self::Int16(b) => {
                let v = i16::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                2
            }
            Self::Int32(b) => {
                let v = i32::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                4
            }
            Self::Date32(b) => {
                let v = i32::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                4
            }
            Self::Int64(b) => {
                let v = i64::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                8
            }
            Self::Time64(b) => {
                let v = i64::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                8
            }
            Self::Timestamp(b, _) => {
                let v = i64::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                8
            }
            Self::Float32(b) => {
                let v = f32::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                4
            }
            Self::Float64(b) => {
                let v = f64::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                8
            }
            Self::Decimal(b, _, _) => {
                let v = i128::from_le_bytes(fixed(buf)?);
                if keep {
                    b.append_value(v)
                }
                16
            }
            Self::Interval(b) => {
                let v: [u8; 16] = fixed(buf)?;
                if keep {
                    let months = i32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                    let days = i32::from_le_bytes([v[4], v[5], v[6], v[7]]);
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&v[8..16]);
                    b.append_value(IntervalMonthDayNano::new(months, days, i64::from_le_bytes(n)))
                }
                16
            }
            Self::Utf8(b) => {
                let (bytes, used) = read_bytes(buf)?;
                if keep {
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| StateError::Corrupt("text is not UTF-8"))?;
                    b.append_value(s)
                }
                used
            }
            Self::Binary(b) => {
                let (bytes, used) = read_bytes(buf)?;
                if keep {
                    b.append_value(bytes)
                }
                used
            }
        };
        Ok(used)
    }

    fn finish(self) -> StateResult<ArrayRef> {
        Ok(match self {
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Int16(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Float32(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Decimal(mut b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(p, s)
                    .map_err(|e| StateError::Arrow(e.to_string()))?,
            ),
            Self::Utf8(mut b) => Arc::new(b.finish()),
            Self::Binary(mut b) => Arc::new(b.finish()),
            Self::Date32(mut b) => Arc::new(b.finish()),
            Self::Time64(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Self::Interval(mut b) => Arc::new(b.finish()),
        })
    }
}

fn read_bytes(buf: &[u8]) -> StateResult<(&[u8], usize)> {
    let len_bytes: [u8; 4] = buf
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(StateError::Corrupt("length truncated"))?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let bytes = buf.get(4..4 + len).ok_or(StateError::Corrupt("bytes truncated"))?;
    Ok((bytes, 4 + len))
}

/// Decodes stored rows into an Arrow batch with a chosen projection.
pub struct RowDecoder {
    /// The full table schema (the order of columns in a stored row).
    table_schema: SchemaRef,
    /// The output schema (projected).
    out_schema: SchemaRef,
    /// For each table column: its position in the output, if projected.
    slots: Vec<Option<usize>>,
    builders: Vec<ColumnBuilder>,
    /// Builders for skipped columns, used only to parse past their bytes.
    skippers: Vec<Option<ColumnBuilder>>,
    rows: usize,
    capacity: usize,
}

impl RowDecoder {
    pub fn new(
        table_schema: SchemaRef,
        projection: Option<&[usize]>,
        capacity: usize,
    ) -> StateResult<Self> {
        let all: Vec<usize> = (0..table_schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let mut slots = vec![None; table_schema.fields().len()];
        for (out, &col) in projection.iter().enumerate() {
            if let Some(slot) = slots.get_mut(col) {
                *slot = Some(out);
            }
        }
        let out_schema = Arc::new(
            table_schema
                .project(projection)
                .map_err(|e| StateError::Arrow(e.to_string()))?,
        );
        let mut decoder = Self {
            table_schema,
            out_schema,
            slots,
            builders: Vec::new(),
            skippers: Vec::new(),
            rows: 0,
            capacity,
        };
        decoder.reset()?;
        Ok(decoder)
    }

    fn reset(&mut self) -> StateResult<()> {
        self.builders = self
            .out_schema
            .fields()
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type(), self.capacity))
            .collect::<StateResult<_>>()?;
        self.skippers = self
            .table_schema
            .fields()
            .iter()
            .zip(&self.slots)
            .map(|(f, slot)| match slot {
                Some(_) => Ok(None),
                None => ColumnBuilder::new(f.data_type(), 0).map(Some),
            })
            .collect::<StateResult<_>>()?;
        self.rows = 0;
        Ok(())
    }

    pub fn schema(&self) -> SchemaRef {
        self.out_schema.clone()
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decodes one stored row and appends its projected columns.
    pub fn push(&mut self, mut buf: &[u8]) -> StateResult<()> {
        for col in 0..self.slots.len() {
            let present = *buf.first().ok_or(StateError::Corrupt("row truncated"))?;
            buf = &buf[1..];
            let (builder, keep) = match (self.slots[col], self.skippers[col].as_mut()) {
                (Some(out), _) => (&mut self.builders[out], true),
                (None, Some(skip)) => (skip, false),
                (None, None) => return Err(StateError::Corrupt("decoder slot missing")),
            };
            if present == 0 {
                if keep {
                    builder.append_null();
                }
                continue;
            }
            let used = builder.read_value(buf, keep)?;
            buf = &buf[used..];
        }
        self.rows += 1;
        Ok(())
    }

    /// Finishes the rows pushed so far into a batch and starts a new one.
    pub fn flush(&mut self) -> StateResult<RecordBatch> {
        let builders = std::mem::take(&mut self.builders);
        let columns = builders
            .into_iter()
            .map(ColumnBuilder::finish)
            .collect::<StateResult<Vec<_>>>()?;
        let rows = self.rows;
        self.reset()?;
        let options =
            datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.out_schema.clone(), columns, &options)
            .map_err(|e| StateError::Arrow(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn round_trip_with_projection_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", DataType::Int64, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(1), None])),
            Arc::new(StringArray::from(vec![Some("x"), Some("héllo")])),
            Arc::new(Int64Array::from(vec![Some(3), Some(4)])),
        ];
        let mut dec = RowDecoder::new(schema, Some(&[2, 1]), 4).expect("decoder");
        for row in 0..2 {
            let mut buf = Vec::new();
            encode_row(&cols, row, &mut buf).expect("encode");
            dec.push(&buf).expect("decode");
        }
        let batch = dec.flush().expect("batch");
        assert_eq!(batch.num_columns(), 2);
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().values(), &[3, 4]);
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "héllo");
    }
}
