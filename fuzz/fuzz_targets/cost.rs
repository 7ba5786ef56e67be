//! Request and response bodies priced by cost rules: `Body::read`, then every cost rule of
//! the example policies (and a few more built to reach the rest) through `estimate` and
//! `read_usd`.
//!
//! The first input byte picks the Content-Type (form, JSON, none, a few variants and two
//! unreadable ones); the rest is the body. Never panics; an amount is never negative nor over
//! the billion-dollar limit; a price per unit is a whole multiple of the unit price; prices
//! that ignore the body ignore it; errors are bounded and typed; and a body sent without a
//! content type never reads as something its declared type would not.
#![no_main]

use bridle_core::body::{self, Body, BodyKind, Lookup};
use bridle_core::cost::{CostRule, Per, Pricing};
use bridle_core::money::Usd;
use bridle_core::policy::CompiledPolicy;
use bridle_core::{sms, Reason};
use bridle_fuzz::{example_policies, extra_cost_policies, CONTENT_TYPES};
use libfuzzer_sys::fuzz_target;

const FIELDS: [&str; 12] = [
    "amount",
    "currency",
    "Body",
    "to",
    "cc",
    "bcc",
    "transfer_data[amount]",
    "items[0][amount]",
    "message[text]",
    "personalizations[0][to]",
    "metadata",
    "a[",
];

const JSON: Option<&[u8]> = Some(b"application/json");
const FORM: Option<&[u8]> = Some(b"application/x-www-form-urlencoded");

fn limit() -> Usd {
    Usd::parse("1000000000").expect("the limit parses")
}

fn check_amount(what: &str, usd: Usd) {
    assert!(usd.micros() >= 0, "{what}: negative amount {usd}");
    assert!(usd <= limit(), "{what}: {usd} is over the limit");
}

fn check_error(what: &str, e: &bridle_core::cost::CostError) {
    assert!(
        matches!(
            e.reason,
            Reason::BodyUnreadable | Reason::CostUndetermined | Reason::CurrencyUnknown
        ),
        "{what}: {e}"
    );
    // Messages name fields and truncated values, never the body: they stay short.
    assert!(
        !e.message.is_empty() && e.message.len() < 512,
        "{what}: {} bytes of message",
        e.message.len()
    );
}

fn check_rule(name: &str, rule: &CostRule, pricing: Pricing<'_>, ct: Option<&[u8]>, body: &[u8]) {
    let estimate = rule.estimate(pricing, ct, body);
    match &estimate {
        Ok(e) => {
            check_amount(name, e.reserve);
            assert!(!e.detail.is_empty());
            match (rule.fixed, rule.per) {
                (Some(price), Per::Call) => assert_eq!(e.reserve, price),
                (Some(price), _) => {
                    assert!(e.reserve >= price, "{name}: less than one unit");
                    assert_eq!(
                        e.reserve.micros() % price.micros(),
                        0,
                        "{name}: not whole units"
                    );
                }
                (None, _) if rule.amount.is_none() => assert_eq!(Some(e.reserve), rule.max),
                _ => {}
            }
        }
        Err(e) => {
            check_error(name, e);
            // A per-call price or a plain estimate does not read the body at all.
            let ignores_body = rule.amount.is_none()
                && (rule.fixed.is_some() && rule.per == Per::Call
                    || rule.fixed.is_none() && rule.max.is_some());
            assert!(!ignores_body, "{name}: body-independent price failed: {e}");
        }
    }
    // Sent without a content type, a JSON-looking body is read as JSON only where a form
    // reading of it agrees: whatever it prices, declared JSON prices the same.
    if ct.is_none() && body::kind(None, body) == Some(BodyKind::Json) {
        if let Ok(e) = &estimate {
            assert_eq!(
                rule.estimate(pricing, JSON, body).as_ref(),
                Ok(e),
                "{name}: sniffed JSON"
            );
        }
    }
    for (what, field) in [("amount", &rule.amount), ("settle", &rule.settle)] {
        if let Some(field) = field {
            match field.read_usd(pricing, ct, body) {
                Ok(usd) => check_amount(&format!("{name} {what}"), usd),
                Err(e) => check_error(&format!("{name} {what}"), &e),
            }
        }
    }
}

fn check_policy(p: &CompiledPolicy, ct: Option<&[u8]>, body: &[u8]) {
    for (i, endpoint) in p.policy.endpoints.iter().enumerate() {
        if let Some(rule) = &endpoint.cost {
            let name = format!("{} endpoints[{i}]", p.policy.name);
            check_rule(
                &name,
                rule,
                Pricing::new(p.policy.vendor, &p.policy.fx),
                ct,
                body,
            );
        }
    }
}

fn check_body(ct: Option<&[u8]>, bytes: &[u8]) {
    let read = Body::read(ct, bytes);
    if let Err(e) = &read {
        assert!(
            !e.0.is_empty() && e.0.len() < 512,
            "body error of {} bytes",
            e.0.len()
        );
    }
    if ct.is_none() {
        match body::kind(None, bytes) {
            // Without a content type, a form is exactly what a declared form reads.
            Some(BodyKind::Form) => assert_eq!(read, Body::read(FORM, bytes)),
            Some(BodyKind::Json) => {
                let declared = Body::read(JSON, bytes);
                if let Ok(b) = &read {
                    let d = declared
                        .as_ref()
                        .expect("sniffed JSON parses as declared JSON");
                    assert_eq!(b.batch(), d.batch());
                    for f in FIELDS {
                        let (sniffed, json) = (b.get(f), d.get(f));
                        assert!(
                            sniffed == json || sniffed == Lookup::Ambiguous,
                            "{f}: sniffed {sniffed:?}, declared {json:?}"
                        );
                    }
                }
            }
            None => assert!(read.is_err()),
        }
    }
    if let Ok(b) = &read {
        for f in FIELDS {
            let lookup = b.get(f);
            if let Lookup::One(item) = lookup {
                if let Some(text) = item.as_str() {
                    // Appending text never makes a message cheaper.
                    let n = sms::segments(text);
                    assert!(n >= 1);
                    let half: String = text.chars().take(text.chars().count() / 2).collect();
                    assert!(
                        sms::segments(&half) <= n,
                        "a prefix of {f} has more segments"
                    );
                }
            }
        }
        if let Some(items) = b.batch() {
            for item in items.iter().take(16) {
                for f in FIELDS {
                    let _ = body::json_get(item, f);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let ct = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    let _ = body::kind(ct, bytes);
    check_body(ct, bytes);
    for p in example_policies().iter().chain(extra_cost_policies()) {
        check_policy(p, ct, bytes);
    }
});
