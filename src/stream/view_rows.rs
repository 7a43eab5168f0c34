//! How a materialized view's rows are stored, and reading them back (for
//! SELECT and for filling a view that reads another).
//!
//! Two layouts, chosen when the view is created and kept in its catalog
//! entry (`MvDef::row_key`):
//! - **keyed**: the view's query has a unique key (its GROUP BY columns,
//!   kept by the projection): each row is stored under `v<id><key>` with
//!   the whole row as the value. An updated group is one put in place: no
//!   tombstone for the old row, so scans and the memtable stay as small as
//!   the view, and a SELECT returns rows in key order.
//! - **rows**: otherwise each distinct row is the key (`v<id><row>`) and
//!   its multiplicity the value. Views created before the keyed layout
//!   existed keep this one.

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use rocksdb::{DB, SnapshotWithThreadMode};

use super::rows::{RowCodec, decode_count, encode_count};
use super::{StateWrite, StreamError, StreamResult};
use crate::state::{StateError, keys};

/// One view's storage layout.
pub struct ViewRows {
    prefix: Vec<u8>,
    schema: SchemaRef,
    codec: RowCodec,
    /// Keyed layout: the key columns and their codec.
    key: Option<(Vec<usize>, RowCodec)>,
}

impl ViewRows {
    pub fn new(mv_id: u64, schema: SchemaRef, row_key: Option<&[usize]>) -> StreamResult<Self> {
        let types: Vec<_> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
        let key = match row_key {
            None => None,
            Some(cols) => {
                let key_types = cols
                    .iter()
                    .map(|&c| types.get(c).cloned().ok_or_else(|| StreamError::Corrupt(format!("view key column {c}"))))
                    .collect::<StreamResult<Vec<_>>>()?;
                Some((cols.to_vec(), RowCodec::new(&key_types)?))
            }
        };
        Ok(Self { prefix: keys::mv_prefix(mv_id), codec: RowCodec::new(&types)?, schema, key })
    }

    pub fn codec(&self) -> &RowCodec {
        &self.codec
    }

    /// The writes that apply an epoch's consolidated changes: `rows[i]`
    /// (row bytes, decoded in `columns`) changes by `deltas[i]` (never 0).
    /// `distinct`: the plan emits each row at most once, so what is stored
    /// follows from the sign of a change and nothing is read.
    pub fn writes(
        &self,
        db: &DB,
        distinct: bool,
        rows: Vec<Vec<u8>>,
        deltas: &[i64],
        columns: &[ArrayRef],
    ) -> StreamResult<Vec<StateWrite>> {
        match &self.key {
            Some((cols, codec)) => self.keyed_writes(cols, codec, rows, deltas, columns),
            None => self.row_writes(db, distinct, rows, deltas),
        }
    }

    fn row_writes(&self, db: &DB, distinct: bool, rows: Vec<Vec<u8>>, deltas: &[i64]) -> StreamResult<Vec<StateWrite>> {
        let mut writes = Vec::with_capacity(rows.len());
        for (row, &delta) in rows.into_iter().zip(deltas) {
            let mut key = Vec::with_capacity(self.prefix.len() + row.len());
            key.extend_from_slice(&self.prefix);
            key.extend_from_slice(&row);
            let current = match distinct {
                // Present before exactly when it goes now.
                true => i64::from(delta < 0),
                false => match db.get(&key).map_err(StateError::from)? {
                    Some(v) => decode_count(&v)?,
                    None => 0,
                },
            };
            let next = current + delta;
            if next < 0 || (distinct && next > 1) {
                return Err(never_emitted(next));
            }
            writes.push((key, (next > 0).then(|| encode_count(next))));
        }
        Ok(writes)
    }

    /// Per key, the row that has it after the epoch (a `+1`) or none (only
    /// `-1`s: the row went away): one write per changed key.
    fn keyed_writes(
        &self,
        cols: &[usize],
        codec: &RowCodec,
        mut rows: Vec<Vec<u8>>,
        deltas: &[i64],
        columns: &[ArrayRef],
    ) -> StreamResult<Vec<StateWrite>> {
        let key_columns: Vec<ArrayRef> = cols.iter().map(|&c| columns[c].clone()).collect();
        let keys = codec.encode(&key_columns, rows.len())?;
        let mut now: std::collections::HashMap<&[u8], Option<usize>, foldhash::fast::RandomState> =
            std::collections::HashMap::with_capacity_and_hasher(rows.len(), Default::default());
        for (i, &delta) in deltas.iter().enumerate() {
            match delta {
                1 => {
                    if let Some(Some(_)) = now.insert(keys.row(i), Some(i)) {
                        return Err(StreamError::Corrupt(
                            "two rows of the view have the same key; its query's key is not unique".into(),
                        ));
                    }
                }
                -1 => {
                    now.entry(keys.row(i)).or_insert(None);
                }
                d => return Err(never_emitted(d)),
            }
        }
        let mut writes = Vec::with_capacity(now.len());
        for (k, row) in now {
            let mut key = Vec::with_capacity(self.prefix.len() + k.len());
            key.extend_from_slice(&self.prefix);
            key.extend_from_slice(k);
            writes.push((key, row.map(|i| std::mem::take(&mut rows[i]))));
        }
        Ok(writes)
    }

    /// Reads every stored row from `snapshot`, handing `emit` batches of
    /// up to `max_rows` distinct rows with each row's multiplicity.
    pub fn read(
        &self,
        snapshot: &SnapshotWithThreadMode<'_, DB>,
        max_rows: usize,
        emit: &mut dyn FnMut(RecordBatch, Vec<i64>) -> StreamResult<()>,
    ) -> StreamResult<()> {
        let mut it = snapshot.raw_iterator();
        it.seek(&self.prefix);
        let mut rows: Vec<Vec<u8>> = Vec::new();
        let mut counts: Vec<i64> = Vec::new();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if !k.starts_with(&self.prefix) {
                break;
            }
            match self.key {
                Some(_) => {
                    rows.push(v.to_vec());
                    counts.push(1);
                }
                None => {
                    rows.push(k[self.prefix.len()..].to_vec());
                    counts.push(decode_count(v)?);
                }
            }
            if rows.len() >= max_rows {
                self.flush(&mut rows, &mut counts, emit)?;
            }
            it.next();
        }
        it.status().map_err(StateError::from)?;
        if !rows.is_empty() {
            self.flush(&mut rows, &mut counts, emit)?;
        }
        Ok(())
    }

    fn flush(
        &self,
        rows: &mut Vec<Vec<u8>>,
        counts: &mut Vec<i64>,
        emit: &mut dyn FnMut(RecordBatch, Vec<i64>) -> StreamResult<()>,
    ) -> StreamResult<()> {
        let batch = self.decode(rows)?;
        rows.clear();
        emit(batch, std::mem::take(counts))
    }

    /// Row bytes of the view back into a batch of its schema.
    pub fn decode(&self, rows: &[Vec<u8>]) -> StreamResult<RecordBatch> {
        let columns = self.codec.decode(rows.iter().map(Vec::as_slice))?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?)
    }
}

fn never_emitted(n: i64) -> StreamError {
    StreamError::Corrupt(format!(
        "a row of the view would occur {n} times; its input retracted a row it never emitted"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("k", DataType::Utf8, true),
        ]))
    }

    /// Applies `changes` (n, k, delta) as one epoch; returns the writes.
    fn epoch(db: &DB, layout: &ViewRows, changes: &[(i64, &str, i64)]) -> Vec<StateWrite> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(changes.iter().map(|c| Some(c.0)).collect::<Int64Array>()),
            Arc::new(changes.iter().map(|c| Some(c.1)).collect::<StringArray>()),
        ];
        let encoded = layout.codec().encode(&columns, changes.len()).expect("encode");
        let rows = (0..changes.len()).map(|i| encoded.row(i).to_vec()).collect();
        let deltas: Vec<i64> = changes.iter().map(|c| c.2).collect();
        let writes = layout.writes(db, true, rows, &deltas, &columns).expect("writes");
        for (k, v) in &writes {
            match v {
                Some(v) => db.put(k, v).expect("put"),
                None => db.delete(k).expect("delete"),
            }
        }
        writes
    }

    fn contents(db: &DB, layout: &ViewRows) -> Vec<(i64, String, i64)> {
        let mut out = Vec::new();
        layout
            .read(&db.snapshot(), 2, &mut |batch, counts| {
                let n = batch.column(0).as_any().downcast_ref::<Int64Array>().expect("n").clone();
                let k = batch.column(1).as_any().downcast_ref::<StringArray>().expect("k").clone();
                for (i, c) in counts.into_iter().enumerate() {
                    out.push((n.value(i), k.value(i).to_string(), c));
                }
                Ok(())
            })
            .expect("read");
        out
    }

    #[test]
    fn keyed_update_is_one_put_in_place() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = DB::open_default(dir.path()).expect("db");
        // Keyed by column 1 (k), as `SELECT count(*), k ... GROUP BY k`.
        let layout = ViewRows::new(7, schema(), Some(&[1])).expect("layout");
        epoch(&db, &layout, &[(1, "a", 1), (5, "b", 1), (2, "c", 1)]);
        // a: 1 → 3 (retract and insert), b goes, c stays.
        let writes = epoch(&db, &layout, &[(1, "a", -1), (3, "a", 1), (5, "b", -1)]);
        assert_eq!(writes.len(), 2, "one write per changed key");
        assert_eq!(writes.iter().filter(|(_, v)| v.is_none()).count(), 1, "only the key that went is deleted");
        // Stored in key order, each once.
        assert_eq!(contents(&db, &layout), vec![(3, "a".into(), 1), (2, "c".into(), 1)]);
    }

    #[test]
    fn keyed_refuses_two_rows_with_one_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = DB::open_default(dir.path()).expect("db");
        let layout = ViewRows::new(7, schema(), Some(&[1])).expect("layout");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "a"])),
        ];
        let encoded = layout.codec().encode(&columns, 2).expect("encode");
        let rows = (0..2).map(|i| encoded.row(i).to_vec()).collect();
        let err = layout.writes(&db, true, rows, &[1, 1], &columns).expect_err("duplicate key");
        assert!(err.to_string().contains("same key"), "{err}");
    }

    #[test]
    fn rows_layout_keeps_multiplicity() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = DB::open_default(dir.path()).expect("db");
        let layout = ViewRows::new(8, schema(), None).expect("layout");
        let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![1])), Arc::new(StringArray::from(vec!["a"]))];
        let encoded = layout.codec().encode(&columns, 1).expect("encode");
        for delta in [2, -1] {
            let writes = layout.writes(&db, false, vec![encoded.row(0).to_vec()], &[delta], &columns).expect("writes");
            for (k, v) in writes {
                db.put(k, v.expect("still present")).expect("put");
            }
        }
        assert_eq!(contents(&db, &layout), vec![(1, "a".into(), 1)]);
    }
}
