//! Who the members are, under which epoch, and whether this instance may serve a join.
//!
//! The member list is what is deployed and ready, not a constant. Each instance keeps its own
//! view, built from what its gossip ([`crate::gossip`]) observed of its peers:
//!
//! - a peer that says it is a `member` is one, and one that says it is `leaving` is not;
//! - a member that can no longer be seen (crashed, restarting, unreachable, or back but still
//!   `joining`) **stays** a member for `down_timeout`, so a crash is not a scale-down: only its
//!   own clients fail (503 from Envoy), and nobody else's owner changes. After the timeout, or as
//!   soon as a member peer's view has dropped it, it is removed and its clients move;
//! - this instance counts itself while it is a `member`.
//!
//! Every view has an [`Epoch`]. When the view changes, the old one stays acceptable for
//! `transition_window` ([`Views::judge`]), so a join routed by a proxy that still holds the old
//! view is served by the instance that owned it under that view, and nothing fails while views
//! change at slightly different moments. The views member or leaving peers report holding
//! (current or previous) are acceptable for the same window: when two changes come close together, an
//! instance that went straight from the first view to the third still serves joins routed by
//! the second, which its peers held.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use poc_routing_placement::{ClientId, Epoch, IdError, Placement};

/// Where an instance is in its life: part of the wire contract (`/placement`, `/health`).
pub use poc_routing_wire::{MemberState, ServedUnder};

/// What this instance last learnt about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub instance: u64,
    /// The version of the card this comes from (its writer's wall clock, in µs; 0: none).
    /// A peer's view says something about an instance only if it was written after that
    /// instance's own card: an older view may simply not have heard of it yet.
    pub version: u64,
    /// `None` when the last probe got no usable answer.
    pub state: Option<MemberState>,
    pub epoch: Option<Epoch>,
    /// Shared with the gossip's cards: a thousand peers holding one view hold one list.
    pub members: Arc<Vec<u64>>,
    /// The peer's previous view (epoch and members) and how long its window still lasts.
    pub previous: Option<(Epoch, Arc<Vec<u64>>, Duration)>,
    /// The members the peer removed as down lately, with the version of their card it held.
    pub removed: Arc<Vec<(u64, u64)>>,
}

/// The most views kept besides the current one. Several instances joining together make many
/// intermediate views (each peer may hold another combination for a moment); the bound is
/// for memory, and when it is reached the view whose window ends first goes.
const MAX_RECENT: usize = 32;

/// The placement this instance routes by now, and the recent ones it still accepts.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub current: Option<Arc<Placement>>,
    /// Views held just before (by this instance or a member peer), newest first, each with
    /// the moment until which joins routed by it are still served.
    pub recent: Vec<(Arc<Placement>, Instant)>,
}

/// Why a join may not be served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This instance has no member list yet.
    NoView,
    /// The id is not valid under the rule (numeric mode).
    BadId(IdError),
    /// Another instance owns the id under the view the request was routed by; `owner` is its
    /// owner under the current view.
    NotOwner { owner: u64 },
    /// The request was routed by a view this instance does not hold (too new, or too old), and
    /// this instance does not own the id under its current view either.
    UnknownEpoch { owner: u64 },
}

impl Views {
    /// Whether instance `me` serves a join for `id` that was routed by `routed` (no stamp:
    /// a direct call, judged by the current view).
    pub fn judge(
        &self,
        me: u64,
        id: &ClientId,
        routed: Option<Epoch>,
        now: Instant,
    ) -> Result<(ServedUnder, Arc<Placement>), Refusal> {
        let current = self.current.as_ref().ok_or(Refusal::NoView)?;
        let current_owner = current.index(id).map_err(Refusal::BadId)?;
        let under = match routed {
            None => Some((ServedUnder::Current, current)),
            Some(e) if e == current.epoch() => Some((ServedUnder::Current, current)),
            Some(e) => self.recent(e, now).map(|p| (ServedUnder::Previous, p)),
        };
        let Some((under, placement)) = under else {
            // Routed by a view this instance does not hold (one a peer held for a few
            // milliseconds while several instances left, and whose cards have not reached it
            // yet): the proxy sent it here because this instance owns the id under that view,
            // and if it owns it under its own current view too, it is the owner either way.
            if current_owner == me {
                return Ok((ServedUnder::Current, current.clone()));
            }
            return Err(Refusal::UnknownEpoch {
                owner: current_owner,
            });
        };
        let owner = match under {
            ServedUnder::Current => current_owner,
            ServedUnder::Previous => placement.index(id).map_err(Refusal::BadId)?,
        };
        if owner == me {
            Ok((under, placement.clone()))
        } else {
            Err(Refusal::NotOwner {
                owner: current_owner,
            })
        }
    }

    /// The recent view with `epoch`, if its window has not ended.
    fn recent(&self, epoch: Epoch, now: Instant) -> Option<&Arc<Placement>> {
        self.recent
            .iter()
            .find(|(p, until)| p.epoch() == epoch && now < *until)
            .map(|(p, _)| p)
    }

    /// The newest recent view still inside its window.
    pub fn previous(&self, now: Instant) -> Option<&(Arc<Placement>, Instant)> {
        self.recent.iter().find(|(_, until)| now < *until)
    }

    /// Whether `epoch` is the current view, or a recent one still inside its window (what the
    /// tests check; requests go through [`Views::judge`]).
    #[cfg(test)]
    fn knows(&self, epoch: Epoch, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|c| c.epoch() == epoch)
            || self.recent(epoch, now).is_some()
    }

    /// Remembers `placement` as recent until `until`, or until the later end it already had,
    /// newest first. Never longer: views passed from peer to peer do not keep each other alive.
    fn remember(&mut self, placement: Arc<Placement>, until: Instant, now: Instant) {
        let epoch = placement.epoch();
        if self.current.as_ref().is_some_and(|c| c.epoch() == epoch) {
            return;
        }
        let known = self
            .recent
            .iter()
            .find(|(p, _)| p.epoch() == epoch)
            .map(|(_, u)| *u);
        let until = known.map_or(until, |k| k.max(until));
        self.recent.retain(|(p, u)| p.epoch() != epoch && now < *u);
        if now < until {
            self.recent.insert(0, (placement, until));
        }
        while self.recent.len() > MAX_RECENT {
            let Some(first_to_end) = self
                .recent
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.recent.remove(first_to_end);
        }
    }
}

/// How long the membership rules wait. [`Timing::default`] holds every default, in this one
/// place; the server's configuration overrides each from its own variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often peers are probed: one round.
    pub probe_interval: Duration,
    /// How long a member must stay unreachable from here before a member peer's view that
    /// dropped it is followed (SWIM's suspicion, confirmed by this instance's own probes,
    /// which check it again every round meanwhile). [`Timing::suspicion_for`] gives its
    /// default for a probe interval: one timeout under load must not be enough.
    pub suspicion: Duration,
    /// How long the previous view stays acceptable after a change.
    pub transition_window: Duration,
    /// How long a member that vanished without leaving (a crash) keeps its place.
    pub down_timeout: Duration,
    /// The longest a leaving instance waits for every view to move on before it exits.
    pub drain_timeout: Duration,
    /// How long a leaving instance keeps serving after every view has moved on: for requests
    /// already routed, for Envoy's health check to drop it (1 s), and for the routing
    /// module's placement (fetched every 250 ms) to move on too.
    pub drain_grace: Duration,
    /// How long a new instance stays `joining` when members already exist: longer than the
    /// proxy's DNS refresh for owner names (1 s in envoy.yaml), so that when ids move to it
    /// the proxy already dials its current address, even under a name an earlier instance
    /// used (a StatefulSet reuses ordinals).
    pub join_settle: Duration,
}

impl Timing {
    /// How many of this instance's own probes of a member must fail, by default, before it
    /// follows a peer's removal of that member.
    pub const SUSPICION_PROBES: u32 = 8;

    /// The default suspicion for `probe_interval`: [`Timing::SUSPICION_PROBES`] rounds (2 s at
    /// the default 250 ms), so that it keeps its meaning when the probe interval is tuned.
    pub fn suspicion_for(probe_interval: Duration) -> Duration {
        probe_interval * Self::SUSPICION_PROBES
    }
}

impl Default for Timing {
    fn default() -> Self {
        let probe_interval = Duration::from_millis(250);
        Self {
            probe_interval,
            suspicion: Self::suspicion_for(probe_interval),
            transition_window: Duration::from_secs(5),
            down_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(7),
            drain_grace: Duration::from_millis(2500),
            join_settle: Duration::from_millis(2000),
        }
    }
}

/// The mutable part: views, own state, what peers said, when absent members were last seen.
#[derive(Debug)]
struct Inner {
    state: MemberState,
    views: Views,
    /// Members that are not observed as members right now, and since when.
    down_since: BTreeMap<u64, Instant>,
    changed_at: Option<Instant>,
    /// Where each instance was last found (DNS): what `/placement` publishes for the proxy to
    /// dial. Not part of the epoch: an address says where an owner is, not who owns what.
    addresses: BTreeMap<u64, SocketAddr>,
    /// Members this instance removed as down, with the version of their card it held then and
    /// when: what its card tells its peers, for `down_timeout` (by then each of them has
    /// removed it by its own clock anyway).
    removed: BTreeMap<u64, (u64, Instant)>,
}

/// One instance's membership: shared by the request handlers and the discovery loop.
#[derive(Debug)]
pub struct Membership {
    /// The rule (mode and naming) every view uses; its own member list is not used when
    /// membership is discovered.
    pub rule: Placement,
    pub timing: Timing,
    /// `REPLICAS`, when set alongside discovery: only compared, never used.
    pub expected_replicas: Option<u32>,
    inner: RwLock<Inner>,
}

/// The peers of one update, sorted by index, without this instance: looked up by binary
/// search rather than copied into a map (a thousand-member simulation does this every round).
struct Observed<'a> {
    peers: &'a [Peer],
    me: Option<u64>,
}

impl<'a> Observed<'a> {
    fn get(&self, index: &u64) -> Option<&'a Peer> {
        if Some(*index) == self.me {
            return None;
        }
        let peers = self.peers;
        peers
            .binary_search_by_key(index, |p| p.instance)
            .ok()
            .map(|i| &peers[i])
    }

    fn values(&self) -> impl Iterator<Item = &'a Peer> + '_ {
        self.peers.iter().filter(|p| Some(p.instance) != self.me)
    }
}

/// What one discovery round changed, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: Option<Epoch>,
    pub to: Option<Epoch>,
    pub members: Vec<u64>,
    pub removed_as_down: Vec<u64>,
}

impl Membership {
    /// A fixed member set (discovery off): the rule's own members, a member from the start.
    pub fn fixed(rule: Placement) -> Self {
        let views = Views {
            current: Some(Arc::new(rule.clone())),
            recent: Vec::new(),
        };
        Self::with(rule, Timing::default(), None, MemberState::Member, views)
    }

    /// Discovered membership: joining, with no view until the first round.
    pub fn discovered(rule: Placement, timing: Timing, expected_replicas: Option<u32>) -> Self {
        Self::with(
            rule,
            timing,
            expected_replicas,
            MemberState::Joining,
            Views::default(),
        )
    }

    fn with(
        rule: Placement,
        timing: Timing,
        expected_replicas: Option<u32>,
        state: MemberState,
        views: Views,
    ) -> Self {
        Self {
            rule,
            timing,
            expected_replicas,
            inner: RwLock::new(Inner {
                state,
                views,
                down_since: BTreeMap::new(),
                changed_at: None,
                addresses: BTreeMap::new(),
                removed: BTreeMap::new(),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> MemberState {
        self.read().state
    }

    pub fn set_state(&self, state: MemberState) {
        self.write().state = state;
    }

    pub fn views(&self) -> Views {
        self.read().views.clone()
    }

    /// [`Views::judge`] under the read lock, without copying the views (the `/join` path).
    pub fn judge(
        &self,
        me: u64,
        id: &ClientId,
        routed: Option<Epoch>,
        now: Instant,
    ) -> Result<(ServedUnder, Arc<Placement>), Refusal> {
        self.read().views.judge(me, id, routed, now)
    }

    /// The view with `epoch` if this instance holds it now or still accepts it, with how long
    /// it will accept it at least (a current view: a full window, since it has not changed
    /// yet). What a peer asks (`GET /peer/view`) for a join routed by a view it never held.
    pub fn held_view(&self, epoch: Epoch, now: Instant) -> Option<(Arc<Placement>, Duration)> {
        let inner = self.read();
        let views = &inner.views;
        if let Some(current) = views.current.as_ref().filter(|c| c.epoch() == epoch) {
            return Some((current.clone(), self.timing.transition_window));
        }
        views
            .recent
            .iter()
            .find(|(p, until)| p.epoch() == epoch && now < *until)
            .map(|(p, until)| (p.clone(), until.saturating_duration_since(now)))
    }

    /// Accepts the view a peer says it holds or just held (`members`, with `epoch`), for `left`
    /// at most and never longer than one transition window: what a lookup of a view this
    /// instance never held brings back ([`Membership::held_view`] on the peer). Only a view of
    /// this rule is taken: `epoch` must be what these members give. Returns whether joins
    /// routed by `epoch` are now judged under that view.
    pub fn learn_view(&self, epoch: Epoch, members: &[u64], left: Duration, now: Instant) -> bool {
        let mut inner = self.write();
        if inner
            .views
            .current
            .as_ref()
            .is_some_and(|c| c.epoch() == epoch)
        {
            return true;
        }
        let Ok(view) = self.rule.with_members(members.iter().copied()) else {
            return false;
        };
        if view.epoch() != epoch {
            return false;
        }
        let until = now + left.min(self.timing.transition_window);
        inner.views.remember(Arc::new(view), until, now);
        inner.views.recent(epoch, now).is_some()
    }

    /// The current view, if there is one.
    pub fn current(&self) -> Option<Arc<Placement>> {
        self.read().views.current.clone()
    }

    /// Whether `instance` is a member of the current view or of a recent one still inside its
    /// window: who may hand registrations to this instance.
    pub fn is_current_or_recent_member(&self, instance: u64, now: Instant) -> bool {
        let inner = self.read();
        let views = &inner.views;
        views
            .current
            .iter()
            .chain(
                views
                    .recent
                    .iter()
                    .filter(|(_, until)| now < *until)
                    .map(|(p, _)| p),
            )
            .any(|p| p.members().contains(&instance))
    }

    /// When the view may next change by itself, with nothing new observed: the first absent
    /// member's down timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let inner = self.read();
        inner
            .down_since
            .values()
            .min()
            .map(|since| *since + self.timing.down_timeout)
    }

    /// The members this instance removed as down within the last `down_timeout`, each with the
    /// version of its card held then: what its own card names.
    pub fn removals(&self, now: Instant) -> Vec<(u64, u64)> {
        let inner = self.read();
        inner
            .removed
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < self.timing.down_timeout)
            .map(|(i, (version, _))| (*i, *version))
            .collect()
    }

    /// Records where every instance was found this round, replacing the last round's: an
    /// instance that is no longer found has no address (its joins are refused, not guessed).
    pub fn set_addresses(&self, found: BTreeMap<u64, SocketAddr>) {
        self.write().addresses = found;
    }

    /// The address of each of `members` that was found.
    pub fn addresses_of(&self, members: &[u64]) -> BTreeMap<u64, SocketAddr> {
        let inner = self.read();
        members
            .iter()
            .filter_map(|m| inner.addresses.get(m).map(|a| (*m, *a)))
            .collect()
    }

    /// When the current view was adopted.
    pub fn changed_at(&self) -> Option<Instant> {
        self.read().changed_at
    }

    /// Whether a discovered `REPLICAS` disagrees with the member count.
    pub fn replicas_mismatch(&self) -> bool {
        match (self.expected_replicas, self.current()) {
            (Some(expected), Some(current)) => expected != current.replicas(),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Takes one round of observations and recomputes the view. `me` is this instance's index
    /// once known; `observed` holds every peer discovery found, keyed by index.
    pub fn update(&self, me: Option<u64>, observed: &[Peer], now: Instant) -> Option<Change> {
        let mut inner = self.write();
        let inner = &mut *inner;
        let sorted;
        let observed = if observed.is_sorted_by_key(|p| p.instance) {
            Observed {
                peers: observed,
                me,
            }
        } else {
            sorted = {
                let mut v = observed.to_vec();
                v.sort_by_key(|p| p.instance);
                v
            };
            Observed { peers: &sorted, me }
        };
        let (members, removed_as_down) = self.members_now(inner, me, &observed, now);

        let until = now + self.timing.transition_window;
        let from = inner.views.current.as_ref().map(|c| c.epoch());
        // The same members as now: the same view, not built again (most rounds).
        let same = inner
            .views
            .current
            .as_ref()
            .is_some_and(|c| c.members().iter().copied().eq(members.iter().copied()));
        let next = if same {
            None
        } else {
            self.rule.with_members(members.iter().copied()).ok()
        };
        let to = if same {
            from
        } else {
            next.as_ref().map(Placement::epoch)
        };
        let changed = from != to;
        if changed {
            let old = std::mem::replace(&mut inner.views.current, next.map(Arc::new));
            if let Some(old) = old {
                inner.views.remember(old, until, now);
            }
            inner.changed_at = Some(now);
        }
        self.remember_peer_views(inner, &observed, until, now);
        changed.then(|| Change {
            from,
            to,
            members: members.into_iter().collect(),
            removed_as_down,
        })
    }

    /// The members after this round, and those just removed as down: this instance while it is
    /// a member, every member peer, and each remembered member that is absent but not yet past
    /// the down timeout (unless it is leaving, or a member peer already dropped it).
    fn members_now(
        &self,
        inner: &mut Inner,
        me: Option<u64>,
        observed: &Observed<'_>,
        now: Instant,
    ) -> (BTreeSet<u64>, Vec<u64>) {
        let down_timeout = self.timing.down_timeout;
        inner
            .removed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < down_timeout);
        let mut remembered: BTreeSet<u64> = match &inner.views.current {
            Some(c) => c.members().iter().copied().collect(),
            // Each distinct view once: a thousand peers usually hold one or two.
            None => {
                let distinct: BTreeMap<Epoch, &Arc<Vec<u64>>> = observed
                    .values()
                    .filter(|p| p.state == Some(MemberState::Member))
                    .filter_map(|p| Some((p.epoch?, &p.members)))
                    .collect();
                distinct.values().flat_map(|m| m.iter().copied()).collect()
            }
        };
        remembered.extend(inner.down_since.keys().copied());
        // The removals member peers name: for each instance, the newest card of it removed.
        let mut removals: BTreeMap<u64, u64> = BTreeMap::new();
        for p in observed.values() {
            if p.state == Some(MemberState::Member) {
                for &(i, v) in p.removed.iter() {
                    let newest = removals.entry(i).or_insert(v);
                    *newest = (*newest).max(v);
                }
            }
        }

        let mut members = BTreeSet::new();
        if let (Some(me), MemberState::Member) = (me, inner.state) {
            members.insert(me);
        }
        let mut removed_as_down = Vec::new();
        for peer in observed.values() {
            let index = peer.instance;
            match peer.state {
                Some(MemberState::Member) => {
                    members.insert(index);
                    inner.down_since.remove(&index);
                    inner.removed.remove(&index);
                }
                Some(MemberState::Leaving) => {
                    inner.down_since.remove(&index);
                }
                _ => {}
            }
        }
        for index in remembered {
            if members.contains(&index) || Some(index) == me {
                continue;
            }
            if observed.get(&index).and_then(|p| p.state) == Some(MemberState::Leaving) {
                continue;
            }
            let since = *inner.down_since.entry(index).or_insert(now);
            // Removed as down by a member peer, for the card of it held here or a newer one,
            // after this instance's own probes have failed for a while (SWIM's suspicion,
            // confirmed here). A view that merely lacks it says nothing: its writer may not
            // have heard of it yet, as when a hundred instances start together.
            let its_card = observed.get(&index).map_or(0, |p| p.version);
            let suspected = now.duration_since(since) >= self.timing.suspicion;
            let removed_by_a_peer =
                suspected && removals.get(&index).is_some_and(|v| *v >= its_card);
            if now.duration_since(since) < self.timing.down_timeout && !removed_by_a_peer {
                members.insert(index);
            } else {
                inner.down_since.remove(&index);
                inner.removed.insert(index, (its_card, now));
                removed_as_down.push(index);
            }
        }
        (members, removed_as_down)
    }

    /// Views peers hold, or just held: joins routed by them are served here too. Leaving peers
    /// count: until Envoy's health check drops them, they still answer /where.
    fn remember_peer_views(
        &self,
        inner: &mut Inner,
        observed: &Observed<'_>,
        until: Instant,
        now: Instant,
    ) {
        // Each distinct view once, until the latest end any peer gives it: a view held by a
        // thousand peers is checked once, not a thousand times.
        let mut held: BTreeMap<Epoch, (&Arc<Vec<u64>>, Instant)> = BTreeMap::new();
        for peer in observed.values() {
            if !matches!(peer.state, Some(MemberState::Member | MemberState::Leaving)) {
                continue;
            }
            // A view a peer holds now is live for a full window; one it held before, for
            // what is left of that peer's window.
            let views = peer
                .epoch
                .map(|e| (e, &peer.members, until))
                .into_iter()
                .chain(
                    peer.previous
                        .as_ref()
                        .map(|(e, members, left)| (*e, members, now + *left)),
                );
            for (epoch, members, view_until) in views {
                let entry = held.entry(epoch).or_insert((members, view_until));
                entry.1 = entry.1.max(view_until);
            }
        }
        let current = inner.views.current.as_ref().map(|c| c.epoch());
        for (epoch, (members, view_until)) in held {
            if Some(epoch) == current
                || inner
                    .views
                    .recent
                    .iter()
                    .any(|(p, u)| p.epoch() == epoch && *u >= view_until)
            {
                continue;
            }
            // Only a view of this rule: its epoch must be what these members give.
            if let Ok(view) = self.rule.with_members(members.iter().copied()) {
                if view.epoch() == epoch {
                    inner.views.remember(Arc::new(view), view_until, now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poc_routing_placement::{IndexMode, Naming, PlacementSpec};

    fn rule() -> Placement {
        Placement::contiguous(PlacementSpec::new(IndexMode::Hash, Naming::compose()), 1).unwrap()
    }

    fn timing() -> Timing {
        Timing {
            down_timeout: Duration::from_secs(30),
            transition_window: Duration::from_secs(5),
            ..Timing::default()
        }
    }

    fn peer(instance: u64, state: Option<MemberState>, members: &[u64]) -> Peer {
        let epoch = (!members.is_empty()).then(|| {
            rule()
                .with_members(members.iter().copied())
                .unwrap()
                .epoch()
        });
        Peer {
            instance,
            version: 1,
            state,
            epoch,
            members: Arc::new(members.to_vec()),
            previous: None,
            removed: Arc::default(),
        }
    }

    fn members(m: &Membership) -> Vec<u64> {
        m.current()
            .map(|c| c.members().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn members_follow_states_and_a_crash_keeps_its_place_until_the_timeout() {
        let m = Membership::discovered(rule(), timing(), None);
        let t0 = Instant::now();
        // Joining: no view, even with member peers.
        let change = m.update(Some(3), &[peer(1, Some(MemberState::Member), &[1, 2])], t0);
        assert_eq!(change.unwrap().members, vec![1, 2]);
        m.set_state(MemberState::Member);
        let round = |t, peers: Vec<Peer>| m.update(Some(3), &peers, t);
        assert!(round(
            t0,
            vec![
                peer(1, Some(MemberState::Member), &[1, 2]),
                peer(2, Some(MemberState::Member), &[1, 2])
            ]
        )
        .is_some());
        assert_eq!(members(&m), [1, 2, 3]);

        // 2 crashes: unreachable, then gone from DNS. It keeps its place.
        let t1 = t0 + Duration::from_secs(1);
        assert!(round(
            t1,
            vec![
                peer(1, Some(MemberState::Member), &[1, 2, 3]),
                peer(2, None, &[])
            ]
        )
        .is_none());
        assert!(round(
            t1 + Duration::from_secs(10),
            vec![peer(1, Some(MemberState::Member), &[1, 2, 3])]
        )
        .is_none());
        assert_eq!(members(&m), [1, 2, 3]);
        // Back, joining first, then member: still the same view, no epoch change.
        assert!(round(
            t1 + Duration::from_secs(11),
            vec![
                peer(1, Some(MemberState::Member), &[1, 2, 3]),
                peer(2, Some(MemberState::Joining), &[])
            ]
        )
        .is_none());
        assert!(round(
            t1 + Duration::from_secs(12),
            vec![
                peer(1, Some(MemberState::Member), &[1, 2, 3]),
                peer(2, Some(MemberState::Member), &[1, 2, 3])
            ]
        )
        .is_none());

        // Gone for longer than the timeout: removed.
        let t2 = t1 + Duration::from_secs(20);
        assert!(round(t2, vec![peer(1, Some(MemberState::Member), &[1, 2, 3])]).is_none());
        let change = round(
            t2 + Duration::from_secs(31),
            vec![peer(1, Some(MemberState::Member), &[1, 2, 3])],
        )
        .unwrap();
        assert_eq!(change.members, vec![1, 3]);
        assert_eq!(change.removed_as_down, vec![2]);
    }

    #[test]
    fn a_leaving_peer_leaves_at_once_and_a_dropped_member_follows_the_peers() {
        let m = Membership::discovered(rule(), timing(), Some(3));
        m.set_state(MemberState::Member);
        let t0 = Instant::now();
        let all = [1, 2, 3];
        m.update(
            Some(1),
            &[
                peer(2, Some(MemberState::Member), &all),
                peer(3, Some(MemberState::Member), &all),
            ],
            t0,
        );
        assert_eq!(members(&m), all);
        assert!(!m.replicas_mismatch());
        let change = m
            .update(
                Some(1),
                &[
                    peer(2, Some(MemberState::Member), &[1, 2]),
                    peer(3, Some(MemberState::Leaving), &[1, 2]),
                ],
                t0,
            )
            .unwrap();
        assert_eq!(change.members, vec![1, 2]);
        assert!(change.removed_as_down.is_empty());
        assert!(
            m.replicas_mismatch(),
            "REPLICAS=3 with 2 members is reported"
        );

        // 4 was a member, vanished, and a member peer already removed it as down: remove it
        // here too.
        m.update(
            Some(1),
            &[
                peer(2, Some(MemberState::Member), &[1, 2, 4]),
                peer(4, Some(MemberState::Member), &[1, 2, 4]),
            ],
            t0,
        );
        assert_eq!(members(&m), [1, 2, 4]);
        let mut two = peer(2, Some(MemberState::Member), &[1, 2]);
        // A view without 4 and no removal: 2 may not have heard of 4. Nothing follows, however
        // long this instance's own probes fail (short of the down timeout).
        assert_eq!(m.update(Some(1), &[two.clone()], t0), None);
        assert_eq!(
            m.update(Some(1), &[two.clone()], t0 + timing().suspicion),
            None
        );
        two.removed = Arc::new(vec![(4, 1)]);
        let dropped = [two];
        // Not at once: first this instance's own probes must fail for the suspicion time (they
        // have since the round above).
        let change = m
            .update(Some(1), &dropped, t0 + timing().suspicion)
            .unwrap();
        assert_eq!(change.members, vec![1, 2]);
        assert_eq!(change.removed_as_down, vec![4]);
        // This instance's card names the removal now, with the version of 4's card held here
        // (none: DNS no longer names 4), for the down timeout.
        assert_eq!(m.removals(t0 + timing().suspicion), [(4, 0)]);
        assert!(m
            .removals(t0 + timing().suspicion + timing().down_timeout)
            .is_empty());
    }

    #[test]
    fn judge_serves_the_current_and_the_previous_view_inside_the_window() {
        let m = Membership::discovered(rule(), timing(), None);
        m.set_state(MemberState::Member);
        let t0 = Instant::now();
        m.update(Some(1), &[peer(2, Some(MemberState::Member), &[1, 2])], t0);
        let old = m.current().unwrap();
        m.update(
            Some(1),
            &[
                peer(2, Some(MemberState::Member), &[1, 2, 3]),
                peer(3, Some(MemberState::Member), &[1, 2, 3]),
            ],
            t0,
        );
        let new = m.current().unwrap();
        let views = m.views();
        // An id that 1 owned before and 1 does not own now, and one it owns now.
        let ids: Vec<ClientId> = (0..200)
            .map(|i| ClientId::try_from(format!("id-{i}").as_str()).unwrap())
            .collect();
        let moved = ids
            .iter()
            .find(|id| old.index(id) == Ok(1) && new.index(id) != Ok(1))
            .unwrap();
        let owned = ids.iter().find(|id| new.index(id) == Ok(1)).unwrap();
        let soon = t0 + Duration::from_secs(1);
        let late = t0 + Duration::from_secs(6);

        assert_eq!(
            views.judge(1, owned, Some(new.epoch()), soon).unwrap().0,
            ServedUnder::Current
        );
        assert_eq!(
            views.judge(1, owned, None, late).unwrap().0,
            ServedUnder::Current
        );
        assert_eq!(
            views.judge(1, moved, Some(old.epoch()), soon).unwrap().0,
            ServedUnder::Previous
        );
        let new_owner = new.index(moved).unwrap();
        assert_eq!(
            views.judge(1, moved, Some(old.epoch()), late),
            Err(Refusal::UnknownEpoch { owner: new_owner })
        );
        assert_eq!(
            views.judge(1, moved, Some(new.epoch()), soon),
            Err(Refusal::NotOwner { owner: new_owner })
        );
        // An unknown epoch: served by the current owner, refused by any other instance.
        assert_eq!(
            views.judge(1, owned, Some(Epoch(42)), soon).unwrap().0,
            ServedUnder::Current
        );
        assert_eq!(
            views.judge(1, moved, Some(Epoch(42)), soon),
            Err(Refusal::UnknownEpoch { owner: new_owner })
        );
        assert!(views.knows(old.epoch(), soon) && !views.knows(old.epoch(), late));
        assert_eq!(
            Views::default().judge(1, owned, None, soon),
            Err(Refusal::NoView)
        );
    }

    #[test]
    fn a_view_only_peers_held_is_accepted_inside_the_window() {
        // This instance went from {1,2} straight to {1,2,3,4}; a peer held {1,2,3} between.
        let m = Membership::discovered(rule(), timing(), None);
        m.set_state(MemberState::Member);
        let t0 = Instant::now();
        m.update(Some(1), &[peer(2, Some(MemberState::Member), &[1, 2])], t0);
        let between = rule().with_members([1, 2, 3]).unwrap();
        let mut reporting = peer(2, Some(MemberState::Member), &[1, 2, 3, 4]);
        reporting.previous = Some((
            between.epoch(),
            Arc::new(vec![1, 2, 3]),
            Duration::from_secs(5),
        ));
        // A forged previous (an epoch those members do not give) is ignored.
        let mut forged = peer(3, Some(MemberState::Member), &[1, 2, 3, 4]);
        forged.previous = Some((Epoch(7), Arc::new(vec![1]), Duration::from_secs(5)));
        m.update(
            Some(1),
            &[
                reporting,
                forged,
                peer(4, Some(MemberState::Member), &[1, 2, 3, 4]),
            ],
            t0,
        );
        let views = m.views();
        assert_eq!(m.current().unwrap().members(), [1, 2, 3, 4]);
        assert!(views.knows(between.epoch(), t0));
        assert!(!views.knows(Epoch(7), t0));
        assert!(!views.knows(between.epoch(), t0 + Duration::from_secs(6)));
        let id = (0..500)
            .map(|i| ClientId::try_from(format!("id-{i}").as_str()).unwrap())
            .find(|id| between.index(id) == Ok(1))
            .unwrap();
        assert_eq!(
            views.judge(1, &id, Some(between.epoch()), t0).unwrap().0,
            ServedUnder::Previous
        );
    }

    #[test]
    fn a_previous_view_passed_between_peers_still_ends_with_its_window() {
        let m = Membership::discovered(rule(), timing(), None);
        m.set_state(MemberState::Member);
        let t0 = Instant::now();
        let old = rule().with_members([1, 2, 3]).unwrap();
        // The peer's window for {1,2,3} has 1 s left; hearing it again and again adds nothing.
        for step in 0..5 {
            let mut p = peer(2, Some(MemberState::Member), &[1, 2]);
            p.previous = Some((
                old.epoch(),
                Arc::new(vec![1, 2, 3]),
                Duration::from_millis(1000 - step * 200),
            ));
            m.update(Some(1), &[p], t0 + Duration::from_millis(step * 200));
        }
        assert!(m
            .views()
            .knows(old.epoch(), t0 + Duration::from_millis(900)));
        assert!(!m
            .views()
            .knows(old.epoch(), t0 + Duration::from_millis(1100)));
    }

    /// A view only a peer held (several instances left at once): a join routed by it is
    /// refused until the view is looked up, then served by its owner under it, for the
    /// peer's window at most; a view whose members do not give its epoch is not taken.
    #[test]
    fn a_view_looked_up_from_a_peer_is_served_for_its_window_only() {
        let m = Membership::discovered(rule(), timing(), None);
        m.set_state(MemberState::Member);
        let t0 = Instant::now();
        let two = peer(2, Some(MemberState::Member), &[1, 2]);
        m.update(Some(1), &[two], t0);
        let held = rule().with_members([1, 2, 4]).unwrap();
        let id = (0..)
            .map(|i| ClientId::try_from(format!("id-{i}").as_str()).unwrap())
            .find(|id| held.index(id).unwrap() == 4)
            .unwrap();
        let routed = Some(held.epoch());
        let cases: [(&str, Epoch, &[u64], bool); 4] = [
            ("other members", held.epoch(), &[1, 2, 3], false),
            ("no members", held.epoch(), &[], false),
            ("another epoch", Epoch(7), &[1, 2, 4], false),
            ("the view", held.epoch(), &[4, 2, 1], true),
        ];
        for (what, epoch, members, taken) in cases {
            assert_eq!(
                m.learn_view(epoch, members, Duration::from_secs(60), t0),
                taken,
                "{what}"
            );
        }
        // Served by 4 under the view it was routed by; never by 1, which does not own it there.
        assert_eq!(
            m.judge(4, &id, routed, t0).map(|(under, _)| under),
            Ok(ServedUnder::Previous)
        );
        assert!(m.judge(1, &id, routed, t0).is_err());
        // Held for one window at most, however long the peer says.
        assert!(m
            .judge(4, &id, routed, t0 + Duration::from_millis(4900))
            .is_ok());
        assert!(m
            .judge(4, &id, routed, t0 + Duration::from_millis(5000))
            .is_err());
        // And for no longer than the peer's own window has left.
        let short = rule().with_members([1, 2, 5]).unwrap();
        let id5 = (0..)
            .map(|i| ClientId::try_from(format!("id-{i}").as_str()).unwrap())
            .find(|id| short.index(id).unwrap() == 5)
            .unwrap();
        let routed5 = Some(short.epoch());
        assert!(m.learn_view(short.epoch(), &[1, 2, 5], Duration::from_secs(1), t0));
        assert!(m
            .judge(5, &id5, routed5, t0 + Duration::from_millis(900))
            .is_ok());
        assert!(m
            .judge(5, &id5, routed5, t0 + Duration::from_secs(1))
            .is_err());
        // What this instance answers a peer: its current view for a full window, a recent
        // one for what is left of it, and nothing for a view it does not hold.
        let current = m.current().unwrap();
        assert_eq!(
            m.held_view(current.epoch(), t0)
                .map(|(p, left)| (p.epoch(), left)),
            Some((current.epoch(), timing().transition_window))
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            m.held_view(held.epoch(), later)
                .map(|(p, left)| (p.epoch(), left)),
            Some((held.epoch(), Duration::from_secs(4)))
        );
        assert!(m.held_view(Epoch(7), t0).is_none());
    }

    #[test]
    fn a_removal_is_followed_only_for_the_card_its_remover_held() {
        use MemberState::Member;
        let m = Membership::discovered(rule(), timing(), None);
        m.set_state(Member);
        let t0 = Instant::now();
        let mut three = peer(3, Some(Member), &[1, 2, 3]);
        three.version = 10;
        let two = peer(2, Some(Member), &[1, 2, 3]);
        m.update(Some(1), &[two.clone(), three.clone()], t0);
        assert_eq!(members(&m), [1, 2, 3]);
        let mut unreachable = three;
        unreachable.state = None;
        m.update(Some(1), &[two.clone(), unreachable.clone()], t0);
        let later = t0 + timing().suspicion;
        // 2 removed 3 for an older card of it (version 5): 3 has spoken since. Not followed.
        let mut stale = two.clone();
        stale.members = Arc::new(vec![1, 2]);
        stale.removed = Arc::new(vec![(3, 5)]);
        assert_eq!(
            m.update(Some(1), &[stale, unreachable.clone()], later),
            None
        );
        assert_eq!(members(&m), [1, 2, 3]);
        // For the card held here: followed, since this instance's own probes fail too.
        let mut removed = two;
        removed.members = Arc::new(vec![1, 2]);
        removed.removed = Arc::new(vec![(3, 10)]);
        let change = m.update(Some(1), &[removed, unreachable], later).unwrap();
        assert_eq!(change.members, [1, 2]);
        assert_eq!(change.removed_as_down, [3]);
    }
}
