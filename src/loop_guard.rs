//! The loop breaker's counts in Envoy's shared data, updated with compare-and-swap so that two
//! workers counting the same token never lose an increment. What the counts mean is
//! `bridle_core::loop_breaker`'s; this is only where they live.

use bridle_core::loop_breaker::{self, Bucket, Counter, Verdict};
use bridle_core::policy::LoopBreaker;

use crate::host::{Host, CAS_MISMATCH};

/// The counts of every worker in the VM, behind the core's [`Counter`].
pub struct SharedCounter<'a, H: Host>(pub &'a H);

impl<H: Host> Counter for SharedCounter<'_, H> {
    fn count(
        &self,
        limits: &LoopBreaker,
        token_id: &str,
        fingerprint: Option<u64>,
        now_secs: u64,
    ) -> Result<Verdict, String> {
        let host = self.0;
        let token = loop_breaker::hash(token_id);
        let key = loop_breaker::bucket_key("bridle", token);
        let status = |e: crate::host::HostError| format!("status {}", e.0);
        for _ in 0..16 {
            let (bytes, cas) = host.shared_get(&key).map_err(status)?;
            let mut bucket = bytes.map(|b| Bucket::decode(&b)).unwrap_or_default();
            let verdict = loop_breaker::record(&mut bucket, limits, token, fingerprint, now_secs);
            match host.shared_set(&key, &bucket.encode(), cas) {
                Ok(()) => return Ok(verdict),
                Err(CAS_MISMATCH) => continue,
                Err(e) => return Err(status(e)),
            }
        }
        Err(status(CAS_MISMATCH))
    }
}
