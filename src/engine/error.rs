//! Errors of statement execution and their SQLSTATEs.
//!
//! Every error a client can see passes through [`EngineError::sqlstate`];
//! the server turns it into an ErrorResponse. DataFusion's errors are
//! classified by kind (and, where DataFusion only gives a message, by the
//! message's wording, which is pinned by the slt tests).

use datafusion::error::DataFusionError;

use crate::catalog::CatalogError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A syntax error; `position` is a 1-based character offset, if known.
    #[error("{message}")]
    Syntax { message: String, position: Option<usize> },
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("column \"{0}\" does not exist")]
    UndefinedColumn(String),
    #[error("database \"{0}\" does not exist")]
    UndefinedDatabase(String),
    #[error("{message}")]
    User { sqlstate: &'static str, message: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
    #[error("{0}")]
    DataFusion(DataFusionError),
    #[error(transparent)]
    Connector(#[from] crate::connector::ConnectorError),
    #[error("canceling statement due to user request")]
    Canceled,
    #[error("canceling statement due to statement timeout")]
    Timeout,
}

pub type EngineResult<T> = Result<T, EngineError>;

impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        // Unwrap contexts and shared wrappers to classify the root cause.
        match e {
            DataFusionError::Context(_, inner) => Self::from(*inner),
            DataFusionError::Shared(inner) => Self::DataFusion(DataFusionError::Shared(inner)),
            DataFusionError::External(inner) => match inner.downcast::<StateError>() {
                Ok(state) => Self::State(*state),
                Err(other) => match other.downcast::<EngineError>() {
                    Ok(engine) => *engine,
                    Err(other) => Self::DataFusion(DataFusionError::External(other)),
                },
            },
            other => Self::DataFusion(other),
        }
    }
}

impl EngineError {
    pub fn user(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self::User { sqlstate, message: message.into() }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "42601",
            Self::Unsupported(_) => "0A000",
            Self::UndefinedTable(_) => "42P01",
            Self::UndefinedColumn(_) => "42703",
            Self::UndefinedDatabase(_) => "3D000",
            Self::User { sqlstate, .. } => sqlstate,
            Self::Catalog(CatalogError::AlreadyExists(_)) => "42P07",
            Self::Catalog(CatalogError::NotFound(_)) => "42P01",
            Self::Catalog(CatalogError::State(s)) | Self::State(s) => state_sqlstate(s),
            Self::Catalog(CatalogError::Corrupt(_)) => "XX001",
            Self::Catalog(CatalogError::Dependents { .. }) => "2BP01",
            Self::Catalog(CatalogError::WrongKind { .. }) => "42809",
            Self::Plan(crate::plan::PlanError::Unsupported(_)) => "0A000",
            Self::Plan(crate::plan::PlanError::Invalid(_)) => "22023",
            Self::Plan(crate::plan::PlanError::DataFusion(e)) => datafusion_sqlstate(e),
            Self::Stream(crate::stream::StreamError::State(s)) => state_sqlstate(s),
            Self::Stream(crate::stream::StreamError::DataFusion(e)) => datafusion_sqlstate(e),
            Self::Stream(_) => "XX000",
            Self::DataFusion(e) => datafusion_sqlstate(e),
            Self::Connector(e) => e.sqlstate(),
            Self::Canceled => "57014",
            Self::Timeout => "57014",
        }
    }

    /// The 1-based character position for syntax errors.
    pub fn position(&self) -> Option<usize> {
        match self {
            Self::Syntax { position, .. } => *position,
            _ => None,
        }
    }
}

fn state_sqlstate(e: &StateError) -> &'static str {
    match e {
        StateError::Rejected { sqlstate, .. } => sqlstate,
        StateError::NullKey => "23502",
        StateError::UnsupportedType(_) => "0A000",
        StateError::Corrupt(_) => "XX001",
        StateError::Locked { .. } => "55006",
        _ => "58030",
    }
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    use datafusion::arrow::error::ArrowError;
    match e {
        DataFusionError::Context(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::SchemaError(inner, _) => {
            use datafusion::common::SchemaError;
            match inner.as_ref() {
                SchemaError::FieldNotFound { .. } => "42703",
                SchemaError::AmbiguousReference { .. } => "42702",
                SchemaError::DuplicateQualifiedField { .. }
                | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
            }
        }
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            ArrowError::ArithmeticOverflow(_) => "22003",
            ArrowError::InvalidArgumentError(m) if m.contains("overflow") => "22003",
            _ => "XX000",
        },
        DataFusionError::Plan(m) => plan_sqlstate(m),
        DataFusionError::Execution(m) => {
            if m.contains("Divide by zero") || m.contains("division by zero") {
                "22012"
            } else if m.contains("Cannot cast") || m.contains("invalid input") {
                "22P02"
            } else {
                "XX000"
            }
        }
        DataFusionError::External(inner) => {
            if let Some(s) = inner.downcast_ref::<StateError>() {
                state_sqlstate(s)
            } else {
                "XX000"
            }
        }
        _ => "XX000",
    }
}

fn plan_sqlstate(m: &str) -> &'static str {
    if m.contains("table") && m.contains("not found") {
        "42P01"
    } else if m.contains("No field named") || m.contains("not found") {
        "42703"
    } else if m.contains("Cannot cast") || m.contains("Cannot automatically convert") {
        "22P02"
    } else if m.contains("not supported") || m.contains("Unsupported") {
        "0A000"
    } else if m.contains("No function matches") || m.contains("Invalid function") {
        "42883"
    } else {
        "42000"
    }
}
