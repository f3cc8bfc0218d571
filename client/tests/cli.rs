//! `poc-client` against real `poc-server` processes.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use poc_routing_testkit::{free_port, wait_until_2xx, workspace_binary, KillOnDrop};

/// A binary built by this workspace (`cargo test --workspace` builds them all first).
fn workspace_bin(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

struct Server {
    _child: KillOnDrop,
    url: String,
    _secrets: tempfile::TempDir,
}

fn spawn_server(replicas: u32, instance: u64) -> Server {
    let port = free_port();
    // The operator's token, which every server needs (this fixed member set has no peer plane).
    let secrets = tempfile::tempdir().expect("a temporary directory");
    let token = secrets.path().join("token");
    std::fs::write(&token, format!("{}\n", "0123456789abcdef".repeat(4))).expect("write the token");
    let child = Command::new(workspace_bin("poc-server"))
        .env("OPERATOR_TOKEN_FILE", &token)
        .env("BIND_ADDR", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DISCOVERY", "off")
        .env("REPLICAS", replicas.to_string())
        .env("INSTANCE_INDEX", instance.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start poc-server");
    let server = Server {
        _child: KillOnDrop::new(child),
        url: format!("http://127.0.0.1:{port}"),
        _secrets: secrets,
    };
    let ready = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(wait_until_2xx(
            &reqwest::Client::new(),
            &format!("{}/health", server.url),
            Duration::from_secs(10),
        ));
    ready.unwrap_or_else(|e| panic!("poc-server did not come up: {e}"));
    server
}

fn client(args: &[&str]) -> Output {
    Command::new(workspace_bin("poc-client"))
        .args(args)
        .output()
        .expect("run poc-client")
}

fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "EXPECTED a JSON report, RECEIVED ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `verify` of 200 seeded random ids against `url`, with a JSON report.
fn verify_200(url: &str) -> Output {
    client(&[
        "verify", "--url", url, "--count", "200", "--json", "--seed", "3",
    ])
}

#[test]
fn verify_passes_when_the_single_replica_owns_everything() {
    let server = spawn_server(1, 1);
    let out = verify_200(&server.url);
    let report = json_report(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["total"], 200);
    assert_eq!(report["correct"], 200);
    assert_eq!(report["misrouted"], 0);
    assert_eq!(report["joins_per_instance"]["1"], 200);
}

#[test]
fn verify_fails_and_counts_misrouted_joins() {
    // Two replicas by placement, but only instance 1 answers: ids owned by 2 are misdirected.
    let server = spawn_server(2, 1);
    let out = verify_200(&server.url);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let correct = report["correct"].as_u64().unwrap();
    let misrouted = report["misrouted"].as_u64().unwrap();
    assert!(correct > 0 && misrouted > 0, "{report}");
    assert_eq!(correct + misrouted, 200, "{report}");
    assert_eq!(report["failures"][0]["outcome"], "misrouted");
}

#[test]
fn verify_reads_ids_from_a_file_and_reports_bad_ids() {
    let server = spawn_server(1, 1);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, "alice\nZoë\na b&c\n\n日本語\n".as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let out = client(&["verify", "--url", &server.url, "--ids", path, "--json"]);
    let report = json_report(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["total"], 4);

    let long = "x".repeat(300);
    std::fs::write(file.path(), format!("ok\n{long}\n")).unwrap();
    let out = client(&["verify", "--url", &server.url, "--ids", path, "--json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        report["errors"]["where:http_400_invalid_client_id"], 1,
        "{report}"
    );
}

#[test]
fn where_and_join_print_the_answer() {
    let server = spawn_server(1, 1);
    let out = client(&["where", "a b", "--url", &server.url]);
    assert!(out.status.success());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["client_id"], "a b");
    assert_eq!(body["index"], 1);
    let out = client(&["join", "a b", "--url", &server.url]);
    assert!(out.status.success());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["status"], "joined");
}

#[test]
fn unreachable_url_is_one_clear_line() {
    let port = free_port(); // nothing listens there once the probe socket is closed
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["verify", "--url", &url, "--count", "5"],
        vec!["where", "x", "--url", &url],
    ] {
        let out = client(&args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("poc-client: cannot reach"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
