//! The Envoy configurations of the bench, as checked-in files under `bench/envoy/`.
//!
//! Two of them are written by hand: `native-hash.yaml` (the peer) and `lua-floor.lua`. The
//! other two are route A of `envoy.yaml` with one part taken away, so they are generated from
//! it by [`generate`] (`poc-bench envoy-configs`), and a test fails when they are stale:
//! - `no-filter.yaml`: route A's guard and DFP with no routing filter, one fixed owner;
//! - `cluster-specifier.yaml`: design 2, the module as a cluster specifier, one cluster per
//!   instance of the bench's stack (Compose names, [`INSTANCES`] of them).
//!
//! At run time every file goes through the local stack's own edits (listener, admin and DNS
//! addresses: `poc_routing_stack::envoy::local_config`), exactly as `envoy.yaml` does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use poc_routing_placement::Naming;
use poc_routing_stack::envoy;
use serde_yaml::Value;

/// How many instances the generated cluster-specifier config declares clusters for: the
/// bench's default `--replicas`.
pub const INSTANCES: u64 = 3;

/// `bench/envoy/<name>`.
pub fn path(name: &str) -> PathBuf {
    envoy::repo_root().join("bench/envoy").join(name)
}

/// Every generated file, as `(name under bench/envoy/, contents)`, from `envoy.yaml`.
pub fn generate() -> Result<Vec<(&'static str, String)>> {
    let envoy_yaml = std::fs::read_to_string(envoy::repo_root().join("envoy.yaml"))
        .context("read envoy.yaml")?;
    let naming = Naming::compose();
    let owner = naming.hostport(naming.base.into());
    let first = u64::from(naming.base);
    let hostports: Vec<String> = (first..first + INSTANCES)
        .map(|i| naming.hostport(i))
        .collect();
    Ok(vec![
        (
            "no-filter.yaml",
            with_header(
                "route A's guard and DFP with no routing filter: every join goes to one fixed owner",
                &no_filter(&envoy_yaml, &owner)?,
            ),
        ),
        (
            "cluster-specifier.yaml",
            with_header(
                "design 2, the routing module as a cluster specifier with one cluster per instance",
                &cluster_specifier(&envoy_yaml, &hostports)?,
            ),
        ),
    ])
}

/// Writes every generated file; returns their paths.
pub fn write() -> Result<Vec<PathBuf>> {
    generate()?
        .into_iter()
        .map(|(name, text)| {
            let path = path(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

fn with_header(what: &str, yaml: &str) -> String {
    format!(
        "# Bench-only: {what}.\n# Generated from envoy.yaml by `poc-bench envoy-configs`; do not edit by hand.\n{yaml}"
    )
}

/// The no-filter arm: route A's path (RBAC guard, DFP, router) with no routing filter, for one
/// fixed owner. Envoy's own filters do what a routing filter would: set_metadata records the
/// owner the guard requires, and DFP's per-route `host_rewrite_literal` sets `:authority` (no
/// native filter may change `:authority` before it, so the guard runs right after DFP here).
fn no_filter(envoy_yaml: &str, owner: &str) -> Result<String> {
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
    let routing = [envoy::MODULE_FILTER, envoy::LUA_FILTER];
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

/// Design 2, the cluster specifier: route A selects one cluster per instance with the module's
/// `envoy.router.cluster_specifier_plugin.dynamic_modules`, with no routing filter, RBAC guard
/// or DFP on the path, the same shape as the native peer. The module's HTTP filter stays in the
/// chain, disabled on every route, only so that its config fetches `/placement`. Each instance
/// gets a STRICT_DNS cluster named by its hostport, resolved like the `servers` cluster.
fn cluster_specifier(envoy_yaml: &str, hostports: &[String]) -> Result<String> {
    let mut config: Value = serde_yaml::from_str(envoy_yaml)?;
    envoy::hcm_mut(&mut config)["http_filters"]
        .as_sequence_mut()
        .context("envoy.yaml has no http_filters")?
        .retain(|f| f["name"] == envoy::MODULE_FILTER || f["name"] == "envoy.filters.http.router");
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

/// The names of the clusters a config declares.
pub fn cluster_names(yaml: &str) -> Result<Vec<String>> {
    let config: Value = serde_yaml::from_str(yaml)?;
    Ok(config["static_resources"]["clusters"]
        .as_sequence()
        .context("no clusters")?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(path(name)).unwrap()).unwrap()
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
    fn the_checked_in_configs_are_generated_from_todays_envoy_yaml() {
        for (name, want) in generate().unwrap() {
            let got = std::fs::read_to_string(path(name)).unwrap_or_default();
            assert!(
                got == want,
                "bench/envoy/{name} is stale: run `cargo run -p poc-routing-bench -- envoy-configs`"
            );
        }
    }

    #[test]
    fn every_config_passes_the_stacks_own_edits() {
        let addr = "127.0.0.1:1".parse().unwrap();
        for name in [
            "native-hash.yaml",
            "no-filter.yaml",
            "cluster-specifier.yaml",
        ] {
            let yaml = std::fs::read_to_string(path(name)).unwrap();
            envoy::local_config(&yaml, addr, addr, addr, None)
                .unwrap_or_else(|e| panic!("bench/envoy/{name}: {e:#}"));
        }
    }

    #[test]
    fn the_no_filter_arm_keeps_the_guard_and_dfp_and_drops_the_routing_filters() {
        let mut config = load("no-filter.yaml");
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
            "poc-routing-server-1:8081"
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
        let mut config = load("cluster-specifier.yaml");
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
        for hostport in [
            "poc-routing-server-1:8081",
            "poc-routing-server-2:8081",
            "poc-routing-server-3:8081",
        ] {
            let c = clusters.iter().find(|c| c["name"] == hostport).unwrap();
            assert_eq!(c["cluster_type"]["name"], "envoy.cluster.dns");
        }
    }
}
