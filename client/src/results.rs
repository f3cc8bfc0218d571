//! A `poc-client verify --json --results` report read back (`poc-client results`): every id's
//! owner and outcome, summarised by owner, judged against an instance that is down, or searched
//! for an id a given instance owns.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::verify::{IdResult, Outcome};

/// The error kind of a join refused because its owner is down (Envoy's fail-closed answer).
pub const OWNER_UNAVAILABLE: &str = "join:http_503_owner_unavailable";

#[derive(Deserialize)]
struct ResultsFile {
    #[serde(default)]
    results: Vec<IdResult>,
}

/// Every id's result in the JSON `text` of a `verify --json --results` report, in the order
/// they were checked. A report without results (no `--results`) is an error.
pub fn parse(text: &str) -> Result<Vec<IdResult>, String> {
    let file: ResultsFile = serde_json::from_str(text)
        .map_err(|e| format!("not a poc-client verify --json report: {e}"))?;
    if file.results.is_empty() {
        return Err("no per-id results in it: run poc-client verify with --json --results".into());
    }
    Ok(file.results)
}

/// The first id `owner` owns, in the report's order; with `plain`, only an id of ASCII letters
/// and digits (one that goes into a URL, a header or a shell word as it is).
pub fn pick(results: &[IdResult], owner: u64, plain: bool) -> Option<&str> {
    results
        .iter()
        .filter(|r| r.owner == Some(owner))
        .map(|r| r.client_id.as_str())
        .find(|id| !plain || (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())))
}

/// What each owner's ids came to: a table with one row per owner (`-`: `/where` failed).
pub fn summary(results: &[IdResult]) -> String {
    #[derive(Default)]
    struct Row {
        total: usize,
        correct: usize,
        misrouted: usize,
        errors: BTreeMap<String, usize>,
    }
    let mut rows: BTreeMap<Option<u64>, Row> = BTreeMap::new();
    for r in results {
        let row = rows.entry(r.owner).or_default();
        row.total += 1;
        match &r.outcome {
            Outcome::Correct { .. } => row.correct += 1,
            Outcome::Misrouted { .. } => row.misrouted += 1,
            Outcome::Error { kind, .. } => *row.errors.entry(kind.clone()).or_default() += 1,
        }
    }
    let mut out = format!(
        "{:<6} {:>6} {:>8} {:>10}  ERRORS\n",
        "OWNER", "IDS", "CORRECT", "MISROUTED"
    );
    for (owner, row) in &rows {
        let errors = row
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "{:<6} {:>6} {:>8} {:>10}  {}",
            owner.map_or_else(|| "-".to_owned(), |o| o.to_string()),
            row.total,
            row.correct,
            row.misrouted,
            if errors.is_empty() { "-" } else { &errors }
        );
    }
    let correct: usize = rows.values().map(|r| r.correct).sum();
    let _ = writeln!(out, "{correct} of {} ids correct", results.len());
    out
}

/// A verify run judged against instance `down` being down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownJudgement {
    /// Ids `down` owns.
    pub down: usize,
    pub total: usize,
    /// What was wrong, one `EXPECTED ...\nRECEIVED ...` per id.
    pub wrong: Vec<String>,
    /// Fewer ids than this owned by `down` proves nothing.
    pub at_least: usize,
}

impl DownJudgement {
    pub fn passed(&self) -> bool {
        self.wrong.is_empty() && self.down >= self.at_least
    }

    /// One line: what clients saw, or why it failed.
    pub fn summary(&self) -> String {
        if self.passed() {
            format!(
                "{} clients of the killed server got 503 owner_unavailable; the other {} were served",
                self.down,
                self.total - self.down
            )
        } else {
            format!(
                "FAIL: {} wrong outcomes; {} ids owned by the killed server (at least {} required)",
                self.wrong.len(),
                self.down,
                self.at_least
            )
        }
    }
}

/// Judges a verify run made while instance `down` was down: every id it owns must have been
/// refused with 503 `owner_unavailable` (Envoy failed closed), and every other id joined on its
/// owner; and at least `at_least` ids must be its own.
pub fn judge_down(results: &[IdResult], down: u64, at_least: usize) -> DownJudgement {
    let mut judgement = DownJudgement {
        down: 0,
        total: results.len(),
        wrong: Vec::new(),
        at_least,
    };
    for r in results {
        if r.owner == Some(down) {
            judgement.down += 1;
            if !matches!(&r.outcome, Outcome::Error { kind, .. } if kind == OWNER_UNAVAILABLE) {
                judgement.wrong.push(format!(
                    "EXPECTED {OWNER_UNAVAILABLE} for {:?}\nRECEIVED {}",
                    r.client_id,
                    describe(r)
                ));
            }
        } else if !matches!(r.outcome, Outcome::Correct { instance } if Some(instance) == r.owner) {
            judgement.wrong.push(format!(
                "EXPECTED {:?} served by its owner {}\nRECEIVED {}",
                r.client_id,
                r.owner
                    .map_or_else(|| "(unknown)".to_owned(), |o| o.to_string()),
                describe(r)
            ));
        }
    }
    judgement
}

fn describe(r: &IdResult) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| format!("{r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, owner: Option<u64>, outcome: Outcome) -> IdResult {
        IdResult {
            client_id: id.into(),
            owner,
            outcome,
        }
    }

    fn refused(id: &str, owner: u64) -> IdResult {
        result(
            id,
            Some(owner),
            Outcome::Error {
                kind: OWNER_UNAVAILABLE.into(),
                detail: "HTTP 503".into(),
            },
        )
    }

    fn correct(id: &str, owner: u64) -> IdResult {
        result(id, Some(owner), Outcome::Correct { instance: owner })
    }

    #[test]
    fn reads_what_verify_writes() {
        let text = r#"{"url": "x", "total": 3, "results": [
            {"client_id": "a", "owner": 1, "outcome": "correct", "instance": 1},
            {"client_id": "b b", "owner": 2, "outcome": "error", "kind": "join:http_503_owner_unavailable", "detail": "d"},
            {"client_id": "c", "owner": null, "outcome": "error", "kind": "where:timeout", "detail": "d"},
            {"client_id": "d", "owner": 1, "outcome": "misrouted", "expected": 1, "answered_by": 2}]}"#;
        let results = parse(text).unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(
            results[1],
            result(
                "b b",
                Some(2),
                Outcome::Error {
                    kind: OWNER_UNAVAILABLE.into(),
                    detail: "d".into()
                }
            )
        );
        let table = summary(&results);
        assert!(table.contains("1 of 4 ids correct"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("- ")), "{table}");
        let err = parse(r#"{"url": "x", "total": 3}"#).unwrap_err();
        assert!(err.contains("--results"), "{err}");
        assert!(parse("[]").is_err());
    }

    #[test]
    fn picks_the_first_plain_id_of_an_owner() {
        let results = [
            correct("a b", 2),
            correct("x", 1),
            correct("Zoë", 2),
            correct("abc9", 2),
        ];
        assert_eq!(pick(&results, 2, false), Some("a b"));
        assert_eq!(pick(&results, 2, true), Some("abc9"));
        assert_eq!(pick(&results, 3, false), None);
    }

    #[test]
    fn a_down_owner_fails_closed_and_the_others_are_served() {
        let mut results = vec![correct("a", 1), refused("b", 2), correct("c", 3)];
        let j = judge_down(&results, 2, 1);
        assert!(j.passed(), "{j:?}");
        assert_eq!(
            j.summary(),
            "1 clients of the killed server got 503 owner_unavailable; the other 2 were served"
        );
        // Too few ids of the down instance to prove anything.
        assert!(!judge_down(&results, 2, 2).passed());
        // A down owner's id served, another owner's id refused, an id misrouted.
        results.push(correct("d", 2));
        results.push(refused("e", 1));
        results.push(result(
            "f",
            Some(3),
            Outcome::Misrouted {
                expected: 3,
                answered_by: 1,
            },
        ));
        let j = judge_down(&results, 2, 1);
        assert_eq!(j.wrong.len(), 3, "{j:?}");
        assert!(j.wrong[0].starts_with("EXPECTED join:http_503_owner_unavailable for \"d\""));
        assert!(j.wrong[1].starts_with("EXPECTED \"e\" served by its owner 1"));
        assert_eq!(
            j.summary(),
            "FAIL: 3 wrong outcomes; 2 ids owned by the killed server (at least 1 required)"
        );
    }
}
