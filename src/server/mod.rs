//! `server/`: the process's front door. Opens the store, builds the engine,
//! listens for Postgres clients and shuts down cleanly on SIGTERM/Ctrl-C.
//!
//! Every acknowledged write is already synced when it is acknowledged, so
//! shutting down is: stop accepting, let the storage writer finish what it
//! holds, close RocksDB.

pub mod handler;
pub mod startup;
pub mod text;

use std::sync::Arc;

use pgwire::api::PgWireServerHandlers;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineError};
use crate::state::{StateError, Store};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("could not listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// All handlers of one server, shared by every connection.
pub struct Handlers {
    handler: Arc<handler::Handler>,
    startup: Arc<startup::EddyStartup>,
    cancel: Arc<startup::EddyCancel>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.handler.clone()
    }

    fn error_handler(&self) -> Arc<impl pgwire::api::ErrorHandler> {
        Arc::new(handler::LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let addr = config.listen_addr()?;
    let store = Arc::new(Store::open(&config.data_dir, config.group_commit_max)?);
    let engine = Arc::new(Engine::open(store, config.stream_config()).await?);
    if let Some(dir) = &config.migrations {
        crate::engine::migrate::apply_dir(&engine, dir).await?;
    }
    if config.demo {
        crate::engine::migrate::demo(&engine).await?;
        tracing::info!("demo running: try SELECT * FROM alerts; (docs in sql/examples/fraud/views.sql)");
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr: addr.to_string(), source })?;
    let (startup, cancel) = startup::handlers();
    let handlers = Arc::new(Handlers {
        handler: Arc::new(handler::Handler::new(engine.clone())),
        startup: Arc::new(startup),
        cancel: Arc::new(cancel),
    });
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tracing::info!(
        listen = %addr,
        data_dir = %config.data_dir.display(),
        "eddy {} ready: psql -h {} -p {} -d eddy",
        env!("CARGO_PKG_VERSION"),
        addr.ip(),
        addr.port()
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "connection refused: max_connections reached");
                    drop(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let handlers = handlers.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    drop(permit);
                });
            }
        }
    }
    tracing::info!("shutting down");
    drop(listener);
    // Ingest stops first: the last checkpoint then covers all it wrote;
    // then the sinks publish up to that checkpoint.
    engine.connectors.stop_ingest_all();
    if let Err(e) = engine.stream.shutdown().await {
        tracing::warn!("final checkpoint failed: {e}");
    }
    let last = *engine.stream.committed_epoch().borrow();
    engine.connectors.drain_sinks(last, std::time::Duration::from_secs(30)).await;
    engine.connectors.stop_all();
    drop(handlers);
    drop(engine);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
