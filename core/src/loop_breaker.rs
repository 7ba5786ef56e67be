//! The loop breaker: per token, a request-rate limit and a limit on identical repeats, each
//! per minute. An agent stuck in a loop is stopped within its first minute.
//!
//! Counts live in Envoy's shared data so that every worker sees them. Shared data cannot be
//! deleted, so tokens are hashed into a fixed number of buckets, each a small table that
//! forgets stale windows first: memory stays bounded however many tokens come and go. With
//! more live tokens in a bucket than it holds, the least active is forgotten, which can only
//! under-count, never block a well-behaved agent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::policy::LoopBreaker;

pub const BUCKETS: u64 = 1024;
pub const ENTRIES_PER_BUCKET: usize = 4;
pub const FINGERPRINTS_PER_ENTRY: usize = 4;
/// The loop breaker counts per calendar minute: every count starts again on the minute.
pub const WINDOW_SECS: u64 = 60;
const ENTRY_BYTES: usize = 8 + 8 + 4 + FINGERPRINTS_PER_ENTRY * 12;

/// A stable 64-bit hash: the same on every worker (std's SipHash with its fixed default key).
pub fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The shared-data key of a token's bucket.
pub fn bucket_key(prefix: &str, token_hash: u64) -> String {
    format!("{prefix}.lb.{}", token_hash % BUCKETS)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    token: u64,
    window: u64,
    count: u32,
    fingerprints: [(u64, u32); FINGERPRINTS_PER_ENTRY],
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<Entry>,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Bucket {
    /// Reads a bucket; anything malformed reads as empty (the counts start again).
    pub fn decode(bytes: &[u8]) -> Bucket {
        let mut entries = Vec::new();
        for chunk in bytes.chunks_exact(ENTRY_BYTES).take(ENTRIES_PER_BUCKET) {
            let read = || -> Option<Entry> {
                let mut e = Entry {
                    token: u64_at(chunk, 0)?,
                    window: u64_at(chunk, 8)?,
                    count: u32_at(chunk, 16)?,
                    ..Entry::default()
                };
                for (i, slot) in e.fingerprints.iter_mut().enumerate() {
                    *slot = (u64_at(chunk, 20 + i * 12)?, u32_at(chunk, 28 + i * 12)?);
                }
                Some(e)
            };
            if let Some(e) = read() {
                entries.push(e);
            }
        }
        Bucket { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.token.to_le_bytes());
            out.extend_from_slice(&e.window.to_le_bytes());
            out.extend_from_slice(&e.count.to_le_bytes());
            for (fp, n) in e.fingerprints {
                out.extend_from_slice(&fp.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Over `max_requests_per_minute`.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Over `max_identical_per_minute` for this fingerprint.
    RepeatLimited {
        retry_after_secs: u64,
    },
}

/// Counts one request of `token` (and its `fingerprint`, when Bridle read the whole request)
/// and says whether it may go. Every attempt counts, refused ones included, so a loop stays
/// stopped for the rest of its minute.
pub fn record(
    bucket: &mut Bucket,
    limits: &LoopBreaker,
    token: u64,
    fingerprint: Option<u64>,
    now_secs: u64,
) -> Verdict {
    let window = now_secs / WINDOW_SECS;
    let retry_after_secs = WINDOW_SECS - now_secs % WINDOW_SECS;
    let index = match bucket.entries.iter().position(|e| e.token == token) {
        Some(i) => i,
        None => {
            let fresh = Entry {
                token,
                window,
                ..Entry::default()
            };
            if bucket.entries.len() < ENTRIES_PER_BUCKET {
                bucket.entries.push(fresh);
                bucket.entries.len() - 1
            } else {
                // Forget a stale window first, else the least active token.
                let victim = bucket
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| (e.window == window, e.count))
                    .map_or(0, |(i, _)| i);
                if let Some(slot) = bucket.entries.get_mut(victim) {
                    *slot = fresh;
                }
                victim
            }
        }
    };
    let Some(entry) = bucket.entries.get_mut(index) else {
        return Verdict::Ok;
    };
    if entry.window != window {
        *entry = Entry {
            token,
            window,
            ..Entry::default()
        };
    }
    entry.count = entry.count.saturating_add(1);
    let mut verdict = Verdict::Ok;
    if entry.count > limits.max_requests_per_minute {
        verdict = Verdict::RateLimited { retry_after_secs };
    }
    if let Some(fp) = fingerprint {
        let slot = match entry
            .fingerprints
            .iter()
            .position(|(f, n)| *f == fp && *n > 0)
        {
            Some(i) => i,
            None => {
                let i = entry
                    .fingerprints
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, n))| *n)
                    .map_or(0, |(i, _)| i);
                if let Some(s) = entry.fingerprints.get_mut(i) {
                    *s = (fp, 0);
                }
                i
            }
        };
        if let Some((_, n)) = entry.fingerprints.get_mut(slot) {
            *n = n.saturating_add(1);
            if *n > limits.max_identical_per_minute && verdict == Verdict::Ok {
                verdict = Verdict::RepeatLimited { retry_after_secs };
            }
        }
    }
    verdict
}

/// Where the counts live. The filter keeps them in Envoy's shared data, updated with
/// compare-and-swap so that two workers never lose an increment; [`MemoryCounter`] keeps them
/// in memory, for tests of everything that counts.
pub trait Counter {
    /// Records one request of `token_id` (see [`record`]). `Err` says why it could not be
    /// counted, in words fit for a log line.
    fn count(
        &self,
        limits: &LoopBreaker,
        token_id: &str,
        fingerprint: Option<u64>,
        now_secs: u64,
    ) -> Result<Verdict, String>;
}

/// The counts in a map of buckets, as shared data would hold them.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    buckets: RefCell<HashMap<u64, Bucket>>,
}

impl Counter for MemoryCounter {
    fn count(
        &self,
        limits: &LoopBreaker,
        token_id: &str,
        fingerprint: Option<u64>,
        now_secs: u64,
    ) -> Result<Verdict, String> {
        let token = hash(token_id);
        let mut buckets = self
            .buckets
            .try_borrow_mut()
            .map_err(|_| "the counts are in use".to_string())?;
        let bucket = buckets.entry(token % BUCKETS).or_default();
        Ok(record(bucket, limits, token, fingerprint, now_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoopBreaker = LoopBreaker {
        max_requests_per_minute: 5,
        max_identical_per_minute: 2,
    };

    #[test]
    fn rate_is_limited_per_minute() {
        let mut b = Bucket::default();
        let t = hash("tok_1");
        for i in 0..5 {
            assert_eq!(record(&mut b, &LIMITS, t, None, 120 + i), Verdict::Ok);
        }
        assert_eq!(
            record(&mut b, &LIMITS, t, None, 130),
            Verdict::RateLimited {
                retry_after_secs: 50
            }
        );
        // Refused attempts count too: the loop stays stopped.
        assert!(matches!(
            record(&mut b, &LIMITS, t, None, 170),
            Verdict::RateLimited { .. }
        ));
        // A new minute starts afresh.
        assert_eq!(record(&mut b, &LIMITS, t, None, 180), Verdict::Ok);
        // Another token is counted apart.
        assert_eq!(
            record(&mut b, &LIMITS, hash("tok_2"), None, 130),
            Verdict::Ok
        );
    }

    #[test]
    fn identical_repeats_are_limited_separately() {
        let mut b = Bucket::default();
        let t = hash("tok_1");
        let same = hash("GET /v1/charges/ch_1");
        assert_eq!(record(&mut b, &LIMITS, t, Some(same), 0), Verdict::Ok);
        assert_eq!(record(&mut b, &LIMITS, t, Some(same), 1), Verdict::Ok);
        assert_eq!(
            record(&mut b, &LIMITS, t, Some(same), 2),
            Verdict::RepeatLimited {
                retry_after_secs: 58
            }
        );
        assert_eq!(
            record(&mut b, &LIMITS, t, Some(hash("GET /v1/charges/ch_2")), 3),
            Verdict::Ok
        );
    }

    #[test]
    fn survives_encoding_and_stays_bounded() {
        let mut b = Bucket::default();
        for i in 0..100u64 {
            record(&mut b, &LIMITS, i, Some(i * 7), 10);
            let copy = Bucket::decode(&b.encode());
            assert_eq!(copy, b);
        }
        assert_eq!(b.entries.len(), ENTRIES_PER_BUCKET);
        assert!(b.encode().len() <= ENTRIES_PER_BUCKET * ENTRY_BYTES);
        assert_eq!(Bucket::decode(b"garbage"), Bucket::default());
    }

    #[test]
    fn a_busy_token_survives_newcomers() {
        let mut b = Bucket::default();
        let busy = hash("busy");
        for s in 0..4 {
            record(&mut b, &LIMITS, busy, None, s);
        }
        // Ten one-off tokens pass through the same bucket; the busy one keeps its count.
        for i in 0..10u64 {
            record(&mut b, &LIMITS, 1000 + i, None, 5);
        }
        assert_eq!(record(&mut b, &LIMITS, busy, None, 6), Verdict::Ok); // 5th
        assert!(matches!(
            record(&mut b, &LIMITS, busy, None, 7),
            Verdict::RateLimited { .. }
        ));
    }
}
