//! The API's errors and the one place where they become HTTP responses.
//!
//! Every error body is JSON: `{"error": <machine code>, "message": <human text>, ...}`. The code
//! is also attached to the response as an extension, so the metrics layer can count errors by
//! code without parsing bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poc_routing_placement::IdError;
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    BadClientId(#[from] IdError),
    /// Envoy sent this request to an instance that does not own the id: a routing bug, a stale
    /// replica count, or a request that bypassed the proxy. Refused so it is never served twice.
    #[error("client {client_id:?} is owned by instance {owner} ({owner_hostport}), not by instance {instance}")]
    Misdirected {
        client_id: String,
        instance: u64,
        owner: u64,
        owner_hostport: String,
    },
    #[error("this instance does not know its own index yet; set INSTANCE_INDEX or name the host <SERVICE_PREFIX>-<n>")]
    IdentityUnknown,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
}

/// The machine code of an error response, stored in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadClientId(_) => StatusCode::BAD_REQUEST,
            ApiError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::IdentityUnknown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadClientId(e) => e.code(),
            ApiError::Misdirected { .. } => "misdirected",
            ApiError::IdentityUnknown => "identity_unknown",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let ApiError::Misdirected {
            client_id,
            instance,
            owner,
            owner_hostport,
        } = &self
        {
            body["client_id"] = json!(client_id);
            body["instance"] = json!(instance);
            body["owner"] = json!(owner);
            body["owner_hostport"] = json!(owner_hostport);
        }
        let mut response = (self.status(), Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
