//! The accounts under one lock, nothing persisted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bridle_core::ledger_api::{AuditRecord, ReserveRequest, ReserveResponse, Settle};
use bridle_core::policy::CompiledPolicy;
use bridle_core::revocation::RevocationFeed;
use bridle_core::token::Claims;

use super::{
    AuditPage, AuditQuery, OutboxAlert, Store, StoreError, StoreResult, TokenQuery, ALERT_LEASE_MS,
};
use crate::accounts::{
    Accounts, Change, PolicyView, RevokeOutcome, RevokeRequest, TokenRecord, TokenView,
};
use crate::clock::SharedClock;

struct Outbox {
    alert: OutboxAlert,
    next_attempt_ms: u64,
    done: bool,
}

struct Inner {
    accounts: Accounts,
    audit: BTreeMap<(u64, String), AuditRecord>,
    audit_ids: HashMap<String, u64>,
    outbox: Vec<Outbox>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: SharedClock,
}

impl MemoryStore {
    pub fn new(
        policies: &[CompiledPolicy],
        reservation_ttl_ms: u64,
        clock: SharedClock,
    ) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner {
                accounts: Accounts::new(policies, reservation_ttl_ms),
                audit: BTreeMap::new(),
                audit_ids: HashMap::new(),
                outbox: Vec::new(),
            }),
            clock,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner, u64) -> T) -> StoreResult<T> {
        let now = self.clock.now_ms();
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError("memory store lock poisoned".into()))?;
        let out = f(&mut inner, now);
        for change in inner.accounts.take_changes() {
            if let Change::Alert(alert) = change {
                let at = alert.at_ms;
                inner.outbox.push(Outbox {
                    alert: OutboxAlert { alert, attempts: 0 },
                    next_attempt_ms: at,
                    done: false,
                });
            }
        }
        Ok(out)
    }
}

impl Store for MemoryStore {
    async fn issue(&self, record: TokenRecord) -> StoreResult<()> {
        self.with(|i, _| i.accounts.issue(record))
    }

    async fn reserve(
        &self,
        claims: Claims,
        request: ReserveRequest,
    ) -> StoreResult<ReserveResponse> {
        self.with(|i, now| i.accounts.reserve(now, &claims, &request))
    }

    async fn settle(&self, settles: Vec<Settle>) -> StoreResult<usize> {
        self.with(|i, now| settles.iter().filter(|s| i.accounts.settle(now, s)).count())
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<usize> {
        self.with(|i, _| {
            let mut added = 0;
            for r in records {
                if i.audit_ids.contains_key(&r.id) {
                    continue;
                }
                i.audit_ids.insert(r.id.clone(), r.at_ms);
                i.audit.insert((r.at_ms, r.id.clone()), r);
                added += 1;
            }
            added
        })
    }

    async fn revoke(&self, request: RevokeRequest) -> StoreResult<Result<RevokeOutcome, String>> {
        self.with(|i, now| i.accounts.revoke(now, &request))
    }

    async fn revocations(&self, since: u64) -> StoreResult<RevocationFeed> {
        self.with(|i, _| i.accounts.revocations_since(since))
    }

    async fn token(&self, id: String) -> StoreResult<Option<TokenView>> {
        self.with(|i, now| i.accounts.token_view(now, &id))
    }

    async fn tokens(&self, query: TokenQuery) -> StoreResult<Vec<TokenView>> {
        self.with(|i, now| {
            let out: Vec<TokenView> = i
                .accounts
                .token_ids()
                .into_iter()
                .filter_map(|id| i.accounts.token_view(now, &id))
                .filter(|v| query.matches(v))
                .collect();
            query.page(out)
        })
    }

    async fn policies(&self) -> StoreResult<Vec<PolicyView>> {
        self.with(|i, now| i.accounts.policy_views(now))
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<AuditPage> {
        self.with(|i, _| {
            let limit = query.page_size();
            let matching: Vec<AuditRecord> = i
                .audit
                .values()
                .filter(|r| query.matches(r))
                .take(limit + 1)
                .cloned()
                .collect();
            AuditPage::from_sorted(matching, limit)
        })
    }

    async fn maintain(&self) -> StoreResult<usize> {
        self.with(|i, now| {
            let expired = i.accounts.expire(now);
            i.accounts.evict(now);
            expired
        })
    }

    async fn due_alerts(&self, limit: usize) -> StoreResult<Vec<OutboxAlert>> {
        self.with(|i, now| {
            i.outbox
                .iter_mut()
                .filter(|o| !o.done && o.next_attempt_ms <= now)
                .take(limit)
                .map(|o| {
                    o.next_attempt_ms = now.saturating_add(ALERT_LEASE_MS);
                    o.alert.clone()
                })
                .collect()
        })
    }

    async fn alert_attempted(
        &self,
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
    ) -> StoreResult<()> {
        self.with(|i, _| {
            if let Some(o) = i.outbox.iter_mut().find(|o| o.alert.alert.id == id) {
                o.alert.attempts += 1;
                match (delivered, next_attempt_ms) {
                    (false, Some(next)) => o.next_attempt_ms = next,
                    _ => o.done = true,
                }
            }
        })
    }

    async fn health(&self) -> StoreResult<()> {
        self.with(|_, _| ())
    }
}
