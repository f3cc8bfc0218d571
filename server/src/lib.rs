//! The poc-routing server: one instance of a replicated service where each client id has
//! exactly one owner.
//!
//! - `GET /where?client_id=ID` names the owner of `ID` (any instance can answer).
//! - `GET|POST /join?client_id=ID` registers `ID`, but only on its owner; any other instance
//!   answers 421 `misdirected`, which makes a routing mistake visible instead of silent.
//! - `/health`, `/clients`, `/placement` and `/metrics` support operations.
//!
//! The binary is thin: [`Application::build`] binds the listener from a [`Config`], and [`run`]
//! serves an already-bound listener until a shutdown future completes, so tests bind port 0.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod identity;
mod metrics;
mod registry;
pub mod routes;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use poc_routing_placement::Placement;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, LogFormat};
use identity::Identity;

/// State shared by every request.
pub struct AppState {
    pub placement: Placement,
    pub identity: Arc<Identity>,
    registry: registry::Registry,
    metrics: metrics::Metrics,
}

impl AppState {
    pub fn new(placement: Placement, identity: Arc<Identity>, registry_capacity: usize) -> Self {
        Self {
            placement,
            identity,
            registry: registry::Registry::new(registry_capacity),
            metrics: metrics::Metrics::default(),
        }
    }
}

/// The HTTP routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/where", get(routes::where_))
        .route("/join", get(routes::join).post(routes::join))
        .route("/clients", get(routes::clients))
        .route("/health", get(routes::health))
        .route("/placement", get(routes::placement))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::observe,
        ))
        .with_state(state)
}

/// Serves `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A server whose listener is bound and whose identity discovery has started.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Binds `BIND_ADDR:PORT` and works out which instance this is.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listener =
            TcpListener::bind(SocketAddr::new(config.bind_addr, config.placement.port())).await?;
        Ok(Self::with_listener(config, listener))
    }

    /// Like [`Application::build`], but on a listener bound by the caller (tests bind port 0).
    pub fn with_listener(config: Config, listener: TcpListener) -> Self {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let identity = match identity::from_env_or_hostname(
            &config.placement,
            config.instance_index,
            &hostname,
        ) {
            Some((index, source)) => {
                tracing::info!(instance = index, ?source, "identity found");
                if !config.placement.indexes().contains(&index) {
                    tracing::warn!(
                        instance = index,
                        range = ?config.placement.indexes(),
                        "this instance is outside the placement range; every /join will be misdirected"
                    );
                }
                Arc::new(Identity::known(index))
            }
            None => {
                let identity = Arc::new(Identity::default());
                identity::discover_in_background(
                    config.placement.clone(),
                    identity.clone(),
                    60,
                    Duration::from_secs(1),
                );
                identity
            }
        };
        let state = Arc::new(AppState::new(
            config.placement,
            identity,
            config.registry_capacity,
        ));
        Self { listener, state }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let p = &self.state.placement;
        tracing::info!(
            addr = %self.listener.local_addr()?,
            mode = %p.mode(),
            replicas = p.replicas(),
            base = p.base(),
            prefix = p.prefix(),
            suffix = p.suffix(),
            "listening"
        );
        run(self.listener, self.state, shutdown).await
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
