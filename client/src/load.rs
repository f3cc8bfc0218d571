//! Steady `/join` traffic until told to stop: what clients see while the deployment changes.
//!
//! Every answer is counted by what it was: joined under the current epoch, joined under the
//! previous one (inside a transition window), or a failure by status and error code. The
//! transition window is measured from the joins themselves: from the first to the last one
//! served under the previous epoch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use poc_routing_wire::ServedUnder;

use crate::api::{Api, CallError, Join};

/// What the clients saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoadReport {
    /// Joins sent (answered or not).
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Of `ok`, how many were served under the previous epoch.
    pub previous_epoch_joins: u64,
    /// Milliseconds since the load started of the first and last previous-epoch join.
    pub transition_window_ms: Option<(u64, u64)>,
    /// Every other answer by kind: `http_421_misdirected`, `http_503_owner_unavailable`,
    /// `unreachable`...
    pub non_2xx: BTreeMap<String, u64>,
    /// The distinct epochs joins were served under, in the order first seen.
    pub epochs: Vec<String>,
    pub elapsed_ms: u64,
}

impl LoadReport {
    pub fn failures(&self) -> u64 {
        self.non_2xx.values().sum()
    }

    /// The transition window's length, first to last previous-epoch join.
    pub fn window_ms(&self) -> Option<u64> {
        self.transition_window_ms.map(|(first, last)| last - first)
    }

    /// One line for logs and test output.
    pub fn summary(&self) -> String {
        format!(
            "joins sent {}, 2xx {}, non-2xx {} {:?}, previous-epoch joins {}, transition window {}, epochs {}",
            self.sent,
            self.ok,
            self.failures(),
            self.non_2xx,
            self.previous_epoch_joins,
            match self.transition_window_ms {
                Some((a, b)) => format!("{} ms ({a}..{b} ms)", b - a),
                None => "none".into(),
            },
            self.epochs.len()
        )
    }

    fn record(&mut self, at_ms: u64, answer: Result<Join, CallError>) {
        self.sent += 1;
        match answer {
            Ok(Join::Joined(joined)) => {
                self.ok += 1;
                if !self.epochs.contains(&joined.epoch) {
                    self.epochs.push(joined.epoch);
                }
                if joined.served_under == ServedUnder::Previous {
                    self.previous_epoch_joins += 1;
                    let (first, _) = self.transition_window_ms.unwrap_or((at_ms, at_ms));
                    self.transition_window_ms = Some((first, at_ms));
                }
            }
            Ok(Join::Misdirected(_)) => {
                *self
                    .non_2xx
                    .entry("http_421_misdirected".into())
                    .or_default() += 1;
            }
            Err(e) => *self.non_2xx.entry(e.kind()).or_default() += 1,
        }
    }
}

/// Joins `ids` round-robin from `concurrency` workers until `stop` completes; each worker
/// finishes the request it has in flight.
pub async fn run(
    api: &Api,
    ids: Vec<String>,
    concurrency: usize,
    stop: impl Future<Output = ()>,
) -> LoadReport {
    assert!(!ids.is_empty(), "load needs at least one id");
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (api, ids, next, report) = (api.clone(), ids.clone(), next.clone(), report.clone());
            let stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                while !*stop_rx.borrow() {
                    let id = &ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
                    let answer = api.join(id).await;
                    let at_ms = started.elapsed().as_millis() as u64;
                    report
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(at_ms, answer);
                }
            })
        })
        .collect();
    stop.await;
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    let mut report = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use poc_routing_wire::{JoinAnswer, Misdirected};

    #[test]
    fn answers_are_counted_by_kind_and_the_window_spans_previous_epoch_joins() {
        let mut r = LoadReport::default();
        let ok = |served_under: ServedUnder, epoch: &str| {
            Ok(Join::Joined(JoinAnswer {
                client_id: "c".into(),
                status: "joined".into(),
                instance: 1,
                owner: 1,
                hostport: "h:1".into(),
                epoch: epoch.into(),
                served_under,
            }))
        };
        let unavailable = || {
            Err(CallError::Status {
                status: 503,
                code: "owner_unavailable".into(),
                message: String::new(),
            })
        };
        r.record(5, ok(ServedUnder::Current, "a"));
        r.record(10, ok(ServedUnder::Previous, "a"));
        r.record(12, ok(ServedUnder::Current, "b"));
        r.record(40, ok(ServedUnder::Previous, "a"));
        r.record(
            41,
            Ok(Join::Misdirected(Misdirected {
                client_id: "c".into(),
                instance: 1,
                owner: 2,
                owner_hostport: "h:2".into(),
                epoch: "b".into(),
                routed_epoch: None,
            })),
        );
        r.record(42, unavailable());
        r.record(43, unavailable());
        r.record(
            44,
            Err(CallError::Timeout {
                url: "http://x".into(),
            }),
        );
        assert_eq!((r.sent, r.ok, r.previous_epoch_joins), (8, 4, 2));
        assert_eq!(r.transition_window_ms, Some((10, 40)));
        assert_eq!(r.window_ms(), Some(30));
        assert_eq!(r.failures(), 4);
        assert_eq!(r.non_2xx["http_503_owner_unavailable"], 2);
        assert_eq!(r.non_2xx["http_421_misdirected"], 1);
        assert_eq!(r.non_2xx["timeout"], 1);
        assert_eq!(r.epochs, ["a", "b"]);
    }
}
