//! The local stack: everything `docker compose up` gives, as plain processes on 127.0.0.x.
//!
//! - `REPLICAS` `poc-server` processes, instance `i` on its own loopback address, port 8081,
//!   finding each other in DNS as they do in Compose and Kubernetes (or, with `discovery` off,
//!   told the fixed member set);
//! - a DNS responder ([`dns`]) serving the instance names, `server` and the reverse names, as
//!   Compose's DNS does, or the Kubernetes headless names and their SRV records;
//! - the real Envoy with the repository's `envoy.yaml` and `lua/routing.lua`, only its bind
//!   addresses and DNS resolver changed ([`envoy::local_config`]).
//!
//! `make up` (the `poc-stack` binary) and the end-to-end tests both start it through
//! [`Stack::start`]: there is one code path. Instances can be added and removed while it runs
//! ([`Stack::add_instances`], [`Stack::remove_instances`]), as `--scale` does. Linux only, since
//! it relies on 127.0.0.0/8 being all loopback.
#![forbid(unsafe_code)]

pub mod dns;
pub mod envoy;
pub mod k8s_dns;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use poc_routing_peer::secrets;
use poc_routing_placement::{IndexMode, Placement, PlacementSpec};
use poc_routing_wire::PlacementAnswer;

pub use dns::DnsResponder;
pub use poc_routing_testkit::{wait_for, workspace_binary};
use poc_routing_testkit::{wait_until_2xx, KillOnDrop};

/// The port every instance listens on, as in `envoy.yaml`'s servers cluster.
pub const SERVER_PORT: u16 = poc_routing_placement::DEFAULT_PORT;

/// Every instance's peer listener (mutual TLS), on its own address like its public one.
pub const PEER_PORT: u16 = 7946;

/// With an application ([`StackConfig::app`]): where it listens, and the instance's state
/// API, on the instance's own address (a loopback one), as a pod's containers share theirs.
pub const APP_PORT: u16 = 3000;
pub const STATE_API_PORT: u16 = 8090;

/// Which deployment the stack imitates: its instance names and how they are discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deployment {
    /// `poc-routing-server-1..N`, index base 1.
    Compose,
    /// `server-0..N-1.server-headless.poc-routing.svc.cluster.local`, index base 0.
    Kubernetes,
}

impl Deployment {
    /// The name the servers look up to find each other (`DISCOVERY_NAME`).
    pub fn discovery_name(self) -> &'static str {
        match self {
            Deployment::Compose => "server",
            Deployment::Kubernetes => "_http._tcp.server-headless.poc-routing.svc.cluster.local",
        }
    }

    /// What the reverse (PTR) record of an instance's address names: Docker answers with the
    /// container name and the network.
    fn reverse_name(self, host: &str) -> String {
        match self {
            Deployment::Compose => format!("{host}.poc-routing_default"),
            Deployment::Kubernetes => host.to_owned(),
        }
    }

    /// The instance names, as the placement crate defines them for this deployment.
    pub fn rule(self) -> poc_routing_placement::Naming {
        match self {
            Deployment::Compose => poc_routing_placement::Naming::compose(),
            Deployment::Kubernetes => poc_routing_placement::Naming::kubernetes(),
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub replicas: u32,
    pub naming: Deployment,
    pub mode: IndexMode,
    /// Envoy's public listener, admin interface, probe listener (GET /ready) and operator
    /// listener (every instance endpoint).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub probe: SocketAddr,
    pub operator: SocketAddr,
    /// Where the DNS responder listens (port 0: any free port).
    pub dns: SocketAddr,
    /// Instance addresses are `<net>.<first_host + i>`; later restarts get higher host numbers.
    pub net: [u8; 3],
    pub first_host: u8,
    /// Envoy's working directory and every log file.
    pub run_dir: PathBuf,
    /// Replaces `lua/routing.lua`, to test what a broken script does.
    pub lua_override: Option<String>,
    /// Replaces `envoy.yaml` (before the local edits), for benchmark variants.
    pub envoy_yaml_override: Option<String>,
    /// Overrides the routing flow set in `envoy.yaml` (default: as the file says).
    pub flow: Option<envoy::Flow>,
    /// Envoy's `--component-log-level`, e.g. `lua:debug`.
    pub envoy_component_log_level: String,
    /// Members from DNS (`DISCOVERY=dns`, the default) or fixed (`DISCOVERY=off` with
    /// `REPLICAS`).
    pub discovery: bool,
    /// Extra environment for every server, e.g. `DOWN_TIMEOUT_S`.
    pub server_env: Vec<(String, String)>,
    /// The deployment's secrets (`poc-server credential new` layout): the cluster's
    /// credential and the operator's token. `None`: `<run_dir>/secrets`, made on first start.
    pub secrets: Option<PathBuf>,
    /// App mode: a binary of the workspace (such as `poc-rooms`, the example room service)
    /// started beside every instance, on the instance's address, port [`APP_PORT`]; the
    /// instance forwards it its keys' requests (`APP_URL`).
    pub app: Option<String>,
}

impl StackConfig {
    /// The defaults of `make up`: 127.0.0.1:10000, admin 127.0.0.1:9901, probe 127.0.0.1:9902,
    /// operator 127.0.0.1:9903, instances on 127.0.0.11 and up.
    pub fn new(replicas: u32, naming: Deployment, mode: IndexMode, run_dir: PathBuf) -> Self {
        Self {
            replicas,
            naming,
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 10000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            probe: SocketAddr::from(([127, 0, 0, 1], 9902)),
            operator: SocketAddr::from(([127, 0, 0, 1], 9903)),
            dns: SocketAddr::from(([127, 0, 0, 1], 0)),
            net: [127, 0, 0],
            first_host: 11,
            run_dir,
            lua_override: None,
            envoy_yaml_override: None,
            flow: None,
            envoy_component_log_level: "lua:info,dynamic_modules:info".into(),
            discovery: true,
            server_env: Vec::new(),
            secrets: None,
            app: None,
        }
    }

    /// The placement of the first `replicas` instances.
    pub fn placement(&self) -> Placement {
        Placement::contiguous(
            PlacementSpec::new(self.mode, self.naming.rule()),
            self.replicas,
        )
        .expect("the stack's namings are valid placements")
    }
}

struct ServerProcess {
    child: KillOnDrop,
    ip: Ipv4Addr,
    /// The application beside it (app mode): it goes when the instance goes.
    app: Option<KillOnDrop>,
}

/// A running local stack. Dropping it stops every process it started.
pub struct Stack {
    config: StackConfig,
    /// The placement the servers should hold: every instance started and not removed (a killed
    /// instance stays a member until the down timeout, as in the servers' own view).
    placement: Placement,
    dns: DnsResponder,
    servers: BTreeMap<u64, ServerProcess>,
    envoy: Option<KillOnDrop>,
    next_host: u8,
    http: reqwest::Client,
    /// The deployment's secrets ([`StackConfig::secrets`]).
    secrets: PathBuf,
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
        let secrets = config
            .secrets
            .clone()
            .unwrap_or_else(|| config.run_dir.join("secrets"));
        if !secrets::peer_dir(&secrets).join("ca.pem").exists() {
            secrets::new(&secrets).with_context(|| {
                format!("make the stack's credentials in {}", secrets.display())
            })?;
        }
        let mut stack = Stack {
            secrets,
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
        let members = stack.placement.members().to_vec();
        for &index in &members {
            stack.start_instance_with(&server_bin, index)?;
        }
        for &index in &members {
            stack.wait_instance_healthy(index).await?;
        }
        // Each instance probes one peer a round, so a large stack takes a little longer.
        let agree_within =
            Duration::from_secs(15) + Duration::from_millis(200) * members.len() as u32;
        stack.wait_views_agree(agree_within).await?;

        envoy::prepare_run_dir(
            &stack.config.run_dir,
            &envoy::Addresses {
                listen: stack.config.listen,
                admin: stack.config.admin,
                probe: stack.config.probe,
                operator: stack.config.operator,
                dns: stack.dns.addr(),
                operator_token: secrets::token_file(&stack.secrets),
            },
            stack.config.flow,
            envoy::Overrides {
                envoy_yaml: stack.config.envoy_yaml_override.as_deref(),
                lua: stack.config.lua_override.as_deref(),
            },
        )?;
        let _ = std::fs::remove_file(stack.config.run_dir.join("envoy.log"));
        stack.spawn_envoy()?;
        let ready = stack.wait_envoy_ready().await;
        if let Err(e) = ready {
            bail!("{e}\n--- envoy.log ---\n{}", stack.envoy_log());
        }
        Ok(stack)
    }

    /// Starts Envoy in the run directory, appending to its logs.
    fn spawn_envoy(&mut self) -> Result<()> {
        let child = envoy::command(&self.config.run_dir)?
            .args(["--log-level", "info", "--component-log-level"])
            .arg(&self.config.envoy_component_log_level)
            .stdout(open_log(&self.config.run_dir.join("envoy.access.log"))?)
            .stderr(open_log(&self.config.run_dir.join("envoy.log"))?)
            .spawn()
            .context("start Envoy")?;
        self.envoy = Some(KillOnDrop::new(child));
        Ok(())
    }

    /// Kills Envoy and starts it again, the servers untouched; returns the moment the new
    /// process was started (not when it is ready: that is what tests measure).
    pub fn restart_envoy(&mut self) -> Result<Instant> {
        if let Some(mut envoy) = self.envoy.take() {
            envoy.kill()?;
        }
        let started = Instant::now();
        self.spawn_envoy()?;
        Ok(started)
    }

    /// Envoy's process id, while it runs.
    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.as_ref().map(|e| e.id())
    }

    /// Sends `signal` to instance `index` (SIGSTOP makes it hang: the kernel still accepts
    /// connections, nothing answers; SIGCONT resumes it).
    pub fn signal_instance(&self, index: u64, signal: nix::sys::signal::Signal) -> Result<()> {
        let server = self
            .servers
            .get(&index)
            .with_context(|| format!("instance {index} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.child.id() as i32), signal)?;
        Ok(())
    }

    /// Kills instance `index` but leaves its names in DNS, as Kubernetes does for a pod of a
    /// headless Service with `publishNotReadyAddresses` (Docker removes them: `stop_instance`).
    /// Returns the address its name still resolves to.
    pub fn kill_instance_keeping_its_name(&mut self, index: u64) -> Result<SocketAddr> {
        let server = self
            .servers
            .get_mut(&index)
            .with_context(|| format!("instance {index} is not running"))?;
        server.child.kill()?;
        Ok(SocketAddr::from((server.ip, SERVER_PORT)))
    }

    fn start_instance_with(&mut self, server_bin: &Path, index: u64) -> Result<()> {
        let secrets = self.secrets.clone();
        self.spawn_server(server_bin, index, &secrets)
    }

    /// Starts a process named in DNS as instance `index`, exactly like the others but with
    /// the secrets in `secrets` (a credential of its own: an attacker's), and leaves it out of
    /// the stack's expected members. Returns its public address.
    pub async fn start_stranger(&mut self, index: u64, secrets: &Path) -> Result<SocketAddr> {
        if self.servers.contains_key(&index) {
            bail!("instance {index} is already running");
        }
        let server_bin = workspace_binary("poc-server")?;
        self.spawn_server(&server_bin, index, secrets)?;
        Ok(self.instance_addr(index).expect("just started"))
    }

    fn spawn_server(&mut self, server_bin: &Path, index: u64, secrets: &Path) -> Result<()> {
        let [a, b, c] = self.config.net;
        let ip = Ipv4Addr::new(a, b, c, self.next_host);
        self.next_host = self
            .next_host
            .checked_add(1)
            .context("out of instance addresses")?;
        let p = &self.placement;
        let log = self.config.run_dir.join(format!("server-{index}.log"));
        let mut command = Command::new(server_bin);
        if self.config.discovery {
            command
                .env("DISCOVERY", "dns")
                .env("DISCOVERY_NAME", self.config.naming.discovery_name())
                .env("DNS_SERVER", self.dns.addr().to_string());
        } else {
            command
                .env("DISCOVERY", "off")
                .env("REPLICAS", p.replicas().to_string());
        }
        let app = match &self.config.app {
            Some(binary) => {
                command
                    .env("APP_URL", format!("http://{ip}:{APP_PORT}"))
                    .env("APP_STATE_ADDR", format!("{ip}:{STATE_API_PORT}"));
                let log = self.config.run_dir.join(format!("app-{index}.log"));
                let app_bin = workspace_binary(binary)?;
                let app = Command::new(&app_bin)
                    .env("LISTEN", format!("{ip}:{APP_PORT}"))
                    .env("STATE_URL", format!("http://{ip}:{STATE_API_PORT}"))
                    .stdin(Stdio::null())
                    .stdout(open_log(&log)?)
                    .stderr(open_log(&log)?)
                    .spawn()
                    .with_context(|| format!("start {}", app_bin.display()))?;
                Some(KillOnDrop::new(app))
            }
            None => None,
        };
        let child = command
            .env("SERVICE_PREFIX", p.prefix())
            .env("SERVICE_SUFFIX", p.suffix())
            .env("INDEX_MODE", p.mode().as_str())
            .env("INDEX_BASE", p.base().to_string())
            .env("PORT", SERVER_PORT.to_string())
            .env("BIND_ADDR", ip.to_string())
            .env("INSTANCE_INDEX", index.to_string())
            .env("LOG_FORMAT", "json")
            .env("PEER_PORT", PEER_PORT.to_string())
            .env("PEER_CREDENTIAL_DIR", secrets::peer_dir(secrets))
            .env("OPERATOR_TOKEN_FILE", secrets::token_file(secrets))
            .envs(self.config.server_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open_log(&log)?)
            .stderr(open_log(&log)?)
            .spawn()
            .with_context(|| format!("start {}", server_bin.display()))?;
        let child = KillOnDrop::new(child);
        self.servers.insert(index, ServerProcess { child, ip, app });
        let host = self.placement.host(index);
        self.dns.set(&host, vec![ip]);
        self.dns
            .set_ptr(ip, Some(&self.config.naming.reverse_name(&host)));
        self.publish_service_names();
        Ok(())
    }

    /// Removes an instance's names, as Docker does when a container stops.
    fn unpublish(&self, index: u64, ip: Ipv4Addr) {
        self.dns.set(&self.placement.host(index), vec![]);
        self.dns.set_ptr(ip, None);
        self.publish_service_names();
    }

    /// `server` resolves to every running instance, as a Compose service name does, and the
    /// headless SRV name lists every running pod, ready or not, as Kubernetes does.
    fn publish_service_names(&self) {
        self.dns
            .set("server", self.servers.values().map(|s| s.ip).collect());
        if self.config.naming == Deployment::Kubernetes {
            let targets = self
                .servers
                .keys()
                .map(|&i| (self.placement.host(i), SERVER_PORT))
                .collect();
            self.dns
                .set_srv(self.config.naming.discovery_name(), targets);
        }
    }

    async fn wait_instance_healthy(&self, index: u64) -> Result<()> {
        let ip = self.servers[&index].ip;
        let url = format!("http://{ip}:{SERVER_PORT}/health");
        wait_until_2xx(&self.http, &url, Duration::from_secs(10))
            .await
            .with_context(|| format!("instance {index}"))?;
        if let Some(app) = self.app_url(index) {
            wait_until_2xx(
                &self.http,
                &format!("{app}/health"),
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("the application beside instance {index}"))?;
        }
        Ok(())
    }

    async fn wait_envoy_ready(&mut self) -> Result<()> {
        let ready_url = format!("http://{}/ready", self.config.probe);
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
        self.wait_servers_cluster(&all).await?;
        if self.flow() == Some(envoy::Flow::Module) {
            self.wait_module_members(self.placement.members().len())
                .await?;
        }
        // Health state reaches Envoy's workers a moment after its main thread.
        let health = format!("{}/health", self.url());
        wait_until_2xx(&self.http, &health, Duration::from_secs(10))
            .await
            .context("route B to answer /health")
    }

    /// The flow route A runs: the configured one, or what `envoy.yaml` (or its override)
    /// enables; `None` for a variant that enables neither routing filter.
    pub fn flow(&self) -> Option<envoy::Flow> {
        if let Some(flow) = self.config.flow {
            return Some(flow);
        }
        let yaml = match &self.config.envoy_yaml_override {
            Some(yaml) => yaml.clone(),
            None => std::fs::read_to_string(envoy::repo_root().join("envoy.yaml")).ok()?,
        };
        envoy::Flow::of(&yaml).ok()
    }

    /// Waits until the routing module routes by a placement of `members` members (its
    /// `dynamicmodulescustom.placement_members` statistic), as it does within a refresh interval of
    /// a change.
    pub async fn wait_module_members(&self, members: usize) -> Result<()> {
        let url = format!(
            "http://{}/stats?filter=^dynamicmodulescustom\\.placement_members$",
            self.config.admin
        );
        let want = format!("dynamicmodulescustom.placement_members: {members}");
        wait_for(
            &format!("the routing module to hold a placement of {members} members"),
            Duration::from_secs(10),
            || async {
                match self.http.get(&url).send().await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.trim() == want),
                    Err(_) => false,
                }
            },
        )
        .await
    }

    /// Waits until the healthy hosts of Envoy's servers cluster are exactly `expected`.
    pub async fn wait_servers_cluster(&self, expected: &[SocketAddr]) -> Result<()> {
        let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
        want.sort();
        wait_for(
            &format!("Envoy's servers cluster to hold exactly {want:?}"),
            Duration::from_secs(15),
            || async {
                let mut got = envoy::healthy_servers_hosts(&self.http, self.config.admin).await;
                got.sort();
                got == want
            },
        )
        .await
    }

    /// Envoy's public listener, e.g. `http://127.0.0.1:10000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    /// The deployment's secrets: `peer/` (the cluster's credential) and `operator/token`.
    pub fn secrets(&self) -> &Path {
        &self.secrets
    }

    /// The operator's token the tools send (the newest in the token file; empty if none).
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(secrets::token_file(&self.secrets))
            .ok()
            .and_then(|t| poc_routing_wire::newest_operator_token(&t).map(str::to_owned))
            .unwrap_or_default()
    }

    /// Envoy's operator listener, e.g. `http://127.0.0.1:9903`.
    pub fn operator_url(&self) -> String {
        format!("http://{}", self.config.operator)
    }

    /// Envoy's probe listener, e.g. `http://127.0.0.1:9902`.
    pub fn probe_url(&self) -> String {
        format!("http://{}", self.config.probe)
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

    /// Kills instance `index` and removes its names from DNS, as `docker kill` does. It stays
    /// in the member set: a crash is not a scale-down.
    pub fn stop_instance(&mut self, index: u64) -> Result<()> {
        let mut server = self
            .servers
            .remove(&index)
            .with_context(|| format!("instance {index} is not running"))?;
        server.child.kill()?;
        self.unpublish(index, server.ip);
        Ok(())
    }

    /// Scale-up, as `docker compose up --scale` does: starts the instances `indexes` (new
    /// numbers) together and waits until each is healthy, i.e. a member. The views then converge
    /// on their own ([`Self::wait_views_agree`]).
    pub async fn add_instances(&mut self, indexes: &[u64]) -> Result<()> {
        if let Some(index) = indexes.iter().find(|i| self.servers.contains_key(i)) {
            bail!("instance {index} is already running");
        }
        let server_bin = workspace_binary("poc-server")?;
        let members = self.placement.members().iter().chain(indexes).copied();
        self.placement = self.placement.with_members(members)?;
        for &index in indexes {
            self.start_instance_with(&server_bin, index)?;
        }
        for &index in indexes {
            self.wait_instance_healthy(index).await?;
        }
        Ok(())
    }

    /// Scale-down, as `docker compose up --scale` and a StatefulSet scale-down do: SIGTERM to
    /// each of `indexes` at once, then wait for each to leave and exit on its own (it must,
    /// well inside Compose's 10 s grace period), then remove its names. Returns how long the
    /// slowest took to exit.
    pub async fn remove_instances(&mut self, indexes: &[u64]) -> Result<Duration> {
        let mut leaving = Vec::new();
        for &index in indexes {
            let server = self
                .servers
                .remove(&index)
                .with_context(|| format!("instance {index} is not running"))?;
            leaving.push((index, server));
        }
        let remaining = self
            .placement
            .members()
            .iter()
            .copied()
            .filter(|i| !indexes.contains(i));
        self.placement = self.placement.with_members(remaining)?;
        let started = Instant::now();
        for (_, server) in &leaving {
            let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        let grace = Duration::from_secs(10);
        let mut problems = Vec::new();
        for (index, mut server) in leaving {
            let status = loop {
                if let Some(status) = server.child.try_wait()? {
                    break Some(status);
                }
                if started.elapsed() > grace {
                    let _ = server.child.kill();
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            self.unpublish(index, server.ip);
            match status {
                None => problems.push(format!(
                    "instance {index} did not exit within {grace:?} of SIGTERM (killed)"
                )),
                Some(s) if !s.success() => {
                    problems.push(format!("instance {index} exited with {s} after SIGTERM"))
                }
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(started.elapsed())
    }

    /// The indexes of the running instances.
    pub fn running(&self) -> Vec<u64> {
        self.servers.keys().copied().collect()
    }

    /// What every running instance answers at `/placement`, by instance (`None`: no usable
    /// answer).
    pub async fn views(&self) -> BTreeMap<u64, Option<PlacementAnswer>> {
        let mut views = BTreeMap::new();
        // The stack's instances (a stranger started beside them is not one).
        let members = self
            .servers
            .iter()
            .filter(|(i, _)| self.placement.is_member(**i));
        for (&index, server) in members {
            let url = format!("http://{}:{SERVER_PORT}/placement", server.ip);
            let request = self.http.get(&url).bearer_auth(self.operator_token());
            let view = match request.send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            views.insert(index, view);
        }
        views
    }

    /// Waits until every running instance holds the stack's expected placement (same epoch),
    /// and returns how long that took.
    pub async fn wait_views_agree(&self, timeout: Duration) -> Result<Duration> {
        if !self.config.discovery {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let want = self.placement.epoch().to_string();
        let result = wait_for(
            &format!(
                "every instance to hold members {:?} (epoch {want})",
                self.placement.members()
            ),
            timeout,
            || async {
                self.views().await.values().all(|v| {
                    v.as_ref()
                        .is_some_and(|v| v.epoch.as_deref() == Some(want.as_str()))
                })
            },
        )
        .await;
        if let Err(e) = result {
            bail!("{e}; views: {:?}", self.views().await);
        }
        Ok(started.elapsed())
    }

    /// Starts instance `index` again on a new address, as `docker start` does, and waits until
    /// it answers its own health check (not until Envoy has noticed: that is what tests measure).
    /// It comes back as the same member: the member set does not change.
    /// Returns the new address and the moment the new process was started.
    pub async fn restart_instance(&mut self, index: u64) -> Result<(SocketAddr, Instant)> {
        let started = self.restart_instances(&[index]).await?;
        Ok((self.instance_addr(index).expect("just started"), started))
    }

    /// [`Self::restart_instance`] for several at once (a whole deployment started again):
    /// starts them all, then waits until each is healthy. Returns the moment they started.
    pub async fn restart_instances(&mut self, indexes: &[u64]) -> Result<Instant> {
        for &index in indexes {
            if self.servers.contains_key(&index) {
                self.stop_instance(index)?;
            }
        }
        let server_bin = workspace_binary("poc-server")?;
        let started = Instant::now();
        for &index in indexes {
            self.start_instance_with(&server_bin, index)?;
        }
        for &index in indexes {
            self.wait_instance_healthy(index).await?;
        }
        Ok(started)
    }

    /// Everything Envoy logged so far.
    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.config.run_dir.join("envoy.log")).unwrap_or_default()
    }

    /// In app mode: the application beside instance `index` (`http://ip:port`).
    pub fn app_url(&self, index: u64) -> Option<String> {
        let server = self.servers.get(&index).filter(|s| s.app.is_some())?;
        Some(format!("http://{}:{APP_PORT}", server.ip))
    }

    /// In app mode: instance `index`'s state API (`http://ip:port`), which only the
    /// application and tests on this machine reach.
    pub fn state_api_url(&self, index: u64) -> Option<String> {
        let server = self.servers.get(&index).filter(|s| s.app.is_some())?;
        Some(format!("http://{}:{STATE_API_PORT}", server.ip))
    }

    /// Kills the application beside instance `index` (the instance stays), as a crashed
    /// container of a pod; `SIGSTOP` instead makes it hang.
    pub fn signal_app(&self, index: u64, signal: nix::sys::signal::Signal) -> Result<()> {
        let app = self
            .servers
            .get(&index)
            .and_then(|s| s.app.as_ref())
            .with_context(|| format!("instance {index} runs no application"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(app.id() as i32), signal)?;
        Ok(())
    }

    /// Everything instance `index` logged so far (across restarts).
    pub fn server_log(&self, index: u64) -> String {
        std::fs::read_to_string(self.config.run_dir.join(format!("server-{index}.log")))
            .unwrap_or_default()
    }

    /// Stops Envoy, then every server (each is killed when its guard drops).
    pub fn stop(&mut self) {
        self.envoy = None;
        self.servers.clear();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Envoy first, so that it does not health-check servers that are going away.
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
