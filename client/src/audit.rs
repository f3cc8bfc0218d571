//! `poc-client audit`: is every client registered exactly once, at its current owner?
//!
//! It reads, through Envoy's operator listener, every instance's registered ids (one instance
//! gathers them from all the instances its view names: `GET /registrations`) and that
//! instance's view (`GET /placement`), and computes each id's owner under that view with the
//! placement crate, as the servers do. An id is:
//! - **lost** when it was expected (`--ids`) and no instance holds it;
//! - **duplicated** when more than one instance holds it;
//! - **misplaced** when the one instance holding it is not its owner.
//!
//! And every replica is where it belongs: when the instances keep replicas, each registered
//! id's replica must be on its backup ([`Placement::backup`]) and nowhere else. A replica is
//! - **missing** when the id's backup holds none;
//! - **extra** when an instance other than the id's backup holds one;
//! - **stale** while its owner reports records changed and not yet acknowledged by their backup
//!   (`replication_pending`, counted in all).
//!
//! Hand-offs and replication take a moment after a scale change, so [`settle`] audits again
//! until the result is clean or a bound passes, and reports how long that took.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use poc_routing_placement::{ClientId, Placement};
use poc_routing_wire::{PlacementAnswer, RegistrationsReport};
use serde::Serialize;

use crate::api::{Api, CallError};

/// What one audit found. Lists hold at most [`SHOWN`] examples; the counts are complete.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// The epoch of the view ids were placed by (the answering instance's).
    pub epoch: Option<String>,
    pub instances: usize,
    /// Instances whose registrations could not be read, or that hold another epoch.
    pub unreadable: Vec<String>,
    /// Distinct ids registered anywhere.
    pub registered: usize,
    /// Ids registered at their owner, once.
    pub correct: usize,
    pub expected: Option<usize>,
    pub lost: usize,
    pub duplicated: usize,
    pub misplaced: usize,
    /// Registrations instances hold for ids owned elsewhere, not yet acknowledged.
    pub pending: u64,
    /// Whether every instance keeps replicas (then they are checked).
    pub replicas_checked: bool,
    pub replicas: usize,
    pub replicas_missing: usize,
    pub replicas_extra: usize,
    /// Records changed on their owner and not yet acknowledged by their backup.
    pub replicas_stale: u64,
    pub examples: Vec<String>,
}

/// The most examples an [`Audit`] lists.
pub const SHOWN: usize = 10;

impl Audit {
    /// Nothing lost, duplicated, misplaced or pending, every instance read, and (when the
    /// instances keep replicas) every replica on its backup, current, and nowhere else.
    pub fn clean(&self) -> bool {
        self.unreadable.is_empty()
            && self.lost == 0
            && self.duplicated == 0
            && self.misplaced == 0
            && self.pending == 0
            && self.replicas_missing == 0
            && self.replicas_extra == 0
            && self.replicas_stale == 0
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "epoch {}: {} instances, {} ids registered, {} at their owner once\n",
            self.epoch.as_deref().unwrap_or("-"),
            self.instances,
            self.registered,
            self.correct
        );
        if let Some(expected) = self.expected {
            out += &format!("expected {expected}: {} lost\n", self.lost);
        }
        out += &format!(
            "duplicated {}, misplaced {}, pending hand-offs {}\n",
            self.duplicated, self.misplaced, self.pending
        );
        out += &if self.replicas_checked {
            format!(
                "replicas {}: missing {}, extra {}, stale {}\n",
                self.replicas, self.replicas_missing, self.replicas_extra, self.replicas_stale
            )
        } else {
            "replicas: not kept (REPLICATION=off on some instance)\n".to_owned()
        };
        for u in &self.unreadable {
            out += &format!("  unreadable: {u}\n");
        }
        for e in &self.examples {
            out += &format!("  {e}\n");
        }
        out += if self.clean() {
            "RESULT: PASS, every registration is at its owner, once, and its replica on its backup\n"
        } else {
            "RESULT: FAIL\n"
        };
        out
    }
}

/// One audit through `operator` (Envoy's operator listener). `expected`: the ids that were
/// joined, to count the lost ones.
pub async fn audit(operator: &Api, expected: Option<&[String]>) -> Result<Audit, CallError> {
    let report: RegistrationsReport = operator.get_typed("/registrations").await?;
    let view: PlacementAnswer = operator.get_typed("/placement").await?;
    let bad = |reason: String| CallError::BadAnswer {
        url: format!("{}/placement", operator.base()),
        reason,
    };
    let placement = Placement::new(view.rule.clone(), view.members.iter().copied())
        .map_err(|e| bad(format!("no usable view: {e}")))?;
    Ok(judge(&report, &placement, expected))
}

/// The audit of `report` against `placement` (pure, for tests).
pub fn judge(
    report: &RegistrationsReport,
    placement: &Placement,
    expected: Option<&[String]>,
) -> Audit {
    let epoch = placement.epoch().to_string();
    let mut audit = Audit {
        epoch: Some(epoch.clone()),
        instances: report.instances.len(),
        expected: expected.map(<[String]>::len),
        ..Audit::default()
    };
    let mut holders: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut replica_holders: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    audit.replicas_checked = report.instances.iter().all(|i| i.replicas.is_some());
    for i in &report.instances {
        audit.pending += i.pending;
        audit.replicas_stale += i.replication_pending;
        for id in i.replicas.iter().flatten() {
            replica_holders.entry(id).or_default().push(i.instance);
        }
        if let Some(e) = &i.error {
            audit
                .unreadable
                .push(format!("instance {}: {e}", i.instance));
        } else if i.epoch.as_deref() != Some(epoch.as_str()) {
            audit.unreadable.push(format!(
                "instance {} holds epoch {}, not {epoch}",
                i.instance,
                i.epoch.as_deref().unwrap_or("none")
            ));
        }
        for id in &i.ids {
            holders.entry(id).or_default().push(i.instance);
        }
    }
    audit.registered = holders.len();
    let mut examples = Vec::new();
    for (id, at) in &holders {
        let owner = ClientId::try_from(*id)
            .ok()
            .and_then(|c| placement.index(&c).ok());
        if at.len() > 1 {
            audit.duplicated += 1;
            examples.push(format!(
                "duplicated: {id} on instances {at:?} (owner {owner:?})"
            ));
        } else if Some(at[0]) != owner {
            audit.misplaced += 1;
            examples.push(format!(
                "misplaced: {id} on instance {} (owner {owner:?})",
                at[0]
            ));
        } else {
            audit.correct += 1;
        }
    }
    if audit.replicas_checked {
        audit.replicas = replica_holders.values().map(Vec::len).sum();
        let backup = |id: &str| {
            ClientId::try_from(id)
                .ok()
                .and_then(|c| placement.backup(&c).ok().flatten())
        };
        for id in holders.keys() {
            let Some(b) = backup(id) else { continue };
            if !replica_holders.get(id).is_some_and(|at| at.contains(&b)) {
                audit.replicas_missing += 1;
                examples.push(format!("replica missing: {id} (backup {b})"));
            }
        }
        for (id, at) in &replica_holders {
            let b = backup(id);
            for extra in at.iter().filter(|i| Some(**i) != b) {
                audit.replicas_extra += 1;
                examples.push(format!(
                    "replica extra: {id} on instance {extra} (backup {b:?})"
                ));
            }
        }
    }
    if let Some(expected) = expected {
        let wanted: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        for id in wanted.iter().filter(|id| !holders.contains_key(*id)) {
            audit.lost += 1;
            examples.push(format!("lost: {id}"));
        }
    }
    examples.truncate(SHOWN);
    audit.examples = examples;
    audit
}

/// Audits until the result is clean or `within` passes; the last audit, and how long it took
/// to be clean (`None`: it never was).
pub async fn settle(
    operator: &Api,
    expected: Option<&[String]>,
    within: Duration,
) -> (Result<Audit, CallError>, Option<Duration>) {
    let started = Instant::now();
    loop {
        let result = audit(operator, expected).await;
        if result.as_ref().is_ok_and(Audit::clean) {
            return (result, Some(started.elapsed()));
        }
        if started.elapsed() >= within {
            return (result, None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Judges what a stranger gathered: `answer` is the `/registrations` answer of an instance
/// that runs without the cluster's credential (`stranger`, asked with its own operator token),
/// which asks every instance DNS names over the peer plane. Every other instance must have
/// refused it and it must hold no id of theirs; at least one must have been asked. The line to
/// print when it passes, or why it failed.
pub fn stranger_read_nothing(
    answer: &RegistrationsReport,
    stranger: u64,
) -> Result<String, String> {
    let others: Vec<_> = answer
        .instances
        .iter()
        .filter(|i| i.instance != stranger)
        .collect();
    let read: usize = others.iter().map(|i| i.ids.len()).sum();
    let refused = others
        .iter()
        .filter(|i| i.error.as_deref().is_some_and(|e| !e.is_empty()))
        .count();
    if others.is_empty() || read > 0 || refused != others.len() {
        return Err(format!(
            "FAIL: the stranger reads client ids over the peer plane\nEXPECTED every instance refusing it, 0 ids\nRECEIVED {} instances asked, {refused} refused, {read} ids",
            others.len()
        ));
    }
    Ok(format!(
        "the stranger asked {} instances for their registrations: all refused it, 0 ids read",
        others.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use poc_routing_placement::{IndexMode, Naming, PlacementSpec};
    use poc_routing_wire::InstanceRegistrations;

    #[test]
    fn lost_duplicated_and_misplaced_ids_are_counted() {
        let placement = Placement::new(
            PlacementSpec::new(IndexMode::Hash, Naming::compose()),
            [1, 2],
        )
        .unwrap();
        let owner = |id: &str| placement.index(&ClientId::try_from(id).unwrap()).unwrap();
        let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let of = |o: u64| {
            ids.iter()
                .filter(|id| owner(id) == o)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (mut one, mut two) = (of(1), of(2));
        let lost = one.pop().unwrap();
        let dup = two[0].clone();
        one.push(dup.clone());
        let misplaced = two.pop().unwrap();
        one.push(misplaced);
        let epoch = Some(placement.epoch().to_string());
        let instance = |instance, ids: Vec<String>| InstanceRegistrations {
            instance,
            epoch: epoch.clone(),
            pending: 0,
            ids,
            replicas: None,
            replication_pending: 0,
            error: None,
        };
        let report = RegistrationsReport {
            via: Some(1),
            epoch: epoch.clone(),
            instances: vec![instance(1, one), instance(2, two)],
        };
        let audit = judge(&report, &placement, Some(&ids));
        assert_eq!((audit.lost, audit.duplicated, audit.misplaced), (1, 1, 1));
        assert_eq!(audit.correct, 40 - 3);
        assert!(!audit.clean());
        assert!(audit.examples.iter().any(|e| e.contains(&lost)));
        // Every id once at its owner: clean.
        let report = RegistrationsReport {
            via: Some(1),
            epoch: epoch.clone(),
            instances: vec![instance(1, of(1)), instance(2, of(2))],
        };
        let audit = judge(&report, &placement, Some(&ids));
        assert!(audit.clean(), "{audit:?}");
    }

    #[test]
    fn replicas_missing_extra_and_stale_are_counted() {
        let placement = Placement::new(
            PlacementSpec::new(IndexMode::Hash, Naming::compose()),
            [1, 2, 3],
        )
        .unwrap();
        let place = |id: &str| {
            let c = ClientId::try_from(id).unwrap();
            (
                placement.index(&c).unwrap(),
                placement.backup(&c).unwrap().unwrap(),
            )
        };
        let ids: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
        let epoch = Some(placement.epoch().to_string());
        // Each instance: the ids it owns, and the replicas it holds as their backup.
        let layout = |owned_by: &dyn Fn(&str) -> u64, backed_up_by: &dyn Fn(&str) -> u64| {
            (1..=3)
                .map(|i| InstanceRegistrations {
                    instance: i,
                    epoch: epoch.clone(),
                    pending: 0,
                    ids: ids.iter().filter(|id| owned_by(id) == i).cloned().collect(),
                    replicas: Some(
                        ids.iter()
                            .filter(|id| backed_up_by(id) == i)
                            .cloned()
                            .collect(),
                    ),
                    replication_pending: 0,
                    error: None,
                })
                .collect::<Vec<_>>()
        };
        let report = |instances| RegistrationsReport {
            via: Some(1),
            epoch: epoch.clone(),
            instances,
        };
        // Every replica on its backup: clean.
        let right = layout(&|id| place(id).0, &|id| place(id).1);
        let audit = judge(&report(right.clone()), &placement, Some(&ids));
        assert!(audit.clean(), "{}", audit.render());
        assert_eq!(audit.replicas, 60);
        // One replica moved to the wrong instance: missing on its backup, extra where it is.
        let moved = ids[0].clone();
        let wrong = |id: &str| {
            let (owner, backup) = place(id);
            if id == moved {
                6 - owner - backup
            } else {
                backup
            }
        };
        let audit = judge(
            &report(layout(&|id| place(id).0, &wrong)),
            &placement,
            Some(&ids),
        );
        assert_eq!(
            (audit.replicas_missing, audit.replicas_extra),
            (1, 1),
            "{}",
            audit.render()
        );
        assert!(!audit.clean());
        // A change not yet acknowledged: stale.
        let mut stale = right.clone();
        stale[1].replication_pending = 3;
        let audit = judge(&report(stale), &placement, Some(&ids));
        assert_eq!(audit.replicas_stale, 3);
        assert!(!audit.clean());
        // An instance that keeps no replicas: not checked, the rest still is.
        let mut off = right;
        off[2].replicas = None;
        let audit = judge(&report(off), &placement, Some(&ids));
        assert!(!audit.replicas_checked);
        assert!(audit.clean(), "{}", audit.render());
    }

    #[test]
    fn a_stranger_is_refused_by_every_instance() {
        let entry = |instance: u64, ids: &[&str], error: Option<&str>| InstanceRegistrations {
            instance,
            epoch: None,
            pending: 0,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            replicas: None,
            replication_pending: 0,
            error: error.map(str::to_owned),
        };
        let answer = |instances| RegistrationsReport {
            via: Some(77),
            epoch: None,
            instances,
        };
        let refused = answer(vec![
            entry(0, &[], Some("HTTP 403")),
            entry(1, &[], Some("TLS handshake")),
            entry(77, &[], None),
        ]);
        assert_eq!(
            stranger_read_nothing(&refused, 77).unwrap(),
            "the stranger asked 2 instances for their registrations: all refused it, 0 ids read"
        );
        // One answered it; or nobody was asked.
        let answered = answer(vec![entry(0, &["a", "b"], None), entry(1, &[], Some("x"))]);
        let e = stranger_read_nothing(&answered, 77).unwrap_err();
        assert!(
            e.ends_with("RECEIVED 2 instances asked, 1 refused, 2 ids"),
            "{e}"
        );
        let empty_but_answered = answer(vec![entry(0, &[], None)]);
        assert!(stranger_read_nothing(&empty_but_answered, 77).is_err());
        assert!(stranger_read_nothing(&answer(vec![entry(77, &[], None)]), 77).is_err());
    }
}
