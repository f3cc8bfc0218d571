//! The scenarios of `make bench`, as data: one row each, run in this order by one loop.
//!
//! A row says where the load goes ([`Target`]), what the local stack runs for it ([`Setup`]:
//! an Envoy config file, the flow, a Lua script) and which path is asked. Consecutive rows with
//! the same setup share one stack.

use poc_routing_stack::envoy::Flow;

use crate::load::Carry;

/// Where a scenario's load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The bench's minimal hyper server (`poc-bench hello`): the ceiling of this machine.
    Hello,
    /// The stack's first instance, directly.
    Instance,
    /// The stack's Envoy.
    Envoy,
}

/// What the local stack runs for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Envoy's config: `envoy.yaml`, or a file under `bench/envoy/` (see `configs`).
    pub envoy: &'static str,
    /// The flow route A runs; `None`: as the config says (or no routing filter).
    pub flow: Option<Flow>,
    /// A file under `bench/envoy/` that replaces `lua/routing.lua`.
    pub lua: Option<&'static str>,
    /// The routing module runs in a config that is not `envoy.yaml`'s module flow: wait
    /// until it holds every member before measuring.
    pub module_placement: bool,
    /// The servers' `REPLICATION`; `None`: their default.
    pub replication: Option<&'static str>,
    /// Envoy verifies JWTs against `jwks.json` in its working directory: the bench makes a
    /// key, writes its JWKS there and signs the scenario's tokens with it.
    pub jwks: bool,
    /// App mode: the workspace binary started beside every instance (`poc-rooms`).
    pub app: Option<&'static str>,
}

impl Setup {
    pub(crate) const fn shipped(flow: Option<Flow>) -> Self {
        Self {
            envoy: "envoy.yaml",
            flow,
            lua: None,
            module_placement: false,
            replication: None,
            jwks: false,
            app: None,
        }
    }

    pub(crate) const fn file(envoy: &'static str) -> Self {
        Self {
            envoy,
            flow: None,
            lua: None,
            module_placement: false,
            replication: None,
            jwks: false,
            app: None,
        }
    }

    /// `bench/envoy/keys.yaml`: `envoy.yaml` plus a cookie, a path and a JWT route, module
    /// flow.
    const fn keys() -> Self {
        Self {
            module_placement: true,
            jwks: true,
            ..Self::file("bench/envoy/keys.yaml")
        }
    }
}

/// One row of the bench.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// One line for the report's table.
    pub what: &'static str,
    pub target: Target,
    /// `None` for [`Target::Hello`], which needs no stack.
    pub setup: Option<Setup>,
    /// The path asked, with `?client_id=<id>` over 10,000 ids.
    pub path: &'static str,
    /// Where else each request carries its id (the key source the route reads, or the one
    /// a native peer hashes).
    pub carry: Carry,
    /// Every join goes to one fixed owner, so the other instances answer 421: counted as served.
    pub fixed_owner: bool,
}

const fn row(
    name: &'static str,
    what: &'static str,
    target: Target,
    setup: Setup,
    path: &'static str,
) -> Scenario {
    Scenario {
        name,
        what,
        target,
        setup: Some(setup),
        path,
        carry: Carry::Query,
        fixed_owner: false,
    }
}

/// A key-source arm: a row whose requests carry the id in `carry`.
const fn keyed(
    name: &'static str,
    what: &'static str,
    setup: Setup,
    path: &'static str,
    carry: Carry,
) -> Scenario {
    Scenario {
        carry,
        ..row(name, what, Target::Envoy, setup, path)
    }
}

/// Every scenario, in the order `make bench` runs them and the report lists them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hello_world",
        what: "minimal hyper server (ceiling)",
        target: Target::Hello,
        setup: None,
        path: "/",
        carry: Carry::Query,
        fixed_owner: false,
    },
    row(
        "direct_where",
        "GET /where straight to one poc-server",
        Target::Instance,
        Setup::shipped(Some(Flow::Lua)),
        "/where",
    ),
    row(
        "envoy_where",
        "GET /where through Envoy, route B",
        Target::Envoy,
        Setup::shipped(Some(Flow::Lua)),
        "/where",
    ),
    row(
        "envoy_join_lua",
        "GET /join, Lua flow: Lua asks /where on every request, then the guard and DFP",
        Target::Envoy,
        Setup::shipped(Some(Flow::Lua)),
        "/join",
    ),
    row(
        "envoy_join_module",
        "GET /join, module flow: the Rust dynamic module computes the owner from the cached /placement and sends the join to its address (strict override, owners cluster); REPLICATION=async (the default)",
        Target::Envoy,
        Setup::shipped(Some(Flow::Module)),
        "/join",
    ),
    keyed(
        "envoy_join_module_header",
        "GET /api/join with the id in x-user-id: envoy.yaml's header-keyed example route, module flow (same stack as envoy_join_module)",
        Setup::shipped(Some(Flow::Module)),
        "/api/join",
        Carry::Header("x-user-id"),
    ),
    keyed(
        "envoy_app_rooms",
        "GET /rooms/{id}/messages, app mode: the shipped rooms route (module flow, keyed by the path) to the owner, which forwards it to the example room service beside it; the service reads the room's state from the instance's state API",
        Setup {
            app: Some("poc-rooms"),
            ..Setup::shipped(Some(Flow::Module))
        },
        "/rooms/{key}/messages",
        Carry::Path,
    ),
    row(
        "envoy_join_module_sync",
        "envoy_join_module with REPLICATION=sync: each join answers once its backup has the record",
        Target::Envoy,
        Setup {
            replication: Some("sync"),
            ..Setup::shipped(Some(Flow::Module))
        },
        "/join",
    ),
    row(
        "envoy_join_module_off",
        "envoy_join_module with REPLICATION=off: no replicas (a crash loses the owner's registrations)",
        Target::Envoy,
        Setup {
            replication: Some("off"),
            ..Setup::shipped(Some(Flow::Module))
        },
        "/join",
    ),
    row(
        "envoy_native_hash",
        "bench-only Envoy: MAGLEV on client_id, no routing filter, guard or DFP (the peer)",
        Target::Envoy,
        Setup::file("bench/envoy/native-hash.yaml"),
        "/where",
    ),
    keyed(
        "envoy_native_hash_header",
        "bench-only Envoy: MAGLEV on the x-user-id header (the header arm's peer)",
        Setup::file("bench/envoy/native-hash-header.yaml"),
        "/where",
        Carry::Header("x-user-id"),
    ),
    keyed(
        "envoy_join_module_cookie",
        "GET /cookie/join with the id in the user cookie, module flow (bench/envoy/keys.yaml)",
        Setup::keys(),
        "/cookie/join",
        Carry::Cookie("user"),
    ),
    keyed(
        "envoy_join_module_path",
        "GET /rooms/{id}/join, keyed by the path segment, module flow (bench/envoy/keys.yaml)",
        Setup::keys(),
        "/rooms/{key}/join",
        Carry::Path,
    ),
    keyed(
        "envoy_join_module_jwt",
        "GET /me/join with an ES256 token whose sub is the id: jwt_authn verifies it and copies sub into x-jwt-sub, the route's key (bench/envoy/keys.yaml)",
        Setup::keys(),
        "/me/join",
        Carry::Jwt,
    ),
    keyed(
        "envoy_native_hash_cookie",
        "bench-only Envoy: MAGLEV on the user cookie (the cookie arm's peer)",
        Setup::file("bench/envoy/native-hash-cookie.yaml"),
        "/where",
        Carry::Cookie("user"),
    ),
    keyed(
        "envoy_native_hash_path",
        "bench-only Envoy: MAGLEV on :path (the path arm's peer; the path holds the id)",
        Setup::file("bench/envoy/native-hash-path.yaml"),
        "/where",
        Carry::Query,
    ),
    keyed(
        "envoy_native_hash_jwt",
        "bench-only Envoy: jwt_authn as in keys.yaml, then MAGLEV on the verified x-jwt-sub (the JWT arm's peer)",
        Setup {
            jwks: true,
            ..Setup::file("bench/envoy/native-hash-jwt.yaml")
        },
        "/where",
        Carry::Jwt,
    ),
    row(
        "envoy_native_module",
        "diagnostic: the peer's route and MAGLEV cluster with our module in front (its decision, epoch and strict override): the module filter's own cost",
        Target::Envoy,
        Setup {
            module_placement: true,
            ..Setup::file("bench/envoy/native-module.yaml")
        },
        "/join",
    ),
    Scenario {
        fixed_owner: true,
        ..row(
            "envoy_join_no_filter",
            "diagnostic: the Lua flow's route shape (guard + DFP) with no routing filter (one fixed owner)",
            Target::Envoy,
            Setup::file("bench/envoy/no-filter.yaml"),
            "/join",
        )
    },
    Scenario {
        fixed_owner: true,
        ..row(
            "envoy_lua_floor",
            "diagnostic: route A with a two-line Lua script (the Lua filter's own cost; one fixed owner)",
            Target::Envoy,
            Setup {
                lua: Some("bench/envoy/lua-floor.lua"),
                ..Setup::shipped(Some(Flow::Lua))
            },
            "/join",
        )
    },
];

/// The key-source arms, each with its native peer: (source, module arm, native arm).
pub const KEY_ARMS: [(&str, &str, &str); 5] = [
    ("query:client_id", "envoy_join_module", "envoy_native_hash"),
    (
        "header:x-user-id",
        "envoy_join_module_header",
        "envoy_native_hash_header",
    ),
    (
        "cookie:user",
        "envoy_join_module_cookie",
        "envoy_native_hash_cookie",
    ),
    (
        "path:/rooms/{key}",
        "envoy_join_module_path",
        "envoy_native_hash_path",
    ),
    (
        "JWT sub (header:x-jwt-sub)",
        "envoy_join_module_jwt",
        "envoy_native_hash_jwt",
    ),
];

/// App mode's arm, beside the same route shape served by the owner itself (`/join`, keyed by
/// the path) and the native peer hashing the path: (app arm, direct owner, native peer).
pub const APP_ARM: (&str, &str, &str) = (
    "envoy_app_rooms",
    "envoy_join_module_path",
    "envoy_native_hash_path",
);

/// The scenario of a `/join` flow.
pub fn join_scenario(flow: Flow) -> &'static str {
    match flow {
        Flow::Lua => "envoy_join_lua",
        Flow::Module => "envoy_join_module",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_file_exists() {
        let root = poc_routing_stack::envoy::repo_root();
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len(), "a scenario name is repeated");
        for s in SCENARIOS {
            assert_eq!(s.setup.is_none(), s.target == Target::Hello, "{}", s.name);
            if let Some(setup) = s.setup {
                for file in [Some(setup.envoy), setup.lua].into_iter().flatten() {
                    assert!(root.join(file).is_file(), "{}: {file} is missing", s.name);
                }
            }
        }
        for flow in [Flow::Lua, Flow::Module] {
            assert!(names.contains(&join_scenario(flow)));
        }
    }

    #[test]
    fn every_key_arm_and_its_peer_is_a_scenario() {
        for (source, arm, peer) in KEY_ARMS {
            for name in [arm, peer] {
                assert!(
                    SCENARIOS.iter().any(|s| s.name == name),
                    "{source}: no scenario {name}"
                );
            }
        }
    }
}
