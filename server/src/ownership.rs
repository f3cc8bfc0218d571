//! Ownership events (app mode): which keys became this instance's and which stopped being, for
//! the application to warm or drop what it caches (`GET /events` on the state listener).
//!
//! A key *arrives* when its record comes here for this instance to own it: a hand-off from its
//! previous owner, a copy taken from a recent owner on first use after a view change
//! (`/peer/release`), a replica promoted after its owner was removed, or a record recovered
//! after a restart. It *leaves* when its new owner acknowledged the hand-off of its record. A
//! key may be told to arrive more than once (a copy, then the hand-off of the same record); a
//! key first used here (no record anywhere) arrives with its first request, which the
//! application sees anyway.
//!
//! Events are a broadcast: an application that reads too slowly (more than
//! [`BUFFERED_EVENTS`] behind) is disconnected rather than the instance holding them without
//! bound, and on connecting again it is told the keys held then.

use poc_routing_wire::{OwnershipChange, OwnershipEvent};
use tokio::sync::broadcast;

/// Events kept for a slow reader before the oldest are dropped.
pub const BUFFERED_EVENTS: usize = 1024;

/// The most keys one event names: a hand-off of many keys is told in several events.
pub const KEYS_PER_EVENT: usize = 1000;

/// The broadcast of ownership events.
pub struct Events {
    tx: broadcast::Sender<OwnershipEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BUFFERED_EVENTS).0,
        }
    }
}

impl Events {
    /// Keys that became this instance's under `epoch`.
    pub fn arrived(&self, keys: Vec<String>, epoch: Option<String>) {
        self.send(OwnershipChange::Arrived, keys, epoch);
    }

    /// Keys whose new owner holds their record now.
    pub fn left(&self, keys: Vec<String>, epoch: Option<String>) {
        self.send(OwnershipChange::Left, keys, epoch);
    }

    fn send(&self, event: OwnershipChange, keys: Vec<String>, epoch: Option<String>) {
        // Nobody listening (no application, or not in app mode): nothing to keep.
        if keys.is_empty() || self.tx.receiver_count() == 0 {
            return;
        }
        for chunk in keys.chunks(KEYS_PER_EVENT) {
            let _ = self.tx.send(OwnershipEvent {
                event,
                keys: chunk.to_vec(),
                epoch: epoch.clone(),
            });
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OwnershipEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_reach_subscribers_in_chunks_and_cost_nothing_without_one() {
        let events = Events::default();
        events.arrived(vec!["a".into()], None); // no subscriber: dropped
        let mut rx = events.subscribe();
        let keys: Vec<String> = (0..KEYS_PER_EVENT + 1).map(|i| i.to_string()).collect();
        events.left(keys, Some("e".into()));
        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.event, first.keys.len()),
            (OwnershipChange::Left, KEYS_PER_EVENT)
        );
        assert_eq!(
            rx.recv().await.unwrap().keys,
            vec![KEYS_PER_EVENT.to_string()]
        );
        events.arrived(Vec::new(), None);
        assert!(rx.try_recv().is_err(), "no event for no keys");
    }
}
