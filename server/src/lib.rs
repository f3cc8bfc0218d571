//! The poc-routing server: one instance of a replicated service where each client id has
//! exactly one owner.
//!
//! - `GET /where?client_id=ID` names the owner of `ID` (any instance can answer).
//! - `GET|POST /join?client_id=ID` registers `ID`, but only on its owner; any other instance
//!   answers 421 `misdirected`, which makes a routing mistake visible instead of silent.
//! - `/health` answers anyone; `/clients`, `/placement`, `/metrics` and `/registrations` need
//!   the operator's token ([`auth`]).
//! - The peer plane (`/peer/...`: gossip, hand-offs) has a listener of its own, `PEER_PORT`,
//!   behind mutual TLS with the cluster's credential ([`poc_routing_peer`]), and one client
//!   every peer request goes through ([`poc_routing_peer::PeerClient`]).
//!
//! Membership is discovered from the deployment by default: [`discovery`] asks DNS and carries
//! the peer messages of the membership state machine ([`poc_routing_membership`]); the member
//! list and its epoch follow what is deployed and ready, and a SIGTERM makes the instance leave
//! the member list before it stops ([`discovery::Discovery::leave`]).
//!
//! The binary is thin: [`Application::build`] binds the listeners from a [`Config`], and [`run`]
//! serves an already-bound listener until a shutdown future completes, so tests bind port 0.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod discovery;
pub mod error;
pub mod handoff;
pub mod identity;
mod metrics;
pub mod ownership;
pub mod registry;
pub mod replicas;
mod rounds;
pub mod routes;
pub mod sessions;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use poc_routing_peer::{ClientOptions, Credentials, PeerAddr, PeerClient, TlsListener};
use poc_routing_placement::Placement;
use tokio::net::TcpListener;

pub use config::{AppSettings, Config, ConfigError, LogFormat, PeerSettings, Replication};
use discovery::{Discovery, Finder};
use identity::Identity;
use poc_routing_membership::Membership;

/// State shared by every request.
pub struct AppState {
    pub membership: Arc<Membership>,
    pub identity: Arc<Identity>,
    /// Present when membership is discovered: a join routed by an epoch this instance does not
    /// hold yet asks for a fresh round before it is refused.
    pub discovery: Option<Arc<Discovery>>,
    /// Present with discovery: hands registrations to their new owners.
    pub handoffs: Option<Arc<handoff::HandOffs>>,
    /// Present with discovery unless `REPLICATION=off`: the replicas of the registrations.
    pub replicas: Option<Arc<replicas::Replicas>>,
    pub registry: Arc<registry::Registry>,
    /// The WebSocket sessions held here.
    pub sessions: Arc<sessions::Sessions>,
    /// `MAX_SESSIONS`, and the sessions admitted now.
    pub max_sessions: usize,
    pub session_count: Arc<std::sync::atomic::AtomicUsize>,
    /// The operator's tokens.
    pub operator: Arc<auth::Operator>,
    /// With discovery: the peer credential in force (its fingerprints go in `/placement`).
    pub peer_credentials: Option<Arc<Credentials>>,
    /// App mode (`APP_URL`): the application the keys' requests are forwarded to.
    pub app: Option<Arc<app::App>>,
    metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// A fixed member set: `placement`'s own members.
    pub fn new(
        placement: Placement,
        identity: Arc<Identity>,
        registry_capacity: usize,
        operator: Arc<auth::Operator>,
    ) -> Self {
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.members.set(placement.members().len() as i64);
        Self {
            membership: Arc::new(Membership::fixed(placement)),
            identity,
            discovery: None,
            handoffs: None,
            replicas: None,
            registry: Arc::new(registry::Registry::new(registry_capacity)),
            sessions: Arc::default(),
            max_sessions: usize::MAX,
            session_count: Arc::default(),
            operator,
            peer_credentials: None,
            app: None,
            metrics,
        }
    }

    /// The placement rule (mode and naming) every view uses.
    pub fn rule(&self) -> &Placement {
        &self.membership.rule
    }
}

/// The public listener's routes: the API (anyone), the operator's endpoints (a token).
pub fn router(state: Arc<AppState>) -> Router {
    let operator = Router::new()
        .route("/clients", get(routes::clients))
        .route("/placement", get(routes::placement))
        .route("/metrics", get(routes::metrics))
        .route("/registrations", get(routes::registrations))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    let api = Router::new()
        .route("/where", get(routes::where_))
        .route("/join", get(routes::join).post(routes::join))
        .route("/health", get(routes::health))
        .merge(operator);
    // App mode: every other request is a key's, for the application ([`app::forward`]).
    let api = match state.app {
        Some(_) => api.fallback(app::forward),
        None => api.fallback(routes::not_found),
    };
    api.method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::observe,
        ))
        .with_state(state)
}

/// The most a peer request's body may hold: a hand-off batch of [`handoff::BATCH`]
/// registrations at their bounds (`registry::MAX_JOIN_COUNTERS` counters, `MAX_SERVED`
/// entries); a membership table is far smaller. A peer's answers are read with the same
/// bound, but for a registrations list ([`handoff::registrations_answer_limit`]).
pub const PEER_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The peer listener's routes: the gossip and the hand-off, for instances of the cluster only
/// (the listener admits no one else).
pub fn peer_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/peer/digest", get(routes::peer_digest))
        .route("/peer/sync", post(routes::peer_sync))
        .route("/peer/view", get(routes::peer_view))
        .route("/peer/push", post(routes::peer_push))
        .route("/peer/handoff", post(routes::peer_handoff))
        .route("/peer/replicate", post(routes::peer_replicate))
        .route("/peer/replicas", get(routes::peer_replicas))
        .route("/peer/resync", post(routes::peer_resync))
        .route("/peer/registrations", get(routes::peer_registrations))
        .route("/peer/release", post(app::peer_release))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
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

/// A server whose listeners are bound and whose identity discovery has started.
pub struct Application {
    listener: TcpListener,
    /// With discovery: the peer listener.
    peer: Option<TlsListener>,
    /// In app mode: the state API's listener (`APP_STATE_ADDR`).
    state_listener: Option<TcpListener>,
    state: Arc<AppState>,
}

/// The address peer connections leave from: the one bound, unless it is every address.
fn local_address(bind: std::net::IpAddr) -> Option<std::net::IpAddr> {
    (!bind.is_unspecified()).then_some(bind)
}

impl Application {
    /// Binds `BIND_ADDR:PORT` (and with discovery `BIND_ADDR:PEER_PORT`) and works out which
    /// instance this is. Errors name what failed, for the one line the binary prints.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listen = |port: u16, what: &str| {
            let addr = SocketAddr::new(config.bind_addr, port);
            bind(addr).map_err(|e| {
                std::io::Error::other(format!("cannot listen on {addr} ({what}): {e}"))
            })
        };
        let listener = listen(config.placement.port(), "PORT")?;
        let peer = match &config.peer {
            Some(p) => Some(listen(p.port, "PEER_PORT")?),
            None => None,
        };
        Self::with_listeners(config, listener, peer)
    }

    /// Like [`Application::build`], but on listeners bound by the caller (tests bind port 0):
    /// the public one, and with discovery the peer one. The discovery loop starts here.
    pub fn with_listeners(
        config: Config,
        listener: TcpListener,
        peer_listener: Option<TcpListener>,
    ) -> std::io::Result<Self> {
        let operator = Arc::new(
            auth::Operator::load(config.operator_token_file.clone())
                .map_err(|e| std::io::Error::other(format!("OPERATOR_TOKEN_FILE {e}")))?,
        );
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
        let (Some(dns), Some(peer)) = (&config.discovery, &config.peer) else {
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
            let mut state = AppState::new(
                config.placement,
                identity,
                config.registry_capacity,
                operator.clone(),
            );
            state.max_sessions = config.max_sessions;
            let state_listener = app_mode(&mut state, &config.app)?;
            tokio::spawn(discovery::resolve_fixed_members(
                state.membership.clone(),
                Duration::from_secs(1),
            ));
            tokio::spawn(auth::watch(operator, None));
            return Ok(Self {
                listener,
                peer: None,
                state_listener,
                state: Arc::new(state),
            });
        };
        let peer_listener = peer_listener.ok_or_else(|| {
            std::io::Error::other("discovery needs the peer listener (PEER_PORT)")
        })?;
        let credentials = Credentials::load(
            &peer.credential_dir,
            ClientOptions {
                local_address: local_address(config.bind_addr),
                ..ClientOptions::default()
            },
        )
        .map_err(|e| std::io::Error::other(format!("PEER_CREDENTIAL_DIR {e}")))?;
        let peers = PeerClient::new(credentials.clone(), peer.port);
        let membership = Arc::new(Membership::discovered(
            config.placement.clone(),
            config.timing,
            config.expected_replicas,
        ));
        let metrics = Arc::new(metrics::Metrics::default());
        let counted = metrics.clone();
        let peer_listener = TlsListener::new(peer_listener, credentials.clone(), move |why, _| {
            counted.refused(why.as_str());
        })?;
        let discovery = Arc::new(Discovery::new(
            Finder::new(dns, config.placement.clone())?,
            membership.clone(),
            identity.clone(),
            metrics.clone(),
            peers.clone(),
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
            peers,
        ));
        tokio::spawn(handoffs.clone().run(config.handoff_interval));
        let replicas = (config.replication != config::Replication::Off).then(|| {
            Arc::new(replicas::Replicas::new(
                config.replication,
                handoffs.clone(),
            ))
        });
        if let Some(replicas) = &replicas {
            tokio::spawn(replicas.clone().run());
        }
        tokio::spawn(auth::watch(operator.clone(), Some(credentials.clone())));
        let mut state = AppState {
            membership,
            identity,
            discovery: Some(discovery),
            handoffs: Some(handoffs),
            replicas,
            registry,
            sessions,
            max_sessions: config.max_sessions,
            session_count: Arc::default(),
            operator,
            peer_credentials: Some(credentials),
            app: None,
            metrics,
        };
        let state_listener = app_mode(&mut state, &config.app)?;
        Ok(Self {
            listener,
            peer: Some(peer_listener),
            state_listener,
            state: Arc::new(state),
        })
    }

    /// In app mode: the state API's address.
    pub fn state_api_addr(&self) -> Option<SocketAddr> {
        self.state_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The peer listener's address, with discovery.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        use axum::serve::Listener;
        self.peer
            .as_ref()
            .and_then(|p| p.local_addr().ok())
            .map(|a| a.0)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes. With discovery on, the instance then leaves the
    /// member list (still serving, on both listeners) before it stops.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let p = self.state.rule();
        let discovery = self.state.discovery.clone();
        let handoffs = self.state.handoffs.clone();
        tracing::info!(
            addr = %self.listener.local_addr()?,
            peer_addr = ?self.peer_addr(),
            mode = %p.mode(),
            discovery = ?discovery.as_ref().map(|d| d.finder.name()),
            members = ?discovery.is_none().then(|| p.members().to_vec()),
            base = p.base(),
            prefix = p.prefix(),
            suffix = p.suffix(),
            "listening"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
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
            let _ = stop.send(true);
        });
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        if let Some(listener) = self.state_listener {
            let api = axum::serve(listener, app::state_router(self.state.clone()))
                .with_graceful_shutdown(until_stopped());
            tokio::spawn(async move {
                if let Err(e) = api.await {
                    tracing::error!(error = %e, "the state API's listener failed");
                }
            });
        }
        let public = axum::serve(self.listener, router(self.state.clone()))
            .with_graceful_shutdown(until_stopped());
        match self.peer {
            None => public.await,
            Some(peer) => {
                let peer = axum::serve(
                    peer,
                    peer_router(self.state).into_make_service_with_connect_info::<PeerAddr>(),
                )
                .with_graceful_shutdown(until_stopped());
                tokio::try_join!(public, peer).map(|_| ())
            }
        }
    }
}

/// App mode, if `config` has it: the application in `state`, and the state API's listener
/// bound on `APP_STATE_ADDR`.
fn app_mode(
    state: &mut AppState,
    app: &Option<AppSettings>,
) -> std::io::Result<Option<TcpListener>> {
    let Some(settings) = app else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(settings.state_addr)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .map_err(|e| {
            std::io::Error::other(format!(
                "cannot listen on {} (APP_STATE_ADDR): {e}",
                settings.state_addr
            ))
        })?;
    tracing::info!(app = %settings.url(), state_api = %settings.state_addr, "app mode");
    state.app = Some(Arc::new(app::App::new(
        settings.clone(),
        state.registry.capacity(),
    )));
    Ok(Some(listener))
}

/// The wall clock in microseconds since the Unix epoch: where a card's version starts, and
/// what registration times are.
pub(crate) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
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
