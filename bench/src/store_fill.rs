//! Grows a ledger database before the ledger starts: live tokens and recorded calls, written
//! straight into the ledger's schema, so that the load measures a store of that size.

use std::path::Path;

use rusqlite::{params, Connection};

const SCHEMA: &str = include_str!("../../ledger/src/store/sqlite/schema.sql");
/// Recorded calls are spread over the last week, as history accumulates.
const SPREAD_MS: u64 = 7 * 24 * 3600 * 1000;

pub fn token_id(i: usize) -> String {
    format!("tok_bench_{i:08}")
}

/// Writes `tokens` live tokens of `policy` and `calls` committed reservations among them.
pub fn fill(
    db: &Path,
    policy: &str,
    tokens: usize,
    calls: usize,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let mut conn = Connection::open(db)?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch("PRAGMA synchronous = OFF")?;
    let tx = conn.transaction()?;
    {
        let mut t = tx.prepare(
            "INSERT INTO tokens (id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at)
             VALUES (?1, ?2, 'stripe', ?3, ?4, ?5, '{\"endpoints\":null,\"merchants\":null,\"caps\":{}}', 1, NULL)",
        )?;
        let now_s = (now_ms / 1000) as i64;
        for i in 0..tokens {
            t.execute(params![
                token_id(i),
                policy,
                format!("bench/{i}"),
                now_s - 60,
                now_s + 3 * 3600
            ])?;
        }
        let mut r = tx.prepare(
            "INSERT INTO reservations (id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, method, path, detail, settled_at_ms)
             VALUES (?1, ?2, ?3, ?4, 10000, 10000, 'committed', NULL, 'POST', '/v1/payment_intents', 'bench', ?4)",
        )?;
        for i in 0..calls {
            let at = now_ms - (i as u64 * 7919) % SPREAD_MS;
            r.execute(params![
                format!("{:032x}", i as u128 + (1u128 << 100)),
                token_id(i % tokens.max(1)),
                policy,
                at as i64
            ])?;
        }
    }
    tx.commit()
}
