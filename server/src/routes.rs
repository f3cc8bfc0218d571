//! HTTP handlers. Each reads the raw query itself, so that the id is decoded by the placement
//! crate exactly once and the same way for `/where` and `/join`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Query, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poc_routing_placement::{client_id_from_query, Epoch, PlacementSpec};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::membership::{Refusal, State as MemberState, Under};
use crate::metrics::{CodeLabel, RequestLabels};
use crate::AppState;

/// The header in which Envoy's routing filter stamps the epoch it routed a join by.
pub const EPOCH_HEADER: &str = "x-poc-epoch";

#[derive(Serialize)]
pub struct WhereAnswer {
    pub client_id: String,
    pub index: u64,
    pub hostport: String,
    pub mode: &'static str,
    pub replicas: u32,
    pub epoch: String,
}

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
        mode: placement.mode().as_str(),
        replicas: placement.replicas(),
        epoch: placement.epoch().to_string(),
    }))
}

#[derive(Serialize)]
pub struct JoinAnswer {
    pub client_id: String,
    pub status: &'static str,
    pub instance: u64,
    pub owner: u64,
    pub hostport: String,
    /// The epoch the join was served under.
    pub epoch: String,
    /// `current`, or `previous` inside the transition window after a member change.
    pub served_under: &'static str,
}

/// The epoch stamped by the routing filter, if any.
fn routed_epoch(headers: &HeaderMap) -> Result<Option<Epoch>, ApiError> {
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

pub async fn join(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<JoinAnswer>, ApiError> {
    let id = client_id_from_query(query.as_deref())?;
    let routed = routed_epoch(&headers)?;
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let mut verdict = state
        .membership
        .judge(instance, &id, routed, Instant::now());
    if let (Err(Refusal::UnknownEpoch { .. }), Some(discovery)) = (&verdict, &state.discovery) {
        // Routed by a view this instance has not adopted yet: look again before refusing, so
        // views that change at slightly different moments fail nobody.
        discovery.refresh().await;
        verdict = state
            .membership
            .judge(instance, &id, routed, Instant::now());
    }
    let (under, placement) = match verdict {
        Ok(served) => served,
        Err(Refusal::NoView) => return Err(ApiError::NotReady),
        Err(Refusal::BadId(e)) => return Err(e.into()),
        Err(Refusal::NotOwner { owner } | Refusal::UnknownEpoch { owner }) => {
            let current = state.membership.current().ok_or(ApiError::NotReady)?;
            state.metrics.misdirected.inc();
            tracing::warn!(client_id = %id, instance, owner, routed_epoch = ?routed.map(|e| e.to_string()), epoch = %current.epoch(), "misdirected join refused");
            return Err(ApiError::Misdirected {
                client_id: id.into_string(),
                instance,
                owner,
                owner_hostport: current.hostport(owner),
                epoch: current.epoch().to_string(),
                routed_epoch: routed.map(|e| e.to_string()),
            });
        }
    };
    if under == Under::Previous {
        state.metrics.previous_epoch_joins.inc();
    }
    state.registry.record(id.as_str());
    state.metrics.joins.inc();
    let served_under = match under {
        Under::Current => "current",
        Under::Previous => "previous",
    };
    tracing::info!(client_id = %id, instance, owner = instance, epoch = %placement.epoch(), served_under, "client joined");
    Ok(Json(JoinAnswer {
        client_id: id.into_string(),
        status: "joined",
        instance,
        owner: instance,
        hostport: placement.hostport(instance),
        epoch: placement.epoch().to_string(),
        served_under,
    }))
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

/// This instance's view, as `GET /placement` answers it.
///
/// Field order is part of the format: the top-level `epoch` and `members` come before the
/// nested `previous` and `peers`, so a reader that takes the first `"epoch"` (the Lua filter)
/// takes the top-level one.
#[derive(Serialize)]
pub struct PlacementAnswer {
    pub instance: Option<u64>,
    pub state: &'static str,
    /// `dns` or `off`.
    pub discovery: &'static str,
    /// `null` while joining.
    pub epoch: Option<String>,
    pub members: Vec<u64>,
    /// Where each member was found (`ip:port`, by index); a member that is not found (crashed,
    /// restarting) is missing. The proxy dials these addresses; they are not part of the epoch.
    pub addresses: BTreeMap<u64, String>,
    pub replicas: u32,
    /// The rule: `mode`, `prefix`, `suffix`, `port`, `base`.
    #[serde(flatten)]
    pub rule: PlacementSpec,
    pub expected_replicas: Option<u32>,
    pub replicas_mismatch: bool,
    pub since_change_ms: Option<u64>,
    pub previous: Option<PreviousView>,
    pub peers: Vec<PeerView>,
}

/// The previous view, while joins routed by it are still served.
#[derive(Serialize)]
pub struct PreviousView {
    pub epoch: String,
    pub members: Vec<u64>,
    pub window_left_ms: u64,
}

/// What this instance last learnt from one peer's `/placement`.
#[derive(Serialize)]
pub struct PeerView {
    pub instance: u64,
    pub hostport: String,
    /// `null` when the peer did not answer.
    pub state: Option<&'static str>,
    pub epoch: Option<String>,
    /// Whether the peer holds the same epoch as this instance.
    pub agrees: bool,
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
    let peers = m
        .peers()
        .iter()
        .map(|p| PeerView {
            instance: p.instance,
            hostport: rule.hostport(p.instance),
            state: p.state.map(MemberState::as_str),
            epoch: p.epoch.map(|e| e.to_string()),
            agrees: p.epoch.is_some() && p.epoch == current.map(|c| c.epoch()),
        })
        .collect();
    Json(PlacementAnswer {
        instance: state.identity.get(),
        state: m.state().as_str(),
        discovery: state.discovery.as_ref().map_or("off", |_| "dns"),
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
    })
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
    let method = request.method().to_string();
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
