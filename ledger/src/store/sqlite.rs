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
use bridle_core::money::Usd;
use bridle_core::policy::{CapsNarrowing, CompiledPolicy};
use bridle_core::revocation::{RevocationEntry, RevocationFeed, RevocationKind};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{AuditPage, AuditQuery, OutboxAlert, Store, StoreError, StoreResult, TokenQuery};
use crate::accounts::{
    token_status, Accounts, Alert, Change, PolicyView, Reservation, ReservationState,
    RevokeOutcome, RevokeRequest, SpendView, TokenRecord, TokenView, IDEMPOTENCY_RETENTION_MS,
};
use crate::clock::SharedClock;

/// Most commands one commit carries.
pub const MAX_BATCH: usize = 2048;

const SCHEMA: &str = include_str!("schema.sql");

type Reply<T> = oneshot::Sender<StoreResult<T>>;
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

enum Cmd {
    Issue(TokenRecord, Reply<()>),
    Reserve(Box<Claims>, Box<ReserveRequest>, Reply<ReserveResponse>),
    Settle(Vec<Settle>, Reply<usize>),
    Audit(Vec<AuditRecord>, Reply<usize>),
    Revoke(RevokeRequest, Reply<Result<RevokeOutcome, String>>),
    Feed(u64, Reply<RevocationFeed>),
    Token(String, Reply<Option<TokenView>>),
    Tokens(TokenQuery, Reply<Vec<TokenView>>),
    Policies(Reply<Vec<PolicyView>>),
    Maintain(Reply<usize>),
    AlertAttempted {
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
        reply: Reply<()>,
    },
}

pub struct SqliteStore {
    tx: Mutex<Sender<Cmd>>,
    reader: Arc<Mutex<Connection>>,
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

#[derive(Serialize, Deserialize)]
struct Narrowing {
    endpoints: Option<Vec<String>>,
    merchants: Option<Vec<String>>,
    caps: CapsNarrowing,
}

impl SqliteStore {
    pub fn open(
        path: &Path,
        policies: &[CompiledPolicy],
        reservation_ttl_ms: u64,
        clock: SharedClock,
    ) -> StoreResult<SqliteStore> {
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let mut accounts = Accounts::new(policies, reservation_ttl_ms);
        load(&conn, &mut accounts, clock.now_ms(), reservation_ttl_ms)?;
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
        let (tx, rx) = mpsc::channel();
        let writer_clock = clock.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer(conn, accounts, rx, writer_clock))
            .map_err(|e| StoreError(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx: Mutex::new(tx),
            reader: Arc::new(Mutex::new(reader)),
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
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| StoreError("reader lock poisoned".into()))?;
            f(&conn)
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
                    "INSERT OR IGNORE INTO audit (id, at_ms, vendor, token_id, label, policy, method, path, status, reason, cost, reservation, merchant)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
                        r.merchant
                    ])
                    .map_err(sql)?;
            }
            respond(reply, added)
        }
        Cmd::Revoke(request, reply) => respond(reply, accounts.revoke(now, &request)),
        Cmd::Feed(since, reply) => respond(reply, accounts.revocations_since(since)),
        Cmd::Token(id, reply) => respond(reply, accounts.token_view(now, &id)),
        Cmd::Tokens(query, reply) => {
            let mut out: Vec<TokenView> = accounts
                .token_ids()
                .into_iter()
                .filter_map(|id| accounts.token_view(now, &id))
                .filter(|v| query.matches(v))
                .collect();
            out.sort_by(|a, b| (b.record.iat, &b.record.id).cmp(&(a.record.iat, &a.record.id)));
            out.truncate(
                query
                    .limit
                    .unwrap_or(super::DEFAULT_PAGE)
                    .clamp(1, super::MAX_PAGE),
            );
            respond(reply, out)
        }
        Cmd::Policies(reply) => respond(reply, accounts.policy_views(now)),
        Cmd::Maintain(reply) => {
            let expired = accounts.expire(now);
            // Written before eviction, which may forget the very reservations that expired.
            let changes = accounts.take_changes();
            persist(tx, accounts, changes)?;
            accounts.evict(now);
            respond(reply, expired)
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
                let narrowing = serde_json::to_string(&Narrowing {
                    endpoints: t.endpoints,
                    merchants: t.merchants,
                    caps: t.caps,
                })
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
                    "INSERT INTO reservations (id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, method, path, detail, settled_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
                    r.settled_at_ms.map(|s| s as i64)
                ])
                .map_err(sql)?;
            }
            Change::Settled(id) => {
                let Some(r) = accounts.reservation(&id) else {
                    continue;
                };
                tx.prepare_cached("UPDATE reservations SET counted = ?2, state = ?3, settled_at_ms = ?4 WHERE id = ?1")
                    .map_err(sql)?
                    .execute(params![r.id, r.counted, r.state.as_str(), r.settled_at_ms.map(|s| s as i64)])
                    .map_err(sql)?;
            }
            Change::Revocation(e) => {
                tx.prepare_cached("INSERT INTO revocations (seq, kind, value, at, until) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .map_err(sql)?
                    .execute(params![e.seq as i64, kind_str(e.kind), e.value, e.at as i64, e.until as i64])
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

fn kind_str(k: RevocationKind) -> &'static str {
    match k {
        RevocationKind::Token => "token",
        RevocationKind::LabelPrefix => "label_prefix",
        RevocationKind::Policy => "policy",
    }
}

fn parse_kind(s: &str) -> Option<RevocationKind> {
    match s {
        "token" => Some(RevocationKind::Token),
        "label_prefix" => Some(RevocationKind::LabelPrefix),
        "policy" => Some(RevocationKind::Policy),
        _ => None,
    }
}

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let vendor: String = row.get(2)?;
    let narrowing: String = row.get(6)?;
    let n: Narrowing = serde_json::from_str(&narrowing).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(TokenRecord {
        id: row.get(0)?,
        policy: row.get(1)?,
        vendor: Vendor::from_name(&vendor).unwrap_or(Vendor::Stripe),
        label: row.get(3)?,
        iat: row.get::<_, i64>(4)? as u64,
        exp: row.get::<_, i64>(5)? as u64,
        endpoints: n.endpoints,
        merchants: n.merchants,
        caps: n.caps,
        issued: row.get(7)?,
        revoked_at: row.get::<_, Option<i64>>(8)?.map(|r| r as u64),
    })
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
            "SELECT id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, method, path, detail, settled_at_ms
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
    let mut stmt = conn
        .prepare(
            "SELECT seq, kind, value, at, until FROM revocations WHERE until >= ?1 ORDER BY seq",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![(now_ms / 1000) as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (seq, kind, value, at, until) = row.map_err(sql)?;
        if let Some(kind) = parse_kind(&kind) {
            accounts.load_revocation(RevocationEntry {
                seq: seq as u64,
                kind,
                value,
                at: at as u64,
                until: until as u64,
            });
        }
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

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let vendor: String = r.get(2)?;
    let reason: String = r.get(9)?;
    Ok(AuditRecord {
        id: r.get(0)?,
        at_ms: r.get::<_, i64>(1)? as u64,
        vendor: Vendor::from_name(&vendor).unwrap_or(Vendor::Stripe),
        token_id: r.get(3)?,
        label: r.get(4)?,
        policy: r.get(5)?,
        method: r.get(6)?,
        path: r.get(7)?,
        status: r.get(8)?,
        reason: Reason::from_code(&reason).unwrap_or(Reason::Internal),
        cost: r.get::<_, Option<i64>>(10)?.and_then(Usd::from_micros),
        reservation: r.get(11)?,
        merchant: r.get(12)?,
        model: None,
        usage: None,
        usage_missing: None,
        over_reservation: false,
    })
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
        self.call(|r| Cmd::Feed(since, r)).await
    }

    async fn token(&self, id: String) -> StoreResult<Option<TokenView>> {
        let live = self
            .call({
                let id = id.clone();
                |r| Cmd::Token(id, r)
            })
            .await?;
        if live.is_some() {
            return Ok(live);
        }
        // Long gone from memory: its record and all-time spend from disk.
        let now_s = self.clock.now_ms() / 1000;
        self.read(move |conn| {
            let record = conn
                .query_row("SELECT id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at FROM tokens WHERE id = ?1", params![id], token_from_row)
                .optional()
                .map_err(sql)?;
            let Some(record) = record else { return Ok(None) };
            let lifetime: i64 = conn
                .query_row("SELECT COALESCE(SUM(counted), 0) FROM reservations WHERE token_id = ?1", params![record.id], |r| r.get(0))
                .map_err(sql)?;
            Ok(Some(TokenView {
                status: token_status(&record, now_s),
                effective_caps: Default::default(),
                spend: SpendView { lifetime: Usd::from_micros(lifetime).unwrap_or_default(), ..Default::default() },
                record,
            }))
        })
        .await
    }

    async fn tokens(&self, query: TokenQuery) -> StoreResult<Vec<TokenView>> {
        self.call(|r| Cmd::Tokens(query, r)).await
    }

    async fn policies(&self) -> StoreResult<Vec<PolicyView>> {
        self.call(Cmd::Policies).await
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<AuditPage> {
        self.read(move |conn| {
            let limit = query.page_size();
            let (after_at, after_id) = query.cursor().map_or((-1, String::new()), |(a, i)| (a as i64, i));
            let upper = query.label_prefix.as_ref().map(|p| format!("{p}\u{7f}"));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, at_ms, vendor, token_id, label, policy, method, path, status, reason, cost, reservation, merchant
                     FROM audit
                     WHERE (?1 IS NULL OR token_id = ?1)
                       AND (?2 IS NULL OR policy = ?2)
                       AND (?3 IS NULL OR (label >= ?3 AND label < ?4))
                       AND (?5 IS NULL OR at_ms >= ?5)
                       AND (?6 IS NULL OR at_ms < ?6)
                       AND (at_ms > ?7 OR (at_ms = ?7 AND id > ?8))
                     ORDER BY at_ms, id
                     LIMIT ?9",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(
                    params![
                        query.token_id,
                        query.policy,
                        query.label_prefix,
                        upper,
                        query.since_ms.map(|s| s as i64),
                        query.until_ms.map(|u| u as i64),
                        after_at,
                        after_id,
                        (limit + 1) as i64
                    ],
                    audit_from_row,
                )
                .map_err(sql)?;
            let records = rows.collect::<Result<Vec<_>, _>>().map_err(sql)?;
            Ok(AuditPage::from_sorted(records, limit))
        })
        .await
    }

    async fn maintain(&self) -> StoreResult<usize> {
        self.call(Cmd::Maintain).await
    }

    async fn due_alerts(&self, limit: usize) -> StoreResult<Vec<OutboxAlert>> {
        let now = self.clock.now_ms() as i64;
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body, attempts FROM alerts WHERE delivered_at_ms IS NULL AND failed = 0 AND next_attempt_ms <= ?1 ORDER BY at_ms LIMIT ?2",
                )
                .map_err(sql)?;
            let rows = stmt.query_map(params![now, limit as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))).map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (body, attempts) = row.map_err(sql)?;
                if let Ok(alert) = serde_json::from_str(&body) {
                    out.push(OutboxAlert { alert, attempts });
                }
            }
            Ok(out)
        })
        .await
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
}
