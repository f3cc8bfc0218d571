//! The hooks Envoy calls that do something: the filter config's life (new, destroy, the
//! scheduled `/placement` fetch and its answer) and one stream's (new, request headers, response
//! headers, local reply, destroy), and the per-route config. Every one runs its body inside
//! [`no_unwind`]: a panic answers 500 `routing_error` (on a request) or is logged, and never
//! unwinds into Envoy's C++ frames (`rust-version` 1.82 would abort the process there instead).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::time::Instant;

use super::envoy::*;
use super::ffi::*;
use crate::refresh::{no_unwind, FetchOutcome, PlacementCache, Ticker};
use crate::routing::LocalReply;
use crate::settings::{RouteSettings, Settings};
use poc_routing_placement::{key_header_value, KeySource, KEY_HEADER};

/// The key source of a route whose per-route config names none: the `client_id` parameter.
static DEFAULT_SOURCE: std::sync::LazyLock<KeySource> =
    std::sync::LazyLock::new(KeySource::default);
use crate::snapshot::InFlight;
use crate::{EPOCH_HEADER, FILTER_NAME, METADATA_OWNER_KEY};

/// What `..._config_new` returns a pointer to.
struct Config {
    placement: std::sync::Arc<PlacementCache>,
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

/// What one stream keeps: the config it was made from, and, once routed, its join counted in
/// flight to the owner (released when Envoy destroys the stream).
struct StreamState {
    config: ConfigModulePtr,
    in_flight: std::cell::Cell<Option<InFlight>>,
}

/// The stream's state, or `None` if `filter_new` could not make one (it answered null).
///
/// # Safety
/// `ptr` must be a pointer `..._filter_new` returned and Envoy has not yet destroyed, as
/// Envoy guarantees for every per-stream hook that passes it.
unsafe fn stream_state<'a>(ptr: FilterModulePtr) -> Option<&'a StreamState> {
    // SAFETY: per this function's contract: null, or our live Box.
    unsafe { (ptr as *const StreamState).as_ref() }
}

/// Routes one join: sends the request to exactly its owner's address and stamps the epoch, or
/// answers it here. The owner's name is recorded (as dynamic metadata, for `envoy.yaml`'s error
/// bodies and the access log) only if the join fails: [`record_owner`].
fn on_request(config: &Config, state: &StreamState, stream: &mut Stream) -> u32 {
    let session = stream
        .header(REQUEST_HEADER, "upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    // SAFETY: a per-route config under this filter's name is made by this module's
    // per_route_config_new, a RouteSettings: each route's config names this module (Envoy's
    // configuration is the operator's, and `poc-stack`'s route_key_source refuses a route
    // whose config names another module).
    let route_settings = unsafe { stream.route_config::<RouteSettings>() };
    let source = route_settings.map_or(&*DEFAULT_SOURCE, |r| &r.key);
    let values = source
        .header_name()
        .map(|name| stream.request_header_values(name))
        .unwrap_or_default();
    let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let path = stream.header(REQUEST_HEADER, ":path").unwrap_or_default();
    let key = source.extract(path, &values);
    let key_value = key.as_ref().map(key_header_value).unwrap_or_default();
    let decided = config
        .placement
        .decide(key, Instant::now(), session)
        .and_then(|route| {
            if !stream.set_upstream_override(route.address()) {
                return Err(LocalReply::owner_unavailable(route.in_flight.hostport()));
            }
            // The owner checks the key the join was routed by, from this header (a client's
            // own value is overwritten), and the epoch it was routed under.
            if !stream.set_request_header(EPOCH_HEADER, route.epoch())
                || !stream.set_request_header(KEY_HEADER, &key_value)
            {
                return Err(LocalReply::routing_error());
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
            .record(config_envoy, &outcome, config.placement.members())
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
    // A null answer makes Envoy refuse the module, which is what a panic here should do.
    no_unwind(|| {
        assert_eq!(&VERSION[..VERSION.len() - 1], crate::ABI_VERSION.as_bytes());
        VERSION.as_ptr().cast()
    })
    .unwrap_or(std::ptr::null())
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
    let placement = std::sync::Arc::new(PlacementCache::new(settings.clone()));
    let (ticking, pacing) = (
        std::sync::Arc::clone(&scheduler),
        std::sync::Arc::clone(&placement),
    );
    let ticker = Ticker::start(PlacementCache::STARTING, move || {
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
        placement,
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
    let made = no_unwind(|| {
        // SAFETY: both buffers are Envoy's, valid for this hook.
        let (name, raw) = unsafe { (bytes(name), bytes(config)) };
        // SAFETY: config_envoy is the filter config Envoy is creating, live for this hook.
        unsafe { new_config(config_envoy, name, raw) }
    });
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
    let _ = no_unwind(|| {
        // SAFETY: `config` is the Box leaked in config_new, destroyed exactly once, here.
        drop(unsafe { Box::from_raw(config as *mut Config) });
    });
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config_module: ConfigModulePtr,
    _event_id: u64,
) {
    let _ = no_unwind(|| {
        // SAFETY: Envoy passes our live config.
        let config = unsafe { config(config_module) };
        if !config.placement.begin_fetch() {
            return;
        }
        let settings = config.placement.settings();
        let authorization = match settings.authorization() {
            Ok(a) => a,
            Err(why) => {
                let why = format!("GET /placement needs the operator's token: {why}");
                // SAFETY: config_envoy is live: we are inside its scheduled hook.
                unsafe { report(config_envoy, config, config.placement.fetch_failed(why)) };
                return;
            }
        };
        let mut headers = [
            HttpHeader::of(":method", b"GET"),
            HttpHeader::of(":path", b"/placement"),
            HttpHeader::of("host", settings.cluster.as_bytes()),
            HttpHeader::of("accept", b"application/json"),
            HttpHeader::of("authorization", authorization.as_bytes()),
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
            unsafe { report(config_envoy, config, config.placement.fetch_failed(why)) };
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
    let _ = no_unwind(|| {
        // SAFETY: Envoy passes our live config.
        let config = unsafe { config(config_module) };
        // SAFETY: headers/body_chunks are arrays of the given sizes, valid for this hook (or
        // null with size 0 when the callout failed).
        let (status, body) =
            unsafe { callout_answer(headers, headers_size, body_chunks, body_chunks_size) };
        let outcome = if result == CALLOUT_SUCCESS {
            config.placement.fetched(status, &body, Instant::now())
        } else {
            config.placement.fetch_failed(format!(
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
    // A null filter is refused by every hook below (request_headers answers 500).
    no_unwind(|| {
        let state = Box::new(StreamState {
            config,
            in_flight: std::cell::Cell::new(None),
        });
        Box::into_raw(state).cast_const().cast()
    })
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    let mut stream = Stream(filter_envoy);
    let routed = no_unwind(|| {
        // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
        let state = unsafe { stream_state(filter_module) }?;
        // SAFETY: the stream's config outlives every stream made from it (config_destroy
        // comes after every filter_destroy).
        let config = unsafe { config(state.config) };
        Some(on_request(config, state, &mut stream))
    })
    .flatten();
    match routed {
        Some(status) => status,
        None => {
            log(
                LOG_ERROR,
                "routing failed (panic); answered 500 routing_error",
            );
            let _ = no_unwind(|| stream.refuse(&LocalReply::routing_error()));
            STOP_ITERATION
        }
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: FilterModulePtr) {
    let _ = no_unwind(|| {
        if !filter_module.is_null() {
            // SAFETY: the Box leaked in filter_new, destroyed exactly once, here; dropping it
            // releases the join's place in its owner's in-flight count.
            drop(unsafe { Box::from_raw(filter_module as *mut StreamState) });
        }
    });
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _end: bool,
) -> u32 {
    let mut stream = Stream(filter_envoy);
    let _ = no_unwind(|| {
        // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
        let Some(state) = (unsafe { stream_state(filter_module) }) else {
            return;
        };
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
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    let stream = Stream(filter_envoy);
    let _ = no_unwind(|| {
        // SAFETY: filter_module is what filter_new returned, live until filter_destroy.
        if let Some(state) = unsafe { stream_state(filter_module) } {
            record_owner(state, &stream);
        }
    });
    CONTINUE // envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    no_unwind(|| {
        // SAFETY: both buffers are Envoy's, valid for this hook.
        let (name, config) = unsafe { (bytes(name), bytes(config)) };
        let parsed = if name == FILTER_NAME.as_bytes() {
            RouteSettings::parse(config)
        } else {
            Err(format!(
                "filter_name must be {FILTER_NAME:?} (got {:?})",
                String::from_utf8_lossy(name)
            ))
        };
        match parsed {
            Ok(settings) => Box::into_raw(Box::new(settings)).cast_const().cast(),
            Err(why) => {
                log(LOG_ERROR, &format!("per-route config refused: {why}"));
                std::ptr::null()
            }
        }
    })
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    config: *const c_void,
) {
    let _ = no_unwind(|| {
        if !config.is_null() {
            // SAFETY: the Box leaked in per_route_config_new, destroyed exactly once, here.
            drop(unsafe { Box::from_raw(config as *mut RouteSettings) });
        }
    });
}

#[cfg(test)]
mod tests {
    /// Every exported hook with a body runs it inside `no_unwind`: a new hook that forgets it
    /// fails here, before a panic could unwind into Envoy.
    #[test]
    fn every_hook_body_runs_inside_the_panic_guard() {
        let source = include_str!("hooks.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap()];
        let hooks: Vec<&str> = source.split("#[no_mangle]").skip(1).collect();
        assert!(hooks.len() >= 11, "found {} hooks", hooks.len());
        for hook in hooks {
            let name = hook
                .split("fn ")
                .nth(1)
                .and_then(|s| s.split('(').next())
                .unwrap();
            let body = &hook[hook.find('{').unwrap()..];
            let guarded = body.find("no_unwind(").unwrap();
            let before = &body[..guarded];
            assert!(
                ["unsafe {", ".unwrap(", ".expect(", "bytes("]
                    .iter()
                    .all(|w| !before.contains(w)),
                "{name}: work before the panic guard:\n{before}"
            );
        }
    }
}
