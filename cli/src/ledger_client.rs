//! The CLI's client for the ledger's admin API.

use std::time::Duration;

use serde_json::Value;

pub struct LedgerClient {
    base: String,
    admin_key: String,
    agent: ureq::Agent,
}

impl LedgerClient {
    pub fn new(base: &str, admin_key: &str) -> LedgerClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false)
            .build()
            .into();
        LedgerClient {
            base: base.trim_end_matches('/').to_string(),
            admin_key: admin_key.to_string(),
            agent,
        }
    }

    fn answer(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, String> {
        let mut response =
            result.map_err(|e| format!("cannot reach the ledger at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            let message = body
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| body.to_string());
            Err(format!("the ledger refused ({status}): {message}"))
        }
    }

    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.admin_key));
        for (k, v) in query {
            req = req.query(*k, v);
        }
        self.answer(req.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.admin_key));
        self.answer(req.send_json(body))
    }
}
