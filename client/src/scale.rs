//! One scale step under load, checked: the one implementation of the scaling check that the
//! local stack's tests, `make test-compose` and `make test-k8s` all run.
//!
//! A step: steady `/join` traffic (16 connections over 2000 ids) through Envoy; the change
//! (`docker compose up --scale`, `kubectl scale`, or the local stack adding or removing
//! instances); traffic until every view agrees on the new member count and a little longer;
//! then 1000 ids verified. It passes only with **0 non-2xx answers** during the step and every
//! id on its owner after it, and reports the joins sent, the transition window and how long
//! the views took to agree.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::Api;
use crate::ids::{self, IdKind};
use crate::load::{self, LoadReport};
use crate::verify::{verify, Report};
use crate::views::{self, InstanceView};

/// What a step is checked against.
#[derive(Debug, Clone)]
pub struct Expect {
    /// How many members every view must hold once the change is done.
    pub members: usize,
    /// How long the views may take to agree, from the start of the change.
    pub agree_within: Duration,
    /// The ids: numbers only in `numeric` mode.
    pub id_kind: IdKind,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// What the clients saw during the step.
    pub load: LoadReport,
    /// From the start of the change until every view agreed on the new member count.
    pub agreed_after_ms: u64,
    /// 1000 ids verified after the step.
    pub verified: Report,
    /// The views once they agreed.
    pub views: Vec<InstanceView>,
}

impl StepReport {
    /// One line: what the clients saw, and when the views agreed.
    pub fn summary(&self) -> String {
        format!(
            "{}; every view agreed {} ms after the change started; {}/{} ids on their owner after it",
            self.load.summary(),
            self.agreed_after_ms,
            self.verified.correct,
            self.verified.total
        )
    }
}

/// Why a step failed, with what was measured up to then.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the change failed: {0}")]
    Change(String),
    #[error("the views did not agree on {members} members within {within:?}:\n{views}")]
    NoAgreement {
        members: usize,
        within: Duration,
        views: String,
    },
    #[error("{} joins failed during the step (EXPECTED 0 non-2xx): {}", .0.failures(), .0.summary())]
    Failed(LoadReport),
    #[error("too little load to mean anything: {}", .0.summary())]
    TooLittleLoad(LoadReport),
    #[error("not every id was joined on its owner after the step:\n{}", .0.render())]
    Misrouted(Box<Report>),
}

/// Runs `change` under load through `public`, waits until the views read through `operator`
/// (Envoy's operator listener: one instance's `/placement` and its report of every peer) agree
/// on `expect.members`, and checks what clients saw.
pub async fn step<F>(
    public: &Api,
    operator: &Api,
    expect: &Expect,
    seed: u64,
    change: F,
) -> Result<StepReport, StepError>
where
    F: Future<Output = Result<(), String>>,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let traffic = {
        let (api, ids) = (public.clone(), ids::generate(2000, expect.id_kind, seed));
        tokio::spawn(async move {
            load::run(&api, ids, 16, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    // Steady traffic before the change.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let changed = change.await;
    let agreed = match changed {
        Ok(()) => agree(operator, expect, started).await,
        Err(e) => Err(StepError::Change(e)),
    };
    let agreed_after = started.elapsed();
    // Steady traffic after the change, past the transition window's traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(());
    let load = traffic.await.expect("the load task does not panic");
    let views = agreed?;
    if load.failures() > 0 {
        return Err(StepError::Failed(load));
    }
    if load.sent < 500 {
        return Err(StepError::TooLittleLoad(load));
    }
    let verified = verify(
        public,
        ids::generate(1000, expect.id_kind, seed + 1),
        16,
        |_| {},
    )
    .await;
    if !verified.all_correct() {
        return Err(StepError::Misrouted(Box::new(verified)));
    }
    Ok(StepReport {
        load,
        agreed_after_ms: agreed_after.as_millis() as u64,
        verified,
        views,
    })
}

/// Waits until there are `expect.members` views, every one a member's, all holding the same
/// epoch. A joining instance already holds its peers' view but is not in it yet, and a leaving
/// one is on its way out: neither counts as agreement.
async fn agree(
    operator: &Api,
    expect: &Expect,
    started: Instant,
) -> Result<Vec<InstanceView>, StepError> {
    loop {
        let seen = views::via(operator).await;
        let members = seen.iter().all(|v| v.state.as_deref() == Some("member"));
        if views::agree(&seen) && members && seen.len() == expect.members {
            return Ok(seen);
        }
        if started.elapsed() > expect.agree_within {
            return Err(StepError::NoAgreement {
                members: expect.members,
                within: expect.agree_within,
                views: views::render(&seen),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
