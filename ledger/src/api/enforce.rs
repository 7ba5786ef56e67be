//! The enforcement surface: called only by the filter.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bridle_core::ledger_api::{
    check_digest, check_request_id, Report, ReportResponse, ReserveRequest, ReserveResponse,
    Settle, DEADLINE_HEADER,
};
use bridle_core::policy::MAX_LEASE_CALLS;
use bridle_core::Reason;
use serde::Deserialize;

use super::errors::{ApiJson, ApiQuery};
use super::{ApiError, App};
use crate::metrics::{OutcomeLabel, PolicyLabel, ReserveLabels};
use crate::store::Store;

/// How far the proxy's clock may trail the ledger's before a reservation is refused as read
/// too late. Generous for NTP-synchronized hosts, far below any stall worth refusing.
const DEADLINE_GRACE_MS: u64 = 1_000;

/// Largest batch a report may carry.
const MAX_REPORT_ITEMS: usize = 20_000;

/// `POST /v1/enforce/reserve`. The ledger verifies the token itself rather than trust the
/// caller's reading of it, then checks every cap and reserves in one step.
pub async fn reserve<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ReserveRequest>,
) -> Result<Response, ApiError> {
    if !check_request_id(&req.request_id) {
        return Err(ApiError::bad_request(
            "request_id must be 16-64 lowercase hex digits",
        ));
    }
    if let Some(calls) = req.lease_calls {
        if !(1..=MAX_LEASE_CALLS).contains(&calls) {
            return Err(ApiError::bad_request(format!(
                "lease_calls must be between 1 and {MAX_LEASE_CALLS}"
            )));
        }
        // A keyed retry spent from a lease would count twice: keyed calls are replayed by
        // their own reservation.
        if req.idempotency_key.is_some() {
            return Err(ApiError::bad_request(
                "a lease cannot carry an idempotency key",
            ));
        }
    }
    if req.digest.as_deref().is_some_and(|d| !check_digest(d)) {
        return Err(ApiError::bad_request(
            "digest must be 64 lowercase hex digits (SHA-256)",
        ));
    }
    let deadline = headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if deadline.is_some_and(|d| app.now_ms() > d.saturating_add(DEADLINE_GRACE_MS)) {
        // The ledger was stalled (paused, swapping, overloaded) and the proxy has already
        // refused this call; reserving now would hold spend for nothing.
        app.metrics.late_reserves.inc();
        return Ok(Json(ReserveResponse::Denied {
            reason: Reason::LedgerUnavailable,
            message: "The ledger read this reservation after the proxy stopped waiting.".into(),
            retry_after_secs: None,
        })
        .into_response());
    }
    let response = match app.verify(&req.token) {
        Err(e) => ReserveResponse::Denied {
            reason: e.reason(),
            message: format!("{e}."),
            retry_after_secs: None,
        },
        Ok(claims) => {
            let policy_vendor = app.policies.get(&claims.policy).map(|p| p.policy.vendor);
            if policy_vendor.is_some_and(|v| v != claims.vendor) {
                ReserveResponse::Denied {
                    reason: Reason::TokenWrongVendor,
                    message: "The token's vendor does not match its policy.".into(),
                    retry_after_secs: None,
                }
            } else {
                let policy = claims.policy.clone();
                let amount = req.amount;
                let started = std::time::Instant::now();
                let r = app
                    .store
                    .reserve(claims, req)
                    .await
                    .map_err(ApiError::store)?;
                app.metrics
                    .reserve_seconds
                    .observe(started.elapsed().as_secs_f64());
                let (decision, reason) = match &r {
                    ReserveResponse::Granted {
                        replay: false,
                        leased_calls,
                        ..
                    } => {
                        let calls = leased_calls.unwrap_or(1);
                        let usd = amount.micros() as f64 / 1e6 * f64::from(calls);
                        app.metrics
                            .reserved_usd
                            .get_or_create(&PolicyLabel {
                                policy: policy.clone(),
                            })
                            .inc_by(usd);
                        ("granted", Reason::Allowed)
                    }
                    ReserveResponse::Granted { replay: true, .. } => ("replay", Reason::Allowed),
                    ReserveResponse::Denied { reason, .. } => ("denied", *reason),
                };
                app.metrics
                    .reservations
                    .get_or_create(&ReserveLabels {
                        policy,
                        decision: decision.into(),
                        reason: reason.code().into(),
                    })
                    .inc();
                r
            }
        }
    };
    Ok(Json(response).into_response())
}

fn check_settles(settles: &[Settle]) -> Result<(), ApiError> {
    match settles.iter().find(|s| !check_request_id(&s.reservation)) {
        Some(_) => Err(ApiError::bad_request(
            "reservation ids are 16-64 lowercase hex digits",
        )),
        None => Ok(()),
    }
}

fn count_settles<S>(app: &App<S>, settles: &[Settle]) {
    for s in settles {
        let outcome = serde_json::to_value(s.outcome)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        app.metrics
            .settles
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// `POST /v1/enforce/settle`: one settle.
pub async fn settle<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiJson(s): ApiJson<Settle>,
) -> Result<Response, ApiError> {
    check_settles(std::slice::from_ref(&s))?;
    count_settles(&app, std::slice::from_ref(&s));
    let settled = app.store.settle(vec![s]).await.map_err(ApiError::store)?;
    Ok(Json(serde_json::json!({ "settled": settled })).into_response())
}

/// `POST /v1/enforce/report`: a filter's batch of settles and audit records.
pub async fn report<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiJson(report): ApiJson<Report>,
) -> Result<Response, ApiError> {
    if report.settles.len() + report.audit.len() > MAX_REPORT_ITEMS {
        return Err(ApiError::bad_request(format!(
            "a report carries at most {MAX_REPORT_ITEMS} items"
        )));
    }
    check_settles(&report.settles)?;
    if report.audit.iter().any(|r| !check_request_id(&r.id)) {
        return Err(ApiError::bad_request(
            "audit ids are 16-64 lowercase hex digits",
        ));
    }
    count_settles(&app, &report.settles);
    for r in &report.audit {
        if r.over_reservation {
            app.metrics.over_reservation.inc();
        }
        if r.usage_missing.is_some() {
            app.metrics.usage_missing.inc();
        }
    }
    let settled = if report.settles.is_empty() {
        0
    } else {
        app.store
            .settle(report.settles)
            .await
            .map_err(ApiError::store)?
    };
    let audited = if report.audit.is_empty() {
        0
    } else {
        app.store
            .append_audit(report.audit)
            .await
            .map_err(ApiError::store)?
    };
    app.metrics.audit_records.inc_by(audited as u64);
    Ok(Json(ReportResponse { settled, audited }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    #[serde(default)]
    since: u64,
}

/// `GET /v1/enforce/revocations?since=N`.
pub async fn revocations<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiQuery(q): ApiQuery<Since>,
) -> Result<Response, ApiError> {
    let feed = app
        .store
        .revocations(q.since)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(feed).into_response())
}
