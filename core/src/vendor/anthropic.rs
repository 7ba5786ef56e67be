//! Anthropic: `x-api-key` (the 2.x SDK may send `Authorization: Bearer`); no tenants;
//! errors as `{"type": "error", "error": {type, message}}`.
//!
//! The Messages API documents no idempotency key, and the official SDKs never send one
//! (`idempotency_header` is unset): a retry is executed, and billed, again. So every call is
//! priced afresh, whatever `Idempotency-Key` it carries.

use super::{Presentation, Profile};
use crate::Reason;

pub(crate) struct Anthropic;

impl Profile for Anthropic {
    fn default_upstream(&self) -> &'static str {
        "https://api.anthropic.com"
    }

    fn presentations(&self) -> &'static [Presentation] {
        &[Presentation::ApiKeyHeader, Presentation::Bearer]
    }

    fn expected_presentation(&self) -> &'static str {
        "x-api-key: <vault token> (or Authorization: Bearer)"
    }

    fn injection(&self, secret: &str) -> Result<Vec<(&'static str, String)>, String> {
        Ok(vec![("x-api-key", secret.to_string())])
    }

    /// The Anthropic SDK raises `PaymentRequiredError` for 402 (`_error_classes.py`), which
    /// reads as the Anthropic account's billing. A cap is a limit on the token, so it answers
    /// 403, and the SDK raises `PermissionDeniedError`.
    fn status(&self, reason: Reason) -> u16 {
        match reason.status() {
            402 => 403,
            status => status,
        }
    }

    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value {
        let kind = match status {
            401 => "authentication_error",
            403 => "permission_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        serde_json::json!({
            "type": "error",
            "error": { "type": kind, "message": message, "details": { "error_code": code } },
        })
    }
}
