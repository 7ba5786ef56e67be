//! Cost rules: what a call to an endpoint costs, in dollars, decided before it is forwarded.
//!
//! A rule reads the amount from the request body (Stripe's `amount` and `currency`), charges a
//! fixed price per call, per SMS segment or per email recipient, or reserves an estimate that
//! the response settles. A costed call whose cost cannot be determined is refused, never
//! waved through.

use serde::{Deserialize, Serialize};

use crate::money::Usd;
use crate::policy::ConfigError;

/// Where an amount lives in a body: `field` holds integer minor units of the currency named
/// by `currency_field` (or the fixed `currency`). Fields use Stripe's bracket notation for
/// nesting, `transfer_data[amount]`, in form and JSON bodies alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountField {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// What a fixed price is multiplied by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    #[default]
    Call,
    /// SMS segments of the message text (GSM-7: 160, or 153 per part; otherwise UCS-2: 70,
    /// or 67 per part).
    SmsSegment,
    /// Email recipients: every address in `to`, `cc` and `bcc` (or `recipient_fields`).
    Recipient,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostRule {
    /// The amount the request asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<AmountField>,
    /// A fixed price in dollars, multiplied by `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Usd>,
    #[serde(default, skip_serializing_if = "is_call")]
    pub per: Per,
    /// The message text, for `per: sms_segment` (default `Body`, Twilio's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// The recipient fields, for `per: recipient` (default `to`, `cc`, `bcc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_fields: Option<Vec<String>>,
    /// With `amount`: reserved when the request names no amount (a Stripe refund of a whole
    /// charge). Alone: an estimate reserved for every call. Must be an upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Usd>,
    /// Settle from the response: commit the amount it reports instead of the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<AmountField>,
}

fn is_call(p: &Per) -> bool {
    *p == Per::Call
}

fn check_field_name(name: &str) -> Result<(), String> {
    let mut rest = name;
    let head_end = rest.find('[').unwrap_or(rest.len());
    let (head, tail) = rest.split_at(head_end);
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !plain(head) {
        return Err(format!(
            "{name:?} is not a field name such as amount or transfer_data[amount]"
        ));
    }
    rest = tail;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').and_then(|r| r.split_once(']'));
        match inner {
            Some((key, after)) if plain(key) => rest = after,
            _ => {
                return Err(format!(
                    "{name:?} is not a field name such as amount or transfer_data[amount]"
                ))
            }
        }
    }
    Ok(())
}

fn check_currency(c: &str) -> Result<(), String> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!("{c:?} is not a currency code such as usd"))
    }
}

impl AmountField {
    fn check(&self, at: &str, errors: &mut Vec<ConfigError>) {
        if let Err(e) = check_field_name(&self.field) {
            errors.push(ConfigError::new(format!("{at}.field"), e));
        }
        match (&self.currency_field, &self.currency) {
            (Some(f), None) => {
                if let Err(e) = check_field_name(f) {
                    errors.push(ConfigError::new(format!("{at}.currency_field"), e));
                }
            }
            (None, Some(c)) => {
                if let Err(e) = check_currency(c) {
                    errors.push(ConfigError::new(format!("{at}.currency"), e));
                }
            }
            _ => errors.push(ConfigError::new(
                at,
                "give exactly one of currency_field and currency",
            )),
        }
    }
}

impl CostRule {
    /// Checks the rule's shape; `at` is its field path, e.g. `endpoints[0].cost`.
    pub fn check(&self, at: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: &str| {
            let field = if field.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{field}")
            };
            errors.push(ConfigError::new(field, message));
        };
        match (&self.amount, &self.fixed, &self.max) {
            (Some(_), None, _) | (None, Some(_), None) | (None, None, Some(_)) => {}
            (None, None, None) => fail(
                "",
                "give amount (read from the request), fixed (a price) or max (an estimate)",
            ),
            _ => fail(
                "",
                "give only one of amount and fixed; max goes with amount or alone",
            ),
        }
        if self.per != Per::Call && self.fixed.is_none() {
            fail("per", "per applies to a fixed price");
        }
        if self.text_field.is_some() && self.per != Per::SmsSegment {
            fail("text_field", "text_field applies to per: sms_segment");
        }
        if self.recipient_fields.is_some() && self.per != Per::Recipient {
            fail(
                "recipient_fields",
                "recipient_fields applies to per: recipient",
            );
        }
        if let Some(f) = &self.text_field {
            if let Err(e) = check_field_name(f) {
                fail("text_field", &e);
            }
        }
        if let Some(fields) = &self.recipient_fields {
            if fields.is_empty() {
                fail("recipient_fields", "list at least one field");
            }
            for f in fields {
                if let Err(e) = check_field_name(f) {
                    fail("recipient_fields", &e);
                }
            }
        }
        if self.max == Some(Usd::ZERO) || self.fixed == Some(Usd::ZERO) {
            fail("", "a zero price is no cost rule; remove it");
        }
        if let Some(a) = &self.amount {
            a.check(&format!("{at}.amount"), &mut errors);
        }
        if let Some(s) = &self.settle {
            if self.fixed.is_some() {
                errors.push(ConfigError::new(
                    format!("{at}.settle"),
                    "a fixed price is not settled from the response",
                ));
            }
            s.check(&format!("{at}.settle"), &mut errors);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: serde_json::Value) -> CostRule {
        serde_json::from_value(v).unwrap()
    }

    fn fields(r: &CostRule) -> Vec<String> {
        r.check("c").into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn good_rules_pass() {
        for v in [
            serde_json::json!({"amount": {"field": "amount", "currency_field": "currency"}}),
            serde_json::json!({"amount": {"field": "amount", "currency_field": "currency"}, "max": "100", "settle": {"field": "amount", "currency_field": "currency"}}),
            serde_json::json!({"max": "500", "settle": {"field": "amount_paid", "currency_field": "currency"}}),
            serde_json::json!({"fixed": "0.0079", "per": "sms_segment", "text_field": "Body"}),
            serde_json::json!({"fixed": "0.0009", "per": "recipient"}),
            serde_json::json!({"amount": {"field": "transfer_data[amount]", "currency": "eur"}}),
        ] {
            assert!(
                rule(v.clone()).check("c").is_empty(),
                "{v}: {:?}",
                rule(v.clone()).check("c")
            );
        }
    }

    #[test]
    fn bad_rules_name_their_field() {
        assert_eq!(fields(&rule(serde_json::json!({}))), ["c"]);
        assert_eq!(
            fields(&rule(serde_json::json!({"fixed": "1", "max": "2"}))),
            ["c"]
        );
        assert_eq!(
            fields(&rule(serde_json::json!({"max": "2", "per": "recipient"}))),
            ["c.per"]
        );
        assert_eq!(
            fields(&rule(serde_json::json!({"amount": {"field": "amount"}}))),
            ["c.amount"]
        );
        assert_eq!(
            fields(&rule(
                serde_json::json!({"amount": {"field": "a[", "currency": "USD"}})
            )),
            ["c.amount.field", "c.amount.currency"]
        );
        assert_eq!(
            fields(&rule(
                serde_json::json!({"fixed": "1", "settle": {"field": "x", "currency": "usd"}})
            )),
            ["c.settle"]
        );
        assert!(serde_json::from_value::<CostRule>(
            serde_json::json!({"fixed": "1", "per": "minute"})
        )
        .is_err());
        assert!(serde_json::from_value::<CostRule>(serde_json::json!({"fixd": "1"})).is_err());
    }
}
