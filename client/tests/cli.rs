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

/// `poc-client ARGS`: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = client(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn where_index_and_join_expect_judge_one_answer() {
    // Instance 1 of 2: it joins its own ids and refuses instance 2's with 421.
    let server = spawn_server(2, 1);
    let url = server.url.as_str();
    let owner_of = |id: &str| {
        let (code, stdout, stderr) = run(&["where", id, "--url", url, "--index"]);
        assert_eq!(code, Some(0), "{stderr}");
        stdout.trim().parse::<u64>().unwrap()
    };
    let ids: Vec<String> = (0..20).map(|i| format!("id{i}")).collect();
    let mine = ids.iter().find(|id| owner_of(id) == 1).unwrap();
    let theirs = ids.iter().find(|id| owner_of(id) == 2).unwrap();

    let (code, stdout, _) = run(&[
        "join-expect",
        mine,
        "--url",
        url,
        "--status",
        "200",
        "--instance",
        "1",
    ]);
    assert_eq!((code, stdout.as_str()), (Some(0), "200 1\n"));
    let (code, stdout, stderr) = run(&["join-expect", theirs, "--url", url, "--status", "200"]);
    assert_eq!((code, stdout.as_str()), (Some(1), "421 1\n"));
    assert!(
        stderr
            .contains("expected HTTP 200, received HTTP 421 from instance 1 misdirected (owner 2)"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&[
        "join-expect",
        theirs,
        "--url",
        url,
        "--error",
        "misdirected",
        "--owner",
        "2",
        "--body",
    ]);
    assert_eq!(code, Some(0), "{stderr}");

    // No answer: 000, which only an expectation turns into a failure.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, stdout, _) = run(&["join-expect", "x", "--url", &nobody, "--timeout", "2"]);
    assert_eq!((code, stdout.as_str()), (Some(0), "000 -\n"));
    let (code, _, stderr) = run(&["join-expect", "x", "--url", &nobody, "--status", "200"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("received no answer (cannot reach"),
        "{stderr}"
    );
}

#[test]
fn files_a_script_judges() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // A verify report with results, made while instance 2 was down.
    let results = r#"{"results": [
        {"client_id": "a b", "owner": 2, "outcome": "error", "kind": "join:http_503_owner_unavailable", "detail": "d"},
        {"client_id": "ab1", "owner": 2, "outcome": "error", "kind": "join:http_503_owner_unavailable", "detail": "d"},
        {"client_id": "c", "owner": 1, "outcome": "correct", "instance": 1}]}"#;
    std::fs::write(path("killed.json"), results).unwrap();
    let (code, stdout, stderr) = run(&[
        "results",
        "expect-down",
        &path("killed.json"),
        "--instance",
        "2",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "2 clients of the killed server got 503 owner_unavailable; the other 1 were served\n"
    );
    let (code, _, stderr) = run(&[
        "results",
        "expect-down",
        &path("killed.json"),
        "--instance",
        "1",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("FAIL: 3 wrong outcomes; 1 ids owned"),
        "{stderr}"
    );
    let (code, stdout, _) = run(&[
        "results",
        "pick",
        &path("killed.json"),
        "--owner",
        "2",
        "--plain",
    ]);
    assert_eq!((code, stdout.as_str()), (Some(0), "ab1\n"));
    let (code, _, _) = run(&["results", "pick", &path("killed.json"), "--owner", "3"]);
    assert_eq!(code, Some(1));

    // A sessions run's progress.
    std::fs::write(
        path("progress"),
        "{\"unix_ms\":1,\"sessions\":3,\"up\":3,\"moved\":0,\"unexpected_closes\":0,\"refused_connects\":0}\n{\"unix_ms\":2,\"sessions\":3,\"up\":2,\"moved\":0,\"unexpected_closes\":1,\"refused_connects\":0}\n",
    )
    .unwrap();
    let progress = path("progress");
    let (code, stdout, _) = run(&["sessions-progress", &progress, "--up-below", "3"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "up 2 of 3, unexpected closes 1\n")
    );
    let (code, _, _) = run(&["sessions-progress", &progress, "--up", "3"]);
    assert_eq!(code, Some(1));
    let (code, _, _) = run(&["sessions-progress", &progress, "--unexpected-at-least", "1"]);
    assert_eq!(code, Some(0));
    let (code, _, stderr) = run(&["sessions-progress", &progress, "--unexpected-at-least", "2"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("1 unexpected closes, not at least 2"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["sessions-progress", &path("missing"), "--up", "3"]);
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("poc-client: cannot read"), "{stderr}");
}
