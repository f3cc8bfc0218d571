//! Which instance am I?
//!
//! `/join` is only served by the owner of a client id, so each server must know its own index.
//! The sources are tried in order of how explicit they are:
//! 1. `INSTANCE_INDEX`, set by whoever deploys the server;
//! 2. a host name `<SERVICE_PREFIX>-<n>`, which is what a Kubernetes StatefulSet pod gets;
//! 3. DNS: find the instance name whose address is one of this host's own. Compose names
//!    containers `<project>-server-<n>` in DNS, while their host name is the container id. With
//!    discovery on, the discovery rounds do this from the names they find
//!    ([`crate::discovery`]); with a fixed member set, [`discover_in_background`] resolves each
//!    member's name.
//!
//! Steps 1 and 2 are decided at start-up. Step 3 is retried in the background, because the
//! container's own DNS entry may appear a moment after the process starts.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use poc_routing_placement::Placement;

/// Where the identity came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    Hostname,
    Dns,
}

/// The instance index, known from start-up or learnt later from DNS.
#[derive(Debug, Default)]
pub struct Identity(OnceLock<u64>);

impl Identity {
    pub fn known(index: u64) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(index);
        Self(cell)
    }

    pub fn get(&self) -> Option<u64> {
        self.0.get().copied()
    }

    pub(crate) fn set(&self, index: u64) {
        let _ = self.0.set(index);
    }
}

/// The identity that needs no network: `INSTANCE_INDEX`, then the host name.
pub fn from_env_or_hostname(
    placement: &Placement,
    instance_index: Option<u64>,
    hostname: &str,
) -> Option<(u64, Source)> {
    if let Some(index) = instance_index {
        return Some((index, Source::Env));
    }
    placement
        .index_from_hostname(hostname)
        .map(|index| (index, Source::Hostname))
}

/// Resolves a host name with the system resolver (Docker's embedded DNS inside Compose).
pub async fn system_resolve(host: String) -> Vec<IpAddr> {
    match tokio::net::lookup_host((host.as_str(), 0)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(_) => Vec::new(),
    }
}

/// One DNS pass: the index whose name resolves to one of `own` addresses, if exactly one does.
pub async fn from_dns<F, Fut>(
    placement: &Placement,
    own: &HashSet<IpAddr>,
    resolve: F,
) -> Option<u64>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Vec<IpAddr>>,
{
    let mut matches = Vec::new();
    for &index in placement.members() {
        let addrs = resolve(placement.host(index)).await;
        if addrs.iter().any(|a| own.contains(a)) {
            matches.push(index);
        }
    }
    match matches.as_slice() {
        [index] => Some(*index),
        [] => None,
        several => {
            tracing::warn!(
                ?several,
                "several instance names resolve to this host; identity left unknown"
            );
            None
        }
    }
}

/// This host's own interface addresses, loopback excluded.
pub fn own_addresses() -> HashSet<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter(|i| !i.is_loopback())
                .map(|i| i.ip())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps trying [`from_dns`] until it succeeds or `attempts` run out; sets `identity` on success.
pub fn discover_in_background(
    placement: Placement,
    identity: Arc<Identity>,
    attempts: u32,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let own = own_addresses();
        for attempt in 1..=attempts {
            if let Some(index) = from_dns(&placement, &own, system_resolve).await {
                identity.set(index);
                tracing::info!(instance = index, source = ?Source::Dns, attempt, "identity found");
                return;
            }
            tokio::time::sleep(every).await;
        }
        tracing::error!(
            attempts,
            "identity unknown: set INSTANCE_INDEX or name the host <SERVICE_PREFIX>-<n>; /join answers 503 identity_unknown"
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use poc_routing_placement::{IndexMode, Naming, PlacementSpec};

    fn placement() -> Placement {
        let naming = Naming {
            prefix: "server".into(),
            suffix: ".h.ns.svc".into(),
            port: 8081,
            base: 0,
        };
        Placement::contiguous(PlacementSpec::new(IndexMode::Hash, naming), 3).unwrap()
    }

    #[test]
    fn env_wins_over_hostname() {
        let p = placement();
        assert_eq!(
            from_env_or_hostname(&p, Some(2), "server-1"),
            Some((2, Source::Env))
        );
        assert_eq!(
            from_env_or_hostname(&p, None, "server-1"),
            Some((1, Source::Hostname))
        );
        assert_eq!(from_env_or_hostname(&p, None, "3f2a9c0b1d2e"), None);
    }

    async fn fake_dns(host: String) -> Vec<IpAddr> {
        match host.as_str() {
            "server-0.h.ns.svc" => vec!["10.0.0.5".parse().unwrap()],
            "server-1.h.ns.svc" => vec!["10.0.0.6".parse().unwrap()],
            "server-2.h.ns.svc" => vec!["10.0.0.6".parse().unwrap()],
            _ => vec![],
        }
    }

    #[tokio::test]
    async fn dns_matches_exactly_one_own_address() {
        let p = placement();
        let own = |ip: &str| HashSet::from([ip.parse::<IpAddr>().unwrap()]);
        assert_eq!(from_dns(&p, &own("10.0.0.5"), fake_dns).await, Some(0));
        // Two names on one address is ambiguous: refuse to guess.
        assert_eq!(from_dns(&p, &own("10.0.0.6"), fake_dns).await, None);
        assert_eq!(from_dns(&p, &own("10.0.0.9"), fake_dns).await, None);
    }
}
