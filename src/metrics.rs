//! Envoy stats counters: one per policy and reason, defined up front so the request path only
//! increments. Envoy shows them as `wasmcustom.bridle.<vendor>.<policy>.<reason>`; denials
//! that happen before a genuine token names a policy count under `_unattributed`.

use bridle_core::vendor::Vendor;
use bridle_core::Reason;

use crate::host::{Host, HostError};

pub const UNATTRIBUTED: &str = "_unattributed";

#[derive(Debug, Default)]
pub struct Metrics {
    /// `ids[slot * reasons + reason]`, slot 0 is unattributed, slot i+1 is policy i.
    ids: Vec<u32>,
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
        Ok(Metrics { ids })
    }

    pub fn count<H: Host>(&self, host: &H, policy: Option<usize>, reason: Reason) {
        let slot = policy.map_or(0, |p| p + 1);
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(id) = self.ids.get(slot * Reason::ALL.len() + index) {
            host.increment(*id, 1);
        }
    }
}
