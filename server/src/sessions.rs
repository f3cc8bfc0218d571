//! Long-lived sessions: `GET /join?client_id=X` with `Upgrade: websocket`, held by X's owner, and
//! ended with a "moved" close when X's owner changes, so that the client reconnects through
//! Envoy and lands on its new owner.
//!
//! A session is opened like a join: the owner accepts it only if it owns X under the epoch the
//! request was routed by (and, for a session, under its current view too: a session opened
//! under the previous view would move again at once), and opening it records a join (the
//! registration, which the hand-off carries). The owner then sends a `welcome` naming itself
//! and its epoch, answers `ping`s and echoes other text ([`poc_routing_wire::SessionMessage`]).
//!
//! When the view changes, [`Sessions::sweep`] (run by every hand-off pass) closes the sessions
//! of the clients this instance no longer owns, with close code
//! [`poc_routing_wire::CLOSE_MOVED`] and a JSON reason naming the new owner and epoch: once
//! their registration has been handed off (it is no longer held here), or at the latest when the
//! transition window of the change has passed. Sessions whose owner did not change are not
//! touched. A leaving instance's view no longer has itself, so all its sessions move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use poc_routing_placement::{ClientId, Placement};
use poc_routing_wire::{SessionMessage, SessionMoved, SessionRequest, CLOSE_MOVED};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite;

use crate::registry::Registry;

/// How often the owner pings an idle session, so that a dead peer is noticed and the proxy's
/// idle timeout never ends a healthy one.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The largest message a client may send: the protocol's are small JSON objects, so anything
/// bigger ends the session (close 1009, message too big) instead of being buffered.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Bytes read from a session's socket at a time. The WebSocket library's default, 128 KiB,
/// was almost all an idle session cost (135 KB each on the owner, `poc-bench sessions`);
/// 4 KiB holds any message of the protocol in a read or a few.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

struct Open {
    id: u64,
    moved: oneshot::Sender<SessionMoved>,
}

/// A place among the `MAX_SESSIONS` an instance holds; given back when dropped.
pub struct Permit(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Permit {
    /// A place, if fewer than `max` are taken.
    pub fn take(
        count: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        max: usize,
    ) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sessions held here, by client id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Vec<Open>>>,
    next: AtomicU64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Open>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions are open here.
    pub fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes, with a "moved" reason, the sessions of clients `me` does not own under
    /// `current`: those whose registration is no longer held here (handed off), or all of them
    /// once `deadline` (the change's transition window) has passed. Returns how many it closed.
    pub fn sweep(
        &self,
        me: u64,
        current: &Placement,
        registry: &Registry,
        deadline_passed: bool,
    ) -> usize {
        let mut open = self.lock();
        let mut closed = 0;
        open.retain(|id, sessions| {
            let owner = ClientId::try_from(id.as_str())
                .ok()
                .and_then(|c| current.index(&c).ok());
            let Some(owner) = owner.filter(|o| *o != me) else {
                return true;
            };
            if !deadline_passed && registry.get(id).is_some() {
                return true;
            }
            for s in sessions.drain(..) {
                let _ = s.moved.send(SessionMoved {
                    reason: "moved".into(),
                    owner,
                    epoch: current.epoch().to_string(),
                });
                closed += 1;
            }
            false
        });
        closed
    }

    /// Serves one session of `client_id` on `socket` until either side ends it or the client
    /// moves.
    pub async fn serve(
        &self,
        mut socket: WebSocket,
        client_id: String,
        instance: u64,
        epoch: String,
    ) -> SessionEnd {
        let mut registered = self.register(&client_id);
        let welcome = SessionMessage::Welcome {
            client_id,
            instance,
            epoch,
        };
        match socket.send(text(&welcome)).await {
            Err(_) => SessionEnd::ClientGone,
            Ok(()) => {
                self.exchange(&mut socket, &mut registered.moved, instance)
                    .await
            }
        }
    }

    /// Enters a session of `client_id` in the table (a session served here, or one relayed
    /// to the application in app mode): [`Sessions::sweep`] tells it through
    /// [`Registered::moved`] when its client moves. It leaves the table when dropped.
    pub fn register(&self, client_id: &str) -> Registered<'_> {
        let (tx, moved) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(client_id.to_owned())
            .or_default()
            .push(Open { id, moved: tx });
        Registered {
            sessions: self,
            client_id: client_id.to_owned(),
            id,
            moved,
        }
    }

    async fn exchange(
        &self,
        socket: &mut WebSocket,
        moved: &mut oneshot::Receiver<SessionMoved>,
        instance: u64,
    ) -> SessionEnd {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                why = &mut *moved => {
                    let Ok(why) = why else { return SessionEnd::ClientGone };
                    let _ = socket.send(Message::Close(Some(moved_frame(&why)))).await;
                    return SessionEnd::Moved;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > PING_EVERY * 3 {
                        return SessionEnd::ClientGone;
                    }
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return SessionEnd::ClientGone;
                    }
                }
                message = socket.recv() => {
                    last_heard = Instant::now();
                    let reply = match message {
                        None => return SessionEnd::ClientGone,
                        Some(Err(e)) => {
                            if let Some(frame) = close_for(e) {
                                let _ = socket.send(Message::Close(Some(frame))).await;
                            }
                            return SessionEnd::ClientGone;
                        }
                        Some(Ok(Message::Close(_))) => {
                            // Reading once more sends the close reply the WebSocket queued,
                            // which completes the handshake: without it the client sees an
                            // abnormal closure, and Envoy keeps the client's connection open
                            // for up to a second (its delayed close) waiting for it to end.
                            let _ = tokio::time::timeout(Duration::from_secs(1), socket.recv()).await;
                            return SessionEnd::ClientGone;
                        }
                        Some(Ok(Message::Text(t))) => Some(match serde_json::from_str::<SessionRequest>(&t) {
                            Ok(SessionRequest::Ping { seq }) => SessionMessage::Pong { seq, instance },
                            Err(_) => SessionMessage::Echo { data: t.to_string() },
                        }),
                        Some(Ok(_)) => None,
                    };
                    if let Some(reply) = reply {
                        if socket.send(text(&reply)).await.is_err() {
                            return SessionEnd::ClientGone;
                        }
                    }
                }
            }
        }
    }
}

/// A session in the table, until dropped.
pub struct Registered<'a> {
    sessions: &'a Sessions,
    client_id: String,
    id: u64,
    /// Where the client moved, once it did.
    pub moved: oneshot::Receiver<SessionMoved>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        // Gone from the table (a "moved" close already took it out).
        let mut open = self.sessions.lock();
        if let Some(sessions) = open.get_mut(&self.client_id) {
            sessions.retain(|s| s.id != self.id);
            if sessions.is_empty() {
                open.remove(&self.client_id);
            }
        }
    }
}

/// The close frame that ends a session whose client moved: [`CLOSE_MOVED`], and where to.
pub fn moved_frame(why: &SessionMoved) -> CloseFrame {
    CloseFrame {
        code: CLOSE_MOVED,
        reason: serde_json::to_string(why).unwrap_or_default().into(),
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Closed here because its client moved.
    Moved,
    /// The client closed it, or the connection broke.
    ClientGone,
}

/// The close frame that tells a client why reading its message failed, as RFC 6455 asks: a
/// message over [`MAX_MESSAGE_BYTES`] (1009) or a protocol violation (1002). A broken
/// connection cannot be told anything. Best effort: the client's unread bytes may turn the
/// close into a reset.
fn close_for(error: axum::Error) -> Option<CloseFrame> {
    let error = error.into_inner().downcast::<tungstenite::Error>().ok()?;
    let (code, reason) = match *error {
        tungstenite::Error::Capacity(_) => (close_code::SIZE, "message too big"),
        tungstenite::Error::Protocol(_) => (close_code::PROTOCOL, "malformed frame"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

fn text(m: &SessionMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}
