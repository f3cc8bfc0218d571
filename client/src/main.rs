//! `poc-client`: where an id lives, join it, verify routing for many ids through Envoy, put
//! steady load on it while something changes, or compare every instance's placement view; and
//! the checks the end-to-end scripts (`make test-compose`, `make test-k8s`) judge with: one
//! join's answer against what is expected, a verify report read back, a sessions run's
//! progress and fault row, what a stranger instance gathered.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use poc_routing_client::answer::{self, Answer};
use poc_routing_client::api::JoinRoute;
use poc_routing_client::ids::{self, IdKind};
use poc_routing_client::{
    audit, load, results, scale, session_fault, sessions, verify, views, Api, CallError,
};
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
    /// Print which instance owns ID: the `/where` answer (JSON), or only the owner's index
    /// with --index. Exits 1 unless the answer is 2xx.
    Where {
        id: String,
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        /// Print only the owner's index, e.g. `owner=$(poc-client where alice --index)`.
        #[arg(long)]
        index: bool,
    },
    /// Join ID and print the answer of the instance that took it.
    Join {
        id: String,
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        #[command(flatten)]
        route: RouteArgs,
    },
    /// Join ID once and print `<status> <instance>`: the HTTP status (`000` when no answer
    /// came) and the instance that answered (`-` when the answer names none). With
    /// expectations (--status, --instance, --error, --owner) it exits 1 unless the answer meets
    /// every one, saying on stderr what was expected and what came; without, it only reports.
    JoinExpect(JoinExpectArgs),
    /// For many ids: /where, then /join, and check that the owner answered the join.
    Verify(VerifyArgs),
    /// A `poc-client verify --json --results` report read back: `summary` of each owner's
    /// outcomes, `expect-down` to judge it against an instance that was down, `pick` for an id
    /// an instance owns.
    #[command(subcommand)]
    Results(ResultsCommand),
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
    /// A running `poc-client sessions --progress-json`, by the last line it wrote to PROGRESS:
    /// prints `up U of N, unexpected closes C`. Exits 1 while there is no progress line yet,
    /// or when a condition given does not hold (--up, --up-below, --unexpected-at-least): for
    /// a script that waits on a run while it breaks something.
    SessionsProgress(SessionsProgressArgs),
    /// The sessions' fault row, once a run held through one owner's kill and restart has
    /// stopped: every session up on its owner; the sessions that broke all on the killed
    /// instance, each broken once (more than none, fewer than all), none closed as moved; all
    /// up again within --within-ms of --since-ms. Prints the figures (and writes them to
    /// --figures); exits 1 with what was expected and what came otherwise.
    SessionsFault(SessionsFaultArgs),
    /// Whether a stranger (an instance without the cluster's credential) read any client id:
    /// FILE is its own `/registrations` answer, asked with its own operator token. Exits 1
    /// unless every other instance refused it and it holds none of their ids.
    StrangerCheck {
        /// The stranger's `/registrations` answer (JSON).
        file: PathBuf,
        /// The stranger's own instance index.
        #[arg(long)]
        stranger: u64,
    },
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

#[derive(Subcommand)]
enum ResultsCommand {
    /// Each owner's ids: how many were correct, misrouted, or failed and how.
    Summary {
        /// The report of `poc-client verify --json --results`.
        file: PathBuf,
    },
    /// Judges a verify run made while --instance was down: every id it owns must have got
    /// 503 owner_unavailable (Envoy fails closed), every other id joined on its owner, and at
    /// least --at-least ids must be its own. Exits 1 otherwise, listing the wrong outcomes.
    ExpectDown {
        file: PathBuf,
        /// The instance that was down.
        #[arg(long)]
        instance: u64,
        /// Fewer of its ids than this proves nothing: a failure.
        #[arg(long, default_value_t = 1)]
        at_least: usize,
    },
    /// Prints the first id --owner owns. Exits 1 if there is none.
    Pick {
        file: PathBuf,
        #[arg(long)]
        owner: u64,
        /// Only an id of ASCII letters and digits, which goes into a URL or a shell word as
        /// it is.
        #[arg(long)]
        plain: bool,
    },
}

#[derive(clap::Args)]
struct JoinExpectArgs {
    id: String,
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    #[command(flatten)]
    route: RouteArgs,
    /// The HTTP status the answer must have (000: none).
    #[arg(long)]
    status: Option<u16>,
    /// The instance that must answer.
    #[arg(long)]
    instance: Option<u64>,
    /// The error code the answer must carry (`owner_unavailable`, `misdirected`, ...).
    #[arg(long)]
    error: Option<String>,
    /// The owner the answer must name: a host:port (`owner_unavailable`) or an index.
    #[arg(long)]
    owner: Option<String>,
    /// Give up on the answer after this long (then the status is 000).
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    timeout: f64,
    /// Also print the answer's body, on a second line.
    #[arg(long)]
    body: bool,
}

#[derive(clap::Args)]
struct SessionsProgressArgs {
    /// The stderr of `poc-client sessions --progress-json`.
    progress: PathBuf,
    /// Exit 1 unless exactly this many sessions are up.
    #[arg(long, value_name = "N")]
    up: Option<usize>,
    /// Exit 1 unless fewer than this many sessions are up.
    #[arg(long, value_name = "N")]
    up_below: Option<usize>,
    /// Exit 1 unless at least this many sessions have closed unexpectedly since the run
    /// started. The count only grows, so a drop shorter than the progress period (200 ms),
    /// which `--up-below` can miss, is still seen.
    #[arg(long, value_name = "N")]
    unexpected_at_least: Option<u64>,
}

#[derive(clap::Args)]
struct SessionsFaultArgs {
    /// The report of `poc-client sessions --json` (its stdout), once it stopped.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// Its progress (`--progress-json`, its stderr).
    #[arg(long, value_name = "FILE")]
    progress: PathBuf,
    /// The instance that was killed.
    #[arg(long)]
    instance: u64,
    /// When it was started again, in ms since the Unix epoch.
    #[arg(long, value_name = "UNIX_MS")]
    since_ms: u64,
    /// Every session must be up again within this long of --since-ms.
    #[arg(long, value_name = "MS")]
    within_ms: u64,
    /// Write the figures here, as `{"fault": <file name>, "figures": {...}}`.
    #[arg(long, value_name = "FILE")]
    figures: Option<PathBuf>,
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
    /// Print only the distinct member lists the instances hold, on one line (`[1, 2, 3]`),
    /// to compare before and after a change. The exit code is as without it.
    #[arg(long, conflicts_with = "json")]
    member_lists: bool,
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
                    let line = serde_json::to_string(&sessions::Progress::of(&r, unix_ms))
                        .expect("progress serializes");
                    eprintln!("{line}");
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
    if args.member_lists {
        println!("{}", views::member_lists(&views));
    } else if args.json {
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
        Command::Where { id, url, index } if index => match Api::new(&url).where_(&id).await {
            Ok(answer) => {
                println!("{}", answer.index);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Where { id, url, .. } => print_call(&Api::new(&url), "/where", &id).await,
        Command::JoinExpect(args) => run_join_expect(args).await,
        Command::Results(command) => run_results(command),
        Command::SessionsProgress(args) => run_sessions_progress(&args),
        Command::SessionsFault(args) => run_sessions_fault(&args),
        Command::StrangerCheck { file, stranger } => run_stranger_check(&file, stranger),
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

async fn run_join_expect(args: JoinExpectArgs) -> ExitCode {
    let api = args.route.api(&args.url);
    if let Err(e) = api.join_request(&args.id) {
        return fail(e);
    }
    let timeout = std::time::Duration::from_secs_f64(args.timeout.max(0.001));
    let seen = match api.join_text(&args.id, timeout).await {
        Ok((status, body)) => Answer::parse(status, body),
        Err(e) => Answer::none(e.to_string()),
    };
    println!("{}", seen.line());
    if args.body {
        println!("{}", seen.body);
    }
    let expect = answer::Expect {
        status: args.status,
        instance: args.instance,
        error: args.error,
        owner: args.owner,
    };
    if expect.holds(&seen) {
        ExitCode::SUCCESS
    } else {
        fail(format!(
            "join of {:?}: expected {}, received {seen}",
            args.id,
            expect.describe()
        ))
    }
}

/// The text of `path`, or the error to exit with.
fn read_text(path: &std::path::Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
}

fn read_results(path: &std::path::Path) -> Result<Vec<verify::IdResult>, ExitCode> {
    results::parse(&read_text(path)?).map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn run_results(command: ResultsCommand) -> ExitCode {
    match command {
        ResultsCommand::Summary { file } => match read_results(&file) {
            Ok(all) => {
                print!("{}", results::summary(&all));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ResultsCommand::ExpectDown {
            file,
            instance,
            at_least,
        } => {
            let all = match read_results(&file) {
                Ok(all) => all,
                Err(code) => return code,
            };
            let judgement = results::judge_down(&all, instance, at_least);
            const SHOWN: usize = 20;
            for wrong in judgement.wrong.iter().take(SHOWN) {
                eprintln!("{wrong}");
            }
            if judgement.wrong.len() > SHOWN {
                eprintln!("... and {} more", judgement.wrong.len() - SHOWN);
            }
            if judgement.passed() {
                println!("{}", judgement.summary());
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", judgement.summary());
                ExitCode::from(1)
            }
        }
        ResultsCommand::Pick { file, owner, plain } => {
            let all = match read_results(&file) {
                Ok(all) => all,
                Err(code) => return code,
            };
            match results::pick(&all, owner, plain) {
                Some(id) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                None => fail(format!(
                    "{}: no {}id owned by instance {owner}",
                    file.display(),
                    if plain { "plain " } else { "" }
                )),
            }
        }
    }
}

fn run_sessions_progress(args: &SessionsProgressArgs) -> ExitCode {
    let text = match read_text(&args.progress) {
        Ok(text) => text,
        Err(code) => return code,
    };
    let Some(progress) = session_fault::last_progress(&text) else {
        return fail(format!(
            "no progress line at the end of {} yet",
            args.progress.display()
        ));
    };
    println!(
        "up {} of {}, unexpected closes {}",
        progress.up, progress.sessions, progress.unexpected_closes
    );
    if let Some(n) = args.up.filter(|n| progress.up != *n) {
        return fail(format!("{} sessions up, not {n}", progress.up));
    }
    if let Some(n) = args.up_below.filter(|n| progress.up >= *n) {
        return fail(format!("{} sessions up, not fewer than {n}", progress.up));
    }
    if let Some(n) = args
        .unexpected_at_least
        .filter(|n| progress.unexpected_closes < *n)
    {
        return fail(format!(
            "{} unexpected closes, not at least {n}",
            progress.unexpected_closes
        ));
    }
    ExitCode::SUCCESS
}

fn run_sessions_fault(args: &SessionsFaultArgs) -> ExitCode {
    let report: sessions::Report = match read_text(&args.report).and_then(|t| {
        serde_json::from_str(&t).map_err(|e| {
            fail(format!(
                "{}: not a poc-client sessions --json report: {e}",
                args.report.display()
            ))
        })
    }) {
        Ok(report) => report,
        Err(code) => return code,
    };
    let lines = match read_text(&args.progress).and_then(|t| {
        session_fault::progress_lines(&t)
            .map_err(|e| fail(format!("{}: {e}", args.progress.display())))
    }) {
        Ok(lines) => lines,
        Err(code) => return code,
    };
    let expect = session_fault::FaultExpect {
        instance: args.instance,
        since_ms: args.since_ms,
        within_ms: args.within_ms,
    };
    let figures = match session_fault::judge(&report, &lines, &expect) {
        Ok(figures) => figures,
        Err(failure) => {
            eprintln!("{failure}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &args.figures {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let name = name.strip_suffix(".json").unwrap_or(&name);
        let text =
            serde_json::to_string_pretty(&serde_json::json!({ "fault": name, "figures": figures }))
                .expect("figures serialize");
        if let Err(e) = std::fs::write(path, text + "\n") {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    println!("{}", figures.summary(args.instance));
    ExitCode::SUCCESS
}

fn run_stranger_check(file: &std::path::Path, stranger: u64) -> ExitCode {
    let answer: poc_routing_wire::RegistrationsReport = match read_text(file).and_then(|t| {
        serde_json::from_str(&t).map_err(|e| {
            fail(format!(
                "{}: not a /registrations answer: {e}",
                file.display()
            ))
        })
    }) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    match audit::stranger_read_nothing(&answer, stranger) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(1)
        }
    }
}
