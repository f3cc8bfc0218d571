//! Correctness with the real Envoy: every /join lands on the instance /where named, for
//! REPLICAS in {1,2,3,5}, Compose and Kubernetes naming, and every index mode.

use std::process::Command;
use std::time::Duration;

use poc_routing_client::verify;
use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::{self, Flow};
use poc_routing_stack::{wait_for, Deployment};

#[test]
fn envoy_yaml_passes_validate_mode() {
    let bin = envoy::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    // As the deployments run it, with the operator's token mounted where envoy.yaml says (the
    // routing module refuses its config without it): here, a file of the test's own.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", "t".repeat(64))).unwrap();
    let yaml = std::fs::read_to_string(envoy::repo_root().join("envoy.yaml"))
        .unwrap()
        .replace(
            "/etc/poc-routing/operator/token",
            &token.display().to_string(),
        );
    std::fs::write(dir.path().join("envoy.yaml"), yaml).unwrap();
    let out = Command::new(bin)
        .current_dir(envoy::repo_root())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(dir.path().join("envoy.yaml"))
        .arg("--use-dynamic-base-id")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("OK"),
        "envoy --mode validate failed:\n{text}"
    );
}

async fn correctness(naming: Deployment, flow: Flow) {
    let _turn = serial().await;
    for replicas in [1, 2, 3, 5] {
        for mode in IndexMode::ALL {
            let name = format!("correctness-{naming:?}-{flow:?}-{replicas}-{mode}");
            let mut c = config(&name, replicas, naming, mode);
            c.flow = Some(flow);
            let stack = start(c).await;
            let ids = test_ids(1000, mode, u64::from(replicas));
            let report = verify(&api(&stack), ids, 32, |_| {}).await;
            assert!(
                report.all_correct(),
                "{name}: EXPECTED every join on its owner, RECEIVED\n{}",
                report.render()
            );
            let indexes: Vec<u64> = stack.placement().members().to_vec();
            let served: Vec<u64> = report.joins_per_instance.keys().copied().collect();
            assert_eq!(
                served, indexes,
                "{name}: every instance should own some of 1000 ids"
            );
            let log = stack.envoy_log();
            assert!(
                !log.contains("Deprecated field"),
                "{name}: Envoy logged a deprecation warning:\n{log}"
            );
        }
    }
}

#[tokio::test]
async fn every_join_lands_on_its_owner_with_compose_naming() {
    correctness(Deployment::Compose, Flow::Module).await;
}

#[tokio::test]
async fn every_join_lands_on_its_owner_with_kubernetes_naming() {
    correctness(Deployment::Kubernetes, Flow::Module).await;
}

#[tokio::test]
async fn every_join_lands_on_its_owner_in_the_lua_flow_with_compose_naming() {
    correctness(Deployment::Compose, Flow::Lua).await;
}

#[tokio::test]
async fn every_join_lands_on_its_owner_in_the_lua_flow_with_kubernetes_naming() {
    correctness(Deployment::Kubernetes, Flow::Lua).await;
}

#[tokio::test]
async fn ids_are_decoded_once_and_alike_on_both_hops() {
    let _turn = serial().await;
    let mut c = config("decoding", 3, Deployment::Compose, IndexMode::Hash);
    // Joins are logged with their id at debug level only (ids are users' ids).
    c.server_env.push((
        "RUST_LOG".into(),
        "info,poc_routing_server::routes=debug".into(),
    ));
    let stack = start(c).await;
    // Raw queries whose decoding is easy to get wrong between Lua, Envoy and the server.
    for raw in [
        "client_id=a+b",
        "client_id=a%2Bb",
        "client_id=a%26b%3Dc",
        "client_id=%E6%97%A5%E6%9C%AC%E8%AA%9E",
        "client_id=100%",
        "client_id=%zz",
        "client%5Fid=x",
        "foo=1&client_id=Zo%C3%AB&bar=2",
    ] {
        let id = decode_like_server(raw);
        let want = owner(&stack, &id);
        let (status, body) = raw_get(&stack, &format!("/join?{raw}"), None).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            status == 200 && json["instance"] == want && json["client_id"] == id.as_str(),
            "{raw}: EXPECTED 200 on instance {want} for {id:?}\nRECEIVED {status} {body}"
        );
    }
    // The owner's process logged the join at debug level, with the id as decoded once (its log
    // is flushed every 100 ms).
    let owner_of_a_b = owner(&stack, "a b");
    let logged = || {
        stack
            .server_log(owner_of_a_b)
            .lines()
            .any(|l| l.contains("\"client joined\"") && l.contains("\"client_id\":\"a b\""))
    };
    let waited = wait_for("the join's log line", Duration::from_secs(2), || async {
        logged()
    })
    .await;
    assert!(
        waited.is_ok(),
        "EXPECTED a 'client joined' line for \"a b\" in server-{owner_of_a_b}.log\nRECEIVED\n{}",
        stack.server_log(owner_of_a_b)
    );

    // /join/... is route A too (the filter answers), /joinx is not (the server answers 404).
    let (status, body) = raw_get(&stack, "/join/sub", None).await;
    json_error(status, &body, 400, "missing_client_id");
    let (status, body) = raw_get(&stack, "/joinx", None).await;
    json_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn bad_ids_are_refused_by_the_filter_with_the_servers_codes() {
    let _turn = serial().await;
    let stack = start(config(
        "bad-ids",
        2,
        Deployment::Compose,
        IndexMode::Numeric,
    ))
    .await;
    let long = "x".repeat(257);
    let long_encoded = "%C3%A9".repeat(129); // 258 bytes once decoded
    let cases = [
        ("/join".to_owned(), "missing_client_id"),
        ("/join?other=1".to_owned(), "missing_client_id"),
        ("/join?client_id=".to_owned(), "invalid_client_id"),
        ("/join?client_id".to_owned(), "invalid_client_id"),
        (
            "/join?client_id=1&client_id=1".to_owned(),
            "duplicate_client_id",
        ),
        (
            "/join?client_id=1&client_id=2".to_owned(),
            "duplicate_client_id",
        ),
        (format!("/join?client_id={long}"), "invalid_client_id"),
        (
            format!("/join?client_id={long_encoded}"),
            "invalid_client_id",
        ),
        // Found invalid by the server through /where; the filter passes its answer on.
        ("/join?client_id=%FF".to_owned(), "invalid_client_id"),
        ("/join?client_id=%01".to_owned(), "invalid_client_id"),
        ("/join?client_id=abc".to_owned(), "invalid_client_id"),
        (
            "/where?client_id=1&client_id=1".to_owned(),
            "duplicate_client_id",
        ),
    ];
    for (path, code) in cases {
        let (status, body) = raw_get(&stack, &path, None).await;
        json_error(status, &body, 400, code);
    }
    let (status, body) =
        raw_get(&stack, &format!("/join?client_id={}", "7".repeat(20)), None).await;
    json_error(status, &body, 400, "invalid_client_id");
}
