//! The poc-routing server: one instance of a replicated service where each client id has
//! exactly one owner.
//!
//! - `GET /where?client_id=ID` names the owner of `ID` (any instance can answer).
//! - `GET|POST /join?client_id=ID` registers `ID`, but only on its owner; any other instance
//!   answers 421 `misdirected`, which makes a routing mistake visible instead of silent.
//! - `/health`, `/clients`, `/placement` and `/metrics` support operations.
//!
//! Membership is discovered from the deployment by default ([`discovery`], [`membership`]): the
//! member list and its epoch follow what is deployed and ready, and a SIGTERM makes the instance
//! leave the member list before it stops ([`discovery::Discovery::leave`]).
//!
//! The binary is thin: [`Application::build`] binds the listener from a [`Config`], and [`run`]
//! serves an already-bound listener until a shutdown future completes, so tests bind port 0.
#![forbid(unsafe_code)]

pub mod config;
pub mod discovery;
pub mod error;
pub mod gossip;
pub mod handoff;
pub mod identity;
pub mod membership;
mod metrics;
pub mod node;
pub mod registry;
mod rounds;
pub mod routes;
pub mod sessions;
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
use discovery::{Discovery, Finder};
use identity::Identity;
use membership::Membership;

/// State shared by every request.
pub struct AppState {
    pub membership: Arc<Membership>,
    pub identity: Arc<Identity>,
    /// Present when membership is discovered: a join routed by an epoch this instance does not
    /// hold yet asks for a fresh round before it is refused.
    pub discovery: Option<Arc<Discovery>>,
    /// Present with discovery: hands registrations to their new owners.
    pub handoffs: Option<Arc<handoff::HandOffs>>,
    pub registry: Arc<registry::Registry>,
    /// The WebSocket sessions held here.
    pub sessions: Arc<sessions::Sessions>,
    metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// A fixed member set: `placement`'s own members.
    pub fn new(placement: Placement, identity: Arc<Identity>, registry_capacity: usize) -> Self {
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.members.set(placement.members().len() as i64);
        Self {
            membership: Arc::new(Membership::fixed(placement)),
            identity,
            discovery: None,
            handoffs: None,
            registry: Arc::new(registry::Registry::new(registry_capacity)),
            sessions: Arc::default(),
            metrics,
        }
    }

    /// The placement rule (mode and naming) every view uses.
    pub fn rule(&self) -> &Placement {
        &self.membership.rule
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
        .route("/peer/digest", get(routes::peer_digest))
        .route("/peer/sync", axum::routing::post(routes::peer_sync))
        .route("/peer/push", axum::routing::post(routes::peer_push))
        .route("/peer/handoff", axum::routing::post(routes::peer_handoff))
        .route("/peer/registrations", get(routes::peer_registrations))
        .route("/registrations", get(routes::registrations))
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

/// A peer's JSON answer to `request`: sent, a 2xx, and a body of type `T`, or the error that
/// stopped it (the membership probes, the hand-offs and the registrations' gathering all ask
/// peers this way).
pub(crate) async fn peer_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, reqwest::Error> {
    request.send().await?.error_for_status()?.json().await
}

/// Connections the kernel may hold for this listener before it accepts them. After a scale
/// change, every session of the clients an instance now owns reconnects to it within a moment
/// (a thousand at once in the tests), and a join burst to an owner that stalls queues here
/// until Envoy's circuit breaker refuses the rest: tokio's default of 1024 would drop SYNs
/// first, which a client sees as a one-second connect timeout. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A server whose listener is bound and whose identity discovery has started.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Binds `BIND_ADDR:PORT` and works out which instance this is.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listener = bind(SocketAddr::new(config.bind_addr, config.placement.port()))?;
        Self::with_listener(config, listener)
    }

    /// Like [`Application::build`], but on a listener bound by the caller (tests bind port 0).
    /// With discovery on, the discovery loop starts here.
    pub fn with_listener(config: Config, listener: TcpListener) -> std::io::Result<Self> {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let known =
            identity::from_env_or_hostname(&config.placement, config.instance_index, &hostname);
        let identity = Arc::new(match known {
            Some((index, source)) => {
                tracing::info!(instance = index, ?source, "identity found");
                Identity::known(index)
            }
            None => Identity::default(),
        });
        let Some(dns) = &config.discovery else {
            if let Some(index) = identity.get() {
                if !config.placement.is_member(index) {
                    tracing::warn!(
                        instance = index,
                        members = ?config.placement.members(),
                        "this instance is outside the fixed member set; every /join will be misdirected"
                    );
                }
            } else {
                identity::discover_in_background(
                    config.placement.clone(),
                    identity.clone(),
                    60,
                    Duration::from_secs(1),
                );
            }
            let state = AppState::new(config.placement, identity, config.registry_capacity);
            tokio::spawn(discovery::resolve_fixed_members(
                state.membership.clone(),
                Duration::from_secs(1),
            ));
            return Ok(Self {
                listener,
                state: Arc::new(state),
            });
        };
        let membership = Arc::new(Membership::discovered(
            config.placement.clone(),
            config.timing,
            config.expected_replicas,
        ));
        let metrics = Arc::new(metrics::Metrics::default());
        let discovery = Arc::new(Discovery::new(
            Finder::new(dns, config.placement.clone())?,
            membership.clone(),
            identity.clone(),
            metrics.clone(),
        ));
        tokio::spawn(discovery.clone().run());
        let registry = Arc::new(registry::Registry::new(config.registry_capacity));
        let sessions: Arc<sessions::Sessions> = Arc::default();
        let handoffs = Arc::new(handoff::HandOffs::new(
            registry.clone(),
            sessions.clone(),
            membership.clone(),
            identity.clone(),
            discovery.clone(),
            metrics.clone(),
        ));
        tokio::spawn(handoffs.clone().run());
        let state = AppState {
            membership,
            identity,
            discovery: Some(discovery),
            handoffs: Some(handoffs),
            registry,
            sessions,
            metrics,
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes. With discovery on, the instance then leaves the
    /// member list (still serving) before it stops.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let p = self.state.rule();
        let discovery = self.state.discovery.clone();
        let handoffs = self.state.handoffs.clone();
        tracing::info!(
            addr = %self.listener.local_addr()?,
            mode = %p.mode(),
            discovery = ?discovery.as_ref().map(|d| d.finder.name()),
            members = ?discovery.is_none().then(|| p.members().to_vec()),
            base = p.base(),
            prefix = p.prefix(),
            suffix = p.suffix(),
            "listening"
        );
        let shutdown = async move {
            shutdown.await;
            let started = std::time::Instant::now();
            if let Some(discovery) = discovery {
                discovery.leave().await;
                // Whatever is still pending (joins served in the grace period), within what
                // is left of the drain's own bound, and at least a second.
                if let Some(handoffs) = handoffs {
                    let timing = discovery.membership.timing;
                    let bound = (timing.drain_timeout + timing.drain_grace)
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_secs(1));
                    handoffs.drain(bound).await;
                    handoffs.close_moved_sessions();
                }
            }
            tracing::info!("stopping");
        };
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
