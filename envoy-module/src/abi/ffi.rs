//! Envoy's dynamic-module C ABI as Rust sees it: the types, constants and callbacks of
//! `source/extensions/dynamic_modules/abi/abi.h` (ABI v0.2) that this module uses. Declarations
//! only; [`super::envoy`] wraps them.
#![allow(unsafe_code)]

use std::ffi::c_void;

pub(super) type ConfigEnvoyPtr = *mut c_void;
pub(super) type ConfigModulePtr = *const c_void;
pub(super) type FilterEnvoyPtr = *mut c_void;
pub(super) type FilterModulePtr = *const c_void;
pub(super) type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct EnvoyBuffer {
    pub(super) ptr: *const u8,
    pub(super) length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by this module.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct ModuleBuffer {
    pub(super) ptr: *const u8,
    pub(super) length: usize,
}

impl ModuleBuffer {
    pub(super) fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header` and `..._envoy_http_header` (same layout).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct HttpHeader {
    pub(super) key_ptr: *const u8,
    pub(super) key_length: usize,
    pub(super) value_ptr: *const u8,
    pub(super) value_length: usize,
}

impl HttpHeader {
    pub(super) fn of(key: &str, value: &[u8]) -> Self {
        Self {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

// envoy_dynamic_module_type_http_header_type
pub(super) const REQUEST_HEADER: u32 = 0;
pub(super) const RESPONSE_HEADER: u32 = 2;
// envoy_dynamic_module_type_log_level
pub(super) const LOG_INFO: u32 = 2;
pub(super) const LOG_WARN: u32 = 3;
pub(super) const LOG_ERROR: u32 = 4;
// envoy_dynamic_module_type_on_http_filter_*_status: Continue and StopIteration.
pub(super) const CONTINUE: u32 = 0;
pub(super) const STOP_ITERATION: u32 = 1;
// envoy_dynamic_module_type_http_callout_init_result / _result
pub(super) const CALLOUT_INIT_SUCCESS: u32 = 0;
pub(super) const CALLOUT_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_metrics_result
pub(super) const METRICS_SUCCESS: u32 = 0;

extern "C" {
    pub(super) fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub(super) fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    /// The per-route config (what `per_route_config_new` returned) of the route the request
    /// matched, the most specific one, or null.
    pub(super) fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter: FilterEnvoyPtr,
    ) -> *const c_void;
    pub(super) fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(super) fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub(super) fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: SchedulerPtr,
    );
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub(super) fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter: FilterEnvoyPtr,
        host: ModuleBuffer,
        strict: bool,
    ) -> bool;
    pub(super) fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
}
