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
//! Hand-offs take a moment after a scale change, so [`settle`] audits again until the result
//! is clean or a bound passes, and reports how long that took.

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
    pub examples: Vec<String>,
}

/// The most examples an [`Audit`] lists.
pub const SHOWN: usize = 10;

impl Audit {
    /// Nothing lost, duplicated, misplaced or pending, and every instance read.
    pub fn clean(&self) -> bool {
        self.unreadable.is_empty()
            && self.lost == 0
            && self.duplicated == 0
            && self.misplaced == 0
            && self.pending == 0
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
        for u in &self.unreadable {
            out += &format!("  unreadable: {u}\n");
        }
        for e in &self.examples {
            out += &format!("  {e}\n");
        }
        out += if self.clean() {
            "RESULT: PASS, every registration is at its owner, once\n"
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
    for i in &report.instances {
        audit.pending += i.pending;
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
}
