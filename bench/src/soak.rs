//! `poc-bench soak`: a long run of `/join` at a fixed rate, watching the servers' memory.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use poc_routing_stack::Stack;

use crate::{bench_dir, bench_ids, load, report, rss_kib, scenarios, shipped_flow, stack_config};

/// Half the measured maximum of the flow envoy.yaml ships, from the last `make bench`.
fn soak_rate() -> Result<f64> {
    let report_path = bench_dir().join("report.json");
    let report = report::Report::load(&report_path).with_context(|| {
        format!(
            "no rate given and no {} (run `make bench` first)",
            report_path.display()
        )
    })?;
    let name = scenarios::join_scenario(shipped_flow()?);
    let measured = report
        .scenarios
        .get(name)
        .with_context(|| format!("{} has no {name}", report_path.display()))?;
    Ok(measured.rps / 2.0)
}

/// `poc-bench soak`: `/join` at `rate` (default: [`soak_rate`]) for `minutes`, in ten slices,
/// sampling the servers' memory after each; fails on any error or more than 10% RSS growth.
pub async fn run(minutes: u64, rate: Option<f64>, replicas: u32) -> Result<()> {
    let rate = match rate {
        Some(r) => r,
        None => soak_rate()?,
    };
    let stack = Stack::start(stack_config("stack-soak", replicas, None)).await?;
    let pids = stack.instance_pids();
    let ids = bench_ids();
    let urls = load::targets(&stack.url(), "/join", load::Carry::Query, &ids, None)?;
    let total = Duration::from_secs(minutes * 60);
    // Ten slices, so that memory is sampled along the way; the first minute is warm-up.
    let slices = 10u32;
    let slice = total / slices;
    let mut samples = Vec::new();
    let mut measured = Vec::new();
    eprintln!("[soak] {minutes} min of /join at {rate:.0} rps over {replicas} servers");
    for i in 0..slices {
        let settings = load::Load {
            concurrency: 32,
            warmup: Duration::ZERO,
            duration: slice,
            rate: Some(rate),
            accept_421: false,
        };
        let m = load::run(urls.clone(), &settings).await;
        let rss: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
        eprintln!(
            "[soak] {}/{slices}: {:.0} rps, p99 {:.2} ms, {} errors, servers' RSS {} KiB",
            i + 1,
            m.rps,
            m.p99_ms,
            m.errors,
            rss
        );
        samples.push(rss);
        measured.push(m);
    }
    let soak = report::Soak::new(minutes, rate, replicas, samples, measured);
    soak.save(&bench_dir().join("soak.json"))?;
    report::render(
        &bench_dir(),
        &poc_routing_stack::envoy::repo_root().join("docs/BENCHMARKS.md"),
    )?;
    drop(stack);
    if !soak.passed() {
        bail!(
            "soak failed: {} errors, RSS growth {:.1}%",
            soak.errors,
            soak.rss_growth_pct
        );
    }
    Ok(())
}
