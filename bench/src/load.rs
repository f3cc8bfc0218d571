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

impl Measured {
    /// The median of each figure over several rounds of one scenario (errors and requests are
    /// summed): one slow or fast round on a shared machine moves nothing.
    pub fn median(rounds: &[Measured]) -> Measured {
        let median = |f: fn(&Measured) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        Measured {
            rps: median(|m| m.rps),
            p50_ms: median(|m| m.p50_ms),
            p99_ms: median(|m| m.p99_ms),
            errors: rounds.iter().map(|m| m.errors).sum(),
            requests: rounds.iter().map(|m| m.requests).sum(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Total requests per second; None: as fast as answers come (closed loop).
    pub rate: Option<f64>,
    /// Count 421 answers as served: the diagnostics that send every join to one fixed owner.
    pub accept_421: bool,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One request of a scenario: its URI, and the header that carries its key (a header, cookie
/// or JWT arm), made once before the run.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: hyper::Uri,
    pub header: Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

/// What every worker shares: where to send, and the two switches the run flips.
struct Shared {
    client: HttpClient,
    targets: Arc<Vec<Target>>,
    /// On between the warm-up and the end of the measured time.
    recording: AtomicBool,
    stop: AtomicBool,
    accept_421: bool,
    /// Each worker's pause between requests, for a fixed total rate.
    interval: Option<Duration>,
}

/// One connection's loop: GET the next URL, and while recording, its latency and outcome.
async fn worker(shared: Arc<Shared>, index: usize) -> (Histogram<u64>, u64, u64) {
    let mut hist = histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut i = index * 7919;
    let mut ticker = shared.interval.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let target = &shared.targets[i % shared.targets.len()];
        i += 1;
        let mut request = hyper::Request::get(target.uri.clone());
        if let Some((name, value)) = &target.header {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::new())
            .expect("a GET with a valid URI and header");
        let started = Instant::now();
        let good = match shared.client.request(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok()
                    && (status.is_success() || (shared.accept_421 && status.as_u16() == 421))
            }
            Err(_) => false,
        };
        if shared.recording.load(Ordering::Relaxed) {
            hist.saturating_record(started.elapsed().as_micros() as u64);
            if good {
                ok += 1;
            } else {
                errors += 1;
            }
        }
    }
    (hist, ok, errors)
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

/// Sends GETs to `targets` in turn (each connection starts at a different offset).
/// A request counts as an error unless it is answered with a 2xx status.
pub async fn run(targets: Arc<Vec<Target>>, load: &Load) -> Measured {
    let shared = Arc::new(Shared {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(load.concurrency)
            .build_http(),
        targets,
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        accept_421: load.accept_421,
        interval: load
            .rate
            .map(|r| Duration::from_secs_f64(load.concurrency as f64 / r.max(1.0))),
    });
    let tasks: Vec<_> = (0..load.concurrency)
        .map(|i| tokio::spawn(worker(shared.clone(), i)))
        .collect();
    tokio::time::sleep(load.warmup).await;
    shared.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(load.duration).await;
    shared.recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
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

/// How a scenario's requests carry their id, besides `?client_id=<id>`, which every request
/// has (so that a native peer's `/where` answers 200 whatever it hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// The query parameter alone.
    Query,
    /// The header named, holding the id.
    Header(&'static str),
    /// The cookie named, holding the id.
    Cookie(&'static str),
    /// The path's `{key}` segment (percent-encoded).
    Path,
    /// `authorization: Bearer <a token whose sub is the id>`.
    Jwt,
}

/// For every id: `base + path + ?client_id=<id>`, with the id in `carry` too. A JWT arm's
/// tokens are signed by `issuer`.
pub fn targets(
    base: &str,
    path: &str,
    carry: Carry,
    ids: &[String],
    issuer: Option<&poc_routing_testkit::jwt::Issuer>,
) -> anyhow::Result<Arc<Vec<Target>>> {
    use anyhow::Context;
    use hyper::header::{HeaderName, HeaderValue};
    let header = |name: &str, value: String| -> anyhow::Result<_> {
        Ok(Some((
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(&value)?,
        )))
    };
    let made: anyhow::Result<Vec<Target>> = ids
        .iter()
        .map(|id| {
            let path = match carry {
                Carry::Path => path.replace(
                    "{key}",
                    &percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                ),
                _ => path.to_owned(),
            };
            let header = match carry {
                Carry::Query | Carry::Path => None,
                Carry::Header(name) => header(name, id.clone())?,
                Carry::Cookie(name) => header("cookie", format!("{name}={id}"))?,
                Carry::Jwt => {
                    let issuer = issuer.context("a JWT arm needs an issuer")?;
                    header(
                        "authorization",
                        format!("Bearer {}", issuer.token(id, 86_400)?),
                    )?
                }
            };
            Ok(Target {
                uri: format!("{base}{path}?{}", client_id_query(id)).parse()?,
                header,
            })
        })
        .collect();
    Ok(Arc::new(made?))
}
