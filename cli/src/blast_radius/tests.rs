//! Blast-radius reports on the repository's example policies, tokens narrowed in each way,
//! and crafted policy changes that widen or narrow.

use std::path::PathBuf;

use bridle_core::money::Usd;
use bridle_core::policy::{CapsNarrowing, CompiledPolicy, Policy};
use bridle_core::token::Claims;
use serde_json::{json, Value};

use super::diff::diff;
use super::output::{self, Format};
use super::*;
use crate::render::{ledger_link, Upstream};

fn examples() -> Vec<CompiledPolicy> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    bridle_core::policy_files::load(&[dir]).unwrap()
}

fn example(name: &str) -> CompiledPolicy {
    examples()
        .into_iter()
        .find(|p| p.policy.name == name)
        .unwrap()
}

const NOW: u64 = 1_800_000_000;

fn assumptions() -> Assumptions {
    Assumptions {
        link: ledger_link(&Upstream::parse("http://127.0.0.1:8181").unwrap()),
        proxies: 1,
        now: NOW,
    }
}

fn usd(s: &str) -> Option<Usd> {
    Some(Usd::parse(s).unwrap())
}

/// A policy as JSON, edited, compiled.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> CompiledPolicy {
    let mut v = serde_json::to_value(&example(name).policy).unwrap();
    edit(&mut v);
    let p: Policy = serde_json::from_value(v).unwrap();
    p.compile().unwrap()
}

fn claims(policy: &str) -> Claims {
    Claims {
        v: 1,
        id: "tok_1".into(),
        policy: policy.into(),
        vendor: example(policy).policy.vendor,
        iat: NOW - 600,
        exp: NOW + 1200,
        label: "acme/agent-1/run-1".into(),
        endpoints: None,
        merchants: None,
        caps: CapsNarrowing::default(),
    }
}

#[test]
fn a_policy_reports_its_whole_reach() {
    let r = for_policy(&example("stripe-payments"), &assumptions());
    let endpoints: Vec<&str> = r.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(
        endpoints,
        [
            "POST /v1/payment_intents",
            "GET /v1/payment_intents/*",
            "GET /v1/charges/*"
        ]
    );
    assert!(r.endpoints[0].cost.as_deref().unwrap().contains("amount"));
    assert_eq!(r.endpoints[1].cost, None);
    assert_eq!(
        r.merchants.allow,
        ["acct_1BridleDemoA", "acct_1BridleDemoB"]
    );
    assert!(!r.merchants.unscoped);
    assert_eq!(r.caps.per_transaction, usd("250"));
    assert_eq!(r.ttl_secs, 3600);
    // A one-hour TTL spans one 24h window: the $1000 window cap binds, below the $5000
    // lifetime cap, the $20000 aggregate and $250 x 120 calls a minute over 61 minutes.
    assert_eq!(r.spend.max_usd, usd("1000"));
    assert!(
        r.spend.bounds[0].why.contains("per 1day window"),
        "{:?}",
        r.spend.bounds
    );
    let calls = r.calls.as_ref().unwrap();
    assert_eq!((calls.per_minute, calls.identical_per_minute), (120, 10));
    assert_eq!(calls.in_any_60s, 240);
    assert_eq!(calls.before_expiry, 120 * 61);
    assert!(r
        .spend
        .bounds
        .iter()
        .any(|b| b.usd == Usd::parse("250").unwrap().checked_mul(120 * 61).unwrap()));
    // Revocation: poll 200 + tick 20 + callout 500 + tick 20, from the rendered link.
    assert_eq!(r.revocation.worst_ms, 740);
    assert!(r.revocation.ledger_unreachable.contains("3000 ms"));
}

#[test]
fn a_lease_moves_costed_revocation_to_the_proxy_and_is_a_widening() {
    let plain = example("stripe-payments");
    let r = for_policy(&plain, &assumptions());
    assert!(r
        .revocation
        .costed
        .contains("the ledger checks every reservation"));
    let leased = edited("stripe-payments", |v| {
        v["lease"] = json!({ "calls": 16, "max_age_ms": 250 });
    });
    let r = for_policy(&leased, &assumptions());
    assert!(
        r.revocation.costed.contains("within 740 ms") && r.revocation.costed.contains("16"),
        "{}",
        r.revocation.costed
    );
    let widened = diff(
        std::slice::from_ref(&plain),
        std::slice::from_ref(&leased),
        &assumptions(),
    );
    assert!(
        widened.widens.iter().any(|w| w.what == "lease"),
        "{widened:?}"
    );
    let narrowed = diff(&[leased], &[plain], &assumptions());
    assert!(narrowed.widens.iter().all(|w| w.what != "lease"));
    assert!(narrowed.narrows.iter().any(|w| w.what == "lease"));
}

#[test]
fn every_example_policy_reports() {
    let a = assumptions();
    for p in examples() {
        let r = for_policy(&p, &a);
        assert!(!r.endpoints.is_empty(), "{}", p.policy.name);
        assert!(
            r.spend.max_usd.is_some(),
            "{}: {:?}",
            p.policy.name,
            r.spend
        );
        assert!(r.calls.is_some(), "{}", p.policy.name);
    }
    // Four hours of a 24h window: one window's cap.
    assert_eq!(
        for_policy(&example("openai-chat"), &a).spend.max_usd,
        usd("5")
    );
    assert_eq!(
        for_policy(&example("twilio-sms"), &a).merchants.allow,
        ["AC00000000000000000000000000b71d1e"]
    );
    assert!(
        !for_policy(&example("resend-transactional"), &a)
            .merchants
            .scoped
    );
}

#[test]
fn a_ttl_longer_than_the_window_spans_several() {
    let p = edited("openai-chat", |v| {
        v["max_ttl"] = json!("25h");
    });
    assert_eq!(for_policy(&p, &assumptions()).spend.max_usd, usd("10"));
    let p = edited("openai-chat", |v| {
        v["max_ttl"] = json!("24h");
    });
    assert_eq!(for_policy(&p, &assumptions()).spend.max_usd, usd("5"));
}

#[test]
fn with_no_window_or_lifetime_cap_the_loop_breaker_bounds_spend() {
    let p = edited("stripe-payments", |v| {
        v["caps"] = json!({ "per_transaction": "10.00" });
    });
    let r = for_policy(&p, &assumptions());
    assert_eq!(r.spend.max_usd, usd("73200"), "{:?}", r.spend);
    let many = Assumptions {
        proxies: 3,
        ..assumptions()
    };
    assert_eq!(for_policy(&p, &many).spend.max_usd, usd("219600"));
    let p = edited("stripe-payments", |v| {
        v["caps"] = json!({ "per_transaction": "10.00" });
        v.as_object_mut().unwrap().remove("loop_breaker");
    });
    let r = for_policy(&p, &assumptions());
    assert_eq!(r.spend.max_usd, None, "nothing bounds it");
    assert!(r.notes.iter().any(|n| n.contains("no loop breaker")));
}

#[test]
fn a_token_applies_its_narrowing() {
    let p = example("stripe-payments");
    let mut c = claims("stripe-payments");
    c.endpoints = Some(vec![
        "POST /v1/payment_intents".into(),
        "GET /v1/charges/ch_*".into(),
    ]);
    c.merchants = Some(vec!["acct_1BridleDemoA".into()]);
    c.caps.per_window = usd("100");
    let r = for_token(&p, &c, true, false, &assumptions());
    let endpoints: Vec<&str> = r.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(
        endpoints,
        ["POST /v1/payment_intents", "GET /v1/charges/ch_*"]
    );
    assert_eq!(r.merchants.allow, ["acct_1BridleDemoA"]);
    assert_eq!(r.caps.per_window, usd("100"));
    assert_eq!(
        r.caps.per_transaction,
        usd("250"),
        "the policy's, unchanged"
    );
    assert_eq!(r.ttl_secs, 1200, "what is left of its life");
    assert_eq!(r.spend.max_usd, usd("100"));
    assert_eq!(r.calls.as_ref().unwrap().before_expiry, 120 * 21);

    // Reads only: nothing it reaches is costed.
    c.endpoints = Some(vec!["GET /v1/charges/*".into()]);
    let r = for_token(&p, &c, true, false, &assumptions());
    assert_eq!(r.spend.max_usd, Some(Usd::ZERO));
    assert!(!r.spend.costed_endpoints);
}

#[test]
fn a_token_that_cannot_be_used_reaches_nothing() {
    let p = example("stripe-payments");
    let mut expired = claims("stripe-payments");
    expired.exp = NOW;
    let r = for_token(&p, &expired, false, false, &assumptions());
    assert!(r
        .token
        .as_ref()
        .unwrap()
        .inert
        .as_deref()
        .unwrap()
        .starts_with("expired"));
    assert!(r.endpoints.is_empty());
    assert_eq!((r.ttl_secs, r.spend.max_usd), (0, Some(Usd::ZERO)));
    let r = for_token(&p, &claims("stripe-payments"), true, true, &assumptions());
    assert!(r.token.unwrap().inert.unwrap().starts_with("revoked"));
    let mut long = claims("stripe-payments");
    long.iat = NOW - 10;
    long.exp = NOW + 7200;
    let r = for_token(&p, &long, true, false, &assumptions());
    assert!(r.token.unwrap().inert.unwrap().contains("longer than"));
}

#[test]
fn the_same_policies_widen_nothing() {
    let d = diff(&examples(), &examples(), &assumptions());
    assert_eq!(d, Default::default());
}

fn widened(d: &super::diff::Diff) -> Vec<String> {
    d.widens
        .iter()
        .map(|c| format!("{} {}: {}", c.policy, c.what, c.detail))
        .collect()
}

#[test]
fn every_kind_of_widening_is_listed() {
    let base = vec![example("stripe-payments")];
    let head = vec![edited("stripe-payments", |v| {
        v["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "method": "POST", "path": "/v1/refunds" }));
        // Costed before, free now.
        v["endpoints"][0].as_object_mut().unwrap().remove("cost");
        v["merchants"]["allow"]
            .as_array_mut()
            .unwrap()
            .push(json!("acct_1BridleDemoC"));
        v["merchants"]["allow_unscoped"] = json!(true);
        v["caps"]["per_window"] = json!("2000.00");
        v["caps"].as_object_mut().unwrap().remove("lifetime");
        v["caps"]["window"] = json!("12h");
        v["max_ttl"] = json!("2h");
        v["loop_breaker"]["max_requests_per_minute"] = json!(600);
        v["on_ledger_unavailable"] = json!("allow");
        v["fx"]["eur"] = json!("0.50");
        v["fx"]["chf"] = json!("1.12");
    })];
    let d = diff(&base, &head, &assumptions());
    let w = widened(&d);
    for want in [
        "endpoint: new endpoint POST /v1/refunds (uncosted",
        "cost: POST /v1/payment_intents is no longer costed",
        "merchant: new merchant acct_1BridleDemoC",
        "merchant: calls naming no merchant (allow_unscoped) now allowed",
        "cap: per-window cap raised from $1000.00 to $2000.00",
        "cap: lifetime cap removed (was $5000.00): uncapped",
        "cap: window shortened from 1day to 12h",
        "ttl: max TTL lengthened from 1h to 2h",
        "loop_breaker: requests per minute raised from 120 to 600",
        "ledger_unavailable: on_ledger_unavailable: allow",
        "fx: eur rate lowered from $1.10 to $0.50",
        "fx: currency chf now accepted",
    ] {
        assert!(
            w.iter().any(|x| x.contains(want)),
            "missing {want:?} in:\n{}",
            w.join("\n")
        );
    }
    assert!(w.iter().all(|x| x.starts_with("stripe-payments ")));
}

#[test]
fn narrowing_lists_nothing_as_widening() {
    let base = examples();
    let head: Vec<CompiledPolicy> = base
        .iter()
        .map(|p| {
            if p.policy.name != "stripe-payments" {
                return p.clone();
            }
            edited("stripe-payments", |v| {
                // A narrower glob within the old one, fewer merchants, lower caps, a shorter
                // TTL, a tighter loop breaker, a higher fx rate.
                v["endpoints"][2]["path"] = json!("/v1/charges/ch_*");
                v["merchants"]["allow"] = json!(["acct_1BridleDemoA"]);
                v["caps"]["per_window"] = json!("500.00");
                v["max_ttl"] = json!("30m");
                v["loop_breaker"]["max_identical_per_minute"] = json!(5);
                v["fx"]["eur"] = json!("1.20");
            })
        })
        .filter(|p| p.policy.name != "twilio-sms")
        .collect();
    let d = diff(&base, &head, &assumptions());
    assert!(d.widens.is_empty(), "{}", widened(&d).join("\n"));
    let narrowed: Vec<String> = d.narrows.iter().map(|c| c.detail.clone()).collect();
    for want in [
        "endpoint GET /v1/charges/* removed",
        "merchant acct_1BridleDemoB removed",
        "per-window cap lowered",
        "max TTL shortened",
        "identical requests per minute lowered from 10 to 5",
        "policy removed",
    ] {
        assert!(
            narrowed.iter().any(|x| x.contains(want)),
            "missing {want:?} in {narrowed:#?}"
        );
    }
}

#[test]
fn a_new_policy_widens_and_a_narrower_endpoint_does_not() {
    let d = diff(&[], &[example("openai-chat")], &assumptions());
    assert_eq!(d.widens.len(), 1);
    assert!(
        d.widens[0].detail.starts_with("new policy: 3 endpoint(s)"),
        "{:?}",
        d.widens
    );
    // An endpoint within an old glob is no widening; trading token pricing for a flat
    // estimate is.
    let head = edited("openai-chat", |v| {
        v["endpoints"][1]["cost"] = json!({ "max": "0.01" });
    });
    let d = diff(&[example("openai-chat")], &[head], &assumptions());
    let w = widened(&d);
    assert!(w.iter().any(|x| x.contains("cost: POST /v1/responses cost changed from its tokens at the model's prices: the most it can cost reserved, settled from its usage to $0.01 estimate per call: counts less")), "{w:#?}");
}

#[test]
fn the_three_formats_say_the_same() {
    let a = assumptions();
    let reports: Vec<Radius> = examples().iter().map(|p| for_policy(p, &a)).collect();
    let table = output::reports(&reports, &a, Format::Table).unwrap();
    let md = output::reports(&reports, &a, Format::Markdown).unwrap();
    let json: Value =
        serde_json::from_str(&output::reports(&reports, &a, Format::Json).unwrap()).unwrap();
    for text in [&table, &md] {
        assert!(text.contains("policy stripe-payments (stripe)"), "{text}");
        assert!(text.contains("$1000.00"));
        assert!(text.contains("within 740 ms"));
        assert!(text.contains("120 per minute (10 identical), per proxy"));
    }
    assert!(
        md.contains("| most it can spend before it expires | $1000.00<br>"),
        "{md}"
    );
    assert_eq!(json["reports"].as_array().unwrap().len(), 5);
    let stripe = &json["reports"][3];
    assert_eq!(stripe["policy"], "stripe-payments");
    assert_eq!(stripe["spend"]["max_usd"], "1000.00");
    assert_eq!(stripe["revocation"]["worst_ms"], 740);
    assert_eq!(
        json["assumptions"]["ledger_link"]["revocation_poll_ms"],
        200
    );
}
