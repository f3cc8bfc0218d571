//! Key sources through the real Envoy, in both flows: the key of an affinity route is read
//! where the route says (the `client_id` query parameter, the `x-user-id` header of the shipped
//! `api_join` route and, in the module flow, a cookie and a path segment on routes this test
//! adds), each request lands on its key's owner, which registers exactly that key, and a key
//! sent anywhere else (another source, or the `x-poc-key` header the routing filter owns) is
//! never trusted.

use std::time::Duration;

use poc_routing_client::api::JoinRoute;
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::sessions::{Options, Run};
use poc_routing_client::verify;
use poc_routing_e2e::*;
use poc_routing_placement::{IndexMode, KeySource};
use poc_routing_stack::envoy::{self, Flow};
use poc_routing_stack::{Deployment, Stack};

/// The shipped envoy.yaml plus two affinity routes in `api_join`'s shape: `/cookie/join` keyed
/// by the `user` cookie, and `/rooms/{key}/join` keyed by the path segment.
fn with_cookie_and_path_routes() -> String {
    envoy_yaml_with(|config| {
        envoy::add_affinity_route(config, "cookie_join", "/cookie/join", "cookie:user").unwrap();
        envoy::add_affinity_route(config, "rooms", "/rooms", "path:/rooms/{key}").unwrap();
    })
}

fn route(path: &str, source: &str) -> JoinRoute {
    JoinRoute {
        path: path.into(),
        source: source.parse().unwrap(),
    }
}

/// Ids joined on `route`: every one on its owner (by `/where`), registered as the id sent.
async fn every_id_on_its_owner(stack: &Stack, route: JoinRoute, ids: &[String], name: &str) {
    let api = api(stack).with_route(route.clone());
    // The ids the route's source can carry (no `/` in a path segment).
    let ids: Vec<String> = ids
        .iter()
        .filter(|id| route.source.request(&route.path, id).is_ok())
        .cloned()
        .collect();
    assert!(ids.len() > 250, "{name}: {} ids", ids.len());
    let report = verify(&api, ids, 16, |_| {}).await;
    assert!(
        report.all_correct(),
        "{name} {}: EXPECTED every join on its owner as its own key, RECEIVED\n{}",
        route.source,
        report.render()
    );
    assert_eq!(
        report.joins_per_instance.len(),
        stack.placement().members().len(),
        "{name}: every instance owns some ids"
    );
}

/// A GET through Envoy with extra headers; the answer's status and JSON.
async fn get(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", stack.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("Envoy answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text}")),
    )
}

/// `body` is a join of `id` on its owner.
fn joined_as(stack: &Stack, (status, body): (u16, serde_json::Value), id: &str, what: &str) {
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(body["client_id"], id, "{what}: {body}");
    assert_eq!(body["instance"], owner(stack, id), "{what}: {body}");
}

/// A header or another source carrying a different key than the route's own is never used,
/// and neither is a client's `x-poc-key`: the owner registers the route's key.
async fn spoofed_keys_are_never_trusted(stack: &Stack) {
    let (alice, mallory) = (id_owned_by(stack, 1), id_owned_by(stack, 2));
    // Two x-poc-key values: the filter replaces every one.
    let spoof = [
        ("x-user-id", mallory.as_str()),
        ("x-poc-key", mallory.as_str()),
        ("x-poc-key", "someone-else"),
    ];
    let got = get(stack, &format!("/join?client_id={alice}"), &spoof).await;
    joined_as(
        stack,
        got,
        &alice,
        "query route with a spoofed header and x-poc-key",
    );
    let got = get(
        stack,
        &format!("/api/join?client_id={mallory}"),
        &[
            ("x-user-id", alice.as_str()),
            ("x-poc-key", mallory.as_str()),
        ],
    )
    .await;
    joined_as(
        stack,
        got,
        &alice,
        "header route with a spoofed query and x-poc-key",
    );
    // The header route without its header: refused by name, whatever else the request has.
    let (status, body) = get(stack, &format!("/api/join?client_id={alice}"), &spoof[1..]).await;
    let body = json_error(status, &body.to_string(), 400, "missing_client_id");
    assert_eq!(body["source"], "header:x-user-id", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("x-user-id"),
        "{body}"
    );
    let (status, body) = get(
        stack,
        "/api/join",
        &[
            ("x-user-id", alice.as_str()),
            ("x-user-id", mallory.as_str()),
        ],
    )
    .await;
    json_error(status, &body.to_string(), 400, "duplicate_client_id");
    assert!(
        registered_at(stack, &mallory).await.is_empty(),
        "{mallory} was never joined"
    );
}

/// Sessions on the header route: held on their key's owner.
async fn sessions_on_the_header_route(stack: &Stack, name: &str) {
    let public = api(stack).with_route(route("/api/join", "header:x-user-id"));
    let ids = ids::generate(50, IdKind::Token, 9);
    let run = Run::start(&public, &ids, Options::default());
    assert!(
        run.wait_all_up(Duration::from_secs(30)).await,
        "{name}: sessions on /api/join: {}",
        run.report(None).render()
    );
    let owners = ids
        .iter()
        .map(|id| (id.clone(), owner(stack, id)))
        .collect();
    let report = run.stop(Some(&owners)).await;
    assert!(report.healthy(), "{name}: {}", report.render());
}

#[tokio::test]
async fn every_source_routes_to_its_keys_owner_in_the_module_flow() {
    let _turn = serial().await;
    let mut c = config("keys-module", 3, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Module);
    c.envoy_yaml_override = Some(with_cookie_and_path_routes());
    let stack = start(c).await;
    let mixed = ids::generate(300, IdKind::Mixed, 1);
    let tokens = ids::generate(300, IdKind::Token, 2);
    for (r, ids) in [
        (route("/join", "query:client_id"), &mixed),
        (route("/api/join", "header:x-user-id"), &tokens),
        (route("/cookie/join", "cookie:user"), &tokens),
        (route("/rooms/{key}/join", "path:/rooms/{key}"), &mixed),
    ] {
        every_id_on_its_owner(&stack, r, ids, "module").await;
    }
    spoofed_keys_are_never_trusted(&stack).await;
    // The cookie route reads its cookie among others; the path route refuses a path without
    // its segment before any owner is chosen (Envoy merges `//` first: `/rooms//join` is
    // `/rooms/join`, whose key is `join`).
    let alice = id_owned_by(&stack, 3);
    let cookie = format!("theme=dark; user={alice}; lang=en");
    let got = get(&stack, "/cookie/join", &[("cookie", cookie.as_str())]).await;
    joined_as(&stack, got, &alice, "a cookie among others");
    let (status, body) = get(&stack, "/rooms", &[]).await;
    let body = json_error(status, &body.to_string(), 400, "missing_client_id");
    assert_eq!(body["source"], "path:/rooms/{key}", "{body}");
    sessions_on_the_header_route(&stack, "module").await;
    registrations_made_by_header_follow_their_key(stack).await;
}

/// Registrations joined by a header key are handed off like any: after an instance is added
/// and one removed, every one is registered exactly once, at its new owner (the audit reads
/// every instance's registrations), and its replica is on its backup.
async fn registrations_made_by_header_follow_their_key(mut stack: Stack) {
    let ids = ids::generate(400, IdKind::Token, 3);
    let mut known = Vec::new();
    let public = api(&stack).with_route(route("/api/join", "header:x-user-id"));
    for id in &ids {
        if public.join(id).await.is_ok() {
            known.push(id.clone());
        }
    }
    assert_eq!(known.len(), ids.len(), "every header join answered");
    stack.add_instances(&[4]).await.unwrap();
    stack.remove_instances(&[1]).await.unwrap();
    stack
        .wait_views_agree(Duration::from_secs(20))
        .await
        .unwrap();
    let operator = operator(&stack);
    let (audit, settled) =
        poc_routing_client::audit::settle(&operator, Some(&known), Duration::from_secs(15)).await;
    let audit = audit.unwrap();
    assert!(
        settled.is_some(),
        "EXPECTED every header-keyed registration at its new owner, once\nRECEIVED {}",
        audit.render()
    );
}

#[tokio::test]
async fn query_and_header_sources_route_to_their_keys_owner_in_the_lua_flow() {
    let _turn = serial().await;
    let mut c = config("keys-lua", 3, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Lua);
    let stack = start(c).await;
    let tokens = ids::generate(300, IdKind::Token, 2);
    let mixed = ids::generate(300, IdKind::Mixed, 1);
    every_id_on_its_owner(&stack, route("/join", "query:client_id"), &mixed, "lua").await;
    every_id_on_its_owner(
        &stack,
        route("/api/join", "header:x-user-id"),
        &tokens,
        "lua",
    )
    .await;
    spoofed_keys_are_never_trusted(&stack).await;
    sessions_on_the_header_route(&stack, "lua").await;
}

/// The key source a route names is the one `poc-stack` and the module agree on: the shipped
/// example routes are keyed by a header (`api_join`) and by a path segment (`rooms`, app mode).
#[test]
fn the_shipped_example_routes_are_keyed_by_a_header_and_a_path() {
    let mut config: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(envoy::repo_root().join("envoy.yaml")).unwrap(),
    )
    .unwrap();
    let sources: Vec<(String, KeySource)> = envoy::affinity_routes_mut(&mut config)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                envoy::route_key_source(r).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("join".to_owned(), KeySource::default()),
            ("api_join".to_owned(), KeySource::Header("x-user-id".into())),
            ("rooms".to_owned(), "path:/rooms/{key}".parse().unwrap()),
        ]
    );
}

/// A key from a verified JWT claim: Envoy's `jwt_authn` (a local JWKS, no network) checks the
/// token on `/me/join` and copies its `sub` claim into `x-jwt-sub`, which the route's key
/// source reads. `header_mutation`, first in the chain, removes any `x-jwt-sub` a client sent,
/// so only a verified claim can be there. A missing, expired or badly signed token is refused
/// with 401 by `jwt_authn`, before the routing filter chooses any owner.
mod jwt {
    use super::*;
    use poc_routing_testkit::jwt::{Issuer, ISSUER};

    /// envoy.yaml with the JWT route `/me/join` (keyed by `header:x-jwt-sub`) and the two
    /// filters in front of the routing filter.
    fn with_jwt_route(jwks: &str) -> String {
        envoy_yaml_with(|config| {
            let jwks = serde_yaml::from_str(&format!("{{ inline_string: {jwks:?} }}")).unwrap();
            envoy::add_jwt_front(config, jwks, ISSUER, "/me/join").unwrap();
            envoy::add_affinity_route(config, "me_join", "/me/join", "header:x-jwt-sub").unwrap();
        })
    }

    #[tokio::test]
    async fn a_verified_jwt_claim_is_the_key_and_a_bad_token_reaches_no_owner() {
        let _turn = serial().await;
        let ours = Issuer::new("ours").unwrap();
        // Another key under the same kid: a token it signs is badly signed for ours.
        let stranger = Issuer::new("ours").unwrap();
        let mut c = config("keys-jwt", 3, Deployment::Compose, IndexMode::Hash);
        c.flow = Some(Flow::Module);
        c.envoy_yaml_override = Some(with_jwt_route(ours.jwks()));
        let stack = start(c).await;
        // Every user's verified `sub` goes to its owner, registered as exactly that key.
        for sub in ids::generate(200, IdKind::Token, 5) {
            let bearer = format!("Bearer {}", ours.token(&sub, 300).unwrap());
            let got = get(&stack, "/me/join", &[("authorization", bearer.as_str())]).await;
            joined_as(&stack, got, &sub, "a verified sub");
        }
        let (alice, mallory) = (id_owned_by(&stack, 1), id_owned_by(&stack, 2));
        // A client's own x-jwt-sub (and x-poc-key) never count: the verified claim does.
        let bearer = format!("Bearer {}", ours.token(&alice, 300).unwrap());
        let spoof = [
            ("authorization", bearer.as_str()),
            ("x-jwt-sub", mallory.as_str()),
            ("x-poc-key", mallory.as_str()),
        ];
        joined_as(
            &stack,
            get(&stack, "/me/join", &spoof).await,
            &alice,
            "spoofed x-jwt-sub",
        );
        // No token, an expired one, one signed by another key, and a spoofed header alone:
        // 401 from jwt_authn, and no owner was asked.
        let expired = format!("Bearer {}", ours.token(&mallory, -600).unwrap());
        let forged = format!("Bearer {}", stranger.token(&mallory, 300).unwrap());
        let refused: [&[(&str, &str)]; 4] = [
            &[],
            &[("authorization", expired.as_str())],
            &[("authorization", forged.as_str())],
            &[("x-jwt-sub", mallory.as_str())],
        ];
        for headers in refused {
            let response = {
                let mut request = reqwest::Client::new().get(format!("{}/me/join", stack.url()));
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.send().await.unwrap()
            };
            assert_eq!(response.status().as_u16(), 401, "{headers:?}");
        }
        assert!(
            registered_at(&stack, &mallory).await.is_empty(),
            "no refused token joined {mallory}"
        );
    }
}
