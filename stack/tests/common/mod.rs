//! Shared set-up for the end-to-end tests: every test starts its own local stack (real Envoy,
//! real poc-server processes) through the same code as `make up`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::Api;
use poc_routing_placement::{client_id_from_query, ClientId, IndexMode};
use poc_routing_stack::{Naming, Stack, StackConfig};

/// Stacks are heavy (Envoy plus servers on 2 cores): tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_NET: AtomicU8 = AtomicU8::new(100);

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stack config on fresh ports and a fresh 127.0.N.0/24 for the instances.
pub fn config(name: &str, replicas: u32, naming: Naming, mode: IndexMode) -> StackConfig {
    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut c = StackConfig::new(replicas, naming, mode, run_dir);
    c.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.net = [127, 0, NEXT_NET.fetch_add(1, Ordering::Relaxed)];
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
