//! What every ingest thread (Kafka, datagen) shares: a named thread that
//! runs a reader until it is stopped, restarting it with backoff after an
//! error (shown as the source's `last_error`), and the helpers around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::metrics::SourceStats;

/// A source's counters, even if a reader panicked while holding them.
pub fn lock(stats: &Mutex<SourceStats>) -> MutexGuard<'_, SourceStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps for `d`, or less once `flag` is set.
pub fn sleep_unless(flag: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !flag.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}

/// Starts thread `name` running `run` until it returns `Ok` or `stop` is
/// set; an `Err` is logged, recorded in `stats` and retried after a
/// backoff of 0.5 s doubling to 30 s.
pub fn spawn<E: std::fmt::Display>(
    name: String,
    source: String,
    stats: Arc<Mutex<SourceStats>>,
    stop: Arc<AtomicBool>,
    mut run: impl FnMut(&AtomicBool) -> Result<(), E> + Send + 'static,
) {
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut backoff = Duration::from_millis(500);
        while !stop.load(Ordering::SeqCst) {
            match run(&stop) {
                Ok(()) => break,
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(source, "reading stopped: {message}; retrying in {backoff:?}");
                    lock(&stats).last_error = Some(message);
                    sleep_unless(&stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("could not start a source thread: {e}");
    }
}
