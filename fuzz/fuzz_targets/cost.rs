//! Request and response bodies priced by cost rules: `Body::read`, then every cost rule of
//! the example policies (and a few more built to reach the rest) through `estimate` and
//! `read_usd`.
//!
//! The first input byte picks the Content-Type (form, JSON, none, a few variants and two
//! unreadable ones); the rest is the body. Never panics; an amount is never negative nor over
//! the billion-dollar limit; a price per unit is a whole multiple of the unit price (or the
//! rule's own price for an MMS or a template); prices that ignore the body ignore it; errors
//! are bounded and typed; a body sent without a content type never reads as something its
//! declared type would not; and the body-ambiguity rule holds: a form body Bridle reads, a
//! Rack-style parser (`rack` below) reads the same, field by field.
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
                    let own_price = [rule.mms, rule.template].contains(&Some(e.reserve));
                    assert!(
                        own_price || e.reserve.micros() % price.micros() == 0,
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
        if body::kind(ct, bytes) == Some(BodyKind::Form) {
            rack::agrees(b, bytes);
        }
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

/// A reference reading of form bodies in the Rack tradition (`Rack::QueryParser`,
/// `parse_nested_query` and `normalize_params` of Rack 2), written from its source: fields
/// split on `&` or `;` with spaces after the separator dropped, keys percent-decoded, and a
/// key's path read by `\A[\[\]]*([^\[\]]+)\]*` again and again, the last value winning.
mod rack {
    use bridle_core::body::{Body, Item, Lookup};

    /// A key's path as Rack nests it: `transfer_data[amount]` is `[transfer_data, amount]`;
    /// `None` for a key that makes an array (`[]`), which Rack never reads as a plain value.
    fn path(key: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut rest = key;
        loop {
            let name = rest.trim_start_matches(['[', ']']);
            let end = name.find(['[', ']']).unwrap_or(name.len());
            let (k, after) = name.split_at(end);
            if k.is_empty() {
                return (!out.is_empty() && rest.is_empty()).then_some(out);
            }
            out.push(k.to_string());
            let after = after.trim_start_matches(']');
            if after.is_empty() {
                return Some(out);
            }
            if after == "[" || after.starts_with("[]") {
                return None;
            }
            rest = after;
        }
    }

    fn decode(raw: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }

    /// Every (path, value) Rack reads from the body, in order.
    fn pairs(bytes: &[u8]) -> Vec<(Option<Vec<String>>, String)> {
        let mut out = Vec::new();
        for piece in bytes.split(|b| *b == b'&' || *b == b';') {
            let start = piece.iter().position(|b| *b != b' ').unwrap_or(piece.len());
            let piece = &piece[start..];
            if piece.is_empty() {
                continue;
            }
            let (k, v) = match piece.iter().position(|b| *b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &b""[..]),
            };
            if let (Some(k), Some(v)) = (decode(k), decode(v)) {
                out.push((path(&k), v));
            }
        }
        out
    }

    /// What Bridle found as one plain value, Rack finds as that value and nothing else under
    /// the same name; what Bridle found absent, Rack finds absent.
    pub fn agrees(bridle: &Body, bytes: &[u8]) {
        let read = pairs(bytes);
        let fields: Vec<Vec<String>> = read.iter().filter_map(|(p, _)| p.clone()).collect();
        let mut names: Vec<Vec<String>> = Vec::new();
        for p in &fields {
            for n in 1..=p.len() {
                let prefix = p[..n].to_vec();
                if !names.contains(&prefix) {
                    names.push(prefix);
                }
            }
        }
        // Only names a cost rule can give (`check_field_name`): a blank body, say, holds a
        // key of whitespace for Rack and nothing for Bridle, and no rule can price either.
        let priceable = |name: &Vec<String>| {
            name.iter().all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
        };
        for name in names.iter().filter(|n| priceable(n)).take(64) {
            let field = match name.split_first() {
                Some((head, rest)) => {
                    let mut f = head.clone();
                    for seg in rest {
                        f.push('[');
                        f.push_str(seg);
                        f.push(']');
                    }
                    f
                }
                None => continue,
            };
            let rack: Vec<&str> = read
                .iter()
                .filter(|(p, _)| p.as_ref() == Some(name))
                .map(|(_, v)| v.as_str())
                .collect();
            let deeper = read.iter().any(|(p, _)| {
                p.as_ref()
                    .is_some_and(|p| p.len() > name.len() && p.starts_with(name))
            });
            match bridle.get(&field) {
                Lookup::One(Item::Text(v)) => assert!(
                    rack == [v] && !deeper,
                    "{field:?}: Bridle reads {v:?}, Rack {rack:?} (nested: {deeper})"
                ),
                Lookup::Absent => assert!(
                    rack.is_empty() && !deeper,
                    "{field:?}: absent for Bridle, Rack reads {rack:?}"
                ),
                _ => {}
            }
        }
    }
}
