//! Window table functions in RisingWave's syntax, rewritten into plain
//! SQL before DataFusion plans the query:
//!
//! - `TUMBLE(rel, ts, size)` → `(SELECT *, date_bin(size, ts, origin) AS
//!   window_start, date_bin(size, ts, origin) + size AS window_end FROM
//!   rel) AS rel`;
//! - `HOP(rel, ts, slide, size)` → the same for each of the `size / slide`
//!   windows a row falls in, as a `UNION ALL` (`window_start` =
//!   `date_bin(slide, ts, origin) - j * slide`).
//! - `SESSION(rel, ts, gap [, key ...])` → `(SELECT *,
//!   eddy_session_start(ts, gap) OVER (PARTITION BY key ... ORDER BY ts) AS
//!   window_start, eddy_session_end(...) AS window_end FROM rel) AS rel`:
//!   sessions per key (usually the GROUP BY's other columns; none = one
//!   session stream), see [`super::session`].
//!
//! - `rel FOR SYSTEM_TIME AS OF PROCTIME()` (a temporal join's table,
//!   which [`proctime_text`] turns into `eddy_proctime(rel)` before sqlparser
//!   sees it) → `(SELECT * FROM (SELECT * FROM rel) AS __eddy_proctime) AS
//!   rel`: the inner alias marks the table for the planner
//!   ([`PROCTIME_ALIAS`]).
//!
//! The origin is the Unix epoch (windows align to it, like RisingWave's
//! without an offset). Because `date_bin(size, ts, ...)` never decreases
//! when `ts` grows, `window_start` and `window_end` carry `ts`'s watermark
//! ([`super::watermark`]), which is how a GROUP BY over a window knows when
//! the window is closed. Both a materialized view and a plain SELECT see
//! the same rewrite, so a batch query over a table answers what the view
//! holds.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, Query, Statement, TableAlias, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::{PlanError, PlanResult};

/// The alias that marks a table read `FOR SYSTEM_TIME AS OF PROCTIME()`.
pub const PROCTIME_ALIAS: &str = "__eddy_proctime";

/// Rewrites `rel FOR SYSTEM_TIME AS OF PROCTIME()` into
/// `eddy_proctime(rel)`, which sqlparser's Postgres dialect parses (it
/// knows no table versions). Token-level; other text is kept as written.
pub fn proctime_text(sql: &str) -> Option<String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.to_ascii_lowercase().contains("system_time") {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    let mut changed = false;
    while i < tokens.len() {
        // The next `n` non-whitespace tokens from `i` with their positions.
        let ahead: Vec<usize> = (i..tokens.len()).filter(|&j| !matches!(tokens[j], Token::Whitespace(_))).take(8).collect();
        let pattern = ahead.len() == 8
            && word(&tokens[ahead[0]], "for")
            && word(&tokens[ahead[1]], "system_time")
            && word(&tokens[ahead[2]], "as")
            && word(&tokens[ahead[3]], "of")
            && word(&tokens[ahead[4]], "proctime")
            && tokens[ahead[5]] == Token::LParen
            && tokens[ahead[6]] == Token::RParen;
        if pattern && i == ahead[0] {
            // The relation name: the last non-whitespace tokens before, a
            // (possibly dotted) name.
            let mut end = out.len();
            while end > 0 && matches!(out[end - 1], Token::Whitespace(_)) {
                end -= 1;
            }
            let mut start = end;
            if start > 0 && matches!(out[start - 1], Token::Word(_)) {
                start -= 1;
                while start >= 2 && out[start - 1] == Token::Period && matches!(out[start - 2], Token::Word(_)) {
                    start -= 2;
                }
            }
            if start == end {
                return None;
            }
            let name: Vec<Token> = out.drain(start..).filter(|t| !matches!(t, Token::Whitespace(_))).collect();
            out.push(Token::make_word("eddy_proctime", None));
            out.push(Token::LParen);
            out.extend(name);
            out.push(Token::RParen);
            i = ahead[6] + 1;
            changed = true;
            continue;
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    changed.then(|| out.iter().map(|t| t.to_string()).collect())
}

/// Windows of one kind: the most `HOP` may expand a row into.
const MAX_HOP_WINDOWS: i64 = 1024;

/// Rewrites every `TUMBLE(...)` and `HOP(...)` in `FROM` clauses.
pub fn rewrite(stmt: &mut Statement) -> PlanResult<()> {
    let mut v = Rewriter { error: None };
    let _ = stmt.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether SQL text may hold a window function (a cheap pre-check).
pub fn mentions_window(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("tumble") || lower.contains("hop") || lower.contains("session")
}

struct Rewriter {
    error: Option<PlanError>,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, args: Some(args), alias, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let kind = name.to_string().to_ascii_lowercase();
        if kind == "eddy_proctime" {
            let relation = match args.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(i)))] => i.to_string(),
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(p)))] => {
                    p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(".")
                }
                _ => {
                    self.error = Some(bad("FOR SYSTEM_TIME AS OF PROCTIME() follows a table's name"));
                    return ControlFlow::Break(());
                }
            };
            let sql = format!("SELECT * FROM (SELECT * FROM {relation}) AS {PROCTIME_ALIAS}");
            let query = match Parser::new(&PostgreSqlDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_query()) {
                Ok(q) => q,
                Err(e) => {
                    self.error = Some(bad(e.to_string()));
                    return ControlFlow::Break(());
                }
            };
            let short = relation.rsplit('.').next().unwrap_or(&relation).to_string();
            let alias = alias.clone().unwrap_or_else(|| TableAlias { name: Ident::new(short), columns: Vec::new(), explicit: true, at: None });
            *factor = TableFactor::Derived { lateral: false, subquery: query, alias: Some(alias), sample: None };
            return ControlFlow::Continue(());
        }
        if kind != "tumble" && kind != "hop" && kind != "session" {
            return ControlFlow::Continue(());
        }
        let exprs: Vec<Expr> = args
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect();
        match window_query(&kind, &exprs, args.args.len()) {
            Ok((query, relation)) => {
                let alias = alias.clone().unwrap_or_else(|| TableAlias { name: Ident::new(relation), columns: Vec::new(), explicit: true, at: None });
                *factor = TableFactor::Derived { lateral: false, subquery: Box::new(query), alias: Some(alias), sample: None };
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn bad(message: impl Into<String>) -> PlanError {
    PlanError::Invalid(message.into())
}

/// The subquery replacing one window function, and the relation's name.
fn window_query(kind: &str, args: &[Expr], given: usize) -> PlanResult<(Query, String)> {
    let expected = match kind {
        "tumble" => 3,
        "session" => given.max(3),
        _ => 4,
    };
    if kind == "session" && (given < 3 || args.len() != given) {
        return Err(bad(
            "SESSION takes (relation, time column, gap[, key column, ...]), for example SESSION(clicks, ts, INTERVAL '30' MINUTE, user_id)",
        ));
    }
    if given != expected || args.len() != expected {
        return Err(bad(if kind == "tumble" {
            "TUMBLE takes (relation, time column, window size), for example TUMBLE(bids, ts, INTERVAL '1' MINUTE)"
        } else {
            "HOP takes (relation, time column, slide, window size), for example HOP(bids, ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)"
        }));
    }
    let relation = match &args[0] {
        Expr::Identifier(i) => i.to_string(),
        Expr::CompoundIdentifier(parts) => parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("."),
        other => return Err(bad(format!("the first argument of {} must name a table, source or view, not {other}", kind.to_uppercase()))),
    };
    let time = args[1].to_string();
    let origin = "TIMESTAMP '1970-01-01 00:00:00'";
    let sql = if kind == "session" {
        let gap = interval_micros(&args[2], "session gap")?;
        let keys = args[3..]
            .iter()
            .map(|k| match k {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Ok(k.to_string()),
                other => Err(bad(format!("SESSION's keys must be columns, not {other}"))),
            })
            .collect::<PlanResult<Vec<_>>>()?;
        let over = if keys.is_empty() {
            format!("ORDER BY {time}")
        } else {
            format!("PARTITION BY {} ORDER BY {time}", keys.join(", "))
        };
        let (start, end) = (super::session::START, super::session::END);
        format!(
            "SELECT *, {start}({time}, {gap}) OVER ({over}) AS window_start, {end}({time}, {gap}) OVER ({over}) AS window_end FROM {relation}"
        )
    } else if kind == "tumble" {
        let size = interval_micros(&args[2], "window size")?;
        let size = interval_sql(size);
        format!(
            "SELECT *, date_bin({size}, {time}, {origin}) AS window_start, date_bin({size}, {time}, {origin}) + {size} AS window_end FROM {relation}"
        )
    } else {
        let slide = interval_micros(&args[2], "slide")?;
        let size = interval_micros(&args[3], "window size")?;
        if size % slide != 0 {
            return Err(bad("HOP's window size must be a multiple of its slide"));
        }
        let windows = size / slide;
        if windows > MAX_HOP_WINDOWS {
            return Err(bad(format!("HOP would put each row in {windows} windows; at most {MAX_HOP_WINDOWS} are allowed")));
        }
        (0..windows)
            .map(|j| {
                let start = format!("date_bin({}, {time}, {origin}) - {}", interval_sql(slide), interval_sql(j * slide));
                format!("SELECT *, {start} AS window_start, {start} + {} AS window_end FROM {relation}", interval_sql(size))
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let query = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| bad(format!("{}: {e}", kind.to_uppercase())))?;
    Ok((*query, relation))
}

fn interval_sql(micros: i64) -> String {
    format!("INTERVAL '{micros} microseconds'")
}

/// A constant interval of days and smaller units, in microseconds.
fn interval_micros(e: &Expr, what: &str) -> PlanResult<i64> {
    let Expr::Interval(i) = e else {
        return Err(bad(format!("the {what} must be an interval literal such as INTERVAL '1' MINUTE, not {e}")));
    };
    let value = match i.value.as_ref() {
        Expr::Value(v) => match &v.value {
            datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let text = match &i.leading_field {
        Some(unit) => format!("{value} {unit}"),
        None => value,
    };
    let parsed = datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano(&text)
        .map_err(|e| bad(format!("the {what} {e}")))?;
    if parsed.months != 0 {
        return Err(bad(format!("the {what} must not use months or years (windows need a fixed length)")));
    }
    let micros = i64::from(parsed.days) * 86_400_000_000 + parsed.nanoseconds / 1000;
    if micros <= 0 {
        return Err(bad(format!("the {what} must be positive")));
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> PlanResult<String> {
        let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0);
        rewrite(&mut stmt)?;
        Ok(stmt.to_string())
    }

    #[test]
    fn tumble_and_hop_become_subqueries() {
        let s = rewritten("SELECT window_start, count(*) FROM TUMBLE(bids, ts, INTERVAL '1' MINUTE) GROUP BY window_start").unwrap();
        assert!(s.contains("date_bin(INTERVAL '60000000 microseconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start"), "{s}");
        assert!(s.contains(") AS bids GROUP BY"), "{s}");
        let s = rewritten("SELECT * FROM HOP(t, ts, INTERVAL '1 minute', INTERVAL '3 minutes') AS h").unwrap();
        assert_eq!(s.matches("UNION ALL").count(), 2, "{s}");
        assert!(s.ends_with("AS h"), "{s}");
        assert!(rewritten("SELECT * FROM HOP(t, ts, INTERVAL '2' MINUTE, INTERVAL '3' MINUTE)").is_err());
        assert!(rewritten("SELECT * FROM TUMBLE(t, ts)").is_err());
        assert!(rewritten("SELECT * FROM TUMBLE(t, ts, INTERVAL '1' MONTH)").is_err());
        assert!(rewritten("SELECT * FROM t").is_ok());
        let s = rewritten("SELECT * FROM SESSION(clicks, ts, INTERVAL '30' MINUTE, user_id)").unwrap();
        assert!(s.contains("eddy_session_end(ts, 1800000000) OVER (PARTITION BY user_id ORDER BY ts) AS window_end"), "{s}");
        assert!(rewritten("SELECT * FROM SESSION(clicks, ts)").is_err());
        assert!(rewritten("SELECT * FROM SESSION(clicks, ts, INTERVAL '1' MINUTE, lower(u))").is_err());
    }

    #[test]
    fn proctime_becomes_a_marked_subquery() {
        let text = proctime_text("SELECT * FROM s JOIN accounts FOR SYSTEM_TIME AS OF PROCTIME() AS a ON a.id = s.id").unwrap();
        assert_eq!(text, "SELECT * FROM s JOIN eddy_proctime(accounts) AS a ON a.id = s.id");
        let s = rewritten(&text).unwrap();
        assert!(s.contains("JOIN (SELECT * FROM (SELECT * FROM accounts) AS __eddy_proctime) AS a ON"), "{s}");
        let s = rewritten(&proctime_text("SELECT * FROM s LEFT JOIN public.t FOR SYSTEM_TIME AS OF PROCTIME() ON t.k = s.k").unwrap()).unwrap();
        assert!(s.contains("(SELECT * FROM public.t) AS __eddy_proctime) AS t ON"), "{s}");
        assert_eq!(proctime_text("SELECT 1"), None);
    }
}
