//! The registrations of the clients this instance owns: what a join records, and what follows a
//! client to its next owner ([`crate::handoff`]).
//!
//! A registration is a record of joins (first and last time, a count, where and under which
//! epoch they were served), not a flag, so that two copies of one client's record can be
//! merged: a hand-off that arrives after the new owner already served the client is merged,
//! not overwritten, and the same hand-off received twice changes nothing. The merge is a
//! join-semilattice (commutative, associative, idempotent), in the manner of a CRDT G-counter:
//! each instance counts joins in a counter of its own, tagged afresh each time it starts a
//! record for the client, and merging takes the higher value of each counter.
//!
//! It is bounded: once `capacity` ids are held, the least recently joined is evicted. Every
//! eviction is counted and logged, a hand-off's included: a registration never vanishes without
//! a trace.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use poc_routing_wire::{JoinCount, KeyState, Registration, ServedBy, MAX_SERVED};

/// The most join counters one registration keeps. A client gets a counter each time an
/// instance starts a record for it (a join on an owner that holds no record of it yet), so
/// only a client that moved hundreds of times reaches it; past it the smallest counters are
/// dropped, and the join count of that client is then an estimate (its placement and its
/// registration are not affected). A hand-off record over it is refused.
pub const MAX_JOIN_COUNTERS: usize = 256;

/// Merges `other` into `into` (records of the same client): nothing is lost, nothing counted
/// twice, whatever the order and however often the same record arrives. Linear in the two
/// records' sizes: counters are kept sorted by (instance, tag) and merged in one pass.
pub fn merge(into: &mut Registration, other: &Registration) {
    into.first_join_us = into.first_join_us.min(other.first_join_us);
    into.last_join_us = into.last_join_us.max(other.last_join_us);
    let key = |c: &JoinCount| (c.instance, c.tag);
    let mut theirs = other.joins.clone();
    if !theirs.is_sorted_by_key(key) {
        theirs.sort_by_key(key);
    }
    let mine = std::mem::take(&mut into.joins);
    let mut merged = Vec::with_capacity(mine.len() + theirs.len());
    let (mut a, mut b) = (mine.into_iter().peekable(), theirs.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if key(x) == key(y) => {
                let count = x.count.max(y.count);
                b.next();
                a.next().map(|c| JoinCount { count, ..c })
            }
            (Some(x), Some(y)) if key(x) < key(y) => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => break,
        };
        merged.extend(next);
    }
    into.joins = merged;
    bound_counters(&mut into.joins);
    for theirs in &other.served {
        match into
            .served
            .iter_mut()
            .find(|s| (s.instance, &s.epoch) == (theirs.instance, &theirs.epoch))
        {
            Some(mine) => mine.last_us = mine.last_us.max(theirs.last_us),
            None => into.served.push(theirs.clone()),
        }
    }
    tidy_served(&mut into.served);
    // The application's state (app mode): the newer copy, whatever the order.
    if let Some(theirs) = &other.state {
        if into
            .state
            .as_ref()
            .is_none_or(|mine| theirs.newer_than(mine))
        {
            into.state = Some(theirs.clone());
        }
    }
}

/// At most [`MAX_JOIN_COUNTERS`]: the largest are kept, in (instance, tag) order.
fn bound_counters(joins: &mut Vec<JoinCount>) {
    if joins.len() <= MAX_JOIN_COUNTERS {
        return;
    }
    joins.sort_by(|x, y| y.count.cmp(&x.count).then(x.cmp(y)));
    joins.truncate(MAX_JOIN_COUNTERS);
    joins.sort();
}

/// Newest first (ties in a fixed order, so that every merge order keeps the same entries), at
/// most [`MAX_SERVED`].
fn tidy_served(served: &mut Vec<ServedBy>) {
    served.sort_by(|a, b| {
        b.last_us
            .cmp(&a.last_us)
            .then(a.instance.cmp(&b.instance))
            .then(a.epoch.cmp(&b.epoch))
    });
    served.truncate(MAX_SERVED);
}

/// How many joins a registration records in all.
pub fn total_joins(r: &Registration) -> u64 {
    r.joins.iter().map(|c| c.count).sum()
}

/// One held registration, and the counter this instance adds its joins to (none until it
/// serves one: a record that arrived by hand-off gets a fresh counter here).
#[derive(Debug)]
struct Held {
    registration: Registration,
    own_tag: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    clients: LruCache<String, Held>,
    evicted: u64,
}

/// The registrations held here.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner {
                clients: LruCache::new(capacity),
                evicted: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a join of `client_id` served here by instance `me` under `epoch` at `now_us`.
    /// Returns the id evicted to make room, if any.
    pub fn record(
        &self,
        client_id: &str,
        me: u64,
        epoch: &str,
        now_us: u64,
        new_tag: impl FnOnce() -> u64,
    ) -> Option<String> {
        let mut inner = self.lock();
        let evicted = Self::make_if_absent(&mut inner, client_id, now_us);
        let Some(held) = inner.clients.get_mut(client_id) else {
            return evicted;
        };
        let tag = *held.own_tag.get_or_insert_with(new_tag);
        let r = &mut held.registration;
        match r
            .joins
            .iter_mut()
            .find(|c| (c.instance, c.tag) == (me, tag))
        {
            Some(c) => c.count += 1,
            None => {
                r.joins.push(JoinCount {
                    instance: me,
                    tag,
                    count: 1,
                });
                r.joins.sort();
                bound_counters(&mut r.joins);
            }
        }
        r.first_join_us = r.first_join_us.min(now_us);
        r.last_join_us = r.last_join_us.max(now_us);
        match r
            .served
            .iter_mut()
            .find(|s| s.instance == me && s.epoch == epoch)
        {
            Some(s) => s.last_us = s.last_us.max(now_us),
            None => r.served.push(ServedBy {
                instance: me,
                epoch: epoch.to_owned(),
                last_us: now_us,
            }),
        }
        tidy_served(&mut r.served);
        evicted
    }

    /// An empty record of `client_id` made at `now_us`, if none is held; returns the id
    /// evicted for it, counted.
    fn make_if_absent(inner: &mut Inner, client_id: &str, now_us: u64) -> Option<String> {
        if inner.clients.contains(client_id) {
            return None;
        }
        let fresh = Held {
            registration: Registration {
                client_id: client_id.to_owned(),
                first_join_us: now_us,
                last_join_us: now_us,
                joins: Vec::new(),
                served: Vec::new(),
                state: None,
            },
            own_tag: None,
        };
        Self::put(inner, client_id.to_owned(), fresh)
    }

    /// Inserts `held` under `id`; returns the id evicted for it, counted.
    fn put(inner: &mut Inner, id: String, held: Held) -> Option<String> {
        match inner.clients.push(id, held) {
            Some((old, _)) if !inner.clients.contains(&old) => {
                inner.evicted += 1;
                Some(old)
            }
            _ => None,
        }
    }

    /// Merges registrations handed off by another instance. Returns the ids evicted to make
    /// room (counted), if the registry is full.
    pub fn merge_in(&self, registrations: Vec<Registration>) -> Vec<String> {
        let mut inner = self.lock();
        let mut evicted = Vec::new();
        for r in registrations {
            if let Some(held) = inner.clients.get_mut(&r.client_id) {
                merge(&mut held.registration, &r);
                continue;
            }
            let id = r.client_id.clone();
            let held = Held {
                registration: r,
                own_tag: None,
            };
            evicted.extend(Self::put(&mut inner, id, held));
        }
        evicted
    }

    /// The registrations held for ids whose owner (by `owner_of`) is not `me`, by owner; ids
    /// `owner_of` cannot place are left out (they stay here).
    pub fn not_owned(
        &self,
        me: u64,
        owner_of: impl Fn(&str) -> Option<u64>,
    ) -> BTreeMap<u64, Vec<Registration>> {
        let inner = self.lock();
        let mut by_owner: BTreeMap<u64, Vec<Registration>> = BTreeMap::new();
        for (id, held) in inner.clients.iter() {
            if let Some(owner) = owner_of(id).filter(|o| *o != me) {
                by_owner
                    .entry(owner)
                    .or_default()
                    .push(held.registration.clone());
            }
        }
        by_owner
    }

    /// Forgets the registrations an owner acknowledged, unless they changed here since they
    /// were sent (a join served meanwhile): those stay, and go again. Returns the ids
    /// forgotten.
    pub fn acknowledged(&self, sent: &[Registration]) -> Vec<String> {
        let mut inner = self.lock();
        let mut forgotten = Vec::new();
        for r in sent {
            if inner
                .clients
                .peek(&r.client_id)
                .is_some_and(|held| held.registration == *r)
            {
                inner.clients.pop(&r.client_id);
                forgotten.push(r.client_id.clone());
            }
        }
        forgotten
    }

    /// Whether a record of `client_id` is held here.
    pub fn contains(&self, client_id: &str) -> bool {
        self.lock().clients.contains(client_id)
    }

    /// Removes and returns the record of `client_id` (its new owner took it: `/peer/release`).
    pub fn take(&self, client_id: &str) -> Option<Registration> {
        self.lock().clients.pop(client_id).map(|h| h.registration)
    }

    /// The application's state of `client_id` (app mode), if any was written; a deleted one
    /// is a tombstone (`value` absent).
    pub fn state(&self, client_id: &str) -> Option<KeyState> {
        self.lock()
            .clients
            .peek(client_id)
            .and_then(|h| h.registration.state.clone())
    }

    /// Writes the application's state of `client_id` (`None`: deletes it) as instance `me` at
    /// `now_us`, if `if_version` (when given) is the version held (0: none; `Err` is the held
    /// version). The version written is the later of the held one plus one and `now_us`. The
    /// record is made if there is none. Returns the version written and the id evicted to make
    /// room, if any.
    pub fn write_state(
        &self,
        client_id: &str,
        me: u64,
        now_us: u64,
        if_version: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<(u64, Option<String>), u64> {
        let mut inner = self.lock();
        let held_version = inner
            .clients
            .peek(client_id)
            .and_then(|h| h.registration.state.as_ref())
            .map_or(0, |s| s.version);
        if if_version.is_some_and(|v| v != held_version) {
            return Err(held_version);
        }
        let evicted = Self::make_if_absent(&mut inner, client_id, now_us);
        // Newer than the version replaced and than any copy written before now anywhere
        // (within the clocks' skew): a record made afresh here, before an older copy of the key
        // arrived, still wins the merge against it.
        let version = (held_version + 1).max(now_us);
        if let Some(held) = inner.clients.get_mut(client_id) {
            held.registration.state = Some(KeyState {
                version,
                written_us: now_us,
                writer: me,
                value,
            });
        }
        Ok((version, evicted))
    }

    /// One client's registration.
    pub fn get(&self, client_id: &str) -> Option<Registration> {
        self.lock()
            .clients
            .peek(client_id)
            .map(|h| h.registration.clone())
    }

    /// The most recently joined ids (at most `limit`) and how many are held in all.
    pub fn snapshot(&self, limit: usize) -> (Vec<String>, usize) {
        let inner = self.lock();
        let ids = inner
            .clients
            .iter()
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect();
        (ids, inner.clients.len())
    }

    /// Every id held.
    pub fn ids(&self) -> Vec<String> {
        self.lock().clients.iter().map(|(k, _)| k.clone()).collect()
    }

    /// How many registrations were evicted to make room, since start.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    pub fn capacity(&self) -> usize {
        self.lock().clients.cap().get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn tags() -> impl FnMut() -> u64 {
        let mut next = 0;
        move || {
            next += 1;
            next
        }
    }

    #[test]
    fn bounded_most_recent_first_and_evictions_counted() {
        let r = Registry::new(2);
        let mut tag = tags();
        assert_eq!(r.record("a", 1, "e", 1, &mut tag), None);
        r.record("b", 1, "e", 2, &mut tag);
        r.record("a", 1, "e", 3, &mut tag);
        assert_eq!(r.record("c", 1, "e", 4, &mut tag), Some("b".into()));
        let (ids, total) = r.snapshot(10);
        assert_eq!(ids, vec!["c", "a"]);
        assert_eq!(total, 2);
        assert_eq!(r.snapshot(1).0, vec!["c"]);
        assert_eq!(r.evicted(), 1);
        let a = r.get("a").unwrap();
        assert_eq!(
            (a.first_join_us, a.last_join_us, total_joins(&a)),
            (1, 3, 2)
        );
        // A hand-off into a full registry evicts too, and says which.
        let d = Registry::new(1);
        d.record("x", 1, "e", 1, &mut tag);
        assert_eq!(d.merge_in(vec![a]), vec!["x".to_owned()]);
        assert_eq!(d.evicted(), 1);
    }

    #[test]
    fn a_hand_off_after_the_new_owner_served_the_client_is_merged() {
        let mut tag = tags();
        let old = Registry::new(10);
        old.record("c", 1, "e1", 10, &mut tag);
        old.record("c", 1, "e1", 20, &mut tag);
        let new = Registry::new(10);
        new.record("c", 2, "e2", 30, &mut tag);
        let sent = old.not_owned(1, |_| Some(2)).remove(&2).unwrap();
        assert!(new.merge_in(sent.clone()).is_empty());
        assert!(new.merge_in(sent.clone()).is_empty(), "twice: the same");
        let c = new.get("c").unwrap();
        assert_eq!(
            (c.first_join_us, c.last_join_us, total_joins(&c)),
            (10, 30, 3)
        );
        assert_eq!(c.served.len(), 2);
        assert_eq!(c.served[0].instance, 2, "newest first");
        // The old owner forgets it once acknowledged, unless it changed meanwhile.
        old.record("c", 1, "e1", 40, &mut tag);
        assert!(old.acknowledged(&sent).is_empty());
        assert!(old.get("c").is_some());
        let again = old.not_owned(1, |_| Some(2)).remove(&2).unwrap();
        new.merge_in(again.clone());
        assert_eq!(old.acknowledged(&again), vec!["c".to_owned()]);
        assert!(old.get("c").is_none());
        assert_eq!(total_joins(&new.get("c").unwrap()), 4);
        // Back to instance 1 later: its joins go to a fresh counter, and nothing is lost.
        old.merge_in(vec![new.get("c").unwrap()]);
        old.record("c", 1, "e3", 50, &mut tag);
        assert_eq!(total_joins(&old.get("c").unwrap()), 5);
    }

    /// Property: for records of one client made by joins on several instances (each instance's
    /// copies evolving by joins and merges), merging every copy in any order, with duplicates,
    /// gives one and the same record, which counts every join exactly once.
    #[test]
    fn merging_copies_in_any_order_with_duplicates_counts_every_join_once() {
        let mut rng = StdRng::seed_from_u64(21);
        for case in 0..300 {
            let instances = rng.gen_range(1..5u64);
            let registries: Vec<Registry> = (0..instances).map(|_| Registry::new(4)).collect();
            let mut copies: Vec<Registration> = Vec::new();
            let mut joins = 0;
            let mut next_tag = 0u64;
            for step in 0..rng.gen_range(1..30u64) {
                let i = rng.gen_range(0..instances) as usize;
                if rng.gen_bool(0.7) {
                    let epoch = format!("e{}", rng.gen_range(0..3));
                    registries[i].record("c", i as u64 + 1, &epoch, step, || {
                        next_tag += 1;
                        next_tag
                    });
                    joins += 1;
                } else if let Some(copy) = copies.choose(&mut rng).cloned() {
                    // A hand-off (maybe a stale copy, maybe one already merged) arrives.
                    registries[i].merge_in(vec![copy]);
                }
                if let Some(r) = registries[i].get("c") {
                    copies.push(r);
                }
                // Sometimes an instance hands off and forgets (as after an acknowledgement).
                if rng.gen_bool(0.1) {
                    if let Some(r) = registries[i].get("c") {
                        registries[i].acknowledged(&[r]);
                    }
                }
            }
            if copies.is_empty() {
                assert_eq!(joins, 0);
                continue;
            }
            let mut orders = Vec::new();
            for _ in 0..3 {
                let mut all = copies.clone();
                all.extend(copies.choose_multiple(&mut rng, 3).cloned());
                all.shuffle(&mut rng);
                let mut merged = all[0].clone();
                for c in &all[1..] {
                    merge(&mut merged, c);
                }
                orders.push(merged);
            }
            assert!(
                orders.windows(2).all(|w| w[0] == w[1]),
                "case {case}: every order gives the same record"
            );
            assert_eq!(
                total_joins(&orders[0]),
                joins,
                "case {case}: every join counted once"
            );
        }
    }

    /// A key's application state (app mode) merges by version: the newer copy wins in every
    /// order, a late copy never overwrites a newer one, a deletion is a newer version that
    /// holds nothing, and a write is conditional on the version held.
    #[test]
    fn application_state_keeps_the_newer_copy_in_any_order() {
        let mut tag = tags();
        let owner = Registry::new(10);
        // A version is the later of the held one plus one and the writer's clock.
        assert_eq!(
            owner.write_state("k", 1, 10, Some(0), Some(b"a".to_vec())),
            Ok((10, None))
        );
        assert_eq!(
            owner.write_state("k", 1, 20, Some(0), Some(b"x".to_vec())),
            Err(10),
            "If-Match 0 on a written key"
        );
        assert_eq!(
            owner.write_state("k", 1, 5, Some(10), Some(b"b".to_vec())),
            Ok((11, None)),
            "a clock behind"
        );
        owner.record("k", 1, "e", 25, &mut tag);
        let v11 = owner.get("k").unwrap();
        assert_eq!(
            owner.write_state("k", 1, 30, Some(11), None),
            Ok((30, None))
        );
        let v30 = owner.get("k").unwrap();
        assert_eq!(
            owner.state("k").unwrap().value,
            None,
            "deleted: a tombstone"
        );
        // Copies arriving at another instance, late and out of order.
        for order in [[&v11, &v30], [&v30, &v11]] {
            let other = Registry::new(10);
            other.merge_in(vec![order[0].clone()]);
            other.merge_in(vec![order[1].clone()]);
            let state = other.state("k").unwrap();
            assert_eq!(
                (state.version, state.value),
                (30, None),
                "the tombstone wins"
            );
            assert_eq!(
                total_joins(&other.get("k").unwrap()),
                1,
                "the joins merge as before"
            );
        }
        // A record made afresh (its older copy not here yet) wins against that older copy
        // when it arrives: its version is the later clock.
        let fresh = Registry::new(10);
        assert_eq!(
            fresh.write_state("k", 2, 40, None, Some(b"new".to_vec())),
            Ok((40, None))
        );
        fresh.merge_in(vec![v11.clone()]);
        assert_eq!(
            fresh.state("k").unwrap().value.as_deref(),
            Some(&b"new"[..])
        );
        // Two writes of one version (two clocks that agree to the microsecond): the higher
        // writer, on every copy.
        let a = Registry::new(10);
        let b = Registry::new(10);
        a.write_state("j", 1, 100, None, Some(b"from 1".to_vec()))
            .unwrap();
        b.write_state("j", 2, 100, None, Some(b"from 2".to_vec()))
            .unwrap();
        let (ra, rb) = (a.get("j").unwrap(), b.get("j").unwrap());
        a.merge_in(vec![rb]);
        b.merge_in(vec![ra]);
        assert_eq!(a.get("j"), b.get("j"));
        assert_eq!(a.state("j").unwrap().value.as_deref(), Some(&b"from 2"[..]));
    }

    #[test]
    fn hand_off_batches_hold_at_most_batch_records_and_bytes() {
        use crate::handoff::{batches, BATCH};
        let record = |id: usize, bytes: usize| Registration {
            client_id: format!("c{id}"),
            first_join_us: 1,
            last_join_us: 1,
            joins: Vec::new(),
            served: Vec::new(),
            state: (bytes > 0).then(|| KeyState {
                version: 1,
                written_us: 1,
                writer: 1,
                value: Some(vec![0; bytes]),
            }),
        };
        let small: Vec<Registration> = (0..2500).map(|i| record(i, 0)).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![BATCH, BATCH, 500]);
        let large: Vec<Registration> = (0..300)
            .map(|i| record(i, poc_routing_wire::MAX_STATE_BYTES))
            .collect();
        let split = batches(&large);
        assert!(
            split.len() > 1,
            "300 records of 64 KiB do not go in one request"
        );
        assert_eq!(split.iter().map(|b| b.len()).sum::<usize>(), 300);
        for b in &split {
            let json = serde_json::to_vec(&poc_routing_wire::HandOff {
                from: 1,
                epoch: "0".into(),
                registrations: b.to_vec(),
            })
            .unwrap();
            assert!(json.len() < crate::PEER_BODY_LIMIT, "{} bytes", json.len());
        }
        assert!(batches(&[]).is_empty());
    }
}
