//! Safe wrappers over the callbacks of [`super::ffi`]: logging, the config scheduler, the
//! statistics, and one HTTP stream's headers, metadata, override and local reply. Each `unsafe`
//! block says why it is sound; nothing outside `abi/` calls Envoy.
#![allow(unsafe_code)]

use super::ffi::*;
use crate::refresh::FetchOutcome;
use crate::routing::LocalReply;
use crate::{METADATA_NAMESPACE, RESPONSE_DETAILS};

pub(super) fn log(level: u32, message: &str) {
    let message = format!("poc-routing: {message}");
    // SAFETY: the buffer points into `message`, which outlives the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// The scheduler Envoy made for one filter config. Committing posts an event to Envoy's main
/// thread, which is what the header documents it for: "dispatch ... to the main thread from any
/// thread".
pub(super) struct Scheduler(pub(super) SchedulerPtr);

// SAFETY: Envoy's config scheduler exists to be committed from threads the module manages; it
// only posts to the main thread's dispatcher.
unsafe impl Send for Scheduler {}
// SAFETY: as for Send; `commit` takes the pointer by value and Envoy synchronises internally.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub(super) fn commit(&self) {
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
pub(super) struct Stats {
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
    pub(super) unsafe fn define(config: ConfigEnvoyPtr) -> Result<Self, String> {
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
    pub(super) unsafe fn record(
        &self,
        config: ConfigEnvoyPtr,
        outcome: &FetchOutcome,
        members: usize,
    ) {
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

/// # Safety
/// `buffer` must be valid for the duration of the hook it was passed to.
pub(super) unsafe fn bytes<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return &[];
    }
    // SAFETY: Envoy passes ptr/length of a live buffer, valid until the hook returns.
    unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }
}

/// One HTTP stream, as the callbacks reach it.
pub(super) struct Stream(pub(super) FilterEnvoyPtr);

impl Stream {
    /// The value of a header of `header_type`, borrowed from Envoy: the `&mut self` borrow
    /// keeps every setter away while it is held, since Envoy's buffer is only valid until one.
    pub(super) fn header(&mut self, header_type: u32, key: &str) -> Option<&[u8]> {
        self.header_at(header_type, key, 0, None)
    }

    /// Every value of request header `key`, in order (copied: Envoy's buffers last only until
    /// the next setter).
    pub(super) fn request_header_values(&mut self, key: &str) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        let mut count = 1usize;
        while values.len() < count {
            let index = values.len();
            match self.header_at(REQUEST_HEADER, key, index, Some(&mut count)) {
                Some(value) => values.push(value.to_vec()),
                None => break,
            }
        }
        values
    }

    /// Value `index` of a header, borrowed from Envoy as [`Stream::header`] explains; `count`,
    /// if given, receives how many values the header has.
    fn header_at(
        &mut self,
        header_type: u32,
        key: &str,
        index: usize,
        count: Option<&mut usize>,
    ) -> Option<&[u8]> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        let count = count.map_or(std::ptr::null_mut(), std::ptr::from_mut);
        // SAFETY: self.0 is the live filter of the current hook; `out` is a valid place to
        // write, and the size pointer is null or a valid place to write.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                header_type,
                ModuleBuffer::of(key.as_bytes()),
                &mut out,
                index,
                count,
            )
        };
        // SAFETY: `out` is Envoy's buffer for this hook; the returned borrow of `self` ends
        // before any setter (all take `&self` of the same Stream) can be called.
        found.then(|| unsafe { bytes(out) })
    }

    /// The per-route config of the route this request matched: what `per_route_config_new`
    /// made for it, or `None` on a route without one.
    ///
    /// # Safety
    /// Every per-route config this module makes must be a `T` (hooks.rs makes only
    /// `RouteSettings`), and it must outlive the stream, as Envoy's route does.
    pub(super) unsafe fn route_config<'a, T>(&self) -> Option<&'a T> {
        // SAFETY: live filter; the pointer is null or one of our Boxes of T (this function's
        // contract), kept alive by the route the stream holds.
        unsafe {
            (envoy_dynamic_module_callback_get_most_specific_route_config(self.0) as *const T)
                .as_ref()
        }
    }

    pub(super) fn set_request_header(&self, key: &str, value: &str) -> bool {
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
    pub(super) fn set_upstream_override(&self, address: &str) -> bool {
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

    pub(super) fn set_metadata(&self, key: &str, value: &str) {
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

    pub(super) fn refuse(&self, refusal: &LocalReply) {
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
