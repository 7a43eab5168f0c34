//! The SQL column types eddy stores, and their Arrow and Postgres names.
//!
//! This is the one place that decides how a SQL type is represented: the
//! Arrow type used in batches and storage, and the name shown to clients.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo};
use serde::{Deserialize, Serialize};

/// Arrow field metadata key that carries the SQL type name where the Arrow
/// type alone is ambiguous (JSONB and VARCHAR(n) are both Arrow Utf8).
pub const SQL_TYPE_METADATA: &str = "eddy.sql_type";

/// Precision and scale of an unconstrained NUMERIC.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    Boolean,
    SmallInt,
    Int,
    BigInt,
    Real,
    Double,
    Numeric { precision: u8, scale: i8 },
    Text,
    Varchar { max_len: Option<u64> },
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Jsonb,
}

impl SqlType {
    /// Maps a parsed SQL type; `Err` carries the type's text for a 0A000.
    pub fn from_ast(dt: &ast::DataType) -> Result<Self, String> {
        use ast::DataType as D;
        Ok(match dt {
            D::Bool | D::Boolean => Self::Boolean,
            D::SmallInt(_) | D::Int2(_) => Self::SmallInt,
            D::Int(_) | D::Integer(_) | D::Int4(_) => Self::Int,
            D::BigInt(_) | D::Int8(_) => Self::BigInt,
            D::Real | D::Float4 => Self::Real,
            D::Double(_) | D::DoublePrecision | D::Float8 => Self::Double,
            D::Float(info) => match info {
                ExactNumberInfo::Precision(p) if *p <= 24 => Self::Real,
                _ => Self::Double,
            },
            D::Numeric(info) | D::Decimal(info) | D::Dec(info) => match info {
                ExactNumberInfo::None => {
                    Self::Numeric { precision: DEFAULT_NUMERIC.0, scale: DEFAULT_NUMERIC.1 }
                }
                ExactNumberInfo::Precision(p) => Self::Numeric { precision: numeric_p(*p)?, scale: 0 },
                ExactNumberInfo::PrecisionAndScale(p, s) => {
                    let precision = numeric_p(*p)?;
                    let scale = i8::try_from(*s).map_err(|_| format!("NUMERIC scale {s}"))?;
                    if scale > precision as i8 {
                        return Err(format!("NUMERIC({p},{s}) with scale above precision"));
                    }
                    Self::Numeric { precision, scale }
                }
            },
            D::Text | D::String(_) => Self::Text,
            D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
                Self::Varchar { max_len: char_len(len) }
            }
            D::Char(len) | D::Character(len) => Self::Varchar { max_len: char_len(len) },
            D::Bytea => Self::Bytea,
            D::Date => Self::Date,
            D::Time(_, ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone) => Self::Time,
            D::Timestamp(_, ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone) => {
                Self::Timestamp
            }
            D::Timestamp(_, ast::TimezoneInfo::Tz | ast::TimezoneInfo::WithTimeZone) => {
                Self::TimestampTz
            }
            D::Interval { .. } => Self::Interval,
            D::JSONB | D::JSON => Self::Jsonb,
            D::Custom(name, _) => match name.to_string().to_ascii_lowercase().as_str() {
                "timestamptz" => Self::TimestampTz,
                "jsonb" | "json" => Self::Jsonb,
                "int2" => Self::SmallInt,
                "int4" => Self::Int,
                "int8" => Self::BigInt,
                "float4" => Self::Real,
                "float8" => Self::Double,
                "bool" => Self::Boolean,
                _ => return Err(dt.to_string()),
            },
            other => return Err(other.to_string()),
        })
    }

    pub fn arrow_type(&self) -> DataType {
        match self {
            Self::Boolean => DataType::Boolean,
            Self::SmallInt => DataType::Int16,
            Self::Int => DataType::Int32,
            Self::BigInt => DataType::Int64,
            Self::Real => DataType::Float32,
            Self::Double => DataType::Float64,
            Self::Numeric { precision, scale } => DataType::Decimal128(*precision, *scale),
            Self::Text | Self::Varchar { .. } | Self::Jsonb => DataType::Utf8,
            Self::Bytea => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Self::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    /// The Postgres spelling, as `format_type` and `\d` show it.
    pub fn pg_name(&self) -> String {
        match self {
            Self::Boolean => "boolean".into(),
            Self::SmallInt => "smallint".into(),
            Self::Int => "integer".into(),
            Self::BigInt => "bigint".into(),
            Self::Real => "real".into(),
            Self::Double => "double precision".into(),
            Self::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            Self::Text => "text".into(),
            Self::Varchar { max_len: Some(n) } => format!("character varying({n})"),
            Self::Varchar { max_len: None } => "character varying".into(),
            Self::Bytea => "bytea".into(),
            Self::Date => "date".into(),
            Self::Time => "time without time zone".into(),
            Self::Timestamp => "timestamp without time zone".into(),
            Self::TimestampTz => "timestamp with time zone".into(),
            Self::Interval => "interval".into(),
            Self::Jsonb => "jsonb".into(),
        }
    }

    /// The Arrow field for a column of this type.
    pub fn field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.arrow_type(), nullable);
        match self {
            Self::Jsonb | Self::Varchar { .. } => field.with_metadata(HashMap::from([(
                SQL_TYPE_METADATA.to_string(),
                self.pg_name(),
            )])),
            _ => field,
        }
    }
}

fn numeric_p(p: u64) -> Result<u8, String> {
    match u8::try_from(p) {
        Ok(p) if (1..=38).contains(&p) => Ok(p),
        _ => Err(format!("NUMERIC precision {p} (eddy supports 1 to 38)")),
    }
}

fn char_len(len: &Option<ast::CharacterLength>) -> Option<u64> {
    match len {
        Some(ast::CharacterLength::IntegerLength { length, .. }) => Some(*length),
        _ => None,
    }
}
