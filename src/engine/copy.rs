//! COPY: `COPY t [(cols)] FROM STDIN` and `COPY t | (SELECT ...) TO STDOUT`,
//! in Postgres' text and CSV formats.
//!
//! COPY FROM parses the received bytes into text columns and lets Arrow's
//! casts turn them into the table's types (a value that does not parse is
//! 22P02 naming the line). The whole COPY is one durable write: all rows or
//! none, as in Postgres. COPY TO formats result batches as text lines.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName,
    Statement,
};

use super::{Engine, EngineError, EngineResult, Output, normalize_name};
use crate::catalog::{SqlType, Table};

/// Rows per batch handed to the writer.
const COPY_BATCH_ROWS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: char,
    pub null: String,
    pub header: bool,
    pub quote: char,
    pub escape: char,
}

impl CopyFormat {
    fn text() -> Self {
        Self { csv: false, delimiter: '\t', null: "\\N".into(), header: false, quote: '"', escape: '"' }
    }

    fn from_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> EngineResult<Self> {
        let mut f = Self::text();
        let mut delimiter = None;
        let mut null = None;
        for o in options {
            match o {
                CopyOption::Format(name) => match name.value.to_lowercase().as_str() {
                    "text" => f.csv = false,
                    "csv" => f.csv = true,
                    other => return Err(EngineError::Unsupported(format!("COPY format {other}"))),
                },
                CopyOption::Delimiter(c) => delimiter = Some(*c),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => f.header = *h,
                CopyOption::Quote(c) => f.quote = *c,
                CopyOption::Escape(c) => f.escape = *c,
                CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => return Err(EngineError::Unsupported(format!("COPY option {other}"))),
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Csv(csv_opts) => {
                    f.csv = true;
                    for c in csv_opts {
                        match c {
                            CopyLegacyCsvOption::Header => f.header = true,
                            CopyLegacyCsvOption::Quote(q) => f.quote = *q,
                            CopyLegacyCsvOption::Escape(e) => f.escape = *e,
                            other => return Err(EngineError::Unsupported(format!("COPY option {other}"))),
                        }
                    }
                }
                CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Header => f.header = true,
                other => return Err(EngineError::Unsupported(format!("COPY option {other}"))),
            }
        }
        if f.csv {
            f.delimiter = delimiter.unwrap_or(',');
            f.null = null.unwrap_or_default();
        } else {
            f.delimiter = delimiter.unwrap_or('\t');
            f.null = null.unwrap_or_else(|| "\\N".into());
        }
        Ok(f)
    }
}

/// A COPY FROM STDIN waiting for its data.
pub struct CopyIn {
    pub table: Arc<Table>,
    /// Target column indexes, in the order fields appear in each line.
    pub columns: Vec<usize>,
    pub format: CopyFormat,
}

fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() { i.value.clone() } else { i.value.to_lowercase() }
}

pub async fn start(
    engine: &Engine,
    source: CopySource,
    to: bool,
    target: CopyTarget,
    options: Vec<CopyOption>,
    legacy: Vec<CopyLegacyOption>,
) -> EngineResult<Output> {
    let format = CopyFormat::from_options(&options, &legacy)?;
    match (to, target) {
        (false, CopyTarget::Stdin) => {
            let CopySource::Table { table_name, columns } = source else {
                return Err(EngineError::Unsupported("COPY (query) FROM".into()));
            };
            let table = lookup(engine, &table_name)?;
            let columns = if columns.is_empty() {
                (0..table.def.columns.len()).collect()
            } else {
                columns
                    .iter()
                    .map(|c| {
                        let name = ident(c);
                        table.def.column_index(&name).ok_or(EngineError::UndefinedColumn(name))
                    })
                    .collect::<EngineResult<Vec<_>>>()?
            };
            Ok(Output::CopyIn(CopyIn { table, columns, format }))
        }
        (true, CopyTarget::Stdout) => {
            let query = match source {
                CopySource::Query(q) => Statement::Query(q),
                CopySource::Table { table_name, columns } => {
                    let table = lookup(engine, &table_name)?;
                    let cols = if columns.is_empty() {
                        "*".to_string()
                    } else {
                        columns.iter().map(|c| format!("\"{}\"", ident(c))).collect::<Vec<_>>().join(", ")
                    };
                    let sql = format!("SELECT {cols} FROM \"{}\"", table.name());
                    engine.parse(&sql)?.pop().ok_or_else(|| EngineError::Unsupported("COPY".into()))?
                }
            };
            let Output::Rows { stream, .. } = engine.query(query, &ParamValues::List(vec![])).await? else {
                return Err(EngineError::Unsupported("COPY of this query".into()));
            };
            Ok(Output::CopyOut { stream, format })
        }
        (_, CopyTarget::File { .. } | CopyTarget::Program { .. }) => Err(EngineError::user(
            "42501",
            "COPY to or from a file or program is not allowed; use STDIN/STDOUT (psql's \\copy)",
        )),
        _ => Err(EngineError::Unsupported("this form of COPY".into())),
    }
}

fn lookup(engine: &Engine, name: &ObjectName) -> EngineResult<Arc<Table>> {
    let name = normalize_name(name)?;
    engine.catalog.get(&name).ok_or(EngineError::UndefinedTable(name))
}

/// Parses the COPY data and inserts it; returns the number of rows.
pub async fn copy_in(engine: &Engine, copy: &CopyIn, data: &[u8]) -> EngineResult<u64> {
    let text = std::str::from_utf8(data)
        .map_err(|_| EngineError::user("22021", "invalid byte sequence for encoding \"UTF8\""))?;
    let shape = Shape { table: copy.table.name(), columns: copy.columns.len(), skip: usize::from(copy.format.header) };
    let chunks = if copy.format.csv {
        let records = parse_csv(text, &copy.format)?;
        records_to_chunks(&records, &shape)?
    } else {
        parse_text(text, &copy.format, &shape)?
    };
    let batches = chunks
        .into_iter()
        .map(|chunk| to_batch(&copy.table, &copy.columns, chunk))
        .collect::<EngineResult<Vec<_>>>()?;
    super::dml::write_rows(engine, copy.table.clone(), batches, super::dml::Conflict::Error).await
}

type Record = Vec<Option<String>>;

/// What the data must look like: fields per line, header lines to skip.
struct Shape<'a> {
    table: &'a str,
    columns: usize,
    skip: usize,
}

impl Shape<'_> {
    fn wrong_count(&self, line: usize, found: usize) -> EngineError {
        EngineError::user(
            "22P04",
            format!("COPY {}, line {line}: expected {} columns, found {found}", self.table, self.columns),
        )
    }
}

/// Up to [`COPY_BATCH_ROWS`] rows as text, one array per listed column.
struct TextChunk {
    columns: Vec<StringArray>,
    rows: usize,
}

/// Builds [`TextChunk`]s a field at a time.
struct ChunkBuilder {
    builders: Vec<StringBuilder>,
    rows: usize,
    chunks: Vec<TextChunk>,
}

impl ChunkBuilder {
    fn new(columns: usize) -> Self {
        Self { builders: (0..columns).map(|_| StringBuilder::new()).collect(), rows: 0, chunks: Vec::new() }
    }

    fn end_row(&mut self) {
        self.rows += 1;
        if self.rows == COPY_BATCH_ROWS {
            self.finish_chunk();
        }
    }

    fn finish_chunk(&mut self) {
        if self.rows > 0 {
            let columns = self.builders.iter_mut().map(|b| b.finish()).collect();
            self.chunks.push(TextChunk { columns, rows: std::mem::take(&mut self.rows) });
        }
    }

    fn finish(mut self) -> Vec<TextChunk> {
        self.finish_chunk();
        self.chunks
    }
}

fn records_to_chunks(records: &[Record], shape: &Shape<'_>) -> EngineResult<Vec<TextChunk>> {
    let mut out = ChunkBuilder::new(shape.columns);
    for (i, r) in records.iter().enumerate().skip(shape.skip) {
        if r.len() != shape.columns {
            return Err(shape.wrong_count(i + 1, r.len()));
        }
        for (b, v) in out.builders.iter_mut().zip(r) {
            b.append_option(v.as_deref());
        }
        out.end_row();
    }
    Ok(out.finish())
}

fn to_batch(table: &Table, columns: &[usize], chunk: TextChunk) -> EngineResult<RecordBatch> {
    let ncols = table.def.columns.len();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(ncols);
    for (idx, col) in table.def.columns.iter().enumerate() {
        let dt = table.schema.field(idx).data_type().clone();
        let array: ArrayRef = match columns.iter().position(|&c| c == idx) {
            None => datafusion::arrow::array::new_null_array(&dt, chunk.rows),
            Some(pos) => convert(&chunk.columns[pos], &col.sql_type, &dt).map_err(|e| {
                EngineError::user("22P02", format!("COPY {}, column {}: {e}", table.name(), col.name))
            })?,
        };
        arrays.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(chunk.rows));
    RecordBatch::try_new_with_options(table.schema.clone(), arrays, &options)
        .map_err(|e| EngineError::DataFusion(e.into()))
}

fn convert(values: &StringArray, sql_type: &SqlType, dt: &DataType) -> Result<ArrayRef, String> {
    match sql_type {
        SqlType::Bytea => {
            let mut b = BinaryBuilder::new();
            for v in values.iter() {
                match v {
                    None => b.append_null(),
                    Some(s) => b.append_value(decode_bytea(s)?),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        SqlType::Boolean => {
            let bools: datafusion::arrow::array::BooleanArray = values
                .iter()
                .map(|v| v.map(parse_bool).transpose())
                .collect::<Result<_, _>>()?;
            Ok(Arc::new(bools))
        }
        _ => {
            let options = CastOptions { safe: false, ..Default::default() };
            cast_with_options(values, dt, &options).map_err(|e| e.to_string())
        }
    }
}

pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Ok(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("invalid input syntax for type boolean: \"{s}\"")),
    }
}

/// Postgres' bytea input: `\x` followed by hex digits, or raw text.
pub fn decode_bytea(s: &str) -> Result<Vec<u8>, String> {
    let Some(hex) = s.strip_prefix("\\x") else { return Ok(s.as_bytes().to_vec()) };
    let hex = hex.as_bytes();
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!("invalid hexadecimal digit in \"{s}\""));
    }
    if hex.len() % 2 != 0 {
        return Err(format!("invalid hexadecimal data: odd number of digits in \"{s}\""));
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    Ok(hex.chunks(2).map(|p| digit(p[0]) << 4 | digit(p[1])).collect())
}

/// Postgres text format: one line per row, fields split by the delimiter,
/// backslash escapes (`\t`, `\n`, octal `\123`, hex `\x41`, `\<any>`), the
/// NULL marker (`\N`) compared with the field as written, `\.` ends the
/// data. Fields without a backslash are appended as they are (no copy per
/// field); only escaped ones are decoded.
fn parse_text(text: &str, f: &CopyFormat, shape: &Shape<'_>) -> EngineResult<Vec<TextChunk>> {
    let delimiter = match u8::try_from(f.delimiter) {
        Ok(d) if d.is_ascii() => d,
        _ => return Err(EngineError::user("0A000", "COPY delimiter must be a single one-byte character")),
    };
    let mut out = ChunkBuilder::new(shape.columns);
    let mut scratch = String::new();
    let mut lines = text.split('\n');
    let mut line_no = 0;
    while let Some(line) = lines.next() {
        if line.is_empty() && lines.clone().next().is_none() {
            break; // the newline that ends the last line
        }
        line_no += 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "\\." {
            break;
        }
        if line_no <= shape.skip {
            continue;
        }
        let found = push_text_line(line, f, delimiter, &mut out.builders, &mut scratch);
        if found != shape.columns {
            return Err(shape.wrong_count(line_no, found));
        }
        out.end_row();
    }
    Ok(out.finish())
}

/// Appends one line's fields to `columns` (those beyond its length are
/// counted, not stored); returns how many fields the line has.
fn push_text_line(line: &str, f: &CopyFormat, delimiter: u8, columns: &mut [StringBuilder], scratch: &mut String) -> usize {
    let bytes = line.as_bytes();
    let mut fields = 0;
    let mut start = 0;
    let mut escaped = false;
    let mut i = 0;
    loop {
        if i >= bytes.len() || bytes[i] == delimiter {
            // Both ends are at a one-byte character (the delimiter) or the
            // end of the line: a valid `str` slice.
            let raw = &line[start..i.min(bytes.len())];
            if let Some(b) = columns.get_mut(fields) {
                if raw == f.null {
                    b.append_null();
                } else if escaped {
                    scratch.clear();
                    unescape_text(raw, scratch);
                    b.append_value(&*scratch);
                } else {
                    b.append_value(raw);
                }
            }
            fields += 1;
            if i >= bytes.len() {
                return fields;
            }
            i += 1;
            start = i;
            escaped = false;
        } else if bytes[i] == b'\\' {
            // The escape (maybe an escaped delimiter, or digits that equal
            // it) belongs to the field.
            escaped = true;
            i += 1 + escape_len(&bytes[i + 1..]);
        } else {
            i += 1;
        }
    }
}

/// How many bytes after a backslash belong to its escape, as
/// [`unescape_text`] reads them: octal `\1`–`\123`, hex `\x4`–`\x41`, else
/// one (the first byte of any other character).
fn escape_len(rest: &[u8]) -> usize {
    let digits = |radix: fn(&u8) -> bool| 1 + rest[1..].iter().take(2).take_while(|b| radix(b)).count();
    match rest.first() {
        None => 0,
        Some(b'0'..=b'7') => digits(|b| (b'0'..=b'7').contains(b)),
        Some(b'x') if rest.get(1).is_some_and(u8::is_ascii_hexdigit) => digits(u8::is_ascii_hexdigit),
        Some(_) => 1,
    }
}

/// Decodes the backslash escapes of one field as written.
fn unescape_text(raw: &str, field: &mut String) {
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            field.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            field.push('\\');
            break;
        };
        match e {
            'b' => field.push('\u{8}'),
            'f' => field.push('\u{c}'),
            'n' => field.push('\n'),
            'r' => field.push('\r'),
            't' => field.push('\t'),
            'v' => field.push('\u{b}'),
            '0'..='7' => {
                let v = take_digits(&mut chars, 8, 2, e.to_digit(8).unwrap_or(0));
                field.push(char::from_u32(v & 0xFF).unwrap_or('\u{FFFD}'));
            }
            'x' if chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) => {
                let v = take_digits(&mut chars, 16, 2, 0);
                field.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
            }
            other => field.push(other),
        }
    }
}

/// Reads up to `max` more digits of `radix` after `start`.
fn take_digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32, max: usize, start: u32) -> u32 {
    let mut v = start;
    for _ in 0..max {
        let Some(d) = chars.peek().and_then(|d| d.to_digit(radix)) else { break };
        v = v * radix + d;
        chars.next();
    }
    v
}

/// CSV: quoted fields may hold delimiters, quotes and newlines; inside
/// quotes a doubled QUOTE, or ESCAPE before QUOTE or ESCAPE, is literal.
/// An unquoted field equal to the NULL string (empty by default) is NULL.
/// `\.` alone on a line ends the data.
fn parse_csv(text: &str, f: &CopyFormat) -> EngineResult<Vec<Record>> {
    let mut out = Vec::new();
    let mut record: Record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    let mut at_line_start = true;
    let end_field = |field: &mut String, quoted: &mut bool, record: &mut Record| {
        let value = std::mem::take(field);
        if !*quoted && value == f.null {
            record.push(None);
        } else {
            record.push(Some(value));
        }
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            let next = chars.peek().copied();
            if f.escape != f.quote && c == f.escape && (next == Some(f.quote) || next == Some(f.escape)) {
                chars.next();
                field.push(next.unwrap_or(c));
            } else if c == f.quote && next == Some(f.quote) && f.escape == f.quote {
                chars.next();
                field.push(f.quote);
            } else if c == f.quote {
                in_quotes = false;
            } else {
                field.push(c);
            }
            continue;
        }
        if at_line_start && c == '\\' {
            let mut ahead = chars.clone();
            if ahead.next() == Some('.') && matches!(ahead.next(), None | Some('\n') | Some('\r')) {
                break; // end-of-data marker
            }
        }
        at_line_start = false;
        if c == f.quote {
            in_quotes = true;
            quoted = true;
        } else if c == f.delimiter {
            end_field(&mut field, &mut quoted, &mut record);
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            end_field(&mut field, &mut quoted, &mut record);
            out.push(std::mem::take(&mut record));
            at_line_start = true;
        } else {
            field.push(c);
        }
    }
    if in_quotes {
        return Err(EngineError::user("22P04", "unterminated CSV quoted field"));
    }
    if !field.is_empty() || quoted || !record.is_empty() {
        end_field(&mut field, &mut quoted, &mut record);
        out.push(record);
    }
    Ok(out)
}

/// Formats a batch as COPY TO data: one line per row. With `header` (CSV
/// HEADER, first batch only) the column names are prepended to the first
/// line, so each message still carries one row and the row count is right.
pub fn format_rows(batch: &RecordBatch, f: &CopyFormat, header: bool) -> EngineResult<Vec<Vec<u8>>> {
    let options = FormatOptions::default()
        .with_null("")
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
        .with_datetime_format(Some("%Y-%m-%d %H:%M:%S%.f"));
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::DataFusion(e.into()))?;
    let mut lines = Vec::with_capacity(batch.num_rows());
    let mut cell = String::new();
    for row in 0..batch.num_rows() {
        let mut out = Vec::new();
        if header && row == 0 {
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            out.extend_from_slice(names.join(&f.delimiter.to_string()).as_bytes());
            out.push(b'\n');
        }
        for (i, (col, fmt)) in batch.columns().iter().zip(&formatters).enumerate() {
            if i > 0 {
                out.extend_from_slice(f.delimiter.to_string().as_bytes());
            }
            if col.is_null(row) {
                out.extend_from_slice(f.null.as_bytes());
                continue;
            }
            cell.clear();
            match col.data_type() {
                DataType::Boolean => cell.push(if col.as_boolean().value(row) { 't' } else { 'f' }),
                DataType::Binary => {
                    cell.push_str("\\x");
                    for b in col.as_binary::<i32>().value(row) {
                        cell.push_str(&format!("{b:02x}"));
                    }
                }
                _ => {
                    use std::fmt::Write;
                    let _ = write!(cell, "{}", fmt.value(row));
                }
            }
            if f.csv {
                let needs_quotes = cell.contains(f.delimiter)
                    || cell.contains(f.quote)
                    || cell.contains(f.escape)
                    || cell.contains('\n')
                    || cell.contains('\r')
                    || cell == f.null
                    || cell == "\\.";
                if needs_quotes {
                    let mut quoted = String::with_capacity(cell.len() + 2);
                    quoted.push(f.quote);
                    for ch in cell.chars() {
                        if ch == f.quote || (ch == f.escape && f.escape != f.quote) {
                            quoted.push(f.escape);
                        }
                        quoted.push(ch);
                    }
                    quoted.push(f.quote);
                    out.extend_from_slice(quoted.as_bytes());
                } else {
                    out.extend_from_slice(cell.as_bytes());
                }
            } else {
                for ch in cell.chars() {
                    match ch {
                        '\\' => out.extend_from_slice(b"\\\\"),
                        '\n' => out.extend_from_slice(b"\\n"),
                        '\r' => out.extend_from_slice(b"\\r"),
                        '\t' => out.extend_from_slice(b"\\t"),
                        c if c == f.delimiter => {
                            out.push(b'\\');
                            out.extend_from_slice(c.to_string().as_bytes());
                        }
                        c => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
            }
        }
        out.push(b'\n');
        lines.push(out);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_nulls() {
        let f = CopyFormat { csv: true, delimiter: ',', null: String::new(), header: false, quote: '"', escape: '"' };
        let rows = parse_csv("1,\"a,b\",\n2,\"say \"\"hi\"\"\",\"\"\n", &f).expect("parses");
        assert_eq!(rows[0], vec![Some("1".into()), Some("a,b".into()), None]);
        assert_eq!(rows[1], vec![Some("2".into()), Some("say \"hi\"".into()), Some(String::new())]);
    }

    /// The text parser's chunks as records.
    fn text(data: &str, f: &CopyFormat, columns: usize) -> EngineResult<Vec<Record>> {
        let chunks = parse_text(data, f, &Shape { table: "t", columns, skip: 0 })?;
        let mut out = Vec::new();
        for c in chunks {
            for row in 0..c.rows {
                out.push(c.columns.iter().map(|a| a.is_valid(row).then(|| a.value(row).to_string())).collect());
            }
        }
        Ok(out)
    }

    #[test]
    fn text_escapes_and_end_marker() {
        let rows = text("1\ta\\tb\t\\N\n\\.\n9\tx\ty\n", &CopyFormat::text(), 3).expect("parses");
        assert_eq!(rows, vec![vec![Some("1".into()), Some("a\tb".into()), None]]);
    }

    #[test]
    fn text_escaped_delimiter_octal_hex_and_empty_lines() {
        let f = CopyFormat { delimiter: ',', ..CopyFormat::text() };
        let rows = text("a\\,b,\\101\\x42\nc,d\r\n", &f, 2).expect("parses");
        assert_eq!(rows, vec![vec![Some("a,b".into()), Some("AB".into())], vec![Some("c".into()), Some("d".into())]]);
        let rows = text("\n", &f, 1).expect("parses");
        assert_eq!(rows, vec![vec![Some(String::new())]]);
        let rows = text("x\\\n", &f, 1).expect("a trailing backslash is kept");
        assert_eq!(rows, vec![vec![Some("x\\".into())]]);
        // Digits of an escape that equal the delimiter stay in the escape.
        let rows = text("\\x4AAz\n\\101A\\0\n", &CopyFormat { delimiter: 'A', ..CopyFormat::text() }, 2).expect("parses");
        assert_eq!(rows, vec![vec![Some("J".into()), Some("z".into())], vec![Some("A".into()), Some("\0".into())]]);
        let err = text("a,b\nc\n", &f, 2).expect_err("one field short");
        assert!(err.to_string().contains("line 2: expected 2 columns, found 1"), "{err}");
    }

    #[test]
    fn text_chunks_and_multibyte_fields() {
        let data: String = (0..COPY_BATCH_ROWS + 3).map(|i| format!("{i}\tü\\ü\n")).collect();
        let chunks = parse_text(&data, &CopyFormat::text(), &Shape { table: "t", columns: 2, skip: 1 }).expect("parses");
        assert_eq!(chunks.iter().map(|c| c.rows).collect::<Vec<_>>(), vec![COPY_BATCH_ROWS, 2]);
        assert_eq!(chunks[0].columns[0].value(0), "1", "the header line is skipped");
        assert_eq!(chunks[1].columns[1].value(1), "üü");
    }

    #[test]
    fn csv_end_marker_must_be_alone() {
        let f = CopyFormat { csv: true, delimiter: ',', null: String::new(), header: false, quote: '"', escape: '\\' };
        let rows = parse_csv("\\.net,1\n\"C:\\\\x \\\"q\\\"\",2\n\\.\nlost,3\n", &f).expect("parses");
        assert_eq!(rows, vec![
            vec![Some("\\.net".into()), Some("1".into())],
            vec![Some("C:\\x \"q\"".into()), Some("2".into())],
        ]);
    }
}
