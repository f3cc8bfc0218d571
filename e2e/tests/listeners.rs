//! Envoy's four ports, each serving only what it is for, in both flows:
//! - the public listener: `/join`, `/where` and `/health`, and a JSON 404 from Envoy itself for
//!   every other path, however it is spelled, before any instance is dialled;
//! - the operator listener: every instance endpoint on any instance, with the operator's token,
//!   but no `/join` and no `/peer/...` (the peer plane has a listener of its own);
//! - the probe listener: `GET /ready` only;
//! - the admin interface: on loopback (the local stack binds it there; `deploy/tests` checks
//!   `envoy.yaml` says so, and `make test-compose` and `make test-k8s` that nothing else
//!   reaches it).

use std::time::Duration;

use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{Deployment, Stack};
use poc_routing_wire::PlacementAnswer;

/// Envoy's own 404, as `envoy.yaml`'s local_reply_config writes it.
const ENVOY_NOT_FOUND: &str = "no such endpoint on this listener";

/// Internal paths, spelled every way a client might try to slip one past the route table.
const INTERNAL: &[&str] = &[
    "/clients",
    "/clients?limit=5",
    "/Clients",
    "/CLIENTS",
    "/%63lients",
    "/%63%6C%69%65%6E%74%73",
    "//clients",
    "/./clients",
    "/where/../clients",
    "/join/../clients",
    "/where/%2E%2E/clients",
    "/%2Fclients",
    "/placement",
    "/placement/",
    "/Placement",
    "/metrics",
    "/%6Detrics",
    "/health/../metrics",
    "/peer/digest",
    "/peer/sync",
    "/peer/push",
    "/Peer/digest",
    "/%70eer/digest",
    "/quitquitquit",
    "/server_info",
    "/",
];

async fn get(http: &reqwest::Client, method: reqwest::Method, url: &str) -> (u16, String) {
    let r = http
        .request(method, url)
        .send()
        .await
        .expect("Envoy answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn each_listener_serves_only_its_part_in_the_module_flow() {
    listeners(Flow::Module).await;
}

#[tokio::test]
async fn each_listener_serves_only_its_part_in_the_lua_flow() {
    listeners(Flow::Lua).await;
}

async fn listeners(flow: Flow) {
    let _turn = serial().await;
    let mut c = config(
        &format!("listeners-{flow:?}"),
        2,
        Deployment::Compose,
        IndexMode::Hash,
    );
    c.flow = Some(flow);
    let stack = start(c).await;
    public_listener(&stack).await;
    operator_listener(&stack).await;
    probe_listener(&stack).await;
}

/// The public API answers; every other path is Envoy's JSON 404.
async fn public_listener(stack: &Stack) {
    // Redirects followed: an escaped slash is answered with a redirect to the unescaped path,
    // which must then be refused too.
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/where?client_id=a"),
        (reqwest::Method::GET, "/health"),
        (reqwest::Method::GET, "/join?client_id=a"),
        (reqwest::Method::POST, "/join?client_id=a"),
    ] {
        let (status, body) = get(&http, method.clone(), &format!("{}{path}", stack.url())).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    for path in INTERNAL {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let (status, body) =
                get(&http, method.clone(), &format!("{}{path}", stack.url())).await;
            let json = json_error(status, &body, 404, "not_found");
            assert_eq!(
                json["message"], ENVOY_NOT_FOUND,
                "{method} {path}: EXPECTED Envoy's own 404, before any instance\nRECEIVED {body}"
            );
            assert!(
                !body.contains("\"clients\"") && !body.contains("poc_"),
                "{path}: {body}"
            );
        }
    }
    // HTTP/1.0 clients (ApacheBench) are served, with or without a Host header.
    for request in [
        "GET /where?client_id=a HTTP/1.0\r\n\r\n",
        "GET /where?client_id=a HTTP/1.0\r\nHost: x\r\n\r\n",
    ] {
        let answer = raw_http(stack.config().listen, request).await;
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{request:?}: EXPECTED 200\nRECEIVED {answer:.300}"
        );
    }
}

/// Writes `request` and reads the whole answer.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Every instance endpoint on any instance, with the operator's token (a JSON 401 without
/// it); `/join` only on the public listener.
async fn operator_listener(stack: &Stack) {
    let operator = stack.operator_url();
    for path in ["/placement", "/clients", "/metrics", "/registrations"] {
        let (status, body) = get(
            &reqwest::Client::new(),
            reqwest::Method::GET,
            &format!("{operator}{path}"),
        )
        .await;
        json_error(status, &body, 401, "unauthorized");
    }
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", stack.operator_token())
            .parse()
            .unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let (status, body) = get(
        &http,
        reqwest::Method::GET,
        &format!("{operator}/placement"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: PlacementAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(view.epoch, Some(stack.placement().epoch().to_string()));
    for path in ["/clients", "/metrics", "/health", "/where?client_id=a"] {
        let (status, body) = get(&http, reqwest::Method::GET, &format!("{operator}{path}")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in [
        "/join?client_id=a",
        "/join/x",
        "//join?client_id=a",
        "/peer/digest",
        "/peer/push",
        "/%70eer/sync",
        "//peer/digest",
    ] {
        let (status, body) = get(&http, reqwest::Method::GET, &format!("{operator}{path}")).await;
        json_error(status, &body, 404, "not_found");
    }
}

/// `GET /ready` only; nothing there can change Envoy's state.
async fn probe_listener(stack: &Stack) {
    let http = reqwest::Client::new();
    let probe = stack.probe_url();
    let (status, _) = get(&http, reqwest::Method::GET, &format!("{probe}/ready")).await;
    assert_eq!(status, 200);
    for (method, path) in [
        (reqwest::Method::POST, "/quitquitquit"),
        (reqwest::Method::POST, "/healthcheck/fail"),
        (reqwest::Method::POST, "/drain_listeners"),
        (reqwest::Method::GET, "/server_info"),
        (reqwest::Method::GET, "/config_dump"),
        (reqwest::Method::GET, "/stats"),
        (reqwest::Method::POST, "/ready"),
        (reqwest::Method::GET, "/ready/x"),
        (reqwest::Method::GET, "/"),
    ] {
        let (status, body) = get(&http, method.clone(), &format!("{probe}{path}")).await;
        assert_not_admin(&body);
        json_error(status, &body, 404, "not_found");
    }
    // Envoy is still up and serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = get(&http, reqwest::Method::GET, &format!("{probe}/ready")).await;
    assert_eq!(status, 200);
    let (status, body) = raw_get(stack, "/where?client_id=a", None).await;
    assert_eq!(status, 200, "{body}");
}
