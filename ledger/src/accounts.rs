//! The spend accounts as one state machine: every operation takes the time, checks and
//! mutates in one step, and records what changed so that a backend can persist it.
//!
//! It is only ever used by one thread at a time, which is what makes "check every cap and
//! reserve" one atomic step: the SQLite backend's writer owns one for the process's life,
//! the memory backend keeps one under a lock, and the PostgreSQL backend builds one per
//! batch from rows it has locked, runs the batch through it, and writes back what changed.
//! The rules themselves live in their own modules ([`crate::caps`], [`crate::window`],
//! [`crate::idempotency`], [`crate::revocations`], [`crate::cap_alerts`],
//! [`crate::views`], and the settle rule in `bridle_core::settlement`); this file only
//! keeps the state they apply to.
//!
//! Money is integer micro-dollars. A reservation counts against every cap from the moment
//! it is made: reserved, held (the vendor may have acted) and expired reservations count in
//! full, committed ones at their final amount, released ones not at all.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bridle_core::ledger_api::{ReserveRequest, ReserveResponse, Settle};
use bridle_core::llm::TokenUsage;
use bridle_core::policy::CompiledPolicy;
use bridle_core::revocation::{RevocationEntry, RevocationFeed};
use bridle_core::settlement;
use bridle_core::token::Claims;
use bridle_core::Reason;

use crate::cap_alerts::{self, Firing};
use crate::caps::{self, cap_set, window_span, CapSet, Refusal, Scope, Span};
use crate::idempotency::{self, Repeat};
use crate::policies::Policies;
use crate::revocations::{self, RevocationLog};
use crate::views;
use crate::window::{WindowSum, Windows};

pub use crate::cap_alerts::Alert;
pub use crate::caps::{CapKind, THRESHOLDS};
pub use crate::policies::IDEMPOTENCY_RETENTION_MS;
pub use crate::records::{
    Reservation, ReservationState, RevokeOutcome, RevokeRequest, TokenRecord,
};
pub use crate::views::{token_status, PolicyView, SpendView, TokenView};

#[derive(Clone, Debug)]
struct TokenAccount {
    record: TokenRecord,
    windows: Windows,
    /// Tokens of LLM calls committed at their usage, by class (for views of the memory
    /// backend; the stored backends add up their rows).
    usage: TokenUsage,
}

/// What changed in one operation, for a backend to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Token(TokenRecord),
    /// A new reservation, by id: the backend reads it from the accounts rather than a copy.
    Reserved(String),
    /// A reservation's state or counted amount changed.
    Settled(String),
    Revocation(RevocationEntry),
    Alert(Alert),
}

#[derive(Debug)]
pub struct Accounts {
    policies: Arc<Policies>,
    policy_windows: HashMap<String, Windows>,
    tokens: HashMap<String, TokenAccount>,
    reservations: HashMap<String, Reservation>,
    idempotency: HashMap<(String, String), String>,
    revocations: RevocationLog,
    alerts_fired: HashMap<String, u64>,
    reservation_ttl_ms: u64,
    /// Reservations in the order they were made, so that expiry looks only at the oldest
    /// instead of scanning every reservation each second. Settled ones are skipped on the way.
    open_by_age: VecDeque<(u64, Arc<str>)>,
    /// When memory was last trimmed; eviction walks every token, so it runs once a minute.
    evicted_at_ms: u64,
    changes: Vec<Change>,
}

/// How often `evict` does its full walk; nothing it forgets is needed sooner.
const EVICT_EVERY_MS: u64 = 60_000;

fn deny(reason: Reason, message: impl Into<String>) -> ReserveResponse {
    ReserveResponse::Denied {
        reason,
        message: message.into(),
        retry_after_secs: None,
    }
}

impl Accounts {
    pub fn new(policies: &[CompiledPolicy], reservation_ttl_ms: u64) -> Accounts {
        Accounts::with_policies(Arc::new(Policies::new(policies)), reservation_ttl_ms)
    }

    /// Accounts over policies compiled once and shared (PostgreSQL builds one per batch).
    pub fn with_policies(policies: Arc<Policies>, reservation_ttl_ms: u64) -> Accounts {
        Accounts {
            policy_windows: policies
                .iter()
                .map(|p| (p.policy.policy.name.clone(), Windows::new(&p.policy_spans)))
                .collect(),
            policies,
            tokens: HashMap::new(),
            reservations: HashMap::new(),
            idempotency: HashMap::new(),
            revocations: RevocationLog::default(),
            alerts_fired: HashMap::new(),
            reservation_ttl_ms,
            open_by_age: VecDeque::new(),
            evicted_at_ms: 0,
            changes: Vec::new(),
        }
    }

    /// What changed since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    pub fn policy(&self, name: &str) -> Option<&CompiledPolicy> {
        self.policies.get(name).map(|p| &p.policy)
    }

    pub fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies.iter().map(|p| &p.policy)
    }

    fn token_spans(&self, policy: &str) -> Vec<Span> {
        self.policies
            .get(policy)
            .map(|p| p.token_spans.clone())
            .unwrap_or_default()
    }

    fn new_account(&self, record: TokenRecord) -> TokenAccount {
        TokenAccount {
            windows: Windows::new(&self.token_spans(&record.policy)),
            record,
            usage: TokenUsage::default(),
        }
    }

    // --- loading ---------------------------------------------------------------------

    /// Restores a token at startup, with its all-time spend.
    pub fn load_token(&mut self, record: TokenRecord, lifetime: i64) {
        let mut account = self.new_account(record);
        account.windows.load(
            Span::Ever,
            WindowSum {
                sum: lifetime,
                floor_ms: 0,
            },
        );
        self.tokens.insert(account.record.id.clone(), account);
    }

    /// Restores a reservation at startup. Call in time order, after the tokens.
    pub fn load_reservation(&mut self, r: Reservation, now_ms: u64) {
        let shared_id: Arc<str> = Arc::from(r.id.as_str());
        let windows = [
            self.tokens.get_mut(&r.token_id).map(|t| &mut t.windows),
            self.policy_windows.get_mut(&r.policy),
        ];
        for w in windows.into_iter().flatten() {
            // What is not loaded into a window has left it: a settle must not adjust it.
            w.raise_floors(now_ms);
            for window in w.iter_mut().filter(|w| w.span != Span::Ever) {
                // Loading only re-adds what was counted before: it cannot overflow a sum
                // that held it; saturate rather than refuse to start.
                if window.push(r.at_ms, &shared_id, r.counted).is_err() {
                    window.sum.sum = i64::MAX;
                }
            }
        }
        if let Some(key) = &r.idempotency_key {
            // A released reservation never holds a key another reservation has taken over.
            let k = (r.token_id.clone(), key.clone());
            if r.state != ReservationState::Released || !self.idempotency.contains_key(&k) {
                self.idempotency.insert(k, r.id.clone());
            }
        }
        if r.state == ReservationState::Reserved {
            self.open_by_age.push_back((r.at_ms, shared_id));
        }
        self.reservations.insert(r.id.clone(), r);
    }

    /// Remembers a reservation for lookups (a settle, a retry) without counting it: the
    /// sums it is in were loaded with [`Accounts::load_window`]. Load reservations found by
    /// id first and the holders of idempotency keys last: the last one loaded holds its key.
    pub fn know_reservation(&mut self, r: Reservation) {
        if let Some(key) = &r.idempotency_key {
            self.idempotency
                .insert((r.token_id.clone(), key.clone()), r.id.clone());
        }
        self.reservations.insert(r.id.clone(), r);
    }

    /// Remembers a reservation inside a token's window over `span` whose loaded sum already
    /// counts it, with when it was made, so that a rule can ask what leaves when (the
    /// breaker's `Retry-After`). Call in time order, before [`Accounts::know_reservation`]
    /// of the reservations found by id and of key holders.
    pub fn know_in_window(&mut self, span: Span, r: Reservation) {
        let shared_id: Arc<str> = Arc::from(r.id.as_str());
        if let Some(w) = self
            .tokens
            .get_mut(&r.token_id)
            .and_then(|t| t.windows.get_mut(span))
        {
            w.know(r.at_ms, &shared_id);
        }
        self.know_reservation(r);
    }

    /// Sets one running sum, read from storage already advanced to its floor. A token's
    /// windows need its record first ([`Accounts::load_token`]).
    pub fn load_window(&mut self, scope: Scope, id: &str, span: Span, sum: WindowSum) {
        let windows = match scope {
            Scope::Token => self.tokens.get_mut(id).map(|t| &mut t.windows),
            Scope::Policy => self.policy_windows.get_mut(id),
        };
        if let Some(w) = windows {
            w.load(span, sum);
        }
    }

    /// Every running sum, as it stands: for a backend that stores them.
    pub fn window_sums(&self) -> Vec<(Scope, &str, Span, WindowSum)> {
        let tokens = self.tokens.iter().flat_map(|(id, t)| {
            t.windows
                .iter()
                .map(move |w| (Scope::Token, id.as_str(), w.span, w.sum))
        });
        let policies = self.policy_windows.iter().flat_map(|(name, ws)| {
            ws.iter()
                .map(move |w| (Scope::Policy, name.as_str(), w.span, w.sum))
        });
        tokens.chain(policies).collect()
    }

    /// Revocation sequence numbers never repeat, even after old entries are forgotten.
    pub fn set_next_seq(&mut self, next: u64) {
        self.revocations.set_next_seq(next);
    }

    pub fn load_revocation(&mut self, e: RevocationEntry) {
        self.revocations.load(e);
    }

    pub fn load_alert(&mut self, a: &Alert) {
        self.load_alert_fired(a.key(), a.at_ms);
    }

    /// When an alert key last fired.
    pub fn load_alert_fired(&mut self, key: String, at_ms: u64) {
        let at = self.alerts_fired.get(&key).copied().unwrap_or(0).max(at_ms);
        self.alerts_fired.insert(key, at);
    }

    // --- tokens ----------------------------------------------------------------------

    pub fn issue(&mut self, record: TokenRecord) {
        self.changes.push(Change::Token(record.clone()));
        let account = self.new_account(record);
        self.tokens.insert(account.record.id.clone(), account);
    }

    pub fn has_token(&self, id: &str) -> bool {
        self.tokens.contains_key(id)
    }

    pub fn token_record(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id).map(|t| &t.record)
    }

    fn revoked(&self, claims: &Claims) -> bool {
        self.revocations.revokes(claims)
            || self
                .tokens
                .get(&claims.id)
                .is_some_and(|t| t.record.revoked_at.is_some())
    }

    // --- reserve and settle ----------------------------------------------------------

    /// Checks every cap and reserves, in one step. `claims` are verified by the caller.
    pub fn reserve(
        &mut self,
        now_ms: u64,
        claims: &Claims,
        req: &ReserveRequest,
    ) -> ReserveResponse {
        if now_ms / 1000 >= claims.exp {
            return deny(Reason::TokenExpired, "This vault token has expired.");
        }
        if self.revoked(claims) {
            return deny(Reason::TokenRevoked, "This vault token has been revoked.");
        }
        // Only the caps: this runs on every reservation, and a policy is a large thing to copy.
        let Some((policy_caps, policy_lease)) = self
            .policies
            .get(&claims.policy)
            .map(|p| (p.policy.policy.caps.clone(), p.policy.policy.lease))
        else {
            return deny(
                Reason::TokenPolicyUnknown,
                format!("The ledger does not know policy {:?}.", claims.policy),
            );
        };
        if !self.tokens.contains_key(&claims.id) {
            // Minted offline: the ledger starts accounting for it at its first costed call.
            let record = TokenRecord::from_claims(claims, false);
            self.changes.push(Change::Token(record.clone()));
            let account = self.new_account(record);
            self.tokens.insert(claims.id.clone(), account);
        }
        if let Some(repeat) = self.repeat_of(claims, req) {
            match repeat {
                Repeat::Replay(reservation) => {
                    return ReserveResponse::Granted {
                        reservation,
                        replay: true,
                        leased_calls: None,
                    }
                }
                Repeat::Refuse(reason, message) => return deny(reason, message),
                Repeat::Fresh => {}
            }
        }

        let per_call = req.amount.micros();
        let caps = cap_set(&policy_caps, &claims.caps);
        self.prune(now_ms, &claims.id, &claims.policy);
        let tracked: Vec<i64> = self
            .scopes(&claims.id, &claims.policy)
            .flat_map(|w| w.iter().map(|w| w.sum.sum))
            .collect();
        // A lease is asked for by calls its policy allows one for; never more calls than the
        // policy's, and a policy without leases (changed since the proxy's copy) gets one call.
        let lease_calls = req
            .lease_calls
            .zip(policy_lease)
            .map(|(asked, lease)| asked.min(lease.calls).max(1));
        let checked = caps::check_lease(
            per_call,
            lease_calls.unwrap_or(1),
            &caps,
            &tracked,
            |scope, span| self.sum(scope, &claims.id, &claims.policy, span),
        );
        let calls = match checked {
            Ok(calls) => calls,
            Err(refusal) => {
                let amount = per_call;
                let message = refusal.message(req.amount, &claims.policy, &policy_caps);
                if let Refusal::Over { rule, spent } = refusal {
                    if rule.kind == CapKind::PerShortWindow {
                        return self
                            .breaker_refusal(now_ms, &claims.id, &rule, spent, amount, message);
                    }
                    if let Some(t) = self.tokens.get(&claims.id) {
                        let firing = cap_alerts::on_refusal(now_ms, &t.record, &rule, spent);
                        self.fire(firing);
                    }
                }
                return deny(refusal.reason(), message);
            }
        };
        // Checked: the lease's total fits every sum.
        let amount = per_call.saturating_mul(i64::from(calls));
        let detail = match lease_calls {
            Some(_) => format!(
                "lease of {calls} call(s) at ${} each; first: {}",
                req.amount, req.detail
            ),
            None => req.detail.clone(),
        };

        let r = Reservation {
            id: req.request_id.clone(),
            token_id: claims.id.clone(),
            policy: claims.policy.clone(),
            at_ms: now_ms,
            reserved: amount,
            counted: amount,
            state: ReservationState::Reserved,
            idempotency_key: req.idempotency_key.clone(),
            digest: req.digest.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            detail,
            settled_at_ms: None,
            usage: None,
        };
        let shared_id: Arc<str> = Arc::from(r.id.as_str());
        let mut overflow = false;
        for w in self
            .scopes_mut(&claims.id, &claims.policy)
            .into_iter()
            .flatten()
        {
            for window in w.iter_mut() {
                // Checked above: every tracked sum has room.
                overflow |= window.push(now_ms, &shared_id, amount).is_err();
            }
        }
        if let Some(key) = &r.idempotency_key {
            self.idempotency
                .insert((claims.id.clone(), key.clone()), r.id.clone());
        }
        self.changes.push(Change::Reserved(r.id.clone()));
        self.open_by_age.push_back((now_ms, shared_id));
        self.reservations.insert(r.id.clone(), r);
        if overflow {
            // Unreachable after the check; if it ever happens the sums are saturated, so
            // every later reserve is refused, and this one is too.
            return deny(Reason::Internal, "The ledger's running sums overflowed.");
        }
        self.check_alerts(now_ms, &claims.id, &caps);
        ReserveResponse::Granted {
            reservation: req.request_id.clone(),
            replay: false,
            leased_calls: lease_calls.map(|_| calls),
        }
    }

    /// The spend breaker's 429: when the agent may go on, from what is inside the breaker's
    /// window and when it leaves. No alert: the breaker is for a loop, which would fire one
    /// every window; the refusal and `Retry-After` are the signal.
    fn breaker_refusal(
        &self,
        now_ms: u64,
        token: &str,
        rule: &caps::CapRule,
        spent: i64,
        amount: i64,
        message: String,
    ) -> ReserveResponse {
        let inside = self
            .tokens
            .get(token)
            .and_then(|t| t.windows.get(rule.span))
            .into_iter()
            .flat_map(|w| w.entries())
            .map(|(at, id)| (at, self.reservations.get(id).map_or(0, |r| r.counted)));
        let retry = caps::retry_after_secs(rule, now_ms, spent, amount, inside);
        let message = match retry {
            Some(secs) => format!("{message} It may continue in {secs}s."),
            None => format!("{message} This call alone is over it: waiting will not help."),
        };
        ReserveResponse::Denied {
            reason: rule.kind.reason(),
            message,
            retry_after_secs: retry,
        }
    }

    /// Whether the request repeats an earlier reservation, by key or by request id.
    fn repeat_of(&self, claims: &Claims, req: &ReserveRequest) -> Option<Repeat> {
        if let Some(key) = &req.idempotency_key {
            let held = self
                .idempotency
                .get(&(claims.id.clone(), key.clone()))
                .and_then(|id| self.reservations.get(id));
            if let Some(r) = held {
                let repeat =
                    idempotency::by_key(&r.id, r.state, r.digest.as_deref(), req.digest.as_deref());
                if repeat != Repeat::Fresh {
                    return Some(repeat);
                }
            }
        }
        self.reservations.get(&req.request_id).map(|existing| {
            idempotency::by_request_id(&existing.id, &existing.token_id, &claims.id)
        })
    }

    fn scopes(&self, token: &str, policy: &str) -> impl Iterator<Item = &Windows> {
        self.tokens
            .get(token)
            .map(|t| &t.windows)
            .into_iter()
            .chain(self.policy_windows.get(policy))
    }

    fn scopes_mut(&mut self, token: &str, policy: &str) -> [Option<&mut Windows>; 2] {
        [
            self.tokens.get_mut(token).map(|t| &mut t.windows),
            self.policy_windows.get_mut(policy),
        ]
    }

    fn sum(&self, scope: Scope, token: &str, policy: &str, span: Span) -> i64 {
        match scope {
            Scope::Token => self.tokens.get(token).map_or(0, |t| t.windows.sum(span)),
            Scope::Policy => self.policy_windows.get(policy).map_or(0, |w| w.sum(span)),
        }
    }

    fn prune(&mut self, now_ms: u64, token_id: &str, policy: &str) {
        let reservations = &self.reservations;
        let counted = |id: &str| reservations.get(id).map_or(0, |r| r.counted);
        if let Some(t) = self.tokens.get_mut(token_id) {
            t.windows.prune(now_ms, counted);
        }
        if let Some(p) = self.policy_windows.get_mut(policy) {
            p.prune(now_ms, counted);
        }
    }

    /// Applies one settle. Idempotent: a final reservation ignores further settles, and a
    /// replay's settle can confirm but never release the original. Returns whether anything
    /// changed.
    pub fn settle(&mut self, now_ms: u64, s: &Settle) -> bool {
        let Some(r) = self.reservations.get_mut(&s.reservation) else {
            return false;
        };
        let Some(next) = settlement::settle(r.state, r.reserved, s) else {
            return false;
        };
        // Both amounts are `Usd`s, so the difference cannot overflow.
        let delta = next.counted.saturating_sub(r.counted);
        let over = next.counted > r.reserved;
        r.state = next.state;
        r.counted = next.counted;
        r.settled_at_ms = Some(now_ms);
        // Usage is the vendor's account of a call it answered: kept with a commit only.
        let usage = s
            .usage
            .filter(|_| next.state == ReservationState::Committed);
        r.usage = usage;
        let (at, token_id, policy) = (r.at_ms, r.token_id.clone(), r.policy.clone());
        if let (Some(u), Some(t)) = (usage, self.tokens.get_mut(&token_id)) {
            t.usage.add(&u);
        }
        self.changes.push(Change::Settled(s.reservation.clone()));
        for w in self.scopes_mut(&token_id, &policy).into_iter().flatten() {
            for window in w.iter_mut() {
                // Spent is spent: a sum that cannot hold it saturates, refusing what follows.
                window.sum.add_saturating(at, delta);
            }
        }
        if over {
            // The vendor reports more than was reserved: the estimate was not an upper bound.
            if let Some(caps) = self.caps_of(&token_id) {
                self.check_alerts(now_ms, &token_id, &caps);
            }
        }
        true
    }

    fn caps_of(&self, token_id: &str) -> Option<CapSet> {
        let t = self.tokens.get(token_id)?;
        let p = self.policies.get(&t.record.policy)?;
        Some(cap_set(&p.policy.policy.caps, &t.record.caps))
    }

    /// Reservations never settled within the TTL expire into spend. Returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.reservation_ttl_ms);
        let mut expired = 0;
        while let Some((at_ms, _)) = self.open_by_age.front() {
            if *at_ms > cutoff {
                break;
            }
            let Some((_, id)) = self.open_by_age.pop_front() else {
                break;
            };
            if let Some(r) = self.reservations.get_mut(&*id) {
                if settlement::expires(r.state) {
                    r.state = ReservationState::Expired;
                    r.settled_at_ms = Some(now_ms);
                    self.changes.push(Change::Settled(r.id.clone()));
                    expired += 1;
                }
            }
        }
        expired
    }

    /// Forgets, in memory only, what no window, retry or reservation TTL can still need.
    pub fn evict(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.evicted_at_ms) < EVICT_EVERY_MS {
            return;
        }
        self.evicted_at_ms = now_ms;
        let keep_ms = self.policies.keep_ms(self.reservation_ttl_ms);
        let cutoff = now_ms.saturating_sub(keep_ms);
        let reservations = &self.reservations;
        let counted = |id: &str| reservations.get(id).map_or(0, |r| r.counted);
        for w in self.policy_windows.values_mut() {
            w.prune(now_ms, counted);
        }
        for t in self.tokens.values_mut() {
            t.windows.prune(now_ms, counted);
        }
        self.reservations
            .retain(|_, r| !(r.state.is_final() && r.at_ms < cutoff));
        let live = &self.reservations;
        self.idempotency.retain(|_, id| live.contains_key(id));
        let token_cutoff = (now_ms / 1000).saturating_sub(keep_ms / 1000);
        self.tokens.retain(|_, t| t.record.exp > token_cutoff);
        self.revocations.prune(now_ms / 1000);
    }

    // --- revocation ------------------------------------------------------------------

    /// Revokes one token, every token with a label prefix, or a whole policy. Tokens issued
    /// after this moment are new grants and are not covered.
    pub fn revoke(&mut self, now_ms: u64, req: &RevokeRequest) -> Result<RevokeOutcome, String> {
        let planned = revocations::plan(req, now_ms, &self.policies, |id| {
            self.tokens.get(id).map(|t| t.record.exp)
        })?;
        let entry = self.revocations.add(&planned);
        self.changes.push(Change::Revocation(entry.clone()));
        let now = now_ms / 1000;
        let mut covered = 0;
        for t in self.tokens.values_mut() {
            if t.record.revoked_at.is_none() && self.revocations.revokes(&t.record.claims()) {
                t.record.revoked_at = Some(now);
                self.changes.push(Change::Token(t.record.clone()));
                covered += 1;
            }
        }
        Ok(RevokeOutcome {
            revocation: entry,
            tokens_revoked: covered,
        })
    }

    pub fn revocations_since(&self, since: u64) -> RevocationFeed {
        self.revocations.since(since)
    }

    // --- alerts ----------------------------------------------------------------------

    fn fire(&mut self, firing: Firing) {
        let key = firing.alert.key();
        if firing.is_due(self.alerts_fired.get(&key).copied()) {
            self.alerts_fired.insert(key, firing.alert.at_ms);
            self.changes.push(Change::Alert(firing.alert));
        }
    }

    /// Fires the thresholds that current spend has reached.
    fn check_alerts(&mut self, now_ms: u64, token_id: &str, caps: &CapSet) {
        let Some(t) = self.tokens.get(token_id) else {
            return;
        };
        let policy = t.record.policy.clone();
        let firings = cap_alerts::reached_by(now_ms, &t.record, caps, |scope, span| {
            self.sum(scope, token_id, &policy, span)
        });
        for f in firings {
            self.fire(f);
        }
    }

    // --- views -----------------------------------------------------------------------

    pub fn token_view(&mut self, now_ms: u64, id: &str) -> Option<TokenView> {
        let policy = self.tokens.get(id)?.record.policy.clone();
        self.prune(now_ms, id, &policy);
        let t = self.tokens.get(id)?;
        let policy_caps = self
            .policies
            .get(&policy)
            .map(|p| p.policy.policy.caps.clone())
            .unwrap_or_default();
        let open = t
            .windows
            .get(window_span(&policy_caps))
            .into_iter()
            .flat_map(|w| w.ids())
            .filter_map(|rid| self.reservations.get(rid))
            .filter(|r| r.state.is_open())
            .fold(0i64, |acc, r| acc.saturating_add(r.counted));
        // The oldest spend inside the breaker's window: a released call spent nothing.
        let breaker_oldest = caps::short_span(&policy_caps)
            .and_then(|span| t.windows.get(span))
            .into_iter()
            .flat_map(|w| w.entries())
            .find(|(_, id)| self.reservations.get(*id).is_some_and(|r| r.counted > 0))
            .map(|(at, _)| at);
        Some(views::token_view(
            t.record.clone(),
            &policy_caps,
            |span| t.windows.sum(span),
            open,
            t.usage,
            breaker_oldest,
            now_ms,
        ))
    }

    pub fn token_ids(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }

    pub fn policy_views(&mut self, now_ms: u64) -> Vec<PolicyView> {
        let reservations = &self.reservations;
        let counted = |id: &str| reservations.get(id).map_or(0, |r| r.counted);
        let mut out = Vec::new();
        for p in self.policies.iter() {
            let name = &p.policy.policy.name;
            let sum = match self.policy_windows.get_mut(name) {
                Some(w) => {
                    w.prune(now_ms, counted);
                    w.sum(window_span(&p.policy.policy.caps))
                }
                None => 0,
            };
            out.push(views::policy_view(&p.policy, sum));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn reservation(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id)
    }
}
