//! The peer plane's transport: what lets an instance talk to another, and nobody else to it.
//!
//! - [`credential`]: the cluster's certificate authorities (a keyring with rotation) and the
//!   certificate each instance issues itself from the primary one.
//! - [`tls`]: mutual TLS 1.3 configs: each side presents its certificate and checks the
//!   other's against the keyring.
//! - [`listener`]: the peer listener for axum, handshakes off the accept loop, bounded.
//! - [`PeerClient`]: the one HTTP client every peer request goes through.
//! - [`operator`]: the operator's bearer tokens for the endpoints that list client ids.
//! - [`secrets`]: a deployment's two secrets side by side, and `poc-server credential`.
//!
//! [`Credentials`] holds what is in force now, and [`Credentials::reload`] re-reads the
//! directory (the server does every few seconds), so a rotation needs no restart.

pub mod credential;
pub mod listener;
pub mod operator;
pub mod secrets;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use credential::{CredentialError, Fingerprints, Keyring};
pub use listener::{PeerAddr, Refused, TlsListener};

/// How the client dials peers.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// The address peer connections leave from (the instance's own, where it binds one), so
    /// that a peer sees the address DNS names this instance by.
    pub local_address: Option<IpAddr>,
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            local_address: None,
            connect_timeout: Duration::from_millis(300),
        }
    }
}

/// The keyring in force, and what is built from it.
struct Live {
    /// The bytes it was read from: a reload that reads the same changes nothing.
    source: Vec<u8>,
    fingerprints: Fingerprints,
    server: Arc<rustls::ServerConfig>,
    client: reqwest::Client,
    issued: Instant,
}

/// A certificate older than this is issued again (it is valid for
/// [`credential::LEAF_DAYS`]).
const REISSUE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The credential in force on this instance.
pub struct Credentials {
    dir: PathBuf,
    options: ClientOptions,
    live: RwLock<Arc<Live>>,
}

/// A credential that could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("issuing this instance's certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the peer client: {0}")]
    Client(#[from] reqwest::Error),
}

fn build(dir: &Path, options: ClientOptions) -> Result<Live, LoadError> {
    let (keyring, source) = Keyring::load(dir)?;
    let (chain, key) = keyring.primary.issue()?;
    let server = tls::server_config(&keyring, chain.clone(), key.clone_key())?;
    let client_tls = tls::client_config(&keyring, chain, key)?;
    let mut client = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls)
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        // Connections opened under an older keyring go with the client they belong to.
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(ip) = options.local_address {
        client = client.local_address(ip);
    }
    Ok(Live {
        source,
        fingerprints: keyring.fingerprints(),
        server,
        client: client.build()?,
        issued: Instant::now(),
    })
}

impl Credentials {
    /// Reads the credential directory and issues this instance's certificate.
    pub fn load(dir: &Path, options: ClientOptions) -> Result<Arc<Self>, LoadError> {
        let live = build(dir, options)?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            options,
            live: RwLock::new(Arc::new(live)),
        }))
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server side of the handshake, as of now.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.live().server.clone()
    }

    /// The HTTP client for peers, as of now (cheap: a handle).
    pub fn client(&self) -> reqwest::Client {
        self.live().client.clone()
    }

    pub fn fingerprints(&self) -> Fingerprints {
        self.live().fingerprints.clone()
    }

    /// Reads the directory again; puts what it holds in force if it changed (or if this
    /// instance's certificate is due again). Returns whether anything changed. On error the
    /// credential in force stays.
    pub fn reload(&self) -> Result<bool, LoadError> {
        let live = self.live();
        let (_, source) = Keyring::load(&self.dir)?;
        if source == live.source && live.issued.elapsed() < REISSUE_AFTER {
            return Ok(false);
        }
        let new = build(&self.dir, self.options)?;
        let changed = new.fingerprints != live.fingerprints;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(changed)
    }
}

/// The one HTTP client of the peer plane: every request to another instance is built here,
/// to its peer port, over mutual TLS.
#[derive(Clone)]
pub struct PeerClient {
    credentials: Arc<Credentials>,
    port: u16,
}

impl PeerClient {
    pub fn new(credentials: Arc<Credentials>, port: u16) -> Self {
        Self { credentials, port }
    }

    /// `https://<ip>:<peer port><path>`.
    pub fn url(&self, ip: IpAddr, path: &str) -> String {
        format!("https://{}{path}", SocketAddr::new(ip, self.port))
    }

    pub fn get(&self, ip: IpAddr, path: &str) -> reqwest::RequestBuilder {
        self.credentials.client().get(self.url(ip, path))
    }

    pub fn post(&self, ip: IpAddr, path: &str) -> reqwest::RequestBuilder {
        self.credentials.client().post(self.url(ip, path))
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }
}

/// Why a peer request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The TLS handshake failed on the credential (either side's certificate refused, or no
    /// TLS at all): what listens there is not an instance of this cluster.
    #[error("not an instance of this cluster: {0}")]
    NotOurs(reqwest::Error),
    /// No answer (refused, reset, timed out) or one that is not a 2xx.
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not the JSON expected: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<reqwest::Error> for PeerError {
    fn from(e: reqwest::Error) -> Self {
        if refused_by_tls(&e) {
            Self::NotOurs(e)
        } else {
            Self::Http(e)
        }
    }
}

/// Whether `e` comes from TLS itself (a certificate refused by either side, an alert, a peer
/// that does not speak TLS) rather than from the network. rustls' error travels inside an
/// `io::Error`, whose `source()` skips it, so each `io::Error` is looked into.
fn refused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if refused_by_tls(inner) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// A peer's JSON answer to `request`: sent, a 2xx, a body of at most `max_bytes`, and of
/// type `T`. Whatever a peer sends, reading it costs at most `max_bytes` of memory.
pub async fn json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
) -> Result<T, PeerError> {
    let mut response = request.send().await?.error_for_status()?;
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(PeerError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max_bytes {
            return Err(PeerError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&body)?)
}
