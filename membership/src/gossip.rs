//! What each instance knows of the others, kept in step at a cost per instance that does not
//! grow with the number of instances. Pure state, no I/O: [`crate::node`] decides what is sent
//! and taken, its driver carries the messages, and a test (or a simulation) can use any clock.
//!
//! Learnt from SWIM (memberlist, Serf), Ringpop and Orleans, and fitted to what this project
//! already has (DNS names every deployed instance; each instance decides its own view):
//!
//! - **One card per instance**, written only by that instance: its state, the epoch it holds
//!   and its previous one, under a `version` that rises with every change (and across
//!   restarts). A card with a higher version replaces an older one wherever it arrives,
//!   directly or relayed, so cards spread by gossip and never go back.
//! - **One probe per round** (Ringpop's checksums): `GET /peer/digest` of one peer, taken in a
//!   shuffled round-robin over the instances DNS names (SWIM's probe order, so every peer is
//!   probed by each instance once every N rounds, and by someone about once a round). When
//!   the digests agree, nothing more is sent; when they differ, both sides swap their cards
//!   (`POST /peer/sync`). Idle, that is one small request per instance per round, whatever N.
//! - **Push on change**: a changed state (joining → member, member → leaving) is pushed to every
//!   instance at once, since each view depends on it; a changed epoch only to a few, from where
//!   the sync rounds carry it (O(log N) rounds).
//! - **Failure is checked, not inferred from silence**: a failed probe marks the peer
//!   unreachable *here*, and it is probed again in the next rounds; one timeout under load
//!   removes nobody. A member is removed as down only after `down_timeout` of failed probes
//!   (membership's rule), or when a member peer's view has dropped it *and* a direct probe from
//!   here fails too (SWIM's suspicion, confirmed by this instance's own probe).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poc_routing_placement::Epoch;
use poc_routing_wire::{MemberState, PeerCard, PeerRemoval, PeerTable, PeerViewMembers};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::membership::Peer;

/// The most extra probes (checks of unreachable peers, verifications) one round makes besides
/// its regular one: a bound on what a burst of failures costs each instance.
pub const MAX_EXTRA_PROBES: usize = 3;

/// How many peers an epoch change is pushed to.
pub const EPOCH_FANOUT: usize = 3;

/// How far ahead of this instance's wall clock a card's version (or a removal's) may be.
/// Versions are wall-clock microseconds; a card further ahead is refused (and counted), so
/// that no card can be written that its own instance could never outbid.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The most instances removed as down one card may name.
pub const MAX_REMOVALS: usize = 1024;

/// What the wire cards of a sync or a push held that was refused or cut, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// A card whose version is more than [`MAX_CLOCK_SKEW`] ahead (the card is skipped).
    pub future_version: u32,
    /// A previous view's window longer than the transition window (cut to it).
    pub long_window: u32,
    /// A view whose member list is unsorted, repeats a member, or is too long (skipped).
    pub bad_view: u32,
    /// Removals ahead of the clock or past [`MAX_REMOVALS`] (dropped from the card).
    pub bad_removal: u32,
}

impl Refused {
    /// Each reason with its count, for the metrics.
    pub fn counts(&self) -> [(&'static str, u32); 4] {
        [
            ("future_version", self.future_version),
            ("long_window", self.long_window),
            ("bad_view", self.bad_view),
            ("bad_removal", self.bad_removal),
        ]
    }
}

/// One instance's card, as held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub instance: u64,
    pub version: u64,
    pub state: MemberState,
    pub epoch: Option<Epoch>,
    pub members: Arc<Vec<u64>>,
    pub previous: Option<(Epoch, Arc<Vec<u64>>)>,
    /// What was left of the previous view's window when the card was written.
    pub previous_left: Duration,
    /// Members its writer removed as down lately, with the version of their card it held then.
    pub removed: Arc<Vec<(u64, u64)>>,
}

#[derive(Debug, Clone)]
struct Entry {
    card: Arc<Card>,
    /// When this version first arrived here: the previous view's window counts from it.
    received: Instant,
}

/// What changed in this instance's own card, which decides whom it is pushed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnChange {
    None,
    /// Only the epoch (or previous epoch): a few peers, gossip carries it on.
    Epoch,
    /// The state: every peer, at once.
    State,
}

/// What a peer's cards brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct News {
    /// A newer card of some instance.
    pub cards: bool,
    /// An instance's state changed, or one was heard of for the first time: every view
    /// depends on it, so it is worth computing the view at once. A new epoch alone only adds
    /// a view to accept, and waits for the next round.
    pub states: bool,
    /// A card about this instance newer than its own arrived (forged, or from its previous
    /// life): it writes its card again, above it, and pushes it to every peer (SWIM's
    /// refutation).
    pub refute: bool,
    /// What was refused or cut.
    pub refused: Refused,
}

/// What a probe of a peer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An answer: its digest (and its cards, if a swap was due).
    Answered,
    /// Nothing usable in time: it may be down, slow or starting.
    Unanswered,
    /// Something that is not an instance of this cluster: it refused the cluster's
    /// credential, or offered one the cluster does not accept. It is never waited for.
    NotOurs,
}

/// This instance's gossip state.
#[derive(Debug, Default)]
pub struct Gossip {
    cards: BTreeMap<u64, Entry>,
    /// The digest of `cards`, kept as they change: a probe answers it without a pass over them.
    digest: u64,
    /// The instances DNS named in the last round; cards of others are not taken (and dropped).
    /// Shared: a simulation's thousands of nodes hold one set.
    candidates: Arc<BTreeSet<u64>>,
    /// Peers whose last probe from here failed, and since when (cleared by an answer, or by a
    /// newer card of theirs: only the instance itself writes its card, so it is alive).
    unreachable: BTreeMap<u64, Instant>,
    /// Peers DNS names whose last answer was not one of ours ([`Probe::NotOurs`]), until one
    /// answers or DNS stops naming it.
    strangers: BTreeSet<u64>,
    /// Peers to probe in the next rounds, to confirm what a peer's view says of them.
    to_verify: VecDeque<u64>,
    verified_at: HashMap<u64, Instant>,
    /// The round-robin probe order, and where it has got to.
    order: Vec<u64>,
    cursor: usize,
    last_version: u64,
    /// A newer card about this instance was seen: the next write is a refutation.
    refuting: bool,
    /// The longest previous-view window a card may announce (the transition window).
    max_window: Option<Duration>,
}

/// The digest of a set of cards: equal sets give equal digests, whatever order they arrived in.
fn mix(instance: u64, version: u64) -> u64 {
    // splitmix64 of both, so that nearby versions and indexes spread over all bits.
    let mut z = instance
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(version);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Gossip {
    /// The digest of every card held, own card included.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Holds `card` in place of any older one, keeping the digest.
    fn insert(&mut self, card: Arc<Card>, now: Instant) {
        self.digest ^= mix(card.instance, card.version);
        let entry = Entry {
            card,
            received: now,
        };
        if let Some(old) = self.cards.insert(entry.card.instance, entry) {
            self.digest ^= mix(old.card.instance, old.card.version);
        }
    }

    /// The digest as sent on the wire: 16 hex digits.
    pub fn digest_hex(&self) -> String {
        format!("{:016x}", self.digest())
    }

    /// Takes the instances DNS names now: cards and checks of instances it no longer names are
    /// dropped (a removed instance's card does not linger), and the probe order follows.
    /// Returns whether they changed.
    pub fn set_candidates(&mut self, me: Option<u64>, found: Arc<BTreeSet<u64>>) -> bool {
        if Arc::ptr_eq(&found, &self.candidates) || found == self.candidates {
            return false;
        }
        let gone: Vec<u64> = self
            .cards
            .keys()
            .copied()
            .filter(|i| !found.contains(i) && Some(*i) != me)
            .collect();
        for i in gone {
            if let Some(old) = self.cards.remove(&i) {
                self.digest ^= mix(old.card.instance, old.card.version);
            }
        }
        self.unreachable.retain(|i, _| found.contains(i));
        self.strangers.retain(|i| found.contains(i));
        self.to_verify.retain(|i| found.contains(i));
        self.verified_at.retain(|i, _| found.contains(i));
        self.candidates = found;
        self.order.clear();
        self.cursor = 0;
        true
    }

    pub fn candidates(&self) -> &BTreeSet<u64> {
        &self.candidates
    }

    /// The longest previous-view window a peer's card may announce; longer ones are cut to it.
    pub fn set_max_window(&mut self, window: Duration) {
        self.max_window = Some(window);
    }

    /// A card about `me` arrived: one newer than its own card (or, with the same version,
    /// different from it) is refuted at the next write, above its version. One of its own
    /// previous life (a restart whose clock is behind) is outbid the same way, so it rejoins.
    fn about_me(
        &mut self,
        me: u64,
        news: &mut News,
        version: u64,
        same: impl FnOnce(&Card) -> bool,
    ) {
        let newer = match self.cards.get(&me) {
            Some(own) => {
                version > own.card.version || (version == own.card.version && !same(&own.card))
            }
            None => version > self.last_version,
        };
        if newer {
            self.last_version = self.last_version.max(version);
            self.refuting = true;
            news.refute = true;
        }
    }

    /// Writes this instance's own card from what its membership holds now. The version rises
    /// only when the state, the epochs or the removals change, never with time: an idle
    /// cluster's digests stay equal. `wall_us` is the wall clock in microseconds (a restart
    /// starts above the versions its earlier life wrote).
    #[allow(clippy::too_many_arguments)]
    pub fn set_own(
        &mut self,
        me: u64,
        state: MemberState,
        current: Option<(Epoch, &[u64])>,
        previous: Option<(Epoch, &[u64], Duration)>,
        removed: &[(u64, u64)],
        wall_us: u64,
        now: Instant,
    ) -> OwnChange {
        let old = self.cards.get(&me).map(|e| e.card.clone());
        let epoch = current.map(|(e, _)| e);
        let change = match &old {
            None => OwnChange::State,
            Some(c) if c.state != state => OwnChange::State,
            // The previous view changes only with the epoch; its window's end is not news:
            // every holder ends it by itself. Nor is a removal that has aged out: it goes at
            // the next write.
            Some(c) if c.epoch != epoch || removed.iter().any(|r| !c.removed.contains(r)) => {
                OwnChange::Epoch
            }
            // A refutation goes to every peer, as a state change does: they hold a false one.
            Some(_) if self.refuting => OwnChange::State,
            Some(_) => return OwnChange::None,
        };
        self.refuting = false;
        self.last_version = (self.last_version + 1).max(wall_us);
        let card = Card {
            instance: me,
            version: self.last_version,
            state,
            epoch,
            members: Arc::new(current.map(|(_, m)| m.to_vec()).unwrap_or_default()),
            previous: previous.map(|(e, m, _)| (e, Arc::new(m.to_vec()))),
            previous_left: previous.map_or(Duration::ZERO, |(_, _, left)| left),
            removed: Arc::new(removed.to_vec()),
        };
        self.insert(Arc::new(card), now);
        change
    }

    /// Takes the cards of `table` that are newer than those held, within bounds: a version
    /// (or a removal) more than [`MAX_CLOCK_SKEW`] ahead of `wall_us` is refused, a previous
    /// view's window is cut to the transition window, a view whose member list is not a sorted
    /// set of at most `MAX_MEMBERS` is refused with its cards. A card about `me` is never
    /// taken: a newer one is refuted ([`News::refute`]).
    pub fn merge(
        &mut self,
        me: Option<u64>,
        table: &PeerTable,
        now: Instant,
        wall_us: u64,
    ) -> News {
        let mut news = News::default();
        let horizon = wall_us.saturating_add(MAX_CLOCK_SKEW.as_micros() as u64);
        let views: HashMap<&str, &Vec<u64>> = table
            .views
            .iter()
            .filter(|v| {
                let ok = v.members.len() <= poc_routing_placement::MAX_MEMBERS
                    && v.members.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    news.refused.bad_view += 1;
                }
                ok
            })
            .map(|v| (v.epoch.as_str(), &v.members))
            .collect();
        // Member lists are shared: a view a held card already names is not allocated again.
        let shared =
            |cards: &BTreeMap<u64, Entry>, me: Option<u64>, instance: u64, epoch: Epoch| {
                let named = |c: &Card| -> Option<Arc<Vec<u64>>> {
                    if c.epoch == Some(epoch) {
                        return Some(c.members.clone());
                    }
                    c.previous
                        .as_ref()
                        .filter(|(e, _)| *e == epoch)
                        .map(|(_, m)| m.clone())
                };
                let likely = [me, Some(instance)];
                likely
                    .iter()
                    .flatten()
                    .filter_map(|i| cards.get(i))
                    .find_map(|e| named(&e.card))
                    .or_else(|| cards.values().find_map(|e| named(&e.card)))
            };
        let members_of = |cards: &BTreeMap<u64, Entry>,
                          instance: u64,
                          epoch: &Option<String>|
         -> Option<(Epoch, Arc<Vec<u64>>)> {
            let text = epoch.as_deref()?;
            let epoch = text.parse::<Epoch>().ok()?;
            let listed = views.get(text)?;
            let members = shared(cards, me, instance, epoch)
                .filter(|m| m.as_slice() == listed.as_slice())
                .unwrap_or_else(|| Arc::new((*listed).clone()));
            Some((epoch, members))
        };
        for wire in &table.cards {
            if wire.version > horizon {
                news.refused.future_version += 1;
                continue;
            }
            if let Some(me) = me.filter(|m| *m == wire.instance) {
                self.about_me(me, &mut news, wire.version, |own| {
                    own.state == wire.state
                        && own.epoch.map(|e| e.to_string()) == wire.epoch
                        && own.previous.as_ref().map(|(e, _)| e.to_string()) == wire.previous
                });
                continue;
            }
            if !self.candidates.contains(&wire.instance) {
                continue;
            }
            if self
                .cards
                .get(&wire.instance)
                .is_some_and(|e| e.card.version >= wire.version)
            {
                continue;
            }
            // A card naming a view without its members is not taken whole: skip it, a
            // later sync brings it complete.
            let current = members_of(&self.cards, wire.instance, &wire.epoch);
            let previous = members_of(&self.cards, wire.instance, &wire.previous);
            if current.is_none() != wire.epoch.is_none()
                || previous.is_none() != wire.previous.is_none()
            {
                continue;
            }
            let (epoch, members) = current.map_or((None, Arc::default()), |(e, m)| (Some(e), m));
            let mut previous_left = Duration::from_millis(wire.previous_left_ms);
            if let Some(max) = self.max_window.filter(|max| previous_left > *max) {
                news.refused.long_window += 1;
                previous_left = max;
            }
            let removed: Vec<(u64, u64)> = wire
                .removed
                .iter()
                .filter(|r| r.version <= horizon)
                .take(MAX_REMOVALS)
                .map(|r| (r.instance, r.version))
                .collect();
            news.refused.bad_removal += (wire.removed.len() - removed.len()) as u32;
            let card = Card {
                instance: wire.instance,
                version: wire.version,
                state: wire.state,
                epoch,
                members,
                previous,
                previous_left,
                removed: Arc::new(removed),
            };
            self.unreachable.remove(&wire.instance);
            self.note(&mut news, &card);
            self.insert(Arc::new(card), now);
        }
        news
    }

    /// Takes the cards of another node held in memory (the simulation's sync and push): the
    /// same rule as [`Gossip::merge`], without the wire format.
    pub fn merge_cards(&mut self, me: Option<u64>, cards: &[Arc<Card>], now: Instant) -> News {
        let mut news = News::default();
        for card in cards {
            if let Some(me) = me.filter(|m| *m == card.instance) {
                self.about_me(me, &mut news, card.version, |own| own == &**card);
                continue;
            }
            if !self.candidates.contains(&card.instance)
                || self
                    .cards
                    .get(&card.instance)
                    .is_some_and(|e| e.card.version >= card.version)
            {
                continue;
            }
            self.unreachable.remove(&card.instance);
            self.note(&mut news, card);
            self.insert(card.clone(), now);
        }
        news
    }

    /// Adds what taking `card` brings to `news`.
    fn note(&self, news: &mut News, card: &Card) {
        news.cards = true;
        news.states |= self.cards.get(&card.instance).map(|e| e.card.state) != Some(card.state);
    }

    /// Every card held (`only`: just this instance's).
    pub fn cards(&self, only: Option<u64>) -> Vec<Arc<Card>> {
        match only {
            Some(i) => self
                .cards
                .get(&i)
                .map(|e| e.card.clone())
                .into_iter()
                .collect(),
            None => self.cards.values().map(|e| e.card.clone()).collect(),
        }
    }

    /// Every card held, as sent on the wire (`only`: just these instances' cards).
    pub fn table(&self, me: Option<u64>, only: Option<u64>, now: Instant) -> PeerTable {
        let mut views: BTreeMap<Epoch, &Arc<Vec<u64>>> = BTreeMap::new();
        let mut cards = Vec::new();
        for entry in self.cards.values() {
            let c = &entry.card;
            if only.is_some_and(|o| o != c.instance) {
                continue;
            }
            if let Some(e) = c.epoch {
                views.insert(e, &c.members);
            }
            if let Some((e, m)) = &c.previous {
                views.insert(*e, m);
            }
            let age = now.saturating_duration_since(entry.received);
            cards.push(PeerCard {
                instance: c.instance,
                version: c.version,
                state: c.state,
                epoch: c.epoch.map(|e| e.to_string()),
                previous: c.previous.as_ref().map(|(e, _)| e.to_string()),
                previous_left_ms: c.previous_left.saturating_sub(age).as_millis() as u64,
                removed: c
                    .removed
                    .iter()
                    .map(|&(instance, version)| PeerRemoval { instance, version })
                    .collect(),
            });
        }
        PeerTable {
            from: me,
            cards,
            views: views
                .into_iter()
                .map(|(epoch, members)| PeerViewMembers {
                    epoch: epoch.to_string(),
                    members: members.to_vec(),
                })
                .collect(),
        }
    }

    /// What membership takes from this round: every instance DNS names but this one, with its
    /// card, or with no state when it has none yet or is unreachable from here.
    pub fn observed(&self, me: Option<u64>, now: Instant) -> Vec<Peer> {
        self.candidates
            .iter()
            .filter(|i| Some(**i) != me)
            .map(|&instance| match self.cards.get(&instance) {
                Some(entry) => {
                    let c = &entry.card;
                    let age = now.saturating_duration_since(entry.received);
                    Peer {
                        instance,
                        version: c.version,
                        state: (!self.unreachable.contains_key(&instance)).then_some(c.state),
                        epoch: c.epoch,
                        members: c.members.clone(),
                        previous: c
                            .previous
                            .as_ref()
                            .map(|(e, m)| (*e, m.clone(), c.previous_left.saturating_sub(age))),
                        removed: c.removed.clone(),
                    }
                }
                None => Peer {
                    instance,
                    version: 0,
                    state: None,
                    epoch: None,
                    members: Arc::default(),
                    previous: None,
                    removed: Arc::default(),
                },
            })
            .collect()
    }

    /// Whether a card of every other instance DNS names is held and none is unreachable: what
    /// a joining instance needs before it may conclude that there are no members yet.
    ///
    /// A peer that proved not ours ([`Probe::NotOurs`]) is not waited for, so a stranger in
    /// DNS cannot hold up a cold start, provided at least one peer that is ours was heard:
    /// an instance that hears only strangers cannot tell which side is the cluster, so it
    /// waits. A lone stranger therefore never forms a view of its own either.
    pub fn heard_from_all(&self, me: Option<u64>) -> bool {
        let mut ours = 0;
        for i in self.candidates.iter().filter(|i| Some(**i) != me) {
            if self.strangers.contains(i) {
                continue;
            }
            if !self.cards.contains_key(i) || self.unreachable.contains_key(i) {
                return false;
            }
            ours += 1;
        }
        ours > 0 || self.strangers.is_empty()
    }

    /// The peers to probe this round: up to [`MAX_EXTRA_PROBES`] to verify or to check again
    /// (unreachable ones, longest first), then the next one in the shuffled round-robin order.
    pub fn probe_targets(&mut self, me: Option<u64>, rng: &mut impl Rng) -> Vec<u64> {
        let mut targets = Vec::new();
        while targets.len() < MAX_EXTRA_PROBES {
            let Some(i) = self.to_verify.pop_front() else {
                break;
            };
            if !targets.contains(&i) {
                targets.push(i);
            }
        }
        let mut unreachable: Vec<(Instant, u64)> =
            self.unreachable.iter().map(|(i, t)| (*t, *i)).collect();
        unreachable.sort();
        for (_, i) in unreachable {
            if targets.len() >= MAX_EXTRA_PROBES {
                break;
            }
            if !targets.contains(&i) {
                targets.push(i);
            }
        }
        let peers: Vec<u64> = self
            .candidates
            .iter()
            .copied()
            .filter(|i| Some(*i) != me)
            .collect();
        if !peers.is_empty() {
            if self.cursor >= self.order.len() {
                self.order = peers;
                self.order.shuffle(rng);
                self.cursor = 0;
            }
            let next = self.order[self.cursor];
            self.cursor += 1;
            if !targets.contains(&next) {
                targets.push(next);
            }
        }
        targets
    }

    /// Records the outcome of a probe of `instance`; returns whether that changed whether it
    /// is unreachable, or a stranger, from here.
    pub fn probed(&mut self, instance: u64, probe: Probe, now: Instant) -> bool {
        if probe == Probe::Answered {
            let was_stranger = self.strangers.remove(&instance);
            return self.unreachable.remove(&instance).is_some() || was_stranger;
        }
        if !self.candidates.contains(&instance) {
            return false;
        }
        let new_stranger = probe == Probe::NotOurs && self.strangers.insert(instance);
        let newly_unreachable = !self.unreachable.contains_key(&instance);
        if newly_unreachable {
            self.unreachable.insert(instance, now);
        }
        newly_unreachable || new_stranger
    }

    /// The version of `instance`'s card held here (0: none).
    pub fn version_of(&self, instance: u64) -> u64 {
        self.cards.get(&instance).map_or(0, |e| e.card.version)
    }

    /// Whether `instance` is unreachable from here.
    pub fn is_unreachable(&self, instance: u64) -> bool {
        self.unreachable.contains_key(&instance)
    }

    /// Queues a direct probe of each member of `mine` (this instance's view) that a member
    /// peer removed as down, for the card of it held here or a newer one: this instance checks
    /// for itself before it follows (at most once per `every` per instance).
    pub fn queue_verifications(
        &mut self,
        me: Option<u64>,
        mine: &[u64],
        every: Duration,
        now: Instant,
    ) {
        let mut suspects = BTreeSet::new();
        for entry in self.cards.values() {
            let c = &entry.card;
            if Some(c.instance) == me
                || c.state != MemberState::Member
                || self.unreachable.contains_key(&c.instance)
            {
                continue;
            }
            for &(removed, version) in c.removed.iter() {
                if Some(removed) != me
                    && mine.contains(&removed)
                    && self.version_of(removed) <= version
                {
                    suspects.insert(removed);
                }
            }
        }
        for s in suspects {
            if !self.candidates.contains(&s) || self.to_verify.contains(&s) {
                continue;
            }
            if self
                .verified_at
                .get(&s)
                .is_some_and(|t| now.saturating_duration_since(*t) < every)
            {
                continue;
            }
            self.verified_at.insert(s, now);
            self.to_verify.push_back(s);
        }
    }

    /// `count` peers other than this instance, at random (`None`: all of them).
    pub fn pick(&self, me: Option<u64>, count: Option<usize>, rng: &mut impl Rng) -> Vec<u64> {
        let mut peers: Vec<u64> = self
            .candidates
            .iter()
            .copied()
            .filter(|i| Some(*i) != me)
            .collect();
        if let Some(count) = count {
            peers.shuffle(rng);
            peers.truncate(count);
        }
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The wall clock the tests' cards are judged by (their versions are small numbers).
    const WALL: u64 = 1_000_000_000;

    fn epoch(n: u64) -> Epoch {
        format!("{n:016x}").parse().unwrap()
    }

    /// A node of a tiny in-memory cluster: its gossip and its own state.
    fn node(me: u64, all: &[u64], state: MemberState, view: &[u64], now: Instant) -> Gossip {
        let mut g = Gossip::default();
        g.set_candidates(Some(me), Arc::new(all.iter().copied().collect()));
        g.set_own(
            me,
            state,
            (!view.is_empty()).then_some((epoch(view.len() as u64), view)),
            None,
            &[],
            1_000 + me,
            now,
        );
        g
    }

    /// Both sides of a sync: each takes the other's cards.
    fn sync(a: &mut Gossip, am: u64, b: &mut Gossip, bm: u64, now: Instant) {
        let ta = a.table(Some(am), None, now);
        let tb = b.table(Some(bm), None, now);
        b.merge(Some(bm), &ta, now, WALL);
        a.merge(Some(am), &tb, now, WALL);
    }

    #[test]
    fn digests_agree_exactly_when_the_cards_do() {
        let now = Instant::now();
        let all = [0, 1, 2];
        let mut nodes: Vec<Gossip> = all
            .iter()
            .map(|&i| node(i, &all, MemberState::Member, &all, now))
            .collect();
        assert_ne!(nodes[0].digest(), nodes[1].digest());
        let (a, rest) = nodes.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        sync(&mut a[0], 0, &mut b[0], 1, now);
        sync(&mut b[0], 1, &mut c[0], 2, now);
        sync(&mut a[0], 0, &mut b[0], 1, now);
        assert_eq!(nodes[0].digest(), nodes[1].digest());
        assert_eq!(nodes[1].digest(), nodes[2].digest());
        // A merge in a different order gives the same digest; a second merge changes nothing.
        let t = nodes[0].table(Some(0), None, now);
        assert!(!nodes[2].merge(Some(2), &t, now, WALL).cards);
        // A change of state is a new version: the digests differ until it spreads.
        let change = nodes[1].set_own(1, MemberState::Leaving, None, None, &[], 5, now);
        assert_eq!(change, OwnChange::State);
        assert_ne!(nodes[0].digest(), nodes[1].digest());
        // The same state again is no change, and no new version.
        assert_eq!(
            nodes[1].set_own(1, MemberState::Leaving, None, None, &[], 6, now),
            OwnChange::None
        );
    }

    #[test]
    fn an_older_or_foreign_card_never_replaces_a_newer_one() {
        let now = Instant::now();
        let mut g = node(0, &[0, 1], MemberState::Member, &[0, 1], now);
        let card = |version, state| PeerTable {
            from: Some(1),
            cards: vec![PeerCard {
                instance: 1,
                version,
                state,
                epoch: None,
                previous: None,
                previous_left_ms: 0,
                removed: vec![],
            }],
            views: vec![],
        };
        assert!(
            g.merge(Some(0), &card(10, MemberState::Member), now, WALL)
                .states
        );
        assert_eq!(
            g.merge(Some(0), &card(9, MemberState::Leaving), now, WALL),
            News::default()
        );
        assert_eq!(g.observed(Some(0), now)[0].state, Some(MemberState::Member));
        // A card about this instance itself is never taken from a peer.
        let mut about_me = card(99, MemberState::Leaving);
        about_me.cards[0].instance = 0;
        assert!(!g.merge(Some(0), &about_me, now, WALL).cards);
        // Nor one of an instance DNS does not name.
        let mut stranger = card(99, MemberState::Member);
        stranger.cards[0].instance = 7;
        assert!(!g.merge(Some(0), &stranger, now, WALL).cards);
        // A card naming an epoch without its members is not taken half.
        let mut half = card(11, MemberState::Member);
        half.cards[0].epoch = Some(epoch(2).to_string());
        assert!(!g.merge(Some(0), &half, now, WALL).cards);
    }

    /// A keyholder's forged card (instance `about`, leaving, `version`), as a push carries it.
    fn forged(about: u64, version: u64) -> PeerTable {
        PeerTable {
            from: Some(7),
            cards: vec![PeerCard {
                instance: about,
                version,
                state: MemberState::Leaving,
                epoch: None,
                previous: None,
                previous_left_ms: 0,
                removed: vec![],
            }],
            views: vec![],
        }
    }

    #[test]
    fn a_forged_card_about_an_instance_is_refuted_by_it_within_a_round() {
        let now = Instant::now();
        let all = [0, 1, 2];
        let mut nodes: Vec<Gossip> = all
            .iter()
            .map(|&i| node(i, &all, MemberState::Member, &all, now))
            .collect();
        // Instance 2 is said to be leaving, at a version above its own (and within the skew).
        let lie = forged(2, 5_000);
        assert!(nodes[0].merge(Some(0), &lie, now, WALL).states);
        assert_eq!(
            nodes[0].observed(Some(0), now)[1].state,
            Some(MemberState::Leaving)
        );
        // The lie reaches 2 in its next sync with 0; 2 refutes it: its next write is above.
        let t0 = nodes[0].table(Some(0), None, now);
        let news = nodes[2].merge(Some(2), &t0, now, WALL);
        assert!(news.refute, "{news:?}");
        let change = nodes[2].set_own(
            2,
            MemberState::Member,
            Some((epoch(3), &all)),
            None,
            &[],
            1_002,
            now,
        );
        assert_eq!(
            change,
            OwnChange::State,
            "pushed to every peer, as a state change is"
        );
        assert!(nodes[2].version_of(2) > 5_000);
        // The refutation replaces the lie wherever it arrives.
        let t2 = nodes[2].table(Some(2), Some(2), now);
        assert!(nodes[0].merge(Some(0), &t2, now, WALL).states);
        assert_eq!(
            nodes[0].observed(Some(0), now)[1].state,
            Some(MemberState::Member)
        );
        // Its own card relayed back unchanged is not news, and needs no refutation.
        assert!(!nodes[2].merge(Some(2), &t2, now, WALL).refute);
        // A card of the same version as its own but other content is a lie too.
        let mut same_version = forged(2, nodes[2].version_of(2));
        same_version.from = Some(1);
        assert!(nodes[2].merge(Some(2), &same_version, now, WALL).refute);
    }

    #[test]
    fn a_version_no_instance_could_outbid_is_refused_and_counted() {
        let now = Instant::now();
        let mut g = node(0, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        let skew = MAX_CLOCK_SKEW.as_micros() as u64;
        for version in [u64::MAX, WALL + skew + 1] {
            let news = g.merge(Some(0), &forged(2, version), now, WALL);
            assert!(!news.cards, "version {version}");
            assert_eq!(news.refused.future_version, 1);
        }
        assert!(g.merge(Some(0), &forged(2, WALL + skew), now, WALL).cards);
        // About itself too: nothing to refute in a card nobody takes.
        let news = g.merge(Some(0), &forged(0, u64::MAX), now, WALL);
        assert!(!news.refute && news.refused.future_version == 1);
    }

    #[test]
    fn windows_views_and_removals_past_their_bounds_are_cut_or_refused() {
        let now = Instant::now();
        let mut g = node(0, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        g.set_max_window(Duration::from_secs(5));
        let skew = MAX_CLOCK_SKEW.as_micros() as u64;
        let mut t = forged(1, 2_000);
        t.cards[0].state = MemberState::Member;
        t.cards[0].epoch = Some(epoch(3).to_string());
        t.cards[0].previous = Some(epoch(2).to_string());
        t.cards[0].previous_left_ms = u64::MAX;
        t.cards[0].removed = vec![
            PeerRemoval {
                instance: 2,
                version: u64::MAX,
            },
            PeerRemoval {
                instance: 2,
                version: WALL + skew + 1,
            },
        ];
        t.views = vec![
            PeerViewMembers {
                epoch: epoch(3).to_string(),
                members: vec![0, 1, 2],
            },
            PeerViewMembers {
                epoch: epoch(2).to_string(),
                members: vec![0, 1],
            },
        ];
        let news = g.merge(Some(0), &t, now, WALL);
        assert!(news.cards);
        assert_eq!((news.refused.long_window, news.refused.bad_removal), (1, 2));
        let peer = &g.observed(Some(0), now)[0];
        assert_eq!(peer.previous.as_ref().unwrap().2, Duration::from_secs(5));
        assert!(peer.removed.is_empty());
        // A view whose members repeat or are out of order is refused, and its card with it.
        let mut bad = t.clone();
        bad.cards[0].version = 3_000;
        bad.views[0].members = vec![2, 1, 0];
        let news = g.merge(Some(0), &bad, now, WALL);
        assert!(!news.cards && news.refused.bad_view == 1, "{news:?}");
    }

    #[test]
    fn a_restarted_instance_whose_clock_is_behind_outbids_its_old_card() {
        let now = Instant::now();
        let all = [0, 1];
        let mut peer = node(0, &all, MemberState::Member, &all, now);
        // Its previous life wrote version 900_000; the new process's clock says 1_000.
        let mut old_life = node(1, &all, MemberState::Member, &all, now);
        old_life.set_own(1, MemberState::Leaving, None, None, &[], 900_000, now);
        peer.merge(Some(0), &old_life.table(Some(1), Some(1), now), now, WALL);
        let mut restarted = node(1, &all, MemberState::Joining, &[], now);
        assert!(restarted.version_of(1) < 900_000);
        // Its card is below the old one: the peer keeps the old one...
        let t = restarted.table(Some(1), Some(1), now);
        assert!(!peer.merge(Some(0), &t, now, WALL).cards);
        // ...until the restarted one hears of it, and writes above it.
        let news = restarted.merge(Some(1), &peer.table(Some(0), None, now), now, WALL);
        assert!(news.refute);
        restarted.set_own(1, MemberState::Joining, None, None, &[], 1_001, now);
        assert!(restarted.version_of(1) > 900_000);
        assert!(
            peer.merge(Some(0), &restarted.table(Some(1), Some(1), now), now, WALL)
                .states
        );
        assert_eq!(
            peer.observed(Some(0), now)[0].state,
            Some(MemberState::Joining)
        );
    }

    #[test]
    fn a_failed_probe_marks_unreachable_until_an_answer_or_a_newer_card() {
        let now = Instant::now();
        let mut g = node(0, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        let mut one = node(1, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        sync(&mut g, 0, &mut one, 1, now);
        g.probed(1, Probe::Unanswered, now);
        let p1 = |g: &Gossip| {
            g.observed(Some(0), now)
                .into_iter()
                .find(|p| p.instance == 1)
        };
        assert_eq!(p1(&g).unwrap().state, None);
        // It is probed again first in the next round.
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(g.probe_targets(Some(0), &mut rng)[0], 1);
        g.probed(1, Probe::Answered, now);
        assert_eq!(p1(&g).unwrap().state, Some(MemberState::Member));
        g.probed(1, Probe::Unanswered, now);
        one.set_own(1, MemberState::Leaving, None, None, &[], 50_000, now);
        g.merge(Some(0), &one.table(Some(1), Some(1), now), now, WALL);
        assert_eq!(p1(&g).unwrap().state, Some(MemberState::Leaving));
    }

    #[test]
    fn a_cold_start_waits_for_every_peer_but_a_stranger_and_only_beside_one_of_ours() {
        use Probe::{Answered, NotOurs, Unanswered};
        // Instance 0 joins with no members yet; DNS names 0, 1, 2 and 9. Each row: what the
        // probes of 1, 2 and 9 got (None: no probe yet), whether 0 holds cards of 1 and 2, and
        // whether it may conclude that there are no members.
        type Row = (&'static str, [Option<Probe>; 3], bool, bool);
        let rows: [Row; 6] = [
            ("nothing heard yet", [None, None, None], false, false),
            (
                "1 and 2 heard, 9 not yet probed",
                [Some(Answered), Some(Answered), None],
                true,
                false,
            ),
            (
                "1 and 2 heard, 9 silent (may be one of ours, starting)",
                [Some(Answered), Some(Answered), Some(Unanswered)],
                true,
                false,
            ),
            (
                "1 and 2 heard, 9 refused the credential",
                [Some(Answered), Some(Answered), Some(NotOurs)],
                true,
                true,
            ),
            (
                "2 silent, 9 a stranger",
                [Some(Answered), Some(Unanswered), Some(NotOurs)],
                true,
                false,
            ),
            (
                "only strangers: cannot tell which side is the cluster",
                [Some(NotOurs), Some(NotOurs), Some(NotOurs)],
                false,
                false,
            ),
        ];
        let now = Instant::now();
        for (what, probes, cards, want) in rows {
            let all = [0, 1, 2, 9];
            let mut g = node(0, &all, MemberState::Joining, &[], now);
            if cards {
                for i in [1, 2] {
                    let mut peer = node(i, &all, MemberState::Joining, &[], now);
                    sync(&mut g, 0, &mut peer, i, now);
                }
            }
            for (i, probe) in [1, 2, 9].into_iter().zip(probes) {
                if let Some(probe) = probe {
                    g.probed(i, probe, now);
                }
            }
            assert_eq!(g.heard_from_all(Some(0)), want, "{what}");
        }
        // A stranger is forgotten once it answers, or once DNS no longer names it.
        let mut g = node(0, &[0, 9], MemberState::Joining, &[], now);
        assert!(
            g.probed(9, NotOurs, now),
            "a new stranger changes what is heard"
        );
        assert!(!g.heard_from_all(Some(0)));
        assert!(g.probed(9, Answered, now));
        assert!(
            !g.heard_from_all(Some(0)),
            "one of ours again: its card is awaited"
        );
        g.probed(9, NotOurs, now);
        g.set_candidates(Some(0), Arc::new([0].into_iter().collect()));
        assert!(g.heard_from_all(Some(0)), "alone in DNS: no members yet");
    }

    #[test]
    fn the_round_robin_probes_every_peer_once_per_cycle() {
        let now = Instant::now();
        let all: Vec<u64> = (0..10).collect();
        let mut g = node(3, &all, MemberState::Member, &all, now);
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = Vec::new();
        for _ in 0..9 {
            let t = g.probe_targets(Some(3), &mut rng);
            assert_eq!(t.len(), 1, "one probe per round when all is well");
            seen.push(t[0]);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_member_a_peer_removed_as_down_is_verified_once_per_period() {
        let now = Instant::now();
        let all = [0, 1, 2, 3];
        let mut g = node(0, &all, MemberState::Member, &all, now);
        let mut two = node(2, &all, MemberState::Member, &all, now);
        let mut three = node(3, &all, MemberState::Member, &all, now);
        sync(&mut g, 0, &mut two, 2, now);
        sync(&mut g, 0, &mut three, 3, now);
        let mut peer = node(1, &all, MemberState::Member, &[0, 1, 3], now);
        // A view that lacks 3, without a removal: 1 had not heard of 3 yet. Nothing to check.
        sync(&mut g, 0, &mut peer, 1, now);
        let every = Duration::from_secs(30);
        g.queue_verifications(Some(0), &all, every, now);
        assert!(
            g.to_verify.is_empty(),
            "a view that lacks a member accuses nobody"
        );
        // 1 removed 2 as down, for the card of 2 held here: check it, once.
        peer.set_own(
            1,
            MemberState::Member,
            Some((epoch(9), &[0, 1, 3][..])),
            None,
            &[(2, g.version_of(2)), (3, g.version_of(3) - 1)],
            5_000,
            now,
        );
        sync(&mut g, 0, &mut peer, 1, now);
        g.queue_verifications(Some(0), &all, every, now);
        g.queue_verifications(Some(0), &all, every, now);
        assert_eq!(
            g.to_verify,
            [2],
            "3 wrote a newer card than the one 1 removed"
        );
        let mut rng = StdRng::seed_from_u64(3);
        let targets = g.probe_targets(Some(0), &mut rng);
        assert_eq!(targets.iter().filter(|t| **t == 2).count(), 1);
        assert!(targets.len() <= 2);
        g.queue_verifications(Some(0), &all, every, now + Duration::from_secs(1));
        assert!(g.to_verify.is_empty(), "not again within the period");
        g.queue_verifications(Some(0), &all, every, now + every);
        assert_eq!(g.to_verify, [2]);
    }

    #[test]
    fn a_dns_change_drops_the_cards_of_instances_no_longer_named() {
        let now = Instant::now();
        let mut g = node(0, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        let mut two = node(2, &[0, 1, 2], MemberState::Member, &[0, 1, 2], now);
        sync(&mut g, 0, &mut two, 2, now);
        assert_eq!(g.observed(Some(0), now).len(), 2);
        g.set_candidates(Some(0), Arc::new([0, 1].into()));
        assert_eq!(g.observed(Some(0), now).len(), 1);
        assert!(!g
            .table(Some(0), None, now)
            .cards
            .iter()
            .any(|c| c.instance == 2));
    }
}
