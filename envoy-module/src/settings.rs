//! The filter's configuration: the JSON in `envoy.yaml`'s `filter_config`, checked once when
//! Envoy loads the configuration. A bad value rejects the whole configuration with a message
//! that names the field.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use poc_routing_placement::{KeySource, KeySourceError};
use serde::Deserialize;

/// How the filter learns the placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cluster `GET /placement` is sent through (any healthy member answers).
    pub cluster: String,
    /// How often the placement is fetched.
    pub refresh_interval: Duration,
    /// How long one fetch may take.
    pub fetch_timeout: Duration,
    /// A snapshot older than this is not used: joins are refused with 503 until a fetch
    /// succeeds again.
    pub stale_after: Duration,
    /// The most joins in flight to one owner; beyond it, 503 `overloaded` at once. Envoy's
    /// circuit breakers count per cluster (per host only connections), and `owners` is one
    /// cluster for every instance, so the per-owner bound is kept here.
    pub max_in_flight_per_owner: u32,
    /// The most WebSocket sessions open to one owner through this filter config. A session
    /// lives as long as its client keeps it, so sessions have their own bound, apart from
    /// joins'; beyond it, new sessions are refused with 503 `overloaded`.
    pub max_sessions_per_owner: u32,
    /// The operator's token file (`OPERATOR_TOKEN_FILE` of the servers): `/placement` needs
    /// a token. Read when the config loads (a missing one refuses it) and at every fetch, so
    /// a rotation needs no restart.
    pub operator_token_file: PathBuf,
}

/// Where the deployments mount the operator's token for Envoy.
pub const DEFAULT_OPERATOR_TOKEN_FILE: &str = "/etc/poc-routing/operator/token";

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster: "servers".into(),
            refresh_interval: Duration::from_millis(250),
            fetch_timeout: Duration::from_millis(500),
            stale_after: Duration::from_secs(10),
            max_in_flight_per_owner: 128,
            max_sessions_per_owner: 10_000,
            operator_token_file: PathBuf::from(DEFAULT_OPERATOR_TOKEN_FILE),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cluster: Option<String>,
    refresh_interval_ms: Option<u64>,
    fetch_timeout_ms: Option<u64>,
    stale_after_ms: Option<u64>,
    max_in_flight_per_owner: Option<u32>,
    max_sessions_per_owner: Option<u32>,
    operator_token_file: Option<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("filter_config is not a JSON object with cluster, refresh_interval_ms, fetch_timeout_ms, stale_after_ms, max_in_flight_per_owner, max_sessions_per_owner, operator_token_file: {0}")]
    Syntax(String),
    #[error("filter_config.cluster must be a non-empty cluster name")]
    EmptyCluster,
    #[error("filter_config.{field} must be between {min} and {max} (got {got})")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("filter_config.stale_after_ms ({stale}) must be larger than refresh_interval_ms ({refresh})")]
    StaleBeforeRefresh { stale: u64, refresh: u64 },
    #[error("filter_config.operator_token_file must be an absolute path (got {0:?})")]
    RelativeTokenFile(String),
    #[error("filter_config.operator_token_file: {0}")]
    TokenFile(String),
}

fn millis(
    field: &'static str,
    value: Option<u64>,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, SettingsError> {
    let Some(got) = value else { return Ok(default) };
    if !(min..=max).contains(&got) {
        return Err(SettingsError::OutOfRange {
            field,
            min,
            max,
            got,
        });
    }
    Ok(Duration::from_millis(got))
}

impl Settings {
    /// Parses the filter config. Envoy hands over a `google.protobuf.Struct` as JSON, and an
    /// empty config means every default.
    pub fn parse(config: &[u8]) -> Result<Self, SettingsError> {
        let text = std::str::from_utf8(config).map_err(|e| SettingsError::Syntax(e.to_string()))?;
        let raw: Raw = if text.trim().is_empty() {
            serde_json::from_str("{}")
        } else {
            serde_json::from_str(text)
        }
        .map_err(|e| SettingsError::Syntax(e.to_string()))?;
        let defaults = Self::default();
        let cluster = raw.cluster.unwrap_or(defaults.cluster);
        if cluster.trim().is_empty() {
            return Err(SettingsError::EmptyCluster);
        }
        let operator_token_file = match raw.operator_token_file {
            None => defaults.operator_token_file,
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(p) => return Err(SettingsError::RelativeTokenFile(p)),
        };
        let settings = Self {
            operator_token_file,
            cluster,
            refresh_interval: millis(
                "refresh_interval_ms",
                raw.refresh_interval_ms,
                defaults.refresh_interval,
                10,
                60_000,
            )?,
            fetch_timeout: millis(
                "fetch_timeout_ms",
                raw.fetch_timeout_ms,
                defaults.fetch_timeout,
                10,
                60_000,
            )?,
            stale_after: millis(
                "stale_after_ms",
                raw.stale_after_ms,
                defaults.stale_after,
                100,
                3_600_000,
            )?,
            max_in_flight_per_owner: bound(
                "max_in_flight_per_owner",
                raw.max_in_flight_per_owner,
                defaults.max_in_flight_per_owner,
            )?,
            max_sessions_per_owner: bound(
                "max_sessions_per_owner",
                raw.max_sessions_per_owner,
                defaults.max_sessions_per_owner,
            )?,
        };
        if settings.stale_after <= settings.refresh_interval {
            return Err(SettingsError::StaleBeforeRefresh {
                stale: settings.stale_after.as_millis() as u64,
                refresh: settings.refresh_interval.as_millis() as u64,
            });
        }
        settings.authorization().map_err(SettingsError::TokenFile)?;
        Ok(settings)
    }

    /// The `authorization` value a `/placement` fetch sends: the newest token of the operator
    /// token file, read now. The error names the file and what is wrong with it.
    pub fn authorization(&self) -> Result<String, String> {
        let path = self.operator_token_file.display();
        let text = std::fs::read_to_string(&self.operator_token_file)
            .map_err(|e| format!("{path}: {e}"))?;
        let token = poc_routing_wire::newest_operator_token(&text)
            .ok_or_else(|| format!("{path}: no token in it"))?;
        Ok(format!("Bearer {token}"))
    }
}

/// A per-owner bound: 1 to 1,000,000, `default` when unset.
fn bound(field: &'static str, raw: Option<u32>, default: u32) -> Result<u32, SettingsError> {
    match raw {
        None => Ok(default),
        Some(got @ 1..=1_000_000) => Ok(got),
        Some(got) => Err(SettingsError::OutOfRange {
            field,
            min: 1,
            max: 1_000_000,
            got: got.into(),
        }),
    }
}

/// An affinity route's own configuration: the `config` of the filter's per-route config
/// (`DynamicModuleFilterPerRoute`), which also enables the filter on that route. Checked when
/// Envoy loads the route; a bad one refuses the configuration with a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSettings {
    /// Where this route's requests carry their key (`query:client_id` unless it says).
    pub key: KeySource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    key: Option<String>,
}

impl RouteSettings {
    /// Parses a per-route config: empty (or `{}`) is the default, the `client_id` query
    /// parameter; `{"key": "header:x-user-id"}` names another source.
    pub fn parse(config: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        let raw: RawRoute = match text.trim() {
            "" | "\"\"" => RawRoute { key: None },
            text => serde_json::from_str(text)
                .map_err(|e| format!("the per-route config is not a JSON object with key: {e}"))?,
        };
        let key = match raw.key {
            None => KeySource::default(),
            Some(written) => written
                .parse()
                .map_err(|e: KeySourceError| format!("per-route config key: {e}"))?,
        };
        Ok(Self { key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file for the tests (a config whose file is missing is refused).
    fn token_file() -> String {
        let path = std::env::temp_dir().join(format!("poc-module-token-{}", std::process::id()));
        std::fs::write(&path, "# old\nfirst-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nnewest-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbb\n").unwrap();
        path.display().to_string()
    }

    fn with_token(json: &str) -> Vec<u8> {
        let file = token_file();
        let sep = if json.trim() == "{}" { "" } else { "," };
        json.replacen('{', &format!("{{\"operator_token_file\":{file:?}{sep}"), 1)
            .into_bytes()
    }

    #[test]
    fn empty_means_defaults_and_needs_the_default_token_file() {
        let err = Settings::parse(b"").unwrap_err().to_string();
        assert!(err.contains(DEFAULT_OPERATOR_TOKEN_FILE), "{err}");
        let s = Settings::parse(&with_token("{}")).unwrap();
        assert_eq!(s.cluster, Settings::default().cluster);
        assert_eq!(
            s.authorization().unwrap(),
            "Bearer newest-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        );
    }

    #[test]
    fn every_field() {
        let s = Settings::parse(&with_token(
            r#"{"cluster":"x","refresh_interval_ms":100,"fetch_timeout_ms":300,"stale_after_ms":2000,"max_in_flight_per_owner":7}"#,
        ))
        .unwrap();
        assert_eq!(s.max_in_flight_per_owner, 7);
        assert_eq!(s.cluster, "x");
        assert_eq!(s.refresh_interval, Duration::from_millis(100));
        assert_eq!(s.fetch_timeout, Duration::from_millis(300));
        assert_eq!(s.stale_after, Duration::from_secs(2));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"clster\":\"x\"}", "unknown field `clster`"),
            (b"[1]", "JSON object"),
            (b"{\"cluster\":\" \"}", "filter_config.cluster"),
            (
                b"{\"refresh_interval_ms\":0}",
                "filter_config.refresh_interval_ms must be between 10",
            ),
            (
                b"{\"fetch_timeout_ms\":999999}",
                "filter_config.fetch_timeout_ms",
            ),
            (
                b"{\"stale_after_ms\":200,\"refresh_interval_ms\":500}",
                "must be larger than refresh_interval_ms",
            ),
            (b"{\"stale_after_ms\":\"1\"}", "invalid type"),
            (
                b"{\"max_in_flight_per_owner\":0}",
                "filter_config.max_in_flight_per_owner must be between 1",
            ),
            (
                b"{\"operator_token_file\":\"token\"}",
                "filter_config.operator_token_file must be an absolute path",
            ),
            (
                b"{\"operator_token_file\":\"/nonexistent/token\"}",
                "filter_config.operator_token_file: /nonexistent/token: No such file",
            ),
        ];
        for (config, expected) in cases {
            let text = String::from_utf8_lossy(config);
            let config = if text.starts_with('{') && !text.contains("operator_token_file") {
                with_token(&text)
            } else {
                config.to_vec()
            };
            let config = config.as_slice();
            let err = Settings::parse(config).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{}: EXPECTED {expected:?} RECEIVED {err:?}",
                String::from_utf8_lossy(config)
            );
        }
    }

    #[test]
    fn route_settings_name_the_key_source_or_the_field() {
        for empty in [&b""[..], b"{}", b"\"\"", b" "] {
            assert_eq!(
                RouteSettings::parse(empty).unwrap().key,
                KeySource::default()
            );
        }
        let r = RouteSettings::parse(br#"{"key":"header:X-User-Id"}"#).unwrap();
        assert_eq!(r.key, KeySource::Header("x-user-id".into()));
        let cases: [(&[u8], &str); 3] = [
            (
                br#"{"key":"body:x"}"#,
                "per-route config key: \"body:x\" is not a key source",
            ),
            (br#"{"keys":"query:a"}"#, "unknown field `keys`"),
            (br#"{"key":"path:/rooms"}"#, "exactly one {key}"),
        ];
        for (raw, want) in cases {
            let e = RouteSettings::parse(raw).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
