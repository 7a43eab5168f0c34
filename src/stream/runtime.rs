//! The stream runtime: one coordinator task that owns every view's
//! operator graph, feeds table changes from the change log into the
//! graphs' sources, and runs checkpoints.
//!
//! **Checkpoint** (every `checkpoint_interval_ms`, or at once when a FLUSH
//! waits): the coordinator has dispatched the log up to position `seq`; it
//! sends barrier `epoch` into every table source, collects the state every
//! operator changed in the epoch and each view's `Done`, and writes all of
//! it, the checkpoint record `(epoch, seq)` and the truncation of the log up
//! to `seq` in one synced write. Views read by other views pass the barrier
//! on, so one checkpoint covers every view consistently.
//!
//! **Recovery**: at start-up every view's graph is rebuilt over its state
//! as of the last checkpoint and the log is replayed from `seq + 1`; the
//! log holds exactly the table changes committed since (it is written in
//! the same atomic write as the table rows), so every view catches up to
//! its tables without recomputing anything.
//!
//! **Creating a view**: after a checkpoint (so the views it may read are
//! durable as of the dispatched position), its tables are switched to
//! logging, a RocksDB snapshot is taken and the view is filled from the
//! snapshot (backfill); its table sources then skip log entries the
//! snapshot already contains (`created_seq`). Its catalog entry is written
//! in the checkpoint that first holds its contents, so a crash never leaves
//! a half-built view.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{BooleanArray, Int64Array, RecordBatch};
use rocksdb::DB;
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::ops::{self, OpContext, Out, SourceInput, materialize::MaterializeOp};
use super::backfill::{Backfill, backfill, project, projected_col};
use super::view_rows::ViewRows;
use super::state::CacheBudget;
use super::watermark::{SourceWatermark, WATERMARK_PREFIX, WatermarkStatus, WatermarkStatuses};
use super::{Ack, Changes, Message, StateWrite, StreamError, StreamResult, Watermark};
use crate::catalog::{Catalog, MvDef, Table};
use crate::plan::StreamPlan;
use crate::state::keys::{self, prefix_end};
use crate::state::log::{GENERATED, HELD, WATERMARK, decode_entry, entry_rows, generated_range, held_ranges, watermark_value};
use crate::state::row::RowDecoder;
use crate::state::{Checkpoint, StateError, Store, WriterHandle};

/// Settings of the stream runtime.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub checkpoint_interval_ms: u64,
    /// Memory for cached operator state, in bytes.
    pub state_cache_bytes: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { checkpoint_interval_ms: 1000, state_cache_bytes: 256 << 20 }
    }
}

/// Rows per batch fed into a graph.
pub(super) const SOURCE_BATCH_ROWS: usize = 16_384;

/// What a chunk of the change log holds for one table, in log order.
enum Ready {
    /// Rows with their weights and log positions.
    Rows(u64, RecordBatch, Vec<i64>, Vec<u64>),
    /// A Kafka source's watermark marker (the column's unit).
    Watermark(u64, i64),
}

/// Log entries read per RocksDB pass, and the bytes they may hold (at
/// least one entry is read): a backlog stays on disk, not in memory.
const LOG_ENTRIES_PER_READ: usize = 1024;
const LOG_BYTES_PER_READ: usize = 16 << 20;
/// Changes dispatched before a checkpoint is forced: when the views lag
/// behind the tables, the backlog is worked off in epochs of this size, so
/// that the epoch's dirty state (which cannot be evicted until its
/// checkpoint) stays bounded.
const MAX_CHANGES_PER_EPOCH: usize = 131_072;
/// Rows of generated sources made by one read of the log, about the rows
/// made before the operators take them (a read may pass it by less than
/// one log entry's range; a quarter of a million rows of 30 bytes; reads
/// of twice that cost a pass-through 20 MB more peak memory and no speed).
const GENERATED_ROWS_PER_READ: usize = 1 << 18;
/// The most generated rows in one epoch while they are worked off (above
/// [`MAX_CHANGES_PER_EPOCH`]). Larger than the limit for logged rows: an
/// epoch costs each stateful operator a write of every group it touched,
/// and generated rows arrive as fast as eddy takes them; bounded, so that
/// operators that hold an epoch's rows (sinks) stay within memory.
const GENERATED_ROWS_PER_EPOCH: usize = 1 << 19;
/// The most generated rows in one epoch when every graph is light
/// (`Graph::light`: GROUP BY views, anything without joins, top-N or
/// sessions into a blackhole): an epoch then costs a write per group
/// touched, not per row, and larger epochs touch each group fewer times, as Spark's
/// micro-batches do. The epoch also ends once the state cache is over its
/// budget (a GROUP BY with a group per row), and the first results still
/// show within a fraction of a second. Each epoch may take twice the rows
/// of the one before (at least this many), up to
/// [`LIGHT_GENERATED_ROWS_PER_EPOCH_MAX`] (0.3-0.7 s of work at 12M-25M
/// rows per second, near Spark's 800 ms micro-batches): the state writes
/// per row fall fourfold (GROUP BY 10k keys: 20M rows per CPU-second
/// instead of 10M), and the first epoch stays small.
const LIGHT_GENERATED_ROWS_PER_EPOCH: usize = 1 << 21;
const LIGHT_GENERATED_ROWS_PER_EPOCH_MAX: usize = 1 << 23;
/// Key prefix of persisted view failures.
const FAILURE_PREFIX: &[u8] = b"m/mvfail/";

type Reply<T> = oneshot::Sender<StreamResult<T>>;

enum Command {
    Attach { def: MvDef, plan: StreamPlan, create: bool, reply: Reply<MvDef> },
    Detach { mv_id: u64, reply: Reply<()> },
    Flush { seq: u64, reply: Reply<()> },
    Start,
    Shutdown { reply: Reply<()> },
}

type FailureSlot = Arc<Mutex<Option<String>>>;

/// The handle the engine holds.
pub struct StreamRuntime {
    cmd: Sender<Command>,
    writer: WriterHandle,
    failures: Arc<Mutex<HashMap<u64, FailureSlot>>>,
    epochs: watch::Receiver<u64>,
    watermarks: WatermarkStatuses,
    budget: Arc<CacheBudget>,
}

impl StreamRuntime {
    /// Starts the coordinator (paused until [`StreamRuntime::start`], so
    /// that every view can be attached before the log is replayed).
    pub fn new(store: &Store, catalog: Arc<Catalog>, config: StreamConfig) -> StreamResult<Self> {
        let checkpoint = store.checkpoint()?;
        let (cmd, cmd_rx) = mpsc::channel(64);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let failures = Arc::new(Mutex::new(HashMap::new()));
        let budget = CacheBudget::new(config.state_cache_bytes);
        budget.committed_epoch.store(checkpoint.epoch, std::sync::atomic::Ordering::SeqCst);
        let (epoch_tx, epochs) = watch::channel(checkpoint.epoch);
        let watermarks = WatermarkStatuses::default();
        let coordinator = Coordinator {
            generators: HashMap::new(),
            watermarks: HashMap::new(),
            watermark_status: watermarks.clone(),
            backfilled_watermarks: Vec::new(),
            epoch_tx,
            db: store.db().clone(),
            writer: store.writer().clone(),
            catalog,
            budget: budget.clone(),
            graphs: BTreeMap::new(),
            acks_tx,
            acks_rx,
            epoch: checkpoint.epoch,
            read_seq: checkpoint.seq,
            checkpoint_seq: checkpoint.seq,
            committed: store.writer().committed_seq(),
            waiters: Vec::new(),
            interval: Duration::from_millis(config.checkpoint_interval_ms.max(10)),
            failures: failures.clone(),
            started: false,
            epoch_changes: 0,
            light_cap: LIGHT_GENERATED_ROWS_PER_EPOCH,
            epoch_logged: 0,
        };
        tokio::spawn(coordinator.run(cmd_rx));
        Ok(Self { cmd, writer: store.writer().clone(), failures, epochs, watermarks, budget })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> StreamResult<T> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(make(reply)).await.map_err(|_| StreamError::Stopped)?;
        rx.await.map_err(|_| StreamError::Stopped)?
    }

    /// Builds a view's graph. With `create`, fills it from the tables and
    /// writes its catalog entry in a checkpoint; returns the definition as
    /// stored (with its `created_seq`).
    pub async fn attach(&self, def: MvDef, plan: StreamPlan, create: bool) -> StreamResult<MvDef> {
        self.call(|reply| Command::Attach { def, plan, create, reply }).await
    }

    /// Stops a view and deletes its contents, state and catalog entry.
    pub async fn detach(&self, mv_id: u64) -> StreamResult<()> {
        self.call(|reply| Command::Detach { mv_id, reply }).await
    }

    /// Resolves once every change committed so far is visible in every
    /// view.
    pub async fn flush(&self) -> StreamResult<()> {
        let seq = *self.writer.committed_seq().borrow();
        self.call(|reply| Command::Flush { seq, reply }).await
    }

    /// Begins replaying the log and checkpointing.
    pub async fn start(&self) -> StreamResult<()> {
        self.cmd.send(Command::Start).await.map_err(|_| StreamError::Stopped)
    }

    /// Completes a last checkpoint (graceful shutdown).
    pub async fn shutdown(&self) -> StreamResult<()> {
        self.call(|reply| Command::Shutdown { reply }).await
    }

    /// The last durable checkpoint's epoch (sinks publish up to it).
    pub fn committed_epoch(&self) -> watch::Receiver<u64> {
        self.epochs.clone()
    }

    /// Every table's watermark and late-row count (for `eddy_catalog.watermarks`).
    pub fn watermark_statuses(&self) -> WatermarkStatuses {
        self.watermarks.clone()
    }

    /// The operators' shared state cache budget (its estimated use).
    pub fn cache_budget(&self) -> Arc<CacheBudget> {
        self.budget.clone()
    }

    /// Why a view stopped changing, if it did.
    pub fn failure(&self, mv_id: u64) -> Option<String> {
        let slots = self.failures.lock().ok()?;
        slots.get(&mv_id)?.lock().ok()?.clone()
    }
}

struct TableInput {
    table: Arc<Table>,
    projection: Option<Vec<usize>>,
    tx: Sender<Message>,
}

struct Graph {
    def: MvDef,
    /// Keeps little per epoch whatever the epoch's size: no join, top-N or
    /// session window (state per row), and a view of groups (not of rows)
    /// or a blackhole sink (Kafka and Delta sinks hold the epoch's rows
    /// until its checkpoint).
    light: bool,
    tables: Vec<u64>,
    table_inputs: Vec<TableInput>,
    upstream: Vec<u64>,
    subscribers: Arc<Mutex<Vec<(u64, Sender<Message>)>>>,
}

struct Coordinator {
    epoch_tx: watch::Sender<u64>,
    db: Arc<DB>,
    writer: WriterHandle,
    catalog: Arc<Catalog>,
    budget: Arc<CacheBudget>,
    graphs: BTreeMap<u64, Graph>,
    acks_tx: UnboundedSender<Ack>,
    acks_rx: UnboundedReceiver<Ack>,
    epoch: u64,
    /// Log position dispatched to the graphs.
    read_seq: u64,
    /// Log position of the last durable checkpoint.
    checkpoint_seq: u64,
    committed: watch::Receiver<u64>,
    waiters: Vec<(u64, Reply<()>)>,
    interval: Duration,
    failures: Arc<Mutex<HashMap<u64, FailureSlot>>>,
    started: bool,
    /// Changes dispatched since the last checkpoint (generated rows
    /// included), and those of them read from the log one by one.
    epoch_changes: usize,
    /// The generated rows an epoch of light graphs may take now.
    light_cap: usize,
    epoch_logged: usize,
    /// Watermarks of the tables views read, by table id.
    watermarks: HashMap<u64, SourceWatermark>,
    watermark_status: WatermarkStatuses,
    /// Generators of the generated sources whose ranges the log holds.
    generators: HashMap<u64, Arc<crate::connector::datagen::Generator>>,
    /// Watermarks a new view's backfill reached (`created_seq`, table,
    /// value): the table's watermark rises to them once the log is read up
    /// to `created_seq`, not before, so that rows the other views have not
    /// been sent yet are judged late as they would have been live.
    backfilled_watermarks: Vec<(u64, u64, i64)>,
}

impl Coordinator {
    async fn run(mut self, mut cmd_rx: Receiver<Command>) {
        let mut next_checkpoint = Instant::now() + self.interval;
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Command::Shutdown { reply } = cmd {
                        let result = self.catch_up_and_checkpoint().await;
                        let _ = reply.send(result);
                        break;
                    }
                    self.handle(cmd).await;
                }
                changed = self.committed.changed(), if self.started => {
                    if changed.is_err() {
                        break;
                    }
                    if let Err(e) = self.read_log().await {
                        tracing::error!("reading the change log failed: {e}");
                    }
                }
                _ = tokio::time::sleep_until(next_checkpoint) => {
                    next_checkpoint = Instant::now() + self.interval;
                    if self.started {
                        if let Err(e) = self.catch_up_and_checkpoint().await {
                            tracing::error!("checkpoint failed: {e}");
                        }
                    }
                    release_skipped_memory();
                }
            }
            if self.started && !self.waiters.is_empty() {
                let result = self.catch_up_and_checkpoint().await;
                if let Err(e) = result {
                    let message = e.to_string();
                    for (_, w) in self.waiters.drain(..) {
                        let _ = w.send(Err(StreamError::Failed(message.clone())));
                    }
                }
            }
        }
        tracing::debug!("stream runtime stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { def, plan, create, reply } => {
                let _ = reply.send(self.attach(def, plan, create).await);
            }
            Command::Detach { mv_id, reply } => {
                let _ = reply.send(self.detach(mv_id).await);
            }
            Command::Flush { seq, reply } => {
                if seq <= self.checkpoint_seq || (self.graphs.is_empty() && self.started) {
                    let _ = reply.send(Ok(()));
                } else {
                    self.waiters.push((seq, reply));
                }
            }
            Command::Start => self.started = true,
            Command::Shutdown { .. } => {}
        }
    }

    /// Dispatches the log and checkpoints if anything happened since the
    /// last checkpoint.
    async fn catch_up_and_checkpoint(&mut self) -> StreamResult<()> {
        self.read_log().await?;
        if self.read_seq > self.checkpoint_seq || !self.waiters.is_empty() {
            self.checkpoint(Vec::new()).await?;
        }
        Ok(())
    }

    /// Feeds committed log entries after `read_seq` to the table sources.
    async fn read_log(&mut self) -> StreamResult<()> {
        let target = *self.committed.borrow();
        let light = self.graphs.values().all(|g| g.light);
        while self.read_seq < target {
            let cap = if light { self.light_cap } else { GENERATED_ROWS_PER_EPOCH };
            let generated = GENERATED_ROWS_PER_READ.min(cap.saturating_sub(self.epoch_changes)).max(1) as u64;
            let logged = MAX_CHANGES_PER_EPOCH.saturating_sub(self.epoch_logged).max(1) as u64;
            // A read stops where a backfilled watermark takes effect.
            let upto = self.backfilled_watermarks.iter().map(|w| w.0).filter(|s| *s > self.read_seq).min().map_or(target, |s| s.min(target));
            let entries = self.read_entries(upto, generated, logged)?;
            let Some(&(last, _)) = entries.last() else {
                self.read_seq = upto;
                self.raise_backfilled_watermarks().await;
                continue;
            };
            self.dispatch(&entries).await?;
            self.read_seq = last;
            self.raise_backfilled_watermarks().await;
            let over_budget = self.budget.over();
            if self.epoch_logged >= MAX_CHANGES_PER_EPOCH
                || self.epoch_changes >= cap
                || (self.epoch_changes >= MAX_CHANGES_PER_EPOCH && over_budget)
            {
                self.checkpoint(Vec::new()).await?;
            }
        }
        Ok(())
    }

    /// Raises tables' watermarks to what backfills reached once the log
    /// is read up to the backfills' `created_seq`, and sends them to every
    /// view reading the table.
    ///
    /// Not persisted: after a crash before the log reaches `created_seq`
    /// the older views follow the source's own watermark, which for a
    /// generated source (rows in order) is the same or close behind.
    async fn raise_backfilled_watermarks(&mut self) {
        let read_seq = self.read_seq;
        let due: Vec<(u64, u64, i64)> = self.backfilled_watermarks.iter().filter(|w| w.0 <= read_seq).copied().collect();
        self.backfilled_watermarks.retain(|w| w.0 > read_seq);
        for (_, table_id, value) in due {
            let advanced = match self.watermarks.get_mut(&table_id).map(|w| w.advance_to(value)) {
                Some(Ok(advanced)) => advanced,
                Some(Err(e)) => {
                    tracing::warn!(table_id, "raising a watermark to what a backfill reached: {e}");
                    None
                }
                None => None,
            };
            if let Some(value) = advanced {
                self.send_watermark(table_id, &value, None).await;
            }
        }
    }

    /// Reads log entries after `read_seq` up to `target`: at most
    /// [`LOG_ENTRIES_PER_READ`] entries of [`LOG_BYTES_PER_READ`] bytes,
    /// generated ranges of at most `generated` rows (a range entry is a few
    /// bytes but stands for thousands of rows: without this bound one read
    /// would make a whole bounded source's rows in one epoch) and at most
    /// `logged` row changes (the rest of the epoch's
    /// [`MAX_CHANGES_PER_EPOCH`]: 16 MB of narrow rows are over half a
    /// million changes, and an epoch's dirty state and checkpoint write
    /// grow with them). At least one entry is read.
    fn read_entries(&self, target: u64, generated: u64, logged: u64) -> StreamResult<Vec<(u64, Vec<u8>)>> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(keys::log_key(target + 1));
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(keys::log_key(self.read_seq + 1));
        let mut out = Vec::new();
        let (mut bytes, mut rows, mut changes) = (0usize, 0u64, 0u64);
        while it.valid()
            && out.len() < LOG_ENTRIES_PER_READ
            && (out.is_empty() || (bytes < LOG_BYTES_PER_READ && rows < generated && changes < logged))
        {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if let Some(seq) = keys::log_seq(k) {
                bytes += v.len();
                let (g, l) = entry_rows(v);
                rows += g;
                changes += l;
                out.push((seq, v.to_vec()));
            }
            it.next();
        }
        it.status().map_err(StateError::from)?;
        Ok(out)
    }

    async fn dispatch(&mut self, entries: &[(u64, Vec<u8>)]) -> StreamResult<()> {
        let mut taken = Vec::new();
        let result = self.dispatch_taking(entries, &mut taken).await;
        if result.is_err() {
            // Held rows go back for the retry (instead of being read from
            // Kafka again).
            for (seq, table_id, batch) in taken {
                self.writer.held().insert(seq, vec![(table_id, batch)]);
            }
        }
        result
    }

    /// [`Coordinator::dispatch`], listing the held batches it takes in
    /// `taken` until everything is sent.
    async fn dispatch_taking(&mut self, entries: &[(u64, Vec<u8>)], taken: &mut Vec<(u64, u64, RecordBatch)>) -> StreamResult<()> {
        // Decode the whole chunk first: an entry that cannot be decoded
        // must not leave part of the chunk delivered (it would be delivered
        // again when the chunk is retried).
        let subscribed: std::collections::HashSet<u64> =
            self.graphs.values().flat_map(|g| g.table_inputs.iter().map(|t| t.table.id())).collect();
        let mut buffers: HashMap<u64, (RowDecoder, Vec<i64>, Vec<u64>)> = HashMap::new();
        let mut ready: Vec<Ready> = Vec::new();
        for (seq, entry) in entries {
            for change in decode_entry(entry) {
                let change = change?;
                // A Kafka source's chunk: its rows are held in memory (or
                // read from Kafka again); taken even when no view reads
                // the source any more.
                let held = if change.weight == i64::from(HELD) {
                    let batch = self.writer.held().take(*seq, change.table_id).filter(|_| !crate::failpoint::on("forget_held_rows"));
                    if !subscribed.contains(&change.table_id) {
                        continue;
                    }
                    if let Some(b) = &batch {
                        taken.push((*seq, change.table_id, b.clone()));
                    }
                    Some(match batch {
                        Some(b) => b,
                        None => self.refetch(change.table_id, change.row).await?,
                    })
                } else {
                    None
                };
                if !subscribed.contains(&change.table_id) {
                    continue;
                }
                if !buffers.contains_key(&change.table_id) {
                    let Some(table) = self.table_by_id(change.table_id) else { continue };
                    buffers.insert(
                        change.table_id,
                        (RowDecoder::new(table.schema.clone(), None, SOURCE_BATCH_ROWS)?, Vec::new(), Vec::new()),
                    );
                }
                let Some(buf) = buffers.get_mut(&change.table_id) else { continue };
                let special = change.weight == i64::from(WATERMARK) || change.weight == i64::from(GENERATED) || held.is_some();
                if special && !buf.1.is_empty() {
                    // Rows of the table buffered so far go first.
                    ready.push(Ready::Rows(change.table_id, buf.0.flush()?, std::mem::take(&mut buf.1), std::mem::take(&mut buf.2)));
                }
                if let Some(batch) = held {
                    let rows = batch.num_rows();
                    self.epoch_changes += rows;
                    self.epoch_logged += rows;
                    if rows > 0 {
                        ready.push(Ready::Rows(change.table_id, batch, vec![1; rows], vec![*seq; rows]));
                    }
                    continue;
                }
                if change.weight == i64::from(WATERMARK) {
                    ready.push(Ready::Watermark(change.table_id, watermark_value(change.row)?));
                    continue;
                }
                if change.weight == i64::from(GENERATED) {
                    let (from, n) = generated_range(change.row)?;
                    // In batches of the ingest's chunk size (a range may
                    // name many chunks' rows).
                    let chunk = crate::connector::datagen::CHUNK_ROWS as u64;
                    let end = from + u64::from(n);
                    for start in (from..end).step_by(chunk as usize) {
                        let batch = self.generate(change.table_id, start, (end - start).min(chunk) as usize)?;
                        let rows = batch.num_rows();
                        self.epoch_changes += rows;
                        ready.push(Ready::Rows(change.table_id, batch, vec![1; rows], vec![*seq; rows]));
                    }
                    continue;
                }
                self.epoch_changes += 1;
                self.epoch_logged += 1;
                buf.0.push(change.row)?;
                buf.1.push(change.weight);
                buf.2.push(*seq);
                if buf.1.len() >= SOURCE_BATCH_ROWS {
                    let batch = buf.0.flush()?;
                    ready.push(Ready::Rows(change.table_id, batch, std::mem::take(&mut buf.1), std::mem::take(&mut buf.2)));
                }
            }
        }
        for (table_id, (mut decoder, weights, seqs)) in buffers {
            if !weights.is_empty() {
                ready.push(Ready::Rows(table_id, decoder.flush()?, weights, seqs));
            }
        }
        // Batches of one table stay in log order; tables are independent.
        for item in ready {
            match item {
                Ready::Rows(table_id, batch, weights, seqs) => self.send_table(table_id, batch, weights, seqs).await?,
                Ready::Watermark(table_id, value) => {
                    let advanced = match self.watermarks.get_mut(&table_id) {
                        Some(wm) => wm.advance_to(value)?,
                        None => None,
                    };
                    if let Some(value) = advanced {
                        self.send_watermark(table_id, &value, None).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows of a Kafka source's logged chunk (`payload`: its offsets)
    /// that are no longer held in memory (logged before a restart): read
    /// from Kafka again by the source's registered reader.
    async fn refetch(&self, table_id: u64, payload: &[u8]) -> StreamResult<RecordBatch> {
        let (rows, ranges) = held_ranges(payload)?;
        let name = self.table_by_id(table_id).map(|t| t.name().to_string()).unwrap_or_else(|| table_id.to_string());
        let read = self
            .writer
            .held()
            .refetch(table_id)
            .ok_or_else(|| StreamError::Failed(format!("source {name}: no reader to read its logged messages again")))?;
        let batch = tokio::task::spawn_blocking(move || read(&ranges))
            .await
            .map_err(|e| StreamError::Failed(e.to_string()))?
            .map_err(|e| StreamError::Failed(format!("source {name}: reading logged messages again: {e}")))?;
        if batch.num_rows() != rows as usize {
            tracing::warn!(
                source = name,
                "{rows} rows were logged but {} were read again from Kafka (messages deleted by the topic's retention?)",
                batch.num_rows()
            );
        }
        Ok(batch)
    }

    /// Rows `[from, from + n)` of a generated source, made again.
    fn generate(&mut self, table_id: u64, from: u64, n: usize) -> StreamResult<RecordBatch> {
        let fail = |e: crate::connector::ConnectorError| StreamError::Failed(format!("generating rows: {e}"));
        let generator = match self.generators.get(&table_id) {
            Some(g) => g.clone(),
            None => {
                let table = self.table_by_id(table_id).ok_or_else(|| StreamError::Corrupt("generated source".into()))?;
                let g = Arc::new(crate::connector::datagen::Generator::for_table(&table).map_err(fail)?);
                self.generators.insert(table_id, g.clone());
                g
            }
        };
        generator.generate(from, n).map_err(fail)
    }

    fn table_by_id(&self, id: u64) -> Option<Arc<Table>> {
        self.graphs
            .values()
            .flat_map(|g| g.table_inputs.iter())
            .find(|t| t.table.id() == id)
            .map(|t| t.table.clone())
    }

    async fn send_table(&mut self, table_id: u64, batch: RecordBatch, weights: Vec<i64>, seqs: Vec<u64>) -> StreamResult<()> {
        let ordered = self.table_by_id(table_id).is_some_and(|t| t.def.connector.is_some());
        let (batch, weights, seqs, advanced) = match self.watermarks.get_mut(&table_id) {
            None => (batch, weights, seqs, None),
            Some(wm) => match wm.apply(&batch, (!ordered).then_some(seqs.as_slice()))? {
                (None, advanced) => (batch, weights, seqs, advanced),
                (Some(mask), advanced) => {
                    let kept = datafusion::arrow::compute::filter_record_batch(&batch, &mask)?;
                    let keep = |i: usize| mask.value(i);
                    let weights = weights.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, w)| w).collect();
                    let seqs = seqs.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, s)| s).collect();
                    (kept, weights, seqs, advanced)
                }
            },
        };
        self.send_rows(table_id, batch, weights, seqs).await?;
        if let Some(value) = advanced {
            self.send_watermark(table_id, &value, None).await;
        }
        Ok(())
    }

    /// Sends a table's watermark to the views reading it (or to one view).
    async fn send_watermark(&self, table_id: u64, value: &datafusion::common::ScalarValue, only: Option<u64>) {
        let Some(col) = self.watermarks.get(&table_id).map(|w| w.col()) else { return };
        for (id, g) in &self.graphs {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            for input in g.table_inputs.iter().filter(|t| t.table.id() == table_id) {
                if let Some(col) = projected_col(input.projection.as_deref(), col) {
                    let _ = input.tx.send(Message::Watermark(Watermark { col, value: value.clone() })).await;
                }
            }
        }
    }

    /// Starts tracking a table's watermark (from its checkpointed value).
    fn track_watermark(&mut self, table: &Table) -> StreamResult<()> {
        if self.watermarks.contains_key(&table.id()) || table.def.watermark.is_none() {
            return Ok(());
        }
        let stored = self
            .db
            .get(keys::meta_key(WATERMARK_PREFIX, table.id()))
            .map_err(StateError::from)?
            .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes));
        if let Some(wm) = SourceWatermark::new(table, stored)? {
            if let Ok(mut status) = self.watermark_status.lock() {
                status.insert(
                    table.id(),
                    WatermarkStatus {
                        table: table.name().to_string(),
                        column: table.def.watermark.as_ref().map(|w| w.column.clone()).unwrap_or_default(),
                        watermark: wm.micros(),
                        late_rows: 0,
                    },
                );
            }
            self.watermarks.insert(table.id(), wm);
        }
        Ok(())
    }

    async fn send_rows(&self, table_id: u64, batch: RecordBatch, weights: Vec<i64>, seqs: Vec<u64>) -> StreamResult<()> {
        let weights = Int64Array::from(weights);
        for g in self.graphs.values() {
            for input in g.table_inputs.iter().filter(|t| t.table.id() == table_id) {
                let changes = Changes::new(project(&batch, input.projection.as_deref())?, weights.clone());
                let changes = if seqs.first().is_some_and(|s| *s <= g.def.created_seq) {
                    let mask: BooleanArray = seqs.iter().map(|s| Some(*s > g.def.created_seq)).collect();
                    changes.filter(&mask)?
                } else {
                    changes
                };
                if !changes.is_empty() {
                    // A closed input means the view is being dropped.
                    let _ = input.tx.send(Message::Data(changes)).await;
                }
            }
        }
        Ok(())
    }

    async fn checkpoint(&mut self, extra: Vec<StateWrite>) -> StreamResult<()> {
        let epoch = self.epoch + 1;
        for g in self.graphs.values() {
            for input in &g.table_inputs {
                let _ = input.tx.send(Message::Barrier(epoch)).await;
            }
        }
        let mut writes = extra;
        let mut pending: std::collections::HashSet<u64> = self.graphs.keys().copied().collect();
        let mut failed: Vec<u64> = Vec::new();
        while !pending.is_empty() {
            let Some(ack) = self.acks_rx.recv().await else { return Err(StreamError::Stopped) };
            match ack {
                Ack::Writes { epoch: e, mv_id, writes: w } if e == epoch && self.graphs.contains_key(&mv_id) => {
                    writes.extend(w)
                }
                Ack::Done { epoch: e, mv_id, failure } if e == epoch => {
                    if let Some(f) = failure {
                        writes.push((keys::meta_key(FAILURE_PREFIX, mv_id), Some(f.into_bytes())));
                        failed.push(mv_id);
                    }
                    pending.remove(&mv_id);
                }
                _ => {} // from a dropped view or an abandoned epoch
            }
        }
        // A view reading a failed view would go on with stale input: fail it too.
        for mv_id in failed {
            self.fail_dependents(mv_id, &mut writes);
        }
        for (id, wm) in &mut self.watermarks {
            if wm.dirty {
                if let Some(v) = wm.encoded() {
                    writes.push((keys::meta_key(WATERMARK_PREFIX, *id), Some(v)));
                }
                wm.dirty = false;
            }
        }
        if let Ok(mut status) = self.watermark_status.lock() {
            for (id, wm) in &self.watermarks {
                if let Some(s) = status.get_mut(id) {
                    s.watermark = wm.micros();
                    s.late_rows = wm.late_rows;
                }
            }
        }
        let seq = self.read_seq;
        let record = Checkpoint { epoch, seq }.encode();
        let had_writes = !writes.is_empty();
        let writes = Arc::new(writes);
        let mut attempt = 0;
        loop {
            let batch = writes.clone();
            let record = record.clone();
            let result = self
                .writer
                .write(false, move |txn| {
                    txn.put_direct_all(batch);
                    txn.put(keys::META_CHECKPOINT.to_vec(), record);
                    txn.delete_range(keys::log_key(0), keys::log_key(seq + 1));
                    Ok(0)
                })
                .await;
            match result {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!("checkpoint {epoch} could not be written ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    // The operators have already moved past this epoch: their
                    // in-memory state no longer matches what is on disk. Stop
                    // every view; a restart recovers them from the last
                    // checkpoint and the log.
                    let message = format!("checkpoint {epoch} could not be written: {e}; restart eddy to recover the view");
                    tracing::error!("{message}");
                    if let Ok(slots) = self.failures.lock() {
                        for slot in slots.values() {
                            if let Ok(mut f) = slot.lock() {
                                f.get_or_insert_with(|| message.clone());
                            }
                        }
                    }
                    self.epoch = epoch;
                    return Err(e.into());
                }
            }
        }
        self.epoch = epoch;
        self.checkpoint_seq = seq;
        // The next light epoch may take twice this one's rows (see
        // LIGHT_GENERATED_ROWS_PER_EPOCH): a backlog grows epochs, a small
        // epoch brings the cap back to its floor.
        self.light_cap = self.epoch_changes.saturating_mul(2).clamp(LIGHT_GENERATED_ROWS_PER_EPOCH, LIGHT_GENERATED_ROWS_PER_EPOCH_MAX);
        self.epoch_changes = 0;
        self.epoch_logged = 0;
        release_free_memory();
        self.budget.committed_epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        if had_writes {
            crate::failpoint::hit("after_checkpoint");
        }
        self.epoch_tx.send_replace(epoch);
        let (done, waiting): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|(s, _)| *s <= seq);
        self.waiters = waiting;
        for (_, w) in done {
            let _ = w.send(Ok(()));
        }
        Ok(())
    }

    async fn attach(&mut self, mut def: MvDef, plan: StreamPlan, create: bool) -> StreamResult<MvDef> {
        if create && self.started {
            // Views this one reads must be durable as of read_seq.
            self.catch_up_and_checkpoint().await?;
        }
        let tables = plan.tables.clone();
        {
            // From here on every change to these tables is logged (at
            // start-up: before any client can write).
            let logged = tables.clone();
            self.writer
                .write(false, move |txn| {
                    for t in logged {
                        txn.set_logged(t, true);
                    }
                    Ok(0)
                })
                .await?;
        }
        let slot: FailureSlot = Arc::new(Mutex::new(
            self.db
                .get(keys::meta_key(FAILURE_PREFIX, def.id))
                .map_err(StateError::from)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        ));
        if let Ok(mut f) = self.failures.lock() {
            f.insert(def.id, slot.clone());
        }
        let ctx = Arc::new(OpContext {
            db: self.db.clone(),
            mv_id: def.id,
            budget: self.budget.clone(),
            acks: self.acks_tx.clone(),
            failure: slot,
        });
        let schema = plan.schema.clone();
        let distinct = crate::plan::distinct_rows(&plan.root);
        let unique = crate::plan::view_key(&plan.root, plan.schema.fields().len());
        // A view's root holds the epoch's distinct changed rows until the
        // barrier: light only when those are groups, not rows.
        let light = crate::plan::per_epoch_state_bounded(&plan.root)
            && match &def.sink {
                None => distinct,
                Some(s) => s.is_blackhole(),
            };
        let mut sources = Vec::new();
        let root_rx = ops::spawn(plan.root, &ctx, &mut sources)?;
        let subscribers = Arc::new(Mutex::new(Vec::new()));
        let terminal: Box<dyn ops::Operator> = match &def.sink {
            Some(sink) if sink.is_delta() => {
                let keys: Vec<usize> = crate::connector::spec::column_list(&sink.options, "primary_key")
                    .iter()
                    .map(|k| schema.index_of(k).map_err(|_| StreamError::Failed(format!("primary_key column \"{k}\" is not in the sink's query"))))
                    .collect::<StreamResult<_>>()?;
                Box::new(ops::delta_sink::DeltaSinkOp::new(def.id, schema, keys)?)
            }
            Some(sink) if sink.is_blackhole() => Box::new(ops::blackhole::BlackholeOp::new(sink.counter.clone())),
            Some(sink) => Box::new(ops::sink::SinkOp::new(def.id, sink, schema)?),
            None => {
                if create {
                    def.row_key = unique;
                }
                let layout = ViewRows::new(def.id, schema.clone(), def.row_key.as_deref())?;
                Box::new(MaterializeOp::new(self.db.clone(), layout, distinct)?)
            }
        };
        tokio::spawn(ops::run(terminal, vec![root_rx], Out::Subscribers(subscribers.clone()), ctx));

        let mut table_inputs = Vec::new();
        let mut upstream = Vec::new();
        let mut backfill_inputs = Vec::new();
        for s in sources {
            match s {
                SourceInput::Table { table, projection, tx } => {
                    if create {
                        backfill_inputs.push(Backfill::Table {
                            table: table.clone(),
                            projection: projection.clone(),
                            tx: tx.clone(),
                        });
                    }
                    table_inputs.push(TableInput { table, projection, tx });
                }
                SourceInput::Mv { mv_id, tx } => {
                    let Some(up) = self.graphs.get(&mv_id) else {
                        self.remove_graph_links(def.id, &upstream);
                        return Err(StreamError::Failed(format!("materialized view {mv_id} is not running")));
                    };
                    if create {
                        let layout = self
                            .catalog
                            .list_mvs()
                            .iter()
                            .find(|m| m.def.id == mv_id)
                            .ok_or_else(|| StreamError::Failed(format!("materialized view {mv_id} is not in the catalog")))
                            .and_then(|m| ViewRows::new(mv_id, m.schema.clone(), m.def.row_key.as_deref()));
                        let layout = match layout {
                            Ok(l) => l,
                            Err(e) => {
                                self.remove_graph_links(def.id, &upstream);
                                return Err(e);
                            }
                        };
                        backfill_inputs.push(Backfill::Mv { layout, tx: tx.clone() });
                    }
                    if let Ok(mut subs) = up.subscribers.lock() {
                        subs.push((def.id, tx));
                    }
                    upstream.push(mv_id);
                }
            }
        }
        let id = def.id;
        let watermarked: Vec<Arc<Table>> = table_inputs
            .iter()
            .filter(|t: &&TableInput| t.table.def.watermark.is_some())
            .map(|t| t.table.clone())
            .collect();
        for t in &watermarked {
            if let Err(e) = self.track_watermark(t) {
                self.remove_graph_links(id, &upstream);
                return Err(e);
            }
        }
        let mut new_view_watermarks: Vec<(u64, i64)> = Vec::new();
        if create {
            let db = self.db.clone();
            let read_seq = self.read_seq;
            let filled = tokio::task::spawn_blocking(move || backfill(&db, read_seq, backfill_inputs))
                .await
                .unwrap_or_else(|e| Err(StreamError::Failed(format!("backfill stopped: {e}"))));
            match filled {
                Ok(filled) => {
                    def.created_seq = filled.created_seq;
                    // The view has seen its generated sources' watermarks
                    // reach these values (see `backfill`): the new view gets
                    // them now, and the source's watermark rises to them for
                    // every view once the log is read up to `created_seq`.
                    self.backfilled_watermarks.extend(filled.watermarks.iter().map(|(t, v)| (filled.created_seq, *t, *v)));
                    new_view_watermarks = filled.watermarks;
                }
                Err(e) => {
                    self.remove_graph_links(id, &upstream);
                    return Err(e);
                }
            }
        }
        self.graphs.insert(id, Graph { def: def.clone(), light, tables, table_inputs, upstream: upstream.clone(), subscribers });
        // The new view starts from its tables' current watermarks, or
        // those its backfill reached if higher.
        for t in &watermarked {
            let Some(wm) = self.watermarks.get(&t.id()) else { continue };
            let backfilled = new_view_watermarks.iter().find(|(table, _)| *table == t.id()).map(|(_, v)| *v);
            let value = match (backfilled, wm.current_i64()) {
                (Some(b), current) if current.is_none_or(|c| b > c) => wm.value_of(b).ok().or_else(|| wm.current.clone()),
                _ => wm.current.clone(),
            };
            if let Some(value) = value {
                self.send_watermark(t.id(), &value, Some(id)).await;
            }
        }
        self.raise_backfilled_watermarks().await;
        if create {
            let entry = serde_json::to_vec(&def).map_err(|e| StreamError::Corrupt(e.to_string()))?;
            let prefix = if def.sink.is_some() { keys::META_SINK_PREFIX } else { keys::META_MV_PREFIX };
            let catalog_write = (keys::meta_key(prefix, id), Some(entry));
            if let Err(e) = self.checkpoint(vec![catalog_write]).await {
                self.graphs.remove(&id);
                self.remove_graph_links(id, &upstream);
                return Err(e);
            }
        }
        Ok(def)
    }

    /// Marks every view that reads `mv_id` (directly or not) as failed.
    fn fail_dependents(&self, mv_id: u64, writes: &mut Vec<StateWrite>) {
        let dependents: Vec<u64> =
            self.graphs.iter().filter(|(_, g)| g.upstream.contains(&mv_id)).map(|(id, _)| *id).collect();
        for d in dependents {
            let message = format!("materialized view {mv_id}, which it reads, stopped updating");
            if let Some(slot) = self.failures.lock().ok().and_then(|f| f.get(&d).cloned()) {
                if let Ok(mut f) = slot.lock() {
                    if f.is_none() {
                        *f = Some(message.clone());
                        writes.push((keys::meta_key(FAILURE_PREFIX, d), Some(message.into_bytes())));
                    }
                }
            }
            self.fail_dependents(d, writes);
        }
    }

    fn remove_graph_links(&self, id: u64, upstream: &[u64]) {
        for up in upstream {
            if let Some(g) = self.graphs.get(up) {
                if let Ok(mut subs) = g.subscribers.lock() {
                    subs.retain(|(s, _)| *s != id);
                }
            }
        }
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&id);
        }
    }

    async fn detach(&mut self, mv_id: u64) -> StreamResult<()> {
        let graph = self.graphs.remove(&mv_id);
        let upstream = graph.as_ref().map(|g| g.upstream.clone()).unwrap_or_default();
        self.remove_graph_links(mv_id, &upstream);
        let still_needed: std::collections::HashSet<u64> =
            self.graphs.values().flat_map(|g| g.tables.iter().copied()).collect();
        let unlog: Vec<u64> =
            graph.map(|g| g.tables.into_iter().filter(|t| !still_needed.contains(t)).collect()).unwrap_or_default();
        // A table no view reads has no live watermark (its last value stays
        // stored for the next view).
        for t in &unlog {
            self.watermarks.remove(t);
            if let Ok(mut status) = self.watermark_status.lock() {
                status.remove(t);
            }
        }
        self.writer
            .write(true, move |txn| {
                txn.delete(keys::meta_key(keys::META_MV_PREFIX, mv_id));
                txn.delete(keys::meta_key(keys::META_SINK_PREFIX, mv_id));
                txn.delete(keys::meta_key(FAILURE_PREFIX, mv_id));
                let rows = keys::mv_prefix(mv_id);
                txn.delete_range(rows.clone(), prefix_end(&rows));
                let state = keys::mv_state_prefix(mv_id);
                txn.delete_range(state.clone(), prefix_end(&state));
                for t in unlog {
                    txn.set_logged(t, false);
                }
                Ok(0)
            })
            .await?;
        Ok(())
    }
}

/// Hands memory freed by the epoch (its state writes, consolidated rows)
/// back to the operating system: glibc keeps freed heap otherwise, and a
/// large epoch would leave the process's resident size at its peak. At
/// most every [`TRIM_EVERY`]: while a backlog is worked off, checkpoints
/// come every few tens of milliseconds, and trimming at each of them made
/// the next epoch fault every page back in (a fifth of a generated
/// pass-through's CPU went to the kernel).
fn release_free_memory() {
    use std::sync::atomic::Ordering;
    let now_ms = trim_clock_ms();
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < TRIM_EVERY.as_millis() as u64 {
        TRIM_SKIPPED.store(true, Ordering::Relaxed);
        return;
    }
    LAST_TRIM_MS.store(now_ms.max(1), Ordering::Relaxed);
    TRIM_SKIPPED.store(false, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The trim the last checkpoints of a burst skipped, once it is due (on
/// the coordinator's timer): an idle server does not stay at its peak.
fn release_skipped_memory() {
    if TRIM_SKIPPED.load(std::sync::atomic::Ordering::Relaxed) {
        release_free_memory();
    }
}

/// Milliseconds since the first trim check (the process's trim clock).
fn trim_clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

static LAST_TRIM_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static TRIM_SKIPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The shortest time between two [`release_free_memory`] trims.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
