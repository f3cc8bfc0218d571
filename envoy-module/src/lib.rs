//! `poc-routing-envoy-module`: the `/join` routing filter as an Envoy dynamic module.
//!
//! Envoy loads this library (`libpoc_routing_envoy_module.so`) and runs it on route A (the
//! module flow, `envoy.yaml`'s default). Per request it finds the `client_id`, computes its
//! owner with the [`poc_routing_placement`] crate (the same code the servers check joins with),
//! stamps the placement epoch, and sends the request to exactly the owner's address with a
//! strict upstream override on the `owners` cluster, which picks no host by itself. The owner's
//! name goes into the dynamic metadata when a join fails, for the error body and the log.
//!
//! The member list and epoch come from the servers' `GET /placement`, fetched off the request
//! path: a thread ticks every `refresh_interval_ms`, Envoy's main thread sends the request
//! through the health-checked `servers` cluster, and workers read the newest verified
//! snapshot. A request is never held up by that fetch.
//!
//! Layout: [`settings`] (the filter's JSON config), [`snapshot`] (a verified `/placement`
//! answer), [`routing`] (the per-request decision, pure), [`refresh`] (the placement cache, and
//! the ticker that paces its fetches), and `abi/` — the only files with `unsafe`: Envoy's C ABI,
//! hand-written for the hooks and callbacks used here, one file per job.
#![deny(unsafe_code)]

mod abi;
pub mod refresh;
pub mod routing;
pub mod settings;
pub mod snapshot;

pub use poc_routing_wire::{
    EPOCH_HEADER, METADATA_NAMESPACE, METADATA_OWNER_KEY, MODULE_ABI_VERSION as ABI_VERSION,
    MODULE_RESPONSE_DETAILS as RESPONSE_DETAILS,
};

/// The filter name `envoy.yaml` gives in `filter_name`.
pub const FILTER_NAME: &str = "routing";
