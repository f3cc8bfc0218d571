//! `poc-client`: where an id lives, join it, verify routing for many ids through Envoy, put
//! steady load on it while something changes, or compare every instance's placement view.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::{load, verify, views, Api, CallError};

const DEFAULT_URL: &str = "http://127.0.0.1:10000";

#[derive(Parser)]
#[command(
    name = "poc-client",
    version,
    about = "Talk to poc-routing through Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print which instance owns ID.
    Where {
        id: String,
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
    },
    /// Join ID and print the answer of the instance that took it.
    Join {
        id: String,
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
    },
    /// For many ids: /where, then /join, and check that the owner answered the join.
    Verify {
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        /// How many random ids to check (ignored with --ids).
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Read ids from FILE, one per line, instead of generating them.
        #[arg(long, value_name = "FILE")]
        ids: Option<PathBuf>,
        /// Which random ids to generate.
        #[arg(long, value_enum, default_value_t = IdKind::Mixed)]
        id_kind: IdKind,
        /// Seed for the random ids (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// With --json: include every id's result (owner and outcome).
        #[arg(long, requires = "json")]
        results: bool,
    },
    /// Steady /join traffic until SIGINT/SIGTERM or --max-seconds; then prints what clients
    /// saw (JSON with --json): answers by code, joins under the previous epoch, and the
    /// transition window. Exits 1 if any answer was not 2xx.
    Load {
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        /// Distinct ids, joined round-robin.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Stop after this long at the latest.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
        #[arg(long, value_enum, default_value_t = IdKind::Mixed)]
        id_kind: IdKind,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Every instance's placement view side by side, flagging the ones that disagree. Exits 0
    /// only when every view was read and all hold the same epoch.
    Views {
        /// Ask through Envoy: one instance's /placement and its report of every peer.
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        /// Ask these instances directly instead (repeat), e.g. http://172.18.0.3:8081.
        #[arg(long = "instance", value_name = "URL")]
        instances: Vec<String>,
        /// Also require exactly this many views (instances).
        #[arg(long)]
        expect: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

/// One probe before many requests, so an unreachable URL gives one clear line, not an error
/// per request.
async fn reachable(api: &Api, id: &str) -> Result<(), CallError> {
    match api.where_(id).await {
        Err(e @ (CallError::Unreachable { .. } | CallError::Timeout { .. })) => Err(e),
        _ => Ok(()),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("poc-client: {e}");
    ExitCode::from(1)
}

async fn print_call(api: &Api, path: &str, id: &str) -> ExitCode {
    match api.get_raw(path, id).await {
        Ok((status, body)) => {
            println!("{body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("poc-client: HTTP {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => fail(e),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Where { id, url } => print_call(&Api::new(&url), "/where", &id).await,
        Command::Join { id, url } => print_call(&Api::new(&url), "/join", &id).await,
        Command::Load {
            url,
            count,
            concurrency,
            max_seconds,
            id_kind,
            seed,
            json,
        } => {
            let ids = ids::generate(count.max(1), id_kind, seed.unwrap_or_else(rand::random));
            let api = Api::new(&url);
            if let Err(e) = reachable(&api, &ids[0]).await {
                return fail(e);
            }
            let stop = async {
                tokio::select! {
                    () = interrupted() => {},
                    () = tokio::time::sleep(std::time::Duration::from_secs(max_seconds)) => {},
                }
            };
            let report = load::run(&api, ids, concurrency, stop).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                println!("{}", report.summary());
            }
            if report.failures() == 0 && report.sent > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Views {
            url,
            instances,
            expect,
            json,
        } => {
            let views = if instances.is_empty() {
                views::via(&Api::new(&url)).await
            } else {
                views::direct(&instances).await
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&views).expect("views serialize")
                );
            } else {
                print!("{}", views::render(&views));
            }
            let count_ok = expect.map_or(true, |n| n == views.len());
            if views::agree(&views) && count_ok {
                ExitCode::SUCCESS
            } else {
                if !count_ok {
                    eprintln!(
                        "poc-client: {} views, expected {}",
                        views.len(),
                        expect.unwrap_or_default()
                    );
                }
                ExitCode::from(1)
            }
        }
        Command::Verify {
            url,
            count,
            concurrency,
            ids: file,
            id_kind,
            seed,
            json,
            results,
        } => {
            let ids = match file {
                Some(path) => match ids::from_file(&path) {
                    Ok(ids) => ids,
                    Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
                },
                None => ids::generate(count, id_kind, seed.unwrap_or_else(rand::random)),
            };
            if ids.is_empty() {
                return fail("no ids to verify");
            }
            let api = Api::new(&url);
            if let Err(e) = reachable(&api, &ids[0]).await {
                return fail(e);
            }
            let bar = if json || !std::io::stderr().is_terminal() {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(ids.len() as u64).with_style(
                    ProgressStyle::with_template("{bar:40} {pos}/{len} ids  {per_sec}  eta {eta}")
                        .expect("valid template"),
                )
            };
            let mut report = verify::verify(&api, ids, concurrency, |_| bar.inc(1)).await;
            bar.finish_and_clear();
            if !results {
                report.results.clear();
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.render());
            }
            if report.all_correct() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
