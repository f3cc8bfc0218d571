//! The benchmark report: `target/bench/report.json` (and `soak.json`), rendered together as
//! `docs/BENCHMARKS.md`, with the targets computed from ratios measured in the same run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::load::{Load, Measured};
use crate::quality::Row;

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
        "hello_world" | "envoy_native_hash" => None,
        "direct_where" => Some("hello_world"),
        _ => Some("envoy_native_hash"),
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

/// The targets, computed from a run's scenarios and the jump rows' (moved, optimum) pairs.
/// `render` recomputes them from `report.json`, so the report always shows today's targets.
fn targets(scenarios: &BTreeMap<String, ScenarioJson>, jump: &[(f64, f64)]) -> Vec<Target> {
    let s = |n: &str| scenarios[n].clone();
    let (native, direct, hello) = (s("envoy_native_hash"), s("direct_where"), s("hello_world"));
    let worst_jump = jump
        .iter()
        .map(|(moved, optimum)| (moved - optimum).abs() / optimum)
        .fold(0.0, f64::max);
    let errors: u64 = scenarios.values().map(|m| m.errors).sum();
    let slower = slower_than_baseline(scenarios);
    // The /join flows against the native peer: as shipped, then each design of the module.
    let mut targets: Vec<Target> = [
        "envoy_join",
        "envoy_join_module",
        "envoy_join_cluster_specifier",
    ]
    .into_iter()
    .filter_map(|name| Some((name, scenarios.get(name)?.clone())))
    .flat_map(|(name, join)| {
        [
            ratio_target(
                &format!("{name} rps / envoy_native_hash rps"),
                ">= 0.9×",
                join.rps / native.rps,
                0.9,
                true,
            ),
            ratio_target(
                &format!("{name} p99 / envoy_native_hash p99"),
                "<= 1.2×",
                join.p99_ms / native.p99_ms,
                1.2,
                false,
            ),
        ]
    })
    .collect();
    targets.extend([
            ratio_target(
                "direct_where rps / hello_world rps",
                ">= 0.9×",
                direct.rps / hello.rps,
                0.9,
                true,
            ),
            Target {
                name: "errors in every scenario".into(),
                goal: "0".into(),
                measured: errors.to_string(),
                met: errors == 0,
            },
            Target {
                name: "scenarios more than 10% slower than in bench/baseline.json (relative to the native peer, or to hello_world)".into(),
                goal: "none".into(),
                measured: if slower.is_empty() {
                    "none".into()
                } else {
                    slower.join(", ")
                },
                met: slower.is_empty(),
            },
            Target {
                name: "jump: moved vs 1/(N+1), worst N".into(),
                goal: "within 10%".into(),
                measured: format!("{:.1}%", worst_jump * 100.0),
                met: worst_jump <= 0.10,
            },
        ]);
    targets
}

impl Report {
    pub fn new(
        settings: Load,
        replicas: u32,
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
                "replicas": replicas,
                "ids": 10_000,
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

const ORDER: [(&str, &str); 10] = [
    ("hello_world", "minimal hyper server (ceiling)"),
    ("direct_where", "GET /where straight to one poc-server"),
    ("envoy_where", "GET /where through Envoy, route B"),
    (
        "envoy_join",
        "GET /join as envoy.yaml ships it (its default flow: lua)",
    ),
    (
        "envoy_join_module",
        "GET /join, module flow: the Rust dynamic module computes the owner from the cached /placement",
    ),
    (
        "envoy_join_lua",
        "GET /join, Lua flow: Lua asks /where on every request",
    ),
    (
        "envoy_join_cluster_specifier",
        "GET /join, design 2 (not shipped): the module as a cluster specifier, one cluster per instance, no filter, guard or DFP",
    ),
    (
        "envoy_native_hash",
        "bench-only Envoy: MAGLEV on client_id, no routing filter, guard or DFP (the peer)",
    ),
    (
        "envoy_join_no_filter",
        "diagnostic: route A's guard + DFP path with no routing filter (one fixed owner)",
    ),
    (
        "envoy_lua_floor",
        "diagnostic: route A with a two-line Lua script (the Lua filter's own cost; one fixed owner)",
    ),
];

/// Writes `docs/BENCHMARKS.md` from `report.json` and, if present, `soak.json`.
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
    let m = &report.machine;
    let st = &report.settings;
    let mut md = String::new();
    md += "# Benchmarks\n\n";
    md += "Generated by `make bench` (and `make soak`) from `target/bench/report.json`; do not edit by hand.\n";
    md += "Every scenario ran in one run, one after another, on the same machine, with the Rust load\n";
    md += "generator in `bench/` (closed loop, fixed connections, warm-up not measured) on loopback.\n\n";
    md += &format!(
        "Machine: {} CPUs ({}), {} GiB, Linux {}, Envoy {}. Load: {} connections, {} s warm-up, {} s measured per scenario, {} servers, {} distinct ids.\n\n",
        m["cpus"], m["cpu"].as_str().unwrap_or("?"), m["memory_gib"], m["kernel"].as_str().unwrap_or("?"), m["envoy"].as_str().unwrap_or("?"),
        st["concurrency"], st["warmup_s"], st["duration_s"], st["replicas"], st["ids"]
    );
    md += "The load generator, Envoy (2 workers) and the servers share the same 2 cores, so absolute\n";
    md += "numbers are low and only ratios within one run are meaningful.\n\n";
    md += "| scenario | what | rps | p50 ms | p99 ms | errors |\n|---|---|---:|---:|---:|---:|\n";
    for (name, what) in ORDER {
        if let Some(s) = report.scenarios.get(name) {
            md += &format!(
                "| `{name}` | {what} | {:.0} | {:.2} | {:.2} | {} |\n",
                s.rps, s.p50_ms, s.p99_ms, s.errors
            );
        }
    }
    md += "\n## Targets (ratios from the same run)\n\n| target | goal | measured | met |\n|---|---|---|---|\n";
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
    md += &explain_misses(&report);
    md += "\n## Placement quality\n\n";
    md += &format!(
        "{} random ids. `max/mean` is the most-loaded instance over the mean at N replicas; `moved` is the\nfraction of ids whose owner changes going from N to N+1, next to the optimum 1/(N+1).\n\n",
        report.placement["ids"]
    );
    md += "| N | hash max/mean | jump max/mean | hash moved | jump moved | optimum 1/(N+1) |\n|---:|---:|---:|---:|---:|---:|\n";
    let hash = report.placement["hash"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let jump = report.placement["jump"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (h, j) in hash.iter().zip(jump.iter()) {
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
    md += "## Placement micro-benchmark (criterion)\n\n";
    if let Some(micro) = report.micro.as_object().filter(|m| !m.is_empty()) {
        md += "Computing the owner of a 12-byte id, `Placement::index`, 5 replicas.\n\n| mode | ns/op |\n|---|---:|\n";
        for (mode, v) in micro {
            md += &format!("| {mode} | {} |\n", v["ns_per_op"]);
        }
    } else {
        md += "Not run: `cargo bench -p poc-routing-placement` before `poc-bench run` (as `make bench` does).\n";
    }
    md += "\n## Soak\n\n";
    match soak {
        Some(s) => {
            md += &format!(
                "`make soak`: {} minutes of `/join` through Envoy as envoy.yaml ships it (its default flow), at {:.0} rps (half the measured `envoy_join` maximum), {} servers.\n\n",
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
        }
        None => md += "Not run yet: `make soak` (10 minutes).\n",
    }
    std::fs::write(out, md)?;
    Ok(())
}

/// Says, for each missed target, by how much and why, from what the run measured.
fn explain_misses(report: &Report) -> String {
    let mut out = String::new();
    let missed: Vec<&Target> = report.targets.iter().filter(|t| !t.met).collect();
    if missed.is_empty() {
        return "Every target was met in this run.\n".into();
    }
    out += "Missed targets, by how much and why:\n\n";
    for t in missed {
        let rps = |n: &str| report.scenarios.get(n).map_or(0.0, |s| s.rps);
        let why = if t.name.starts_with("envoy_join ") {
            "envoy.yaml ships the Lua flow as its default (README, \"How routing works\"), which asks GET /where through Envoy before every join: two trips through Envoy per join, where native hashing makes one"
        } else if t.name.starts_with("envoy_join_module") {
            &format!(
                "the path, not the module: route A runs the routing filter, the RBAC guard and DFP's sub-cluster lookup, none of which the native path has. The same placement code as a cluster specifier on the native path's shape ran at {:.0} rps, and route A's guard and DFP with no routing filter at {:.0} rps, against {:.0} rps native (docs/BENCHMARKS-notes.md)",
                rps("envoy_join_cluster_specifier"),
                rps("envoy_join_no_filter"),
                rps("envoy_native_hash")
            )
        } else if t.name.starts_with("envoy_join_cluster_specifier") {
            "design 2 does one placement per request more than native hashing; see docs/BENCHMARKS-notes.md"
        } else if t.name.starts_with("scenarios more than") {
            "see docs/BENCHMARKS-notes.md"
        } else if t.name.starts_with("direct_where") {
            "poc-server does more per request than hello: query decoding, validation, placement, a JSON body, and metrics (a histogram and counters behind locks)"
        } else if t.name.starts_with("errors") {
            "see the errors column above and the logs in target/bench/"
        } else {
            "see the placement table"
        };
        out += &format!(
            "- **{}**: goal {}, measured {}. Why: {why}.\n",
            t.name, t.goal, t.measured
        );
    }
    out
}
