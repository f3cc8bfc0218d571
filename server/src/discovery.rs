//! Finding the deployed instances in DNS and asking each for its state.
//!
//! The deployment already publishes who is there; nothing has to keep a count in sync:
//! - **Docker Compose**: the service name (`server`) resolves to every running container, and
//!   Docker's DNS answers the reverse (PTR) query of each address with the container's name,
//!   `poc-routing-server-<n>.<network>`, whatever gaps a scale-down left.
//! - **Kubernetes**: a name starting with `_` is an SRV query, such as
//!   `_http._tcp.server-headless.poc-routing.svc.cluster.local`. The headless Service publishes
//!   every pod, ready or not, as `server-<i>.server-headless...`.
//!
//! Each found instance is then asked for `GET /placement`, which says whether it is joining, a
//! member or leaving, and which view it holds. [`Membership::update`] turns that into the view.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_resolver::config::{NameServerConfigGroup, ResolverOpts};
use hickory_resolver::name_server::{
    GenericConnector, NameServerPool, TokioConnectionProvider, TokioRuntimeProvider,
};
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::xfer::{DnsHandle, DnsRequestOptions};
use poc_routing_placement::{Epoch, Placement};
use poc_routing_wire::PlacementAnswer;

use crate::identity::{own_addresses, Identity, Source};
use crate::membership::{Change, MemberState, Membership, Peer};
use crate::metrics::Metrics;
use crate::rounds::Rounds;

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
        Ok(Self { pool, name, rule })
    }

    /// One query; an unknown name or an empty answer is an empty list, not an error.
    async fn query(&self, name: Name, rtype: RecordType) -> Result<Vec<Record>, String> {
        let mut answers = self.pool.lookup(
            Query::query(name.clone(), rtype),
            DnsRequestOptions::default(),
        );
        match answers.next().await {
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
    pub async fn candidates(&self) -> Result<Vec<Candidate>, String> {
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
            let records = self.query(self.name.clone(), RecordType::SRV).await?;
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
                    let more = self.query(srv.target().clone(), RecordType::A).await?;
                    ips = a_records(&more, srv.target());
                }
                if let Some(ip) = ips.first() {
                    found.insert(index, SocketAddr::new(*ip, srv.port()));
                }
            }
        } else {
            let records = self.query(self.name.clone(), RecordType::A).await?;
            for ip in a_records(&records, &self.name) {
                let IpAddr::V4(v4) = ip else { continue };
                let reverse = Name::from(v4);
                let names = self.query(reverse, RecordType::PTR).await?;
                let index = names.iter().find_map(|r| match r.data() {
                    Some(RData::PTR(ptr)) => self.rule.index_from_hostname(&ptr.0.to_ascii()),
                    _ => None,
                });
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

/// Asks one candidate for its state; an unreachable or confused peer has no state.
async fn probe(http: &reqwest::Client, candidate: Candidate) -> Peer {
    let unknown = Peer {
        instance: candidate.index,
        state: None,
        epoch: None,
        members: Vec::new(),
        previous: None,
    };
    let url = format!("http://{}/placement", candidate.addr);
    let Ok(response) = http.get(url).send().await else {
        return unknown;
    };
    let Ok(answer) = response.json::<PlacementAnswer>().await else {
        return unknown;
    };
    // A peer that is not who DNS says it is (an address reused by another instance) is not
    // trusted with that instance's place.
    if answer.instance.is_some_and(|i| i != candidate.index) {
        return unknown;
    }
    Peer {
        instance: candidate.index,
        state: Some(answer.state),
        epoch: answer.epoch.and_then(|e| e.parse::<Epoch>().ok()),
        members: answer.members,
        previous: answer.previous.and_then(|p| {
            let left = Duration::from_millis(p.window_left_ms);
            Some((p.epoch.parse::<Epoch>().ok()?, p.members, left))
        }),
    }
}

/// The discovery loop and what it needs.
pub struct Discovery {
    pub finder: Finder,
    pub membership: Arc<Membership>,
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    http: reqwest::Client,
    /// One round at a time; each caller waits for one that started after it asked.
    rounds: Rounds,
    /// When this instance, joining, first knew who it is and found member peers.
    settling_since: std::sync::Mutex<Option<Instant>>,
}

impl Discovery {
    pub fn new(
        finder: Finder,
        membership: Arc<Membership>,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(300))
            .build()
            .expect("an HTTP client with timeouts only");
        Self {
            finder,
            membership,
            identity,
            metrics,
            http,
            rounds: Rounds::default(),
            settling_since: std::sync::Mutex::new(None),
        }
    }

    /// Waits for a round that started after this call (the loop's and the leaving check's).
    async fn round(&self) {
        self.rounds.fresh(None, || self.one_round()).await;
    }

    /// A round on behalf of a join routed by an epoch this instance does not hold. Such rounds
    /// start at least 50 ms apart, so however many of these requests come (a forged epoch sent
    /// straight to a server, say), they cost at most 20 extra rounds a second; a request
    /// waits for the next one rather than being refused on an older observation.
    pub async fn refresh(&self) {
        const MIN_GAP: Duration = Duration::from_millis(50);
        self.rounds.fresh(Some(MIN_GAP), || self.one_round()).await;
    }

    async fn one_round(&self) {
        let candidates = match self.finder.candidates().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "discovery: DNS failed; keeping the current view");
                return;
            }
        };
        self.find_identity(&candidates);
        self.membership
            .set_addresses(candidates.iter().map(|c| (c.index, c.addr)).collect());
        let me = self.identity.get();
        let peers = futures::future::join_all(
            candidates
                .iter()
                .filter(|c| Some(c.index) != me)
                .map(|c| probe(&self.http, *c)),
        )
        .await;
        if let (Some(me), MemberState::Joining) = (me, self.membership.state()) {
            if self.settled(me, &peers) {
                // Ready: it knows who it is, has heard from every peer DNS names, and the
                // proxy has had time to learn its address.
                self.membership.set_state(MemberState::Member);
                tracing::info!(instance = me, "member");
            }
        }
        if let Some(change) = self.membership.update(me, peers, Instant::now()) {
            self.report(&change);
        }
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

    /// Whether joining instance `me` may become a member: at once when there are no members
    /// yet (nothing routes anywhere) or when the members still count it (it crashed and came
    /// back: no id moves to it); otherwise once `join_settle` has passed since it first saw
    /// them.
    fn settled(&self, me: u64, peers: &[Peer]) -> bool {
        let members: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.state == Some(MemberState::Member))
            .collect();
        if members.is_empty() || members.iter().any(|p| p.members.contains(&me)) {
            return true;
        }
        let mut since = self
            .settling_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let since = *since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.membership.timing.join_settle
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
        self.membership.set_state(MemberState::Leaving);
        let timing = self.membership.timing;
        let deadline = started + timing.drain_timeout;
        let mut agreed = false;
        while Instant::now() < deadline {
            self.round().await;
            let mine = self.membership.current().map(|c| c.epoch());
            let peers = self.membership.peers();
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
