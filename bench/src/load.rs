//! A closed-loop HTTP/1.1 load generator: a fixed number of connections, each sending its next
//! request as soon as the previous answer arrives, for a warm-up and then a fixed duration.
//! With `rate`, requests are paced instead (an open loop at a fixed total rate), for soak runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poc_routing_placement::client_id_query;
use serde::Serialize;

/// What one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub requests: u64,
}

#[derive(Debug, Clone)]
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Total requests per second; None: as fast as answers come (closed loop).
    pub rate: Option<f64>,
    /// Count 421 answers as served (the native-hash peer, whose owner is not ours).
    pub accept_421: bool,
}

/// Sends GETs to `urls` in turn (each connection starts at a different offset).
/// A request counts as an error unless it is answered with a 2xx status.
pub async fn run(urls: Arc<Vec<hyper::Uri>>, load: &Load) -> Measured {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(load.concurrency)
        .build_http();
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(load.concurrency);
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(load.concurrency as f64 / r.max(1.0)));
    for worker in 0..load.concurrency {
        let client = client.clone();
        let urls = urls.clone();
        let recording = recording.clone();
        let stop = stop.clone();
        let accept_421 = load.accept_421;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut i = worker * 7919;
            let mut ticker = interval.map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let uri = urls[i % urls.len()].clone();
                i += 1;
                let started = Instant::now();
                let good = match client.get(uri).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok()
                            && (status.is_success() || (accept_421 && status.as_u16() == 421))
                    }
                    Err(_) => false,
                };
                if recording.load(Ordering::Relaxed) {
                    hist.saturating_record(started.elapsed().as_micros() as u64);
                    if good {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    tokio::time::sleep(load.warmup).await;
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(load.duration).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.expect("load task");
        hist.add(h).expect("same bounds");
        ok += o;
        errors += e;
    }
    Measured {
        rps: ok as f64 / elapsed.as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
        requests: ok + errors,
    }
}

/// `base + path + ?client_id=<id>` for every id.
pub fn urls(base: &str, path: &str, ids: &[String]) -> Arc<Vec<hyper::Uri>> {
    Arc::new(
        ids.iter()
            .map(|id| {
                format!("{base}{path}?{}", client_id_query(id))
                    .parse()
                    .expect("valid URI")
            })
            .collect(),
    )
}
