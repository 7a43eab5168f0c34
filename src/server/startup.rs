//! Connection start-up and cancellation.
//!
//! Trust authentication (any user name); the only database is `eddy`
//! (another name is refused with FATAL 3D000, as Postgres does). At
//! start-up the client is sent the ParameterStatus values Postgres sends,
//! with a `server_version` clients accept.
//!
//! CancelRequest: each connection owns a [`QueryCancel`] token registered
//! under its (pid, secret key); a cancel request fires the token, which
//! ends the running statement (including a result still streaming) with
//! 57014, and also fires pgwire's own cancellation of the statement future.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Sink;
use pgwire::api::auth::{
    DefaultServerParameterProvider, ServerParameterProvider, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, METADATA_DATABASE,
    METADATA_USER, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio_util::sync::CancellationToken;

use crate::engine::DATABASE;
use crate::engine::session::startup_parameters;

/// The per-connection cancellation token of the running statement.
#[derive(Default)]
pub struct QueryCancel(Mutex<CancellationToken>);

impl QueryCancel {
    /// A fresh token for the statement about to run.
    pub fn start(&self) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut t) = self.0.lock() {
            *t = token.clone();
        }
        token
    }

    pub fn cancel(&self) {
        if let Ok(t) = self.0.lock() {
            t.cancel();
        }
    }
}

type Registry = Arc<Mutex<HashMap<(i32, Bytes), Weak<QueryCancel>>>>;

/// Server parameters reported at start-up.
#[derive(Debug)]
pub struct EddyParams(DefaultServerParameterProvider);

impl EddyParams {
    fn new() -> Self {
        let mut p = DefaultServerParameterProvider::default();
        p.server_version = format!("{} (eddy {})", crate::engine::session::SERVER_VERSION, env!("CARGO_PKG_VERSION"));
        p.date_style = "ISO, MDY".into();
        p.time_zone = "UTC".into();
        Self(p)
    }
}

impl ServerParameterProvider for EddyParams {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut m = self.0.server_parameters(client)?;
        for (name, value) in startup_parameters() {
            if name != "server_version" {
                m.entry(name.to_string()).or_insert_with(|| value.to_string());
            }
        }
        if let Some(app) = client.metadata().get("application_name") {
            m.insert("application_name".into(), app.clone());
        }
        Some(m)
    }
}

pub struct EddyStartup {
    manager: Arc<ConnectionManager>,
    params: EddyParams,
    pids: RandomPidSecretKeyGenerator,
    registry: Registry,
}

pub struct EddyCancel {
    manager: Arc<ConnectionManager>,
    registry: Registry,
}

/// Builds the start-up and cancel handlers, which share their state.
pub fn handlers() -> (EddyStartup, EddyCancel) {
    let manager = Arc::new(ConnectionManager::new());
    let registry: Registry = Arc::default();
    (
        EddyStartup {
            manager: manager.clone(),
            params: EddyParams::new(),
            pids: RandomPidSecretKeyGenerator::default(),
            registry: registry.clone(),
        },
        EddyCancel { manager, registry },
    )
}

#[async_trait]
impl StartupHandler for EddyStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(ref startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, startup).await?;
        save_startup_parameters_to_metadata(client, startup);
        let db = {
            let md = client.metadata();
            md.get(METADATA_DATABASE).or_else(|| md.get(METADATA_USER)).cloned().unwrap_or_default()
        };
        if db != DATABASE {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "3D000".into(),
                format!("database \"{db}\" does not exist (eddy serves one database, \"{DATABASE}\")"),
            ))));
        }
        let (pid, key) = self.pids.generate(&*client);
        client.set_pid_and_secret_key(pid, key.clone());
        let (handle, guard) = self.manager.register(pid, key.clone());
        client.session_extensions().insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        let cancel = client.session_extensions().get_or_insert_with(QueryCancel::default);
        if let Ok(mut reg) = self.registry.lock() {
            reg.retain(|_, w| w.strong_count() > 0);
            reg.insert((pid, key.to_bytes()), Arc::downgrade(&cancel));
        }
        finish_authentication(client, &self.params).await
    }
}

#[async_trait]
impl CancelHandler for EddyCancel {
    async fn on_cancel_request(&self, req: CancelRequest) {
        let target = self
            .registry
            .lock()
            .ok()
            .and_then(|reg| reg.get(&(req.pid, req.secret_key.to_bytes())).and_then(Weak::upgrade));
        if let Some(q) = target {
            q.cancel();
        }
        self.manager.cancel(req.pid, &req.secret_key).await;
    }
}
