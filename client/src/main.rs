//! `poc-client`: where an id lives, join it, verify routing for many ids through Envoy, put
//! steady load on it while something changes, or compare every instance's placement view.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use poc_routing_client::api::JoinRoute;
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::{audit, load, scale, sessions, verify, views, Api, CallError};
use poc_routing_placement::KeySource;

/// Envoy's public listener: /join, /where and /health.
const DEFAULT_URL: &str = "http://127.0.0.1:10000";
/// Envoy's operator listener: every instance endpoint, on the host's loopback only.
const OPERATOR_URL: &str = "http://127.0.0.1:9903";

#[derive(Parser)]
#[command(
    name = "poc-client",
    version,
    about = "Talk to poc-routing through Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The operator's token file, for the commands that read the operator's endpoints (views,
    /// audit, scale-step). Else POC_OPERATOR_TOKEN (the token itself), else
    /// .secrets/operator/token if it exists.
    #[arg(
        long,
        global = true,
        env = "POC_OPERATOR_TOKEN_FILE",
        value_name = "FILE"
    )]
    operator_token_file: Option<PathBuf>,
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
        #[command(flatten)]
        route: RouteArgs,
    },
    /// For many ids: /where, then /join, and check that the owner answered the join.
    Verify(VerifyArgs),
    /// Steady /join traffic until SIGINT/SIGTERM or --max-seconds; then prints what clients
    /// saw (JSON with --json): answers by code, joins under the previous epoch, and the
    /// transition window. Exits 1 if any answer was not 2xx.
    Load(LoadArgs),
    /// Every instance's placement view side by side, flagging the ones that disagree. Exits 0
    /// only when every view was read and all hold the same epoch.
    Views(ViewsArgs),
    /// Runs COMMAND (a scale change: `docker compose up -d --scale server=3`, `kubectl scale
    /// ...`) under steady /join load, waits until every view agrees on --expect members, then
    /// verifies 1000 ids. Exits 0 only with 0 non-2xx answers during the step and every id on
    /// its owner after it; prints what clients saw (JSON with --json).
    ScaleStep(ScaleStepArgs),
    /// Whether every client is registered exactly once, at its current owner: reads every
    /// instance's registrations through Envoy's operator listener. Reports lost (with --ids),
    /// duplicated and misplaced ids and pending hand-offs; audits again until clean or
    /// --within-seconds passes, and says how long that took. Exits 1 unless clean.
    Audit(AuditArgs),
    /// Holds --count WebSocket sessions (`/join` with `Upgrade: websocket`) through Envoy for
    /// --seconds, each reconnected when its owner closes it as moved; then checks each session's
    /// owner against /where. Prints sessions up, on their owner, moved, unexpected closes,
    /// reconnect times and time without a session (JSON with --json). Exits 1 unless every
    /// session is up on its owner and none closed unexpectedly.
    Sessions(SessionsArgs),
    /// The example room service of app mode (examples/rooms) through Envoy: `post` adds
    /// message ROUND to rooms room-0..room-N-1, each of which must answer on its owner as the
    /// ROUND-th message; `verify` reads every room, whose history must be exactly messages
    /// 1..ROUNDS, on its owner. Refusals that forwarded nothing (a room's state on its way) are
    /// retried for 20 s. Exits 1 unless every room is right.
    #[command(subcommand)]
    Rooms(RoomsCommand),
}

#[derive(Subcommand)]
enum RoomsCommand {
    /// Post round ROUND to every room.
    Post {
        #[command(flatten)]
        rooms: RoomsArgs,
        #[arg(long)]
        round: u32,
    },
    /// Read every room: exactly ROUNDS messages each, on its owner.
    Verify {
        #[command(flatten)]
        rooms: RoomsArgs,
        #[arg(long)]
        rounds: u32,
    },
}

#[derive(clap::Args)]
struct RoomsArgs {
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// How many rooms: room-0 .. room-(N-1).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SessionsArgs {
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    #[command(flatten)]
    route: RouteArgs,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// How long to hold them (stops earlier on SIGINT/SIGTERM).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Each session pings its owner this often.
    #[arg(long, default_value_t = 1000)]
    ping_ms: u64,
    #[command(flatten)]
    random: RandomIds,
    #[arg(long)]
    json: bool,
    /// Also write the progress to stderr every 200 ms, one JSON object per line: the time
    /// (`unix_ms`), sessions, up, moved, unexpected closes, refused connects. For a script
    /// that watches the run while it breaks something (`make test-compose`'s fault row).
    #[arg(long)]
    progress_json: bool,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Envoy's operator listener.
    #[arg(long, default_value = OPERATOR_URL)]
    operator_url: String,
    /// The ids that were joined, one per line: those registered nowhere are lost.
    #[arg(long, value_name = "FILE")]
    ids: Option<PathBuf>,
    /// Audit again until clean for up to this long (0: once).
    #[arg(long, default_value_t = 0.0)]
    within_seconds: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ScaleStepArgs {
    /// Envoy's public listener: the load and the verification go through it.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    #[command(flatten)]
    route: RouteArgs,
    /// Envoy's operator listener: the views are read through it.
    #[arg(long, default_value = OPERATOR_URL)]
    operator_url: String,
    /// The member count every view must agree on after the change.
    #[arg(long)]
    expect: usize,
    /// How long the views may take to agree, from the start of COMMAND.
    #[arg(long, default_value_t = 60)]
    within_seconds: u64,
    #[command(flatten)]
    random: RandomIds,
    #[arg(long)]
    json: bool,
    /// The change, run as given (no shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    #[command(flatten)]
    route: RouteArgs,
    /// How many random ids to check (ignored with --ids).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Read ids from FILE, one per line, instead of generating them.
    #[arg(long, value_name = "FILE")]
    ids: Option<PathBuf>,
    #[command(flatten)]
    random: RandomIds,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// With --json: include every id's result (owner and outcome).
    #[arg(long, requires = "json")]
    results: bool,
}

#[derive(clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    #[command(flatten)]
    route: RouteArgs,
    /// Distinct ids, joined round-robin.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Stop after this long at the latest.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    #[command(flatten)]
    random: RandomIds,
    #[arg(long)]
    json: bool,
}

/// The affinity route joins and sessions go to, and where its requests carry the id.
#[derive(clap::Args)]
struct RouteArgs {
    /// The path to send joins and sessions to (with `{key}` where a path source reads it,
    /// such as /rooms/{key}/join).
    #[arg(long, default_value = "/join", value_name = "PATH")]
    route: String,
    /// Where that route's requests carry the id, as envoy.yaml names it: query:NAME,
    /// header:NAME, cookie:NAME or path:/segments/{key}/... (header and cookie ids are sent as
    /// they are: use --id-kind token for ids any of them can carry).
    #[arg(long, default_value = "query:client_id", value_name = "SOURCE")]
    key: KeySource,
}

impl RouteArgs {
    /// `url`'s client on this route.
    fn api(&self, url: &str) -> Api {
        Api::new(url).with_route(JoinRoute {
            path: self.route.clone(),
            source: self.key.clone(),
        })
    }
}

/// How `verify` and `load` generate their random ids.
#[derive(clap::Args)]
struct RandomIds {
    /// Which random ids to generate.
    #[arg(long, value_enum, default_value_t = IdKind::Mixed)]
    id_kind: IdKind,
    /// Seed for the random ids (default: random).
    #[arg(long)]
    seed: Option<u64>,
}

impl RandomIds {
    fn generate(&self, count: usize) -> Vec<String> {
        ids::generate(count, self.id_kind, self.seed.unwrap_or_else(rand::random))
    }
}

#[derive(clap::Args)]
struct ViewsArgs {
    /// Ask through Envoy's operator listener: one instance's /placement and its report of
    /// every peer. The public listener (10000) does not serve /placement.
    #[arg(long, default_value = OPERATOR_URL)]
    url: String,
    /// Ask these instances directly instead (repeat), e.g. http://172.18.0.3:8081.
    #[arg(long = "instance", value_name = "URL")]
    instances: Vec<String>,
    /// Also require exactly this many views (instances).
    #[arg(long)]
    expect: Option<usize>,
    #[arg(long)]
    json: bool,
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

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialize")
    );
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run_load(args: LoadArgs) -> ExitCode {
    let ids = args.random.generate(args.count.max(1));
    let api = args.route.api(&args.url);
    if let Err(e) = reachable(&api, &ids[0]).await {
        return fail(e);
    }
    let stop = async {
        tokio::select! {
            () = interrupted() => {},
            () = tokio::time::sleep(std::time::Duration::from_secs(args.max_seconds)) => {},
        }
    };
    let report = load::run(&api, ids, args.concurrency, stop).await;
    if args.json {
        print_json(&report);
    } else {
        println!("{}", report.summary());
    }
    exit_code(report.failures() == 0 && report.sent > 0)
}

async fn run_sessions(args: SessionsArgs) -> ExitCode {
    let ids = args.random.generate(args.count.max(1));
    let public = args.route.api(&args.url);
    let options = sessions::Options {
        ping_every: std::time::Duration::from_millis(args.ping_ms.max(10)),
        ..sessions::Options::default()
    };
    if let Err(e) = reachable(&public, &ids[0]).await {
        return fail(e);
    }
    let run = sessions::Run::start(&public, &ids, options);
    let progress = if args.json || args.progress_json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.seconds).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} s  {msg}").expect("valid template"),
        )
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.seconds);
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = &mut stop => break,
            () = tokio::time::sleep(std::time::Duration::from_millis(if args.progress_json { 200 } else { 500 })) => {
                let r = run.report(None);
                progress.set_position(r.seconds as u64);
                progress.set_message(format!("up {}/{}, moved {}, unexpected {}", r.up, r.sessions, r.moved, r.unexpected_closes));
                if args.progress_json {
                    let unix_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    eprintln!(
                        "{}",
                        serde_json::json!({
                            "unix_ms": unix_ms,
                            "sessions": r.sessions,
                            "up": r.up,
                            "moved": r.moved,
                            "unexpected_closes": r.unexpected_closes,
                            "refused_connects": r.refused_connects,
                        })
                    );
                }
            }
        }
    }
    progress.finish_and_clear();
    // A session may be between a moved close and its reconnect right now: a moment for it.
    run.wait_all_up(std::time::Duration::from_secs(5)).await;
    let owners = sessions::owners(&public, &ids).await;
    let report = run.stop(Some(&owners)).await;
    if args.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    exit_code(report.healthy())
}

async fn run_audit(args: AuditArgs, token: Option<String>) -> ExitCode {
    let expected = match &args.ids {
        Some(path) => match ids::from_file(path) {
            Ok(ids) => Some(ids),
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        },
        None => None,
    };
    let within = std::time::Duration::from_secs_f64(args.within_seconds.max(0.0));
    let operator = Api::new(&args.operator_url).with_token(token);
    let (result, settled) = audit::settle(&operator, expected.as_deref(), within).await;
    let audit = match result {
        Ok(audit) => audit,
        Err(e) => return fail(format!("audit: {e}")),
    };
    let settled_ms = settled.map(|d| d.as_millis() as u64);
    if args.json {
        print_json(
            &serde_json::json!({ "audit": audit, "settled_ms": settled_ms, "clean": audit.clean() }),
        );
    } else {
        print!("{}", audit.render());
        if let Some(ms) = settled_ms {
            println!("settled in {ms} ms");
        }
    }
    exit_code(audit.clean())
}

async fn run_views(args: ViewsArgs, token: Option<String>) -> ExitCode {
    let views = if args.instances.is_empty() {
        views::via(&Api::new(&args.url).with_token(token)).await
    } else {
        views::direct(&args.instances, token).await
    };
    if args.json {
        print_json(&views);
    } else {
        print!("{}", views::render(&views));
    }
    let count_ok = args.expect.is_none_or(|n| n == views.len());
    if !count_ok {
        eprintln!(
            "poc-client: {} views, expected {}",
            views.len(),
            args.expect.unwrap_or_default()
        );
    }
    exit_code(views::agree(&views) && count_ok)
}

async fn run_verify(args: VerifyArgs) -> ExitCode {
    let ids = match &args.ids {
        Some(path) => match ids::from_file(path) {
            Ok(ids) => ids,
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        },
        None => args.random.generate(args.count),
    };
    if ids.is_empty() {
        return fail("no ids to verify");
    }
    let api = args.route.api(&args.url);
    if let Err(e) = reachable(&api, &ids[0]).await {
        return fail(e);
    }
    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} ids  {per_sec}  eta {eta}")
                .expect("valid template"),
        )
    };
    let mut report = verify::verify(&api, ids, args.concurrency, |_| bar.inc(1)).await;
    bar.finish_and_clear();
    if !args.results {
        report.results.clear();
    }
    if args.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    exit_code(report.all_correct())
}

/// Runs `command` to completion; its output is kept for the error.
async fn run_change(command: &[String]) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("no command")?;
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            command.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn run_scale_step(args: ScaleStepArgs, token: Option<String>) -> ExitCode {
    let expect = scale::Expect {
        members: args.expect,
        agree_within: std::time::Duration::from_secs(args.within_seconds),
        id_kind: args.random.id_kind,
    };
    let seed = args.random.seed.unwrap_or_else(rand::random);
    let (public, operator) = (
        args.route.api(&args.url),
        Api::new(&args.operator_url).with_token(token),
    );
    match scale::step(&public, &operator, &expect, seed, run_change(&args.command)).await {
        Ok(report) if args.json => {
            print_json(&report);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("scale step `{}`: {e}", args.command.join(" "))),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = || poc_routing_client::operator_token(cli.operator_token_file.as_deref());
    let token = match &cli.command {
        Command::Views(_) | Command::ScaleStep(_) | Command::Audit(_) => match token() {
            Ok(t) => t,
            Err(e) => return fail(e),
        },
        _ => None,
    };
    match cli.command {
        Command::Where { id, url } => print_call(&Api::new(&url), "/where", &id).await,
        Command::Join { id, url, route } => print_call(&route.api(&url), "/join", &id).await,
        Command::Load(args) => run_load(args).await,
        Command::Views(args) => run_views(args, token).await,
        Command::Verify(args) => run_verify(args).await,
        Command::ScaleStep(args) => run_scale_step(args, token).await,
        Command::Audit(args) => run_audit(args, token).await,
        Command::Sessions(args) => run_sessions(args).await,
        Command::Rooms(command) => run_rooms(command).await,
    }
}

async fn run_rooms(command: RoomsCommand) -> ExitCode {
    let (args, report) = match command {
        RoomsCommand::Post { rooms, round } => {
            let api = Api::new(&rooms.url);
            let report = poc_routing_client::rooms::post_round(
                &api,
                rooms.rooms,
                round,
                rooms.concurrency,
                true,
            )
            .await;
            (rooms, report)
        }
        RoomsCommand::Verify { rooms, rounds } => {
            let api = Api::new(&rooms.url);
            let report = poc_routing_client::rooms::verify_rooms(
                &api,
                rooms.rooms,
                rounds,
                rooms.concurrency,
            )
            .await;
            (rooms, report)
        }
    };
    if args.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    exit_code(report.all_correct())
}
