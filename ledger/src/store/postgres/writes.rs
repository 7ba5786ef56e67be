//! Writes outside the accounting batch: issuing, revoking, audit ingestion, expiry and
//! alert delivery records. Each is one transaction (or one statement) of its own, safe to
//! run from every replica at once.

use bridle_core::ledger_api::AuditRecord;
use deadpool_postgres::{Pool, Transaction};

use super::batch::Failure;
use super::rows::{db, narrowing};
use super::{client, pg, REVOCATION_LOCK};
use crate::policies::Policies;
use crate::records::{RevokeOutcome, RevokeRequest, TokenRecord};
use crate::revocations::{kind_str, plan};
use crate::store::{StoreError, StoreResult};
use bridle_core::revocation::RevocationKind;

/// Inserts tokens; one already there is left as it is (a revocation may have marked it).
pub(super) async fn insert_tokens(
    tx: &Transaction<'_>,
    tokens: &[&TokenRecord],
) -> Result<(), Failure> {
    let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
    let policies: Vec<&str> = tokens.iter().map(|t| t.policy.as_str()).collect();
    let vendors: Vec<&str> = tokens.iter().map(|t| t.vendor.name()).collect();
    let labels: Vec<&str> = tokens.iter().map(|t| t.label.as_str()).collect();
    let iat: Vec<i64> = tokens.iter().map(|t| db(t.iat)).collect();
    let exp: Vec<i64> = tokens.iter().map(|t| db(t.exp)).collect();
    let narrowings = tokens
        .iter()
        .map(|t| narrowing(t))
        .collect::<StoreResult<Vec<_>>>()?;
    let issued: Vec<bool> = tokens.iter().map(|t| t.issued).collect();
    let revoked: Vec<Option<i64>> = tokens.iter().map(|t| t.revoked_at.map(db)).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO tokens (id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::jsonb[], $8::bool[], $9::bigint[])
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &ids,
            &policies,
            &vendors,
            &labels,
            &iat,
            &exp,
            &narrowings,
            &issued,
            &revoked,
        ],
    )
    .await?;
    Ok(())
}

pub async fn issue(pool: &Pool, record: TokenRecord) -> StoreResult<()> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    insert_tokens(&tx, &[&record])
        .await
        .map_err(Failure::into_store)?;
    tx.commit().await.map_err(pg)
}

/// Numbers the revocation from the database and marks the tokens it covers, in one
/// transaction holding the revocation lock: batches in flight finish first, and every
/// batch after it reads it.
pub async fn revoke(
    pool: &Pool,
    policies: &Policies,
    now_ms: u64,
    req: RevokeRequest,
) -> StoreResult<Result<RevokeOutcome, String>> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATION_LOCK])
        .await
        .map_err(pg)?;
    let exp = match &req.token_id {
        Some(id) => tx
            .query_opt("SELECT exp FROM tokens WHERE id = $1", &[id])
            .await
            .map_err(pg)?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()
            .map_err(pg)?,
        None => None,
    };
    let planned = match plan(&req, now_ms, policies, |_| exp.map(super::rows::un)) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let seq: i64 = tx
        .query_one("UPDATE revocation_seq SET seq = seq + 1 RETURNING seq", &[])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    let (at, until) = (db(planned.at), db(planned.until));
    tx.execute(
        "INSERT INTO revocations (seq, kind, value, at, until, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&seq, &kind_str(planned.kind), &planned.value, &at, &until, &db(now_ms)],
    )
    .await
    .map_err(pg)?;
    // The tokens the entry covers, by the same rule as `RevocationSet::revokes`.
    let covered = match planned.kind {
        RevocationKind::Token => {
            tx.execute(
                "UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id = $1",
                &[&planned.value, &at],
            )
            .await
        }
        RevocationKind::LabelPrefix => {
            tx.execute(
                "UPDATE tokens SET revoked_at = $2
                 WHERE revoked_at IS NULL AND starts_with(label, $1) AND iat <= $2",
                &[&planned.value, &at],
            )
            .await
        }
        RevocationKind::Policy => {
            tx.execute(
                "UPDATE tokens SET revoked_at = $2
                 WHERE revoked_at IS NULL AND policy = $1 AND iat <= $2",
                &[&planned.value, &at],
            )
            .await
        }
    }
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(RevokeOutcome {
        revocation: planned.entry(super::rows::un(seq)),
        tokens_revoked: usize::try_from(covered).unwrap_or(usize::MAX),
    }))
}

/// Stores a batch of audit records in one statement; ids already stored are skipped.
pub async fn append_audit(pool: &Pool, records: Vec<AuditRecord>) -> StoreResult<usize> {
    let c = client(pool).await?;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let at: Vec<i64> = records.iter().map(|r| db(r.at_ms)).collect();
    let text = |f: fn(&AuditRecord) -> Option<&str>| -> Vec<Option<String>> {
        records.iter().map(|r| f(r).map(without_nul)).collect()
    };
    let tokens = text(|r| r.token_id.as_deref());
    let labels = text(|r| r.label.as_deref());
    let policies = text(|r| r.policy.as_deref());
    let bodies = records
        .iter()
        .map(|r| {
            let mut body = serde_json::to_value(r)?;
            scrub_nul(&mut body);
            Ok(body)
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()
        .map_err(|e| StoreError(format!("audit record: {e}")))?;
    let st = c
        .prepare_cached(
            "INSERT INTO audit (id, at_ms, token_id, label, policy, record)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::jsonb[])
             ON CONFLICT (id) DO NOTHING",
        )
        .await
        .map_err(pg)?;
    let n = c
        .execute(&st, &[&ids, &at, &tokens, &labels, &policies, &bodies])
        .await
        .map_err(pg)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// PostgreSQL's text and JSON cannot hold NUL, which a record's text may (a model name read
/// from a request body): it is stored as U+FFFD. Refused, it would fail the whole report
/// on every resend, and with it every later audit record of that filter.
fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

fn scrub_nul(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => *s = without_nul(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub_nul),
        serde_json::Value::Object(o) => o.values_mut().for_each(scrub_nul),
        _ => {}
    }
}

/// Reservations left unsettled for the whole TTL expire into spend (counted as they are:
/// no sum changes). One statement: run from every replica at once, each row expires once,
/// and a settle holding the row first wins.
pub async fn expire(pool: &Pool, now_ms: u64, ttl_ms: u64) -> StoreResult<usize> {
    let c = client(pool).await?;
    let cutoff = db(now_ms.saturating_sub(ttl_ms));
    let n = c
        .execute(
            "UPDATE reservations SET state = 'expired', settled_at_ms = $1
             WHERE state = 'reserved' AND at_ms <= $2",
            &[&db(now_ms), &cutoff],
        )
        .await
        .map_err(pg)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Claims due alerts for `lease_ms`: another replica's deliverer skips them meanwhile.
pub async fn claim_alerts(
    pool: &Pool,
    now_ms: u64,
    lease_ms: u64,
    limit: usize,
) -> StoreResult<Vec<(serde_json::Value, i32)>> {
    let c = client(pool).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "UPDATE alerts SET next_attempt_ms = $2
             WHERE id IN (SELECT id FROM alerts
                          WHERE delivered_at_ms IS NULL AND NOT failed AND next_attempt_ms <= $1
                          ORDER BY at_ms LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING body, attempts, at_ms",
            &[&db(now_ms), &db(now_ms.saturating_add(lease_ms)), &limit],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((
            r.try_get::<_, i64>(2).map_err(pg)?,
            r.try_get(0).map_err(pg)?,
            r.try_get(1).map_err(pg)?,
        ));
    }
    out.sort_by_key(|(at, _, _)| *at);
    Ok(out.into_iter().map(|(_, b, a)| (b, a)).collect())
}

pub async fn alert_attempted(
    pool: &Pool,
    now_ms: u64,
    id: String,
    delivered: bool,
    next_attempt_ms: Option<u64>,
) -> StoreResult<()> {
    let c = client(pool).await?;
    let failed = !delivered && next_attempt_ms.is_none();
    c.execute(
        "UPDATE alerts SET attempts = attempts + 1,
            delivered_at_ms = CASE WHEN $2 THEN $3 ELSE delivered_at_ms END,
            next_attempt_ms = COALESCE($4, next_attempt_ms),
            failed = $5
         WHERE id = $1",
        &[
            &id,
            &delivered,
            &db(now_ms),
            &next_attempt_ms.map(db),
            &failed,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
