//! Failpoints for crash tests: `EDDY_FAILPOINTS=name[,name...]` makes the
//! process abort (like a SIGKILL: no shutdown, no flush) the first time it
//! reaches a named point. Compiled into every build; without the
//! variable a check is one atomic load.
//!
//! Points: `after_sink_flush` (a sink handed its epoch's output to the
//! checkpoint), `after_checkpoint` (a checkpoint is durable, before
//! anything is published), `before_kafka_commit` (a sink's transaction
//! holds the epoch's records and progress record), `after_kafka_commit`
//! (committed, the outbox not yet cleared), `during_recovery` (a sink's
//! publisher is recovering: transactions fenced, progress not yet read).
//!
//! Modes (not aborts, checked with [`on`]): `forget_held_rows` (the
//! stream engine ignores the rows a Kafka source's ingest held in memory
//! and reads every logged chunk back from Kafka, as after a restart).

use std::collections::HashSet;
use std::sync::OnceLock;

fn armed() -> &'static HashSet<String> {
    static ARMED: OnceLock<HashSet<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("EDDY_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Aborts the process if failpoint `name` is armed.
pub fn hit(name: &str) {
    if armed().contains(name) {
        eprintln!("eddy: failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Whether mode `name` is armed.
pub fn on(name: &str) -> bool {
    armed().contains(name)
}
