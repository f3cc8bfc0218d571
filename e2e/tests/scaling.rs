//! Scaling under steady load with the real Envoy: instances are added and removed live, as
//! `docker compose up --scale` and `kubectl scale` do, and clients must not notice. The full
//! sequences run the default module flow; a shorter one runs the Lua flow.
//!
//! For each step: steady `/join` traffic from 16 connections over 2000 ids, the change, then
//! traffic until every instance holds the new view and a little longer. The step must see
//! **0 non-2xx answers**, and afterwards 1000 ids are verified 100% correct. Each step prints the
//! joins sent, the non-2xx answers by code, the transition window (first to last join served
//! under the previous epoch) and the time until every view agreed.

use std::time::{Duration, Instant};

use poc_routing_client::{load, verify, LoadReport};
use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{Naming, Stack};

/// One scaling step: instances to add, then instances to remove (SIGTERM, all at once).
struct Step {
    add: &'static [u64],
    remove: &'static [u64],
}

/// Runs `change` under load; returns what the clients saw and how long until every view agreed
/// (measured from the start of the change).
async fn under_load(stack: &mut Stack, step: &Step, ids: &[String]) -> (LoadReport, Duration) {
    let api = api(stack);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load = {
        let (api, ids) = (api.clone(), ids.to_vec());
        tokio::spawn(async move {
            load::run(&api, ids, 16, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    // Steady traffic before the change.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let changed = Instant::now();
    if !step.add.is_empty() {
        stack.add_instances(step.add).await.expect("add instances");
    }
    if !step.remove.is_empty() {
        let took = stack
            .remove_instances(step.remove)
            .await
            .expect("the leaving instances exit on their own after SIGTERM");
        assert!(
            took < Duration::from_secs(8),
            "EXPECTED leaving instances to exit well inside Compose's 10 s grace period\nRECEIVED {took:?}"
        );
    }
    stack
        .wait_views_agree(Duration::from_secs(20))
        .await
        .expect("every view agrees");
    let agreed = changed.elapsed();
    // Steady traffic after the change, past the transition window's traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(());
    (load.await.expect("the load task"), agreed)
}

async fn scale_under_load(naming: Naming, mode: IndexMode, flow: Flow, first: u64, steps: &[Step]) {
    let _turn = serial().await;
    let name = format!("scaling-{naming:?}-{mode}-{flow:?}");
    let mut c = config(&name, 2, naming, mode);
    c.flow = Some(flow);
    let mut stack = start(c).await;
    assert_eq!(stack.running(), [first, first + 1]);
    let load_ids = test_ids(2000, mode, 3);
    for (n, step) in steps.iter().enumerate() {
        let before = stack.running();
        let (report, agreed) = under_load(&mut stack, step, &load_ids).await;
        let after = stack.running();
        eprintln!(
            "{name} step {}: {before:?} -> {after:?}: {}; every view agreed {:.2} s after the change",
            n + 1,
            report.summary(),
            agreed.as_secs_f64()
        );
        assert!(
            report.sent > 500,
            "too little load to mean anything: {report:?}"
        );
        assert!(
            report.failures() == 0,
            "{name} step {}: EXPECTED 0 non-2xx answers while scaling {before:?} -> {after:?}\nRECEIVED {}",
            n + 1,
            report.summary()
        );
        settled_after(&stack, &format!("{name} after step {}", n + 1), mode, n).await;
    }
    // Every instance counted its epoch changes in its metrics.
    let changes = epoch_changes(&stack).await;
    assert!(changes >= steps.len() as u64, "{changes} epoch changes");
}

/// After a step: every view agrees (`poc-client views` through Envoy: one instance and its
/// report of every peer), and 1000 ids are served by their owners, every member owning some.
async fn settled_after(stack: &Stack, what: &str, mode: IndexMode, n: usize) {
    let after = stack.running();
    let seen = poc_routing_client::views::via(&api(stack)).await;
    assert!(
        poc_routing_client::views::agree(&seen) && seen.len() == after.len(),
        "{what}: EXPECTED {} agreeing views\nRECEIVED\n{}",
        after.len(),
        poc_routing_client::views::render(&seen)
    );
    let ids = test_ids(1000, mode, 100 + n as u64);
    let verified = verify(&api(stack), ids, 16, |_| {}).await;
    assert!(
        verified.all_correct(),
        "{what}: EXPECTED every join on its owner\nRECEIVED {}",
        verified.render()
    );
    let served: Vec<u64> = verified.joins_per_instance.keys().copied().collect();
    assert_eq!(served, after, "every member owns some of 1000 ids");
}

/// `poc_epoch_changes_total` of the first running instance.
async fn epoch_changes(stack: &Stack) -> u64 {
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        stack.instance_addr(stack.running()[0]).unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("poc_epoch_changes_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no poc_epoch_changes_total in\n{metrics}"))
}

/// Compose numbering: container numbers are not kept contiguous. 2 -> 3 -> 2 (removing 1,
/// leaving a gap) -> 4 -> 1.
#[tokio::test]
async fn compose_naming_scales_2_3_2_4_1_with_no_failed_join() {
    scale_under_load(
        Naming::Compose,
        IndexMode::Hash,
        Flow::Module,
        1,
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
        Naming::Kubernetes,
        IndexMode::Jump,
        Flow::Module,
        0,
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
        Naming::Compose,
        IndexMode::Jump,
        Flow::Lua,
        1,
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
