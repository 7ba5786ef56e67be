//! Vault tokens already verified, so that a busy token costs one signature check, not one
//! per call. Shared by the filter (which caches the claims with their narrowing compiled)
//! and the ledger (which caches the claims).
//!
//! Keyed by the whole token, so a token that differs in any byte is verified afresh. A full
//! cache is simply emptied: that bounds memory without bookkeeping, and a miss only costs a
//! verification. Time-dependent checks (expiry, revocation) are never cached: callers make
//! them on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct TokenCache<T> {
    entries: Mutex<HashMap<String, Arc<T>>>,
    capacity: usize,
}

impl<T> TokenCache<T> {
    pub fn new(capacity: usize) -> TokenCache<T> {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The cached verification of `token`, or `verify(token)`'s, remembered when it succeeds.
    /// Failures are not cached: a forged token is as cheap to refuse again as to look up.
    pub fn get_or_verify<E>(
        &self,
        token: &str,
        verify: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(hit) = self.entries.lock().ok().and_then(|m| m.get(token).cloned()) {
            return Ok(hit);
        }
        let verified = Arc::new(verify(token)?);
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(token.to_string(), verified.clone());
        }
        Ok(verified)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn verifies_once_and_forgets_failures_and_overflow() {
        let cache = TokenCache::<String>::new(2);
        let calls = Cell::new(0);
        let verify = |t: &str| {
            calls.set(calls.get() + 1);
            if t.starts_with("good") {
                Ok(t.to_uppercase())
            } else {
                Err("bad")
            }
        };
        assert_eq!(*cache.get_or_verify("good1", verify).unwrap(), "GOOD1");
        assert_eq!(*cache.get_or_verify("good1", verify).unwrap(), "GOOD1");
        assert_eq!(calls.get(), 1, "a hit does not verify again");
        assert_eq!(cache.get_or_verify("bad", verify).unwrap_err(), "bad");
        assert_eq!(cache.get_or_verify("bad", verify).unwrap_err(), "bad");
        assert_eq!(calls.get(), 3, "failures are verified every time");
        cache.get_or_verify("good2", verify).unwrap();
        assert_eq!(cache.len(), 2);
        cache.get_or_verify("good3", verify).unwrap();
        assert_eq!(cache.len(), 1, "a full cache is emptied before the insert");
        cache.get_or_verify("good1", verify).unwrap();
        assert_eq!(calls.get(), 6);
    }
}
