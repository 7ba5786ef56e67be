//! Cost rules: what a call to an endpoint costs, in dollars, decided before it is forwarded.
//!
//! A rule reads the amount from the request body (Stripe's `amount` and `currency`), charges a
//! fixed price per call, per SMS segment or per email recipient, or reserves an estimate that
//! the response settles. A costed call whose cost cannot be determined is refused, never
//! waved through.

use serde::{Deserialize, Serialize};

use crate::body::{json_get, shown, Body, Item, Lookup};
use crate::money::{FxTable, MoneyError, Usd};
use crate::policy::ConfigError;
use crate::vendor::Vendor;

/// What pricing needs besides the request: the vendor, whose API says how many decimals an
/// amount's minor unit has, and the policy's exchange rates.
#[derive(Clone, Copy, Debug)]
pub struct Pricing<'a> {
    pub vendor: Vendor,
    pub fx: &'a FxTable,
}

impl<'a> Pricing<'a> {
    pub fn new(vendor: Vendor, fx: &'a FxTable) -> Pricing<'a> {
        Pricing { vendor, fx }
    }
}

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
    /// With `per: sms_segment`: the price of one MMS, and of one message rendered from a
    /// template (its vendor says which a message is: `MessageKind`). A message of a kind
    /// without a price is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mms: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Usd>,
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
    /// An LLM call priced by tokens under the policy's `models` (see `crate::llm`): reserves
    /// an upper bound, settles from the usage the response reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::llm::TokenApi>,
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
        if self.tokens.is_some() {
            let alone = CostRule {
                tokens: self.tokens,
                ..CostRule::default()
            };
            if *self != alone {
                fail("", "tokens prices a call by itself: give it alone");
            }
            return errors;
        }
        match (&self.amount, &self.fixed, &self.max) {
            (Some(_), None, _) | (None, Some(_), None) | (None, None, Some(_)) => {}
            (None, None, None) => fail(
                "",
                "give amount (read from the request), fixed (a price), max (an estimate) or tokens (an LLM call)",
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
        for (field, price) in [("mms", self.mms), ("template", self.template)] {
            if price.is_some() && self.per != Per::SmsSegment {
                fail(field, &format!("{field} applies to per: sms_segment"));
            }
            if price == Some(Usd::ZERO) {
                fail(field, "a zero price is no price; remove it");
            }
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

// Evaluation: what a given request costs.

/// An amount read from a body has at most this many digits (in minor units).
const MAX_AMOUNT_DIGITS: usize = 18;
/// No single cost may exceed a billion dollars (in micro-dollars), like every amount in a
/// policy: the ledger's sums of many costs stay far inside i64.
const MAX_COST_MICROS: i64 = 1_000_000_000 * 1_000_000;
/// Twilio's message text field.
const DEFAULT_TEXT_FIELD: &str = "Body";
/// Email recipient fields, as Resend (and most email APIs) name them.
const DEFAULT_RECIPIENT_FIELDS: [&str; 3] = ["to", "cc", "bcc"];

/// What a request will cost: the reservation, and a short human description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub reserve: Usd,
    pub detail: String,
}

/// Why a request's cost cannot be determined. `reason` is `BodyUnreadable` (a body that is not
/// strict form or JSON, including a JSON body with a duplicate key), `CostUndetermined` (the
/// amount is absent, ambiguous, malformed or overflows) or `CurrencyUnknown`; `message` says
/// what is wrong in terms of the request, and never echoes the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostError {
    pub reason: crate::Reason,
    pub message: String,
}

impl CostError {
    fn undetermined(message: impl Into<String>) -> CostError {
        CostError {
            reason: crate::Reason::CostUndetermined,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for CostError {}

fn read_body(content_type: Option<&[u8]>, body: &[u8]) -> Result<Body, CostError> {
    Body::read(content_type, body).map_err(|e| CostError {
        reason: crate::Reason::BodyUnreadable,
        message: e.0,
    })
}

/// `usd` if it is at most [`MAX_COST_MICROS`].
fn within_limit(usd: Usd) -> Option<Usd> {
    (usd.micros() <= MAX_COST_MICROS).then_some(usd)
}

/// Converts with the policy's rates, naming the problem in the policy's terms.
fn convert(pricing: Pricing<'_>, minor: u64, currency: &str) -> Result<Usd, CostError> {
    let too_large = || {
        CostError::undetermined(format!(
            "{minor} {currency} (in minor units) is more than the $1,000,000,000 Bridle can price"
        ))
    };
    let exponent = pricing.vendor.minor_unit_exponent(currency);
    let usd = pricing
        .fx
        .to_usd(minor, currency, exponent)
        .map_err(|e| match e {
            MoneyError::UnknownCurrency(c) => CostError {
                reason: crate::Reason::CurrencyUnknown,
                message: format!("currency {c:?} has no exchange rate in policy"),
            },
            _ => too_large(),
        })?;
    within_limit(usd).ok_or_else(too_large)
}

/// `1999` minor units of usd as `19.99`, of jpy as `1999`, of kwd as `1.999`.
fn in_major_units(vendor: Vendor, minor: u64, currency: &str) -> String {
    let exponent = vendor.minor_unit_exponent(currency) as usize;
    let digits = format!("{minor:0>width$}", width = exponent.saturating_add(1));
    let split = digits.len().saturating_sub(exponent);
    match digits.split_at_checked(split) {
        Some((whole, frac)) if !frac.is_empty() => format!("{whole}.{frac}"),
        _ => digits,
    }
}

/// A whole number of minor units written as text: ASCII digits only, no sign, no leading
/// zero, at most [`MAX_AMOUNT_DIGITS`] digits.
fn parse_minor(field: &str, text: &str) -> Result<u64, CostError> {
    let not_whole = || {
        CostError::undetermined(format!(
            "{field} {} is not a whole number of minor currency units, such as 2000 for $20.00",
            shown(text)
        ))
    };
    if text.is_empty() {
        return Err(CostError::undetermined(format!("{field} is empty")));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_whole());
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(CostError::undetermined(format!(
            "{field} {} has a leading zero",
            shown(text)
        )));
    }
    if text.len() > MAX_AMOUNT_DIGITS {
        return Err(CostError::undetermined(format!(
            "{field} has more than {MAX_AMOUNT_DIGITS} digits"
        )));
    }
    text.parse().map_err(|_| not_whole())
}

/// What `lookup` says about an amount: `None` if absent.
fn amount_of(field: &str, lookup: Lookup<'_>) -> Result<Option<u64>, CostError> {
    let not_whole = || {
        CostError::undetermined(format!(
            "{field} must be a single whole number of minor currency units, such as 2000 for $20.00"
        ))
    };
    match lookup {
        Lookup::Absent => Ok(None),
        Lookup::Ambiguous => Err(CostError::undetermined(format!(
            "{field} is given more than once"
        ))),
        Lookup::List(_) | Lookup::Nested => Err(not_whole()),
        Lookup::One(Item::Text(text)) => parse_minor(field, text).map(Some),
        Lookup::One(Item::Json(value)) => match value {
            serde_json::Value::String(text) => parse_minor(field, text).map(Some),
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(v) if v.to_string().len() <= MAX_AMOUNT_DIGITS => Ok(Some(v)),
                Some(_) => Err(CostError::undetermined(format!(
                    "{field} has more than {MAX_AMOUNT_DIGITS} digits"
                ))),
                None if n.is_i64() => Err(CostError::undetermined(format!(
                    "{field} is negative"
                ))),
                None => Err(CostError::undetermined(format!(
                    "{field} is not a whole number: give minor currency units, such as 2000 for $20.00"
                ))),
            },
            _ => Err(not_whole()),
        },
    }
}

/// The currency of an amount at `field`, which the rule prices in `expected` (its fixed
/// currency, or the one its `currency_field` named). The vendor charges in the currency the
/// body names nearest the amount (Stripe's `currency`, at the top or beside the amount, as in
/// `line_items[0][price_data][currency]`), not the policy's: `amount=400&currency=gbp` priced
/// as US cents would be £4.00 charged as $4.00, under-counted by the rate. A body that names
/// another currency at any level above the amount, or names one in any way but once as a
/// plain code, is not priced.
fn agreed_currency(expected: &str, field: &str, body: &Body) -> Result<String, CostError> {
    let expected = expected.to_ascii_lowercase();
    let levels = field
        .match_indices('[')
        .map(|(at, _)| format!("{}[{VENDOR_CURRENCY_FIELD}]", &field[..at]));
    for named in std::iter::once(VENDOR_CURRENCY_FIELD.to_string()).chain(levels) {
        match body.get(&named) {
            Lookup::Absent => {}
            Lookup::One(item)
                if item
                    .as_str()
                    .is_some_and(|code| code.eq_ignore_ascii_case(&expected)) => {}
            _ => {
                let named = shown(&named);
                let why = format!("the body's {named} must be {expected}, given once");
                return Err(CostError::undetermined(format!(
                    "the amount is priced in {expected}: {why}"
                )));
            }
        }
    }
    Ok(expected)
}

/// What the vendor names a body's currency (Stripe's parameter).
const VENDOR_CURRENCY_FIELD: &str = "currency";

impl AmountField {
    /// How the rule names its currency, for messages: `currency`, or `eur`.
    fn currency_source(&self) -> String {
        match (&self.currency_field, &self.currency) {
            (Some(f), _) => f.clone(),
            (None, Some(c)) => format!("{c} (fixed)"),
            (None, None) => "a currency".into(),
        }
    }

    fn read_currency(&self, body: &Body, whose: &str) -> Result<String, CostError> {
        let field = match (&self.currency_field, &self.currency) {
            (Some(field), _) => field,
            (None, Some(fixed)) => return agreed_currency(fixed, &self.field, body),
            (None, None) => {
                return Err(CostError::undetermined(
                    "this endpoint's cost rule names no currency",
                ))
            }
        };
        let code = |text: &str| {
            (text.len() == 3 && text.bytes().all(|b| b.is_ascii_alphabetic()))
                .then(|| text.to_ascii_lowercase())
                .ok_or_else(|| {
                    CostError::undetermined(format!(
                        "{field} {} is not a three-letter currency code such as usd",
                        shown(text)
                    ))
                })
        };
        match body.get(field) {
            Lookup::Absent => Err(CostError::undetermined(format!(
                "{whose} has no {field}: the amount in {} is in the currency it names",
                self.field
            ))),
            Lookup::Ambiguous => Err(CostError::undetermined(format!(
                "{field} is given more than once"
            ))),
            Lookup::One(item) => match item.as_str() {
                Some(text) => agreed_currency(&code(text)?, &self.field, body),
                None => Err(CostError::undetermined(format!(
                    "{field} must be a three-letter currency code such as usd"
                ))),
            },
            Lookup::List(_) | Lookup::Nested => Err(CostError::undetermined(format!(
                "{field} must be a single three-letter currency code such as usd"
            ))),
        }
    }

    /// The amount (in minor units) and its lowercase currency, or `None` if the body names no
    /// amount. `whose` names the body in messages: "the request body".
    fn read(&self, body: &Body, whose: &str) -> Result<Option<(u64, String)>, CostError> {
        let Some(minor) = amount_of(&self.field, body.get(&self.field))? else {
            return Ok(None);
        };
        let currency = self.read_currency(body, whose)?;
        Ok(Some((minor, currency)))
    }

    /// Reads the amount this field names from a body (e.g. a response, for settling) and
    /// converts it to dollars with `fx`.
    pub fn read_usd(
        &self,
        pricing: Pricing<'_>,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Usd, CostError> {
        let parsed = read_body(content_type, body)?;
        match self.read(&parsed, "the body")? {
            Some((minor, currency)) => convert(pricing, minor, &currency),
            None => Err(CostError::undetermined(format!(
                "the body has no {}",
                self.field
            ))),
        }
    }
}

/// How many addresses `lookup` holds: a string is one address (or a comma- or
/// semicolon-separated list of them: counting every part may overcount a quoted display name,
/// never undercount), a list holds strings, null and absent hold none.
fn count_addresses(field: &str, lookup: Lookup<'_>) -> Result<u64, CostError> {
    fn in_text(text: &str) -> u64 {
        let parts = text
            .split([',', ';'])
            .filter(|part| !part.trim().is_empty())
            .count();
        u64::try_from(parts).unwrap_or(u64::MAX)
    }
    let not_addresses = || {
        CostError::undetermined(format!(
            "{field} must be an email address or a list of addresses"
        ))
    };
    match lookup {
        Lookup::Absent | Lookup::One(Item::Json(serde_json::Value::Null)) => Ok(0),
        Lookup::One(item) => item.as_str().map(in_text).ok_or_else(not_addresses),
        Lookup::List(items) => items.iter().try_fold(0u64, |sum, item| {
            let n = item.as_str().map(in_text).ok_or_else(not_addresses)?;
            Ok(sum.saturating_add(n))
        }),
        Lookup::Ambiguous => Err(CostError::undetermined(format!(
            "{field} is given more than once"
        ))),
        Lookup::Nested => Err(not_addresses()),
    }
}

impl CostRule {
    /// The cost of a request from its Content-Type header value and its whole body.
    ///
    /// The body is read only when the rule needs it: a fixed price per call or an estimate
    /// (`max` alone) is charged whatever the body holds.
    pub fn estimate(
        &self,
        pricing: Pricing<'_>,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Estimate, CostError> {
        if let Some(amount) = &self.amount {
            let parsed = read_body(content_type, body)?;
            return match amount.read(&parsed, "the request body")? {
                Some((minor, currency)) => {
                    let reserve = convert(pricing, minor, &currency)?;
                    Ok(Estimate {
                        reserve,
                        detail: format!(
                            "{} {currency} = ${reserve}",
                            in_major_units(pricing.vendor, minor, &currency)
                        ),
                    })
                }
                None => match self.max {
                    Some(max) => Ok(Estimate {
                        reserve: max,
                        detail: format!(
                            "no {} given: reserving the policy maximum ${max}",
                            amount.field
                        ),
                    }),
                    None => Err(CostError::undetermined(format!(
                        "the request body has no {}: this endpoint's cost is read from {} and {}",
                        amount.field,
                        amount.field,
                        amount.currency_source()
                    ))),
                },
            };
        }
        if let Some(price) = self.fixed {
            let (count, unit) = match self.per {
                Per::Call => {
                    return Ok(Estimate {
                        reserve: price,
                        detail: format!("${price} per call"),
                    })
                }
                Per::SmsSegment => {
                    let parsed = read_body(content_type, body)?;
                    if let Some(estimate) = self.special_message(pricing, &parsed)? {
                        return Ok(estimate);
                    }
                    (self.sms_segments(&parsed)?, ("SMS segment", "SMS segments"))
                }
                Per::Recipient => {
                    let parsed = read_body(content_type, body)?;
                    (self.recipients(&parsed)?, ("recipient", "recipients"))
                }
            };
            let reserve = price
                .checked_mul(count)
                .and_then(within_limit)
                .ok_or_else(|| {
                    CostError::undetermined(format!(
                        "{count} {} at ${price} each is more than the $1,000,000,000 Bridle can price",
                        unit.1
                    ))
                })?;
            let unit = if count == 1 { unit.0 } else { unit.1 };
            return Ok(Estimate {
                reserve,
                detail: format!("{count} {unit} × ${price}"),
            });
        }
        if let Some(max) = self.max {
            return Ok(Estimate {
                reserve: max,
                detail: format!("estimate ${max}"),
            });
        }
        if let Some(api) = self.tokens {
            return Err(CostError::undetermined(format!(
                "this endpoint is priced by tokens ({}): quote it with crate::llm",
                api.name()
            )));
        }
        Err(CostError::undetermined(
            "this endpoint's cost rule names no price",
        ))
    }

    /// The price of a message that is not plain text (an MMS, a template), by its own
    /// price in the rule: the highest of the kinds it is, or refused if one has no price.
    /// `None` for a plain text message.
    fn special_message(
        &self,
        pricing: Pricing<'_>,
        body: &Body,
    ) -> Result<Option<Estimate>, CostError> {
        let kind = pricing
            .vendor
            .message_kind(body)
            .map_err(CostError::undetermined)?;
        let mut priced: Option<(Usd, &str)> = None;
        for (is, price, what, fields) in [
            (kind.mms, self.mms, "an MMS", "mms"),
            (
                kind.template,
                self.template,
                "a templated message",
                "template",
            ),
        ] {
            if !is {
                continue;
            }
            let price = price.ok_or_else(|| {
                CostError::undetermined(format!(
                    "this message is {what}, and this endpoint's cost rule gives no {fields} price"
                ))
            })?;
            if priced.is_none_or(|(p, _)| price > p) {
                priced = Some((price, what));
            }
        }
        Ok(priced.map(|(reserve, what)| Estimate {
            reserve,
            detail: format!("{what} at ${reserve}"),
        }))
    }

    fn sms_segments(&self, body: &Body) -> Result<u64, CostError> {
        let field = self.text_field.as_deref().unwrap_or(DEFAULT_TEXT_FIELD);
        match body.get(field) {
            Lookup::Absent | Lookup::One(Item::Json(serde_json::Value::Null)) => Ok(1),
            Lookup::One(item) => item.as_str().map(crate::sms::segments).ok_or_else(|| {
                CostError::undetermined(format!("{field} must be the message text"))
            }),
            Lookup::Ambiguous => Err(CostError::undetermined(format!(
                "{field} is given more than once"
            ))),
            Lookup::List(_) | Lookup::Nested => Err(CostError::undetermined(format!(
                "{field} must be the message text, given once"
            ))),
        }
    }

    fn recipients(&self, body: &Body) -> Result<u64, CostError> {
        let fields: Vec<&str> = match &self.recipient_fields {
            Some(fields) => fields.iter().map(String::as_str).collect(),
            None => DEFAULT_RECIPIENT_FIELDS.to_vec(),
        };
        let mut total: u64 = 0;
        match body.batch() {
            Some(emails) => {
                // Absent from a JSON array, unless a body sent without a content type also
                // reads as a form that names the field: then it is ambiguous.
                for field in &fields {
                    count_addresses(field, body.get(field))?;
                }
                for (i, email) in emails.iter().enumerate() {
                    if !email.is_object() {
                        return Err(CostError::undetermined(format!(
                            "a batch is a list of emails, but element {i} is not an object"
                        )));
                    }
                    for field in &fields {
                        let n = count_addresses(field, json_get(email, field))?;
                        total = total.saturating_add(n);
                    }
                }
            }
            None => {
                for field in &fields {
                    total = total.saturating_add(count_addresses(field, body.get(field))?);
                }
            }
        }
        if total == 0 {
            return Err(CostError::undetermined(format!(
                "the email has no recipient: this endpoint's cost is counted from {}",
                fields.join(", ")
            )));
        }
        Ok(total)
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
            serde_json::json!({"tokens": "chat_completions"}),
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
            fields(&rule(serde_json::json!({"tokens": "messages", "max": "2"}))),
            ["c"]
        );
        assert!(
            serde_json::from_value::<CostRule>(serde_json::json!({"tokens": "completions"}))
                .is_err()
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

#[cfg(test)]
mod estimate_tests {
    use super::*;
    use crate::Reason;

    const FORM: Option<&[u8]> = Some(b"application/x-www-form-urlencoded");
    const JSON: Option<&[u8]> = Some(b"application/json");

    fn rule(v: serde_json::Value) -> CostRule {
        let r: CostRule = serde_json::from_value(v).unwrap();
        assert!(r.check("c").is_empty(), "{:?}", r.check("c"));
        r
    }

    fn fx() -> FxTable {
        serde_json::from_str(r#"{"jpy":"0.0067","eur":"1.08","kwd":"3.25"}"#).unwrap()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn stripe() -> CostRule {
        rule(serde_json::json!({"amount": {"field": "amount", "currency_field": "currency"}}))
    }

    fn stripe_max() -> CostRule {
        rule(serde_json::json!({
            "amount": {"field": "amount", "currency_field": "currency"},
            "max": "100",
        }))
    }

    fn sms() -> CostRule {
        rule(serde_json::json!({"fixed": "0.0079", "per": "sms_segment"}))
    }

    fn email() -> CostRule {
        rule(serde_json::json!({"fixed": "0.0009", "per": "recipient"}))
    }

    fn rule_unchecked(v: serde_json::Value) -> CostRule {
        serde_json::from_value(v).unwrap()
    }

    fn est(r: &CostRule, ct: Option<&[u8]>, body: &str) -> Result<Estimate, CostError> {
        r.estimate(Pricing::new(Vendor::Stripe, &fx()), ct, body.as_bytes())
    }

    fn reserve(r: &CostRule, ct: Option<&[u8]>, body: &str) -> Usd {
        match est(r, ct, body) {
            Ok(e) => e.reserve,
            Err(e) => panic!("{body:?}: {e}"),
        }
    }

    fn reason(r: &CostRule, ct: Option<&[u8]>, body: &str) -> Reason {
        match est(r, ct, body) {
            Ok(e) => panic!("{body:?} should be refused, got {e:?}"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn stripe_form_bodies() {
        let e = est(
            &stripe(),
            FORM,
            "amount=2000&currency=usd&payment_method_types[]=card&metadata[order]=42",
        )
        .unwrap();
        assert_eq!(e.reserve, usd("20"));
        assert_eq!(e.detail, "20.00 usd = $20.00");
        // stripe-python percent-encodes the brackets and indexes lists.
        assert_eq!(
            reserve(
                &stripe(),
                FORM,
                "amount=2000&currency=usd&payment_method_types%5B0%5D=card&metadata%5Border%5D=42&description=Tea+%26+cake"
            ),
            usd("20")
        );
        assert_eq!(
            reserve(&stripe(), FORM, "currency=USD&amount=1"),
            usd("0.01")
        );
        assert_eq!(reserve(&stripe(), FORM, "amount=0&currency=usd"), Usd::ZERO);
        assert_eq!(
            reserve(&stripe(), FORM, "amount=2%30%30&currency=usd"),
            usd("2")
        );
        assert_eq!(
            reserve(&stripe(), FORM, "%61mount=200&currency=usd"),
            usd("2")
        );
    }

    #[test]
    fn nested_amounts_and_fixed_currencies() {
        let r = rule(serde_json::json!({
            "amount": {"field": "transfer_data[amount]", "currency": "eur"},
        }));
        assert_eq!(
            reserve(&r, FORM, "amount=9999&currency=eur&transfer_data[amount]=500&transfer_data[destination]=acct_1"),
            usd("5.40")
        );
        assert_eq!(
            reserve(&r, FORM, "currency=EUR&transfer_data[amount]=500"),
            usd("5.40")
        );
        // Stripe reads the amount in the body's currency, whatever the rule says.
        for body in [
            "amount=9999&currency=gbp&transfer_data[amount]=500",
            "currency=eur&currency=gbp&transfer_data[amount]=500",
            "currency[]=eur&transfer_data[amount]=500",
            "currency[x]=eur&transfer_data[amount]=500",
            "currency=&transfer_data[amount]=500",
            "currency=eur&transfer_data[currency]=gbp&transfer_data[amount]=500",
        ] {
            assert_eq!(reason(&r, FORM, body), Reason::CostUndetermined, "{body}");
        }
        assert_eq!(
            reason(
                &r,
                JSON,
                r#"{"currency": "usd", "transfer_data": {"amount": 500}}"#
            ),
            Reason::CostUndetermined
        );
        assert_eq!(
            reserve(&r, JSON, r#"{"transfer_data": {"amount": 500}}"#),
            usd("5.40")
        );
        assert_eq!(
            reason(&r, FORM, "transfer_data[amount][x]=500"),
            Reason::CostUndetermined
        );
        assert_eq!(reason(&r, FORM, "amount=500"), Reason::CostUndetermined);
    }

    #[test]
    fn a_fixed_currency_holds_at_every_level_above_the_amount() {
        let r = rule(serde_json::json!({
            "amount": {"field": "line_items[0][price_data][unit_amount]", "currency": "usd"},
        }));
        assert_eq!(
            reserve(&r, FORM, "line_items[0][price_data][unit_amount]=400&line_items[0][price_data][currency]=usd"),
            usd("4")
        );
        for body in [
            "line_items[0][price_data][unit_amount]=400&line_items[0][price_data][currency]=gbp",
            "line_items[0][price_data][unit_amount]=400&line_items[0][currency]=gbp",
            "line_items[0][price_data][unit_amount]=400&currency=chf",
        ] {
            assert_eq!(reason(&r, FORM, body), Reason::CostUndetermined, "{body}");
        }
        assert_eq!(
            reason(
                &r,
                JSON,
                r#"{"line_items": [{"price_data": {"unit_amount": 400, "currency": "eur"}}]}"#
            ),
            Reason::CostUndetermined
        );
    }

    #[test]
    fn a_named_currency_is_the_one_nearest_the_amount_too() {
        let r = rule(serde_json::json!({
            "amount": {"field": "line_items[0][price_data][unit_amount]", "currency_field": "currency"},
        }));
        assert_eq!(
            reserve(&r, FORM, "currency=eur&line_items[0][price_data][unit_amount]=1000&line_items[0][price_data][currency]=eur"),
            usd("10.80")
        );
        assert_eq!(
            reason(
                &r,
                FORM,
                "currency=usd&line_items[0][price_data][unit_amount]=400&line_items[0][price_data][currency]=gbp"
            ),
            Reason::CostUndetermined
        );
    }

    #[test]
    fn zero_and_three_decimal_currencies() {
        let e = est(&stripe(), FORM, "amount=500&currency=jpy").unwrap();
        assert_eq!(e.reserve, usd("3.35"));
        assert_eq!(e.detail, "500 jpy = $3.35");
        let e = est(&stripe(), FORM, "amount=2000&currency=jpy").unwrap();
        assert_eq!(e.detail, "2000 jpy = $13.40");
        let e = est(&stripe(), FORM, "amount=1000&currency=eur").unwrap();
        assert_eq!(e.reserve, usd("10.80"));
        assert_eq!(e.detail, "10.00 eur = $10.80");
        let e = est(&stripe(), FORM, "amount=1500&currency=kwd").unwrap();
        assert_eq!(e.reserve, usd("4.875"));
        assert_eq!(e.detail, "1.500 kwd = $4.875");
        let e = est(&stripe(), FORM, "amount=5&currency=usd").unwrap();
        assert_eq!(e.detail, "0.05 usd = $0.05");
    }

    #[test]
    fn unknown_currencies() {
        let e = est(&stripe(), FORM, "amount=500&currency=xyz").unwrap_err();
        assert_eq!(e.reason, Reason::CurrencyUnknown);
        assert_eq!(e.message, "currency \"xyz\" has no exchange rate in policy");
        let e = est(&stripe(), FORM, "amount=500&currency=XYZ").unwrap_err();
        assert_eq!(e.message, "currency \"xyz\" has no exchange rate in policy");
    }

    #[test]
    fn malformed_currencies() {
        for body in [
            "amount=500",
            "amount=500&currency=",
            "amount=500&currency=us",
            "amount=500&currency=usdx",
            "amount=500&currency=u%20d",
            "amount=500&currency=usd&currency=jpy",
            "amount=500&currency[]=usd",
            "amount=500&currency=%C3%BCsd",
        ] {
            assert_eq!(
                reason(&stripe_max(), FORM, body),
                Reason::CostUndetermined,
                "{body}"
            );
        }
        assert_eq!(
            reason(&stripe(), JSON, r#"{"amount": 500, "currency": 840}"#),
            Reason::CostUndetermined
        );
        let e = est(&stripe(), FORM, "amount=500").unwrap_err();
        assert!(e.message.contains("has no currency"), "{e}");
    }

    #[test]
    fn a_missing_amount_reserves_the_maximum_or_is_refused() {
        let e = est(
            &stripe_max(),
            FORM,
            "charge=ch_1&reason=requested_by_customer",
        )
        .unwrap();
        assert_eq!(e.reserve, usd("100"));
        assert_eq!(
            e.detail,
            "no amount given: reserving the policy maximum $100.00"
        );
        assert_eq!(reserve(&stripe_max(), FORM, ""), usd("100"));
        assert_eq!(reserve(&stripe_max(), None, ""), usd("100"));
        assert_eq!(reserve(&stripe_max(), JSON, ""), usd("100"));
        assert_eq!(
            reserve(&stripe_max(), JSON, r#"{"charge": "ch_1"}"#),
            usd("100")
        );

        let e = est(&stripe(), FORM, "charge=ch_1").unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        assert_eq!(
            e.message,
            "the request body has no amount: this endpoint's cost is read from amount and currency"
        );
    }

    #[test]
    fn ambiguous_amounts_are_refused_even_with_a_maximum() {
        for body in [
            "amount=1&amount=99999&currency=usd",
            "amount=1&%61mount=99999&currency=usd",
            "amount=1&amount[]=99999&currency=usd",
            "amount[]=1&currency=usd",
            "amount[0]=1&amount[1]=2&currency=usd",
            "amount[value]=1&currency=usd",
        ] {
            for r in [stripe(), stripe_max()] {
                assert_eq!(reason(&r, FORM, body), Reason::CostUndetermined, "{body}");
            }
        }
        let e = est(&stripe_max(), FORM, "amount=1&amount=99999&currency=usd").unwrap_err();
        assert_eq!(e.message, "amount is given more than once");
    }

    #[test]
    fn malformed_amounts_are_refused_even_with_a_maximum() {
        for amount in [
            "-5",
            "%2D5",
            "+5",
            "%2B5",
            "5+",
            "20.00",
            "20%2E00",
            "1e3",
            "",
            "abc",
            "0x10",
            "02000",
            "9999999999999999999",
            "%EF%BC%92",
            "5%00",
            "1_000",
            "1,000",
        ] {
            let body = format!("amount={amount}&currency=usd");
            assert_eq!(
                reason(&stripe_max(), FORM, &body),
                Reason::CostUndetermined,
                "{body}"
            );
        }
        let e = est(&stripe(), FORM, "amount=-5&currency=usd").unwrap_err();
        assert_eq!(
            e.message,
            "amount \"-5\" is not a whole number of minor currency units, such as 2000 for $20.00"
        );
        let huge = format!("amount={}&currency=usd", "9".repeat(100_000));
        let e = est(&stripe(), FORM, &huge).unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        assert!(e.message.len() < 200, "{e}");
    }

    #[test]
    fn amounts_too_large_to_price_are_refused() {
        // 18 digits is accepted as a number, but overflows the conversion.
        let e = est(&stripe(), FORM, "amount=999999999999999999&currency=usd").unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        assert!(e.message.contains("more than the $1,000,000,000"), "{e}");
        // No single cost may exceed a billion dollars, like every amount in a policy.
        assert_eq!(
            reserve(&stripe(), FORM, "amount=100000000000&currency=usd"),
            usd("1000000000")
        );
        assert_eq!(
            reason(&stripe(), FORM, "amount=100000000001&currency=usd"),
            Reason::CostUndetermined
        );
        assert_eq!(
            reason(&stripe_max(), FORM, "amount=99999999999999&currency=usd"),
            Reason::CostUndetermined
        );
    }

    #[test]
    fn json_amounts() {
        let r = stripe_max();
        assert_eq!(
            reserve(&r, JSON, r#"{"amount": 2000, "currency": "usd"}"#),
            usd("20")
        );
        assert_eq!(
            reserve(&r, JSON, r#"{"amount": "2000", "currency": "eur"}"#),
            usd("21.60")
        );
        assert_eq!(
            reserve(
                &r,
                Some(b"application/json; charset=utf-8"),
                r#"{"amount": 0, "currency": "usd"}"#
            ),
            Usd::ZERO
        );
        for body in [
            r#"{"amount": 2000.0, "currency": "usd"}"#,
            r#"{"amount": 20.5, "currency": "usd"}"#,
            r#"{"amount": 2e3, "currency": "usd"}"#,
            r#"{"amount": -2000, "currency": "usd"}"#,
            r#"{"amount": -0, "currency": "usd"}"#,
            r#"{"amount": "-2000", "currency": "usd"}"#,
            r#"{"amount": "20.00", "currency": "usd"}"#,
            r#"{"amount": 18446744073709551616, "currency": "usd"}"#,
            r#"{"amount": 1000000000000000000, "currency": "usd"}"#,
            r#"{"amount": null, "currency": "usd"}"#,
            r#"{"amount": true, "currency": "usd"}"#,
            r#"{"amount": [2000], "currency": "usd"}"#,
            r#"{"amount": {"value": 2000}, "currency": "usd"}"#,
        ] {
            assert_eq!(reason(&r, JSON, body), Reason::CostUndetermined, "{body}");
        }
        let e = est(&r, JSON, r#"{"amount": -2000, "currency": "usd"}"#).unwrap_err();
        assert_eq!(e.message, "amount is negative");
        let e = est(&r, JSON, r#"{"amount": 20.5, "currency": "usd"}"#).unwrap_err();
        assert!(e.message.contains("not a whole number"), "{e}");
    }

    #[test]
    fn duplicate_json_keys_make_the_body_unreadable() {
        // Decision: a duplicate key anywhere in a JSON body is BodyUnreadable (the parser
        // refuses the body), while a repeated form key is CostUndetermined (the form parses,
        // but the field the rule reads is ambiguous).
        for body in [
            r#"{"amount": 1, "amount": 99999, "currency": "usd"}"#,
            r#"{"amount": 1, "currency": "usd", "metadata": {"a": 1, "a": 2}}"#,
            r#"[{"to": "a@x.com", "to": "b@x.com"}]"#,
        ] {
            assert_eq!(
                reason(&stripe_max(), JSON, body),
                Reason::BodyUnreadable,
                "{body}"
            );
            assert_eq!(
                reason(&email(), JSON, body),
                Reason::BodyUnreadable,
                "{body}"
            );
        }
    }

    #[test]
    fn a_body_without_content_type_cannot_smuggle_a_form_amount() {
        // Rack reads a POST body without a content type as a form: this one holds
        // amount=99999 to Stripe, amount 1 to a JSON reader.
        let smuggled = r#"{"x":"&amount=99999&currency=usd&y=","amount":1,"currency":"usd"}"#;
        assert_eq!(
            reason(&stripe_max(), None, smuggled),
            Reason::CostUndetermined
        );
        assert_eq!(
            reserve(&stripe_max(), None, r#"{"amount":1,"currency":"usd"}"#),
            usd("0.01")
        );
        let batch = r#"[{"to":"a@x.com"},{"x":"&to[]=b&to[]=c&to[]=d&"}]"#;
        assert_eq!(reason(&email(), None, batch), Reason::CostUndetermined);
        assert_eq!(reserve(&email(), JSON, batch), usd("0.0009"));
        assert_eq!(
            reserve(&email(), None, r#"[{"to":"a@x.com"},{"to":"b@x.com"}]"#),
            usd("0.0018")
        );
    }

    #[test]
    fn json_depth_bombs_are_refused() {
        let bomb = "[".repeat(10_000);
        assert_eq!(reason(&stripe_max(), JSON, &bomb), Reason::BodyUnreadable);
        let bomb = format!(
            "{{\"amount\": 1, \"x\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(reason(&stripe_max(), JSON, &bomb), Reason::BodyUnreadable);
        assert_eq!(reason(&stripe_max(), None, &bomb), Reason::BodyUnreadable);
    }

    #[test]
    fn twilio_sms_segments() {
        let e = est(&sms(), FORM, "To=%2B15551234567&From=%2B1555&Body=hello").unwrap();
        assert_eq!(e.reserve, usd("0.0079"));
        assert_eq!(e.detail, "1 SMS segment × $0.0079");
        let body = format!("To=%2B15551234567&From=%2B1555&Body={}", "a".repeat(161));
        let e = est(&sms(), FORM, &body).unwrap();
        assert_eq!(e.reserve, usd("0.0158"));
        assert_eq!(e.detail, "2 SMS segments × $0.0079");
        let body = format!("To=%2B1555&Body={}", "Hello+world+".repeat(30));
        assert_eq!(reserve(&sms(), FORM, &body), usd("0.0237"));
        // 71 characters outside GSM-7: UCS-2, two segments.
        let body = format!("To=%2B1555&Body={}", "%E4%B8%AD".repeat(71));
        assert_eq!(reserve(&sms(), FORM, &body), usd("0.0158"));
        // One emoji makes the message UCS-2: 69 + 2 units is two segments.
        let body = format!("To=%2B1555&Body={}%F0%9F%98%80", "a".repeat(69));
        assert_eq!(reserve(&sms(), FORM, &body), usd("0.0158"));
        // No text: one segment. (A media message is an MMS, where the vendor says so: see
        // `twilio_mms_and_templates_have_their_own_price`.)
        assert_eq!(reserve(&sms(), FORM, "To=%2B1555"), usd("0.0079"));
        assert_eq!(
            reason(&sms(), FORM, "Body=a&Body=b"),
            Reason::CostUndetermined
        );
        assert_eq!(reason(&sms(), FORM, "Body[]=a"), Reason::CostUndetermined);
        assert_eq!(reason(&sms(), FORM, "Body=%ZZ"), Reason::BodyUnreadable);
        let custom = rule(
            serde_json::json!({"fixed": "0.01", "per": "sms_segment", "text_field": "message[text]"}),
        );
        let body = format!(r#"{{"message": {{"text": "{}"}}}}"#, "a".repeat(200));
        assert_eq!(reserve(&custom, JSON, &body), usd("0.02"));
        assert_eq!(
            reason(&custom, JSON, r#"{"message": {"text": 5}}"#),
            Reason::CostUndetermined
        );
    }

    #[test]
    fn twilio_mms_and_templates_have_their_own_price() {
        let twilio = |r: &CostRule, body: &str| {
            r.estimate(Pricing::new(Vendor::Twilio, &fx()), FORM, body.as_bytes())
        };
        let priced = rule(serde_json::json!(
            {"fixed": "0.0079", "per": "sms_segment", "mms": "0.02", "template": "0.05"}
        ));
        let text = "To=%2B15551234567&From=%2B15557654321&Body=hello";
        assert_eq!(twilio(&priced, text).unwrap().reserve, usd("0.0079"));
        for (body, want, detail) in [
            (
                "To=%2B1555&MediaUrl=https%3A%2F%2Fx%2Fa.png",
                "0.02",
                "an MMS at $0.02",
            ),
            (
                "To=%2B1555&Body=hi&MediaUrl=a&MediaUrl=b",
                "0.02",
                "an MMS at $0.02",
            ),
            (
                "To=%2B1555&Body=hi&SendAsMms=true",
                "0.02",
                "an MMS at $0.02",
            ),
            (
                "To=%2B1555&Body=hi&SendAsMms=True",
                "0.02",
                "an MMS at $0.02",
            ),
            ("To=%2B1555&Body=hi&SendAsMms=1", "0.02", "an MMS at $0.02"),
            ("To=%2B1555&MediaUrl[]=a", "0.02", "an MMS at $0.02"),
            (
                "To=%2B1555&ContentSid=HX123",
                "0.05",
                "a templated message at $0.05",
            ),
            (
                "To=%2B1555&ContentSid=HX1&ContentVariables=%7B%7D&MediaUrl=a",
                "0.05",
                "a templated message at $0.05",
            ),
        ] {
            let e = twilio(&priced, body).unwrap();
            assert_eq!(
                (e.reserve, e.detail.as_str()),
                (usd(want), detail),
                "{body}"
            );
        }
        // A long text asked to go as plain SMS is priced per segment.
        let long = format!("To=%2B1555&SendAsMms=false&Body={}", "a".repeat(400));
        assert_eq!(twilio(&priced, &long).unwrap().reserve, usd("0.0237"));
        // Without a price for what the message is, it is refused: never one SMS segment.
        for body in [
            "To=%2B1555&MediaUrl=https%3A%2F%2Fx%2Fa.png",
            "To=%2B1555&Body=hi&SendAsMms=true",
            "To=%2B1555&ContentSid=HX123",
        ] {
            let e = twilio(&sms(), body).unwrap_err();
            assert_eq!(e.reason, Reason::CostUndetermined, "{body}");
            assert!(e.message.contains("gives no"), "{e}");
        }
        let mms_only = rule(serde_json::json!(
            {"fixed": "0.0079", "per": "sms_segment", "mms": "0.02"}
        ));
        assert!(twilio(&mms_only, "To=%2B1555&ContentSid=HX1&MediaUrl=a").is_err());
        // Other channels are priced by their own rules.
        for body in [
            "To=whatsapp%3A%2B15551234567&Body=hi",
            "To=%2B1555&From=messenger%3A123&Body=hi",
            "To=%2B1555&To=whatsapp%3A%2B1555&Body=hi",
        ] {
            let e = twilio(&priced, body).unwrap_err();
            assert_eq!(e.reason, Reason::CostUndetermined, "{body}");
        }
        // Another vendor's body has no MMS: a MediaUrl there means nothing.
        assert_eq!(
            reserve(&priced, FORM, "To=%2B1555&MediaUrl=a"),
            usd("0.0079")
        );
        // The prices belong with per: sms_segment, and are not zero.
        let bad = rule_unchecked(serde_json::json!({"fixed": "1", "mms": "0.02"}));
        assert_eq!(bad.check("c")[0].field, "c.mms");
        let bad = rule_unchecked(
            serde_json::json!({"fixed": "1", "per": "sms_segment", "template": "0"}),
        );
        assert_eq!(bad.check("c")[0].field, "c.template");
    }

    #[test]
    fn resend_recipients() {
        let e = est(
            &email(),
            JSON,
            r#"{"from": "f@x.com", "to": "a@x.com", "subject": "hi"}"#,
        )
        .unwrap();
        assert_eq!(e.reserve, usd("0.0009"));
        assert_eq!(e.detail, "1 recipient × $0.0009");
        let e = est(
            &email(),
            JSON,
            r#"{"to": ["a@x.com", "b@x.com"], "cc": "c@x.com", "bcc": ["d@x.com"]}"#,
        )
        .unwrap();
        assert_eq!(e.reserve, usd("0.0036"));
        assert_eq!(e.detail, "4 recipients × $0.0009");
        assert_eq!(
            reserve(
                &email(),
                JSON,
                r#"[{"to": "a@x.com", "cc": ["b@x.com"]}, {"to": ["c@x.com", "d@x.com", "e@x.com"], "bcc": null}]"#
            ),
            usd("0.0045")
        );
        // A comma-separated string counts every address.
        assert_eq!(
            reserve(&email(), JSON, r#"{"to": "a@x.com, B <b@x.com>;c@x.com"}"#),
            usd("0.0027")
        );
        assert_eq!(
            reserve(
                &email(),
                JSON,
                r#"{"to": "a@x.com", "cc": null, "bcc": []}"#
            ),
            usd("0.0009")
        );
        assert_eq!(
            reserve(&email(), FORM, "to[]=a%40x.com&to[]=b%40x.com&cc=c%40x.com"),
            usd("0.0027")
        );
        for body in [
            r#"{"from": "f@x.com", "subject": "hi"}"#,
            r#"{"to": [], "cc": null, "bcc": ""}"#,
            r#"{"to": " , "}"#,
            r#"[]"#,
            r#"[{"from": "f@x.com"}, {"to": []}]"#,
            r#"[{"to": "a@x.com"}, "b@x.com"]"#,
            r#"{"to": 5}"#,
            r#"{"to": [{"email": "a@x.com"}]}"#,
            r#"{"to": {"email": "a@x.com"}}"#,
            r#"{"to": ["a@x.com", null]}"#,
        ] {
            assert_eq!(
                reason(&email(), JSON, body),
                Reason::CostUndetermined,
                "{body}"
            );
        }
        assert_eq!(
            reason(&email(), FORM, "to=a&to=b"),
            Reason::CostUndetermined
        );
        let e = est(&email(), JSON, "{}").unwrap_err();
        assert_eq!(
            e.message,
            "the email has no recipient: this endpoint's cost is counted from to, cc, bcc"
        );
        let custom = rule(
            serde_json::json!({"fixed": "0.001", "per": "recipient", "recipient_fields": ["personalizations[0][to]"]}),
        );
        assert_eq!(
            reserve(
                &custom,
                JSON,
                r#"{"personalizations": [{"to": ["a", "b"]}], "to": "ignored"}"#
            ),
            usd("0.002")
        );
    }

    #[test]
    fn multiplying_a_price_can_overflow() {
        let r = rule(serde_json::json!({"fixed": "1000000000", "per": "recipient"}));
        let to: Vec<String> = (0..10_000).map(|i| format!("u{i}@x.com")).collect();
        let body = serde_json::json!({ "to": to }).to_string();
        let e = est(&r, JSON, &body).unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        assert!(e.message.contains("more than the $1,000,000,000"), "{e}");
        assert_eq!(
            reason(&r, JSON, r#"{"to": ["a", "b"]}"#),
            Reason::CostUndetermined
        );
        assert_eq!(reserve(&r, JSON, r#"{"to": ["a"]}"#), usd("1000000000"));
    }

    #[test]
    fn per_call_prices_and_estimates_ignore_the_body() {
        let call = rule(serde_json::json!({"fixed": "0.5"}));
        let e = est(
            &call,
            Some(b"multipart/form-data; boundary=x"),
            "\u{0}garbage",
        )
        .unwrap();
        assert_eq!(e.reserve, usd("0.5"));
        assert_eq!(e.detail, "$0.50 per call");
        let estimate = rule(
            serde_json::json!({"max": "500", "settle": {"field": "amount_paid", "currency_field": "currency"}}),
        );
        let e = estimate
            .estimate(Pricing::new(Vendor::Stripe, &fx()), None, &[0xff; 64])
            .unwrap();
        assert_eq!(
            e,
            Estimate {
                reserve: usd("500"),
                detail: "estimate $500.00".into()
            }
        );
        assert_eq!(
            CostRule::default()
                .estimate(Pricing::new(Vendor::Stripe, &fx()), None, b"")
                .unwrap_err()
                .reason,
            Reason::CostUndetermined
        );
    }

    #[test]
    fn settling_from_a_response() {
        let field: AmountField = serde_json::from_value(
            serde_json::json!({"field": "amount_paid", "currency_field": "currency"}),
        )
        .unwrap();
        let body = br#"{"id":"in_1","object":"invoice","amount_paid":1999,"currency":"usd","lines":{"data":[{"amount":1999}]}}"#;
        assert_eq!(
            field
                .read_usd(Pricing::new(Vendor::Stripe, &fx()), JSON, body)
                .unwrap(),
            usd("19.99")
        );
        assert_eq!(
            field
                .read_usd(Pricing::new(Vendor::Stripe, &fx()), None, body)
                .unwrap(),
            usd("19.99")
        );
        assert_eq!(
            field
                .read_usd(
                    Pricing::new(Vendor::Stripe, &fx()),
                    Some(b"application/json"),
                    br#"{"amount_paid":500,"currency":"jpy"}"#
                )
                .unwrap(),
            usd("3.35")
        );
        let fixed: AmountField = serde_json::from_value(
            serde_json::json!({"field": "lines[data][0][amount]", "currency": "eur"}),
        )
        .unwrap();
        let in_eur = br#"{"id":"in_2","amount_paid":1999,"currency":"eur","lines":{"data":[{"amount":1999}]}}"#;
        assert_eq!(
            fixed
                .read_usd(Pricing::new(Vendor::Stripe, &fx()), JSON, in_eur)
                .unwrap(),
            usd("21.5892")
        );
        // The invoice is in dollars: its amounts are not euros, whatever the rule says.
        let e = fixed
            .read_usd(Pricing::new(Vendor::Stripe, &fx()), JSON, body)
            .unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        let e = field
            .read_usd(
                Pricing::new(Vendor::Stripe, &fx()),
                JSON,
                br#"{"id":"in_1"}"#,
            )
            .unwrap_err();
        assert_eq!(e.reason, Reason::CostUndetermined);
        assert_eq!(e.message, "the body has no amount_paid");
        assert_eq!(
            field
                .read_usd(
                    Pricing::new(Vendor::Stripe, &fx()),
                    JSON,
                    br#"{"amount_paid":19.99,"currency":"usd"}"#
                )
                .unwrap_err()
                .reason,
            Reason::CostUndetermined
        );
        assert_eq!(
            field
                .read_usd(
                    Pricing::new(Vendor::Stripe, &fx()),
                    JSON,
                    br#"{"amount_paid":1,"currency":"xyz"}"#
                )
                .unwrap_err()
                .reason,
            Reason::CurrencyUnknown
        );
        assert_eq!(
            field
                .read_usd(
                    Pricing::new(Vendor::Stripe, &fx()),
                    Some(b"text/html"),
                    b"<html>"
                )
                .unwrap_err()
                .reason,
            Reason::BodyUnreadable
        );
        assert_eq!(
            field
                .read_usd(
                    Pricing::new(Vendor::Stripe, &fx()),
                    FORM,
                    b"amount_paid=1999&currency=usd"
                )
                .unwrap(),
            usd("19.99")
        );
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        let amps = "&".repeat(1 << 20);
        assert_eq!(reserve(&stripe_max(), FORM, &amps), usd("100"));
        assert_eq!(reason(&stripe(), FORM, &amps), Reason::CostUndetermined);
        let many = "a=1&".repeat(100_000);
        let e = est(&stripe_max(), FORM, &many).unwrap_err();
        assert_eq!(e.reason, Reason::BodyUnreadable);
        assert_eq!(e.message, "the form body has more than 10000 fields");
        let long_key = format!("{}=1&amount=5&currency=usd", "k".repeat(1 << 20));
        assert_eq!(reserve(&stripe(), FORM, &long_key), usd("0.05"));
        let long_nested = format!("amount{}=1&currency=usd", "[x]".repeat(100_000));
        assert_eq!(
            reason(&stripe_max(), FORM, &long_nested),
            Reason::CostUndetermined
        );
        for ct in [
            &b"multipart/form-data; boundary=----x"[..],
            b"text/plain",
            b"application/xml",
            b"application/json; charset=utf-16",
            b"\xff\xfe",
            b"",
        ] {
            for r in [stripe_max(), sms(), email()] {
                let e = r
                    .estimate(
                        Pricing::new(Vendor::Stripe, &fx()),
                        Some(ct),
                        b"amount=5&currency=usd",
                    )
                    .unwrap_err();
                assert_eq!(e.reason, Reason::BodyUnreadable, "{ct:?}");
            }
        }
        for r in [stripe_max(), sms(), email()] {
            for ct in [FORM, JSON, None] {
                let e = r
                    .estimate(
                        Pricing::new(Vendor::Stripe, &fx()),
                        ct,
                        b"amount=5\xff&currency=usd&to=\xc3",
                    )
                    .unwrap_err();
                assert_eq!(e.reason, Reason::BodyUnreadable);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic fuzz: bytes drawn from an alphabet rich in syntax.
        const ALPHABET: &[u8] = b"amount=currency&usd[]{}\",:%2B5F0+-.e9\xff\xc3 \nto@";
        let rules = [
            stripe(),
            stripe_max(),
            sms(),
            email(),
            rule(serde_json::json!({"amount": {"field": "a[b][0]", "currency": "jpy"}})),
        ];
        let settle = AmountField {
            field: "amount".into(),
            currency_field: Some("currency".into()),
            currency: None,
        };
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20_000 {
            let len = (round % 97) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    ALPHABET[((state >> 33) as usize) % ALPHABET.len()]
                })
                .collect();
            for ct in [FORM, JSON, None] {
                for r in &rules {
                    let _ = r.estimate(Pricing::new(Vendor::Stripe, &fx()), ct, &bytes);
                }
                let _ = settle.read_usd(Pricing::new(Vendor::Stripe, &fx()), ct, &bytes);
            }
        }
    }
}
