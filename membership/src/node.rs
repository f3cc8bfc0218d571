//! One instance's membership as a state machine with one way in: [`Node::handle`] takes an
//! [`Input`] (a round's tick with what DNS names, a peer's request, a peer's answer, a request
//! that got nothing, leaving) and the time, and returns [`Effect`]s (messages to send, the
//! reply to a request, a new view). It does no I/O and reads no clock.
//!
//! The servers drive it with DNS, HTTP and the wall clock; `poc-bench`'s simulation drives
//! the very same code with thousands of nodes, virtual time and lost messages. Both go through
//! the same sequence, which lives here once:
//!
//! 1. a round ([`Input::Round`]) names the peers to probe: a [`Message::DigestRequest`] to each;
//! 2. a peer's [`Message::Digest`] equal to ours ends that probe (most rounds end here); a
//!    different one (or a round that forces it) sends our cards ([`Message::Sync`]), and the
//!    peer answers with its own ([`Message::Cards`]);
//! 3. when every probe of the round has ended, answered or not ([`Input::Failed`]), the view is
//!    computed again if anything it depends on changed, and this instance's card, if that
//!    changed, is pushed ([`Message::Push`]): to every peer for a new state, to
//!    [`EPOCH_FANOUT`] peers for a new epoch;
//! 4. a peer's sync or push that brings a new state is taken at once, and answered
//!    ([`Effect::Reply`]).
//!
//! Cards travel as [`Cards::Wire`] between servers (checked against the clock and bounds as
//! they arrive) and as [`Cards::Shared`] in a simulation (already checked, shared in memory so
//! that ten thousand nodes fit in one process); both are taken by the same rule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poc_routing_wire::{MemberState, PeerTable};
use rand::Rng;

use crate::gossip::{Card, Gossip, News, OwnChange, Probe, Refused, EPOCH_FANOUT};
use crate::membership::{Change, Membership, Peer};

/// How many more peers a forced round swaps cards with, at random, besides its regular probes.
const FORCED_EXTRA: usize = 2;

/// The time an input happens at: a monotonic instant for durations, and the wall clock in
/// microseconds, which card versions are written in (a restart writes above its earlier life).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall_us: u64,
}

/// Cards as they travel between two nodes.
#[derive(Debug, Clone)]
pub enum Cards {
    /// On the wire, as servers send them: checked as they arrive (versions ahead of the clock,
    /// windows, member lists, removals).
    Wire(PeerTable),
    /// In memory, shared between a simulation's nodes.
    Shared(Vec<Arc<Card>>),
}

/// Which form of [`Cards`] a node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Wire,
    Shared,
}

/// A message between two instances.
#[derive(Debug, Clone)]
pub enum Message {
    /// Asks for the digest of every card the peer holds (`GET /peer/digest`).
    DigestRequest,
    /// The digest of every card held: the answer to a digest request or to a push.
    Digest(u64),
    /// Every card held here, asking for the peer's (`POST /peer/sync`).
    Sync(Cards),
    /// The answer to a sync: every card the peer holds.
    Cards(Cards),
    /// This instance's own card, just changed (`POST /peer/push`).
    Push(Cards),
}

/// What happens to a node.
#[derive(Debug, Clone)]
pub enum Input {
    /// A round starts: this instance's index, if known, and every instance DNS names now.
    /// `force_sync`: swap cards with every peer probed (and a few more) whatever the digests
    /// say, when looking for a view a peer may hold.
    Round {
        me: Option<u64>,
        found: Arc<BTreeSet<u64>>,
        force_sync: bool,
    },
    /// A peer's request: [`Message::DigestRequest`], [`Message::Sync`] or [`Message::Push`].
    Request(Message),
    /// A peer's answer to a message this node sent it.
    Answer { from: u64, message: Message },
    /// A message this node sent `peer` got no usable answer: [`Probe::Unanswered`] (down, slow,
    /// or not the instance DNS named) or [`Probe::NotOurs`] (not of this cluster).
    Failed { peer: u64, probe: Probe },
    /// This instance is stopping: it becomes `leaving`, and says so to every peer at once.
    Leave,
}

/// What a node asks its driver to do, or tells it.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send `message` to `to`; feed its answer back as [`Input::Answer`], or its failure as
    /// [`Input::Failed`]. A push is one way: its answer or failure is not fed back.
    Send { to: u64, message: Message },
    /// The answer to the [`Input::Request`] being handled.
    Reply(Message),
    /// The view changed.
    ViewChanged(Change),
    /// This instance, joining, became a member.
    BecameMember,
    /// A peer's cards held something refused or cut (for the metrics).
    Refused(Refused),
    /// A card about this instance newer than its own arrived; it writes a newer one (SWIM's
    /// refutation).
    Refuting,
}

/// One instance's gossip and membership.
#[derive(Debug)]
pub struct Node {
    /// Shared with the request handlers, which judge joins by its views.
    pub membership: Arc<Membership>,
    gossip: Gossip,
    encoding: Encoding,
    /// This instance's index, once known.
    me: Option<u64>,
    /// The probes of the current round that have not ended, and whether each swaps cards
    /// whatever the digests say.
    probing: BTreeMap<u64, bool>,
    /// When this instance, joining, first saw member peers.
    settling_since: Option<Instant>,
    /// Something the view depends on changed since it was last computed.
    dirty: bool,
    /// The index and state the view was last computed with.
    last: (Option<u64>, Option<MemberState>),
}

impl Node {
    pub fn new(membership: Arc<Membership>, encoding: Encoding) -> Self {
        let mut gossip = Gossip::default();
        gossip.set_max_window(membership.timing.transition_window);
        Self {
            membership,
            gossip,
            encoding,
            me: None,
            probing: BTreeMap::new(),
            settling_since: None,
            dirty: true,
            last: (None, None),
        }
    }

    /// The one way in: takes `input` at `now`, returns what to do.
    pub fn handle(&mut self, input: Input, now: Now, rng: &mut impl Rng) -> Vec<Effect> {
        let mut effects = Vec::new();
        match input {
            Input::Round {
                me,
                found,
                force_sync,
            } => {
                self.me = me.or(self.me);
                self.dirty |= self.gossip.set_candidates(self.me, found);
                let mut targets = self.gossip.probe_targets(self.me, rng);
                if force_sync {
                    for extra in self.gossip.pick(self.me, Some(FORCED_EXTRA), rng) {
                        if !targets.contains(&extra) {
                            targets.push(extra);
                        }
                    }
                }
                self.probing = targets.iter().map(|t| (*t, force_sync)).collect();
                effects.extend(targets.into_iter().map(|to| Effect::Send {
                    to,
                    message: Message::DigestRequest,
                }));
                self.end_round_if_done(now, rng, &mut effects);
            }
            Input::Request(Message::DigestRequest) => {
                effects.push(Effect::Reply(Message::Digest(self.gossip.digest())));
            }
            Input::Request(Message::Sync(cards)) => {
                self.take(&cards, now, rng, &mut effects);
                let all = self.cards(None, now.instant);
                effects.push(Effect::Reply(Message::Cards(all)));
            }
            Input::Request(Message::Push(cards)) => {
                self.take(&cards, now, rng, &mut effects);
                effects.push(Effect::Reply(Message::Digest(self.gossip.digest())));
            }
            // Answers are not requests: nothing to do.
            Input::Request(Message::Digest(_) | Message::Cards(_)) => {}
            Input::Answer { from, message } => {
                let Some(&forced) = self.probing.get(&from) else {
                    // Not a probe of this round (a push's answer, or a late one): ignored.
                    return effects;
                };
                match message {
                    Message::Digest(theirs) if theirs != self.gossip.digest() || forced => {
                        let mine = self.cards(None, now.instant);
                        effects.push(Effect::Send {
                            to: from,
                            message: Message::Sync(mine),
                        });
                        return effects;
                    }
                    Message::Digest(_) => {}
                    Message::Cards(cards) => {
                        let news = self.merge(&cards, now);
                        Self::report(&news, &mut effects);
                    }
                    // Not an answer to a probe: the probe failed.
                    Message::DigestRequest | Message::Sync(_) | Message::Push(_) => {
                        return self.handle(
                            Input::Failed {
                                peer: from,
                                probe: Probe::Unanswered,
                            },
                            now,
                            rng,
                        );
                    }
                }
                self.probe_ended(from, Probe::Answered, now, rng, &mut effects);
            }
            Input::Failed { peer, probe } => {
                if self.probing.contains_key(&peer) {
                    self.probe_ended(peer, probe, now, rng, &mut effects);
                }
            }
            Input::Leave => {
                self.membership.set_state(MemberState::Leaving);
                self.recompute(now, rng, &mut effects);
            }
        }
        effects
    }

    /// The digest of every card held (for a driver that wants to know whether a round
    /// brought anything).
    pub fn digest(&self) -> u64 {
        self.gossip.digest()
    }

    /// What membership sees of each peer now (for `/placement` and the leaving check).
    pub fn peers(&self, now: Instant) -> Vec<Peer> {
        self.gossip.observed(self.me, now)
    }

    /// How long until a member absent now would be removed as down, at most.
    pub fn down_timeout(&self) -> Duration {
        self.membership.timing.down_timeout
    }

    /// Starts a node as part of a cluster that has been up a while: `me`, a member, holding
    /// `cards` (its own among them), with DNS naming `found`.
    /// For a simulation's first state, which would otherwise take a cold start to reach.
    pub fn seeded(
        membership: Arc<Membership>,
        me: u64,
        found: Arc<BTreeSet<u64>>,
        cards: &[Arc<Card>],
        now: Now,
        rng: &mut impl Rng,
    ) -> Self {
        membership.set_state(MemberState::Member);
        let mut node = Self::new(membership, Encoding::Shared);
        node.me = Some(me);
        node.gossip.set_candidates(Some(me), found);
        // Its own card too, as the others hold it: taken as a peer's would be.
        node.gossip.merge_cards(None, cards, now.instant);
        node.recompute(now, rng, &mut Vec::new());
        node
    }

    /// The probe of `peer` ended with `probe`.
    fn probe_ended(
        &mut self,
        peer: u64,
        probe: Probe,
        now: Now,
        rng: &mut impl Rng,
        effects: &mut Vec<Effect>,
    ) {
        self.probing.remove(&peer);
        self.dirty |= self.gossip.probed(peer, probe, now.instant);
        self.end_round_if_done(now, rng, effects);
    }

    /// When every probe of the round has ended: the view, computed again if it must be.
    fn end_round_if_done(&mut self, now: Now, rng: &mut impl Rng, effects: &mut Vec<Effect>) {
        if self.probing.is_empty() && self.needs_recompute(now.instant) {
            self.recompute(now, rng, effects);
        }
    }

    /// Takes a peer's request's cards; the view is computed at once when a state changed or
    /// this instance must refute a card about itself ([`News::states`], [`News::refute`]);
    /// anything else waits for the next round.
    fn take(&mut self, cards: &Cards, now: Now, rng: &mut impl Rng, effects: &mut Vec<Effect>) {
        let news = self.merge(cards, now);
        Self::report(&news, effects);
        if news.states || news.refute {
            self.recompute(now, rng, effects);
        }
    }

    fn merge(&mut self, cards: &Cards, now: Now) -> News {
        let news = match cards {
            Cards::Wire(table) => self.gossip.merge(self.me, table, now.instant, now.wall_us),
            Cards::Shared(cards) => self.gossip.merge_cards(self.me, cards, now.instant),
        };
        self.dirty |= news.cards || news.refute;
        news
    }

    fn report(news: &News, effects: &mut Vec<Effect>) {
        if news.refused != Refused::default() {
            effects.push(Effect::Refused(news.refused));
        }
        if news.refute {
            effects.push(Effect::Refuting);
        }
    }

    /// Every card held (`only`: just that instance's), in this node's encoding.
    fn cards(&self, only: Option<u64>, now: Instant) -> Cards {
        match self.encoding {
            Encoding::Wire => Cards::Wire(self.gossip.table(self.me, only, now)),
            Encoding::Shared => Cards::Shared(self.gossip.cards(only)),
        }
    }

    /// Whether the view must be computed again: something it depends on changed (a card, a
    /// peer's reachability, DNS, this instance's index or state), or a deadline passed (an
    /// absent member's down timeout), or it is joining (its settle time runs). An idle node
    /// in a quiet cluster computes nothing.
    fn needs_recompute(&self, now: Instant) -> bool {
        let state = self.membership.state();
        self.dirty
            || self.last != (self.me, Some(state))
            || state == MemberState::Joining
            || self.membership.next_deadline().is_some_and(|d| d <= now)
    }

    /// Computes the view from the cards held, writes this instance's own card, and pushes it
    /// if it changed: to every peer for a new state, to [`EPOCH_FANOUT`] for a new epoch.
    fn recompute(&mut self, now: Now, rng: &mut impl Rng, effects: &mut Vec<Effect>) {
        let me = self.me;
        let at = now.instant;
        let peers = self.gossip.observed(me, at);
        if let (Some(me), MemberState::Joining) = (me, self.membership.state()) {
            if self.settled(me, &peers, at) {
                // Ready: it knows who it is, has heard what its peers hold, and the proxy has
                // had time to learn its address.
                self.membership.set_state(MemberState::Member);
                effects.push(Effect::BecameMember);
            }
        }
        if let Some(change) = self.membership.update(me, &peers, at) {
            effects.push(Effect::ViewChanged(change));
        }
        self.dirty = false;
        self.last = (me, Some(self.membership.state()));
        let Some(me) = me else {
            return;
        };
        // The previous view a card names is the newest one this instance still accepts, its
        // own or a peer's, as of its last epoch change (later changes of it alone are not news:
        // that would make cards change, and be pushed, as views are passed around).
        let views = self.membership.views();
        let current = views.current.as_deref();
        let previous = views.previous(at);
        let change = self.gossip.set_own(
            me,
            self.membership.state(),
            current.map(|c| (c.epoch(), c.members())),
            previous
                .map(|(p, until)| (p.epoch(), p.members(), until.saturating_duration_since(at))),
            &self.membership.removals(at),
            now.wall_us,
            at,
        );
        if let Some(c) = current {
            self.gossip.queue_verifications(
                Some(me),
                c.members(),
                self.membership.timing.down_timeout,
                at,
            );
        }
        let count = match change {
            OwnChange::None => return,
            OwnChange::State => None,
            OwnChange::Epoch => Some(EPOCH_FANOUT),
        };
        let card = self.cards(Some(me), at);
        effects.extend(
            self.gossip
                .pick(Some(me), count, rng)
                .into_iter()
                .map(|to| Effect::Send {
                    to,
                    message: Message::Push(card.clone()),
                }),
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use poc_routing_placement::{IndexMode, Naming, Placement, PlacementSpec};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn node() -> Node {
        let rule =
            Placement::new(PlacementSpec::new(IndexMode::Hash, Naming::compose()), [1]).unwrap();
        let timing = crate::Timing {
            join_settle: Duration::ZERO,
            ..crate::Timing::default()
        };
        Node::new(
            Arc::new(Membership::discovered(rule, timing, None)),
            Encoding::Shared,
        )
    }

    fn sends(effects: &[Effect]) -> Vec<(u64, &'static str)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, message } => Some((
                    *to,
                    match message {
                        Message::DigestRequest => "digest?",
                        Message::Sync(_) => "sync",
                        Message::Push(_) => "push",
                        Message::Digest(_) | Message::Cards(_) => "answer",
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// Carries `from`'s request to `to` and returns `to`'s reply.
    fn ask(to: &mut Node, message: Message, now: Now, rng: &mut StdRng) -> Message {
        to.handle(Input::Request(message), now, rng)
            .into_iter()
            .find_map(|e| match e {
                Effect::Reply(m) => Some(m),
                _ => None,
            })
            .expect("a request is answered")
    }

    /// Two instances starting together: digests differ, so a probe swaps cards; once both
    /// hold the same cards a probe ends at the digest; each becomes a member under the same
    /// view, and a lost probe ends the round all the same.
    #[test]
    fn a_probe_swaps_cards_only_while_digests_differ() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let at = |ms: u64| Now {
            instant: t0 + Duration::from_millis(ms),
            wall_us: 1_000 + ms * 1_000,
        };
        let found: Arc<BTreeSet<u64>> = Arc::new([1, 2].into());
        let mut nodes = [node(), node()];
        let mut changed = [false, false];
        for round in 0..6u64 {
            for me in [1u64, 2] {
                let (first, second) = nodes.split_at_mut(1);
                let (this, other) = if me == 1 {
                    (&mut first[0], &mut second[0])
                } else {
                    (&mut second[0], &mut first[0])
                };
                let now = at(round * 250 + me);
                let round_input = Input::Round {
                    me: Some(me),
                    found: found.clone(),
                    force_sync: false,
                };
                let effects = this.handle(round_input, now, &mut rng);
                let peer = 3 - me;
                assert_eq!(sends(&effects), [(peer, "digest?")], "round {round}");
                let digest = ask(other, Message::DigestRequest, now, &mut rng);
                let equal = matches!(digest, Message::Digest(d) if d == this.digest());
                let mut effects = this.handle(
                    Input::Answer {
                        from: peer,
                        message: digest,
                    },
                    now,
                    &mut rng,
                );
                if equal {
                    // The round ends: its own card may go out if the view changed it, no swap.
                    assert!(
                        sends(&effects).iter().all(|(_, m)| *m == "push"),
                        "equal digests: no swap"
                    );
                } else {
                    assert_eq!(sends(&effects), [(peer, "sync")]);
                    let Some(Effect::Send { message, .. }) = effects.pop() else {
                        unreachable!("the sync")
                    };
                    let cards = ask(other, message, now, &mut rng);
                    assert!(matches!(cards, Message::Cards(_)));
                    effects = this.handle(
                        Input::Answer {
                            from: peer,
                            message: cards,
                        },
                        now,
                        &mut rng,
                    );
                }
                changed[me as usize - 1] |=
                    effects.iter().any(|e| matches!(e, Effect::ViewChanged(_)));
            }
        }
        assert_eq!(changed, [true, true]);
        let [a, b] = &mut nodes;
        let (va, vb) = (
            a.membership.current().unwrap(),
            b.membership.current().unwrap(),
        );
        assert_eq!(va.members(), [1, 2]);
        assert_eq!(va.epoch(), vb.epoch());
        assert_eq!(a.digest(), b.digest());

        // A probe that gets nothing ends the round: the peer is unreachable from here.
        let now = at(2_000);
        let effects = a.handle(
            Input::Round {
                me: Some(1),
                found: found.clone(),
                force_sync: false,
            },
            now,
            &mut rng,
        );
        assert_eq!(sends(&effects), [(2, "digest?")]);
        a.handle(
            Input::Failed {
                peer: 2,
                probe: Probe::Unanswered,
            },
            now,
            &mut rng,
        );
        assert_eq!(a.peers(now.instant)[0].state, None);
    }
}
