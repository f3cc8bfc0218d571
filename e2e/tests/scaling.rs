//! Scaling under steady load with the real Envoy: instances are added and removed live, as
//! `docker compose up --scale` and `kubectl scale` do, and clients must not notice. The full
//! sequences run the default module flow; a shorter one runs the Lua flow.
//!
//! Each step is `poc_routing_client::scale::step`, the same check `make test-compose` and
//! `make test-k8s` run through `poc-client scale-step`: steady `/join` traffic, the change,
//! traffic until every view agrees and a little longer, **0 non-2xx answers**, then 1000 ids
//! verified. Here the change is the local stack adding or removing instances.
//!
//! Registrations follow their clients: before each step another [`REGISTERED_PER_STEP`] known
//! ids are joined (and the step's own load joins more during it); after the step, once the
//! hand-offs settle, `poc-client audit`'s check finds every known id registered exactly once,
//! at its owner, and no id anywhere twice or misplaced. The settle time is printed.

use std::time::Duration;

use futures::StreamExt;
use poc_routing_client::audit;
use poc_routing_client::ids::IdKind;
use poc_routing_client::scale::{self, Expect};
use poc_routing_client::Api;
use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{Deployment, Stack};

/// Known ids joined before each step, on top of those of earlier steps.
const REGISTERED_PER_STEP: usize = 2000;

/// How long the hand-offs may take to settle after a step, at most (the goal is 2 s).
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// Joins every id of `ids` through `public`; each must be joined by its owner.
async fn join_all(public: &Api, ids: &[String]) {
    let failed: Vec<String> = futures::stream::iter(ids)
        .map(|id| async move {
            match public.join(id).await {
                Ok(poc_routing_client::Join::Joined(_)) => None,
                other => Some(format!("{id}: {other:?}")),
            }
        })
        .buffer_unordered(32)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    assert!(
        failed.is_empty(),
        "EXPECTED every join answered by its owner, RECEIVED {} failures, first {:?}",
        failed.len(),
        failed.first()
    );
}

/// After a step: waits for the hand-offs to settle and checks every registration.
async fn audit_registrations(name: &str, n: usize, operator: &Api, known: &[String]) {
    let (result, settled) = audit::settle(operator, Some(known), SETTLE_WITHIN).await;
    let audit = result.unwrap_or_else(|e| panic!("{name} step {n}: audit: {e}"));
    assert!(
        audit.clean(),
        "{name} step {n}: EXPECTED 0 lost, 0 duplicated, 0 misplaced, 0 pending within {SETTLE_WITHIN:?}, RECEIVED\n{}",
        audit.render()
    );
    eprintln!(
        "{name} step {n}: registrations settled in {} ms: {} known ids, {} registered, all at their owner once, each replica on its backup",
        settled.map_or(0, |d| d.as_millis()),
        known.len(),
        audit.registered
    );
}

/// One scaling step: instances to add, then instances to remove (SIGTERM, all at once).
struct Step {
    add: &'static [u64],
    remove: &'static [u64],
}

/// The step's change, as `--scale` makes it: new instances started (and healthy), or the
/// removed ones sent SIGTERM and gone on their own, well inside Compose's 10 s grace period.
async fn change(stack: &mut Stack, step: &Step) -> Result<(), String> {
    if !step.add.is_empty() {
        stack
            .add_instances(step.add)
            .await
            .map_err(|e| format!("add {:?}: {e:#}", step.add))?;
    }
    if !step.remove.is_empty() {
        let took = stack
            .remove_instances(step.remove)
            .await
            .map_err(|e| format!("the leaving instances exit on their own: {e:#}"))?;
        if took >= Duration::from_secs(8) {
            return Err(format!(
                "EXPECTED leaving instances to exit well inside Compose's 10 s grace period, RECEIVED {took:?}"
            ));
        }
    }
    Ok(())
}

async fn scale_under_load(
    deployment: Deployment,
    mode: IndexMode,
    flow: Flow,
    (replicas, first): (u64, u64),
    steps: &[Step],
) {
    let _turn = serial().await;
    let name = format!("scaling-{deployment:?}-{mode}-{flow:?}-{replicas}");
    let mut c = config(&name, replicas as u32, deployment, mode);
    c.flow = Some(flow);
    let mut stack = start(c).await;
    let expected: Vec<u64> = (first..first + replicas).collect();
    assert_eq!(stack.running(), expected);
    let (public, operator) = (api(&stack), operator(&stack));
    let id_kind = if mode == IndexMode::Numeric {
        IdKind::Numeric
    } else {
        IdKind::Mixed
    };
    let mut known: Vec<String> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let fresh =
            poc_routing_client::ids::generate(REGISTERED_PER_STEP, id_kind, 7_000 + n as u64);
        join_all(&public, &fresh).await;
        known.extend(fresh);
        known.sort();
        known.dedup();
        let before = stack.running();
        let members = before.len() + step.add.len() - step.remove.len();
        let expect = Expect {
            members,
            agree_within: Duration::from_secs(20),
            id_kind,
        };
        let report = scale::step(
            &public,
            &operator,
            &expect,
            100 + n as u64,
            change(&mut stack, step),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name} step {}: {before:?} -> {:?}: {e}",
                n + 1,
                stack.running()
            )
        });
        let after = stack.running();
        eprintln!(
            "{name} step {}: {before:?} -> {after:?}: {}",
            n + 1,
            report.summary()
        );
        // Every member owns some of the 1000 ids.
        let served: Vec<u64> = report.verified.joins_per_instance.keys().copied().collect();
        assert_eq!(served, after, "every member owns some of 1000 ids");
        audit_registrations(&name, n + 1, &operator, &known).await;
    }
    // Every instance counted its epoch changes in its metrics.
    let changes = epoch_changes(&stack).await;
    assert!(changes >= steps.len() as u64, "{changes} epoch changes");
}

/// `poc_epoch_changes_total` of the first running instance.
async fn epoch_changes(stack: &Stack) -> u64 {
    metric(stack, stack.running()[0], "poc_epoch_changes_total").await as u64
}

/// Compose numbering: container numbers are not kept contiguous. 2 -> 3 -> 2 (removing 1,
/// leaving a gap) -> 4 -> 1.
#[tokio::test]
async fn compose_naming_scales_2_3_2_4_1_with_no_failed_join() {
    scale_under_load(
        Deployment::Compose,
        IndexMode::Hash,
        Flow::Module,
        (2, 1),
        &[
            Step {
                add: &[3],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[1],
            },
            Step {
                add: &[4, 5],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[5, 4, 3],
            },
        ],
    )
    .await;
}

/// StatefulSet ordinals: scale-down removes the highest. 2 -> 3 -> 2 -> 4 -> 1.
#[tokio::test]
async fn kubernetes_naming_scales_2_3_2_4_1_with_no_failed_join() {
    scale_under_load(
        Deployment::Kubernetes,
        IndexMode::Jump,
        Flow::Module,
        (2, 0),
        &[
            Step {
                add: &[2],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[2],
            },
            Step {
                add: &[2, 3],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[3, 2, 1],
            },
        ],
    )
    .await;
}

/// The Lua flow (Lua asks /where per join) follows the epoch too: no failed join while
/// scaling, and afterwards every join lands on its owner.
#[tokio::test]
async fn the_lua_flow_scales_with_no_failed_join() {
    scale_under_load(
        Deployment::Compose,
        IndexMode::Jump,
        Flow::Lua,
        (2, 1),
        &[
            Step {
                add: &[3],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[1],
            },
        ],
    )
    .await;
}

/// Membership at a size where probing every peer every round overloaded the machine: 30
/// instances, five more, then those five gone again, under load, with 0 non-2xx and every view
/// agreeing after each step.
#[tokio::test]
async fn thirty_instances_scale_by_five_up_and_down_with_no_failed_join() {
    scale_under_load(
        Deployment::Compose,
        IndexMode::Jump,
        Flow::Module,
        (30, 1),
        &[
            Step {
                add: &[31, 32, 33, 34, 35],
                remove: &[],
            },
            Step {
                add: &[],
                remove: &[35, 34, 33, 32, 31],
            },
        ],
    )
    .await;
}
