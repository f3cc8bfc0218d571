//! A room service, written as a team would write its own service to run behind poc-routing in
//! app mode. Each room's history is state of the room's key, kept through the instance's state
//! API, so it follows the room when the room moves to another instance, and has a replica.
//!
//! - `POST /rooms/{room}/messages` (the body is the message) appends to the history: 201.
//! - `GET /rooms/{room}/messages` reads the history.
//! - `GET /rooms/{room}/live` (WebSocket): every text message sent is appended and confirmed.
//! - `GET /health`: alive, and how many rooms the instance holds now (from its events).
//!
//! What it relies on, and nothing else: requests reach it only on the owner of their room,
//! with the room's key in `x-poc-key` and the instance's index in `x-poc-instance`; the state
//! API at `STATE_URL` (`GET`/`PUT /state/{key}`, versioned); the events at `STATE_URL/events`.
//! It keeps nothing in memory that matters: another instance can take a room over at any time.
//!
//! Configuration: `LISTEN` (127.0.0.1:3000) and `STATE_URL` (http://127.0.0.1:8090).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A message is at most this long; a room keeps at most this many (a room's state must fit
/// the instance's bound on a key's state, 64 KiB).
const MAX_MESSAGE_BYTES: usize = 500;
const MAX_MESSAGES: usize = 100;

/// A room's history: what the state API holds for the room's key, as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Room {
    messages: Vec<Posted>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Posted {
    seq: u64,
    text: String,
}

struct App {
    http: reqwest::Client,
    state_url: String,
    /// The rooms this instance holds, as its ownership events tell (for `/health` and logs).
    held: Mutex<BTreeSet<String>>,
}

/// The answer to a request: a status and a JSON body (errors: `error` and `message`).
type Answer = (StatusCode, Json<serde_json::Value>);

fn refuse(status: StatusCode, error: &str, message: impl Into<String>) -> Answer {
    (
        status,
        Json(json!({ "error": error, "message": message.into() })),
    )
}

/// What the instance tells the application about a request: the room's key (form-encoded, as
/// the state API takes it in its path) and the instance's index.
struct Routed {
    key: String,
    instance: u64,
}

impl Routed {
    fn from(headers: &HeaderMap) -> Result<Self, Answer> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let instance = get("x-poc-instance").and_then(|i| i.parse().ok());
        match (get("x-poc-key"), instance) {
            (Some(key), Some(instance)) => Ok(Self {
                key: key.to_owned(),
                instance,
            }),
            _ => Err(refuse(
                StatusCode::BAD_REQUEST,
                "not_routed",
                "this service is reached through its poc-routing instance (x-poc-key, x-poc-instance)",
            )),
        }
    }

    /// The room's name, for people: the key decoded.
    fn room(&self) -> String {
        let key = self.key.replace('+', " ");
        percent_encoding::percent_decode_str(&key)
            .decode_utf8_lossy()
            .into_owned()
    }
}

impl App {
    fn state(&self, key: &str) -> String {
        format!("{}/state/{key}", self.state_url)
    }

    /// The room's history and its version (0: never written).
    async fn load(&self, key: &str) -> Result<(u64, Room), Answer> {
        let answer = self
            .http
            .get(self.state(key))
            .send()
            .await
            .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "state_api", e.to_string()))?;
        let version = answer
            .headers()
            .get("x-poc-version")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        match answer.status() {
            StatusCode::OK => {
                let bytes = answer.bytes().await.unwrap_or_default();
                let room = serde_json::from_slice(&bytes).map_err(|e| {
                    refuse(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "bad_state",
                        e.to_string(),
                    )
                })?;
                Ok((version, room))
            }
            StatusCode::NOT_FOUND => Ok((version, Room::default())),
            _ => Err(passed_on(answer).await),
        }
    }

    /// Appends `text` to the room's history: read, append, write back on condition that
    /// nobody wrote in between (`If-Match`), and again if somebody did.
    async fn append(&self, key: &str, text: String) -> Result<u64, Answer> {
        for _ in 0..50 {
            let (version, mut room) = self.load(key).await?;
            if room.messages.len() >= MAX_MESSAGES {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    "room_full",
                    format!("a room keeps at most {MAX_MESSAGES} messages"),
                ));
            }
            let seq = room.messages.last().map_or(1, |m| m.seq + 1);
            room.messages.push(Posted {
                seq,
                text: text.clone(),
            });
            let answer = self
                .http
                .put(self.state(key))
                .header("if-match", version.to_string())
                .body(serde_json::to_vec(&room).unwrap_or_default())
                .send()
                .await
                .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "state_api", e.to_string()))?;
            match answer.status() {
                StatusCode::OK => return Ok(seq),
                StatusCode::PRECONDITION_FAILED => continue,
                _ => return Err(passed_on(answer).await),
            }
        }
        Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the room changed under every attempt to append; try again",
        ))
    }
}

/// A state API refusal, to the client as it is (a 503 `state_unavailable` is worth a retry).
async fn passed_on(answer: reqwest::Response) -> Answer {
    let status = answer.status();
    let body = answer.json().await.unwrap_or_else(|_| json!({}));
    (status, Json(body))
}

fn check(text: &str) -> Result<(), Answer> {
    if text.is_empty() || text.len() > MAX_MESSAGE_BYTES {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_message",
            format!("a message is 1 to {MAX_MESSAGE_BYTES} bytes of text"),
        ));
    }
    Ok(())
}

async fn post_message(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    text: String,
) -> Result<Answer, Answer> {
    let routed = Routed::from(&headers)?;
    check(&text)?;
    let seq = app.append(&routed.key, text).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "room": routed.room(), "seq": seq, "instance": routed.instance })),
    ))
}

async fn get_messages(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Answer, Answer> {
    let routed = Routed::from(&headers)?;
    let (version, room) = app.load(&routed.key).await?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "room": routed.room(),
            "instance": routed.instance,
            "version": version,
            "messages": room.messages,
        })),
    ))
}

async fn live(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Answer> {
    let routed = Routed::from(&headers)?;
    let (_, room) = app.load(&routed.key).await?;
    Ok(upgrade.on_upgrade(move |socket| session(app, routed, room.messages.len(), socket)))
}

/// A live session: says hello, then appends each text message and confirms it. It ends when
/// the client leaves or the instance closes it (the room moved: the client reconnects).
async fn session(app: Arc<App>, routed: Routed, history: usize, mut socket: WebSocket) {
    let hello = json!({ "type": "joined", "room": routed.room(), "instance": routed.instance, "history": history });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.to_string();
        let reply = match check(&text) {
            Ok(()) => match app.append(&routed.key, text.clone()).await {
                Ok(seq) => json!({ "type": "posted", "seq": seq, "text": text }),
                Err((status, Json(body))) => {
                    json!({ "type": "refused", "status": status.as_u16(), "body": body })
                }
            },
            Err((_, Json(body))) => json!({ "type": "refused", "status": 400, "body": body }),
        };
        if socket
            .send(Message::Text(reply.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    let held = app.held.lock().map(|h| h.len()).unwrap_or(0);
    Json(json!({ "status": "ok", "rooms_held": held }))
}

/// Follows the instance's ownership events: the rooms held when it connects, then the rooms
/// that arrive and leave. A real service would warm or drop a cache here.
async fn follow_events(app: Arc<App>) {
    loop {
        if let Ok(mut answer) = app
            .http
            .get(format!("{}/events", app.state_url))
            .send()
            .await
        {
            app.held.lock().map(|mut h| h.clear()).ok();
            let mut lines = String::new();
            while let Ok(Some(chunk)) = answer.chunk().await {
                lines.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = lines.find('\n') {
                    let line: String = lines.drain(..=end).collect();
                    event(&app, &line);
                }
            }
        }
        // The instance is not up yet, or restarted: connect again.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn event(app: &App, line: &str) {
    #[derive(Deserialize)]
    struct Event {
        event: String,
        keys: Vec<String>,
    }
    let Ok(e) = serde_json::from_str::<Event>(line) else {
        return;
    };
    let Ok(mut held) = app.held.lock() else {
        return;
    };
    match e.event.as_str() {
        "arrived" => held.extend(e.keys.iter().cloned()),
        "left" => e.keys.iter().for_each(|k| {
            held.remove(k);
        }),
        _ => {}
    }
    tracing::info!(event = %e.event, rooms = e.keys.len(), held = held.len(), "ownership changed");
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let listen = setting("LISTEN", "127.0.0.1:3000");
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("invalid LISTEN={listen:?}: expected an address and port such as 127.0.0.1:3000");
        std::process::exit(2);
    };
    let state_url = setting("STATE_URL", "http://127.0.0.1:8090");
    if !state_url.starts_with("http://") || state_url.ends_with('/') {
        eprintln!("invalid STATE_URL={state_url:?}: expected http://HOST:PORT of the instance's state API (APP_STATE_ADDR)");
        std::process::exit(2);
    }
    let app = Arc::new(App {
        http: reqwest::Client::new(),
        state_url,
        held: Mutex::default(),
    });
    tokio::spawn(follow_events(app.clone()));
    let router = Router::new()
        .route(
            "/rooms/{room}/messages",
            get(get_messages).post(post_message),
        )
        .route("/rooms/{room}/live", get(live))
        .route("/health", get(health))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen} (LISTEN): {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(%listen, "room service listening");
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("room service stopped: {e}");
        std::process::exit(1);
    }
}
