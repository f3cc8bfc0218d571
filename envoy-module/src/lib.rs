//! `poc-routing-envoy-module`: the `/join` routing filter as an Envoy dynamic module.
//!
//! Envoy loads this library (`libpoc_routing_envoy_module.so`) and runs it on route A in place
//! of the Lua script. Per request it finds the `client_id`, computes its owner with the
//! [`poc_routing_placement`] crate (the same code the servers check joins with), stamps the
//! placement epoch, records the owner as dynamic metadata for the RBAC guard and sets
//! `:authority` so the dynamic forward proxy dials exactly that instance.
//!
//! The member list and epoch come from the servers' `GET /placement`, fetched off the request
//! path: a thread ticks every `refresh_interval_ms`, Envoy's main thread sends the request
//! through the health-checked `servers` cluster, and workers read the newest verified
//! snapshot. A request is never held up by that fetch.
//!
//! Layout: [`settings`] (the filter's JSON config), [`snapshot`] (a verified `/placement`
//! answer), [`routing`] (the per-request decision, pure), [`refresh`] (the ticker and the shared
//! state), and `abi` — the only file with `unsafe`: Envoy's C ABI, hand-written for the hooks
//! and callbacks used here.
#![deny(unsafe_code)]

mod abi;
pub mod refresh;
pub mod routing;
pub mod settings;
pub mod snapshot;

/// The ABI version this module was written against (Envoy 1.40 logs whether it matches its own).
pub const ABI_VERSION: &str = "v0.2.0";

/// The dynamic metadata namespace and key the RBAC guard in `envoy.yaml` requires.
pub const METADATA_NAMESPACE: &str = "poc.routing";
pub const METADATA_OWNER_KEY: &str = "owner";

/// The header that carries the epoch a join was routed by; the owner checks it.
pub const EPOCH_HEADER: &str = "x-poc-epoch";

/// Response code details of every reply this filter makes itself. `envoy.yaml`'s
/// local_reply_config leaves replies with these details as they are (they are JSON already).
pub const RESPONSE_DETAILS: &str = "poc_routing_module";

/// The filter name `envoy.yaml` gives in `filter_name`.
pub const FILTER_NAME: &str = "routing";
