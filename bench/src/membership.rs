//! `poc-bench membership`: what membership costs each instance as the deployment grows, on the
//! local stack (real servers, the real DNS responder, the real Envoy), with no client traffic.
//!
//! For each N it starts the stack, lets it settle, then measures for `--idle` seconds, per
//! instance: CPU (from `/proc/<pid>/stat`), membership messages sent
//! (`poc_gossip_messages_total`), DNS queries (`poc_dns_queries_total`), and epoch changes
//! (there should be none while idle). Then it adds one instance and removes it again, and
//! reports how long until every view agrees and until Envoy routes joins by the new epoch.
//! The design says the idle cost per instance is flat in N; the table shows it beside N = 10's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use poc_routing_stack::Stack;
use poc_routing_wire::JoinAnswer;
use serde::{Deserialize, Serialize};

use crate::{bench_dir, stack_config};

/// One N's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub n: u64,
    pub start_s: f64,
    /// CPU of one instance, in cores (1.0 = one core busy), idle, averaged over the instances.
    pub idle_cpu_per_instance: f64,
    pub messages_per_instance_s: f64,
    pub dns_queries_per_instance_s: f64,
    pub idle_epoch_changes: u64,
    pub add_views_agree_ms: u64,
    pub add_envoy_routes_ms: u64,
    pub remove_views_agree_ms: u64,
    pub remove_envoy_routes_ms: u64,
}

/// CPU ticks (user + system) of `pid` so far; `/proc` counts in USER_HZ, 100 a second.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file are the 12th and 13th after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A counter of every instance's `/metrics`, summed (labelled series included).
async fn metric_sum(stack: &Stack, http: &reqwest::Client, name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for index in stack.running() {
        let addr = stack
            .instance_addr(index)
            .context("a running instance has an address")?;
        let text = http
            .get(format!("http://{addr}/metrics"))
            .bearer_auth(stack.operator_token())
            .send()
            .await?
            .text()
            .await?;
        sum += text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// Waits until a join through Envoy is routed by the stack's current epoch; how long it took
/// since `since`.
async fn envoy_routes_by_current(
    stack: &Stack,
    http: &reqwest::Client,
    since: Instant,
) -> Result<Duration> {
    let want = stack.placement().epoch().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let url = format!("{}/join?client_id=membership-probe-{}", stack.url(), n % 50);
        if let Ok(r) = http.get(url).send().await {
            if let Ok(answer) = r.json::<JoinAnswer>().await {
                if answer.epoch == want {
                    return Ok(since.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("Envoy did not route by epoch {want} within 60 s")
}

/// Measures one N.
async fn measure(n: u64, idle: Duration) -> Result<Row> {
    let started = Instant::now();
    let mut stack = Stack::start(stack_config(&format!("membership-{n}"), n as u32, None))
        .await
        .with_context(|| format!("start the local stack with {n} instances"))?;
    let start_s = started.elapsed().as_secs_f64();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pids = stack.instance_pids();
    let ticks = |pids: &[u32]| pids.iter().filter_map(|p| cpu_ticks(*p)).sum::<u64>();
    let (t0, m0, d0, e0) = (
        ticks(&pids),
        metric_sum(&stack, &http, "poc_gossip_messages_total").await?,
        metric_sum(&stack, &http, "poc_dns_queries_total").await?,
        metric_sum(&stack, &http, "poc_epoch_changes_total").await?,
    );
    let clock = Instant::now();
    tokio::time::sleep(idle).await;
    let secs = clock.elapsed().as_secs_f64();
    let (t1, m1, d1, e1) = (
        ticks(&pids),
        metric_sum(&stack, &http, "poc_gossip_messages_total").await?,
        metric_sum(&stack, &http, "poc_dns_queries_total").await?,
        metric_sum(&stack, &http, "poc_epoch_changes_total").await?,
    );
    let per = |d: f64| d / secs / n as f64;

    let new = stack.running().last().copied().unwrap_or(0) + 1;
    let change = Instant::now();
    stack.add_instances(&[new]).await?;
    stack
        .wait_views_agree(Duration::from_secs(60))
        .await
        .context("views agree after adding one")?;
    let add_agree = change.elapsed();
    let add_envoy = envoy_routes_by_current(&stack, &http, change).await?;

    let change = Instant::now();
    stack.remove_instances(&[new]).await?;
    stack
        .wait_views_agree(Duration::from_secs(60))
        .await
        .context("views agree after removing one")?;
    let remove_agree = change.elapsed();
    let remove_envoy = envoy_routes_by_current(&stack, &http, change).await?;
    stack.stop();

    Ok(Row {
        n,
        start_s,
        idle_cpu_per_instance: per((t1 - t0) as f64 / 100.0),
        messages_per_instance_s: per(m1 - m0),
        dns_queries_per_instance_s: per(d1 - d0),
        idle_epoch_changes: (e1 - e0) as u64,
        add_views_agree_ms: add_agree.as_millis() as u64,
        add_envoy_routes_ms: add_envoy.as_millis() as u64,
        remove_views_agree_ms: remove_agree.as_millis() as u64,
        remove_envoy_routes_ms: remove_envoy.as_millis() as u64,
    })
}

/// The simulation's default runs (`make bench`): 1,000 instances at 0, 1, 5 and 20% loss, a
/// few minutes in all. The work of a change grows as N² (every instance's card reaches every
/// other), so 10,000 instances (`make bench-sim-10k`, `--sim 10000@1`) take about 13 GB and,
/// here, most of an hour: a run of its own.
pub const SIM_RUNS: &[&str] = &["1000@0", "1000@1", "1000@5", "1000@20"];

/// What `docs/BENCHMARKS-membership.json` (and `target/bench/membership.json`) holds. A run
/// replaces the rows it measured and keeps the others from the last run that measured them,
/// so that one size, or the simulation alone, can be measured again without losing the rest.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    stack: Vec<Row>,
    sim: Vec<crate::sim::Outcome>,
    /// The local stack's figures before the peer plane had mutual TLS (plain HTTP between
    /// instances), kept to show what TLS costs beside today's.
    #[serde(default)]
    peer_plain_http: Option<Baseline>,
}

/// Figures measured at an earlier commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Baseline {
    commit: String,
    stack: Vec<Row>,
}

/// `old` with each element replaced by the element of `new` of the same key, and the new
/// ones added, sorted by key.
fn merged<T, K: Ord>(old: Vec<T>, new: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut by_key: BTreeMap<K, T> = old.into_iter().map(|t| (key(&t), t)).collect();
    by_key.extend(new.into_iter().map(|t| (key(&t), t)));
    by_key.into_values().collect()
}

fn parse_sim_run(run: &str) -> Result<(u64, f64)> {
    let (n, loss) = run
        .split_once('@')
        .with_context(|| format!("--sim {run:?}: expected SIZE@LOSS_PERCENT, such as 1000@5"))?;
    let n: u64 = n.parse().with_context(|| format!("--sim {run:?}: size"))?;
    let loss: f64 = loss
        .parse()
        .with_context(|| format!("--sim {run:?}: loss"))?;
    anyhow::ensure!(
        (2..=100_000).contains(&n) && (0.0..100.0).contains(&loss),
        "--sim {run:?}: size 2 to 100000, loss 0 to 99 percent"
    );
    Ok((n, loss / 100.0))
}

/// Runs every size on the local stack and every simulation run, writes
/// `target/bench/membership.json`, the report and its plot.
pub async fn run(sizes: &[u64], sim_runs: &[String], idle: Duration, doc: &Path) -> Result<()> {
    let sim_runs: Vec<(u64, f64)> = sim_runs
        .iter()
        .map(|r| parse_sim_run(r))
        .collect::<Result<_>>()?;
    let mut report = Report::default();
    for &n in sizes {
        eprintln!("membership: the local stack with N = {n} ...");
        let row = measure(n, idle).await?;
        eprintln!("{row:?}");
        report.stack.push(row);
    }
    for (n, loss) in sim_runs {
        eprintln!(
            "membership: simulating N = {n} at {:.0}% loss ...",
            loss * 100.0
        );
        let outcome = tokio::task::spawn_blocking(move || crate::sim::run(n, loss, 1))
            .await
            .context("the simulation panicked")?;
        eprintln!("{outcome:?}");
        report.sim.push(outcome);
    }
    let record = doc.with_extension("json");
    let last: Report = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let report = Report {
        stack: merged(last.stack, report.stack, |r| r.n),
        // Loss in tenths of a percent: a key that orders.
        sim: merged(last.sim, report.sim, |o| {
            (o.n, (o.loss * 1000.0).round() as u64)
        }),
        peer_plain_http: last.peer_plain_http,
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(bench_dir().join("membership.json"), &json)?;
    std::fs::write(&record, json).with_context(|| format!("write {}", record.display()))?;
    let plot = doc.with_file_name("membership-cost.svg");
    if !report.stack.is_empty() {
        draw(&report.stack, &plot)?;
    }
    let text = render(&report, idle, &plot);
    print!("{text}");
    std::fs::write(doc, text).with_context(|| format!("write {}", doc.display()))?;
    eprintln!("wrote {}", doc.display());
    Ok(())
}

/// Idle cost per instance against N: measured, beside what each design predicts.
fn draw(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let base = rows
        .iter()
        .find(|r| r.n == 10)
        .or(rows.first())
        .context("no rows")?;
    let max_n = rows.iter().map(|r| r.n).max().unwrap_or(10) as f64;
    let msgs = |r: &Row| r.messages_per_instance_s;
    let old = |n: f64| 4.0 * (n - 1.0);
    let top = rows.iter().map(msgs).fold(old(max_n), f64::max).max(1.0) * 1.1;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Membership requests per instance per second, idle",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_n * 1.05, (0.1f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("instances (N)")
        .y_desc("requests / instance / s (log)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.n as f64, msgs(r))),
            BLUE.stroke_width(2),
        ))?
        .label("measured (gossip: one digest probe a round)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.n as f64, msgs(base))),
            GREEN.stroke_width(1),
        ))?
        .label("expected: flat at N = 10's")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN));
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.n as f64, old(r.n as f64))),
            RED.stroke_width(1),
        ))?
        .label("before: every peer probed every round, 4·(N−1)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// What the peer plane's mutual TLS costs: this run's figures beside the same sizes measured
/// with plain HTTP between instances.
fn tls_cost(rows: &[Row], plain: Option<&Baseline>) -> String {
    let Some(plain) = plain else {
        return String::new();
    };
    let pairs: Vec<(&Row, &Row)> = rows
        .iter()
        .filter_map(|r| Some((plain.stack.iter().find(|p| p.n == r.n)?, r)))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "### What the peer plane's mutual TLS costs\n\n\
         The same figures with plain HTTP between instances, measured at commit {} (before the \
         peer plane had its own mutual-TLS listener), beside this run's. A peer connection is \
         kept and reused, so the handshakes are paid when an instance first probes a peer, not \
         every round.\n\n\
         | N | idle CPU / instance: plain → TLS | × | requests / instance / s: plain → TLS | +1: views agree: plain → TLS | −1: views agree: plain → TLS |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        plain.commit
    );
    for (p, r) in pairs {
        let times = if p.idle_cpu_per_instance > 0.0 {
            format!("{:.2}×", r.idle_cpu_per_instance / p.idle_cpu_per_instance)
        } else {
            "-".to_owned()
        };
        out += &format!(
            "| {} | {:.4} → {:.4} | {} | {:.2} → {:.2} | {} → {} ms | {} → {} ms |\n",
            r.n,
            p.idle_cpu_per_instance,
            r.idle_cpu_per_instance,
            times,
            p.messages_per_instance_s,
            r.messages_per_instance_s,
            p.add_views_agree_ms,
            r.add_views_agree_ms,
            p.remove_views_agree_ms,
            r.remove_views_agree_ms,
        );
    }
    out + "\n"
}

fn ms(v: Option<u64>) -> String {
    v.map_or("did not converge in 90 s".to_owned(), |v| format!("{v} ms"))
}

fn render(report: &Report, idle: Duration, plot: &Path) -> String {
    let rows = &report.stack;
    let base: BTreeMap<&str, f64> = rows
        .iter()
        .find(|r| r.n == 10)
        .or(rows.first())
        .map(|r| {
            BTreeMap::from([
                ("cpu", r.idle_cpu_per_instance),
                ("msg", r.messages_per_instance_s),
            ])
        })
        .unwrap_or_default();
    let ratio = |key: &str, v: f64| {
        base.get(key)
            .filter(|b| **b > 0.0)
            .map_or("-".to_owned(), |b| format!("{:.2}×", v / b))
    };
    let mut out = String::from(
        "# Membership cost by deployment size\n\n\
         Generated by `make bench-membership` (`poc-bench membership`); do not edit by hand. \
         A run replaces the rows it measured; every other row is from the last run that \
         measured it (`BENCHMARKS-membership.json` beside this file holds them all).\n\n",
    );
    if !rows.is_empty() {
        out += &format!(
            "## The local stack\n\n\
             Real servers, DNS responder and Envoy on this machine, no client traffic. Per \
             instance: idle CPU (cores), membership requests sent and DNS queries a second, \
             measured over {} s after 5 s of settling. The design expects the idle cost per \
             instance to stay flat (1.00× of N = 10's); the design before it (every peer \
             probed every round) grew as N. Agreement: from the change (an instance added, or \
             sent SIGTERM) to every view holding the new epoch, and to Envoy routing joins by \
             it. Adding includes the new instance's start and its `JOIN_SETTLE_MS` (2 s); \
             removing includes its drain.\n\n\
             ![idle requests per instance](./{})\n\n",
            idle.as_secs(),
            plot.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("membership-cost.svg"),
        );
        out += "| N | start | idle CPU / instance | vs N = 10 | requests / instance / s | vs N = 10 | DNS queries / instance / s | idle epoch changes | +1: views agree | +1: Envoy routes | −1: views agree | −1: Envoy routes |\n";
        out += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in rows {
            out += &format!(
                "| {} | {:.1} s | {:.4} | {} | {:.2} | {} | {:.2} | {} | {} ms | {} ms | {} ms | {} ms |\n",
                r.n,
                r.start_s,
                r.idle_cpu_per_instance,
                ratio("cpu", r.idle_cpu_per_instance),
                r.messages_per_instance_s,
                ratio("msg", r.messages_per_instance_s),
                r.dns_queries_per_instance_s,
                r.idle_epoch_changes,
                r.add_views_agree_ms,
                r.add_envoy_routes_ms,
                r.remove_views_agree_ms,
                r.remove_envoy_routes_ms,
            );
        }
        out += "\n";
        out += &tls_cost(rows, report.peer_plain_http.as_ref());
    }
    if !report.sim.is_empty() {
        out += "## Past one machine: simulation\n\n\
                The servers' own membership code (the `poc-routing-membership` crate's `Node`, \
                through its one entry point: gossip, membership rules, epochs) for every instance in one process, with virtual time \
                and each message lost at the given rate (`bench/src/sim.rs` says what the \
                model keeps and leaves out). Idle: requests per member per second over 60 s. \
                Then one instance joins, one leaves (SIGTERM), one crashes and stays in DNS; \
                each converges when every live member holds the same new view. A crash is \
                removed after `DOWN_TIMEOUT_S` (30 s), by design. False removals: live members \
                removed as down, by anyone, over the whole run.\n\n";
        out += "| N | loss | idle requests / member / s | join | leave | crash | false removals | wall time |\n";
        out += "|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for o in &report.sim {
            out += &format!(
                "| {} | {:.0}% | {:.2} | {} | {} | {} | {} | {:.1} s |\n",
                o.n,
                o.loss * 100.0,
                o.idle_messages_per_member_s,
                ms(o.join_converged_ms),
                ms(o.leave_converged_ms),
                ms(o.crash_converged_ms),
                o.false_removals,
                o.wall_s,
            );
        }
    }
    out
}
