//! Result column names as Postgres gives them. DataFusion names an
//! unaliased expression after its text (`count(*)`, `Int64(1)`); Postgres
//! names a function call after the function (`count`) and any other
//! expression `?column?`. Only the names sent to the client change.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Statement};

/// The Postgres name of an unaliased select item, or None to keep
/// DataFusion's (column references, and anything we do not recognise).
fn pg_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_lowercase()),
        Expr::Nested(inner) => pg_name(inner),
        Expr::Cast { expr, data_type, .. } => match expr.as_ref() {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
            _ => Some(pg_type_name(&data_type.to_string())),
        },
        _ => Some("?column?".into()),
    }
}

/// Postgres names a cast after the target type's internal name.
fn pg_type_name(sql: &str) -> String {
    match sql.to_lowercase().as_str() {
        "int" | "integer" => "int4".into(),
        "bigint" => "int8".into(),
        "smallint" => "int2".into(),
        "double precision" | "double" => "float8".into(),
        "real" => "float4".into(),
        "boolean" => "bool".into(),
        other => other.split('(').next().unwrap_or(other).trim().to_string(),
    }
}

fn first_select(body: &SetExpr) -> Option<&datafusion::sql::sqlparser::ast::Select> {
    match body {
        SetExpr::Select(s) => Some(s),
        SetExpr::SetOperation { left, .. } => first_select(left),
        SetExpr::Query(q) => first_select(&q.body),
        _ => None,
    }
}

/// Renames the result columns of `stmt` the way Postgres would.
pub fn postgres_names(stmt: &Statement, schema: SchemaRef) -> SchemaRef {
    let Statement::Query(q) = stmt else { return schema };
    let Some(select) = first_select(&q.body) else { return schema };
    if select.projection.len() != schema.fields().len()
        || select.projection.iter().any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }))
    {
        return schema;
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&select.projection)
        .map(|(f, item)| match item {
            SelectItem::UnnamedExpr(e) => match pg_name(e) {
                Some(name) => f.as_ref().clone().with_name(name),
                None => f.as_ref().clone(),
            },
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
