//! Membership past one machine, by simulation: N instances' membership code in one process,
//! the servers' own [`Node`] (gossip, membership rules, epochs) through its one way in,
//! [`Node::handle`], driven with virtual time and lost and delayed messages instead of DNS, HTTP
//! and the wall clock: the same digest-then-sync sequence, the same pushes.
//!
//! What the model keeps of the real system:
//! - every round (250 ms, each node with its own phase) a node probes the peers its gossip
//!   chooses; a probe is a digest request and answer, plus a swap of cards when the digests
//!   differ, and any one lost message makes that probe fail, as an HTTP timeout does;
//! - pushes travel one way, `DELAY` late, and are lost like the rest;
//! - DNS names every deployed instance, a crashed one included (as a StatefulSet's headless
//!   Service does while the pod is down: the harder case, where only probes can tell).
//!
//! What it leaves out: the time a probe takes (a round's probes complete within it), CPU and
//! queueing (no overload), and Envoy.
//!
//! It reports, per size and loss rate: messages per member per second while idle, how long
//! until every live member holds the same new view after a join, a leave and a crash, and false
//! removals (a live member removed as down by anyone).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poc_routing_membership::{
    Card, Cards, Change, Effect, Encoding, Input, MemberState, Membership, Message, Node, Now,
    Probe, Timing,
};
use poc_routing_placement::{Epoch, IndexMode, Naming, Placement, PlacementSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One-way delay of a push.
pub const DELAY: Duration = Duration::from_millis(2);
/// How long the idle period is measured.
pub const IDLE: Duration = Duration::from_secs(60);
/// The longest a change may take to converge before it counts as not converging.
const CONVERGE_WITHIN: Duration = Duration::from_secs(90);

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub n: u64,
    pub loss: f64,
    /// Requests (probes, swaps, pushes) sent per member per second, idle.
    pub idle_messages_per_member_s: f64,
    /// From the change to every live member holding the new view; `None`: not within 90 s.
    pub join_converged_ms: Option<u64>,
    pub leave_converged_ms: Option<u64>,
    pub crash_converged_ms: Option<u64>,
    /// Live members removed as down, by any node, over the whole run.
    pub false_removals: u64,
    pub wall_s: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Round(usize),
    Push(usize),
}

struct SimNode {
    me: u64,
    node: Node,
    alive: bool,
}

struct Sim {
    base: Instant,
    t: Duration,
    nodes: Vec<SimNode>,
    dns: Arc<BTreeSet<u64>>,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    /// Pushes in flight, by event sequence number.
    in_flight: HashMap<u64, Cards>,
    seq: u64,
    loss: f64,
    rng: StdRng,
    messages: u64,
    false_removals: u64,
    /// The instance that is leaving, while it drains.
    leaving: Option<u64>,
    timing: Timing,
    rule: Placement,
}

fn rule() -> Placement {
    Placement::new(PlacementSpec::new(IndexMode::Jump, Naming::compose()), [1])
        .expect("a rule with one member")
}

impl Sim {
    /// `n` members, all holding the same view, as a cluster that has been up a while.
    fn new(n: u64, loss: f64, seed: u64) -> Self {
        let timing = Timing::default();
        let rule = rule();
        let base = Instant::now();
        let all: Vec<u64> = (1..=n).collect();
        let dns: Arc<BTreeSet<u64>> = Arc::new(all.iter().copied().collect());
        let view = rule.with_members(all.iter().copied()).expect("a view");
        let members = Arc::new(all.clone());
        let cards: Vec<Arc<Card>> = all
            .iter()
            .map(|&i| {
                Arc::new(Card {
                    instance: i,
                    version: 1,
                    state: MemberState::Member,
                    epoch: Some(view.epoch()),
                    members: members.clone(),
                    previous: None,
                    previous_left: Duration::ZERO,
                    removed: Arc::default(),
                })
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Now {
            instant: base,
            wall_us: 1,
        };
        let nodes = all
            .iter()
            .map(|&i| {
                let membership = Arc::new(Membership::discovered(rule.clone(), timing, None));
                SimNode {
                    me: i,
                    node: Node::seeded(membership, i, dns.clone(), &cards, start, &mut rng),
                    alive: true,
                }
            })
            .collect();
        let mut sim = Sim {
            base,
            t: Duration::ZERO,
            nodes,
            dns,
            events: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            loss,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            messages: 0,
            false_removals: 0,
            leaving: None,
            timing,
            rule,
        };
        for k in 0..sim.nodes.len() {
            let phase = Duration::from_micros(rng.gen_range(0..250_000));
            sim.schedule(phase, Event::Round(k));
        }
        sim
    }

    /// The virtual time: an instant, and a wall clock in µs that starts above the seeded
    /// cards' versions.
    fn now(&self) -> Now {
        Now {
            instant: self.base + self.t,
            wall_us: 1 + self.t.as_micros() as u64,
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) -> u64 {
        self.seq += 1;
        self.events.push(Reverse((self.t + after, self.seq, event)));
        self.seq
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen_bool(self.loss)
    }

    /// Runs events until virtual time `until`.
    fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((t, _, _))) = self.events.peek() {
            if *t > until {
                break;
            }
            let Some(Reverse((t, seq, event))) = self.events.pop() else {
                break;
            };
            self.t = t;
            match event {
                Event::Round(k) => self.round(k),
                Event::Push(to) => {
                    if let Some(cards) = self.in_flight.remove(&seq) {
                        if self.nodes[to].alive && !self.lost() {
                            self.handle(to, Input::Request(Message::Push(cards)));
                        }
                    }
                }
            }
        }
        self.t = until;
    }

    /// Runs until `done` holds (checked every 50 ms) or `within` passes; how long it took.
    fn run_until_converged(
        &mut self,
        within: Duration,
        done: impl Fn(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.t;
        while self.t - start < within {
            self.run_until(self.t + Duration::from_millis(50));
            if done(self) {
                return Some(self.t - start);
            }
        }
        None
    }

    fn round(&mut self, k: usize) {
        if !self.nodes[k].alive {
            return;
        }
        let input = Input::Round {
            me: Some(self.nodes[k].me),
            found: self.dns.clone(),
            force_sync: false,
        };
        self.handle(k, input);
        self.schedule(self.timing.probe_interval, Event::Round(k));
    }

    fn position(&self, instance: u64) -> Option<usize> {
        // Nodes are kept in instance order: instance i is at i - 1.
        let k = usize::try_from(instance.checked_sub(1)?).ok()?;
        (self.nodes.get(k)?.me == instance).then_some(k)
    }

    /// Hands `input` to node `k` (its one way in) and carries out what it asks; returns its
    /// reply, if the input was a request.
    fn handle(&mut self, k: usize, input: Input) -> Option<Message> {
        let now = self.now();
        let effects = self.nodes[k].node.handle(input, now, &mut self.rng);
        let mut reply = None;
        for effect in effects {
            match effect {
                Effect::Send {
                    to,
                    message: Message::Push(cards),
                } => {
                    let Some(j) = self.position(to) else {
                        continue;
                    };
                    self.messages += 1;
                    let seq = self.schedule(DELAY, Event::Push(j));
                    self.in_flight.insert(seq, cards);
                }
                Effect::Send { to, message } => self.exchange(k, to, message),
                Effect::Reply(message) => reply = Some(message),
                Effect::ViewChanged(change) => self.count_false_removals(k, &change),
                Effect::BecameMember | Effect::Refused(_) | Effect::Refuting => {}
            }
        }
        reply
    }

    /// A request from node `k` to instance `to` and its answer, each lost at the loss rate,
    /// as an HTTP request that times out; the answer (or the failure) goes back to `k`.
    fn exchange(&mut self, k: usize, to: u64, message: Message) {
        self.messages += 1;
        let answer = match self.position(to) {
            Some(j) if self.nodes[j].alive && !self.lost() => self
                .handle(j, Input::Request(message))
                .filter(|_| !self.lost()),
            _ => None,
        };
        let input = match answer {
            Some(message) => Input::Answer { from: to, message },
            None => Input::Failed {
                peer: to,
                probe: Probe::Unanswered,
            },
        };
        self.handle(k, input);
    }

    /// Counts the live members node `k`'s view change removed as down.
    fn count_false_removals(&mut self, k: usize, change: &Change) {
        let me = self.nodes[k].me;
        for removed in &change.removed_as_down {
            // A leaving instance whose leaving card has not arrived yet is removed here
            // as down: the right view, reached another way, not a false removal.
            let live = self.position(*removed).is_some_and(|j| self.nodes[j].alive);
            if live && Some(*removed) != self.leaving {
                if std::env::var_os("SIM_DEBUG").is_some() {
                    eprintln!(
                        "t={:?} node {me} removed {removed} as down: {change:?}",
                        self.t
                    );
                }
                self.false_removals += 1;
            }
        }
    }

    /// The epoch every live member should converge on: the live, non-leaving nodes that are
    /// members or joining.
    fn expected_epoch(&self, excluding: &[u64]) -> Epoch {
        let members = self
            .nodes
            .iter()
            .filter(|n| n.alive && !excluding.contains(&n.me))
            .map(|n| n.me);
        self.rule.with_members(members).expect("a view").epoch()
    }

    /// Whether every live node other than `excluding` holds `epoch`.
    fn agree(&self, epoch: Epoch, excluding: &[u64]) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.alive && !excluding.contains(&n.me))
            .all(|n| {
                n.node
                    .membership
                    .current()
                    .is_some_and(|c| c.epoch() == epoch)
            })
    }
}

/// Runs one size at one loss rate: idle, then a join, a leave and a crash.
pub fn run(n: u64, loss: f64, seed: u64) -> Outcome {
    let wall = Instant::now();
    let mut sim = Sim::new(n, loss, seed);
    // Let phases spread, then measure idle traffic.
    sim.run_until(Duration::from_secs(5));
    let before = sim.messages;
    sim.run_until(sim.t + IDLE);
    let idle_messages_per_member_s = (sim.messages - before) as f64 / IDLE.as_secs_f64() / n as f64;

    // A join: instance n + 1 starts, joining, with no cards; DNS names it.
    let new = n + 1;
    let membership = Arc::new(Membership::discovered(sim.rule.clone(), sim.timing, None));
    sim.nodes.push(SimNode {
        me: new,
        node: Node::new(membership, Encoding::Shared),
        alive: true,
    });
    sim.dns = Arc::new(sim.dns.iter().copied().chain([new]).collect());
    let k = sim.nodes.len() - 1;
    sim.schedule(Duration::ZERO, Event::Round(k));
    let epoch = sim.expected_epoch(&[]);
    let join = sim.run_until_converged(CONVERGE_WITHIN, |s| s.agree(epoch, &[]));

    // A leave: one member turns leaving (SIGTERM) and says so at once, as the server's
    // leave() does; once every other member dropped it, it exits and DNS forgets it.
    let leaving = 1 + (n / 2);
    let k = sim.position(leaving).expect("the leaving node");
    sim.leaving = Some(leaving);
    sim.handle(k, Input::Leave);
    let epoch = sim.expected_epoch(&[leaving]);
    let leave = sim.run_until_converged(CONVERGE_WITHIN, |s| s.agree(epoch, &[leaving]));
    sim.nodes[k].alive = false;
    sim.dns = Arc::new(sim.dns.iter().copied().filter(|i| *i != leaving).collect());

    // A crash: one member stops answering and stays in DNS.
    let crashed = 1 + (n / 3);
    let k = sim.position(crashed).expect("the crashed node");
    sim.nodes[k].alive = false;
    let epoch = sim.expected_epoch(&[]);
    let crash = sim.run_until_converged(CONVERGE_WITHIN, |s| s.agree(epoch, &[]));

    Outcome {
        n,
        loss,
        idle_messages_per_member_s,
        join_converged_ms: join.map(|d| d.as_millis() as u64),
        leave_converged_ms: leave.map(|d| d.as_millis() as u64),
        crash_converged_ms: crash.map(|d| d.as_millis() as u64),
        false_removals: sim.false_removals,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulation at a size `cargo test` runs in seconds: the servers' membership code,
    /// through its one entry point, converges after a join, a leave and a crash, removes no
    /// live member under 5% loss, and sends about one probe per member per round while idle.
    #[test]
    fn fifty_members_converge_after_join_leave_and_crash_with_no_false_removal() {
        let o = run(50, 0.05, 7);
        assert!(
            (4.0..5.0).contains(&o.idle_messages_per_member_s),
            "EXPECTED about 4 messages per member per second idle (one probe a round), RECEIVED {o:?}"
        );
        let join = o.join_converged_ms.expect("the join converges");
        assert!(join <= 10_000, "{o:?}");
        let leave = o.leave_converged_ms.expect("the leave converges");
        assert!(leave <= 5_000, "{o:?}");
        let crash = o.crash_converged_ms.expect("the crash converges");
        assert!(
            (30_000..=45_000).contains(&crash),
            "a crash is removed after the 30 s down timeout, not before: {o:?}"
        );
        assert_eq!(o.false_removals, 0, "{o:?}");
    }
}
