//! Session variables: SET, SHOW, RESET, and SHOW TABLES.
//!
//! A connection's variables live in the protocol layer's per-connection
//! metadata map (so they die with the connection); [`SessionVars`] reads
//! and writes them under a `var.` prefix. Variables marked `reported` are
//! sent back to the client as ParameterStatus when they change, as
//! Postgres does (client_encoding, DateStyle, TimeZone, application_name,
//! ...). `statement_timeout` is enforced by the server around each
//! statement. Unknown names are refused with 42704, except dotted custom
//! names (`myapp.x`), which Postgres also accepts.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Reset, Set, Statement, Value};

use super::{Engine, EngineError, EngineResult, Output};

pub const SERVER_VERSION: &str = "16.0";

/// (name as shown, default, reported to the client, description)
const VARIABLES: &[(&str, &str, bool, &str)] = &[
    ("application_name", "", true, "Sets the application name."),
    ("client_encoding", "UTF8", true, "Sets the client's character set encoding."),
    ("DateStyle", "ISO, MDY", true, "Sets the display format for date and time values."),
    ("extra_float_digits", "1", false, "Sets the number of digits displayed for floating-point values."),
    ("integer_datetimes", "on", true, "Shows whether datetimes are integer based."),
    ("IntervalStyle", "postgres", true, "Sets the display format for interval values."),
    ("search_path", "\"$user\", public", false, "Sets the schema search order."),
    ("server_encoding", "UTF8", true, "Shows the server (database) character set encoding."),
    ("server_version", SERVER_VERSION, true, "Shows the server version."),
    ("standard_conforming_strings", "on", true, "Causes '...' strings to treat backslashes literally."),
    ("statement_timeout", "0", false, "Sets the maximum allowed duration of any statement (ms)."),
    ("TimeZone", "UTC", true, "Sets the time zone for displaying and interpreting time stamps."),
    ("transaction_isolation", "read committed", false, "Shows the transaction isolation level."),
    ("is_superuser", "on", true, "Shows whether the current user is a superuser."),
    ("bytea_output", "hex", false, "Sets the output format for bytea."),
    ("lock_timeout", "0", false, "Sets the maximum allowed duration of any wait for a lock."),
    ("idle_in_transaction_session_timeout", "0", false, "Sets the maximum idle time in a transaction."),
    ("max_identifier_length", "63", false, "Shows the maximum identifier length."),
    ("implicit_flush", "off", false, "Makes each INSERT, UPDATE, DELETE and COPY wait until materialized views show it."),
];

const PREFIX: &str = "var.";

fn lookup(name: &str) -> Option<&'static (&'static str, &'static str, bool, &'static str)> {
    VARIABLES.iter().find(|v| v.0.eq_ignore_ascii_case(name))
}

/// The variables shown to a client at start-up (ParameterStatus).
pub fn startup_parameters() -> Vec<(&'static str, &'static str)> {
    VARIABLES.iter().filter(|v| v.2).map(|v| (v.0, v.1)).collect()
}

pub struct SessionVars<'a> {
    map: &'a mut HashMap<String, String>,
}

impl<'a> SessionVars<'a> {
    pub fn new(map: &'a mut HashMap<String, String>) -> Self {
        Self { map }
    }

    /// The current value of a variable (case-insensitive name).
    pub fn get(&self, name: &str) -> Option<String> {
        let key = format!("{PREFIX}{}", name.to_ascii_lowercase());
        self.map.get(&key).cloned().or_else(|| lookup(name).map(|v| v.1.to_string()))
    }

    fn set(&mut self, name: &str, value: String) -> EngineResult<Option<(String, String)>> {
        let known = lookup(name);
        if known.is_none() && !name.contains('.') {
            return Err(EngineError::user(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ));
        }
        let value = match known.map(|v| v.0) {
            Some("statement_timeout") => parse_duration_ms(&value)?.to_string(),
            Some("server_version" | "server_encoding" | "integer_datetimes" | "max_identifier_length") => {
                return Err(EngineError::user(
                    "55P02",
                    format!("parameter \"{name}\" cannot be changed"),
                ));
            }
            _ => value,
        };
        self.map.insert(format!("{PREFIX}{}", name.to_ascii_lowercase()), value.clone());
        Ok(known.filter(|v| v.2).map(|v| (v.0.to_string(), value)))
    }

    fn reset(&mut self, name: &str) -> EngineResult<Option<(String, String)>> {
        let Some(known) = lookup(name) else {
            self.map.remove(&format!("{PREFIX}{}", name.to_ascii_lowercase()));
            return Ok(None);
        };
        self.map.remove(&format!("{PREFIX}{}", known.0.to_ascii_lowercase()));
        Ok(known.2.then(|| (known.0.to_string(), known.1.to_string())))
    }

    /// The user name the client connected with.
    pub fn user(&self) -> String {
        self.map.get("user").cloned().unwrap_or_else(|| "eddy".into())
    }

    /// `statement_timeout` in milliseconds (0 = none).
    /// Whether DML waits for materialized views (`SET implicit_flush`).
    pub fn implicit_flush(&self) -> bool {
        matches!(self.get("implicit_flush").as_deref().map(str::to_ascii_lowercase).as_deref(), Some("true" | "on" | "1" | "yes"))
    }

    pub fn statement_timeout_ms(&self) -> u64 {
        self.get("statement_timeout").and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Executes SET, SHOW or RESET.
    pub fn execute(&mut self, stmt: Statement) -> EngineResult<Output> {
        match stmt {
            Statement::Set(set) => self.execute_set(set),
            Statement::Reset(r) => {
                let report = match r.reset {
                    Reset::ALL => {
                        self.map.retain(|k, _| !k.starts_with(PREFIX));
                        None
                    }
                    Reset::ConfigurationParameter(name) => self.reset(&object_name(&name))?,
                };
                Ok(Output::Set { report })
            }
            Statement::ShowVariable { variable } => {
                let name = variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" ");
                self.show(&name)
            }
            other => Err(EngineError::Unsupported(other.to_string())),
        }
    }

    fn execute_set(&mut self, set: Set) -> EngineResult<Output> {
        let report = match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = object_name(&variable);
                let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
                if value.eq_ignore_ascii_case("default") {
                    self.reset(&name)?
                } else {
                    self.set(&name, value)?
                }
            }
            Set::SetTimeZone { value, .. } => {
                let v = expr_text(&value);
                let v = if v.eq_ignore_ascii_case("local") || v.eq_ignore_ascii_case("default") { "UTC".to_string() } else { v };
                self.set("TimeZone", v)?
            }
            Set::SetNames { charset_name, .. } => self.set("client_encoding", charset_name.value)?,
            Set::SetNamesDefault {} => self.reset("client_encoding")?,
            Set::SetTransaction { .. } => None,
            Set::MultipleAssignments { assignments } => {
                let mut last = None;
                for a in assignments {
                    last = self.set(&object_name(&a.name), expr_text(&a.value))?.or(last);
                }
                last
            }
            other => return Err(EngineError::Unsupported(format!("{other}"))),
        };
        Ok(Output::Set { report })
    }

    fn show(&self, name: &str) -> EngineResult<Output> {
        let (names, values): (Vec<String>, Vec<String>) = if name.eq_ignore_ascii_case("all") {
            VARIABLES.iter().map(|v| (v.0.to_string(), self.get(v.0).unwrap_or_default())).unzip()
        } else if name.eq_ignore_ascii_case("time zone") {
            (vec!["TimeZone".into()], vec![self.get("TimeZone").unwrap_or_default()])
        } else {
            let value = self.get(name).ok_or_else(|| {
                EngineError::user("42704", format!("unrecognized configuration parameter \"{name}\""))
            })?;
            (vec![name.to_string()], vec![value])
        };
        if name.eq_ignore_ascii_case("all") {
            let schema = Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("setting", DataType::Utf8, false),
                Field::new("description", DataType::Utf8, false),
            ]));
            let descriptions: Vec<&str> = VARIABLES.iter().map(|v| v.3).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(names)),
                    Arc::new(StringArray::from(values)),
                    Arc::new(StringArray::from(descriptions)),
                ],
            )
            .map_err(|e| EngineError::DataFusion(e.into()))?;
            return rows(schema, batch);
        }
        let column = lookup(&names[0]).map(|v| v.0.to_lowercase()).unwrap_or_else(|| names[0].to_lowercase());
        let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .map_err(|e| EngineError::DataFusion(e.into()))?;
        rows(schema, batch)
    }
}

/// Replaces `current_user`, `session_user` and `user` (which the
/// compatibility parser turns into `session_user()` calls) with the
/// connection's user name.
pub fn bind_user(stmt: &mut Statement, user: &str) {
    use datafusion::sql::sqlparser::ast::{
        FunctionArguments, Ident, SelectItem, SetExpr, ValueWithSpan, visit_expressions_mut,
    };
    let is_user_fn = |e: &Expr| match e {
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let no_args = match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(l) => l.args.is_empty(),
                FunctionArguments::Subquery(_) => false,
            };
            no_args && matches!(name.as_str(), "session_user" | "current_user" | "user" | "current_role")
        }
        _ => false,
    };
    let literal = || Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(user.to_string())));
    // A bare `SELECT current_user` keeps Postgres' column name.
    if let Statement::Query(q) = stmt {
        if let SetExpr::Select(select) = q.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) = item {
                    if is_user_fn(e) {
                        *item = SelectItem::ExprWithAlias { expr: literal(), alias: Ident::new("current_user") };
                    }
                }
            }
        }
    }
    let _ = visit_expressions_mut(stmt, |e| {
        if is_user_fn(e) {
            *e = literal();
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

fn rows(schema: SchemaRef, batch: RecordBatch) -> EngineResult<Output> {
    let stream = MemoryStream::try_new(vec![batch], schema.clone(), None)?;
    Ok(Output::Rows { schema, stream: Box::pin(stream) })
}

/// The result schema of SHOW statements, for Describe.
pub fn show_schema(stmt: &Statement) -> SchemaRef {
    let name = match stmt {
        Statement::ShowVariable { variable } => {
            let n = variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" ");
            if n.eq_ignore_ascii_case("all") {
                return Arc::new(Schema::new(vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("setting", DataType::Utf8, false),
                    Field::new("description", DataType::Utf8, false),
                ]));
            }
            if n.eq_ignore_ascii_case("time zone") { "timezone".to_string() } else { n.to_lowercase() }
        }
        _ => "name".to_string(),
    };
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

/// SHOW TABLES: the user's tables, by name.
pub fn show_tables(engine: &Engine) -> EngineResult<Output> {
    let names: Vec<String> = engine.catalog.list().iter().map(|t| t.name().to_string()).collect();
    let schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(names))])
        .map_err(|e| EngineError::DataFusion(e.into()))?;
    rows(schema, batch)
}

fn object_name(name: &ObjectName) -> String {
    name.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.clone()).collect::<Vec<_>>().join(".")
}

/// A SET value as text: quotes removed, identifiers and numbers as written.
fn expr_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// Parses a Postgres duration (`5000`, `5s`, `100ms`, `1min`) into ms.
fn parse_duration_ms(v: &str) -> EngineResult<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| invalid_duration(v))?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid_duration(v)),
    };
    Ok(n * factor)
}

fn invalid_duration(v: &str) -> EngineError {
    EngineError::user("22023", format!("invalid value for parameter \"statement_timeout\": \"{v}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5000").ok(), Some(5000));
        assert_eq!(parse_duration_ms("5s").ok(), Some(5000));
        assert_eq!(parse_duration_ms("2min").ok(), Some(120_000));
        assert!(parse_duration_ms("soon").is_err());
    }
}
