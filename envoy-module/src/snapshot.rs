//! A verified `GET /placement` answer: the rule, the members, the epoch, and for every member
//! its name, the address it was found at, and how many joins are in flight to it, ready for
//! per-request lookups.
//!
//! The filter trusts an answer only if recomputing its epoch from its own rule and members
//! gives the epoch it states. A truncated or mixed-up answer is dropped, and the filter keeps
//! routing by the last one that checked out. Addresses are not part of the epoch (they say
//! where an owner is, not who owns what): a wrong one can only reach another of our instances,
//! since Envoy's `owners` cluster holds nothing else, and that instance refuses the join.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use poc_routing_placement::{ClientId, Epoch, IdError, Placement, PlacementError};
use poc_routing_wire::{MemberState, PlacementAnswer};

/// One member, as joins are sent to it.
#[derive(Debug)]
pub struct Owner {
    /// Its name and its joins in flight, shared across snapshots.
    pub shared: Arc<OwnerState>,
    /// `ip:port` where the servers last found it; `None` while it is not found (crashed or
    /// restarting): its joins are refused, never sent elsewhere.
    pub address: Option<String>,
}

/// What one member keeps from snapshot to snapshot while its name stays the same.
#[derive(Debug)]
pub struct OwnerState {
    /// `<prefix>-<index><suffix>:<port>`: its name, for logs and errors.
    pub hostport: String,
    /// Joins in flight to it through this filter config.
    in_flight: AtomicU32,
    /// WebSocket sessions open to it through this filter config.
    sessions: AtomicU32,
}

impl Owner {
    pub fn hostport(&self) -> &str {
        &self.shared.hostport
    }
}

/// One member list with its epoch, as a server published it.
#[derive(Debug)]
pub struct Snapshot {
    placement: Placement,
    epoch: String,
    /// `owners[i]` is `placement.members()[i]`.
    owners: Vec<Owner>,
    fetched_at: Instant,
}

/// A join (or a session) counted in flight to its owner until this is dropped (when Envoy ends
/// the stream).
#[derive(Debug)]
pub struct InFlight {
    owner: Arc<OwnerState>,
    session: bool,
}

impl InFlight {
    /// Counts one more join to `owner` (`session`: one more WebSocket session, counted apart),
    /// unless `limit` are in flight already.
    pub fn try_start(owner: &Owner, limit: u32, session: bool) -> Option<Self> {
        let counter = Self::counter(&owner.shared, session);
        let before = counter.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            owner: owner.shared.clone(),
            session,
        })
    }

    fn counter(owner: &OwnerState, session: bool) -> &AtomicU32 {
        if session {
            &owner.sessions
        } else {
            &owner.in_flight
        }
    }

    /// The owner's name.
    pub fn hostport(&self) -> &str {
        &self.owner.hostport
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        Self::counter(&self.owner, self.session).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an answer was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a /placement answer: {0}")]
    Syntax(String),
    #[error("the answering instance is {0}, not a member")]
    NotMember(String),
    #[error("the answer has no epoch")]
    NoEpoch,
    #[error("the published rule is invalid: {0}")]
    Rule(#[from] PlacementError),
    #[error("the answer says epoch {stated}, but its rule and members give {computed}")]
    EpochMismatch { stated: String, computed: String },
    #[error("the address of member {index}, {address:?}, is not ip:port")]
    BadAddress { index: u64, address: String },
    #[error("the answer gives an address for {0}, which is not a member")]
    AddressOfNonMember(u64),
}

impl Snapshot {
    /// Parses and verifies a `/placement` body fetched at `fetched_at`. Each member keeps the
    /// in-flight count it had in `previous`, so that a new epoch does not reset the limits.
    pub fn parse(
        body: &[u8],
        fetched_at: Instant,
        previous: Option<&Snapshot>,
    ) -> Result<Self, SnapshotError> {
        let answer: PlacementAnswer =
            serde_json::from_slice(body).map_err(|e| SnapshotError::Syntax(e.to_string()))?;
        if answer.state != MemberState::Member {
            return Err(SnapshotError::NotMember(answer.state.as_str().to_owned()));
        }
        let stated = answer.epoch.ok_or(SnapshotError::NoEpoch)?;
        let placement = Placement::new(answer.rule, answer.members)?;
        let computed = placement.epoch().to_string();
        if stated.parse::<Epoch>().ok() != Some(placement.epoch()) {
            return Err(SnapshotError::EpochMismatch { stated, computed });
        }
        let mut addresses = answer.addresses;
        let owners = placement
            .members()
            .iter()
            .map(|&index| {
                let address = match addresses.remove(&index) {
                    None => None,
                    Some(address) => Some(
                        address
                            .parse::<SocketAddr>()
                            .map_err(|_| SnapshotError::BadAddress { index, address })?
                            .to_string(),
                    ),
                };
                let hostport = placement.hostport(index);
                let shared = previous
                    .and_then(|p| p.member(index))
                    .filter(|o| o.shared.hostport == hostport)
                    .map_or_else(
                        || {
                            Arc::new(OwnerState {
                                hostport,
                                in_flight: AtomicU32::new(0),
                                sessions: AtomicU32::new(0),
                            })
                        },
                        |o| o.shared.clone(),
                    );
                Ok(Owner { shared, address })
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        if let Some((&index, _)) = addresses.first_key_value() {
            return Err(SnapshotError::AddressOfNonMember(index));
        }
        Ok(Self {
            placement,
            epoch: computed,
            owners,
            fetched_at,
        })
    }

    /// The owner of a valid id (fails only in numeric mode, for a non-number).
    pub fn owner(&self, id: &ClientId) -> Result<&Owner, IdError> {
        self.owner_position(id).map(|p| &self.owners[p])
    }

    /// Where the owner of a valid id is in [`Self::owners`].
    pub fn owner_position(&self, id: &ClientId) -> Result<usize, IdError> {
        let index = self.placement.index(id)?;
        Ok(self
            .placement
            .members()
            .binary_search(&index)
            .expect("Placement::index returns a member"))
    }

    /// Every member, in the order of [`Self::members`].
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// Member `index`, if it is one.
    fn member(&self, index: u64) -> Option<&Owner> {
        let position = self.placement.members().binary_search(&index).ok()?;
        Some(&self.owners[position])
    }

    /// The epoch as the servers write it (16 lowercase hex digits).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn members(&self) -> &[u64] {
        self.placement.members()
    }

    pub fn fetched_at(&self) -> Instant {
        self.fetched_at
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use poc_routing_placement::{IndexMode, Naming, PlacementSpec};
    use std::collections::BTreeMap;

    fn compose(mode: IndexMode, members: &[u64]) -> Placement {
        Placement::new(
            PlacementSpec::new(mode, Naming::compose()),
            members.iter().copied(),
        )
        .unwrap()
    }

    /// The address the test answers give member `index`.
    pub(crate) fn address(index: u64) -> String {
        format!("127.0.0.{}:8081", 10 + index)
    }

    /// A `/placement` body as a server writes it, for `members` of the Compose naming, each
    /// found at [`address`].
    pub(crate) fn answer(mode: &str, members: &[u64], epoch: Option<&str>) -> String {
        let rule = compose(mode.parse().unwrap(), members);
        let epoch = epoch.map_or_else(|| rule.epoch().to_string(), str::to_owned);
        let addresses: BTreeMap<u64, String> = members.iter().map(|&m| (m, address(m))).collect();
        serde_json::json!({
            "instance": 1, "state": "member", "discovery": "dns", "epoch": epoch,
            "members": members, "addresses": addresses, "replicas": members.len(), "mode": mode, "base": 1,
            "prefix": "poc-routing-server", "suffix": "", "port": 8081,
            "expected_replicas": null, "replicas_mismatch": false, "since_change_ms": 10,
            "previous": null, "peers": []
        })
        .to_string()
    }

    #[test]
    fn owners_follow_the_placement_crate() {
        let body = answer("hash", &[1, 2, 4], None);
        let snapshot = Snapshot::parse(body.as_bytes(), Instant::now(), None).unwrap();
        let rule = compose(IndexMode::Hash, &[1, 2, 4]);
        assert_eq!(snapshot.epoch(), rule.epoch().to_string());
        for i in 0..500 {
            let id = ClientId::try_from(format!("client-{i}").as_str()).unwrap();
            let index = rule.index(&id).unwrap();
            let owner = snapshot.owner(&id).unwrap();
            assert_eq!(owner.hostport(), rule.hostport(index));
            assert_eq!(owner.address.as_deref(), Some(address(index).as_str()));
        }
    }

    #[test]
    fn a_member_without_an_address_has_none_and_counts_carry_over() {
        let body = answer("hash", &[1, 2], None);
        let without_2 = body.replace(&format!(",\"2\":\"{}\"", address(2)), "");
        assert_ne!(body, without_2);
        let first = Snapshot::parse(body.as_bytes(), Instant::now(), None).unwrap();
        let held = InFlight::try_start(first.member(1).unwrap(), 1, false).unwrap();
        assert!(
            InFlight::try_start(first.member(1).unwrap(), 1, false).is_none(),
            "the limit holds"
        );
        let second = Snapshot::parse(without_2.as_bytes(), Instant::now(), Some(&first)).unwrap();
        assert!(second.member(2).unwrap().address.is_none());
        assert!(
            InFlight::try_start(second.member(1).unwrap(), 1, false).is_none(),
            "a new snapshot keeps the joins in flight"
        );
        drop(held);
        assert!(InFlight::try_start(second.member(1).unwrap(), 1, false).is_some());
    }

    #[test]
    fn numeric_mode_refuses_non_numbers() {
        let body = answer("numeric", &[1, 2, 3], None);
        let snapshot = Snapshot::parse(body.as_bytes(), Instant::now(), None).unwrap();
        let id = ClientId::try_from("abc").unwrap();
        assert_eq!(snapshot.owner(&id).unwrap_err(), IdError::NotNumeric);
        let id = ClientId::try_from("7").unwrap();
        assert_eq!(
            snapshot.owner(&id).unwrap().hostport(),
            "poc-routing-server-2:8081"
        );
    }

    #[test]
    fn answers_that_do_not_check_out_are_refused() {
        let good = answer("jump", &[1, 2, 3], None);
        let wrong_epoch = answer("jump", &[1, 2, 3], Some("0123456789abcdef"));
        let joining = good.replace("\"member\"", "\"joining\"");
        let no_epoch = answer("hash", &[1], None)
            .replace(&compose(IndexMode::Hash, &[1]).epoch().to_string(), "x");
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "not a /placement answer"),
            ("{}".into(), "missing field"),
            (wrong_epoch, "but its rule and members give"),
            (joining, "is joining, not a member"),
            (no_epoch, "but its rule and members give"),
            (good.replace("\"jump\"", "\"ring\""), "unknown index mode"),
            (
                good.replace("\"members\":[1,2,3]", "\"members\":[]"),
                "member list is empty",
            ),
            (
                good.replace("\"prefix\":\"poc-routing-server\"", "\"prefix\":\"-x\""),
                "not a DNS label",
            ),
            (
                good.replace("\"epoch\":\"", "\"epoch\":null,\"x\":\""),
                "has no epoch",
            ),
            (
                good.replace(&address(2), "poc-routing-server-2:8081"),
                "the address of member 2",
            ),
            (
                good.replace(
                    "\"addresses\":{",
                    "\"addresses\":{\"9\":\"127.0.0.9:8081\",",
                ),
                "for 9, which is not a member",
            ),
        ];
        for (body, expected) in cases {
            let err = Snapshot::parse(body.as_bytes(), Instant::now(), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{body}: EXPECTED {expected:?} RECEIVED {err:?}"
            );
        }
    }
}
