//! The accounting batch: reserves and settles, as many as are waiting, in one transaction.
//!
//! The database is the authority: nothing is approved from a replica's memory. Each batch
//!
//! 1. takes the revocation lock shared (a revoke takes it exclusively, so no reserve commits
//!    after a revoke it did not see);
//! 2. locks the running sums of every token and policy it touches (`windows` rows), in one
//!    statement ordered by (scope, id, span): every transaction on every replica locks in
//!    that order, so they queue instead of deadlocking; a missing row (a token's first
//!    call) is created from the reservations first;
//! 3. brings each rolling sum up to now, subtracting what left the window since the last
//!    batch;
//! 4. reads what the rules need: the tokens, live revocations, the reservations being
//!    settled (locked) or repeated, the holders of idempotency keys, when alerts last fired;
//! 5. runs every reserve and settle through the same [`Accounts`] the embedded backends use;
//! 6. writes back reservations, sums, tokens and alerts, commits, and only then answers.
//!
//! Serialization failures, deadlocks and unique violations (two replicas inserting the same
//! id) roll the batch back and run it again from the start. Any other error answers every
//! request of the batch with an error, which the filter turns into a denial.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bridle_core::ledger_api::{ReserveRequest, ReserveResponse, Settle};
use bridle_core::token::Claims;
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::rows::{self, db, un, RESERVATION_COLUMNS, TOKEN_COLUMNS};
use super::{pg, REVOCATION_LOCK};
use crate::accounts::{Accounts, Change};
use crate::caps::{self, Scope, Span};
use crate::clock::SharedClock;
use crate::policies::Policies;
use crate::records::Reservation;
use crate::revocations::parse_kind;
use crate::store::{usage_json, StoreError, StoreResult};
use crate::window::WindowSum;
use bridle_core::revocation::RevocationEntry;

/// Most requests one transaction carries.
pub const MAX_BATCH: usize = 512;
/// Attempts at a batch that keeps meeting serialization failures or deadlocks.
const ATTEMPTS: u32 = 8;
/// A batch that takes longer than this is abandoned (and its connection dropped): the
/// proxies that asked have long stopped waiting.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Job {
    Reserve {
        claims: Box<Claims>,
        request: Box<ReserveRequest>,
        reply: oneshot::Sender<StoreResult<ReserveResponse>>,
    },
    Settle {
        settles: Vec<Settle>,
        reply: oneshot::Sender<StoreResult<usize>>,
    },
}

enum Answer {
    Reserve(ReserveResponse),
    Settle(usize),
}

/// What a batch attempt can fail with.
pub(super) enum Failure {
    Db(tokio_postgres::Error),
    Store(StoreError),
    /// Running sums were missing and have just been created: run the batch again.
    Missing,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

impl Failure {
    /// Worth running the batch again: another transaction got there first.
    fn is_transient(&self) -> bool {
        let Failure::Db(e) = self else {
            return matches!(self, Failure::Missing);
        };
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
        ]
        .iter()
        .any(|s| e.code() == Some(s))
    }

    pub(super) fn into_store(self) -> StoreError {
        match self {
            Failure::Db(e) => pg(e),
            Failure::Store(e) => e,
            Failure::Missing => StoreError("postgres: running sums kept disappearing".into()),
        }
    }
}

/// The writer: one per replica. Takes whatever is queued, runs it as one batch, answers.
pub async fn writer(
    pool: Pool,
    policies: Arc<Policies>,
    ttl_ms: u64,
    clock: SharedClock,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let result = run(&pool, &policies, ttl_ms, &clock, &jobs).await;
        if let Err(e) = &result {
            tracing::error!("a batch of {} requests failed: {e}", jobs.len());
        }
        answer(jobs, result);
    }
}

fn answer(jobs: Vec<Job>, result: StoreResult<Vec<Answer>>) {
    match result {
        Ok(answers) => {
            for (job, a) in jobs.into_iter().zip(answers) {
                match (job, a) {
                    (Job::Reserve { reply, .. }, Answer::Reserve(r)) => {
                        let _ = reply.send(Ok(r));
                    }
                    (Job::Settle { reply, .. }, Answer::Settle(n)) => {
                        let _ = reply.send(Ok(n));
                    }
                    (Job::Reserve { reply, .. }, _) => {
                        let _ = reply.send(Err(StoreError("batch answer out of order".into())));
                    }
                    (Job::Settle { reply, .. }, _) => {
                        let _ = reply.send(Err(StoreError("batch answer out of order".into())));
                    }
                }
            }
        }
        Err(e) => {
            for job in jobs {
                match job {
                    Job::Reserve { reply, .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Job::Settle { reply, .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

async fn run(
    pool: &Pool,
    policies: &Arc<Policies>,
    ttl_ms: u64,
    clock: &SharedClock,
    jobs: &[Job],
) -> StoreResult<Vec<Answer>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError(format!("postgres: {e}")))?;
        let now = clock.now_ms();
        let outcome = tokio::time::timeout(
            BATCH_TIMEOUT,
            attempt_batch(&mut client, policies, ttl_ms, now, jobs),
        )
        .await;
        match outcome {
            Ok(Ok(answers)) => return Ok(answers),
            Ok(Err(Failure::Missing)) if attempt < ATTEMPTS => {}
            Ok(Err(f)) if f.is_transient() && attempt < ATTEMPTS => {
                // Rolled back when the transaction was dropped; let the winner finish.
                let jitter = u64::from(attempt) * 2 + (now % 3);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Ok(Err(f)) => {
                if matches!(&f, Failure::Db(e) if e.is_closed() || e.code().is_none()) {
                    drop(deadpool_postgres::Object::take(client));
                }
                return Err(f.into_store());
            }
            Err(_) => {
                // The connection is in an unknown state mid-transaction: never reuse it.
                drop(deadpool_postgres::Object::take(client));
                return Err(StoreError(format!(
                    "postgres: a batch took longer than {}s",
                    BATCH_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

/// A running sum's key: (scope, id, span).
type Key = (Scope, String, Span);

async fn attempt_batch(
    client: &mut deadpool_postgres::Client,
    policies: &Arc<Policies>,
    ttl_ms: u64,
    now: u64,
    jobs: &[Job],
) -> Result<Vec<Answer>, Failure> {
    let tx = client.transaction().await?;
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock_shared($1)")
        .await?;
    tx.execute(&st, &[&REVOCATION_LOCK]).await?;

    // 1. What the batch touches.
    let mut lookup: BTreeSet<String> = BTreeSet::new();
    let mut settle_ids: BTreeSet<String> = BTreeSet::new();
    let mut key_pairs: BTreeSet<(String, String)> = BTreeSet::new();
    let mut scopes: BTreeMap<String, String> = BTreeMap::new();
    for job in jobs {
        match job {
            Job::Reserve {
                claims, request, ..
            } => {
                lookup.insert(request.request_id.clone());
                scopes.insert(claims.id.clone(), claims.policy.clone());
                if let Some(k) = &request.idempotency_key {
                    key_pairs.insert((claims.id.clone(), k.clone()));
                }
            }
            Job::Settle { settles, .. } => {
                for s in settles {
                    lookup.insert(s.reservation.clone());
                    settle_ids.insert(s.reservation.clone());
                }
            }
        }
    }
    let lookup: Vec<String> = lookup.into_iter().collect();
    let st = tx
        .prepare_cached("SELECT id, token_id, policy FROM reservations WHERE id = ANY($1)")
        .await?;
    for row in tx.query(&st, &[&lookup]).await? {
        let id: String = row.try_get(0)?;
        if settle_ids.contains(&id) {
            scopes.insert(row.try_get(1)?, row.try_get(2)?);
        }
    }
    let mut keys: Vec<Key> = Vec::new();
    for (token, policy) in &scopes {
        if let Some(p) = policies.get(policy) {
            keys.extend(
                p.token_spans
                    .iter()
                    .map(|s| (Scope::Token, token.clone(), *s)),
            );
            keys.extend(
                p.policy_spans
                    .iter()
                    .map(|s| (Scope::Policy, policy.clone(), *s)),
            );
        }
    }
    keys.sort_by(|a, b| (a.0.as_str(), &a.1, a.2.key()).cmp(&(b.0.as_str(), &b.1, b.2.key())));
    keys.dedup();

    // 2. Lock the sums. Missing ones (a token's first call) are created outside this
    // transaction, which then starts again: creating rows while holding others would take
    // locks out of order, and replicas would deadlock on a burst of new tokens.
    let mut sums = lock(&tx, &keys).await?;
    if sums.len() < keys.len() {
        drop(tx);
        create(client, &keys, &sums, now).await?;
        return Err(Failure::Missing);
    }

    // 3. Up to now.
    advance(&tx, &mut sums, now).await?;

    // 4. What the rules need.
    let token_ids: Vec<String> = scopes.keys().cloned().collect();
    let policy_names: Vec<String> = scopes
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (key_tokens, key_names): (Vec<String>, Vec<String>) = key_pairs.into_iter().unzip();
    // The reservations inside each spend breaker's window, oldest first: when a breaker
    // refuses, they say when it lifts.
    let breakers: Vec<(String, Span)> = scopes
        .iter()
        .filter_map(|(token, policy)| {
            let span = caps::short_span(&policies.get(policy)?.policy.policy.caps)?;
            Some((token.clone(), span))
        })
        .collect();
    let breaker_tokens: Vec<&str> = breakers.iter().map(|(t, _)| t.as_str()).collect();
    let breaker_floors: Vec<i64> = breakers.iter().map(|(_, s)| db(s.floor(now))).collect();
    let now_s = db(now / 1000);
    let q_tokens = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ANY($1)");
    let q_by_id = format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    );
    let r_columns = RESERVATION_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let q_holders = format!(
        "SELECT DISTINCT ON (r.token_id, r.idempotency_key) {r_columns} FROM reservations r
         JOIN unnest($1::text[], $2::text[]) AS k(token_id, idempotency_key)
           ON r.token_id = k.token_id AND r.idempotency_key = k.idempotency_key
         ORDER BY r.token_id, r.idempotency_key, (r.state <> 'released') DESC, r.at_ms DESC"
    );
    let q_breakers = format!(
        "SELECT {r_columns} FROM reservations r
         JOIN unnest($1::text[], $2::bigint[]) AS k(token_id, floor_ms)
           ON r.token_id = k.token_id AND r.at_ms > k.floor_ms
         ORDER BY r.at_ms, r.id"
    );
    let (tokens, revocations, by_id, holders, fired, inside) = tokio::try_join!(
        async {
            let st = tx.prepare_cached(&q_tokens).await?;
            tx.query(&st, &[&token_ids]).await
        },
        async {
            let st = tx
                .prepare_cached(
                    "SELECT seq, kind, value, at, until FROM revocations
                     WHERE until >= $1 AND (kind <> 'token' OR value = ANY($2))",
                )
                .await?;
            tx.query(&st, &[&now_s, &token_ids]).await
        },
        async {
            let st = tx.prepare_cached(&q_by_id).await?;
            tx.query(&st, &[&lookup]).await
        },
        async {
            let st = tx.prepare_cached(&q_holders).await?;
            tx.query(&st, &[&key_tokens, &key_names]).await
        },
        async {
            let st = tx
                .prepare_cached(
                    "SELECT key, at_ms FROM alerts_fired
                     WHERE token_id = ANY($1) OR (token_id IS NULL AND policy = ANY($2))",
                )
                .await?;
            tx.query(&st, &[&token_ids, &policy_names]).await
        },
        async {
            if breakers.is_empty() {
                return Ok(Vec::new());
            }
            let st = tx.prepare_cached(&q_breakers).await?;
            tx.query(&st, &[&breaker_tokens, &breaker_floors]).await
        },
    )?;

    // 5. The rules, over what was read.
    let mut accounts = Accounts::with_policies(policies.clone(), ttl_ms);
    for row in &tokens {
        accounts.load_token(rows::token(row)?, 0);
    }
    for ((scope, id, span), sum) in &sums {
        accounts.load_window(*scope, id, *span, *sum);
    }
    for row in &revocations {
        let kind: String = row.try_get(1)?;
        if let Some(kind) = parse_kind(&kind) {
            accounts.load_revocation(RevocationEntry {
                seq: un(row.try_get(0)?),
                kind,
                value: row.try_get(2)?,
                at: un(row.try_get(3)?),
                until: un(row.try_get(4)?),
                // Only the feed needs the commit time; checks here do not.
                at_ms: 0,
            });
        }
    }
    let breaker_of: BTreeMap<&str, Span> = breakers.iter().map(|(t, s)| (t.as_str(), *s)).collect();
    for row in &inside {
        let r = rows::reservation(row)?;
        if let Some(span) = breaker_of.get(r.token_id.as_str()) {
            accounts.know_in_window(*span, r);
        }
    }
    for row in by_id.iter().chain(&holders) {
        accounts.know_reservation(rows::reservation(row)?);
    }
    for row in &fired {
        accounts.load_alert_fired(row.try_get(0)?, un(row.try_get(1)?));
    }
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        answers.push(match job {
            Job::Reserve {
                claims, request, ..
            } => Answer::Reserve(accounts.reserve(now, claims, request)),
            Job::Settle { settles, .. } => {
                Answer::Settle(settles.iter().filter(|s| accounts.settle(now, s)).count())
            }
        });
    }

    // 6. Written back, committed, then answered.
    let locked: HashSet<&Key> = sums.keys().collect();
    let changes = accounts.take_changes();
    persist(&tx, &accounts, changes, &locked).await?;
    tx.commit().await?;
    Ok(answers)
}

fn key_arrays(keys: &[Key]) -> (Vec<&'static str>, Vec<&str>, Vec<i64>) {
    let mut scope = Vec::with_capacity(keys.len());
    let mut id = Vec::with_capacity(keys.len());
    let mut span = Vec::with_capacity(keys.len());
    for (s, i, sp) in keys {
        scope.push(s.as_str());
        id.push(i.as_str());
        span.push(sp.key());
    }
    (scope, id, span)
}

fn parse_scope(s: &str) -> Option<Scope> {
    [Scope::Token, Scope::Policy]
        .into_iter()
        .find(|sc| sc.as_str() == s)
}

/// Locks the sums, in (scope, id, span) order, and reads them.
async fn lock(tx: &Transaction<'_>, keys: &[Key]) -> Result<BTreeMap<Key, WindowSum>, Failure> {
    let (scope, id, span) = key_arrays(keys);
    let st = tx
        .prepare_cached(
            "SELECT w.scope, w.id, w.span_ms, w.sum, w.floor_ms
             FROM windows w
             JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS k(scope, id, span_ms)
               ON w.scope = k.scope AND w.id = k.id AND w.span_ms = k.span_ms
             ORDER BY w.scope, w.id, w.span_ms
             FOR UPDATE OF w",
        )
        .await?;
    let mut out = BTreeMap::new();
    for row in tx.query(&st, &[&scope, &id, &span]).await? {
        let s: String = row.try_get(0)?;
        let Some(s) = parse_scope(&s) else { continue };
        out.insert(
            (s, row.try_get(1)?, Span::from_key(row.try_get(2)?)),
            WindowSum {
                sum: row.try_get(3)?,
                floor_ms: un(row.try_get(4)?),
            },
        );
    }
    Ok(out)
}

/// Creates the sums that do not exist yet, each from the reservations inside its span, in
/// a statement of its own (committed at once, holding no lock after). Safe beside other
/// replicas: a scope's reservations are only written under its sums' locks, which cannot
/// be held on rows that do not exist; of two replicas creating one row, one inserts it.
async fn create(
    tx: &deadpool_postgres::Client,
    keys: &[Key],
    have: &BTreeMap<Key, WindowSum>,
    now: u64,
) -> Result<(), Failure> {
    let missing: Vec<Key> = keys
        .iter()
        .filter(|k| !have.contains_key(*k))
        .cloned()
        .collect();
    let (scope, id, span) = key_arrays(&missing);
    let floor: Vec<i64> = missing.iter().map(|(_, _, s)| db(s.floor(now))).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO windows (scope, id, span_ms, sum, floor_ms)
             SELECT k.scope, k.id, k.span_ms,
                    CASE WHEN k.scope = 'token'
                      THEN (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                            WHERE r.token_id = k.id AND r.at_ms > k.floor_ms)
                      ELSE (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                            WHERE r.policy = k.id AND r.at_ms > k.floor_ms)
                    END::bigint,
                    k.floor_ms
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                  AS k(scope, id, span_ms, floor_ms)
             ORDER BY 1, 2, 3
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&st, &[&scope, &id, &span, &floor]).await?;
    Ok(())
}

/// Raises each rolling sum's floor to now, subtracting the reservations it passes.
async fn advance(
    tx: &Transaction<'_>,
    sums: &mut BTreeMap<Key, WindowSum>,
    now: u64,
) -> Result<(), Failure> {
    let moving: Vec<(Key, u64, u64)> = sums
        .iter()
        .filter_map(|(k, s)| {
            let floor = k.2.floor(now);
            (floor > s.floor_ms).then(|| (k.clone(), s.floor_ms, floor))
        })
        .collect();
    if moving.is_empty() {
        return Ok(());
    }
    let keys: Vec<Key> = moving.iter().map(|(k, _, _)| k.clone()).collect();
    let (scope, id, span) = key_arrays(&keys);
    let lo: Vec<i64> = moving.iter().map(|(_, lo, _)| db(*lo)).collect();
    let hi: Vec<i64> = moving.iter().map(|(_, _, hi)| db(*hi)).collect();
    let st = tx
        .prepare_cached(
            "SELECT k.scope, k.id, k.span_ms,
                    CASE WHEN k.scope = 'token'
                      THEN (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                            WHERE r.token_id = k.id AND r.at_ms > k.lo AND r.at_ms <= k.hi)
                      ELSE (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                            WHERE r.policy = k.id AND r.at_ms > k.lo AND r.at_ms <= k.hi)
                    END::bigint
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                  AS k(scope, id, span_ms, lo, hi)",
        )
        .await?;
    let leaving = tx.query(&st, &[&scope, &id, &span, &lo, &hi]).await?;
    for ((key, _, floor), row) in moving.into_iter().zip(&leaving) {
        if let Some(s) = sums.get_mut(&key) {
            s.advance(floor, row.try_get(3)?);
        }
    }
    Ok(())
}

/// Writes what the batch changed. Settles go first: a released reservation hands its
/// idempotency key to a fresh one, which the unique index checks at the insert.
async fn persist(
    tx: &Transaction<'_>,
    accounts: &Accounts,
    changes: Vec<Change>,
    locked: &HashSet<&Key>,
) -> Result<(), Failure> {
    let mut fresh: Vec<&Reservation> = Vec::new();
    let mut fresh_ids: HashSet<&str> = HashSet::new();
    let mut settled: BTreeSet<String> = BTreeSet::new();
    let mut tokens = Vec::new();
    let mut alerts = Vec::new();
    for c in &changes {
        match c {
            Change::Reserved(id) => {
                if let Some(r) = accounts.reservation(id) {
                    fresh_ids.insert(r.id.as_str());
                    fresh.push(r);
                }
            }
            Change::Settled(id) => {
                settled.insert(id.clone());
            }
            Change::Token(t) => tokens.push(t),
            Change::Alert(a) => alerts.push(a),
            // Revocations are numbered by the database, never in a batch.
            Change::Revocation(_) => {}
        }
    }
    let updates: Vec<&Reservation> = settled
        .iter()
        .filter(|id| !fresh_ids.contains(id.as_str()))
        .filter_map(|id| accounts.reservation(id))
        .collect();
    if !updates.is_empty() {
        let ids: Vec<&str> = updates.iter().map(|r| r.id.as_str()).collect();
        let states: Vec<&str> = updates.iter().map(|r| r.state.as_str()).collect();
        let counted: Vec<i64> = updates.iter().map(|r| r.counted).collect();
        let at: Vec<Option<i64>> = updates.iter().map(|r| r.settled_at_ms.map(db)).collect();
        let usage = updates
            .iter()
            .map(|r| usage_json(r.usage.as_ref()))
            .collect::<StoreResult<Vec<Option<String>>>>()?;
        let st = tx
            .prepare_cached(
                "UPDATE reservations r
                 SET state = u.state, counted = u.counted, settled_at_ms = u.settled_at_ms,
                     usage = COALESCE(u.usage::jsonb, r.usage)
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])
                      AS u(id, state, counted, settled_at_ms, usage)
                 WHERE r.id = u.id",
            )
            .await?;
        tx.execute(&st, &[&ids, &states, &counted, &at, &usage])
            .await?;
    }
    let sums: Vec<(Scope, &str, Span, WindowSum)> = accounts
        .window_sums()
        .into_iter()
        .filter(|(s, id, span, _)| locked.contains(&(*s, id.to_string(), *span)))
        .collect();
    tokio::try_join!(
        insert_reservations(tx, &fresh),
        insert_tokens(tx, &tokens),
        insert_alerts(tx, &alerts),
        update_sums(tx, &sums),
    )?;
    Ok(())
}

async fn insert_reservations(tx: &Transaction<'_>, fresh: &[&Reservation]) -> Result<(), Failure> {
    if fresh.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Reservation) -> String| fresh.iter().map(|r| f(r)).collect::<Vec<String>>();
    let ids = col(|r| r.id.clone());
    let tokens = col(|r| r.token_id.clone());
    let policies = col(|r| r.policy.clone());
    let at: Vec<i64> = fresh.iter().map(|r| db(r.at_ms)).collect();
    let reserved: Vec<i64> = fresh.iter().map(|r| r.reserved).collect();
    let counted: Vec<i64> = fresh.iter().map(|r| r.counted).collect();
    let states: Vec<&str> = fresh.iter().map(|r| r.state.as_str()).collect();
    let keys: Vec<Option<&str>> = fresh.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let digests: Vec<Option<&str>> = fresh.iter().map(|r| r.digest.as_deref()).collect();
    let methods = col(|r| r.method.clone());
    let paths = col(|r| r.path.clone());
    let details = col(|r| r.detail.clone());
    let settled: Vec<Option<i64>> = fresh.iter().map(|r| r.settled_at_ms.map(db)).collect();
    let st = tx
        .prepare_cached(&format!(
            "INSERT INTO reservations ({RESERVATION_COLUMNS})
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                  $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::text[], $12::text[], $13::bigint[])"
        ))
        .await?;
    tx.execute(
        &st,
        &[
            &ids, &tokens, &policies, &at, &reserved, &counted, &states, &keys, &digests, &methods,
            &paths, &details, &settled,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_tokens(
    tx: &Transaction<'_>,
    tokens: &[&crate::records::TokenRecord],
) -> Result<(), Failure> {
    if tokens.is_empty() {
        return Ok(());
    }
    super::writes::insert_tokens(tx, tokens).await
}

async fn insert_alerts(
    tx: &Transaction<'_>,
    alerts: &[&crate::accounts::Alert],
) -> Result<(), Failure> {
    if alerts.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut at = Vec::new();
    let mut bodies = Vec::new();
    let mut fired: BTreeMap<String, (&str, Option<&str>, i64)> = BTreeMap::new();
    for a in alerts {
        ids.push(a.id.as_str());
        at.push(db(a.at_ms));
        bodies.push(serde_json::to_value(a).map_err(|e| StoreError(format!("alert: {e}")))?);
        fired.insert(
            a.key(),
            (a.policy.as_str(), a.token_id.as_deref(), db(a.at_ms)),
        );
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO alerts (id, at_ms, body, next_attempt_ms)
             SELECT i, a, b, a FROM unnest($1::text[], $2::bigint[], $3::jsonb[]) AS x(i, a, b)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    tx.execute(&st, &[&ids, &at, &bodies]).await?;
    let keys: Vec<&str> = fired.keys().map(String::as_str).collect();
    let policies: Vec<&str> = fired.values().map(|f| f.0).collect();
    let tokens: Vec<Option<&str>> = fired.values().map(|f| f.1).collect();
    let times: Vec<i64> = fired.values().map(|f| f.2).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO alerts_fired (key, policy, token_id, at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (key) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .await?;
    tx.execute(&st, &[&keys, &policies, &tokens, &times])
        .await?;
    Ok(())
}

async fn update_sums(
    tx: &Transaction<'_>,
    sums: &[(Scope, &str, Span, WindowSum)],
) -> Result<(), Failure> {
    if sums.is_empty() {
        return Ok(());
    }
    let scope: Vec<&str> = sums.iter().map(|s| s.0.as_str()).collect();
    let id: Vec<&str> = sums.iter().map(|s| s.1).collect();
    let span: Vec<i64> = sums.iter().map(|s| s.2.key()).collect();
    let sum: Vec<i64> = sums.iter().map(|s| s.3.sum).collect();
    let floor: Vec<i64> = sums.iter().map(|s| db(s.3.floor_ms)).collect();
    let st = tx
        .prepare_cached(
            "UPDATE windows w SET sum = u.sum, floor_ms = u.floor_ms
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                  AS u(scope, id, span_ms, sum, floor_ms)
             WHERE w.scope = u.scope AND w.id = u.id AND w.span_ms = u.span_ms",
        )
        .await?;
    tx.execute(&st, &[&scope, &id, &span, &sum, &floor]).await?;
    Ok(())
}
