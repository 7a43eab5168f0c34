//! The nexmark connector: the Nexmark benchmark's auction events (people,
//! auctions, bids) as a source or table, RisingWave's `connector =
//! 'nexmark'` syntax, made by the `nexmark` crate's generator.
//!
//! It shares everything but the making of rows with `datagen`
//! ([`super::datagen`]): the ingest thread, the stored offset (the next
//! event index of the table's type), backfill and `SELECT` by regeneration.
//! That works because the crate's events are a pure function of their
//! index and the configuration — each event seeds its own RNG — so the
//! generator is made at `offset` with `with_offset`, never replayed, and
//! never built from `EventGenerator::default()` (its step is 0 and it
//! repeats one event forever).
//!
//! A source is one event type (`nexmark.table.type = 'Person' | 'Auction'
//! | 'Bid'`); its columns are any of that type's fields, by name, in any
//! order:
//! - Person: `id, name, email_address, credit_card, city, state,
//!   date_time, extra`
//! - Auction: `id, item_name, description, initial_bid, reserve,
//!   date_time, expires, seller, category, extra`
//! - Bid: `auction, bidder, price, channel, url, date_time, extra`
//!
//! Numbers are BIGINT, strings VARCHAR/TEXT, times TIMESTAMP/TIMESTAMPTZ.
//!
//! Options: `nexmark.event.num` (events of this type in all; unbounded by
//! default), `nexmark.min.event.gap.in.ns` (wall-clock pacing, default
//! 100000 = 10,000 events/s; 0 = as fast as eddy goes), and the
//! generator's `nexmark.base.time` (ms since 1970, the event time of event
//! 0; fixed to the creation time at CREATE), `nexmark.first.event.rate` /
//! `nexmark.next.event.rate` / `nexmark.rate.shape` / `nexmark.rate.period`
//! (the event-time rate, all types together; default 10,000/s),
//! `nexmark.active.people`, `nexmark.in.flight.auctions`,
//! `nexmark.out.of.order.group.size`. `nexmark.split.num` and
//! `nexmark.max.chunk.size` are accepted for compatibility.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Builder, RecordBatch, RecordBatchOptions, StringBuilder, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::SchemaRef;
use nexmark::EventGenerator;
use nexmark::config::{NexmarkConfig, RateShape};
use nexmark::event::{Event, EventType};

use super::{ConnectorError, ConnectorResult};
use crate::catalog::{ColumnDef, SqlType};

/// The `connector` option's value.
pub const CONNECTOR: &str = "nexmark";
const TABLE_TYPE: &str = "nexmark.table.type";
const EVENT_NUM: &str = "nexmark.event.num";
const GAP: &str = "nexmark.min.event.gap.in.ns";
const BASE_TIME: &str = "nexmark.base.time";
/// RisingWave's default pacing: one event per 100 µs.
const DEFAULT_GAP_NS: u64 = 100_000;
/// Options taken for compatibility that change nothing here.
const ACCEPTED: &[&str] = &["nexmark.split.num", "nexmark.max.chunk.size"];
/// Generator settings: option name and the config field it sets.
const SETTINGS: &[(&str, fn(&mut NexmarkConfig, usize))] = &[
    ("nexmark.first.event.rate", |c, v| c.first_rate = v),
    ("nexmark.next.event.rate", |c, v| c.next_rate = v),
    ("nexmark.rate.period", |c, v| c.rate_period = v),
    ("nexmark.active.people", |c, v| c.active_people = v),
    ("nexmark.in.flight.auctions", |c, v| c.in_flight_auctions = v),
    ("nexmark.out.of.order.group.size", |c, v| c.out_of_order_group_size = v),
];
const RATE_SHAPE: &str = "nexmark.rate.shape";

/// The kind of a field's values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    /// Milliseconds since 1970 in the event; microseconds in Arrow.
    Time,
}

const PERSON: &[(&str, Kind)] = &[
    ("id", Kind::Int),
    ("name", Kind::Text),
    ("email_address", Kind::Text),
    ("credit_card", Kind::Text),
    ("city", Kind::Text),
    ("state", Kind::Text),
    ("date_time", Kind::Time),
    ("extra", Kind::Text),
];
const AUCTION: &[(&str, Kind)] = &[
    ("id", Kind::Int),
    ("item_name", Kind::Text),
    ("description", Kind::Text),
    ("initial_bid", Kind::Int),
    ("reserve", Kind::Int),
    ("date_time", Kind::Time),
    ("expires", Kind::Time),
    ("seller", Kind::Int),
    ("category", Kind::Int),
    ("extra", Kind::Text),
];
const BID: &[(&str, Kind)] = &[
    ("auction", Kind::Int),
    ("bidder", Kind::Int),
    ("price", Kind::Int),
    ("channel", Kind::Text),
    ("url", Kind::Text),
    ("date_time", Kind::Time),
    ("extra", Kind::Text),
];

/// Whether a connector's options name the nexmark connector.
pub fn is_nexmark(options: &BTreeMap<String, String>) -> bool {
    options.get("connector").is_some_and(|c| c.trim().eq_ignore_ascii_case(CONNECTOR))
}

/// Fixes the event time of event 0 at CREATE, so rows never change.
pub fn fix_options(options: &mut BTreeMap<String, String>, now_ms: i64) {
    options.entry(BASE_TIME.into()).or_insert_with(|| now_ms.to_string());
}

/// A validated nexmark definition: makes any range of one type's events.
#[derive(Debug, Clone)]
pub struct Nexmark {
    schema: SchemaRef,
    event_type: EventType,
    config: NexmarkConfig,
    /// Per column: the field's index in its type's list and its kind.
    columns: Vec<(usize, Kind, bool)>,
    pub rows_per_second: u64,
    pub limit: Option<u64>,
}

fn positive(key: &str, value: &str) -> ConnectorResult<u64> {
    match value.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConnectorError::Option(format!("{key} must be a positive integer, not '{value}'"))),
    }
}

impl Nexmark {
    /// Validates `options` for `columns` (the table's, `schema` their Arrow
    /// form); every error is the user's.
    pub fn new(columns: &[ColumnDef], schema: SchemaRef, options: &BTreeMap<String, String>) -> ConnectorResult<Self> {
        let (event_type, fields) = match options.get(TABLE_TYPE).map(|t| t.trim().to_ascii_lowercase()).as_deref() {
            Some("person") => (EventType::Person, PERSON),
            Some("auction") => (EventType::Auction, AUCTION),
            Some("bid") => (EventType::Bid, BID),
            Some(other) => {
                return Err(ConnectorError::Option(format!(
                    "{TABLE_TYPE} must be 'Person', 'Auction' or 'Bid', not '{other}'"
                )));
            }
            None => {
                return Err(ConnectorError::Unsupported(format!(
                    "a nexmark source is one event type: add {TABLE_TYPE} = 'Person' | 'Auction' | 'Bid'"
                )));
            }
        };
        let mut config = NexmarkConfig::default();
        let mut rows_per_second = 1_000_000_000 / DEFAULT_GAP_NS;
        let mut limit = None;
        for (key, value) in options {
            let key = key.as_str();
            match key {
                "connector" | TABLE_TYPE => {}
                EVENT_NUM => limit = Some(positive(key, value)?),
                GAP => {
                    let gap = value.trim().parse::<u64>().map_err(|_| {
                        ConnectorError::Option(format!("{GAP} must be a number of nanoseconds, not '{value}'"))
                    })?;
                    rows_per_second = if gap == 0 { u64::MAX } else { (1_000_000_000 / gap).max(1) };
                }
                BASE_TIME => {
                    config.base_time = value.trim().parse::<u64>().map_err(|_| {
                        ConnectorError::Option(format!("{BASE_TIME} must be milliseconds since 1970, not '{value}'"))
                    })?;
                }
                RATE_SHAPE => {
                    config.rate_shape = match value.trim().to_ascii_lowercase().as_str() {
                        "sine" => RateShape::Sine,
                        "square" => RateShape::Square,
                        _ => return Err(ConnectorError::Option(format!("{RATE_SHAPE} must be 'sine' or 'square'"))),
                    };
                }
                _ if ACCEPTED.contains(&key) => {
                    positive(key, value)?;
                }
                _ => match SETTINGS.iter().find(|(k, _)| *k == key) {
                    Some((_, set)) => set(&mut config, usize::try_from(positive(key, value)?).unwrap_or(usize::MAX)),
                    None => {
                        let mut known: Vec<&str> = vec![TABLE_TYPE, EVENT_NUM, GAP, BASE_TIME, RATE_SHAPE];
                        known.extend(SETTINGS.iter().map(|(k, _)| *k));
                        known.extend(ACCEPTED);
                        return Err(ConnectorError::Option(format!(
                            "unknown option {key}; nexmark takes {}",
                            known.join(", ")
                        )));
                    }
                },
            }
        }
        let type_name = options.get(TABLE_TYPE).map(|t| t.trim()).unwrap_or_default();
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let Some(i) = fields.iter().position(|(n, _)| c.name.eq_ignore_ascii_case(n)) else {
                let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                return Err(ConnectorError::Option(format!(
                    "a nexmark {type_name} has no field \"{}\"; it has {}",
                    c.name,
                    names.join(", ")
                )));
            };
            let kind = fields[i].1;
            let (ok, wanted) = match kind {
                Kind::Int => (matches!(c.sql_type, SqlType::BigInt), "BIGINT"),
                Kind::Text => (matches!(c.sql_type, SqlType::Text | SqlType::Varchar { max_len: None }), "VARCHAR"),
                Kind::Time => (matches!(c.sql_type, SqlType::Timestamp | SqlType::TimestampTz), "TIMESTAMP"),
            };
            if !ok {
                return Err(ConnectorError::Option(format!(
                    "nexmark field \"{}\" is {wanted}, not {}",
                    c.name,
                    c.sql_type.pg_name().to_uppercase()
                )));
            }
            out.push((i, kind, matches!(c.sql_type, SqlType::TimestampTz)));
        }
        // The generator panics on some settings (a rate of 0 is refused
        // above); make one event to find out at CREATE.
        let nexmark = Self { schema, event_type, config, columns: out, rows_per_second, limit };
        nexmark.generate(0, 1)?;
        Ok(nexmark)
    }

    /// Events `[from, from + n)` of the table's type, cut short at the end
    /// of a bounded source.
    pub fn generate(&self, from: u64, n: usize) -> ConnectorResult<RecordBatch> {
        let n = match self.limit {
            Some(limit) => limit.saturating_sub(from).min(n as u64) as usize,
            None => n,
        };
        let (config, event_type) = (self.config.clone(), self.event_type);
        let events = std::panic::catch_unwind(move || {
            EventGenerator::new(config).with_type_filter(event_type).with_offset(from).take(n).collect::<Vec<Event>>()
        })
        .map_err(|_| ConnectorError::Option("nexmark: the generator failed with these settings".into()))?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for &(field, kind, tz) in &self.columns {
            arrays.push(match kind {
                Kind::Int => {
                    let mut b = Int64Builder::with_capacity(n);
                    for e in &events {
                        b.append_value(int(e, field));
                    }
                    Arc::new(b.finish())
                }
                Kind::Text => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for e in &events {
                        b.append_value(text(e, field));
                    }
                    Arc::new(b.finish())
                }
                Kind::Time => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                    for e in &events {
                        b.append_value(time(e, field).saturating_mul(1000));
                    }
                    let a = b.finish();
                    Arc::new(if tz { a.with_timezone("+00:00") } else { a })
                }
            });
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?)
    }
}

fn to_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Field `i` (an index into the type's list) of an integer kind.
fn int(e: &Event, i: usize) -> i64 {
    match (e, i) {
        (Event::Person(p), 0) => to_i64(p.id),
        (Event::Auction(a), 0) => to_i64(a.id),
        (Event::Auction(a), 3) => to_i64(a.initial_bid),
        (Event::Auction(a), 4) => to_i64(a.reserve),
        (Event::Auction(a), 7) => to_i64(a.seller),
        (Event::Auction(a), 8) => to_i64(a.category),
        (Event::Bid(b), 0) => to_i64(b.auction),
        (Event::Bid(b), 1) => to_i64(b.bidder),
        (Event::Bid(b), 2) => to_i64(b.price),
        _ => 0,
    }
}

fn text(e: &Event, i: usize) -> &str {
    match (e, i) {
        (Event::Person(p), 1) => &p.name,
        (Event::Person(p), 2) => &p.email_address,
        (Event::Person(p), 3) => &p.credit_card,
        (Event::Person(p), 4) => &p.city,
        (Event::Person(p), 5) => &p.state,
        (Event::Person(p), 7) => &p.extra,
        (Event::Auction(a), 1) => &a.item_name,
        (Event::Auction(a), 2) => &a.description,
        (Event::Auction(a), 9) => &a.extra,
        (Event::Bid(b), 3) => &b.channel,
        (Event::Bid(b), 4) => &b.url,
        (Event::Bid(b), 6) => &b.extra,
        _ => "",
    }
}

fn time(e: &Event, i: usize) -> i64 {
    let ms = match (e, i) {
        (Event::Auction(a), 6) => a.expires,
        (e, _) => e.timestamp(),
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::Schema;

    fn col(name: &str, ty: SqlType) -> ColumnDef {
        ColumnDef { name: name.into(), sql_type: ty, nullable: true }
    }

    fn bid(options: &[(&str, &str)]) -> ConnectorResult<Nexmark> {
        let columns = vec![
            col("auction", SqlType::BigInt),
            col("price", SqlType::BigInt),
            col("date_time", SqlType::Timestamp),
            col("channel", SqlType::Varchar { max_len: None }),
        ];
        let schema = Arc::new(Schema::new(columns.iter().map(|c| c.sql_type.field(&c.name, c.nullable)).collect::<Vec<_>>()));
        let mut o: BTreeMap<String, String> =
            options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        o.insert("connector".into(), "nexmark".into());
        Nexmark::new(&columns, schema, &o)
    }

    #[test]
    fn any_range_is_the_same_events() {
        let g = bid(&[(TABLE_TYPE, "Bid"), (BASE_TIME, "1700000000000")]).expect("valid");
        let whole = g.generate(0, 100).expect("generate");
        let part = g.generate(40, 10).expect("generate");
        assert_eq!(whole.slice(40, 10), part);
        let prices = whole.column(1).as_any().downcast_ref::<Int64Array>().expect("i64");
        assert!(prices.iter().flatten().any(|p| p != prices.value(0)), "events differ");
        let ts = whole.column(2).as_any().downcast_ref::<TimestampMicrosecondArray>().expect("ts");
        assert!(ts.value(0) >= 1_700_000_000_000_000);
        assert!(ts.value(99) > ts.value(0), "event time advances");
    }

    #[test]
    fn limits_pacing_and_bad_options() {
        let g = bid(&[(TABLE_TYPE, "bid"), (EVENT_NUM, "5"), (GAP, "0")]).expect("valid");
        assert_eq!(g.limit, Some(5));
        assert_eq!(g.rows_per_second, u64::MAX);
        assert_eq!(g.generate(3, 10).expect("generate").num_rows(), 2);
        assert!(bid(&[(TABLE_TYPE, "Bidder")]).is_err());
        assert!(matches!(bid(&[]), Err(ConnectorError::Unsupported(_))));
        assert!(bid(&[(TABLE_TYPE, "Bid"), ("nexmark.first.event.rate", "0")]).is_err());
        assert!(bid(&[(TABLE_TYPE, "Bid"), ("nexmark.nope", "1")]).is_err());
        assert!(bid(&[(TABLE_TYPE, "Person")]).is_err(), "a person has no auction field");
    }
}
