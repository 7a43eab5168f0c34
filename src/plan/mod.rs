//! `plan/`: turns the optimized DataFusion `LogicalPlan` of a materialized
//! view's query into a stream plan: a tree of incremental operators
//! ([`PlanNode`]) that the stream runtime runs.
//!
//! Every construct the runtime cannot maintain incrementally is refused
//! here with [`PlanError::Unsupported`] (SQLSTATE 0A000) naming it, so a
//! view is never answered wrongly. `EXPLAIN CREATE MATERIALIZED VIEW`
//! prints the tree ([`StreamPlan::explain`]).

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType, NullEquality, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, ExprSchemable, Filter, Join, Limit, LogicalPlan, Operator, Projection,
    Sort, TableScan, Volatility, Window, WindowFunctionDefinition,
};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::catalog::{Catalog, MatView, Table};

pub mod durations;
pub mod interval;
pub mod session;
pub mod shared;
pub mod watermark;
pub mod window;

/// Why a query cannot be a materialized view.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0} is not supported in a materialized view")]
    Unsupported(String),
    /// A window function or watermark written wrongly.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

pub type PlanResult<T> = Result<T, PlanError>;

fn unsupported<T>(what: impl Into<String>) -> PlanResult<T> {
    Err(PlanError::Unsupported(what.into()))
}

pub type PhysExpr = Arc<dyn PhysicalExpr>;
pub use interval::TimeBounds;

/// An aggregate function the aggregate operator maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    BoolAnd,
    BoolOr,
}

#[derive(Debug, Clone)]
pub struct AggSpec {
    pub kind: AggKind,
    pub arg: PhysExpr,
    /// The argument's type.
    pub input_type: DataType,
    /// The result's type (as DataFusion plans it).
    pub output_type: DataType,
    pub label: String,
}

/// The join types the join operator maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
    RightSemi,
    RightAnti,
}

impl JoinKind {
    pub fn preserves_left(self) -> bool {
        matches!(self, JoinKind::Left | JoinKind::Full)
    }
    pub fn preserves_right(self) -> bool {
        matches!(self, JoinKind::Right | JoinKind::Full)
    }
}

#[derive(Clone)]
pub enum Op {
    /// Changes of a table, read from the change log (projected columns).
    TableSource { table: Arc<Table>, projection: Option<Vec<usize>> },
    /// Changes of another materialized view.
    MvSource { mv: Arc<MatView> },
    Filter { predicate: PhysExpr },
    /// `derive[j]`: the input column whose watermark output `j` carries.
    Project { exprs: Vec<PhysExpr>, derive: Vec<Option<usize>> },
    /// With `window`, the first group column is the window: its groups
    /// close when the watermark passes them.
    Aggregate { group: Vec<PhysExpr>, aggs: Vec<AggSpec>, window: Option<WindowAgg> },
    /// With `temporal`, the right side is a table read as of processing
    /// time (`FOR SYSTEM_TIME AS OF PROCTIME()`): its changes update the
    /// lookup state but never the output, and left rows are not stored.
    /// With `bounds` (an inner interval or window join), rows no later
    /// change can match are dropped by watermark.
    Join { kind: JoinKind, left_keys: Vec<PhysExpr>, right_keys: Vec<PhysExpr>, temporal: bool, bounds: Option<TimeBounds> },
    Union,
    /// Rows `skip .. skip + limit` per partition in `order`; with `rank`, a
    /// `row_number` column is appended.
    TopN {
        partition: Vec<PhysExpr>,
        order: Vec<(PhysExpr, SortOptions)>,
        skip: usize,
        limit: Option<usize>,
        rank: bool,
        /// The input column of a watermarked timestamp among the partition
        /// keys: partitions below the watermark are closed (state dropped).
        time: Option<usize>,
    },
    /// Session windows ([`session`]): every input row, plus per entry of
    /// `ends` its session's start (`false`) or end (`true`); `gap` in the
    /// time column's unit. With `prune`, sessions the watermark has passed
    /// are forgotten (append-only input only).
    Session { partition: Vec<PhysExpr>, time: PhysExpr, gap: i64, ends: Vec<bool>, time_col: Option<usize>, prune: bool },
}

/// A GROUP BY whose first group column carries a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAgg {
    /// The input column whose watermark the window column derives from.
    pub input_col: usize,
    /// EMIT ON WINDOW CLOSE: a group's row is emitted once, when its window
    /// closes (append-only); otherwise it is updated continuously and its
    /// state dropped when the window closes.
    pub emit_on_close: bool,
}

#[derive(Clone)]
pub struct PlanNode {
    /// Position in the plan (pre-order); names the operator's state.
    pub id: u32,
    pub op: Op,
    /// Output schema (every column nullable).
    pub schema: SchemaRef,
    pub inputs: Vec<PlanNode>,
    /// One line for EXPLAIN.
    pub label: String,
    /// Output columns that carry a watermark.
    pub watermarks: Vec<usize>,
}

/// A materialized view's stream plan.
pub struct StreamPlan {
    pub root: PlanNode,
    /// The view's columns (Postgres names, nullable).
    pub schema: SchemaRef,
    /// Tables whose change log the plan reads.
    pub tables: Vec<u64>,
    /// Materialized views the plan reads.
    pub mvs: Vec<u64>,
}

/// Whether a plan only ever inserts rows: sources, APPEND ONLY tables and
/// append-only views, through filters, projections, unions, inner joins
/// and EMIT ON WINDOW CLOSE aggregates. Everything else may retract.
pub fn append_only(node: &PlanNode) -> bool {
    match &node.op {
        Op::TableSource { table, .. } => table.def.is_append_only(),
        Op::Filter { .. } | Op::Project { .. } | Op::Union => node.inputs.iter().all(append_only),
        Op::Aggregate { window: Some(w), .. } => w.emit_on_close,
        Op::MvSource { mv } => mv.append_only,
        // A temporal join's output follows its stream side alone.
        Op::Join { temporal: true, .. } => node.inputs.first().is_some_and(append_only),
        // Inner joins delete output only when an input row is deleted.
        Op::Join { kind: JoinKind::Inner, .. } => node.inputs.iter().all(append_only),
        _ => false,
    }
}

/// Whether the plan's state grows with the groups an epoch touches, not
/// with its rows: no join, top-N or session window (they keep rows).
pub fn per_epoch_state_bounded(node: &PlanNode) -> bool {
    !matches!(node.op, Op::Join { .. } | Op::TopN { .. } | Op::Session { .. }) && node.inputs.iter().all(per_epoch_state_bounded)
}

/// Whether no row can occur twice in a plan's output, so that a view's
/// stored multiplicities are all 1: a GROUP BY's rows are unique on their
/// group columns, and a filter, or a projection that keeps every group
/// column as it is, keeps them unique.
pub fn distinct_rows(node: &PlanNode) -> bool {
    unique_columns(node).is_some()
}

/// Output columns that are unique together, when the plan knows some.
fn unique_columns(node: &PlanNode) -> Option<Vec<usize>> {
    match &node.op {
        Op::Aggregate { group, .. } => Some((0..group.len()).collect()),
        Op::Filter { .. } => unique_columns(node.inputs.first()?),
        Op::Project { exprs, .. } => unique_columns(node.inputs.first()?)?
            .into_iter()
            .map(|k| {
                exprs.iter().position(|e| {
                    e.downcast_ref::<datafusion::physical_expr::expressions::Column>().is_some_and(|c| c.index() == k)
                })
            })
            .collect(),
        Op::TableSource { table, projection } => table_key(table, projection.as_deref()),
        Op::MvSource { mv } => mv.def.row_key.clone(),
        Op::Join { kind, left_keys, right_keys, temporal: false, .. } => {
            let [left, right] = node.inputs.as_slice() else { return None };
            join_unique(*kind, left, right, left_keys, right_keys)
        }
        _ => None,
    }
}

/// A stored table's primary key, as positions among the columns it reads
/// (a source stores nothing and guarantees nothing; a table without a
/// primary key may hold equal rows). Not for an APPEND ONLY table: one
/// fed by a connector overwrites a repeated key, and with a watermark the
/// retraction of the old row can be dropped as late, so its changes may
/// bring two rows with one key.
fn table_key(table: &crate::catalog::Table, projection: Option<&[usize]>) -> Option<Vec<usize>> {
    if table.def.source || table.def.primary_key.is_empty() || table.def.append_only || table.def.watermark.is_some() {
        return None;
    }
    table
        .def
        .primary_key
        .iter()
        .map(|&c| match projection {
            Some(p) => p.iter().position(|&q| q == c),
            None => Some(c),
        })
        .collect()
}

/// Unique columns of a join's output (left columns, then right ones; the
/// kept side's alone for semi and anti joins):
/// - a semi or anti join emits each kept row at most once;
/// - when the join keys of one side cover a unique key of it, a row of
///   the other side matches at most one row there, so that other side's
///   unique key stays unique (where the kept side is never NULL-padded:
///   inner joins, and the preserved side of an outer join);
/// - an inner, left or right join's pairs are unique on both sides' keys
///   together: a preserved row is either padded once or matched, never
///   both. (A full join may pad both sides with all-NULL keys.)
fn join_unique(kind: JoinKind, left: &PlanNode, right: &PlanNode, left_keys: &[PhysExpr], right_keys: &[PhysExpr]) -> Option<Vec<usize>> {
    let (ul, ur) = (unique_columns(left), unique_columns(right));
    let width = left.schema.fields().len();
    let covers = |keys: &[PhysExpr], unique: &Option<Vec<usize>>| {
        let cols: Vec<usize> = keys
            .iter()
            .filter_map(|e| e.downcast_ref::<datafusion::physical_expr::expressions::Column>().map(|c| c.index()))
            .collect();
        unique.as_ref().is_some_and(|u| u.iter().all(|c| cols.contains(c)))
    };
    let shift = |u: Vec<usize>| u.into_iter().map(|c| c + width).collect::<Vec<_>>();
    match kind {
        JoinKind::LeftSemi | JoinKind::LeftAnti => ul,
        JoinKind::RightSemi | JoinKind::RightAnti => ur,
        JoinKind::Full => None,
        _ => {
            if matches!(kind, JoinKind::Inner | JoinKind::Left) && covers(right_keys, &ur) && ul.is_some() {
                return ul;
            }
            if matches!(kind, JoinKind::Inner | JoinKind::Right) && covers(left_keys, &ul) && ur.is_some() {
                return ur.map(shift);
            }
            let (l, r) = (ul?, ur?);
            Some(l.into_iter().chain(shift(r)).collect())
        }
    }
}

/// The columns a view's rows are stored under ([`crate::stream::view_rows`]):
/// a unique key that leaves some column out (a key of every column, as in
/// DISTINCT, is the row itself: rows are stored whole).
pub fn view_key(node: &PlanNode, columns: usize) -> Option<Vec<usize>> {
    unique_columns(node).filter(|k| k.len() < columns)
}

/// Every column nullable: what stream batches carry.
pub fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<Field>>(),
    ))
}

/// Refuses functions whose result is not a function of the row (random(),
/// now()): a view must equal its query over the current tables.
pub fn check_deterministic(plan: &LogicalPlan) -> PlanResult<()> {
    let mut bad: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        bad = Some(format!("non-deterministic function {}()", f.func.name()));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if bad.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    match bad {
        Some(b) => unsupported(b),
        None => Ok(()),
    }
}

/// Names of every relation a (not yet analyzed) plan reads, in order.
pub fn referenced_relations(plan: &LogicalPlan) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

struct Builder<'a> {
    catalog: &'a Catalog,
    /// EMIT ON WINDOW CLOSE.
    eowc: bool,
    next_id: u32,
    tables: Vec<u64>,
    mvs: Vec<u64>,
    props: ExecutionProps,
}

/// Builds the stream plan of an optimized logical plan; `schema` is the
/// view's output schema (Postgres column names).
pub fn build(catalog: &Catalog, plan: &LogicalPlan, schema: &Schema, eowc: bool) -> PlanResult<StreamPlan> {
    let mut b = Builder { catalog, eowc, next_id: 0, tables: Vec::new(), mvs: Vec::new(), props: ExecutionProps::new() };
    let root = b.node(plan, None)?;
    let schema = nullable(schema);
    if root.schema.fields().len() != schema.fields().len() {
        return Err(PlanError::DataFusion(datafusion::error::DataFusionError::Internal(
            "stream plan and view have different columns".into(),
        )));
    }
    if b.tables.is_empty() && b.mvs.is_empty() {
        return unsupported("a query that reads no table");
    }
    if eowc && !has_window_aggregate(&root) {
        return unsupported(
            "EMIT ON WINDOW CLOSE without a GROUP BY over a window column with a watermark (for example GROUP BY window_start over TUMBLE(source, ts, ...), where ts has a WATERMARK)",
        );
    }
    Ok(StreamPlan { root, schema, tables: b.tables, mvs: b.mvs })
}

/// A `row_number` bound pushed down from a filter: (column name, max rank).
type RankHint = Option<(String, usize)>;

impl Builder<'_> {
    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn phys(&self, e: &Expr, schema: &DFSchema) -> PlanResult<PhysExpr> {
        let e = durations::fixed_intervals_as_durations(e, schema);
        Ok(create_physical_expr(&e, schema, &self.props, &PhysicalPlanningContext::default())?)
    }

    fn leaf(&mut self, op: Op, schema: SchemaRef, label: String) -> PlanNode {
        PlanNode { id: self.id(), op, schema, inputs: Vec::new(), label, watermarks: Vec::new() }
    }

    fn node(&mut self, plan: &LogicalPlan, hint: RankHint) -> PlanResult<PlanNode> {
        let schema = nullable(plan.schema().as_arrow());
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan, schema),
            LogicalPlan::SubqueryAlias(a) => self.node(&a.input, hint),
            LogicalPlan::Projection(p) => self.projection(p, schema, hint),
            LogicalPlan::Filter(f) => self.filter(f, schema),
            LogicalPlan::Aggregate(a) => self.aggregate(a, schema),
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let id = self.id();
                let child = self.node(input, None)?;
                let in_schema = input.schema();
                let group = (0..in_schema.fields().len())
                    .map(|i| self.phys(&Expr::Column(in_schema.columns()[i].clone()), in_schema))
                    .collect::<PlanResult<Vec<_>>>()?;
                let watermarks = child.watermarks.clone();
                Ok(PlanNode {
                    id,
                    op: Op::Aggregate { group, aggs: Vec::new(), window: None },
                    schema,
                    inputs: vec![child],
                    label: "Distinct: state=count per row".into(),
                    watermarks,
                })
            }
            LogicalPlan::Distinct(Distinct::On(_)) => unsupported("DISTINCT ON"),
            LogicalPlan::Join(j) => self.join(j, schema),
            LogicalPlan::Union(u) => {
                let id = self.id();
                let inputs =
                    u.inputs.iter().map(|i| self.node(i, None)).collect::<PlanResult<Vec<_>>>()?;
                // A column has a watermark when it has one in every input.
                let watermarks = inputs
                    .first()
                    .map(|f| f.watermarks.iter().copied().filter(|c| inputs.iter().all(|i| i.watermarks.contains(c))).collect())
                    .unwrap_or_default();
                Ok(PlanNode { id, op: Op::Union, schema, inputs, label: "Union All: state=none".into(), watermarks })
            }
            LogicalPlan::Sort(s) => self.sort(s, 0, s.fetch, schema, hint),
            LogicalPlan::Limit(l) => self.limit(l, schema),
            LogicalPlan::Window(w) => self.window(w, schema, hint),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                unsupported("a query part that reads no table (VALUES or a FROM-less SELECT)")
            }
            other => unsupported(format!("the plan node {}", other.display())),
        }
    }

    fn scan(&mut self, scan: &TableScan, schema: SchemaRef) -> PlanResult<PlanNode> {
        let qualified = scan.table_name.schema().is_some_and(|s| s != crate::engine::provider::PUBLIC_SCHEMA);
        let name = scan.table_name.table();
        if qualified {
            return unsupported(format!("reading {}", scan.table_name));
        }
        if scan.fetch.is_some() {
            return unsupported("LIMIT pushed into a scan");
        }
        if let Some(table) = self.catalog.get(name) {
            if !self.tables.contains(&table.id()) {
                self.tables.push(table.id());
            }
            let cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let (kind, emits) = if table.def.source { ("SourceRead", "append-only") } else { ("TableSource", "retracting") };
            let wm_col = table.def.watermark.as_ref().and_then(|w| table.def.column_index(&w.column));
            let watermarks: Vec<usize> = match (wm_col, &scan.projection) {
                (Some(c), Some(p)) => p.iter().position(|&i| i == c).into_iter().collect(),
                (Some(c), None) => vec![c],
                (None, _) => Vec::new(),
            };
            let emits = if table.def.append_only { "append-only" } else { emits };
            let mut label = format!("{kind}: {}={name}, columns=[{}], emits={emits}", if table.def.source { "source" } else { "table" }, cols.join(", "));
            if let Some(w) = &table.def.watermark {
                label.push_str(&format!(", watermark={} AS {}", w.column, w.expr));
            }
            let mut node = self.leaf(Op::TableSource { table, projection: scan.projection.clone() }, schema, label);
            node.watermarks = watermarks;
            return Ok(node);
        }
        if let Some(mv) = self.catalog.get_mv(name) {
            if !self.mvs.contains(&mv.def.id) {
                self.mvs.push(mv.def.id);
            }
            if scan.projection.is_some() {
                // Sources deliver whole rows; project them here.
                let id = self.id();
                let full = nullable(&mv.schema);
                let src = self.mv_leaf(mv.clone(), full.clone(), name);
                let projection = scan.projection.clone().unwrap_or_default();
                let exprs = projection
                    .iter()
                    .map(|&i| -> PhysExpr {
                        Arc::new(datafusion::physical_expr::expressions::Column::new(full.field(i).name(), i))
                    })
                    .collect();
                // The view's watermarked columns keep their watermarks.
                let derive: Vec<Option<usize>> =
                    projection.iter().map(|&i| mv.watermarks.contains(&i).then_some(i)).collect();
                let watermarks = derive.iter().enumerate().filter(|(_, d)| d.is_some()).map(|(j, _)| j).collect();
                return Ok(PlanNode {
                    id,
                    op: Op::Project { exprs, derive },
                    schema,
                    inputs: vec![src],
                    label: "Project: columns of the view".into(),
                    watermarks,
                });
            }
            return Ok(self.mv_leaf(mv, schema, name));
        }
        unsupported(format!("reading {name} (not a table or materialized view)"))
    }

    /// The source of a view's changes; it carries the view's watermarks.
    fn mv_leaf(&mut self, mv: Arc<MatView>, schema: SchemaRef, name: &str) -> PlanNode {
        let label = format!("MvSource: view={name}, emits={}", if mv.append_only { "append-only" } else { "retracting" });
        let watermarks = mv.watermarks.clone();
        let mut node = self.leaf(Op::MvSource { mv }, schema, label);
        node.watermarks = watermarks;
        node
    }

    fn projection(&mut self, p: &Projection, schema: SchemaRef, hint: RankHint) -> PlanResult<PlanNode> {
        let id = self.id();
        // Pass a row_number bound through when the column is passed on as is.
        let child_hint = hint.and_then(|(name, n)| {
            let pos = p.schema.fields().iter().position(|f| f.name() == &name)?;
            match p.expr.get(pos)?.clone().unalias() {
                Expr::Column(c) => Some((c.name, n)),
                _ => None,
            }
        });
        let child = self.node(&p.input, child_hint)?;
        let exprs = p.expr.iter().map(|e| self.phys(e, p.input.schema())).collect::<PlanResult<Vec<_>>>()?;
        let derive: Vec<Option<usize>> =
            p.expr.iter().map(|e| watermark::monotone_input(e, p.input.schema(), &child.watermarks)).collect();
        let watermarks: Vec<usize> = derive.iter().enumerate().filter(|(_, d)| d.is_some()).map(|(i, _)| i).collect();
        let label = format!(
            "Project: [{}], state=none",
            p.expr.iter().map(|e| e.schema_name().to_string()).collect::<Vec<_>>().join(", ")
        );
        Ok(PlanNode { id, op: Op::Project { exprs, derive }, schema, inputs: vec![child], label, watermarks })
    }

    fn filter(&mut self, f: &Filter, schema: SchemaRef) -> PlanResult<PlanNode> {
        let id = self.id();
        let hint = rank_bound(&f.predicate);
        let child = self.node(&f.input, hint)?;
        let predicate = self.phys(&f.predicate, f.input.schema())?;
        let label = format!("Filter: {}, state=none", f.predicate);
        let watermarks = child.watermarks.clone();
        Ok(PlanNode { id, op: Op::Filter { predicate }, schema, inputs: vec![child], label, watermarks })
    }

    fn aggregate(&mut self, a: &Aggregate, schema: SchemaRef) -> PlanResult<PlanNode> {
        let id = self.id();
        let child = self.node(&a.input, None)?;
        let in_schema = a.input.schema();
        let mut group = Vec::new();
        for g in &a.group_expr {
            if matches!(g, Expr::GroupingSet(_)) {
                return unsupported("GROUPING SETS, CUBE and ROLLUP");
            }
            group.push(self.phys(g, in_schema)?);
        }
        let mut aggs = Vec::new();
        for (i, e) in a.aggr_expr.iter().enumerate() {
            let output_type = a.schema.field(a.group_expr.len() + i).data_type().clone();
            aggs.push(self.agg_spec(e, in_schema, output_type)?);
        }
        // Group columns carrying a watermark; the first is the window.
        let derived: Vec<Option<usize>> =
            a.group_expr.iter().map(|g| watermark::monotone_input(g, in_schema, &child.watermarks)).collect();
        let window_at = derived.iter().position(Option::is_some);
        if self.eowc && window_at.is_none() {
            return unsupported(
                "EMIT ON WINDOW CLOSE without a GROUP BY column that carries a watermark (GROUP BY window_start over TUMBLE or HOP of a source or table with WATERMARK FOR)",
            );
        }
        let keys = a.group_expr.iter().map(|g| g.schema_name().to_string()).collect::<Vec<_>>().join(", ");
        let labels = aggs.iter().map(|s| s.label.clone()).collect::<Vec<_>>().join(", ");
        // Over append-only input MIN/MAX keep only their extreme (see
        // stream::ops::aggregate).
        let multisets = match append_only(&child) {
            true => aggs.iter().any(|s| s.kind == AggKind::CountDistinct),
            false => aggs.iter().any(|s| matches!(s.kind, AggKind::Min | AggKind::Max | AggKind::CountDistinct)),
        };
        let state = match (multisets, append_only(&child)) {
            (true, true) => "accumulators per group + value multisets for count(distinct)",
            (true, false) => "accumulators per group + value multisets for min/max/count(distinct)",
            (false, _) => "accumulators per group",
        };
        let Some(w) = window_at else {
            let label = format!("Aggregate: group=[{keys}], aggs=[{labels}], state={state}, emits=retracting");
            return Ok(PlanNode {
                id,
                op: Op::Aggregate { group, aggs, window: None },
                schema,
                inputs: vec![child],
                label,
                watermarks: Vec::new(),
            });
        };
        let window = WindowAgg { input_col: derived[w].unwrap_or_default(), emit_on_close: self.eowc };
        let emits = if self.eowc {
            "append-only, each window once when the watermark passes it (EMIT ON WINDOW CLOSE)"
        } else {
            "retracting; a window's state is dropped when the watermark passes it"
        };
        let label = format!(
            "Aggregate: group=[{keys}], aggs=[{labels}], window={}, state={state} of open windows, emits={emits}",
            a.group_expr[w].schema_name()
        );
        // The window column goes first in the group key, so that closed
        // windows are a key range of the state.
        let mut order: Vec<usize> = vec![w];
        order.extend((0..group.len()).filter(|&i| i != w));
        order.extend(group.len()..schema.fields().len());
        let group: Vec<PhysExpr> = order.iter().take(group.len()).map(|&i| group[i].clone()).collect();
        let agg_schema = Arc::new(Schema::new(order.iter().map(|&i| schema.field(i).clone()).collect::<Vec<Field>>()));
        let node = PlanNode {
            id,
            op: Op::Aggregate { group, aggs, window: Some(window) },
            schema: agg_schema.clone(),
            inputs: vec![child],
            label,
            watermarks: vec![0],
        };
        if w == 0 {
            return Ok(node);
        }
        // Back to the query's column order.
        let exprs: Vec<PhysExpr> = (0..schema.fields().len())
            .map(|i| -> PhysExpr {
                let from = order.iter().position(|&o| o == i).unwrap_or(i);
                Arc::new(datafusion::physical_expr::expressions::Column::new(agg_schema.field(from).name(), from))
            })
            .collect();
        let derive = (0..schema.fields().len()).map(|i| (i == w).then_some(0)).collect();
        Ok(PlanNode {
            id: self.id(),
            op: Op::Project { exprs, derive },
            schema,
            inputs: vec![node],
            label: "Project: group columns in query order, state=none".into(),
            watermarks: vec![w],
        })
    }

    fn agg_spec(&self, e: &Expr, in_schema: &DFSchema, output_type: DataType) -> PlanResult<AggSpec> {
        let Expr::AggregateFunction(f) = e.clone().unalias() else {
            return unsupported(format!("the aggregate expression {e}"));
        };
        let p = &f.params;
        if p.filter.is_some() {
            return unsupported("FILTER (WHERE ...) on an aggregate");
        }
        if !p.order_by.is_empty() {
            return unsupported("ORDER BY inside an aggregate");
        }
        if p.args.len() != 1 {
            return unsupported(format!("aggregate {} with {} arguments", f.func.name(), p.args.len()));
        }
        let name = f.func.name().to_lowercase();
        let kind = match (name.as_str(), p.distinct) {
            ("count", false) => AggKind::Count,
            ("count", true) => AggKind::CountDistinct,
            ("sum", false) => AggKind::Sum,
            ("avg" | "mean", false) => AggKind::Avg,
            ("min", _) => AggKind::Min,
            ("max", _) => AggKind::Max,
            ("bool_and", _) => AggKind::BoolAnd,
            ("bool_or", _) => AggKind::BoolOr,
            (other, true) => return unsupported(format!("{other}(DISTINCT ...)")),
            (other, false) => return unsupported(format!("the aggregate function {other}")),
        };
        let input_type = datafusion::logical_expr::ExprSchemable::get_type(&p.args[0], in_schema)?;
        if matches!(kind, AggKind::Sum | AggKind::Avg)
            && !(input_type.is_integer() || input_type.is_floating() || matches!(input_type, DataType::Decimal128(..)))
        {
            return unsupported(format!("{name} over {input_type}"));
        }
        let arg = self.phys(&p.args[0], in_schema)?;
        Ok(AggSpec { kind, arg, input_type, output_type, label: e.schema_name().to_string() })
    }

    fn join(&mut self, j: &Join, schema: SchemaRef) -> PlanResult<PlanNode> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti => JoinKind::LeftAnti,
            JoinType::RightSemi => JoinKind::RightSemi,
            JoinType::RightAnti => JoinKind::RightAnti,
            other => return unsupported(format!("{other} join")),
        };
        if j.null_aware {
            return unsupported("NOT IN (subquery)");
        }
        if j.null_equality == NullEquality::NullEqualsNull {
            return unsupported("a join where NULL keys match (INTERSECT, EXCEPT)");
        }
        if j.filter.is_some() && matches!(kind, JoinKind::LeftSemi | JoinKind::RightSemi) {
            return self.unique_semi_join(j, kind, schema);
        }
        if j.filter.is_some() && kind != JoinKind::Inner {
            return unsupported(format!("a non-equality condition in a {:?} join", j.join_type));
        }
        let temporal = reads_proctime(&j.right);
        if reads_proctime(&j.left) {
            return unsupported("a table FOR SYSTEM_TIME AS OF PROCTIME() on the left of a join (put it on the right: stream JOIN table FOR SYSTEM_TIME AS OF PROCTIME())");
        }
        if temporal && !matches!(kind, JoinKind::Inner | JoinKind::Left) {
            return unsupported(format!("a {:?} temporal join (use JOIN or LEFT JOIN)", j.join_type));
        }
        let filter_id = j.filter.as_ref().map(|_| self.id());
        let id = self.id();
        let left = self.node(&j.left, None)?;
        let right = self.node(&j.right, None)?;
        if temporal && !append_only(&left) {
            return unsupported(
                "a temporal join whose left side can update or delete rows (it must be a source, an APPEND ONLY table or an append-only view)",
            );
        }
        let left_keys = j.on.iter().map(|(l, _)| self.phys(l, j.left.schema())).collect::<PlanResult<Vec<_>>>()?;
        let right_keys = j.on.iter().map(|(_, r)| self.phys(r, j.right.schema())).collect::<PlanResult<Vec<_>>>()?;
        let keys = j.on.iter().map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>().join(" AND ");
        // Outer joins have no condition besides their keys here (refused
        // above), so their bounds come from keys alone: a window join,
        // `[0, 0]`, where a key's rows on both sides expire together.
        let bounds = if matches!(kind, JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full) && !temporal {
            interval::time_bounds(j, [&left.watermarks, &right.watermarks])
        } else {
            None
        };
        let label = if let Some(b) = bounds {
            let bound = |v: Option<i64>| v.map_or("unbounded".to_string(), |v| v.to_string());
            format!(
                "Join: type={:?}, on=[{keys}], state=rows of both sides by join key + match counts, rows dropped by watermark ({} - {} in [{}, {}]), emits=retracting",
                j.join_type,
                j.right.schema().field(b.cols[1]).name(),
                j.left.schema().field(b.cols[0]).name(),
                bound(b.lo),
                bound(b.hi)
            )
        } else if temporal {
            format!(
                "TemporalJoin: type={:?}, on=[{keys}], state=the table's rows by join key (stream rows are not kept), emits=append-only",
                j.join_type
            )
        } else {
            format!(
                "Join: type={:?}, on=[{keys}], state=rows of both sides by join key + match counts, emits=retracting",
                j.join_type
            )
        };
        // An interval or window join passes a watermark on each time column
        // whose side is bounded by the other (stream::ops::join::limit) and
        // never NULL-padded (an outer join pads the side it does not
        // preserve); a temporal join emits only when a stream row arrives,
        // so the stream side's watermarks hold for its output (the left
        // columns come first, at the same positions).
        let mut watermarks = if temporal { left.watermarks.clone() } else { Vec::new() };
        if let Some(b) = bounds {
            if b.hi.is_some() && !kind.preserves_right() {
                watermarks.push(b.cols[0]);
            }
            if b.lo.is_some() && !kind.preserves_left() {
                watermarks.push(j.left.schema().fields().len() + b.cols[1]);
            }
        }
        let node = PlanNode {
            id,
            op: Op::Join { kind, left_keys, right_keys, temporal, bounds },
            schema: schema.clone(),
            inputs: vec![left, right],
            label,
            watermarks,
        };
        match (&j.filter, filter_id) {
            (Some(f), Some(fid)) => {
                let predicate = self.phys(f, &j.schema)?;
                let watermarks = node.watermarks.clone();
                Ok(PlanNode {
                    id: fid,
                    op: Op::Filter { predicate },
                    schema,
                    inputs: vec![node],
                    label: format!("Filter: {f} (join condition), state=none"),
                    watermarks,
                })
            }
            _ => Ok(node),
        }
    }

    /// A semi join with a non-equality condition whose other side is unique
    /// on its join keys (DataFusion turns `a JOIN (SELECT k, max(x) ...
    /// GROUP BY k) b ON a.k = b.k AND a.v >= b.m`, reading only `a`'s
    /// columns, into one): each row has at most one match, so it is the
    /// inner join, filtered, projected onto the kept side.
    fn unique_semi_join(&mut self, j: &Join, kind: JoinKind, schema: SchemaRef) -> PlanResult<PlanNode> {
        let (kept_left, other) = match kind {
            JoinKind::LeftSemi => (true, &j.right),
            _ => (false, &j.left),
        };
        let other_schema = other.schema();
        let key_cols: Option<Vec<usize>> = j
            .on
            .iter()
            .map(|(l, r)| match if kept_left { r } else { l } {
                Expr::Column(c) => other_schema.index_of_column(c).ok(),
                _ => None,
            })
            .collect();
        let unique = key_cols.is_some_and(|keys| {
            other_schema.functional_dependencies().iter().any(|d| {
                d.mode == datafusion::common::Dependency::Single
                    && !d.source_indices.is_empty()
                    && d.source_indices.iter().all(|i| keys.contains(i))
            })
        });
        if !unique {
            return unsupported(format!("a non-equality condition in a {:?} join", j.join_type));
        }
        let joined = Arc::new(datafusion::logical_expr::build_join_schema(j.left.schema(), j.right.schema(), &JoinType::Inner)?);
        let inner = Join {
            left: j.left.clone(),
            right: j.right.clone(),
            on: j.on.clone(),
            filter: j.filter.clone(),
            join_type: JoinType::Inner,
            join_constraint: j.join_constraint,
            schema: joined.clone(),
            null_equality: j.null_equality,
            null_aware: false,
        };
        let id = self.id();
        let node = self.join(&inner, nullable(joined.as_arrow()))?;
        let left_len = j.left.schema().fields().len();
        let range = if kept_left { 0..left_len } else { left_len..joined.fields().len() };
        let exprs = range
            .map(|i| {
                let f = joined.field(i);
                Ok(Arc::new(datafusion::physical_expr::expressions::Column::new(f.name(), i)) as PhysExpr)
            })
            .collect::<PlanResult<Vec<_>>>()?;
        let derive = vec![None; exprs.len()];
        Ok(PlanNode {
            id,
            op: Op::Project { exprs, derive },
            schema,
            inputs: vec![node],
            label: format!("Project: the {} side of a semi join whose other side is unique on its keys, state=none", if kept_left { "left" } else { "right" }),
            watermarks: Vec::new(),
        })
    }

    fn limit(&mut self, l: &Limit, schema: SchemaRef) -> PlanResult<PlanNode> {
        use datafusion::logical_expr::{FetchType, SkipType};
        let skip = match l.get_skip_type()? {
            SkipType::Literal(s) => s,
            SkipType::UnsupportedExpr => return unsupported("a non-constant OFFSET"),
        };
        let fetch = match l.get_fetch_type()? {
            FetchType::Literal(f) => f,
            FetchType::UnsupportedExpr => return unsupported("a non-constant LIMIT"),
        };
        match l.input.as_ref() {
            LogicalPlan::Sort(s) => {
                // The sort may carry its own (pushed-down or inner) limit:
                // rows [skip, min(skip + fetch, sort.fetch)).
                let end = match (fetch.map(|f| skip.saturating_add(f)), s.fetch) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let fetch = end.map(|e| e.saturating_sub(skip));
                self.sort(s, skip, fetch, schema, None)
            }
            _ => unsupported("LIMIT or OFFSET without ORDER BY"),
        }
    }

    fn sort(&mut self, s: &Sort, skip: usize, fetch: Option<usize>, schema: SchemaRef, hint: RankHint) -> PlanResult<PlanNode> {
        if fetch.is_none() && skip == 0 {
            // A view is a set: ORDER BY alone has no effect on it.
            return self.node(&s.input, hint);
        }
        let id = self.id();
        let child = self.node(&s.input, None)?;
        let order = s
            .expr
            .iter()
            .map(|e| {
                Ok((self.phys(&e.expr, s.input.schema())?, SortOptions { descending: !e.asc, nulls_first: e.nulls_first }))
            })
            .collect::<PlanResult<Vec<_>>>()?;
        let limit = fetch;
        let label = format!(
            "TopN: order=[{}], offset={skip}, limit={}, state=rows ordered by sort key, emits=retracting",
            s.expr.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
            limit.map_or("all".into(), |l| l.to_string())
        );
        Ok(PlanNode {
            id,
            op: Op::TopN { partition: Vec::new(), order, skip, limit, rank: false, time: None },
            schema,
            inputs: vec![child],
            label,
            watermarks: Vec::new(),
        })
    }

    fn window(&mut self, w: &Window, schema: SchemaRef, hint: RankHint) -> PlanResult<PlanNode> {
        let is_session = |e: &Expr| {
            matches!(e.clone().unalias(), Expr::WindowFunction(f)
                if matches!(&f.fun, WindowFunctionDefinition::WindowUDF(u) if u.name() == session::START || u.name() == session::END))
        };
        if w.window_expr.iter().any(is_session) {
            return self.session(w, schema);
        }
        let [expr] = w.window_expr.as_slice() else {
            return unsupported("several window functions in one query");
        };
        let out_name = w.schema.field(w.schema.fields().len() - 1).name().clone();
        let Expr::WindowFunction(f) = expr.clone().unalias() else {
            return unsupported(format!("the window expression {expr}"));
        };
        let is_row_number = matches!(&f.fun, WindowFunctionDefinition::WindowUDF(u) if u.name() == "row_number");
        if !is_row_number {
            return unsupported(format!("the window function {}", f.fun));
        }
        if f.params.order_by.is_empty() {
            return unsupported("ROW_NUMBER() without ORDER BY");
        }
        let id = self.id();
        let child = self.node(&w.input, None)?;
        let in_schema = w.input.schema();
        let partition =
            f.params.partition_by.iter().map(|e| self.phys(e, in_schema)).collect::<PlanResult<Vec<_>>>()?;
        let order = f
            .params
            .order_by
            .iter()
            .map(|e| Ok((self.phys(&e.expr, in_schema)?, SortOptions { descending: !e.asc, nulls_first: e.nulls_first })))
            .collect::<PlanResult<Vec<_>>>()?;
        let limit = hint.filter(|(name, _)| *name == out_name).map(|(_, n)| n);
        // Per-window top-N: a watermarked timestamp among the partition
        // keys (window_start) closes partitions; the output's copy of the
        // column carries the watermark on (input columns come first).
        let closing = f.params.partition_by.iter().find_map(|e| {
            let Expr::Column(c) = e.clone().unalias() else { return None };
            let i = in_schema.index_of_column(&c).ok()?;
            let is_time = matches!(in_schema.field(i).data_type(), DataType::Timestamp(..));
            (is_time && child.watermarks.contains(&i)).then_some((e, i))
        });
        let mut label = format!(
            "TopN: row_number() partition=[{}], order=[{}], limit={}, state=rows per partition ordered by sort key",
            f.params.partition_by.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
            f.params.order_by.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
            limit.map_or("all".into(), |l| l.to_string())
        );
        if let Some((e, _)) = closing {
            label.push_str(&format!(", partitions dropped by watermark ({e})"));
        }
        let time = closing.map(|(_, i)| i);
        label.push_str(", emits=retracting");
        Ok(PlanNode {
            id,
            op: Op::TopN { partition, order, skip: 0, limit, rank: true, time },
            schema,
            inputs: vec![child],
            label,
            watermarks: time.into_iter().collect(),
        })
    }
}

impl Builder<'_> {
    /// `SESSION(...)`'s window functions ([`session`]) over one input.
    fn session(&mut self, w: &Window, schema: SchemaRef) -> PlanResult<PlanNode> {
        let mut ends = Vec::new();
        let mut shape: Option<(Vec<Expr>, Vec<Expr>)> = None;
        for e in &w.window_expr {
            let Expr::WindowFunction(f) = e.clone().unalias() else {
                return unsupported(format!("the window expression {e} next to SESSION"));
            };
            let WindowFunctionDefinition::WindowUDF(u) = &f.fun else {
                return unsupported(format!("the window function {} next to SESSION", f.fun));
            };
            if u.name() != session::START && u.name() != session::END {
                return unsupported(format!("the window function {} next to SESSION", u.name()));
            }
            ends.push(u.name() == session::END);
            let this = (f.params.args.clone(), f.params.partition_by.clone());
            if shape.as_ref().is_some_and(|s| *s != this) {
                return unsupported("two different SESSION windows over one relation");
            }
            shape = Some(this);
        }
        let Some((args, partition_by)) = shape else {
            return unsupported("an empty window node");
        };
        let [time, gap] = args.as_slice() else {
            return Err(PlanError::Invalid("SESSION's functions take a time and a gap".into()));
        };
        let in_schema = w.input.schema();
        let Ok(DataType::Timestamp(unit, _)) = time.get_type(in_schema) else {
            return Err(PlanError::Invalid(format!("SESSION's time column {time} must be a TIMESTAMP")));
        };
        let gap = match gap {
            Expr::Literal(ScalarValue::Int64(Some(g)), _) if *g > 0 => session::gap_in(unit, *g),
            other => return Err(PlanError::Invalid(format!("SESSION's gap must be a positive constant, not {other}"))),
        };
        let id = self.id();
        let child = self.node(&w.input, None)?;
        let partition = partition_by.iter().map(|e| self.phys(e, in_schema)).collect::<PlanResult<Vec<_>>>()?;
        let time_col = match time {
            Expr::Column(c) => in_schema.index_of_column(c).ok(),
            _ => None,
        };
        let inputs = in_schema.fields().len();
        // Later changes all end at or after the time's watermark, so the
        // session ends carry it; starts (merged sessions) do not.
        let watermarks = match time_col {
            Some(t) if child.watermarks.contains(&t) => {
                ends.iter().enumerate().filter(|(_, e)| **e).map(|(j, _)| inputs + j).collect()
            }
            _ => Vec::new(),
        };
        let prune = append_only(&child) && !watermarks.is_empty();
        let label = format!(
            "Session: partition=[{}], time={time}, gap={gap}, state=rows of open sessions per partition{}, emits=retracting (sessions merge)",
            partition_by.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
            if prune { " (closed sessions dropped by watermark)" } else { "" }
        );
        let time = self.phys(time, in_schema)?;
        Ok(PlanNode {
            id,
            op: Op::Session { partition, time, gap, ends, time_col, prune },
            schema,
            inputs: vec![child],
            label,
            watermarks,
        })
    }
}

/// Whether a join input reads a table `FOR SYSTEM_TIME AS OF PROCTIME()`
/// (the alias [`window::PROCTIME_ALIAS`] marks it), through aliases,
/// projections and filters.
fn reads_proctime(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::SubqueryAlias(a) if a.alias.table() == window::PROCTIME_ALIAS => true,
        LogicalPlan::SubqueryAlias(a) => reads_proctime(&a.input),
        LogicalPlan::Projection(p) => reads_proctime(&p.input),
        LogicalPlan::Filter(f) => reads_proctime(&f.input),
        _ => false,
    }
}

/// Whether a plan has a GROUP BY over a window column.
fn has_window_aggregate(node: &PlanNode) -> bool {
    matches!(node.op, Op::Aggregate { window: Some(_), .. }) || node.inputs.iter().any(has_window_aggregate)
}

/// A bound `col <= N`, `col < N` or `col = 1` among a filter's conjuncts.
fn rank_bound(predicate: &Expr) -> RankHint {
    let mut found = None;
    for c in datafusion::logical_expr::utils::split_conjunction(predicate) {
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = c {
            let (col, op, lit) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(col), Expr::Literal(v, _)) => (col, *op, v),
                (Expr::Literal(v, _), Expr::Column(col)) => (col, op.swap().unwrap_or(*op), v),
                _ => continue,
            };
            let Some(n) = literal_usize(lit) else { continue };
            let bound = match op {
                Operator::LtEq => n,
                Operator::Lt => n.saturating_sub(1),
                Operator::Eq if n == 1 => 1,
                _ => continue,
            };
            found = Some((col.name.clone(), bound));
        }
    }
    found
}


fn literal_usize(v: &ScalarValue) -> Option<usize> {
    match v {
        ScalarValue::Int64(Some(n)) if *n >= 0 => Some(*n as usize),
        ScalarValue::Int32(Some(n)) if *n >= 0 => Some(*n as usize),
        ScalarValue::UInt64(Some(n)) => Some(*n as usize),
        _ => None,
    }
}

impl StreamPlan {
    /// The tree as text, one operator per line (EXPLAIN).
    pub fn explain(&self, name: &str) -> Vec<String> {
        let names = |cols: &mut dyn Iterator<Item = usize>| {
            cols.filter_map(|c| self.schema.fields().get(c).map(|f| f.name().clone())).collect::<Vec<_>>().join(", ")
        };
        let state = match view_key(&self.root, self.schema.fields().len()) {
            Some(key) => format!("one row per key ({})", names(&mut key.into_iter())),
            None => "rows with multiplicity".to_string(),
        };
        let mut lines = vec![format!(
            "Materialize: view={name}, columns=[{}], state={state} (the view's contents)",
            names(&mut (0..self.schema.fields().len()))
        )];
        let duplicates = shared::duplicates(&self.root);
        fn walk(n: &PlanNode, depth: usize, out: &mut Vec<String>, duplicates: &std::collections::HashMap<u32, u32>) {
            if let Some(first) = duplicates.get(&n.id) {
                out.push(format!("{}{} [node {}: shares node {first}'s operators and output]", "  ".repeat(depth), n.label, n.id));
                return;
            }
            out.push(format!("{}{} [node {}]", "  ".repeat(depth), n.label, n.id));
            for i in &n.inputs {
                walk(i, depth + 1, out, duplicates);
            }
        }
        walk(&self.root, 1, &mut lines, &duplicates);
        lines
    }
}
