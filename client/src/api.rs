//! Calls to `/where` and `/join`, with failures sorted into kinds a report can count.

use std::time::Duration;

use poc_routing_placement::{client_id_query, KeySource};
use poc_routing_wire::{ErrorBody, JoinAnswer, Misdirected, WhereAnswer};
use serde::de::DeserializeOwned;

/// What `/join` answered: joined, or refused by an instance that is not the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// 200: joined on its owner.
    Joined(JoinAnswer),
    /// 421: the instance that answered is not the owner, and says which is.
    Misdirected(Misdirected),
}

/// A call that did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer in time")]
    Timeout { url: String },
    #[error("HTTP {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer { url: String, reason: String },
}

impl CallError {
    /// A short kind for reports, such as `http_503_owner_unavailable` or `unreachable`.
    pub fn kind(&self) -> String {
        match self {
            CallError::Unreachable { .. } => "unreachable".into(),
            CallError::Timeout { .. } => "timeout".into(),
            CallError::Status { status, code, .. } => format!("http_{status}_{code}"),
            CallError::BadAnswer { .. } => "bad_answer".into(),
        }
    }
}

/// The innermost cause of an error: "Connection refused" rather than a chain of wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A client of one base URL (Envoy's listener, or a server directly).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// The operator's bearer token, sent with every request when set (the operator's
    /// endpoints need it; the public API does not).
    token: Option<String>,
    /// The affinity route joins and sessions go to, and where it carries the id.
    route: JoinRoute,
}

/// An affinity route as a client sees it: the path to send to (holding `{key}` for a path
/// source) and the key source its requests carry the id in. `/join` by `client_id` unless set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRoute {
    pub path: String,
    pub source: KeySource,
}

impl Default for JoinRoute {
    fn default() -> Self {
        Self {
            path: "/join".into(),
            source: KeySource::default(),
        }
    }
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(256)
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            route: JoinRoute::default(),
        }
    }

    /// This client, sending joins and sessions to `route` with the id where it says.
    pub fn with_route(mut self, route: JoinRoute) -> Self {
        self.route = route;
        self
    }

    pub fn route(&self) -> &JoinRoute {
        &self.route
    }

    /// The URL of a join of `id` on this client's route, and the header that carries the id
    /// (a header or cookie source).
    pub fn join_request(&self, id: &str) -> Result<(String, Option<(String, String)>), CallError> {
        let made = self
            .route
            .source
            .request(&self.route.path, id)
            .map_err(|reason| CallError::BadAnswer {
                url: format!("{}{}", self.base, self.route.path),
                reason: format!("cannot send this id in {}: {reason}", self.route.source),
            })?;
        Ok((format!("{}{}", self.base, made.path), made.header))
    }

    /// This client, sending `token` as `Authorization: Bearer` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The HTTP client, for calls of an application behind the instances (app mode).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path?client_id=<id, form-urlencoded>`.
    pub fn url_for(&self, path: &str, id: &str) -> String {
        format!("{}{path}?{}", self.base, client_id_query(id))
    }

    async fn get_json(
        &self,
        url: String,
        post: bool,
    ) -> Result<(u16, serde_json::Value), CallError> {
        self.send_json(url, post, None).await
    }

    async fn send_json(
        &self,
        url: String,
        post: bool,
        header: Option<(String, String)>,
    ) -> Result<(u16, serde_json::Value), CallError> {
        let mut request = if post {
            self.http.post(&url)
        } else {
            self.http.get(&url)
        };
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| send_error(&url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| CallError::BadAnswer {
            url: url.clone(),
            reason: root_cause(&e),
        })?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| CallError::BadAnswer {
                url: url.clone(),
                reason: format!("HTTP {status} with a body that is not JSON: {text:.120}"),
            })?;
        Ok((status, body))
    }

    fn status_error(status: u16, body: serde_json::Value) -> CallError {
        let body: Option<ErrorBody> = serde_json::from_value(body).ok();
        CallError::Status {
            status,
            code: body.as_ref().map_or("unknown", |b| &b.error).to_owned(),
            message: body.map(|b| b.message).unwrap_or_default(),
        }
    }

    /// `body` as a `T` of the wire contract, or why it is not one.
    fn typed<T: DeserializeOwned>(
        url: &str,
        status: u16,
        body: serde_json::Value,
    ) -> Result<T, CallError> {
        serde_json::from_value(body).map_err(|e| CallError::BadAnswer {
            url: url.to_owned(),
            reason: format!("HTTP {status}: {e}"),
        })
    }

    /// Asks which instance owns `id`.
    pub async fn where_(&self, id: &str) -> Result<WhereAnswer, CallError> {
        let url = self.url_for("/where", id);
        let (status, body) = self.get_json(url.clone(), false).await?;
        if status != 200 {
            return Err(Self::status_error(status, body));
        }
        Self::typed(&url, status, body)
    }

    /// Joins `id` on this client's route. A 421 is an answer (the instance said who owns it),
    /// not an error.
    pub async fn join(&self, id: &str) -> Result<Join, CallError> {
        let (url, header) = self.join_request(id)?;
        let (status, body) = self.send_json(url.clone(), true, header).await?;
        match status {
            200 => Ok(Join::Joined(Self::typed(&url, status, body)?)),
            421 => {
                let refusal: ErrorBody = Self::typed(&url, status, body)?;
                refusal
                    .misdirected()
                    .map(Join::Misdirected)
                    .ok_or_else(|| CallError::BadAnswer {
                        url,
                        reason: format!(
                            "HTTP 421 {} without the misdirected fields",
                            refusal.error
                        ),
                    })
            }
            _ => Err(Self::status_error(status, body)),
        }
    }

    /// One join of `id` on this client's route, answered within `timeout`: the status and the
    /// body as they came, whatever they are (`poc-client join-expect` judges them).
    pub async fn join_text(&self, id: &str, timeout: Duration) -> Result<(u16, String), CallError> {
        let (url, header) = self.join_request(id)?;
        let mut request = self.http.post(&url).timeout(timeout);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| send_error(&url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            if e.is_timeout() {
                CallError::Timeout { url: url.clone() }
            } else {
                CallError::BadAnswer {
                    url: url.clone(),
                    reason: root_cause(&e),
                }
            }
        })?;
        Ok((status, text))
    }

    /// A GET of `path` (no query) that must answer 200 with a `T` of the wire contract.
    pub async fn get_typed<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.get_json(url.clone(), false).await?;
        if status != 200 {
            return Err(Self::status_error(status, body));
        }
        Self::typed(&url, status, body)
    }

    /// The raw JSON answer of a GET of `path` (no query).
    pub async fn get_path(&self, path: &str) -> Result<(u16, serde_json::Value), CallError> {
        self.get_json(format!("{}{path}", self.base), false).await
    }

    /// The raw JSON answer of `path` for `id`, for the `where`/`join` commands that print it.
    pub async fn get_raw(
        &self,
        path: &str,
        id: &str,
    ) -> Result<(u16, serde_json::Value), CallError> {
        if path == "/join" {
            let (url, header) = self.join_request(id)?;
            return self.send_json(url, true, header).await;
        }
        self.get_json(self.url_for(path, id), false).await
    }
}

/// Where the operator's token comes from, in order: `POC_OPERATOR_TOKEN` (the token itself),
/// the file `file` (`--operator-token-file` or `POC_OPERATOR_TOKEN_FILE`), or
/// `.secrets/operator/token` in the current directory if it exists (where `make credential`
/// writes it). `None`: no token anywhere; the operator's endpoints will answer 401.
pub fn operator_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    if let Some(token) = std::env::var("POC_OPERATOR_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(token.trim().to_owned()));
    }
    let default = std::path::Path::new(DEFAULT_TOKEN_FILE);
    let file = match file {
        Some(f) => f,
        None if default.exists() => default,
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("operator token file {}: {e}", file.display()))?;
    poc_routing_wire::newest_operator_token(&text)
        .map(|t| Some(t.to_owned()))
        .ok_or_else(|| format!("operator token file {}: no token in it", file.display()))
}

/// Where `make credential` writes the operator's token, relative to the repository.
pub const DEFAULT_TOKEN_FILE: &str = ".secrets/operator/token";

/// Why a request got no answer: it timed out, or the host could not be reached.
fn send_error(url: &str, e: &reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout {
            url: url.to_owned(),
        }
    } else {
        CallError::Unreachable {
            url: url.to_owned(),
            reason: root_cause(e),
        }
    }
}
