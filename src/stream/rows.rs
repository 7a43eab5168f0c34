//! Row keys for operator state: Arrow's row format (`arrow-row`), which is
//! order-preserving and covers every Arrow type, so group keys, join keys,
//! sort keys and whole rows are all encoded the same way. The bytes are
//! stored in RocksDB; they are stable for one eddy version (an upgrade that
//! changes Arrow's row format would need a state migration).

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use super::{StreamError, StreamResult};

/// Encodes columns of fixed types to row bytes and back. Handles the empty
/// column list (a global aggregate's group key), where every row is `[]`.
pub struct RowCodec {
    converter: Option<RowConverter>,
}

impl RowCodec {
    pub fn new(types: &[DataType]) -> StreamResult<Self> {
        Self::with_options(types.iter().map(|t| (t.clone(), SortOptions::default())).collect())
    }

    pub fn with_options(fields: Vec<(DataType, SortOptions)>) -> StreamResult<Self> {
        if fields.is_empty() {
            return Ok(Self { converter: None });
        }
        let fields = fields.into_iter().map(|(t, o)| SortField::new_with_options(t, o)).collect();
        Ok(Self { converter: Some(RowConverter::new(fields)?) })
    }

    /// Encodes `rows` rows of `columns`.
    pub fn encode(&self, columns: &[ArrayRef], rows: usize) -> StreamResult<Encoded> {
        match &self.converter {
            None => Ok(Encoded::Empty(rows)),
            Some(c) => Ok(Encoded::Rows(c.convert_columns(columns)?)),
        }
    }

    /// Decodes row bytes back into columns (`count` rows for the empty
    /// column list).
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> StreamResult<Vec<ArrayRef>> {
        match &self.converter {
            None => Ok(Vec::new()),
            Some(c) => {
                let parser = c.parser();
                let parsed: Vec<_> = rows.into_iter().map(|b| parser.parse(b)).collect();
                Ok(c.convert_rows(parsed)?)
            }
        }
    }
}

/// Encoded rows: one byte string per input row.
pub enum Encoded {
    Empty(usize),
    Rows(Rows),
}

impl Encoded {
    pub fn len(&self) -> usize {
        match self {
            Encoded::Empty(n) => *n,
            Encoded::Rows(r) => r.num_rows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn row(&self, i: usize) -> &[u8] {
        match self {
            Encoded::Empty(_) => &[],
            Encoded::Rows(r) => r.row(i).data(),
        }
    }
}

/// Bytes of a [`time_key`].
pub const TIME_KEY_LEN: usize = 9;

/// A time as 9 bytes that sort like the time (`None` first): for state
/// keys ordered by event time (join rows, sessions, top-N windows).
pub fn time_key(t: Option<i64>) -> [u8; TIME_KEY_LEN] {
    let mut k = [0u8; TIME_KEY_LEN];
    if let Some(t) = t {
        k[0] = 1;
        k[1..].copy_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
    }
    k
}

/// Writes `bytes` with a u32 length prefix, so a variable-length part can
/// start a composite key without being confused with what follows it.
pub fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Splits a length-prefixed part from the front of `buf`.
pub fn split_len_prefixed(buf: &[u8]) -> StreamResult<(&[u8], &[u8])> {
    let len = buf.get(..4).ok_or_else(|| StreamError::Corrupt("key length".into()))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let part = buf.get(4..4 + len).ok_or_else(|| StreamError::Corrupt("key part".into()))?;
    Ok((part, &buf[4 + len..]))
}

/// i64 counts as stored values.
pub fn encode_count(n: i64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

pub fn decode_count(v: &[u8]) -> StreamResult<i64> {
    let b: [u8; 8] = v.try_into().map_err(|_| StreamError::Corrupt("count".into()))?;
    Ok(i64::from_le_bytes(b))
}

/// A shared, cheaply cloned codec.
pub type SharedCodec = Arc<RowCodec>;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};

    #[test]
    fn rows_round_trip_and_sort_like_sql() {
        let codec = RowCodec::with_options(vec![
            (DataType::Int64, SortOptions { descending: true, nulls_first: false }),
            (DataType::Utf8, SortOptions::default()),
        ])
        .expect("codec");
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(1), Some(5), None])),
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("c")])),
        ];
        let rows = codec.encode(&cols, 3).expect("encode");
        // Descending on the first column, NULLs last.
        assert!(rows.row(1) < rows.row(0) && rows.row(0) < rows.row(2));
        let back = codec.decode([rows.row(2), rows.row(1)]).expect("decode");
        assert!(back[0].is_null(0));
        assert_eq!(back[1].as_any().downcast_ref::<StringArray>().map(|a| a.value(1)), Some("b"));
    }

    #[test]
    fn empty_key_for_global_aggregates() {
        let codec = RowCodec::new(&[]).expect("codec");
        let rows = codec.encode(&[], 4).expect("encode");
        assert_eq!(rows.len(), 4);
        assert!(rows.row(3).is_empty());
    }

    #[test]
    fn length_prefixed_parts_split_back() {
        let mut k = Vec::new();
        push_len_prefixed(&mut k, b"group");
        k.extend_from_slice(b"rest");
        let (part, rest) = split_len_prefixed(&k).expect("split");
        assert_eq!((part, rest), (&b"group"[..], &b"rest"[..]));
        assert!(split_len_prefixed(&[0, 0]).is_err());
        assert_eq!(decode_count(&encode_count(-3)).expect("count"), -3);
    }
}
