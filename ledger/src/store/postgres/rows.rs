//! Rows to records and back: the column lists every query shares, and the conversions.

use bridle_core::vendor::Vendor;
use tokio_postgres::Row;

use crate::records::{Narrowing, Reservation, ReservationState, TokenRecord};
use crate::store::{StoreError, StoreResult};

pub const TOKEN_COLUMNS: &str =
    "id, policy, vendor, label, iat, exp, narrowing, issued, revoked_at";
pub const RESERVATION_COLUMNS: &str = "id, token_id, policy, at_ms, reserved, counted, state, idempotency_key, digest, method, path, detail, settled_at_ms";

/// Unix times and money go into BIGINT columns.
pub fn db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// ... and come back as unsigned; a negative stored time reads as 0.
pub fn un(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("postgres: unreadable {what}: {e}"))
}

pub fn token(row: &Row) -> StoreResult<TokenRecord> {
    let vendor: String = row.try_get(2).map_err(|e| corrupt("token", e))?;
    let narrowing: serde_json::Value = row.try_get(6).map_err(|e| corrupt("token", e))?;
    let n: Narrowing = serde_json::from_value(narrowing).map_err(|e| corrupt("token", e))?;
    let get = |i: usize| -> StoreResult<i64> { row.try_get(i).map_err(|e| corrupt("token", e)) };
    Ok(TokenRecord {
        id: row.try_get(0).map_err(|e| corrupt("token", e))?,
        policy: row.try_get(1).map_err(|e| corrupt("token", e))?,
        vendor: Vendor::from_name(&vendor).ok_or_else(|| corrupt("token", &vendor))?,
        label: row.try_get(3).map_err(|e| corrupt("token", e))?,
        iat: un(get(4)?),
        exp: un(get(5)?),
        endpoints: n.endpoints,
        merchants: n.merchants,
        caps: n.caps,
        issued: row.try_get(7).map_err(|e| corrupt("token", e))?,
        revoked_at: row
            .try_get::<_, Option<i64>>(8)
            .map_err(|e| corrupt("token", e))?
            .map(un),
    })
}

pub fn reservation(row: &Row) -> StoreResult<Reservation> {
    let e = |e: tokio_postgres::Error| corrupt("reservation", e);
    let state: String = row.try_get(6).map_err(e)?;
    Ok(Reservation {
        id: row.try_get(0).map_err(e)?,
        token_id: row.try_get(1).map_err(e)?,
        policy: row.try_get(2).map_err(e)?,
        at_ms: un(row.try_get(3).map_err(e)?),
        reserved: row.try_get(4).map_err(e)?,
        counted: row.try_get(5).map_err(e)?,
        state: ReservationState::parse(&state).ok_or_else(|| corrupt("reservation", &state))?,
        idempotency_key: row.try_get(7).map_err(e)?,
        digest: row.try_get(8).map_err(e)?,
        method: row.try_get(9).map_err(e)?,
        path: row.try_get(10).map_err(e)?,
        detail: row.try_get(11).map_err(e)?,
        settled_at_ms: row.try_get::<_, Option<i64>>(12).map_err(e)?.map(un),
        // Written with a commit, added up by views; a batch's rules never read it.
        usage: None,
    })
}

pub fn narrowing(t: &TokenRecord) -> StoreResult<serde_json::Value> {
    serde_json::to_value(Narrowing::of(t)).map_err(|e| StoreError(format!("token: {e}")))
}
