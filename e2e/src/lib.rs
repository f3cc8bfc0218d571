//! Shared set-up for the end-to-end tests in `tests/`: every test starts its own local stack
//! (real Envoy, real poc-server processes) through the same code as `make up`.
//!
//! - `routing`: every join lands on its owner, for every naming, mode and flow;
//! - `scaling`: no failed join while instances come and go;
//! - `failures` and `faults` (`--features faults`): what clients see when parts fail;
//! - `attacks`: what a client or a bad answer cannot make Envoy do;
//! - `module`: the Envoy module's loading and its build.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::Api;
use poc_routing_placement::{client_id_from_query, ClientId, IndexMode};
use poc_routing_stack::envoy::Flow;
use poc_routing_stack::{wait_for, Deployment, Stack, StackConfig, SERVER_PORT};

/// Stacks are heavy (Envoy plus servers on 2 cores): tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_NET: AtomicU8 = AtomicU8::new(100);

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

pub use poc_routing_testkit::free_port;

/// The flow to run tests in that do not choose one: `POC_FLOW` (module or lua), else as
/// `envoy.yaml` ships it. `make test` runs the failure and fault suites in both flows this way.
pub fn flow_from_env() -> Option<Flow> {
    let flow = std::env::var("POC_FLOW").ok()?;
    Some(flow.parse().unwrap_or_else(|e| panic!("POC_FLOW: {e}")))
}

/// A stack config on fresh ports and a fresh 127.0.N.0/24 for the instances, in the flow
/// [`flow_from_env`] gives (a test may set its own).
pub fn config(name: &str, replicas: u32, naming: Deployment, mode: IndexMode) -> StackConfig {
    let flow = flow_from_env().map_or(String::new(), |f| format!("-{}", f.as_str()));
    // Where Cargo puts integration tests' files (`CARGO_TARGET_TMPDIR`, which only tests see).
    let run_dir = poc_routing_stack::envoy::repo_root()
        .join("target/tmp/e2e")
        .join(format!("{name}{flow}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut c = StackConfig::new(replicas, naming, mode, run_dir);
    c.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.probe = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.operator = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.net = [127, 0, NEXT_NET.fetch_add(1, Ordering::Relaxed)];
    c.flow = flow_from_env();
    c
}

/// Starts a stack, failing the test with Envoy's log when it cannot start. Envoy missing is a
/// failure that says how to install it, never a skip.
pub async fn start(config: StackConfig) -> Stack {
    match Stack::start(config).await {
        Ok(stack) => stack,
        Err(e) => panic!("could not start the local stack: {e:#}"),
    }
}

pub fn api(stack: &Stack) -> Api {
    Api::new(&stack.url())
}

pub fn test_ids(count: usize, mode: IndexMode, seed: u64) -> Vec<String> {
    let kind = if mode == IndexMode::Numeric {
        IdKind::Numeric
    } else {
        IdKind::Mixed
    };
    ids::generate(count, kind, seed)
}

/// The owner of `id` by the stack's placement, computed locally.
pub fn owner(stack: &Stack, id: &str) -> u64 {
    let id = ClientId::try_from(id).unwrap();
    stack.placement().index(&id).unwrap()
}

/// The first id from `candidates` owned by `index`.
pub fn id_owned_by(stack: &Stack, index: u64) -> String {
    (0..)
        .map(|i| format!("client-{i}"))
        .find(|id| owner(stack, id) == index)
        .unwrap()
}

/// A raw request through Envoy with a chosen Host header.
pub async fn raw_get(stack: &Stack, path_and_query: &str, host: Option<&str>) -> (u16, String) {
    let http = reqwest::Client::new();
    let mut req = http.get(format!("{}{}", stack.url(), path_and_query));
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let r = req.send().await.expect("Envoy answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Parses a JSON error body, printing EXPECTED/RECEIVED when it is not one.
pub fn json_error(
    status: u16,
    body: &str,
    expected_status: u16,
    expected_code: &str,
) -> serde_json::Value {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    assert!(
        status == expected_status && parsed["error"] == expected_code,
        "EXPECTED {expected_status} {{\"error\":\"{expected_code}\"}}\nRECEIVED {status} {body}"
    );
    parsed
}

/// Envoy's admin page and its handlers must never be what a /join returns.
pub fn assert_not_admin(body: &str) {
    for marker in [
        "Envoy Admin",
        "envoy admin",
        "server_info",
        "config_dump",
        "<html",
        "<!DOCTYPE",
    ] {
        assert!(
            !body.contains(marker),
            "Envoy's admin interface answered: {body:.300}"
        );
    }
}

pub fn decode_like_server(raw_query: &str) -> String {
    client_id_from_query(Some(raw_query)).unwrap().into_string()
}

/// A fake server that answers /where and /placement with whatever the test sets, and /health
/// with 200. `/where` answers from `queue` first, then `answer`; `where_calls` counts them.
#[derive(Clone)]
pub struct FakeServer {
    pub answer: Arc<Mutex<(u16, String, Duration)>>,
    pub queue: Arc<Mutex<VecDeque<(u16, String)>>>,
    pub placement: Arc<Mutex<(u16, String)>>,
    pub where_calls: Arc<AtomicUsize>,
}

async fn fake_placement(State(fake): State<FakeServer>) -> (axum::http::StatusCode, String) {
    let (status, body) = fake.placement.lock().unwrap().clone();
    (axum::http::StatusCode::from_u16(status).unwrap(), body)
}

async fn fake_where(State(fake): State<FakeServer>) -> (axum::http::StatusCode, String) {
    fake.where_calls.fetch_add(1, Ordering::SeqCst);
    let queued = fake.queue.lock().unwrap().pop_front();
    let (status, body, delay) = match queued {
        Some((status, body)) => (status, body, Duration::ZERO),
        None => fake.answer.lock().unwrap().clone(),
    };
    tokio::time::sleep(delay).await;
    (axum::http::StatusCode::from_u16(status).unwrap(), body)
}

async fn spawn_fake_server(ip: Ipv4Addr) -> FakeServer {
    let fake = FakeServer {
        answer: Arc::new(Mutex::new((200, "{\"fake\":true}".into(), Duration::ZERO))),
        queue: Arc::default(),
        // No rule by default: routing.lua falls back to asking /where.
        placement: Arc::new(Mutex::new((404, String::new()))),
        where_calls: Arc::default(),
    };
    let app = Router::new()
        .route("/where", get(fake_where))
        .route("/placement", get(fake_placement))
        .route("/health", get(|| async { "{\"status\":\"ok\"}" }))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, SERVER_PORT)))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    fake
}

/// Starts a fake server on `<net>.200:8081` and makes it the only `server` Envoy asks, as
/// DNS would after a swap; returns once requests through Envoy reach it.
pub async fn use_fake_server(stack: &Stack) -> FakeServer {
    let [a, b, c] = stack.config().net;
    let ip = Ipv4Addr::new(a, b, c, 200);
    let fake = spawn_fake_server(ip).await;
    stack.dns().set("server", vec![ip]);
    stack
        .wait_servers_cluster(&[SocketAddr::from((ip, SERVER_PORT))])
        .await
        .unwrap();
    // Health state reaches Envoy's workers a moment after its main thread: wait for route B.
    wait_for(
        "route B to reach the fake server",
        Duration::from_secs(10),
        || async {
            raw_get(stack, "/where?client_id=abc", None)
                .await
                .1
                .contains("fake")
        },
    )
    .await
    .unwrap();
    fake.where_calls.store(0, Ordering::SeqCst);
    fake
}

/// How long after `since` a `/join` of `id` through Envoy first answered 200, polling every
/// 20 ms for at most `limit`; `None` if it never did. (A request that fails to connect, while
/// Envoy restarts, counts as not yet.)
pub async fn time_until_joined(
    stack: &Stack,
    id: &str,
    since: std::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("{}/join?client_id={id}", stack.url());
    while since.elapsed() < limit {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == 200 {
                return Some(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The repository's `envoy.yaml` with `edit` applied: a variant for one test (the stack still
/// applies its own local edits on top).
pub fn envoy_yaml_with(edit: impl FnOnce(&mut serde_yaml::Value)) -> String {
    let path = poc_routing_stack::envoy::repo_root().join("envoy.yaml");
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut config);
    serde_yaml::to_string(&config).unwrap()
}

/// The cluster named `name` in an Envoy config, to edit.
pub fn cluster_mut<'a>(config: &'a mut serde_yaml::Value, name: &str) -> &'a mut serde_yaml::Value {
    config["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("envoy.yaml has no cluster {name}"))
}

/// A client of Envoy's operator listener, with the stack's operator token.
pub fn operator(stack: &Stack) -> Api {
    Api::new(&stack.operator_url()).with_token(Some(stack.operator_token()))
}

/// The instances whose registry holds `id` (`/clients`, asked of each running instance
/// directly).
pub async fn registered_at(stack: &Stack, id: &str) -> Vec<u64> {
    let http = reqwest::Client::new();
    let mut at = Vec::new();
    for index in stack.running() {
        let addr = stack.instance_addr(index).unwrap();
        let url = format!("http://{addr}/clients?limit=1000");
        let Ok(r) = http
            .get(url)
            .bearer_auth(stack.operator_token())
            .send()
            .await
        else {
            continue;
        };
        let clients: serde_json::Value = r.json().await.unwrap_or_default();
        let held = clients["clients"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == id));
        if held {
            at.push(index);
        }
    }
    at
}

/// The hosts of Envoy's cluster `name`, as its admin `/clusters` lists them (`ip:port`).
pub async fn cluster_hosts(stack: &Stack, name: &str) -> Vec<String> {
    let url = format!("http://{}/clusters", stack.admin());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let prefix = format!("{name}::");
    let mut hosts: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once("::"))
        .filter(|(host, _)| host.contains(':'))
        .map(|(host, _)| host.to_owned())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// One statistic of Envoy's (admin `/stats`), 0 if absent.
pub async fn envoy_stat(stack: &Stack, name: &str) -> u64 {
    let url = format!(
        "http://{}/stats?filter=^{}$",
        stack.admin(),
        name.replace('.', "\\.")
    );
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.rsplit(' ')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until every running instance's registrations have reached their backups (each
/// reports `replication_pending` 0 in `/placement`) and the replicas held add up to at least
/// `at_least`.
pub async fn wait_replicated(stack: &Stack, at_least: u64) {
    let result = wait_for(
        &format!("every registration replicated ({at_least} replicas at least)"),
        Duration::from_secs(10),
        || async {
            let views = stack.views().await;
            let all_sent = views
                .values()
                .all(|v| v.as_ref().is_some_and(|v| v.replication_pending == 0));
            let held: u64 = views.values().flatten().map(|v| v.replicas_held).sum();
            all_sent && held >= at_least
        },
    )
    .await;
    if let Err(e) = result {
        panic!("{e:#}; views: {:?}", stack.views().await);
    }
}

/// The value of the series `series` (name and labels, as `/metrics` writes it) on instance
/// `index`; 0 while the series does not exist yet.
pub async fn metric(stack: &Stack, index: u64, series: &str) -> f64 {
    let addr = stack.instance_addr(index).unwrap();
    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
