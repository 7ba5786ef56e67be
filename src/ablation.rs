//! A benchmark-only build (`--features ablation`) whose request path stops after a given
//! step, so that `bridle-bench ablate` can measure what each step costs in the real Envoy:
//!
//! 0. return at once (the module and SDK themselves);
//! 1. read the clock and the request headers;
//! 2. decide (token, policy, path, merchant);
//! 3. rewrite the credentials and count, but no audit record;
//!
//! and the full filter beyond. The step comes from `BRIDLE_ABLATE` in the VM's environment.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::host::Host;

static STEP: AtomicU8 = AtomicU8::new(u8::MAX);

pub fn configure<H: Host>(host: &H) {
    let step = host
        .env("BRIDLE_ABLATE")
        .and_then(|s| s.parse().ok())
        .unwrap_or(u8::MAX);
    STEP.store(step, Ordering::Relaxed);
}

/// Whether the request path stops at `step`.
pub fn stop_at(step: u8) -> bool {
    STEP.load(Ordering::Relaxed) <= step
}
