//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, one writer thread, group
//! commit.
//!
//! The writer owns the connection and the in-memory [`Accounts`]. It blocks for a command,
//! drains whatever else is queued (up to [`MAX_BATCH`]), applies them all inside one
//! transaction, commits (one fsync), and only then answers. A reservation that was answered
//! is on disk; one that was not may be lost with the process, and the filter that asked has
//! already denied its request. If a commit fails the in-memory state no longer matches the
//! disk, so the process exits and restarts from the disk rather than guess.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use bridle_core::ledger_api::{AuditRecord, ReserveRequest, ReserveResponse, Settle};
use bridle_core::policy::CompiledPolicy;
use bridle_core::revocation::RevocationFeed;
use bridle_core::token::Claims;
use rusqlite::{params, Connection, OpenFlags, Transaction};
use tokio::sync::oneshot;

use super::{
    usage_json, AuditExtra, AuditPage, AuditQuery, OutboxAlert, Store, StoreError, StoreResult,
    TokenQuery, ALERT_LEASE_MS,
};
use crate::accounts::{Accounts, Alert, Change};
use crate::clock::SharedClock;
use crate::policies::{Policies, IDEMPOTENCY_RETENTION_MS};
use crate::records::{
    Narrowing, Reservation, ReservationState, RevokeOutcome, RevokeRequest, TokenRecord,
};
use crate::revocations::kind_str;
use crate::views::{PolicyView, TokenView};

mod reads;

use reads::token_from_row;

/// Most commands one commit carries.
pub const MAX_BATCH: usize = 2048;

const SCHEMA: &str = include_str!("schema.sql");

/// Changes to the schema after `schema.sql`'s first shape, in order; `PRAGMA user_version`
/// counts how many a database has. Append only: a database applies the ones it lacks.
const MIGRATIONS: &[&str] = &[
    // 1: the digest bound to an idempotency key; the audit record's less-queried fields as
    // JSON (e.g. `replay`), so that adding one needs no new column.
    // Views read sums from the file: by token and by policy over time.
    "ALTER TABLE reservations ADD COLUMN digest TEXT;
     ALTER TABLE audit ADD COLUMN extra TEXT;
     CREATE INDEX IF NOT EXISTS reservations_token_at ON reservations (token_id, at_ms);
     CREATE INDEX IF NOT EXISTS reservations_policy_at ON reservations (policy, at_ms, counted);",
    // 2: when each revocation was committed, in milliseconds, served in the feed so that
    // proxies can measure how long it took to reach them (0 for older entries: unmeasured).
    "ALTER TABLE revocations ADD COLUMN at_ms INTEGER NOT NULL DEFAULT 0;",
    // 3: the usage a call priced by tokens was committed at (JSON, tokens by class), which
    // token views add up per class.
    "ALTER TABLE reservations ADD COLUMN usage TEXT;",
    // 4: reservations_token (token_id) duplicated reservations_token_at, which serves every
    // query by token. Each index keyed by token dirties one more page per distinct token in
    // a group commit: a load spread over 64 tokens ran at 0.68-0.83 of one over 10.
    "DROP INDEX IF EXISTS reservations_token;",
];

/// Applies the schema and whatever migrations the database lacks, each in its own
/// transaction with its version.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch(SCHEMA).map_err(sql)?;
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    for (i, m) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(m).map_err(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

enum Cmd {
    Issue(TokenRecord, Reply<()>),
    Reserve(Box<Claims>, Box<ReserveRequest>, Reply<ReserveResponse>),
    Settle(Vec<Settle>, Reply<usize>),
    Audit(Vec<AuditRecord>, Reply<usize>),
    Revoke(RevokeRequest, Reply<Result<RevokeOutcome, String>>),
    Maintain(Reply<usize>),
    ClaimAlerts(usize, Reply<Vec<OutboxAlert>>),
    AlertAttempted {
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
        reply: Reply<()>,
    },
}

/// Reader connections: views never wait for the writer, nor (mostly) for each other.
const READERS: usize = 3;

pub struct SqliteStore {
    tx: Mutex<Sender<Cmd>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: std::sync::atomic::AtomicUsize,
    writer: std::thread::JoinHandle<()>,
    policies: Arc<Policies>,
    clock: SharedClock,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn respond<T: Send + 'static>(reply: Reply<T>, value: T) -> Done {
    Box::new(move |err| {
        let _ = reply.send(match err {
            None => Ok(value),
            Some(e) => Err(e.clone()),
        });
    })
}

impl SqliteStore {
    pub fn open(
        path: &Path,
        policies: &[CompiledPolicy],
        reservation_ttl_ms: u64,
        clock: SharedClock,
    ) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path).map_err(sql)?;
        migrate(&mut conn)?;
        let mut accounts = Accounts::new(policies, reservation_ttl_ms);
        load(&conn, &mut accounts, clock.now_ms(), reservation_ttl_ms)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql)?;
            reader
                .busy_timeout(std::time::Duration::from_secs(5))
                .map_err(sql)?;
            reader
                .execute_batch("PRAGMA cache_size = -65536")
                .map_err(sql)?;
            readers.push(Mutex::new(reader));
        }
        let (tx, rx) = mpsc::channel();
        let writer_clock = clock.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer(conn, accounts, rx, writer_clock))
            .map_err(|e| StoreError(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx: Mutex::new(tx),
            readers: Arc::new(readers),
            next_reader: Default::default(),
            writer,
            policies: Arc::new(Policies::new(policies)),
            clock,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .lock()
            .map_err(|_| StoreError("writer channel poisoned".into()))?
            .send(make(reply))
            .map_err(|_| StoreError("the ledger's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the ledger's writer dropped a request".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.readers.clone();
        let first = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // A free reader if there is one, else wait for this call's turn.
            let n = readers.len().max(1);
            let free = (0..n).find_map(|i| readers.get((first + i) % n)?.try_lock().ok());
            let conn = match free {
                Some(c) => c,
                None => readers
                    .get(first % n)
                    .ok_or_else(|| StoreError("no reader connection".into()))?
                    .lock()
                    .map_err(|_| StoreError("reader lock poisoned".into()))?,
            };
            // One snapshot for the whole view: outside a transaction each SELECT sees the
            // latest commit, and a token's view read its window sum before a release and its
            // open reservations after it ($40 spent, nothing open, for a call that spent
            // nothing). Dropped, it rolls back: there is nothing to write.
            let snapshot = conn.unchecked_transaction().map_err(sql)?;
            f(&snapshot)
        })
        .await
        .map_err(|e| StoreError(format!("reader task: {e}")))?
    }
}

fn writer(mut conn: Connection, mut accounts: Accounts, rx: Receiver<Cmd>, clock: SharedClock) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        let result = (|| -> StoreResult<()> {
            let tx = conn.transaction().map_err(sql)?;
            for cmd in batch {
                done.push(apply(&tx, &mut accounts, cmd, now)?);
                let changes = accounts.take_changes();
                persist(&tx, &accounts, changes)?;
            }
            tx.commit().map_err(sql)
        })();
        match result {
            Ok(()) => done.into_iter().for_each(|d| d(None)),
            Err(e) => {
                eprintln!("bridle-ledger: FATAL: could not commit to the store ({e}); exiting to restart from disk");
                done.into_iter().for_each(|d| d(Some(&e)));
                std::process::exit(70);
            }
        }
    }
}

fn apply(tx: &Transaction<'_>, accounts: &mut Accounts, cmd: Cmd, now: u64) -> StoreResult<Done> {
    Ok(match cmd {
        Cmd::Issue(record, reply) => {
            accounts.issue(record);
            respond(reply, ())
        }
        Cmd::Reserve(claims, request, reply) => {
            respond(reply, accounts.reserve(now, &claims, &request))
        }
        Cmd::Settle(settles, reply) => respond(
            reply,
            settles.iter().filter(|s| accounts.settle(now, s)).count(),
        ),
        Cmd::Audit(records, reply) => {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO audit (id, at_ms, vendor, token_id, label, policy, method, path, status, reason, cost, reservation, merchant, extra)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(sql)?;
            let mut added = 0;
            for r in &records {
                added += stmt
                    .execute(params![
                        r.id,
                        r.at_ms as i64,
                        r.vendor.name(),
                        r.token_id,
                        r.label,
                        r.policy,
                        r.method,
                        r.path,
                        r.status,
                        r.reason.code(),
                        r.cost.map(|c| c.micros()),
                        r.reservation,
                        r.merchant,
                        AuditExtra::of(r).to_json()?
                    ])
                    .map_err(sql)?;
            }
            respond(reply, added)
        }
        Cmd::Revoke(request, reply) => respond(reply, accounts.revoke(now, &request)),
        Cmd::Maintain(reply) => {
            let expired = accounts.expire(now);
            // Written before eviction, which may forget the very reservations that expired.
            let changes = accounts.take_changes();
            persist(tx, accounts, changes)?;
            accounts.evict(now);
            respond(reply, expired)
        }
        Cmd::ClaimAlerts(limit, reply) => {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE alerts SET next_attempt_ms = ?2
                     WHERE id IN (SELECT id FROM alerts
                                  WHERE delivered_at_ms IS NULL AND failed = 0 AND next_attempt_ms <= ?1
                                  ORDER BY at_ms LIMIT ?3)
                     RETURNING body, attempts, at_ms",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(
                    params![
                        now as i64,
                        now.saturating_add(ALERT_LEASE_MS) as i64,
                        limit as i64
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(0)?,
                            r.get::<_, u32>(1)?,
                        ))
                    },
                )
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql)?;
            let mut claimed: Vec<(i64, OutboxAlert)> = rows
                .into_iter()
                .filter_map(|(at, body, attempts)| {
                    Some((
                        at,
                        OutboxAlert {
                            alert: serde_json::from_str(&body).ok()?,
                            attempts,
                        },
                    ))
                })
                .collect();
            claimed.sort_by_key(|(at, _)| *at);
            respond(reply, claimed.into_iter().map(|(_, a)| a).collect())
        }
        Cmd::AlertAttempted {
            id,
            delivered,
            next_attempt_ms,
            reply,
        } => {
            let failed = !delivered && next_attempt_ms.is_none();
            tx.execute(
                "UPDATE alerts SET attempts = attempts + 1,
                    delivered_at_ms = CASE WHEN ?2 THEN ?3 ELSE delivered_at_ms END,
                    next_attempt_ms = COALESCE(?4, next_attempt_ms),
                    failed = ?5
                 WHERE id = ?1",
                params![
                    id,
                    delivered,
                    now as i64,
                    next_attempt_ms.map(|n| n as i64),
                    failed
                ],
            )
            .map_err(sql)?;
            respond(reply, ())
        }
    })
}

fn persist(tx: &Transaction<'_>, accounts: &Accounts, changes: Vec<Change>) -> StoreResult<()> {
    for change in changes {
        match change {
            Change::Token(t) => {
                let narrowing = serde_json::to_string(&Narrowing::of(&t))
                    .map_err(|e| StoreError(e.to_string()))?;
                tx.prepare_cached(
                    "INSERT INTO tokens (id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT(id) DO UPDATE SET revoked_at = excluded.revoked_at",
                )
                .map_err(sql)?
                .execute(params![t.id, t.policy, t.vendor.name(), t.label, t.iat as i64, t.exp as i64, narrowing, t.issued, t.revoked_at.map(|r| r as i64)])
                .map_err(sql)?;
            }
            Change::Reserved(id) => {
                let Some(r) = accounts.reservation(&id) else {
                    continue;
                };
                tx.prepare_cached(
                    "INSERT INTO reservations (id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, method, path, detail, settled_at_ms, digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(sql)?
                .execute(params![
                    r.id,
                    r.token_id,
                    r.policy,
                    r.at_ms as i64,
                    r.reserved,
                    r.counted,
                    r.state.as_str(),
                    r.idempotency_key,
                    r.method,
                    r.path,
                    r.detail,
                    r.settled_at_ms.map(|s| s as i64),
                    r.digest
                ])
                .map_err(sql)?;
            }
            Change::Settled(id) => {
                let Some(r) = accounts.reservation(&id) else {
                    continue;
                };
                let usage = usage_json(r.usage.as_ref())?;
                tx.prepare_cached("UPDATE reservations SET counted = ?2, state = ?3, settled_at_ms = ?4, usage = ?5 WHERE id = ?1")
                    .map_err(sql)?
                    .execute(params![r.id, r.counted, r.state.as_str(), r.settled_at_ms.map(|s| s as i64), usage])
                    .map_err(sql)?;
            }
            Change::Revocation(e) => {
                tx.prepare_cached("INSERT INTO revocations (seq, kind, value, at, until, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                    .map_err(sql)?
                    .execute(params![e.seq as i64, kind_str(e.kind), e.value, e.at as i64, e.until as i64, e.at_ms as i64])
                    .map_err(sql)?;
            }
            Change::Alert(a) => {
                let body = serde_json::to_string(&a).map_err(|e| StoreError(e.to_string()))?;
                tx.prepare_cached("INSERT OR IGNORE INTO alerts (id, at_ms, body, next_attempt_ms) VALUES (?1, ?2, ?3, ?2)")
                    .map_err(sql)?
                    .execute(params![a.id, a.at_ms as i64, body])
                    .map_err(sql)?;
            }
        }
    }
    Ok(())
}

/// Rebuilds the in-memory accounts from disk: live tokens with their all-time spend, the
/// reservations any window, retry or TTL can still need, revocations, recent alerts.
fn load(
    conn: &Connection,
    accounts: &mut Accounts,
    now_ms: u64,
    reservation_ttl_ms: u64,
) -> StoreResult<()> {
    let longest_window = accounts
        .policies()
        .map(|p| p.policy.caps.window().as_millis() as u64)
        .max()
        .unwrap_or(0);
    let keep_ms = longest_window
        .max(IDEMPOTENCY_RETENTION_MS)
        .max(reservation_ttl_ms);
    let cutoff_ms = now_ms.saturating_sub(keep_ms) as i64;
    let cutoff_s = cutoff_ms / 1000;

    let mut lifetimes = std::collections::HashMap::new();
    let mut stmt = conn
        .prepare("SELECT token_id, SUM(counted) FROM reservations WHERE token_id IN (SELECT id FROM tokens WHERE exp > ?1) GROUP BY token_id")
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![cutoff_s], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(sql)?;
    for row in rows {
        let (id, sum) = row.map_err(sql)?;
        lifetimes.insert(id, sum);
    }
    let mut stmt = conn
        .prepare("SELECT id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at FROM tokens WHERE exp > ?1")
        .map_err(sql)?;
    for row in stmt
        .query_map(params![cutoff_s], token_from_row)
        .map_err(sql)?
    {
        let t = row.map_err(sql)?;
        let lifetime = lifetimes.get(&t.id).copied().unwrap_or(0);
        accounts.load_token(t, lifetime);
    }
    let mut stmt = conn
        .prepare(
            "SELECT id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, method, path, detail, settled_at_ms, digest
             FROM reservations WHERE at_ms > ?1 ORDER BY at_ms",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![cutoff_ms], |r| {
            let state: String = r.get(6)?;
            Ok(Reservation {
                id: r.get(0)?,
                token_id: r.get(1)?,
                policy: r.get(2)?,
                at_ms: r.get::<_, i64>(3)? as u64,
                reserved: r.get(4)?,
                counted: r.get(5)?,
                state: ReservationState::parse(&state).unwrap_or(ReservationState::Expired),
                idempotency_key: r.get(7)?,
                method: r.get(8)?,
                path: r.get(9)?,
                detail: r.get(10)?,
                settled_at_ms: r.get::<_, Option<i64>>(11)?.map(|s| s as u64),
                digest: r.get(12)?,
                // Views add usage up from the file; the accounts need none of it.
                usage: None,
            })
        })
        .map_err(sql)?;
    for row in rows {
        accounts.load_reservation(row.map_err(sql)?, now_ms);
    }
    let max_seq: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
            r.get(0)
        })
        .map_err(sql)?;
    accounts.set_next_seq(max_seq as u64 + 1);
    for e in reads::revocation_entries(conn, 0, now_ms / 1000)? {
        accounts.load_revocation(e);
    }
    let mut stmt = conn
        .prepare("SELECT body FROM alerts WHERE at_ms > ?1")
        .map_err(sql)?;
    for row in stmt
        .query_map(params![cutoff_ms], |r| r.get::<_, String>(0))
        .map_err(sql)?
    {
        if let Ok(a) = serde_json::from_str::<Alert>(&row.map_err(sql)?) {
            accounts.load_alert(&a);
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    async fn issue(&self, record: TokenRecord) -> StoreResult<()> {
        self.call(|r| Cmd::Issue(record, r)).await
    }

    async fn reserve(
        &self,
        claims: Claims,
        request: ReserveRequest,
    ) -> StoreResult<ReserveResponse> {
        self.call(|r| Cmd::Reserve(Box::new(claims), Box::new(request), r))
            .await
    }

    async fn settle(&self, settles: Vec<Settle>) -> StoreResult<usize> {
        self.call(|r| Cmd::Settle(settles, r)).await
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<usize> {
        self.call(|r| Cmd::Audit(records, r)).await
    }

    async fn revoke(&self, request: RevokeRequest) -> StoreResult<Result<RevokeOutcome, String>> {
        self.call(|r| Cmd::Revoke(request, r)).await
    }

    async fn revocations(&self, since: u64) -> StoreResult<RevocationFeed> {
        let now = self.clock.now_ms();
        self.read(move |c| reads::revocations(c, since, now)).await
    }

    async fn token(&self, id: String) -> StoreResult<Option<TokenView>> {
        let (policies, now) = (self.policies.clone(), self.clock.now_ms());
        self.read(move |c| reads::token(c, &policies, &id, now))
            .await
    }

    async fn tokens(&self, query: TokenQuery) -> StoreResult<Vec<TokenView>> {
        let (policies, now) = (self.policies.clone(), self.clock.now_ms());
        self.read(move |c| reads::tokens(c, &policies, &query, now))
            .await
    }

    async fn policies(&self) -> StoreResult<Vec<PolicyView>> {
        let (policies, now) = (self.policies.clone(), self.clock.now_ms());
        self.read(move |c| reads::policies(c, &policies, now)).await
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<AuditPage> {
        self.read(move |c| reads::audit(c, &query)).await
    }

    async fn maintain(&self) -> StoreResult<usize> {
        self.call(Cmd::Maintain).await
    }

    async fn due_alerts(&self, limit: usize) -> StoreResult<Vec<OutboxAlert>> {
        self.call(|r| Cmd::ClaimAlerts(limit, r)).await
    }

    async fn alert_attempted(
        &self,
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
    ) -> StoreResult<()> {
        self.call(|reply| Cmd::AlertAttempted {
            id,
            delivered,
            next_attempt_ms,
            reply,
        })
        .await
    }

    async fn health(&self) -> StoreResult<()> {
        if self.writer.is_finished() {
            return Err(StoreError("the ledger's writer has stopped".into()));
        }
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indexes of `reservations` whose first column is `token_id`.
    fn token_led_indexes(conn: &Connection) -> Vec<String> {
        let mut names = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'reservations'",
            )
            .unwrap();
        let names: Vec<String> = names
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|n| n.unwrap())
            .collect();
        names
            .into_iter()
            .filter(|n| {
                let first: String = conn
                    .query_row(&format!("PRAGMA index_info({n})"), [], |r| r.get(2))
                    .unwrap();
                first == "token_id"
            })
            .collect()
    }

    #[tokio::test]
    async fn a_view_reads_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let store = SqliteStore::open(&dir.path().join("l.db"), &[], 60_000, clock).unwrap();
        // Inside a transaction, every statement of a view sees the same commit.
        let in_transaction = store.read(|c| Ok(!c.is_autocommit())).await.unwrap();
        assert!(in_transaction);
    }

    #[test]
    fn reservations_have_one_index_keyed_by_token_new_or_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
        migrate(&mut fresh).unwrap();
        assert_eq!(token_led_indexes(&fresh), ["reservations_token_at"]);

        // A database written before migration 4 carries both.
        let mut old = Connection::open(dir.path().join("old.db")).unwrap();
        migrate(&mut old).unwrap();
        old.execute_batch(
            "CREATE INDEX reservations_token ON reservations (token_id); PRAGMA user_version = 3;",
        )
        .unwrap();
        assert_eq!(token_led_indexes(&old).len(), 2);
        migrate(&mut old).unwrap();
        assert_eq!(token_led_indexes(&old), ["reservations_token_at"]);
        // Reopened, the schema does not bring it back.
        migrate(&mut old).unwrap();
        assert_eq!(token_led_indexes(&old), ["reservations_token_at"]);
    }

    #[test]
    fn queries_by_token_still_use_an_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT COALESCE(SUM(counted), 0) FROM reservations WHERE token_id = ?1",
                ["tok"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("reservations_token_at"), "{plan}");
    }
}
