//! Kafka messages → Arrow rows of a source or table.
//!
//! A chunk of messages is decoded in one columnar pass (arrow-json or
//! arrow-csv over the payloads); only when that pass fails is the chunk
//! decoded message by message, so that one bad message is rejected (with
//! its partition, offset and error) and the rest go through. Formats:
//! - PLAIN: each message is one row.
//! - UPSERT: the key holds the primary key (a JSON object, or for a
//!   one-column key its bare value); a value upserts the row, a null value
//!   (tombstone) deletes the key.
//! - DEBEZIUM: the value is a Debezium change event (`before`, `after`,
//!   `op`, optionally inside `payload`); `c`/`r`/`u` upsert `after`, `d`
//!   deletes `before`, tombstones are ignored.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};

use super::spec::{ConnectorDef, Encode, Format, IncludeKind};

/// One message, borrowed from the consumer.
pub struct MessageRef<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// Values of the headers named by `INCLUDE header`, in that order.
    pub headers: Vec<Option<&'a [u8]>>,
}

/// What to do with a decoded row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    /// Insert (a table with a key: insert or replace).
    Upsert,
    /// Delete the row with this row's primary key.
    Delete,
}

/// A message that could not be decoded.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub error: String,
}

/// The rows of a chunk of messages, in message order.
pub struct Decoded {
    /// In the table's column order.
    pub batch: RecordBatch,
    pub ops: Vec<RowOp>,
    /// For each row, the index of its message in the chunk.
    pub message: Vec<usize>,
    pub rejected: Vec<Rejected>,
}

/// Decodes messages for one source or table.
pub struct Decoder {
    schema: SchemaRef,
    /// The columns the payload fills (the declared ones), all nullable.
    payload_schema: SchemaRef,
    /// Not-null declared columns (checked per row).
    required: Vec<usize>,
    /// Declared primary key (indexes into the schema).
    primary_key: Vec<usize>,
    format: Format,
    encode: Encode,
    delimiter: u8,
    includes: Vec<IncludeKind>,
}

impl Decoder {
    /// `schema` is the table's: declared columns, then one column per
    /// `INCLUDE`, in that order.
    pub fn new(schema: SchemaRef, primary_key: Vec<usize>, def: &ConnectorDef) -> Result<Self, String> {
        let declared = schema.fields().len().checked_sub(def.includes.len()).ok_or("too few columns")?;
        let payload_fields: Vec<Field> =
            schema.fields().iter().take(declared).map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let required = (0..declared).filter(|&i| !schema.field(i).is_nullable()).collect();
        let delimiter = match def.encode_options.get("delimiter").map(String::as_str) {
            None => b',',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some("\\t") => b'\t',
            Some(d) => return Err(format!("ENCODE CSV delimiter must be one character, not '{d}'")),
        };
        if let Some(h) = def.encode_options.get("without_header") {
            if !h.eq_ignore_ascii_case("true") {
                return Err("ENCODE CSV reads one row per message: without_header must be 'true'".into());
            }
        }
        if def.encode == Encode::Csv && def.format != Format::Plain {
            return Err("ENCODE CSV works with FORMAT PLAIN only".into());
        }
        Ok(Self {
            schema,
            payload_schema: Arc::new(Schema::new(payload_fields)),
            required,
            primary_key,
            format: def.format,
            encode: def.encode,
            delimiter,
            includes: def.includes.iter().map(|i| i.kind.clone()).collect(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes a chunk of messages.
    pub fn decode(&self, messages: &[MessageRef<'_>]) -> Decoded {
        let mut rejected = Vec::new();
        // Each row to decode: its JSON (or CSV line), op and message.
        let mut rows: Vec<(Cow<'_, [u8]>, RowOp, usize)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let before = rows.len();
            if let Err(e) = self.rows_of(m, i, &mut rows) {
                rows.truncate(before);
                rejected.push(Rejected { partition: m.partition, offset: m.offset, error: e });
            }
        }
        let texts: Vec<&[u8]> = rows.iter().map(|(r, _, _)| r.as_ref()).collect();
        let mut keep: Vec<usize> = (0..rows.len()).collect();
        let payload = match self.parse(&texts) {
            Ok(b) => b,
            Err(_) => {
                // Find the bad messages one by one.
                let mut good = Vec::new();
                let mut batches = Vec::new();
                for (i, t) in texts.iter().enumerate() {
                    match self.parse(std::slice::from_ref(t)) {
                        Ok(b) => {
                            good.push(i);
                            batches.push(b);
                        }
                        Err(e) => {
                            let m = &messages[rows[i].2];
                            rejected.push(Rejected { partition: m.partition, offset: m.offset, error: e });
                        }
                    }
                }
                keep = good;
                match datafusion::arrow::compute::concat_batches(&self.payload_schema, &batches) {
                    Ok(b) => b,
                    Err(e) => {
                        for &i in &keep {
                            let m = &messages[rows[i].2];
                            rejected.push(Rejected { partition: m.partition, offset: m.offset, error: e.to_string() });
                        }
                        keep.clear();
                        RecordBatch::new_empty(self.payload_schema.clone())
                    }
                }
            }
        };
        // NOT NULL columns (deletes only need the key).
        let mut mask = vec![true; keep.len()];
        for (j, &i) in keep.iter().enumerate() {
            let op = rows[i].1;
            let cols: &[usize] = if op == RowOp::Delete { &self.primary_key } else { &self.required };
            if let Some(&c) = cols.iter().find(|&&c| payload.column(c).is_null(j)) {
                mask[j] = false;
                let m = &messages[rows[i].2];
                rejected.push(Rejected {
                    partition: m.partition,
                    offset: m.offset,
                    error: format!("missing value for column \"{}\"", self.schema.field(c).name()),
                });
            }
        }
        let (payload, keep) = if mask.iter().all(|b| *b) {
            (payload, keep)
        } else {
            let filter: datafusion::arrow::array::BooleanArray = mask.iter().map(|b| Some(*b)).collect();
            let batch = datafusion::arrow::compute::filter_record_batch(&payload, &filter)
                .unwrap_or_else(|_| RecordBatch::new_empty(self.payload_schema.clone()));
            (batch, keep.into_iter().zip(mask).filter(|(_, k)| *k).map(|(i, _)| i).collect())
        };
        let message: Vec<usize> = keep.iter().map(|&i| rows[i].2).collect();
        let ops: Vec<RowOp> = keep.iter().map(|&i| rows[i].1).collect();
        let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
        for (k, kind) in self.includes.iter().enumerate() {
            let field = self.schema.field(self.payload_schema.fields().len() + k);
            columns.push(metadata_column(kind, field, k, messages, &message));
        }
        rejected.sort_by_key(|r| (r.partition, r.offset));
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(message.len()));
        let batch = match RecordBatch::try_new_with_options(self.schema.clone(), columns, &options) {
            Ok(b) => b,
            Err(e) => {
                for &i in &message {
                    let m = &messages[i];
                    rejected.push(Rejected { partition: m.partition, offset: m.offset, error: e.to_string() });
                }
                return Decoded { batch: RecordBatch::new_empty(self.schema.clone()), ops: Vec::new(), message: Vec::new(), rejected };
            }
        };
        Decoded { batch, ops, message, rejected }
    }

    /// Appends the rows message `i` stands for (none for an ignored
    /// tombstone) to `out`; on `Err` the caller drops what was appended.
    /// (Appending, rather than returning a list, saves an allocation per
    /// message on the PLAIN path.)
    fn rows_of<'a>(&self, m: &MessageRef<'a>, i: usize, out: &mut Vec<(Cow<'a, [u8]>, RowOp, usize)>) -> Result<(), String> {
        let mut push = |row: Cow<'a, [u8]>, op: RowOp| out.push((row, op, i));
        match self.format {
            Format::Plain => match m.payload {
                Some(p) if !p.iter().all(u8::is_ascii_whitespace) => {
                    push(Cow::Borrowed(p), RowOp::Upsert);
                    Ok(())
                }
                _ => Err("empty message".into()),
            },
            Format::Upsert => match m.payload {
                Some(p) if !p.is_empty() => {
                    push(Cow::Borrowed(p), RowOp::Upsert);
                    Ok(())
                }
                _ => {
                    let key = m.key.ok_or("a tombstone (null value) without a key")?;
                    push(Cow::Owned(self.key_object(key)?), RowOp::Delete);
                    Ok(())
                }
            },
            Format::Debezium => {
                let Some(p) = m.payload.filter(|p| !p.is_empty()) else { return Ok(()) };
                let v: serde_json::Value = serde_json::from_slice(p).map_err(|e| format!("invalid JSON: {e}"))?;
                let event = match v.get("payload") {
                    Some(inner) if inner.is_object() => inner,
                    _ => &v,
                };
                let op = event.get("op").and_then(|o| o.as_str()).ok_or("a Debezium event without \"op\"")?;
                let row = |name: &str| -> Result<Cow<'a, [u8]>, String> {
                    match event.get(name) {
                        Some(r) if r.is_object() => Ok(Cow::Owned(r.to_string().into_bytes())),
                        _ => Err(format!("a Debezium \"{op}\" event without \"{name}\"")),
                    }
                };
                match op {
                    "c" | "r" => {
                        push(row("after")?, RowOp::Upsert);
                        Ok(())
                    }
                    "u" => {
                        if let (Some(b), Some(a)) = (event.get("before"), event.get("after")) {
                            let key_changed = b.is_object()
                                && self.primary_key.iter().any(|&c| {
                                    let name = self.schema.field(c).name();
                                    b.get(name) != a.get(name)
                                });
                            if key_changed {
                                push(row("before")?, RowOp::Delete);
                            }
                        }
                        push(row("after")?, RowOp::Upsert);
                        Ok(())
                    }
                    "d" => {
                        push(row("before")?, RowOp::Delete);
                        Ok(())
                    }
                    "t" | "m" => Ok(()), // truncate / message events carry no row
                    other => Err(format!("unknown Debezium op \"{other}\"")),
                }
            }
        }
    }

    /// A message key as a JSON object of the key columns.
    fn key_object(&self, key: &[u8]) -> Result<Vec<u8>, String> {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(key) {
            if v.is_object() {
                return Ok(key.to_vec());
            }
            if let [c] = self.primary_key[..] {
                let mut obj = serde_json::Map::new();
                obj.insert(self.schema.field(c).name().clone(), v);
                return Ok(serde_json::Value::Object(obj).to_string().into_bytes());
            }
        }
        match self.primary_key[..] {
            [c] => {
                let text = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8 text")?;
                let mut obj = serde_json::Map::new();
                obj.insert(self.schema.field(c).name().clone(), serde_json::Value::String(text.to_string()));
                Ok(serde_json::Value::Object(obj).to_string().into_bytes())
            }
            _ => Err("the key is not a JSON object of the primary key columns".into()),
        }
    }

    /// Parses rows in one pass; fails if any row is bad or a text holds
    /// other than one row.
    fn parse(&self, texts: &[&[u8]]) -> Result<RecordBatch, String> {
        if texts.is_empty() {
            return Ok(RecordBatch::new_empty(self.payload_schema.clone()));
        }
        let batch = match self.encode {
            Encode::Json => {
                let mut decoder = datafusion::arrow::json::ReaderBuilder::new(self.payload_schema.clone())
                    .with_batch_size(texts.len() + 1)
                    .with_strict_mode(false)
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                for t in texts {
                    let t = t.trim_ascii();
                    if t.first() != Some(&b'{') {
                        return Err("invalid JSON: a message must hold one JSON object".into());
                    }
                    let used = decoder.decode(t).map_err(|e| format!("invalid JSON: {e}"))?;
                    if used != t.len() {
                        return Err("invalid JSON: a message must hold one JSON object".into());
                    }
                }
                decoder.flush().map_err(|e| json_error(&e.to_string()))?.unwrap_or_else(|| RecordBatch::new_empty(self.payload_schema.clone()))
            }
            Encode::Csv => {
                let mut buf = Vec::new();
                for t in texts {
                    let t = t.strip_suffix(b"\n").unwrap_or(t);
                    let t = t.strip_suffix(b"\r").unwrap_or(t);
                    buf.extend_from_slice(t);
                    buf.push(b'\n');
                }
                let mut reader = datafusion::arrow::csv::ReaderBuilder::new(self.payload_schema.clone())
                    .with_header(false)
                    .with_delimiter(self.delimiter)
                    .with_batch_size(texts.len() + 1)
                    .build_buffered(std::io::Cursor::new(buf))
                    .map_err(|e| e.to_string())?;
                match reader.next() {
                    Some(b) => b.map_err(|e| format!("invalid CSV: {e}"))?,
                    None => RecordBatch::new_empty(self.payload_schema.clone()),
                }
            }
        };
        if batch.num_rows() != texts.len() {
            return Err("a message must hold exactly one row".into());
        }
        Ok(batch)
    }
}

fn json_error(e: &str) -> String {
    format!("invalid value: {e}")
}

fn metadata_column(kind: &IncludeKind, field: &Field, header_slot: usize, messages: &[MessageRef<'_>], rows: &[usize]) -> ArrayRef {
    use datafusion::arrow::datatypes::DataType;
    let bytes_column = |get: &dyn Fn(&MessageRef<'_>) -> Option<Vec<u8>>| -> ArrayRef {
        if field.data_type() == &DataType::Utf8 {
            let mut b = StringBuilder::new();
            for &i in rows {
                b.append_option(get(&messages[i]).map(|v| String::from_utf8_lossy(&v).into_owned()));
            }
            Arc::new(b.finish())
        } else {
            let mut b = BinaryBuilder::new();
            for &i in rows {
                b.append_option(get(&messages[i]));
            }
            Arc::new(b.finish())
        }
    };
    match kind {
        IncludeKind::Key => bytes_column(&|m| m.key.map(<[u8]>::to_vec)),
        IncludeKind::Header(_) => {
            // The header slot counts only header includes before this one;
            // the reader passes headers in include order.
            bytes_column(&|m| m.headers.get(header_slot).copied().flatten().map(<[u8]>::to_vec))
        }
        IncludeKind::Partition => {
            let mut b = Int32Builder::new();
            rows.iter().for_each(|&i| b.append_value(messages[i].partition));
            Arc::new(b.finish())
        }
        IncludeKind::Offset => {
            let mut b = Int64Builder::new();
            rows.iter().for_each(|&i| b.append_value(messages[i].offset));
            Arc::new(b.finish())
        }
        IncludeKind::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
            rows.iter().for_each(|&i| b.append_option(messages[i].timestamp_ms.map(|t| t * 1000)));
            Arc::new(b.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::datatypes::DataType;

    use super::*;
    use crate::connector::spec::Include;

    fn decoder(format: Format, encode: Encode, includes: Vec<Include>) -> Decoder {
        let mut fields = vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)];
        for i in &includes {
            fields.push(Field::new(&i.column, DataType::Int64, true));
        }
        let def = ConnectorDef {
            options: BTreeMap::new(),
            format,
            encode,
            encode_options: BTreeMap::from([("delimiter".to_string(), "|".to_string())]),
            includes,
        };
        Decoder::new(Arc::new(Schema::new(fields)), vec![0], &def).unwrap()
    }

    fn msg<'a>(offset: i64, key: Option<&'a str>, payload: Option<&'a str>) -> MessageRef<'a> {
        MessageRef {
            key: key.map(str::as_bytes),
            payload: payload.map(str::as_bytes),
            partition: 0,
            offset,
            timestamp_ms: None,
            headers: vec![None],
        }
    }

    fn ids(d: &Decoded) -> Vec<i64> {
        let a = d.batch.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
        a.values().to_vec()
    }

    #[test]
    fn a_bad_json_message_is_rejected_alone() {
        let include = Include { kind: IncludeKind::Offset, column: "off".into(), varchar: false };
        let d = decoder(Format::Plain, Encode::Json, vec![include]);
        let out = d.decode(&[
            msg(0, None, Some(r#"{"id": 1, "name": "a"}"#)),
            msg(1, None, Some("{oops")),
            msg(2, None, Some(r#"{"id": "x"}"#)),
            msg(3, None, Some(r#"{"name": "no id"}"#)),
            msg(4, None, Some(r#"{"id": 5} {"id": 6}"#)),
            msg(5, None, Some(r#"{"id": 7, "more": [1]}"#)),
        ]);
        assert_eq!(ids(&out), vec![1, 7]);
        assert_eq!(out.message, vec![0, 5]);
        let offs = out.batch.column(2).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
        assert_eq!(offs.values().to_vec(), vec![0, 5]);
        let rejected: Vec<i64> = out.rejected.iter().map(|r| r.offset).collect();
        assert_eq!(rejected, vec![1, 2, 3, 4]);
        assert!(out.rejected[2].error.contains("\"id\""), "{:?}", out.rejected[2]);
    }

    #[test]
    fn csv_lines() {
        let d = decoder(Format::Plain, Encode::Csv, vec![]);
        let out = d.decode(&[msg(0, None, Some("1|a")), msg(1, None, Some("x|b")), msg(2, None, Some("3|c\n"))]);
        assert_eq!(ids(&out), vec![1, 3]);
        assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn upsert_and_debezium_ops() {
        let d = decoder(Format::Upsert, Encode::Json, vec![]);
        let out = d.decode(&[msg(0, Some("4"), Some(r#"{"id": 4, "name": "d"}"#)), msg(1, Some("4"), None), msg(2, Some(r#"{"id": 9}"#), None)]);
        assert_eq!(ids(&out), vec![4, 4, 9]);
        assert_eq!(out.ops, vec![RowOp::Upsert, RowOp::Delete, RowOp::Delete]);
        let d = decoder(Format::Debezium, Encode::Json, vec![]);
        let out = d.decode(&[
            msg(0, None, Some(r#"{"before": {"id": 1}, "after": {"id": 2, "name": "b"}, "op": "u"}"#)),
            msg(1, None, None),
            msg(2, None, Some(r#"{"payload": {"before": {"id": 2}, "after": null, "op": "d"}}"#)),
        ]);
        assert_eq!(ids(&out), vec![1, 2, 2]);
        assert_eq!(out.ops, vec![RowOp::Delete, RowOp::Upsert, RowOp::Delete]);
        assert!(out.rejected.is_empty());
    }
}
