//! The in-memory record of the clients that joined this instance.
//!
//! It is bounded: once `capacity` ids are held, the least recently joined is forgotten, so a
//! long run with many distinct ids keeps a flat memory footprint.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

pub struct Registry {
    clients: Mutex<LruCache<String, ()>>,
}

impl Registry {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            clients: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Records a join; joining again refreshes the entry.
    pub fn record(&self, client_id: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(client_id).is_none() {
            clients.put(client_id.to_owned(), ());
        }
    }

    /// The most recently joined ids (at most `limit`) and how many are held in all.
    pub fn snapshot(&self, limit: usize) -> (Vec<String>, usize) {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let ids = clients.iter().take(limit).map(|(k, _)| k.clone()).collect();
        (ids, clients.len())
    }

    pub fn capacity(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cap()
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_most_recent_first() {
        let r = Registry::new(2);
        r.record("a");
        r.record("b");
        r.record("a");
        r.record("c");
        let (ids, total) = r.snapshot(10);
        assert_eq!(ids, vec!["c", "a"]);
        assert_eq!(total, 2);
        assert_eq!(r.snapshot(1).0, vec!["c"]);
    }
}
