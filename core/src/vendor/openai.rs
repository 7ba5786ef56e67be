//! OpenAI: `Authorization: Bearer`; no tenants Bridle scopes on; errors as `{"error":
//! {message, type, param, code}}`.
//!
//! The API documents no idempotency key, and the official SDK never sends one (its
//! `_idempotency_header` is unset): a retry is executed, and billed, again. So every call is
//! priced afresh, whatever `Idempotency-Key` it carries.

use super::{Presentation, Profile};
use crate::Reason;

pub(crate) struct Openai;

impl Profile for Openai {
    fn default_upstream(&self) -> &'static str {
        "https://api.openai.com"
    }

    fn presentations(&self) -> &'static [Presentation] {
        &[Presentation::Bearer]
    }

    fn expected_presentation(&self) -> &'static str {
        "Authorization: Bearer <vault token>"
    }

    fn injection(&self, secret: &str) -> Result<Vec<(&'static str, String)>, String> {
        Ok(vec![("authorization", format!("Bearer {secret}"))])
    }

    /// The OpenAI SDK has no class of its own for 402 (`_client.py`, `_make_status_error`): a
    /// cap would surface as a bare `APIStatusError` of type `billing_error`, which reads as the
    /// OpenAI account's billing. A cap is a limit on the token, so it answers 403, and the SDK
    /// raises `PermissionDeniedError`.
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
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        serde_json::json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        })
    }
}
