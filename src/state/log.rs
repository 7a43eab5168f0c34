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
        let entry = b.finish().expect("entry");
        let changes: Vec<_> = decode_entry(&entry).collect::<StateResult<_>>().expect("decode");
        assert_eq!(changes.len(), 2);
        assert_eq!((changes[0].table_id, changes[0].weight, changes[0].row), (7, -1, &b"old"[..]));
        assert_eq!((changes[1].weight, changes[1].row), (1, &b"new!"[..]));
        assert!(LogEntryBuilder::default().finish().is_none());
    }
}
