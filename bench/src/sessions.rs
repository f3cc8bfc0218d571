//! `poc-bench sessions`: what a WebSocket session on `/join` costs.
//!
//! - **Setup rate**: sessions opened, welcomed and closed again as fast as `concurrency`
//!   clients can, through each flow's Envoy and through the native-hash peer (MAGLEV on
//!   `client_id`, the same upgrade on its route). One instance, so that every arm reaches the
//!   same owner and the owner accepts every session: what differs is Envoy's path to it.
//! - **Memory per idle session**: `idle` sessions held open through the shipped `envoy.yaml`,
//!   and the resident memory of the owner and of Envoy before and after, per session.
//!
//! Writes `target/bench/sessions.json`; `docs/BENCHMARKS.md` shows it (rendered again here
//! when `target/bench/report.json` exists, as after `poc-bench run`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use poc_routing_client::sessions::{Options, Run};
use poc_routing_client::Api;
use poc_routing_stack::envoy::Flow;
use poc_routing_wire::SessionMessage;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::scenarios::Setup;
use crate::{bench_dir, bench_ids, load, report, rss_kib, start_stack};

/// One way through Envoy to the owner.
struct Arm {
    name: &'static str,
    what: &'static str,
    setup: Setup,
}

const ARMS: &[Arm] = &[
    Arm {
        name: "sessions_module",
        what: "module flow (envoy.yaml's default): the module's decision, strict override to the owner's address",
        setup: Setup::shipped(Some(Flow::Module)),
    },
    Arm {
        name: "sessions_lua",
        what: "Lua flow: /where asked per session, the guard, DFP to the owner's name",
        setup: Setup::shipped(Some(Flow::Lua)),
    },
    Arm {
        name: "sessions_native_hash",
        what: "bench-only Envoy: MAGLEV on client_id, no routing filter (the peer), the same upgrade",
        setup: Setup::file("bench/envoy/native-hash.yaml"),
    },
];

/// How sessions are set up: how many clients at once, for how long, how many times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub concurrency: usize,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub rounds: u32,
    pub idle_sessions: usize,
}

/// One arm's setup rate: each figure the median of its rounds; errors and sessions summed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupRate {
    pub name: String,
    pub what: String,
    /// Sessions opened, welcomed and closed per second.
    pub sessions_per_s: f64,
    /// From the connect to the owner's welcome.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub sessions: u64,
}

/// The resident memory an idle session costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleMemory {
    pub sessions: usize,
    pub owner_kib_before: u64,
    pub owner_kib_after: u64,
    pub envoy_kib_before: u64,
    pub envoy_kib_after: u64,
    pub owner_bytes_per_session: f64,
    pub envoy_bytes_per_session: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsReport {
    pub settings: Settings,
    pub setup: Vec<SetupRate>,
    pub idle: IdleMemory,
}

impl SessionsReport {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The module flow's setup rate as a share of the native peer's.
    pub fn module_to_native(&self) -> Option<f64> {
        let rate = |n: &str| {
            self.setup
                .iter()
                .find(|s| s.name == n)
                .map(|s| s.sessions_per_s)
        };
        Some(rate("sessions_module")? / rate("sessions_native_hash")?.max(f64::MIN_POSITIVE))
    }
}

/// Opens one session on `url`, waits for the owner's welcome, closes it and waits for the
/// close to finish. Returns the time to the welcome.
async fn one_session(url: &str) -> Result<Duration> {
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let first = socket.next().await.context("closed before the welcome")??;
    let Message::Text(text) = first else {
        bail!("the first message was not text: {first:?}");
    };
    if !matches!(
        serde_json::from_str::<SessionMessage>(&text)?,
        SessionMessage::Welcome { .. }
    ) {
        bail!("the first message was not a welcome: {text}");
    }
    let welcomed = started.elapsed();
    socket.close(None).await?;
    // The owner answers the close; then the client ends the connection (Envoy would wait up
    // to its delayed_close_timeout, 1 s, for the client to close first).
    while let Some(m) = socket.next().await {
        if matches!(m, Err(_) | Ok(Message::Close(_))) {
            break;
        }
    }
    Ok(welcomed)
}

/// `concurrency` clients opening sessions one after another over `urls` for `warmup` (not
/// measured), then `duration`: sessions per second, and the time to the welcome.
async fn setup_round(urls: Arc<Vec<String>>, settings: &Settings) -> load::Measured {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(settings.warmup_s);
    let end = measure_from + Duration::from_secs(settings.duration_s);
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency.max(1) {
        let (urls, next, errors) = (urls.clone(), next.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures");
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let outcome = tokio::time::timeout(Duration::from_secs(5), one_session(url)).await;
                if now < measure_from {
                    continue;
                }
                match outcome {
                    Ok(Ok(welcomed)) => {
                        let _ = histogram.record(welcomed.as_micros() as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("3 significant figures");
    for w in workers {
        if let Ok(h) = w.await {
            let _ = all.add(h);
        }
    }
    let seconds = settings.duration_s.max(1) as f64;
    load::Measured {
        rps: all.len() as f64 / seconds,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed),
        requests: all.len(),
    }
}

/// Holds `count` idle sessions through the shipped `envoy.yaml` on one instance; the owner's
/// and Envoy's memory before and after.
async fn idle_memory(count: usize) -> Result<IdleMemory> {
    let stack = start_stack(&Setup::shipped(None), 1, None).await?;
    let owner = stack.instance_pids()[0];
    let envoy = stack.envoy_pid().context("Envoy is not running")?;
    let public = Api::new(&stack.url());
    // Warm both with a few sessions first, so that what is measured is per session, not the
    // first session's one-time allocations.
    let warm = Run::start(&public, &bench_ids()[..100], idle_options());
    if !warm.wait_all_up(Duration::from_secs(30)).await {
        bail!("warm-up sessions: {}", warm.report(None).render());
    }
    warm.stop(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (owner_before, envoy_before) = (rss_kib(owner), rss_kib(envoy));
    let ids: Vec<String> = bench_ids().into_iter().take(count).collect();
    let run = Run::start(&public, &ids, idle_options());
    if !run.wait_all_up(Duration::from_secs(120)).await {
        bail!("idle sessions: {}", run.report(None).render());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (owner_after, envoy_after) = (rss_kib(owner), rss_kib(envoy));
    let report = run.stop(None).await;
    if report.up != ids.len() || report.unexpected_closes != 0 {
        bail!("idle sessions did not all stay up: {}", report.render());
    }
    let (Some(ob), Some(oa), Some(eb), Some(ea)) =
        (owner_before, owner_after, envoy_before, envoy_after)
    else {
        bail!("could not read /proc/<pid>/status of the owner or Envoy");
    };
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 * 1024.0 / count as f64;
    Ok(IdleMemory {
        sessions: count,
        owner_kib_before: ob,
        owner_kib_after: oa,
        envoy_kib_before: eb,
        envoy_kib_after: ea,
        owner_bytes_per_session: per(ob, oa),
        envoy_bytes_per_session: per(eb, ea),
    })
}

/// Sessions that only answer the owner's pings.
fn idle_options() -> Options {
    Options {
        ping_every: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// `poc-bench sessions`.
pub async fn run(settings: Settings) -> Result<SessionsReport> {
    let ids = bench_ids();
    let mut setup = Vec::new();
    for arm in ARMS {
        let stack = start_stack(&arm.setup, 1, None).await?;
        let base = stack.url().replacen("http://", "ws://", 1);
        let urls: Arc<Vec<String>> = Arc::new(
            load::targets(&base, "/join", load::Carry::Query, &ids, None)?
                .iter()
                .map(|t| t.uri.to_string())
                .collect(),
        );
        let mut rounds = Vec::new();
        for round in 1..=settings.rounds.max(1) {
            let m = setup_round(urls.clone(), &settings).await;
            eprintln!(
                "[sessions] {} round {round}: {:.0} sessions/s, welcome p50 {:.2} ms p99 {:.2} ms, {} errors",
                arm.name, m.rps, m.p50_ms, m.p99_ms, m.errors
            );
            rounds.push(m);
        }
        let m = load::Measured::median(&rounds);
        setup.push(SetupRate {
            name: arm.name.into(),
            what: arm.what.into(),
            sessions_per_s: m.rps,
            p50_ms: m.p50_ms,
            p99_ms: m.p99_ms,
            errors: m.errors,
            sessions: m.requests,
        });
    }
    let idle = idle_memory(settings.idle_sessions).await?;
    eprintln!(
        "[sessions] {} idle sessions: owner {:.0} B each ({} -> {} KiB), Envoy {:.0} B each ({} -> {} KiB)",
        idle.sessions,
        idle.owner_bytes_per_session,
        idle.owner_kib_before,
        idle.owner_kib_after,
        idle.envoy_bytes_per_session,
        idle.envoy_kib_before,
        idle.envoy_kib_after
    );
    let report = SessionsReport {
        settings,
        setup,
        idle,
    };
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(
        bench_dir().join("sessions.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let docs = poc_routing_stack::envoy::repo_root().join("docs/BENCHMARKS.md");
    if bench_dir().join("report.json").exists() {
        report::render(&bench_dir(), &docs)?;
        eprintln!("[sessions] wrote target/bench/sessions.json and docs/BENCHMARKS.md");
    } else {
        eprintln!(
            "[sessions] wrote target/bench/sessions.json (docs/BENCHMARKS.md is written after `poc-bench run`)"
        );
    }
    let errors: u64 = report.setup.iter().map(|s| s.errors).sum();
    if errors > 0 {
        bail!("{errors} sessions failed to open or close");
    }
    Ok(report)
}

/// The sessions section of docs/BENCHMARKS.md.
pub fn section(report: Option<&SessionsReport>) -> String {
    let mut md = "\n## WebSocket sessions\n\n".to_owned();
    let Some(r) = report else {
        return md + "Not run yet: `make bench` (or `make bench-sessions`).\n";
    };
    let s = &r.settings;
    md += &format!(
        "`poc-bench sessions`: one instance, so that every arm reaches the same owner and does the same upgrade; {} clients each open a session on `/join`, wait for the owner's welcome and close it, one after another, for {} s after {} s of warm-up; the median of {} rounds.\n\n",
        s.concurrency, s.duration_s, s.warmup_s, s.rounds
    );
    md += "| arm | what | sessions/s | welcome p50 ms | welcome p99 ms | errors |\n|---|---|---:|---:|---:|---:|\n";
    for a in &r.setup {
        md += &format!(
            "| `{}` | {} | {:.0} | {:.2} | {:.2} | {} |\n",
            a.name, a.what, a.sessions_per_s, a.p50_ms, a.p99_ms, a.errors
        );
    }
    if let Some(ratio) = r.module_to_native() {
        md +=
            &format!("\nThe module flow sets sessions up at {ratio:.2}× the native peer's rate.\n");
    }
    let i = &r.idle;
    md += &format!(
        "\nMemory per idle session ({} sessions held through the shipped `envoy.yaml`, each answering only the owner's pings every 20 s): the owner {:.1} KiB ({} → {} KiB), Envoy {:.1} KiB ({} → {} KiB).\n",
        i.sessions,
        i.owner_bytes_per_session / 1024.0,
        i.owner_kib_before,
        i.owner_kib_after,
        i.envoy_bytes_per_session / 1024.0,
        i.envoy_kib_before,
        i.envoy_kib_after
    );
    md
}
