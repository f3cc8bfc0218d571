//! Calls to `/where` and `/join`, with failures sorted into kinds a report can count.

use std::time::Duration;

use poc_routing_placement::client_id_query;
use serde::Deserialize;

/// The answer of `/where`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Where {
    pub client_id: String,
    pub index: u64,
    pub hostport: String,
}

/// What `/join` answered, success or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// 200: joined on `instance`.
    Joined { instance: u64 },
    /// 421: the instance that answered is not the owner.
    Misdirected { instance: u64, owner: u64 },
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
        }
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
        let request = if post {
            self.http.post(&url)
        } else {
            self.http.get(&url)
        };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                CallError::Timeout { url: url.clone() }
            } else {
                CallError::Unreachable {
                    url: url.clone(),
                    reason: root_cause(&e),
                }
            }
        })?;
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

    fn status_error(status: u16, body: &serde_json::Value) -> CallError {
        CallError::Status {
            status,
            code: body["error"].as_str().unwrap_or("unknown").to_owned(),
            message: body["message"].as_str().unwrap_or("").to_owned(),
        }
    }

    /// Asks which instance owns `id`.
    pub async fn where_(&self, id: &str) -> Result<Where, CallError> {
        let url = self.url_for("/where", id);
        let (status, body) = self.get_json(url.clone(), false).await?;
        if status != 200 {
            return Err(Self::status_error(status, &body));
        }
        serde_json::from_value(body).map_err(|e| CallError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    /// Joins `id`. A 421 is an answer (the instance said who owns it), not an error.
    pub async fn join(&self, id: &str) -> Result<Join, CallError> {
        let url = self.url_for("/join", id);
        let (status, body) = self.get_json(url.clone(), true).await?;
        let field = |name: &str| {
            body[name].as_u64().ok_or_else(|| CallError::BadAnswer {
                url: url.clone(),
                reason: format!("HTTP {status} without a numeric {name:?}"),
            })
        };
        match status {
            200 => Ok(Join::Joined {
                instance: field("instance")?,
            }),
            421 => Ok(Join::Misdirected {
                instance: field("instance")?,
                owner: field("owner")?,
            }),
            _ => Err(Self::status_error(status, &body)),
        }
    }

    /// The raw JSON answer of a GET of `path` (no query).
    pub async fn get_path(&self, path: &str) -> Result<(u16, serde_json::Value), CallError> {
        self.get_json(format!("{}{path}", self.base), false).await
    }

    /// The raw JSON answer of any GET, for the `where`/`join` commands that print it.
    pub async fn get_raw(
        &self,
        path: &str,
        id: &str,
    ) -> Result<(u16, serde_json::Value), CallError> {
        self.get_json(self.url_for(path, id), path == "/join").await
    }
}
