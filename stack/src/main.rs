//! `poc-stack`: start or stop the local stack (`make up`, `make down`).
//!
//! `up` runs the stack in the foreground until SIGINT/SIGTERM; `up --detach` starts that in the
//! background, waits until it is ready, and returns. `down` stops a detached stack.
//! `envoy-config --flow F` prints envoy.yaml with route A switched to flow F.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use poc_routing_placement::IndexMode;
use poc_routing_stack::{Deployment, Stack, StackConfig};

#[derive(Parser)]
#[command(
    name = "poc-stack",
    about = "The local poc-routing stack: servers, DNS and Envoy on 127.0.0.x"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the stack.
    Up {
        #[arg(long, env = "REPLICAS", default_value_t = 3)]
        replicas: u32,
        #[arg(long, value_enum, default_value_t = Deployment::Compose)]
        naming: Deployment,
        /// hash, numeric or jump.
        #[arg(long, env = "INDEX_MODE", default_value = "hash")]
        mode: IndexMode,
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Envoy's probe listener (GET /ready only).
        #[arg(long, default_value = "127.0.0.1:9902")]
        probe: SocketAddr,
        /// Envoy's operator listener (every instance endpoint, for poc-client views).
        #[arg(long, default_value = "127.0.0.1:9903")]
        operator: SocketAddr,
        /// The DNS responder's address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        dns: SocketAddr,
        /// How route A finds owners: module or lua (default: as envoy.yaml says, module).
        #[arg(long, value_enum)]
        flow: Option<poc_routing_stack::envoy::Flow>,
        /// Envoy's --component-log-level, e.g. lua:debug.
        #[arg(long, default_value = "lua:info,dynamic_modules:info")]
        envoy_log_level: String,
        #[arg(long, default_value = ".stack")]
        run_dir: PathBuf,
        /// Run in the background and return once ready.
        #[arg(long)]
        detach: bool,
        /// App mode: start this workspace binary beside every instance (poc-rooms, the
        /// example room service) and have the instances forward their keys' requests to it.
        #[arg(long)]
        app: Option<String>,
    },
    /// Print the repository's envoy.yaml with route A switched to FLOW, for Docker Compose
    /// (`ENVOY_YAML=<file> docker compose up`) or a Kubernetes ConfigMap.
    EnvoyConfig {
        #[arg(long, value_enum)]
        flow: poc_routing_stack::envoy::Flow,
    },
    /// Test infrastructure for `make test-k8s`: a stand-in for the cluster DNS, serving the
    /// Services and Endpoints of the API server at API until stopped.
    K8sDns {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
        #[arg(long, default_value = "cluster.local")]
        domain: String,
    },
    /// Stop a stack started with `up --detach`.
    Down {
        #[arg(long, default_value = ".stack")]
        run_dir: PathBuf,
    },
}

fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("stack.pid")
}

fn ready_file(run_dir: &Path) -> PathBuf {
    run_dir.join("ready")
}

fn alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}

/// Re-runs this program without `--detach` in its own process group and waits for it.
fn detach(run_dir: &Path) -> Result<()> {
    if let Ok(pid) = std::fs::read_to_string(pid_file(run_dir)) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            if alive(Pid::from_raw(pid)) {
                bail!("a stack is already running (pid {pid}); stop it with `make down`");
            }
        }
    }
    std::fs::create_dir_all(run_dir)?;
    let _ = std::fs::remove_file(ready_file(run_dir));
    let log = std::fs::File::create(run_dir.join("stack.log"))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut child = Command::new(std::env::current_exe()?)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    std::fs::write(pid_file(run_dir), child.id().to_string())?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(run_dir.join("stack.log")).unwrap_or_default();
            bail!("the stack failed to start ({status}):\n{log}");
        }
        if let Ok(summary) = std::fs::read_to_string(ready_file(run_dir)) {
            print!("{summary}");
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            bail!(
                "the stack was not ready after 90 s; see {}/stack.log",
                run_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn down(run_dir: &Path) -> Result<()> {
    let Ok(pid) = std::fs::read_to_string(pid_file(run_dir)) else {
        println!("no stack running (no {})", pid_file(run_dir).display());
        return Ok(());
    };
    let pid = Pid::from_raw(pid.trim().parse().context("read the stack's pid file")?);
    if alive(pid) {
        kill(pid, Signal::SIGTERM)?;
        let started = Instant::now();
        while alive(pid) && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            kill(pid, Signal::SIGKILL)?;
        }
    }
    let _ = std::fs::remove_file(pid_file(run_dir));
    let _ = std::fs::remove_file(ready_file(run_dir));
    println!("stack stopped");
    Ok(())
}

fn envoy_config(flow: poc_routing_stack::envoy::Flow) -> Result<()> {
    print!("{}", poc_routing_stack::envoy::flow_config(flow)?);
    Ok(())
}

async fn k8s_dns(listen: SocketAddr, api: &str, domain: &str) -> Result<()> {
    let dns = poc_routing_stack::dns::DnsResponder::start(listen)
        .await
        .with_context(|| format!("bind the DNS stand-in on {listen}"))?;
    eprintln!("k8s-dns: serving {domain} from {api} on {}", dns.addr());
    tokio::select! {
        result = poc_routing_stack::k8s_dns::follow(&dns, api, domain, Duration::from_millis(300)) => result,
        () = poc_routing_server::shutdown_signal() => Ok(()),
    }
}

async fn up(config: StackConfig) -> Result<()> {
    let run_dir = config.run_dir.clone();
    let stack = Stack::start(config).await?;
    let p = stack.placement();
    let mut summary = format!(
        "local stack ready: Envoy {} (operator {}, probe {}/ready, admin http://{}), {} replicas, mode {}, names {}\n",
        stack.url(),
        stack.operator_url(),
        stack.probe_url(),
        stack.admin(),
        p.replicas(),
        p.mode(),
        p.hostport(p.base().into()),
    );
    for &index in p.members() {
        if let Some(addr) = stack.instance_addr(index) {
            summary += &format!("  {} -> {addr}\n", p.host(index));
        }
    }
    summary += &format!(
        "  DNS responder {}; logs in {}\n",
        stack.dns().addr(),
        run_dir.display()
    );
    std::fs::write(ready_file(&run_dir), &summary)?;
    print!("{summary}");
    poc_routing_server::shutdown_signal().await;
    drop(stack);
    let _ = std::fs::remove_file(ready_file(&run_dir));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Up {
            run_dir,
            detach: true,
            ..
        } => detach(&run_dir),
        Cmd::Up {
            replicas,
            naming,
            mode,
            listen,
            admin,
            probe,
            operator,
            dns,
            flow,
            envoy_log_level,
            run_dir,
            detach: false,
            app,
        } => {
            let mut config = StackConfig::new(replicas, naming, mode, run_dir);
            config.listen = listen;
            config.admin = admin;
            config.probe = probe;
            config.operator = operator;
            config.dns = dns;
            config.flow = flow;
            config.envoy_component_log_level = envoy_log_level;
            config.app = app;
            // The repository's own secrets (made here if missing), where poc-client and
            // `docker compose` find them too.
            config.secrets = Some(poc_routing_stack::envoy::repo_root().join(".secrets"));
            up(config).await
        }
        Cmd::Down { run_dir } => down(&run_dir),
        Cmd::EnvoyConfig { flow } => envoy_config(flow),
        Cmd::K8sDns {
            listen,
            api,
            domain,
        } => k8s_dns(listen, &api, &domain).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poc-stack: {e:#}");
            ExitCode::from(1)
        }
    }
}
