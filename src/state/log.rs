//! The change log: the net row changes of each write to a table that a
//! materialized view reads, in commit order.
//!
//! An entry `l<seq>` holds, for one statement, a list of
//! `(table id: u64 LE, weight: i8, len: u32 LE, row bytes)`: weight `-1`
//! for a row that went away and `+1` for a row that appeared (an update is
//! both), the row bytes in the table's row codec ([`super::row`]). The
//! writer appends entries in the same atomic write as the rows; the stream
//! engine reads them after the last checkpoint's position and truncates
//! them once a checkpoint covers them.
//!
//! A generated source (datagen, nexmark) logs ranges instead of rows:
//! weight [`GENERATED`] and 12 bytes, the first row index (u64 LE) and the
//! number of rows (u32 LE). Its rows are a pure function of their index,
//! so the stream engine makes them again from the range as Arrow batches:
//! no row is encoded, written or decoded on the way (see
//! [`generated_range`]).
//!
//! A Kafka source logs the messages of each chunk it read instead of its
//! rows: weight [`HELD`], the number of rows (u32 LE) and per partition
//! `(partition: i32 LE, from: i64 LE, to: i64 LE)`, the offsets read. The
//! rows themselves wait in memory for the stream engine
//! ([`super::held`]), which reads the offsets from Kafka again when they
//! are not there (after a restart).
//!
//! A Kafka source or table with a watermark logs watermark markers after
//! the rows they follow: weight [`WATERMARK`] and 8 bytes, the new
//! watermark (i64 LE, the event-time column's unit). The stream runtime
//! moves the source's watermark at the marker (see
//! `connector::kafka::clock`).

use super::{StateError, StateResult};

/// Accumulates one log entry.
#[derive(Default)]
pub struct LogEntryBuilder {
    buf: Vec<u8>,
}

impl LogEntryBuilder {
    pub fn push(&mut self, table_id: u64, weight: i8, row: &[u8]) {
        self.buf.extend_from_slice(&table_id.to_le_bytes());
        self.buf.push(weight as u8);
        self.buf.extend_from_slice(&(row.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(row);
    }

    /// The encoded entry, or `None` if nothing was pushed.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// The weight that marks a range of generated rows.
pub const GENERATED: i8 = i8::MAX;

/// The weight that marks a Kafka source's chunk of messages whose rows
/// are held in memory.
pub const HELD: i8 = i8::MAX - 1;

/// The change's payload for a chunk of `rows` rows read from `ranges`
/// (partition, from, to: exclusive).
pub fn encode_held(rows: u32, ranges: &[(i32, i64, i64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + 20 * ranges.len());
    b.extend_from_slice(&rows.to_le_bytes());
    for (p, from, to) in ranges {
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&from.to_le_bytes());
        b.extend_from_slice(&to.to_le_bytes());
    }
    b
}

/// The rows and offset ranges of a change whose weight is [`HELD`].
pub fn held_ranges(row: &[u8]) -> StateResult<(u32, Vec<(i32, i64, i64)>)> {
    let bad = || StateError::Corrupt("held chunk");
    let (rows, rest) = row.split_first_chunk::<4>().ok_or_else(bad)?;
    if rest.len() % 20 != 0 {
        return Err(bad());
    }
    let ranges = rest
        .chunks_exact(20)
        .map(|c| {
            let p = i32::from_le_bytes(c[..4].try_into().map_err(|_| bad())?);
            let from = i64::from_le_bytes(c[4..12].try_into().map_err(|_| bad())?);
            let to = i64::from_le_bytes(c[12..].try_into().map_err(|_| bad())?);
            Ok((p, from, to))
        })
        .collect::<StateResult<Vec<_>>>()?;
    Ok((u32::from_le_bytes(*rows), ranges))
}

/// The weight that marks a watermark marker.
pub const WATERMARK: i8 = i8::MIN;

/// The watermark of a change whose weight is [`WATERMARK`].
pub fn watermark_value(row: &[u8]) -> StateResult<i64> {
    let b: [u8; 8] = row.try_into().map_err(|_| StateError::Corrupt("watermark marker"))?;
    Ok(i64::from_le_bytes(b))
}

/// The change's payload for rows `[from, from + n)` of a generated source.
pub fn encode_range(from: u64, n: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&from.to_le_bytes());
    b[8..].copy_from_slice(&n.to_le_bytes());
    b
}

/// The range of a change whose weight is [`GENERATED`].
pub fn generated_range(row: &[u8]) -> StateResult<(u64, u32)> {
    let b: [u8; 12] = row.try_into().map_err(|_| StateError::Corrupt("generated range"))?;
    let mut from = [0u8; 8];
    from.copy_from_slice(&b[..8]);
    let mut n = [0u8; 4];
    n.copy_from_slice(&b[8..]);
    Ok((u64::from_le_bytes(from), u32::from_le_bytes(n)))
}

/// The rows an entry stands for, without decoding them: `(generated,
/// logged)`, the rows of its generated ranges and its row changes (held
/// chunks' rows included; only the headers are read; watermark markers
/// are not rows).
pub fn entry_rows(entry: &[u8]) -> (u64, u64) {
    let (mut generated, mut logged) = (0u64, 0u64);
    for change in decode_entry(entry) {
        let Ok(c) = change else { break };
        if c.weight == i64::from(GENERATED) {
            generated += generated_range(c.row).map_or(0, |(_, n)| u64::from(n));
        } else if c.weight == i64::from(HELD) {
            logged += held_ranges(c.row).map_or(0, |(n, _)| u64::from(n));
        } else if c.weight != i64::from(WATERMARK) {
            logged += 1;
        }
    }
    (generated, logged)
}

/// One row change read back from an entry.
pub struct LogChange<'a> {
    pub table_id: u64,
    pub weight: i64,
    pub row: &'a [u8],
}

/// Iterates over the changes of one encoded entry.
pub fn decode_entry(mut buf: &[u8]) -> impl Iterator<Item = StateResult<LogChange<'_>>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let parsed = (|| {
            let head = buf.get(..13).ok_or(StateError::Corrupt("log entry truncated"))?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&head[..8]);
            let weight = head[8] as i8;
            let mut len = [0u8; 4];
            len.copy_from_slice(&head[9..13]);
            let len = u32::from_le_bytes(len) as usize;
            let row = buf.get(13..13 + len).ok_or(StateError::Corrupt("log row truncated"))?;
            Ok((LogChange { table_id: u64::from_le_bytes(id), weight: i64::from(weight), row }, 13 + len))
        })();
        match parsed {
            Ok((change, used)) => {
                buf = &buf[used..];
                Some(Ok(change))
            }
            Err(e) => {
                buf = &[];
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let mut b = LogEntryBuilder::default();
        b.push(7, -1, b"old");
        b.push(7, 1, b"new!");
        b.push(9, GENERATED, &encode_range(1 << 40, 7));
        let entry = b.finish().expect("entry");
        let changes: Vec<_> = decode_entry(&entry).collect::<StateResult<_>>().expect("decode");
        assert_eq!(changes.len(), 3);
        assert_eq!((changes[0].table_id, changes[0].weight, changes[0].row), (7, -1, &b"old"[..]));
        assert_eq!((changes[1].weight, changes[1].row), (1, &b"new!"[..]));
        assert_eq!(changes[2].weight, i64::from(GENERATED));
        assert_eq!(generated_range(changes[2].row).expect("range"), (1 << 40, 7));
        assert!(LogEntryBuilder::default().finish().is_none());
        assert_eq!(entry_rows(&entry), (7, 2));
        let mut r = LogEntryBuilder::default();
        r.push(9, GENERATED, &encode_range(5, 16_384));
        r.push(9, WATERMARK, &7i64.to_le_bytes());
        assert_eq!(entry_rows(&r.finish().expect("entry")), (16_384, 0));
        let ranges = [(0, 5, 9), (3, -1, i64::MAX)];
        let mut h = LogEntryBuilder::default();
        h.push(4, HELD, &encode_held(12, &ranges));
        let entry = h.finish().expect("entry");
        assert_eq!(entry_rows(&entry), (0, 12));
        let change = decode_entry(&entry).next().expect("change").expect("decoded");
        assert_eq!(held_ranges(change.row).expect("held"), (12, ranges.to_vec()));
        assert!(held_ranges(&[1, 0, 0, 0, 9]).is_err());
    }
}
