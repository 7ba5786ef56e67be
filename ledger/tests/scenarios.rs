//! Storage scenarios, each run against every backend (memory, SQLite, PostgreSQL) by
//! `scenarios!`: caps of every kind, rolling windows, two-phase settles, idempotency (with
//! digests), expiry, revocation, audit, alerts and concurrency. Durability across a reopen
//! is tested below for SQLite and for PostgreSQL (there with two replicas on one database).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

use std::sync::Arc;

use bridle_core::ledger_api::{
    AuditRecord, ReserveRequest, ReserveResponse, Settle, SettleOutcome,
};
use bridle_core::money::Usd;
use bridle_core::policy::{CapsNarrowing, CompiledPolicy, Policy};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use bridle_e2e::postgres::TestDb;
use bridle_ledger::accounts::{CapKind, RevokeRequest, TokenRecord};
use bridle_ledger::clock::{ManualClock, SharedClock};
use bridle_ledger::store::memory::MemoryStore;
use bridle_ledger::store::postgres::PostgresStore;
use bridle_ledger::store::sqlite::SqliteStore;
use bridle_ledger::store::{AuditQuery, Store, TokenQuery};

const T0: u64 = 1_800_000_000_000;
const TTL_MS: u64 = 15 * 60 * 1000;

fn policies() -> Vec<CompiledPolicy> {
    let p: Policy = serde_json::from_value(serde_json::json!({
        "name": "pay", "vendor": "stripe", "secret_env": "S", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "POST", "path": "/v1/payment_intents" }],
        "caps": { "per_transaction": "50", "per_window": "100", "lifetime": "150", "policy_per_window": "250", "window": "1h" },
    }))
    .unwrap();
    // A spend breaker: $1.00 a minute per token, under a $100 daily cap.
    let rate: Policy = serde_json::from_value(serde_json::json!({
        "name": "rate", "vendor": "openai", "secret_env": "S", "max_ttl": "4h",
        "endpoints": [{ "method": "POST", "path": "/v1/chat/completions" }],
        "caps": { "per_window": "100", "per_short_window": "1.00", "short_window": "1m" },
    }))
    .unwrap();
    // The same caps as "pay", spent through leases of up to 8 calls.
    let mut leased = p.clone();
    leased.name = "pay-leased".into();
    leased.lease = serde_json::from_value(serde_json::json!({ "calls": 8 })).unwrap();
    vec![
        p.compile().unwrap(),
        rate.compile().unwrap(),
        leased.compile().unwrap(),
    ]
}

struct Fixture<S> {
    store: Arc<S>,
    clock: ManualClock,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

async fn memory() -> Fixture<MemoryStore> {
    let clock = ManualClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    Fixture {
        store: Arc::new(MemoryStore::new(&policies(), TTL_MS, shared)),
        clock,
        _dir: None,
        _db: None,
    }
}

async fn sqlite() -> Fixture<SqliteStore> {
    let clock = ManualClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&dir.path().join("ledger.db"), &policies(), TTL_MS, shared).unwrap();
    Fixture {
        store: Arc::new(store),
        clock,
        _dir: Some(dir),
        _db: None,
    }
}

async fn postgres() -> Fixture<PostgresStore> {
    let clock = ManualClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    let db = TestDb::create().await;
    let store = PostgresStore::open(&db.url, &policies(), TTL_MS, shared)
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        clock,
        _dir: None,
        _db: Some(db),
    }
}

fn claims(id: &str, label: &str) -> Claims {
    Claims {
        v: 1,
        id: id.into(),
        policy: "pay".into(),
        vendor: Vendor::Stripe,
        iat: T0 / 1000,
        exp: T0 / 1000 + 4 * 3600,
        label: label.into(),
        endpoints: None,
        merchants: None,
        caps: CapsNarrowing::default(),
    }
}

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn req(amount: &str) -> ReserveRequest {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ReserveRequest {
        token: String::new(),
        request_id: format!("{n:032x}"),
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        merchant: None,
        amount: usd(amount),
        detail: format!("${amount}"),
        idempotency_key: None,
        digest: None,
        lease_calls: None,
    }
}

/// A lease of up to `calls` calls of `amount`, for a token of "pay-leased".
async fn lease<S: Store>(s: &S, c: &Claims, amount: &str, calls: u32) -> ReserveResponse {
    let mut r = req(amount);
    r.lease_calls = Some(calls);
    s.reserve(c.clone(), r).await.unwrap()
}

fn leased_calls(r: &ReserveResponse) -> Option<u32> {
    match r {
        ReserveResponse::Granted {
            replay: false,
            leased_calls,
            ..
        } => *leased_calls,
        other => panic!("expected a fresh grant, got {other:?}"),
    }
}

async fn reserve<S: Store>(s: &S, c: &Claims, amount: &str) -> ReserveResponse {
    s.reserve(c.clone(), req(amount)).await.unwrap()
}

fn granted(r: &ReserveResponse) -> String {
    match r {
        ReserveResponse::Granted {
            reservation,
            replay: false,
            ..
        } => reservation.clone(),
        other => panic!("expected a fresh grant, got {other:?}"),
    }
}

fn denied(r: &ReserveResponse) -> Reason {
    match r {
        ReserveResponse::Denied { reason, .. } => *reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

async fn settle<S: Store>(
    s: &S,
    id: &str,
    outcome: SettleOutcome,
    amount: Option<&str>,
    replay: bool,
) -> usize {
    s.settle(vec![Settle {
        reservation: id.into(),
        outcome,
        amount: amount.map(usd),
        replay,
        usage: None,
    }])
    .await
    .unwrap()
}

async fn window_spend<S: Store>(s: &S, id: &str) -> Usd {
    s.token(id.into()).await.unwrap().unwrap().spend.window
}

// --- scenarios ------------------------------------------------------------------------

async fn the_spend_breaker_stops_a_loop_until_its_window_eases<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = Claims {
        policy: "rate".into(),
        vendor: Vendor::Openai,
        ..claims("tok_r", "loop/r")
    };
    // $1.00 a minute: four $0.25 calls ten seconds apart pass, the fifth is refused with
    // when it may go on: once the first call (at 0 s) leaves the window, at 60 s.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(granted(&reserve(s, &a, "0.25").await));
        f.clock.advance(10_000);
    }
    let r = reserve(s, &a, "0.25").await;
    let ReserveResponse::Denied {
        reason,
        retry_after_secs,
        message,
    } = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*reason, Reason::SpendRateLimited);
    assert_eq!(reason.status(), 429);
    assert_eq!(*retry_after_secs, Some(20), "{message}");
    let view = s.token("tok_r".into()).await.unwrap().unwrap();
    let b = view.breaker.unwrap();
    assert_eq!((b.spent, b.cap, b.tripped), (usd("1"), usd("1"), true));
    assert_eq!(b.eases_in_secs, Some(20));
    // A small call fits no better: the breaker counts dollars, not calls.
    assert_eq!(
        denied(&reserve(s, &a, "0.01").await),
        Reason::SpendRateLimited
    );
    // Spend released (the vendor refused the call) leaves the breaker at once...
    settle(s, &ids[3], SettleOutcome::Release, None, false).await;
    granted(&reserve(s, &a, "0.25").await);
    // ...and a commit below the reservation makes room.
    settle(s, &ids[2], SettleOutcome::Commit, Some("0.05"), false).await;
    granted(&reserve(s, &a, "0.20").await);
    assert_eq!(
        denied(&reserve(s, &a, "0.01").await),
        Reason::SpendRateLimited
    );
    // A minute after the first call it has left the window: its $0.25 fits again.
    f.clock.advance(20_001);
    let view = s.token("tok_r".into()).await.unwrap().unwrap();
    let b = view.breaker.unwrap();
    assert_eq!((b.spent, b.tripped), (usd("0.75"), false));
    granted(&reserve(s, &a, "0.25").await);
    // Tokens without a breaker show none.
    granted(&reserve(s, &claims("tok_plain", "x/p"), "1").await);
    assert!(s
        .token("tok_plain".into())
        .await
        .unwrap()
        .unwrap()
        .breaker
        .is_none());
}

async fn token_usage_adds_up_by_class<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_u", "llm/u");
    let usage = |input, cached, output| bridle_core::llm::TokenUsage {
        input,
        cached_input: cached,
        output,
        reasoning: output / 2,
        ..Default::default()
    };
    for (u, outcome) in [
        (usage(100, 20, 50), SettleOutcome::Commit),
        (usage(7, 0, 3), SettleOutcome::Commit),
        // A release carries no usage worth counting: the vendor refused.
        (usage(1000, 0, 1000), SettleOutcome::Release),
    ] {
        let settle = Settle {
            reservation: granted(&reserve(s, &a, "1").await),
            outcome,
            amount: None,
            replay: false,
            usage: Some(u),
        };
        assert_eq!(s.settle(vec![settle.clone()]).await.unwrap(), 1);
        // A repeated settle changes nothing: its usage is not counted twice.
        assert_eq!(s.settle(vec![settle]).await.unwrap(), 0);
    }
    let view = s.token("tok_u".into()).await.unwrap().unwrap();
    assert_eq!(
        (
            view.tokens.input,
            view.tokens.cached_input,
            view.tokens.output,
            view.tokens.reasoning
        ),
        (107, 20, 53, 26)
    );
    // The audit record keeps the model and the usage.
    let mut record = self::record(99, T0, "tok_u", "llm/u");
    record.model = Some("gpt-4o-mini".into());
    record.usage = Some(usage(100, 20, 50));
    record.over_reservation = true;
    s.append_audit(vec![record.clone()]).await.unwrap();
    let page = s
        .audit(AuditQuery {
            token_id: Some("tok_u".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.records, vec![record]);
}

async fn each_cap_kind_refuses_with_its_reason<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_a", "acme/a");
    assert_eq!(
        denied(&reserve(s, &a, "50.01").await),
        Reason::CapPerTransaction
    );
    granted(&reserve(s, &a, "50").await);
    granted(&reserve(s, &a, "50").await);
    let r = reserve(s, &a, "0.01").await;
    assert_eq!(denied(&r), Reason::CapWindow);
    let ReserveResponse::Denied { message, .. } = r else {
        unreachable!()
    };
    assert!(
        message.contains("$100.00 cap") && message.contains("$100.00 already spent"),
        "{message}"
    );
    // An hour later the window is clear, but the lifetime cap ($150) is not.
    f.clock.advance(3_600_001);
    granted(&reserve(s, &a, "50").await);
    assert_eq!(denied(&reserve(s, &a, "1").await), Reason::CapLifetime);
    // The policy aggregate ($250/h) spans tokens: b and c share it with a's $50.
    let (b, c) = (claims("tok_b", "acme/b"), claims("tok_c", "acme/c"));
    granted(&reserve(s, &b, "50").await);
    granted(&reserve(s, &b, "50").await);
    granted(&reserve(s, &c, "50").await);
    granted(&reserve(s, &c, "50").await);
    assert_eq!(
        denied(&reserve(s, &c, "0.01").await),
        Reason::CapWindow,
        "c is at its own cap first"
    );
    assert_eq!(
        denied(&reserve(s, &claims("tok_d", "acme/d"), "0.01").await),
        Reason::CapPolicy
    );
}

async fn token_narrowing_lowers_caps<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let mut c = claims("tok_n", "acme/n");
    c.caps = CapsNarrowing {
        per_transaction: Some(usd("5")),
        per_window: Some(usd("7")),
        lifetime: None,
    };
    assert_eq!(
        denied(&reserve(s, &c, "6").await),
        Reason::CapPerTransaction
    );
    granted(&reserve(s, &c, "5").await);
    assert_eq!(denied(&reserve(s, &c, "2.01").await), Reason::CapWindow);
    granted(&reserve(s, &c, "2").await);
}

async fn settles_move_spend_and_are_idempotent<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_s", "acme/s");
    let r1 = granted(&reserve(s, &a, "40").await);
    let r2 = granted(&reserve(s, &a, "40").await);
    let r3 = granted(&reserve(s, &a, "20").await);
    assert_eq!(window_spend(s, "tok_s").await, usd("100"));
    // 2xx with the actual cost: commit $30 of the $40.
    assert_eq!(
        settle(s, &r1, SettleOutcome::Commit, Some("30"), false).await,
        1
    );
    // 4xx: release.
    assert_eq!(settle(s, &r2, SettleOutcome::Release, None, false).await, 1);
    // 5xx: hold, still counted.
    assert_eq!(settle(s, &r3, SettleOutcome::Hold, None, false).await, 1);
    assert_eq!(window_spend(s, "tok_s").await, usd("50"));
    // Settling again changes nothing, whatever the outcome.
    assert_eq!(settle(s, &r1, SettleOutcome::Release, None, false).await, 0);
    assert_eq!(
        settle(s, &r2, SettleOutcome::Commit, Some("40"), false).await,
        0
    );
    assert_eq!(window_spend(s, "tok_s").await, usd("50"));
    // A held reservation can still be resolved by a later answer.
    assert_eq!(settle(s, &r3, SettleOutcome::Commit, None, false).await, 1);
    assert_eq!(window_spend(s, "tok_s").await, usd("50"));
    // Unknown reservations are ignored.
    assert_eq!(
        settle(s, &"f".repeat(32), SettleOutcome::Commit, None, false).await,
        0
    );
}

async fn idempotency_keys_never_count_twice<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_i", "acme/i");
    let mut first = req("30");
    first.idempotency_key = Some("key-1".into());
    let r = s.reserve(a.clone(), first.clone()).await.unwrap();
    let id = granted(&r);
    for _ in 0..3 {
        let mut retry = req("30");
        retry.idempotency_key = Some("key-1".into());
        assert_eq!(
            s.reserve(a.clone(), retry).await.unwrap(),
            ReserveResponse::Granted {
                reservation: id.clone(),
                replay: true,
                leased_calls: None,
            }
        );
    }
    assert_eq!(window_spend(s, "tok_i").await, usd("30"));
    // A replay's settle can confirm but never release the original.
    assert_eq!(settle(s, &id, SettleOutcome::Release, None, true).await, 0);
    assert_eq!(window_spend(s, "tok_i").await, usd("30"));
    assert_eq!(settle(s, &id, SettleOutcome::Commit, None, true).await, 1);
    // The same key from another token is another reservation.
    let mut other = req("30");
    other.idempotency_key = Some("key-1".into());
    granted(&s.reserve(claims("tok_j", "acme/j"), other).await.unwrap());
    // The same request id resent is the same reservation; from another token, refused.
    let again = s.reserve(a.clone(), first.clone()).await.unwrap();
    assert_eq!(
        again,
        ReserveResponse::Granted {
            reservation: id.clone(),
            replay: true,
            leased_calls: None,
        }
    );
    assert_eq!(
        denied(
            &s.reserve(
                claims("tok_k", "acme/k"),
                ReserveRequest {
                    idempotency_key: None,
                    ..first
                }
            )
            .await
            .unwrap()
        ),
        Reason::Internal
    );
}

/// From issue 12: a key is bound to the request it was first used for, by its digest.
async fn idempotency_keys_are_bound_to_their_request<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_d", "acme/d");
    let keyed = |amount: &str, key: &str, digest: Option<&str>| {
        let mut r = req(amount);
        r.idempotency_key = Some(key.into());
        r.digest = digest.map(|d| d.repeat(64));
        r
    };
    let first = granted(
        &s.reserve(a.clone(), keyed("10", "k1", Some("a")))
            .await
            .unwrap(),
    );
    // The same request again: a replay, counting nothing.
    assert_eq!(
        s.reserve(a.clone(), keyed("10", "k1", Some("a")))
            .await
            .unwrap(),
        ReserveResponse::Granted {
            reservation: first.clone(),
            replay: true,
            leased_calls: None,
        }
    );
    // Another request under the same key, or a digest on one side only: refused.
    for digest in [Some("b"), None] {
        assert_eq!(
            denied(
                &s.reserve(a.clone(), keyed("10", "k1", digest))
                    .await
                    .unwrap()
            ),
            Reason::IdempotencyKeyReused
        );
    }
    let bare = granted(&s.reserve(a.clone(), keyed("5", "k2", None)).await.unwrap());
    assert_eq!(
        denied(
            &s.reserve(a.clone(), keyed("5", "k2", Some("a")))
                .await
                .unwrap()
        ),
        Reason::IdempotencyKeyReused
    );
    assert_eq!(window_spend(s, "tok_d").await, usd("15"));
    // A released key is reserved afresh by the same request, and still refused to another.
    assert_eq!(
        settle(s, &bare, SettleOutcome::Release, None, false).await,
        1
    );
    assert_eq!(
        denied(
            &s.reserve(a.clone(), keyed("5", "k2", Some("c")))
                .await
                .unwrap()
        ),
        Reason::IdempotencyKeyReused
    );
    let again = granted(&s.reserve(a.clone(), keyed("5", "k2", None)).await.unwrap());
    assert_ne!(again, bare);
    assert_eq!(window_spend(s, "tok_d").await, usd("15"));
}

async fn unsettled_reservations_expire_into_spend<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_e", "acme/e");
    let r = granted(&reserve(s, &a, "40").await);
    f.clock.advance(TTL_MS + 1);
    assert_eq!(s.maintain().await.unwrap(), 1);
    assert_eq!(window_spend(s, "tok_e").await, usd("40"));
    // Expired is final: a late release cannot undo it.
    assert_eq!(settle(s, &r, SettleOutcome::Release, None, false).await, 0);
    assert_eq!(window_spend(s, "tok_e").await, usd("40"));
}

async fn revocations_by_id_prefix_and_policy<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    for (id, label) in [
        ("tok_1", "acme/agent-1/run-1"),
        ("tok_2", "acme/agent-1/run-2"),
        ("tok_3", "acme/agent-2/run-1"),
        ("tok_4", "other/x"),
    ] {
        s.issue(TokenRecord::from_claims(&claims(id, label), true))
            .await
            .unwrap();
    }
    let out = s
        .revoke(RevokeRequest {
            token_id: Some("tok_4".into()),
            label_prefix: None,
            policy: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.tokens_revoked, 1);
    assert_eq!(
        denied(&reserve(s, &claims("tok_4", "other/x"), "1").await),
        Reason::TokenRevoked
    );
    let out = s
        .revoke(RevokeRequest {
            token_id: None,
            label_prefix: Some("acme/agent-1/".into()),
            policy: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.tokens_revoked, 2);
    assert_eq!(
        denied(&reserve(s, &claims("tok_1", "acme/agent-1/run-1"), "1").await),
        Reason::TokenRevoked
    );
    granted(&reserve(s, &claims("tok_3", "acme/agent-2/run-1"), "1").await);
    // A token minted offline (never issued here) with a revoked prefix is refused too.
    assert_eq!(
        denied(&reserve(s, &claims("tok_9", "acme/agent-1/run-9"), "1").await),
        Reason::TokenRevoked
    );
    // A token issued after the revocation is a new grant.
    f.clock.advance(2000);
    let mut later = claims("tok_5", "acme/agent-1/run-3");
    later.iat = f.clock_now_s();
    granted(&reserve(s, &later, "1").await);
    // The feed carries everything after `since`, in order.
    let feed = s.revocations(0).await.unwrap();
    assert_eq!(
        feed.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(s.revocations(1).await.unwrap().entries.len(), 1);
    assert_eq!(s.revocations(2).await.unwrap().entries.len(), 0);
    let out = s
        .revoke(RevokeRequest {
            token_id: None,
            label_prefix: None,
            policy: Some("pay".into()),
        })
        .await
        .unwrap()
        .unwrap();
    assert!(out.tokens_revoked >= 2);
    assert_eq!(denied(&reserve(s, &later, "1").await), Reason::TokenRevoked);
    let revoked = s
        .tokens(TokenQuery {
            status: Some("revoked".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(revoked.len() >= 5, "{}", revoked.len());
    assert!(s
        .revoke(RevokeRequest {
            token_id: None,
            label_prefix: Some(String::new()),
            policy: None
        })
        .await
        .unwrap()
        .is_err());
    assert!(s
        .revoke(RevokeRequest {
            token_id: Some("tok_1".into()),
            label_prefix: Some("x".into()),
            policy: None
        })
        .await
        .unwrap()
        .is_err());
    assert!(s
        .revoke(RevokeRequest {
            token_id: None,
            label_prefix: None,
            policy: Some("nope".into())
        })
        .await
        .unwrap()
        .is_err());
}

fn record(id: u64, at_ms: u64, token: &str, label: &str) -> AuditRecord {
    AuditRecord {
        id: format!("{id:032x}"),
        at_ms,
        vendor: Vendor::Stripe,
        token_id: Some(token.into()),
        label: Some(label.into()),
        policy: Some("pay".into()),
        method: "GET".into(),
        path: "/v1/charges/ch_1".into(),
        status: 200,
        reason: Reason::Allowed,
        cost: None,
        reservation: None,
        merchant: None,
        model: None,
        usage: None,
        usage_missing: None,
        over_reservation: false,
        replay: id.is_multiple_of(5),
    }
}

async fn audit_is_deduplicated_filtered_and_paged<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let batch: Vec<AuditRecord> = (0..25)
        .map(|i| {
            record(
                i,
                T0 + i,
                if i % 2 == 0 { "tok_x" } else { "tok_y" },
                if i < 10 { "acme/a" } else { "beta/b" },
            )
        })
        .collect();
    assert_eq!(s.append_audit(batch.clone()).await.unwrap(), 25);
    assert_eq!(
        s.append_audit(batch.clone()).await.unwrap(),
        0,
        "a resent batch adds nothing"
    );
    let all = s
        .audit(AuditQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    // Every field comes back as sent, `replay` too.
    assert_eq!(all.records, batch);
    assert!(all.records.iter().any(|r| r.replay));
    assert_eq!(all.next, None);
    let by_token = s
        .audit(AuditQuery {
            token_id: Some("tok_x".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_token.records.len(), 13);
    let by_prefix = s
        .audit(AuditQuery {
            label_prefix: Some("acme/".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_prefix.records.len(), 10);
    let by_time = s
        .audit(AuditQuery {
            since_ms: Some(T0 + 5),
            until_ms: Some(T0 + 8),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_time
            .records
            .iter()
            .map(|r| r.at_ms - T0)
            .collect::<Vec<_>>(),
        [5, 6, 7]
    );
    // Paging visits every record exactly once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .audit(AuditQuery {
                limit: Some(7),
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, batch.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
}

async fn alerts_fire_once_per_threshold_per_window<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let a = claims("tok_al", "acme/al");
    granted(&reserve(s, &a, "50").await); // 50% of the $100 window cap
    assert!(s.due_alerts(100).await.unwrap().is_empty());
    granted(&reserve(s, &a, "30").await); // 80%
    granted(&reserve(s, &a, "5").await); // 85%: 80% already fired
    let due = s.due_alerts(100).await.unwrap();
    let window_80: Vec<_> = due
        .iter()
        .filter(|o| o.alert.cap == CapKind::PerWindow && o.alert.threshold == 80)
        .collect();
    assert_eq!(window_80.len(), 1, "{due:?}");
    assert_eq!(window_80[0].alert.spent, usd("80"));
    assert_eq!(window_80[0].alert.label.as_deref(), Some("acme/al"));
    // A refusal by the cap fires its 100% alert, once.
    assert_eq!(denied(&reserve(s, &a, "20").await), Reason::CapWindow);
    assert_eq!(denied(&reserve(s, &a, "20").await), Reason::CapWindow);
    let due = s.due_alerts(100).await.unwrap();
    assert_eq!(
        due.iter()
            .filter(|o| o.alert.cap == CapKind::PerWindow && o.alert.threshold == 100)
            .count(),
        1,
        "{due:?}"
    );
    for o in &due {
        s.alert_attempted(o.alert.id.clone(), true, None)
            .await
            .unwrap();
    }
    assert!(s.due_alerts(100).await.unwrap().is_empty());
    // A failed delivery is retried when due, then given up on.
    granted(&reserve(s, &claims("tok_al2", "acme/al2"), "40").await); // lifetime/window at 40%: nothing
    assert!(s.due_alerts(100).await.unwrap().is_empty());
    // In the next window the thresholds can fire again.
    f.clock.advance(3_600_001);
    granted(&reserve(s, &a, "50").await); // lifetime $135 of $150 = 90%: lifetime 80% fires (once ever)
    let due = s.due_alerts(100).await.unwrap();
    assert!(
        due.iter()
            .any(|o| o.alert.cap == CapKind::Lifetime && o.alert.threshold == 80),
        "{due:?}"
    );
    let id = due[0].alert.id.clone();
    s.alert_attempted(id.clone(), false, Some(f.clock_now_ms() + 1000))
        .await
        .unwrap();
    assert!(!s
        .due_alerts(100)
        .await
        .unwrap()
        .iter()
        .any(|o| o.alert.id == id));
    f.clock.advance(1001);
    let retried = s.due_alerts(100).await.unwrap();
    assert_eq!(
        retried
            .iter()
            .find(|o| o.alert.id == id)
            .map(|o| o.attempts),
        Some(1)
    );
}

async fn concurrent_reserves_never_exceed_a_cap<S: Store>(f: Fixture<S>) {
    let store = f.store.clone();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // 8 tokens share the $250 policy aggregate; each also has a $100 window cap.
            let c = claims(&format!("tok_c{}", i % 8), "acme/c");
            store.reserve(c, req("3.33")).await.unwrap()
        }));
    }
    let mut granted_micros = 0i64;
    for t in tasks {
        if let ReserveResponse::Granted { replay: false, .. } = t.await.unwrap() {
            granted_micros += usd("3.33").micros();
        }
    }
    assert!(
        granted_micros <= usd("250").micros(),
        "granted ${}",
        Usd::from_micros(granted_micros).unwrap()
    );
    // And the cap is reached as closely as $3.33 steps allow: nothing was refused early.
    assert!(granted_micros > usd("250").micros() - usd("3.33").micros());
    let policy = store.policies().await.unwrap();
    assert_eq!(policy[0].window_spend.micros(), granted_micros);
}

/// A large report (settles and audit records) with reservations arriving while it is
/// applied: every item is stored once, every reservation is counted, and the report's
/// answer counts all of it.
async fn reservations_made_during_a_large_report_and_the_report_all_count<S: Store>(f: Fixture<S>) {
    let store = f.store.clone();
    let big = claims("tok_big", "acme/big");
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(granted(&reserve(&*store, &big, "0.50").await));
    }
    let settles: Vec<Settle> = held
        .iter()
        .map(|id| Settle {
            reservation: id.clone(),
            outcome: SettleOutcome::Release,
            amount: None,
            replay: false,
            usage: None,
        })
        .collect();
    let records: Vec<AuditRecord> = (0..300)
        .map(|i| record(1000 + i, T0 + i, "tok_big", "acme/big"))
        .collect();
    let reports = {
        let store = store.clone();
        tokio::spawn(async move {
            let settled = store.settle(settles).await.unwrap();
            let audited = store.append_audit(records).await.unwrap();
            (settled, audited)
        })
    };
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = claims(&format!("tok_s{}", i % 6), "acme/s");
            store.reserve(c, req("1")).await.unwrap()
        }));
    }
    for t in tasks {
        granted(&t.await.unwrap());
    }
    assert_eq!(reports.await.unwrap(), (100, 300));
    assert_eq!(window_spend(&*store, "tok_big").await, Usd::ZERO);
    assert_eq!(window_spend(&*store, "tok_s0").await, usd("10"));
    assert_eq!(store.policies().await.unwrap()[0].window_spend, usd("60"));
    let stored = store
        .audit(AuditQuery {
            token_id: Some("tok_big".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.records.len(), 300);
}

impl<S> Fixture<S> {
    fn clock_now_ms(&self) -> u64 {
        bridle_ledger::clock::Clock::now_ms(&self.clock)
    }

    fn clock_now_s(&self) -> u64 {
        self.clock_now_ms() / 1000
    }
}

/// A record whose text holds NUL (a model name read from a request body can): stored, so
/// that the report carrying it, resent until it is, does not block every later one.
async fn a_record_with_any_text_is_stored<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let mut odd = record(900, T0, "tok_nul\u{0}", "acme/nul\u{0}");
    odd.model = Some("gpt\u{0}-4o".into());
    odd.path = "/v1/x\u{0}y".into();
    assert_eq!(s.append_audit(vec![odd]).await.unwrap(), 1);
    let stored = s
        .audit(AuditQuery {
            label_prefix: Some("acme/nul".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    assert_eq!(stored.len(), 1);
    // Kept as sent where the database can hold it, else with U+FFFD in the NUL's place.
    let model = stored[0].model.clone().unwrap();
    assert!(
        model == "gpt\u{0}-4o" || model == "gpt\u{fffd}-4o",
        "{model:?}"
    );
}

/// A lease is one reservation, checked whole against every cap in one step: granted the most
/// calls the caps leave room for, closed at what its calls spent, expired into spend in full.
async fn a_lease_is_checked_whole_and_settles_at_what_was_spent<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let mut c = claims("tok_lease", "acme/lease");
    c.policy = "pay-leased".into();
    // Eight $10 calls of the $100 window.
    let first = lease(s, &c, "10", 8).await;
    assert_eq!(leased_calls(&first), Some(8));
    assert_eq!(window_spend(s, "tok_lease").await, usd("80"));
    // Room for two more: a lease of two, whatever was asked.
    let second = lease(s, &c, "10", 8).await;
    assert_eq!(leased_calls(&second), Some(2));
    assert_eq!(window_spend(s, "tok_lease").await, usd("100"));
    // No room for one call: the one call's refusal.
    assert_eq!(denied(&lease(s, &c, "10", 8).await), Reason::CapWindow);
    // The per-transaction cap ($50) holds each call, not the lease.
    let mut d = claims("tok_lease2", "acme/lease");
    d.policy = "pay-leased".into();
    assert_eq!(
        denied(&lease(s, &d, "50.01", 2).await),
        Reason::CapPerTransaction
    );
    // Never more calls than the policy's eight.
    assert_eq!(leased_calls(&lease(s, &d, "1", 64).await), Some(8));

    // Closed: three calls spent of the first, none of the second.
    let (a, b) = (granted(&first), granted(&second));
    assert_eq!(
        settle(s, &a, SettleOutcome::Commit, Some("30"), false).await,
        1
    );
    assert_eq!(settle(s, &b, SettleOutcome::Release, None, false).await, 1);
    assert_eq!(window_spend(s, "tok_lease").await, usd("30"));
    // A close said twice changes nothing.
    assert_eq!(
        settle(s, &a, SettleOutcome::Commit, Some("80"), false).await,
        0
    );
    // The lifetime cap ($150) sees leases too: $30 spent, then a lease of eight ($110), and
    // in a later window a lease of the four calls left.
    f.clock.advance(3_600_001);
    assert_eq!(leased_calls(&lease(s, &c, "10", 8).await), Some(8));
    f.clock.advance(3_600_001);
    assert_eq!(leased_calls(&lease(s, &c, "10", 8).await), Some(4));
    assert_eq!(denied(&lease(s, &c, "10", 8).await), Reason::CapLifetime);
    // Leases never closed (their proxy gone) expire into spend in full: these two and
    // tok_lease2's.
    f.clock.advance(TTL_MS + 1);
    assert_eq!(s.maintain().await.unwrap(), 3);
    let view = s.token("tok_lease".into()).await.unwrap().unwrap();
    assert_eq!(view.spend.lifetime, usd("150"));
    assert_eq!(view.spend.window, usd("40"));
    assert_eq!(view.spend.reserved, usd("0"));
}

/// A policy without leases (the proxy's copy is newer or older) reserves the one call.
async fn a_policy_without_leases_reserves_the_one_call<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let c = claims("tok_plain", "acme/plain");
    let r = lease(s, &c, "10", 8).await;
    assert_eq!(leased_calls(&r), None);
    assert_eq!(window_spend(s, "tok_plain").await, usd("10"));
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(memory().await).await } )*
        }
        mod sqlite_backend {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(sqlite().await).await } )*
        }
        mod postgres_backend {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(postgres().await).await } )*
        }
    };
}

scenarios!(
    the_spend_breaker_stops_a_loop_until_its_window_eases,
    token_usage_adds_up_by_class,
    each_cap_kind_refuses_with_its_reason,
    token_narrowing_lowers_caps,
    settles_move_spend_and_are_idempotent,
    idempotency_keys_never_count_twice,
    idempotency_keys_are_bound_to_their_request,
    unsettled_reservations_expire_into_spend,
    revocations_by_id_prefix_and_policy,
    audit_is_deduplicated_filtered_and_paged,
    alerts_fire_once_per_threshold_per_window,
    concurrent_reserves_never_exceed_a_cap,
    reservations_made_during_a_large_report_and_the_report_all_count,
    a_record_with_any_text_is_stored,
    a_lease_is_checked_whole_and_settles_at_what_was_spent,
    a_policy_without_leases_reserves_the_one_call,
);

/// SQLite's own promise: whatever was answered is on disk, and a reopened store has the
/// same spend, tokens, revocations, idempotency keys and alert history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_survives_a_reopen() {
    let clock = ManualClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let a = claims("tok_p", "acme/p");
    let mut keyed = req("30");
    keyed.idempotency_key = Some("k".into());
    let (held, keyed_id) = {
        let s = SqliteStore::open(&path, &policies(), TTL_MS, shared.clone()).unwrap();
        s.issue(TokenRecord::from_claims(&a, true)).await.unwrap();
        let r1 = granted(&s.reserve(a.clone(), req("20")).await.unwrap());
        s.settle(vec![Settle {
            reservation: r1,
            outcome: SettleOutcome::Commit,
            amount: Some(usd("15")),
            replay: false,
            usage: Some(bridle_core::llm::TokenUsage {
                input: 11,
                output: 22,
                ..Default::default()
            }),
        }])
        .await
        .unwrap();
        let held = granted(&s.reserve(a.clone(), req("10")).await.unwrap());
        let keyed_id = granted(&s.reserve(a.clone(), keyed.clone()).await.unwrap());
        s.revoke(RevokeRequest {
            token_id: None,
            label_prefix: Some("gone/".into()),
            policy: None,
        })
        .await
        .unwrap()
        .unwrap();
        granted(&s.reserve(a.clone(), req("30")).await.unwrap()); // 85% of $100: alert
        (held, keyed_id)
        // Dropped without any shutdown: the writer thread dies with the channel.
    };
    let s = SqliteStore::open(&path, &policies(), TTL_MS, shared.clone()).unwrap();
    let view = s.token("tok_p".into()).await.unwrap().unwrap();
    assert_eq!(view.spend.window, usd("85"));
    assert_eq!(view.spend.lifetime, usd("85"));
    assert_eq!((view.tokens.input, view.tokens.output), (11, 22));
    assert!(view.record.issued);
    assert_eq!(s.revocations(0).await.unwrap().entries.len(), 1);
    assert_eq!(
        denied(&reserve(&s, &claims("tok_q", "gone/q"), "1").await),
        Reason::TokenRevoked
    );
    assert_eq!(
        s.reserve(
            a.clone(),
            ReserveRequest {
                request_id: "9".repeat(32),
                ..keyed
            }
        )
        .await
        .unwrap(),
        ReserveResponse::Granted {
            reservation: keyed_id,
            replay: true,
            leased_calls: None,
        }
    );
    // The held reservation is still open and can be settled after the restart.
    assert_eq!(
        settle(&s, &held, SettleOutcome::Release, None, false).await,
        1
    );
    assert_eq!(window_spend(&s, "tok_p").await, usd("75"));
    // The 80% alert was already fired before the restart: not again.
    granted(&reserve(&s, &a, "5").await);
    let due = s.due_alerts(100).await.unwrap();
    assert_eq!(
        due.iter()
            .filter(|o| o.alert.cap == CapKind::PerWindow && o.alert.threshold == 80)
            .count(),
        1
    );
    // Revocation sequence numbers keep growing after a restart.
    let out = s
        .revoke(RevokeRequest {
            token_id: Some("tok_p".into()),
            label_prefix: None,
            policy: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.revocation.seq, 2);
}

/// Two replicas on one database are one ledger: they start together safely, a cap spans both, a revoke through one is
/// refused by the other at once, they serve the same feed, alerts fire once and are handed
/// to one deliverer, expiry run by both expires each reservation once, and all of it is
/// still there for a replica started afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_share_one_ledger() {
    let clock = ManualClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    let db = TestDb::create().await;
    let ps = policies();
    let open = || PostgresStore::open(&db.url, &ps, TTL_MS, shared.clone());
    // Started together on an empty database: they take turns migrating.
    let (a, b) = tokio::join!(open(), open());
    let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
    // 8 tokens, 400 reserves of $3.33 spread over both replicas: the $250 policy cap holds.
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .reserve(claims(&format!("tok_r{}", i % 8), "acme/r"), req("3.33"))
                .await
                .unwrap()
        }));
    }
    let mut granted_micros = 0;
    for t in tasks {
        if let ReserveResponse::Granted { replay: false, .. } = t.await.unwrap() {
            granted_micros += usd("3.33").micros();
        }
    }
    assert!(granted_micros <= usd("250").micros());
    assert!(granted_micros > usd("250").micros() - usd("3.33").micros());
    for s in [&a, &b] {
        assert_eq!(
            s.policies().await.unwrap()[0].window_spend.micros(),
            granted_micros
        );
    }
    // The 80% and 100% policy alerts fired once, and one deliverer gets each.
    let (due_a, due_b) = tokio::join!(a.due_alerts(100), b.due_alerts(100));
    let due: Vec<_> = due_a.unwrap().into_iter().chain(due_b.unwrap()).collect();
    let policy_alerts: Vec<u8> = due
        .iter()
        .filter(|o| o.alert.cap == CapKind::PolicyPerWindow)
        .map(|o| o.alert.threshold)
        .collect();
    assert_eq!(policy_alerts.len(), 2, "{due:?}");
    assert!(policy_alerts.contains(&80) && policy_alerts.contains(&100));
    // A revoke through one replica: the other refuses at once, and serves the same feed.
    // (The policy cap is reached: a $0 call still reserves.)
    let t = claims("tok_v", "acme/v");
    granted(&reserve(&*b, &t, "0").await);
    a.revoke(RevokeRequest {
        token_id: None,
        label_prefix: Some("acme/v".into()),
        policy: None,
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(denied(&reserve(&*b, &t, "0").await), Reason::TokenRevoked);
    assert_eq!(
        a.revocations(0).await.unwrap(),
        b.revocations(0).await.unwrap()
    );
    let second = b
        .revoke(RevokeRequest {
            token_id: Some("tok_r1".into()),
            label_prefix: None,
            policy: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.revocation.seq, 2, "numbers come from the database");
    // Expiry from both at once: every open reservation expires exactly once.
    clock.advance(TTL_MS + 1);
    let (x, y) = tokio::join!(a.maintain(), b.maintain());
    let unsettled = (granted_micros / usd("3.33").micros()) as usize + 1;
    assert_eq!(x.unwrap() + y.unwrap(), unsettled);
    // A third replica, started now, sees it all.
    let c = open().await.unwrap();
    assert_eq!(c.revocations(0).await.unwrap().entries.len(), 2);
    assert_eq!(
        c.policies().await.unwrap()[0].window_spend.micros(),
        granted_micros
    );
    assert_eq!(denied(&reserve(&c, &t, "0").await), Reason::TokenRevoked);
}
