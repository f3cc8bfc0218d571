//! One instance's membership logic, without I/O: what a round probes, what a probe's outcome or
//! a peer's cards change, when the view is computed again, and what is pushed to whom.
//!
//! [`crate::discovery`] drives it with DNS, HTTP and the wall clock; `poc-bench sim` drives the
//! very same code with thousands of nodes, virtual time and lost messages, to argue for sizes no
//! single machine can run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use poc_routing_wire::{MemberState, PeerTable};
use rand::Rng;

use crate::gossip::{Card, Gossip, News, OwnChange, Probe, EPOCH_FANOUT};
use crate::membership::{Change, Membership, Peer};

/// What a recomputation did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The view changed.
    pub change: Option<Change>,
    /// This instance, joining, became a member.
    pub became_member: bool,
    /// This instance's card changed: how, and the peers it goes to.
    pub push: Option<(OwnChange, Vec<u64>)>,
}

/// One instance's gossip and membership.
#[derive(Debug)]
pub struct Node {
    pub membership: Arc<Membership>,
    pub gossip: Gossip,
    /// When this instance, joining, first saw member peers.
    settling_since: Option<Instant>,
    /// Something the view depends on changed since it was last computed.
    dirty: bool,
    /// The index and state the view was last computed with.
    last: (Option<u64>, Option<MemberState>),
}

impl Node {
    pub fn new(membership: Arc<Membership>) -> Self {
        let mut gossip = Gossip::default();
        gossip.set_max_window(membership.timing.transition_window);
        Self {
            membership,
            gossip,
            settling_since: None,
            dirty: true,
            last: (None, None),
        }
    }

    /// Starts a round with what DNS named: the peers to probe.
    pub fn round(
        &mut self,
        me: Option<u64>,
        found: Arc<std::collections::BTreeSet<u64>>,
        rng: &mut impl Rng,
    ) -> Vec<u64> {
        self.dirty |= self.gossip.set_candidates(me, found);
        self.gossip.probe_targets(me, rng)
    }

    /// What a probe of `instance` got.
    pub fn probed(&mut self, instance: u64, probe: Probe, now: Instant) {
        self.dirty |= self.gossip.probed(instance, probe, now);
    }

    /// A peer's cards, from the wire (a sync or a push), judged by the wall clock `wall_us`.
    /// The caller computes the view at once when a state changed ([`News::states`]) or this
    /// instance must refute a card about itself ([`News::refute`]); anything else waits for
    /// the next round.
    pub fn receive(
        &mut self,
        me: Option<u64>,
        table: &PeerTable,
        now: Instant,
        wall_us: u64,
    ) -> News {
        let news = self.gossip.merge(me, table, now, wall_us);
        self.dirty |= news.cards || news.refute;
        news
    }

    /// A peer's cards, in memory (the simulation), as [`Node::receive`].
    pub fn receive_cards(&mut self, me: Option<u64>, cards: &[Arc<Card>], now: Instant) -> News {
        let news = self.gossip.merge_cards(me, cards, now);
        self.dirty |= news.cards || news.refute;
        news
    }

    /// Whether the view must be computed again: something it depends on changed (a card, a
    /// peer's reachability, DNS, this instance's index or state), or a deadline passed (an
    /// absent member's down timeout), or it is joining (its settle time runs). An idle node
    /// in a quiet cluster computes nothing.
    pub fn needs_recompute(&self, me: Option<u64>, now: Instant) -> bool {
        let state = self.membership.state();
        self.dirty
            || self.last != (me, Some(state))
            || state == MemberState::Joining
            || self.membership.next_deadline().is_some_and(|d| d <= now)
    }

    /// Computes the view from the cards held, writes this instance's own card, and says whom
    /// to push it to if it changed: every peer for a new state, [`EPOCH_FANOUT`] for a new
    /// epoch.
    pub fn recompute(
        &mut self,
        me: Option<u64>,
        now: Instant,
        wall_us: u64,
        rng: &mut impl Rng,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let peers = self.gossip.observed(me, now);
        if let (Some(me), MemberState::Joining) = (me, self.membership.state()) {
            if self.settled(me, &peers, now) {
                // Ready: it knows who it is, has heard what its peers hold, and the proxy has
                // had time to learn its address.
                self.membership.set_state(MemberState::Member);
                outcome.became_member = true;
            }
        }
        outcome.change = self.membership.update(me, &peers, now);
        self.dirty = false;
        self.last = (me, Some(self.membership.state()));
        let Some(me) = me else {
            return outcome;
        };
        // The previous view a card names is the newest one this instance still accepts, its
        // own or a peer's, as of its last epoch change (later changes of it alone are not news:
        // that would make cards change, and be pushed, as views are passed around).
        let views = self.membership.views();
        let current = views.current.as_deref();
        let previous = views.previous(now);
        let change = self.gossip.set_own(
            me,
            self.membership.state(),
            current.map(|c| (c.epoch(), c.members())),
            previous
                .map(|(p, until)| (p.epoch(), p.members(), until.saturating_duration_since(now))),
            &self.membership.removals(now),
            wall_us,
            now,
        );
        if let Some(c) = current {
            self.gossip.queue_verifications(
                Some(me),
                c.members(),
                self.membership.timing.down_timeout,
                now,
            );
        }
        let count = match change {
            OwnChange::None => return outcome,
            OwnChange::State => None,
            OwnChange::Epoch => Some(EPOCH_FANOUT),
        };
        outcome.push = Some((change, self.gossip.pick(Some(me), count, rng)));
        outcome
    }

    /// What membership sees of each peer now (for `/placement` and the leaving check).
    pub fn peers(&self, me: Option<u64>, now: Instant) -> Vec<Peer> {
        self.gossip.observed(me, now)
    }

    /// Whether joining instance `me` may become a member: at once when there are no members
    /// yet (nothing routes anywhere; known only once it holds a card of every instance DNS
    /// names) or when the members still count it (it crashed and came back: no id moves to
    /// it); otherwise once `join_settle` has passed since it first saw them.
    fn settled(&mut self, me: u64, peers: &[Peer], now: Instant) -> bool {
        let members: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.state == Some(MemberState::Member))
            .collect();
        if members.is_empty() {
            return self.gossip.heard_from_all(Some(me));
        }
        if members.iter().any(|p| p.members.contains(&me)) {
            return true;
        }
        let since = *self.settling_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.membership.timing.join_settle
    }

    /// How long until a member absent now would be removed as down, at most.
    pub fn down_timeout(&self) -> Duration {
        self.membership.timing.down_timeout
    }
}
