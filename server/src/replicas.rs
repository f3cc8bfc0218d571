//! Nothing lost when an instance crashes: every registration has a replica on its backup.
//!
//! - **Where.** A client's backup is the instance that would own it if its owner were gone
//!   ([`Placement::backup`]): its owner under the same rule over the other members. Every
//!   instance computes it alike, and when an owner is removed (down past `DOWN_TIMEOUT_S`) and
//!   nothing else changed, each of its clients' new owner is exactly its backup, which already
//!   holds the record.
//! - **What.** The replica is the registration itself ([`Registration`], the mergeable record
//!   of [`crate::registry`]), so the hand-off's merge rules apply unchanged: a replica that
//!   arrives twice, late or out of order changes nothing it should not.
//! - **When** ([`Replication`]). A join, a hand-off received, or a replica promoted or
//!   recovered marks the client's record changed. `async` sends the changed records of the
//!   clients this instance owns to their backups every [`ASYNC_WINDOW`], in batches; `sync`
//!   also sends a join's record before the join answers, waiting at most [`SYNC_WAIT`] (past
//!   that it stays pending, as in `async`). After an epoch change, once the view has held for
//!   [`SETTLE`], every owned record goes to its backup under the new view.
//! - **After an epoch change** (once the view has held for [`SETTLE`]) each replica held here
//!   is looked at again: one this instance
//!   still backs up, for the owner that sent it, stays; one whose client it owns now is
//!   **promoted** (merged into the
//!   registry: its owner was removed); any other goes into the registry as a registration held
//!   for a client owned elsewhere, and the hand-off delivers it to its owner, where it is
//!   merged: a copy the owner already has changes nothing, and one it lacks (it crashed before
//!   its new backup had the record) is not lost.
//! - **Restart.** A restarted instance starts with an empty registry and no replicas. Once it
//!   is a member it asks every member for the replicas its earlier life sent them (`GET
//!   /peer/replicas`) and merges them into its registry, and asks each to send it again the
//!   replicas it backs up (`POST /peer/resync`). A new instance (one the members did not count
//!   before it joined) has no replicas anywhere, and asks nobody. It serves meanwhile: a join served before its record is
//!   back starts a counter of its own, and the merge keeps both, so serving first loses
//!   nothing and makes no client wait.
//! - **What is lost** when an owner and its backup die together: the clients owned by one and
//!   backed up by the other; in `async`, also the joins of the last [`ASYNC_WINDOW`] before a
//!   crash. A leaving instance drops its replicas: their owners send them to the new backups.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use poc_routing_placement::{ClientId, Epoch, Placement};
use poc_routing_wire::{HandOff, HandOffAck, MemberState, Registration, ReplicaPage, Resync};

use crate::config::Replication;
use crate::error::ApiError;
use crate::handoff::{HandOffs, BATCH};
use crate::registry::merge;

/// How long a changed record may wait before it is sent to its backup (`async`): the most
/// joins a crash can lose are this window's.
pub const ASYNC_WINDOW: Duration = Duration::from_millis(100);

/// How long a join waits for its backup's acknowledgement (`sync`) before it answers anyway.
pub const SYNC_WAIT: Duration = Duration::from_millis(500);

/// How long a replica batch or a page of replicas may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Replicas are looked at again this often even without an epoch change (one that arrived
/// from an owner whose view was ahead of or behind this instance's).
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// After an epoch change, the replicas are looked at again, and every owned record sent to its
/// backup, once the view has held this long: while instances join or leave one after another
/// (each a new epoch), that work waits for the last of them instead of competing with the
/// membership's own convergence for the CPU, once per epoch.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// A backup that did not acknowledge is not sent to again before this.
const BACKOFF: Duration = Duration::from_secs(1);

/// How long a restarted instance keeps asking members that did not answer for its replicas.
const RECOVER_FOR: Duration = Duration::from_secs(30);

/// One replica, and the instance that sent it (its owner then).
struct Held {
    registration: Registration,
    origin: u64,
}

/// The records owned here that their backup has not acknowledged since they changed.
#[derive(Default)]
struct Dirty {
    ids: BTreeSet<String>,
    /// Every record owned here (after an epoch change, or when `ids` grew past the registry's
    /// capacity).
    all: bool,
}

/// The restart's recovery: which members answered, since when it runs.
#[derive(Default)]
struct Recovery {
    answered: BTreeSet<u64>,
    since: Option<Instant>,
    done: bool,
}

impl Recovery {
    /// Called with each view seen: the first decides. An instance the first view it sees
    /// already counts as a member is a restart (the members kept its place), or one of a
    /// deployment starting: it asks for its replicas. One that joins members who do not count
    /// it is new, and has no replicas anywhere: nothing to ask.
    fn first_view(&mut self, me: u64, current: &Placement) {
        if self.since.is_none() && !self.done && !current.is_member(me) {
            self.done = true;
        }
    }
}

/// The replicas held here, and the replication of the registrations owned here.
pub struct Replicas {
    mode: Replication,
    store: Mutex<LruCache<String, Held>>,
    dirty: Mutex<Dirty>,
    /// Backups that did not acknowledge, and when.
    failing: Mutex<HashMap<u64, Instant>>,
    recovery: Mutex<Recovery>,
    /// The hand-off, and through it the registry, the views and the peer client: replicas
    /// are admitted as hand-offs are, and leave through it.
    handoffs: Arc<HandOffs>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The backup of `id` under `placement` (`None`: a single member, or an id it cannot place).
fn backup_of(placement: &Placement, id: &str) -> Option<u64> {
    let id = ClientId::try_from(id).ok()?;
    placement.backup(&id).ok().flatten()
}

impl Replicas {
    /// Replicas beside `handoffs`, holding as many as its registry does.
    pub fn new(mode: Replication, handoffs: Arc<HandOffs>) -> Self {
        let capacity = NonZeroUsize::new(handoffs.registry.capacity()).unwrap_or(NonZeroUsize::MIN);
        Self {
            mode,
            store: Mutex::new(LruCache::new(capacity)),
            dirty: Mutex::default(),
            failing: Mutex::default(),
            recovery: Mutex::default(),
            handoffs,
        }
    }

    pub fn mode(&self) -> Replication {
        self.mode
    }

    /// The records of `ids` changed here: each goes to its backup (if this instance owns it).
    pub fn changed<I: IntoIterator<Item = String>>(&self, ids: I) {
        let capacity = self.handoffs.registry.capacity();
        let mut dirty = lock(&self.dirty);
        if dirty.all {
            return;
        }
        dirty.ids.extend(ids);
        if dirty.ids.len() > capacity {
            // More than the registry holds: a pass over the registry is cheaper, and bounded.
            dirty.ids.clear();
            dirty.all = true;
        }
    }

    /// Registrations owned here not yet acknowledged by their backup since they changed (an
    /// upper bound while a pass over every record is due).
    pub fn pending(&self) -> u64 {
        let dirty = lock(&self.dirty);
        if dirty.all {
            self.handoffs.registry.snapshot(0).1 as u64
        } else {
            dirty.ids.len() as u64
        }
    }

    /// The ids of the replicas held here.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.store).iter().map(|(id, _)| id.clone()).collect()
    }

    /// Replicas held here.
    pub fn held(&self) -> u64 {
        lock(&self.store).len() as u64
    }

    /// Runs the replication until the process ends: sends changed records every
    /// [`ASYNC_WINDOW`], looks at the replicas again after an epoch change, and recovers a
    /// restarted instance's records.
    pub async fn run(self: Arc<Self>) {
        let mut last_epoch: Option<Epoch> = None;
        let mut changed_at = Instant::now();
        let mut settled = true;
        let mut last_check = Instant::now();
        loop {
            tokio::time::sleep(ASYNC_WINDOW).await;
            let (Some(me), Some(current)) = (
                self.handoffs.identity.get(),
                self.handoffs.membership.current(),
            ) else {
                continue;
            };
            if self.handoffs.membership.state() == MemberState::Leaving {
                // Owned nowhere after it leaves: their owners send them to the new backups.
                lock(&self.store).clear();
                self.handoffs.metrics.replication.held.set(0);
                continue;
            }
            lock(&self.recovery).first_view(me, &current);
            let epoch = current.epoch();
            if last_epoch != Some(epoch) {
                last_epoch = Some(epoch);
                changed_at = Instant::now();
                settled = false;
            }
            if !settled && changed_at.elapsed() >= SETTLE {
                settled = true;
                lock(&self.dirty).all = true;
                last_check = Instant::now();
                self.recheck(me, &current);
            } else if settled && last_check.elapsed() >= RECHECK_EVERY {
                last_check = Instant::now();
                self.recheck(me, &current);
            }
            if self.handoffs.membership.state() == MemberState::Member {
                self.recover(me, &current).await;
            }
            self.send_changed(me, &current).await;
        }
    }

    /// Takes a batch of replicas from their owner, if [`HandOffs::admit`] admits it.
    pub fn receive(&self, batch: HandOff, sender: IpAddr) -> Result<u64, ApiError> {
        self.handoffs.admit(&batch, sender, "replica batch")?;
        let count = batch.registrations.len() as u64;
        let mut evicted = 0;
        {
            let mut store = lock(&self.store);
            for r in batch.registrations {
                if let Some(held) = store.get_mut(&r.client_id) {
                    merge(&mut held.registration, &r);
                    held.origin = batch.from;
                    continue;
                }
                let held = Held {
                    origin: batch.from,
                    registration: r,
                };
                if store
                    .push(held.registration.client_id.clone(), held)
                    .is_some()
                {
                    evicted += 1;
                }
            }
            self.handoffs
                .metrics
                .replication
                .held
                .set(store.len() as i64);
        }
        self.handoffs.metrics.replication.received.inc_by(count);
        if evicted > 0 {
            self.handoffs.metrics.replication.evicted.inc_by(evicted);
            tracing::warn!(
                count = evicted,
                "replicas full: the least recently replicated were evicted (REGISTRY_CAPACITY)"
            );
        }
        Ok(count)
    }

    /// `GET /peer/replicas?origin=N&after=ID`: the replicas `origin` sent here, in id order,
    /// [`BATCH`] at most, after `after`.
    pub fn page(&self, origin: u64, after: Option<&str>) -> Result<ReplicaPage, ApiError> {
        let instance = self
            .handoffs
            .identity
            .get()
            .ok_or(ApiError::IdentityUnknown)?;
        let store = lock(&self.store);
        let mut ids: Vec<&String> = store
            .iter()
            .filter(|(id, held)| held.origin == origin && after.is_none_or(|a| id.as_str() > a))
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        let more = ids.len() > BATCH;
        ids.truncate(BATCH);
        let next = more.then(|| ids.last().map(|id| id.to_string())).flatten();
        let registrations = ids
            .into_iter()
            .filter_map(|id| store.peek(id).map(|h| h.registration.clone()))
            .collect();
        Ok(ReplicaPage {
            instance,
            registrations,
            next,
        })
    }

    /// `POST /peer/resync` from `from` (admitted by [`HandOffs::admit_sender`]): it started
    /// again, so every record owned here that it backs up is sent to it again. Returns how
    /// many.
    pub fn resync(&self, from: u64, sender: IpAddr) -> Result<u64, ApiError> {
        self.handoffs.admit_sender(from, sender)?;
        let (Some(me), Some(current)) = (
            self.handoffs.identity.get(),
            self.handoffs.membership.current(),
        ) else {
            return Ok(0);
        };
        let ids: Vec<String> = self
            .handoffs
            .registry
            .ids()
            .into_iter()
            .filter(|id| {
                crate::handoff::owner(&current, id) == Some(me)
                    && backup_of(&current, id) == Some(from)
            })
            .collect();
        let count = ids.len() as u64;
        lock(&self.failing).remove(&from);
        self.changed(ids);
        Ok(count)
    }

    /// Whether this instance is still reading back, after a restart, the records its earlier
    /// life replicated (app mode serves no key it holds no record of meanwhile: its state may
    /// be among them).
    pub fn recovering(&self) -> bool {
        !lock(&self.recovery).done
    }

    /// The replica of `id` held here, taken out of the replicas and into the registry: this
    /// instance owns `id` now (its owner was removed, or placement moved it here) and is
    /// about to serve it, before the next look at the replicas would have promoted it.
    /// Returns whether there was one.
    pub fn promote(&self, id: &str) -> bool {
        let Some(held) = lock(&self.store).pop(id) else {
            return false;
        };
        let evicted = self.handoffs.registry.merge_in(vec![held.registration]);
        self.handoffs.evicted(&evicted, "promoting a replica");
        self.handoffs.metrics.replication.promoted.inc();
        self.handoffs.arrived(vec![id.to_owned()]);
        self.changed([id.to_owned()]);
        true
    }

    /// `sync`: sends the record of `id` to its backup now, and waits for the acknowledgement
    /// at most [`SYNC_WAIT`]. If it is not acknowledged (or cannot be sent now), it is marked
    /// changed, and the next pass sends it as in `async`.
    pub async fn replicate_now(&self, id: &str) {
        if !self.try_replicate_now(id).await {
            self.changed([id.to_owned()]);
        }
    }

    /// Like [`Replicas::replicate_now`], whatever the mode (an application's state write),
    /// and says whether the backup acknowledged it.
    pub async fn replicate_acknowledged(&self, id: &str) -> bool {
        let acknowledged = self.try_replicate_now(id).await;
        if !acknowledged {
            self.changed([id.to_owned()]);
        }
        acknowledged
    }

    async fn try_replicate_now(&self, id: &str) -> bool {
        let (Some(me), Some(current)) = (
            self.handoffs.identity.get(),
            self.handoffs.membership.current(),
        ) else {
            return false;
        };
        let (Some(backup), Some(record)) =
            (backup_of(&current, id), self.handoffs.registry.get(id))
        else {
            // A single member has no backup: nothing to wait for.
            return true;
        };
        let Some(addr) = self.handoffs.discovery.found().get(&backup).copied() else {
            return false;
        };
        let sent = self
            .send(
                addr,
                me,
                current.epoch(),
                std::slice::from_ref(&record),
                SYNC_WAIT,
            )
            .await;
        match sent {
            Ok(()) => {
                self.handoffs.metrics.replication.sent.inc();
                true
            }
            Err(e) => {
                self.handoffs.metrics.replication.failed.inc();
                tracing::debug!(backup, error = %e, "a join's replica not acknowledged in time; it goes again");
                false
            }
        }
    }

    /// Sends the changed records of the clients this instance owns to their backups.
    async fn send_changed(&self, me: u64, current: &Placement) {
        let (ids, all) = {
            let mut dirty = lock(&self.dirty);
            (
                std::mem::take(&mut dirty.ids),
                std::mem::take(&mut dirty.all),
            )
        };
        let ids: Vec<String> = if all {
            self.handoffs.registry.ids()
        } else {
            ids.into_iter().collect()
        };
        let mut by_backup: BTreeMap<u64, Vec<Registration>> = BTreeMap::new();
        for id in ids {
            let Ok(client) = ClientId::try_from(id.as_str()) else {
                continue;
            };
            // Not owned here (under this view): its owner replicates it, once handed off.
            if current.index(&client) != Ok(me) {
                continue;
            }
            let Ok(Some(backup)) = current.backup(&client) else {
                continue;
            };
            if let Some(record) = self.handoffs.registry.get(&id) {
                by_backup.entry(backup).or_default().push(record);
            }
        }
        let addresses = self.handoffs.discovery.found();
        // Each backup on its own: one that hangs delays only the records it backs up.
        let sends = by_backup.into_iter().map(|(backup, records)| {
            let addr = addresses.get(&backup).copied();
            self.send_to_backup(me, current.epoch(), backup, addr, records)
        });
        futures::future::join_all(sends).await;
        self.handoffs
            .metrics
            .replication
            .pending
            .set(self.pending() as i64);
    }

    /// Sends `records` to `backup` at `addr` in batches; what is not acknowledged is marked
    /// changed again, and the backup is not sent to for [`BACKOFF`].
    async fn send_to_backup(
        &self,
        me: u64,
        epoch: Epoch,
        backup: u64,
        addr: Option<SocketAddr>,
        records: Vec<Registration>,
    ) {
        let backing_off = lock(&self.failing)
            .get(&backup)
            .is_some_and(|t| t.elapsed() < BACKOFF);
        let mut sent = 0;
        if let (Some(addr), false) = (addr, backing_off) {
            for batch in crate::handoff::batches(&records) {
                match self.send(addr, me, epoch, batch, PEER_TIMEOUT).await {
                    Ok(()) => sent += batch.len(),
                    Err(e) => {
                        self.handoffs.metrics.replication.failed.inc();
                        lock(&self.failing).insert(backup, Instant::now());
                        tracing::debug!(backup, error = %e, "replicas not acknowledged; they go again");
                        break;
                    }
                }
            }
        }
        self.handoffs.metrics.replication.sent.inc_by(sent as u64);
        if sent == records.len() {
            lock(&self.failing).remove(&backup);
        } else {
            self.changed(records[sent..].iter().map(|r| r.client_id.clone()));
        }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        me: u64,
        epoch: Epoch,
        batch: &[Registration],
        timeout: Duration,
    ) -> Result<(), String> {
        crate::handoff::send_batch(
            &self.handoffs.peers,
            addr,
            "/peer/replicate",
            me,
            epoch,
            batch,
            timeout,
        )
        .await
    }

    /// Every replica this instance no longer backs up under `current`, or whose owner under
    /// `current` is not the instance that sent it, goes into the registry: promoted if this
    /// instance owns its client now, else held for the hand-off to deliver to its owner.
    fn recheck(&self, me: u64, current: &Placement) {
        let moved: Vec<Registration> = {
            let mut store = lock(&self.store);
            // Kept: the replicas this instance backs up for the owner that sent them. Any
            // other (its client moved, or its owner is gone and the new owner may never
            // have had the record) goes to the client's owner.
            let leaving: Vec<String> = store
                .iter()
                .filter(|(id, held)| {
                    backup_of(current, id) != Some(me)
                        || crate::handoff::owner(current, id) != Some(held.origin)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let moved = leaving
                .iter()
                .filter_map(|id| store.pop(id).map(|h| h.registration))
                .collect();
            self.handoffs
                .metrics
                .replication
                .held
                .set(store.len() as i64);
            moved
        };
        if moved.is_empty() {
            return;
        }
        let promoted = moved
            .iter()
            .filter(|r| crate::handoff::owner(current, &r.client_id) == Some(me))
            .count();
        let handed_on = moved.len() - promoted;
        let ids: Vec<String> = moved.iter().map(|r| r.client_id.clone()).collect();
        let evicted = self.handoffs.registry.merge_in(moved);
        self.handoffs.evicted(&evicted, "taking in replicas");
        self.handoffs.arrived(ids.clone());
        self.handoffs
            .metrics
            .replication
            .promoted
            .inc_by(promoted as u64);
        self.handoffs
            .metrics
            .replication
            .handed_on
            .inc_by(handed_on as u64);
        // The promoted ones need a backup of their own now.
        self.changed(ids);
        self.handoffs.wake();
        tracing::info!(promoted, handed_on, epoch = %current.epoch(), "replicas this instance no longer backs up: promoted, or handed to their owner");
    }

    /// A restarted instance's records: asks each member of `current` (until each answered, for
    /// at most [`RECOVER_FOR`]) for the replicas this instance sent it in an earlier life.
    async fn recover(&self, me: u64, current: &Placement) {
        let asked: Vec<u64> = {
            let mut recovery = lock(&self.recovery);
            if recovery.done {
                return;
            }
            let since = *recovery.since.get_or_insert_with(Instant::now);
            if since.elapsed() > RECOVER_FOR {
                recovery.done = true;
                tracing::warn!(
                    unanswered = ?current.members().iter().filter(|m| **m != me && !recovery.answered.contains(m)).collect::<Vec<_>>(),
                    "restart: members that did not answer for this instance's replicas; what they held of it is not recovered"
                );
                return;
            }
            current
                .members()
                .iter()
                .copied()
                .filter(|m| *m != me && !recovery.answered.contains(m))
                .collect()
        };
        if asked.is_empty() {
            lock(&self.recovery).done = true;
            return;
        }
        let addresses = self.handoffs.discovery.found();
        let mut recovered = 0u64;
        for member in asked {
            let Some(addr) = addresses.get(&member).copied() else {
                continue;
            };
            let asked = async {
                let n = self.fetch_from(me, addr).await?;
                self.ask_resync(me, addr).await?;
                Ok::<u64, String>(n)
            };
            match asked.await {
                Ok(n) => {
                    recovered += n;
                    lock(&self.recovery).answered.insert(member);
                }
                Err(e) => {
                    tracing::debug!(member, error = %e, "restart: replicas not read yet; asking again")
                }
            }
        }
        if recovered > 0 {
            self.handoffs
                .metrics
                .replication
                .recovered
                .inc_by(recovered);
            tracing::info!(
                recovered,
                "restart: registrations recovered from the replicas of this instance's earlier life"
            );
            self.handoffs.wake();
        }
    }

    /// Asks the member at `addr` to send again the replicas `me` backs up.
    async fn ask_resync(&self, me: u64, addr: SocketAddr) -> Result<(), String> {
        let request = self
            .handoffs
            .peers
            .post(addr.ip(), "/peer/resync")
            .json(&Resync { from: me })
            .timeout(PEER_TIMEOUT);
        poc_routing_peer::json::<HandOffAck>(request, crate::PEER_BODY_LIMIT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Every page of the replicas `me` sent to the member at `addr`, merged into the registry.
    async fn fetch_from(&self, me: u64, addr: SocketAddr) -> Result<u64, String> {
        let mut after: Option<String> = None;
        let mut merged = 0;
        loop {
            let mut query = vec![("origin", me.to_string())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let request = self
                .handoffs
                .peers
                .get(addr.ip(), "/peer/replicas")
                .query(&query)
                .timeout(PEER_TIMEOUT);
            let page: ReplicaPage = poc_routing_peer::json(request, crate::PEER_BODY_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            // Held to the rules of a hand-off: a keyholder's answer is still bounded input.
            let checked = HandOff {
                from: page.instance,
                epoch: String::new(),
                registrations: page.registrations,
            };
            crate::handoff::validate(&checked, crate::wall_us())?;
            if page
                .next
                .as_deref()
                .is_some_and(|n| after.as_deref() >= Some(n))
            {
                return Err("pages out of order".to_owned());
            }
            let ids: Vec<String> = checked
                .registrations
                .iter()
                .map(|r| r.client_id.clone())
                .collect();
            merged += ids.len() as u64;
            let evicted = self.handoffs.registry.merge_in(checked.registrations);
            self.handoffs.evicted(&evicted, "recovering replicas");
            self.handoffs.arrived(ids.clone());
            self.changed(ids);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(merged),
            }
        }
    }
}
