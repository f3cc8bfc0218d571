//! App mode through the real Envoy, in both flows, with the example room service
//! (`examples/rooms`, the `poc-rooms` binary) beside every instance: each room's requests
//! reach the application on the room's owner only, and each room's history (its state, kept
//! through the state API) is complete, at its owner (and its replica on its backup), and
//! nowhere else, after every step of 2→3→2→4, after an owner is killed and restarted, after
//! an owner is killed and removed (and comes back), and after 4→1.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use poc_routing_client::audit::settle;
use poc_routing_client::rooms::{self, post_round, verify_rooms};
use poc_routing_e2e::*;
use poc_routing_placement::{ClientId, IndexMode, Placement};
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{wait_for, Deployment, Stack};
use tokio_tungstenite::tungstenite::Message;

const ROOMS: usize = 60;

fn app_config(name: &str, flow: Flow, replicas: u32) -> poc_routing_stack::StackConfig {
    let mut c = config(name, replicas, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(flow);
    c.app = Some("poc-rooms".into());
    c.server_env = vec![("DOWN_TIMEOUT_S".into(), "2".into())];
    c
}

/// The room names.
fn room_ids() -> Vec<String> {
    (0..ROOMS).map(rooms::room).collect()
}

/// The view every running instance holds (they agree: callers wait for it first).
async fn view(stack: &Stack) -> Placement {
    let views = stack.views().await;
    let v = views
        .values()
        .flatten()
        .next()
        .expect("an instance answers")
        .clone();
    Placement::new(v.rule, v.members).unwrap()
}

/// Waits until every running instance holds exactly `members`.
async fn wait_members(stack: &Stack, members: &[u64]) {
    wait_for(
        &format!("every instance to hold members {members:?}"),
        Duration::from_secs(30),
        || async {
            stack
                .views()
                .await
                .values()
                .all(|v| v.as_ref().is_some_and(|v| v.members == members))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// After a step: round `rounds` already posted everywhere is read back complete on every
/// room's owner; round `rounds + 1` is posted, each on its owner; every history is read back
/// again; and the registrations (which carry the histories) are at their owners once, their
/// replicas on their backups, nowhere else. Returns the rounds posted.
async fn check_step(stack: &Stack, rounds: u32, step: &str) -> u32 {
    let api = api(stack);
    if rounds > 0 {
        let read = verify_rooms(&api, ROOMS, rounds, 8).await;
        assert!(
            read.all_correct(),
            "{step}: EXPECTED every room's {rounds} messages on its owner, RECEIVED\n{}",
            read.render()
        );
    }
    let rounds = rounds + 1;
    let posted = post_round(&api, ROOMS, rounds, 8, true).await;
    assert!(
        posted.all_correct(),
        "{step}: EXPECTED message {rounds} posted to every room on its owner, RECEIVED\n{}",
        posted.render()
    );
    let read = verify_rooms(&api, ROOMS, rounds, 8).await;
    assert!(read.all_correct(), "{step}: {}", read.render());
    let ids = room_ids();
    let (audit, clean) = settle(&operator(stack), Some(&ids), Duration::from_secs(20)).await;
    let audit = audit.expect("the registrations can be read");
    assert!(
        clean.is_some(),
        "{step}: EXPECTED every room's record (its history) at its owner once and its replica on its backup, RECEIVED\n{}",
        audit.render()
    );
    eprintln!(
        "{step}: {ROOMS} rooms, {rounds} messages each, complete on their owners ({} retries while state moved); audit clean in {:?}",
        posted.retried + read.retried,
        clean.unwrap()
    );
    rounds
}

/// Rounds posted to every room one after another from `first` on while the caller changes
/// the members, until told to stop: the posts span the change.
struct Posting {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u32, usize)>,
}

fn post_during(stack: &Stack, first: u32) -> Posting {
    let api = api(stack);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let (mut round, mut retried) = (first, 0);
        loop {
            let posted = post_round(&api, ROOMS, round, 4, false).await;
            assert!(
                posted.all_correct(),
                "EXPECTED message {round} posted once to every room while the members changed, RECEIVED\n{}",
                posted.render()
            );
            retried += posted.retried;
            if stopped.load(Ordering::Relaxed) {
                return (round, retried);
            }
            round += 1;
        }
    });
    Posting { stop, task }
}

/// Stops the posting once its round is done: every room took each round once, as its
/// `round`-th message. Returns the last round.
async fn posted_once(posting: Posting, step: &str) -> u32 {
    posting.stop.store(true, Ordering::Relaxed);
    let (round, retried) = posting.task.await.unwrap_or_else(|e| panic!("{step}: {e}"));
    eprintln!(
        "{step}: rounds up to {round} posted to every room during the change ({retried} retries)"
    );
    round
}

type Session =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A live session of every room through Envoy, each welcomed by the application on the
/// room's owner.
async fn open_sessions(stack: &Stack, owners: &Placement) -> BTreeMap<String, Session> {
    let base = stack.url().replace("http://", "ws://");
    let mut sessions = BTreeMap::new();
    for room in room_ids() {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("{base}/rooms/{room}/live"))
            .await
            .unwrap_or_else(|e| panic!("{room}: the session opens: {e}"));
        let Some(Ok(Message::Text(hello))) = socket.next().await else {
            panic!("{room}: no hello");
        };
        let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
        let owner = owners
            .index(&ClientId::try_from(room.as_str()).unwrap())
            .unwrap();
        assert_eq!(hello["instance"], owner, "{room}: {hello}");
        sessions.insert(room, socket);
    }
    sessions
}

/// The sessions of the rooms that moved between `before` and `after` were closed with the
/// moved code; the others are still open.
async fn moved_sessions_closed(
    mut sessions: BTreeMap<String, Session>,
    before: &Placement,
    after: &Placement,
) -> usize {
    let mut moved = 0;
    for (room, socket) in &mut sessions {
        let id = ClientId::try_from(room.as_str()).unwrap();
        let did_move = before.index(&id) != after.index(&id);
        let next = tokio::time::timeout(
            Duration::from_secs(if did_move { 10 } else { 1 }),
            socket.next(),
        )
        .await;
        match (did_move, next) {
            (true, Ok(Some(Ok(Message::Close(Some(frame)))))) => {
                assert_eq!(u16::from(frame.code), 4001, "{room}: {frame:?}");
                moved += 1;
            }
            (true, other) => panic!("{room} moved: EXPECTED a close 4001, RECEIVED {other:?}"),
            (false, Err(_)) => {}
            (false, other) => {
                panic!("{room} did not move: EXPECTED its session open, RECEIVED {other:?}")
            }
        }
    }
    moved
}

async fn rooms_follow_their_key(flow: Flow) {
    let _turn = serial().await;
    let mut stack = start(app_config(&format!("app-{}", flow.as_str()), flow, 2)).await;
    stack
        .wait_views_agree(Duration::from_secs(20))
        .await
        .unwrap();
    let mut rounds = check_step(&stack, 0, "2 instances").await;

    // 2→3, with a live session on every room: those whose room moved are closed as moved.
    let before = view(&stack).await;
    let sessions = open_sessions(&stack, &before).await;
    // A round posted while instance 3 joins: every message lands once.
    let posting = post_during(&stack, rounds + 1);
    stack.add_instances(&[3]).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    rounds = posted_once(posting, "2→3").await;
    let after = view(&stack).await;
    let moved = moved_sessions_closed(sessions, &before, &after).await;
    assert!(moved > 0, "some room moved to instance 3");
    eprintln!("2→3: {moved} live sessions closed as moved, the others kept");
    rounds = check_step(&stack, rounds, "2→3").await;

    let posting = post_during(&stack, rounds + 1);
    stack.remove_instances(&[3]).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    rounds = posted_once(posting, "3→2").await;
    rounds = check_step(&stack, rounds, "3→2").await;

    stack.add_instances(&[3, 4]).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    rounds = check_step(&stack, rounds, "2→4").await;

    // An owner killed and started again at once: its rooms come back from their replicas.
    stack.restart_instance(2).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    rounds = check_step(&stack, rounds, "instance 2 killed and restarted").await;

    // An owner killed for good: past DOWN_TIMEOUT_S it is removed, and its rooms' backups,
    // which hold their replicas, own them.
    stack.stop_instance(4).unwrap();
    wait_members(&stack, &[1, 2, 3]).await;
    rounds = check_step(&stack, rounds, "instance 4 killed and removed").await;
    // It comes back as a member, and its rooms go back to it.
    stack.restart_instance(4).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    rounds = check_step(&stack, rounds, "instance 4 back").await;

    stack.remove_instances(&[2, 3, 4]).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(30))
        .await
        .unwrap();
    check_step(&stack, rounds, "4→1").await;
}

#[tokio::test]
async fn module_flow_rooms_follow_their_key_through_scaling_and_crashes() {
    rooms_follow_their_key(Flow::Module).await;
}

#[tokio::test]
async fn lua_flow_rooms_follow_their_key_through_scaling_and_crashes() {
    rooms_follow_their_key(Flow::Lua).await;
}

/// What the application's failures look like to a client, and what never reaches it: a hung
/// application is a 504 and a dead one a 502, both JSON naming it; a request for a room the
/// instance does not own is refused by the instance (421) and the state API refuses another
/// instance's rooms.
#[tokio::test]
async fn a_dead_or_hung_application_is_named_and_no_other_key_reaches_it() {
    let _turn = serial().await;
    let mut c = app_config("app-failures", Flow::Module, 2);
    c.server_env.push(("APP_TIMEOUT_MS".into(), "500".into()));
    let stack = start(c).await;
    stack
        .wait_views_agree(Duration::from_secs(20))
        .await
        .unwrap();
    let owners = view(&stack).await;
    let room = rooms::room(0);
    let owner = owners
        .index(&ClientId::try_from(room.as_str()).unwrap())
        .unwrap();
    let other = if owner == 1 { 2 } else { 1 };
    let http = reqwest::Client::new();
    let url = format!("{}/rooms/{room}/messages", stack.url());
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let app = stack.app_url(owner).unwrap();
    // Hung: SIGSTOP, so the kernel accepts and nothing answers.
    stack
        .signal_app(owner, nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    let (status, body) = get(url.clone()).await;
    stack
        .signal_app(owner, nix::sys::signal::Signal::SIGCONT)
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("app_timeout")),
        "{body}"
    );
    assert_eq!(body["app"], app, "{body}");
    // Back, it answers.
    let (status, body) = get(url.clone()).await;
    assert_eq!(status, 200, "{body}");
    // Dead.
    stack
        .signal_app(owner, nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let (status, body) = get(url.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("app_unavailable")),
        "{body}"
    );
    assert_eq!(body["app"], app, "{body}");
    // Sent straight to the other instance with the room's key: refused there, not forwarded.
    let other_addr = stack.instance_addr(other).unwrap();
    let r = http
        .get(format!("http://{other_addr}/rooms/{room}/messages"))
        .header("x-poc-key", room.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    // Without a key, nothing is forwarded: a path the instance does not serve.
    let r = http
        .get(format!("http://{other_addr}/rooms/{room}/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The other instance's state API refuses the room too; the owner's holds nothing of it.
    let state = stack.state_api_url(other).unwrap();
    let (status, body) = get(format!("{state}/state/{room}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (421, Some("misdirected")),
        "{body}"
    );
    let state = stack.state_api_url(owner).unwrap();
    let (status, body) = get(format!("{state}/state/{room}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no_state")),
        "{body}"
    );
    // A write, conditional on versions.
    let put = |version: &str, body: &'static str| {
        http.put(format!("{state}/state/{room}"))
            .header("if-match", version)
            .body(body)
            .send()
    };
    let r = put("0", "one").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let written: serde_json::Value = r.json().await.unwrap();
    let version = written["version"].as_u64().unwrap();
    assert!(version > 0 && written["replicated"] == true, "{written}");
    let r = put("0", "again").await.unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let r = http
        .get(format!("{state}/state/{room}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-poc-version"], version.to_string().as_str());
    assert_eq!(r.text().await.unwrap(), "one");
    let r = put(&version.to_string(), "two").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
