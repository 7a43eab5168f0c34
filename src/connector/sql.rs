//! The streaming statements sqlparser does not know, in RisingWave's
//! syntax: `CREATE SOURCE`, `CREATE TABLE ... WITH (connector = ...)
//! FORMAT ... ENCODE ...`, `CREATE SINK`, `SHOW SOURCES | SINKS` and
//! `DROP SOURCE | SINK`.
//!
//! They are recognised on sqlparser's tokens. The column list and the
//! sink's query are handed back as SQL text for sqlparser/DataFusion to
//! parse; only the streaming clauses are parsed here.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::spec::{ConnectorDef, Encode, Format, Include, IncludeKind, SinkDef};
use crate::catalog::WatermarkDef;

/// A parsed streaming statement.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamStatement {
    /// `CREATE SOURCE` (`table: false`) or a `CREATE TABLE` with a connector.
    CreateSource {
        table: bool,
        if_not_exists: bool,
        name: String,
        /// `CREATE TABLE name (columns)` for sqlparser (no connector clauses).
        table_sql: String,
        connector: ConnectorDef,
        /// `WATERMARK FOR col AS expr` in the column list.
        watermark: Option<WatermarkDef>,
        /// `APPEND ONLY` after the column list (tables).
        append_only: bool,
    },
    /// `CREATE TABLE` without a connector but with eddy/RisingWave clauses
    /// sqlparser does not know (`WATERMARK FOR`, `APPEND ONLY`).
    CreateTable {
        if_not_exists: bool,
        name: String,
        /// `CREATE TABLE name (columns)` for sqlparser.
        table_sql: String,
        watermark: Option<WatermarkDef>,
        append_only: bool,
    },
    CreateSink {
        if_not_exists: bool,
        name: String,
        /// The query: `SELECT * FROM view` for `FROM view`.
        query: String,
        sink: SinkDef,
    },
    ShowSources,
    ShowSinks,
    Drop { sink: bool, names: Vec<String>, if_exists: bool, cascade: bool },
}

/// Parse errors, with the statement's words for context.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

type Result<T> = std::result::Result<T, SyntaxError>;

/// Whether the tokens of one statement are a streaming statement.
pub fn is_stream_statement(tokens: &[Token]) -> bool {
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let w = |i: usize| match words.get(i) {
        Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
        _ => String::new(),
    };
    match (w(0).as_str(), w(1).as_str()) {
        ("create", "source") | ("create", "sink") | ("drop", "source") | ("drop", "sink") => true,
        ("show", "sources") | ("show", "sinks") => words.len() == 2,
        ("create", "table") => {
            // A connector option (`connector =`), a watermark or APPEND ONLY
            // anywhere in the statement.
            let is = |t: &Token, word: &str| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(word));
            words.windows(2).any(|p| {
                (is(p[0], "connector") && matches!(p[1], Token::Eq))
                    || (is(p[0], "watermark") && is(p[1], "for"))
                    || (is(p[0], "append") && is(p[1], "only"))
            })
        }
        _ => false,
    }
}

/// Where a trailing `EMIT ON WINDOW CLOSE` starts in a statement's
/// tokens (whitespace included), if it ends with one.
pub fn emit_on_window_close_at(tokens: &[Token]) -> Option<usize> {
    let words: Vec<(usize, &Token)> =
        tokens.iter().enumerate().filter(|(_, t)| !matches!(t, Token::Whitespace(_))).collect();
    let n = words.len();
    if n < 4 {
        return None;
    }
    let tail: Vec<String> = words[n - 4..].iter().map(|(_, t)| word_of(t)).collect();
    (tail == ["emit", "on", "window", "close"]).then(|| words[n - 4].0)
}

/// Parses one streaming statement's text.
pub fn parse(sql: &str) -> Result<StreamStatement> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| SyntaxError(e.to_string()))?;
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let mut c = Cursor { tokens, pos: 0 };
    c.expect_word("create").or_else(|_| {
        c.pos = 0;
        c.expect_word("drop").map(|_| ()).or_else(|_| c.expect_word("show"))
    })?;
    let first = c.tokens.first().map(word_of).unwrap_or_default();
    match first.as_str() {
        "show" => match c.word()?.as_str() {
            "sources" => Ok(StreamStatement::ShowSources),
            "sinks" => Ok(StreamStatement::ShowSinks),
            other => Err(SyntaxError(format!("SHOW {other} is not a streaming statement"))),
        },
        "drop" => parse_drop(&mut c),
        _ => match c.word()?.as_str() {
            "source" => parse_create_source(&mut c, false),
            "table" => parse_create_source(&mut c, true),
            "sink" => parse_create_sink(&mut c),
            other => Err(SyntaxError(format!("CREATE {other} is not a streaming statement"))),
        },
    }
}

fn word_of(t: &Token) -> String {
    match t {
        Token::Word(w) => w.value.to_ascii_lowercase(),
        _ => String::new(),
    }
}

struct Cursor {
    tokens: Vec<Token>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self) -> String {
        self.peek().map(word_of).unwrap_or_default()
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn near(&self) -> String {
        match self.peek() {
            Some(t) => format!("at or near \"{t}\""),
            None => "at end of input".into(),
        }
    }

    fn word(&mut self) -> Result<String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w.value.to_ascii_lowercase()),
            _ => {
                self.pos -= 1;
                Err(SyntaxError(format!("syntax error {}", self.near())))
            }
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.peek_word() == w {
            self.pos += 1;
            Ok(())
        } else {
            Err(SyntaxError(format!("syntax error {}: expected {}", self.near(), w.to_uppercase())))
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word() == w {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: Token) -> Result<()> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(SyntaxError(format!("syntax error {}: expected \"{t}\"", self.near())))
        }
    }

    /// An identifier (quoted keeps its case).
    fn ident(&mut self) -> Result<String> {
        match self.next() {
            Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value),
            Some(Token::Word(w)) => Ok(w.value.to_lowercase()),
            _ => {
                self.pos -= 1;
                Err(SyntaxError(format!("syntax error {}: expected a name", self.near())))
            }
        }
    }

    fn if_not_exists(&mut self) -> Result<bool> {
        if self.peek_word() == "if" {
            self.pos += 1;
            self.expect_word("not")?;
            self.expect_word("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The tokens of a balanced `( ... )` group, parentheses included.
    fn group(&mut self) -> Result<Vec<Token>> {
        let start = self.pos;
        self.expect(Token::LParen)?;
        let mut depth = 1;
        while depth > 0 {
            match self.next() {
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) => depth -= 1,
                Some(_) => {}
                None => return Err(SyntaxError("syntax error at end of input: unbalanced parentheses".into())),
            }
        }
        Ok(self.tokens[start..self.pos].to_vec())
    }

    /// `( key = value, ... )`; keys may be dotted (`properties.bootstrap.server`).
    fn options(&mut self) -> Result<BTreeMap<String, String>> {
        self.expect(Token::LParen)?;
        let mut out = BTreeMap::new();
        if self.peek() == Some(&Token::RParen) {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            let mut key = self.option_key_part()?;
            while self.peek() == Some(&Token::Period) {
                self.pos += 1;
                key.push('.');
                key.push_str(&self.option_key_part()?);
            }
            self.expect(Token::Eq)?;
            let value = match self.next() {
                Some(Token::SingleQuotedString(s)) | Some(Token::EscapedStringLiteral(s)) => s,
                Some(Token::Number(n, _)) => n,
                Some(Token::Minus) => match self.next() {
                    Some(Token::Number(n, _)) => format!("-{n}"),
                    _ => return Err(SyntaxError(format!("syntax error in option {key}: expected a number"))),
                },
                Some(Token::Word(w)) => w.value,
                _ => {
                    self.pos -= 1;
                    return Err(SyntaxError(format!("syntax error {}: expected a value for option {key}", self.near())));
                }
            };
            if out.insert(key.clone(), value).is_some() {
                return Err(SyntaxError(format!("option {key} given twice")));
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => return Ok(out),
                _ => {
                    self.pos -= 1;
                    return Err(SyntaxError(format!("syntax error {}: expected \",\" or \")\"", self.near())));
                }
            }
        }
    }

    fn option_key_part(&mut self) -> Result<String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w.value.to_lowercase()),
            Some(Token::SingleQuotedString(s)) => Ok(s.to_lowercase()),
            _ => {
                self.pos -= 1;
                Err(SyntaxError(format!("syntax error {}: expected an option name", self.near())))
            }
        }
    }

    /// `FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | CSV [( options )]`.
    fn format(&mut self) -> Result<(Format, Encode, BTreeMap<String, String>)> {
        self.expect_word("format")?;
        let format = match self.word()?.as_str() {
            "plain" => Format::Plain,
            "upsert" => Format::Upsert,
            "debezium" => Format::Debezium,
            other => return Err(SyntaxError(format!("FORMAT {} is not supported; use PLAIN, UPSERT or DEBEZIUM", other.to_uppercase()))),
        };
        self.expect_word("encode")?;
        let encode = match self.word()?.as_str() {
            "json" => Encode::Json,
            "csv" => Encode::Csv,
            other => return Err(SyntaxError(format!("ENCODE {} is not supported; use JSON or CSV", other.to_uppercase()))),
        };
        let options = if self.peek() == Some(&Token::LParen) { self.options()? } else { BTreeMap::new() };
        Ok((format, encode, options))
    }
}

fn render(tokens: &[Token]) -> String {
    tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ")
}

fn parse_create_source(c: &mut Cursor, table: bool) -> Result<StreamStatement> {
    let if_not_exists = c.if_not_exists()?;
    let name_start = c.pos;
    let name = c.ident()?;
    let name_tokens = c.tokens[name_start..c.pos].to_vec();
    let columns = if c.peek() == Some(&Token::LParen) { c.group()? } else { Vec::new() };
    let (columns, watermark) = split_watermark(columns)?;
    let mut append_only = false;
    if c.eat_word("append") {
        c.expect_word("only")?;
        if !table {
            return Err(SyntaxError("APPEND ONLY is for tables: a source is always append-only".into()));
        }
        append_only = true;
    }
    let mut includes = Vec::new();
    while c.eat_word("include") {
        let kind = match c.word()?.as_str() {
            "key" => IncludeKind::Key,
            "partition" => IncludeKind::Partition,
            "offset" => IncludeKind::Offset,
            "timestamp" => IncludeKind::Timestamp,
            "header" => match c.next() {
                Some(Token::SingleQuotedString(h)) => IncludeKind::Header(h),
                _ => return Err(SyntaxError("INCLUDE header needs the header's name in quotes: INCLUDE header 'h'".into())),
            },
            other => {
                return Err(SyntaxError(format!(
                    "INCLUDE {other} is not supported; use key, partition, offset, timestamp or header 'name'"
                )));
            }
        };
        let column = if c.eat_word("as") { c.ident()? } else { Include::default_column(&kind) };
        let mut varchar = false;
        if matches!(kind, IncludeKind::Key | IncludeKind::Header(_)) {
            match c.peek_word().as_str() {
                "varchar" | "text" => {
                    c.pos += 1;
                    varchar = true;
                }
                "bytea" => c.pos += 1,
                _ => {}
            }
        }
        includes.push(Include { kind, column, varchar });
    }
    if table && includes.is_empty() && c.peek_word() != "with" {
        // A plain table with a watermark or APPEND ONLY.
        if !c.done() {
            return Err(SyntaxError(format!("syntax error {}", c.near())));
        }
        if columns.is_empty() {
            return Err(SyntaxError("CREATE TABLE needs its columns".into()));
        }
        let table_sql = format!("CREATE TABLE {} {}", render(&name_tokens), render(&columns));
        return Ok(StreamStatement::CreateTable { if_not_exists, name, table_sql, watermark, append_only });
    }
    c.expect_word("with")?;
    let options = c.options()?;
    let (format, encode, encode_options) = if c.peek_word() == "format" {
        c.format()?
    } else if crate::connector::datagen::is_generated(&options) {
        (Format::Plain, Encode::Json, BTreeMap::new())
    } else {
        return Err(SyntaxError(format!(
            "{} needs a FORMAT clause, for example FORMAT PLAIN ENCODE JSON",
            if table { "CREATE TABLE with a connector" } else { "CREATE SOURCE" }
        )));
    };
    if !c.done() {
        return Err(SyntaxError(format!("syntax error {}", c.near())));
    }
    if columns.is_empty() {
        return Err(SyntaxError("a source needs its columns: CREATE SOURCE name (col type, ...)".into()));
    }
    let table_sql = format!("CREATE TABLE {} {}", render(&name_tokens), render(&columns));
    Ok(StreamStatement::CreateSource {
        table,
        if_not_exists,
        name,
        table_sql,
        connector: ConnectorDef { options, format, encode, encode_options, includes },
        watermark,
        append_only,
    })
}

/// Takes `WATERMARK FOR col AS expr` out of a column list `( ... )`.
fn split_watermark(group: Vec<Token>) -> Result<(Vec<Token>, Option<WatermarkDef>)> {
    if group.len() < 2 {
        return Ok((group, None));
    }
    // Top-level items between the outer parentheses.
    let inner = &group[1..group.len() - 1];
    let mut items: Vec<&[Token]> = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, t) in inner.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    let mut kept: Vec<&[Token]> = Vec::new();
    let mut watermark = None;
    for item in items {
        let mut c = Cursor { tokens: item.to_vec(), pos: 0 };
        if c.peek_word() == "watermark" && c.tokens.get(1).map(word_of).as_deref() == Some("for") {
            c.pos = 2;
            let column = c.ident()?;
            c.expect_word("as")?;
            if c.done() {
                return Err(SyntaxError("WATERMARK FOR needs an expression: WATERMARK FOR ts AS ts - INTERVAL '5' SECOND".into()));
            }
            if watermark.is_some() {
                return Err(SyntaxError("only one WATERMARK FOR is allowed".into()));
            }
            watermark = Some(WatermarkDef { column, expr: render(&c.tokens[c.pos..]) });
        } else {
            kept.push(item);
        }
    }
    if watermark.is_none() {
        return Ok((group, None));
    }
    let mut out = vec![Token::LParen];
    for (i, item) in kept.iter().enumerate() {
        if i > 0 {
            out.push(Token::Comma);
        }
        out.extend(item.iter().cloned());
    }
    out.push(Token::RParen);
    Ok((out, watermark))
}

fn parse_create_sink(c: &mut Cursor) -> Result<StreamStatement> {
    let if_not_exists = c.if_not_exists()?;
    let mut eowc = false;
    let name = c.ident()?;
    let (query, from) = if c.eat_word("from") {
        let start = c.pos;
        let view = c.ident()?;
        (format!("SELECT * FROM {}", render(&c.tokens[start..c.pos])), Some(view))
    } else {
        c.expect_word("as")?;
        // The query runs up to the last top-level `WITH (`.
        let start = c.pos;
        let mut depth = 0i32;
        let mut with_at = None;
        for (i, t) in c.tokens.iter().enumerate().skip(start) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::Word(w) if depth == 0 && w.value.eq_ignore_ascii_case("with") => {
                    if c.tokens.get(i + 1) == Some(&Token::LParen) {
                        with_at = Some(i);
                    }
                }
                _ => {}
            }
        }
        let end = with_at.ok_or_else(|| SyntaxError("CREATE SINK ... AS SELECT needs WITH (connector = ...)".into()))?;
        let query_tokens = &c.tokens[start..end];
        let query = match emit_on_window_close_at(query_tokens) {
            Some(at) => {
                eowc = true;
                render(&query_tokens[..at])
            }
            None => render(query_tokens),
        };
        c.pos = end;
        (query, None)
    };
    c.expect_word("with")?;
    let options = c.options()?;
    let (format, encode, _) = if c.peek_word() == "format" { c.format()? } else { (Format::Plain, Encode::Json, BTreeMap::new()) };
    if !c.done() {
        return Err(SyntaxError(format!("syntax error {}", c.near())));
    }
    Ok(StreamStatement::CreateSink { if_not_exists, name, query, sink: SinkDef { options, format, encode, from, eowc, counter: None } })
}

fn parse_drop(c: &mut Cursor) -> Result<StreamStatement> {
    let sink = match c.word()?.as_str() {
        "sink" => true,
        "source" => false,
        other => return Err(SyntaxError(format!("DROP {other} is not a streaming statement"))),
    };
    let mut if_exists = false;
    if c.eat_word("if") {
        c.expect_word("exists")?;
        if_exists = true;
    }
    let mut names = vec![c.ident()?];
    while c.peek() == Some(&Token::Comma) {
        c.pos += 1;
        names.push(c.ident()?);
    }
    let cascade = c.eat_word("cascade");
    if !cascade {
        c.eat_word("restrict");
    }
    if !c.done() {
        return Err(SyntaxError(format!("syntax error {}", c.near())));
    }
    Ok(StreamStatement::Drop { sink, names, if_exists, cascade })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_source() {
        let s = parse(
            "CREATE SOURCE IF NOT EXISTS s (id BIGINT, v VARCHAR) INCLUDE partition AS p INCLUDE key AS k VARCHAR \
             INCLUDE header 'trace' WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'h:9092', \
             scan.startup.timestamp.millis = 10) FORMAT PLAIN ENCODE CSV (delimiter = ';');",
        )
        .unwrap();
        let StreamStatement::CreateSource { table, if_not_exists, name, table_sql, connector, .. } = s else { panic!() };
        assert!(!table && if_not_exists);
        assert_eq!(name, "s");
        assert_eq!(table_sql, "CREATE TABLE s ( id BIGINT , v VARCHAR )");
        assert_eq!(connector.options.get("properties.bootstrap.server").map(String::as_str), Some("h:9092"));
        assert_eq!(connector.options.get("scan.startup.timestamp.millis").map(String::as_str), Some("10"));
        assert_eq!(connector.encode, Encode::Csv);
        assert_eq!(connector.encode_options.get("delimiter").map(String::as_str), Some(";"));
        assert_eq!(connector.includes.len(), 3);
        assert_eq!(connector.includes[1], Include { kind: IncludeKind::Key, column: "k".into(), varchar: true });
        assert_eq!(connector.includes[2].column, "_rw_kafka_header_trace");
    }

    #[test]
    fn create_sink_and_others() {
        let s = parse(
            "CREATE SINK out AS SELECT a, count(*) FROM t WHERE x IN (SELECT 1) GROUP BY a \
             WITH (connector = 'kafka', topic = 'o', primary_key = 'a') FORMAT UPSERT ENCODE JSON",
        )
        .unwrap();
        let StreamStatement::CreateSink { name, query, sink, .. } = s else { panic!() };
        assert_eq!(name, "out");
        assert!(query.starts_with("SELECT a , count ( * ) FROM t"));
        assert_eq!(sink.format, Format::Upsert);
        let s = parse("CREATE SINK o2 FROM mv WITH (connector = 'kafka')").unwrap();
        assert!(matches!(s, StreamStatement::CreateSink { query, .. } if query == "SELECT * FROM mv"));
        assert_eq!(parse("SHOW SOURCES").unwrap(), StreamStatement::ShowSources);
        assert_eq!(
            parse("DROP SINK IF EXISTS a, b CASCADE").unwrap(),
            StreamStatement::Drop { sink: true, names: vec!["a".into(), "b".into()], if_exists: true, cascade: true }
        );
        assert!(parse("CREATE SOURCE s (a int) WITH (connector = 'kafka')").is_err());
        assert!(parse("CREATE SOURCE s (a int) WITH (connector = 'kafka') FORMAT AVRO ENCODE JSON").is_err());
    }

    #[test]
    fn watermarks_and_append_only() {
        let s = parse(
            "CREATE SOURCE s (id INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = 't') FORMAT PLAIN ENCODE JSON",
        )
        .unwrap();
        let StreamStatement::CreateSource { table_sql, watermark, .. } = s else { panic!() };
        assert_eq!(table_sql, "CREATE TABLE s ( id INT , ts TIMESTAMP )");
        let w = watermark.unwrap();
        assert_eq!((w.column.as_str(), w.expr.as_str()), ("ts", "ts - INTERVAL '5' SECOND"));
        let s = parse("CREATE TABLE t (a INT, WATERMARK FOR ts AS ts, ts TIMESTAMP) APPEND ONLY").unwrap();
        let StreamStatement::CreateTable { table_sql, watermark, append_only, .. } = s else { panic!() };
        assert_eq!(table_sql, "CREATE TABLE t ( a INT , ts TIMESTAMP )");
        assert!(append_only && watermark.is_some());
        assert!(parse("CREATE SOURCE s (a INT) APPEND ONLY WITH (connector = 'kafka') FORMAT PLAIN ENCODE JSON").is_err());
        assert!(parse("CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS) APPEND ONLY").is_err());
    }

    #[test]
    fn detection() {
        let toks = |s: &str| Tokenizer::new(&PostgreSqlDialect {}, s).tokenize().unwrap();
        assert!(is_stream_statement(&toks("create table t (a int) with (connector = 'kafka') format plain encode json")));
        assert!(!is_stream_statement(&toks("create table t (a int)")));
        assert!(is_stream_statement(&toks("create table t (a int) append only")));
        assert!(is_stream_statement(&toks("create table t (ts timestamp, watermark for ts as ts)")));
        assert!(is_stream_statement(&toks("SHOW SINKS")));
        assert!(!is_stream_statement(&toks("SELECT source FROM t")));
    }
}
