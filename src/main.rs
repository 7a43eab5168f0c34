//! The `eddy` command line: `eddy [serve] [--listen ADDR] [--data-dir DIR]
//! [--config FILE] [--checkpoint-interval-ms N] [--state-cache-mb N]`.
//! Everything else lives in the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "eddy", version, about = "A streaming SQL database that speaks the Postgres wire protocol")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on for Postgres clients [default: 127.0.0.1:5433]
    #[arg(long, env = "EDDY_LISTEN")]
    listen: Option<String>,
    /// Data directory [default: ./eddy-data]
    #[arg(long, env = "EDDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, env = "EDDY_CONFIG")]
    config: Option<PathBuf>,
    /// Milliseconds between checkpoints of materialized views [default: 1000]
    #[arg(long, env = "EDDY_CHECKPOINT_INTERVAL_MS")]
    checkpoint_interval_ms: Option<u64>,
    /// Memory for cached operator state, in MiB [default: 256]
    #[arg(long, env = "EDDY_STATE_CACHE_MB")]
    state_cache_mb: Option<usize>,
    /// Folder of *.sql files applied once each, in name order, at start-up
    #[arg(long, env = "EDDY_MIGRATIONS")]
    migrations: Option<PathBuf>,
    /// Start the built-in demo: fraud detection on generated transactions
    #[arg(long, env = "EDDY_DEMO")]
    demo: bool,
}

/// Rust allocations go to mimalloc: operators allocate and free many small
/// keys, rows and Arrow buffers per batch, and glibc's malloc spent about
/// 40% of a stateful query's CPU (Nexmark q5) in allocation, free and
/// fastbin consolidation. RocksDB and librdkafka (C/C++) keep glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` and `mi_option_os_tag` (their places
/// in `mi_option_e`, v3; the crate names no constants for them). The purge
/// delay's default is 1000 ms, the OS tag's 100.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_OS_TAG: libmimalloc_sys::mi_option_t = 18;

/// Freed pages go back to the kernel after 100 ms instead of mimalloc's
/// 1000: an epoch frees its batches in bursts, and the long delay let
/// them pile up (generated GROUP BY: peak RSS 240-270 MiB at 1000 ms, about
/// 200 at 0 ms and 220 at 100 ms); at 0 ms the madvise calls cost filter
/// and Nexmark q0-q2 a quarter of their throughput. `MIMALLOC_PURGE_DELAY`
/// in the environment wins. Left alone if the options are not where this
/// version keeps them (the OS tag's default is the check).
fn set_purge_delay() {
    set_mi_option("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 100);
}

/// Sets mimalloc option `option` to `value` unless `env` is in the
/// environment or the options are not where this version keeps them;
/// returns whether the environment left it to eddy.
fn set_mi_option(env: &str, option: libmimalloc_sys::mi_option_t, value: std::ffi::c_long) -> bool {
    if std::env::var_os(env).is_some() {
        return false;
    }
    // SAFETY: reading and setting an allocator option; no memory is touched.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_OS_TAG) == 100 {
            libmimalloc_sys::mi_option_set(option, value);
        }
    }
    true
}

/// mimalloc's `mi_option_allow_thp` (v3).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// No transparent huge pages for eddy: mimalloc asks for them on its
/// arenas (`MADV_HUGEPAGE`), and then every first touch of a 2 MiB
/// region — again after each purge — zeroes the whole of it in the page
/// fault. That was a quarter of Nexmark q5's CPU (`clear_page_erms`);
/// without them the generated benchmarks' peak memory is 20-40 MiB
/// lower at the same speed (q5 and q7 within their run-to-run spread,
/// `docs/benchmarks.md`). The process flag
/// (`PR_SET_THP_DISABLE`) also covers the arena mimalloc mapped before
/// `main`. `MIMALLOC_ALLOW_THP` in the environment wins.
fn disable_huge_pages() {
    if !set_mi_option("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, 0) {
        return;
    }
    // SAFETY: sets a process flag; called before any other thread exists.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// glibc gives every thread that allocates its own arena and rarely hands
/// freed memory back; with operator state churning through many small
/// allocations that fragments into hundreds of MB of resident memory. Two
/// arenas keep the resident size close to what is in use (RocksDB's and
/// librdkafka's allocations; Rust's go to mimalloc).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    set_purge_delay();
    disable_huge_pages();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // delta-rs logs every snapshot load and scan at INFO, metrics it
        // misses at WARN, and its kernel logs every error it returns (such
        // as "no files in log segment" when eddy looks for a table it is
        // about to create) at ERROR: the errors reach eddy's own logs and
        // system tables where they matter.
        .add_directive("deltalake_core=error".parse().expect("directive"))
        .add_directive("delta_kernel=off".parse().expect("directive"))
        .add_directive("buoyant_kernel=off".parse().expect("directive"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();

    let mut config = eddy::config::Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(ms) = args.checkpoint_interval_ms {
        config.checkpoint_interval_ms = ms;
    }
    if let Some(mb) = args.state_cache_mb {
        config.state_cache_mb = mb;
    }
    if let Some(dir) = args.migrations {
        config.migrations = Some(dir);
    }
    config.demo |= args.demo;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(eddy::server::run(config));
    // A query that is mid-computation cannot be interrupted; do not let it
    // hold up the exit (every acknowledged write is already on disk).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result?;
    Ok(())
}
