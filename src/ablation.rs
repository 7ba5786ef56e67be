//! A benchmark-only build (`--features ablation`) whose request path stops after a given
//! step, so that `bridle-bench ablate` can measure what each step costs in the real Envoy:
//!
//! 0. return at once (the module and SDK themselves);
//! 1. read the clock and the request headers;
//! 2. decide (token, policy, path, merchant);
//! 3. rewrite the credentials and count, but no audit record;
//!
//! and the full filter beyond. The step comes from `BRIDLE_ABLATE` in the VM's environment.
//!
//! `BRIDLE_ABLATE=module` goes one step further back: the module is configured as usual
//! (plugin, tick, revocation polls), but each request gets a context that holds nothing and
//! returns `Continue` from every callback, as the no-op filter's does. Beside the no-op
//! module it shows what the module costs by being this module (its size, its memory, its
//! root context); beside step 0, what entering Bridle's own stream context costs.
//!
//! `BRIDLE_ABLATE=hostcalls` measures the floor under any filter that swaps a credential:
//! each request gets a context that makes exactly the hostcalls an allowed uncosted call
//! makes (the clock, the request header map, one header replaced, one counter, `:status` at
//! the end) and does nothing else, no decision, no audit record. Beside the no-op module it
//! shows what Envoy and V8 charge for those hostcalls; beside the full filter, what is left
//! of Bridle's own work.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use proxy_wasm::traits::{Context, HttpContext};

use crate::host::{Host, MapType};

static STEP: AtomicU8 = AtomicU8::new(u8::MAX);
static MODULE_ONLY: AtomicBool = AtomicBool::new(false);
static HOSTCALLS_ONLY: AtomicBool = AtomicBool::new(false);
static HOSTCALLS_COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn configure<H: Host>(host: &H) {
    let setting = host.env("BRIDLE_ABLATE");
    MODULE_ONLY.store(setting.as_deref() == Some("module"), Ordering::Relaxed);
    let hostcalls = setting.as_deref() == Some("hostcalls");
    HOSTCALLS_ONLY.store(hostcalls, Ordering::Relaxed);
    if hostcalls {
        if let Ok(id) = host.define_counter("bridle.ablate.hostcalls") {
            HOSTCALLS_COUNTER.store(id, Ordering::Relaxed);
        }
    }
    let step = setting.and_then(|s| s.parse().ok()).unwrap_or(u8::MAX);
    STEP.store(step, Ordering::Relaxed);
}

/// Whether requests get [`EmptyContext`] instead of a stream.
pub fn module_only() -> bool {
    MODULE_ONLY.load(Ordering::Relaxed)
}

/// Whether requests get a hostcalls-only context instead of a stream.
pub fn hostcalls_only() -> bool {
    HOSTCALLS_ONLY.load(Ordering::Relaxed)
}

/// What the hostcalls-only request does: an allowed uncosted call's hostcalls, nothing else.
pub struct Hostcalls;

impl Hostcalls {
    pub fn on_request_headers<H: Host>(host: &H) {
        let _ = host.now_ms();
        let _ = host.header_map(MapType::RequestHeaders);
        let _ = host.replace_header(
            MapType::RequestHeaders,
            "authorization",
            b"Bearer sk_test_ablation_hostcalls_only",
        );
        host.increment(HOSTCALLS_COUNTER.load(Ordering::Relaxed), 1);
    }

    pub fn on_log<H: Host>(host: &H) {
        let _ = host.header_value(MapType::ResponseHeaders, ":status");
    }
}

/// A request context with no state whose callbacks all return `Continue` (the SDK's
/// defaults): the no-op filter's, inside this module.
pub struct EmptyContext;

impl Context for EmptyContext {}

impl HttpContext for EmptyContext {}

/// Whether the request path stops at `step`.
pub fn stop_at(step: u8) -> bool {
    STEP.load(Ordering::Relaxed) <= step
}
