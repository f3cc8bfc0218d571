//! A verified `GET /placement` answer: the rule, the members, the epoch, and every member's
//! hostport, ready for per-request lookups.
//!
//! The filter trusts an answer only if recomputing its epoch from its own rule and members
//! gives the epoch it states. A truncated or mixed-up answer is dropped, and the filter keeps
//! routing by the last one that checked out.
#![forbid(unsafe_code)]

use std::time::Instant;

use poc_routing_placement::{ClientId, Epoch, IdError, Placement, PlacementError, PlacementSpec};
use serde::Deserialize;

/// The fields of a `/placement` answer the filter needs (the rest is for operators).
#[derive(Deserialize)]
struct Answer {
    state: String,
    epoch: Option<String>,
    members: Vec<u64>,
    #[serde(flatten)]
    rule: PlacementSpec,
}

/// One member list with its epoch, as a server published it.
#[derive(Debug)]
pub struct Snapshot {
    placement: Placement,
    epoch: String,
    /// `hostports[i]` is the hostport of `placement.members()[i]`.
    hostports: Vec<String>,
    fetched_at: Instant,
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
}

impl Snapshot {
    /// Parses and verifies a `/placement` body fetched at `fetched_at`.
    pub fn parse(body: &[u8], fetched_at: Instant) -> Result<Self, SnapshotError> {
        let answer: Answer =
            serde_json::from_slice(body).map_err(|e| SnapshotError::Syntax(e.to_string()))?;
        if answer.state != "member" {
            return Err(SnapshotError::NotMember(answer.state));
        }
        let stated = answer.epoch.ok_or(SnapshotError::NoEpoch)?;
        let placement = Placement::new(answer.rule, answer.members)?;
        let computed = placement.epoch().to_string();
        if stated.parse::<Epoch>().ok() != Some(placement.epoch()) {
            return Err(SnapshotError::EpochMismatch { stated, computed });
        }
        let hostports = placement
            .members()
            .iter()
            .map(|&m| placement.hostport(m))
            .collect();
        Ok(Self {
            placement,
            epoch: computed,
            hostports,
            fetched_at,
        })
    }

    /// The owner's hostport for a valid id (fails only in numeric mode, for a non-number).
    pub fn owner(&self, id: &ClientId) -> Result<&str, IdError> {
        let index = self.placement.index(id)?;
        let position = self
            .placement
            .members()
            .binary_search(&index)
            .expect("Placement::index returns a member");
        Ok(&self.hostports[position])
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
    use poc_routing_placement::{IndexMode, Naming};

    fn compose(mode: IndexMode, members: &[u64]) -> Placement {
        Placement::new(
            PlacementSpec::new(mode, Naming::compose()),
            members.iter().copied(),
        )
        .unwrap()
    }

    /// A `/placement` body as a server writes it, for `members` of the Compose naming.
    pub(crate) fn answer(mode: &str, members: &[u64], epoch: Option<&str>) -> String {
        let rule = compose(mode.parse().unwrap(), members);
        let epoch = epoch.map_or_else(|| rule.epoch().to_string(), str::to_owned);
        serde_json::json!({
            "instance": 1, "state": "member", "discovery": "dns", "epoch": epoch,
            "members": members, "replicas": members.len(), "mode": mode, "base": 1,
            "prefix": "poc-routing-server", "suffix": "", "port": 8081,
            "expected_replicas": null, "replicas_mismatch": false, "since_change_ms": 10,
            "previous": null, "peers": []
        })
        .to_string()
    }

    #[test]
    fn owners_follow_the_placement_crate() {
        let body = answer("hash", &[1, 2, 4], None);
        let snapshot = Snapshot::parse(body.as_bytes(), Instant::now()).unwrap();
        let rule = compose(IndexMode::Hash, &[1, 2, 4]);
        assert_eq!(snapshot.epoch(), rule.epoch().to_string());
        for i in 0..500 {
            let id = ClientId::try_from(format!("client-{i}").as_str()).unwrap();
            assert_eq!(
                snapshot.owner(&id).unwrap(),
                rule.hostport(rule.index(&id).unwrap())
            );
        }
    }

    #[test]
    fn numeric_mode_refuses_non_numbers() {
        let body = answer("numeric", &[1, 2, 3], None);
        let snapshot = Snapshot::parse(body.as_bytes(), Instant::now()).unwrap();
        let id = ClientId::try_from("abc").unwrap();
        assert_eq!(snapshot.owner(&id), Err(IdError::NotNumeric));
        let id = ClientId::try_from("7").unwrap();
        assert_eq!(snapshot.owner(&id).unwrap(), "poc-routing-server-2:8081");
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
        ];
        for (body, expected) in cases {
            let err = Snapshot::parse(body.as_bytes(), Instant::now())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{body}: EXPECTED {expected:?} RECEIVED {err:?}"
            );
        }
    }
}
