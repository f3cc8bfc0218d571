//! `poc-bench`: the benchmarks behind `make bench` and `make soak`.
//!
//! - `run`: every scenario against the local stack, one after another on this machine, plus
//!   placement quality for 1M ids; writes `target/bench/report.json` and `docs/BENCHMARKS.md`.
//! - `soak`: `/join` through Envoy at half the measured maximum for a long time, watching the
//!   servers' memory; adds its result to the same report.
//! - `sessions`: WebSocket sessions on `/join`: their setup rate through each flow and through
//!   the native-hash peer, and the memory an idle one costs on its owner and on Envoy.
//! - `hello`: the minimal hyper server of the `hello_world` scenario.
//! - `envoy-configs`: writes the generated Envoy configs under `bench/envoy/` again.
//!
//! What runs is data: the scenarios are rows of [`scenarios::SCENARIOS`], and the Envoy
//! configs are files under `bench/envoy/` ([`configs`]).
#![forbid(unsafe_code)]

mod configs;
mod load;
mod membership;
mod quality;
mod report;
mod scenarios;
mod sessions;
mod sim;
mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::{self, Flow};
use poc_routing_stack::{Deployment, Stack, StackConfig};
use poc_routing_testkit::{free_port, wait_until_2xx, KillOnDrop};

use scenarios::{Scenario, Setup, Target, SCENARIOS};

#[derive(Parser)]
#[command(name = "poc-bench", about = "poc-routing benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario and the placement-quality study; write the report.
    Run {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of warm-up per scenario (not measured).
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Seconds measured per scenario.
        #[arg(long, default_value_t = 8)]
        duration: u64,
        /// Times the whole table runs; the report shows each scenario's median, so that one
        /// round slowed by the shared machine does not decide a ratio. One by default, so that
        /// `make bench` fits in about 15 minutes (a round is about 5 minutes here); `--rounds 3`
        /// for steadier ratios.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Ids for the placement-quality study.
        #[arg(long, default_value_t = 1_000_000)]
        quality_ids: usize,
        /// Run only these scenarios (comma-separated names), print what they measure, and
        /// write no report: for comparing a change, not for docs/BENCHMARKS.md.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// /join through Envoy at a fixed rate (default: half of the measured maximum).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
    /// Membership cost by deployment size on the local stack: idle CPU, messages and DNS
    /// queries per instance, agreement after adding and removing one; writes
    /// docs/BENCHMARKS-membership.md.
    Membership {
        #[arg(long, value_delimiter = ',', default_values_t = [3u64, 10, 30, 100])]
        sizes: Vec<u64>,
        /// Seconds of idle measurement per size.
        #[arg(long, default_value_t = 20)]
        idle: u64,
        /// Skip the local stack (only the simulation).
        #[arg(long)]
        no_stack: bool,
        /// Skip the simulation (only the local stack).
        #[arg(long)]
        no_sim: bool,
        /// The simulation's runs, as SIZE@LOSS_PERCENT.
        #[arg(long, value_delimiter = ',', default_values_t = membership::SIM_RUNS.iter().map(|s| s.to_string()))]
        sim: Vec<String>,
    },
    /// WebSocket sessions: setup rate per flow and for the native-hash peer, memory per idle
    /// session; writes target/bench/sessions.json (and docs/BENCHMARKS.md after `run`).
    Sessions {
        /// Clients opening sessions at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Seconds measured per round and arm.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Idle sessions held for the memory measurement.
        #[arg(long, default_value_t = 2000)]
        idle: usize,
    },
    /// Write docs/BENCHMARKS.md again from target/bench/report.json (and soak.json).
    Render,
    /// Serve "hello" on ADDR (the hello_world scenario's server).
    Hello {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Write bench/envoy/no-filter.yaml and native-module.yaml again from envoy.yaml and
    /// native-hash.yaml.
    EnvoyConfigs,
}

async fn hello(addr: SocketAddr) -> Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(b"hello"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(crate) fn bench_dir() -> PathBuf {
    poc_routing_stack::envoy::repo_root().join("target/bench")
}

/// A bench stack on its own loopback addresses, quiet logs.
pub(crate) fn stack_config(name: &str, replicas: u32, flow: Option<Flow>) -> StackConfig {
    let mut c = StackConfig::new(
        replicas,
        Deployment::Compose,
        IndexMode::Hash,
        bench_dir().join(name),
    );
    c.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.probe = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.operator = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.net = [127, 0, 77];
    c.flow = flow;
    c.envoy_component_log_level = "lua:warn,dynamic_modules:warn".into();
    c
}

/// Starts the local stack a scenario's setup describes.
/// A setup with `jwks` needs the issuer whose JWKS Envoy verifies tokens with.
pub(crate) async fn start_stack(
    setup: &Setup,
    replicas: u32,
    issuer: Option<&poc_routing_testkit::jwt::Issuer>,
) -> Result<Stack> {
    let jwks = match (setup.jwks, issuer) {
        (true, Some(issuer)) => Some(issuer),
        (true, None) => bail!("{} verifies JWTs: it needs an issuer", setup.envoy),
        (false, _) => None,
    };
    let root = envoy::repo_root();
    let name = format!(
        "stack-{}",
        setup.envoy.rsplit('/').next().unwrap_or(setup.envoy)
    );
    let mut config = stack_config(&name, replicas, setup.flow);
    if setup.envoy != "envoy.yaml" {
        let yaml = std::fs::read_to_string(root.join(setup.envoy))
            .with_context(|| format!("read {}", setup.envoy))?;
        config.envoy_yaml_override = Some(yaml);
    }
    if let Some(lua) = setup.lua {
        config.lua_override =
            Some(std::fs::read_to_string(root.join(lua)).with_context(|| format!("read {lua}"))?);
    }
    if let Some(replication) = setup.replication {
        config
            .server_env
            .push(("REPLICATION".into(), replication.into()));
    }
    config.app = setup.app.map(str::to_owned);
    if let Some(issuer) = jwks {
        std::fs::create_dir_all(&config.run_dir)?;
        std::fs::write(config.run_dir.join(configs::JWKS_FILE), issuer.jwks())?;
    }
    let members = config.placement().members().len();
    let stack = Stack::start(config).await?;
    if setup.module_placement {
        stack.wait_module_members(members).await?;
    }
    Ok(stack)
}

/// Starts `poc-bench hello` on a free port; returns it with its URL.
async fn start_hello() -> Result<(KillOnDrop, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = KillOnDrop::new(
        Command::new(std::env::current_exe()?)
            .args(["hello", "--addr", &addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let url = format!("http://{addr}");
    wait_until_2xx(&reqwest::Client::new(), &url, Duration::from_secs(10)).await?;
    Ok((child, url))
}

/// The resident memory of process `pid`, in KiB (the soak's servers, the sessions' owner and
/// Envoy).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) fn bench_ids() -> Vec<String> {
    quality::random_ids(10_000, 42)
        .into_iter()
        .map(|id| id.into_string())
        .collect()
}

/// Runs every row of [`SCENARIOS`] in order; consecutive rows with the same setup share a stack.
async fn run_scenarios(
    settings: &load::Load,
    replicas: u32,
    only: &[String],
) -> Result<report::Scenarios> {
    if let Some(unknown) = only
        .iter()
        .find(|o| !SCENARIOS.iter().any(|s| s.name == *o))
    {
        bail!("--only: no scenario named {unknown:?}");
    }
    let ids = bench_ids();
    // The JWT arms' key: its JWKS goes into their Envoy's directory, its tokens into requests.
    let issuer = poc_routing_testkit::jwt::Issuer::new("bench")?;
    let mut scenarios = report::Scenarios::new();
    let mut stack: Option<(Setup, Stack)> = None;
    let chosen = SCENARIOS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name));
    for s in chosen {
        // A stack the next row does not need is stopped before anything else starts.
        if stack.as_ref().map(|(setup, _)| Some(*setup)) != Some(s.setup) {
            stack = None;
        }
        let hello;
        let base = match (s.target, s.setup) {
            (Target::Hello, _) => {
                hello = start_hello().await?;
                hello.1.clone()
            }
            (target, Some(setup)) => {
                if stack.is_none() {
                    stack = Some((setup, start_stack(&setup, replicas, Some(&issuer)).await?));
                }
                let (_, running) = stack.as_ref().expect("started above");
                match target {
                    Target::Instance => {
                        let first = running.placement().members()[0];
                        let addr = running.instance_addr(first).context("first instance")?;
                        format!("http://{addr}")
                    }
                    _ => running.url(),
                }
            }
            (_, None) => bail!("scenario {} has a target but no setup", s.name),
        };
        let targets = load::targets(&base, s.path, s.carry, &ids, Some(&issuer))?;
        let measured = scenario(s, targets, settings).await;
        scenarios.insert(s.name.to_owned(), measured);
    }
    Ok(scenarios)
}

async fn scenario(
    s: &Scenario,
    targets: std::sync::Arc<Vec<load::Target>>,
    settings: &load::Load,
) -> load::Measured {
    let settings = load::Load {
        accept_421: s.fixed_owner,
        ..settings.clone()
    };
    eprintln!(
        "[bench] {}: {} connections, {:?} warm-up, {:?} measured",
        s.name, settings.concurrency, settings.warmup, settings.duration
    );
    let m = load::run(targets, &settings).await;
    eprintln!(
        "[bench] {}: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        s.name, m.rps, m.p50_ms, m.p99_ms, m.errors
    );
    m
}

/// Placement quality for `ids` random ids, N = 2..64, and its plot in docs/.
fn placement_quality(ids: usize) -> Result<(Vec<quality::Row>, Vec<quality::Row>)> {
    eprintln!("[bench] placement quality: {ids} ids, N = 2..64");
    let started = Instant::now();
    let qids = quality::random_ids(ids, 7);
    let hash = quality::measure(IndexMode::Hash, &qids, 2..=64);
    let jump = quality::measure(IndexMode::Jump, &qids, 2..=64);
    eprintln!(
        "[bench] placement quality took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    quality::plot(&docs_dir()?.join("placement-moves.svg"), &hash, &jump)?;
    Ok((hash, jump))
}

fn docs_dir() -> Result<PathBuf> {
    let docs = envoy::repo_root().join("docs");
    std::fs::create_dir_all(&docs)?;
    Ok(docs)
}

/// What `poc-bench run` is asked.
struct RunArgs {
    settings: load::Load,
    rounds: u32,
    replicas: u32,
    quality_ids: usize,
    only: Vec<String>,
}

/// Runs the table `rounds` times; each scenario's median.
async fn run_rounds(args: &RunArgs) -> Result<report::Scenarios> {
    let mut rounds: Vec<report::Scenarios> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        eprintln!("[bench] round {round} of {}", args.rounds.max(1));
        rounds.push(run_scenarios(&args.settings, args.replicas, &args.only).await?);
    }
    Ok(rounds[0]
        .keys()
        .map(|name| {
            let measured: Vec<load::Measured> =
                rounds.iter().filter_map(|r| r.get(name).cloned()).collect();
            (name.clone(), load::Measured::median(&measured))
        })
        .collect())
}

async fn run(args: RunArgs) -> Result<()> {
    std::fs::create_dir_all(bench_dir())?;
    let (settings, replicas, quality_ids, only) =
        (&args.settings, args.replicas, args.quality_ids, &args.only);
    let scenarios = run_rounds(&args).await?;
    if !only.is_empty() {
        for (name, m) in &scenarios {
            eprintln!(
                "[bench] median of {} rounds: {name}: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                args.rounds, m.rps, m.p50_ms, m.p99_ms, m.errors
            );
        }
    }
    if !only.is_empty() {
        eprintln!("[bench] --only: no report written");
        return Ok(());
    }
    let (hash, jump) = placement_quality(quality_ids)?;
    let default_flow = shipped_flow()?;
    let report = report::Report::new(
        settings.clone(),
        args.rounds,
        replicas,
        default_flow,
        scenarios,
        quality_ids,
        hash,
        jump,
    );
    report.save(&bench_dir().join("report.json"))?;
    report::render(&bench_dir(), &docs_dir()?.join("BENCHMARKS.md"))?;
    eprintln!(
        "[bench] wrote target/bench/report.json, docs/BENCHMARKS.md, docs/placement-moves.svg"
    );
    Ok(())
}

/// The flow `envoy.yaml` ships as its default.
pub(crate) fn shipped_flow() -> Result<Flow> {
    Flow::of(&std::fs::read_to_string(
        envoy::repo_root().join("envoy.yaml"),
    )?)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            concurrency,
            warmup,
            duration,
            rounds,
            replicas,
            quality_ids,
            only,
        } => {
            run(RunArgs {
                settings: load::Load {
                    concurrency,
                    warmup: Duration::from_secs(warmup),
                    duration: Duration::from_secs(duration),
                    rate: None,
                    accept_421: false,
                },
                rounds,
                replicas,
                quality_ids,
                only,
            })
            .await
        }
        Cmd::Soak {
            minutes,
            rate,
            replicas,
        } => soak::run(minutes, rate, replicas).await,
        Cmd::Membership {
            sizes,
            idle,
            no_stack,
            no_sim,
            sim,
        } => {
            membership::run(
                if no_stack { &[] } else { &sizes },
                if no_sim { &[] } else { &sim },
                Duration::from_secs(idle),
                &poc_routing_stack::envoy::repo_root().join("docs/BENCHMARKS-membership.md"),
            )
            .await
        }
        Cmd::Sessions {
            concurrency,
            warmup,
            duration,
            rounds,
            idle,
        } => sessions::run(sessions::Settings {
            concurrency,
            warmup_s: warmup,
            duration_s: duration,
            rounds,
            idle_sessions: idle,
        })
        .await
        .map(|_| ()),
        Cmd::Render => report::render(
            &bench_dir(),
            &poc_routing_stack::envoy::repo_root().join("docs/BENCHMARKS.md"),
        ),
        Cmd::Hello { addr } => hello(addr).await,
        Cmd::EnvoyConfigs => {
            for path in configs::write()? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
