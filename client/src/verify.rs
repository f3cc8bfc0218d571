//! End-to-end verification: for each id, ask `/where`, then `/join`, and check that the
//! instance which joined the client is the one `/where` named.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use poc_routing_wire::{JoinAnswer, Misdirected};

use crate::api::{Api, CallError, Join};

/// What happened to one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Joined on the instance `/where` named.
    Correct { instance: u64 },
    /// Joined or refused by an instance other than the one `/where` named.
    Misrouted { expected: u64, answered_by: u64 },
    /// `/where` or `/join` failed; `kind` is e.g. `join:http_503_owner_unavailable`.
    Error { kind: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdResult {
    pub client_id: String,
    /// The owner `/where` named, when it answered.
    pub owner: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Checks one id.
pub async fn check(api: &Api, id: &str) -> (IdResult, Option<Duration>, Option<Duration>) {
    let started = Instant::now();
    let placed = api.where_(id).await;
    let where_time = started.elapsed();
    let owner = match placed {
        Ok(w) => w.index,
        Err(e) => return (error_result(id, None, "where", &e), None, None),
    };
    let started = Instant::now();
    let joined = api.join(id).await;
    let join_time = started.elapsed();
    let outcome = match joined {
        // The owner registered another key than the one sent: the route's source was read
        // wrong somewhere between the client and the owner.
        Ok(Join::Joined(joined)) if joined.client_id != id => {
            let e = CallError::BadAnswer {
                url: api.route().path.clone(),
                reason: format!("joined as {:?}, not as the id sent", joined.client_id),
            };
            return (
                error_result(id, Some(owner), "join", &e),
                Some(where_time),
                Some(join_time),
            );
        }
        Ok(Join::Joined(joined)) if joined.instance == owner => Outcome::Correct {
            instance: joined.instance,
        },
        Ok(Join::Joined(JoinAnswer { instance, .. }))
        | Ok(Join::Misdirected(Misdirected { instance, .. })) => Outcome::Misrouted {
            expected: owner,
            answered_by: instance,
        },
        Err(e) => {
            return (
                error_result(id, Some(owner), "join", &e),
                Some(where_time),
                None,
            )
        }
    };
    (
        IdResult {
            client_id: id.to_owned(),
            owner: Some(owner),
            outcome,
        },
        Some(where_time),
        Some(join_time),
    )
}

fn error_result(id: &str, owner: Option<u64>, step: &str, e: &CallError) -> IdResult {
    IdResult {
        client_id: id.to_owned(),
        owner,
        outcome: Outcome::Error {
            kind: format!("{step}:{}", e.kind()),
            detail: e.to_string(),
        },
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}

/// The summary `poc-client verify` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub total: usize,
    pub correct: usize,
    pub misrouted: usize,
    pub errors: BTreeMap<String, usize>,
    pub joins_per_instance: BTreeMap<u64, usize>,
    pub where_latency: Latency,
    pub join_latency: Latency,
    pub elapsed_s: f64,
    /// Up to 20 failed ids, to start debugging from.
    pub failures: Vec<IdResult>,
    /// Every id's result (`verify --json --results`); left out of JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<IdResult>,
}

impl Report {
    /// True when every id was joined on its owner.
    pub fn all_correct(&self) -> bool {
        self.total > 0 && self.correct == self.total
    }

    /// A short human-readable summary with a table of joins per instance.
    pub fn render(&self) -> String {
        let mut out = format!(
            "verified {} ids against {} in {:.1}s\n  correct    {}\n  misrouted  {}\n  errors     {}\n",
            self.total,
            self.url,
            self.elapsed_s,
            self.correct,
            self.misrouted,
            self.errors.values().sum::<usize>()
        );
        for (kind, n) in &self.errors {
            out += &format!("    {kind:<40} {n}\n");
        }
        out += "\n  instance  joins\n  --------  -----\n";
        for (instance, n) in &self.joins_per_instance {
            out += &format!("  {instance:>8}  {n:>5}\n");
        }
        out += &format!(
            "\n  latency ms   p50     p99\n  /where    {:>6.2}  {:>6.2}\n  /join     {:>6.2}  {:>6.2}\n",
            self.where_latency.p50_ms,
            self.where_latency.p99_ms,
            self.join_latency.p50_ms,
            self.join_latency.p99_ms
        );
        for f in self.failures.iter().take(5) {
            out += &format!("  failed: {:?} {:?}\n", f.client_id, f.outcome);
        }
        out += if self.all_correct() {
            "RESULT: PASS, every join landed on its owner\n"
        } else {
            "RESULT: FAIL\n"
        };
        out
    }
}

/// Verifies every id with at most `concurrency` in flight; `on_done` is called after each id.
pub async fn verify(
    api: &Api,
    ids: Vec<String>,
    concurrency: usize,
    on_done: impl Fn(&IdResult),
) -> Report {
    let started = Instant::now();
    let mut where_h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut join_h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut results = Vec::with_capacity(ids.len());
    let mut stream = futures::stream::iter(ids)
        .map(|id| async move { check(api, &id).await })
        .buffer_unordered(concurrency.max(1));
    while let Some((result, where_time, join_time)) = stream.next().await {
        if let Some(t) = where_time {
            where_h.saturating_record(t.as_micros() as u64);
        }
        if let Some(t) = join_time {
            join_h.saturating_record(t.as_micros() as u64);
        }
        on_done(&result);
        results.push(result);
    }
    let mut report = Report {
        url: api.base().to_owned(),
        total: results.len(),
        correct: 0,
        misrouted: 0,
        errors: BTreeMap::new(),
        joins_per_instance: BTreeMap::new(),
        where_latency: Latency::of(&where_h),
        join_latency: Latency::of(&join_h),
        elapsed_s: started.elapsed().as_secs_f64(),
        failures: Vec::new(),
        results: Vec::new(),
    };
    for r in &results {
        match &r.outcome {
            Outcome::Correct { instance } => {
                report.correct += 1;
                *report.joins_per_instance.entry(*instance).or_default() += 1;
            }
            Outcome::Misrouted { .. } => report.misrouted += 1,
            Outcome::Error { kind, .. } => *report.errors.entry(kind.clone()).or_default() += 1,
        }
        if !matches!(r.outcome, Outcome::Correct { .. }) && report.failures.len() < 20 {
            report.failures.push(r.clone());
        }
    }
    report.results = results;
    report
}
