//! WebSocket sessions on `/join` with the real Envoy, in both flows: 1000 sessions held through
//! Envoy while the local stack scales 2 -> 3 -> 2 -> 4 -> 1. After each step:
//! - every session is on its current owner within the transition window plus 1 s of every view
//!   agreeing;
//! - the sessions whose owner did not change were never closed;
//! - no session ended without a "moved" close (code 4001);
//! - the reconnect times are printed.
//!
//! An upgrade anywhere but `/join` is refused by Envoy with a JSON error.
//!
//! The fault row: an owner killed drops exactly its own sessions, its clients' connects are
//! refused while it is down, and once it runs again every one of them is back on it within
//! [`BACK_WITHIN`] of its process start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use poc_routing_client::sessions::{self, Options, Run};
use poc_routing_client::Api;
use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{Deployment, Stack};

/// The transition window (the servers' default) plus 1 s.
const ON_OWNER_WITHIN: Duration = Duration::from_secs(6);

/// A killed owner's sessions are back on it within this of its new process starting: Envoy
/// reaches a restarted owner within 5 s (`restart_recovery_from_process_start`), and a client
/// whose connects were refused retries within `retry_max` (1 s).
const BACK_WITHIN: Duration = Duration::from_secs(6);

async fn change(stack: &mut Stack, add: &[u64], remove: &[u64]) {
    if !add.is_empty() {
        stack.add_instances(add).await.unwrap();
    }
    if !remove.is_empty() {
        stack.remove_instances(remove).await.unwrap();
    }
}

/// Each session's instance and close count now.
fn holders(run: &Run) -> BTreeMap<String, (Option<u64>, usize)> {
    run.snapshot()
        .into_iter()
        .map(|s| (s.client_id.clone(), (s.instance, s.closes.len())))
        .collect()
}

/// Sessions for `count` distinct test ids (`seed`) through `public`, once all are up.
async fn hold_sessions(public: &Api, count: usize, seed: u64, name: &str) -> (Vec<String>, Run) {
    let mut ids = test_ids(count, IndexMode::Jump, seed);
    ids.sort();
    ids.dedup();
    let run = Run::start(public, &ids, Options::default());
    assert!(
        run.wait_all_up(Duration::from_secs(60)).await,
        "{name}: EXPECTED {} sessions up, RECEIVED {}",
        ids.len(),
        run.report(None).render()
    );
    (ids, run)
}

/// Waits until every session is on the owner `owners` names; how long after `since` that
/// was. Fails once `within` has passed since `since`.
async fn until_all_on_their_owner(
    run: &Run,
    owners: &BTreeMap<String, u64>,
    since: Instant,
    within: Duration,
    what: &str,
) -> Duration {
    loop {
        let report = run.report(Some(owners));
        if report.on_owner == Some(report.sessions) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{what}: EXPECTED every session on its owner within {within:?}, RECEIVED {}",
            report.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sessions_follow_their_owners(flow: Flow, sessions_count: usize) {
    let _turn = serial().await;
    let name = format!("sessions-{flow:?}");
    let mut c = config(&name, 2, Deployment::Compose, IndexMode::Jump);
    c.flow = Some(flow);
    let mut stack = start(c).await;
    let public = api(&stack);
    // Route B takes no upgrade: a JSON refusal, from Envoy, before any instance is dialled.
    let refused = reqwest::Client::new()
        .get(format!("{}/where?client_id=abc", public.base()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let status = refused.status().as_u16();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("upgrade_refused")),
        "{name}: an upgrade on /where: {body}"
    );
    let (ids, run) = hold_sessions(&public, sessions_count, 11, &name).await;
    let steps: [(&[u64], &[u64]); 4] =
        [(&[3], &[]), (&[], &[1]), (&[4, 5], &[]), (&[], &[5, 4, 3])];
    for (n, (add, remove)) in steps.iter().enumerate() {
        let step = n + 1;
        let before = holders(&run);
        let unexpected_before = run.report(None).unexpected_closes;
        change(&mut stack, add, remove).await;
        stack
            .wait_views_agree(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{name} step {step}: views: {e:#}"));
        let agreed = Instant::now();
        let owners = sessions::owners(&public, &ids).await;
        assert_eq!(
            owners.len(),
            ids.len(),
            "{name} step {step}: /where for every id"
        );
        // Every session on its current owner, soon.
        let on_owner = until_all_on_their_owner(
            &run,
            &owners,
            agreed,
            ON_OWNER_WITHIN,
            &format!("{name} step {step}, from the views agreeing"),
        )
        .await;
        let after = holders(&run);
        // The sessions whose owner did not change were never closed.
        let mut kept = 0;
        let mut moved = 0;
        for (id, (instance, closes)) in &before {
            let (_, closes_after) = after[id];
            if *instance == owners.get(id).copied() {
                kept += 1;
                assert_eq!(
                    closes_after, *closes,
                    "{name} step {step}: {id}'s owner did not change ({instance:?}), yet its session was closed"
                );
            } else {
                moved += 1;
            }
        }
        let report = run.report(Some(&owners));
        assert_eq!(
            report.unexpected_closes,
            unexpected_before,
            "{name} step {step}: EXPECTED every close to be a moved close, RECEIVED {}",
            report.render()
        );
        eprintln!(
            "{name} step {step} ({add:?} added, {remove:?} removed): {moved} sessions moved, {kept} untouched, all on their owner {} ms after the views agreed; reconnect ms p50 {} p99 {} max {}",
            on_owner.as_millis(),
            report.reconnect_ms.p50,
            report.reconnect_ms.p99,
            report.reconnect_ms.max
        );
    }
    let owners = sessions::owners(&public, &ids).await;
    let report = run.stop(Some(&owners)).await;
    assert_eq!(report.unexpected_closes, 0, "{}", report.render());
    eprintln!("{name}: {}", report.render());
}

#[tokio::test]
async fn sessions_follow_their_owners_in_the_module_flow() {
    sessions_follow_their_owners(Flow::Module, 1000).await;
}

#[tokio::test]
async fn sessions_follow_their_owners_in_the_lua_flow() {
    sessions_follow_their_owners(Flow::Lua, 1000).await;
}

/// Kills one of three owners (SIGKILL, its name gone from DNS, as `docker kill`) while 1000
/// sessions are held, and starts it again on a new address (as `docker start`; the member set
/// does not change).
async fn sessions_of_a_killed_owner_come_back(flow: Flow, sessions_count: usize) {
    let _turn = serial().await;
    let name = format!("sessions-killed-{flow:?}");
    let mut c = config(&name, 3, Deployment::Compose, IndexMode::Jump);
    c.flow = Some(flow);
    let mut stack = start(c).await;
    let public = api(&stack);
    let (ids, run) = hold_sessions(&public, sessions_count, 13, &name).await;
    let owners = sessions::owners(&public, &ids).await;
    let victim = 2;
    let victims: Vec<&String> = ids.iter().filter(|id| owners[*id] == victim).collect();
    assert!(
        victims.len() > ids.len() / 5,
        "{name}: instance {victim} owns {} of {} ids",
        victims.len(),
        ids.len()
    );
    let before = holders(&run);

    stack.stop_instance(victim).unwrap();
    let killed = Instant::now();
    // Its sessions drop (Envoy resets each downstream when its upstream connection breaks).
    let dropped = loop {
        let now = holders(&run);
        if victims.iter().all(|id| now[*id].0.is_none()) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "{name}: EXPECTED every session of the killed owner dropped within 5 s, RECEIVED {}",
            run.report(Some(&owners)).render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Down for a while: its clients' connects are refused (503 owner_unavailable), and they
    // back off.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_while_down = run.report(None).refused_connects;
    assert!(
        refused_while_down > 0,
        "{name}: no connect was refused while the owner was down"
    );

    let (_, started) = stack.restart_instance(victim).await.unwrap();
    let back = until_all_on_their_owner(
        &run,
        &owners,
        started,
        BACK_WITHIN,
        &format!("{name}, from the restarted owner's process start"),
    )
    .await;
    // The killed owner's sessions each ended once, without a moved reason; no other session
    // was touched.
    let after = holders(&run);
    for (id, (instance, closes)) in &before {
        let (_, closes_after) = after[id];
        if *instance == Some(victim) {
            assert_eq!(
                closes_after,
                closes + 1,
                "{name}: {id}'s session, on the killed owner, ended {} times",
                closes_after - closes
            );
        } else {
            assert_eq!(
                closes_after, *closes,
                "{name}: {id}'s owner ({instance:?}) was not killed, yet its session was closed"
            );
        }
    }
    let report = run.stop(Some(&owners)).await;
    assert_eq!(
        report.unexpected_closes,
        victims.len() as u64,
        "{name}: EXPECTED exactly the killed owner's sessions to end unexpectedly, RECEIVED {}",
        report.render()
    );
    eprintln!(
        "{name}: instance {victim} killed with {} of {} sessions: all dropped within {} ms; {} connects refused while it was down; every session back on its owner {} ms after its process started; time without a session per client: p50 {} p99 {} max {} ms",
        victims.len(),
        ids.len(),
        dropped.as_millis(),
        refused_while_down,
        back.as_millis(),
        report.no_session_ms.p50,
        report.no_session_ms.p99,
        report.no_session_ms.max
    );
}

#[tokio::test]
async fn sessions_of_a_killed_owner_come_back_in_the_module_flow() {
    sessions_of_a_killed_owner_come_back(Flow::Module, 1000).await;
}

#[tokio::test]
async fn sessions_of_a_killed_owner_come_back_in_the_lua_flow() {
    sessions_of_a_killed_owner_come_back(Flow::Lua, 1000).await;
}
