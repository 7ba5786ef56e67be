//! Spend leases: one worker's slices of its tokens' budgets, spent call by call without a
//! ledger round trip.
//!
//! A policy with `lease` lets the filter ask the ledger to reserve up to `calls` calls of a
//! fixed-price call's price at once. The ledger checks that whole amount against every cap in
//! the same atomic step as any reservation, so a lease is spend counted before any of it is
//! used: no concurrency can push spend past a cap. The worker (its VM is single-threaded)
//! then forwards the token's next calls of no more than what is left, until the lease is
//! used up or `max_age_ms` old, and closes it with one settle: commit what its calls spent,
//! release the rest. What the guarantees become is in BENCHMARKS.md ("Spend leases").
//!
//! The book holds no money of its own: every amount here is inside a reservation the ledger
//! has made durable. A lease the book forgets (a full book, a worker that stops) expires in
//! the ledger into spend, like any unsettled reservation: over-counted, never under.

use std::collections::HashMap;

use crate::ledger_api::{Settle, SettleOutcome};
use crate::money::Usd;

/// Leases one book holds open for reuse; a worker with more live tokens than this spends
/// the newest token's lease once and closes it.
pub const MAX_LIVE: usize = 1024;

/// One call spent from a lease, as the exchange carries it until the call ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    pub lease: String,
    pub token_id: String,
    pub amount: Usd,
}

#[derive(Debug)]
struct Lease {
    id: String,
    /// The price of the call that asked for it: the ledger checked the per-transaction cap
    /// against this, so no dearer call may spend from it.
    price: i64,
    /// Micro-dollars still free to spend.
    left: i64,
    /// Micro-dollars spent by calls that ended (committed or held).
    spent: i64,
    /// Calls forwarded on it that have not ended.
    in_flight: u32,
    /// Spent from until this moment (the proxy's clock, from when its request was sent).
    until_ms: u64,
}

impl Lease {
    /// The settle that closes it: what its calls spent is committed, the rest released.
    fn close(&self) -> Settle {
        let (outcome, amount) = match Usd::from_micros(self.spent) {
            Some(spent) if self.spent > 0 => (SettleOutcome::Commit, Some(spent)),
            _ => (SettleOutcome::Release, None),
        };
        Settle {
            reservation: self.id.clone(),
            outcome,
            amount,
            replay: false,
            usage: None,
        }
    }
}

/// One worker's leases: live ones by token, and closing ones (too old, used up or replaced)
/// by lease id, waiting for their calls in flight.
#[derive(Debug, Default)]
pub struct LeaseBook {
    live: HashMap<String, Lease>,
    closing: HashMap<String, Lease>,
    /// Settles of closed leases, for the adapter to report.
    closed: Vec<Settle>,
}

impl LeaseBook {
    /// Spends `amount` of the token's live lease, if it has that much left, is young enough
    /// and was asked for by a call at least as dear: the spend to carry, or `None` (ask the
    /// ledger).
    pub fn take(&mut self, token_id: &str, amount: Usd, now_ms: u64) -> Option<Spend> {
        let lease = self.live.get_mut(token_id)?;
        let micros = amount.micros();
        if now_ms >= lease.until_ms || lease.left < micros || micros > lease.price {
            return None;
        }
        lease.left -= micros;
        lease.in_flight += 1;
        Some(Spend {
            lease: lease.id.clone(),
            token_id: token_id.to_string(),
            amount,
        })
    }

    /// The ledger granted lease `id`: `calls` calls of `amount`, the first of which is the
    /// call that asked. It replaces the token's previous lease, which closes once its calls
    /// end. Returns the spend for the asking call.
    pub fn open(
        &mut self,
        token_id: &str,
        id: &str,
        amount: Usd,
        calls: u32,
        until_ms: u64,
    ) -> Spend {
        let total = amount.micros().saturating_mul(i64::from(calls.max(1)));
        let lease = Lease {
            id: id.to_string(),
            price: amount.micros(),
            left: total.saturating_sub(amount.micros()),
            spent: 0,
            in_flight: 1,
            until_ms,
        };
        if let Some(old) = self.live.remove(token_id) {
            self.retire(old);
        }
        if self.live.len() >= MAX_LIVE {
            // No room to keep it for the token's next calls: it serves this one and closes.
            self.closing.insert(lease.id.clone(), lease);
        } else {
            self.live.insert(token_id.to_string(), lease);
        }
        Spend {
            lease: id.to_string(),
            token_id: token_id.to_string(),
            amount,
        }
    }

    /// A call spent from a lease has ended with `outcome`: a vendor that accepted it, or
    /// may have acted (5xx, no answer), spent it; one that refused it, or a call that never
    /// left, gives it back. A lease closing waits for its last call.
    pub fn end(&mut self, spend: &Spend, outcome: SettleOutcome) {
        let micros = spend.amount.micros();
        if let Some(lease) = self
            .live
            .get_mut(&spend.token_id)
            .filter(|l| l.id == spend.lease)
        {
            lease.in_flight = lease.in_flight.saturating_sub(1);
            match outcome {
                SettleOutcome::Release => lease.left = lease.left.saturating_add(micros),
                SettleOutcome::Commit | SettleOutcome::Hold => {
                    lease.spent = lease.spent.saturating_add(micros)
                }
            }
            return;
        }
        let Some(lease) = self.closing.get_mut(&spend.lease) else {
            return;
        };
        lease.in_flight = lease.in_flight.saturating_sub(1);
        if outcome != SettleOutcome::Release {
            lease.spent = lease.spent.saturating_add(micros);
        }
        if lease.in_flight == 0 {
            if let Some(l) = self.closing.remove(&spend.lease) {
                self.closed.push(l.close());
            }
        }
    }

    /// Retires leases too old to spend from, or with nothing left. Called on every tick.
    pub fn expire(&mut self, now_ms: u64) {
        let old: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| now_ms >= l.until_ms || l.left <= 0)
            .map(|(token, _)| token.clone())
            .collect();
        for token in old {
            if let Some(lease) = self.live.remove(&token) {
                self.retire(lease);
            }
        }
    }

    /// The settles of the leases closed since the last call, to report to the ledger.
    pub fn take_closed(&mut self) -> Vec<Settle> {
        std::mem::take(&mut self.closed)
    }

    /// Leases open in the book, live or closing, for a gauge.
    pub fn len(&self) -> usize {
        self.live.len() + self.closing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn retire(&mut self, lease: Lease) {
        if lease.in_flight == 0 {
            self.closed.push(lease.close());
        } else {
            self.closing.insert(lease.id.clone(), lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    #[test]
    fn a_lease_serves_its_calls_then_closes_at_what_they_spent() {
        let mut book = LeaseBook::default();
        let first = book.open("tok", "lease1", usd("2"), 3, 1_000);
        let second = book.take("tok", usd("2"), 10).unwrap();
        let third = book.take("tok", usd("2"), 20).unwrap();
        assert_eq!(book.take("tok", usd("2"), 30), None, "three calls, no more");
        book.end(&first, SettleOutcome::Commit);
        // A refused call gives its price back to the lease.
        book.end(&second, SettleOutcome::Release);
        let fourth = book.take("tok", usd("2"), 40).unwrap();
        assert_eq!(fourth.lease, "lease1");
        book.end(&third, SettleOutcome::Hold);
        book.expire(999);
        assert_eq!(book.take_closed(), Vec::new(), "young, with a call on it");
        book.expire(1_000);
        assert_eq!(
            book.take_closed(),
            Vec::new(),
            "retired, but a call is in flight"
        );
        assert_eq!(book.take("tok", usd("2"), 40), None, "retired");
        book.end(&fourth, SettleOutcome::Commit);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].reservation, "lease1");
        assert_eq!(closed[0].outcome, SettleOutcome::Commit);
        assert_eq!(
            closed[0].amount,
            Some(usd("6")),
            "first, third (held) and fourth"
        );
        assert!(book.is_empty());
    }

    #[test]
    fn a_lease_is_not_spent_once_old_nor_past_what_is_left() {
        let mut book = LeaseBook::default();
        book.open("tok", "l", usd("1"), 2, 500);
        assert_eq!(book.take("tok", usd("1.01"), 0), None, "more than is left");
        // Dearer than the call the ledger checked the per-transaction cap for.
        let mut dear = LeaseBook::default();
        dear.open("tok", "d", usd("1"), 8, 500);
        assert_eq!(
            dear.take("tok", usd("1.50"), 0),
            None,
            "dearer than its price"
        );
        assert!(
            dear.take("tok", usd("0.50"), 0).is_some(),
            "cheaper is fine"
        );
        assert_eq!(book.take("other", usd("1"), 0), None, "another token's");
        assert_eq!(book.take("tok", usd("1"), 500), None, "too old");
        assert!(book.take("tok", usd("1"), 499).is_some());
    }

    #[test]
    fn an_unused_lease_is_released_and_a_replaced_one_closes() {
        let mut book = LeaseBook::default();
        let a = book.open("tok", "a", usd("1"), 4, 100);
        book.end(&a, SettleOutcome::Release);
        let b = book.open("tok", "b", usd("1"), 4, 200);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].reservation, "a");
        assert_eq!(closed[0].outcome, SettleOutcome::Release);
        assert_eq!(closed[0].amount, None);
        // A spend of the replaced lease that ends late finds nothing to change.
        book.end(&a, SettleOutcome::Commit);
        book.end(&b, SettleOutcome::Commit);
        book.expire(200);
        assert_eq!(book.take_closed()[0].amount, Some(usd("1")));
    }

    #[test]
    fn a_full_book_keeps_no_new_lease_but_closes_it_after_its_call() {
        let mut book = LeaseBook::default();
        for i in 0..MAX_LIVE {
            let s = book.open(&format!("t{i}"), &format!("l{i}"), usd("1"), 2, 100);
            book.end(&s, SettleOutcome::Commit);
        }
        let s = book.open("new", "lnew", usd("1"), 2, 100);
        assert_eq!(book.take("new", usd("1"), 0), None);
        book.end(&s, SettleOutcome::Commit);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].amount, Some(usd("1")));
    }
}
