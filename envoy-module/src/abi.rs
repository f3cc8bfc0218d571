//! Envoy's dynamic-module C ABI: the hooks this module exports and the callbacks it calls.
//!
//! The only file of the crate with `unsafe`. Declarations follow Envoy's
//! `source/extensions/dynamic_modules/abi/abi.h` (ABI v0.1/v0.2; v0.2 keeps every v0.1
//! signature used here). Envoy resolves every `envoy_dynamic_module_on_http_filter_*` hook when
//! it loads a filter module, so all of them are exported, even those this filter never needs.
//!
//! Pointer ownership, in short:
//! - the filter config pointer we return is a leaked `Box<Config>`, freed in
//!   `..._config_destroy`, which Envoy calls after every filter made from it is gone;
//! - per stream we return a leaked `Box<StreamState>` (the config, and the join counted in
//!   flight to its owner), freed in `..._filter_destroy`, which Envoy calls once per stream;
//! - buffers Envoy hands us are valid until the hook returns, or until we call a setter.
//!
//! Every hook body runs inside [`no_unwind`]: a panic answers 500 `routing_error` (on a request)
//! or is logged, and never unwinds into Envoy.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::time::Instant;

use crate::refresh::{no_unwind, FetchOutcome, Router, Ticker};
use crate::routing::Refusal;
use crate::settings::Settings;
use crate::snapshot::InFlight;
use crate::{EPOCH_HEADER, FILTER_NAME, METADATA_NAMESPACE, METADATA_OWNER_KEY, RESPONSE_DETAILS};

type ConfigEnvoyPtr = *mut c_void;
type ConfigModulePtr = *const c_void;
type FilterEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by this module.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header` and `..._envoy_http_header` (same layout).
#[repr(C)]
#[derive(Clone, Copy)]
struct HttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl HttpHeader {
    fn of(key: &str, value: &[u8]) -> Self {
        Self {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

// envoy_dynamic_module_type_http_header_type
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
// envoy_dynamic_module_type_log_level
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
// envoy_dynamic_module_type_on_http_filter_*_status: Continue and StopIteration.
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;
// envoy_dynamic_module_type_http_callout_init_result / _result
const CALLOUT_INIT_SUCCESS: u32 = 0;
const CALLOUT_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_metrics_result
const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter: FilterEnvoyPtr,
        host: ModuleBuffer,
        strict: bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
}

fn log(level: u32, message: &str) {
    let message = format!("poc-routing: {message}");
    // SAFETY: the buffer points into `message`, which outlives the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// The scheduler Envoy made for one filter config. Committing posts an event to Envoy's main
/// thread, which is what the header documents it for: "dispatch ... to the main thread from any
/// thread".
struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's config scheduler exists to be committed from threads the module manages; it
// only posts to the main thread's dispatcher.
unsafe impl Send for Scheduler {}
// SAFETY: as for Send; `commit` takes the pointer by value and Envoy synchronises internally.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    fn commit(&self) {
        // SAFETY: self.0 came from scheduler_new and is deleted only in Drop, after the ticker
        // thread (the only other caller) has been joined.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, 0) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted once, here, on the main thread (config destroy).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// The filter's statistics in Envoy's admin `/stats` (under the filter's metrics namespace):
/// what an operator watches, and what the test stack waits on before its first join.
struct Stats {
    /// Members in the placement the filter routes by (0 until the first fetch).
    members: usize,
    /// Epochs adopted, the first included.
    epoch_changes: usize,
    /// Fetches of `/placement` that failed or were refused.
    fetch_failures: usize,
}

impl Stats {
    /// # Safety
    /// `config` must be the filter config Envoy is creating (inside `..._config_new`).
    unsafe fn define(config: ConfigEnvoyPtr) -> Result<Self, String> {
        let define = |name: &str, gauge: bool| {
            let mut id = 0usize;
            // SAFETY: config is live (caller's contract); no labels; `id` is a valid out-pointer.
            let result = unsafe {
                if gauge {
                    envoy_dynamic_module_callback_http_filter_config_define_gauge(
                        config,
                        ModuleBuffer::of(name.as_bytes()),
                        std::ptr::null_mut(),
                        0,
                        &mut id,
                    )
                } else {
                    envoy_dynamic_module_callback_http_filter_config_define_counter(
                        config,
                        ModuleBuffer::of(name.as_bytes()),
                        std::ptr::null_mut(),
                        0,
                        &mut id,
                    )
                }
            };
            if result == METRICS_SUCCESS {
                Ok(id)
            } else {
                Err(format!(
                    "cannot define the statistic {name} (metrics result {result})"
                ))
            }
        };
        Ok(Self {
            members: define("placement_members", true)?,
            epoch_changes: define("placement_epoch_changes", false)?,
            fetch_failures: define("placement_fetch_failures", false)?,
        })
    }

    /// # Safety
    /// `config` must be the live filter config these statistics were defined on.
    unsafe fn record(&self, config: ConfigEnvoyPtr, outcome: &FetchOutcome, members: usize) {
        // SAFETY: config is live (caller's contract); ids come from `define` on it; no labels.
        unsafe {
            match outcome {
                FetchOutcome::Changed(_) => {
                    envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        config,
                        self.epoch_changes,
                        std::ptr::null_mut(),
                        0,
                        1,
                    );
                    envoy_dynamic_module_callback_http_filter_config_set_gauge(
                        config,
                        self.members,
                        std::ptr::null_mut(),
                        0,
                        members as u64,
                    );
                }
                FetchOutcome::Failed(_) | FetchOutcome::StillFailing => {
                    envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        config,
                        self.fetch_failures,
                        std::ptr::null_mut(),
                        0,
                        1,
                    );
                }
                FetchOutcome::Unchanged => {}
            }
        }
    }
}

/// What `..._config_new` returns a pointer to.
struct Config {
    router: std::sync::Arc<Router>,
    stats: Stats,
    /// Declared before `scheduler`: fields drop in order, so the thread is joined before the
    /// scheduler it commits to is deleted.
    _ticker: Ticker,
    _scheduler: std::sync::Arc<Scheduler>,
}

/// # Safety
/// `ptr` must be a pointer this module returned from `..._config_new` and Envoy has not yet
/// destroyed, as Envoy guarantees for every hook that passes it.
unsafe fn config<'a>(ptr: *const c_void) -> &'a Config {
    // SAFETY: per this function's contract.
    unsafe { &*(ptr as *const Config) }
}

/// # Safety
/// `buffer` must be valid for the duration of the hook it was passed to.
unsafe fn bytes<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return &[];
    }
    // SAFETY: Envoy passes ptr/length of a live buffer, valid until the hook returns.
    unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }
}

/// One HTTP stream, as the callbacks reach it.
struct Stream(FilterEnvoyPtr);

impl Stream {
    /// The value of a header of `header_type`, borrowed from Envoy: the `&mut self` borrow
    /// keeps every setter away while it is held, since Envoy's buffer is only valid until one.
    fn header(&mut self, header_type: u32, key: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: self.0 is the live filter of the current hook; `out` is a valid place to
        // write, and the size pointer may be null.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                header_type,
                ModuleBuffer::of(key.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: `out` is Envoy's buffer for this hook; the returned borrow of `self` ends
        // before any setter (all take `&self` of the same Stream) can be called.
        found.then(|| unsafe { bytes(out) })
    }

    fn set_request_header(&self, key: &str, value: &str) -> bool {
        // SAFETY: live filter; both buffers point into borrowed strings that outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Sends the request to exactly `address` (`ip:port`) of the route's cluster: with
    /// `strict`, a host that is not in the cluster (or not healthy) fails the request (503 UH)
    /// instead of letting the cluster's load balancer choose. False if Envoy refused the
    /// address.
    fn set_upstream_override(&self, address: &str) -> bool {
        // SAFETY: live filter; the buffer points into `address`, which outlives the call, and
        // Envoy copies it.
        unsafe {
            envoy_dynamic_module_callback_http_set_upstream_override_host(
                self.0,
                ModuleBuffer::of(address.as_bytes()),
                true,
            )
        }
    }

    fn set_metadata(&self, key: &str, value: &str) {
        // SAFETY: live filter; the buffers outlive the call and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.0,
                ModuleBuffer::of(METADATA_NAMESPACE.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    fn refuse(&self, refusal: &Refusal) {
        let body = refusal.body();
        let retry_after = refusal.retry_after.map(|s| s.to_string());
        let mut headers = vec![HttpHeader::of("content-type", b"application/json")];
        if let Some(seconds) = &retry_after {
            headers.push(HttpHeader::of("retry-after", seconds.as_bytes()));
        }
        // SAFETY: live filter; the header array, its strings and the body outlive the call,
        // and Envoy copies them into the local reply.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(refusal.status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(RESPONSE_DETAILS.as_bytes()),
            )
        }
    }
}

/// What one stream keeps: the config it was made from, and, once routed, its join counted in
/// flight to the owner (released when Envoy destroys the stream).
struct StreamState {
    config: ConfigModulePtr,
    in_flight: std::cell::Cell<Option<InFlight>>,
}

/// # Safety
/// `ptr` must be a pointer `..._filter_new` returned and Envoy has not yet destroyed, as
/// Envoy guarantees for every per-stream hook that passes it.
unsafe fn stream_state<'a>(ptr: FilterModulePtr) -> &'a StreamState {
    // SAFETY: per this function's contract.
    unsafe { &*(ptr as *const StreamState) }
}

/// Routes one join: sends the request to exactly its owner's address and stamps the epoch, or
/// answers it here. The owner's name is recorded (as dynamic metadata, for `envoy.yaml`'s error
/// bodies and the access log) only if the join fails: [`record_owner`].
fn on_request(config: &Config, state: &StreamState, stream: &mut Stream) -> u32 {
    let path = stream.header(REQUEST_HEADER, ":path").unwrap_or_default();
    let decided = config
        .router
        .decide(path, Instant::now())
        .and_then(|route| {
            if !stream.set_upstream_override(route.address()) {
                return Err(Refusal::owner_unavailable(route.in_flight.hostport()));
            }
            if !stream.set_request_header(EPOCH_HEADER, route.epoch()) {
                return Err(Refusal::routing_error());
            }
            state.in_flight.set(Some(route.in_flight));
            Ok(())
        });
    match decided {
        Ok(()) => CONTINUE,
        Err(refusal) => {
            stream.refuse(&refusal);
            STOP_ITERATION
        }
    }
}

/// Records the name of the owner a join was sent to, once it failed: a local reply (the owner
/// unreachable, timed out, not in the `owners` cluster) or an error answer from upstream (421).
/// Only failures are logged and only their bodies name the owner, so a successful join pays
/// for no metadata write.
fn record_owner(state: &StreamState, stream: &Stream) {
    let routed = state.in_flight.take();
    if let Some(in_flight) = &routed {
        stream.set_metadata(METADATA_OWNER_KEY, in_flight.hostport());
    }
    state.in_flight.set(routed);
}

/// Logs a fetch's outcome (an outage once per reason) and records it in the statistics.
///
/// # Safety
/// `config_envoy` must be the live Envoy side of `config` (inside one of its hooks).
unsafe fn report(config_envoy: ConfigEnvoyPtr, config: &Config, outcome: FetchOutcome) {
    // SAFETY: per this function's contract.
    unsafe {
        config
            .stats
            .record(config_envoy, &outcome, config.router.members())
    };
    match outcome {
        FetchOutcome::Changed(message) => log(LOG_INFO, &message),
        FetchOutcome::Failed(message) => log(LOG_WARN, &message),
        FetchOutcome::Unchanged | FetchOutcome::StillFailing => {}
    }
}

// ------------------------------------------------------------------------------------------
// Hooks: program and filter config.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    static VERSION: &[u8] = b"v0.2.0\0";
    debug_assert_eq!(&VERSION[..VERSION.len() - 1], crate::ABI_VERSION.as_bytes());
    VERSION.as_ptr().cast()
}

/// Builds the filter config: checks the filter name and settings, defines the statistics and
/// starts the placement refresh (a scheduler on Envoy's main thread, paced by a ticker thread).
///
/// # Safety
/// `config_envoy` must be the filter config Envoy is creating, live for this call.
unsafe fn new_config(
    config_envoy: ConfigEnvoyPtr,
    name: &[u8],
    raw: &[u8],
) -> Result<Config, String> {
    if name != FILTER_NAME.as_bytes() {
        return Err(format!(
            "unknown filter_name {:?}; this module has one filter, {FILTER_NAME:?}",
            String::from_utf8_lossy(name)
        ));
    }
    let settings = Settings::parse(raw).map_err(|e| e.to_string())?;
    // SAFETY: config_envoy is the filter config Envoy is creating, as `define` requires.
    let stats = unsafe { Stats::define(config_envoy) }?;
    // SAFETY: config_envoy is the live filter config Envoy is creating; the scheduler is
    // deleted when Config drops.
    let scheduler = std::sync::Arc::new(Scheduler(unsafe {
        envoy_dynamic_module_callback_http_filter_config_scheduler_new(config_envoy)
    }));
    let router = std::sync::Arc::new(Router::new(settings.clone()));
    let (ticking, pacing) = (
        std::sync::Arc::clone(&scheduler),
        std::sync::Arc::clone(&router),
    );
    let ticker = Ticker::start(Router::STARTING, move || {
        ticking.commit();
        pacing.next_fetch_in()
    })
    .map_err(|e| format!("cannot start the placement refresh thread: {e}"))?;
    log(
        LOG_INFO,
        &format!(
            "module loaded (ABI {}); GET /placement through cluster {:?} every {} ms",
            crate::ABI_VERSION,
            settings.cluster,
            settings.refresh_interval.as_millis()
        ),
    );
    Ok(Config {
        router,
        stats,
        _ticker: ticker,
        _scheduler: scheduler,
    })
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    // SAFETY: both buffers are Envoy's, valid for this hook.
    let (name, raw) = unsafe { (bytes(name), bytes(config)) };
    // SAFETY: config_envoy is the filter config Envoy is creating, live for this hook.
    let made = no_unwind(|| unsafe { new_config(config_envoy, name, raw) });
    match made {
        Some(Ok(config)) => Box::into_raw(Box::new(config)) as ConfigModulePtr,
        Some(Err(why)) => {
            log(LOG_ERROR, &format!("filter config refused: {why}"));
            std::ptr::null()
        }
        None => {
            log(
                LOG_ERROR,
                "filter config refused: the module panicked while reading it",
            );
            std::ptr::null()
        }
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    // SAFETY: `config` is the Box leaked in config_new, destroyed exactly once, here.
    let boxed = unsafe { Box::from_raw(config as *mut Config) };
    let _ = no_unwind(move || drop(boxed));
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config_module: ConfigModulePtr,
    _event_id: u64,
) {
    // SAFETY: Envoy passes our live config.
    let config = unsafe { config(config_module) };
    let _ = no_unwind(|| {
        if !config.router.begin_fetch() {
            return;
        }
        let settings = config.router.settings();
        let mut headers = [
            HttpHeader::of(":method", b"GET"),
            HttpHeader::of(":path", b"/placement"),
            HttpHeader::of("host", settings.cluster.as_bytes()),
            HttpHeader::of("accept", b"application/json"),
        ];
        let mut callout_id = 0u64;
        // SAFETY: config_envoy is live (main thread, inside its hook); the headers and cluster
        // name outlive the call and Envoy copies them into the request.
        let started = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                config_envoy,
                &mut callout_id,
                ModuleBuffer::of(settings.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(b""),
                settings.fetch_timeout.as_millis() as u64,
            )
        };
        if started != CALLOUT_INIT_SUCCESS {
            let why = match started {
                2 => format!("cluster {:?} does not exist", settings.cluster),
                4 => format!(
                    "cluster {:?} has no healthy instance to ask",
                    settings.cluster
                ),
                other => format!("GET /placement could not be sent (callout init result {other})"),
            };
            // SAFETY: config_envoy is live: we are inside its scheduled hook.
            unsafe { report(config_envoy, config, config.router.fetch_failed(why)) };
        }
    });
}

/// The `:status` and the whole body of a callout's answer.
///
/// # Safety
/// `headers` and `body_chunks` are arrays of the given sizes (or null with size 0), and every
/// buffer in them is valid for the current hook.
unsafe fn callout_answer<'a>(
    headers: *const HttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) -> (Option<&'a [u8]>, Vec<u8>) {
    // SAFETY: as the caller promises.
    let (headers, chunks) = unsafe {
        (
            if headers.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(headers, headers_size)
            },
            if body_chunks.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(body_chunks, body_chunks_size)
            },
        )
    };
    let status = headers.iter().find_map(|h| {
        // SAFETY: key and value are Envoy's buffers, valid for this hook.
        let key = unsafe {
            bytes(EnvoyBuffer {
                ptr: h.key_ptr,
                length: h.key_length,
            })
        };
        // SAFETY: as above.
        (key == b":status").then(|| unsafe {
            bytes(EnvoyBuffer {
                ptr: h.value_ptr,
                length: h.value_length,
            })
        })
    });
    let mut body = Vec::new();
    for chunk in chunks {
        // SAFETY: each chunk is Envoy's buffer, valid for this hook.
        body.extend_from_slice(unsafe { bytes(*chunk) });
    }
    (status, body)
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config_module: ConfigModulePtr,
    _callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: Envoy passes our live config.
    let config = unsafe { config(config_module) };
    // SAFETY: headers/body_chunks are arrays of the given sizes, valid for this hook (or null
    // with size 0 when the callout failed).
    let (status, body) =
        unsafe { callout_answer(headers, headers_size, body_chunks, body_chunks_size) };
    let _ = no_unwind(|| {
        let outcome = if result == CALLOUT_SUCCESS {
            config.router.fetched(status, &body, Instant::now())
        } else {
            config.router.fetch_failed(format!(
                "GET /placement failed (callout result {result}: reset or too large)"
            ))
        };
        // SAFETY: config_envoy is live: we are inside its callout-done hook.
        unsafe { report(config_envoy, config, outcome) };
    });
}

// ------------------------------------------------------------------------------------------
// Hooks: per stream.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    // Cannot panic: an allocation failure aborts the process.
    let state = Box::new(StreamState {
        config,
        in_flight: std::cell::Cell::new(None),
    });
    Box::into_raw(state).cast_const().cast()
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
    let state = unsafe { stream_state(filter_module) };
    // SAFETY: the stream's config outlives every stream made from it (config_destroy comes
    // after every filter_destroy).
    let config = unsafe { config(state.config) };
    let mut stream = Stream(filter_envoy);
    match no_unwind(|| on_request(config, state, &mut stream)) {
        Some(status) => status,
        None => {
            log(
                LOG_ERROR,
                "routing failed (panic); answered 500 routing_error",
            );
            let _ = no_unwind(|| stream.refuse(&Refusal::routing_error()));
            STOP_ITERATION
        }
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: FilterModulePtr) {
    // SAFETY: the Box leaked in filter_new, destroyed exactly once, here; dropping it releases
    // the join's place in its owner's in-flight count.
    let state = unsafe { Box::from_raw(filter_module as *mut StreamState) };
    let _ = no_unwind(move || drop(state));
}

// Hooks Envoy requires but this filter has nothing to do in: pass everything through.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _end: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) -> u32 {
    CONTINUE
}

/// An error answer from the owner (421, say): the owner's name goes into the metadata.
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _end: bool,
) -> u32 {
    // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
    let state = unsafe { stream_state(filter_module) };
    let mut stream = Stream(filter_envoy);
    let _ = no_unwind(|| {
        let failed = stream
            .header(RESPONSE_HEADER, ":status")
            .is_some_and(|status| status >= b"400".as_slice() && status.len() == 3);
        if failed {
            record_owner(state, &stream);
        }
    });
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _end: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) {
}

/// A reply Envoy makes itself (the owner unreachable, timed out, not in `owners`): the owner's
/// name goes into the metadata before `envoy.yaml`'s local_reply_config writes the body.
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
    let state = unsafe { stream_state(filter_module) };
    let stream = Stream(filter_envoy);
    let _ = no_unwind(|| record_owner(state, &stream));
    CONTINUE // envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue
}

/// Per-route config only enables the filter on a route (`envoy.yaml` keeps it disabled
/// elsewhere); it carries no settings, so anything but an empty config is refused.
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    static ENABLED: u8 = 0;
    // SAFETY: both buffers are Envoy's, valid for this hook.
    let (name, config) = unsafe { (bytes(name), bytes(config)) };
    let empty = config.is_empty() || config == b"{}" || config == b"\"\"";
    if name == FILTER_NAME.as_bytes() && empty {
        return std::ptr::from_ref(&ENABLED).cast();
    }
    log(
        LOG_ERROR,
        &format!(
            "per-route config refused: filter_name must be {FILTER_NAME:?} with no filter_config (got {:?}, {:?})",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(config)
        ),
    );
    std::ptr::null()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const c_void) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *const HttpHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream: u64,
    _headers: *const HttpHeader,
    _headers_size: usize,
    _end: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream: u64,
    _trailers: *const HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _stream: u64,
    _headers: *const HttpHeader,
    _headers_size: usize,
    _end: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _stream: u64,
    _trailers: *const HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _stream: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _stream: u64,
    _reason: u32,
) {
}
