//! `poc-bench`: the benchmarks behind `make bench` and `make soak`.
//!
//! - `run`: every scenario against the local stack, one after another on this machine, plus
//!   placement quality for 1M ids; writes `target/bench/report.json` and `docs/BENCHMARKS.md`.
//! - `soak`: `/join` through Envoy at half the measured maximum for a long time, watching the
//!   servers' memory; adds its result to the same report.
//! - `hello`: the minimal hyper server of the `hello_world` scenario.
#![forbid(unsafe_code)]

mod load;
mod quality;
mod report;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::{self, Flow};
use poc_routing_stack::{wait_for, Naming, Stack, StackConfig, SERVER_PORT};

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
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// Seconds measured per scenario.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Ids for the placement-quality study.
        #[arg(long, default_value_t = 1_000_000)]
        quality_ids: usize,
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
    /// Write docs/BENCHMARKS.md again from target/bench/report.json (and soak.json).
    Render,
    /// Serve "hello" on ADDR (the hello_world scenario's server).
    Hello {
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Kills the child on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

fn bench_dir() -> PathBuf {
    poc_routing_stack::envoy::repo_root().join("target/bench")
}

/// A bench stack; `flow` `None` runs route A as `envoy.yaml` ships it.
fn stack_config(name: &str, replicas: u32, flow: Option<Flow>) -> StackConfig {
    let mut c = StackConfig::new(
        replicas,
        Naming::Compose,
        IndexMode::Hash,
        bench_dir().join(name),
    );
    c.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.net = [127, 0, 77];
    c.flow = flow;
    c.envoy_component_log_level = "lua:warn,dynamic_modules:warn".into();
    c
}

/// The bench-only peer: Envoy's own consistent hashing (MAGLEV on the client_id query
/// parameter) over the same instances, no Lua, no guard, no extra hop.
fn native_hash_config(
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    stack: &Stack,
) -> String {
    let p = stack.placement();
    let endpoints: String = p
        .members()
        .iter()
        .map(|&i| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {SERVER_PORT} }} }} }}\n",
                p.host(i)
            )
        })
        .collect();
    format!(
        r#"# Bench-only: Envoy's native consistent hashing, the peer of the /join flows.
admin:
  address: {{ socket_address: {{ address: {admin_ip}, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: {listen_ip}, port_value: {listen_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: native
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route:
                  cluster: owners
                  timeout: 5s
                  hash_policy:
                  - query_parameter: {{ name: client_id }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: owners
    connect_timeout: 1s
    lb_policy: MAGLEV
    cluster_type:
      name: envoy.cluster.dns
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster
        dns_refresh_rate: 1s
        dns_lookup_family: V4_ONLY
        typed_dns_resolver_config:
          name: envoy.network.dns_resolver.cares
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
            resolvers: [{{ socket_address: {{ address: {dns_ip}, port_value: {dns_port} }} }}]
    load_assignment:
      cluster_name: owners
      endpoints:
      - lb_endpoints:
{endpoints}"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        listen_ip = listen.ip(),
        listen_port = listen.port(),
        dns_ip = dns.ip(),
        dns_port = dns.port(),
    )
}

async fn start_native(stack: &Stack) -> Result<(Proc, String)> {
    let dir = bench_dir().join("native");
    std::fs::create_dir_all(&dir)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        dir.join("envoy.yaml"),
        native_hash_config(listen, admin, stack.dns().addr(), stack),
    )?;
    let log = std::fs::File::create(dir.join("envoy.log"))?;
    let child = poc_routing_stack::envoy::command(&dir)?
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let proc = Proc(child);
    let url = format!("http://{listen}");
    let probe = format!("{url}/where?client_id=probe");
    let http = reqwest_like_probe();
    wait_for("the native-hash Envoy", Duration::from_secs(30), || async {
        http(&probe).await
    })
    .await?;
    Ok((proc, url))
}

/// A tiny GET-returns-2xx probe on hyper, to avoid another HTTP client dependency.
fn reqwest_like_probe(
) -> impl Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    move |url: &str| {
        let client = client.clone();
        let uri: hyper::Uri = url.parse().expect("valid URI");
        Box::pin(async move { matches!(client.get(uri).await, Ok(r) if r.status().is_success()) })
    }
}

/// The no-filter arm: route A's path (RBAC guard, DFP, router) with no routing filter, for one
/// fixed owner. Envoy's own filters do what a routing filter would: set_metadata records the
/// owner the guard requires, and DFP's per-route `host_rewrite_literal` sets `:authority` (no
/// native filter may change `:authority` before it, so the guard runs right after DFP here).
fn no_filter_config(envoy_yaml: &str, owner: &str) -> Result<String> {
    use serde_yaml::Value;
    let mut config: Value = serde_yaml::from_str(envoy_yaml)?;
    let hcm = envoy::hcm_mut(&mut config);
    let set_metadata: Value = serde_yaml::from_str(&format!(
        r#"
name: envoy.filters.http.set_metadata
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config
  metadata:
  - metadata_namespace: poc.routing
    value: {{ owner: "{owner}" }}
"#
    ))?;
    let filters = hcm["http_filters"]
        .as_sequence_mut()
        .context("envoy.yaml has no http_filters")?;
    let routing = [
        "envoy.filters.http.dynamic_modules",
        "envoy.filters.http.lua",
    ];
    filters.retain(|f| !routing.iter().any(|r| f["name"] == *r));
    let rbac = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.rbac")
        .context("envoy.yaml has no rbac filter")?;
    let rbac = filters.remove(rbac);
    let dfp = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.dynamic_forward_proxy")
        .context("envoy.yaml has no dynamic_forward_proxy filter")?;
    filters.insert(dfp + 1, rbac);
    filters.insert(0, set_metadata);
    let join = envoy::join_route_mut(&mut config)?;
    let per_filter = join["typed_per_filter_config"]
        .as_mapping_mut()
        .context("route join has no typed_per_filter_config")?;
    for r in routing {
        per_filter.remove(r);
    }
    per_filter.insert(
        "envoy.filters.http.dynamic_forward_proxy".into(),
        serde_yaml::from_str(&format!(
            r#"
"@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig
host_rewrite_literal: "{owner}"
"#
        ))?,
    );
    Ok(serde_yaml::to_string(&config)?)
}

/// Design 2, the cluster specifier (bench-only): route A selects one cluster per instance with
/// the module's `envoy.router.cluster_specifier_plugin.dynamic_modules`, with no routing filter,
/// RBAC guard or DFP on the path, the same shape as the native peer. The module's HTTP filter
/// stays in the chain, disabled on every route, only so that its config fetches `/placement`.
/// One STRICT_DNS cluster per instance, named by its hostport, 1 s DNS refresh.
fn cluster_specifier_config(envoy_yaml: &str, hostports: &[String]) -> Result<String> {
    use serde_yaml::Value;
    let mut config: Value = serde_yaml::from_str(envoy_yaml)?;
    envoy::hcm_mut(&mut config)["http_filters"]
        .as_sequence_mut()
        .context("envoy.yaml has no http_filters")?
        .retain(|f| {
            f["name"] == "envoy.filters.http.dynamic_modules"
                || f["name"] == "envoy.filters.http.router"
        });
    let join = envoy::join_route_mut(&mut config)?
        .as_mapping_mut()
        .context("route join")?;
    join.remove("typed_per_filter_config");
    join.insert(
        "route".into(),
        serde_yaml::from_str(
            r#"
timeout: 5s
cluster_not_found_response_code: SERVICE_UNAVAILABLE
inline_cluster_specifier_plugin:
  extension:
    name: envoy.router.cluster_specifier_plugin.dynamic_modules
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier
      dynamic_module_config: { name: poc_routing_envoy_module }
      specifier_name: routing
"#,
        )?,
    );
    let clusters = config["static_resources"]["clusters"]
        .as_sequence_mut()
        .context("envoy.yaml has no clusters")?;
    let servers = clusters
        .iter()
        .find(|c| c["name"] == "servers")
        .context("envoy.yaml has no servers cluster")?
        .clone();
    for hostport in hostports {
        let (host, port) = hostport.rsplit_once(':').context("hostport")?;
        let mut cluster: Value = serde_yaml::from_str(&format!(
            r#"
name: "{hostport}"
connect_timeout: 1s
lb_policy: ROUND_ROBIN
load_assignment:
  cluster_name: "{hostport}"
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: "{host}", port_value: {port} }} }} }}
"#
        ))?;
        cluster["cluster_type"] = servers["cluster_type"].clone();
        clusters.push(cluster);
    }
    Ok(serde_yaml::to_string(&config)?)
}

/// The least a routing script can do: pick one owner for everyone (bench-only).
const LUA_FLOOR: &str = r#"
function envoy_on_request(handle)
  handle:streamInfo():dynamicMetadata():set("poc.routing", "owner", "poc-routing-server-1:8081")
  handle:headers():replace(":authority", "poc-routing-server-1:8081")
end
"#;

fn bench_ids() -> Vec<String> {
    quality::random_ids(10_000, 42)
        .into_iter()
        .map(|id| id.into_string())
        .collect()
}

async fn scenario(name: &str, urls: Arc<Vec<hyper::Uri>>, settings: &load::Load) -> load::Measured {
    eprintln!(
        "[bench] {name}: {} connections, {:?} warm-up, {:?} measured",
        settings.concurrency, settings.warmup, settings.duration
    );
    let m = load::run(urls, settings).await;
    eprintln!(
        "[bench] {name}: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        m.rps, m.p50_ms, m.p99_ms, m.errors
    );
    m
}

async fn run(
    concurrency: usize,
    warmup: u64,
    duration: u64,
    replicas: u32,
    quality_ids: usize,
) -> Result<()> {
    std::fs::create_dir_all(bench_dir())?;
    let settings = load::Load {
        concurrency,
        warmup: Duration::from_secs(warmup),
        duration: Duration::from_secs(duration),
        rate: None,
        accept_421: false,
    };
    let ids = bench_ids();
    let mut scenarios = report::Scenarios::new();

    // hello_world: the ceiling for a Rust HTTP server on this machine.
    let hello_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let hello_proc = Proc(
        Command::new(std::env::current_exe()?)
            .args(["hello", "--addr", &hello_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let probe = reqwest_like_probe();
    let hello_url = format!("http://{hello_addr}/");
    wait_for("the hello server", Duration::from_secs(10), || async {
        probe(&hello_url).await
    })
    .await?;
    scenarios.insert(
        "hello_world".to_owned(),
        scenario(
            "hello_world",
            load::urls(&format!("http://{hello_addr}"), "/", &ids),
            &settings,
        )
        .await,
    );
    drop(hello_proc);

    // The stack as envoy.yaml ships it: its default flow is `envoy_join`.
    let stack = Stack::start(stack_config("stack-default", replicas, None)).await?;
    let default_flow = stack
        .flow()
        .context("envoy.yaml enables one routing flow")?;
    let first = stack
        .instance_addr(stack.placement().base().into())
        .context("instance")?;
    let join = |url: &str| load::urls(url, "/join", &ids);
    for (name, urls) in [
        (
            "direct_where",
            load::urls(&format!("http://{first}"), "/where", &ids),
        ),
        ("envoy_where", load::urls(&stack.url(), "/where", &ids)),
        ("envoy_join", join(&stack.url())),
    ] {
        scenarios.insert(name.to_owned(), scenario(name, urls, &settings).await);
    }
    // Each flow by name: measured again on this stack for the default one, else on its own.
    for (name, flow) in [
        ("envoy_join_module", Flow::Module),
        ("envoy_join_lua", Flow::Lua),
    ] {
        let measured = if flow == default_flow {
            scenario(name, join(&stack.url()), &settings).await
        } else {
            let other =
                Stack::start(stack_config(&format!("stack-{name}"), replicas, Some(flow))).await?;
            let m = scenario(name, join(&other.url()), &settings).await;
            drop(other);
            m
        };
        scenarios.insert(name.to_owned(), measured);
    }
    let (native, native_url) = start_native(&stack).await?;
    scenarios.insert(
        "envoy_native_hash".to_owned(),
        scenario(
            "envoy_native_hash",
            load::urls(&native_url, "/where", &ids),
            &settings,
        )
        .await,
    );
    drop(native);
    let owner = stack.placement().hostport(stack.placement().base().into());
    let hostports: Vec<String> = stack
        .placement()
        .members()
        .iter()
        .map(|&m| stack.placement().hostport(m))
        .collect();
    drop(stack);

    let envoy_yaml =
        std::fs::read_to_string(poc_routing_stack::envoy::repo_root().join("envoy.yaml"))?;
    let mut specifier = stack_config("stack-cluster-specifier", replicas, None);
    specifier.envoy_yaml_override = Some(cluster_specifier_config(&envoy_yaml, &hostports)?);
    let stack = Stack::start(specifier).await?;
    stack.wait_module_members(hostports.len()).await?;
    scenarios.insert(
        "envoy_join_cluster_specifier".to_owned(),
        scenario(
            "envoy_join_cluster_specifier",
            join(&stack.url()),
            &settings,
        )
        .await,
    );
    drop(stack);

    // Diagnostics, one fixed owner for every join (the others answer 421, counted as served):
    // route A's path with no routing filter at all, and with a two-line Lua script.
    let fixed_owner = load::Load {
        accept_421: true,
        ..settings.clone()
    };
    let mut bare = stack_config("stack-no-filter", replicas, None);
    bare.envoy_yaml_override = Some(no_filter_config(&envoy_yaml, &owner)?);
    let stack = Stack::start(bare).await?;
    scenarios.insert(
        "envoy_join_no_filter".to_owned(),
        scenario("envoy_join_no_filter", join(&stack.url()), &fixed_owner).await,
    );
    drop(stack);
    let mut floor = stack_config("stack-lua-floor", replicas, Some(Flow::Lua));
    floor.lua_override = Some(LUA_FLOOR.to_owned());
    let stack = Stack::start(floor).await?;
    scenarios.insert(
        "envoy_lua_floor".to_owned(),
        scenario("envoy_lua_floor", join(&stack.url()), &fixed_owner).await,
    );
    drop(stack);

    eprintln!("[bench] placement quality: {quality_ids} ids, N = 2..64");
    let started = Instant::now();
    let qids = quality::random_ids(quality_ids, 7);
    let hash = quality::measure(IndexMode::Hash, &qids, 2..=64);
    let jump = quality::measure(IndexMode::Jump, &qids, 2..=64);
    eprintln!(
        "[bench] placement quality took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let docs = poc_routing_stack::envoy::repo_root().join("docs");
    std::fs::create_dir_all(&docs)?;
    quality::plot(&docs.join("placement-moves.svg"), &hash, &jump)?;

    let report = report::Report::new(settings, replicas, scenarios, quality_ids, hash, jump);
    report.save(&bench_dir().join("report.json"))?;
    report::render(&bench_dir(), &docs.join("BENCHMARKS.md"))?;
    eprintln!(
        "[bench] wrote target/bench/report.json, docs/BENCHMARKS.md, docs/placement-moves.svg"
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn soak(minutes: u64, rate: Option<f64>, replicas: u32) -> Result<()> {
    let report_path = bench_dir().join("report.json");
    let rate = match rate {
        Some(r) => r,
        None => {
            let report = report::Report::load(&report_path).with_context(|| {
                format!(
                    "no rate given and no {} (run `make bench` first)",
                    report_path.display()
                )
            })?;
            report.scenarios["envoy_join"].rps / 2.0
        }
    };
    let stack = Stack::start(stack_config("stack-soak", replicas, None)).await?;
    let pids = stack.instance_pids();
    let ids = bench_ids();
    let urls = load::urls(&stack.url(), "/join", &ids);
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

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            concurrency,
            warmup,
            duration,
            replicas,
            quality_ids,
        } => run(concurrency, warmup, duration, replicas, quality_ids).await,
        Cmd::Soak {
            minutes,
            rate,
            replicas,
        } => soak(minutes, rate, replicas).await,
        Cmd::Render => report::render(
            &bench_dir(),
            &poc_routing_stack::envoy::repo_root().join("docs/BENCHMARKS.md"),
        ),
        Cmd::Hello { addr } => hello(addr).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn repo_envoy_yaml() -> String {
        std::fs::read_to_string(envoy::repo_root().join("envoy.yaml")).unwrap()
    }

    fn filter_names(config: &Value) -> Vec<String> {
        envoy::hcm_mut(&mut config.clone())["http_filters"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_no_filter_arm_keeps_the_guard_and_dfp_and_drops_the_routing_filters() {
        let owner = "poc-routing-server-1:8081";
        let mut config: Value =
            serde_yaml::from_str(&no_filter_config(&repo_envoy_yaml(), owner).unwrap()).unwrap();
        assert_eq!(
            filter_names(&config),
            [
                "envoy.filters.http.set_metadata",
                "envoy.filters.http.dynamic_forward_proxy",
                "envoy.filters.http.rbac",
                "envoy.filters.http.router"
            ]
        );
        let join = envoy::join_route_mut(&mut config).unwrap();
        let per_filter = &join["typed_per_filter_config"];
        assert_eq!(
            per_filter["envoy.filters.http.dynamic_forward_proxy"]["host_rewrite_literal"],
            owner
        );
        assert!(
            per_filter["envoy.filters.http.rbac"].is_mapping(),
            "the guard stays"
        );
        assert!(per_filter["envoy.filters.http.lua"].is_null());
        assert!(per_filter["envoy.filters.http.dynamic_modules"].is_null());
    }

    #[test]
    fn the_cluster_specifier_arm_has_one_cluster_per_instance_and_no_guard_or_dfp() {
        let hostports = vec![
            "poc-routing-server-1:8081".to_owned(),
            "poc-routing-server-2:8081".to_owned(),
        ];
        let mut config: Value = serde_yaml::from_str(
            &cluster_specifier_config(&repo_envoy_yaml(), &hostports).unwrap(),
        )
        .unwrap();
        assert_eq!(
            filter_names(&config),
            [
                "envoy.filters.http.dynamic_modules",
                "envoy.filters.http.router"
            ]
        );
        let join = envoy::join_route_mut(&mut config).unwrap();
        assert!(join["typed_per_filter_config"].is_null());
        assert_eq!(
            join["route"]["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
                ["specifier_name"],
            "routing"
        );
        let clusters = config["static_resources"]["clusters"]
            .as_sequence()
            .unwrap();
        for hostport in &hostports {
            let c = clusters
                .iter()
                .find(|c| c["name"] == hostport.as_str())
                .unwrap();
            assert_eq!(c["cluster_type"]["name"], "envoy.cluster.dns");
        }
    }
}
