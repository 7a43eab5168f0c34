//! Order-preserving ("memcomparable") key encoding.
//!
//! Every RocksDB key eddy writes is built here, so that RocksDB's byte order
//! equals SQL order on the primary key and a key range is a value range.
//! The layout of the whole key space is documented in `docs/state-keys.md`:
//!
//! ```text
//! m/next_table_id            -> u64 BE              (catalog counter)
//! m/table/<id: u64 BE>       -> JSON TableDef       (catalog entry)
//! t<id: u64 BE><pk bytes>    -> encoded row          (table data)
//! ```
//!
//! Primary-key columns are encoded one after another:
//! * integers, dates, times, timestamps: big-endian with the sign bit flipped;
//! * floats: IEEE bits, sign bit flipped for positives and all bits inverted
//!   for negatives (-0.0 is normalised to 0.0);
//! * decimals: the i128 mantissa big-endian, sign bit flipped;
//! * booleans: one byte;
//! * text and bytea: bytes with `0x00` escaped as `0x00 0xFF`, closed by
//!   `0x00 0x00`, so a shorter string sorts before its extensions.
//!
//! A table without a primary key gets a hidden row id (u64 BE) as its key.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Decimal128Array, StringArray,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    IntervalMonthDayNanoType, Time64MicrosecondType, TimestampMicrosecondType,
};

use super::{StateError, StateResult};

/// Prefix byte of table data keys.
pub const TABLE_PREFIX: u8 = b't';
/// Prefix of catalog entries.
pub const META_TABLE_PREFIX: &[u8] = b"m/table/";
/// Key of the table-id counter.
pub const META_NEXT_TABLE_ID: &[u8] = b"m/next_table_id";

/// The key prefix under which all rows of a table live.
pub fn table_prefix(table_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(TABLE_PREFIX);
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

/// The catalog key of a table definition.
pub fn meta_table_key(table_id: u64) -> Vec<u8> {
    let mut k = META_TABLE_PREFIX.to_vec();
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

/// Prefix byte of change-log entries: `l<seq: u64 BE>`.
pub const LOG_PREFIX: u8 = b'l';
/// Prefix byte of materialized-view contents: `v<mv id: u64 BE><row>`.
pub const MV_PREFIX: u8 = b'v';
/// Prefix byte of operator state: `s<mv id: u64 BE><node: u32 BE><key>`.
pub const OP_STATE_PREFIX: u8 = b's';
/// Catalog entries of materialized views.
pub const META_MV_PREFIX: &[u8] = b"m/mv/";
/// Catalog entries of (plain) views.
pub const META_VIEW_PREFIX: &[u8] = b"m/view/";
/// The last complete checkpoint: epoch (u64 BE) and log position (u64 BE).
pub const META_CHECKPOINT: &[u8] = b"m/checkpoint";
/// `m/sink/<id>`: a sink's definition (like a materialized view's).
pub const META_SINK_PREFIX: &[u8] = b"m/sink/";
/// `m/srcoff/<table id><partition>` → the next Kafka offset to ingest
/// (i64 BE), written with the rows it follows.
pub const META_SOURCE_OFFSET_PREFIX: &[u8] = b"m/srcoff/";
/// `m/srcstart/<table id><partition>` → where ingest of a partition began
/// (a new view on a source reads Kafka from there up to the offsets it
/// starts from).
pub const META_SOURCE_START_PREFIX: &[u8] = b"m/srcstart/";
/// `m/srcwm/<table id><partition>` → a Kafka partition's event-time clock
/// (i64 BE, see `connector::kafka::clock`), written with its offsets.
pub const META_SOURCE_CLOCK_PREFIX: &[u8] = b"m/srcwm/";
/// Operator-node id of a sink's outbox (`s<sink id><node><epoch><chunk>`).
pub const SINK_OUTBOX_NODE: u32 = u32::MAX;

/// A source partition's offset (or start) key.
pub fn source_offset_key(prefix: &[u8], table_id: u64, partition: i32) -> Vec<u8> {
    let mut k = meta_key(prefix, table_id);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// The partition of a source offset key under `meta_key(prefix, table_id)`.
pub fn source_offset_partition(key: &[u8]) -> Option<i32> {
    let tail = key.get(key.len().checked_sub(4)?..)?;
    Some(u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]) as i32)
}

/// The big-endian u64 after a one-byte `tag`, if `key` starts so and is
/// long enough (exactly 9 bytes when `exact`).
fn u64_after_tag(key: &[u8], tag: u8, exact: bool) -> Option<u64> {
    if key.first() != Some(&tag) || key.len() < 9 || (exact && key.len() != 9) {
        return None;
    }
    key[1..9].try_into().ok().map(u64::from_be_bytes)
}

/// The table id of a table-data key, if `key` is one.
pub fn table_id_of(key: &[u8]) -> Option<u64> {
    u64_after_tag(key, TABLE_PREFIX, false)
}

/// The key of change-log entry `seq`.
pub fn log_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOG_PREFIX);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number of a change-log key.
pub fn log_seq(key: &[u8]) -> Option<u64> {
    u64_after_tag(key, LOG_PREFIX, true)
}

/// The prefix of a materialized view's rows.
pub fn mv_prefix(mv_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(MV_PREFIX);
    k.extend_from_slice(&mv_id.to_be_bytes());
    k
}

/// The prefix of all operator state of one materialized view.
pub fn mv_state_prefix(mv_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(OP_STATE_PREFIX);
    k.extend_from_slice(&mv_id.to_be_bytes());
    k
}

/// The prefix of one operator's state.
pub fn op_state_prefix(mv_id: u64, node: u32) -> Vec<u8> {
    let mut k = mv_state_prefix(mv_id);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// The catalog key of a materialized view or view definition.
pub fn meta_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // All bytes were 0xFF: no upper bound exists; use a key past everything.
    vec![0xFF; prefix.len() + 1]
}

/// Appends the memcomparable encoding of `array[row]` to `out`.
/// A primary-key value is never NULL; a NULL here is an error.
pub fn encode_key_value(array: &ArrayRef, row: usize, out: &mut Vec<u8>) -> StateResult<()> {
    if array.is_null(row) {
        return Err(StateError::NullKey);
    }
    match array.data_type() {
        DataType::Boolean => {
            let a: &BooleanArray = array.as_boolean();
            out.push(u8::from(a.value(row)));
        }
        DataType::Int16 => {
            let v = array.as_primitive::<Int16Type>().value(row);
            out.extend_from_slice(&((v as u16) ^ 0x8000).to_be_bytes());
        }
        DataType::Int32 => encode_i32(array.as_primitive::<Int32Type>().value(row), out),
        DataType::Date32 => encode_i32(array.as_primitive::<Date32Type>().value(row), out),
        DataType::Int64 => encode_i64(array.as_primitive::<Int64Type>().value(row), out),
        DataType::Time64(_) => {
            encode_i64(array.as_primitive::<Time64MicrosecondType>().value(row), out)
        }
        DataType::Timestamp(_, _) => {
            encode_i64(array.as_primitive::<TimestampMicrosecondType>().value(row), out)
        }
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            let v = if v == 0.0 { 0.0f32 } else { v };
            let bits = v.to_bits();
            let bits = if bits & 0x8000_0000 != 0 { !bits } else { bits ^ 0x8000_0000 };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            let v = if v == 0.0 { 0.0f64 } else { v };
            let bits = v.to_bits();
            let bits = if bits & (1 << 63) != 0 { !bits } else { bits ^ (1 << 63) };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        DataType::Decimal128(_, _) => {
            let a: &Decimal128Array = array.as_primitive();
            let v = a.value(row);
            out.extend_from_slice(&((v as u128) ^ (1u128 << 127)).to_be_bytes());
        }
        DataType::Utf8 => {
            let a: &StringArray = array.as_string();
            encode_bytes(a.value(row).as_bytes(), out);
        }
        DataType::Binary => {
            let a: &BinaryArray = array.as_binary();
            encode_bytes(a.value(row), out);
        }
        DataType::Interval(_) => {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            encode_i32(v.months, out);
            encode_i32(v.days, out);
            encode_i64(v.nanoseconds, out);
        }
        other => return Err(StateError::UnsupportedType(other.to_string())),
    }
    Ok(())
}

fn encode_i32(v: i32, out: &mut Vec<u8>) {
    out.extend_from_slice(&((v as u32) ^ 0x8000_0000).to_be_bytes());
}

fn encode_i64(v: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&((v as u64) ^ (1u64 << 63)).to_be_bytes());
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use std::sync::Arc;

    fn key_of(array: ArrayRef) -> Vec<Vec<u8>> {
        (0..array.len())
            .map(|i| {
                let mut k = Vec::new();
                encode_key_value(&array, i, &mut k).expect("encodable");
                k
            })
            .collect()
    }

    #[test]
    fn integers_sort_like_numbers() {
        let keys = key_of(Arc::new(Int64Array::from(vec![i64::MIN, -5, -1, 0, 1, 7, i64::MAX])));
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn floats_sort_like_numbers() {
        let keys = key_of(Arc::new(Float64Array::from(vec![-1e9, -2.5, -0.0, 0.5, 3.0, 1e300])));
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn strings_sort_lexicographically_even_with_nul() {
        let keys = key_of(Arc::new(StringArray::from(vec!["", "a", "a\0", "a\0b", "ab", "b"])));
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn prefix_end_bounds_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
