//! Read-only views on SQLite, from the database file on reader connections of their own:
//! token and policy spend, the revocation feed, the audit log. Each view runs inside one
//! read transaction (`SqliteStore::read`), so all its statements see the same commit. They
//! never wait for the writer (WAL readers see the last commit), so a burst of reserves
//! cannot slow a health check, a metrics scrape or a revocation poll.
//!
//! Sums are read as the in-memory accounts keep them: a rolling window holds the
//! reservations made after `now - window`, the lifetime every one ever made.

use bridle_core::ledger_api::AuditRecord;
use bridle_core::money::Usd;
use bridle_core::revocation::{RevocationEntry, RevocationFeed};
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use rusqlite::{params, Connection, OptionalExtension};

use super::sql;
use crate::caps::{short_span, window_span, Span};
use crate::policies::Policies;
use crate::records::{Narrowing, TokenRecord};
use crate::revocations::parse_kind;
use crate::store::{
    usage_from_sums, AuditExtra, AuditPage, AuditQuery, StoreError, StoreResult, TokenQuery,
    USAGE_CLASSES,
};
use crate::views::{self, PolicyView, TokenView};

pub const TOKEN_COLUMNS: &str =
    "id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at";

pub fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
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

fn sum(conn: &Connection, query: &str, args: impl rusqlite::Params) -> StoreResult<i64> {
    conn.prepare_cached(query)
        .map_err(sql)?
        .query_row(args, |r| r.get(0))
        .map_err(sql)
}

pub fn token(
    conn: &Connection,
    policies: &Policies,
    id: &str,
    now_ms: u64,
) -> StoreResult<Option<TokenView>> {
    let record = conn
        .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))
        .map_err(sql)?
        .query_row(params![id], token_from_row)
        .optional()
        .map_err(sql)?;
    let Some(record) = record else {
        return Ok(None);
    };
    let caps = policies
        .get(&record.policy)
        .map(|p| p.policy.policy.caps.clone())
        .unwrap_or_default();
    let window = window_span(&caps);
    let floor = window.floor(now_ms) as i64;
    let lifetime = sum(
        conn,
        "SELECT COALESCE(SUM(counted), 0) FROM reservations WHERE token_id = ?1",
        params![id],
    )?;
    let in_window = sum(
        conn,
        "SELECT COALESCE(SUM(counted), 0) FROM reservations WHERE token_id = ?1 AND at_ms > ?2",
        params![id, floor],
    )?;
    let open = sum(
        conn,
        "SELECT COALESCE(SUM(counted), 0) FROM reservations
         WHERE token_id = ?1 AND at_ms > ?2 AND state IN ('reserved', 'held')",
        params![id, floor],
    )?;
    // The breaker's window: its sum, and when the oldest spend inside was made.
    let (in_short, short_oldest) = match short_span(&caps) {
        Some(short) => conn
            .prepare_cached(
                "SELECT COALESCE(SUM(counted), 0), MIN(CASE WHEN counted > 0 THEN at_ms END)
                 FROM reservations WHERE token_id = ?1 AND at_ms > ?2",
            )
            .map_err(sql)?
            .query_row(params![id, short.floor(now_ms) as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .map_err(sql)?,
        None => (0, None),
    };
    let usage = conn
        .prepare_cached(&usage_sums_sql())
        .map_err(sql)?
        .query_row(params![id], |r| {
            let mut sums = [0i64; 6];
            for (i, s) in sums.iter_mut().enumerate() {
                *s = r.get(i)?;
            }
            Ok(sums)
        })
        .map_err(sql)?;
    Ok(Some(views::token_view(
        record,
        &caps,
        |span| {
            if span == Span::Ever {
                lifetime
            } else if span == window {
                in_window
            } else {
                in_short
            }
        },
        open,
        usage_from_sums(usage),
        short_oldest.map(|at| at as u64),
        now_ms,
    )))
}

/// Each usage class's sum over a token's reservations (`?1`), in [`USAGE_CLASSES`] order.
fn usage_sums_sql() -> String {
    let sums: Vec<String> = USAGE_CLASSES
        .iter()
        .map(|c| format!("COALESCE(SUM(json_extract(usage, '$.{c}')), 0)"))
        .collect();
    format!(
        "SELECT {} FROM reservations WHERE token_id = ?1 AND usage IS NOT NULL",
        sums.join(", ")
    )
}

pub fn tokens(
    conn: &Connection,
    policies: &Policies,
    query: &TokenQuery,
    now_ms: u64,
) -> StoreResult<Vec<TokenView>> {
    let limit = query
        .limit
        .unwrap_or(crate::store::DEFAULT_PAGE)
        .clamp(1, crate::store::MAX_PAGE) as i64;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id FROM tokens
             WHERE (?1 IS NULL OR policy = ?1)
               AND (?2 IS NULL OR substr(label, 1, length(?2)) = ?2)
               AND (?3 IS NULL
                    OR (?3 = 'revoked' AND revoked_at IS NOT NULL)
                    OR (?3 = 'active' AND revoked_at IS NULL AND exp > ?4)
                    OR (?3 = 'expired' AND revoked_at IS NULL AND exp <= ?4))
             ORDER BY iat DESC, id DESC LIMIT ?5",
        )
        .map_err(sql)?;
    let ids = stmt
        .query_map(
            params![
                query.policy,
                query.label_prefix,
                query.status,
                (now_ms / 1000) as i64,
                limit
            ],
            |r| r.get::<_, String>(0),
        )
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(v) = token(conn, policies, &id, now_ms)? {
            out.push(v);
        }
    }
    Ok(query.page(out))
}

pub fn policies(
    conn: &Connection,
    policies: &Policies,
    now_ms: u64,
) -> StoreResult<Vec<PolicyView>> {
    let mut out = Vec::new();
    for p in policies.iter() {
        let floor = window_span(&p.policy.policy.caps).floor(now_ms) as i64;
        let s = sum(
            conn,
            "SELECT COALESCE(SUM(counted), 0) FROM reservations WHERE policy = ?1 AND at_ms > ?2",
            params![p.policy.policy.name, floor],
        )?;
        out.push(views::policy_view(&p.policy, s));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Live revocation entries after `since`, in order.
pub fn revocation_entries(
    conn: &Connection,
    since: u64,
    now_s: u64,
) -> StoreResult<Vec<RevocationEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, value, at, until, at_ms FROM revocations
             WHERE seq > ?1 AND until >= ?2 ORDER BY seq",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![since as i64, now_s as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(sql)?;
    let mut entries = Vec::new();
    for row in rows {
        let (seq, kind, value, at, until, at_ms) = row.map_err(sql)?;
        let kind =
            parse_kind(&kind).ok_or_else(|| StoreError(format!("revocation kind {kind:?}")))?;
        entries.push(RevocationEntry {
            seq: seq as u64,
            kind,
            value,
            at: at as u64,
            until: until as u64,
            at_ms: at_ms as u64,
        });
    }
    Ok(entries)
}

/// The feed and its sequence number, from the one snapshot every view reads in.
pub fn revocations(conn: &Connection, since: u64, now_ms: u64) -> StoreResult<RevocationFeed> {
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM revocations")
        .map_err(sql)?
        .query_row([], |r| r.get(0))
        .map_err(sql)?;
    Ok(RevocationFeed {
        seq: seq as u64,
        entries: revocation_entries(conn, since, now_ms / 1000)?,
        reset: false,
    })
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let vendor: String = r.get(2)?;
    let reason: String = r.get(9)?;
    let extra = AuditExtra::from_json(r.get::<_, Option<String>>(13)?.as_deref());
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
        model: extra.model,
        usage: extra.usage,
        usage_missing: extra.usage_missing,
        over_reservation: extra.over_reservation,
        replay: extra.replay,
    })
}

pub fn audit(conn: &Connection, query: &AuditQuery) -> StoreResult<AuditPage> {
    let limit = query.page_size();
    let (after_at, after_id) = query
        .cursor()
        .map_or((-1, String::new()), |(a, i)| (a as i64, i));
    let upper = query.label_prefix.as_ref().map(|p| format!("{p}\u{7f}"));
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at_ms, vendor, token_id, label, policy, method, path, status, reason, cost, reservation, merchant, extra
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
}
