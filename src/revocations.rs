//! The revocation set, shared by every worker through Envoy's shared data.
//!
//! One worker at a time polls the ledger's feed (a lease in shared data decides which),
//! merges what is new into the shared set, and stamps the time of the last good poll. Each
//! plugin copies the shared set into its own memory on its tick, when the version changes,
//! so the request path reads plain memory. A set whose last good poll is older than
//! `max_staleness_ms` is stale: costed requests still ask the ledger (which checks
//! revocation itself), uncosted ones follow the policy's `on_ledger_unavailable`.
//!
//! Each copy also measures: the age of the set on every tick, and, for every entry it
//! picks up, how long after the ledger committed it ([`Cache::measure`]).

use bridle_core::revocation::{RevocationFeed, RevocationSet};

use crate::host::{Host, HostError, CAS_MISMATCH};

/// Shared-data keys for one ledger cluster.
pub struct Keys {
    set: String,
    version: String,
    fresh: String,
    poll: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        let p = format!("bridle.{cluster}.revocations");
        Keys {
            set: p.clone(),
            version: format!("{p}.version"),
            fresh: format!("{p}.fresh_ms"),
            poll: format!("{p}.poll_ms"),
        }
    }
}

fn read_u64<H: Host>(host: &H, key: &str) -> Result<(u64, u32), HostError> {
    let (bytes, cas) = host.shared_get(key)?;
    let value = bytes
        .and_then(|b| {
            b.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        })
        .unwrap_or(0);
    Ok((value, cas))
}

/// Where a cache records what it measures.
#[derive(Clone, Copy, Debug)]
pub struct CacheMetrics {
    /// A histogram: milliseconds from commit in the ledger to this copy, per entry.
    pub propagation_ms: u32,
    /// A gauge: milliseconds since the last good poll.
    pub age_ms: u32,
}

/// This plugin's copy of the shared set.
#[derive(Debug, Default)]
pub struct Cache {
    pub set: RevocationSet,
    version: u64,
    /// When some worker last heard from the ledger, unix milliseconds.
    pub fresh_at_ms: u64,
    pub metrics: Option<CacheMetrics>,
    /// Entries committed at or before this (unix ms) have been measured, or were committed
    /// before this copy first looked: a proxy that starts late did not delay them.
    measured_through_ms: u64,
}

impl Cache {
    /// Pulls the shared set when another worker has changed it, and the freshness stamp.
    pub fn refresh<H: Host>(&mut self, host: &H, keys: &Keys) -> Result<(), HostError> {
        self.fresh_at_ms = read_u64(host, &keys.fresh)?.0;
        let now_ms = host.now_nanos().map_or(0, |n| n / 1_000_000);
        if self.measured_through_ms == 0 {
            self.measured_through_ms = now_ms;
        }
        if let Some(m) = self.metrics {
            host.record(m.age_ms, now_ms.saturating_sub(self.fresh_at_ms));
        }
        let (version, _) = read_u64(host, &keys.version)?;
        if version == self.version {
            return Ok(());
        }
        let (bytes, _) = host.shared_get(&keys.set)?;
        let feed: RevocationFeed = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut set = RevocationSet::default();
        set.apply(&feed);
        self.set = set;
        self.version = version;
        self.measure(host, &feed, now_ms);
        Ok(())
    }

    /// Records, for each entry this copy has not seen before, how long ago the ledger
    /// committed it: from then on this worker refuses what it covers. Entries without a
    /// commit time (an older ledger) are not measured. The difference spans two hosts'
    /// clocks, so it includes their offset (clamped at zero).
    fn measure<H: Host>(&mut self, host: &H, feed: &RevocationFeed, now_ms: u64) {
        let Some(m) = self.metrics else { return };
        let mut newest = self.measured_through_ms;
        for e in &feed.entries {
            if e.at_ms > self.measured_through_ms {
                host.record(m.propagation_ms, now_ms.saturating_sub(e.at_ms));
                newest = newest.max(e.at_ms);
            }
        }
        self.measured_through_ms = newest;
    }

    pub fn is_fresh(&self, now_ms: u64, max_staleness_ms: u64) -> bool {
        now_ms.saturating_sub(self.fresh_at_ms) <= max_staleness_ms
    }
}

/// Takes the polling lease if the last poll started `interval_ms` ago or more; at most one
/// worker wins each interval. Returns the sequence number to ask the ledger from.
pub fn take_poll_lease<H: Host>(
    host: &H,
    keys: &Keys,
    now_ms: u64,
    interval_ms: u64,
) -> Result<Option<u64>, HostError> {
    let (last, cas) = read_u64(host, &keys.poll)?;
    if now_ms.saturating_sub(last) < interval_ms {
        return Ok(None);
    }
    match host.shared_set(&keys.poll, &now_ms.to_le_bytes(), cas) {
        Ok(()) => {}
        Err(CAS_MISMATCH) => return Ok(None),
        Err(e) => return Err(e),
    }
    let (bytes, _) = host.shared_get(&keys.set)?;
    let seq = bytes
        .and_then(|b| serde_json::from_slice::<RevocationFeed>(&b).ok())
        .map_or(0, |f| f.seq);
    Ok(Some(seq))
}

/// Increments a shared counter without losing a concurrent increment.
fn bump<H: Host>(host: &H, key: &str) -> Result<(), HostError> {
    for _ in 0..16 {
        let (value, cas) = read_u64(host, key)?;
        match host.shared_set(key, &value.wrapping_add(1).to_le_bytes(), cas) {
            Ok(()) => return Ok(()),
            Err(CAS_MISMATCH) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CAS_MISMATCH)
}

/// Merges a page of the ledger's feed into the shared set and stamps it fresh.
pub fn merge<H: Host>(
    host: &H,
    keys: &Keys,
    page: &RevocationFeed,
    now_ms: u64,
) -> Result<usize, HostError> {
    let mut size = 0;
    if !page.entries.is_empty() || page.reset {
        let mut merged = false;
        for _ in 0..16 {
            let (bytes, cas) = host.shared_get(&keys.set)?;
            let mut set = RevocationSet::default();
            if let Some(feed) =
                bytes.and_then(|b| serde_json::from_slice::<RevocationFeed>(&b).ok())
            {
                set.apply(&feed);
            }
            set.apply(page);
            set.prune(now_ms / 1000);
            size = set.len();
            let encoded = serde_json::to_vec(&set.to_feed()).map_err(|_| HostError(u32::MAX))?;
            match host.shared_set(&keys.set, &encoded, cas) {
                Ok(()) => {
                    merged = true;
                    break;
                }
                Err(CAS_MISMATCH) => continue,
                Err(e) => return Err(e),
            }
        }
        if !merged {
            return Err(CAS_MISMATCH);
        }
        bump(host, &keys.version)?;
    }
    host.shared_set(&keys.fresh, &now_ms.to_le_bytes(), 0)?;
    Ok(size)
}
