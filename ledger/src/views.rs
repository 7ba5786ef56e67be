//! What the admin API shows of spend: a token's sums against its caps, a policy's window.
//! Built from the same sums every backend keeps, by the same functions.

use std::collections::HashMap;

use bridle_core::llm::TokenUsage;
use bridle_core::money::Usd;
use bridle_core::policy::{effective_caps, Caps, CompiledPolicy};
use bridle_core::vendor::Vendor;
use serde::Serialize;

use crate::caps::{short_span, usd, utilization, window_span, Span};
use crate::records::TokenRecord;

/// A token's current spend and caps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenView {
    /// The token's claims; its `caps` are its own narrowing.
    #[serde(flatten)]
    pub record: TokenRecord,
    pub status: &'static str,
    /// The caps in force: the policy's, lowered by the token's narrowing.
    pub effective_caps: Caps,
    pub spend: SpendView,
    /// Tokens of the token's LLM calls, by class, over its life (committed calls only).
    pub tokens: TokenUsage,
    /// The spend breaker's state, when the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerView>,
}

/// Where a token stands against its spend breaker (`caps.per_short_window`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerView {
    pub cap: Usd,
    pub window: String,
    /// Committed and reserved spend in the breaker's window now.
    pub spent: Usd,
    /// No more spend fits: costed calls are refused with 429 until spend leaves the window.
    pub tripped: bool,
    /// When the oldest spend in the window leaves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eases_in_secs: Option<u64>,
}

/// The breaker's view: `spent` over its short window, the oldest spend inside made at
/// `oldest_ms`.
fn breaker_view(
    caps: &Caps,
    spent: i64,
    oldest_ms: Option<u64>,
    now_ms: u64,
) -> Option<BreakerView> {
    let cap = caps.per_short_window?;
    let Span::Rolling { ms } = short_span(caps)? else {
        return None;
    };
    Some(BreakerView {
        cap,
        window: bridle_core::duration::format(caps.short_window()),
        spent: usd(spent),
        tripped: spent >= cap.micros(),
        eases_in_secs: oldest_ms
            .map(|at| at.saturating_add(ms).saturating_sub(now_ms).div_ceil(1000)),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpendView {
    /// Committed and reserved spend in the rolling window.
    pub window: Usd,
    pub lifetime: Usd,
    /// Of which still reserved (not yet settled).
    pub reserved: Usd,
    /// Spend over cap, per capped kind, as a fraction (0.42 = 42%).
    pub utilization: HashMap<&'static str, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub vendor: Vendor,
    pub caps: Caps,
    pub window_spend: Usd,
    pub utilization: Option<f64>,
}

pub fn token_status(r: &TokenRecord, now_s: u64) -> &'static str {
    if r.revoked_at.is_some() {
        "revoked"
    } else if now_s >= r.exp {
        "expired"
    } else {
        "active"
    }
}

/// A token's view from its sums: `sum(span)` over each tracked span, what of the window is
/// still open (reserved or held), its LLM tokens, and when the oldest spend still inside the
/// breaker's window was made.
pub fn token_view(
    record: TokenRecord,
    policy_caps: &Caps,
    sum: impl Fn(Span) -> i64,
    open: i64,
    usage: TokenUsage,
    breaker_oldest_ms: Option<u64>,
    now_ms: u64,
) -> TokenView {
    let caps = effective_caps(policy_caps, &record.caps);
    let window = sum(window_span(policy_caps));
    let lifetime = sum(Span::Ever);
    let mut utilization_by_cap = HashMap::new();
    if let Some(u) = utilization(window, caps.per_window) {
        utilization_by_cap.insert("per_window", u);
    }
    if let Some(u) = utilization(lifetime, caps.lifetime) {
        utilization_by_cap.insert("lifetime", u);
    }
    let breaker = short_span(policy_caps)
        .and_then(|span| breaker_view(policy_caps, sum(span), breaker_oldest_ms, now_ms));
    TokenView {
        status: token_status(&record, now_ms / 1000),
        record,
        effective_caps: caps,
        spend: SpendView {
            window: usd(window),
            lifetime: usd(lifetime),
            reserved: usd(open),
            utilization: utilization_by_cap,
        },
        tokens: usage,
        breaker,
    }
}

/// A token the ledger no longer keeps sums for: its record and all-time spend only.
pub fn archived_token_view(record: TokenRecord, lifetime: i64, now_s: u64) -> TokenView {
    TokenView {
        status: token_status(&record, now_s),
        record,
        effective_caps: Caps::default(),
        spend: SpendView {
            lifetime: usd(lifetime),
            ..Default::default()
        },
        tokens: TokenUsage::default(),
        breaker: None,
    }
}

pub fn policy_view(policy: &CompiledPolicy, window_sum: i64) -> PolicyView {
    let caps = policy.policy.caps.clone();
    PolicyView {
        name: policy.policy.name.clone(),
        vendor: policy.policy.vendor,
        utilization: utilization(window_sum, caps.policy_per_window),
        caps,
        window_spend: usd(window_sum),
    }
}

/// Newest first, then by id: the order token lists are shown in.
pub fn sort_tokens(views: &mut [TokenView]) {
    views.sort_by(|a, b| (b.record.iat, &b.record.id).cmp(&(a.record.iat, &a.record.id)));
}
