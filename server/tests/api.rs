//! The HTTP API, served in process on port 0 and called over real TCP.

use std::sync::Arc;

use poc_routing_placement::{client_id_from_query, IndexMode, Naming, Placement, PlacementSpec};
use poc_routing_server::auth::Operator;
use poc_routing_server::identity::Identity;
use poc_routing_server::{run, AppState};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct TestApp {
    base: String,
    placement: Placement,
    /// Sends the operator's token with every request.
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _secrets: tempfile::TempDir,
}

impl TestApp {
    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{}", self.base, path_and_query))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = r.text().await.unwrap();
        if path_and_query.starts_with("/metrics") {
            return (status, Value::String(body));
        }
        assert!(
            ct.starts_with("application/json"),
            "{path_and_query}: content-type {ct:?}"
        );
        (status, serde_json::from_str(&body).expect("JSON body"))
    }

    /// An id owned by `index`, found by trying candidates.
    fn id_owned_by(&self, index: u64) -> String {
        (0..)
            .map(|i| format!("user-{i}"))
            .find(|id| {
                let q = format!("client_id={id}");
                let cid = client_id_from_query(Some(&q)).unwrap();
                self.placement.index(&cid).unwrap() == index
            })
            .unwrap()
    }
}

/// Starts a server in process with `instance` as its identity (None: unknown).
async fn spawn_app(mode: IndexMode, instance: Option<u64>) -> TestApp {
    let placement = Placement::contiguous(PlacementSpec::new(mode, Naming::compose()), 3).unwrap();
    let identity = Arc::new(instance.map(Identity::known).unwrap_or_default());
    let secrets = tempfile::tempdir().unwrap();
    let made = poc_routing_peer::secrets::new(secrets.path()).unwrap();
    let operator = Arc::new(Operator::load(made.token.clone()).unwrap());
    let state = Arc::new(AppState::new(placement.clone(), identity, 1000, operator));
    let token = std::fs::read_to_string(&made.token).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        placement,
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        _stop: stop,
        _secrets: secrets,
    }
}

#[tokio::test]
async fn where_names_the_owner() {
    let app = spawn_app(IndexMode::Hash, Some(1)).await;
    let (status, body) = app.get("/where?client_id=123").await;
    assert_eq!(status, 200);
    // fnv1a32("123") = 1916298011; 1916298011 mod 3 = 2; base 1 => 3.
    assert_eq!(body["index"], 3);
    assert_eq!(body["hostport"], "poc-routing-server-3:8081");
    assert_eq!(body["client_id"], "123");
    assert_eq!(body["mode"], "hash");
    assert_eq!(body["replicas"], 3);

    let (_, body) = app.get("/where?client_id=Zo%C3%AB+x").await;
    assert_eq!(body["client_id"], "Zoë x");
}

#[tokio::test]
async fn join_on_the_owner_is_recorded() {
    let app = spawn_app(IndexMode::Hash, Some(2)).await;
    let id = app.id_owned_by(2);
    let (status, body) = app.get(&format!("/join?client_id={id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "joined");
    assert_eq!(body["instance"], 2);
    assert_eq!(body["owner"], 2);
    assert_eq!(body["client_id"], id.as_str());

    let r = app
        .client
        .post(format!("{}/join?client_id={id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, body) = app.get("/clients").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1);
    assert_eq!(body["clients"], serde_json::json!([id]));
    assert_eq!(body["instance"], 2);
}

#[tokio::test]
async fn join_elsewhere_is_misdirected_and_not_recorded() {
    let app = spawn_app(IndexMode::Hash, Some(2)).await;
    let id = app.id_owned_by(3);
    let (status, body) = app.get(&format!("/join?client_id={id}")).await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"], "misdirected");
    assert_eq!(body["instance"], 2);
    assert_eq!(body["owner"], 3);
    assert_eq!(body["client_id"], id.as_str());
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("owned by instance 3"));

    let (_, clients) = app.get("/clients").await;
    assert_eq!(clients["total"], 0);
}

#[tokio::test]
async fn unknown_identity_refuses_joins() {
    let app = spawn_app(IndexMode::Hash, None).await;
    let (status, body) = app.get("/join?client_id=a").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "identity_unknown");
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["instance"], Value::Null);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn bad_ids_are_rejected_with_codes() {
    let app = spawn_app(IndexMode::Numeric, Some(1)).await;
    let long = "x".repeat(257);
    let cases = [
        ("/where", "missing_client_id"),
        ("/where?other=1", "missing_client_id"),
        ("/where?client_id=", "invalid_client_id"),
        ("/where?client_id=1&client_id=1", "duplicate_client_id"),
        ("/where?client_id=%FF", "invalid_client_id"),
        ("/where?client_id=%01", "invalid_client_id"),
        ("/where?client_id=abc", "invalid_client_id"),
        ("/where?client_id=18446744073709551616", "invalid_client_id"),
        ("/join?client_id=-5", "invalid_client_id"),
        ("/join", "missing_client_id"),
    ];
    for (path, code) in cases {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = app.get(&format!("/where?client_id={long}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_id"))
    );
    let (status, body) = app.get("/where?client_id=00042").await;
    assert_eq!(status, 200);
    // 42 mod 3 = 0, base 1.
    assert_eq!(body["index"], 1);
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let app = spawn_app(IndexMode::Hash, Some(1)).await;
    let (status, body) = app.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let r = app
        .client
        .delete(format!("{}/where?client_id=1", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn placement_is_published() {
    let app = spawn_app(IndexMode::Jump, Some(1)).await;
    let (status, body) = app.get("/placement").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({
            "instance": 1, "state": "member", "discovery": "off",
            "mode": "jump", "base": 1, "prefix": "poc-routing-server", "suffix": "", "port": 8081,
            "epoch": app.placement.epoch().to_string(), "members": [1, 2, 3], "replicas": 3,
            // No name resolves here, so no member has an address.
            "addresses": {},
            "expected_replicas": null, "replicas_mismatch": false, "since_change_ms": null,
            "previous": null, "peers": [], "handoff_pending": 0, "replicas_held": 0, "replication_pending": 0, "credential": null,
        })
    );
}

/// Joins carry the epoch they were routed by (x-poc-epoch); an instance serves under an epoch it
/// holds, or under its current view when it owns the id there; otherwise it refuses and says
/// which epoch and owner are current.
#[tokio::test]
async fn joins_are_judged_by_the_stamped_epoch() {
    let app = spawn_app(IndexMode::Hash, Some(2)).await;
    let epoch = app.placement.epoch().to_string();
    let mine = app.id_owned_by(2);
    let join = |id: String, stamp: &'static str| {
        let req = app
            .client
            .get(format!("{}/join?client_id={id}", app.base))
            .header("x-poc-epoch", stamp);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let stamp: &'static str = Box::leak(epoch.clone().into_boxed_str());
    let (status, body) = join(mine.clone(), stamp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["epoch"], epoch.as_str());
    assert_eq!(body["served_under"], "current");

    // An epoch this instance never held, for an id it owns now: served, under the current view.
    let (status, body) = join(mine.clone(), "00000000000000ff").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["served_under"], "current");
    // For an id it does not own: refused.
    let theirs = app.id_owned_by(1);
    let (status, body) = join(theirs, "00000000000000ff").await;
    assert_eq!(status, 421, "an epoch this instance never held: {body}");
    assert_eq!(body["error"], "misdirected");
    assert_eq!(body["epoch"], epoch.as_str());
    assert_eq!(body["routed_epoch"], "00000000000000ff");
    assert_eq!(body["owner"], 1);

    for bad in ["xyz", "00000000000000FF", ""] {
        let (status, body) = join(mine.clone(), bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_epoch")),
            "{bad:?}"
        );
    }

    let (status, body) = app.get("/where?client_id=abc").await;
    assert_eq!(status, 200);
    assert_eq!(body["epoch"], epoch.as_str());
    let (status, body) = app.get("/health").await;
    assert_eq!((status, &body["state"]), (200, &Value::from("member")));
    assert_eq!(body["epoch"], epoch.as_str());
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = spawn_app(IndexMode::Hash, Some(2)).await;
    let mine = app.id_owned_by(2);
    let other = app.id_owned_by(1);
    app.get(&format!("/join?client_id={mine}")).await;
    app.get(&format!("/join?client_id={other}")).await;
    app.get("/where?client_id=x").await;
    app.get("/where").await;
    app.get("/nope").await;
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap();
    for line in [
        "poc_joins_total 1",
        "poc_misdirected_total 1",
        "poc_where_total 1",
        "poc_errors_total{code=\"missing_client_id\"} 1",
        "poc_errors_total{code=\"misdirected\"} 1",
        "poc_errors_total{code=\"not_found\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("poc_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("route=\"/join\""), "{text}");
}

/// Sends `request`; its answer must be JSON (or OpenMetrics text from `/metrics`), and an
/// error must carry `error` and `message`.
async fn assert_json_answer(
    request: reqwest::RequestBuilder,
    method: &reqwest::Method,
    path: &str,
    query: &str,
) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    if path == "/metrics" && status == 200 {
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        return;
    }
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!("{method} {path}{query:.60}: EXPECTED JSON\nRECEIVED {status} {ct} {text:.200}")
    });
    assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
    if status >= 400 {
        assert!(
            body["error"].as_str().is_some_and(|c| !c.is_empty())
                && body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}{query:.60}: EXPECTED {{\"error\",\"message\"}}\nRECEIVED {status} {text:.200}"
        );
    }
}

/// Every answer is JSON, and every error carries a machine code: every endpoint swept with
/// malformed queries, methods, headers and bodies.
#[tokio::test]
async fn every_answer_is_json_with_an_error_code() {
    let app = spawn_app(IndexMode::Numeric, Some(1)).await;
    let paths = [
        "/where",
        "/join",
        "/clients",
        "/health",
        "/placement",
        "/metrics",
        "/nope",
        "/",
    ];
    let queries = [
        "",
        "?client_id=",
        "?client_id=%FF",
        "?client_id=abc",
        "?client_id=1&client_id=1",
        "?limit=abc",
        "?limit=-1",
        "?limit=99999999999999999999999",
        "?%zz=%zz",
        "?client_id=1&limit=1&limit=2",
    ];
    let long = format!("?client_id={}", "9".repeat(5000));
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let mut checked = 0;
    for path in paths {
        for query in queries.iter().copied().chain([long.as_str()]) {
            for method in methods {
                let url = format!("{}{path}{query}", app.base);
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let requests = [
                    app.client.request(method.clone(), &url),
                    app.client
                        .request(method.clone(), &url)
                        .header("content-type", "application/json")
                        .header("x-poc-epoch", "not-hex")
                        .body("{not json"),
                    app.client
                        .request(method.clone(), &url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body("client_id=2"),
                ];
                for request in requests {
                    assert_json_answer(request, &method, path, query).await;
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    // Query rejections are counted like every other error.
    let (status, body) = app.get("/clients?limit=abc").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_query"))
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("poc_errors_total{code=\"invalid_query\"} ")),
        "{metrics}"
    );
}

/// `/clients` lists at most 1000 ids, most recent first, and says when it left some out.
#[tokio::test]
async fn clients_are_listed_up_to_the_cap() {
    let app = spawn_app(IndexMode::Numeric, Some(1)).await;
    // Numeric mode, 3 members, base 1: multiples of 3 belong to instance 1.
    let ids: Vec<u64> = (0..1200u64).map(|i| i * 3).collect();
    for id in &ids {
        let (status, body) = app.get(&format!("/join?client_id={id}")).await;
        assert_eq!(status, 200, "{body}");
    }
    // The registry holds 1000 (spawn_app's capacity): the oldest 200 are forgotten.
    let (_, body) = app.get("/clients?limit=5000").await;
    assert_eq!(
        (body["total"].as_u64(), body["capacity"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(body["truncated"], false);
    let listed = body["clients"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        1000,
        "at most 1000 listed, whatever limit asks"
    );
    assert_eq!(listed[0], ids.last().unwrap().to_string().as_str());
    assert!(
        !listed.contains(&Value::from("0")),
        "the oldest was forgotten"
    );
    let (_, body) = app.get("/clients").await;
    assert_eq!(body["clients"].as_array().unwrap().len(), 100);
    assert_eq!(body["truncated"], true);
    let (_, body) = app.get("/clients?limit=0").await;
    assert_eq!(body["clients"].as_array().unwrap().len(), 0);
    // Joining again refreshes, never duplicates.
    let last = ids[ids.len() - 2].to_string();
    app.get(&format!("/join?client_id={last}")).await;
    let (_, body) = app.get("/clients?limit=1").await;
    assert_eq!(
        (body["total"].as_u64(), body["clients"][0].as_str()),
        (Some(1000), Some(last.as_str()))
    );
}

/// A session on /join speaks the protocol README documents: the welcome, a pong per ping, an
/// echo of anything else; a message over the limit ends it with 1009; and a close from the
/// client is answered, so the handshake completes (no abnormal closure).
#[tokio::test]
async fn a_session_speaks_its_protocol_and_answers_a_close() {
    use futures::{SinkExt, StreamExt};
    use poc_routing_wire::{SessionMessage, SessionRequest};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app(IndexMode::Hash, Some(1)).await;
    let id = app.id_owned_by(1);
    let url = format!("{}/join?client_id={id}", app.base.replacen("http", "ws", 1));
    let next_json = |m: Option<Result<Message, _>>| -> SessionMessage {
        match m {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
            other => panic!("EXPECTED a text message, RECEIVED {other:?}"),
        }
    };

    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    match next_json(socket.next().await) {
        SessionMessage::Welcome {
            instance,
            client_id,
            ..
        } => assert_eq!((instance, client_id.as_str()), (1, id.as_str())),
        other => panic!("EXPECTED a welcome, RECEIVED {other:?}"),
    }
    let ping = serde_json::to_string(&SessionRequest::Ping { seq: 7 }).unwrap();
    socket.send(Message::Text(ping.into())).await.unwrap();
    assert!(matches!(
        next_json(socket.next().await),
        SessionMessage::Pong {
            seq: 7,
            instance: 1
        }
    ));
    socket.send(Message::Text("hello".into())).await.unwrap();
    match next_json(socket.next().await) {
        SessionMessage::Echo { data } => assert_eq!(data, "hello"),
        other => panic!("EXPECTED an echo, RECEIVED {other:?}"),
    }
    // The client closes: the owner answers with its own close frame.
    socket.close(None).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), socket.next())
        .await
        .expect("the owner answered the close in time");
    assert!(
        matches!(answer, Some(Ok(Message::Close(_)))),
        "EXPECTED the owner's close frame, RECEIVED {answer:?}"
    );

    // A message over the limit ends the session: a close with 1009, or (the client's unread
    // bytes make the owner's close a reset) a broken connection; never an echo.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    next_json(socket.next().await);
    let big = "x".repeat(poc_routing_server::sessions::MAX_MESSAGE_BYTES + 1);
    let _ = socket.send(Message::Text(big.into())).await;
    let end = tokio::time::timeout(std::time::Duration::from_secs(2), socket.next())
        .await
        .expect("the owner ended the session in time");
    match end {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
        None | Some(Err(_)) => {}
        other => panic!("EXPECTED close 1009 or a broken connection, RECEIVED {other:?}"),
    }
}

/// The operator's endpoints list client ids and describe the cluster: without the token, a
/// JSON 401 naming what is needed; the peer plane is not on this listener at all.
#[tokio::test]
async fn operator_endpoints_need_the_token_and_the_peer_plane_is_elsewhere() {
    let app = spawn_app(IndexMode::Numeric, Some(1)).await;
    let anonymous = reqwest::Client::new();
    for path in ["/clients", "/placement", "/metrics", "/registrations"] {
        for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
            let mut r = anonymous.get(format!("{}{path}", app.base));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{path}");
            assert!(body["message"]
                .as_str()
                .unwrap()
                .contains("OPERATOR_TOKEN_FILE"));
        }
        let (status, _) = app.get(path).await;
        assert_eq!(status, 200, "{path} with the token");
    }
    // The public API needs none.
    let r = anonymous
        .get(format!("{}/where?client_id=1", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/peer/digest", "/peer/registrations"] {
        let (status, body) = app.get(path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
}
