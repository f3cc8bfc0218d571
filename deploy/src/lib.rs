//! Checks of the files that deploy poc-routing, run by `cargo test -p poc-routing-deploy`:
//! - `tests/kubernetes.rs`: the `minikube/` manifests, rendered by the real kustomize and
//!   validated against the Kubernetes schemas;
//! - `tests/guard.rs`: `envoy.yaml`'s RBAC guard admits exactly the instance names the placement
//!   rule produces, for the Compose and the Kubernetes naming.
//!
//! This library reads those files for the tests.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde_yaml::Value;

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is inside the repository")
        .to_path_buf()
}

/// A file of the repository, as text.
pub fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// `envoy.yaml`, parsed.
pub fn envoy_config() -> Value {
    serde_yaml::from_str(&read("envoy.yaml")).expect("envoy.yaml is YAML")
}

/// The regular expressions route A's RBAC guard matches `:authority` against: one per naming
/// the guard admits (the `or_rules` of its only policy).
pub fn guard_authority_patterns(config: &Value) -> Vec<String> {
    let routes = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
    let join = routes
        .as_sequence()
        .and_then(|r| r.iter().find(|r| r["name"] == "join"))
        .expect("envoy.yaml has route join");
    let policies = &join["typed_per_filter_config"]["envoy.filters.http.rbac"]["config"]["rbac"]
        ["rules"]["policies"];
    let policy = policies
        .as_mapping()
        .and_then(|p| p.values().next())
        .expect("the guard has a policy");
    let rules = policy["permissions"][0]["and_rules"]["rules"]
        .as_sequence()
        .expect("the guard's permission is an and_rules");
    rules
        .iter()
        .filter_map(|r| r["or_rules"]["rules"].as_sequence())
        .flatten()
        .filter(|r| r["header"]["name"] == ":authority")
        .map(|r| {
            r["header"]["string_match"]["safe_regex"]["regex"]
                .as_str()
                .expect("an :authority rule is a safe_regex")
                .to_owned()
        })
        .collect()
}

/// Every document of a multi-document YAML text.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// The object of `kind` named `name` (a ConfigMap also by its generated `name-<hash>`).
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"].as_str().is_some_and(|n| {
                    n == name || (kind == "ConfigMap" && n.starts_with(&format!("{name}-")))
                })
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// The value of environment variable `name` in a container.
pub fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// The container `name` of a workload's pod template.
pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}
