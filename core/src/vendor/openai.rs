//! OpenAI: `Authorization: Bearer`; no tenants Bridle scopes on; errors as `{"error":
//! {message, type, param, code}}`.

use super::{Presentation, Profile};

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

    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value {
        let kind = match status {
            401 => "authentication_error",
            402 => "billing_error",
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
