//! Finding the deployed instances in DNS, and learning their states by gossip.
//!
//! The deployment already publishes who is there; nothing has to keep a count in sync:
//! - **Docker Compose**: the service name (`server`) resolves to every running container, and
//!   Docker's DNS answers the reverse (PTR) query of each address with the container's name,
//!   `poc-routing-server-<n>.<network>`, whatever gaps a scale-down left. The reverse name is
//!   asked once per address, not every round.
//! - **Kubernetes**: a name starting with `_` is an SRV query, such as
//!   `_http._tcp.server-headless.poc-routing.svc.cluster.local`. The headless Service publishes
//!   every pod, ready or not, as `server-<i>.server-headless...`.
//!
//! Answers too large for UDP come over TCP; a truncated answer is an error, never the list.
//!
//! What each instance found is joining, a member or leaving, and which view it holds, comes
//! from the membership gossip ([`poc_routing_membership::gossip`]): one probe per round, cards swapped only when
//! digests differ, changes pushed. [`Membership::update`] turns that into the view.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hickory_resolver::config::{NameServerConfigGroup, ResolverOpts};
use hickory_resolver::name_server::{
    GenericConnector, NameServerPool, TokioConnectionProvider, TokioRuntimeProvider,
};
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::xfer::{DnsHandle, DnsRequestOptions};
use poc_routing_peer::PeerClient;
use poc_routing_placement::{Epoch, Placement};
use poc_routing_wire::{PeerDigest, PeerTable, PreviousView};

use crate::identity::{own_addresses, Identity, Source};
use crate::metrics::Metrics;
use crate::rounds::Rounds;
use crate::wall_us;
use poc_routing_membership::{
    Cards, Change, Effect, Encoding, Input, MemberState, Membership, Message, Node, Now, Peer,
    Probe, Refused,
};

/// How the servers find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// `server` (A + PTR) or `_http._tcp.<headless service>` (SRV).
    pub name: String,
    /// A DNS server to ask instead of the system's (`/etc/resolv.conf`): the local stack's.
    pub server: Option<SocketAddr>,
}

/// One instance found in DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub index: u64,
    pub addr: SocketAddr,
}

/// Asks DNS for the instances. Queries go straight to the name servers: no cache (every round
/// sees what DNS says now) and no local answers (a resolver answers reverse queries for
/// 127.0.0.0/8 itself, which would hide the local stack's records).
pub struct Finder {
    pool: NameServerPool<TokioConnectionProvider>,
    name: Name,
    rule: Placement,
    /// The index each address's reverse name gave (Compose naming), asked once per address:
    /// an address keeps its container while DNS names it. An address that leaves the answer,
    /// or answers as another instance, is asked again.
    ptr_cache: Mutex<HashMap<Ipv4Addr, Option<u64>>>,
}

impl Finder {
    pub fn new(discovery: &DnsDiscovery, rule: Placement) -> std::io::Result<Self> {
        let servers = match discovery.server {
            Some(addr) => NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
            None => {
                let (config, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| std::io::Error::other(format!("read /etc/resolv.conf: {e}")))?;
                NameServerConfigGroup::from(config.name_servers().to_vec())
            }
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_millis(500);
        opts.attempts = 2;
        let pool = NameServerPool::from_config(
            servers,
            opts,
            GenericConnector::new(TokioRuntimeProvider::default()),
        );
        let name = Name::from_ascii(&discovery.name).map_err(|e| {
            std::io::Error::other(format!("DISCOVERY_NAME {:?}: {e}", discovery.name))
        })?;
        // The name is complete as given: no search domains.
        let name = Name::root().append_name(&name).unwrap_or(name);
        Ok(Self {
            pool,
            name,
            rule,
            ptr_cache: Mutex::default(),
        })
    }

    /// Forgets what the reverse name of `ip` gave, so that the next round asks again.
    pub fn forget(&self, ip: IpAddr) {
        if let IpAddr::V4(v4) = ip {
            lock(&self.ptr_cache).remove(&v4);
        }
    }

    /// One query; an unknown name or an empty answer is an empty list, not an error. A
    /// truncated answer is an error: the pool retries over TCP when UDP is truncated (as
    /// Docker's DNS and CoreDNS expect), and if that fails too, what fitted in the UDP reply
    /// is only part of the instances, never the list of them.
    async fn query(
        &self,
        metrics: &Metrics,
        name: Name,
        rtype: RecordType,
    ) -> Result<Vec<Record>, String> {
        metrics.dns_queries.inc();
        let mut answers = self.pool.lookup(
            Query::query(name.clone(), rtype),
            DnsRequestOptions::default(),
        );
        match answers.next().await {
            Some(Ok(response)) if response.truncated() => Err(format!(
                "{rtype} {name}: the answer was truncated and could not be had whole over TCP"
            )),
            Some(Ok(response)) => Ok(response
                .answers()
                .iter()
                .chain(response.additionals())
                .cloned()
                .collect()),
            Some(Err(e)) if is_no_records(&e) => Ok(Vec::new()),
            Some(Err(e)) => Err(format!("{rtype} {name}: {e}")),
            None => Err(format!("{rtype} {name}: no answer")),
        }
    }

    /// The name asked, as given to DNS.
    pub fn name(&self) -> String {
        self.name.to_ascii()
    }

    /// Every instance DNS names now. An error means DNS could not be asked; an empty list
    /// means it answered that there are none.
    pub async fn candidates(&self, metrics: &Metrics) -> Result<Vec<Candidate>, String> {
        let port = self.rule.port();
        let mut found = BTreeMap::new();
        let a_records = |records: &[Record], name: &Name| -> Vec<IpAddr> {
            records
                .iter()
                .filter(|r| r.name() == name)
                .filter_map(|r| match r.data() {
                    Some(RData::A(a)) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect()
        };
        if self.name.to_ascii().starts_with('_') {
            let records = self
                .query(metrics, self.name.clone(), RecordType::SRV)
                .await?;
            for record in &records {
                let Some(RData::SRV(srv)) = record.data() else {
                    continue;
                };
                let Some(index) = self.rule.index_from_hostname(&srv.target().to_ascii()) else {
                    continue;
                };
                // Kubernetes' DNS puts the pods' addresses in the additional section; ask if not.
                let mut ips = a_records(&records, srv.target());
                if ips.is_empty() {
                    let more = self
                        .query(metrics, srv.target().clone(), RecordType::A)
                        .await?;
                    ips = a_records(&more, srv.target());
                }
                if let Some(ip) = ips.first() {
                    found.insert(index, SocketAddr::new(*ip, srv.port()));
                }
            }
        } else {
            let records = self
                .query(metrics, self.name.clone(), RecordType::A)
                .await?;
            let ips = a_records(&records, &self.name);
            let cached: HashMap<Ipv4Addr, Option<u64>> = {
                let mut cache = lock(&self.ptr_cache);
                cache.retain(|ip, _| ips.contains(&IpAddr::V4(*ip)));
                cache.clone()
            };
            for ip in ips {
                let IpAddr::V4(v4) = ip else { continue };
                let index = match cached.get(&v4) {
                    Some(known) => *known,
                    None => {
                        let names = self.query(metrics, Name::from(v4), RecordType::PTR).await?;
                        let index = names.iter().find_map(|r| match r.data() {
                            Some(RData::PTR(ptr)) => {
                                self.rule.index_from_hostname(&ptr.0.to_ascii())
                            }
                            _ => None,
                        });
                        // An address without a name yet (a container Docker is still wiring
                        // up) is asked again next round.
                        if index.is_some() {
                            lock(&self.ptr_cache).insert(v4, index);
                        }
                        index
                    }
                };
                if let Some(index) = index {
                    found.insert(index, SocketAddr::new(ip, port));
                }
            }
        }
        Ok(found
            .into_iter()
            .map(|(index, addr)| Candidate { index, addr })
            .collect())
    }
}

fn is_no_records(e: &hickory_resolver::error::ResolveError) -> bool {
    matches!(
        e.kind(),
        hickory_resolver::error::ResolveErrorKind::NoRecordsFound { .. }
    )
}

/// With a fixed member set there are no discovery rounds: each member's name is resolved with
/// the system resolver every `every` instead, so that `/placement` still says where each
/// member is (the proxy dials addresses, not names).
pub async fn resolve_fixed_members(membership: Arc<Membership>, every: Duration) {
    loop {
        let rule = &membership.rule;
        let mut found = BTreeMap::new();
        for &member in rule.members() {
            if let Some(ip) = crate::identity::system_resolve(rule.host(member))
                .await
                .first()
            {
                found.insert(member, SocketAddr::new(*ip, rule.port()));
            }
        }
        membership.set_addresses(found);
        tokio::time::sleep(every).await;
    }
}

/// How long a probe, a sync or a push may take: a peer slower than this counts as not
/// answering this round (the down timeout, not one slow answer, removes a member).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a probe of a peer got nothing usable.
enum ProbeError {
    /// No usable answer.
    Unanswered,
    /// The TLS handshake failed on the credential: not an instance of this cluster.
    NotOurs,
    /// It answers as another instance than DNS named (an address reused by another instance).
    Impostor,
}

/// The discovery loop and what it needs.
pub struct Discovery {
    pub finder: Finder,
    pub membership: Arc<Membership>,
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    /// Every peer request goes through it (mutual TLS, the peer port).
    peers: PeerClient,
    /// The gossip and the rules that turn it into the view ([`Node`], no I/O).
    node: Mutex<Node>,
    /// Where each instance was found in the last round.
    found: Mutex<BTreeMap<u64, SocketAddr>>,
    /// One round at a time; each caller waits for one that started after it asked.
    rounds: Rounds,
    /// The view lookups under way, one per epoch, shared by every join routed by it
    /// ([`Discovery::look_up_view`]).
    lookups: Mutex<HashMap<Epoch, SharedLookup>>,
    /// When the last lookup started: they start at least [`LOOKUP_GAP`] apart.
    last_lookup: tokio::sync::Mutex<Option<Instant>>,
}

/// A lookup under way: whether it found the view.
type SharedLookup = futures::future::Shared<BoxFuture<'static, bool>>;

/// Takes a lookup out of [`Discovery`]'s table of lookups under way when it ends, however.
struct LookupDone(Arc<Discovery>, Epoch);

impl Drop for LookupDone {
    fn drop(&mut self) {
        lock(&self.0.lookups).remove(&self.1);
    }
}

/// The most view lookups under way at once (distinct epochs); a join routed by yet another
/// unknown epoch is refused without one.
const MAX_LOOKUPS: usize = 8;

/// The least time between the starts of two view lookups: however many joins routed by
/// unknown epochs come (forged ones sent straight to a server, say), they cost at most 20
/// lookups a second.
const LOOKUP_GAP: Duration = Duration::from_millis(50);

/// A peer's JSON answer to `request`; a failed handshake is [`ProbeError::NotOurs`], anything
/// else short of a 2xx with a body of type `T` is [`ProbeError::Unanswered`].
async fn answer_of<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, ProbeError> {
    poc_routing_peer::json(request, crate::PEER_BODY_LIMIT)
        .await
        .map_err(|e| match e {
            poc_routing_peer::PeerError::NotOurs(_) => ProbeError::NotOurs,
            _ => ProbeError::Unanswered,
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Discovery {
    pub fn new(
        finder: Finder,
        membership: Arc<Membership>,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
        peers: PeerClient,
    ) -> Self {
        let node = Mutex::new(Node::new(Arc::clone(&membership), Encoding::Wire));
        Self {
            finder,
            membership,
            identity,
            metrics,
            peers,
            node,
            found: Mutex::default(),
            rounds: Rounds::default(),
            lookups: Mutex::default(),
            last_lookup: tokio::sync::Mutex::default(),
        }
    }

    /// Waits for a round that started after this call (the loop's and the leaving check's).
    async fn round(&self) {
        self.rounds.fresh(None, || self.one_round(false)).await;
    }

    /// A round on behalf of a join routed by an epoch this instance does not hold. Such rounds
    /// start at least 50 ms apart, so however many of these requests come (a forged epoch sent
    /// straight to a server, say), they cost at most 20 extra rounds a second; a request
    /// waits for the next one rather than being refused on an older observation. The round
    /// swaps cards with its peers whatever the digests say: the news may be on its way.
    ///
    /// Returns whether the cards held here changed meanwhile: whether looking again may help.
    pub async fn refresh(&self) -> bool {
        const MIN_GAP: Duration = Duration::from_millis(50);
        let before = lock(&self.node).digest();
        self.rounds
            .fresh(Some(MIN_GAP), || self.one_round(true))
            .await;
        lock(&self.node).digest() != before
    }

    /// Asks every instance found whether it holds, or just held, the view with `epoch`, for a
    /// join routed by it that this instance cannot judge: several instances leaving at once
    /// make views that one peer holds for a few milliseconds, which the proxy may have
    /// fetched from that peer; the owner under such a view may never have held it, and
    /// gossip, which carries each peer's current and previous view, may have moved on. The
    /// first answer whose members give `epoch` is taken ([`Membership::learn_view`]), for the
    /// rest of its window on the peer that gave it.
    ///
    /// Joins routed by the same epoch share one lookup. At most `MAX_LOOKUPS` (8) are under
    /// way at once and they start `LOOKUP_GAP` (50 ms) apart: forged epochs sent straight to a
    /// server cost each instance at most 20 lookups of N - 1 requests a second, and while they
    /// hold every slot a join routed by a view this instance never held is refused (421), as
    /// it was before lookups existed: closed, not open. Returns whether the view is now known.
    pub async fn look_up_view(self: &Arc<Self>, epoch: Epoch) -> bool {
        let lookup = {
            let mut lookups = lock(&self.lookups);
            match lookups.get(&epoch) {
                Some(lookup) => lookup.clone(),
                None if lookups.len() >= MAX_LOOKUPS => return false,
                None => {
                    let discovery = Arc::clone(self);
                    // A task of its own: it ends, and leaves the table, even when every
                    // request waiting for it has gone (or it panicked).
                    let task = tokio::spawn(async move {
                        let _done = LookupDone(Arc::clone(&discovery), epoch);
                        discovery.ask_for_view(epoch).await
                    });
                    let lookup = task.map(|r| r.unwrap_or(false)).boxed().shared();
                    lookups.insert(epoch, lookup.clone());
                    lookup
                }
            }
        };
        lookup.await
    }

    /// One lookup ([`Discovery::look_up_view`]): `GET /peer/view` to every peer at once, until
    /// one answer is taken or every peer has answered or failed.
    async fn ask_for_view(&self, epoch: Epoch) -> bool {
        {
            let mut last = self.last_lookup.lock().await;
            if let Some(wait) = last.map(|at| LOOKUP_GAP.saturating_sub(at.elapsed())) {
                tokio::time::sleep(wait).await;
            }
            *last = Some(Instant::now());
        }
        let me = self.identity.get();
        let peers: Vec<SocketAddr> = lock(&self.found)
            .iter()
            .filter(|(index, _)| Some(**index) != me)
            .map(|(_, addr)| *addr)
            .collect();
        let path = format!("/peer/view?epoch={epoch}");
        let mut answers: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|addr| {
                self.metrics.sent("view");
                let request = self.peers.get(addr.ip(), &path).timeout(PROBE_TIMEOUT);
                answer_of::<Option<PreviousView>>(request)
            })
            .collect();
        while let Some(answer) = answers.next().await {
            let Ok(Some(view)) = answer else {
                continue;
            };
            if view.epoch.parse::<Epoch>().ok() != Some(epoch) {
                continue;
            }
            let left = Duration::from_millis(view.window_left_ms);
            if self
                .membership
                .learn_view(epoch, &view.members, left, Instant::now())
            {
                tracing::info!(%epoch, members = ?view.members, "learnt a view a peer held");
                return true;
            }
        }
        false
    }

    /// Hands `input` to the membership state machine, now.
    fn handle(&self, input: Input) -> Vec<Effect> {
        let now = Now {
            instant: Instant::now(),
            wall_us: wall_us(),
        };
        lock(&self.node).handle(input, now, &mut rand::thread_rng())
    }

    /// One round: ask DNS, then let the state machine probe (digests, and cards where they
    /// differ) and compute the view; returns when every probe of the round has ended.
    async fn one_round(&self, force_sync: bool) {
        let candidates = match self.finder.candidates(&self.metrics).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "discovery: DNS failed; keeping the current view");
                return;
            }
        };
        self.find_identity(&candidates);
        let found: BTreeMap<u64, SocketAddr> =
            candidates.iter().map(|c| (c.index, c.addr)).collect();
        self.membership.set_addresses(found.clone());
        *lock(&self.found) = found.clone();
        let effects = self.handle(Input::Round {
            me: self.identity.get(),
            found: Arc::new(found.keys().copied().collect()),
            force_sync,
        });
        self.carry_out(effects).await;
    }

    /// Carries out what the state machine asked: pushes are sent without waiting, reports are
    /// logged and counted, and each request is sent and its answer (or its failure) handed
    /// back, until nothing more is asked. The reply to a peer's request, if any, is returned.
    fn carry_out(&self, effects: Vec<Effect>) -> BoxFuture<'_, Option<Message>> {
        let (reply, requests) = self.apply(effects);
        async move {
            let exchanges = requests
                .into_iter()
                .map(|(to, message)| self.exchange(to, message));
            futures::future::join_all(exchanges).await;
            reply
        }
        .boxed()
    }

    /// The part of [`Discovery::carry_out`] that needs no waiting: returns the reply and the
    /// requests to send.
    fn apply(&self, effects: Vec<Effect>) -> (Option<Message>, Vec<(u64, Message)>) {
        let mut reply = None;
        let mut requests = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send {
                    to,
                    message: Message::Push(Cards::Wire(card)),
                } => self.push(to, card),
                Effect::Send { to, message } => requests.push((to, message)),
                Effect::Reply(message) => reply = Some(message),
                Effect::ViewChanged(change) => self.report(&change),
                Effect::BecameMember => {
                    tracing::info!(instance = self.identity.get(), "member")
                }
                Effect::Refused(refused) => self.count_refused(&refused),
                Effect::Refuting => {
                    self.metrics.refutations.inc();
                    tracing::warn!("a card about this instance, newer than its own, arrived; writing a newer one (refutation)");
                }
            }
        }
        (reply, requests)
    }

    /// Sends one request to a peer and hands its answer (or its failure) back.
    async fn exchange(&self, to: u64, message: Message) {
        let input = match self.request(to, message).await {
            Ok(answer) => Input::Answer {
                from: to,
                message: answer,
            },
            Err(probe) => Input::Failed { peer: to, probe },
        };
        let effects = self.handle(input);
        self.carry_out(effects).await;
    }

    /// A digest request or a sync, over the peer plane: the peer's answer as a [`Message`].
    async fn request(&self, to: u64, message: Message) -> Result<Message, Probe> {
        let Some(addr) = lock(&self.found).get(&to).copied() else {
            return Err(Probe::Unanswered);
        };
        let outcome = match message {
            Message::DigestRequest => {
                self.metrics.sent("digest");
                let request = self
                    .peers
                    .get(addr.ip(), "/peer/digest")
                    .timeout(PROBE_TIMEOUT);
                answer_of::<PeerDigest>(request).await.and_then(|d| {
                    if d.instance.is_some_and(|i| i != to) {
                        return Err(ProbeError::Impostor);
                    }
                    // A digest that is not hexadecimal is not an answer.
                    u64::from_str_radix(&d.digest, 16)
                        .map(Message::Digest)
                        .map_err(|_| ProbeError::Unanswered)
                })
            }
            Message::Sync(Cards::Wire(table)) => {
                self.metrics.sent("sync");
                let request = self
                    .peers
                    .post(addr.ip(), "/peer/sync")
                    .timeout(PROBE_TIMEOUT)
                    .json(&table);
                answer_of::<PeerTable>(request).await.and_then(|t| {
                    if t.from.is_some_and(|i| i != to) {
                        return Err(ProbeError::Impostor);
                    }
                    Ok(Message::Cards(Cards::Wire(t)))
                })
            }
            // Nothing else is asked of a peer over the wire.
            _ => Err(ProbeError::Unanswered),
        };
        outcome.map_err(|e| match e {
            ProbeError::Unanswered => Probe::Unanswered,
            ProbeError::NotOurs => Probe::NotOurs,
            ProbeError::Impostor => {
                self.finder.forget(addr.ip());
                Probe::Unanswered
            }
        })
    }

    /// Sends this instance's changed card to a peer, without waiting: a lost push is carried
    /// by the next sync rounds.
    fn push(&self, to: u64, card: PeerTable) {
        let Some(addr) = lock(&self.found).get(&to).copied() else {
            return;
        };
        self.metrics.sent("push");
        let request = self
            .peers
            .post(addr.ip(), "/peer/push")
            .timeout(PROBE_TIMEOUT)
            .json(&card);
        tokio::spawn(async move {
            let _ = request.send().await;
        });
    }

    /// A peer's request, handled at once; pushes it causes go out meanwhile.
    fn answer(&self, request: Message) -> Option<Message> {
        let (reply, requests) = self.apply(self.handle(Input::Request(request)));
        debug_assert!(requests.is_empty(), "a request only ever causes pushes");
        reply
    }

    /// A peer's `/peer/sync`: takes its cards, answers with every card held here.
    pub fn on_sync(&self, table: PeerTable) -> PeerTable {
        match self.answer(Message::Sync(Cards::Wire(table))) {
            Some(Message::Cards(Cards::Wire(all))) => all,
            _ => unreachable!("a sync is answered with the cards held (wire encoding)"),
        }
    }

    /// A peer's `/peer/push`: takes its cards.
    pub fn on_push(&self, table: PeerTable) -> PeerDigest {
        self.answer(Message::Push(Cards::Wire(table)));
        self.digest()
    }

    /// Counts (and logs at debug) what a peer's cards held that was refused or cut.
    fn count_refused(&self, refused: &Refused) {
        for (reason, n) in refused.counts() {
            if n > 0 {
                self.metrics
                    .peer_refused
                    .get_or_create(&crate::metrics::ReasonLabel { reason })
                    .inc_by(u64::from(n));
                tracing::debug!(reason, count = n, "peer cards refused or cut");
            }
        }
    }

    /// `/peer/digest`: the digest of every card held here.
    pub fn digest(&self) -> PeerDigest {
        PeerDigest {
            instance: self.identity.get(),
            digest: format!("{:016x}", lock(&self.node).digest()),
        }
    }

    /// Where each instance DNS named was found in the last round.
    pub fn found(&self) -> BTreeMap<u64, SocketAddr> {
        lock(&self.found).clone()
    }

    /// What this instance sees of each peer now (`/placement`'s `peers`).
    pub fn peer_states(&self) -> Vec<Peer> {
        lock(&self.node).peers(Instant::now())
    }

    /// Until this instance knows its index: the one candidate whose address is one of ours.
    fn find_identity(&self, candidates: &[Candidate]) {
        if self.identity.get().is_some() {
            return;
        }
        let own = own_addresses();
        let mine: Vec<u64> = candidates
            .iter()
            .filter(|c| own.contains(&c.addr.ip()))
            .map(|c| c.index)
            .collect();
        if let [index] = mine.as_slice() {
            self.identity.set(*index);
            tracing::info!(instance = index, source = ?Source::Dns, "identity found");
        }
    }

    /// Logs a member change and updates the metrics it moves.
    fn report(&self, change: &Change) {
        self.metrics.epoch_changes.inc();
        self.metrics.members.set(change.members.len() as i64);
        tracing::info!(
            from = ?change.from.map(|e| e.to_string()),
            to = ?change.to.map(|e| e.to_string()),
            members = ?change.members,
            removed_as_down = ?change.removed_as_down,
            "placement epoch changed"
        );
        if !change.removed_as_down.is_empty() {
            tracing::warn!(
                removed = ?change.removed_as_down,
                down_timeout_s = self.membership.timing.down_timeout.as_secs_f64(),
                "members down for longer than the down timeout (or dropped by every peer) were removed; their clients move"
            );
        }
        let mismatch = self.membership.replicas_mismatch();
        self.metrics.replicas_mismatch.set(i64::from(mismatch));
        if mismatch {
            tracing::warn!(
                replicas = self.membership.expected_replicas,
                members = change.members.len(),
                "REPLICAS disagrees with the deployed members; REPLICAS is ignored while discovery is on"
            );
        }
    }

    /// Probes forever, every `probe_interval`.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.membership.timing.probe_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.round().await;
        }
    }

    /// Leaves the member set: announces `leaving`, waits until every member peer holds a view
    /// without this instance (at most `drain_timeout`), then serves `drain_grace` longer for
    /// joins already routed. Returns when the server may stop.
    pub async fn leave(&self) {
        let started = Instant::now();
        // Leaving, said to every peer at once.
        let effects = self.handle(Input::Leave);
        self.carry_out(effects).await;
        let timing = self.membership.timing;
        let deadline = started + timing.drain_timeout;
        let mut agreed = false;
        while Instant::now() < deadline {
            self.round().await;
            let mine = self.membership.current().map(|c| c.epoch());
            let peers = self.peer_states();
            let members: Vec<&Peer> = peers
                .iter()
                .filter(|p| p.state == Some(MemberState::Member))
                .collect();
            if members.iter().all(|p| p.epoch == mine) {
                agreed = true;
                break;
            }
            tokio::time::sleep(timing.probe_interval).await;
        }
        let waited = started.elapsed();
        if agreed {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                grace_ms = timing.drain_grace.as_millis() as u64,
                "leaving: every member holds the new view; serving the grace period"
            );
        } else {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "leaving: not every member confirmed the new view within the drain timeout"
            );
        }
        tokio::time::sleep(timing.drain_grace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::rdata::{A, PTR};
    use poc_routing_placement::{IndexMode, Naming, PlacementSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The answer of a DNS server with 60 instances `poc-routing-server-<i>` at 127.0.8.<i>.
    fn answer(query: &Message) -> Message {
        let mut response = Message::new();
        response
            .set_id(query.id())
            .set_message_type(MessageType::Response);
        let question = query.queries()[0].clone();
        let name = question.name().clone();
        if question.query_type() == RecordType::A {
            for i in 1..=60u8 {
                let ip = Ipv4Addr::new(127, 0, 8, i);
                response.add_answer(Record::from_rdata(name.clone(), 600, RData::A(A(ip))));
            }
        } else {
            let i = name.to_ascii().split('.').next().unwrap().to_owned();
            let target = Name::from_ascii(format!("poc-routing-server-{i}.net.")).unwrap();
            response.add_answer(Record::from_rdata(
                name.clone(),
                600,
                RData::PTR(PTR(target)),
            ));
        }
        response.add_query(question);
        response
    }

    /// A DNS server that truncates every A answer over UDP, and serves TCP only if `tcp`.
    async fn server(tcp: bool) -> SocketAddr {
        // A port free for both UDP and TCP (the TCP listener is bound, and dropped, when
        // `tcp` is false, so that nothing answers over TCP).
        let (udp, listener) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(l) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, l);
            }
        };
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..len]).unwrap();
                let mut response = answer(&query);
                if query.queries()[0].query_type() == RecordType::A {
                    response.take_answers();
                    response.set_truncated(true);
                }
                udp.send_to(&response.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        if tcp {
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        while let Ok(len) = stream.read_u16().await {
                            let mut buf = vec![0u8; usize::from(len)];
                            stream.read_exact(&mut buf).await.unwrap();
                            let bytes = answer(&Message::from_vec(&buf).unwrap()).to_vec().unwrap();
                            stream.write_u16(bytes.len() as u16).await.unwrap();
                            stream.write_all(&bytes).await.unwrap();
                        }
                    });
                }
            });
        }
        addr
    }

    fn finder(addr: SocketAddr) -> Finder {
        let rule =
            Placement::new(PlacementSpec::new(IndexMode::Hash, Naming::compose()), [1]).unwrap();
        let discovery = DnsDiscovery {
            name: "server".into(),
            server: Some(addr),
        };
        Finder::new(&discovery, rule).unwrap()
    }

    #[tokio::test]
    async fn a_truncated_answer_is_asked_again_over_tcp_and_never_taken_as_the_list() {
        let metrics = Metrics::default();
        let whole = finder(server(true).await)
            .candidates(&metrics)
            .await
            .unwrap();
        assert_eq!(whole.len(), 60, "every instance, over TCP");
        assert_eq!(whole[0].index, 1);
        // The reverse names are asked once per address, not every round.
        let asked = metrics.dns_queries.get();
        let finder_again = finder(server(true).await);
        finder_again.candidates(&metrics).await.unwrap();
        let first = metrics.dns_queries.get() - asked;
        finder_again.candidates(&metrics).await.unwrap();
        let second = metrics.dns_queries.get() - asked - first;
        assert_eq!((first, second), (61, 1));

        let error = finder(server(false).await)
            .candidates(&metrics)
            .await
            .unwrap_err();
        assert!(
            error.contains("truncated") || error.contains("A server"),
            "{error}"
        );
    }
}
