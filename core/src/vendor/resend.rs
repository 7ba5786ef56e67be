//! Resend: `Authorization: Bearer`; no tenants; errors as `{statusCode, name, message}`.

use super::{Presentation, Profile};

pub(crate) struct Resend;

impl Profile for Resend {
    fn default_upstream(&self) -> &'static str {
        "https://api.resend.com"
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

    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value {
        // Resend's SDK maps some names to classes that replace the message (401
        // `missing_api_key`), so only names that keep it are used; otherwise the name is
        // Bridle's reason code.
        let name = match status {
            400 => "validation_error",
            429 => "rate_limit_exceeded",
            500 => "application_error",
            _ => code,
        };
        serde_json::json!({
            "statusCode": status,
            "name": name,
            "message": message,
            "bridle_reason": code,
        })
    }

    /// Resend honours `Idempotency-Key` (resend.com/docs/dashboard/emails/idempotency-keys)
    /// on `POST /emails` and `POST /emails/batch` only: the same key within 24 hours returns
    /// the first response without sending again. Other endpoints ignore the header.
    fn idempotency_header(&self, method: &str, path: &str) -> Option<&'static str> {
        (method == "POST" && matches!(path, "/emails" | "/emails/batch"))
            .then_some("idempotency-key")
    }
}
