//! Spend accounting: caps, rolling windows, reservations, idempotency, revocations, alerts.
//!
//! `Accounts` is a plain state machine: every operation takes the time, checks and mutates
//! in one step, and records what changed so a backend can persist it. It is only ever used
//! by one thread at a time (the SQLite backend's writer, or under the memory backend's
//! lock), which is what makes "check every cap and reserve" one atomic step: no amount of
//! concurrency between requests can interleave inside it.
//!
//! Money is integer micro-dollars. A reservation counts against every cap from the moment
//! it is made: reserved, held (the vendor may have acted) and expired reservations count in
//! full, committed ones at their final amount, released ones not at all.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bridle_core::ledger_api::{ReserveRequest, ReserveResponse, Settle, SettleOutcome};
use bridle_core::money::Usd;
use bridle_core::policy::{effective_caps, Caps, CapsNarrowing, CompiledPolicy};
use bridle_core::revocation::{RevocationEntry, RevocationFeed, RevocationKind, RevocationSet};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use serde::{Deserialize, Serialize};

/// How long a finished reservation is remembered for idempotent retries (Stripe keeps
/// idempotency keys for 24 hours).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Alert thresholds, in percent of a cap.
pub const THRESHOLDS: [u8; 2] = [80, 100];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    Held,
    Committed,
    Released,
    /// Never settled: counted in full, as if committed.
    Expired,
}

impl ReservationState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReservationState::Committed | ReservationState::Released | ReservationState::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Held => "held",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ReservationState> {
        [
            ReservationState::Reserved,
            ReservationState::Held,
            ReservationState::Committed,
            ReservationState::Released,
            ReservationState::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub token_id: String,
    pub policy: String,
    pub at_ms: u64,
    /// What was reserved.
    pub reserved: i64,
    /// What counts against caps now.
    pub counted: i64,
    pub state: ReservationState,
    pub idempotency_key: Option<String>,
    pub method: String,
    pub path: String,
    pub detail: String,
    pub settled_at_ms: Option<u64>,
}

/// A token as the ledger knows it: issued here, or first seen at a reserve (minted offline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub policy: String,
    pub vendor: Vendor,
    pub label: String,
    pub iat: u64,
    pub exp: u64,
    pub endpoints: Option<Vec<String>>,
    pub merchants: Option<Vec<String>>,
    pub caps: CapsNarrowing,
    /// Issued by this ledger, rather than minted offline and first seen at a reserve.
    pub issued: bool,
    pub revoked_at: Option<u64>,
}

impl TokenRecord {
    pub fn from_claims(c: &Claims, issued: bool) -> TokenRecord {
        TokenRecord {
            id: c.id.clone(),
            policy: c.policy.clone(),
            vendor: c.vendor,
            label: c.label.clone(),
            iat: c.iat,
            exp: c.exp,
            endpoints: c.endpoints.clone(),
            merchants: c.merchants.clone(),
            caps: c.caps.clone(),
            issued,
            revoked_at: None,
        }
    }
}

/// A rolling window's running sum, over reservations ordered by time.
#[derive(Clone, Debug, Default)]
struct Window {
    /// Reservation ids are shared with the reservation map, not copied per window.
    events: VecDeque<(u64, Arc<str>)>,
    sum: i64,
    /// Reservations at or before this time have left the window.
    floor_ms: u64,
}

impl Window {
    fn prune(&mut self, now_ms: u64, period_ms: u64, reservations: &HashMap<String, Reservation>) {
        let floor = now_ms.saturating_sub(period_ms);
        while let Some((at, id)) = self.events.front() {
            if *at > floor {
                break;
            }
            self.sum -= reservations.get(&**id).map_or(0, |r| r.counted);
            self.events.pop_front();
        }
        self.floor_ms = self.floor_ms.max(floor);
    }

    fn push(&mut self, at_ms: u64, id: &Arc<str>, counted: i64) {
        self.events.push_back((at_ms, id.clone()));
        self.sum += counted;
    }

    /// Applies a change of a reservation's counted amount, if it is still in the window.
    fn adjust(&mut self, at_ms: u64, delta: i64) {
        if at_ms > self.floor_ms {
            self.sum += delta;
        }
    }
}

#[derive(Clone, Debug)]
struct TokenAccount {
    record: TokenRecord,
    lifetime: i64,
    window: Window,
}

#[derive(Clone, Debug)]
struct PolicyAccount {
    policy: CompiledPolicy,
    window: Window,
}

/// Which cap an alert or a denial is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    PerWindow,
    Lifetime,
    PolicyPerWindow,
}

impl CapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CapKind::PerWindow => "per_window",
            CapKind::Lifetime => "lifetime",
            CapKind::PolicyPerWindow => "policy_per_window",
        }
    }

    fn reason(self) -> Reason {
        match self {
            CapKind::PerWindow => Reason::CapWindow,
            CapKind::Lifetime => Reason::CapLifetime,
            CapKind::PolicyPerWindow => Reason::CapPolicy,
        }
    }
}

/// A cap utilization crossing: fired once per threshold per window (per lifetime for
/// lifetime caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub at_ms: u64,
    pub policy: String,
    /// The token, for token caps; absent for the policy aggregate.
    pub token_id: Option<String>,
    pub label: Option<String>,
    pub cap: CapKind,
    pub threshold: u8,
    pub spent: Usd,
    pub limit: Usd,
}

impl Alert {
    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.policy,
            self.token_id.as_deref().unwrap_or("*"),
            self.cap.as_str(),
            self.threshold
        )
    }
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

/// A token's current spend and caps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenView {
    /// The token's claims; its `caps` are its own narrowing.
    #[serde(flatten)]
    pub record: TokenRecord,
    pub status: &'static str,
    /// The caps in force: the policy's, lowered by the token's narrowing.
    pub effective_caps: Caps,
    pub spend: SpendView,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpendView {
    /// Committed and reserved spend in the rolling window.
    pub window: Usd,
    pub lifetime: Usd,
    /// Of which still reserved (not yet settled).
    pub reserved: Usd,
    /// Spend over cap, per capped kind, as a fraction (0.42 = 42%).
    pub utilization: HashMap<&'static str, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub vendor: Vendor,
    pub caps: Caps,
    pub window_spend: Usd,
    pub utilization: Option<f64>,
}

/// A revocation asked for by an admin.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevokeOutcome {
    pub revocation: RevocationEntry,
    /// Known tokens it covers, now marked revoked.
    pub tokens_revoked: usize,
}

#[derive(Debug)]
pub struct Accounts {
    policies: HashMap<String, PolicyAccount>,
    tokens: HashMap<String, TokenAccount>,
    reservations: HashMap<String, Reservation>,
    idempotency: HashMap<(String, String), String>,
    revocation_set: RevocationSet,
    revocation_log: Vec<RevocationEntry>,
    next_seq: u64,
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

fn usd(micros: i64) -> Usd {
    Usd::from_micros(micros.max(0)).unwrap_or_default()
}

impl Accounts {
    pub fn new(policies: &[CompiledPolicy], reservation_ttl_ms: u64) -> Accounts {
        Accounts {
            policies: policies
                .iter()
                .map(|p| {
                    (
                        p.policy.name.clone(),
                        PolicyAccount {
                            policy: p.clone(),
                            window: Window::default(),
                        },
                    )
                })
                .collect(),
            tokens: HashMap::new(),
            reservations: HashMap::new(),
            idempotency: HashMap::new(),
            revocation_set: RevocationSet::default(),
            revocation_log: Vec::new(),
            next_seq: 1,
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
        self.policies.values().map(|p| &p.policy)
    }

    fn window_ms(&self, policy: &str) -> u64 {
        self.policies
            .get(policy)
            .map_or(0, |p| p.policy.policy.caps.window().as_millis() as u64)
    }

    // --- loading ---------------------------------------------------------------------

    /// Restores a token at startup, with its all-time spend.
    pub fn load_token(&mut self, record: TokenRecord, lifetime: i64) {
        self.tokens.insert(
            record.id.clone(),
            TokenAccount {
                record,
                lifetime,
                window: Window::default(),
            },
        );
    }

    /// Restores a reservation at startup. Call in time order, after the tokens.
    pub fn load_reservation(&mut self, r: Reservation, now_ms: u64) {
        let window = self.window_ms(&r.policy);
        let floor = now_ms.saturating_sub(window);
        // What is not loaded into a window has left it: a settle of it must not adjust it.
        if let Some(t) = self.tokens.get_mut(&r.token_id) {
            t.window.floor_ms = t.window.floor_ms.max(floor);
        }
        if let Some(p) = self.policies.get_mut(&r.policy) {
            p.window.floor_ms = p.window.floor_ms.max(floor);
        }
        if r.at_ms > floor {
            let shared_id: Arc<str> = Arc::from(r.id.as_str());
            if let Some(t) = self.tokens.get_mut(&r.token_id) {
                t.window.push(r.at_ms, &shared_id, r.counted);
            }
            if let Some(p) = self.policies.get_mut(&r.policy) {
                p.window.push(r.at_ms, &shared_id, r.counted);
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
            self.open_by_age
                .push_back((r.at_ms, Arc::from(r.id.as_str())));
        }
        self.reservations.insert(r.id.clone(), r);
    }

    /// Revocation sequence numbers never repeat, even after old entries are forgotten.
    pub fn set_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    pub fn load_revocation(&mut self, e: RevocationEntry) {
        self.next_seq = self.next_seq.max(e.seq + 1);
        self.revocation_set.apply(&RevocationFeed {
            seq: e.seq,
            entries: vec![e.clone()],
            reset: false,
        });
        self.revocation_log.push(e);
    }

    pub fn load_alert(&mut self, a: &Alert) {
        let key = a.key();
        let at = self
            .alerts_fired
            .get(&key)
            .copied()
            .unwrap_or(0)
            .max(a.at_ms);
        self.alerts_fired.insert(key, at);
    }

    // --- tokens ----------------------------------------------------------------------

    pub fn issue(&mut self, record: TokenRecord) {
        self.changes.push(Change::Token(record.clone()));
        self.tokens.insert(
            record.id.clone(),
            TokenAccount {
                record,
                lifetime: 0,
                window: Window::default(),
            },
        );
    }

    pub fn has_token(&self, id: &str) -> bool {
        self.tokens.contains_key(id)
    }

    fn revoked(&self, claims: &Claims) -> bool {
        self.revocation_set.revokes(claims)
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
        let deny = |reason: Reason, message: String| ReserveResponse::Denied { reason, message };
        if now_ms / 1000 >= claims.exp {
            return deny(Reason::TokenExpired, "This vault token has expired.".into());
        }
        if self.revoked(claims) {
            return deny(
                Reason::TokenRevoked,
                "This vault token has been revoked.".into(),
            );
        }
        // Only the caps: this runs on every reservation, and a policy is a large thing to copy.
        let Some(policy_caps) = self
            .policies
            .get(&claims.policy)
            .map(|p| p.policy.policy.caps.clone())
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
            self.tokens.insert(
                record.id.clone(),
                TokenAccount {
                    record,
                    lifetime: 0,
                    window: Window::default(),
                },
            );
        }

        if let Some(key) = &req.idempotency_key {
            if let Some(existing) = self.idempotency.get(&(claims.id.clone(), key.clone())) {
                // A released reservation is not replayed: nothing was spent under it and a
                // commit can no longer land on it, so the retry (which the vendor may well
                // execute) is reserved afresh, under every cap, and takes the key over.
                let released = self
                    .reservations
                    .get(existing)
                    .is_some_and(|r| r.state == ReservationState::Released);
                if !released {
                    return ReserveResponse::Granted {
                        reservation: existing.clone(),
                        replay: true,
                    };
                }
            }
        }
        if let Some(existing) = self.reservations.get(&req.request_id) {
            // The same request reserved twice (a resent callout) is the same reservation; an
            // id reused by another token is a bug upstream, and never a way into its spend.
            if existing.token_id != claims.id {
                return deny(
                    Reason::Internal,
                    "This request id belongs to another token's reservation.".into(),
                );
            }
            return ReserveResponse::Granted {
                reservation: req.request_id.clone(),
                replay: true,
            };
        }

        let amount = req.amount.micros();
        let caps = effective_caps(&policy_caps, &claims.caps);
        let window_ms = policy_caps.window().as_millis() as u64;
        self.prune(now_ms, &claims.id, &claims.policy, window_ms);
        let (token_window, lifetime) = self
            .tokens
            .get(&claims.id)
            .map_or((0, 0), |t| (t.window.sum, t.lifetime));
        let policy_window = self
            .policies
            .get(&claims.policy)
            .map_or(0, |p| p.window.sum);

        if let Some(cap) = caps.per_transaction {
            if amount > cap.micros() {
                return deny(
                    Reason::CapPerTransaction,
                    format!(
                        "This ${} call is over the token's ${cap} per-transaction cap.",
                        req.amount
                    ),
                );
            }
        }
        let checks = [
            (CapKind::PerWindow, caps.per_window, token_window),
            (CapKind::Lifetime, caps.lifetime, lifetime),
            (
                CapKind::PolicyPerWindow,
                caps.policy_per_window,
                policy_window,
            ),
        ];
        for (kind, cap, spent) in &checks {
            if let Some(cap) = cap {
                if spent.saturating_add(amount) > cap.micros() {
                    self.alert_on_denial(now_ms, claims, *kind, *spent, *cap, window_ms);
                    let window_name = bridle_core::duration::format(policy_caps.window());
                    let what = match kind {
                        CapKind::PerWindow => {
                            format!("this token's spend in the last {window_name}")
                        }
                        CapKind::Lifetime => "this token's lifetime spend".to_string(),
                        CapKind::PolicyPerWindow => format!(
                            "policy {:?}'s spend in the last {window_name}",
                            claims.policy
                        ),
                    };
                    return deny(
                        kind.reason(),
                        format!(
                            "A ${} call would bring {what} to ${}, over its ${cap} cap (${} already spent or reserved).",
                            req.amount,
                            usd(spent.saturating_add(amount)),
                            usd(*spent),
                        ),
                    );
                }
            }
        }

        let r = Reservation {
            id: req.request_id.clone(),
            token_id: claims.id.clone(),
            policy: claims.policy.clone(),
            at_ms: now_ms,
            reserved: amount,
            counted: amount,
            state: ReservationState::Reserved,
            idempotency_key: req.idempotency_key.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            detail: req.detail.clone(),
            settled_at_ms: None,
        };
        let shared_id: Arc<str> = Arc::from(r.id.as_str());
        if let Some(t) = self.tokens.get_mut(&claims.id) {
            t.window.push(now_ms, &shared_id, amount);
            t.lifetime += amount;
        }
        if let Some(p) = self.policies.get_mut(&claims.policy) {
            p.window.push(now_ms, &shared_id, amount);
        }
        if let Some(key) = &r.idempotency_key {
            self.idempotency
                .insert((claims.id.clone(), key.clone()), r.id.clone());
        }
        self.changes.push(Change::Reserved(r.id.clone()));
        self.open_by_age.push_back((now_ms, shared_id));
        self.reservations.insert(r.id.clone(), r);
        self.check_alerts(now_ms, &claims.id, &claims.policy);
        ReserveResponse::Granted {
            reservation: req.request_id.clone(),
            replay: false,
        }
    }

    fn prune(&mut self, now_ms: u64, token_id: &str, policy: &str, window_ms: u64) {
        if let Some(t) = self.tokens.get_mut(token_id) {
            t.window.prune(now_ms, window_ms, &self.reservations);
        }
        if let Some(p) = self.policies.get_mut(policy) {
            p.window.prune(now_ms, window_ms, &self.reservations);
        }
    }

    /// Sets a reservation's counted amount, keeping every running sum in step.
    fn recount(&mut self, id: &str, counted: i64) {
        let Some(r) = self.reservations.get_mut(id) else {
            return;
        };
        let delta = counted - r.counted;
        r.counted = counted;
        let (at, token_id, policy) = (r.at_ms, r.token_id.clone(), r.policy.clone());
        if let Some(t) = self.tokens.get_mut(&token_id) {
            t.lifetime += delta;
            t.window.adjust(at, delta);
        }
        if let Some(p) = self.policies.get_mut(&policy) {
            p.window.adjust(at, delta);
        }
    }

    /// Applies one settle. Idempotent: a final reservation ignores further settles, and a
    /// replay's settle can confirm but never release the original. Returns whether anything
    /// changed.
    pub fn settle(&mut self, now_ms: u64, s: &Settle) -> bool {
        let Some(r) = self.reservations.get(&s.reservation) else {
            return false;
        };
        let (state, reserved) = (r.state, r.reserved);
        let next = match (state, s.outcome, s.replay) {
            (st, _, _) if st.is_final() => return false,
            (_, SettleOutcome::Commit, _) => ReservationState::Committed,
            (_, SettleOutcome::Release, false) => ReservationState::Released,
            (_, SettleOutcome::Release, true) => return false,
            (ReservationState::Reserved, SettleOutcome::Hold, _) => ReservationState::Held,
            (_, SettleOutcome::Hold, _) => return false,
        };
        let counted = match next {
            ReservationState::Committed => s.amount.map_or(reserved, |a| a.micros()),
            ReservationState::Released => 0,
            _ => reserved,
        };
        self.recount(&s.reservation, counted);
        let Some(r) = self.reservations.get_mut(&s.reservation) else {
            return false;
        };
        r.state = next;
        r.settled_at_ms = Some(now_ms);
        let (token_id, policy) = (r.token_id.clone(), r.policy.clone());
        self.changes.push(Change::Settled(r.id.clone()));
        if counted > reserved {
            // The vendor reports more than was reserved: the estimate was not an upper bound.
            self.check_alerts(now_ms, &token_id, &policy);
        }
        true
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
                if r.state == ReservationState::Reserved {
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
        let longest_window = self
            .policies
            .values()
            .map(|p| p.policy.policy.caps.window().as_millis() as u64)
            .max()
            .unwrap_or(0);
        let keep_ms = longest_window
            .max(IDEMPOTENCY_RETENTION_MS)
            .max(self.reservation_ttl_ms);
        let cutoff = now_ms.saturating_sub(keep_ms);
        for p in self.policies.values_mut() {
            let w = p.policy.policy.caps.window().as_millis() as u64;
            p.window.prune(now_ms, w, &self.reservations);
        }
        for t in self.tokens.values_mut() {
            let w = self
                .policies
                .get(&t.record.policy)
                .map_or(0, |p| p.policy.policy.caps.window().as_millis() as u64);
            t.window.prune(now_ms, w, &self.reservations);
        }
        self.reservations
            .retain(|_, r| !(r.state.is_final() && r.at_ms < cutoff));
        let live = &self.reservations;
        self.idempotency.retain(|_, id| live.contains_key(id));
        let token_cutoff = (now_ms / 1000).saturating_sub(keep_ms / 1000);
        self.tokens.retain(|_, t| t.record.exp > token_cutoff);
        self.revocation_set.prune(now_ms / 1000);
        let now_s = now_ms / 1000;
        self.revocation_log.retain(|e| e.until >= now_s);
    }

    // --- revocation ------------------------------------------------------------------

    /// Revokes one token, every token with a label prefix, or a whole policy. Tokens issued
    /// after this moment are new grants and are not covered.
    pub fn revoke(&mut self, now_ms: u64, req: &RevokeRequest) -> Result<RevokeOutcome, String> {
        let now = now_ms / 1000;
        let longest_ttl = self
            .policies
            .values()
            .map(|p| p.policy.policy.max_ttl.as_secs())
            .max()
            .unwrap_or(0);
        let (kind, value, until) = match (&req.token_id, &req.label_prefix, &req.policy) {
            (Some(id), None, None) => {
                bridle_core::token::check_id(id)?;
                let until = self
                    .tokens
                    .get(id)
                    .map_or(now + longest_ttl, |t| t.record.exp);
                (RevocationKind::Token, id.clone(), until)
            }
            (None, Some(prefix), None) => {
                if prefix.is_empty() {
                    return Err("label_prefix must not be empty; revoke policies one by one to stop everything".into());
                }
                (
                    RevocationKind::LabelPrefix,
                    prefix.clone(),
                    now + longest_ttl,
                )
            }
            (None, None, Some(name)) => {
                let Some(p) = self.policies.get(name) else {
                    return Err(format!("no policy named {name:?}"));
                };
                (
                    RevocationKind::Policy,
                    name.clone(),
                    now + p.policy.policy.max_ttl.as_secs(),
                )
            }
            _ => return Err("give exactly one of token_id, label_prefix and policy".into()),
        };
        let entry = RevocationEntry {
            seq: self.next_seq,
            kind,
            value,
            at: now,
            until,
            at_ms: now_ms,
        };
        self.next_seq += 1;
        self.revocation_set.apply(&RevocationFeed {
            seq: entry.seq,
            entries: vec![entry.clone()],
            reset: false,
        });
        self.revocation_log.push(entry.clone());
        self.changes.push(Change::Revocation(entry.clone()));

        let mut covered = Vec::new();
        for t in self.tokens.values() {
            if t.record.revoked_at.is_some() {
                continue;
            }
            let c = claims_of(&t.record);
            if self.revocation_set.revokes(&c) {
                covered.push(t.record.id.clone());
            }
        }
        for id in &covered {
            if let Some(t) = self.tokens.get_mut(id) {
                t.record.revoked_at = Some(now);
                self.changes.push(Change::Token(t.record.clone()));
            }
        }
        Ok(RevokeOutcome {
            revocation: entry,
            tokens_revoked: covered.len(),
        })
    }

    pub fn revocations_since(&self, since: u64) -> RevocationFeed {
        let entries: Vec<RevocationEntry> = self
            .revocation_log
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        RevocationFeed {
            seq: self.next_seq - 1,
            entries,
            reset: false,
        }
    }

    // --- alerts ----------------------------------------------------------------------

    fn fire(&mut self, now_ms: u64, alert: Alert, suppress_ms: u64) {
        let key = alert.key();
        if let Some(last) = self.alerts_fired.get(&key) {
            if now_ms.saturating_sub(*last) < suppress_ms {
                return;
            }
        }
        self.alerts_fired.insert(key, now_ms);
        self.changes.push(Change::Alert(alert));
    }

    fn new_alert(
        now_ms: u64,
        policy: &str,
        token: Option<&TokenRecord>,
        cap: CapKind,
        threshold: u8,
        spent: i64,
        limit: Usd,
    ) -> Alert {
        Alert {
            id: format!(
                "{}-{now_ms}-{}-{}-{threshold}",
                token.map_or(policy, |t| t.id.as_str()),
                cap.as_str(),
                policy
            ),
            at_ms: now_ms,
            policy: policy.to_string(),
            token_id: token.map(|t| t.id.clone()),
            label: token.map(|t| t.label.clone()),
            cap,
            threshold,
            spent: usd(spent),
            limit,
        }
    }

    /// Fires the thresholds that current spend has crossed.
    fn check_alerts(&mut self, now_ms: u64, token_id: &str, policy: &str) {
        let Some(p) = self.policies.get(policy) else {
            return;
        };
        let window_ms = p.policy.policy.caps.window().as_millis() as u64;
        let policy_caps = p.policy.policy.caps.clone();
        let policy_spent = p.window.sum;
        let Some(t) = self.tokens.get(token_id) else {
            return;
        };
        let caps = effective_caps(&policy_caps, &t.record.caps);
        let record = t.record.clone();
        let candidates = [
            (
                CapKind::PerWindow,
                caps.per_window,
                t.window.sum,
                Some(&record),
                window_ms,
            ),
            (
                CapKind::Lifetime,
                caps.lifetime,
                t.lifetime,
                Some(&record),
                u64::MAX,
            ),
            (
                CapKind::PolicyPerWindow,
                caps.policy_per_window,
                policy_spent,
                None,
                window_ms,
            ),
        ];
        let mut fired = Vec::new();
        for (kind, cap, spent, token, suppress) in candidates {
            let Some(cap) = cap else { continue };
            for threshold in THRESHOLDS {
                // spent / cap >= threshold%, in integers.
                if i128::from(spent) * 100 >= i128::from(cap.micros()) * i128::from(threshold)
                    && cap.micros() > 0
                {
                    fired.push((
                        Accounts::new_alert(now_ms, policy, token, kind, threshold, spent, cap),
                        suppress,
                    ));
                }
            }
        }
        for (a, suppress) in fired {
            self.fire(now_ms, a, suppress);
        }
    }

    /// A refusal by a cap means the cap is reached: its 100% alert fires.
    fn alert_on_denial(
        &mut self,
        now_ms: u64,
        claims: &Claims,
        kind: CapKind,
        spent: i64,
        cap: Usd,
        window_ms: u64,
    ) {
        let record = self.tokens.get(&claims.id).map(|t| t.record.clone());
        let token = if kind == CapKind::PolicyPerWindow {
            None
        } else {
            record.as_ref()
        };
        let alert = Accounts::new_alert(now_ms, &claims.policy, token, kind, 100, spent, cap);
        let suppress = if kind == CapKind::Lifetime {
            u64::MAX
        } else {
            window_ms
        };
        self.fire(now_ms, alert, suppress);
    }

    // --- views -----------------------------------------------------------------------

    pub fn token_view(&mut self, now_ms: u64, id: &str) -> Option<TokenView> {
        let policy = self.tokens.get(id)?.record.policy.clone();
        let window_ms = self.window_ms(&policy);
        self.prune(now_ms, id, &policy, window_ms);
        let t = self.tokens.get(id)?;
        let policy_caps = self
            .policies
            .get(&policy)
            .map(|p| p.policy.policy.caps.clone())
            .unwrap_or_default();
        let caps = effective_caps(&policy_caps, &t.record.caps);
        let reserved: i64 = t
            .window
            .events
            .iter()
            .filter_map(|(_, rid)| self.reservations.get(&**rid))
            .filter(|r| matches!(r.state, ReservationState::Reserved | ReservationState::Held))
            .map(|r| r.counted)
            .sum();
        let mut utilization = HashMap::new();
        let ratio = |spent: i64, cap: Option<Usd>| {
            cap.filter(|c| c.micros() > 0)
                .map(|c| spent as f64 / c.micros() as f64)
        };
        if let Some(u) = ratio(t.window.sum, caps.per_window) {
            utilization.insert("per_window", u);
        }
        if let Some(u) = ratio(t.lifetime, caps.lifetime) {
            utilization.insert("lifetime", u);
        }
        let status = token_status(&t.record, now_ms / 1000);
        Some(TokenView {
            record: t.record.clone(),
            status,
            effective_caps: caps,
            spend: SpendView {
                window: usd(t.window.sum),
                lifetime: usd(t.lifetime),
                reserved: usd(reserved),
                utilization,
            },
        })
    }

    pub fn token_ids(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }

    pub fn policy_views(&mut self, now_ms: u64) -> Vec<PolicyView> {
        let mut out = Vec::new();
        for p in self.policies.values_mut() {
            let w = p.policy.policy.caps.window().as_millis() as u64;
            p.window.prune(now_ms, w, &self.reservations);
            let caps = p.policy.policy.caps.clone();
            out.push(PolicyView {
                name: p.policy.policy.name.clone(),
                vendor: p.policy.policy.vendor,
                utilization: caps
                    .policy_per_window
                    .filter(|c| c.micros() > 0)
                    .map(|c| p.window.sum as f64 / c.micros() as f64),
                caps,
                window_spend: usd(p.window.sum),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn reservation(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id)
    }
}

pub fn token_status(r: &TokenRecord, now_s: u64) -> &'static str {
    if r.revoked_at.is_some() {
        "revoked"
    } else if now_s >= r.exp {
        "expired"
    } else {
        "active"
    }
}

fn claims_of(r: &TokenRecord) -> Claims {
    Claims {
        v: bridle_core::token::CLAIMS_VERSION,
        id: r.id.clone(),
        policy: r.policy.clone(),
        vendor: r.vendor,
        iat: r.iat,
        exp: r.exp,
        label: r.label.clone(),
        endpoints: r.endpoints.clone(),
        merchants: r.merchants.clone(),
        caps: r.caps.clone(),
    }
}
