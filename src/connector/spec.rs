//! What a connector is told in SQL: the `WITH (...)` options, the
//! `FORMAT ... ENCODE ...` clause and `INCLUDE` metadata columns, as stored
//! in the catalog, and their validation into typed Kafka settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConnectorError, ConnectorResult};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Format {
    Plain,
    Upsert,
    Debezium,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Encode {
    Json,
    Csv,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum IncludeKind {
    Key,
    Partition,
    Offset,
    Timestamp,
    Header(String),
}

/// `INCLUDE <kind> [AS column]`: a Kafka metadata value as a column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Include {
    pub kind: IncludeKind,
    pub column: String,
    /// `bytea` (default for key and headers) or `varchar`.
    pub varchar: bool,
}

impl Include {
    /// RisingWave's default column names.
    pub fn default_column(kind: &IncludeKind) -> String {
        match kind {
            IncludeKind::Key => "_rw_kafka_key".into(),
            IncludeKind::Partition => "_rw_kafka_partition".into(),
            IncludeKind::Offset => "_rw_kafka_offset".into(),
            IncludeKind::Timestamp => "_rw_kafka_timestamp".into(),
            IncludeKind::Header(h) => format!("_rw_kafka_header_{h}"),
        }
    }
}

/// A source's or table's connector, as stored in its catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorDef {
    /// `WITH (...)` options, keys lower-cased, values as written.
    pub options: BTreeMap<String, String>,
    pub format: Format,
    pub encode: Encode,
    /// `ENCODE CSV (delimiter = ';')` and the like.
    #[serde(default)]
    pub encode_options: BTreeMap<String, String>,
    #[serde(default)]
    pub includes: Vec<Include>,
}

/// A sink's connector, stored in the sink's catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkDef {
    pub options: BTreeMap<String, String>,
    pub format: Format,
    pub encode: Encode,
    /// `CREATE SINK ... FROM view`: the view's name.
    #[serde(default)]
    pub from: Option<String>,
    /// `CREATE SINK ... AS SELECT ... EMIT ON WINDOW CLOSE`.
    #[serde(default)]
    pub eowc: bool,
    /// Never stored: where a blackhole sink counts what it consumes (set
    /// when its graph is built).
    #[serde(skip)]
    pub counter: Option<SinkCounter>,
}

/// A running sink's counters, handed to its operator.
#[derive(Debug, Clone)]
pub struct SinkCounter(pub std::sync::Arc<std::sync::Mutex<super::metrics::SinkStats>>);

impl PartialEq for SinkCounter {
    /// Counters are not part of a sink's definition.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Where a source starts reading a partition it has no offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    Timestamp(i64),
}

impl SinkDef {
    /// A Delta Lake sink (else Kafka).
    pub fn is_delta(&self) -> bool {
        self.options.get("connector").is_some_and(|c| c.eq_ignore_ascii_case("deltalake"))
    }

    /// A blackhole sink: consumes its input and discards it.
    pub fn is_blackhole(&self) -> bool {
        self.options.get("connector").is_some_and(|c| c.eq_ignore_ascii_case("blackhole"))
    }
}

/// A `'a, b'` option as lower-cased column names.
pub fn column_list(options: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    options
        .get(key)
        .map(|v| v.split(',').map(|c| c.trim().to_lowercase()).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default()
}

/// How a sink's records reach Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One Kafka transaction per checkpoint epoch (the default).
    ExactlyOnce,
    /// The idempotent producer; an epoch may be sent again after a crash.
    AtLeastOnce,
}

/// The validated Kafka settings of a source, table or sink.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub topic: String,
    /// librdkafka settings: every `properties.<name>`, with
    /// `properties.bootstrap.server` as `bootstrap.servers`.
    pub properties: BTreeMap<String, String>,
    pub startup: Startup,
    pub dead_letter_topic: Option<String>,
    /// Sinks: the key columns (UPSERT, DEBEZIUM).
    pub primary_key: Vec<String>,
    pub force_append_only: bool,
    /// Sinks: `sink.delivery` (exactly_once unless set).
    pub delivery: Delivery,
    /// Sinks: whether `sink.delivery` was given.
    pub delivery_given: bool,
    /// Sinks: `sink.headers`, whether records carry `eddy.sink`,
    /// `eddy.epoch` and `eddy.seq` (unset: only at least once, where a
    /// consumer deduplicates on them; see [`KafkaOptions::headers`]).
    pub headers: Option<bool>,
    /// Sources with a watermark: how long a partition may send nothing
    /// before it stops holding the watermark back (`None`: never;
    /// `watermark.idle.timeout.ms`, 0 for never).
    pub idle_timeout: Option<std::time::Duration>,
}

const SOURCE_OPTIONS: &[&str] =
    &["connector", "topic", "scan.startup.mode", "scan.startup.timestamp.millis", "scan.startup.timestamp_millis", "dead_letter_topic", "watermark.idle.timeout.ms"];
const SINK_OPTIONS: &[&str] = &["connector", "topic", "primary_key", "force_append_only", "sink.delivery", "sink.headers"];

impl KafkaOptions {
    pub fn for_source(options: &BTreeMap<String, String>) -> ConnectorResult<Self> {
        Self::parse(options, SOURCE_OPTIONS)
    }

    pub fn for_sink(options: &BTreeMap<String, String>) -> ConnectorResult<Self> {
        Self::parse(options, SINK_OPTIONS)
    }

    fn parse(options: &BTreeMap<String, String>, allowed: &[&str]) -> ConnectorResult<Self> {
        match options.get("connector").map(|c| c.to_ascii_lowercase()) {
            Some(c) if c == "kafka" => {}
            Some(c) => return Err(ConnectorError::Unsupported(format!("connector '{c}' (eddy reads and writes 'kafka')"))),
            None => return Err(ConnectorError::Option("missing option connector (for example connector = 'kafka')".into())),
        }
        let mut properties = BTreeMap::new();
        for (k, v) in options {
            if let Some(p) = k.strip_prefix("properties.") {
                let p = match p {
                    "bootstrap.server" => "bootstrap.servers",
                    other => other,
                };
                properties.insert(p.to_string(), v.clone());
            } else if !allowed.contains(&k.as_str()) {
                return Err(ConnectorError::Option(format!(
                    "unknown option {k}; options here are {} and properties.<librdkafka setting>",
                    allowed.join(", ")
                )));
            }
        }
        if !properties.contains_key("bootstrap.servers") {
            return Err(ConnectorError::Option(
                "missing option properties.bootstrap.server (for example properties.bootstrap.server = '127.0.0.1:9092')".into(),
            ));
        }
        let topic = options
            .get("topic")
            .filter(|t| !t.is_empty())
            .cloned()
            .ok_or_else(|| ConnectorError::Option("missing option topic".into()))?;
        let timestamp = options
            .get("scan.startup.timestamp.millis")
            .or_else(|| options.get("scan.startup.timestamp_millis"))
            .map(|t| {
                t.parse::<i64>().map_err(|_| {
                    ConnectorError::Option(format!("scan.startup.timestamp.millis must be milliseconds since 1970, not '{t}'"))
                })
            })
            .transpose()?;
        let startup = match options.get("scan.startup.mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None if timestamp.is_some() => Startup::Timestamp(timestamp.unwrap_or(0)),
            None | Some("earliest") => Startup::Earliest,
            Some("latest") => Startup::Latest,
            Some("timestamp") => Startup::Timestamp(timestamp.ok_or_else(|| {
                ConnectorError::Option("scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis".into())
            })?),
            Some(other) => {
                return Err(ConnectorError::Option(format!(
                    "scan.startup.mode must be 'earliest', 'latest' or 'timestamp', not '{other}'"
                )));
            }
        };
        let primary_key = column_list(options, "primary_key");
        let force_append_only = match options.get("force_append_only").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(ConnectorError::Option(format!("force_append_only must be 'true' or 'false', not '{other}'"))),
        };
        let headers = match options.get("sink.headers").map(|v| v.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("false") => Some(false),
            Some("true") => Some(true),
            Some(other) => return Err(ConnectorError::Option(format!("sink.headers must be 'true' or 'false', not '{other}'"))),
        };
        let delivery = match options.get("sink.delivery").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("exactly_once") => Delivery::ExactlyOnce,
            Some("at_least_once") => Delivery::AtLeastOnce,
            Some(other) => {
                return Err(ConnectorError::Option(format!(
                    "sink.delivery must be 'exactly_once' or 'at_least_once', not '{other}'"
                )));
            }
        };
        let idle_timeout = match options.get("watermark.idle.timeout.ms") {
            None => Some(super::kafka::clock::DEFAULT_IDLE_TIMEOUT),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(ms) => Some(std::time::Duration::from_millis(ms)),
                Err(_) => {
                    return Err(ConnectorError::Option(format!(
                        "watermark.idle.timeout.ms must be a number of milliseconds (0: partitions never go idle), not '{v}'"
                    )));
                }
            },
        };
        Ok(Self {
            topic,
            properties,
            idle_timeout,
            startup,
            dead_letter_topic: options.get("dead_letter_topic").cloned(),
            primary_key,
            force_append_only,
            delivery,
            delivery_given: options.contains_key("sink.delivery"),
            headers,
        })
    }

    /// Whether a sink's records carry eddy's headers: as `sink.headers`
    /// says, else only when delivered at least once. Under exactly once a
    /// `read_committed` consumer sees each record once and needs no
    /// deduplication, and the three headers nearly doubled a small
    /// record's bytes and cost a pass-through a tenth of its CPU
    /// (allocating, serializing, compressing and freeing them).
    pub fn headers(&self) -> bool {
        self.headers.unwrap_or(self.delivery != Delivery::ExactlyOnce)
    }

    /// A librdkafka client configuration with these properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    pub fn bootstrap(&self) -> &str {
        self.properties.get("bootstrap.servers").map(String::as_str).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn source_options() {
        let o = KafkaOptions::for_source(&opts(&[
            ("connector", "kafka"),
            ("topic", "t"),
            ("properties.bootstrap.server", "h:1"),
            ("properties.security.protocol", "SASL_SSL"),
            ("scan.startup.mode", "timestamp"),
            ("scan.startup.timestamp.millis", "42"),
        ]))
        .unwrap();
        assert_eq!(o.properties.get("bootstrap.servers").map(String::as_str), Some("h:1"));
        assert_eq!(o.properties.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(o.startup, Startup::Timestamp(42));
        assert!(KafkaOptions::for_source(&opts(&[("connector", "kafka"), ("topic", "t")])).is_err());
        let typo = KafkaOptions::for_source(&opts(&[
            ("connector", "kafka"),
            ("topic", "t"),
            ("properties.bootstrap.server", "h:1"),
            ("scan.startup.mod", "earliest"),
        ]));
        assert!(typo.unwrap_err().to_string().contains("unknown option scan.startup.mod"));
    }
}
