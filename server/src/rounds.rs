//! When discovery rounds run: one at a time, and fresh enough for whoever asked.
//!
//! A caller that needs a new observation (a join routed by an epoch this instance does not
//! hold yet, the leaving loop, the periodic loop) must get a round that **started after it
//! asked**. A round already under way when it asked may have probed its peers before the
//! epoch it carries existed, so it does not count; one that started later does, and is shared
//! by everyone waiting.
//!
//! Rounds asked for by requests are spaced by a minimum gap, so a flood of forged epochs costs
//! a bounded number of rounds a second. They are delayed, never skipped: skipping refused real
//! joins while a scale-down was in progress (a peer had already adopted the new view, and the
//! owner refused the joins routed by it because its last round was a few milliseconds old).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Serialises rounds and counts them.
#[derive(Debug, Default)]
pub struct Rounds {
    /// Held while a round runs; also holds when the last on-demand round ended.
    running: tokio::sync::Mutex<Option<Instant>>,
    /// Rounds started so far (each one has finished once `running` is free again).
    started: AtomicU64,
}

impl Rounds {
    /// Waits until a round that started after this call has finished, running `round` itself
    /// unless another caller's round did. With `min_gap`, a round it runs starts at least that
    /// long after the previous on-demand round ended. Returns whether it ran `round`.
    pub async fn fresh<F: Future<Output = ()>>(
        &self,
        min_gap: Option<Duration>,
        round: impl FnOnce() -> F,
    ) -> bool {
        let ticket = self.started.load(Ordering::Acquire);
        let mut last_on_demand = self.running.lock().await;
        if self.started.load(Ordering::Acquire) > ticket {
            // A round started after this call and, since the lock is free again, finished.
            return false;
        }
        if let (Some(gap), Some(last)) = (min_gap, *last_on_demand) {
            let wait = gap.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.started.fetch_add(1, Ordering::AcqRel);
        round().await;
        if min_gap.is_some() {
            *last_on_demand = Some(Instant::now());
        }
        true
    }

    /// Rounds started so far.
    #[cfg(test)]
    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;

    /// Starts a round that lasts until the returned sender fires, and waits until it runs.
    async fn slow_round(
        rounds: &Arc<Rounds>,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<bool>) {
        let (release, hold) = oneshot::channel::<()>();
        let (running_tx, running) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let rounds = rounds.clone();
            async move {
                rounds
                    .fresh(None, || async move {
                        running_tx.send(()).unwrap();
                        hold.await.unwrap();
                    })
                    .await
            }
        });
        running.await.unwrap();
        (release, task)
    }

    #[tokio::test]
    async fn a_round_already_running_when_asked_does_not_count() {
        let rounds = Arc::new(Rounds::default());
        let (release, first) = slow_round(&rounds).await;
        let asked = tokio::spawn({
            let rounds = rounds.clone();
            async move {
                rounds
                    .fresh(Some(Duration::from_millis(1)), || async {})
                    .await
            }
        });
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert!(first.await.unwrap());
        assert!(
            asked.await.unwrap(),
            "the caller must run a round of its own"
        );
        assert_eq!(rounds.started(), 2);
    }

    #[tokio::test]
    async fn callers_waiting_together_share_the_next_round() {
        let rounds = Arc::new(Rounds::default());
        let (release, first) = slow_round(&rounds).await;
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move { rounds.fresh(None, || async {}).await })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        first.await.unwrap();
        let mut ran = 0;
        for w in waiting {
            ran += u32::from(w.await.unwrap());
        }
        assert_eq!(
            ran, 1,
            "one round serves every caller that asked during the first"
        );
        assert_eq!(rounds.started(), 2);
    }

    #[tokio::test]
    async fn an_on_demand_round_right_after_another_is_delayed_not_skipped() {
        let rounds = Rounds::default();
        let gap = Some(Duration::from_millis(200));
        assert!(rounds.fresh(gap, || async {}).await);
        let asked = Instant::now();
        assert!(rounds.fresh(gap, || async {}).await);
        assert_eq!(rounds.started(), 2);
        assert!(
            asked.elapsed() >= Duration::from_millis(150),
            "the second round waited for the gap: {:?}",
            asked.elapsed()
        );
    }
}
