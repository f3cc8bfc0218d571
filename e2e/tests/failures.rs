//! Failures with the real Envoy: an owner down, an owner back on a new address, no instance to ask /where.

use std::time::{Duration, Instant};

use poc_routing_client::{verify, Outcome};
use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{wait_for, Deployment};

#[tokio::test]
async fn a_stopped_owner_fails_only_its_clients_and_recovers_on_a_new_address() {
    let _turn = serial().await;
    let mut stack = start(config(
        "owner-down",
        3,
        Deployment::Compose,
        IndexMode::Hash,
    ))
    .await;
    let api = api(&stack);
    let ids = test_ids(600, IndexMode::Hash, 11);
    let report = verify(&api, ids.clone(), 16, |_| {}).await;
    assert!(report.all_correct(), "before: {}", report.render());

    let old = stack.instance_addr(2).unwrap();
    stack.stop_instance(2).unwrap();
    let report = verify(&api, ids.clone(), 16, |_| {}).await;
    let mut down = 0;
    for r in &report.results {
        let expected_owner = owner(&stack, &r.client_id);
        if expected_owner == 2 {
            down += 1;
            assert!(
                matches!(&r.outcome, Outcome::Error { kind, .. } if kind == "join:http_503_owner_unavailable"),
                "EXPECTED join:http_503_owner_unavailable for {:?}\nRECEIVED {:?}",
                r.client_id,
                r.outcome
            );
        } else {
            assert!(
                matches!(r.outcome, Outcome::Correct { instance } if instance == expected_owner),
                "EXPECTED {:?} served by {expected_owner} while instance 2 is down\nRECEIVED {:?}",
                r.client_id,
                r.outcome
            );
        }
    }
    assert!(
        down > 100,
        "instance 2 should own about a third of 600 ids, owns {down}"
    );
    let id = id_owned_by(&stack, 2);
    let (status, body) = raw_get(&stack, &format!("/join?client_id={id}"), None).await;
    let json = json_error(status, &body, 503, "owner_unavailable");
    assert_eq!(json["owner"], "poc-routing-server-2:8081", "{body}");

    // Back under the same name, on a different address; Envoy is not restarted.
    let (new, restarted) = stack.restart_instance(2).await.unwrap();
    assert_ne!(new.ip(), old.ip());
    let served_after = time_until_joined(&stack, &id, restarted, Duration::from_secs(15)).await;
    let served_after = served_after.expect("the restarted owner was never reached again");
    assert!(
        served_after <= Duration::from_secs(5),
        "EXPECTED the restarted owner served within 5 s of its process start\nRECEIVED after {served_after:?}"
    );
    eprintln!("restarted owner served again {served_after:?} after its process started");
    let report = verify(&api, ids, 16, |_| {}).await;
    assert!(report.all_correct(), "after restart: {}", report.render());
}

#[tokio::test]
async fn with_every_instance_down_join_and_where_answer_503() {
    let _turn = serial().await;
    for flow in [Flow::Module, Flow::Lua] {
        let mut c = config(
            &format!("all-down-{flow:?}"),
            2,
            Deployment::Compose,
            IndexMode::Hash,
        );
        c.flow = Some(flow);
        let mut stack = start(c).await;
        for index in [1, 2] {
            stack.stop_instance(index).unwrap();
        }
        // The module still holds the last placement: the join goes to its owner, who is down.
        // The Lua flow has no one to ask.
        let join_code = match flow {
            Flow::Module => "owner_unavailable",
            Flow::Lua => "where_unavailable",
        };
        let (status, body) = raw_get(&stack, "/join?client_id=abc", None).await;
        json_error(status, &body, 503, join_code);
        let (status, body) = raw_get(&stack, "/where?client_id=abc", None).await;
        json_error(status, &body, 503, "where_unavailable");
    }
}

/// A crash is not a scale-down, but an instance that stays away longer than DOWN_TIMEOUT_S is
/// removed from the member set and its clients move to the others. A crashed instance hands
/// nothing off, but each of its clients' new owner is the backup that holds its replica:
/// `poc-client audit` finds nothing lost, duplicated or misplaced.
#[tokio::test]
async fn an_owner_down_past_the_timeout_is_removed_and_its_clients_move() {
    let _turn = serial().await;
    let mut c = config("down-timeout", 3, Deployment::Compose, IndexMode::Jump);
    c.server_env = vec![("DOWN_TIMEOUT_S".into(), "2".into())];
    let mut stack = start(c).await;
    let before = stack.placement().epoch();
    let ids = test_ids(600, IndexMode::Jump, 5);
    let joined = verify(&api(&stack), ids.clone(), 16, |_| {}).await;
    assert!(joined.all_correct(), "{}", joined.render());
    let placement_before = stack.placement().clone();
    // Distinct ids (the random ids may repeat one).
    let held_by_3: std::collections::BTreeSet<&String> = ids
        .iter()
        .filter(|id| {
            let id = poc_routing_placement::ClientId::try_from(id.as_str()).unwrap();
            placement_before.index(&id) == Ok(3)
        })
        .collect();
    // Async replication: a crash loses the last window's joins; this one waits it out.
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    wait_replicated(&stack, distinct.len() as u64).await;
    stack.stop_instance(3).unwrap();
    let killed = Instant::now();
    // At first only its clients fail...
    let id = id_owned_by(&stack, 3);
    let (status, body) = raw_get(&stack, &format!("/join?client_id={id}"), None).await;
    json_error(status, &body, 503, "owner_unavailable");
    // ...then, past the timeout, the others take them over under a new epoch.
    let moved = time_until_joined(&stack, &id, killed, Duration::from_secs(15)).await;
    let moved = moved.expect("the dead owner's clients never moved");
    assert!(
        moved >= Duration::from_secs(2),
        "EXPECTED its clients to wait for the 2 s down timeout\nRECEIVED moved after {moved:?}"
    );
    eprintln!("a dead owner's clients moved {moved:?} after the kill (DOWN_TIMEOUT_S=2)");
    // Each instance drops it on its own next round (at most one probe interval apart).
    let dropped = wait_for(
        "every instance to drop the dead member",
        Duration::from_secs(3),
        || async {
            stack
                .views()
                .await
                .values()
                .all(|v| v.as_ref().is_some_and(|v| v.members == [1, 2]))
        },
    )
    .await;
    let views = stack.views().await;
    assert!(dropped.is_ok(), "{dropped:?}: {views:?}");
    for (index, view) in &views {
        let epoch = view.as_ref().and_then(|v| v.epoch.clone());
        assert_ne!(epoch, Some(before.to_string()), "instance {index}");
    }
    // What instance 3 held was promoted from the replicas on their backups: nothing is
    // lost, twice or misplaced.
    let operator = operator(&stack);
    let (audit, settled) =
        poc_routing_client::audit::settle(&operator, Some(&ids), Duration::from_secs(10)).await;
    let audit = audit.unwrap();
    assert!(
        settled.is_some(),
        "EXPECTED 0 of the crashed owner's {} registrations lost, nothing else either\nRECEIVED {}",
        held_by_3.len(),
        audit.render()
    );
    let mut promoted = 0.0;
    for index in stack.running() {
        promoted += metric(&stack, index, "poc_replicas_promoted_total").await;
    }
    assert!(
        promoted >= held_by_3.len() as f64,
        "{promoted} replicas promoted, {} registrations held by the crashed owner",
        held_by_3.len()
    );
    eprintln!(
        "removed after DOWN_TIMEOUT_S: 0 of {} registrations lost ({} held by the crashed owner, promoted from their replicas)",
        ids.len(),
        held_by_3.len()
    );
    let api = api(&stack);
    let report = verify(&api, ids, 16, |_| {}).await;
    assert!(
        report.all_correct(),
        "after the removal: {}",
        report.render()
    );
    assert_eq!(
        report
            .joins_per_instance
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

/// An owner crashes and comes back (inside DOWN_TIMEOUT_S, so it stays the owner) with an
/// empty registry: it reads its records back from the replicas its earlier life sent to its
/// backups, and nothing is lost.
#[tokio::test]
async fn a_crashed_owner_restarted_gets_its_registrations_back() {
    let _turn = serial().await;
    let c = config("crash-restart", 3, Deployment::Compose, IndexMode::Hash);
    let mut stack = start(c).await;
    let ids = test_ids(600, IndexMode::Hash, 23);
    let joined = verify(&api(&stack), ids.clone(), 16, |_| {}).await;
    assert!(joined.all_correct(), "{}", joined.render());
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    let held_by_2 = distinct.iter().filter(|id| owner(&stack, id) == 2).count();
    wait_replicated(&stack, distinct.len() as u64).await;
    stack.stop_instance(2).unwrap();
    stack.restart_instance(2).await.unwrap();
    let operator = operator(&stack);
    let (audit, settled) =
        poc_routing_client::audit::settle(&operator, Some(&ids), Duration::from_secs(15)).await;
    let audit = audit.unwrap();
    assert!(
        settled.is_some(),
        "EXPECTED the restarted owner's {held_by_2} registrations back, nothing lost\nRECEIVED {}",
        audit.render()
    );
    let recovered = metric(&stack, 2, "poc_replicas_recovered_total").await;
    assert!(
        recovered >= held_by_2 as f64,
        "{recovered} recovered by the restarted owner, which owned {held_by_2}"
    );
    eprintln!(
        "crash and restart: 0 of {} lost; the restarted owner recovered {recovered} of its {held_by_2} from their replicas",
        ids.len()
    );
    // And the records are replicated again from it.
    wait_replicated(&stack, distinct.len() as u64).await;
}

/// Two instances crash at once and are removed after DOWN_TIMEOUT_S. What is lost is exactly
/// the clients whose owner and backup were both among them; every other client is at its new
/// owner, with a replica on its new backup.
#[tokio::test]
async fn two_crashes_at_once_lose_only_the_clients_owned_and_backed_up_by_them() {
    let _turn = serial().await;
    let mut c = config("two-crashes", 4, Deployment::Compose, IndexMode::Hash);
    c.server_env = vec![("DOWN_TIMEOUT_S".into(), "2".into())];
    let mut stack = start(c).await;
    let ids = test_ids(800, IndexMode::Hash, 31);
    let joined = verify(&api(&stack), ids.clone(), 16, |_| {}).await;
    assert!(joined.all_correct(), "{}", joined.render());
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    let before = stack.placement().clone();
    let dead = [2u64, 3];
    let doomed: std::collections::BTreeSet<&String> = distinct
        .iter()
        .copied()
        .filter(|id| {
            let id = poc_routing_placement::ClientId::try_from(id.as_str()).unwrap();
            let owner = before.index(&id).unwrap();
            let backup = before.backup(&id).unwrap().unwrap();
            dead.contains(&owner) && dead.contains(&backup)
        })
        .collect();
    assert!(
        !doomed.is_empty(),
        "some clients are owned and backed up by the two"
    );
    wait_replicated(&stack, distinct.len() as u64).await;
    for index in dead {
        stack.stop_instance(index).unwrap();
    }
    stack
        .wait_views_agree(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("the two dead removed: {e}"));
    let operator = operator(&stack);
    // Settled: no hand-off pending, every replica in place; only the doomed ones lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    let audit = loop {
        let audit = poc_routing_client::audit::audit(&operator, Some(&ids))
            .await
            .unwrap();
        let settled = audit.pending == 0
            && audit.replicas_missing == 0
            && audit.replicas_extra == 0
            && audit.replicas_stale == 0
            && audit.lost <= doomed.len();
        if settled || Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (audit.lost, audit.duplicated, audit.misplaced),
        (doomed.len(), 0, 0),
        "EXPECTED lost exactly the {} clients owned and backed up by the two dead\nRECEIVED {}",
        doomed.len(),
        audit.render()
    );
    eprintln!(
        "two crashes at once: {} of {} lost, exactly those owned and backed up by the two ({} were owned by them)",
        audit.lost,
        distinct.len(),
        distinct
            .iter()
            .filter(|id| owner_in(&before, id, &dead))
            .count()
    );
}

fn owner_in(placement: &poc_routing_placement::Placement, id: &str, set: &[u64]) -> bool {
    let id = poc_routing_placement::ClientId::try_from(id).unwrap();
    set.contains(&placement.index(&id).unwrap())
}
