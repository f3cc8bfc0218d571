//! `envoy.yaml`'s RBAC guard on route A admits exactly the instance names the placement rule
//! produces, for both namings, and the deployment files configure the servers with those
//! namings.
//!
//! The guard is the last check before Envoy dials: whatever a routing filter (or a bad
//! `/where` or `/placement` answer) sets as `:authority`, only an instance name gets through.
//! Envoy matches with RE2; the `regex` crate implements the same syntax for these patterns.

use poc_routing_deploy::{
    container, documents, env, envoy_config, find, guard_authority_patterns, read,
};
use poc_routing_placement::Naming;
use regex::Regex;

/// Indexes to try: each digit count the guard allows, and the edges.
const INDEXES: [u64; 12] = [
    0,
    1,
    2,
    9,
    10,
    42,
    99,
    100,
    65_535,
    65_536,
    123_456_789,
    999_999_999,
];

fn guard() -> Vec<Regex> {
    let patterns = guard_authority_patterns(&envoy_config());
    assert_eq!(patterns.len(), 2, "one pattern per naming: {patterns:?}");
    patterns
        .iter()
        .map(|p| Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect()
}

fn admitted(guard: &[Regex], authority: &str) -> bool {
    guard.iter().any(|r| r.is_match(authority))
}

/// Names close to `naming`'s that it never produces.
fn near_misses(naming: &Naming, index: u64) -> Vec<String> {
    let name = naming.hostport(index);
    let host = naming.host(index);
    // The name with `middle` where the rule writes `-<index>`.
    let around =
        |middle: &str| format!("{}{middle}{}:{}", naming.prefix, naming.suffix, naming.port);
    let mut v = vec![
        around(&format!("-0{index}")),
        around(&format!("-+{index}")),
        around(&format!("--{index}")),
        around(&format!("-{index}a")),
        around("-"),
        around(&index.to_string()),
        around("-1234567890"),
        format!("{host}:{}", naming.port + 1),
        format!("{host}:9901"),
        format!("{host}:0{}", naming.port),
        host.clone(),
        format!("{host}:"),
        format!("{host}.:{}", naming.port),
        format!("{name} "),
        format!(" {name}"),
        format!("{name}\n"),
        format!("x{name}"),
        format!("{host}.evil.example:{}", naming.port),
        format!("evil.example/{name}"),
        format!("{name}@evil.example"),
        name.to_uppercase(),
    ];
    if !naming.suffix.is_empty() {
        v.push(format!("{}-{index}:{}", naming.prefix, naming.port));
        v.push(name.replace(".svc.", ".svc.x."));
        v.push(name.replace('.', "x"));
    }
    v
}

#[test]
fn the_guard_admits_every_name_the_rule_produces() {
    let guard = guard();
    for naming in [Naming::compose(), Naming::kubernetes()] {
        for index in INDEXES {
            let name = naming.hostport(index);
            assert!(
                admitted(&guard, &name),
                "EXPECTED the guard to admit {name}\nRECEIVED refused"
            );
        }
    }
}

#[test]
fn the_guard_admits_nothing_else() {
    let guard = guard();
    let namings = [Naming::compose(), Naming::kubernetes()];
    let produced = |authority: &str| {
        namings.iter().any(|n| {
            let (host, _) = authority.rsplit_once(':').unwrap_or((authority, ""));
            n.index_from_hostname(host)
                .is_some_and(|i| n.hostport(i) == authority)
        })
    };
    for naming in &namings {
        for index in INDEXES {
            for other in near_misses(naming, index) {
                assert_eq!(
                    admitted(&guard, &other),
                    produced(&other),
                    "{other:?}: the guard and the rule disagree"
                );
                assert!(
                    !admitted(&guard, &other),
                    "EXPECTED the guard to refuse {other:?}\nRECEIVED admitted"
                );
            }
        }
        // The other naming's port or suffix is not a name of this one.
        let other = if naming.suffix.is_empty() {
            &namings[1]
        } else {
            &namings[0]
        };
        let mixed = format!("{}-1{}:{}", naming.prefix, other.suffix, naming.port);
        assert!(!admitted(&guard, &mixed), "{mixed:?} admitted");
    }
    for garbage in ["", ":", "localhost:8081", "127.0.0.1:8081", "server:8081"] {
        assert!(!admitted(&guard, garbage), "{garbage:?} admitted");
    }
}

/// The deployment files give the servers exactly these namings.
#[test]
fn compose_and_kubernetes_configure_the_servers_with_the_rules_namings() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&read("docker-compose.yaml")).unwrap();
    let compose_env = &compose["services"]["server"]["environment"];
    let want = Naming::compose();
    assert_eq!(
        compose_env["SERVICE_PREFIX"].as_str(),
        Some(want.prefix.as_str())
    );
    assert_eq!(
        compose_env["SERVICE_SUFFIX"].as_str(),
        Some(want.suffix.as_str())
    );
    assert_eq!(
        compose_env["INDEX_BASE"].as_str(),
        Some(want.base.to_string().as_str())
    );
    assert_eq!(
        compose_env["PORT"].as_str(),
        Some(want.port.to_string().as_str())
    );

    let docs = documents(&read("minikube/server-statefulset.yaml"));
    let container = container(find(&docs, "StatefulSet", "server"), "server");
    let var = |name: &str| env(container, name).to_owned();
    let want = Naming::kubernetes();
    assert_eq!(var("SERVICE_PREFIX"), want.prefix);
    assert_eq!(var("SERVICE_SUFFIX"), want.suffix);
    assert_eq!(var("INDEX_BASE"), want.base.to_string());
    assert_eq!(var("PORT"), want.port.to_string());
}
