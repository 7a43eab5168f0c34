//! Operators: each a tokio task with one or more input channels and one
//! output. An operator implements [`Operator`]: `process` turns a batch of
//! input changes into output changes, `barrier` ends an epoch (flushing
//! state writes to the checkpoint). [`spawn`] builds the tasks of a plan
//! tree; multi-input operators align barriers across inputs.

pub mod aggregate;
pub mod blackhole;
pub mod delta_sink;
pub mod join;
pub mod join_state;
pub mod map;
pub mod materialize;
pub mod session;
pub mod sink;
pub mod topn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::select_all;
use rocksdb::DB;
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedSender};

use super::state::{CacheBudget, StateTable};
use super::{Ack, Changes, Message, StateWrite, StreamResult, Watermark};
use crate::catalog::Table;
use crate::plan::{Op, PlanNode};
use crate::state::keys;

/// Depth of every edge (in batches): small, so that backpressure reaches
/// the sources quickly and memory stays bounded.
pub const CHANNEL_CAPACITY: usize = 16;

/// What every operator of one view shares.
pub struct OpContext {
    pub db: Arc<DB>,
    pub mv_id: u64,
    pub budget: Arc<CacheBudget>,
    pub acks: UnboundedSender<Ack>,
    /// Set when an operator fails (an expression error on some row): the
    /// view stops changing and reads report the error.
    pub failure: Arc<Mutex<Option<String>>>,
}

impl OpContext {
    pub fn state_table(&self, node: u32) -> StateTable {
        StateTable::new(self.db.clone(), keys::op_state_prefix(self.mv_id, node), self.budget.clone())
    }

    fn fail(&self, message: String) {
        tracing::error!(mv = self.mv_id, "materialized view failed: {message}");
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                *f = Some(message);
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.failure.lock().map(|f| f.is_some()).unwrap_or(true)
    }
}

/// An incremental operator.
pub trait Operator: Send + 'static {
    /// Changes arriving on input `input`; returns output changes.
    fn process(&mut self, input: usize, changes: Changes) -> StreamResult<Vec<Changes>>;

    /// The end of `epoch`: output still held back, and the state written
    /// in this epoch.
    fn barrier(&mut self, _epoch: u64) -> StreamResult<(Vec<Changes>, Vec<StateWrite>)> {
        Ok((Vec::new(), Vec::new()))
    }

    /// A watermark arriving on input `input`; returns watermarks to pass
    /// on at once (stateless operators). By default it stops here.
    fn watermark(&mut self, _input: usize, _wm: &Watermark) -> StreamResult<Vec<Watermark>> {
        Ok(Vec::new())
    }

    /// Output produced while taking a watermark (a window aggregate that
    /// closed windows at once), sent before the watermarks it returned.
    fn take_output(&mut self) -> Vec<Changes> {
        Vec::new()
    }

    /// Watermarks to pass on after a barrier's output (operators that
    /// act on watermarks at the barrier, like a window aggregate).
    fn take_watermarks(&mut self) -> Vec<Watermark> {
        Vec::new()
    }
}

/// Where a source's changes come from.
pub enum SourceInput {
    Table { table: Arc<Table>, projection: Option<Vec<usize>>, tx: Sender<Message> },
    Mv { mv_id: u64, tx: Sender<Message> },
}

/// Spawns the tasks of `node`'s subtree; returns its output channel. The
/// channels the runtime must feed are added to `sources`.
pub fn spawn(node: PlanNode, ctx: &Arc<OpContext>, sources: &mut Vec<SourceInput>) -> StreamResult<Receiver<Message>> {
    let mut shared = Shared { duplicates: crate::plan::shared::duplicates(&node), outputs: HashMap::new() };
    spawn_node(node, ctx, sources, &mut shared)
}

/// The common subplans of one plan ([`crate::plan::shared`]): which nodes
/// repeat an earlier one, and the output lists of the earlier ones.
struct Shared {
    duplicates: HashMap<u32, u32>,
    outputs: HashMap<u32, Arc<Mutex<Vec<Sender<Message>>>>>,
}

fn spawn_node(
    node: PlanNode,
    ctx: &Arc<OpContext>,
    sources: &mut Vec<SourceInput>,
    shared: &mut Shared,
) -> StreamResult<Receiver<Message>> {
    // A repeat takes its own channel from the subtree that runs (spawned
    // already: it comes first in pre-order and cannot contain its repeat).
    if let Some(first) = shared.duplicates.get(&node.id) {
        let list = shared.outputs.get(first).ok_or_else(|| super::StreamError::Corrupt("shared operator".into()))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        list.lock().map_err(|_| super::StreamError::Corrupt("shared operator".into()))?.push(tx);
        return Ok(rx);
    }
    let PlanNode { id, op, schema, inputs, .. } = node;
    let input_schemas: Vec<_> = inputs.iter().map(|i| i.schema.clone()).collect();
    let input_append_only = inputs.first().is_some_and(crate::plan::append_only);
    let input_schema = |i: usize| {
        input_schemas.get(i).cloned().ok_or_else(|| super::StreamError::Corrupt("operator input".into()))
    };
    let mut input_rx = Vec::new();
    for i in inputs {
        input_rx.push(spawn_node(i, ctx, sources, shared)?);
    }
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let operator: Box<dyn Operator> = match op {
        Op::TableSource { table, projection } => {
            sources.push(SourceInput::Table { table, projection, tx });
            return Ok(rx);
        }
        Op::MvSource { mv } => {
            sources.push(SourceInput::Mv { mv_id: mv.def.id, tx });
            return Ok(rx);
        }
        Op::Filter { predicate } => Box::new(map::FilterOp::new(predicate)),
        Op::Project { exprs, derive } => Box::new(map::ProjectOp::new(exprs, schema, derive, input_schema(0)?)),
        Op::Union => Box::new(map::UnionOp::new(schema, input_schemas.len())),
        Op::Aggregate { group, aggs, window } => Box::new(aggregate::AggregateOp::new(
            group,
            aggs,
            schema,
            ctx.state_table(id),
            window.map(|w| (w, input_schemas.first().cloned())).and_then(|(w, s)| s.map(|s| (w, s))),
            input_append_only,
        )?),
        Op::Join { kind, left_keys, right_keys, temporal, bounds } => Box::new(join::JoinOp::new(
            kind,
            left_keys,
            right_keys,
            [input_schema(0)?, input_schema(1)?],
            schema,
            ctx.state_table(id),
            temporal,
            bounds,
        )?),
        Op::TopN { partition, order, skip, limit, rank, time } => Box::new(topn::TopNOp::new(
            partition,
            order,
            skip,
            limit,
            rank,
            input_schema(0)?,
            schema,
            ctx.state_table(id),
            time,
        )?),
        Op::Session { partition, time, gap, ends, time_col, prune } => Box::new(session::SessionOp::new(
            partition,
            time,
            gap,
            ends,
            time_col,
            prune,
            input_schema(0)?,
            schema,
            ctx.state_table(id),
        )?),
    };
    let out = match shared.duplicates.values().any(|first| *first == id) {
        true => {
            let list = Arc::new(Mutex::new(vec![tx]));
            shared.outputs.insert(id, list.clone());
            Out::Many(list)
        }
        false => Out::One(tx),
    };
    tokio::spawn(run(operator, input_rx, out, ctx.clone()));
    Ok(rx)
}

/// Where an operator's output goes.
pub enum Out {
    One(Sender<Message>),
    /// A subtree that several parts of the plan read ([`Shared`]): every
    /// message goes to each of them in turn, so they see the same stream
    /// in step (a consumer waiting at a barrier for another input never
    /// waits for a message the others have not been sent).
    Many(Arc<Mutex<Vec<Sender<Message>>>>),
    /// The materialize operator: every subscribed downstream view, and a
    /// `Done` ack after each barrier.
    Subscribers(Arc<Mutex<Vec<(u64, Sender<Message>)>>>),
}

impl Out {
    async fn send(&self, msg: Message) -> bool {
        match self {
            Out::One(tx) => tx.send(msg).await.is_ok(),
            Out::Many(list) => {
                let targets: Vec<Sender<Message>> = list.lock().map(|l| l.clone()).unwrap_or_default();
                for t in targets {
                    if t.send(msg.clone()).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Out::Subscribers(list) => {
                let targets: Vec<Sender<Message>> =
                    list.lock().map(|l| l.iter().map(|(_, t)| t.clone()).collect()).unwrap_or_default();
                for t in targets {
                    // A dropped subscriber is being removed; ignore it.
                    let _ = t.send(msg.clone()).await;
                }
                true
            }
        }
    }
}

/// Drives one operator until its inputs close.
pub async fn run(mut op: Box<dyn Operator>, inputs: Vec<Receiver<Message>>, out: Out, ctx: Arc<OpContext>) {
    let mut inputs = Aligned::new(inputs);
    while let Some(event) = inputs.next().await {
        match event {
            Event::Data(i, changes) => {
                if ctx.failed() {
                    continue;
                }
                match guard(|| op.process(i, changes)) {
                    Ok(outs) => {
                        for o in outs.into_iter().filter(|o| !o.is_empty()) {
                            if !out.send(Message::Data(o)).await {
                                return;
                            }
                        }
                    }
                    Err(e) => ctx.fail(e.to_string()),
                }
            }
            Event::Watermark(i, wm) => {
                if ctx.failed() {
                    continue;
                }
                match guard(|| op.watermark(i, &wm)) {
                    Ok(wms) => {
                        for o in op.take_output().into_iter().filter(|o| !o.is_empty()) {
                            if !out.send(Message::Data(o)).await {
                                return;
                            }
                        }
                        for w in wms {
                            if !out.send(Message::Watermark(w)).await {
                                return;
                            }
                        }
                    }
                    Err(e) => ctx.fail(e.to_string()),
                }
            }
            Event::Barrier(epoch) => {
                if !ctx.failed() {
                    match guard(|| op.barrier(epoch)) {
                        Ok((outs, writes)) => {
                            for o in outs.into_iter().filter(|o| !o.is_empty()) {
                                if !out.send(Message::Data(o)).await {
                                    return;
                                }
                            }
                            if !writes.is_empty() {
                                let _ = ctx.acks.send(Ack::Writes { epoch, mv_id: ctx.mv_id, writes });
                            }
                            for w in op.take_watermarks() {
                                if !out.send(Message::Watermark(w)).await {
                                    return;
                                }
                            }
                        }
                        Err(e) => ctx.fail(e.to_string()),
                    }
                }
                if !out.send(Message::Barrier(epoch)).await {
                    return;
                }
                if let Out::Subscribers(_) = out {
                    let failure = ctx.failure.lock().ok().and_then(|f| f.clone());
                    let _ = ctx.acks.send(Ack::Done { epoch, mv_id: ctx.mv_id, failure });
                }
            }
        }
    }
}

/// Runs operator code, turning a panic (a bug) into an error that fails
/// only this view instead of stopping its task (which would hold up every
/// checkpoint).
fn guard<T>(f: impl FnOnce() -> StreamResult<T>) -> StreamResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(super::StreamError::Failed("internal error in a view operator".into())))
}

enum Event {
    Data(usize, Changes),
    Watermark(usize, Watermark),
    Barrier(u64),
}

/// Reads several inputs, aligning barriers: once an input delivers the
/// barrier of an epoch it is not read again until every input has.
struct Aligned {
    inputs: Vec<Receiver<Message>>,
    blocked: Vec<bool>,
    epoch: u64,
}

impl Aligned {
    fn new(inputs: Vec<Receiver<Message>>) -> Self {
        let n = inputs.len();
        Self { inputs, blocked: vec![false; n], epoch: 0 }
    }

    /// The next event; `None` once any input has closed (the view is being
    /// dropped or the server stops).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if !self.blocked.is_empty() && self.blocked.iter().all(|b| *b) {
                self.blocked.iter_mut().for_each(|b| *b = false);
                return Some(Event::Barrier(self.epoch));
            }
            let (i, msg) = if self.inputs.len() == 1 {
                (0, self.inputs[0].recv().await)
            } else {
                let blocked = &self.blocked;
                let futures: Vec<_> = self
                    .inputs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| !blocked[*i])
                    .map(|(i, rx)| Box::pin(async move { (i, rx.recv().await) }))
                    .collect();
                select_all(futures).await.0
            };
            match msg? {
                Message::Data(c) => return Some(Event::Data(i, c)),
                Message::Watermark(w) => return Some(Event::Watermark(i, w)),
                Message::Barrier(e) => {
                    self.blocked[i] = true;
                    self.epoch = e;
                }
            }
        }
    }
}
