//! `poc-client sessions`: many long-lived WebSocket sessions through Envoy, each reconnected
//! when its owner closes it as "moved", and checked against `/where`.
//!
//! Each session opens `GET /join?client_id=X` with `Upgrade: websocket` on Envoy's public
//! listener, reads the owner's `welcome` (which names the instance and epoch), pings it every
//! `ping_every`, and on a close with code [`CLOSE_MOVED`] reconnects after a jittered backoff.
//! Any other end (a close with another code, a broken connection) is an **unexpected close**,
//! counted, and reconnected the same way. A refused connect (421 while views change, 503 while
//! the owner is down) is retried too, and counted; each refusal in a row after the first
//! doubles the backoff, up to `retry_max`, so that the clients of an owner that is down do not
//! flood Envoy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use poc_routing_wire::{SessionMessage, SessionRequest, CLOSE_MOVED};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::api::Api;

/// How a run of sessions behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often each session pings its owner.
    pub ping_every: Duration,
    /// The backoff before a reconnect: uniformly random between a quarter of this and this.
    pub backoff_max: Duration,
    /// The backoff's ceiling after refused connects in a row (it doubles with each after the
    /// first).
    pub retry_max: Duration,
    /// Sessions opened at once at the start (the rest wait their turn).
    pub open_concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(1),
            backoff_max: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            open_concurrency: 64,
        }
    }
}

/// One session's state, as the run sees it now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionState {
    pub client_id: String,
    /// The instance holding it, while connected.
    pub instance: Option<u64>,
    pub epoch: Option<String>,
    /// Times it was closed as moved, and otherwise.
    pub moved: u64,
    pub unexpected: u64,
    /// The instance each unexpected close came from (the one holding the session).
    pub unexpected_on: Vec<u64>,
    /// Connect attempts refused (421, 503, no answer).
    pub refused: u64,
    /// Every close it saw, in order: the close code, or `none` for a broken connection.
    pub closes: Vec<String>,
    /// Each reconnect's time, from the close to the next welcome, in ms.
    pub reconnect_ms: Vec<u64>,
    /// Time without a session, in ms, after the first welcome.
    pub down_ms: u64,
    #[serde(skip)]
    down_since: Option<Instant>,
}

/// A running set of sessions.
pub struct Run {
    states: Vec<Arc<Mutex<SessionState>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What a run saw (what `poc-client sessions --json` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub sessions: usize,
    pub up: usize,
    /// Up, and on the instance `/where` names (when checked).
    pub on_owner: Option<usize>,
    pub moved: u64,
    pub unexpected_closes: u64,
    /// Unexpected closes by the instance that held the session: who broke them.
    pub unexpected_by_instance: BTreeMap<u64, u64>,
    /// The most unexpected closes any one session saw.
    pub most_unexpected_per_session: u64,
    pub refused_connects: u64,
    pub reconnect_ms: Percentiles,
    /// Per client: total time without a session after its first welcome.
    pub no_session_ms: Percentiles,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let at = |q: f64| {
            values
                .get(((values.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        Self {
            count: values.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: values.last().copied().unwrap_or(0),
        }
    }
}

/// One line of `poc-client sessions --progress-json` (stderr, every 200 ms): the run as of
/// `unix_ms`. [`crate::session_fault`] reads them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Wall clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub sessions: usize,
    pub up: usize,
    pub moved: u64,
    pub unexpected_closes: u64,
    pub refused_connects: u64,
}

impl Progress {
    /// The progress line of `report`, at `unix_ms`.
    pub fn of(report: &Report, unix_ms: u64) -> Self {
        Self {
            unix_ms,
            sessions: report.sessions,
            up: report.up,
            moved: report.moved,
            unexpected_closes: report.unexpected_closes,
            refused_connects: report.refused_connects,
        }
    }
}

impl Report {
    pub fn render(&self) -> String {
        format!(
            "sessions {}: up {}, on their owner {}, moved {}, unexpected closes {}, refused connects {}\nreconnect ms: p50 {} p99 {} max {} ({} reconnects)\nno-session ms per client: p50 {} p99 {} max {}\n",
            self.sessions,
            self.up,
            self.on_owner.map_or("-".into(), |n| n.to_string()),
            self.moved,
            self.unexpected_closes,
            self.refused_connects,
            self.reconnect_ms.p50,
            self.reconnect_ms.p99,
            self.reconnect_ms.max,
            self.reconnect_ms.count,
            self.no_session_ms.p50,
            self.no_session_ms.p99,
            self.no_session_ms.max,
        )
    }

    /// Every session up, on its owner, and none closed unexpectedly.
    pub fn healthy(&self) -> bool {
        self.up == self.sessions
            && self.on_owner.is_none_or(|n| n == self.sessions)
            && self.unexpected_closes == 0
    }
}

impl Run {
    /// Opens a session for each of `ids` through `public` (Envoy's public listener) and keeps
    /// them until [`Run::stop`].
    pub fn start(public: &Api, ids: &[String], options: Options) -> Self {
        let (stop, stopped) = watch::channel(false);
        let opening = Arc::new(tokio::sync::Semaphore::new(options.open_concurrency.max(1)));
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        for id in ids {
            let state = Arc::new(Mutex::new(SessionState {
                client_id: id.clone(),
                ..SessionState::default()
            }));
            // An id the route's source cannot carry fails its session at once (counted refused).
            let request = public
                .join_request(id)
                .map(|(url, header)| (url.replacen("http://", "ws://", 1), header));
            let task = hold(
                request,
                state.clone(),
                options.clone(),
                stopped.clone(),
                opening.clone(),
            );
            states.push(state);
            tasks.push(tokio::spawn(task));
        }
        Self {
            states,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Every session's state now.
    pub fn snapshot(&self) -> Vec<SessionState> {
        self.states
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Waits until every session is up (or `within` passes); whether they all are.
    pub async fn wait_all_up(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.snapshot().iter().all(|s| s.instance.is_some()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The report as of now; `owners`: each client's owner, to count the sessions on it.
    pub fn report(&self, owners: Option<&BTreeMap<String, u64>>) -> Report {
        let states = self.snapshot();
        report(&states, owners, self.started.elapsed())
    }

    /// Closes every session and returns what the run saw.
    pub async fn stop(self, owners: Option<&BTreeMap<String, u64>>) -> Report {
        let report = self.report(owners);
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        report
    }
}

/// The report of `states`.
pub fn report(
    states: &[SessionState],
    owners: Option<&BTreeMap<String, u64>>,
    elapsed: Duration,
) -> Report {
    let now = Instant::now();
    Report {
        sessions: states.len(),
        up: states.iter().filter(|s| s.instance.is_some()).count(),
        on_owner: owners.map(|o| {
            states
                .iter()
                .filter(|s| s.instance.is_some() && s.instance == o.get(&s.client_id).copied())
                .count()
        }),
        moved: states.iter().map(|s| s.moved).sum(),
        unexpected_closes: states.iter().map(|s| s.unexpected).sum(),
        unexpected_by_instance: states.iter().flat_map(|s| s.unexpected_on.iter()).fold(
            BTreeMap::new(),
            |mut by, instance| {
                *by.entry(*instance).or_default() += 1;
                by
            },
        ),
        most_unexpected_per_session: states.iter().map(|s| s.unexpected).max().unwrap_or(0),
        refused_connects: states.iter().map(|s| s.refused).sum(),
        reconnect_ms: Percentiles::of(
            states
                .iter()
                .flat_map(|s| s.reconnect_ms.iter().copied())
                .collect(),
        ),
        no_session_ms: Percentiles::of(
            states
                .iter()
                .map(|s| {
                    s.down_ms
                        + s.down_since
                            .map_or(0, |t| now.duration_since(t).as_millis() as u64)
                })
                .collect(),
        ),
        seconds: elapsed.as_secs_f64(),
    }
}

fn lock(s: &Mutex<SessionState>) -> std::sync::MutexGuard<'_, SessionState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds one client's session until stopped: connect, read the welcome, ping, reconnect.
/// The WebSocket handshake of a session: `url`, and the header carrying the id if the route's
/// source is a header or a cookie.
fn handshake(
    url: &str,
    header: Option<&(String, String)>,
) -> Option<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().ok()?;
    if let Some((name, value)) = header {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(value.as_bytes()).ok()?,
        );
    }
    Some(request)
}

async fn hold(
    request: Result<(String, Option<(String, String)>), crate::api::CallError>,
    state: Arc<Mutex<SessionState>>,
    options: Options,
    mut stopped: watch::Receiver<bool>,
    opening: Arc<tokio::sync::Semaphore>,
) {
    // An id the route cannot carry (a cookie with a space, a header value with a newline)
    // never opens: its session counts one refusal and ends.
    let Some((url, header)) = request
        .ok()
        .filter(|(url, header)| handshake(url, header.as_ref()).is_some())
    else {
        lock(&state).refused += 1;
        return;
    };
    let mut first = true;
    // Connects refused in a row (reset by a welcome).
    let mut refusals = 0u32;
    loop {
        if *stopped.borrow() {
            return;
        }
        let permit = if first {
            opening.clone().acquire_owned().await.ok()
        } else {
            None
        };
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(
                handshake(&url, header.as_ref()).expect("checked before the first connect"),
            ),
        )
        .await;
        let mut socket = match connected {
            Ok(Ok((socket, _))) => socket,
            _ => {
                lock(&state).refused += 1;
                drop(permit);
                refusals += 1;
                backoff(&options, refusals, &mut stopped).await;
                continue;
            }
        };
        // The welcome names the holder.
        let welcome = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = welcome else {
            lock(&state).refused += 1;
            drop(permit);
            refusals += 1;
            backoff(&options, refusals, &mut stopped).await;
            continue;
        };
        let Ok(SessionMessage::Welcome {
            instance, epoch, ..
        }) = serde_json::from_str::<SessionMessage>(&text)
        else {
            lock(&state).refused += 1;
            drop(permit);
            refusals += 1;
            backoff(&options, refusals, &mut stopped).await;
            continue;
        };
        drop(permit);
        first = false;
        refusals = 0;
        {
            let mut s = lock(&state);
            if let Some(since) = s.down_since.take() {
                let ms = since.elapsed().as_millis() as u64;
                s.reconnect_ms.push(ms);
                s.down_ms += ms;
            }
            s.instance = Some(instance);
            s.epoch = Some(epoch);
        }
        let mut ping = tokio::time::interval(options.ping_every);
        let mut seq = 0u64;
        let close = loop {
            tokio::select! {
                _ = stopped.changed() => {
                    let _ = socket.close(None).await;
                    let mut s = lock(&state);
                    s.instance = None;
                    return;
                }
                _ = ping.tick() => {
                    seq += 1;
                    let ping = serde_json::to_string(&SessionRequest::Ping { seq }).unwrap_or_default();
                    if socket.send(Message::Text(ping.into())).await.is_err() {
                        break None;
                    }
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Close(frame))) => break Some(frame.map(|f| f.code)),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break None,
                }
            }
        };
        {
            let mut s = lock(&state);
            let held_by = s.instance.take();
            s.down_since = Some(Instant::now());
            if !matches!(close, Some(Some(code)) if code == CloseCode::from(CLOSE_MOVED)) {
                s.unexpected_on.extend(held_by);
            }
            match close {
                Some(Some(code)) if code == CloseCode::from(CLOSE_MOVED) => {
                    s.moved += 1;
                    s.closes.push(CLOSE_MOVED.to_string());
                }
                Some(Some(code)) => {
                    s.unexpected += 1;
                    s.closes.push(u16::from(code).to_string());
                }
                _ => {
                    s.unexpected += 1;
                    s.closes.push("none".into());
                }
            }
        }
        backoff(&options, 0, &mut stopped).await;
    }
}

/// A jittered pause before reconnecting, cut short by a stop: after `refusals` refused
/// connects in a row, `backoff_max` doubled once for each refusal after the first (a single
/// 421 while views change is retried as soon as a moved close is), up to `retry_max`.
async fn backoff(options: &Options, refusals: u32, stopped: &mut watch::Receiver<bool>) {
    let max = options
        .backoff_max
        .saturating_mul(1 << refusals.saturating_sub(1).min(16))
        .min(options.retry_max.max(options.backoff_max))
        .as_millis()
        .max(1) as u64;
    let pause = Duration::from_millis(rand::thread_rng().gen_range(max / 4..=max));
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stopped.changed() => {}
    }
}

/// Each of `ids`' owner by `/where` through `public`.
pub async fn owners(public: &Api, ids: &[String]) -> BTreeMap<String, u64> {
    futures::stream::iter(ids)
        .map(|id| async move { (id.clone(), public.where_(id).await.ok().map(|w| w.index)) })
        .buffer_unordered(32)
        .filter_map(|(id, o)| async move { o.map(|o| (id, o)) })
        .collect()
        .await
}
