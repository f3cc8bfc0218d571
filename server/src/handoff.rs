//! Registrations follow their client: when this instance's view says another instance owns a
//! client it holds a registration for, it hands the registration to that owner
//! (`POST /peer/handoff`) and forgets it once the owner acknowledges.
//!
//! - **When.** After every epoch change, after a join served under the previous view (the
//!   transition window), after a hand-off received for ids owned elsewhere, and again while
//!   anything is pending (every round, then every second when nothing could be sent). An idle
//!   instance in a quiet cluster only compares its epoch with the last one it handed off under.
//! - **To whom, and when it is sent.** To the owner under this instance's current view, once
//!   that owner holds the same view (its gossip card says so): an owner that does not hold it
//!   yet might not own the ids under its own view, and would send them back.
//! - **Kept until acknowledged.** A registration is forgotten here only when the owner answered
//!   that it merged it, and only if it did not change here meanwhile (a join served in the
//!   transition window): then it goes again. The merge ([`crate::registry::merge`]) makes a
//!   second delivery harmless.
//! - **Leaving.** A leaving instance's view no longer has itself, so everything it holds is
//!   pending; [`HandOffs::drain`] waits for the acknowledgements before it exits, bounded, and
//!   logs and counts what it could not deliver. An instance removed as down after
//!   `DOWN_TIMEOUT_S` cannot hand anything off: what it held is lost unless its replica
//!   holds it (docs/handoff-and-sessions.md).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poc_routing_peer::PeerClient;
use poc_routing_placement::{ClientId, Epoch, Placement};
use poc_routing_wire::{
    HandOff, HandOffAck, MemberState, Registration, MAX_SERVED, MAX_STATE_BYTES,
};

use crate::discovery::Discovery;
use crate::error::ApiError;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::registry::MAX_JOIN_COUNTERS;
use crate::sessions::Sessions;
use crate::wall_us;
use poc_routing_membership::gossip::MAX_CLOCK_SKEW;
use poc_routing_membership::Membership;

/// The most registrations one `POST /peer/handoff` carries.
pub const BATCH: usize = 1000;

/// How long a hand-off or a registrations' read may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands off the registrations this instance no longer owns.
pub struct HandOffs {
    pub registry: Arc<Registry>,
    sessions: Arc<Sessions>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every hand-off and registrations' read goes through it (mutual TLS, the peer port).
    pub(crate) peers: PeerClient,
    /// Something may have become pending besides an epoch change.
    dirty: AtomicBool,
    /// Registrations held for ids owned elsewhere, as of the last pass.
    pending: AtomicU64,
    /// The epoch of the last pass.
    last_epoch: Mutex<Option<Epoch>>,
    /// Keys that arrive here or leave (app mode's `GET /events`).
    pub events: Arc<crate::ownership::Events>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Registrations held for ids owned elsewhere, before the pass.
    pub pending: u64,
    /// Acknowledged by their owner and forgotten here.
    pub delivered: u64,
}

/// How often the hand-off looks for work, unless `HANDOFF_INTERVAL_MS` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

impl HandOffs {
    pub fn new(
        registry: Arc<Registry>,
        sessions: Arc<Sessions>,
        membership: Arc<Membership>,
        identity: Arc<Identity>,
        discovery: Arc<Discovery>,
        metrics: Arc<Metrics>,
        peers: PeerClient,
    ) -> Self {
        Self {
            registry,
            sessions,
            membership,
            identity,
            discovery,
            metrics,
            peers,
            dirty: AtomicBool::new(true),
            pending: AtomicU64::new(0),
            last_epoch: Mutex::new(None),
            events: Arc::default(),
        }
    }

    /// Asks for a pass at the next round: a join was served under the previous view, or a
    /// hand-off arrived.
    pub fn wake(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Registrations held for ids owned elsewhere, as of the last pass.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Takes a hand-off that arrived from `sender` over the peer plane (so from a holder of
    /// the cluster's credential), if [`HandOffs::admit`] admits it. Returns how many it merged.
    pub fn receive(&self, handoff: HandOff, sender: IpAddr) -> Result<u64, ApiError> {
        self.admit(&handoff, sender, "hand-off")?;
        let count = handoff.registrations.len() as u64;
        let ids: Vec<String> = handoff
            .registrations
            .iter()
            .map(|r| r.client_id.clone())
            .collect();
        let evicted = self.registry.merge_in(handoff.registrations);
        self.arrived(ids);
        self.evicted(&evicted, "receiving a hand-off");
        self.metrics.handoff_received.inc_by(count);
        self.wake();
        Ok(count)
    }

    /// Whether a batch of registrations from another instance (a hand-off, or replicas) may
    /// be taken: `batch.from` is a current or recent member here (or a peer this instance
    /// sees as a member or leaving), DNS names `sender` as that instance's address, and every
    /// record passes [`validate`]. Refusals are counted and logged (`what` says which batch).
    pub fn admit(&self, batch: &HandOff, sender: IpAddr, what: &str) -> Result<(), ApiError> {
        let from = batch.from;
        self.admit_sender(from, sender)?;
        if let Err(why) = validate(batch, wall_us()) {
            self.metrics.refused("handoff_invalid");
            tracing::warn!(from, error = %why, "{what} refused");
            return Err(ApiError::BadBody(why));
        }
        Ok(())
    }

    /// Whether a request that says it comes from instance `from` may be taken from `sender`:
    /// `from` is a current or recent member here (or a peer this instance sees as a member or
    /// leaving), and DNS names `sender` as its address.
    pub fn admit_sender(&self, from: u64, sender: IpAddr) -> Result<(), ApiError> {
        let known = self
            .membership
            .is_current_or_recent_member(from, Instant::now())
            || self.discovery.peer_states().iter().any(|p| {
                p.instance == from
                    && matches!(p.state, Some(MemberState::Member | MemberState::Leaving))
            });
        if !known {
            self.metrics.refused("handoff_not_member");
            return Err(ApiError::NotAMember(from));
        }
        if self.discovery.found().get(&from).map(|a| a.ip()) != Some(sender) {
            self.metrics.refused("handoff_not_sender");
            return Err(ApiError::NotTheSender {
                from,
                addr: sender.to_string(),
            });
        }
        Ok(())
    }

    /// Tells the application (app mode) which of `ids`, whose records came here, this instance
    /// owns now.
    pub fn arrived(&self, ids: Vec<String>) {
        let (Some(me), Some(current)) = (self.identity.get(), self.membership.current()) else {
            return;
        };
        let owned = ids
            .into_iter()
            .filter(|id| owner(&current, id) == Some(me))
            .collect();
        self.events
            .arrived(owned, Some(current.epoch().to_string()));
    }

    /// Counts and logs registrations evicted to make room.
    pub fn evicted(&self, ids: &[String], while_: &str) {
        if ids.is_empty() {
            return;
        }
        self.metrics.registrations_evicted.inc_by(ids.len() as u64);
        tracing::warn!(
            count = ids.len(),
            "registry full while {while_}: the least recently joined registrations were evicted (REGISTRY_CAPACITY)"
        );
    }

    /// Runs a pass whenever one may do something, looking every `round`, until the process
    /// ends.
    pub async fn run(self: Arc<Self>, round: Duration) {
        // Since when passes have found registrations to hand off but delivered none (an owner
        // that does not hold the view yet, or does not answer), and when the last pass ran.
        let mut fruitless_since: Option<Instant> = None;
        let mut last_pass = Instant::now();
        loop {
            tokio::time::sleep(round).await;
            let epoch = self.membership.current().map(|c| c.epoch());
            let changed = *self.last_epoch.lock().unwrap_or_else(|e| e.into_inner()) != epoch;
            let woken = self.dirty.swap(false, Ordering::Relaxed);
            let pending = self.pending() > 0;
            // Pending and undeliverable for more than 2 s: once a second is enough.
            let backing_off = fruitless_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2))
                && last_pass.elapsed() < Duration::from_secs(1);
            if !(changed || woken || (pending && !backing_off)) {
                continue;
            }
            last_pass = Instant::now();
            let pass = self.pass().await;
            if pass.delivered == 0 && pass.pending > 0 {
                fruitless_since.get_or_insert(last_pass);
            } else {
                fruitless_since = None;
            }
        }
    }

    /// Sends every registration owned elsewhere to its owner, if that owner holds this view.
    pub async fn pass(&self) -> Pass {
        let (Some(me), Some(current)) = (self.identity.get(), self.membership.current()) else {
            return Pass::default();
        };
        *self.last_epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(current.epoch());
        let by_owner = self.registry.not_owned(me, |id| owner(&current, id));
        let pending: u64 = by_owner.values().map(|v| v.len() as u64).sum();
        self.pending.store(pending, Ordering::Relaxed);
        self.metrics.handoff_pending.set(pending as i64);
        if pending == 0 {
            self.move_sessions(me, &current);
            return Pass::default();
        }
        let ready = self.owners_holding(current.epoch());
        let addresses = self.discovery.found();
        let mut delivered = 0;
        for (owner, registrations) in by_owner {
            let Some(addr) = addresses.get(&owner).filter(|_| ready.contains(&owner)) else {
                continue;
            };
            for batch in batches(&registrations) {
                match self.send(*addr, me, current.epoch(), batch).await {
                    Ok(()) => {
                        self.metrics.handoff_sent.inc_by(batch.len() as u64);
                        let forgotten = self.registry.acknowledged(batch);
                        delivered += forgotten.len() as u64;
                        self.events
                            .left(forgotten, Some(current.epoch().to_string()));
                    }
                    Err(e) => {
                        self.metrics.handoff_failed.inc();
                        tracing::debug!(owner, error = %e, "hand-off not acknowledged; it will go again");
                        break;
                    }
                }
            }
        }
        let left = pending.saturating_sub(delivered);
        self.move_sessions(me, &current);
        self.pending.store(left, Ordering::Relaxed);
        self.metrics.handoff_pending.set(left as i64);
        if delivered > 0 {
            tracing::info!(delivered, left, epoch = %current.epoch(), "registrations handed off to their owners");
        }
        Pass { pending, delivered }
    }

    /// Ends the sessions of clients owned elsewhere now whose registration was handed off, or
    /// all of them once the change's transition window has passed.
    fn move_sessions(&self, me: u64, current: &Placement) {
        let window_passed = self
            .membership
            .changed_at()
            .is_none_or(|t| t.elapsed() >= self.membership.timing.transition_window);
        let moved = self
            .sessions
            .sweep(me, current, &self.registry, window_passed);
        if moved > 0 {
            tracing::info!(moved, epoch = %current.epoch(), "sessions of clients owned elsewhere now closed as moved");
        }
    }

    /// Before exiting: every session of a client owned elsewhere is closed as moved.
    pub fn close_moved_sessions(&self) {
        if let (Some(me), Some(current)) = (self.identity.get(), self.membership.current()) {
            let moved = self.sessions.sweep(me, &current, &self.registry, true);
            if moved > 0 {
                tracing::info!(moved, "leaving: sessions closed as moved");
            }
        }
    }

    /// The members that hold `epoch` now (by their gossip cards).
    fn owners_holding(&self, epoch: Epoch) -> Vec<u64> {
        self.discovery
            .peer_states()
            .into_iter()
            .filter(|p| p.state == Some(MemberState::Member) && p.epoch == Some(epoch))
            .map(|p| p.instance)
            .collect()
    }

    async fn send(
        &self,
        addr: std::net::SocketAddr,
        me: u64,
        epoch: Epoch,
        batch: &[Registration],
    ) -> Result<(), String> {
        send_batch(
            &self.peers,
            addr,
            "/peer/handoff",
            me,
            epoch,
            batch,
            PEER_TIMEOUT,
        )
        .await
    }

    /// Before a leaving instance exits: passes until nothing is pending or `within` has
    /// passed; logs and counts what could not be delivered.
    pub async fn drain(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let started = Instant::now();
        loop {
            let pass = self.pass().await;
            let left = pass.pending - pass.delivered;
            if left == 0 {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "leaving: every registration handed off"
                );
                return;
            }
            if Instant::now() >= deadline {
                self.metrics.handoff_undelivered.inc_by(left);
                tracing::warn!(
                    undelivered = left,
                    "leaving: registrations not acknowledged by their owners in time; they are lost"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The bytes a batch's records may add up to, by [`approximate_size`]: well under
/// [`crate::PEER_BODY_LIMIT`], which the receiver enforces.
const BATCH_BYTES: usize = crate::PEER_BODY_LIMIT / 2;

/// A bound on the JSON size of one record: its id and counters at their bounds, and its
/// application state in base64.
fn approximate_size(r: &Registration) -> usize {
    let state = r
        .state
        .as_ref()
        .and_then(|s| s.value.as_ref())
        .map_or(0, |v| v.len().div_ceil(3) * 4);
    2 * r.client_id.len() + 64 * (r.joins.len() + r.served.len()) + state + 256
}

/// `records` in batches of at most [`BATCH`] records and [`BATCH_BYTES`] bytes (a record
/// larger than that alone goes in a batch of its own).
pub(crate) fn batches(records: &[Registration]) -> Vec<&[Registration]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = approximate_size(r);
        if i > start && (i - start == BATCH || bytes + size > BATCH_BYTES) {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Sends `batch` to the instance at `addr` as a [`HandOff`] from `me` under `epoch`, to `path`
/// (`/peer/handoff`, or `/peer/replicate`); `Ok` once every record is acknowledged.
pub(crate) async fn send_batch(
    peers: &PeerClient,
    addr: std::net::SocketAddr,
    path: &str,
    me: u64,
    epoch: Epoch,
    batch: &[Registration],
    timeout: Duration,
) -> Result<(), String> {
    let body = HandOff {
        from: me,
        epoch: epoch.to_string(),
        registrations: batch.to_vec(),
    };
    let request = peers.post(addr.ip(), path).timeout(timeout).json(&body);
    let ack: HandOffAck = poc_routing_peer::json(request, crate::PEER_BODY_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if ack.accepted == batch.len() as u64 {
        Ok(())
    } else {
        Err(format!("{} of {} acknowledged", ack.accepted, batch.len()))
    }
}

/// Whether a hand-off (or a batch of replicas) holds only what a join could have made: at most [`BATCH`] records, each
/// with a valid client id, at most [`MAX_JOIN_COUNTERS`] counters and [`MAX_SERVED`] served
/// entries with valid epochs, and times in order and not ahead of the clock (by more than
/// [`MAX_CLOCK_SKEW`]). The first problem, in words (no client id in them).
pub fn validate(handoff: &HandOff, now_us: u64) -> Result<(), String> {
    let n = handoff.registrations.len();
    if n > BATCH {
        return Err(format!(
            "{n} registrations in one hand-off; at most {BATCH}"
        ));
    }
    let horizon = now_us.saturating_add(MAX_CLOCK_SKEW.as_micros() as u64);
    for (i, r) in handoff.registrations.iter().enumerate() {
        let problem = if let Err(e) = ClientId::try_from(r.client_id.as_str()) {
            Some(format!("an invalid client id ({})", e.code()))
        } else if r.joins.len() > MAX_JOIN_COUNTERS {
            Some(format!(
                "{} join counters; at most {MAX_JOIN_COUNTERS}",
                r.joins.len()
            ))
        } else if r.served.len() > MAX_SERVED {
            Some(format!(
                "{} served entries; at most {MAX_SERVED}",
                r.served.len()
            ))
        } else if r.served.iter().any(|s| s.epoch.parse::<Epoch>().is_err()) {
            Some("a served entry whose epoch is not 16 hex digits".to_owned())
        } else if r.first_join_us > r.last_join_us || r.last_join_us > horizon {
            Some("join times out of order or ahead of the clock".to_owned())
        } else if let Some(state) = &r.state {
            if state
                .value
                .as_ref()
                .is_some_and(|v| v.len() > MAX_STATE_BYTES)
            {
                Some(format!("an application state over {MAX_STATE_BYTES} bytes"))
            } else if state.written_us > horizon || state.version == 0 || state.version > horizon {
                Some(
                    "an application state of version 0, or versioned or written ahead of the clock"
                        .to_owned(),
                )
            } else {
                None
            }
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("registration {i} of the hand-off has {problem}"));
        }
    }
    Ok(())
}

/// The owner of `id` under `placement` (ids that do not parse stay where they are).
pub(crate) fn owner(placement: &Placement, id: &str) -> Option<u64> {
    let id = ClientId::try_from(id).ok()?;
    placement.index(&id).ok()
}

/// The most a peer's registrations list may hold, for a registry of `capacity` ids and as
/// many replicas (the peers are configured alike): every id at its longest, every byte
/// escaped in JSON.
pub fn registrations_answer_limit(capacity: usize) -> usize {
    capacity.saturating_mul(2 * (2 * poc_routing_placement::MAX_CLIENT_ID_BYTES + 3)) + 64 * 1024
}

/// Every instance's registered ids, gathered by this one (`GET /registrations`).
pub async fn gather(
    handoffs: &HandOffs,
    own: poc_routing_wire::InstanceRegistrations,
) -> poc_routing_wire::RegistrationsReport {
    let me = handoffs.identity.get();
    let limit = registrations_answer_limit(handoffs.registry.capacity());
    let addresses: BTreeMap<u64, std::net::SocketAddr> = handoffs.discovery.found();
    let reads =
        addresses
            .into_iter()
            .filter(|(i, _)| Some(*i) != me)
            .map(|(instance, addr)| async move {
                let request = handoffs
                    .peers
                    .get(addr.ip(), "/peer/registrations")
                    .timeout(PEER_TIMEOUT);
                poc_routing_peer::json::<poc_routing_wire::InstanceRegistrations>(request, limit)
                    .await
                    .map_err(|e| e.to_string())
                    .unwrap_or_else(|error| poc_routing_wire::InstanceRegistrations {
                        instance,
                        epoch: None,
                        pending: 0,
                        ids: Vec::new(),
                        replicas: None,
                        replication_pending: 0,
                        error: Some(error),
                    })
            });
    let mut instances = vec![own];
    instances.extend(futures::future::join_all(reads).await);
    instances.sort_by_key(|i| i.instance);
    poc_routing_wire::RegistrationsReport {
        via: me,
        epoch: handoffs.membership.current().map(|c| c.epoch().to_string()),
        instances,
    }
}
