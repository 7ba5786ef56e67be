//! The policies the ledger enforces, by name, with the figures every backend derives from
//! them: each policy's tracked spans, the longest window and the longest token life.

use std::collections::HashMap;

use bridle_core::policy::CompiledPolicy;

use crate::caps::{tracked_spans, window_span, Span};

/// How long a finished reservation is remembered for idempotent retries (Stripe keeps
/// idempotency keys for 24 hours).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug)]
pub struct PolicyEntry {
    pub policy: CompiledPolicy,
    /// The spans kept per token of this policy, and for the policy itself.
    pub token_spans: Vec<Span>,
    pub policy_spans: Vec<Span>,
}

#[derive(Debug, Default)]
pub struct Policies(HashMap<String, PolicyEntry>);

impl Policies {
    pub fn new(policies: &[CompiledPolicy]) -> Policies {
        Policies(
            policies
                .iter()
                .map(|p| {
                    let (token_spans, policy_spans) = tracked_spans(&p.policy.caps);
                    (
                        p.policy.name.clone(),
                        PolicyEntry {
                            policy: p.clone(),
                            token_spans,
                            policy_spans,
                        },
                    )
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&PolicyEntry> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PolicyEntry> {
        self.0.values()
    }

    /// The policy's rolling window in milliseconds (0 for an unknown policy).
    pub fn window_ms(&self, name: &str) -> u64 {
        match self.get(name).map(|p| window_span(&p.policy.policy.caps)) {
            Some(Span::Rolling { ms }) => ms,
            _ => 0,
        }
    }

    /// The longest a token of any policy may live, in seconds.
    pub fn longest_ttl_s(&self) -> u64 {
        self.iter()
            .map(|p| p.policy.policy.max_ttl.as_secs())
            .max()
            .unwrap_or(0)
    }

    /// How long anything may still be needed: the longest window, the retention of
    /// idempotency keys, and the reservation TTL.
    pub fn keep_ms(&self, reservation_ttl_ms: u64) -> u64 {
        self.iter()
            .map(|p| self.window_ms(&p.policy.policy.name))
            .max()
            .unwrap_or(0)
            .max(IDEMPOTENCY_RETENTION_MS)
            .max(reservation_ttl_ms)
    }
}
