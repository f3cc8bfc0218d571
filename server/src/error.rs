//! The API's errors and the one place where they become HTTP responses.
//!
//! Every error body is JSON: `{"error": <machine code>, "message": <human text>, ...}`. The code
//! is also attached to the response as an extension, so the metrics layer can count errors by
//! code without parsing bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poc_routing_placement::{IdError, KeyError};
use poc_routing_wire::{ErrorBody, Misdirected};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    BadClientId(#[from] IdError),
    /// No usable key where the request carries it (the message names the source).
    #[error(transparent)]
    BadKey(#[from] KeyError),
    /// Envoy sent this request to an instance that does not own the id under the epoch it was
    /// routed by (or by an epoch this instance does not hold): a routing bug, a view that is too
    /// old, or a request that bypassed the proxy. Refused so it is never served twice.
    #[error("client {client_id:?} is owned by instance {owner} ({owner_hostport}) under epoch {epoch}, not by instance {instance}{}", routed_epoch.as_ref().map(|e| format!(" (the request was routed by epoch {e})")).unwrap_or_default())]
    Misdirected {
        client_id: String,
        instance: u64,
        owner: u64,
        owner_hostport: String,
        epoch: String,
        routed_epoch: Option<String>,
    },
    #[error("this instance does not know the member list yet (it is joining); try again shortly")]
    NotReady,
    #[error("the x-poc-epoch header must be 16 lowercase hex digits")]
    BadEpoch,
    #[error("this instance does not know its own index yet; set INSTANCE_INDEX or name the host <SERVICE_PREFIX>-<n>")]
    IdentityUnknown,
    /// A query string that does not fit the endpoint (axum's own words in the message).
    #[error("{0}")]
    BadQuery(String),
    #[error("no route for {0}")]
    NotFound(String),
    /// A request body that is not what the endpoint reads (serde's words in the message).
    #[error("{0}")]
    BadBody(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// `Upgrade` on `/join` that is not a WebSocket handshake axum accepts (its words).
    #[error("not a WebSocket upgrade this server accepts: {0}")]
    BadUpgrade(String),
    /// A peer-only request from an instance that is neither a member nor a recent one.
    #[error("instance {0} is not a current or recent member of this instance's view")]
    NotAMember(u64),
    /// A hand-off that names a sender other than the peer that sent it.
    #[error("the hand-off names instance {from} as its sender, but came from {addr}, where instance {from} is not")]
    NotTheSender { from: u64, addr: String },
    /// An operator endpoint without an accepted bearer token.
    #[error("this endpoint needs the operator's token: Authorization: Bearer <token> (OPERATOR_TOKEN_FILE)")]
    Unauthorized,
    /// A WebSocket session past `MAX_SESSIONS`.
    #[error("this instance holds {0} sessions, its limit (MAX_SESSIONS); try again later")]
    TooManySessions(usize),
    /// App mode: the application could not be reached, or broke the connection.
    #[error("the application at {app} (APP_URL) did not answer: {why}")]
    AppUnavailable { app: String, why: String },
    /// App mode: the application did not answer within `APP_TIMEOUT_MS`.
    #[error(
        "the application at {app} (APP_URL) did not answer within {after_ms} ms (APP_TIMEOUT_MS)"
    )]
    AppTimeout { app: String, after_ms: u64 },
    /// App mode: a request the application cannot be given now, because the key's state is
    /// not here yet (its previous owner still holds it, or this instance is recovering its
    /// records after a restart). Nothing was forwarded; a retry is safe.
    #[error("the state of this key is not here yet: {0}; try again shortly")]
    StateUnavailable(String),
    /// The state API: a write whose `If-Match` version is not the one held.
    #[error("the state of {key:?} is at version {version}, not the version the write was conditional on (If-Match)")]
    VersionMismatch { key: String, version: u64 },
    /// The state API: no state held for the key (never written, or deleted).
    #[error("no state is held for {key:?}")]
    NoState { key: String, version: u64 },
    /// The state API: a value past [`poc_routing_wire::MAX_STATE_BYTES`].
    #[error("a key's state holds at most {0} bytes")]
    StateTooLarge(usize),
    /// A peer asked for the record of a key this instance still owns under its own view.
    #[error("instance {0} still owns this key under its current view; ask again once it holds the new one")]
    StillOwner(u64),
    /// A peer asked for the record of a key that a third instance owns under this one's view.
    #[error("instance {from} asked for a key that instance {owner} owns under this instance's view; ask again once the views agree")]
    NotYourKey { from: u64, owner: u64 },
}

/// The machine code of an error response, stored in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadClientId(_) | ApiError::BadKey(_) => StatusCode::BAD_REQUEST,
            ApiError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::IdentityUnknown | ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadEpoch | ApiError::BadQuery(_) | ApiError::BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAMember(_) | ApiError::NotTheSender { .. } => StatusCode::FORBIDDEN,
            ApiError::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManySessions(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AppUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::AppTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::NoState { .. } => StatusCode::NOT_FOUND,
            ApiError::StateTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::StillOwner(_) | ApiError::NotYourKey { .. } => StatusCode::CONFLICT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadClientId(e) => e.code(),
            ApiError::BadKey(e) => e.code(),
            ApiError::Misdirected { .. } => "misdirected",
            ApiError::IdentityUnknown => "identity_unknown",
            ApiError::NotReady => "not_ready",
            ApiError::BadEpoch => "invalid_epoch",
            ApiError::BadQuery(_) => "invalid_query",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadBody(_) => "invalid_body",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NotAMember(_) => "not_a_member",
            ApiError::NotTheSender { .. } => "not_the_sender",
            ApiError::BadUpgrade(_) => "invalid_upgrade",
            ApiError::Unauthorized => "unauthorized",
            ApiError::TooManySessions(_) => "too_many_sessions",
            ApiError::AppUnavailable { .. } => "app_unavailable",
            ApiError::AppTimeout { .. } => "app_timeout",
            ApiError::StateUnavailable(_) => "state_unavailable",
            ApiError::VersionMismatch { .. } => "version_mismatch",
            ApiError::NoState { .. } => "no_state",
            ApiError::StateTooLarge(_) => "state_too_large",
            ApiError::StillOwner(_) => "still_owner",
            ApiError::NotYourKey { .. } => "not_your_key",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut body = ErrorBody::new(code, self.to_string());
        if let ApiError::BadKey(e) = &self {
            body.details
                .insert("source".into(), e.source.to_string().into());
        }
        if let ApiError::Misdirected {
            client_id,
            instance,
            owner,
            owner_hostport,
            epoch,
            routed_epoch,
        } = &self
        {
            body = body.with(&Misdirected {
                client_id: client_id.clone(),
                instance: *instance,
                owner: *owner,
                owner_hostport: owner_hostport.clone(),
                epoch: epoch.clone(),
                routed_epoch: routed_epoch.clone(),
            });
        }
        match &self {
            ApiError::AppUnavailable { app, .. } | ApiError::AppTimeout { app, .. } => {
                body.details.insert("app".into(), app.clone().into());
            }
            ApiError::VersionMismatch { version, .. } | ApiError::NoState { version, .. } => {
                body.details.insert("version".into(), (*version).into());
            }
            _ => {}
        }
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::Unauthorized = self {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
