//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable is checked here, so that a bad value stops the process before it binds a port,
//! with one line that names the variable and what it accepts. Nothing later re-reads the
//! environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use poc_routing_placement::{
    is_prefix, is_suffix, IndexMode, Naming, Placement, PlacementSpec, MAX_INDEX, MAX_MEMBERS,
    PREFIX_ACCEPTS, SUFFIX_ACCEPTS,
};

use crate::discovery::DnsDiscovery;
use poc_routing_membership::Timing;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line: for containers and log shippers.
    #[default]
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

/// `REPLICATION`: how a registration reaches its replica on its backup
/// ([`crate::replicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replication {
    /// A join answers once the backup has acknowledged the record (or after a bounded wait,
    /// with the record still pending).
    Sync,
    /// Joins answer at once; changed records go to their backups in batches within
    /// [`crate::replicas::ASYNC_WINDOW`]: a crash loses at most that window's joins.
    #[default]
    Async,
    /// No replicas: a crashed owner's registrations are lost.
    Off,
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The placement rule; its port is also the port the server listens on. With discovery
    /// off, its members (`INDEX_BASE..INDEX_BASE+REPLICAS-1`) are the fixed member set.
    pub placement: Placement,
    /// `DISCOVERY=dns` (the default): members are found in DNS. `None`: `DISCOVERY=off`.
    pub discovery: Option<DnsDiscovery>,
    /// `REPLICAS` as given. With discovery on it is only compared with what is deployed.
    pub expected_replicas: Option<u32>,
    pub timing: Timing,
    /// `HANDOFF_INTERVAL_MS`: the hand-off's pace, how often it looks for registrations whose
    /// owner is elsewhere (and backs off to once a second while none can be delivered).
    pub handoff_interval: Duration,
    /// The address to bind, `0.0.0.0` by default.
    pub bind_addr: IpAddr,
    /// `INSTANCE_INDEX`, when the deployment states the identity explicitly.
    pub instance_index: Option<u64>,
    pub log_format: LogFormat,
    /// How many client ids the in-memory registry keeps before it forgets the oldest.
    pub registry_capacity: usize,
    /// The peer plane (with discovery only: a fixed member set sends no peer traffic).
    pub peer: Option<PeerSettings>,
    /// `OPERATOR_TOKEN_FILE`: the bearer tokens the operator's endpoints accept.
    pub operator_token_file: PathBuf,
    /// `MAX_SESSIONS`: WebSocket sessions held at once; more are refused with 503.
    pub max_sessions: usize,
    /// `REPLICATION`: sync, async (the default) or off. With discovery only.
    pub replication: Replication,
    /// App mode (`APP_URL` set): the application this instance serves its keys' requests to.
    pub app: Option<AppSettings>,
}

/// App mode: the instance runs beside an application and forwards it the requests of the keys
/// it owns ([`crate::app`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// `APP_URL`: `http://host:port` of the application, in the same pod or network namespace.
    pub url: axum::http::uri::Authority,
    /// `APP_STATE_ADDR`: the state API's listener (`/state/{key}`, `/events`), on a loopback
    /// address so that only the application beside the instance reaches it.
    pub state_addr: SocketAddr,
    /// `APP_TIMEOUT_MS`: how long the application may take to answer a request's headers
    /// before the client gets 504 `app_timeout` (a body then streams for as long as it takes).
    pub timeout: Duration,
}

impl AppSettings {
    /// `http://host:port`, as errors name the application.
    pub fn url(&self) -> String {
        format!("http://{}", self.url)
    }
}

/// The state API's address unless `APP_STATE_ADDR` says otherwise.
pub const DEFAULT_APP_STATE_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8090);

/// Where instances talk to each other, and with what credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// `PEER_PORT`: the peer listener (mutual TLS), 7946 by default.
    pub port: u16,
    /// `PEER_CREDENTIAL_DIR`: the cluster credential (`ca.pem`, and during a rotation
    /// `next.pem` or `previous.pem`).
    pub credential_dir: PathBuf,
}

/// A configuration value that cannot be used. Displayed as the one line printed at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: {accepts}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub accepts: String,
}

const DEFAULT_DISCOVERY_NAME: &str = "server";
const DEFAULT_REGISTRY_CAPACITY: usize = 100_000;
/// memberlist's and Serf's port: the peer plane is this project's membership protocol.
pub const DEFAULT_PEER_PORT: u16 = 7946;
/// As many sessions as the routing module lets one owner hold.
const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// The lookup a config is read through: `None` for unset (and for empty, except where noted).
type Get<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    /// An empty value counts as unset, except for `SERVICE_SUFFIX`, whose default is empty.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let expected_replicas = get("REPLICAS")
            .map(|v| {
                parse(
                    "REPLICAS",
                    Some(v),
                    1,
                    "an integer from 1 to 65536",
                    |v: &u32| *v >= 1 && *v as usize <= MAX_MEMBERS,
                )
            })
            .transpose()?;
        let discovery = discovery(&get)?;
        let replicas = initial_replicas(expected_replicas, discovery.is_some())?;
        let spec = placement_spec(&get, lookup("SERVICE_SUFFIX"))?;
        // Every part was checked above, and replicas is within 1..=MAX_MEMBERS.
        let placement = Placement::contiguous(spec, replicas).map_err(|e| ConfigError {
            var: "REPLICAS",
            value: replicas.to_string(),
            accepts: e.to_string(),
        })?;
        let instance_index = get("INSTANCE_INDEX")
            .map(|v| {
                parse(
                    "INSTANCE_INDEX",
                    Some(v),
                    0,
                    "an integer from 0 to 999999999",
                    |i: &u64| *i <= MAX_INDEX,
                )
            })
            .transpose()?;
        let peer = match &discovery {
            Some(_) => Some(peer_settings(&get, placement.port())?),
            None => None,
        };
        let operator_token_file = operator_token_file(&get)?;
        Ok(Self {
            peer,
            operator_token_file,
            max_sessions: parse(
                "MAX_SESSIONS",
                get("MAX_SESSIONS"),
                DEFAULT_MAX_SESSIONS,
                "an integer from 0 to 1000000",
                |v: &usize| *v <= 1_000_000,
            )?,
            placement,
            discovery,
            expected_replicas,
            timing: timing(&get)?,
            handoff_interval: handoff_interval(&get)?,
            bind_addr: parse(
                "BIND_ADDR",
                get("BIND_ADDR"),
                IpAddr::from([0, 0, 0, 0]),
                "an IPv4 or IPv6 address such as 0.0.0.0",
                |_| true,
            )?,
            instance_index,
            log_format: log_format(&get)?,
            replication: replication(&get)?,
            app: app_settings(&get)?,
            registry_capacity: parse(
                "REGISTRY_CAPACITY",
                get("REGISTRY_CAPACITY"),
                DEFAULT_REGISTRY_CAPACITY,
                "an integer of at least 1",
                |v: &usize| *v >= 1,
            )?,
        })
    }
}

/// How many members the first view has: `REPLICAS`; with discovery and no `REPLICAS`, one (this
/// instance) until DNS says more. Without discovery `REPLICAS` is the fixed member set.
fn initial_replicas(expected: Option<u32>, discovery: bool) -> Result<u32, ConfigError> {
    match (expected, discovery) {
        (Some(n), _) => Ok(n),
        (None, true) => Ok(1),
        (None, false) => Err(ConfigError {
            var: "REPLICAS",
            value: String::new(),
            accepts: "expected the number of instances (1 to 65536): DISCOVERY=off needs a fixed member set".into(),
        }),
    }
}

/// `DISCOVERY`, `DISCOVERY_NAME` and `DNS_SERVER`: how members are found (`None`: they are not).
fn discovery(get: Get) -> Result<Option<DnsDiscovery>, ConfigError> {
    let discovery = match get("DISCOVERY").as_deref() {
        None | Some("dns") => DnsDiscovery {
            name: get("DISCOVERY_NAME").unwrap_or_else(|| DEFAULT_DISCOVERY_NAME.to_owned()),
            server: get("DNS_SERVER")
                .map(|v| {
                    parse(
                        "DNS_SERVER",
                        Some(v),
                        SocketAddr::from(([127, 0, 0, 1], 53)),
                        "an address and port such as 127.0.0.1:5353",
                        |_| true,
                    )
                })
                .transpose()?,
        },
        Some("off") => return Ok(None),
        Some(other) => {
            return Err(ConfigError {
                var: "DISCOVERY",
                value: other.to_owned(),
                accepts: "expected dns (members from DNS, the default) or off (a fixed member set from REPLICAS)".into(),
            })
        }
    };
    let ok = discovery.name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        return Err(ConfigError {
            var: "DISCOVERY_NAME",
            value: discovery.name,
            accepts: "expected a DNS name: `server` (A and PTR records, as Docker's DNS serves) or `_http._tcp.<headless service>` (SRV, as Kubernetes serves)".into(),
        });
    }
    Ok(Some(discovery))
}

/// `PEER_PORT` and `PEER_CREDENTIAL_DIR`, which discovery needs: the credential is read here,
/// so that a missing or broken one stops the server before it binds anything.
fn peer_settings(get: Get, public_port: u16) -> Result<PeerSettings, ConfigError> {
    let port = parse(
        "PEER_PORT",
        get("PEER_PORT"),
        DEFAULT_PEER_PORT,
        &format!("a TCP port from 1 to 65535 other than PORT ({public_port})"),
        |v: &u16| *v >= 1 && *v != public_port,
    )?;
    let Some(dir) = get("PEER_CREDENTIAL_DIR") else {
        return Err(ConfigError {
            var: "PEER_CREDENTIAL_DIR",
            value: String::new(),
            accepts: "expected the directory of the cluster credential (ca.pem; `poc-server credential new DIR` makes one): DISCOVERY=dns needs it, and there is no mode without it".into(),
        });
    };
    let credential_dir = PathBuf::from(&dir);
    poc_routing_peer::Keyring::load(&credential_dir).map_err(|e| ConfigError {
        var: "PEER_CREDENTIAL_DIR",
        value: dir,
        accepts: format!("expected the cluster credential: {e}"),
    })?;
    Ok(PeerSettings {
        port,
        credential_dir,
    })
}

/// `OPERATOR_TOKEN_FILE`: required, and read here for the same reason.
fn operator_token_file(get: Get) -> Result<PathBuf, ConfigError> {
    let Some(file) = get("OPERATOR_TOKEN_FILE") else {
        return Err(ConfigError {
            var: "OPERATOR_TOKEN_FILE",
            value: String::new(),
            accepts: "expected the file of the operator's bearer tokens (`poc-server credential new DIR` writes DIR/operator/token): /registrations, /clients, /placement and /metrics need it".into(),
        });
    };
    let path = PathBuf::from(&file);
    poc_routing_peer::operator::Tokens::load(&path).map_err(|e| ConfigError {
        var: "OPERATOR_TOKEN_FILE",
        value: file,
        accepts: format!("expected a token file: {e}"),
    })?;
    Ok(path)
}

/// `APP_URL`, `APP_STATE_ADDR`, `APP_TIMEOUT_MS`: app mode, when `APP_URL` is set.
fn app_settings(get: Get) -> Result<Option<AppSettings>, ConfigError> {
    let Some(raw) = get("APP_URL") else {
        return Ok(None);
    };
    let refused = || {
        ConfigError {
        var: "APP_URL",
        value: raw.clone(),
        accepts: "expected http://HOST:PORT of the application beside this instance (no path, no query), such as http://127.0.0.1:3000".into(),
    }
    };
    let uri: axum::http::Uri = raw.trim().parse().map_err(|_| refused())?;
    let plain = uri.scheme_str() == Some("http")
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        && uri
            .authority()
            .is_some_and(|a| a.port_u16().is_some() && !a.as_str().contains('@'));
    let url = match uri.authority() {
        Some(a) if plain => a.clone(),
        _ => return Err(refused()),
    };
    let state_addr = parse(
        "APP_STATE_ADDR",
        get("APP_STATE_ADDR"),
        DEFAULT_APP_STATE_ADDR,
        "a loopback address and port such as 127.0.0.1:8090 (only the application beside the instance may reach the state API)",
        |a: &SocketAddr| a.ip().is_loopback(),
    )?;
    let timeout_ms = parse(
        "APP_TIMEOUT_MS",
        get("APP_TIMEOUT_MS"),
        30_000,
        "milliseconds from 1 to 3600000",
        |v: &u64| (1..=3_600_000).contains(v),
    )?;
    Ok(Some(AppSettings {
        url,
        state_addr,
        timeout: Duration::from_millis(timeout_ms),
    }))
}

/// `REPLICATION`: sync, async (the default) or off.
fn replication(get: Get) -> Result<Replication, ConfigError> {
    match get("REPLICATION").as_deref() {
        Some("sync") => Ok(Replication::Sync),
        None | Some("async") => Ok(Replication::Async),
        Some("off") => Ok(Replication::Off),
        Some(other) => Err(ConfigError {
            var: "REPLICATION",
            value: other.to_owned(),
            accepts: "expected sync, async or off".into(),
        }),
    }
}

/// `LOG_FORMAT`: json (the default) or pretty.
fn log_format(get: Get) -> Result<LogFormat, ConfigError> {
    match get("LOG_FORMAT").as_deref() {
        None | Some("json") => Ok(LogFormat::Json),
        Some("pretty") => Ok(LogFormat::Pretty),
        Some(other) => Err(ConfigError {
            var: "LOG_FORMAT",
            value: other.to_owned(),
            accepts: "expected json or pretty".into(),
        }),
    }
}

/// The membership timers, each in its own variable; unset, each keeps [`Timing::default`]'s.
fn timing(get: Get) -> Result<Timing, ConfigError> {
    let defaults = Timing::default();
    let millis = |var: &'static str, default: Duration, min: u64, max: u64| {
        parse(
            var,
            get(var),
            default.as_millis() as u64,
            &format!("an integer from {min} to {max} (milliseconds)"),
            |v: &u64| (min..=max).contains(v),
        )
        .map(Duration::from_millis)
    };
    let probe_interval = millis("PROBE_INTERVAL_MS", defaults.probe_interval, 10, 60_000)?;
    // At least one probe interval: suspicion is confirmed by this instance's own probes.
    let suspicion = millis(
        "SUSPICION_MS",
        Timing::suspicion_for(probe_interval),
        probe_interval.as_millis() as u64,
        600_000,
    )?;
    Ok(Timing {
        probe_interval,
        suspicion,
        transition_window: millis(
            "TRANSITION_WINDOW_MS",
            defaults.transition_window,
            0,
            600_000,
        )?,
        down_timeout: Duration::from_secs(parse(
            "DOWN_TIMEOUT_S",
            get("DOWN_TIMEOUT_S"),
            defaults.down_timeout.as_secs(),
            "an integer from 1 to 86400 (seconds)",
            |v: &u64| (1..=86_400).contains(v),
        )?),
        drain_timeout: millis("DRAIN_TIMEOUT_MS", defaults.drain_timeout, 0, 600_000)?,
        drain_grace: millis("DRAIN_GRACE_MS", defaults.drain_grace, 0, 600_000)?,
        join_settle: millis("JOIN_SETTLE_MS", defaults.join_settle, 0, 600_000)?,
    })
}

/// `HANDOFF_INTERVAL_MS`: how often the hand-off looks for registrations to send on.
fn handoff_interval(get: Get) -> Result<Duration, ConfigError> {
    parse(
        "HANDOFF_INTERVAL_MS",
        get("HANDOFF_INTERVAL_MS"),
        crate::handoff::DEFAULT_INTERVAL.as_millis() as u64,
        "an integer from 10 to 60000 (milliseconds)",
        |v: &u64| (10..=60_000).contains(v),
    )
    .map(Duration::from_millis)
}

/// `INDEX_MODE`, `SERVICE_PREFIX`, `SERVICE_SUFFIX`, `PORT` and `INDEX_BASE`: the placement rule.
/// Unset, they describe the Compose deployment ([`Naming::compose`]). `suffix` is read raw,
/// since empty is a valid suffix.
fn placement_spec(get: Get, suffix: Option<String>) -> Result<PlacementSpec, ConfigError> {
    let defaults = Naming::compose();
    let mode = match get("INDEX_MODE") {
        None => IndexMode::default(),
        Some(v) => v.parse().map_err(|_| ConfigError {
            var: "INDEX_MODE",
            value: v,
            accepts: "expected one of hash, numeric, jump".into(),
        })?,
    };
    let prefix = get("SERVICE_PREFIX").unwrap_or(defaults.prefix);
    if !is_prefix(&prefix) {
        return Err(ConfigError {
            var: "SERVICE_PREFIX",
            value: prefix,
            accepts: format!("expected {PREFIX_ACCEPTS}"),
        });
    }
    let suffix = suffix.unwrap_or(defaults.suffix);
    if !is_suffix(&suffix) {
        return Err(ConfigError {
            var: "SERVICE_SUFFIX",
            value: suffix,
            accepts: format!("expected {SUFFIX_ACCEPTS}"),
        });
    }
    let naming = Naming {
        prefix,
        suffix,
        port: parse(
            "PORT",
            get("PORT"),
            defaults.port,
            "a TCP port from 1 to 65535",
            |v: &u16| *v >= 1,
        )?,
        base: parse(
            "INDEX_BASE",
            get("INDEX_BASE"),
            defaults.base,
            "an integer from 0 to 4294967295",
            |_| true,
        )?,
    };
    Ok(PlacementSpec::new(mode, naming))
}

/// Parses an optional value with `FromStr`, applies `ok`, and explains `accepts` on failure.
fn parse<T: std::str::FromStr>(
    var: &'static str,
    raw: Option<String>,
    default: T,
    accepts: &str,
    ok: impl Fn(&T) -> bool,
) -> Result<T, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.trim().parse::<T>() {
        Ok(v) if ok(&v) => Ok(v),
        _ => Err(ConfigError {
            var,
            value: raw,
            accepts: format!("expected {accepts}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential made once for every test here: its directory and token file.
    fn secrets() -> (String, String) {
        static SECRETS: std::sync::OnceLock<(tempfile::TempDir, String, String)> =
            std::sync::OnceLock::new();
        let (_, peer, token) = SECRETS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let made = poc_routing_peer::secrets::new(dir.path()).unwrap();
            let (peer, token) = (
                made.peer.display().to_string(),
                made.token.display().to_string(),
            );
            (dir, peer, token)
        });
        (peer.clone(), token.clone())
    }

    /// `vars` over a valid credential (which a pair in `vars` overrides).
    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let (peer, token) = secrets();
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| match name {
                    "PEER_CREDENTIAL_DIR" => Some(peer.clone()),
                    "OPERATOR_TOKEN_FILE" => Some(token.clone()),
                    _ => None,
                })
        })
    }

    #[test]
    fn defaults_match_the_compose_deployment() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.discovery,
            Some(DnsDiscovery {
                name: "server".into(),
                server: None
            })
        );
        assert_eq!(c.expected_replicas, None);
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.placement.prefix(), "poc-routing-server");
        assert_eq!(c.placement.suffix(), "");
        assert_eq!(c.placement.base(), 1);
        assert_eq!(c.placement.port(), 8081);
        assert_eq!(c.placement.mode(), IndexMode::Hash);
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0");
        assert_eq!(c.instance_index, None);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.replication, Replication::Async);
        assert_eq!(c.peer.as_ref().map(|p| p.port), Some(DEFAULT_PEER_PORT));
        assert_eq!(c.max_sessions, 10_000);
        assert_eq!(c.app, None);
    }

    #[test]
    fn app_mode_settings_and_their_refusals() {
        let c = config(&[("APP_URL", "http://127.0.0.1:3000")]).unwrap();
        let app = c.app.unwrap();
        assert_eq!(app.url(), "http://127.0.0.1:3000");
        assert_eq!(app.state_addr, DEFAULT_APP_STATE_ADDR);
        assert_eq!(app.timeout, Duration::from_secs(30));
        let c = config(&[
            ("APP_URL", "http://rooms:80/"),
            ("APP_STATE_ADDR", "[::1]:9000"),
            ("APP_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        let app = c.app.unwrap();
        assert_eq!(
            (app.url(), app.timeout),
            ("http://rooms:80".to_owned(), Duration::from_millis(250))
        );
        for (var, value) in [
            ("APP_URL", "https://127.0.0.1:3000"),
            ("APP_URL", "http://127.0.0.1"),
            ("APP_URL", "http://127.0.0.1:3000/app"),
            ("APP_URL", "http://u:p@127.0.0.1:3000"),
            ("APP_URL", "127.0.0.1:3000"),
        ] {
            let e = config(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, "APP_URL", "{value}");
            assert!(e.to_string().contains("http://HOST:PORT"), "{e}");
        }
        let e = config(&[
            ("APP_URL", "http://127.0.0.1:3000"),
            ("APP_STATE_ADDR", "0.0.0.0:8090"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "APP_STATE_ADDR");
        let e = config(&[
            ("APP_URL", "http://127.0.0.1:3000"),
            ("APP_TIMEOUT_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "APP_TIMEOUT_MS");
    }

    #[test]
    fn kubernetes_settings() {
        let c = config(&[
            ("SERVICE_PREFIX", "server"),
            (
                "SERVICE_SUFFIX",
                ".server-headless.poc-routing.svc.cluster.local",
            ),
            ("REPLICAS", "3"),
            ("DISCOVERY", "off"),
            ("INDEX_BASE", "0"),
            ("INDEX_MODE", "jump"),
            ("PORT", "9000"),
            ("BIND_ADDR", "127.0.0.11"),
            ("INSTANCE_INDEX", "2"),
            ("LOG_FORMAT", "pretty"),
            ("REPLICATION", "sync"),
        ])
        .unwrap();
        assert_eq!(c.replication, Replication::Sync);
        assert_eq!(
            c.placement.hostport(2),
            "server-2.server-headless.poc-routing.svc.cluster.local:9000"
        );
        assert_eq!(c.placement.mode(), IndexMode::Jump);
        assert_eq!(c.placement.members(), [0, 1, 2]);
        assert_eq!(c.discovery, None);
        assert_eq!(c.instance_index, Some(2));
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.bind_addr.to_string(), "127.0.0.11");
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("REPLICAS", "0"),
            ("REPLICAS", "-1"),
            ("REPLICAS", "two"),
            ("REPLICAS", "4294967296"),
            ("REPLICAS", "65537"),
            ("DISCOVERY", "consul"),
            ("DISCOVERY_NAME", "bad name"),
            ("DNS_SERVER", "127.0.0.1"),
            ("PROBE_INTERVAL_MS", "0"),
            ("TRANSITION_WINDOW_MS", "soon"),
            ("DOWN_TIMEOUT_S", "0"),
            ("DRAIN_TIMEOUT_MS", "-1"),
            ("DRAIN_GRACE_MS", "1e3"),
            ("JOIN_SETTLE_MS", "x"),
            ("SUSPICION_MS", "soon"),
            ("SUSPICION_MS", "100"),
            ("HANDOFF_INTERVAL_MS", "5"),
            ("INDEX_MODE", "modulo"),
            ("REPLICATION", "quorum"),
            ("INDEX_BASE", "-1"),
            ("PORT", "0"),
            ("PORT", "65536"),
            ("BIND_ADDR", "localhost"),
            ("INSTANCE_INDEX", "x"),
            ("INSTANCE_INDEX", "1000000000"),
            ("LOG_FORMAT", "xml"),
            ("SERVICE_PREFIX", "bad_prefix"),
            ("SERVICE_SUFFIX", "no-dot"),
            ("REGISTRY_CAPACITY", "0"),
            ("PEER_PORT", "8081"),
            ("PEER_PORT", "0"),
            ("PEER_CREDENTIAL_DIR", "/nonexistent"),
            ("OPERATOR_TOKEN_FILE", "/nonexistent"),
            ("MAX_SESSIONS", "-1"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}");
            let line = err.to_string();
            assert!(line.starts_with(&format!("invalid {var}=")), "{line}");
            assert!(line.contains("expected"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn discovery_settings() {
        let c = config(&[
            (
                "DISCOVERY_NAME",
                "_http._tcp.server-headless.poc-routing.svc.cluster.local",
            ),
            ("DNS_SERVER", "127.0.0.1:5353"),
            ("REPLICAS", "4"),
            ("DOWN_TIMEOUT_S", "90"),
        ])
        .unwrap();
        let d = c.discovery.unwrap();
        assert_eq!(
            d.name,
            "_http._tcp.server-headless.poc-routing.svc.cluster.local"
        );
        assert_eq!(d.server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.expected_replicas, Some(4));
        assert_eq!(c.timing.down_timeout, Duration::from_secs(90));
        // Suspicion and the hand-off's pace are settings of their own, not the probe interval's.
        let c = config(&[
            ("PROBE_INTERVAL_MS", "100"),
            ("SUSPICION_MS", "5000"),
            ("HANDOFF_INTERVAL_MS", "1000"),
        ])
        .unwrap();
        assert_eq!(c.timing.probe_interval, Duration::from_millis(100));
        assert_eq!(c.timing.suspicion, Duration::from_secs(5));
        assert_eq!(c.handoff_interval, Duration::from_secs(1));
        // Unset, suspicion is eight probe intervals, whatever the probe interval; a short
        // down timeout (the failure tests use 2 s) is no reason to refuse it.
        let c = config(&[("PROBE_INTERVAL_MS", "1000"), ("DOWN_TIMEOUT_S", "2")]).unwrap();
        assert_eq!(c.timing.suspicion, Duration::from_secs(8));
        assert_eq!(
            config(&[]).unwrap().timing.suspicion,
            Duration::from_secs(2)
        );
        // Discovery off needs the member count: no silent default.
        let err = config(&[("DISCOVERY", "off")]).unwrap_err();
        assert_eq!(err.var, "REPLICAS");
        assert!(err.to_string().contains("DISCOVERY=off"), "{err}");
    }

    #[test]
    fn a_missing_credential_stops_the_server_naming_it() {
        for (var, needs) in [
            ("PEER_CREDENTIAL_DIR", "DISCOVERY=dns needs it"),
            ("OPERATOR_TOKEN_FILE", "/registrations"),
        ] {
            let err = Config::from_lookup(|name| {
                let (peer, token) = secrets();
                match name {
                    "PEER_CREDENTIAL_DIR" if var != name => Some(peer.clone()),
                    "OPERATOR_TOKEN_FILE" if var != name => Some(token.clone()),
                    _ => None,
                }
            })
            .unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(needs), "{err}");
        }
        // A fixed member set sends no peer traffic: no peer credential needed.
        let c = Config::from_lookup(|name| match name {
            "DISCOVERY" => Some("off".into()),
            "REPLICAS" => Some("3".into()),
            "OPERATOR_TOKEN_FILE" => Some(secrets().1.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.peer, None);
    }
}
