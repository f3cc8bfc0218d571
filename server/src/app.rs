//! App mode: the instance runs beside an application (`APP_URL`) and is the owner check in front
//! of it, so that the application sees each key's requests on that key's owner only.
//!
//! - **Forwarding.** A request on an affinity route other than `/join` (the routing filter has
//!   put its key in `x-poc-key` and its epoch in `x-poc-epoch`) is judged as a join is; if this
//!   instance owns the key under its *current* view, it goes to the application with the key,
//!   the epoch and this instance's index in headers the instance sets itself (`x-poc-key`,
//!   `x-poc-epoch`, `x-poc-instance`), the body streamed both ways. A WebSocket upgrade is
//!   relayed message by message, and closed with the moved code when its key moves, as a
//!   `/join` session is. Anything else is never forwarded: 421 `misdirected` as for a join;
//!   a request without a key is 404. Unlike a join, a request routed by the previous view is
//!   not served during the transition window: two owners would then write one key's state.
//! - **The application's answers** reach the client as they are. A dead or hung application
//!   gives 502 `app_unavailable` or 504 `app_timeout`, naming `APP_URL` (the time-out covers
//!   the answer's headers; a body then streams for as long as the application sends it).
//! - **State follows the key** ([`state_router`]). The application keeps per-key state through
//!   the state API on a loopback listener (`APP_STATE_ADDR`): `GET`, `PUT` and `DELETE
//!   /state/{key}`. The state is a field of the key's registration ([`KeyState`]), made by the
//!   application's first write (a request alone makes none, so made-up keys evict nobody's
//!   state), and the hand-off, the replicas and the restart's recovery carry it as they carry
//!   the record of joins. Copies merge by version, and a version is the later of the one
//!   replaced plus one and the writer's clock, so a late copy never overwrites a newer write.
//!   A write waits for the key's backup to acknowledge it (at most
//!   [`crate::replicas::SYNC_WAIT`]) and says whether it did.
//! - **Before the application reads or writes a key** after a view change ([`ensure_here`],
//!   once per key and change, one request at a time per key): the key's owners under the views
//!   still inside their transition window are asked for a copy of their record (`POST
//!   /peer/release`; each keeps it until its hand-off is acknowledged), and the replica held
//!   here is promoted. Until that is done (a recent owner does not hold this view yet, or this
//!   instance restarted and is reading its records back) the request is refused with 503
//!   `state_unavailable`, nothing forwarded. A write checks ownership and is applied under the
//!   lock that `/peer/release` copies under, so a copy given away holds every accepted write.
//! - **Ownership events** (`GET /events`, newline-delimited JSON): the keys held when the
//!   application connects, then the keys that arrive and leave ([`crate::ownership`]).
//!
//! Limits: a record whose hand-off is still pending when the window has passed (its old owner
//! alive but unreachable for that long) is merged when it arrives, by version; an owner and its
//! backup lost together lose their keys' state.
//!
//! The built-in application, `/join`, is the same mechanism without an application: its
//! registration is the record every key has, which an application's state rides on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poc_routing_placement::{key_from_header, key_header_value, ClientId, KeySource, KEY_HEADER};
use poc_routing_wire::{
    HandOff, KeyState, OwnershipChange, OwnershipEvent, Release, ServedUnder, StateWritten,
    EPOCH_HEADER, INSTANCE_HEADER, MAX_STATE_BYTES, STATE_VERSION_HEADER,
};
use tokio_tungstenite::tungstenite;

use crate::config::AppSettings;
use crate::error::ApiError;
use crate::routes::{admit_key, misdirected, routed_epoch};
use crate::{wall_us, AppState};

/// The largest WebSocket message relayed either way: bounded, as every size a client
/// controls; an application whose messages are larger needs a larger bound here.
pub const MAX_RELAYED_MESSAGE_BYTES: usize = 1024 * 1024;

/// How long dialling the application may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long asking a previous owner for a key's record may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The application beside this instance, and the connections to it.
pub struct App {
    pub settings: AppSettings,
    client: Client<HttpConnector, Body>,
    settled: Settled,
    /// Held while a state write checks that this instance owns its key and writes it, and
    /// while `/peer/release` checks that it does not and copies the record: a copy given to
    /// the new owner holds every write this instance accepted.
    ownership: std::sync::Mutex<()>,
}

/// Which keys' records are known to be here (or nowhere else) since which view change (its
/// moment: an epoch comes back whenever the same members do, so it cannot tell two changes
/// apart), so that [`ensure_here`] asks their recent owners once per key and change; and one
/// asker at a time per key.
struct Settled {
    done: std::sync::Mutex<lru::LruCache<String, Option<Instant>>>,
    busy: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Settled {
    fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            done: std::sync::Mutex::new(lru::LruCache::new(capacity)),
            busy: std::sync::Mutex::default(),
        }
    }

    fn is(&self, key: &str, change: Option<Instant>) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.get(key) == Some(&change)
    }

    fn mark(&self, key: &str, change: Option<Instant>) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.put(key.to_owned(), change);
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(key);
    }

    /// The lock one request holds while it settles `key`.
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.entry(key.to_owned()).or_default().clone()
    }
}

impl App {
    /// `capacity`: the keys whose settled view is remembered (`REGISTRY_CAPACITY`).
    pub fn new(settings: AppSettings, capacity: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Self {
            settings,
            client: Client::builder(TokioExecutor::new()).build(connector),
            settled: Settled::new(capacity),
            ownership: std::sync::Mutex::new(()),
        }
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> ApiError {
        ApiError::AppUnavailable {
            app: self.settings.url(),
            why: why.to_string(),
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::AppTimeout {
            app: self.settings.url(),
            after_ms: self.settings.timeout.as_millis() as u64,
        }
    }
}

/// The error and its causes, in one line (hyper's own message is only "client error").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1): never relayed.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The key of a request routed to the application: the one the routing filter put in
/// [`KEY_HEADER`] (a direct call sets it itself; ownership is judged for it all the same).
/// `None` without one: not a key's request.
fn routed_key(headers: &HeaderMap) -> Result<Option<ClientId>, ApiError> {
    let mut values = headers.get_all(KEY_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(key_from_header(v.as_bytes())?)),
        (Some(_), Some(_)) => Err(poc_routing_placement::KeyError {
            source: KeySource::Header(KEY_HEADER.into()),
            error: poc_routing_placement::IdError::Duplicate,
        }
        .into()),
    }
}

/// The public listener's fallback in app mode: a request for a key, forwarded to the
/// application if this instance owns the key now.
pub async fn forward(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(app) = state.app.clone() else {
        return Err(ApiError::NotFound(format!(
            "{} {}",
            request.method(),
            request.uri().path()
        )));
    };
    let (mut parts, body) = request.into_parts();
    // Without a key (a path no affinity route sent, or the operator listener's, which removes
    // the header): a path this instance does not serve, as without an application.
    let Some(id) = routed_key(&parts.headers)? else {
        return Err(ApiError::NotFound(format!(
            "{} {} (app mode forwards the requests an affinity route sends with their key in {KEY_HEADER})",
            parts.method,
            parts.uri.path()
        )));
    };
    let routed = routed_epoch(&parts.headers)?;
    let (instance, under, _) = admit_key(&state, &id, routed).await?;
    let current = state.membership.current().ok_or(ApiError::NotReady)?;
    if under == ServedUnder::Previous && current.index(&id)? != instance {
        // Owned here under the previous view only: its new owner may be serving it already.
        let owner = current.index(&id)?;
        return Err(misdirected(&state, &id, instance, owner, routed));
    }
    ensure_here(&state, &id, instance).await?;
    // No registration is made for a request: a key's record here is its application state,
    // made by the application's first write, so a client's made-up keys evict nobody's state.
    let wants_upgrade = parts.headers.contains_key(header::UPGRADE);
    let upgrade = if wants_upgrade {
        Some(
            WebSocketUpgrade::from_request_parts(&mut parts, &state)
                .await
                .map_err(|e| ApiError::BadUpgrade(e.body_text()))?,
        )
    } else {
        None
    };
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    let stamp = [
        (KEY_HEADER, key_header_value(&id)),
        (EPOCH_HEADER, current.epoch().to_string()),
        (INSTANCE_HEADER, instance.to_string()),
    ];
    for (name, value) in stamp {
        // Whatever a client sent under these names goes, whether or not a value is set.
        headers.remove(name);
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(upgrade) = upgrade {
        return relay_session(state, app, upgrade, id, parts.headers, &path).await;
    }
    parts.uri = Uri::try_from(format!("http://{}{path}", app.settings.url))
        .map_err(|e| app.unavailable(e))?;
    let request = Request::from_parts(parts, body);
    let answer = tokio::time::timeout(app.settings.timeout, app.client.request(request))
        .await
        .map_err(|_| app.timed_out())?
        .map_err(|e| app.unavailable(causes(&e)))?;
    let mut answer = answer.map(Body::new);
    remove_hop_by_hop(answer.headers_mut());
    Ok(answer)
}

/// Opens a WebSocket to the application for the same path with the same headers, and once
/// it accepted, accepts the client's and relays between them.
async fn relay_session(
    state: Arc<AppState>,
    app: Arc<App>,
    upgrade: WebSocketUpgrade,
    id: ClientId,
    headers: HeaderMap,
    path: &str,
) -> Result<Response, ApiError> {
    use tungstenite::client::IntoClientRequest;
    // A place among MAX_SESSIONS first: a refused session opens nothing on the application.
    let permit = crate::sessions::Permit::take(&state.session_count, state.max_sessions)
        .ok_or(ApiError::TooManySessions(state.max_sessions))?;
    let mut request = format!("ws://{}{path}", app.settings.url)
        .into_client_request()
        .map_err(|e| app.unavailable(e))?;
    for (name, value) in &headers {
        let handshake = name == header::HOST || name.as_str().starts_with("sec-websocket-");
        if !handshake || name == header::SEC_WEBSOCKET_PROTOCOL {
            request.headers_mut().append(name, value.clone());
        }
    }
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_RELAYED_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_RELAYED_MESSAGE_BYTES));
    let connected = tokio::time::timeout(
        app.settings.timeout,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| app.timed_out())?;
    let (to_app, answer) = match connected {
        Ok(connected) => connected,
        // The application answered the upgrade with something else: that answer, as it is.
        Err(tungstenite::Error::Http(refused)) => {
            let (mut parts, body) = refused.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(
                parts,
                Body::from(body.unwrap_or_default()),
            ));
        }
        Err(e) => return Err(app.unavailable(causes(&e))),
    };
    let mut upgrade = upgrade
        .max_message_size(MAX_RELAYED_MESSAGE_BYTES)
        .max_frame_size(MAX_RELAYED_MESSAGE_BYTES);
    if let Some(chosen) = answer
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        upgrade = upgrade.protocols([chosen.to_owned()]);
    }
    let sessions = state.sessions.clone();
    let metrics = state.metrics.clone();
    Ok(upgrade
        .on_upgrade(move |client| async move {
            let _permit = permit;
            metrics.sessions_open.inc();
            let moved = relay(client, to_app, &sessions, id.as_str()).await;
            metrics.sessions_open.dec();
            if moved {
                metrics.sessions_moved.inc();
            }
        })
        .into_response())
}

type AppSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Relays messages between the client and the application until either ends the session or
/// the key moves (the client then gets the moved close, the application a going-away one).
/// Returns whether the key moved.
async fn relay(
    client: WebSocket,
    app: AppSocket,
    sessions: &crate::sessions::Sessions,
    key: &str,
) -> bool {
    let mut registered = sessions.register(key);
    let (mut client_tx, mut client_rx) = client.split();
    let (mut app_tx, mut app_rx) = app.split();
    loop {
        tokio::select! {
            why = &mut registered.moved => {
                let Ok(why) = why else { return false };
                let frame = crate::sessions::moved_frame(&why);
                let _ = client_tx.send(Message::Close(Some(frame))).await;
                let away = tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Away,
                    reason: "the key moved to another instance".into(),
                };
                let _ = app_tx.send(tungstenite::Message::Close(Some(away))).await;
                return true;
            }
            message = client_rx.next() => {
                let Some(Ok(message)) = message else {
                    let _ = app_tx.send(tungstenite::Message::Close(None)).await;
                    return false;
                };
                let closing = matches!(message, Message::Close(_));
                if let Some(message) = to_app(message) {
                    if app_tx.send(message).await.is_err() {
                        let _ = client_tx.send(Message::Close(Some(app_gone()))).await;
                        return false;
                    }
                }
                if closing {
                    return false;
                }
            }
            message = app_rx.next() => {
                let Some(Ok(message)) = message else {
                    let _ = client_tx.send(Message::Close(Some(app_gone()))).await;
                    return false;
                };
                let closing = matches!(message, tungstenite::Message::Close(_));
                if let Some(message) = to_client(message) {
                    if client_tx.send(message).await.is_err() {
                        let _ = app_tx.send(tungstenite::Message::Close(None)).await;
                        return false;
                    }
                }
                if closing {
                    return false;
                }
            }
        }
    }
}

/// The close a client gets when the application's side of its session broke.
fn app_gone() -> CloseFrame {
    CloseFrame {
        code: close_code::ERROR,
        reason: "the application ended the session".into(),
    }
}

/// A client's message, as the application gets it (each side answers its own pings).
fn to_app(m: Message) -> Option<tungstenite::Message> {
    Some(match m {
        Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        Message::Binary(b) => tungstenite::Message::Binary(b),
        Message::Close(frame) => {
            tungstenite::Message::Close(frame.map(|f| tungstenite::protocol::CloseFrame {
                code: f.code.into(),
                reason: f.reason.as_str().into(),
            }))
        }
        Message::Ping(_) | Message::Pong(_) => return None,
    })
}

/// The application's message, as the client gets it.
fn to_client(m: tungstenite::Message) -> Option<Message> {
    Some(match m {
        tungstenite::Message::Text(t) => Message::Text(t.as_str().into()),
        tungstenite::Message::Binary(b) => Message::Binary(b),
        tungstenite::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        _ => return None,
    })
}

/// Makes sure the record of `id`, which instance `me` owns now, is here before the
/// application reads or writes it: the key's owners under the views still inside the
/// transition window are asked for their copy (`POST /peer/release`), and the replica held
/// here (this instance was the key's backup) is promoted; the copies merge by version. Done
/// once per key and view, one request at a time per key. Refused with `state_unavailable`
/// (nothing forwarded) while a recent owner that is still a member does not answer or does not
/// hold this view yet, and while a restarted instance reads its records back.
pub async fn ensure_here(state: &AppState, id: &ClientId, me: u64) -> Result<(), ApiError> {
    let key = id.as_str();
    let (Some(app), Some(handoffs), Some(discovery)) =
        (&state.app, &state.handoffs, &state.discovery)
    else {
        // A fixed member set: keys never move.
        return Ok(());
    };
    // Read before the views: a change in between makes the next request settle again.
    let change = state.membership.changed_at();
    if app.settled.is(key, change) {
        return Ok(());
    }
    let gate = app.settled.gate(key);
    let _settling = gate.lock().await;
    if app.settled.is(key, change) {
        return Ok(());
    }
    let views = state.membership.views();
    if views.current.is_none() {
        return Err(ApiError::NotReady);
    }
    if state.replicas.as_ref().is_some_and(|r| r.recovering()) {
        return Err(ApiError::StateUnavailable(
            "this instance started again and is reading back its records from their replicas"
                .into(),
        ));
    }
    // Every owner of the key under a view still inside its window: several instances
    // joining or leaving together make several views in a row, and the record may be with
    // the owner of any of them (its hand-off not delivered yet).
    let now = Instant::now();
    let mut holders: Vec<u64> = Vec::new();
    for (view, until) in &views.recent {
        if now >= *until {
            continue;
        }
        if let Some(holder) = view.index(id).ok().filter(|h| *h != me) {
            if !holders.contains(&holder) {
                holders.push(holder);
            }
        }
    }
    for holder in holders {
        take_from(state, handoffs, discovery, &views, holder, me, key).await?;
    }
    if let Some(replicas) = &state.replicas {
        replicas.promote(key);
    }
    app.settled.mark(key, change);
    Ok(())
}

/// Asks `holder`, the key's owner under a recent view, for its record of `key`, and merges
/// what it gives.
async fn take_from(
    state: &AppState,
    handoffs: &crate::handoff::HandOffs,
    discovery: &crate::discovery::Discovery,
    views: &poc_routing_membership::Views,
    holder: u64,
    me: u64,
    key: &str,
) -> Result<(), ApiError> {
    let still_member = views.current.as_ref().is_some_and(|c| c.is_member(holder));
    let Some(addr) = discovery.found().get(&holder).copied() else {
        // Gone from DNS: removed as down, or left. What it held comes from its replicas.
        return Ok(());
    };
    match release(handoffs, addr, me, key).await {
        Ok(records) => {
            if !records.is_empty() {
                let evicted = state.registry.merge_in(records);
                handoffs.evicted(&evicted, "taking a released record");
                handoffs.arrived(vec![key.to_owned()]);
                if let Some(replicas) = &state.replicas {
                    replicas.changed([key.to_owned()]);
                }
            }
            Ok(())
        }
        Err(ReleaseError::ViewsDisagree) => Err(ApiError::StateUnavailable(format!(
            "instance {holder}, its owner under a recent view, does not hold this instance's view yet"
        ))),
        Err(ReleaseError::Failed(why)) if still_member => Err(ApiError::StateUnavailable(format!(
            "instance {holder}, its owner under a recent view, did not give its record: {why}"
        ))),
        Err(ReleaseError::Failed(why)) => {
            tracing::info!(holder, error = %why, "a recent owner that left did not answer for a key's record; its replicas hold what it had");
            Ok(())
        }
    }
}

enum ReleaseError {
    /// The holder's view is not this instance's yet (409 `still_owner` or `not_your_key`).
    ViewsDisagree,
    Failed(String),
}

/// Asks the instance at `addr` for its record of `key` (`POST /peer/release`).
async fn release(
    handoffs: &crate::handoff::HandOffs,
    addr: SocketAddr,
    me: u64,
    key: &str,
) -> Result<Vec<poc_routing_wire::Registration>, ReleaseError> {
    let request = handoffs
        .peers
        .post(addr.ip(), "/peer/release")
        .timeout(RELEASE_TIMEOUT)
        .json(&Release {
            from: me,
            key: key.to_owned(),
        });
    match poc_routing_peer::json::<HandOff>(request, crate::PEER_BODY_LIMIT).await {
        Ok(answer) => {
            crate::handoff::validate(&answer, wall_us()).map_err(ReleaseError::Failed)?;
            if answer.registrations.iter().any(|r| r.client_id != key) {
                return Err(ReleaseError::Failed(
                    "it answered with another key's record".into(),
                ));
            }
            Ok(answer.registrations)
        }
        // 409: `still_owner` or `not_your_key`, the only conflicts the endpoint answers.
        Err(poc_routing_peer::PeerError::Http(e))
            if e.status() == Some(axum::http::StatusCode::CONFLICT) =>
        {
            Err(ReleaseError::ViewsDisagree)
        }
        Err(e) => Err(ReleaseError::Failed(e.to_string())),
    }
}

/// `POST /peer/release` (peer listener): the current owner of a key asks for a copy of the
/// record this instance holds of it. Refused unless the asker owns the key under this instance's view
/// (409 `still_owner` while this instance does, 409 `not_your_key` while a third does): the
/// two views disagree, and the asker retries.
pub async fn peer_release(
    State(state): State<Arc<AppState>>,
    axum::extract::ConnectInfo(poc_routing_peer::PeerAddr(sender)): axum::extract::ConnectInfo<
        poc_routing_peer::PeerAddr,
    >,
    body: Result<Json<Release>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<HandOff>, ApiError> {
    let Some(handoffs) = &state.handoffs else {
        return Err(ApiError::NotFound(
            "POST /peer/release (membership is fixed: keys never move)".into(),
        ));
    };
    let Json(release) = body.map_err(|e| ApiError::BadBody(e.body_text()))?;
    handoffs.admit_sender(release.from, sender.ip())?;
    let id = ClientId::try_from(release.key.as_str())?;
    let me = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let _no_write_meanwhile = state
        .app
        .as_ref()
        .map(|app| app.ownership.lock().unwrap_or_else(|e| e.into_inner()));
    let current = state.membership.current().ok_or(ApiError::NotReady)?;
    let owner = current.index(&id)?;
    if owner == me {
        return Err(ApiError::StillOwner(me));
    }
    if owner != release.from {
        // The asker is ahead of this view or behind it: the record stays until they agree.
        return Err(ApiError::NotYourKey {
            from: release.from,
            owner,
        });
    }
    // A copy: the record stays here until the hand-off delivers it and the owner acknowledges
    // it, as every record does, so an answer lost on the way loses nothing. This instance
    // writes it no more (it owns the key under no view it serves the application by), and the
    // owner's newer writes win the merge when the hand-off arrives.
    let record = state.registry.get(id.as_str());
    if record.is_some() {
        handoffs.wake();
    }
    Ok(Json(HandOff {
        from: me,
        epoch: current.epoch().to_string(),
        registrations: record.into_iter().collect(),
    }))
}

/// The state API's routes, on the loopback listener `APP_STATE_ADDR`.
pub fn state_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/state/{*key}",
            get(state_get).put(state_put).delete(state_delete),
        )
        .route("/events", get(events))
        .fallback(crate::routes::not_found)
        .method_not_allowed_fallback(crate::routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::routes::observe,
        ))
        .with_state(state)
}

/// The key of a state API request: the path after `/state/`, as `x-poc-key` carries it
/// (form-encoded), which the application may copy as it is; owned by this instance now, and
/// its record here ([`ensure_here`]).
async fn state_key(state: &AppState, uri: &Uri) -> Result<(ClientId, u64), ApiError> {
    let raw = uri.path().strip_prefix("/state/").unwrap_or_default();
    let id = key_from_header(raw.as_bytes())?;
    let me = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let current = state.membership.current().ok_or(ApiError::NotReady)?;
    let owner = current.index(&id)?;
    if owner != me {
        return Err(misdirected(state, &id, me, owner, None));
    }
    ensure_here(state, &id, me).await?;
    Ok((id, me))
}

fn with_version(mut response: Response, version: u64) -> Response {
    response
        .headers_mut()
        .insert(STATE_VERSION_HEADER, HeaderValue::from(version));
    response
}

/// `GET /state/{key}`: the bytes, with their version in `x-poc-version`; 404 `no_state`.
async fn state_get(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let (id, _) = state_key(&state, &uri).await?;
    match state.registry.state(id.as_str()) {
        Some(KeyState {
            version,
            value: Some(value),
            ..
        }) => Ok(with_version(
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
            version,
        )),
        held => Err(ApiError::NoState {
            key: id.into_string(),
            version: held.map_or(0, |s| s.version),
        }),
    }
}

/// `If-Match: N` (or `"N"`): the version a write is conditional on; 0 for "none yet".
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadQuery("If-Match must be a state version: an integer, 0 for none".into())
        })
}

/// `PUT /state/{key}`: writes the body as the key's state.
async fn state_put(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = axum::body::to_bytes(body, MAX_STATE_BYTES)
        .await
        .map_err(|_| ApiError::StateTooLarge(MAX_STATE_BYTES))?;
    write(&state, &uri, &headers, Some(value.to_vec())).await
}

/// `DELETE /state/{key}`: deletes the key's state (a newer version that holds nothing).
async fn state_delete(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(&state, &uri, &headers, None).await
}

async fn write(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    value: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let expected = if_match(headers)?;
    let (id, me) = state_key(state, uri).await?;
    // Owned here still, checked again with no wait before the write (the view may have
    // changed while the record was being settled), and no copy given away meanwhile.
    let written = {
        let _no_copy_meanwhile = state
            .app
            .as_ref()
            .map(|app| app.ownership.lock().unwrap_or_else(|e| e.into_inner()));
        let current = state.membership.current().ok_or(ApiError::NotReady)?;
        let owner = current.index(&id)?;
        if owner != me {
            return Err(misdirected(state, &id, me, owner, None));
        }
        state
            .registry
            .write_state(id.as_str(), me, wall_us(), expected, value)
    };
    let (version, evicted) = written.map_err(|held| ApiError::VersionMismatch {
        key: id.as_str().to_owned(),
        version: held,
    })?;
    if let (Some(evicted), Some(handoffs)) = (evicted, &state.handoffs) {
        handoffs.evicted(&[evicted], "writing a key's state");
    }
    let replicated = match &state.replicas {
        Some(replicas) => replicas.replicate_acknowledged(id.as_str()).await,
        None => false,
    };
    Ok(with_version(
        Json(StateWritten {
            key: id.into_string(),
            version,
            replicated,
        })
        .into_response(),
        version,
    ))
}

/// `GET /events`: newline-delimited [`OwnershipEvent`]s: first the keys held here now (as
/// `arrived`), then each change. A reader too slow for [`crate::ownership::BUFFERED_EVENTS`]
/// events is disconnected, and gets the keys held then when it connects again.
async fn events(State(state): State<Arc<AppState>>) -> Response {
    let Some(handoffs) = state.handoffs.clone() else {
        return (StatusCode::OK, "").into_response();
    };
    let receiver = handoffs.events.subscribe();
    let me = state.identity.get();
    let current = state.membership.current();
    let held: Vec<String> = state
        .registry
        .ids()
        .into_iter()
        .filter(|id| {
            current
                .as_ref()
                .is_some_and(|c| me.is_some() && crate::handoff::owner(c, id) == me)
        })
        .collect();
    let epoch = current.map(|c| c.epoch().to_string());
    let first: Vec<OwnershipEvent> = held
        .chunks(crate::ownership::KEYS_PER_EVENT)
        .map(|keys| OwnershipEvent {
            event: OwnershipChange::Arrived,
            keys: keys.to_vec(),
            epoch: epoch.clone(),
        })
        .collect();
    let line = |e: &OwnershipEvent| {
        let mut text = serde_json::to_string(e).unwrap_or_default();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(text)
    };
    let first = futures::stream::iter(first.iter().map(line).collect::<Vec<_>>());
    let changes = futures::stream::unfold(receiver, move |mut receiver| async move {
        let event = receiver.recv().await.ok()?;
        Some((line(&event), receiver))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(first.chain(changes)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_relayed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-kept"]
        );
    }

    #[test]
    fn if_match_takes_a_version_bare_or_quoted() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        for (value, expected) in [("3", 3), ("\"7\"", 7), (" 0 ", 0)] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(value));
            assert_eq!(if_match(&h).unwrap(), Some(expected), "{value}");
        }
        for bad in ["*", "W/\"1\"", "-1", "x"] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(bad));
            assert!(if_match(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_routed_key_is_taken_once() {
        let mut h = HeaderMap::new();
        assert!(routed_key(&h).unwrap().is_none(), "not a key's request");
        h.append(KEY_HEADER, HeaderValue::from_static("room%201"));
        assert_eq!(routed_key(&h).unwrap().unwrap().as_str(), "room 1");
        h.append(KEY_HEADER, HeaderValue::from_static("other"));
        assert_eq!(routed_key(&h).unwrap_err().code(), "duplicate_client_id");
    }
}
