//! Prometheus metrics at `/metrics`: reservations and denials by reason, reserved and
//! committed dollars, policy utilization, settles, audit records, alerts, reserve latency,
//! and, for the tokens that matter right now, their utilization, window spend and recent
//! refusals (the most utilized or most refused [`MAX_TOKEN_SERIES`], so that per-token
//! series stay bounded however many tokens runs create).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use bridle_core::ledger_api::AuditRecord;

use crate::accounts::{PolicyView, TokenView};

/// At most this many tokens get series of their own per scrape.
pub const MAX_TOKEN_SERIES: usize = 50;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub policy: String,
    pub token: String,
    pub label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenCapLabels {
    pub policy: String,
    pub token: String,
    pub label: String,
    /// per_window or lifetime
    pub cap: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReserveLabels {
    pub policy: String,
    /// granted, replay or denied
    pub decision: String,
    /// `allowed` for grants, else the denial reason
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub policy: String,
    pub cap: String,
    pub threshold: String,
}

pub struct Metrics {
    registry: Registry,
    pub reservations: Family<ReserveLabels, Counter>,
    pub reserved_usd: Family<PolicyLabel, Counter<f64, AtomicU64>>,
    pub settles: Family<OutcomeLabel, Counter>,
    pub audit_records: Counter,
    /// LLM calls whose usage cost more than their reservation, and those settled without it.
    pub over_reservation: Counter,
    pub usage_missing: Counter,
    pub late_reserves: Counter,
    pub alerts: Family<AlertLabels, Counter>,
    pub window_spend_usd: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    pub utilization: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    /// The reserve step: token check, every cap and the reservation, committed.
    pub reserve_seconds: Histogram,
    pub token_utilization: Family<TokenCapLabels, Gauge<f64, AtomicU64>>,
    pub token_window_spend_usd: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    pub token_refusals: Family<TokenLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("bridle_ledger");
        let m = Metrics {
            reservations: Family::default(),
            reserved_usd: Family::default(),
            settles: Family::default(),
            audit_records: Counter::default(),
            over_reservation: Counter::default(),
            usage_missing: Counter::default(),
            late_reserves: Counter::default(),
            alerts: Family::default(),
            window_spend_usd: Family::default(),
            utilization: Family::default(),
            // 0.25 ms to about 4 s.
            reserve_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            token_utilization: Family::default(),
            token_window_spend_usd: Family::default(),
            token_refusals: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "late_reserves",
            "Reservations refused because they were read after the proxy's deadline",
            m.late_reserves.clone(),
        );
        registry.register(
            "reservations",
            "Reserve decisions, by policy, decision and reason",
            m.reservations.clone(),
        );
        registry.register(
            "reserved_usd",
            "Dollars reserved by granted reservations",
            m.reserved_usd.clone(),
        );
        registry.register(
            "settles",
            "Settles received from filters, by outcome (an idempotent repeat counts too)",
            m.settles.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records stored",
            m.audit_records.clone(),
        );
        registry.register(
            "llm_over_reservation",
            "LLM calls whose reported usage cost more than their reservation (committed all the same)",
            m.over_reservation.clone(),
        );
        registry.register(
            "llm_usage_missing",
            "LLM calls the vendor accepted whose usage was never read (committed at the reservation)",
            m.usage_missing.clone(),
        );
        registry.register(
            "alerts",
            "Cap alerts fired, by policy, cap and threshold percent",
            m.alerts.clone(),
        );
        registry.register(
            "policy_window_spend_usd",
            "Committed and reserved dollars in each policy's rolling window",
            m.window_spend_usd.clone(),
        );
        registry.register(
            "policy_utilization_ratio",
            "Each policy's rolling-window spend over its aggregate cap",
            m.utilization.clone(),
        );
        registry.register(
            "reserve_duration_seconds",
            "Time to check every cap and commit a reservation",
            m.reserve_seconds.clone(),
        );
        registry.register(
            "token_utilization_ratio",
            "Active tokens' spend over their cap, per capped kind (the most utilized tokens)",
            m.token_utilization.clone(),
        );
        registry.register(
            "token_window_spend_usd",
            "Active tokens' committed and reserved dollars in their rolling window",
            m.token_window_spend_usd.clone(),
        );
        registry.register(
            "token_refusals_last_minute",
            "Calls the proxy refused per token over the last minute (the most refused tokens)",
            m.token_refusals.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Sets the per-token series from the active tokens, keeping the most utilized.
    pub fn set_tokens(&self, tokens: &[TokenView]) {
        self.token_utilization.clear();
        self.token_window_spend_usd.clear();
        let peak = |t: &TokenView| {
            t.spend
                .utilization
                .values()
                .copied()
                .fold(0.0_f64, f64::max)
        };
        let mut spending: Vec<&TokenView> = tokens
            .iter()
            .filter(|t| t.spend.window.micros() > 0 || t.spend.lifetime.micros() > 0)
            .collect();
        spending.sort_by(|a, b| peak(b).total_cmp(&peak(a)));
        for t in spending.into_iter().take(MAX_TOKEN_SERIES) {
            let labels = TokenLabels {
                policy: t.record.policy.clone(),
                token: t.record.id.clone(),
                label: t.record.label.clone(),
            };
            self.token_window_spend_usd
                .get_or_create(&labels)
                .set(t.spend.window.micros() as f64 / 1e6);
            for (cap, u) in &t.spend.utilization {
                self.token_utilization
                    .get_or_create(&TokenCapLabels {
                        policy: labels.policy.clone(),
                        token: labels.token.clone(),
                        label: labels.label.clone(),
                        cap: (*cap).to_string(),
                    })
                    .set(*u);
            }
        }
    }

    /// Sets the per-token refusal counts from the last minute's audit records, keeping the
    /// most refused tokens: a looping agent shows up here within its first minute.
    pub fn set_refusals(&self, recent: &[AuditRecord]) {
        self.token_refusals.clear();
        let mut counts: HashMap<TokenLabels, i64> = HashMap::new();
        for r in recent.iter().filter(|r| r.reason.is_denial()) {
            if let Some(token) = &r.token_id {
                let labels = TokenLabels {
                    policy: r.policy.clone().unwrap_or_default(),
                    token: token.clone(),
                    label: r.label.clone().unwrap_or_default(),
                };
                *counts.entry(labels).or_default() += 1;
            }
        }
        let mut counts: Vec<(TokenLabels, i64)> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (labels, n) in counts.into_iter().take(MAX_TOKEN_SERIES) {
            self.token_refusals.get_or_create(&labels).set(n);
        }
    }

    pub fn encode(&self, policies: &[PolicyView]) -> Result<String, std::fmt::Error> {
        for p in policies {
            let label = PolicyLabel {
                policy: p.name.clone(),
            };
            self.window_spend_usd
                .get_or_create(&label)
                .set(p.window_spend.micros() as f64 / 1e6);
            if let Some(u) = p.utilization {
                self.utilization.get_or_create(&label).set(u);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
