//! The named parts of a placement rule: how instances are named ([`Naming`]) and the rule as a
//! whole ([`PlacementSpec`]), which is what servers are configured with and what `/placement`
//! publishes.
//!
//! The two deployments this project ships, Docker Compose and Kubernetes, are defined here once
//! ([`Naming::compose`], [`Naming::kubernetes`]): the server's defaults, the local stack, the
//! tests and the check of `envoy.yaml`'s guard all take them from here.

use serde::{Deserialize, Serialize};

use crate::{IndexMode, PlacementError};

/// How a deployment names and dials its instances: `<prefix>-<index><suffix>:<port>`, where
/// indexes count from `base`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Naming {
    /// The first DNS label up to the index: `poc-routing-server` in `poc-routing-server-2`.
    pub prefix: String,
    /// What follows the index: empty, or `.label` parts such as `.server-headless.ns.svc`.
    pub suffix: String,
    /// The port every instance listens on.
    pub port: u16,
    /// The first index a contiguous deployment uses.
    pub base: u32,
}

/// The largest instance index: 9 digits. Deployments number instances from 0 or 1, so this is
/// never near, and it lets `envoy.yaml`'s guard admit exactly the names the rule writes.
pub const MAX_INDEX: u64 = 999_999_999;

/// The port both shipped namings use.
pub const DEFAULT_PORT: u16 = 8081;

impl Naming {
    /// Docker Compose: `docker compose --scale` names containers `poc-routing-server-1`, `-2`...
    /// and Docker's DNS resolves those names on the project network.
    pub fn compose() -> Self {
        Self {
            prefix: "poc-routing-server".into(),
            suffix: String::new(),
            port: DEFAULT_PORT,
            base: 1,
        }
    }

    /// Kubernetes: StatefulSet `server` in namespace `poc-routing` names its pods `server-0`,
    /// `server-1`... and headless Service `server-headless` gives each a DNS name.
    pub fn kubernetes() -> Self {
        Self {
            prefix: "server".into(),
            suffix: ".server-headless.poc-routing.svc.cluster.local".into(),
            port: DEFAULT_PORT,
            base: 0,
        }
    }

    /// Checks the naming once, so that every name it produces is a valid DNS name.
    pub fn check(&self) -> Result<(), PlacementError> {
        if self.port == 0 {
            return Err(PlacementError::ZeroPort);
        }
        if !is_prefix(&self.prefix) {
            return Err(PlacementError::BadPrefix(self.prefix.clone()));
        }
        if !is_suffix(&self.suffix) {
            return Err(PlacementError::BadSuffix(self.suffix.clone()));
        }
        Ok(())
    }

    /// The host name of instance `index`, without the port.
    pub fn host(&self, index: u64) -> String {
        format!("{}-{}{}", self.prefix, index, self.suffix)
    }

    /// `<prefix>-<index><suffix>:<port>`: where the instance can be dialled.
    pub fn hostport(&self, index: u64) -> String {
        format!("{}:{}", self.host(index), self.port)
    }

    /// The index encoded in a host name such as `server-3` (a StatefulSet pod) or
    /// `server-3.server-headless.ns.svc.cluster.local`, if it names one of our instances: the
    /// index written as [`Self::host`] writes it (no leading zeros, at most [`MAX_INDEX`]).
    pub fn index_from_hostname(&self, hostname: &str) -> Option<u64> {
        let first_label = hostname.split('.').next()?;
        let digits = first_label.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        let canonical = !digits.is_empty()
            && digits.len() <= 9
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical.then(|| digits.parse().ok()).flatten()
    }
}

/// A placement rule by name: the index mode and the naming. Members are not part of it; a
/// [`crate::Placement`] is a spec over a member list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlacementSpec {
    pub mode: IndexMode,
    #[serde(flatten)]
    pub naming: Naming,
}

impl PlacementSpec {
    pub fn new(mode: IndexMode, naming: Naming) -> Self {
        Self { mode, naming }
    }
}

/// What a prefix may be: one DNS label (the index is appended to it as `-<index>`).
pub const PREFIX_ACCEPTS: &str =
    "a DNS label: letters, digits and '-', not starting or ending with '-'";
/// What a suffix may be.
pub const SUFFIX_ACCEPTS: &str =
    "empty, or DNS labels each preceded by '.', such as .svc.cluster.local";

/// Whether `prefix` can start an instance name.
pub fn is_prefix(prefix: &str) -> bool {
    is_dns_label(prefix)
}

/// Whether `suffix` can end an instance name.
pub fn is_suffix(suffix: &str) -> bool {
    suffix.is_empty()
        || suffix
            .strip_prefix('.')
            .is_some_and(|rest| rest.split('.').all(is_dns_label))
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

    #[test]
    fn the_shipped_namings_are_valid_and_name_their_instances() {
        let compose = Naming::compose();
        compose.check().unwrap();
        assert_eq!(compose.hostport(2), "poc-routing-server-2:8081");
        let k8s = Naming::kubernetes();
        k8s.check().unwrap();
        assert_eq!(
            k8s.hostport(0),
            "server-0.server-headless.poc-routing.svc.cluster.local:8081"
        );
    }

    #[test]
    fn rejects_bad_namings() {
        let cases = [
            ("p", "", 0, PlacementError::ZeroPort),
            ("", "", 1, PlacementError::BadPrefix(String::new())),
            ("-p", "", 1, PlacementError::BadPrefix("-p".into())),
            ("p_q", "", 1, PlacementError::BadPrefix("p_q".into())),
            ("p", "x.y", 1, PlacementError::BadSuffix("x.y".into())),
            ("p", ".", 1, PlacementError::BadSuffix(".".into())),
            ("p", ".a..b", 1, PlacementError::BadSuffix(".a..b".into())),
        ];
        for (prefix, suffix, port, want) in cases {
            let naming = Naming {
                prefix: prefix.into(),
                suffix: suffix.into(),
                port,
                base: 0,
            };
            assert_eq!(naming.check(), Err(want), "{prefix:?} {suffix:?} {port}");
        }
    }

    #[test]
    fn index_from_hostname() {
        let n = Naming::compose();
        let cases = [
            ("poc-routing-server-1", Some(1)),
            ("poc-routing-server-17.local", Some(17)),
            ("poc-routing-server-", None),
            ("poc-routing-server-1a", None),
            ("poc-routing-server-0", Some(0)),
            ("poc-routing-server-01", None),
            ("poc-routing-server-999999999", Some(999_999_999)),
            ("poc-routing-server-1000000000", None),
            ("poc-routing-server-+1", None),
            ("poc-routing-server", None),
            ("0123456789ab", None),
            ("other-1", None),
        ];
        for (host, want) in cases {
            assert_eq!(n.index_from_hostname(host), want, "{host}");
        }
    }

    #[test]
    fn a_spec_reads_and_writes_the_placement_fields() {
        let spec = PlacementSpec::new(IndexMode::Jump, Naming::compose());
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "mode": "jump", "prefix": "poc-routing-server", "suffix": "", "port": 8081, "base": 1
            })
        );
        assert_eq!(serde_json::from_value::<PlacementSpec>(json).unwrap(), spec);
        let unknown_mode = serde_json::json!({
            "mode": "Hash", "prefix": "p", "suffix": "", "port": 1, "base": 0
        });
        assert!(serde_json::from_value::<PlacementSpec>(unknown_mode).is_err());
    }
}
