//! The state one filter configuration shares between Envoy's main thread (which fetches
//! `/placement`) and its workers (which route joins), and the ticker that paces the fetches.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use poc_routing_placement::{ClientId, KeyError};

use crate::routing::{route, Limits, LocalReply, Route};
use crate::settings::Settings;
use crate::snapshot::Snapshot;

/// One filter configuration's view of the placement.
pub struct PlacementCache {
    settings: Settings,
    started: Instant,
    current: RwLock<Option<Arc<Snapshot>>>,
    fetching: AtomicBool,
    /// The last fetch problem logged, so that an outage is logged once, not every tick.
    last_problem: Mutex<Option<String>>,
}

/// What a finished fetch changed, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new epoch (the message says which members).
    Changed(String),
    /// The same epoch as before.
    Unchanged,
    /// The fetch failed, for the first time or for a new reason (logged once).
    Failed(String),
    /// The fetch failed for the reason already logged.
    StillFailing,
}

impl PlacementCache {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            started: Instant::now(),
            current: RwLock::new(None),
            fetching: AtomicBool::new(false),
            last_problem: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How long until the next fetch: the refresh interval, or at most [`PlacementCache::STARTING`]
    /// until the first placement arrives, so that a starting Envoy routes joins at once.
    pub fn next_fetch_in(&self) -> Duration {
        if self.members() == 0 {
            self.settings.refresh_interval.min(Self::STARTING)
        } else {
            self.settings.refresh_interval
        }
    }

    /// The fetch pace while no placement has arrived yet.
    pub const STARTING: Duration = Duration::from_millis(50);

    /// Whether a failed fetch is worth a warning: not while Envoy is still starting (its
    /// clusters and their first health checks take a moment), unless it lasts.
    fn failure_is_news(&self) -> bool {
        self.members() > 0 || self.started.elapsed() > Duration::from_secs(3)
    }

    /// Claims the one fetch allowed at a time; false if one is still in flight.
    pub fn begin_fetch(&self) -> bool {
        !self.fetching.swap(true, Ordering::AcqRel)
    }

    /// A fetch could not be sent or did not complete.
    pub fn fetch_failed(&self, why: String) -> FetchOutcome {
        self.fetching.store(false, Ordering::Release);
        self.problem(why)
    }

    fn problem(&self, why: String) -> FetchOutcome {
        if !self.failure_is_news() {
            return FetchOutcome::StillFailing;
        }
        let mut last = self.last_problem.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(why.as_str()) {
            return FetchOutcome::StillFailing;
        }
        *last = Some(why.clone());
        FetchOutcome::Failed(why)
    }

    /// A fetch answered with HTTP `status` and `body`.
    pub fn fetched(&self, status: Option<&[u8]>, body: &[u8], now: Instant) -> FetchOutcome {
        self.fetching.store(false, Ordering::Release);
        if status != Some(b"200") {
            let status = status.map_or_else(
                || "no status".into(),
                |s| String::from_utf8_lossy(s).into_owned(),
            );
            return self.problem(format!("GET /placement answered HTTP {status}"));
        }
        let parsed = {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            Snapshot::parse(body, now, current.as_deref())
        };
        let snapshot = match parsed {
            Ok(s) => s,
            Err(e) => return self.problem(format!("GET /placement: {e}")),
        };
        *self.last_problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = current
            .as_ref()
            .is_none_or(|c| c.epoch() != snapshot.epoch());
        let outcome = if changed {
            FetchOutcome::Changed(format!(
                "placement epoch {} with members {:?}",
                snapshot.epoch(),
                snapshot.members()
            ))
        } else {
            FetchOutcome::Unchanged
        };
        *current = Some(Arc::new(snapshot));
        outcome
    }

    /// How many members the current snapshot has (0 before the first).
    pub fn members(&self) -> usize {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map_or(0, |s| s.members().len())
    }

    /// Decides one join (`session`: a WebSocket session) by the current snapshot.
    pub fn decide(
        &self,
        key: Result<ClientId, KeyError>,
        now: Instant,
        session: bool,
    ) -> Result<Route, LocalReply> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let limits = Limits {
            stale_after: self.settings.stale_after,
            max_in_flight: self.settings.max_in_flight_per_owner,
            max_sessions: self.settings.max_sessions_per_owner,
        };
        route(key, current.as_ref(), limits, now, session)
    }
}

/// Runs `f`, turning a panic into `None`: no panic may unwind into Envoy's C++ frames.
pub fn no_unwind<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// A thread that calls `tick` after `first` and then after whatever delay each call returns,
/// until dropped. Dropping it waits for the thread to end, so `tick` is never called after.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(
        first: Duration,
        tick: impl Fn() -> Duration + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("poc-routing-placement".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut wait = first;
                loop {
                    stopped = wake
                        .wait_timeout(stopped, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if *stopped {
                        break;
                    }
                    // A panicking tick must not end the refreshes.
                    wait = no_unwind(&tick).unwrap_or(first);
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::answer;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_fetch_at_a_time() {
        let r = PlacementCache::new(Settings::default());
        assert!(r.begin_fetch());
        assert!(!r.begin_fetch());
        r.fetch_failed("x".into());
        assert!(r.begin_fetch());
    }

    #[test]
    fn epochs_are_adopted_and_bad_answers_keep_the_last_good_one() {
        let r = PlacementCache::new(Settings::default());
        let now = Instant::now();
        let refused = |r: &PlacementCache| {
            r.decide(Ok(ClientId::try_from("a").unwrap()), now, false)
                .unwrap_err()
                .code
        };
        assert_eq!(refused(&r), "placement_unavailable");

        let first = answer("hash", &[1, 2], None);
        assert!(
            matches!(r.fetched(Some(b"200"), first.as_bytes(), now), FetchOutcome::Changed(m) if m.contains("[1, 2]"))
        );
        assert_eq!(
            r.fetched(Some(b"200"), first.as_bytes(), now),
            FetchOutcome::Unchanged
        );
        let epoch = r
            .decide(Ok(ClientId::try_from("a").unwrap()), now, false)
            .unwrap()
            .epoch()
            .to_owned();

        // Outages are logged once per reason, and routing goes on by the last good snapshot.
        assert!(
            matches!(r.fetched(Some(b"503"), b"", now), FetchOutcome::Failed(m) if m.contains("HTTP 503"))
        );
        assert_eq!(
            r.fetched(Some(b"503"), b"", now),
            FetchOutcome::StillFailing
        );
        assert!(
            matches!(r.fetched(Some(b"200"), b"{", now), FetchOutcome::Failed(m) if m.contains("not a /placement"))
        );
        assert_eq!(
            r.decide(Ok(ClientId::try_from("a").unwrap()), now, false)
                .unwrap()
                .epoch()
                .to_owned(),
            epoch
        );

        let second = answer("hash", &[1, 2, 3], None);
        assert!(matches!(
            r.fetched(Some(b"200"), second.as_bytes(), now),
            FetchOutcome::Changed(_)
        ));
        assert_ne!(
            r.decide(Ok(ClientId::try_from("a").unwrap()), now, false)
                .unwrap()
                .epoch()
                .to_owned(),
            epoch
        );
    }

    #[test]
    fn panics_are_caught() {
        assert_eq!(no_unwind(|| 1), Some(1));
        assert_eq!(no_unwind(|| -> u8 { panic!("boom") }), None);
    }

    #[test]
    fn ticker_follows_the_delays_it_is_given_then_stops_when_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let ticker = Ticker::start(Duration::from_millis(1), move || {
            seen.fetch_add(1, Ordering::SeqCst);
            Duration::from_millis(5)
        })
        .unwrap();
        while count.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        drop(ticker);
        let after = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(count.load(Ordering::SeqCst), after, "no tick after drop");
    }

    #[test]
    fn fetches_are_fast_until_the_first_placement() {
        let r = PlacementCache::new(Settings::default());
        assert_eq!(r.next_fetch_in(), PlacementCache::STARTING);
        assert!(!r.failure_is_news(), "quiet while starting");
        let body = answer("hash", &[1], None);
        r.fetched(Some(b"200"), body.as_bytes(), Instant::now());
        assert_eq!(r.next_fetch_in(), Settings::default().refresh_interval);
        assert!(r.failure_is_news());
    }
}
