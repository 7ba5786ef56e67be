//! Property tests of the spend ledger: random interleavings of reserves, settles, expiry,
//! revocations, clock moves (and, for SQLite, restarts) over up to eight tokens of one
//! capped policy, checked step by step against a brute-force model.
//!
//! The model keeps every reservation with its time, reserved amount, counted amount and
//! state, and recomputes each sum from scratch (no running totals, no windows that prune),
//! so the ledger's incremental bookkeeping is compared with a plain `filter().sum()`.
//!
//! What is asserted, after every step:
//!
//! - **Grants respect every cap.** A fresh grant of `a` is made only when, in the model
//!   before the call, `a <= per_transaction`, `token window + a <= per_window`,
//!   `token lifetime + a <= lifetime` and `policy window + a <= policy_per_window` (each cap
//!   the token's effective one: the policy's, lowered by the token's narrowing). A denial by
//!   a cap names a cap that really would be exceeded, and a request that breaks no cap, by a
//!   live unrevoked token, is granted.
//! - **Over-commits are the only way past a cap.** A commit may report more than was
//!   reserved (the vendor charged more than estimated); the ledger records it and alerts, it
//!   does not clamp. So the invariant on the state is: over every scope (a token's window, a
//!   token's lifetime, the policy's window), `sum(min(counted, reserved)) <= cap`, i.e.
//!   committed + reserved spend is within the cap except for the reported excess of
//!   over-commits; in a scope with no over-commit that is plainly `committed + reserved <= cap`.
//! - **The ledger's totals are the model's.** Each token's window spend, lifetime spend and
//!   still-reserved amount, and the policy's window spend, equal the brute-force sums.
//! - **Settles are idempotent.** A settle's effect is the documented state machine, and the
//!   same settle sent again changes nothing: it reports 0 changes and every total is the same.
//! - **Revocation is final.** Once a token, or a label prefix covering it, is revoked, its
//!   reserves are denied (as revoked, or as expired once it has expired).
//! - **Idempotent retries never count twice.** A reserve with an idempotency key already
//!   used by the token is the same reservation (`replay: true`), and no total moves. The one
//!   exception is a key whose reservation was released: nothing was spent under it and a
//!   commit can no longer land on it, so a retry must be reserved (and capped) afresh rather
//!   than let through uncounted. A key whose reservation is final and older than every window
//!   and the 24-hour retention may have been forgotten, and then a fresh reserve is fine too.
//! - **A key is bound to its request.** The same key with another digest (or a digest on
//!   one side only) is refused as `idempotency_key_reused`, whatever the state of the
//!   reservation holding it, unless that one may have been forgotten.
//! - **A request id belongs to one token**: another token sending it is refused, and the
//!   same request sent again is the same reservation.
//!
//! `Accounts` (the state machine every backend wraps) takes the heavy random search; the
//! same sequences also run, with fewer cases, through the `Store` trait against the memory
//! and SQLite backends, the latter with restarts from disk mixed in, and against two
//! PostgreSQL replicas on one database, switching between them mid-sequence.
//!
//! Case counts: `PROPTEST_CASES` sets the `Accounts` count; the store runs take a tenth of it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridle_core::ledger_api::{ReserveRequest, ReserveResponse, Settle, SettleOutcome};
use bridle_core::money::Usd;
use bridle_core::policy::{Caps, CapsNarrowing, CompiledPolicy, Policy};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use bridle_e2e::postgres::TestDb;
use bridle_ledger::accounts::{
    Accounts, PolicyView, Reservation, ReservationState, RevokeOutcome, RevokeRequest, TokenRecord,
    TokenView, IDEMPOTENCY_RETENTION_MS,
};
use bridle_ledger::clock::{ManualClock, SharedClock};
use bridle_ledger::store::memory::MemoryStore;
use bridle_ledger::store::postgres::PostgresStore;
use bridle_ledger::store::sqlite::SqliteStore;
use bridle_ledger::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

const T0: u64 = 1_800_000_000_000;
const M: i64 = 1_000_000;
const POLICY: &str = "pay";
const MAX_TTL_S: u64 = 2 * 86_400;
const LABELS: [&str; 4] = [
    "acme/a/run-1",
    "acme/a/run-2",
    "acme/b/run-1",
    "other/x/run-1",
];
const PREFIXES: [&str; 5] = ["acme/", "acme/a/", "acme/b/run-1", "other/", "nobody/"];
const WINDOWS_MS: [u64; 4] = [2_000, 60_000, 3_600_000, 86_400_000];
const TTLS_MS: [u64; 4] = [1_000, 300_000, 900_000, 7_200_000];
const TOKEN_TTLS_S: [u64; 3] = [3_600, 6 * 3_600, MAX_TTL_S];

fn cases(default: u32, divisor: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| (n / divisor).max(1))
}

// --- what is generated -------------------------------------------------------------------

#[derive(Clone, Debug)]
struct TokenSpec {
    label: usize,
    /// per_transaction, per_window, lifetime: the token's own narrowing (may be above the
    /// policy's, which must then have no effect).
    narrowing: [Option<i64>; 3],
    issued: bool,
    ttl_s: u64,
}

#[derive(Clone, Debug)]
struct Setup {
    /// per_transaction, per_window, lifetime, policy_per_window.
    caps: [Option<i64>; 4],
    window_ms: u64,
    ttl_ms: u64,
    tokens: Vec<TokenSpec>,
}

#[derive(Clone, Copy, Debug)]
enum SettleAmount {
    /// No amount: commit what was reserved.
    Reserved,
    /// `reserved * k / 4`, k in 0..=4: less than or equal to what was reserved.
    Quarters(i64),
    /// More than was reserved, by this many micro-dollars.
    Over(i64),
}

/// An `Idempotency-Key` and the digest of the request sent under it (few values of each,
/// so that keys are reused, with the same request and with another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    key: u8,
    digest: Option<u8>,
}

fn key(key: u8) -> Option<Key> {
    Some(Key {
        key,
        digest: Some(0),
    })
}

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        token: usize,
        amount: i64,
        key: Option<Key>,
    },
    /// The same request (same id, key and amount) sent again.
    Resend {
        pick: usize,
    },
    /// Another token sending a request id that is already taken.
    Steal {
        pick: usize,
        token: usize,
    },
    Settle {
        /// None: a reservation id the ledger never issued.
        pick: Option<usize>,
        outcome: SettleOutcome,
        amount: SettleAmount,
        replay: bool,
    },
    /// Past the reservation TTL, then the maintenance pass (expire + evict).
    Expire {
        extra_ms: u64,
    },
    Maintain,
    RevokeToken {
        token: usize,
    },
    RevokeLabel {
        prefix: usize,
    },
    Advance {
        ms: u64,
    },
    /// SQLite only (a no-op elsewhere): drop the store and open it again from disk.
    Reopen,
}

fn dollars(max: i64) -> impl Strategy<Value = i64> {
    (0..=max).prop_map(|d| d * M)
}

fn cap() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![1 => Just(None), 3 => dollars(200).prop_map(Some)]
}

fn narrowing_cap() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![2 => Just(None), 1 => dollars(250).prop_map(Some)]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => dollars(60),
        1 => Just(0i64),
        1 => (0i64..=60, prop_oneof![Just(1i64), Just(-1i64)]).prop_map(|(d, e)| (d * M + e).max(0)),
        1 => (61i64..=400).prop_map(|d| d * M),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    let token = (
        0..LABELS.len(),
        [narrowing_cap(), narrowing_cap(), narrowing_cap()],
        any::<bool>(),
        prop::sample::select(TOKEN_TTLS_S.to_vec()),
    )
        .prop_map(|(label, narrowing, issued, ttl_s)| TokenSpec {
            label,
            narrowing,
            issued,
            ttl_s,
        });
    (
        [cap(), cap(), cap(), cap()],
        prop::sample::select(WINDOWS_MS.to_vec()),
        prop::sample::select(TTLS_MS.to_vec()),
        prop::collection::vec(token, 1..=8),
    )
        .prop_map(|(caps, window_ms, ttl_ms, tokens)| Setup {
            caps,
            window_ms,
            ttl_ms,
            tokens,
        })
}

fn op(reopen: bool) -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        Just(SettleOutcome::Commit),
        Just(SettleOutcome::Release),
        Just(SettleOutcome::Hold)
    ];
    let settle_amount = prop_oneof![
        Just(SettleAmount::Reserved),
        (0i64..=4).prop_map(SettleAmount::Quarters),
        prop_oneof![Just(1i64), (1i64..=30).prop_map(|d| d * M)].prop_map(SettleAmount::Over),
    ];
    let advance = prop_oneof![
        4 => 0u64..3_000,
        2 => prop::sample::select(WINDOWS_MS.to_vec()).prop_flat_map(|w| prop_oneof![Just(w - 1), Just(w), Just(w + 1)]),
        1 => prop::sample::select(TTLS_MS.to_vec()),
        1 => 0u64..(3 * 3_600_000),
        1 => Just(IDEMPOTENCY_RETENTION_MS + 1),
    ];
    prop_oneof![
        10 => (0usize..8, amount(), prop::option::weighted(0.5, (0u8..4, prop::option::weighted(0.85, 0u8..2))))
            .prop_map(|(token, amount, key)| Op::Reserve {
                token,
                amount,
                key: key.map(|(key, digest)| Key { key, digest }),
            }),
        2 => any::<usize>().prop_map(|pick| Op::Resend { pick }),
        1 => (any::<usize>(), 0usize..8).prop_map(|(pick, token)| Op::Steal { pick, token }),
        8 => (prop::option::weighted(0.9, any::<usize>()), outcome, settle_amount, prop::bool::weighted(0.2))
            .prop_map(|(pick, outcome, amount, replay)| Op::Settle { pick, outcome, amount, replay }),
        1 => prop_oneof![Just(0u64), Just(1), 0u64..2_000].prop_map(|extra_ms| Op::Expire { extra_ms }),
        1 => Just(Op::Maintain),
        1 => (0usize..8).prop_map(|token| Op::RevokeToken { token }),
        1 => (0..PREFIXES.len()).prop_map(|prefix| Op::RevokeLabel { prefix }),
        4 => advance.prop_map(|ms| Op::Advance { ms }),
        if reopen { 3 } else { 0 } => Just(Op::Reopen),
    ]
}

// --- the ledger under test, behind one synchronous face -----------------------------------

trait Backend {
    fn now_ms(&self) -> u64;
    fn advance(&mut self, ms: u64);
    fn issue(&mut self, record: TokenRecord);
    fn reserve(&mut self, claims: &Claims, req: &ReserveRequest) -> ReserveResponse;
    fn settle(&mut self, s: &Settle) -> usize;
    fn revoke(&mut self, req: RevokeRequest) -> Result<RevokeOutcome, String>;
    fn maintain(&mut self) -> usize;
    fn token(&mut self, id: &str) -> Option<TokenView>;
    fn policy(&mut self) -> PolicyView;
    /// The stored reservation: `None` when the backend cannot show it, `Some(None)` when it
    /// no longer holds it.
    fn reservation(&self, id: &str) -> Option<Option<Reservation>>;
    /// Restarts from disk; false when the backend has no disk.
    fn reopen(&mut self) -> bool;
}

struct AccountsBackend {
    accounts: Accounts,
    now: u64,
}

impl Backend for AccountsBackend {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }
    fn issue(&mut self, record: TokenRecord) {
        self.accounts.issue(record);
    }
    fn reserve(&mut self, claims: &Claims, req: &ReserveRequest) -> ReserveResponse {
        self.accounts.reserve(self.now, claims, req)
    }
    fn settle(&mut self, s: &Settle) -> usize {
        usize::from(self.accounts.settle(self.now, s))
    }
    fn revoke(&mut self, req: RevokeRequest) -> Result<RevokeOutcome, String> {
        self.accounts.revoke(self.now, &req)
    }
    fn maintain(&mut self) -> usize {
        // What both stores' maintain does.
        let n = self.accounts.expire(self.now);
        self.accounts.evict(self.now);
        n
    }
    fn token(&mut self, id: &str) -> Option<TokenView> {
        self.accounts.token_view(self.now, id)
    }
    fn policy(&mut self) -> PolicyView {
        self.accounts.policy_views(self.now).remove(0)
    }
    fn reservation(&self, id: &str) -> Option<Option<Reservation>> {
        Some(self.accounts.reservation(id).cloned())
    }
    fn reopen(&mut self) -> bool {
        false
    }
}

struct StoreBackend<S: Store> {
    rt: tokio::runtime::Runtime,
    store: Option<S>,
    /// A second replica on the same database: `Reopen` switches to it (nothing is
    /// forgotten: the database holds everything).
    spare: Option<S>,
    clock: ManualClock,
    reopen: Option<Box<dyn Fn(SharedClock) -> S>>,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

impl<S: Store> StoreBackend<S> {
    fn s(&self) -> &S {
        self.store.as_ref().unwrap()
    }
}

impl<S: Store> Backend for StoreBackend<S> {
    fn now_ms(&self) -> u64 {
        use bridle_ledger::clock::Clock;
        self.clock.now_ms()
    }
    fn advance(&mut self, ms: u64) {
        self.clock.advance(ms);
    }
    fn issue(&mut self, record: TokenRecord) {
        self.rt.block_on(self.s().issue(record)).unwrap();
    }
    fn reserve(&mut self, claims: &Claims, req: &ReserveRequest) -> ReserveResponse {
        self.rt
            .block_on(self.s().reserve(claims.clone(), req.clone()))
            .unwrap()
    }
    fn settle(&mut self, s: &Settle) -> usize {
        self.rt.block_on(self.s().settle(vec![s.clone()])).unwrap()
    }
    fn revoke(&mut self, req: RevokeRequest) -> Result<RevokeOutcome, String> {
        self.rt.block_on(self.s().revoke(req)).unwrap()
    }
    fn maintain(&mut self) -> usize {
        self.rt.block_on(self.s().maintain()).unwrap()
    }
    fn token(&mut self, id: &str) -> Option<TokenView> {
        self.rt.block_on(self.s().token(id.to_string())).unwrap()
    }
    fn policy(&mut self) -> PolicyView {
        self.rt.block_on(self.s().policies()).unwrap().remove(0)
    }
    fn reservation(&self, _id: &str) -> Option<Option<Reservation>> {
        None
    }
    fn reopen(&mut self) -> bool {
        if self.spare.is_some() {
            std::mem::swap(&mut self.store, &mut self.spare);
            return false;
        }
        let Some(open) = &self.reopen else {
            return false;
        };
        // Dropping the store ends its writer thread; everything answered is on disk.
        self.store = None;
        self.store = Some(open(Arc::new(self.clock.clone())));
        true
    }
}

fn postgres_backend(setup: &Setup) -> StoreBackend<PostgresStore> {
    let clock = ManualClock::at(T0);
    let rt = runtime();
    let db = rt.block_on(TestDb::create());
    let open = || {
        rt.block_on(PostgresStore::open(
            &db.url,
            &[policy(setup)],
            setup.ttl_ms,
            Arc::new(clock.clone()),
        ))
        .unwrap()
    };
    let (active, spare) = (open(), open());
    StoreBackend {
        rt,
        store: Some(active),
        spare: Some(spare),
        clock,
        reopen: None,
        _dir: None,
        _db: Some(db),
    }
}

fn policy(setup: &Setup) -> CompiledPolicy {
    let mut p: Policy = serde_json::from_value(serde_json::json!({
        "name": POLICY, "vendor": "stripe", "secret_env": "S", "max_ttl": "2d",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "POST", "path": "/v1/payment_intents" }],
    }))
    .unwrap();
    let [per_transaction, per_window, lifetime, policy_per_window] =
        setup.caps.map(|c| c.and_then(Usd::from_micros));
    p.caps = Caps {
        per_transaction,
        per_window,
        lifetime,
        policy_per_window,
        window: Some(Duration::from_millis(setup.window_ms)),
        ..Caps::default()
    };
    p.compile().unwrap()
}

fn accounts_backend(setup: &Setup) -> AccountsBackend {
    AccountsBackend {
        accounts: Accounts::new(&[policy(setup)], setup.ttl_ms),
        now: T0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memory_backend(setup: &Setup) -> StoreBackend<MemoryStore> {
    let clock = ManualClock::at(T0);
    StoreBackend {
        rt: runtime(),
        store: Some(MemoryStore::new(
            &[policy(setup)],
            setup.ttl_ms,
            Arc::new(clock.clone()),
        )),
        clock,
        spare: None,
        reopen: None,
        _dir: None,
        _db: None,
    }
}

fn sqlite_backend(setup: &Setup) -> StoreBackend<SqliteStore> {
    let clock = ManualClock::at(T0);
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("ledger.db");
    let policies = vec![policy(setup)];
    let ttl = setup.ttl_ms;
    let open = move |clock: SharedClock| SqliteStore::open(&path, &policies, ttl, clock).unwrap();
    StoreBackend {
        rt: runtime(),
        store: Some(open(Arc::new(clock.clone()))),
        clock,
        spare: None,
        reopen: Some(Box::new(open)),
        _dir: Some(dir),
        _db: None,
    }
}

// --- the model -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Reserved,
    Held,
    Committed,
    Released,
    Expired,
}

impl St {
    fn is_final(self) -> bool {
        matches!(self, St::Committed | St::Released | St::Expired)
    }
    fn ledger(self) -> ReservationState {
        match self {
            St::Reserved => ReservationState::Reserved,
            St::Held => ReservationState::Held,
            St::Committed => ReservationState::Committed,
            St::Released => ReservationState::Released,
            St::Expired => ReservationState::Expired,
        }
    }
}

#[derive(Clone, Debug)]
struct MRes {
    id: String,
    token: usize,
    at_ms: u64,
    reserved: i64,
    counted: i64,
    state: St,
    key: Option<Key>,
    /// Left behind by a restart: too old to be loaded again, so nothing can change it.
    forgotten: bool,
}

struct Model {
    setup: Setup,
    claims: Vec<Claims>,
    /// Per token: per_transaction, per_window, lifetime; then the policy's aggregate.
    token_caps: Vec<[Option<i64>; 3]>,
    policy_cap: Option<i64>,
    res: Vec<MRes>,
    by_id: HashMap<String, usize>,
    /// (token, key) -> the reservation holding the key (the latest made under it).
    keys: HashMap<(usize, u8), usize>,
    revoked: Vec<bool>,
    /// The ledger's record of the token says revoked: it knew the token when revoking it.
    revoked_record: Vec<bool>,
    /// The ledger has a record of the token (issued, or seen at a reserve).
    known: Vec<bool>,
    next_request: u64,
    keep_ms: u64,
}

#[derive(Debug)]
enum Expect {
    Fresh,
    Replay(String),
    Denied(Vec<Reason>),
}

fn lower(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a < b { a } else { b }),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Model {
    fn new(setup: &Setup) -> Model {
        let claims: Vec<Claims> = setup
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| Claims {
                v: 1,
                id: format!("tok_{i}"),
                policy: POLICY.into(),
                vendor: Vendor::Stripe,
                iat: T0 / 1000,
                exp: T0 / 1000 + t.ttl_s,
                label: LABELS[t.label].into(),
                endpoints: None,
                merchants: None,
                caps: CapsNarrowing {
                    per_transaction: t.narrowing[0].and_then(Usd::from_micros),
                    per_window: t.narrowing[1].and_then(Usd::from_micros),
                    lifetime: t.narrowing[2].and_then(Usd::from_micros),
                },
            })
            .collect();
        let token_caps = setup
            .tokens
            .iter()
            .map(|t| {
                [
                    lower(setup.caps[0], t.narrowing[0]),
                    lower(setup.caps[1], t.narrowing[1]),
                    lower(setup.caps[2], t.narrowing[2]),
                ]
            })
            .collect();
        Model {
            claims,
            token_caps,
            policy_cap: setup.caps[3],
            res: Vec::new(),
            by_id: HashMap::new(),
            keys: HashMap::new(),
            revoked: vec![false; setup.tokens.len()],
            revoked_record: vec![false; setup.tokens.len()],
            known: setup.tokens.iter().map(|t| t.issued).collect(),
            next_request: 1,
            keep_ms: setup
                .window_ms
                .max(IDEMPOTENCY_RETENTION_MS)
                .max(setup.ttl_ms),
            setup: setup.clone(),
        }
    }

    fn in_window(&self, r: &MRes, now: u64) -> bool {
        r.at_ms > now.saturating_sub(self.setup.window_ms)
    }

    /// May the ledger have forgotten this reservation (final, and older than anything needs)?
    fn evictable(&self, r: &MRes, now: u64) -> bool {
        r.forgotten || (r.state.is_final() && r.at_ms < now.saturating_sub(self.keep_ms))
    }

    fn sum(&self, f: impl Fn(&MRes) -> bool, v: impl Fn(&MRes) -> i64) -> i64 {
        self.res.iter().filter(|r| f(r)).map(v).sum()
    }

    fn token_window(&self, t: usize, now: u64) -> i64 {
        self.sum(|r| r.token == t && self.in_window(r, now), |r| r.counted)
    }

    fn token_lifetime(&self, t: usize) -> i64 {
        self.sum(|r| r.token == t, |r| r.counted)
    }

    fn policy_window(&self, now: u64) -> i64 {
        self.sum(|r| self.in_window(r, now), |r| r.counted)
    }

    fn expired(&self, t: usize, now: u64) -> bool {
        now / 1000 >= self.claims[t].exp
    }

    /// The caps a fresh reservation of `amount` by token `t` would break, now.
    fn broken_caps(&self, t: usize, amount: i64, now: u64) -> Vec<Reason> {
        let [ptx, pw, lt] = self.token_caps[t];
        let mut broken = Vec::new();
        if ptx.is_some_and(|c| amount > c) {
            broken.push(Reason::CapPerTransaction);
        }
        if pw.is_some_and(|c| self.token_window(t, now) + amount > c) {
            broken.push(Reason::CapWindow);
        }
        if lt.is_some_and(|c| self.token_lifetime(t) + amount > c) {
            broken.push(Reason::CapLifetime);
        }
        if self
            .policy_cap
            .is_some_and(|c| self.policy_window(now) + amount > c)
        {
            broken.push(Reason::CapPolicy);
        }
        broken
    }

    /// Every answer the ledger may give to this reserve.
    fn expect_reserve(
        &self,
        t: usize,
        request_id: &str,
        key: Option<Key>,
        amount: i64,
        now: u64,
    ) -> Vec<Expect> {
        if self.expired(t, now) {
            return vec![Expect::Denied(vec![Reason::TokenExpired])];
        }
        if self.revoked[t] {
            return vec![Expect::Denied(vec![Reason::TokenRevoked])];
        }
        let mut out = Vec::new();
        if let Some((k, &i)) = key.and_then(|k| Some((k, self.keys.get(&(t, k.key))?))) {
            let r = &self.res[i];
            let held_digest = r.key.and_then(|h| h.digest);
            if held_digest != k.digest {
                // Another request under a key already used: refused, never replayed.
                out.push(Expect::Denied(vec![Reason::IdempotencyKeyReused]));
                if !self.evictable(r, now) {
                    return out;
                }
            } else if r.state != St::Released {
                out.push(Expect::Replay(r.id.clone()));
                if !self.evictable(r, now) {
                    return out;
                }
            }
        }
        if let Some(&i) = self.by_id.get(request_id) {
            // Resend and Steal only pick reservations the ledger still holds.
            let r = &self.res[i];
            out.push(if r.token == t {
                Expect::Replay(r.id.clone())
            } else {
                Expect::Denied(vec![Reason::Internal])
            });
            return out;
        }
        let broken = self.broken_caps(t, amount, now);
        out.push(if broken.is_empty() {
            Expect::Fresh
        } else {
            Expect::Denied(broken)
        });
        out
    }

    /// Reservations left unsettled for the whole TTL expire into spend: how many.
    fn expire(&mut self, now: u64) -> usize {
        let cutoff = now.saturating_sub(self.setup.ttl_ms);
        let mut n = 0;
        for r in &mut self.res {
            if !r.forgotten && r.state == St::Reserved && r.at_ms <= cutoff {
                r.state = St::Expired;
                n += 1;
            }
        }
        n
    }

    /// Applies a settle to the model: whether it changes the reservation.
    fn settle(&mut self, s: &Settle) -> bool {
        let Some(&i) = self.by_id.get(&s.reservation) else {
            return false;
        };
        let r = &mut self.res[i];
        if r.forgotten || r.state.is_final() {
            return false;
        }
        let (state, counted) = match (s.outcome, s.replay, r.state) {
            (SettleOutcome::Commit, _, _) => {
                (St::Committed, s.amount.map_or(r.reserved, |a| a.micros()))
            }
            (SettleOutcome::Release, false, _) => (St::Released, 0),
            (SettleOutcome::Release, true, _) => return false,
            (SettleOutcome::Hold, _, St::Reserved) => (St::Held, r.reserved),
            (SettleOutcome::Hold, _, _) => return false,
        };
        r.state = state;
        r.counted = counted;
        true
    }
}

/// Everything observable about spend: each token's view (if the ledger has one) and the
/// policy's.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tokens: Vec<Option<TokenView>>,
    policy: PolicyView,
}

fn observe<B: Backend>(b: &mut B, m: &Model) -> Snapshot {
    Snapshot {
        tokens: m.claims.iter().map(|c| b.token(&c.id)).collect(),
        policy: b.policy(),
    }
}

/// The same snapshot, ignoring tokens the first had no view of (a reserve records a token
/// it has not seen before, even when it then refuses).
fn same_spend(before: &Snapshot, after: &Snapshot) -> bool {
    before.policy == after.policy
        && before
            .tokens
            .iter()
            .zip(&after.tokens)
            .all(|(b, a)| b.is_none() || b == a)
}

fn usd(micros: i64) -> Usd {
    Usd::from_micros(micros).unwrap()
}

/// The state invariants, checked against the ledger's own views.
fn check<B: Backend>(b: &mut B, m: &Model) -> Result<(), TestCaseError> {
    let now = b.now_ms();
    // Caps: sum(min(counted, reserved)) within every cap, over every scope.
    let floor = |r: &MRes| r.counted.min(r.reserved);
    for t in 0..m.claims.len() {
        let [_, pw, lt] = m.token_caps[t];
        if let Some(cap) = pw {
            let s = m.sum(|r| r.token == t && m.in_window(r, now), floor);
            prop_assert!(s <= cap, "token {t} window: {s} over cap {cap}");
        }
        if let Some(cap) = lt {
            let s = m.sum(|r| r.token == t, floor);
            prop_assert!(s <= cap, "token {t} lifetime: {s} over cap {cap}");
        }
    }
    if let Some(cap) = m.policy_cap {
        let s = m.sum(|r| m.in_window(r, now), floor);
        prop_assert!(s <= cap, "policy window: {s} over cap {cap}");
    }
    // The ledger's totals are the model's sums.
    for (t, c) in m.claims.iter().enumerate() {
        let view = b.token(&c.id);
        if let Some(v) = &view {
            prop_assert_eq!(
                v.spend.lifetime,
                usd(m.token_lifetime(t)),
                "token {} lifetime",
                t
            );
        }
        if m.expired(t, now) {
            // Expired tokens may be forgotten in memory (SQLite still reads their lifetime).
            continue;
        }
        prop_assert_eq!(view.is_some(), m.known[t], "token {} known", t);
        let Some(v) = view else { continue };
        let status = if m.revoked_record[t] {
            "revoked"
        } else {
            "active"
        };
        prop_assert_eq!(v.status, status, "token {} status", t);
        prop_assert_eq!(
            v.spend.window,
            usd(m.token_window(t, now)),
            "token {} window",
            t
        );
        let open = m.sum(
            |r| r.token == t && m.in_window(r, now) && matches!(r.state, St::Reserved | St::Held),
            |r| r.counted,
        );
        prop_assert_eq!(v.spend.reserved, usd(open), "token {} reserved", t);
        let caps = m.token_caps[t];
        prop_assert_eq!(
            [
                v.effective_caps.per_transaction,
                v.effective_caps.per_window,
                v.effective_caps.lifetime,
                v.effective_caps.policy_per_window
            ],
            [caps[0], caps[1], caps[2], m.policy_cap].map(|c| c.map(usd)),
            "token {} effective caps",
            t
        );
    }
    let p = b.policy();
    prop_assert_eq!(p.window_spend, usd(m.policy_window(now)), "policy window");
    // Each reservation the ledger shows is the model's.
    for r in &m.res {
        if let Some(stored) = b.reservation(&r.id) {
            match stored {
                Some(s) => {
                    prop_assert_eq!(
                        (s.state, s.counted, s.reserved, s.at_ms),
                        (r.state.ledger(), r.counted, r.reserved, r.at_ms),
                        "reservation {}",
                        &r.id
                    );
                }
                None => prop_assert!(m.evictable(r, now), "reservation {} lost", &r.id),
            }
        }
    }
    Ok(())
}

fn request(id: String, amount: i64, key: Option<Key>) -> ReserveRequest {
    ReserveRequest {
        token: String::new(),
        request_id: id,
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        merchant: None,
        amount: usd(amount),
        detail: String::new(),
        idempotency_key: key.map(|k| format!("key-{}", k.key)),
        digest: key.and_then(|k| k.digest).map(|d| format!("{d:064x}")),
        lease_calls: None,
    }
}

/// Sends one reserve and checks the answer against every answer the model allows.
fn do_reserve<B: Backend>(
    b: &mut B,
    m: &mut Model,
    t: usize,
    id: String,
    key: Option<Key>,
    amount: i64,
    restarted: bool,
) -> Result<(), TestCaseError> {
    let now = b.now_ms();
    let allowed = m.expect_reserve(t, &id, key, amount, now);
    // Not right after a restart: reading views would prune the windows first.
    let before = (!restarted).then(|| observe(b, m));
    let got = b.reserve(&m.claims[t], &request(id.clone(), amount, key));
    let ok = allowed.iter().any(|e| match (e, &got) {
        (
            Expect::Fresh,
            ReserveResponse::Granted {
                reservation,
                replay: false,
                ..
            },
        ) => *reservation == id,
        (
            Expect::Replay(want),
            ReserveResponse::Granted {
                reservation,
                replay: true,
                ..
            },
        ) => reservation == want,
        (Expect::Denied(reasons), ReserveResponse::Denied { reason, .. }) => {
            reasons.contains(reason)
        }
        _ => false,
    });
    prop_assert!(
        ok,
        "token {} reserve {} of {} (key {:?}): got {:?}, allowed {:?}",
        t,
        id,
        amount,
        key,
        got,
        allowed
    );
    if !matches!(
        got,
        ReserveResponse::Denied {
            reason: Reason::TokenExpired | Reason::TokenRevoked,
            ..
        }
    ) {
        m.known[t] = true;
    }
    match got {
        ReserveResponse::Granted {
            reservation,
            replay: false,
            ..
        } => {
            // The grant-time cap check, spelled out: nothing broken before the call.
            prop_assert!(m.broken_caps(t, amount, now).is_empty());
            let i = m.res.len();
            m.res.push(MRes {
                id: reservation.clone(),
                token: t,
                at_ms: now,
                reserved: amount,
                counted: amount,
                state: St::Reserved,
                key,
                forgotten: false,
            });
            m.by_id.insert(reservation, i);
            if let Some(k) = key {
                m.keys.insert((t, k.key), i);
            }
        }
        ReserveResponse::Granted {
            reservation,
            replay: true,
            ..
        } => {
            let r = &m.res[m.by_id[&reservation]];
            // A key never replays a released reservation: the call would go through with
            // nothing reserved and no way left to commit what it costs. (The same request
            // id again is that request's one reserve call, retransmitted: the filter takes a
            // fresh id for every request and settles only after the reserve was answered.)
            prop_assert!(
                r.state != St::Released || r.id == id,
                "replayed released reservation {}",
                reservation
            );
            if let Some(before) = &before {
                let after = observe(b, m);
                prop_assert!(
                    same_spend(before, &after),
                    "a replay moved spend: {:?} -> {:?}",
                    before,
                    after
                );
            }
        }
        ReserveResponse::Denied { .. } => {
            if let Some(before) = &before {
                let after = observe(b, m);
                prop_assert!(
                    same_spend(before, &after),
                    "a denial moved spend: {:?} -> {:?}",
                    before,
                    after
                );
            }
        }
    }
    Ok(())
}

/// Reservations a resend may pick: ones the ledger certainly still holds.
fn held_by_ledger(m: &Model, now: u64) -> Vec<usize> {
    (0..m.res.len())
        .filter(|&i| !m.evictable(&m.res[i], now))
        .collect()
}

fn run<B: Backend>(b: &mut B, setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::new(setup);
    for (i, c) in m.claims.iter().enumerate() {
        if setup.tokens[i].issued {
            b.issue(TokenRecord::from_claims(c, true));
        }
    }
    let n = m.claims.len();
    let mut restarted = false;
    for op in ops {
        let now = b.now_ms();
        match op {
            Op::Reserve { token, amount, key } => {
                let id = format!("{:032x}", m.next_request);
                m.next_request += 1;
                do_reserve(b, &mut m, token % n, id, *key, *amount, restarted)?;
            }
            Op::Resend { pick } => {
                let candidates = held_by_ledger(&m, now);
                if let Some(&i) = candidates.get(pick % candidates.len().max(1)) {
                    let r = m.res[i].clone();
                    do_reserve(b, &mut m, r.token, r.id, r.key, r.reserved, restarted)?;
                }
            }
            Op::Steal { pick, token } => {
                let candidates = held_by_ledger(&m, now);
                if let Some(&i) = candidates.get(pick % candidates.len().max(1)) {
                    let id = m.res[i].id.clone();
                    do_reserve(b, &mut m, token % n, id, None, M, restarted)?;
                }
            }
            Op::Settle {
                pick,
                outcome,
                amount,
                replay,
            } => {
                let (id, reserved) = match pick {
                    Some(p) if !m.res.is_empty() => {
                        let r = &m.res[p % m.res.len()];
                        (r.id.clone(), r.reserved)
                    }
                    _ => ("f".repeat(32), 10 * M),
                };
                let amount = match amount {
                    SettleAmount::Reserved => None,
                    SettleAmount::Quarters(k) => Some(reserved * k / 4),
                    SettleAmount::Over(extra) => Some(reserved + extra),
                };
                let s = Settle {
                    reservation: id,
                    outcome: *outcome,
                    amount: amount.map(usd),
                    replay: *replay,
                    usage: None,
                };
                let want = m.settle(&s);
                let got = b.settle(&s);
                prop_assert_eq!(got, usize::from(want), "settle {:?}", s);
                // The same settle again: nothing changes, and it says so.
                let before = observe(b, &m);
                let stored = b.reservation(&s.reservation);
                prop_assert_eq!(b.settle(&s), 0, "repeated settle {:?}", s);
                let after = observe(b, &m);
                prop_assert_eq!(&before, &after, "a repeated settle moved spend");
                prop_assert_eq!(stored, b.reservation(&s.reservation));
            }
            Op::Expire { extra_ms } => {
                b.advance(setup.ttl_ms + extra_ms);
                let want = m.expire(b.now_ms());
                prop_assert_eq!(b.maintain(), want, "expired");
            }
            Op::Maintain => {
                let want = m.expire(now);
                prop_assert_eq!(b.maintain(), want, "expired");
            }
            Op::RevokeToken { token } => {
                let t = token % n;
                let out = b.revoke(RevokeRequest {
                    token_id: Some(m.claims[t].id.clone()),
                    label_prefix: None,
                    policy: None,
                });
                prop_assert!(out.is_ok(), "revoke: {:?}", out);
                m.revoked[t] = true;
                m.revoked_record[t] = m.known[t];
            }
            Op::RevokeLabel { prefix } => {
                let p = PREFIXES[*prefix];
                let out = b.revoke(RevokeRequest {
                    token_id: None,
                    label_prefix: Some(p.into()),
                    policy: None,
                });
                prop_assert!(out.is_ok(), "revoke: {:?}", out);
                // Every token here was issued before now, so the prefix covers it.
                for (t, c) in m.claims.iter().enumerate() {
                    if c.label.starts_with(p) {
                        m.revoked[t] = true;
                        m.revoked_record[t] |= m.known[t];
                    }
                }
            }
            Op::Advance { ms } => b.advance(*ms),
            Op::Reopen => {
                if b.reopen() {
                    // What a restart loads: reservations younger than `keep`.
                    let cutoff = now.saturating_sub(m.keep_ms);
                    for r in &mut m.res {
                        if r.at_ms <= cutoff {
                            r.forgotten = true;
                        }
                    }
                    let res = &m.res;
                    m.keys.retain(|_, i| !res[*i].forgotten);
                    // Check after the next command, not before it: reading views prunes the
                    // windows, and the first command after a restart must be right without.
                    restarted = true;
                    continue;
                }
            }
        }
        restarted = false;
        check(b, &m)?;
        // A revocation holds from the moment it is answered.
        if matches!(op, Op::RevokeToken { .. } | Op::RevokeLabel { .. }) {
            for t in 0..n {
                if m.revoked[t] {
                    let id = format!("{:032x}", m.next_request);
                    m.next_request += 1;
                    do_reserve(b, &mut m, t, id, None, 0, false)?;
                }
            }
        }
    }
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        ..Config::default()
    }
}

fn scenario(max_ops: usize, reopen: bool) -> impl Strategy<Value = (Setup, Vec<Op>)> {
    (setup(), prop::collection::vec(op(reopen), 1..max_ops))
}

proptest! {
    #![proptest_config(config(cases(512, 1)))]
    #[test]
    fn accounts_interleavings_keep_every_cap((setup, ops) in scenario(80, false)) {
        run(&mut accounts_backend(&setup), &setup, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(cases(48, 10)))]
    #[test]
    fn memory_store_interleavings_keep_every_cap((setup, ops) in scenario(50, false)) {
        run(&mut memory_backend(&setup), &setup, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(cases(32, 10)))]
    #[test]
    fn sqlite_store_interleavings_keep_every_cap_across_restarts((setup, ops) in scenario(50, true)) {
        run(&mut sqlite_backend(&setup), &setup, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(cases(24, 10)))]
    #[test]
    fn postgres_replicas_interleavings_keep_every_cap((setup, ops) in scenario(50, true)) {
        run(&mut postgres_backend(&setup), &setup, &ops)?;
    }
}

// --- regressions: what these properties found, pinned as fixed sequences ------------------

fn plain_setup(caps: [Option<i64>; 4], window_ms: u64) -> Setup {
    Setup {
        caps,
        window_ms,
        ttl_ms: 900_000,
        tokens: vec![TokenSpec {
            label: 0,
            narrowing: [None; 3],
            issued: true,
            ttl_s: 3_600,
        }],
    }
}

fn on_every_backend(setup: &Setup, ops: &[Op]) {
    run(&mut accounts_backend(setup), setup, ops).unwrap();
    run(&mut memory_backend(setup), setup, ops).unwrap();
    run(&mut sqlite_backend(setup), setup, ops).unwrap();
    run(&mut postgres_backend(setup), setup, ops).unwrap();
}

/// A retry under the idempotency key of a released reservation was granted as a replay of
/// it: the call went on to the vendor with nothing reserved, and its commit (a replay's)
/// landed on a final reservation and was dropped, so the spend was never counted.
#[test]
fn regression_a_released_reservations_key_is_reserved_afresh() {
    let setup = plain_setup([None, Some(10 * M), None, None], 3_600_000);
    let reserve = |amount| Op::Reserve {
        token: 0,
        amount,
        key: key(0),
    };
    on_every_backend(
        &setup,
        &[
            reserve(10 * M),
            Op::Settle {
                pick: Some(0),
                outcome: SettleOutcome::Release,
                amount: SettleAmount::Reserved,
                replay: false,
            },
            // Fresh, and capped: the window has room for $10 again, not for $10 more.
            reserve(10 * M),
            reserve(10 * M),
            Op::Reserve {
                token: 0,
                amount: M,
                key: key(1),
            },
            Op::Reopen,
            reserve(10 * M),
        ],
    );
}

/// After a restart, a settle of a reservation older than the window (still open: the
/// reservation TTL is longer than the window) adjusted the window sum it had never been
/// loaded into: a release took its amount off the window, and the cap let that much more
/// through.
#[test]
fn regression_a_settle_after_a_restart_leaves_windows_it_is_not_in() {
    let setup = plain_setup([None, Some(5 * M), None, Some(5 * M)], 2_000);
    on_every_backend(
        &setup,
        &[
            Op::Reserve {
                token: 0,
                amount: 5 * M,
                key: None,
            },
            Op::Advance { ms: 2_000 },
            Op::Reopen,
            Op::Settle {
                pick: Some(0),
                outcome: SettleOutcome::Release,
                amount: SettleAmount::Reserved,
                replay: false,
            },
            Op::Reserve {
                token: 0,
                amount: 10 * M,
                key: None,
            },
        ],
    );
}
