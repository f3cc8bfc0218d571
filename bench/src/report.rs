//! The benchmark report: `target/bench/report.json` (and `sessions.json`, `soak.json`),
//! rendered together as `docs/BENCHMARKS.md`, with the targets computed from ratios measured
//! in the same run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::load::{Load, Measured};
use crate::quality::Row;
use crate::scenarios::{join_scenario, APP_ARM, KEY_ARMS, SCENARIOS};
use poc_routing_stack::envoy::Flow;

pub type Scenarios = BTreeMap<String, Measured>;

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub machine: Value,
    pub settings: Value,
    pub scenarios: BTreeMap<String, ScenarioJson>,
    pub placement: Value,
    pub micro: Value,
    pub targets: Vec<Target>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ScenarioJson {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// The section of docs/BENCHMARKS-notes.md that explains a miss.
    #[serde(default)]
    pub notes: String,
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
        "envoy": poc_routing_stack::envoy::ENVOY_VERSION,
    })
}

/// Criterion's mean estimates (ns) for the placement micro-benchmark, if it has run.
fn micro() -> Value {
    let root = poc_routing_stack::envoy::repo_root().join("target/criterion/placement");
    let mut out = serde_json::Map::new();
    for mode in ["hash", "numeric", "jump"] {
        let file = root.join(mode).join("new/estimates.json");
        if let Some(ns) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["mean"]["point_estimate"].as_f64())
        {
            out.insert(
                mode.to_owned(),
                json!({ "ns_per_op": (ns * 10.0).round() / 10.0 }),
            );
        }
    }
    Value::Object(out)
}

fn ratio_target(
    name: &str,
    goal: &str,
    ratio: f64,
    at_least: f64,
    higher_is_better: bool,
    notes: &str,
) -> Target {
    let met = if higher_is_better {
        ratio >= at_least
    } else {
        ratio <= at_least
    };
    Target {
        name: name.to_owned(),
        goal: goal.to_owned(),
        measured: format!("{ratio:.3}×"),
        met,
        notes: notes.to_owned(),
    }
}

/// `bench/baseline.json`: the rps of each scenario in the last run before the routing module
/// (docs/BENCHMARKS.md of that commit), under the names scenarios have now.
fn baseline() -> BTreeMap<String, f64> {
    let path = poc_routing_stack::envoy::repo_root().join("bench/baseline.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v["rps"].as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// What a scenario is compared through, so that runs on a busier or quieter machine compare
/// fairly: Envoy scenarios relative to the native-hash peer of their run, direct_where relative
/// to hello_world. The two yardsticks run none of our routing code and are not compared.
fn yardstick(name: &str) -> Option<&'static str> {
    match name {
        "hello_world" => None,
        name if name.starts_with("envoy_native_hash") => None,
        "direct_where" => Some("hello_world"),
        name if name == APP_ARM.0 => Some(APP_ARM.2),
        name => Some(
            KEY_ARMS
                .iter()
                .find(|(_, arm, _)| *arm == name)
                .map_or("envoy_native_hash", |(_, _, native)| native),
        ),
    }
}

/// Scenarios more than 10% slower than in the baseline, relative to their yardstick in each
/// run, as "name (now vs before, in yardstick units)".
fn slower_than_baseline(scenarios: &BTreeMap<String, ScenarioJson>) -> Vec<String> {
    let before = baseline();
    before
        .iter()
        .filter_map(|(name, &rps_before)| {
            let stick = yardstick(name)?;
            let now = scenarios.get(name)?.rps / scenarios.get(stick)?.rps;
            let then = rps_before / before.get(stick)?;
            (now < then * 0.9).then(|| format!("{name} ({now:.3} vs {then:.3} of {stick})"))
        })
        .collect()
}

/// Where docs/BENCHMARKS-notes.md explains why a `/join` scenario misses the native peer.
fn join_notes(name: &str) -> &'static str {
    match name {
        "envoy_join_lua" => "why-the-lua-flow-is-slower",
        _ => "what-the-module-flow-costs",
    }
}

/// The targets, computed from a run's scenarios and the jump rows' (moved, optimum) pairs.
/// `render` recomputes them from `report.json`, so the report always shows today's targets.
fn targets(scenarios: &BTreeMap<String, ScenarioJson>, jump: &[(f64, f64)]) -> Vec<Target> {
    let mut targets = join_targets(scenarios);
    let (direct, hello) = (&scenarios["direct_where"], &scenarios["hello_world"]);
    targets.push(ratio_target(
        "direct_where rps / hello_world rps",
        ">= 0.9×",
        direct.rps / hello.rps,
        0.9,
        true,
        "direct_where-and-hello_world",
    ));
    let errors: u64 = scenarios.values().map(|m| m.errors).sum();
    targets.push(Target {
        name: "errors in every scenario".into(),
        goal: "0".into(),
        measured: errors.to_string(),
        met: errors == 0,
        notes: "errors".into(),
    });
    let slower = slower_than_baseline(scenarios);
    targets.push(Target {
        name: "scenarios more than 10% slower than in bench/baseline.json (relative to the native peer, or to hello_world)".into(),
        goal: "none".into(),
        measured: if slower.is_empty() {
            "none".into()
        } else {
            slower.join(", ")
        },
        met: slower.is_empty(),
        notes: "the-baseline".into(),
    });
    let worst_jump = jump
        .iter()
        .map(|(moved, optimum)| (moved - optimum).abs() / optimum)
        .fold(0.0, f64::max);
    targets.push(Target {
        name: "jump: moved vs 1/(N+1), worst N".into(),
        goal: "within 10%".into(),
        measured: format!("{:.1}%", worst_jump * 100.0),
        met: worst_jump <= 0.10,
        notes: "placement-quality".into(),
    });
    targets
}

/// The /join flows against the native peer, throughput and p99.
fn join_targets(scenarios: &BTreeMap<String, ScenarioJson>) -> Vec<Target> {
    let native = &scenarios["envoy_native_hash"];
    let names = [join_scenario(Flow::Module), join_scenario(Flow::Lua)];
    let mut pairs: Vec<(&str, &str, &ScenarioJson)> = names
        .into_iter()
        .map(|name| (name, "envoy_native_hash", native))
        .collect();
    // The header-keyed route against the peer hashing the same header, in the same run.
    let (_, header, header_native) = KEY_ARMS[1];
    if let Some(peer) = scenarios.get(header_native) {
        pairs.push((header, header_native, peer));
    }
    let mut targets = Vec::new();
    for (name, peer_name, peer) in pairs {
        let Some(join) = scenarios.get(name) else {
            continue;
        };
        targets.push(ratio_target(
            &format!("{name} rps / {peer_name} rps"),
            ">= 0.9×",
            join.rps / peer.rps,
            0.9,
            true,
            join_notes(name),
        ));
        targets.push(ratio_target(
            &format!("{name} p99 / {peer_name} p99"),
            "<= 1.2×",
            join.p99_ms / peer.p99_ms,
            1.2,
            false,
            join_notes(name),
        ));
    }
    targets
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Load,
        rounds: u32,
        replicas: u32,
        default_flow: Flow,
        measured: Scenarios,
        quality_ids: usize,
        hash: Vec<Row>,
        jump: Vec<Row>,
    ) -> Self {
        let scenarios: BTreeMap<String, ScenarioJson> = measured
            .into_iter()
            .map(|(k, m)| {
                (
                    k,
                    ScenarioJson {
                        rps: m.rps.round(),
                        p50_ms: m.p50_ms,
                        p99_ms: m.p99_ms,
                        errors: m.errors,
                    },
                )
            })
            .collect();
        let jump_moves: Vec<(f64, f64)> = jump.iter().map(|r| (r.moved, r.optimum)).collect();
        let targets = targets(&scenarios, &jump_moves);
        Report {
            machine: machine(),
            settings: json!({
                "concurrency": settings.concurrency,
                "warmup_s": settings.warmup.as_secs(),
                "duration_s": settings.duration.as_secs(),
                "rounds": rounds,
                "replicas": replicas,
                "ids": 10_000,
                "default_flow": default_flow.as_str(),
            }),
            scenarios,
            placement: json!({ "ids": quality_ids, "hash": hash, "jump": jump }),
            micro: micro(),
            targets,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

#[derive(Serialize, Deserialize)]
pub struct Soak {
    pub minutes: u64,
    pub rate: f64,
    pub replicas: u32,
    pub achieved_rps: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub requests: u64,
    pub rss_kib: Vec<u64>,
    /// From the first sample (after one slice of warm-up) to the last.
    pub rss_growth_pct: f64,
}

impl Soak {
    pub fn new(
        minutes: u64,
        rate: f64,
        replicas: u32,
        rss_kib: Vec<u64>,
        slices: Vec<Measured>,
    ) -> Self {
        let requests: u64 = slices.iter().map(|m| m.requests).sum();
        let errors: u64 = slices.iter().map(|m| m.errors).sum();
        let achieved_rps = slices.iter().map(|m| m.rps).sum::<f64>() / slices.len().max(1) as f64;
        let p99_ms = slices.iter().map(|m| m.p99_ms).fold(0.0, f64::max);
        let first = *rss_kib.first().unwrap_or(&1) as f64;
        let last = *rss_kib.last().unwrap_or(&1) as f64;
        Soak {
            minutes,
            rate,
            replicas,
            achieved_rps,
            p99_ms,
            errors,
            requests,
            rss_growth_pct: (last - first) / first * 100.0,
            rss_kib,
        }
    }

    pub fn passed(&self) -> bool {
        self.errors == 0 && self.rss_growth_pct < 10.0
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

/// Writes `docs/BENCHMARKS.md` from `report.json` and, if present, `sessions.json` and
/// `soak.json`.
pub fn render(dir: &Path, out: &Path) -> Result<()> {
    let mut report = Report::load(&dir.join("report.json"))?;
    let jump_moves: Vec<(f64, f64)> = report.placement["jump"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Some((r["moved"].as_f64()?, r["optimum"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    report.targets = targets(&report.scenarios, &jump_moves);
    let soak: Option<Soak> = std::fs::read_to_string(dir.join("soak.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let sessions = crate::sessions::SessionsReport::load(&dir.join("sessions.json")).ok();
    let md = [
        header(&report),
        scenario_table(&report),
        replication_section(&report),
        key_sources_section(&report),
        app_section(&report),
        targets_section(&report),
        placement_section(&report),
        micro_section(&report),
        crate::sessions::section(sessions.as_ref()),
        soak_section(soak.as_ref()),
    ]
    .concat();
    std::fs::write(out, md)?;
    Ok(())
}

fn header(report: &Report) -> String {
    let m = &report.machine;
    let st = &report.settings;
    let mut md = String::new();
    md += "# Benchmarks\n\n";
    md += "Generated by `make bench` (and `make soak`) from `target/bench/report.json`; do not edit by hand.\n";
    md += "Every scenario ran in one run, one after another, on the same machine, with the Rust load\n";
    md += "generator in `bench/` (closed loop, fixed connections, warm-up not measured) on loopback.\n";
    md += &match st["rounds"].as_u64().unwrap_or(1) {
        1 => "The whole table ran once (`poc-bench run --rounds 3` gives each figure as the median of three).\n".to_owned(),
        n => format!("The whole table ran {n} times; each figure is the median of its rounds (errors are summed).\n"),
    };
    md += "What each scenario runs, and why a target is missed: [BENCHMARKS-notes.md](BENCHMARKS-notes.md).\n\n";
    md += &format!(
        "Machine: {} CPUs ({}), {} GiB, Linux {}, Envoy {}. Load: {} connections, {} s warm-up, {} s measured per scenario, {} servers, {} distinct ids.\n\n",
        m["cpus"], m["cpu"].as_str().unwrap_or("?"), m["memory_gib"], m["kernel"].as_str().unwrap_or("?"), m["envoy"].as_str().unwrap_or("?"),
        st["concurrency"], st["warmup_s"], st["duration_s"], st["replicas"], st["ids"]
    );
    md += "The load generator, Envoy (2 workers) and the servers share the same 2 cores, so absolute\n";
    md += "numbers are low and only ratios within one run are meaningful.\n\n";
    md
}

/// One line per row of [`SCENARIOS`] that ran, in table order.
fn scenario_table(report: &Report) -> String {
    let mut md =
        "| scenario | what | rps | p50 ms | p99 ms | errors |\n|---|---|---:|---:|---:|---:|\n"
            .to_owned();
    let default_join = report.settings["default_flow"]
        .as_str()
        .and_then(|f| f.parse::<Flow>().ok())
        .map(join_scenario);
    for row in SCENARIOS {
        if let Some(s) = report.scenarios.get(row.name) {
            let shipped = if Some(row.name) == default_join {
                " (envoy.yaml's default)"
            } else {
                ""
            };
            md += &format!(
                "| `{}` | {}{shipped} | {:.0} | {:.2} | {:.2} | {} |\n",
                row.name, row.what, s.rps, s.p50_ms, s.p99_ms, s.errors
            );
        }
    }
    md
}

/// What each `REPLICATION` mode costs the module flow against the native peer, and what an
/// `async` crash can lose at the measured rate.
fn replication_section(report: &Report) -> String {
    let get = |name: &str| report.scenarios.get(name);
    let (Some(native), Some(default)) = (get("envoy_native_hash"), get("envoy_join_module")) else {
        return String::new();
    };
    let mut md = "\n## Replication (`REPLICATION`)\n\n| mode | scenario | rps / native | p99 / native |\n|---|---|---:|---:|\n".to_owned();
    for (mode, name) in [
        ("off", "envoy_join_module_off"),
        ("async (the default)", "envoy_join_module"),
        ("sync", "envoy_join_module_sync"),
    ] {
        if let Some(s) = get(name) {
            md += &format!(
                "| {mode} | `{name}` | {:.3}× | {:.3}× |\n",
                s.rps / native.rps,
                s.p99_ms / native.p99_ms
            );
        }
    }
    let servers = report.settings["replicas"].as_f64().unwrap_or(1.0).max(1.0);
    let window = poc_routing_server::replicas::ASYNC_WINDOW;
    let per_owner = default.rps / servers;
    md += &format!(
        "\nWhat a crash can lose in `async`: the joins of the last {} ms on the crashed owner. At \
         `envoy_join_module`'s rate over {servers} servers ({per_owner:.0} joins a second each) \
         that is at most {:.0} joins; `sync` loses none that were answered, `off` every \
         registration the owner held.\n",
        window.as_millis(),
        per_owner * window.as_secs_f64()
    );
    md
}

/// Each key source's module arm beside the native peer hashing the same thing, from one run.
fn key_sources_section(report: &Report) -> String {
    let get = |name: &str| report.scenarios.get(name);
    let mut md = "\n## Key sources (module flow against Envoy hashing the same key)\n\n| key source | scenario | rps | p99 ms | peer | peer rps | peer p99 ms | rps / peer | p99 / peer |\n|---|---|---:|---:|---|---:|---:|---:|---:|\n".to_owned();
    let mut rows = 0;
    for (source, arm, peer) in KEY_ARMS {
        let (Some(a), Some(p)) = (get(arm), get(peer)) else {
            continue;
        };
        rows += 1;
        md += &format!(
            "| `{source}` | `{arm}` | {:.0} | {:.2} | `{peer}` | {:.0} | {:.2} | {:.3}× | {:.3}× |\n",
            a.rps,
            a.p99_ms,
            p.rps,
            p.p99_ms,
            a.rps / p.rps,
            a.p99_ms / p.p99_ms
        );
    }
    if rows == 0 {
        return String::new();
    }
    md
}

/// App mode's path (Envoy, the owner, the application beside it) beside the owner answering
/// itself on the same route shape and the native peer, from one run.
fn app_section(report: &Report) -> String {
    let (app, direct, peer) = APP_ARM;
    let get = |name: &str| report.scenarios.get(name);
    let (Some(p), Some(a)) = (get(peer), get(app)) else {
        return String::new();
    };
    let mut md = format!(
        "\n## App mode (the owner forwards to the application beside it)\n\nThe same path-keyed route shape three ways: `{app}` through the owner to the example room service (which reads the room's state from the state API on each request), `{direct}` answered by the owner itself (`/join`), and `{peer}` (Envoy hashing the path, no owner check).\n\n| scenario | rps | p99 ms | rps / peer | p99 / peer |\n|---|---:|---:|---:|---:|\n"
    );
    for (name, s) in [(app, Some(a)), (direct, get(direct)), (peer, Some(p))] {
        let Some(s) = s else { continue };
        md += &format!(
            "| `{name}` | {:.0} | {:.2} | {:.3}× | {:.3}× |\n",
            s.rps,
            s.p99_ms,
            s.rps / p.rps,
            s.p99_ms / p.p99_ms
        );
    }
    md
}

fn targets_section(report: &Report) -> String {
    let mut md = "\n## Targets (ratios from the same run)\n\n| target | goal | measured | met |\n|---|---|---|---|\n".to_owned();
    for t in &report.targets {
        md += &format!(
            "| {} | {} | {} | {} |\n",
            t.name,
            t.goal,
            t.measured,
            if t.met { "yes" } else { "**no**" }
        );
    }
    md += "\n";
    md += &explain_misses(report);
    md
}

fn placement_section(report: &Report) -> String {
    let mut md = "\n## Placement quality\n\n".to_owned();
    md += &format!(
        "{} random ids. `max/mean` is the most-loaded instance over the mean at N replicas; `moved` is the\nfraction of ids whose owner changes going from N to N+1, next to the optimum 1/(N+1).\n\n",
        report.placement["ids"]
    );
    md += "| N | hash max/mean | jump max/mean | hash moved | jump moved | optimum 1/(N+1) |\n|---:|---:|---:|---:|---:|---:|\n";
    let rows = |mode: &str| {
        report.placement[mode]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    for (h, j) in rows("hash").iter().zip(rows("jump").iter()) {
        let n = h["replicas"].as_u64().unwrap_or(0);
        if [2, 3, 4, 5, 8, 10, 16, 24, 32, 48, 64].contains(&n) {
            md += &format!(
                "| {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                h["max_over_mean"].as_f64().unwrap_or(0.0),
                j["max_over_mean"].as_f64().unwrap_or(0.0),
                h["moved"].as_f64().unwrap_or(0.0),
                j["moved"].as_f64().unwrap_or(0.0),
                h["optimum"].as_f64().unwrap_or(0.0),
            );
        }
    }
    md += "\nEvery N from 2 to 64 is in `target/bench/report.json`.\n\n![ids moved when adding a replica](placement-moves.svg)\n\n";
    md
}

fn micro_section(report: &Report) -> String {
    let mut md = "## Placement micro-benchmark (criterion)\n\n".to_owned();
    if let Some(micro) = report.micro.as_object().filter(|m| !m.is_empty()) {
        md += "Computing the owner of a 12-byte id, `Placement::index`, 5 replicas.\n\n| mode | ns/op |\n|---|---:|\n";
        for (mode, v) in micro {
            md += &format!("| {mode} | {} |\n", v["ns_per_op"]);
        }
    } else {
        md += "Not run: `cargo bench -p poc-routing-placement` before `poc-bench run` (as `make bench` does).\n";
    }
    md
}

fn soak_section(soak: Option<&Soak>) -> String {
    let mut md = "\n## Soak\n\n".to_owned();
    let Some(s) = soak else {
        return md + "Not run yet: `make soak` (10 minutes).\n";
    };
    md += &format!(
        "`make soak`: {} minutes of `/join` through Envoy as envoy.yaml ships it (its default flow), at {:.0} rps (half that flow's measured maximum), {} servers.\n\n",
        s.minutes, s.rate, s.replicas
    );
    md += &format!(
        "| requests | achieved rps | worst p99 ms | errors | servers' RSS first → last | growth | result |\n|---:|---:|---:|---:|---|---:|---|\n| {} | {:.0} | {:.2} | {} | {} KiB → {} KiB | {:.1}% | {} |\n\n",
        s.requests, s.achieved_rps, s.p99_ms, s.errors,
        s.rss_kib.first().unwrap_or(&0), s.rss_kib.last().unwrap_or(&0), s.rss_growth_pct,
        if s.passed() { "pass (0 errors, growth < 10%)" } else { "**fail**" }
    );
    md += &format!(
        "RSS samples (KiB, summed over the servers, one per tenth of the run): {:?}\n",
        s.rss_kib
    );
    md
}

/// Lists the missed targets, each with the section of docs/BENCHMARKS-notes.md that says why.
fn explain_misses(report: &Report) -> String {
    let missed: Vec<&Target> = report.targets.iter().filter(|t| !t.met).collect();
    if missed.is_empty() {
        return "Every target was met in this run.\n".into();
    }
    let mut out =
        "Missed targets; why is in the notes (written by hand, not generated):\n\n".to_owned();
    for t in missed {
        out += &format!(
            "- **{}**: goal {}, measured {}. See [BENCHMARKS-notes.md](BENCHMARKS-notes.md#{}).\n",
            t.name, t.goal, t.measured, t.notes
        );
    }
    out
}
