//! The sink operator: the last operator of a `CREATE SINK` graph. It turns
//! the epoch's changes into Kafka records (JSON key and value) and, at the
//! barrier, hands them to the checkpoint as the sink's outbox
//! (`s<sink id><SINK_OUTBOX_NODE><epoch><chunk>`). Once the checkpoint is
//! durable, the sink's publisher ([`crate::connector::kafka::sink`])
//! sends the outbox to Kafka and deletes it: output leaves eddy only for
//! epochs whose state is durable.
//!
//! - PLAIN: one record per inserted row (deletes are refused at CREATE
//!   unless `force_append_only`, then dropped).
//! - UPSERT: per key, the epoch's net result: the last row, or a tombstone.
//! - DEBEZIUM: per key, `{"before", "after", "op"}` with `c`, `u` or `d`.

use std::collections::HashMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::Operator;
use crate::connector::{Format, SinkDef};
use crate::state::keys;
use crate::stream::{Changes, StateWrite, StreamError, StreamResult};

/// Bytes per outbox value.
const CHUNK_BYTES: usize = 1 << 20;

/// One Kafka record: key and value (`None` value: a tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

pub struct SinkOp {
    sink_id: u64,
    format: Format,
    key_columns: Vec<usize>,
    schema: SchemaRef,
    /// PLAIN: the epoch's records in order, already in outbox encoding.
    plain: OutboxBuilder,
    /// UPSERT/DEBEZIUM: per key, (row before the epoch if retracted, row now).
    keyed: HashMap<Vec<u8>, (Option<Option<Vec<u8>>>, Option<Vec<u8>>)>,
    order: Vec<Vec<u8>>,
}

impl SinkOp {
    pub fn new(sink_id: u64, def: &SinkDef, schema: SchemaRef) -> StreamResult<Self> {
        let opts = crate::connector::spec::KafkaOptions::for_sink(&def.options)
            .map_err(|e| StreamError::Failed(e.to_string()))?;
        let key_columns = opts
            .primary_key
            .iter()
            .map(|k| {
                schema
                    .index_of(k)
                    .map_err(|_| StreamError::Failed(format!("primary_key column \"{k}\" is not in the sink's query")))
            })
            .collect::<StreamResult<Vec<_>>>()?;
        Ok(Self { sink_id, format: def.format, key_columns, schema, plain: OutboxBuilder::default(), keyed: HashMap::new(), order: Vec::new() })
    }
}

/// Each row of `batch` as one JSON object (nulls written out): one buffer
/// of JSON lines and each row's byte range in it (no copy per row).
pub fn json_lines(batch: &RecordBatch) -> StreamResult<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut buf);
        writer.write(batch)?;
        writer.finish()?;
    }
    // JSON strings escape newlines, so lines are rows.
    let mut ranges = Vec::with_capacity(batch.num_rows());
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                ranges.push(start..i);
            }
            start = i + 1;
        }
    }
    if start < buf.len() {
        ranges.push(start..buf.len());
    }
    if ranges.len() != batch.num_rows() {
        return Err(StreamError::Failed(format!("JSON writer gave {} lines for {} rows", ranges.len(), batch.num_rows())));
    }
    Ok((buf, ranges))
}

/// Each row of `batch` as one JSON object (nulls written out).
pub fn json_rows(batch: &RecordBatch) -> StreamResult<Vec<Vec<u8>>> {
    let (buf, ranges) = json_lines(batch)?;
    Ok(ranges.into_iter().map(|r| buf[r].to_vec()).collect())
}

impl Operator for SinkOp {
    fn process(&mut self, _input: usize, changes: Changes) -> StreamResult<Vec<Changes>> {
        let batch = RecordBatch::try_new(self.schema.clone(), changes.batch.columns().to_vec())?;
        if self.format == Format::Plain {
            // Straight from the JSON lines into the outbox encoding.
            let (values, value_at) = json_lines(&batch)?;
            let keys = if self.key_columns.is_empty() { None } else { Some(json_lines(&batch.project(&self.key_columns)?)?) };
            for (i, range) in value_at.into_iter().enumerate() {
                let key = keys.as_ref().map(|(buf, at)| &buf[at[i].clone()]);
                for _ in 0..changes.weights.value(i).max(0) {
                    self.plain.push(key, Some(&values[range.clone()]));
                }
            }
            return Ok(Vec::new());
        }
        let values = json_rows(&batch)?;
        let keys = if self.key_columns.is_empty() { None } else { Some(json_rows(&batch.project(&self.key_columns)?)?) };
        for (i, value) in values.into_iter().enumerate() {
            let weight = changes.weights.value(i);
            let key = keys.as_ref().map(|k| k[i].clone());
            let key = key.unwrap_or_default();
            let entry = self.keyed.entry(key.clone()).or_insert_with(|| {
                self.order.push(key);
                (None, None)
            });
            if weight > 0 {
                if entry.0.is_none() {
                    // First seen arriving: the key held nothing before.
                    entry.0 = Some(None);
                }
                entry.1 = Some(value);
            } else if weight < 0 {
                if entry.0.is_none() {
                    // The row the key held before this epoch.
                    entry.0 = Some(Some(value.clone()));
                }
                if entry.1.as_ref() == Some(&value) || entry.1.is_none() {
                    entry.1 = None;
                }
            }
        }
        Ok(Vec::new())
    }

    fn barrier(&mut self, epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        let mut out = std::mem::take(&mut self.plain);
        for key in std::mem::take(&mut self.order) {
            let Some((before, after)) = self.keyed.remove(&key) else { continue };
            let before = before.flatten();
            match self.format {
                Format::Upsert => {
                    if before.is_none() && after.is_none() {
                        continue;
                    }
                    out.push(Some(&key), after.as_deref());
                }
                _ => {
                    let op = match (&before, &after) {
                        (None, Some(_)) => "c",
                        (Some(_), Some(_)) => "u",
                        (Some(_), None) => "d",
                        (None, None) => continue,
                    };
                    let raw = |v: &Option<Vec<u8>>| -> String {
                        v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| "null".into())
                    };
                    let value = format!(
                        "{{\"before\":{},\"after\":{},\"op\":\"{op}\",\"ts_ms\":{}}}",
                        raw(&before),
                        raw(&after),
                        chrono::Utc::now().timestamp_millis()
                    );
                    out.push(Some(&key), Some(value.as_bytes()));
                }
            }
        }
        let writes = out.finish(self.sink_id, epoch);
        if !writes.is_empty() {
            crate::failpoint::hit("after_sink_flush");
        }
        Ok((Vec::new(), writes))
    }
}

/// Builds one epoch's outbox: records (`u32 LE` length or `u32::MAX` for
/// none, then the bytes; key then value) in chunks of about 1 MiB.
#[derive(Default)]
pub struct OutboxBuilder {
    chunks: Vec<Vec<u8>>,
    current: Vec<u8>,
}

impl OutboxBuilder {
    pub fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        for part in [key, value] {
            match part {
                Some(b) => {
                    self.current.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    self.current.extend_from_slice(b);
                }
                None => self.current.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
        if self.current.len() >= CHUNK_BYTES {
            self.chunks.push(std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 3))));
        }
    }

    /// The outbox writes of `epoch`, one per chunk.
    pub fn finish(mut self, sink_id: u64, epoch: u64) -> Vec<StateWrite> {
        if !self.current.is_empty() {
            self.chunks.push(self.current);
        }
        self.chunks.into_iter().enumerate().map(|(i, c)| (outbox_key(sink_id, epoch, i as u32), Some(c))).collect()
    }
}

/// The outbox writes of one epoch: records in chunks of about 1 MiB.
pub fn encode_outbox(sink_id: u64, epoch: u64, records: &[Record]) -> Vec<StateWrite> {
    let mut out = OutboxBuilder::default();
    for r in records {
        out.push(r.key.as_deref(), r.value.as_deref());
    }
    out.finish(sink_id, epoch)
}

/// Visits the records `(key, value)` of one outbox value without copying.
pub fn for_each_outbox_record(mut buf: &[u8], mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>) -> StreamResult<()>) -> StreamResult<()> {
    fn part<'a>(buf: &mut &'a [u8]) -> StreamResult<Option<&'a [u8]>> {
        let len = buf.get(..4).ok_or_else(|| StreamError::Corrupt("sink outbox".into()))?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        *buf = &buf[4..];
        if len == u32::MAX {
            return Ok(None);
        }
        let len = len as usize;
        let bytes = buf.get(..len).ok_or_else(|| StreamError::Corrupt("sink outbox".into()))?;
        *buf = &buf[len..];
        Ok(Some(bytes))
    }
    while !buf.is_empty() {
        let key = part(&mut buf)?;
        let value = part(&mut buf)?;
        f(key, value)?;
    }
    Ok(())
}

/// Reads back the records of one outbox value.
pub fn decode_outbox(buf: &[u8]) -> StreamResult<Vec<Record>> {
    let mut out = Vec::new();
    for_each_outbox_record(buf, |key, value| {
        out.push(Record { key: key.map(<[u8]>::to_vec), value: value.map(<[u8]>::to_vec) });
        Ok(())
    })?;
    Ok(out)
}

/// The key of chunk `chunk` of a sink's outbox for `epoch`.
pub fn outbox_key(sink_id: u64, epoch: u64, chunk: u32) -> Vec<u8> {
    let mut key = keys::op_state_prefix(sink_id, keys::SINK_OUTBOX_NODE);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

/// A sink's outbox chunks `(key, value)` on disk, by epoch (every one of
/// them belongs to a durable checkpoint); with `oldest_only`, only the
/// oldest epoch's. Blocking.
pub fn read_outbox(
    db: &rocksdb::DB,
    sink_id: u64,
    oldest_only: bool,
) -> crate::state::StateResult<std::collections::BTreeMap<u64, Vec<StateWrite>>> {
    let prefix = keys::op_state_prefix(sink_id, keys::SINK_OUTBOX_NODE);
    let mut it = db.raw_iterator();
    it.seek(&prefix);
    let mut out: std::collections::BTreeMap<u64, Vec<StateWrite>> = std::collections::BTreeMap::new();
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
        let Some(epoch) = k.starts_with(&prefix).then(|| outbox_epoch(sink_id, k)).flatten() else { break };
        if oldest_only && !out.is_empty() && !out.contains_key(&epoch) {
            break;
        }
        out.entry(epoch).or_default().push((k.to_vec(), Some(v.to_vec())));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// The oldest epoch with outbox chunks, found with one seek (the values
/// are not read). Blocking.
pub fn outbox_first_epoch(db: &rocksdb::DB, sink_id: u64) -> crate::state::StateResult<Option<u64>> {
    let prefix = keys::op_state_prefix(sink_id, keys::SINK_OUTBOX_NODE);
    let mut it = db.raw_iterator();
    it.seek(&prefix);
    let first = if it.valid() { it.key().filter(|k| k.starts_with(&prefix)).and_then(|k| outbox_epoch(sink_id, k)) } else { None };
    it.status()?;
    Ok(first)
}

/// The first epoch at or after `from` that has outbox chunks, with the
/// chunks' values. Blocking.
pub fn read_next_outbox_epoch(db: &rocksdb::DB, sink_id: u64, from: u64) -> crate::state::StateResult<Option<(u64, Vec<Vec<u8>>)>> {
    let prefix = keys::op_state_prefix(sink_id, keys::SINK_OUTBOX_NODE);
    let mut it = db.raw_iterator();
    it.seek(outbox_key(sink_id, from, 0));
    let mut found: Option<(u64, Vec<Vec<u8>>)> = None;
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
        let Some(epoch) = k.starts_with(&prefix).then(|| outbox_epoch(sink_id, k)).flatten() else { break };
        match &mut found {
            Some((e, values)) if *e == epoch => values.push(v.to_vec()),
            Some(_) => break,
            None => found = Some((epoch, vec![v.to_vec()])),
        }
        it.next();
    }
    it.status()?;
    Ok(found)
}

/// Deletes a sink's outbox chunks of every epoch up to `last`.
pub async fn clear_outbox_through(writer: &crate::state::WriterHandle, sink_id: u64, last: u64) -> crate::state::StateResult<()> {
    let from = outbox_key(sink_id, 0, 0);
    let to = outbox_key(sink_id, last.saturating_add(1), 0);
    writer
        .write(false, move |txn| {
            txn.delete_range(from, to);
            Ok(0)
        })
        .await?;
    Ok(())
}

/// Deletes published outbox chunks.
pub async fn clear_outbox(writer: &crate::state::WriterHandle, done: Vec<Vec<u8>>) -> crate::state::StateResult<()> {
    writer
        .write(false, move |txn| {
            for k in done {
                txn.put_direct(k, None);
            }
            Ok(0)
        })
        .await?;
    Ok(())
}

/// The epoch of an outbox key.
pub fn outbox_epoch(sink_id: u64, key: &[u8]) -> Option<u64> {
    let prefix = keys::op_state_prefix(sink_id, keys::SINK_OUTBOX_NODE);
    let rest = key.strip_prefix(prefix.as_slice())?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn op(format: Format) -> SinkOp {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]));
        let options: BTreeMap<String, String> = [
            ("connector", "kafka"),
            ("topic", "t"),
            ("properties.bootstrap.server", "h:1"),
            ("primary_key", "k"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        SinkOp::new(7, &SinkDef { options, format, encode: crate::connector::Encode::Json, from: None, eowc: false, counter: None }, schema).unwrap()
    }

    fn changes(op: &SinkOp, rows: &[(&str, i64, i64)]) -> Changes {
        let batch = RecordBatch::try_new(
            op.schema.clone(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        Changes::new(batch, Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()))
    }

    fn records(writes: Vec<StateWrite>) -> Vec<(String, Option<String>)> {
        writes
            .into_iter()
            .flat_map(|(_, v)| decode_outbox(&v.unwrap()).unwrap())
            .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), r.value.map(|v| String::from_utf8(v).unwrap())))
            .collect()
    }

    #[test]
    fn upsert_nets_each_key() {
        let mut s = op(Format::Upsert);
        let c = changes(&s, &[("a", 1, -1), ("b", 1, 1), ("a", 2, 1), ("b", 1, -1), ("z", 1, -1)]);
        s.process(0, c).unwrap();
        let (_, writes) = s.barrier(1).unwrap();
        assert_eq!(records(writes), vec![
            (r#"{"k":"a"}"#.to_string(), Some(r#"{"k":"a","n":2}"#.to_string())),
            (r#"{"k":"z"}"#.to_string(), None),
        ]);
        let (_, writes) = s.barrier(2).unwrap();
        assert!(writes.is_empty());
    }

    #[test]
    fn debezium_ops() {
        let mut s = op(Format::Debezium);
        let c = changes(&s, &[("a", 1, -1), ("a", 2, 1), ("c", 5, 1)]);
        s.process(0, c).unwrap();
        let (_, writes) = s.barrier(3).unwrap();
        let r = records(writes);
        assert!(r[0].1.as_deref().unwrap().starts_with(r#"{"before":{"k":"a","n":1},"after":{"k":"a","n":2},"op":"u""#));
        assert!(r[1].1.as_deref().unwrap().contains(r#""op":"c""#));
    }
}
