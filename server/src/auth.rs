//! Who may ask what.
//!
//! - The **public** endpoints (`/join`, `/where`, `/health`) answer anyone: Envoy sends them
//!   clients' requests, and a join not owned here is refused by the owner check anyway.
//! - The **operator's** endpoints (`/registrations`, `/clients`, `/placement`, `/metrics`) list
//!   client ids or describe the cluster: they need `Authorization: Bearer <token>` with a
//!   token of `OPERATOR_TOKEN_FILE` ([`require_operator`]), on whichever listener serves them
//!   (the instance's own port, or Envoy's operator listener, which passes the header on).
//! - The **peer** endpoints (`/peer/...`) are on the peer listener only, behind mutual TLS
//!   ([`poc_routing_peer::TlsListener`]): a connection without the cluster's credential never
//!   reaches HTTP.
//!
//! Both credentials are read again every [`RELOAD_EVERY`], so a rotation needs no restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use poc_routing_peer::operator::Tokens;
use poc_routing_peer::{CredentialError, Credentials};

use crate::error::ApiError;
use crate::AppState;

/// How often the credential files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The operator's tokens in force.
pub struct Operator {
    path: PathBuf,
    tokens: RwLock<Tokens>,
}

impl Operator {
    pub fn load(path: PathBuf) -> Result<Self, CredentialError> {
        let tokens = Tokens::load(&path)?;
        Ok(Self {
            path,
            tokens: RwLock::new(tokens),
        })
    }

    /// Whether an `Authorization` header's value carries an accepted token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .accepts(authorization)
    }

    /// How many tokens are accepted now.
    pub fn accepted(&self) -> usize {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Reads the file again; returns whether the tokens changed.
    pub fn reload(&self) -> Result<bool, CredentialError> {
        let new = Tokens::load(&self.path)?;
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let changed = *tokens != new;
        *tokens = new;
        Ok(changed)
    }
}

/// Re-reads both credentials every [`RELOAD_EVERY`]; logs changes, and failures once (what is
/// in force stays).
pub async fn watch(operator: Arc<Operator>, peer: Option<Arc<Credentials>>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let mut errors = Vec::new();
        match operator.reload() {
            Ok(true) => tracing::info!(accepted = operator.accepted(), "operator tokens changed"),
            Ok(false) => {}
            Err(e) => errors.push(format!("OPERATOR_TOKEN_FILE {e}")),
        }
        if let Some(peer) = &peer {
            match peer.reload() {
                Ok(true) => {
                    let f = peer.fingerprints();
                    tracing::info!(primary = %f.primary, accepted = ?f.accepted, "peer credential changed; new connections use it");
                }
                Ok(false) => {}
                Err(e) => errors.push(format!("PEER_CREDENTIAL_DIR {e}")),
            }
        }
        if errors.is_empty() {
            failing = false;
        } else if !failing {
            failing = true;
            tracing::error!(errors = ?errors, "a credential could not be read again; the one in force stays");
        }
    }
}

/// The operator's endpoints: refused with 401 `unauthorized` without an accepted token.
pub async fn require_operator(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if state.operator.accepts(authorization) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}
