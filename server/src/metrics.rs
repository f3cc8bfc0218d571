//! Prometheus metrics, one registry per application (no globals, so tests can run many apps in
//! one process).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    /// One of [`method_label`]'s: a client's own method names add no series.
    pub method: &'static str,
    pub status: u16,
}

/// The method label of a request: the methods this API answers, and `other` for the rest.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Why the peer plane or a peer message was refused. A fixed set, since a label is a
/// `&'static str`: the listener's ([`poc_routing_peer::Refused`]), the gossip's
/// ([`poc_routing_membership::Refused`]) and the hand-off's (`handoff_not_member`, `handoff_not_sender`,
/// `handoff_invalid`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn duration_histogram() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Membership messages sent, by kind: `digest` (the probe), `sync`, `push`.
    pub gossip: Family<KindLabel, Counter>,
    pub dns_queries: Counter,
    pub joins: Counter,
    pub misdirected: Counter,
    pub wheres: Counter,
    pub epoch_changes: Counter,
    pub previous_epoch_joins: Counter,
    pub members: Gauge,
    pub replicas_mismatch: Gauge,
    pub errors: Family<CodeLabel, Counter>,
    pub durations: Family<RequestLabels, Histogram>,
    pub handoff_sent: Counter,
    pub handoff_received: Counter,
    pub handoff_failed: Counter,
    pub handoff_pending: Gauge,
    pub handoff_undelivered: Counter,
    pub registrations_evicted: Counter,
    pub sessions_open: Gauge,
    pub sessions_moved: Counter,
    pub sessions_refused: Counter,
    /// Connections and peer messages refused, by reason.
    pub peer_refused: Family<ReasonLabel, Counter>,
    /// Cards about this instance newer than its own that it answered with a newer one.
    pub refutations: Counter,
    /// The replicas ([`crate::replicas`]).
    pub replication: ReplicationMetrics,
}

/// What the replication of registrations to their backups does.
#[derive(Default)]
pub struct ReplicationMetrics {
    /// Replicas of other instances' registrations held here.
    pub held: Gauge,
    /// Registrations owned here changed and not yet acknowledged by their backup.
    pub pending: Gauge,
    pub sent: Counter,
    pub failed: Counter,
    pub received: Counter,
    pub promoted: Counter,
    pub handed_on: Counter,
    pub recovered: Counter,
    pub evicted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("poc");
        let joins = Counter::default();
        let misdirected = Counter::default();
        let wheres = Counter::default();
        let epoch_changes = Counter::default();
        let previous_epoch_joins = Counter::default();
        let members = Gauge::default();
        let replicas_mismatch = Gauge::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let gossip = Family::<KindLabel, Counter>::default();
        let dns_queries = Counter::default();
        registry.register(
            "gossip_messages",
            "Membership messages this instance sent, by kind (digest: the probe; sync; push)",
            gossip.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries this instance's discovery made",
            dns_queries.clone(),
        );
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register("joins", "Clients joined on this instance", joins.clone());
        registry.register(
            "misdirected",
            "Join requests refused because another instance owns the client",
            misdirected.clone(),
        );
        registry.register("where", "Placement look-ups answered", wheres.clone());
        registry.register(
            "epoch_changes",
            "Times this instance's member list (and so its placement epoch) changed",
            epoch_changes.clone(),
        );
        registry.register(
            "previous_epoch_joins",
            "Joins served under the previous epoch, inside the transition window",
            previous_epoch_joins.clone(),
        );
        registry.register(
            "members",
            "Instances in this instance's current member list",
            members.clone(),
        );
        registry.register(
            "replicas_mismatch",
            "1 when REPLICAS is set and disagrees with the discovered member count",
            replicas_mismatch.clone(),
        );
        registry.register("errors", "Error responses by machine code", errors.clone());
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            durations.clone(),
        );
        let handoff_sent = Counter::default();
        let handoff_received = Counter::default();
        let handoff_failed = Counter::default();
        let handoff_pending = Gauge::default();
        let handoff_undelivered = Counter::default();
        let registrations_evicted = Counter::default();
        registry.register(
            "handoff_sent",
            "Registrations handed off to their new owner and acknowledged",
            handoff_sent.clone(),
        );
        registry.register(
            "handoff_received",
            "Registrations received from a previous owner and merged here",
            handoff_received.clone(),
        );
        registry.register(
            "handoff_failed",
            "Hand-off batches not acknowledged (sent again later)",
            handoff_failed.clone(),
        );
        registry.register(
            "handoff_pending",
            "Registrations held here for clients another instance owns, not yet acknowledged",
            handoff_pending.clone(),
        );
        registry.register(
            "handoff_undelivered",
            "Registrations a leaving instance could not hand off before it exited (lost)",
            handoff_undelivered.clone(),
        );
        registry.register(
            "registrations_evicted",
            "Registrations evicted because the registry was full (REGISTRY_CAPACITY)",
            registrations_evicted.clone(),
        );
        let sessions_open = Gauge::default();
        let sessions_moved = Counter::default();
        registry.register(
            "sessions_open",
            "WebSocket sessions open on this instance",
            sessions_open.clone(),
        );
        registry.register(
            "sessions_moved",
            "WebSocket sessions closed here because their client moved to another owner",
            sessions_moved.clone(),
        );
        let sessions_refused = Counter::default();
        registry.register(
            "sessions_refused",
            "WebSocket sessions refused because this instance held MAX_SESSIONS",
            sessions_refused.clone(),
        );
        let peer_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "peer_refused",
            "Peer connections and peer messages (or parts of them) refused, by reason",
            peer_refused.clone(),
        );
        let refutations = Counter::default();
        registry.register(
            "refutations",
            "Cards about this instance, newer than its own, that it answered with a newer one",
            refutations.clone(),
        );
        let replication = ReplicationMetrics::default();
        let r = &replication;
        for (name, help, metric) in [
            ("replicas_held", "Replicas of registrations other instances own, held here as their backup", &r.held),
            ("replication_pending", "Registrations owned here that changed and are not yet acknowledged by their backup", &r.pending),
        ] {
            registry.register(name, help, metric.clone());
        }
        for (name, help, metric) in [
            ("replicated", "Registrations sent to their backup and acknowledged", &r.sent),
            ("replication_failed", "Replica batches not acknowledged by their backup (sent again later)", &r.failed),
            ("replicas_received", "Replicas received from their owner and merged here", &r.received),
            ("replicas_promoted", "Replicas that became registrations here because this instance owns their client now (its owner was removed)", &r.promoted),
            ("replicas_handed_on", "Replicas this instance is no longer the backup of, handed to their owner (merged there)", &r.handed_on),
            ("replicas_recovered", "Registrations a restarted instance got back from the replicas its earlier life had sent", &r.recovered),
            ("replicas_evicted", "Replicas evicted to make room (REGISTRY_CAPACITY)", &r.evicted),
        ] {
            registry.register(name, help, metric.clone());
        }
        Self {
            replication,
            sessions_refused,
            peer_refused,
            refutations,
            sessions_open,
            sessions_moved,
            handoff_sent,
            handoff_received,
            handoff_failed,
            handoff_pending,
            handoff_undelivered,
            registrations_evicted,
            registry,
            gossip,
            dns_queries,
            joins,
            misdirected,
            wheres,
            epoch_changes,
            previous_epoch_joins,
            members,
            replicas_mismatch,
            errors,
            durations,
        }
    }
}

impl Metrics {
    /// Counts one thing refused on the peer plane.
    pub fn refused(&self, reason: &'static str) {
        self.peer_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one membership message sent.
    pub fn sent(&self, kind: &'static str) {
        self.gossip.get_or_create(&KindLabel { kind }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
