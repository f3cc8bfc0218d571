//! The scenarios of `make bench`, as data: one row each, run in this order by one loop.
//!
//! A row says where the load goes ([`Target`]), what the local stack runs for it ([`Setup`]:
//! an Envoy config file, the flow, a Lua script) and which path is asked. Consecutive rows with
//! the same setup share one stack.

use poc_routing_stack::envoy::Flow;

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
}

impl Setup {
    pub(crate) const fn shipped(flow: Option<Flow>) -> Self {
        Self {
            envoy: "envoy.yaml",
            flow,
            lua: None,
            module_placement: false,
            replication: None,
        }
    }

    pub(crate) const fn file(envoy: &'static str) -> Self {
        Self {
            envoy,
            flow: None,
            lua: None,
            module_placement: false,
            replication: None,
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
        fixed_owner: false,
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
}
