//! Common subplans: a subtree of a view's plan that computes exactly what
//! an earlier subtree computes runs once, and its output goes to both
//! consumers.
//!
//! Queries repeat themselves: Nexmark q5 counts bids per auction and
//! window twice (once for the counts, once for their maximum), a
//! self-join reads one table twice, and a `HOP` reads its source once per
//! window it puts a row in. Without sharing each copy is its own chain of
//! operators with its own state, doing the same work on the same rows.
//!
//! Two subtrees are the same when their [`fingerprint`]s are: the
//! operators, their expressions (as DataFusion prints them, which names
//! each column with its position), their output schemas (names and types)
//! and the same for every input, down to the tables they read. Volatile
//! expressions (`random()`) and operators this module does not know how
//! to compare never match, so the worst a missing case costs is the
//! duplicate work. The first subtree in pre-order is the one that runs
//! (its node ids name the state), so a plan shares the same way every
//! time it is built, across restarts.

use std::collections::HashMap;
use std::fmt::Write;

use datafusion::physical_expr_common::physical_expr::is_volatile;

use super::{Op, PhysExpr, PlanNode};

/// Per node that repeats an earlier one: the id of the earlier one.
pub fn duplicates(root: &PlanNode) -> HashMap<u32, u32> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut out = HashMap::new();
    walk(root, &mut seen, &mut out);
    out
}

fn walk(n: &PlanNode, seen: &mut HashMap<String, u32>, out: &mut HashMap<u32, u32>) {
    // Sources are fed by the runtime, one channel each: only operators
    // are shared.
    if let Some(fp) = fingerprint(n).filter(|_| !n.inputs.is_empty()) {
        match seen.get(&fp) {
            Some(first) => {
                out.insert(n.id, *first);
                return;
            }
            None => {
                seen.insert(fp, n.id);
            }
        }
    }
    for i in &n.inputs {
        walk(i, seen, out);
    }
}

/// What `n`'s subtree computes, as text; `None` when it cannot be
/// compared (it then never matches another).
pub fn fingerprint(n: &PlanNode) -> Option<String> {
    let mut s = String::new();
    let exprs = |s: &mut String, es: &[PhysExpr]| -> Option<()> {
        for e in es {
            if is_volatile(e) {
                return None;
            }
            let _ = write!(s, "{e};");
        }
        Some(())
    };
    match &n.op {
        Op::TableSource { table, projection } => {
            let _ = write!(s, "table {} {projection:?}", table.id());
        }
        Op::MvSource { mv } => {
            let _ = write!(s, "view {}", mv.def.id);
        }
        Op::Filter { predicate } => {
            s.push_str("filter ");
            exprs(&mut s, std::slice::from_ref(predicate))?;
        }
        Op::Project { exprs: es, derive } => {
            let _ = write!(s, "project {derive:?} ");
            exprs(&mut s, es)?;
        }
        Op::Aggregate { group, aggs, window } => {
            let _ = write!(s, "aggregate {window:?} ");
            exprs(&mut s, group)?;
            for a in aggs {
                let _ = write!(s, "{:?}({}) {} {};", a.kind, a.arg, a.input_type, a.output_type);
                exprs(&mut s, std::slice::from_ref(&a.arg))?;
            }
        }
        Op::Join { kind, left_keys, right_keys, temporal, bounds } => {
            let _ = write!(s, "join {kind:?} {temporal} {bounds:?} ");
            exprs(&mut s, left_keys)?;
            s.push('=');
            exprs(&mut s, right_keys)?;
        }
        Op::Union => s.push_str("union"),
        Op::TopN { .. } | Op::Session { .. } => return None,
    }
    s.push_str(" -> ");
    for f in n.schema.fields() {
        let _ = write!(s, "{}:{};", f.name(), f.data_type());
    }
    for i in &n.inputs {
        let _ = write!(s, " ({})", fingerprint(i)?);
    }
    Some(s)
}
