//! The peer plane admits only the cluster. Every forged peer request an attacker on the
//! instances' network would send (a card removing a member, a forged previous view, a hand-off
//! of a made-up registration, a read of the registrations) goes to every port of every
//! server, in plain HTTP and in TLS with a credential of the attacker's own: each is refused
//! (a 404 on the public port, no handshake on the peer port), and afterwards every instance is
//! still a member, the views agree, 1000 ids are served by their owners, and the made-up id is
//! registered nowhere. A stranger process with its own credential, named in DNS as an
//! instance, never becomes a member, and does not hold up a cold start of the deployment.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use poc_routing_client::verify;
use poc_routing_e2e::*;
use poc_routing_peer::{
    credential, secrets, ClientOptions, Credentials, Fingerprints, PeerClient, PeerError,
};
use poc_routing_placement::IndexMode;
use poc_routing_stack::{Deployment, Stack, PEER_PORT, SERVER_PORT};
use poc_routing_wire::{MemberState, PreviousView};
use serde_json::json;

/// The made-up id the forged hand-off carries.
const FORGED_ID: &str = "forged-registration";

/// Each forged request: method, path, body.
fn forgeries(victim: u64) -> Vec<(reqwest::Method, &'static str, serde_json::Value)> {
    let card = |state: &str| {
        json!({
            "from": victim,
            "cards": [{ "instance": victim, "version": u64::MAX, "state": state,
                        "epoch": null, "previous": "0123456789abcdef",
                        "previous_left_ms": u64::MAX, "removed": [{"instance": victim, "version": u64::MAX}] }],
            "views": [{ "epoch": "0123456789abcdef", "members": [victim] }]
        })
    };
    let handoff = json!({
        "from": victim,
        "epoch": "0123456789abcdef",
        "registrations": [{ "client_id": FORGED_ID, "first_join_us": 1, "last_join_us": 2,
                            "joins": [{"instance": victim, "tag": 1, "count": 1}], "served": [] }]
    });
    vec![
        (reqwest::Method::POST, "/peer/push", card("leaving")),
        (reqwest::Method::POST, "/peer/sync", card("leaving")),
        (reqwest::Method::POST, "/peer/push", card("member")),
        (reqwest::Method::POST, "/peer/handoff", handoff),
        (reqwest::Method::GET, "/peer/registrations", json!(null)),
        (reqwest::Method::GET, "/peer/digest", json!(null)),
        (
            reqwest::Method::GET,
            "/peer/view?epoch=0123456789abcdef",
            json!(null),
        ),
    ]
}

/// A peer client holding a credential of its own, not the cluster's.
fn stranger(dir: &std::path::Path) -> PeerClient {
    secrets::new(dir).unwrap();
    let creds = Credentials::load(&secrets::peer_dir(dir), ClientOptions::default()).unwrap();
    PeerClient::new(creds, PEER_PORT)
}

async fn send(
    request: reqwest::RequestBuilder,
    body: &serde_json::Value,
) -> Result<u16, reqwest::Error> {
    let request = if body.is_null() {
        request
    } else {
        request.json(body)
    };
    request
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map(|r| r.status().as_u16())
}

async fn every_instance_a_member_and_correct(stack: &Stack, what: &str) {
    stack
        .wait_views_agree(Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    for (index, view) in stack.views().await {
        let view = view.unwrap_or_else(|| panic!("{what}: instance {index} answers no view"));
        assert_eq!(view.state, MemberState::Member, "{what}: instance {index}");
        assert_eq!(view.members, stack.placement().members(), "{what}");
    }
    let report = verify(&api(stack), test_ids(1000, IndexMode::Hash, 29), 32, |_| {}).await;
    assert!(
        report.all_correct(),
        "{what}: EXPECTED every join on its owner\nRECEIVED\n{}",
        report.render()
    );
}

#[tokio::test]
async fn no_forged_peer_request_reaches_any_state() {
    let _turn = serial().await;
    let stack = start(config(
        "peer-plane",
        3,
        Deployment::Compose,
        IndexMode::Hash,
    ))
    .await;
    every_instance_a_member_and_correct(&stack, "before").await;
    let attacker_dir = tempfile::tempdir().unwrap();
    let attacker = stranger(attacker_dir.path());
    let plain = reqwest::Client::new();
    for index in stack.running() {
        let ip: IpAddr = stack.instance_addr(index).unwrap().ip();
        for victim in stack.running() {
            for (method, path, body) in forgeries(victim) {
                // The public port has no peer routes.
                let public = format!("http://{}{path}", SocketAddr::new(ip, SERVER_PORT));
                let status = send(plain.request(method.clone(), &public), &body).await;
                assert_eq!(status.ok(), Some(404), "{method} {public}");
                // The peer port: plain HTTP gets no answer at all...
                let peer = format!("http://{}{path}", SocketAddr::new(ip, PEER_PORT));
                let status = send(plain.request(method.clone(), &peer), &body).await;
                assert!(status.is_err(), "{method} {peer} answered {status:?}");
                // ...nor TLS with a credential that is not the cluster's.
                let tls = match method {
                    reqwest::Method::GET => attacker.get(ip, path),
                    _ => attacker.post(ip, path),
                };
                let status = send(tls, &body).await;
                assert!(
                    status.is_err(),
                    "TLS {method} {path} on {ip} answered {status:?}"
                );
            }
        }
    }
    // A forged card would have removed its victim at once; give any a few rounds to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    every_instance_a_member_and_correct(&stack, "after every forged request").await;
    assert!(
        registered_at(&stack, FORGED_ID).await.is_empty(),
        "the forged registration is stored nowhere"
    );
}

#[tokio::test]
async fn a_stranger_named_in_dns_as_an_instance_never_becomes_a_member() {
    let _turn = serial().await;
    let c = config("stranger", 3, Deployment::Compose, IndexMode::Hash);
    let mut stack = start(c).await;
    // A server like the others in everything but the credential: its own.
    let own = tempfile::tempdir().unwrap();
    secrets::new(own.path()).unwrap();
    let addr = stack.start_stranger(9, own.path()).await.unwrap();
    // It stays outside every view, the members stay correct, and it never holds a view.
    tokio::time::sleep(Duration::from_secs(4)).await;
    every_instance_a_member_and_correct(&stack, "with a stranger in DNS").await;
    let http = reqwest::Client::new();
    let its_token = std::fs::read_to_string(secrets::token_file(own.path()))
        .unwrap()
        .trim()
        .to_owned();
    // The stranger's own view, read with its own operator token.
    let its_view = || async {
        http.get(format!("http://{addr}/placement"))
            .bearer_auth(&its_token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let view = its_view().await;
    assert_ne!(view["state"], "member", "the stranger: {view}");
    for (index, view) in stack.views().await {
        let view = view.unwrap();
        assert!(
            !view.members.contains(&9),
            "instance {index}: {:?}",
            view.members
        );
        let peer = view.peers.iter().find(|p| p.instance == 9);
        assert!(
            peer.is_none_or(|p| p.state.is_none()),
            "instance {index} holds a card of the stranger: {peer:?}"
        );
    }

    // Every instance crashes and the deployment starts again while the stranger is still in
    // DNS: a cold start. The stranger fails every handshake, so it is not waited for...
    let members = stack
        .running()
        .into_iter()
        .filter(|i| *i != 9)
        .collect::<Vec<_>>();
    for &index in &members {
        stack.stop_instance(index).unwrap();
    }
    stack
        .restart_instances(&members)
        .await
        .expect("the instances become members with a stranger in DNS");
    let addrs: Vec<SocketAddr> = members
        .iter()
        .map(|i| stack.instance_addr(*i).unwrap())
        .collect();
    stack.wait_servers_cluster(&addrs).await.unwrap();
    poc_routing_testkit::wait_for(
        "Envoy to route every id to its owner again",
        Duration::from_secs(15),
        || async {
            verify(
                &api(&stack),
                test_ids(1000, IndexMode::Hash, 29),
                32,
                |_| {},
            )
            .await
            .all_correct()
        },
    )
    .await
    .unwrap();
    every_instance_a_member_and_correct(&stack, "after a cold start beside the stranger").await;
    // ...and the stranger, which hears nothing but strangers, forms no view of its own.
    let view = its_view().await;
    assert_ne!(
        view["state"], "member",
        "the stranger after the cold start: {view}"
    );
    stack.stop_instance(9).unwrap();
}

/// Handshakes refused on the peer listeners of the running members, summed.
async fn refused_handshakes(stack: &Stack) -> f64 {
    let mut sum = 0.0;
    for index in stack.running() {
        sum += metric(
            stack,
            index,
            r#"poc_peer_refused_total{reason="handshake"}"#,
        )
        .await;
    }
    sum
}

/// Waits until every running instance reports a peer credential that passes `holds`.
async fn every_instance_holds(
    stack: &Stack,
    what: &str,
    holds: impl Fn(&Fingerprints) -> bool,
) -> Result<(), String> {
    poc_routing_testkit::wait_for(what, Duration::from_secs(10), || async {
        stack.views().await.values().all(|v| {
            v.as_ref()
                .and_then(|v| v.credential.as_ref())
                .is_some_and(&holds)
        })
    })
    .await
    .map_err(|e| format!("{e:#}"))
}

/// A rotation of the cluster's credential while clients join, with a scale step on each side
/// of it (a new instance that starts mid-rotation, hand-offs to and from it): every step of
/// `poc-server credential` is followed by every instance within its reload period, no join
/// fails, no handshake between instances is refused at any moment, and the old authority is
/// refused once retired.
#[tokio::test]
async fn a_credential_rotation_under_load_fails_no_join_and_no_handshake() {
    let _turn = serial().await;
    let c = config("rotation", 3, Deployment::Compose, IndexMode::Hash);
    let mut stack = start(c).await;
    let (public, operator) = (api(&stack), operator(&stack));
    let dir = secrets::peer_dir(stack.secrets());
    // The credential as it is before the rotation, kept aside.
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join(credential::PRIMARY),
        old.path().join(credential::PRIMARY),
    )
    .unwrap();
    let client_of = |dir: &std::path::Path| {
        PeerClient::new(
            Credentials::load(dir, ClientOptions::default()).unwrap(),
            PEER_PORT,
        )
    };
    let first = stack.running()[0];
    let first_ip = stack.instance_addr(first).unwrap().ip();
    let digest = |client: PeerClient| async move {
        poc_routing_peer::json::<serde_json::Value>(client.get(first_ip, "/peer/digest"), 4096)
            .await
    };
    digest(client_of(old.path()))
        .await
        .expect("the cluster's own credential gets an answer");
    // The refusal counter counts: a stranger's handshake shows in it.
    let stranger_dir = tempfile::tempdir().unwrap();
    let before_stranger = refused_handshakes(&stack).await;
    assert!(digest(stranger(stranger_dir.path())).await.is_err());
    poc_routing_testkit::wait_for(
        "the stranger's handshake to be counted",
        Duration::from_secs(5),
        || async { refused_handshakes(&stack).await > before_stranger },
    )
    .await
    .unwrap();
    let refused_before = refused_handshakes(&stack).await;

    let expect = |members| poc_routing_client::scale::Expect {
        members,
        agree_within: Duration::from_secs(20),
        id_kind: poc_routing_client::ids::IdKind::Mixed,
    };
    // 1. A new authority accepted beside the old one; then an instance starts.
    let report = poc_routing_client::scale::step(&public, &operator, &expect(4), 301, async {
        let rotated = credential::rotate(&dir).map_err(|e| e.to_string())?;
        every_instance_holds(&stack, "every instance to accept the new authority", |f| {
            f.accepted == rotated.accepted
        })
        .await?;
        stack
            .add_instances(&[4])
            .await
            .map_err(|e| format!("{e:#}"))
    })
    .await
    .unwrap_or_else(|e| panic!("rotate, then 3 -> 4: {e}"));
    eprintln!("rotate, then 3 -> 4: {}", report.summary());
    // 2. The new authority signs: every instance issues itself a certificate from it.
    let report = poc_routing_client::scale::step(&public, &operator, &expect(4), 302, async {
        let promoted = credential::promote(&dir).map_err(|e| e.to_string())?;
        every_instance_holds(
            &stack,
            "every instance to sign with the new authority",
            |f| *f == promoted,
        )
        .await
    })
    .await
    .unwrap_or_else(|e| panic!("promote: {e}"));
    eprintln!("promote: {}", report.summary());
    // 3. The old authority retired; then an instance leaves, handing its clients on.
    let report = poc_routing_client::scale::step(&public, &operator, &expect(3), 303, async {
        let retired = credential::retire(&dir).map_err(|e| e.to_string())?;
        every_instance_holds(&stack, "every instance to refuse the old authority", |f| {
            *f == retired
        })
        .await?;
        stack
            .remove_instances(&[4])
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .await
    .unwrap_or_else(|e| panic!("retire, then 4 -> 3: {e}"));
    eprintln!("retire, then 4 -> 3: {}", report.summary());

    assert_eq!(
        refused_handshakes(&stack).await,
        refused_before,
        "EXPECTED no handshake between instances refused during the rotation"
    );
    every_instance_a_member_and_correct(&stack, "after the rotation").await;
    // The new credential gets through; the old one, accepted until step 3, is a stranger's.
    digest(client_of(&dir))
        .await
        .expect("the new credential gets an answer");
    let refused = digest(client_of(old.path())).await;
    assert!(
        matches!(refused, Err(PeerError::NotOurs(_))),
        "the retired credential: {refused:?}"
    );
}

/// A keyholder lies: it pushes a card saying instance 3 is leaving, at a version above 3's own
/// (inside the allowed clock skew), to instance 1. Instance 1 believes it and drops 3 from its
/// view; instance 3 hears of the lie at its next swap of cards, writes its card again above it
/// and pushes it to every peer (refutation). Measured: how long any view lacks instance 3.
#[tokio::test]
async fn a_keyholders_forged_card_is_refuted_by_its_subject_within_rounds() {
    let _turn = serial().await;
    let c = config("refutation", 3, Deployment::Compose, IndexMode::Hash);
    let stack = start(c).await;
    every_instance_a_member_and_correct(&stack, "before").await;
    let liar = PeerClient::new(
        Credentials::load(
            &secrets::peer_dir(stack.secrets()),
            ClientOptions::default(),
        )
        .unwrap(),
        PEER_PORT,
    );
    let (target, victim) = (1, 3);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let lie = json!({
        "from": 2,
        "cards": [{ "instance": victim, "version": now_us + 10_000_000, "state": "leaving",
                    "epoch": null, "previous": null, "previous_left_ms": 0, "removed": [] }],
        "views": []
    });
    let ip = stack.instance_addr(target).unwrap().ip();
    let pushed = std::time::Instant::now();
    poc_routing_peer::json::<serde_json::Value>(liar.post(ip, "/peer/push").json(&lie), 4096)
        .await
        .expect("a keyholder's push is taken");
    // Watch every view for 3 s: the last moment any of them lacked the victim.
    let mut lasted = Duration::ZERO;
    while pushed.elapsed() < Duration::from_secs(3) {
        let views = stack.views().await;
        let lacking = views
            .values()
            .any(|v| !v.as_ref().is_some_and(|v| v.members.contains(&victim)));
        if lacking {
            lasted = pushed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("the forged card lasted {lasted:?} in any view");
    // A round is PROBE_INTERVAL_MS (250 ms): the victim hears the lie at its next swap with
    // the target (each probes one peer a round, of two), refutes at once, and pushes.
    assert!(
        lasted <= Duration::from_millis(1500),
        "EXPECTED the lie gone from every view within a few rounds, RECEIVED {lasted:?}"
    );
    // The lie reached its subject, which refuted it.
    assert!(metric(&stack, victim, "poc_refutations_total").await >= 1.0);
    every_instance_a_member_and_correct(&stack, "after the refutation").await;
}

/// `GET /peer/view`, which an owner asks every peer when a join was routed by a view it never
/// held (several instances leaving at once make views one peer holds for a few milliseconds):
/// a peer with the cluster's credential gets the view for an epoch the instance holds, with
/// what is left of its window, `null` for one it does not hold, and 400 for a malformed one.
/// A stranger gets no answer at all ([`forgeries`]).
#[tokio::test]
async fn a_peer_asking_for_a_view_gets_it_only_if_held() {
    let _turn = serial().await;
    let c = config("view-lookup", 3, Deployment::Compose, IndexMode::Hash);
    let stack = start(c).await;
    every_instance_a_member_and_correct(&stack, "before").await;
    let peer = PeerClient::new(
        Credentials::load(
            &secrets::peer_dir(stack.secrets()),
            ClientOptions::default(),
        )
        .unwrap(),
        PEER_PORT,
    );
    let ip = stack.instance_addr(1).unwrap().ip();
    let ask = |epoch: String| {
        poc_routing_peer::json::<Option<PreviousView>>(
            peer.get(ip, &format!("/peer/view?epoch={epoch}")),
            4096,
        )
    };
    let current = stack.placement().epoch().to_string();
    let held = ask(current.clone())
        .await
        .expect("a peer's question is answered");
    assert_eq!(
        held,
        Some(PreviousView {
            epoch: current,
            members: vec![1, 2, 3],
            // The current view: a full window (TRANSITION_WINDOW_MS's default), since it has
            // not changed yet.
            window_left_ms: 5000,
        })
    );
    let never = ask("0123456789abcdef".into())
        .await
        .expect("a peer's question is answered");
    assert_eq!(never, None, "a view instance 1 never held");
    let malformed = ask("zz".into()).await;
    assert!(
        matches!(&malformed, Err(poc_routing_peer::PeerError::Http(e)) if e.status().map(|s| s.as_u16()) == Some(400)),
        "EXPECTED 400 for a malformed epoch, RECEIVED {malformed:?}"
    );
}
