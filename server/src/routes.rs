//! HTTP handlers. Each reads the raw query itself, so that the id is decoded by the placement
//! crate exactly once and the same way for `/where` and `/join`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Query, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poc_routing_placement::client_id_from_query;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::metrics::{CodeLabel, RequestLabels};
use crate::AppState;

#[derive(Serialize)]
pub struct WhereAnswer {
    pub client_id: String,
    pub index: u64,
    pub hostport: String,
    pub mode: &'static str,
    pub replicas: u32,
}

pub async fn where_(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<WhereAnswer>, ApiError> {
    let id = client_id_from_query(query.as_deref())?;
    let placement = &state.placement;
    let index = placement.index(&id)?;
    state.metrics.wheres.inc();
    Ok(Json(WhereAnswer {
        client_id: id.into_string(),
        index,
        hostport: placement.hostport(index),
        mode: placement.mode().as_str(),
        replicas: placement.replicas(),
    }))
}

#[derive(Serialize)]
pub struct JoinAnswer {
    pub client_id: String,
    pub status: &'static str,
    pub instance: u64,
    pub owner: u64,
    pub hostport: String,
}

pub async fn join(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<JoinAnswer>, ApiError> {
    let id = client_id_from_query(query.as_deref())?;
    let owner = state.placement.index(&id)?;
    let instance = state.identity.get().ok_or(ApiError::IdentityUnknown)?;
    let hostport = state.placement.hostport(owner);
    if owner != instance {
        state.metrics.misdirected.inc();
        tracing::warn!(client_id = %id, instance, owner, "misdirected join refused");
        return Err(ApiError::Misdirected {
            client_id: id.into_string(),
            instance,
            owner,
            owner_hostport: hostport,
        });
    }
    state.registry.record(id.as_str());
    state.metrics.joins.inc();
    tracing::info!(client_id = %id, instance, owner, "client joined");
    Ok(Json(JoinAnswer {
        client_id: id.into_string(),
        status: "joined",
        instance,
        owner,
        hostport,
    }))
}

#[derive(Deserialize)]
pub struct ClientsQuery {
    limit: Option<usize>,
}

/// The most ids `/clients` lists, whatever `limit` asks for.
pub const MAX_CLIENTS_LISTED: usize = 1000;

pub async fn clients(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ClientsQuery>,
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

pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "instance": state.identity.get() }))
}

/// The placement rule itself, so that a proxy can compute owners without asking per request.
pub async fn placement(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let p = &state.placement;
    Json(serde_json::json!({
        "mode": p.mode().as_str(),
        "replicas": p.replicas(),
        "base": p.base(),
        "prefix": p.prefix(),
        "suffix": p.suffix(),
        "port": p.port(),
    }))
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
