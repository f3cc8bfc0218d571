//! Envoy's dynamic-module C ABI: the only files of the crate with `unsafe`, one per job.
//!
//! - [`ffi`]: the C declarations, following Envoy's `abi.h` (ABI v0.2);
//! - [`envoy`]: safe wrappers over the callbacks;
//! - [`hooks`]: the hooks that do something, each inside the panic guard;
//! - [`passthrough`]: the hooks Envoy requires but this filter has nothing to do in.
//!
//! Envoy resolves every `envoy_dynamic_module_on_http_filter_*` hook when it loads a filter
//! module, so all of them are exported. Pointer ownership, in short:
//! - the filter config pointer we return is a leaked `Box<Config>`, freed in
//!   `..._config_destroy`, which Envoy calls after every filter made from it is gone;
//! - per stream we return a leaked `Box<StreamState>` (the config, and the join counted in
//!   flight to its owner), freed in `..._filter_destroy`, which Envoy calls once per stream;
//! - buffers Envoy hands us are valid until the hook returns, or until we call a setter.
#![allow(unsafe_code)]

mod envoy;
mod ffi;
mod hooks;
mod passthrough;
