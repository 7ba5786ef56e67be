//! The loop breaker's counts in shared data, updated with compare-and-swap so that two
//! workers counting the same token never lose an increment.

use bridle_core::loop_breaker::{self, Bucket, Verdict};
use bridle_core::policy::LoopBreaker;

use crate::host::{Host, HostError, CAS_MISMATCH};

pub fn check<H: Host>(
    host: &H,
    limits: &LoopBreaker,
    token_id: &str,
    fingerprint: Option<u64>,
    now_secs: u64,
) -> Result<Verdict, HostError> {
    let token = loop_breaker::hash(token_id);
    let key = loop_breaker::bucket_key("bridle", token);
    for _ in 0..16 {
        let (bytes, cas) = host.shared_get(&key)?;
        let mut bucket = bytes.map(|b| Bucket::decode(&b)).unwrap_or_default();
        let verdict = loop_breaker::record(&mut bucket, limits, token, fingerprint, now_secs);
        match host.shared_set(&key, &bucket.encode(), cas) {
            Ok(()) => return Ok(verdict),
            Err(CAS_MISMATCH) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CAS_MISMATCH)
}
