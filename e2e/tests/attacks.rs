//! Attacks on route A with the real Envoy. None may reach a host the client or a bad /where
//! chose, and none may ever return Envoy's admin interface.
//!
//! The module flow fails closed by construction: route A's `owners` cluster never picks a host
//! by itself, so a join reaches an instance only through the module's strict override to its
//! owner's address. Each way around that is tested here: an address that is not in `owners`,
//! a retry after a connection failure (Envoy drops the override on retries), the filter not
//! running, and headers naming another instance. (`owners` has no health check, so "an
//! unhealthy owner" is not a state it has: a dead owner fails its own joins with 503, in
//! `failures.rs` and `faults.rs`.)

use std::time::Duration;

use poc_routing_e2e::*;
use poc_routing_placement::{IndexMode, Placement, PlacementSpec};
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{Deployment, Stack};
use poc_routing_wire::{Discovery, MemberState, PlacementAnswer};

/// A well-formed epoch that no server holds.
const EPOCH: &str = "0123456789abcdef";

#[tokio::test]
async fn a_host_header_never_chooses_the_upstream_in_the_module_flow() {
    host_header_never_chooses(Flow::Module).await;
}

#[tokio::test]
async fn a_host_header_never_chooses_the_upstream_in_the_lua_flow() {
    host_header_never_chooses(Flow::Lua).await;
}

async fn host_header_never_chooses(flow: Flow) {
    let _turn = serial().await;
    let mut c = config(
        &format!("host-header-{flow:?}"),
        3,
        Deployment::Compose,
        IndexMode::Hash,
    );
    c.flow = Some(flow);
    let stack = start(c).await;
    let admin = stack.admin().to_string();
    let id = id_owned_by(&stack, 2);
    let other = stack.instance_addr(1).unwrap().to_string();
    for host in [
        admin.as_str(),
        "example.com",
        "poc-routing-server-1:8081",
        other.as_str(),
        "localhost:9901",
    ] {
        // A valid id: served by its owner, whatever the Host header says.
        let (status, body) = raw_get(&stack, &format!("/join?client_id={id}"), Some(host)).await;
        assert_not_admin(&body);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(
            status == 200 && json["instance"] == 2,
            "Host {host}: EXPECTED 200 from the owner (instance 2)\nRECEIVED {status} {body}"
        );
        // Invalid ids: refused, never forwarded.
        for query in [
            "",
            "?client_id=",
            "?client_id=a&client_id=b",
            "?client_id=%FF",
        ] {
            let (status, body) = raw_get(&stack, &format!("/join{query}"), Some(host)).await;
            assert_not_admin(&body);
            assert_eq!(status, 400, "Host {host}, /join{query}: {body}");
        }
        // The epoch a join is judged by is the routing filter's: one a client sends is replaced.
        for forged in ["zzz", EPOCH, "0000000000000000"] {
            let r = reqwest::Client::new()
                .get(format!("{}/join?client_id={id}", stack.url()))
                .header("host", host)
                .header("x-poc-epoch", forged)
                .header("x-poc-epoch", "ffffffffffffffff")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(
                status == 200 && body["epoch"] == stack.placement().epoch().to_string().as_str(),
                "forged x-poc-epoch {forged:?}: EXPECTED 200 under the current epoch\nRECEIVED {status} {body}"
            );
        }
        // Headers Envoy itself reads to pick or re-pick an upstream name another instance.
        let r = reqwest::Client::new()
            .get(format!("{}/join?client_id={id}", stack.url()))
            .header("host", host)
            .header("x-envoy-original-dst-host", &other)
            .header("x-envoy-retry-on", "5xx,connect-failure")
            .header("x-envoy-upstream-alt-stat-name", "x")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert!(
            status == 200 && body["instance"] == 2,
            "Host {host} with x-envoy-original-dst-host {other}: EXPECTED 200 from the owner (instance 2)\nRECEIVED {status} {body}"
        );
        // /joinx is route B: proxied to an instance, never dialled by name.
        let (status, body) = raw_get(&stack, "/joinx?client_id=1", Some(host)).await;
        assert_not_admin(&body);
        json_error(status, &body, 404, "not_found");
    }
    assert_eq!(
        registered_at(&stack, &id).await,
        [2],
        "{id} is registered on its owner only"
    );
}

/// A `/where` answer (status, body, delay) and what the client must get for it.
type WhereCase = (u16, String, Duration, u16, &'static str);

/// `/where` answers that must not route a join anywhere the guard does not allow: each with
/// the status and error code the client gets.
fn bad_where_answers(admin: &str) -> Vec<WhereCase> {
    let ok = |body: String, want_status: u16, want_code: &'static str| {
        (200, body, Duration::ZERO, want_status, want_code)
    };
    let answer = |hostport: &str, epoch: &str| {
        format!("{{\"hostport\":\"{hostport}\",\"epoch\":\"{epoch}\"}}")
    };
    let good_epoch = "0123456789abcdef";
    let bad = "bad_where_answer";
    vec![
        ok(answer(admin, EPOCH), 502, bad),
        ok(answer("evil.example:80", good_epoch), 502, bad),
        ok(
            answer("evil-1.example:80", good_epoch),
            403,
            "route_refused",
        ),
        ok(answer("localhost:9901", good_epoch), 502, bad),
        ok(
            answer("poc-routing-server-1:9901", good_epoch),
            403,
            "route_refused",
        ),
        ok(
            answer("poc-routing-server-1:8081\\\"x", good_epoch),
            502,
            bad,
        ),
        ok("<html>garbage</html>".into(), 502, bad),
        ok(String::new(), 502, bad),
        // An owner without the epoch it was computed under cannot be stamped: refused.
        ok(
            "{\"hostport\":\"poc-routing-server-1:8081\"}".into(),
            502,
            bad,
        ),
        ok(
            answer("poc-routing-server-1:8081", "0123456789ABCDEF"),
            502,
            bad,
        ),
        (
            500,
            answer("poc-routing-server-1:8081", good_epoch),
            Duration::ZERO,
            502,
            bad,
        ),
        (302, String::new(), Duration::ZERO, 502, bad),
        // A well-formed instance name that does not exist: the guard allows it, DNS has nothing.
        ok(
            answer("poc-routing-server-9:8081", good_epoch),
            503,
            "owner_unavailable",
        ),
        // Too slow: the 1 s /where timeout answers.
        (
            200,
            answer("poc-routing-server-1:8081", good_epoch),
            Duration::from_millis(1500),
            504,
            "where_timeout",
        ),
    ]
}

#[tokio::test]
async fn a_bad_where_answer_is_refused() {
    let _turn = serial().await;
    let mut c = config("bad-where", 2, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Lua);
    let mut stack = start(c).await;
    // The real instances go away; `server` now names only the fake server.
    for index in [1, 2] {
        stack.stop_instance(index).unwrap();
    }
    let fake = use_fake_server(&stack).await;
    let admin = stack.admin().to_string();
    for (status, body, delay, want_status, want_code) in bad_where_answers(&admin) {
        *fake.answer.lock().unwrap() = (status, body.clone(), delay);

        // A timed-out instance is ejected for a while (outlier detection), so ask the slow
        // one only once.
        let hosts = if delay.is_zero() {
            vec![None, Some(admin.as_str()), Some("example.com")]
        } else {
            vec![Some(admin.as_str())]
        };
        for host in hosts {
            let (got_status, got_body) = raw_get(&stack, "/join?client_id=abc", host).await;
            assert_not_admin(&got_body);
            let parsed: serde_json::Value = serde_json::from_str(&got_body).unwrap_or_default();
            assert!(
                got_status == want_status && parsed["error"] == want_code,
                "/where answered {status} {body:?}, Host {host:?}\nEXPECTED {want_status} {want_code}\nRECEIVED {got_status} {got_body}"
            );
        }
    }
}

/// A `/placement` answer as a server writes it (the wire contract's type), for `rule` (its epoch
/// is the rule's own), with the member addresses `addresses` (index, `ip:port`).
fn published(rule: &Placement, addresses: &[(u64, String)]) -> String {
    let answer = PlacementAnswer {
        instance: rule.members().first().copied(),
        state: MemberState::Member,
        discovery: Discovery::Dns,
        epoch: Some(rule.epoch().to_string()),
        members: rule.members().to_vec(),
        addresses: addresses.iter().cloned().collect(),
        replicas: rule.replicas(),
        rule: rule.spec().clone(),
        expected_replicas: None,
        replicas_mismatch: false,
        since_change_ms: Some(0),
        previous: None,
        peers: Vec::new(),
        handoff_pending: 0,
        replicas_held: 0,
        replication_pending: 0,
        credential: None,
    };
    serde_json::to_string(&answer).unwrap()
}

/// Asks `/join?client_id=abc` (Host: the admin address) until it answers `want_status` with
/// error `want_code`, for up to 8 s; fails with what it last received.
async fn until_join_answers(stack: &Stack, why: &str, want_status: u16, want_code: &str) {
    until_join_answers_naming(stack, why, want_status, want_code, None).await;
}

/// [`until_join_answers`], and the answer's `owner` must be `want_owner` when given: the name
/// `abc`'s owner has under the rule the module should have adopted.
async fn until_join_answers_naming(
    stack: &Stack,
    why: &str,
    want_status: u16,
    want_code: &str,
    want_owner: Option<&str>,
) {
    let admin = stack.admin().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (status, body) = raw_get(stack, "/join?client_id=abc", Some(&admin)).await;
        assert_not_admin(&body);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let owner_ok = want_owner.is_none_or(|o| parsed["owner"] == o);
        if status == want_status && parsed["error"] == want_code && owner_ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}\nEXPECTED {want_status} {want_code} (owner {want_owner:?})\nRECEIVED {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The module's count of failed `/placement` fetches (admin `/stats`).
async fn fetch_failures(stack: &Stack) -> u64 {
    envoy_stat(stack, "dynamicmodulescustom.placement_fetch_failures").await
}

#[tokio::test]
async fn a_bad_placement_rule_is_refused_or_ignored() {
    let _turn = serial().await;
    let mut c = config("bad-placement", 2, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Module);
    let mut stack = start(c).await;
    // The real instances go away; `server` now names only the fake server, so the owners
    // cluster holds only its address.
    for index in [1, 2] {
        stack.stop_instance(index).unwrap();
    }
    let fake = use_fake_server(&stack).await;
    // Rules naming hosts that are not ours, at addresses that are not in the owners cluster
    // (Envoy's admin, another port, a host elsewhere): the strict override refuses each one.
    let admin = stack.admin().to_string();
    let everywhere =
        |addr: &str| -> Vec<(u64, String)> { (1..=3).map(|i| (i, addr.to_owned())).collect() };
    for (evil, at) in [
        (rule("evil", "", 8081, &[1, 2, 3]), admin.as_str()),
        (
            rule("poc-routing-server", "", 9901, &[1, 2, 3]),
            "127.0.0.1:9901",
        ),
        (
            rule("poc-routing-server", ".evil.example", 8081, &[1, 2, 3]),
            "10.255.255.1:8081",
        ),
    ] {
        let answer = published(&evil, &everywhere(at));
        *fake.placement.lock().unwrap() = (200, answer.clone());
        let owner = owner_of_abc(&evil);
        until_join_answers_naming(&stack, &answer, 503, "owner_unavailable", Some(&owner)).await;
    }
    // A good rule whose only member is not found anywhere (no address): the owner is
    // unavailable, said by the module itself.
    let good = rule("poc-routing-server", "", 8081, &[9]);
    *fake.placement.lock().unwrap() = (200, published(&good, &[]));
    until_join_answers_naming(
        &stack,
        "a rule naming only instance 9",
        503,
        "owner_unavailable",
        Some("poc-routing-server-9:8081"),
    )
    .await;
    untrusted_answers_are_not_used(&stack, &fake, &good).await;
    // With no usable answer for longer than stale_after_ms (10 s), joins are refused outright.
    until_stale(&stack).await;
}

/// The name of `abc`'s owner under `rule`.
fn owner_of_abc(rule: &Placement) -> String {
    let id = poc_routing_placement::ClientId::try_from("abc").unwrap();
    rule.hostport(rule.index(&id).unwrap())
}

/// A hash rule over `members`, naming instances `<prefix>-<index><suffix>:<port>`.
fn rule(prefix: &str, suffix: &str, port: u16, members: &[u64]) -> Placement {
    let naming = poc_routing_placement::Naming {
        prefix: prefix.into(),
        suffix: suffix.into(),
        port,
        base: 1,
    };
    Placement::new(
        PlacementSpec::new(IndexMode::Hash, naming),
        members.iter().copied(),
    )
    .unwrap()
}

/// Answers that do not check out are not used: the module keeps routing by the last rule that
/// did (`good`, whose only member is instance 9), and counts each refused fetch.
async fn untrusted_answers_are_not_used(stack: &Stack, fake: &FakeServer, good: &Placement) {
    let good_text = published(good, &[]);
    let untrusted = [
        (
            200,
            good_text.replace("\"poc-routing-server\"", "\"127.0.0.1\""),
        ),
        (200, "garbage".to_owned()),
        (200, good_text.replace(&good.epoch().to_string(), EPOCH)),
        (200, good_text.replace("[9]", "[9,10]")),
        (
            200,
            good_text.replace(
                "\"addresses\":{}",
                "\"addresses\":{\"9\":\"not-an-address\"}",
            ),
        ),
        (
            200,
            good_text.replace(
                "\"addresses\":{}",
                "\"addresses\":{\"8\":\"127.0.0.8:8081\"}",
            ),
        ),
        (200, good_text.replace("\"member\"", "\"joining\"")),
        (500, good_text.clone()),
    ];
    for (status, body) in untrusted {
        assert!(
            status != 200 || body != good_text,
            "each answer differs from the good one"
        );
        let before = fetch_failures(stack).await;
        *fake.placement.lock().unwrap() = (status, body.clone());
        poc_routing_stack::wait_for(
            "two more refused /placement fetches",
            Duration::from_secs(5),
            || async { fetch_failures(stack).await >= before + 2 },
        )
        .await
        .unwrap();
        let (got, text) = raw_get(stack, "/join?client_id=abc", None).await;
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(
            got == 503 && parsed["owner"] == "poc-routing-server-9:8081",
            "/placement answered {status} {body:?}\nEXPECTED 503 owner_unavailable by the last good rule (owner poc-routing-server-9:8081)\nRECEIVED {got} {text}"
        );
    }
}

/// Waits out `stale_after_ms` (10 s in envoy.yaml) and checks the module then refuses joins.
async fn until_stale(stack: &Stack) {
    let admin = stack.admin().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = raw_get(stack, "/join?client_id=abc", Some(&admin)).await;
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 503 && parsed["error"] == "placement_unavailable" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "EXPECTED 503 placement_unavailable once the placement is stale\nRECEIVED {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A module-flow stack whose `owners` cluster resolves `owner-hosts` (set to the real
/// instances here) instead of `server`, so that a test can make a fake server the only one
/// Envoy asks for `/placement` while joins still reach the real instances.
async fn with_owners_apart(name: &str, replicas: u32) -> Stack {
    let mut c = config(name, replicas, Deployment::Compose, IndexMode::Hash);
    c.flow = None;
    c.envoy_yaml_override = Some(envoy_yaml_with(|config| {
        assert_eq!(Flow::of_config(config).unwrap(), Flow::Module);
        cluster_mut(config, "owners")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            ["endpoint"]["address"]["socket_address"]["address"] = "owner-hosts".into();
    }));
    let stack = start(c).await;
    let mut real = Vec::new();
    let mut want = Vec::new();
    for index in stack.running() {
        let addr = stack.instance_addr(index).unwrap();
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            unreachable!("the stack uses IPv4")
        };
        real.push(ip);
        want.push(addr.to_string());
    }
    want.sort();
    stack.dns().set("owner-hosts", real);
    poc_routing_stack::wait_for(
        "the owners cluster to hold every instance",
        Duration::from_secs(10),
        || async { cluster_hosts(&stack, "owners").await == want },
    )
    .await
    .unwrap();
    stack
}

/// The addresses of the stack's running instances, as `/placement` publishes them.
fn addresses(stack: &Stack) -> Vec<(u64, String)> {
    stack
        .running()
        .into_iter()
        .map(|i| (i, stack.instance_addr(i).unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn a_stale_placement_rule_is_caught_by_the_owner() {
    let _turn = serial().await;
    // Three real servers; a fake server that still publishes the two-member rule, with the epoch
    // that rule really has. No server holds that epoch, so no instance serves by it: only the
    // current owner serves, under its current view.
    let stack = with_owners_apart("stale-placement", 3).await;
    let current = stack.placement().epoch().to_string();
    let stale = stack.placement().with_members([1, 2]).unwrap();
    // The servers may have held {1, 2} for a moment while starting: wait until no earlier view
    // is accepted any more, so that the stale rule is one no server may serve by.
    poc_routing_stack::wait_for(
        "the start-up views' transition window to end",
        Duration::from_secs(15),
        || async {
            stack
                .views()
                .await
                .values()
                .all(|v| v.as_ref().is_some_and(|v| v.previous.is_none()))
        },
    )
    .await
    .unwrap();
    let fake = use_fake_server(&stack).await;
    let members: Vec<(u64, String)> = addresses(&stack)
        .into_iter()
        .filter(|(i, _)| stale.members().contains(i))
        .collect();
    *fake.placement.lock().unwrap() = (200, published(&stale, &members));
    // The module adopts the stale rule at its next fetch (every 250 ms).
    until_join_answers(&stack, "the stale rule in effect", 421, "misdirected").await;
    // A join the stale rule sends to an instance that does not own it now is refused, naming
    // the true owner; one it happens to send to the true owner is served by it, under the
    // current view. No join is ever served by an instance that does not own it.
    let (mut refused, mut served) = (0, 0);
    for i in 0..300 {
        let id = format!("stale-{i}");
        let (status, body) = raw_get(&stack, &format!("/join?client_id={id}"), None).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let true_owner = owner(&stack, &id);
        let stale_owner = stale
            .index(&poc_routing_placement::ClientId::try_from(id.as_str()).unwrap())
            .unwrap();
        if stale_owner == true_owner {
            assert!(
                status == 200
                    && json["instance"] == true_owner
                    && json["epoch"] == current.as_str()
                    && json["served_under"] == "current",
                "{id}: EXPECTED 200 from its owner {true_owner} under epoch {current}\nRECEIVED {status} {body}"
            );
            served += 1;
        } else {
            assert!(
                status == 421
                    && json["error"] == "misdirected"
                    && json["owner"] == true_owner
                    && json["epoch"] == current.as_str()
                    && json["routed_epoch"] == stale.epoch().to_string().as_str(),
                "{id}: EXPECTED 421 misdirected naming owner {true_owner} under epoch {current}, routed by {}\nRECEIVED {status} {body}",
                stale.epoch()
            );
            refused += 1;
        }
    }
    assert_eq!(refused + served, 300);
    assert!(
        refused > 50,
        "the stale rule sends many ids elsewhere: {refused} refused"
    );
}

#[tokio::test]
async fn an_address_that_is_another_instance_is_refused_by_it() {
    let _turn = serial().await;
    // A placement source that swaps two members' addresses: each join reaches an instance of
    // ours, which is not the owner and refuses it (421). A wrong address is never a wrong
    // registration.
    let stack = with_owners_apart("swapped-addresses", 2).await;
    let fake = use_fake_server(&stack).await;
    let a = addresses(&stack);
    let swapped = vec![(a[0].0, a[1].1.clone()), (a[1].0, a[0].1.clone())];
    *fake.placement.lock().unwrap() = (200, published(stack.placement(), &swapped));
    until_join_answers(
        &stack,
        "the swapped addresses in effect",
        421,
        "misdirected",
    )
    .await;
    for i in 0..100 {
        let id = format!("swapped-{i}");
        let (status, body) = raw_get(&stack, &format!("/join?client_id={id}"), None).await;
        json_error(status, &body, 421, "misdirected");
        assert!(
            registered_at(&stack, &id).await.is_empty(),
            "{id} was registered"
        );
    }
}

/// Asks `/join` for `id` with Host headers and Envoy's own headers naming other hosts, and
/// expects `want_status` `want_code` for each; the id must be registered nowhere after.
async fn every_join_refused(stack: &Stack, id: &str, want_status: u16, want_code: &str) {
    let admin = stack.admin().to_string();
    let other = stack.instance_addr(1).unwrap().to_string();
    for host in [
        None,
        Some(admin.as_str()),
        Some(other.as_str()),
        Some("poc-routing-server-1:8081"),
    ] {
        let mut request =
            reqwest::Client::new().get(format!("{}/join?client_id={id}", stack.url()));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let r = request
            .header("x-envoy-original-dst-host", &other)
            .header(
                "x-envoy-retry-on",
                "5xx,connect-failure,refused-stream,reset",
            )
            .header("x-envoy-max-retries", "3")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_not_admin(&body);
        json_error(status, &body, want_status, want_code);
    }
    assert!(
        registered_at(stack, id).await.is_empty(),
        "{id} was registered: {:?}",
        registered_at(stack, id).await
    );
}

#[tokio::test]
async fn without_the_routing_module_a_join_goes_nowhere() {
    let _turn = serial().await;
    // Route A with the module switched off: the owners cluster has every instance, but picks
    // none of them by itself.
    let mut c = config("module-off", 3, Deployment::Compose, IndexMode::Hash);
    // As the edited file says: a flow switch would enable the module again.
    c.flow = None;
    c.envoy_yaml_override = Some(envoy_yaml_with(|config| {
        assert_eq!(Flow::of_config(config).unwrap(), Flow::Module);
        poc_routing_stack::envoy::join_route_mut(config).unwrap()["typed_per_filter_config"]
            [poc_routing_stack::envoy::MODULE_FILTER]["disabled"] = true.into();
    }));
    let stack = start(c).await;
    assert_eq!(cluster_hosts(&stack, "owners").await.len(), 3);
    every_join_refused(&stack, &id_owned_by(&stack, 2), 403, "route_refused").await;
}

#[tokio::test]
async fn a_retry_after_a_connection_failure_never_leaves_the_owner() {
    let _turn = serial().await;
    // Route A given a retry policy, and clients asking for retries too: the owner is dead but
    // its address is still in DNS (a Kubernetes pod published while not ready), so the first
    // attempt fails to connect and Envoy retries, without the override. The owners cluster
    // picks nothing for the retry.
    let mut c = config("retry", 3, Deployment::Compose, IndexMode::Hash);
    c.flow = None;
    c.envoy_yaml_override = Some(envoy_yaml_with(|config| {
        assert_eq!(Flow::of_config(config).unwrap(), Flow::Module);
        let route = poc_routing_stack::envoy::join_route_mut(config).unwrap();
        route["route"]["retry_policy"] = serde_json::from_value(serde_json::json!({
            "retry_on": "connect-failure,refused-stream,reset,5xx",
            "num_retries": 3
        }))
        .unwrap();
    }));
    let mut stack = start(c).await;
    let id = id_owned_by(&stack, 2);
    stack.kill_instance_keeping_its_name(2).unwrap();
    every_join_refused(&stack, &id, 503, "owner_unavailable").await;
    let retries = envoy_stat(&stack, "cluster.owners.upstream_rq_retry").await;
    assert!(
        retries > 0,
        "EXPECTED Envoy to have retried (and the retries refused)\nRECEIVED cluster.owners.upstream_rq_retry {retries}"
    );
}

/// Starts a stack whose routing.lua is replaced by `script`.
async fn with_script(name: &str, script: &str) -> poc_routing_stack::Stack {
    let mut c = config(name, 2, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Lua);
    c.lua_override = Some(script.to_owned());
    start(c).await
}

#[tokio::test]
async fn a_broken_script_fails_closed() {
    let _turn = serial().await;
    let scripts = [
        // Raises before doing anything: Envoy then lets the request continue unchanged.
        ("script-error", "function envoy_on_request(handle) error('injected failure') end"),
        // Picks the client's authority (as if the logic were wrong) without choosing an owner.
        ("script-noop", "function envoy_on_request(handle) end"),
        // Chooses the admin port as owner: the guard's name check must refuse it.
        (
            "script-admin",
            "function envoy_on_request(handle)\n  handle:streamInfo():dynamicMetadata():set('poc.routing', 'owner', 'x')\n  handle:headers():replace(':authority', '127.0.0.1:9901')\nend",
        ),
    ];
    for (name, script) in scripts {
        let stack = with_script(name, script).await;
        let admin = stack.admin().to_string();
        for host in [admin.as_str(), "example.com", "poc-routing-server-1:8081"] {
            let (status, body) = raw_get(&stack, "/join?client_id=abc", Some(host)).await;
            assert_not_admin(&body);
            json_error(status, &body, 403, "route_refused");
        }
        let log = stack.envoy_log();
        if name == "script-error" {
            assert!(
                log.contains("injected failure"),
                "the script error should be logged:\n{log}"
            );
        }
    }
}

#[tokio::test]
async fn an_error_inside_the_routing_logic_answers_500() {
    let _turn = serial().await;
    // The real script with its /where call broken: the script's own guard answers.
    let real =
        std::fs::read_to_string(poc_routing_stack::envoy::repo_root().join("lua/routing.lua"))
            .unwrap();
    let broken = real.replace("handle:httpCall(", "handle:noSuchMethod(");
    assert_ne!(real, broken, "the fault injection must change the script");
    let stack = with_script("script-internal-error", &broken).await;
    let admin = stack.admin().to_string();
    let (status, body) = raw_get(&stack, "/join?client_id=abc", Some(&admin)).await;
    assert_not_admin(&body);
    json_error(status, &body, 500, "routing_error");
}

/// Requests Envoy cannot read as HTTP are answered by Envoy itself: with JSON and a code, like
/// every other error, never a plain-text page.
#[tokio::test]
async fn envoy_answers_malformed_requests_with_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _turn = serial().await;
    let stack = start(config("malformed", 2, Deployment::Compose, IndexMode::Hash)).await;
    let listen = stack.config().listen;
    let big = format!(
        "GET /join?client_id={} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "x".repeat(100_000)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        (big, 431, "request_headers_too_large"),
        (
            "POST /join?client_id=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        ("GARBAGE\r\n\r\n".into(), 400, "bad_request"),
        (
            "GET /where?client_id=1 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        // The routing script's own answers keep their codes.
        (
            "GET /join HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(),
            400,
            "missing_client_id",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let mut conn = tokio::net::TcpStream::connect(listen).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
        assert!(
            status == want_status
                && json["error"] == want_code
                && head.to_ascii_lowercase().contains("content-type: application/json"),
            "{:.60}: EXPECTED {want_status} {{\"error\":\"{want_code}\"}} as JSON\nRECEIVED {head}\n{body:.300}",
            request
        );
    }
}
