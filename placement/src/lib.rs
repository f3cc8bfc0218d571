//! Placement: which instance owns a client id.
//!
//! This crate is the single definition of the routing rule. The server answers `/where` and
//! checks ownership on `/join` with it, the client uses it in tests, and the Lua port in
//! `lua/routing.lua` is checked against the same vectors. It does no I/O, so every rule is
//! covered by table-driven tests (`tests/vectors.rs`).
//!
//! The three steps are kept apart on purpose:
//! 1. [`client_id_from_query`] finds exactly one `client_id` in a raw query string and decodes it
//!    the way HTML forms encode it (`+` is a space, `%XX` a byte, then UTF-8).
//! 2. [`ClientId::new`] enforces what an id may be (1..=256 bytes, no control characters).
//! 3. [`Placement::index`] maps a valid id to an instance index with the configured [`IndexMode`].
#![forbid(unsafe_code)]

mod hash;
mod id;

pub use hash::{fnv1a32, fnv1a64, jump_consistent_hash};
pub use id::{client_id_from_query, ClientId, IdError, MAX_CLIENT_ID_BYTES};

use std::fmt;
use std::str::FromStr;

/// How a client id is turned into an instance index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IndexMode {
    /// `fnv1a32(id) mod replicas`: the seed's rule. Changing the replica count moves most ids.
    #[default]
    Hash,
    /// The id is a decimal `u64`; `value mod replicas`. Lets operators pin ids by number.
    Numeric,
    /// Jump consistent hash of `fnv1a64(id)`: going from N to N+1 replicas moves ~1/(N+1) of ids.
    Jump,
}

impl IndexMode {
    /// Every mode, in the order they are documented.
    pub const ALL: [IndexMode; 3] = [IndexMode::Hash, IndexMode::Numeric, IndexMode::Jump];

    /// The name used in configuration and in JSON answers.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexMode::Hash => "hash",
            IndexMode::Numeric => "numeric",
            IndexMode::Jump => "jump",
        }
    }
}

impl fmt::Display for IndexMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an unknown mode name; carries what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown index mode {0:?}: expected hash, numeric or jump")]
pub struct UnknownMode(pub String);

impl FromStr for IndexMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hash" => Ok(IndexMode::Hash),
            "numeric" => Ok(IndexMode::Numeric),
            "jump" => Ok(IndexMode::Jump),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// The placement rule of one deployment: how many replicas, how they are numbered and named.
///
/// Construct it with [`Placement::new`], which checks the invariants once so that
/// [`Placement::index`] cannot fail for a valid id in hash or jump mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    mode: IndexMode,
    replicas: u32,
    base: u32,
    prefix: String,
    suffix: String,
    port: u16,
}

/// Why a [`Placement`] could not be built. Each variant names the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replicas must be at least 1")]
    NoReplicas,
    #[error("port must be between 1 and 65535")]
    ZeroPort,
    #[error("prefix {0:?} is not a DNS label: it must start with a letter or digit and hold only letters, digits and '-'")]
    BadPrefix(String),
    #[error("suffix {0:?} must be empty or a series of '.label' parts (letters, digits, '-')")]
    BadSuffix(String),
}

impl Placement {
    /// Checks and builds a placement rule.
    pub fn new(
        mode: IndexMode,
        replicas: u32,
        base: u32,
        prefix: impl Into<String>,
        suffix: impl Into<String>,
        port: u16,
    ) -> Result<Self, PlacementError> {
        let prefix = prefix.into();
        let suffix = suffix.into();
        if replicas == 0 {
            return Err(PlacementError::NoReplicas);
        }
        if port == 0 {
            return Err(PlacementError::ZeroPort);
        }
        if !is_dns_label(&prefix) {
            return Err(PlacementError::BadPrefix(prefix));
        }
        let suffix_ok = suffix.is_empty()
            || suffix
                .strip_prefix('.')
                .is_some_and(|rest| rest.split('.').all(is_dns_label));
        if !suffix_ok {
            return Err(PlacementError::BadSuffix(suffix));
        }
        Ok(Self {
            mode,
            replicas,
            base,
            prefix,
            suffix,
            port,
        })
    }

    pub fn mode(&self) -> IndexMode {
        self.mode
    }
    pub fn replicas(&self) -> u32 {
        self.replicas
    }
    pub fn base(&self) -> u32 {
        self.base
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The range of valid instance indexes, `base ..= base + replicas - 1`.
    pub fn indexes(&self) -> std::ops::RangeInclusive<u64> {
        let first = u64::from(self.base);
        first..=first + u64::from(self.replicas) - 1
    }

    /// The index of the instance that owns `id`.
    ///
    /// Fails only in numeric mode, when the id is not a decimal number that fits in a `u64`.
    pub fn index(&self, id: &ClientId) -> Result<u64, IdError> {
        let replicas = u64::from(self.replicas);
        let slot = match self.mode {
            IndexMode::Hash => u64::from(fnv1a32(id.as_bytes())) % replicas,
            IndexMode::Numeric => id::parse_decimal_u64(id.as_str())? % replicas,
            IndexMode::Jump => {
                u64::from(jump_consistent_hash(fnv1a64(id.as_bytes()), self.replicas))
            }
        };
        Ok(u64::from(self.base) + slot)
    }

    /// The host name of instance `index`, without the port.
    pub fn host(&self, index: u64) -> String {
        format!("{}-{}{}", self.prefix, index, self.suffix)
    }

    /// `SERVICE_PREFIX-<index>SERVICE_SUFFIX:PORT`: where the instance can be dialled.
    pub fn hostport(&self, index: u64) -> String {
        format!("{}:{}", self.host(index), self.port)
    }

    /// The index encoded in a host name such as `server-3` (a StatefulSet pod) or
    /// `server-3.server-headless.ns.svc.cluster.local`, if it names one of our instances.
    pub fn index_from_hostname(&self, hostname: &str) -> Option<u64> {
        let first_label = hostname.split('.').next()?;
        let digits = first_label.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// A DNS label as RFC 1123 allows it: 1..=63 letters, digits and '-', not starting or ending in '-'.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose() -> Placement {
        Placement::new(IndexMode::Hash, 3, 1, "poc-routing-server", "", 8081).unwrap()
    }

    #[test]
    fn hostport_follows_the_naming_scheme() {
        assert_eq!(compose().hostport(2), "poc-routing-server-2:8081");
        let k8s = Placement::new(
            IndexMode::Jump,
            2,
            0,
            "server",
            ".server-headless.poc-routing.svc.cluster.local",
            8081,
        )
        .unwrap();
        assert_eq!(
            k8s.hostport(0),
            "server-0.server-headless.poc-routing.svc.cluster.local:8081"
        );
        assert_eq!(k8s.indexes(), 0..=1);
    }

    #[test]
    fn rejects_bad_settings() {
        let cases = [
            (0, "p", "", 1, PlacementError::NoReplicas),
            (1, "p", "", 0, PlacementError::ZeroPort),
            (1, "", "", 1, PlacementError::BadPrefix(String::new())),
            (1, "-p", "", 1, PlacementError::BadPrefix("-p".into())),
            (1, "p_q", "", 1, PlacementError::BadPrefix("p_q".into())),
            (1, "p", "x.y", 1, PlacementError::BadSuffix("x.y".into())),
            (1, "p", ".", 1, PlacementError::BadSuffix(".".into())),
            (
                1,
                "p",
                ".a..b",
                1,
                PlacementError::BadSuffix(".a..b".into()),
            ),
        ];
        for (replicas, prefix, suffix, port, want) in cases {
            let got = Placement::new(IndexMode::Hash, replicas, 0, prefix, suffix, port);
            assert_eq!(got, Err(want), "{replicas} {prefix:?} {suffix:?} {port}");
        }
    }

    #[test]
    fn index_from_hostname() {
        let p = compose();
        let cases = [
            ("poc-routing-server-1", Some(1)),
            ("poc-routing-server-17.local", Some(17)),
            ("poc-routing-server-", None),
            ("poc-routing-server-1a", None),
            ("poc-routing-server", None),
            ("0123456789ab", None),
            ("other-1", None),
        ];
        for (host, want) in cases {
            assert_eq!(p.index_from_hostname(host), want, "{host}");
        }
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in IndexMode::ALL {
            assert_eq!(mode.as_str().parse::<IndexMode>(), Ok(mode));
        }
        assert_eq!(
            "Hash".parse::<IndexMode>(),
            Err(UnknownMode("Hash".to_owned()))
        );
    }
}
