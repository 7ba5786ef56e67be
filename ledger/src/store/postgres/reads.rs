//! Read-only views, on their own connections: token and policy spend, the revocation feed,
//! the audit log. Nothing here takes a lock or waits for a batch; each view reads one
//! snapshot (a read-only repeatable-read transaction), with rolling sums brought up to now
//! as they are read (what a batch would subtract, subtracted here without writing).

use std::collections::HashMap;

use bridle_core::ledger_api::AuditRecord;
use bridle_core::llm::TokenUsage;
use bridle_core::revocation::{RevocationEntry, RevocationFeed};
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::IsolationLevel;

use super::rows::{self, db, un, TOKEN_COLUMNS};
use super::{client, pg};
use crate::caps::{short_span, window_span, Span};
use crate::policies::Policies;
use crate::revocations::parse_kind;
use crate::store::{
    usage_from_sums, AuditPage, AuditQuery, StoreError, StoreResult, TokenQuery, USAGE_CLASSES,
};
use crate::views::{self, PolicyView, TokenView};

async fn snapshot(c: &mut deadpool_postgres::Client) -> StoreResult<Transaction<'_>> {
    c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Each scope's sums, up to now: (id, span) -> sum.
async fn sums(
    tx: &Transaction<'_>,
    scope: &str,
    ids: &[String],
    now_ms: u64,
) -> StoreResult<HashMap<(String, Span), i64>> {
    let column = if scope == "token" {
        "token_id"
    } else {
        "policy"
    };
    let st = tx
        .prepare_cached(&format!(
            "SELECT w.id, w.span_ms,
                    w.sum - CASE WHEN w.span_ms > 0 AND $3 - w.span_ms > w.floor_ms
                      THEN (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                            WHERE r.{column} = w.id AND r.at_ms > w.floor_ms
                              AND r.at_ms <= $3 - w.span_ms)
                      ELSE 0 END::bigint
             FROM windows w WHERE w.scope = $1 AND w.id = ANY($2)"
        ))
        .await
        .map_err(pg)?;
    let mut out = HashMap::new();
    for r in tx
        .query(&st, &[&scope, &ids, &db(now_ms)])
        .await
        .map_err(pg)?
    {
        out.insert(
            (
                r.try_get(0).map_err(pg)?,
                Span::from_key(r.try_get(1).map_err(pg)?),
            ),
            r.try_get(2).map_err(pg)?,
        );
    }
    Ok(out)
}

/// Views of the tokens among `ids` the database knows, in no particular order.
async fn token_views(
    tx: &Transaction<'_>,
    policies: &Policies,
    ids: &[String],
    now_ms: u64,
) -> StoreResult<Vec<TokenView>> {
    let st = tx
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ANY($1)"
        ))
        .await
        .map_err(pg)?;
    let records = tx
        .query(&st, &[&ids])
        .await
        .map_err(pg)?
        .iter()
        .map(rows::token)
        .collect::<StoreResult<Vec<_>>>()?;
    let sums = sums(tx, "token", ids, now_ms).await?;
    // What is still open in each token's window.
    let floors: Vec<i64> = records
        .iter()
        .map(|t| db(now_ms.saturating_sub(policies.window_ms(&t.policy))))
        .collect();
    let record_ids: Vec<&str> = records.iter().map(|t| t.id.as_str()).collect();
    let st = tx
        .prepare_cached(
            "SELECT k.id, (SELECT COALESCE(SUM(r.counted), 0) FROM reservations r
                           WHERE r.token_id = k.id AND r.state IN ('reserved', 'held')
                             AND r.at_ms > k.floor)::bigint
             FROM unnest($1::text[], $2::bigint[]) AS k(id, floor)",
        )
        .await
        .map_err(pg)?;
    let mut open: HashMap<String, i64> = HashMap::new();
    for r in tx.query(&st, &[&record_ids, &floors]).await.map_err(pg)? {
        open.insert(r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?);
    }
    // When the oldest spend inside each breaker's window was made.
    let (breaker_ids, breaker_floors): (Vec<&str>, Vec<i64>) = records
        .iter()
        .filter_map(|t| {
            let span = short_span(&policies.get(&t.policy)?.policy.policy.caps)?;
            Some((t.id.as_str(), db(span.floor(now_ms))))
        })
        .unzip();
    let mut oldest: HashMap<String, i64> = HashMap::new();
    if !breaker_ids.is_empty() {
        let st = tx
            .prepare_cached(
                "SELECT k.id, (SELECT MIN(r.at_ms) FROM reservations r
                               WHERE r.token_id = k.id AND r.at_ms > k.floor AND r.counted > 0)
                 FROM unnest($1::text[], $2::bigint[]) AS k(id, floor)",
            )
            .await
            .map_err(pg)?;
        for r in tx
            .query(&st, &[&breaker_ids, &breaker_floors])
            .await
            .map_err(pg)?
        {
            if let Some(at) = r.try_get::<_, Option<i64>>(1).map_err(pg)? {
                oldest.insert(r.try_get(0).map_err(pg)?, at);
            }
        }
    }
    let usage = usage_sums(tx, &record_ids).await?;
    Ok(records
        .into_iter()
        .map(|record| {
            let caps = policies
                .get(&record.policy)
                .map(|p| p.policy.policy.caps.clone())
                .unwrap_or_default();
            let id = record.id.clone();
            let o = open.get(&id).copied().unwrap_or(0);
            let u = usage.get(&id).copied().unwrap_or_default();
            let since = oldest.get(&id).map(|at| un(*at));
            views::token_view(
                record,
                &caps,
                |span| sums.get(&(id.clone(), span)).copied().unwrap_or(0),
                o,
                u,
                since,
                now_ms,
            )
        })
        .collect())
}

/// Each token's LLM tokens by class, from the usage its committed calls stored.
async fn usage_sums(
    tx: &Transaction<'_>,
    ids: &[&str],
) -> StoreResult<HashMap<String, TokenUsage>> {
    let sums: Vec<String> = USAGE_CLASSES
        .iter()
        .map(|c| format!("COALESCE(SUM((usage->>'{c}')::bigint), 0)::bigint"))
        .collect();
    let st = tx
        .prepare_cached(&format!(
            "SELECT token_id, {} FROM reservations
             WHERE token_id = ANY($1) AND usage IS NOT NULL GROUP BY token_id",
            sums.join(", ")
        ))
        .await
        .map_err(pg)?;
    let mut out = HashMap::new();
    for r in tx.query(&st, &[&ids]).await.map_err(pg)? {
        let mut sums = [0i64; 6];
        for (i, s) in sums.iter_mut().enumerate() {
            *s = r.try_get(i + 1).map_err(pg)?;
        }
        out.insert(r.try_get(0).map_err(pg)?, usage_from_sums(sums));
    }
    Ok(out)
}

pub async fn token(
    pool: &Pool,
    policies: &Policies,
    id: String,
    now_ms: u64,
) -> StoreResult<Option<TokenView>> {
    let mut c = client(pool).await?;
    let tx = snapshot(&mut c).await?;
    Ok(token_views(&tx, policies, &[id], now_ms).await?.pop())
}

pub async fn tokens(
    pool: &Pool,
    policies: &Policies,
    query: TokenQuery,
    now_ms: u64,
) -> StoreResult<Vec<TokenView>> {
    let mut c = client(pool).await?;
    let tx = snapshot(&mut c).await?;
    let limit = i64::try_from(
        query
            .limit
            .unwrap_or(crate::store::DEFAULT_PAGE)
            .clamp(1, crate::store::MAX_PAGE),
    )
    .unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT id FROM tokens
             WHERE ($1::text IS NULL OR policy = $1)
               AND ($2::text IS NULL OR starts_with(label, $2))
               AND ($3::text IS NULL
                    OR ($3 = 'revoked' AND revoked_at IS NOT NULL)
                    OR ($3 = 'active' AND revoked_at IS NULL AND exp > $4)
                    OR ($3 = 'expired' AND revoked_at IS NULL AND exp <= $4))
             ORDER BY iat DESC, id DESC LIMIT $5",
            &[
                &query.policy,
                &query.label_prefix,
                &query.status,
                &db(now_ms / 1000),
                &limit,
            ],
        )
        .await
        .map_err(pg)?;
    let ids = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()
        .map_err(pg)?;
    let views = token_views(&tx, policies, &ids, now_ms).await?;
    Ok(query.page(views))
}

pub async fn policies(
    pool: &Pool,
    policies: &Policies,
    now_ms: u64,
) -> StoreResult<Vec<PolicyView>> {
    let mut c = client(pool).await?;
    let tx = snapshot(&mut c).await?;
    let names: Vec<String> = policies
        .iter()
        .map(|p| p.policy.policy.name.clone())
        .collect();
    let sums = sums(&tx, "policy", &names, now_ms).await?;
    let mut out: Vec<PolicyView> = policies
        .iter()
        .map(|p| {
            let span = window_span(&p.policy.policy.caps);
            let sum = sums
                .get(&(p.policy.policy.name.clone(), span))
                .copied()
                .unwrap_or(0);
            views::policy_view(&p.policy, sum)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The feed and its sequence number, from one snapshot: an entry is never missing below
/// the number given.
pub async fn revocations(pool: &Pool, since: u64, now_ms: u64) -> StoreResult<RevocationFeed> {
    let c = client(pool).await?;
    let st = c
        .prepare_cached(
            "SELECT s.seq, e.seq, e.kind, e.value, e.at, e.until, e.at_ms
             FROM revocation_seq s
             LEFT JOIN revocations e ON e.seq > $1 AND e.until >= $2
             ORDER BY e.seq",
        )
        .await
        .map_err(pg)?;
    let rows = c
        .query(&st, &[&db(since), &db(now_ms / 1000)])
        .await
        .map_err(pg)?;
    let mut feed = RevocationFeed::default();
    for r in rows {
        feed.seq = un(r.try_get(0).map_err(pg)?);
        let Some(seq) = r.try_get::<_, Option<i64>>(1).map_err(pg)? else {
            continue;
        };
        let kind: String = r.try_get(2).map_err(pg)?;
        let kind =
            parse_kind(&kind).ok_or_else(|| StoreError(format!("revocation kind {kind:?}")))?;
        feed.entries.push(RevocationEntry {
            seq: un(seq),
            kind,
            value: r.try_get(3).map_err(pg)?,
            at: un(r.try_get(4).map_err(pg)?),
            until: un(r.try_get(5).map_err(pg)?),
            at_ms: un(r.try_get(6).map_err(pg)?),
        });
    }
    Ok(feed)
}

pub async fn audit(pool: &Pool, query: AuditQuery) -> StoreResult<AuditPage> {
    let c = client(pool).await?;
    let limit = query.page_size();
    let (after_at, after_id) = query
        .cursor()
        .map_or((-1, String::new()), |(a, i)| (db(a), i));
    let st = c
        .prepare_cached(
            "SELECT record FROM audit
             WHERE ($1::text IS NULL OR token_id = $1)
               AND ($2::text IS NULL OR policy = $2)
               AND ($3::text IS NULL OR starts_with(label, $3))
               AND ($4::bigint IS NULL OR at_ms >= $4)
               AND ($5::bigint IS NULL OR at_ms < $5)
               AND (at_ms > $6 OR (at_ms = $6 AND id > $7))
             ORDER BY at_ms, id
             LIMIT $8",
        )
        .await
        .map_err(pg)?;
    let rows = c
        .query(
            &st,
            &[
                &query.token_id,
                &query.policy,
                &query.label_prefix,
                &query.since_ms.map(db),
                &query.until_ms.map(db),
                &after_at,
                &after_id,
                &i64::try_from(limit + 1).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(pg)?;
    let records = rows
        .iter()
        .map(|r| {
            let v: serde_json::Value = r.try_get(0).map_err(pg)?;
            serde_json::from_value::<AuditRecord>(v)
                .map_err(|e| StoreError(format!("postgres: unreadable audit record: {e}")))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(AuditPage::from_sorted(records, limit))
}

/// The database answers a trivial query.
pub async fn ping(pool: &Pool) -> StoreResult<()> {
    let c = client(pool).await?;
    c.simple_query("SELECT 1").await.map_err(pg)?;
    Ok(())
}
