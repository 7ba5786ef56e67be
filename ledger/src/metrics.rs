//! Prometheus metrics at `/metrics`: reservations and denials by reason, reserved and
//! committed dollars, policy utilization, settles, audit records, alerts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::accounts::PolicyView;

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
    pub late_reserves: Counter,
    pub alerts: Family<AlertLabels, Counter>,
    pub window_spend_usd: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    pub utilization: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("bridle_ledger");
        let m = Metrics {
            reservations: Family::default(),
            reserved_usd: Family::default(),
            settles: Family::default(),
            audit_records: Counter::default(),
            late_reserves: Counter::default(),
            alerts: Family::default(),
            window_spend_usd: Family::default(),
            utilization: Family::default(),
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
        Metrics { registry, ..m }
    }
}

impl Metrics {
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
