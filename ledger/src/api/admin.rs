//! The admin surface: for people and orchestrators.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bridle_core::issue::{claims_for, IssueRequest};

use super::errors::{ApiJson, ApiQuery};
use super::{ApiError, App};
use crate::accounts::{RevokeRequest, TokenRecord};
use crate::store::{AuditQuery, Store, TokenQuery};

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness",
        )
    })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// `POST /v1/tokens`: issues a vault token. The token is in this response only; the ledger
/// keeps its claims, never the token itself.
pub async fn issue<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiJson(req): ApiJson<IssueRequest>,
) -> Result<Response, ApiError> {
    let policy = app.policies.get(&req.policy).ok_or_else(|| {
        ApiError::bad_request(format!("policy: no policy named {:?}", req.policy))
    })?;
    let id = format!("tok_{}", random_hex(12)?);
    let now = app.now_ms() / 1000;
    let claims = claims_for(policy, &req, id, now).map_err(|errors| {
        ApiError::bad_request(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let token = app
        .keyring
        .mint(&claims)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e))?;
    app.store
        .issue(TokenRecord::from_claims(&claims, true))
        .await
        .map_err(ApiError::store)?;
    tracing::info!(token = %claims.id, policy = %claims.policy, label = %claims.label, exp = claims.exp, "issued");
    let body = serde_json::json!({
        "token": token,
        "id": claims.id,
        "policy": claims.policy,
        "vendor": claims.vendor,
        "label": claims.label,
        "issued_at": claims.iat,
        "expires_at": claims.exp,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list_tokens<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    if let Some(status) = &q.status {
        if !["active", "revoked", "expired"].contains(&status.as_str()) {
            return Err(ApiError::bad_request(
                "status must be active, revoked or expired",
            ));
        }
    }
    let tokens = app.store.tokens(q).await.map_err(ApiError::store)?;
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

pub async fn get_token<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app.store.token(id.clone()).await.map_err(ApiError::store)? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No token {id:?}."),
        )),
    }
}

/// `POST /v1/revocations`: one token, a label prefix, or a whole policy. Effective in the
/// filter within one revocation poll (200 ms by default).
pub async fn revoke<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Response, ApiError> {
    let outcome = app
        .store
        .revoke(req)
        .await
        .map_err(ApiError::store)?
        .map_err(ApiError::bad_request)?;
    tracing::info!(
        kind = ?outcome.revocation.kind,
        value = %outcome.revocation.value,
        seq = outcome.revocation.seq,
        tokens = outcome.tokens_revoked,
        "revoked"
    );
    Ok(Json(outcome).into_response())
}

pub async fn audit<S: Store>(
    State(app): State<Arc<App<S>>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    if q.after.is_some() && q.cursor().is_none() {
        return Err(ApiError::bad_request(
            "after must be the next value of a previous page",
        ));
    }
    let page = app.store.audit(q).await.map_err(ApiError::store)?;
    Ok(Json(page).into_response())
}

pub async fn policies<S: Store>(State(app): State<Arc<App<S>>>) -> Result<Response, ApiError> {
    let policies = app.store.policies().await.map_err(ApiError::store)?;
    Ok(Json(serde_json::json!({ "policies": policies })).into_response())
}
