//! HTTP handlers. Each reads the raw query itself, so that the id is decoded by the placement
//! crate exactly once and the same way for `/where` and `/join`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, MatchedPath, Query, RawQuery, Request, State};
use axum::http::header::{CONTENT_TYPE, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poc_routing_peer::PeerAddr;
use poc_routing_placement::{
    client_id_from_query, key_from_header, ClientId, Epoch, KeyError, KeySource, Placement,
    KEY_HEADER,
};
use poc_routing_wire::{
    Discovery, HandOff, HandOffAck, InstanceRegistrations, JoinAnswer, PeerDigest, PeerTable,
    PeerView, PlacementAnswer, PreviousView, RegistrationsReport, ReplicaPage, Resync, ServedUnder,
    WhereAnswer, EPOCH_HEADER,
};
use serde::Deserialize;

use crate::config::Replication;
use crate::error::{ApiError, ErrorCode};
use crate::handoff::HandOffs;
use crate::metrics::{CodeLabel, RequestLabels};
use crate::replicas::Replicas;
use crate::wall_us;
use crate::AppState;
use poc_routing_membership::{MemberState, Refusal};

pub async fn where_(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<WhereAnswer>, ApiError> {
    let id = client_id_from_query(query.as_deref())?;
    let placement = state.membership.current().ok_or(ApiError::NotReady)?;
    let index = placement.index(&id)?;
    state.metrics.wheres.inc();
    Ok(Json(WhereAnswer {
        client_id: id.into_string(),
        index,
        hostport: placement.hostport(index),
        mode: placement.mode(),
        replicas: placement.replicas(),
        epoch: placement.epoch().to_string(),
    }))
}

/// The epoch stamped by the routing filter, if any.
pub(crate) fn routed_epoch(headers: &HeaderMap) -> Result<Option<Epoch>, ApiError> {
    match headers.get(EPOCH_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<Epoch>().ok())
            .map(Some)
            .ok_or(ApiError::BadEpoch),
    }
}

/// `GET|POST /join`: a join, or with `Upgrade: websocket` a session ([`crate::sessions`]).
pub async fn join(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let wants_session = headers.contains_key(UPGRADE);
    let (id, instance, under, placement) = admit(&state, &headers, query.as_deref()).await?;
    if wants_session {
        let upgrade = upgrade.map_err(|e| ApiError::BadUpgrade(e.body_text()))?;
        // A session opened under the previous view, for a client that moved, would be moved
        // again at once: it is refused, and the client's retry finds the current owner.
        let current = state.membership.current().ok_or(ApiError::NotReady)?;
        let owner = current.index(&id)?;
        if owner != instance {
            return Err(misdirected(&state, &id, instance, owner, None));
        }
        let permit = crate::sessions::Permit::take(&state.session_count, state.max_sessions)
            .ok_or_else(|| {
                state.metrics.sessions_refused.inc();
                ApiError::TooManySessions(state.max_sessions)
            })?;
        record(&state, &id, instance, under, &placement);
        if let Some(replicas) = &state.replicas {
            replicas.changed([id.as_str().to_owned()]);
        }
        let epoch = current.epoch().to_string();
        let sessions = state.sessions.clone();
        let metrics = state.metrics.clone();
        let client_id = id.into_string();
        return Ok(upgrade
            .read_buffer_size(crate::sessions::READ_BUFFER_BYTES)
            .max_message_size(crate::sessions::MAX_MESSAGE_BYTES)
            .max_frame_size(crate::sessions::MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| async move {
                // Held until the session ends (or dropped with this closure if the upgrade
                // never completes).
                let _permit = permit;
                metrics.sessions_open.inc();
                let end = sessions.serve(socket, client_id, instance, epoch).await;
                metrics.sessions_open.dec();
                if end == crate::sessions::SessionEnd::Moved {
                    metrics.sessions_moved.inc();
                }
            })
            .into_response());
    }
    record(&state, &id, instance, under, &placement);
    match &state.replicas {
        Some(replicas) if replicas.mode() == Replication::Sync => {
            replicas.replicate_now(id.as_str()).await
        }
        Some(replicas) => replicas.changed([id.as_str().to_owned()]),
        None => {}
    }
    Ok(Json(JoinAnswer {
        client_id: id.into_string(),
        status: "joined".into(),
        instance,
        owner: instance,
        hostport: placement.hostport(instance),
        epoch: placement.epoch().to_string(),
        served_under: under,
    })
    .into_response())
}

/// The key a join is for: the one the routing filter routed it by, which it hands over in
/// [`KEY_HEADER`] whatever the route's source (a header, a cookie, a path segment), overwriting
/// any value a client sent; without that header (a join sent to an instance directly), the
/// `client_id` query parameter.
fn join_key(headers: &HeaderMap, query: Option<&str>) -> Result<ClientId, KeyError> {
    let mut routed = headers.get_all(KEY_HEADER).iter();
    match (routed.next(), routed.next()) {
        (None, _) => client_id_from_query(query),
        (Some(value), None) => key_from_header(value.as_bytes()),
        (Some(_), Some(_)) => Err(KeyError {
            source: KeySource::Header(KEY_HEADER.into()),
            error: poc_routing_placement::IdError::Duplicate,
        }),
    }
}

/// Whether this instance serves a join of the key in `headers` or `query` ([`join_key`]),
/// routed by the epoch in `headers`: the id, this instance's index, and the view it is served
/// under.
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(ClientId, u64, ServedUnder, Arc<Placement>), ApiError> {
    let id = join_key(headers, query)?;
    let routed = routed_epoch(headers)?;
    let (instance, under, placement) = admit_key(state, &id, routed).await?;
    Ok((id, instance, under, placement))
}

/// Whether this instance serves a request for `id` routed by `routed`: this instance's index
/// and the view it is served under.
pub(crate) async fn admit_key(
    state: &AppState,
    id: &ClientId,
    routed: Option<Epoch>,
) -> Result<(u64, ServedUnder, Arc<Placement>), ApiError> {
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let mut verdict = state.membership.judge(instance, id, routed, Instant::now());
    // Routed by a view this instance has not adopted or heard of yet: look again before
    // refusing, so views that change at slightly different moments fail nobody. First one
    // round of gossip, which swaps cards with a few peers (a view most peers hold is news
    // there). Then, if it is still unknown, every peer is asked whether it holds or just
    // held it: several instances leaving at once make views that one peer holds for a few
    // milliseconds, and a proxy that fetched one routes by it. In a quiet cluster (a stale
    // or forged epoch) both find nothing and the join is refused; rounds and lookups are
    // shared, spaced and bounded ([`crate::discovery::Discovery::look_up_view`]).
    if let (Err(Refusal::UnknownEpoch { .. }), Some(discovery), Some(epoch)) =
        (&verdict, &state.discovery, routed)
    {
        if discovery.refresh().await {
            verdict = state.membership.judge(instance, id, routed, Instant::now());
        }
        if matches!(verdict, Err(Refusal::UnknownEpoch { .. }))
            && discovery.look_up_view(epoch).await
        {
            verdict = state.membership.judge(instance, id, routed, Instant::now());
        }
    }
    match verdict {
        Ok((under, placement)) => Ok((instance, under, placement)),
        Err(Refusal::NoView) => Err(ApiError::NotReady),
        Err(Refusal::BadId(e)) => Err(e.into()),
        Err(Refusal::NotOwner { owner } | Refusal::UnknownEpoch { owner }) => {
            Err(misdirected(state, id, instance, owner, routed))
        }
    }
}

/// The 421 for a join this instance does not serve, logged and counted.
pub(crate) fn misdirected(
    state: &AppState,
    id: &ClientId,
    instance: u64,
    owner: u64,
    routed: Option<Epoch>,
) -> ApiError {
    let Some(current) = state.membership.current() else {
        return ApiError::NotReady;
    };
    state.metrics.misdirected.inc();
    // Client ids are users' and sessions' ids: at debug level only.
    tracing::debug!(client_id = %id, "misdirected join refused");
    tracing::warn!(instance, owner, routed_epoch = ?routed.map(|e| e.to_string()), epoch = %current.epoch(), "misdirected join refused");
    ApiError::Misdirected {
        client_id: id.as_str().to_owned(),
        instance,
        owner,
        owner_hostport: current.hostport(owner),
        epoch: current.epoch().to_string(),
        routed_epoch: routed.map(|e| e.to_string()),
    }
}

/// Records a join served here: the registration, metrics and the log line.
pub(crate) fn record(
    state: &AppState,
    id: &ClientId,
    instance: u64,
    under: ServedUnder,
    placement: &Placement,
) {
    if under == ServedUnder::Previous {
        state.metrics.previous_epoch_joins.inc();
        // Served under the view before: the id may be owned elsewhere now.
        if let Some(handoffs) = &state.handoffs {
            handoffs.wake();
        }
    }
    let epoch = placement.epoch().to_string();
    let evicted = state
        .registry
        .record(id.as_str(), instance, &epoch, wall_us(), rand::random);
    if let Some(evicted) = evicted {
        state.metrics.registrations_evicted.inc();
        tracing::debug!(client_id = %id, evicted = %evicted, "registry full: evicted");
        tracing::warn!(
            "registry full: the least recently joined registration was evicted (REGISTRY_CAPACITY)"
        );
    }
    state.metrics.joins.inc();
    // A line per join, with the id, at debug level only: ids are users' and sessions' ids, and
    // a line per request at the default level would cost every join.
    tracing::debug!(client_id = %id, instance, epoch = %placement.epoch(), served_under = under.as_str(), "client joined");
}

/// `Query<T>` whose rejection is one of our JSON errors (400 `invalid_query`), counted like
/// every other error, instead of axum's plain-text answer.
pub struct JsonQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for JsonQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| JsonQuery(v))
            .map_err(|e| ApiError::BadQuery(e.body_text()))
    }
}

#[derive(Deserialize)]
pub struct ClientsQuery {
    limit: Option<usize>,
}

/// The most ids `/clients` lists, whatever `limit` asks for.
pub const MAX_CLIENTS_LISTED: usize = 1000;

pub async fn clients(
    State(state): State<Arc<AppState>>,
    JsonQuery(q): JsonQuery<ClientsQuery>,
) -> impl IntoResponse {
    let limit = q.limit.unwrap_or(100).min(MAX_CLIENTS_LISTED);
    let (clients, total) = state.registry.snapshot(limit);
    Json(serde_json::json!({
        "instance": state.identity.get(),
        "total": total,
        "capacity": state.registry.capacity(),
        "truncated": clients.len() < total,
        "clients": clients,
    }))
}

/// 200 while this instance is a member; 503 while it is joining or leaving, so that Envoy's
/// health check and Kubernetes' readiness probe send it nothing new then.
pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let member = state.membership.state() == MemberState::Member;
    let status = if member {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if member { "ok" } else { state.membership.state().as_str() },
        "state": state.membership.state().as_str(),
        "instance": state.identity.get(),
        "epoch": state.membership.current().map(|c| c.epoch().to_string()),
    });
    (status, Json(body))
}

/// This instance's view: the rule, the members and their epoch, its own state, the previous
/// epoch while its window lasts, and what it last saw of each peer. A proxy computes owners
/// from it without asking per request; `poc-client views` compares every instance's.
pub async fn placement(State(state): State<Arc<AppState>>) -> Json<PlacementAnswer> {
    let rule = state.rule();
    let m = &state.membership;
    let views = m.views();
    let now = Instant::now();
    let current = views.current.as_deref();
    let previous = views.previous(now).map(|(p, until)| PreviousView {
        epoch: p.epoch().to_string(),
        members: p.members().to_vec(),
        window_left_ms: until.duration_since(now).as_millis() as u64,
    });
    let peers = state
        .discovery
        .as_ref()
        .map(|d| d.peer_states())
        .unwrap_or_default()
        .iter()
        .map(|p| PeerView {
            instance: p.instance,
            hostport: rule.hostport(p.instance),
            state: p.state,
            epoch: p.epoch.map(|e| e.to_string()),
            agrees: p.epoch.is_some() && p.epoch == current.map(|c| c.epoch()),
        })
        .collect();
    Json(PlacementAnswer {
        instance: state.identity.get(),
        state: m.state(),
        discovery: state
            .discovery
            .as_ref()
            .map_or(Discovery::Off, |_| Discovery::Dns),
        epoch: current.map(|c| c.epoch().to_string()),
        members: current.map(|c| c.members().to_vec()).unwrap_or_default(),
        addresses: m
            .addresses_of(current.map(|c| c.members()).unwrap_or_default())
            .into_iter()
            .map(|(index, addr)| (index, addr.to_string()))
            .collect(),
        replicas: current.map_or(0, |c| c.replicas()),
        rule: rule.spec().clone(),
        expected_replicas: m.expected_replicas,
        replicas_mismatch: m.replicas_mismatch(),
        since_change_ms: m
            .changed_at()
            .map(|t| now.duration_since(t).as_millis() as u64),
        previous,
        peers,
        handoff_pending: state.handoffs.as_ref().map_or(0, |h| h.pending()),
        replicas_held: state.replicas.as_ref().map_or(0, |r| r.held()),
        replication_pending: state.replicas.as_ref().map_or(0, |r| r.pending()),
        credential: state.peer_credentials.as_ref().map(|c| c.fingerprints()),
    })
}

/// The hand-off's endpoints need discovery, as the gossip's do.
fn handoffs_of(state: &AppState, request: &str) -> Result<Arc<HandOffs>, ApiError> {
    state
        .handoffs
        .clone()
        .ok_or_else(|| ApiError::NotFound(format!("{request} (membership is fixed: no hand-off)")))
}

/// `POST /peer/handoff`: registrations a previous owner hands to this instance. Only from a
/// current or recent member (403 `not_a_member` otherwise); merged, then acknowledged.
pub async fn peer_handoff(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(sender)): ConnectInfo<PeerAddr>,
    body: Result<Json<HandOff>, JsonRejection>,
) -> Result<Json<HandOffAck>, ApiError> {
    let handoffs = handoffs_of(&state, "POST /peer/handoff")?;
    let handoff = body
        .map(|Json(h)| h)
        .map_err(|e| ApiError::BadBody(e.body_text()))?;
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let ids: Vec<String> = handoff
        .registrations
        .iter()
        .map(|r| r.client_id.clone())
        .collect();
    let accepted = handoffs.receive(handoff, sender.ip())?;
    if let Some(replicas) = &state.replicas {
        // Their new owner gives them a replica on its backup.
        replicas.changed(ids);
    }
    Ok(Json(HandOffAck { instance, accepted }))
}

/// The replicas' endpoints need discovery and replication.
fn replicas_of(state: &AppState, request: &str) -> Result<Arc<Replicas>, ApiError> {
    state.replicas.clone().ok_or_else(|| {
        ApiError::NotFound(format!(
            "{request} (no replicas here: REPLICATION=off, or a fixed member set)"
        ))
    })
}

/// `POST /peer/replicate`: replicas of registrations their owner holds, for this instance
/// as their backup. Admitted as a hand-off is; merged, then acknowledged.
pub async fn peer_replicate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(sender)): ConnectInfo<PeerAddr>,
    body: Result<Json<HandOff>, JsonRejection>,
) -> Result<Json<HandOffAck>, ApiError> {
    let replicas = replicas_of(&state, "POST /peer/replicate")?;
    let batch = body
        .map(|Json(h)| h)
        .map_err(|e| ApiError::BadBody(e.body_text()))?;
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let accepted = replicas.receive(batch, sender.ip())?;
    Ok(Json(HandOffAck { instance, accepted }))
}

/// `POST /peer/resync`: the sender started again; the replicas it backs up go to it again.
pub async fn peer_resync(
    State(state): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(sender)): ConnectInfo<PeerAddr>,
    body: Result<Json<Resync>, JsonRejection>,
) -> Result<Json<HandOffAck>, ApiError> {
    let replicas = replicas_of(&state, "POST /peer/resync")?;
    let Json(resync) = body.map_err(|e| ApiError::BadBody(e.body_text()))?;
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let accepted = replicas.resync(resync.from, sender.ip())?;
    Ok(Json(HandOffAck { instance, accepted }))
}

/// `GET /peer/replicas`'s query.
#[derive(Debug, Deserialize)]
pub struct ReplicasQuery {
    origin: u64,
    after: Option<String>,
}

/// `GET /peer/replicas?origin=N[&after=ID]`: the replicas instance N sent here, a page at a
/// time (what a restarted instance reads back).
pub async fn peer_replicas(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ReplicasQuery>, QueryRejection>,
) -> Result<Json<ReplicaPage>, ApiError> {
    let replicas = replicas_of(&state, "GET /peer/replicas")?;
    let Query(q) = query.map_err(|e| ApiError::BadBody(e.body_text()))?;
    Ok(Json(replicas.page(q.origin, q.after.as_deref())?))
}

/// This instance's registered ids (`GET /peer/registrations`, and its own entry of
/// `/registrations`).
fn own_registrations(state: &AppState) -> Result<InstanceRegistrations, ApiError> {
    Ok(InstanceRegistrations {
        instance: state.identity.get().ok_or(ApiError::IdentityUnknown)?,
        epoch: state.membership.current().map(|c| c.epoch().to_string()),
        pending: state.handoffs.as_ref().map_or(0, |h| h.pending()),
        ids: state.registry.ids(),
        replicas: state.replicas.as_ref().map(|r| r.ids()),
        replication_pending: state.replicas.as_ref().map_or(0, |r| r.pending()),
        error: None,
    })
}

/// `GET /peer/registrations`: every id registered here. Peer-only.
pub async fn peer_registrations(
    State(state): State<Arc<AppState>>,
) -> Result<Json<InstanceRegistrations>, ApiError> {
    Ok(Json(own_registrations(&state)?))
}

/// `GET /registrations` (operator listener): every id registered on every instance, gathered
/// by this one, for `poc-client audit`. With a fixed member set, this instance's only.
pub async fn registrations(
    State(state): State<Arc<AppState>>,
) -> Result<Json<RegistrationsReport>, ApiError> {
    let own = own_registrations(&state)?;
    let Some(handoffs) = &state.handoffs else {
        return Ok(Json(RegistrationsReport {
            via: Some(own.instance),
            epoch: own.epoch.clone(),
            instances: vec![own],
        }));
    };
    Ok(Json(crate::handoff::gather(handoffs, own).await))
}

/// The membership gossip's endpoints need discovery; with a fixed member set they do not exist.
fn gossip_of(
    state: &AppState,
    request: &str,
) -> Result<Arc<crate::discovery::Discovery>, ApiError> {
    state
        .discovery
        .clone()
        .ok_or_else(|| ApiError::NotFound(format!("{request} (membership is fixed: no gossip)")))
}

fn table_from(body: Result<Json<PeerTable>, JsonRejection>) -> Result<PeerTable, ApiError> {
    body.map(|Json(t)| t)
        .map_err(|e| ApiError::BadBody(e.body_text()))
}

/// `GET /peer/digest`, a peer's probe: the digest of the cards held here.
pub async fn peer_digest(State(state): State<Arc<AppState>>) -> Result<Json<PeerDigest>, ApiError> {
    Ok(Json(gossip_of(&state, "GET /peer/digest")?.digest()))
}

/// `GET /peer/view?epoch=E`: the view with epoch `E` if this instance, a member or leaving,
/// holds it or still accepts it, with how long it will (`null` if not): what a peer asks when a join was routed
/// to it by a view it never held ([`crate::discovery::Discovery::look_up_view`]).
pub async fn peer_view(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Json<Option<PreviousView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let epoch: Epoch = query
        .epoch
        .parse()
        .map_err(|_| ApiError::BadQuery("epoch must be 16 lowercase hex digits".into()))?;
    // Only a member's or a leaving instance's views count, as in gossip: a joining instance's
    // view was never routed by.
    if !matches!(
        state.membership.state(),
        MemberState::Member | MemberState::Leaving
    ) {
        return Ok(Json(None));
    }
    let held = state.membership.held_view(epoch, Instant::now());
    Ok(Json(held.map(|(view, left)| PreviousView {
        epoch: view.epoch().to_string(),
        members: view.members().to_vec(),
        window_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    })))
}

/// The query of `GET /peer/view`.
#[derive(Debug, Deserialize)]
pub struct ViewQuery {
    epoch: String,
}

/// `POST /peer/sync`: takes a peer's cards, answers with every card held here.
pub async fn peer_sync(
    State(state): State<Arc<AppState>>,
    body: Result<Json<PeerTable>, JsonRejection>,
) -> Result<Json<PeerTable>, ApiError> {
    let discovery = gossip_of(&state, "POST /peer/sync")?;
    Ok(Json(discovery.on_sync(table_from(body)?)))
}

/// `POST /peer/push`: takes a peer's changed card.
pub async fn peer_push(
    State(state): State<Arc<AppState>>,
    body: Result<Json<PeerTable>, JsonRejection>,
) -> Result<Json<PeerDigest>, ApiError> {
    let discovery = gossip_of(&state, "POST /peer/push")?;
    Ok(Json(discovery.on_push(table_from(body)?)))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Times every request and counts error responses by their machine code.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = crate::metrics::method_label(request.method());
    let response = next.run(request).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state
            .metrics
            .errors
            .get_or_create(&CodeLabel {
                code: (*code).to_owned(),
            })
            .inc();
    }
    state
        .metrics
        .durations
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
