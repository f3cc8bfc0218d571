//! `poc-client`: where an id lives, join it, or verify routing for many ids through Envoy.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::{verify, Api, CallError};

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
            // One probe first, so an unreachable URL gives one clear line, not 1000 errors.
            if let Err(e @ (CallError::Unreachable { .. } | CallError::Timeout { .. })) =
                api.where_(&ids[0]).await
            {
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
