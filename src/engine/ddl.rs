//! DDL: CREATE TABLE and DROP TABLE.

use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, Expr, Ident, ObjectName, TableConstraint,
};

use super::{EngineError, EngineResult, Engine, Output, normalize_name};
use crate::catalog::{ColumnDef, SqlType};

fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

pub async fn create_table(engine: &Engine, ct: CreateTable) -> EngineResult<Output> {
    if ct.query.is_some() {
        return Err(EngineError::Unsupported("CREATE TABLE ... AS SELECT".into()));
    }
    if ct.temporary || ct.external || ct.or_replace || ct.like.is_some() || ct.clone.is_some() {
        return Err(EngineError::Unsupported(
            "CREATE TABLE with TEMPORARY, EXTERNAL, OR REPLACE, LIKE or CLONE".into(),
        ));
    }
    let name = normalize_name(&ct.name)?;
    let (columns, primary_key) = table_columns(&ct, &name)?;
    engine.catalog.create_table(name, columns, primary_key, ct.if_not_exists).await?;
    Ok(Output::Command { tag: "CREATE TABLE", rows: None })
}

/// The columns and primary key (column indexes) of a CREATE TABLE.
pub fn table_columns(ct: &CreateTable, name: &str) -> EngineResult<(Vec<ColumnDef>, Vec<usize>)> {
    let name = name.to_string();
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key: Vec<usize> = Vec::new();
    for col in &ct.columns {
        let col_name = ident_name(&col.name);
        if columns.iter().any(|c| c.name == col_name) {
            return Err(EngineError::user(
                "42701",
                format!("column \"{col_name}\" specified more than once"),
            ));
        }
        let sql_type = SqlType::from_ast(&col.data_type)
            .map_err(|t| EngineError::Unsupported(format!("type {t}")))?;
        let mut nullable = true;
        for opt in &col.options {
            match &opt.option {
                ColumnOption::Null => {}
                ColumnOption::NotNull => nullable = false,
                ColumnOption::PrimaryKey(_) => {
                    if !primary_key.is_empty() {
                        return Err(multiple_pk(&name));
                    }
                    primary_key.push(columns.len());
                    nullable = false;
                }
                other => {
                    return Err(EngineError::Unsupported(format!("column option {other}")));
                }
            }
        }
        columns.push(ColumnDef { name: col_name, sql_type, nullable });
    }
    for constraint in &ct.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(multiple_pk(&name));
                }
                for ic in &pk.columns {
                    let Expr::Identifier(ident) = &ic.column.expr else {
                        return Err(EngineError::Unsupported(format!(
                            "primary key expression {}",
                            ic.column.expr
                        )));
                    };
                    let cname = ident_name(ident);
                    let idx = columns
                        .iter()
                        .position(|c| c.name == cname)
                        .ok_or_else(|| EngineError::UndefinedColumn(cname.clone()))?;
                    if primary_key.contains(&idx) {
                        return Err(EngineError::user(
                            "42701",
                            format!("column \"{cname}\" appears twice in primary key constraint"),
                        ));
                    }
                    primary_key.push(idx);
                    columns[idx].nullable = false;
                }
            }
            other => return Err(EngineError::Unsupported(format!("table constraint {other}"))),
        }
    }
    if columns.is_empty() {
        return Err(EngineError::Unsupported("a table without columns".into()));
    }
    Ok((columns, primary_key))
}

fn multiple_pk(table: &str) -> EngineError {
    EngineError::user(
        "42P16",
        format!("multiple primary keys for table \"{table}\" are not allowed"),
    )
}

pub async fn drop_tables(
    engine: &Engine,
    names: Vec<ObjectName>,
    if_exists: bool,
) -> EngineResult<Output> {
    // Check every name first so a failing DROP of several drops none.
    let mut resolved = Vec::with_capacity(names.len());
    for n in &names {
        let name = normalize_name(n)?;
        if engine.catalog.get(&name).is_none() && !if_exists {
            return Err(EngineError::UndefinedTable(name));
        }
        resolved.push(name);
    }
    for name in resolved {
        engine.catalog.drop_table(&name, true).await?;
    }
    Ok(Output::Command { tag: "DROP TABLE", rows: None })
}
