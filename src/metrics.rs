//! Envoy stats. Decisions: one counter per policy and reason, defined up front so the request
//! path only increments, shown as `wasmcustom.bridle.<vendor>.<policy>.<reason>`; denials
//! before a genuine token names a policy count under `_unattributed`. The ledger link:
//! `wasmcustom.bridle.ledger.*`, shared by every plugin in the VM, including how long
//! revocations take to arrive (`revocation_propagation_ms`, a histogram) and how old the
//! revocation set is (`revocation_age_ms`).

use bridle_core::ledger_api::AuditRecord;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;

use crate::host::{Host, HostError};

pub const UNATTRIBUTED: &str = "_unattributed";

#[derive(Debug, Default)]
pub struct Metrics {
    /// `ids[slot * reasons + reason]`, slot 0 is unattributed, slot i+1 is policy i.
    ids: Vec<u32>,
    pub ledger: LedgerMetrics,
    pub llm: LlmMetrics,
}

/// How calls priced by tokens settled: `wasmcustom.bridle.llm.<vendor>.*`.
#[derive(Debug, Default)]
pub struct LlmMetrics {
    /// At the usage the vendor reported.
    pub usage_read: u32,
    /// At the reservation, because the usage was never read.
    pub usage_missing: u32,
    /// At a usage that cost more than the reservation.
    pub over_reservation: u32,
}

/// How the conversation with the ledger is going.
#[derive(Debug, Default)]
pub struct LedgerMetrics {
    pub polls_ok: u32,
    pub polls_failed: u32,
    pub reports_ok: u32,
    pub reports_failed: u32,
    pub items_dropped: u32,
    pub revocations: u32,
    pub reserve_failed: u32,
    /// Costed calls forwarded on a lease the worker held, without a reservation callout.
    pub lease_spends: u32,
    /// Leases closed because Envoy let go of the plugin (a configuration push).
    pub leases_closed_at_exit: u32,
    /// From a revoke committed in the ledger to this worker enforcing it, per entry.
    pub revocation_propagation_ms: u32,
    /// Since the last good poll of the revocation feed, as of the last tick.
    pub revocation_age_ms: u32,
}

impl Metrics {
    pub fn define<H: Host>(
        host: &H,
        vendor: Vendor,
        policies: &[&str],
    ) -> Result<Metrics, HostError> {
        let mut ids = Vec::with_capacity((policies.len() + 1) * Reason::ALL.len());
        for policy in std::iter::once(UNATTRIBUTED).chain(policies.iter().copied()) {
            for reason in Reason::ALL {
                ids.push(
                    host.define_counter(&format!("bridle.{vendor}.{policy}.{}", reason.code()))?,
                );
            }
        }
        let c = |name: &str| host.define_counter(&format!("bridle.ledger.{name}"));
        let ledger = LedgerMetrics {
            polls_ok: c("revocation_polls_ok")?,
            polls_failed: c("revocation_polls_failed")?,
            reports_ok: c("reports_ok")?,
            reports_failed: c("reports_failed")?,
            items_dropped: c("report_items_dropped")?,
            revocations: host.define_gauge("bridle.ledger.revocations")?,
            reserve_failed: c("reserve_failed")?,
            lease_spends: c("lease_spends")?,
            leases_closed_at_exit: c("leases_closed_at_exit")?,
            revocation_propagation_ms: host
                .define_histogram("bridle.ledger.revocation_propagation_ms")?,
            revocation_age_ms: host.define_gauge("bridle.ledger.revocation_age_ms")?,
        };
        let l = |name: &str| host.define_counter(&format!("bridle.llm.{vendor}.{name}"));
        let llm = LlmMetrics {
            usage_read: l("usage_read")?,
            usage_missing: l("usage_missing")?,
            over_reservation: l("over_reservation")?,
        };
        Ok(Metrics { ids, ledger, llm })
    }

    /// Counts how a call priced by tokens settled, from its audit record.
    pub fn count_usage<H: Host>(&self, host: &H, record: &AuditRecord) {
        if record.usage.is_some() && record.usage_missing.is_none() {
            host.increment(self.llm.usage_read, 1);
        }
        if record.usage_missing.is_some() {
            host.increment(self.llm.usage_missing, 1);
        }
        if record.over_reservation {
            host.increment(self.llm.over_reservation, 1);
        }
    }

    pub fn count<H: Host>(&self, host: &H, policy: Option<usize>, reason: Reason) {
        let slot = policy.map_or(0, |p| p + 1);
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(id) = self.ids.get(slot * Reason::ALL.len() + index) {
            host.increment(*id, 1);
        }
    }
}
