//! Spend leases: one worker's slices of its tokens' budgets, spent call by call without a
//! ledger round trip.
//!
//! A policy with `lease` lets the filter ask the ledger to reserve up to `calls` calls of a
//! fixed-price call's price at once. The ledger checks that whole amount against every cap in
//! the same atomic step as any reservation, so a lease is spend counted before any of it is
//! used: no concurrency can push spend past a cap. The worker (its VM is single-threaded)
//! then forwards the token's next calls of no more than that price from what is left, until
//! the lease is used up or `max_age_ms` old, and closes it with one settle: commit what its
//! calls spent, release the rest. What the guarantees become is in BENCHMARKS.md ("Spend
//! leases") and the README.
//!
//! A token in use keeps one lease ahead: once a live lease has served a second call, the
//! worker's tick asks the ledger for the next one ([`LeaseBook::renewals`]), so that the
//! calls after the live lease runs out need not wait for a durable reservation. While a
//! lease is being asked for, other calls of the token reserve one by one rather than pile
//! up leases of their own.
//!
//! The book holds no money of its own: every amount here is inside a reservation the ledger
//! has made durable. A lease the book forgets (a full book, a worker that stops) expires in
//! the ledger into spend, like any unsettled reservation: over-counted, never under.

use std::collections::HashMap;

use crate::ledger_api::{ReserveRequest, Settle, SettleOutcome};
use crate::money::Usd;

/// Tokens one book holds leases for; a worker with more live tokens than this spends the
/// newest token's lease once and closes it.
pub const MAX_LIVE: usize = 1024;

/// How long a retired lease waits for its calls in flight before it closes anyway, counting
/// them as spent. Waiting lets a call the vendor refuses give its price back; not waiting
/// for ever keeps an agent that reads its responses slowly (the vendor route allows minutes)
/// from pinning whole leases, and with them the policy's window, for other tokens.
pub const CLOSE_WAIT_MS: u64 = 1_000;

/// One call spent from a lease, as the exchange carries it until the call ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    pub lease: String,
    pub token_id: String,
    pub amount: Usd,
}

/// What the tick sends to ask for a token's next lease: the reservation of the call that
/// opened the live one (its token, endpoint and price), under a new request id.
pub struct Renewal {
    pub token_id: String,
    pub request: ReserveRequest,
    /// The new lease is spent from until its request is this old.
    pub max_age_ms: u64,
}

struct Lease {
    id: String,
    /// The price of the call that asked for it: the ledger checked the per-transaction cap
    /// against this, so no dearer call may spend from it.
    price: i64,
    /// Micro-dollars still free to spend.
    left: i64,
    /// Micro-dollars spent by calls that ended (committed or held).
    spent: i64,
    /// Micro-dollars of the calls forwarded on it that have not ended.
    out: i64,
    /// Calls forwarded on it that have not ended.
    in_flight: u32,
    /// Calls forwarded on it in all.
    served: u32,
    /// Spent from until this moment (the proxy's clock, from when its request was sent).
    until_ms: u64,
    /// Retired with calls in flight: closes by this moment whether they have ended or not
    /// (set by the first tick that sees it closing).
    close_by_ms: Option<u64>,
}

impl Lease {
    fn new(id: &str, price: Usd, calls: u32, until_ms: u64) -> Lease {
        Lease {
            id: id.to_string(),
            price: price.micros(),
            left: price.micros().saturating_mul(i64::from(calls.max(1))),
            spent: 0,
            out: 0,
            in_flight: 0,
            served: 0,
            until_ms,
            close_by_ms: None,
        }
    }

    fn usable(&self, micros: i64, now_ms: u64) -> bool {
        now_ms < self.until_ms && self.left >= micros && micros <= self.price
    }

    fn spend(&mut self, token_id: &str, amount: Usd) -> Spend {
        self.left -= amount.micros();
        self.out = self.out.saturating_add(amount.micros());
        self.in_flight += 1;
        self.served += 1;
        Spend {
            lease: self.id.clone(),
            token_id: token_id.to_string(),
            amount,
        }
    }

    /// A call on it ended: spent (the vendor accepted it, or may have acted) or given back.
    fn end(&mut self, micros: i64, outcome: SettleOutcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.out = self.out.saturating_sub(micros);
        match outcome {
            SettleOutcome::Release => self.left = self.left.saturating_add(micros),
            SettleOutcome::Commit | SettleOutcome::Hold => {
                self.spent = self.spent.saturating_add(micros)
            }
        }
    }

    /// The settle that closes it: what its calls spent, and what the calls still in flight
    /// may spend, is committed; the rest released.
    fn close(&self) -> Settle {
        let spent = self.spent.saturating_add(self.out);
        let (outcome, amount) = match Usd::from_micros(spent) {
            Some(spent_usd) if spent > 0 => (SettleOutcome::Commit, Some(spent_usd)),
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

/// A token's leases: the one spent from, the one asked ahead, and how to ask again.
#[derive(Default)]
struct Slot {
    live: Option<Lease>,
    next: Option<Lease>,
    /// A call is asking for a lease until then: other calls reserve one by one.
    asking_until_ms: u64,
    /// The tick is asking for the next lease until then. Kept apart from a call's mark, so
    /// that a call's answer arriving late cannot clear it and let the tick ask twice.
    renewing_until_ms: u64,
    /// The reservation that opened the live lease, to ask for the next with; dropped when
    /// the ledger refuses a renewal, so that a token at its cap is not asked for again and
    /// again.
    template: Option<(ReserveRequest, u64)>,
}

impl Slot {
    /// Whether a call or the tick is asking for a lease for the token.
    fn asking(&self, now_ms: u64) -> bool {
        now_ms < self.asking_until_ms || now_ms < self.renewing_until_ms
    }
}

/// One worker's leases by token, and the closing ones (too old, used up or replaced) by
/// lease id, waiting for their calls in flight.
#[derive(Default)]
pub struct LeaseBook {
    slots: HashMap<String, Slot>,
    closing: HashMap<String, Lease>,
    /// Settles of closed leases, for the adapter to report.
    closed: Vec<Settle>,
}

impl std::fmt::Debug for LeaseBook {
    /// Counts only: a renewal template holds the vault token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBook")
            .field("tokens", &self.slots.len())
            .field("closing", &self.closing.len())
            .finish_non_exhaustive()
    }
}

impl LeaseBook {
    /// Spends `amount` of the token's live lease (or of the one asked ahead, which then
    /// becomes live), if it has that much left, is young enough and was asked for by a call
    /// at least as dear: the spend to carry, or `None` (ask the ledger).
    pub fn take(&mut self, token_id: &str, amount: Usd, now_ms: u64) -> Option<Spend> {
        let micros = amount.micros();
        let slot = self.slots.get_mut(token_id)?;
        if !slot.live.as_ref().is_some_and(|l| l.usable(micros, now_ms))
            && slot.next.as_ref().is_some_and(|l| l.usable(micros, now_ms))
        {
            let old = std::mem::replace(&mut slot.live, slot.next.take());
            if let Some(old) = old {
                self.retire(old);
            }
        }
        let slot = self.slots.get_mut(token_id)?;
        let lease = slot.live.as_mut().filter(|l| l.usable(micros, now_ms))?;
        Some(lease.spend(token_id, amount))
    }

    /// Whether a call that found no lease may ask for one now: not while one is being asked
    /// for (then it reserves alone). Asking marks the token until `until_ms`, the callout's
    /// deadline.
    pub fn may_ask(&mut self, token_id: &str, now_ms: u64, until_ms: u64) -> bool {
        if self.slots.len() >= MAX_LIVE && !self.slots.contains_key(token_id) {
            return true;
        }
        let slot = self.slots.entry(token_id.to_string()).or_default();
        if slot.asking(now_ms) {
            return false;
        }
        slot.asking_until_ms = until_ms;
        true
    }

    /// The ledger answered a lease asked for, whatever it said: others may ask again.
    pub fn answered(&mut self, token_id: &str) {
        if let Some(slot) = self.slots.get_mut(token_id) {
            slot.asking_until_ms = 0;
        }
    }

    /// The ledger granted lease `id`, asked for by a call: `calls` calls of `amount`, the
    /// first of which is that call. It replaces the token's live lease, which closes once
    /// its calls end; `template` (the call's reservation and the policy's lease age) asks
    /// for the next. Returns the spend for the asking call.
    pub fn open(
        &mut self,
        token_id: &str,
        id: &str,
        amount: Usd,
        calls: u32,
        until_ms: u64,
        template: Option<(ReserveRequest, u64)>,
    ) -> Spend {
        let mut lease = Lease::new(id, amount, calls, until_ms);
        let spend = lease.spend(token_id, amount);
        if self.slots.len() >= MAX_LIVE && !self.slots.contains_key(token_id) {
            // No room to keep it for the token's next calls: it serves this one and closes.
            self.closing.insert(lease.id.clone(), lease);
            return spend;
        }
        let slot = self.slots.entry(token_id.to_string()).or_default();
        slot.asking_until_ms = 0;
        if template.is_some() {
            slot.template = template;
        }
        if let Some(old) = slot.live.replace(lease) {
            self.retire(old);
        }
        spend
    }

    /// The renewals due now: tokens whose live lease has served a second call and has no
    /// lease asked ahead. Each is marked asked for until `now_ms + timeout_ms`; the caller
    /// sets each request's id and answers with [`LeaseBook::renewed`] or
    /// [`LeaseBook::renewal_failed`].
    pub fn renewals(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Renewal> {
        let mut due = Vec::new();
        for (token_id, slot) in &mut self.slots {
            let active = slot
                .live
                .as_ref()
                .is_some_and(|l| l.served >= 2 && now_ms < l.until_ms);
            if !active || slot.next.is_some() || slot.asking(now_ms) {
                continue;
            }
            let Some((request, max_age_ms)) = &slot.template else {
                continue;
            };
            slot.renewing_until_ms = now_ms.saturating_add(timeout_ms);
            due.push(Renewal {
                token_id: token_id.clone(),
                request: request.clone(),
                max_age_ms: *max_age_ms,
            });
        }
        due
    }

    /// The ledger granted a renewal: the token's next lease, spent from once the live one
    /// cannot serve a call.
    pub fn renewed(&mut self, token_id: &str, id: &str, price: Usd, calls: u32, until_ms: u64) {
        let lease = Lease::new(id, price, calls, until_ms);
        match self.slots.get_mut(token_id) {
            Some(slot) => {
                slot.renewing_until_ms = 0;
                if let Some(old) = slot.next.replace(lease) {
                    self.retire(old);
                }
            }
            // The token's slot is gone: nothing will spend it.
            None => self.retire(lease),
        }
    }

    /// The ledger refused a renewal (or failed): no more renewals until a call opens a
    /// lease again.
    pub fn renewal_failed(&mut self, token_id: &str) {
        if let Some(slot) = self.slots.get_mut(token_id) {
            slot.renewing_until_ms = 0;
            slot.template = None;
        }
    }

    /// A call spent from a lease has ended with `outcome`: a vendor that accepted it, or
    /// may have acted (5xx, no answer), spent it; one that refused it, or a call that never
    /// left, gives it back. A lease closing waits for its last call, up to
    /// [`CLOSE_WAIT_MS`]; a call that ends after its lease closed was counted as spent.
    pub fn end(&mut self, spend: &Spend, outcome: SettleOutcome) {
        let micros = spend.amount.micros();
        let open = self.slots.get_mut(&spend.token_id).and_then(|slot| {
            [slot.live.as_mut(), slot.next.as_mut()]
                .into_iter()
                .flatten()
                .find(|l| l.id == spend.lease)
        });
        if let Some(lease) = open {
            lease.end(micros, outcome);
            return;
        }
        let Some(lease) = self.closing.get_mut(&spend.lease) else {
            return;
        };
        lease.end(micros, outcome);
        if lease.in_flight == 0 {
            if let Some(l) = self.closing.remove(&spend.lease) {
                self.closed.push(l.close());
            }
        }
    }

    /// Retires leases too old to spend from, or with nothing left, closes those that have
    /// waited [`CLOSE_WAIT_MS`] for their calls, and forgets tokens with nothing open. Called
    /// on every tick.
    pub fn expire(&mut self, now_ms: u64) {
        let mut retired = Vec::new();
        self.slots.retain(|_, slot| {
            for lease in [&mut slot.live, &mut slot.next] {
                if lease
                    .as_ref()
                    .is_some_and(|l| now_ms >= l.until_ms || l.left <= 0)
                {
                    retired.extend(lease.take());
                }
            }
            if slot.live.is_none() {
                slot.live = slot.next.take();
            }
            slot.live.is_some() || slot.asking(now_ms)
        });
        for lease in retired {
            self.retire(lease);
        }
        let mut waited = Vec::new();
        for (id, lease) in &mut self.closing {
            let by = *lease
                .close_by_ms
                .get_or_insert(now_ms.saturating_add(CLOSE_WAIT_MS));
            if now_ms >= by {
                waited.push(id.clone());
            }
        }
        for id in waited {
            if let Some(lease) = self.closing.remove(&id) {
                self.closed.push(lease.close());
            }
        }
    }

    /// Closes every lease now, live, ahead or closing, counting calls still in flight as
    /// spent: the plugin is going away (a configuration push replaced it) and nothing will
    /// spend or end them. Left to the ledger, they would count in full until they expired.
    pub fn close_all(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        for slot in slots.into_values() {
            for lease in [slot.live, slot.next].into_iter().flatten() {
                self.closed.push(lease.close());
            }
        }
        let closing = std::mem::take(&mut self.closing);
        for lease in closing.into_values() {
            self.closed.push(lease.close());
        }
    }

    /// The settles of the leases closed since the last call, to report to the ledger.
    pub fn take_closed(&mut self) -> Vec<Settle> {
        std::mem::take(&mut self.closed)
    }

    /// Leases open in the book, live, ahead or closing, for a gauge.
    pub fn len(&self) -> usize {
        let open: usize = self
            .slots
            .values()
            .map(|s| usize::from(s.live.is_some()) + usize::from(s.next.is_some()))
            .sum();
        open + self.closing.len()
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
        let first = book.open("tok", "lease1", usd("2"), 3, 1_000, None);
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
    fn a_retired_lease_waits_a_bounded_time_for_its_calls_then_counts_them_spent() {
        let mut book = LeaseBook::default();
        let slow = book.open("tok", "a", usd("2"), 4, 100, None);
        let quick = book.take("tok", usd("2"), 10).unwrap();
        let refused = book.take("tok", usd("2"), 20).unwrap();
        book.end(&quick, SettleOutcome::Commit);
        book.expire(100);
        book.end(&refused, SettleOutcome::Release);
        assert_eq!(book.take_closed(), Vec::new(), "waits for the slow call");
        book.expire(100 + CLOSE_WAIT_MS - 1);
        assert_eq!(book.take_closed(), Vec::new(), "still waiting");
        book.expire(100 + CLOSE_WAIT_MS);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1, "closed without the slow call");
        assert_eq!(closed[0].outcome, SettleOutcome::Commit);
        assert_eq!(
            closed[0].amount,
            Some(usd("4")),
            "the quick call and the slow one, counted as spent; the refused one given back"
        );
        assert!(book.is_empty());
        book.end(&slow, SettleOutcome::Release);
        assert_eq!(book.take_closed(), Vec::new(), "a late end changes nothing");
    }

    #[test]
    fn closing_all_settles_every_lease_at_what_it_has_spent_or_may_spend() {
        let mut book = LeaseBook::default();
        let a = book.open("tok", "a", usd("1"), 4, 1_000, Some(template()));
        book.take("tok", usd("1"), 10).unwrap();
        book.end(&a, SettleOutcome::Commit);
        book.renewed("tok", "b", usd("1"), 4, 1_200);
        let old = book.open("other", "c", usd("2"), 2, 1_000, None);
        book.open("other", "d", usd("2"), 2, 1_000, None);
        book.close_all();
        let mut closed: Vec<(String, Option<Usd>)> = book
            .take_closed()
            .into_iter()
            .map(|s| (s.reservation, s.amount))
            .collect();
        closed.sort();
        assert_eq!(
            closed,
            vec![
                ("a".into(), Some(usd("2"))),
                ("b".into(), None),
                ("c".into(), Some(usd("2"))),
                ("d".into(), Some(usd("2"))),
            ],
            "a: one ended, one in flight; b: unspent; c: replaced, its call in flight; d: its own call"
        );
        assert!(book.is_empty());
        book.end(&old, SettleOutcome::Release);
        assert_eq!(book.take_closed(), Vec::new(), "nothing left to settle");
    }

    #[test]
    fn a_lease_is_not_spent_once_old_nor_past_what_is_left() {
        let mut book = LeaseBook::default();
        book.open("tok", "l", usd("1"), 2, 500, None);
        assert_eq!(book.take("tok", usd("1.01"), 0), None, "more than is left");
        // Dearer than the call the ledger checked the per-transaction cap for.
        let mut dear = LeaseBook::default();
        dear.open("tok", "d", usd("1"), 8, 500, None);
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
        let a = book.open("tok", "a", usd("1"), 4, 100, None);
        book.end(&a, SettleOutcome::Release);
        let b = book.open("tok", "b", usd("1"), 4, 200, None);
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
            let s = book.open(&format!("t{i}"), &format!("l{i}"), usd("1"), 2, 100, None);
            book.end(&s, SettleOutcome::Commit);
        }
        let s = book.open("new", "lnew", usd("1"), 2, 100, None);
        assert_eq!(book.take("new", usd("1"), 0), None);
        book.end(&s, SettleOutcome::Commit);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].amount, Some(usd("1")));
    }

    fn template() -> (ReserveRequest, u64) {
        let request = ReserveRequest {
            token: "bvt_secret".into(),
            request_id: "0".repeat(16),
            method: "POST".into(),
            path: "/v1/payment_intents".into(),
            merchant: None,
            amount: usd("1"),
            detail: "$1".into(),
            idempotency_key: None,
            digest: None,
            lease_calls: Some(2),
        };
        (request, 250)
    }

    #[test]
    fn one_call_asks_for_a_lease_at_a_time() {
        let mut book = LeaseBook::default();
        assert!(book.may_ask("tok", 0, 500));
        assert!(!book.may_ask("tok", 10, 510), "another call is asking");
        assert!(book.may_ask("other", 10, 510), "per token");
        book.answered("tok");
        assert!(book.may_ask("tok", 20, 520));
        assert!(
            book.may_ask("tok", 520, 1_000),
            "a lost answer stops at its deadline"
        );
        // Opening clears the mark as well.
        book.open("tok", "a", usd("1"), 2, 100, None);
        assert!(book.may_ask("tok", 530, 1_000));
    }

    #[test]
    fn a_token_in_use_asks_ahead_and_spends_the_next_lease_when_the_live_one_runs_out() {
        let mut book = LeaseBook::default();
        let first = book.open("tok", "a", usd("1"), 2, 1_000, Some(template()));
        assert!(book.renewals(5, 500).is_empty(), "one call: not in use yet");
        let second = book.take("tok", usd("1"), 10).unwrap();
        let due = book.renewals(20, 500);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].token_id, "tok");
        assert_eq!(due[0].request.token, "bvt_secret");
        assert_eq!(due[0].max_age_ms, 250);
        assert!(book.renewals(30, 500).is_empty(), "asked already");
        assert!(
            !book.may_ask("tok", 30, 530),
            "calls reserve alone meanwhile"
        );
        book.renewed("tok", "b", usd("1"), 2, 1_200);
        assert!(
            book.renewals(40, 500).is_empty(),
            "one lease ahead is enough"
        );
        // The live lease is used up: the next call spends the lease ahead.
        let third = book.take("tok", usd("1"), 50).unwrap();
        assert_eq!(third.lease, "b");
        for s in [&first, &second] {
            book.end(s, SettleOutcome::Commit);
        }
        let closed = book.take_closed();
        assert_eq!(
            closed.len(),
            1,
            "the used-up lease closes with its last call"
        );
        assert_eq!(
            (closed[0].reservation.as_str(), closed[0].amount),
            ("a", Some(usd("2")))
        );
        assert!(!format!("{book:?}").contains("bvt_"), "no token in Debug");
    }

    #[test]
    fn a_call_answered_late_does_not_clear_the_tick_asking_ahead() {
        let mut book = LeaseBook::default();
        book.open("tok", "a", usd("1"), 4, 2_000, Some(template()));
        book.take("tok", usd("1"), 10).unwrap();
        // A call the lease cannot serve asks for its own; its answer comes after its deadline.
        assert!(book.may_ask("tok", 20, 520));
        assert!(book.renewals(30, 500).is_empty(), "a call is asking");
        assert_eq!(book.renewals(530, 500).len(), 1, "its deadline passed");
        book.answered("tok");
        assert!(
            book.renewals(540, 500).is_empty(),
            "the tick's request is still out: no second one"
        );
        assert!(
            !book.may_ask("tok", 540, 1_040),
            "calls reserve alone meanwhile"
        );
        book.renewed("tok", "b", usd("1"), 4, 2_500);
        assert!(
            book.may_ask("tok", 550, 1_050),
            "answered: calls may ask again"
        );
    }

    #[test]
    fn a_refused_renewal_stops_renewals_until_a_call_opens_a_lease() {
        let mut book = LeaseBook::default();
        book.open("tok", "a", usd("1"), 4, 1_000, Some(template()));
        book.take("tok", usd("1"), 10).unwrap();
        assert_eq!(book.renewals(20, 500).len(), 1);
        book.renewal_failed("tok");
        assert!(book.renewals(30, 500).is_empty());
        book.open("tok", "b", usd("1"), 4, 1_000, Some(template()));
        book.take("tok", usd("1"), 40).unwrap();
        assert_eq!(book.renewals(50, 500).len(), 1);
    }

    #[test]
    fn a_lease_ahead_that_is_never_spent_is_released() {
        let mut book = LeaseBook::default();
        let a = book.open("tok", "a", usd("1"), 4, 100, Some(template()));
        book.end(&a, SettleOutcome::Commit);
        book.renewed("tok", "b", usd("1"), 4, 150);
        book.expire(100);
        assert_eq!(book.take_closed().len(), 1, "a closes at its age");
        book.expire(150);
        let closed = book.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].reservation.as_str(), closed[0].outcome),
            ("b", SettleOutcome::Release)
        );
        assert!(book.is_empty());
    }
}
