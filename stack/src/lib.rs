//! The local stack: everything `docker compose up` gives, as plain processes on 127.0.0.x.
//!
//! - `REPLICAS` `poc-server` processes, instance `i` on its own loopback address, port 8081;
//! - a DNS responder ([`dns`]) serving the instance names and `server`, as Compose's DNS does,
//!   or the Kubernetes headless names;
//! - the real Envoy with the repository's `envoy.yaml` and `lua/routing.lua`, only its bind
//!   addresses and DNS resolver changed ([`envoy::local_config`]).
//!
//! `make up` (the `poc-stack` binary) and the end-to-end tests both start it through
//! [`Stack::start`]: there is one code path. Linux only, since it relies on 127.0.0.0/8 being
//! all loopback.
#![forbid(unsafe_code)]

pub mod dns;
pub mod envoy;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use poc_routing_placement::{IndexMode, Placement};

pub use dns::DnsResponder;

/// The port every instance listens on, as in `envoy.yaml`'s resolver cluster.
pub const SERVER_PORT: u16 = 8081;

/// Which deployment's names the stack imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Naming {
    /// `poc-routing-server-1..N`, index base 1.
    Compose,
    /// `server-0..N-1.server-headless.poc-routing.svc.cluster.local`, index base 0.
    Kubernetes,
}

impl Naming {
    pub fn prefix(self) -> &'static str {
        match self {
            Naming::Compose => "poc-routing-server",
            Naming::Kubernetes => "server",
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Naming::Compose => "",
            Naming::Kubernetes => ".server-headless.poc-routing.svc.cluster.local",
        }
    }
    pub fn base(self) -> u32 {
        match self {
            Naming::Compose => 1,
            Naming::Kubernetes => 0,
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub replicas: u32,
    pub naming: Naming,
    pub mode: IndexMode,
    /// Envoy's listener and admin addresses.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where the DNS responder listens (port 0: any free port).
    pub dns: SocketAddr,
    /// Instance addresses are `<net>.<first_host + i>`; later restarts get higher host numbers.
    pub net: [u8; 3],
    pub first_host: u8,
    /// Envoy's working directory and every log file.
    pub run_dir: PathBuf,
    /// Replaces `lua/routing.lua`, to test what a broken script does.
    pub lua_override: Option<String>,
    /// Overrides the routing flow set in `envoy.yaml` (default: as the file says).
    pub flow: Option<envoy::Flow>,
    /// Envoy's `--component-log-level`, e.g. `lua:debug`.
    pub envoy_component_log_level: String,
}

impl StackConfig {
    /// The defaults of `make up`: 127.0.0.1:10000, admin 127.0.0.1:9901, instances on
    /// 127.0.0.11 and up.
    pub fn new(replicas: u32, naming: Naming, mode: IndexMode, run_dir: PathBuf) -> Self {
        Self {
            replicas,
            naming,
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 10000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            dns: SocketAddr::from(([127, 0, 0, 1], 0)),
            net: [127, 0, 0],
            first_host: 11,
            run_dir,
            lua_override: None,
            flow: None,
            envoy_component_log_level: "lua:info".into(),
        }
    }

    pub fn placement(&self) -> Placement {
        Placement::new(
            self.mode,
            self.replicas,
            self.naming.base(),
            self.naming.prefix(),
            self.naming.suffix(),
            SERVER_PORT,
        )
        .expect("the stack's namings are valid placements")
    }
}

/// A binary of this workspace, next to the running executable (or its `deps/` parent).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let mut dir = std::env::current_exe()?;
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --workspace` (`make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct ServerProcess {
    child: Child,
    ip: Ipv4Addr,
}

/// A running local stack. Dropping it stops every process it started.
pub struct Stack {
    config: StackConfig,
    placement: Placement,
    dns: DnsResponder,
    servers: BTreeMap<u64, ServerProcess>,
    envoy: Option<Child>,
    next_host: u8,
    http: reqwest::Client,
}

impl Stack {
    /// Starts DNS, the servers and Envoy, and returns once Envoy is ready and every instance
    /// passes Envoy's health check.
    pub async fn start(config: StackConfig) -> Result<Self> {
        // Fail first, with instructions, if Envoy is not installed.
        envoy::envoy_binary()?;
        let server_bin = workspace_binary("poc-server")?;
        std::fs::create_dir_all(&config.run_dir)
            .with_context(|| format!("create {}", config.run_dir.display()))?;
        let dns = DnsResponder::start(config.dns)
            .await
            .with_context(|| format!("start the DNS responder on {}", config.dns))?;
        let placement = config.placement();
        let mut stack = Stack {
            next_host: config.first_host,
            placement,
            dns,
            servers: BTreeMap::new(),
            envoy: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            config,
        };
        for index in stack.placement.indexes() {
            stack.start_instance_with(&server_bin, index)?;
        }
        for index in stack.placement.indexes() {
            stack.wait_instance_healthy(index).await?;
        }

        envoy::prepare_run_dir(
            &stack.config.run_dir,
            stack.config.listen,
            stack.config.admin,
            stack.dns.addr(),
            stack.config.flow,
            stack.config.lua_override.as_deref(),
        )?;
        let log = stack.config.run_dir.join("envoy.log");
        let _ = std::fs::remove_file(&log);
        let child = envoy::command(&stack.config.run_dir)?
            .args(["--log-level", "info", "--component-log-level"])
            .arg(&stack.config.envoy_component_log_level)
            .stdout(open_log(&stack.config.run_dir.join("envoy.access.log"))?)
            .stderr(open_log(&log)?)
            .spawn()
            .context("start Envoy")?;
        stack.envoy = Some(child);
        let ready = stack.wait_envoy_ready().await;
        if let Err(e) = ready {
            bail!("{e}\n--- envoy.log ---\n{}", stack.envoy_log());
        }
        Ok(stack)
    }

    fn start_instance_with(&mut self, server_bin: &Path, index: u64) -> Result<()> {
        let [a, b, c] = self.config.net;
        let ip = Ipv4Addr::new(a, b, c, self.next_host);
        self.next_host = self
            .next_host
            .checked_add(1)
            .context("out of instance addresses")?;
        let p = &self.placement;
        let log = self.config.run_dir.join(format!("server-{index}.log"));
        let child = Command::new(server_bin)
            .env("SERVICE_PREFIX", p.prefix())
            .env("SERVICE_SUFFIX", p.suffix())
            .env("REPLICAS", p.replicas().to_string())
            .env("INDEX_MODE", p.mode().as_str())
            .env("INDEX_BASE", p.base().to_string())
            .env("PORT", SERVER_PORT.to_string())
            .env("BIND_ADDR", ip.to_string())
            .env("INSTANCE_INDEX", index.to_string())
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(open_log(&log)?)
            .stderr(open_log(&log)?)
            .spawn()
            .with_context(|| format!("start {}", server_bin.display()))?;
        self.servers.insert(index, ServerProcess { child, ip });
        self.dns.set(&self.placement.host(index), vec![ip]);
        self.publish_service_name();
        Ok(())
    }

    /// `server` resolves to every running instance, as a Compose service name does.
    fn publish_service_name(&self) {
        self.dns
            .set("server", self.servers.values().map(|s| s.ip).collect());
    }

    async fn wait_instance_healthy(&self, index: u64) -> Result<()> {
        let ip = self.servers[&index].ip;
        let url = format!("http://{ip}:{SERVER_PORT}/health");
        wait_for(
            &format!("instance {index} at {url}"),
            Duration::from_secs(10),
            || async {
                matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
            },
        )
        .await
    }

    async fn wait_envoy_ready(&mut self) -> Result<()> {
        let ready_url = format!("http://{}/ready", self.config.admin);
        let deadline = Duration::from_secs(30);
        let http = self.http.clone();
        let envoy = self.envoy.as_mut().expect("started");
        let started = Instant::now();
        loop {
            if let Some(status) = envoy.try_wait()? {
                bail!("Envoy exited during start-up ({status})");
            }
            if matches!(http.get(&ready_url).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            if started.elapsed() > deadline {
                bail!("Envoy was not ready at {ready_url} after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all: Vec<SocketAddr> = self
            .servers
            .values()
            .map(|s| SocketAddr::from((s.ip, SERVER_PORT)))
            .collect();
        self.wait_resolver_hosts(&all).await?;
        // Health state reaches Envoy's workers a moment after its main thread.
        let health = format!("{}/health", self.url());
        wait_for(
            "route B to answer /health",
            Duration::from_secs(10),
            || async {
                matches!(self.http.get(&health).send().await, Ok(r) if r.status().is_success())
            },
        )
        .await
    }

    /// Waits until the healthy hosts of Envoy's resolver cluster are exactly `expected`.
    pub async fn wait_resolver_hosts(&self, expected: &[SocketAddr]) -> Result<()> {
        let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
        want.sort();
        wait_for(
            &format!("Envoy's resolver cluster to hold exactly {want:?}"),
            Duration::from_secs(15),
            || async {
                let mut got = envoy::healthy_resolver_hosts(&self.http, self.config.admin).await;
                got.sort();
                got == want
            },
        )
        .await
    }

    /// Envoy's listener, e.g. `http://127.0.0.1:10000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    pub fn admin(&self) -> SocketAddr {
        self.config.admin
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn dns(&self) -> &DnsResponder {
        &self.dns
    }

    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// The address instance `index` listens on now, if it is running.
    pub fn instance_addr(&self, index: u64) -> Option<SocketAddr> {
        self.servers
            .get(&index)
            .map(|s| SocketAddr::from((s.ip, SERVER_PORT)))
    }

    /// The process ids of the running instances.
    pub fn instance_pids(&self) -> Vec<u32> {
        self.servers.values().map(|s| s.child.id()).collect()
    }

    /// Kills instance `index` and removes its names from DNS, as `docker kill` does.
    pub fn stop_instance(&mut self, index: u64) -> Result<()> {
        let mut server = self
            .servers
            .remove(&index)
            .with_context(|| format!("instance {index} is not running"))?;
        server.child.kill()?;
        server.child.wait()?;
        self.dns.set(&self.placement.host(index), vec![]);
        self.publish_service_name();
        Ok(())
    }

    /// Starts instance `index` again on a new address, as `docker start` does, and waits until
    /// it answers its own health check (not until Envoy has noticed: that is what tests measure).
    pub async fn restart_instance(&mut self, index: u64) -> Result<SocketAddr> {
        if self.servers.contains_key(&index) {
            self.stop_instance(index)?;
        }
        let server_bin = workspace_binary("poc-server")?;
        self.start_instance_with(&server_bin, index)?;
        self.wait_instance_healthy(index).await?;
        Ok(self.instance_addr(index).expect("just started"))
    }

    /// Everything Envoy logged so far.
    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.config.run_dir.join("envoy.log")).unwrap_or_default()
    }

    /// Everything instance `index` logged so far (across restarts).
    pub fn server_log(&self, index: u64) -> String {
        std::fs::read_to_string(self.config.run_dir.join(format!("server-{index}.log")))
            .unwrap_or_default()
    }

    /// Stops Envoy and every server.
    pub fn stop(&mut self) {
        if let Some(mut envoy) = self.envoy.take() {
            let _ = envoy.kill();
            let _ = envoy.wait();
        }
        for (_, mut s) in std::mem::take(&mut self.servers) {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}
