//! The request path without any host: every rule of the exchange, step by step.

use super::*;
use crate::ledger_api::ReserveRequest;
use crate::loop_breaker::MemoryCounter;
use crate::token::Claims;

const NOW_MS: u64 = 1_700_000_100_000;
const SECRET: &str = "sk_test_CANARY_exchange_secret";

fn keyring_spec() -> String {
    crate::token::tests::public_spec()
}

/// A Stripe listener: a free endpoint, a costed one that settles from the response, and a
/// costed one with an estimate; optionally a loop breaker; `on_unavailable` for free calls.
fn blueprint_with(loop_breaker: bool, on_unavailable: &str, ledger: bool) -> Blueprint {
    blueprint_tweaked(loop_breaker, on_unavailable, ledger, |_| {})
}

/// The same, with the policy changed by `tweak` before it is compiled.
fn blueprint_tweaked(
    loop_breaker: bool,
    on_unavailable: &str,
    ledger: bool,
    tweak: impl Fn(&mut serde_json::Value),
) -> Blueprint {
    let mut policy = serde_json::json!({
        "name": "stripe-payments",
        "vendor": "stripe",
        "secret_env": "STRIPE_SECRET_KEY",
        "max_ttl": "1h",
        "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
        "endpoints": [
            { "method": "GET", "path": "/v1/charges/*" },
            { "method": "POST", "path": "/v1/payment_intents",
              "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "POST", "path": "/v1/invoices/*/pay",
              "cost": { "max": "500", "settle": { "field": "amount_paid", "currency_field": "currency" } } },
            { "method": "POST", "path": "/v1/customers" },
        ],
        "on_ledger_unavailable": on_unavailable,
    });
    if loop_breaker {
        policy["loop_breaker"] =
            serde_json::json!({ "max_requests_per_minute": 3, "max_identical_per_minute": 2 });
    }
    if !ledger {
        let endpoints = policy["endpoints"].as_array_mut().unwrap();
        endpoints.retain(|e| e.get("cost").is_none());
    }
    tweak(&mut policy);
    let mut config = serde_json::json!({ "vendor": "stripe", "policies": [policy] });
    if ledger {
        config["ledger"] = serde_json::json!({ "cluster": "bridle_ledger" });
    }
    let env = |name: &str| match name {
        "BRIDLE_PUBLIC_KEYS" => Some(keyring_spec()),
        "STRIPE_SECRET_KEY" => Some(SECRET.to_string()),
        _ => None,
    };
    Blueprint::configure(Some(config.to_string().as_bytes()), env).unwrap()
}

fn blueprint() -> Blueprint {
    blueprint_with(false, "deny", true)
}

fn token() -> String {
    crate::token::tests::signing_key()
        .mint(&Claims {
            v: 1,
            id: "tok_abc".into(),
            policy: "stripe-payments".into(),
            vendor: Vendor::Stripe,
            iat: NOW_MS / 1000 - 10,
            exp: NOW_MS / 1000 + 600,
            label: "acme/run-1".into(),
            endpoints: None,
            merchants: None,
            caps: Default::default(),
        })
        .unwrap()
}

fn headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (
            "authorization".to_string(),
            format!("Bearer {}", token()).into_bytes(),
        ),
        (
            "content-type".to_string(),
            b"application/x-www-form-urlencoded".to_vec(),
        ),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
    );
    h
}

struct Run {
    bp: Blueprint,
    counter: MemoryCounter,
    revocations: RevocationSet,
    fresh_at_ms: u64,
    next_id: std::cell::Cell<u64>,
}

impl Run {
    fn new(bp: Blueprint) -> Run {
        Run {
            bp,
            counter: MemoryCounter::default(),
            revocations: RevocationSet::default(),
            fresh_at_ms: NOW_MS,
            next_id: std::cell::Cell::new(0),
        }
    }

    fn begin(&self, h: &[(String, Vec<u8>)], end_of_stream: bool) -> (Exchange, Step) {
        self.next_id.set(self.next_id.get() + 1);
        Exchange::begin(
            &self.bp,
            Arrival {
                headers: h,
                end_of_stream,
                now_ms: NOW_MS,
                id: format!("{:032x}", self.next_id.get()),
                revocations: &self.revocations,
                revocations_fresh_at_ms: self.fresh_at_ms,
            },
            &self.counter,
        )
    }

    /// Runs a costed request up to its reservation.
    fn reserve(
        &self,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> (Exchange, ReserveRequest) {
        let (mut x, step) = self.begin(&headers("POST", path, extra), false);
        assert!(matches!(step, Step::ReadBody), "{step:?}");
        let step = x.on_body(&self.bp, &self.counter, Body::Complete(body));
        let Step::Reserve(encoded) = step else {
            panic!("{step:?}")
        };
        (x, serde_json::from_slice(&encoded).unwrap())
    }

    fn granted(&self, x: &mut Exchange, req: &ReserveRequest, replay: bool) {
        let answer = serde_json::json!({
            "decision": "granted", "reservation": req.request_id, "replay": replay
        })
        .to_string();
        let step = x.on_reservation(&self.bp, &mut LeaseBook::default(), Ok(answer.as_bytes()));
        assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");
    }
}

fn refused(step: Step) -> Reply {
    match step {
        Step::Refuse(reply) => reply,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_free_call_is_forwarded_with_the_secret_in_place_of_the_credentials() {
    let run = Run::new(blueprint());
    let h = headers(
        "GET",
        "/v1/charges/ch_1",
        &[("x-http-method-override", "DELETE"), ("x-bridle-x", "1")],
    );
    let (x, step) = run.begin(&h, true);
    assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");
    let rewrite = x.rewrite().unwrap();
    // Authorization is replaced by the secret, not removed separately.
    assert_eq!(
        rewrite.removals().collect::<Vec<_>>(),
        ["x-http-method-override", "x-bridle-x"]
    );
    assert_eq!(
        rewrite.secret_headers(),
        [("authorization", format!("Bearer {SECRET}"))]
    );
    assert!(!x.wants_response(), "a free call settles nothing");
    let done = x.finish(Vendor::Stripe, Some(200));
    assert!(done.settle.is_none());
    let a = done.audit;
    assert_eq!(
        (a.reason, a.status, a.method.as_str(), a.path.as_str()),
        (Reason::Allowed, 200, "GET", "/v1/charges/ch_1")
    );
    assert_eq!(a.token_id.as_deref(), Some("tok_abc"));
    assert_eq!(a.cost, None);
    assert_eq!(a.at_ms, NOW_MS);
}

#[test]
fn a_refusal_on_headers_is_vendor_shaped_and_audited() {
    let run = Run::new(blueprint());
    let (x, step) = run.begin(&headers("POST", "/v1/refunds?x=1", &[]), true);
    let reply = refused(step);
    assert_eq!(reply.reason, Reason::EndpointNotAllowed);
    assert_eq!(reply.response.status, 403);
    assert_eq!(reply.slot, Some(0));
    assert_eq!(reply.token_id.as_deref(), Some("tok_abc"));
    assert!(!reply.is_failure());
    assert!(reply.response.body.contains("invalid_request_error"));
    assert!(x.rewrite().is_none(), "nothing to forward");
    let a = x.finish(Vendor::Stripe, Some(403)).audit;
    assert_eq!(a.reason, Reason::EndpointNotAllowed);
    assert_eq!(a.path, "/v1/refunds", "the query is never audited");
    assert_eq!(a.policy.as_deref(), Some("stripe-payments"));

    // Without a genuine token, nothing is attributed.
    let mut h = headers("GET", "/v1/charges/ch_1", &[]);
    h[2].1 = b"Bearer bvt_forged".to_vec();
    let (x, step) = run.begin(&h, true);
    let reply = refused(step);
    assert_eq!((reply.slot, reply.token_id), (None, None));
    assert_eq!(x.finish(Vendor::Stripe, None).audit.token_id, None);
}

#[test]
fn a_stale_revocation_set_refuses_free_calls_only_when_the_policy_says_deny() {
    for (mode, costed, want) in [
        ("deny", false, Some(Reason::RevocationStale)),
        ("allow", false, None),
        // Costed calls ask the ledger, which checks revocation itself.
        ("deny", true, None),
    ] {
        let mut run = Run::new(blueprint_with(false, mode, true));
        run.fresh_at_ms = NOW_MS - 3_001;
        let h = if costed {
            headers("POST", "/v1/payment_intents", &[])
        } else {
            headers("GET", "/v1/charges/ch_1", &[])
        };
        let (_, step) = run.begin(&h, !costed);
        match want {
            Some(reason) => assert_eq!(refused(step).reason, reason, "{mode}"),
            None => assert!(
                !matches!(step, Step::Refuse(_)),
                "{mode} {costed}: {step:?}"
            ),
        }
        // At exactly the limit the set is still fresh.
        run.fresh_at_ms = NOW_MS - 3_000;
        let (_, step) = run.begin(&h, !costed);
        assert!(!matches!(step, Step::Refuse(_)), "{mode}: {step:?}");
    }
    // Without a ledger there is no feed to be stale.
    let mut run = Run::new(blueprint_with(false, "deny", false));
    run.fresh_at_ms = 0;
    let (_, step) = run.begin(&headers("GET", "/v1/charges/ch_1", &[]), true);
    assert!(matches!(step, Step::Forward { .. }), "{step:?}");
}

#[test]
fn the_loop_breaker_counts_every_call_and_fingerprints_whole_requests() {
    let run = Run::new(blueprint_with(true, "deny", true));
    // A free call with a body is read, so identical bodies are recognised.
    let post = |body: &[u8]| {
        let (mut x, step) = run.begin(&headers("POST", "/v1/customers", &[]), false);
        assert!(matches!(step, Step::ReadBody), "{step:?}");
        x.on_body(&run.bp, &run.counter, Body::Complete(body))
    };
    assert!(matches!(post(b"name=a"), Step::Forward { .. }));
    assert!(matches!(post(b"name=a"), Step::Forward { .. }));
    let reply = refused(post(b"name=a"));
    assert_eq!(reply.reason, Reason::RepeatLimited);
    assert!(
        reply
            .response
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after"
                && v.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)))
    );
    // The fourth request in the minute, of any shape, is over the rate.
    let reply = refused(post(b"name=b"));
    assert_eq!(reply.reason, Reason::RateLimited);
    assert!(reply.message.contains("more than 3 requests"));

    // Without a loop breaker, a free body is never read.
    let run = Run::new(blueprint());
    let (_, step) = run.begin(&headers("POST", "/v1/customers", &[]), false);
    assert!(matches!(step, Step::Forward { .. }), "{step:?}");
}

#[test]
fn a_counter_that_fails_refuses() {
    struct Broken;
    impl Counter for Broken {
        fn count(
            &self,
            _: &crate::policy::LoopBreaker,
            _: &str,
            _: Option<u64>,
            _: u64,
        ) -> Result<Verdict, String> {
            Err("status 8".into())
        }
    }
    let bp = blueprint_with(true, "deny", true);
    let (_, step) = Exchange::begin(
        &bp,
        Arrival {
            headers: &headers("GET", "/v1/charges/ch_1", &[]),
            end_of_stream: true,
            now_ms: NOW_MS,
            id: "0".repeat(32),
            revocations: &RevocationSet::default(),
            revocations_fresh_at_ms: NOW_MS,
        },
        &Broken,
    );
    let reply = refused(step);
    assert_eq!(reply.reason, Reason::Internal);
    assert!(reply.is_failure());
    assert!(reply.message.contains("status 8"), "{}", reply.message);
}

#[test]
fn a_costed_call_is_priced_into_a_reservation() {
    let run = Run::new(blueprint());
    let (x, req) = run.reserve(
        "/v1/payment_intents",
        b"amount=2000&currency=usd",
        &[
            ("stripe-account", "acct_1Merchant"),
            ("idempotency-key", "k-1"),
        ],
    );
    assert_eq!(req.amount.to_string(), "20.00");
    assert_eq!(req.request_id, format!("{:032x}", 1));
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/payment_intents")
    );
    assert_eq!(req.merchant.as_deref(), Some("acct_1Merchant"));
    assert_eq!(req.idempotency_key.as_deref(), Some("k-1"));
    assert!(
        req.token.starts_with("bvt_"),
        "the ledger verifies the token itself"
    );
    assert!(x.holds_request() && !x.awaits_body());
    assert!(
        x.rewrite().is_none(),
        "not forwarded before the ledger answers"
    );
    assert!(!format!("{x:?}").contains("bvt_"));
}

#[test]
fn idempotency_keys_the_ledger_cannot_keep_are_not_sent() {
    let run = Run::new(blueprint());
    let long = "k".repeat(256);
    for (key, want) in [
        ("abc-123", Some("abc-123")),
        (&"k".repeat(255)[..], Some(&"k".repeat(255)[..])),
        (&long[..], None),
        ("", None),
        ("tab\there", None),
    ] {
        let (_, req) = run.reserve(
            "/v1/payment_intents",
            b"amount=1&currency=usd",
            &[("idempotency-key", key)],
        );
        assert_eq!(req.idempotency_key.as_deref(), want, "{key:?}");
    }
}

#[test]
fn what_cannot_be_priced_is_refused_before_the_ledger() {
    let run = Run::new(blueprint());
    for (path, body, want) in [
        // Vendors merge query parameters into a POST's: the price must be in the body.
        (
            "/v1/payment_intents?amount=1",
            &b"amount=99999&currency=usd"[..],
            Reason::CostUndetermined,
        ),
        (
            "/v1/payment_intents",
            b"currency=usd",
            Reason::CostUndetermined,
        ),
        (
            "/v1/payment_intents",
            b"amount=100&currency=xyz",
            Reason::CurrencyUnknown,
        ),
        (
            "/v1/payment_intents",
            b"amount=1&amount=2&currency=usd",
            Reason::CostUndetermined,
        ),
    ] {
        let (mut x, _) = run.begin(&headers("POST", path, &[]), false);
        let reply = refused(x.on_body(&run.bp, &run.counter, Body::Complete(body)));
        assert_eq!(reply.reason, want, "{path} {body:?}");
        let done = x.finish(Vendor::Stripe, Some(reply.response.status));
        assert!(done.settle.is_none(), "nothing was reserved");
        assert_eq!(done.audit.cost, None);
    }
    let (mut x, _) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
    let reply = refused(x.on_body(&run.bp, &run.counter, Body::TooLarge));
    assert_eq!(
        (reply.reason, reply.response.status),
        (Reason::BodyTooLarge, 413)
    );
    // A costed request whose headers end the stream is priced from an empty body.
    let (_, step) = run.begin(&headers("POST", "/v1/payment_intents", &[]), true);
    assert_eq!(refused(step).reason, Reason::CostUndetermined);
}

#[test]
fn a_granted_reservation_forwards_and_settles_by_the_vendors_answer() {
    for (status, outcome) in [
        (Some(201), SettleOutcome::Commit),
        (Some(402), SettleOutcome::Release),
        (Some(503), SettleOutcome::Hold),
        (None, SettleOutcome::Hold),
    ] {
        let run = Run::new(blueprint());
        let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=2000&currency=usd", &[]);
        run.granted(&mut x, &req, false);
        assert!(x.rewrite().is_some());
        assert!(
            !x.wants_response(),
            "this rule does not settle from the response"
        );
        let done = x.finish(Vendor::Stripe, status);
        let settle = done.settle.unwrap();
        assert_eq!(
            (
                settle.outcome,
                settle.reservation.as_str(),
                settle.amount,
                settle.replay
            ),
            (outcome, req.request_id.as_str(), None, false)
        );
        assert_eq!(done.audit.reason, Reason::Allowed);
        assert_eq!(
            done.audit.cost.map(|c| c.to_string()).as_deref(),
            Some("20.00")
        );
        assert_eq!(done.audit.reservation, Some(req.request_id.clone()));
    }
    // A replay's settle says so: the ledger only confirms the original.
    let run = Run::new(blueprint());
    let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=2000&currency=usd", &[]);
    run.granted(&mut x, &req, true);
    let done = x.finish(Vendor::Stripe, Some(200));
    assert!(done.settle.unwrap().replay);
    // Audited as a replay that counts nothing, so the audit log and the spend agree.
    assert!(done.audit.replay);
    assert_eq!(done.audit.cost, None);
    assert_eq!(done.audit.reason, Reason::Allowed);
}

#[test]
fn an_idempotency_key_is_bound_to_what_was_reserved() {
    let run = Run::new(blueprint());
    let key = [("idempotency-key", "order-42")];
    let digest = |path: &str, body: &[u8], extra: &[(&str, &str)]| {
        let (_, req) = run.reserve(path, body, extra);
        assert_eq!(req.idempotency_key.as_deref(), Some("order-42"));
        req.digest.unwrap()
    };
    let base = digest("/v1/payment_intents", b"amount=100&currency=usd", &key);
    assert!(crate::ledger_api::check_digest(&base), "{base}");
    assert_eq!(
        base,
        digest("/v1/payment_intents", b"amount=100&currency=usd", &key),
        "the same request, the same digest"
    );
    let merchant = [key[0], ("stripe-account", "acct_1Merchant")];
    for other in [
        digest("/v1/payment_intents", b"amount=99999999&currency=usd", &key),
        digest("/v1/payment_intents", b"amount=100&currency=usd", &merchant),
        digest(
            "/v1/payment_intents",
            b"amount=100&currency=usd&description=x",
            &key,
        ),
        digest("/v1/invoices/in_1/pay", b"", &key),
    ] {
        assert_ne!(base, other);
    }
    // Without a key there is nothing to bind.
    let (_, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    assert_eq!((req.idempotency_key, req.digest), (None, None));
}

#[test]
fn more_than_one_idempotency_key_is_refused() {
    let run = Run::new(blueprint());
    for extra in [
        &[("idempotency-key", "a"), ("idempotency-key", "b")][..],
        &[("idempotency-key", "a"), ("idempotency-key", "a")][..],
        &[("idempotency-key", "a, b")][..],
    ] {
        let (x, step) = run.begin(&headers("POST", "/v1/payment_intents", extra), false);
        let reply = refused(step);
        assert_eq!(reply.reason, Reason::IdempotencyKeyAmbiguous, "{extra:?}");
        assert_eq!(reply.response.status, 400);
        assert!(reply.response.body.contains("idempotency_key_ambiguous"));
        assert!(x.rewrite().is_none());
    }
}

#[test]
fn the_ledgers_refusal_reaches_the_agent_and_holds_nothing() {
    let run = Run::new(blueprint());
    let (mut x, _) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    let answer = br#"{"decision":"denied","reason":"cap_window","message":"over the $1.00 cap"}"#;
    let reply = refused(x.on_reservation(&run.bp, &mut LeaseBook::default(), Ok(answer)));
    // 403 on Stripe, whose SDK reads every 402 as a declined card.
    assert_eq!(
        (reply.reason, reply.response.status),
        (Reason::CapWindow, 403)
    );
    assert!(reply.response.body.contains("over the $1.00 cap"));
    assert!(!reply.ledger_failed);
    let done = x.finish(Vendor::Stripe, Some(403));
    assert!(done.settle.is_none());
    assert_eq!(done.audit.reason, Reason::CapWindow);
}

#[test]
fn a_ledger_that_fails_denies_and_releases_what_it_may_hold() {
    for answer in [
        Err("The ledger could not be reached or failed (status 503).".to_string()),
        Ok(b"<html>".to_vec()),
    ] {
        let run = Run::new(blueprint());
        let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
        let reply = refused(x.on_reservation(
            &run.bp,
            &mut LeaseBook::default(),
            answer.as_deref().map_err(Clone::clone),
        ));
        assert_eq!(
            (reply.reason, reply.response.status),
            (Reason::LedgerUnavailable, 503)
        );
        assert!(reply.ledger_failed && reply.is_failure());
        assert!(reply
            .response
            .headers
            .contains(&("stripe-should-retry", "false".into())));
        let settle = x.finish(Vendor::Stripe, Some(503)).settle.unwrap();
        assert_eq!(
            (settle.outcome, settle.reservation),
            (SettleOutcome::Release, req.request_id)
        );
    }
    // A reservation that never left holds nothing.
    let run = Run::new(blueprint());
    let (mut x, _) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    let reply = refused(x.on_reservation_unsent(&run.bp, "status 1"));
    assert_eq!(reply.reason, Reason::LedgerUnavailable);
    assert!(reply.message.contains("status 1"));
    assert!(x.finish(Vendor::Stripe, Some(503)).settle.is_none());
}

#[test]
fn a_stream_that_ends_early_releases_and_is_never_counted_as_allowed() {
    let run = Run::new(blueprint());
    // Gone while the ledger was asked.
    let (x, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    let done = x.finish(Vendor::Stripe, None);
    let settle = done.settle.unwrap();
    assert_eq!(
        (settle.outcome, settle.reservation),
        (SettleOutcome::Release, req.request_id)
    );
    assert_ne!(done.audit.reason, Reason::Allowed);
    // Gone while the body was read: nothing was reserved.
    let (x, _) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
    let done = x.finish(Vendor::Stripe, None);
    assert!(done.settle.is_none());
    assert_ne!(done.audit.reason, Reason::Allowed);
}

#[test]
fn a_failed_rewrite_refuses_and_releases_the_reservation() {
    let run = Run::new(blueprint());
    let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    run.granted(&mut x, &req, false);
    let reply = refused(x.fail(&run.bp, "Could not rewrite (status 2).".into()));
    assert_eq!((reply.reason, reply.slot), (Reason::Internal, Some(0)));
    let done = x.finish(Vendor::Stripe, Some(500));
    let settle = done.settle.unwrap();
    assert_eq!(
        (settle.outcome, settle.reservation.as_str()),
        (SettleOutcome::Release, req.request_id.as_str())
    );
    assert_eq!(done.audit.reason, Reason::Internal);
    assert_eq!(done.audit.cost, None);

    // Failing while the ledger was asked releases too: it may have reserved.
    let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    refused(x.fail(&run.bp, "x".into()));
    assert_eq!(
        x.finish(Vendor::Stripe, None).settle.unwrap().reservation,
        req.request_id
    );
}

#[test]
fn callbacks_out_of_order_refuse_instead_of_guessing() {
    let run = Run::new(blueprint());
    let (mut x, step) = run.begin(&headers("GET", "/v1/charges/ch_1", &[]), true);
    assert!(matches!(step, Step::Forward { .. }));
    assert_eq!(
        refused(x.on_reservation(&run.bp, &mut LeaseBook::default(), Ok(b"{}"))).reason,
        Reason::Internal
    );
    let (mut x, _) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
    assert_eq!(
        refused(x.on_reservation_unsent(&run.bp, "x")).reason,
        Reason::Internal
    );
    assert!(x.rewrite().is_none());
}

#[test]
fn a_settle_rule_reads_the_amount_from_a_2xx_response() {
    let run = Run::new(blueprint());
    let reserve = || {
        let (mut x, req) = run.reserve("/v1/invoices/in_1/pay", b"", &[]);
        assert_eq!(req.amount.to_string(), "500.00", "the estimate is reserved");
        run.granted(&mut x, &req, false);
        assert!(x.wants_response());
        x
    };
    let mut x = reserve();
    let mut asked = false;
    assert_eq!(
        x.on_response_head(Some(200), || {
            asked = true;
            Some(b"application/json".to_vec())
        }),
        ResponseBody::Buffer
    );
    assert!(asked && x.reading_response());
    let warning = x.on_response_body(
        &run.bp,
        Some(Body::Complete(br#"{"amount_paid":1999,"currency":"usd"}"#)),
    );
    assert_eq!(warning, None);
    assert!(!x.reading_response());
    assert_eq!(x.status(), Some(200));
    let done = x.finish(Vendor::Stripe, Some(200));
    assert_eq!(
        done.settle
            .unwrap()
            .amount
            .map(|a| a.to_string())
            .as_deref(),
        Some("19.99")
    );
    assert_eq!(
        done.audit.cost.map(|c| c.to_string()).as_deref(),
        Some("19.99")
    );

    // A refusal from the vendor is not read: it releases.
    let mut x = reserve();
    assert_eq!(
        x.on_response_head(Some(402), || panic!("not read")),
        ResponseBody::Ignore
    );
    let settle = x.finish(Vendor::Stripe, Some(402)).settle.unwrap();
    assert_eq!(
        (settle.outcome, settle.amount),
        (SettleOutcome::Release, None)
    );

    // What cannot be read settles at the reservation, with a warning.
    for body in [
        Some(Body::TooLarge),
        None,
        Some(Body::Complete(&b"<html>"[..])),
        Some(Body::Complete(&br#"{"id":"in_1"}"#[..])),
    ] {
        let mut x = reserve();
        assert_eq!(x.on_response_head(Some(200), || None), ResponseBody::Buffer);
        let warning = x.on_response_body(&run.bp, body).unwrap();
        assert!(warning.contains("settling at the reservation"), "{warning}");
        let done = x.finish(Vendor::Stripe, Some(200));
        assert_eq!(done.settle.unwrap().amount, None);
        assert_eq!(
            done.audit.cost.map(|c| c.to_string()).as_deref(),
            Some("500.00")
        );
    }
}

#[test]
fn requests_envoy_answered_first_are_audited_as_the_proxys() {
    let h = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), b"/v1/charges/\x01?secret=1".to_vec()),
    ];
    let a = Exchange::proxy_rejected(Vendor::Stripe, "ab".repeat(16), NOW_MS, &h, Some(400));
    assert_eq!(
        (a.reason, a.status, a.method.as_str(), a.path.as_str()),
        (Reason::ProxyRejected, 400, "GET", "/v1/charges/?")
    );
    let a = Exchange::proxy_rejected(Vendor::Stripe, "ab".repeat(16), NOW_MS, &[], None);
    assert_eq!((a.path.as_str(), a.status), ("-", 0));
}

#[test]
fn unreadable_headers_refuse() {
    let bp = blueprint();
    let (x, step) = Exchange::unreadable(&bp, "1".repeat(32), NOW_MS, "status 2".into());
    let reply = refused(step);
    assert_eq!(
        (reply.reason, reply.response.status),
        (Reason::Internal, 500)
    );
    assert_eq!(
        x.finish(Vendor::Stripe, Some(500)).audit.reason,
        Reason::Internal
    );
}

#[test]
fn configuration_problems_name_the_field_or_variable_and_never_a_secret() {
    let err = |bytes: Option<&[u8]>, env: &dyn Fn(&str) -> Option<String>| {
        Blueprint::configure(bytes, env).err().unwrap()
    };
    let full = |name: &str| match name {
        "BRIDLE_PUBLIC_KEYS" => Some(keyring_spec()),
        "STRIPE_SECRET_KEY" => Some("has space".to_string()),
        _ => None,
    };
    assert!(err(None, &full).contains("no plugin configuration"));
    let config = serde_json::json!({ "vendor": "stripe", "policies": [] }).to_string();
    assert!(err(Some(config.as_bytes()), &full).contains("policies"));
    let config = serde_json::json!({ "vendor": "stripe", "policies": [{
        "name": "p", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow_unscoped": true }, "endpoints": [{ "method": "GET", "path": "/v1/x" }]
    }]})
    .to_string();
    let e = err(Some(config.as_bytes()), &full);
    assert!(
        e.contains("STRIPE_SECRET_KEY") && !e.contains("has space"),
        "{e}"
    );
    let e = err(Some(config.as_bytes()), &|_| None);
    assert!(e.contains("BRIDLE_PUBLIC_KEYS"), "{e}");
}

/// `bvt_` and the rest of the token, percent-encoded.
fn encoded_token() -> String {
    token().bytes().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn a_vault_token_in_a_body_bridle_reads_is_refused() {
    let run = Run::new(blueprint_with(true, "deny", true));
    // Costed: before any price or reservation.
    for body in [
        format!("amount=100&currency=usd&description={}", token()),
        format!("amount=100&currency=usd&description={}", encoded_token()),
    ] {
        let (mut x, step) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
        assert!(matches!(step, Step::ReadBody));
        let reply = refused(x.on_body(&run.bp, &run.counter, Body::Complete(body.as_bytes())));
        assert_eq!(reply.reason, Reason::CredentialAmbiguous);
        assert!(
            !reply.response.body.contains("bvt_"),
            "{}",
            reply.response.body
        );
        let done = x.finish(Vendor::Stripe, Some(400));
        assert!(done.settle.is_none());
        assert_eq!(done.audit.reason, Reason::CredentialAmbiguous);
    }
    // Free, read for the loop breaker: the same.
    let json = format!("{{\"description\": \"\\u0062vt_{}\"}}", &token()[4..]);
    let (mut x, _) = run.begin(&headers("POST", "/v1/customers", &[]), false);
    let reply = refused(x.on_body(&run.bp, &run.counter, Body::Complete(json.as_bytes())));
    assert_eq!(reply.reason, Reason::CredentialAmbiguous);
}

#[test]
fn a_streamed_body_is_scanned_piece_by_piece_and_its_tail_held_back() {
    let run = Run::new(blueprint());
    let (mut x, step) = run.begin(&headers("POST", "/v1/customers", &[]), false);
    assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");
    assert!(x.streams_body());
    assert!(x.on_body_chunk(&run.bp, b"name=Ada&note=hello").is_none());
    assert_eq!(x.body_pending(), 0);
    // A piece that ends where a token could begin is held back.
    assert!(x.on_body_chunk(&run.bp, b"+world+bv").is_none());
    assert_eq!(x.body_pending(), 2);
    assert!(x.on_body_chunk(&run.bp, b"x&city=Paris").is_none());
    assert_eq!(x.body_pending(), 0);
    // A token cut across pieces, every character encoded: found when it completes.
    let t = encoded_token();
    let (head, tail) = t.split_at(20);
    assert!(x
        .on_body_chunk(&run.bp, format!("&k={head}").as_bytes())
        .is_none());
    assert!(x.body_pending() >= head.len());
    let reply = refused(x.on_body_chunk(&run.bp, tail.as_bytes()).unwrap());
    assert_eq!(reply.reason, Reason::CredentialAmbiguous);
    assert!(!x.streams_body(), "refused: nothing more goes");
    let done = x.finish(Vendor::Stripe, Some(400));
    assert_eq!(done.audit.reason, Reason::CredentialAmbiguous);
    // A request whose whole body came with its headers streams nothing.
    let (x, _) = run.begin(&headers("POST", "/v1/customers", &[]), true);
    assert!(!x.streams_body());
}

#[test]
fn a_body_too_large_to_read_streams_on_scanned() {
    let run = Run::new(blueprint_with(true, "deny", true));
    let (mut x, step) = run.begin(&headers("POST", "/v1/customers", &[]), false);
    assert!(matches!(step, Step::ReadBody));
    let step = x.on_body(&run.bp, &run.counter, Body::TooLarge);
    assert!(matches!(step, Step::Forward { .. }), "{step:?}");
    assert!(x.streams_body());
    assert!(x.on_body_chunk(&run.bp, token().as_bytes()).is_some());
}

#[test]
fn trailers_are_refused_wherever_the_request_is() {
    let run = Run::new(blueprint());
    let trailers = vec![("x-amount".to_string(), b"99999".to_vec())];
    // While its body is read for a price.
    let (mut x, _) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
    let reply = refused(x.on_trailers(&run.bp, &trailers).unwrap());
    assert_eq!(
        (reply.reason, reply.response.status),
        (Reason::TrailersNotAllowed, 400)
    );
    let done = x.finish(Vendor::Stripe, Some(400));
    assert_eq!(done.audit.reason, Reason::TrailersNotAllowed);
    assert!(done.settle.is_none());
    // While the ledger reserves: the reservation, if made, is released.
    let (mut x, req) = run.reserve("/v1/payment_intents", b"amount=100&currency=usd", &[]);
    refused(x.on_trailers(&run.bp, &trailers).unwrap());
    let step = x.on_reservation(
        &run.bp,
        &mut LeaseBook::default(),
        Ok(serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false})
            .to_string()
            .as_bytes()),
    );
    assert!(
        !matches!(step, Step::Forward { .. }),
        "a late grant never forwards"
    );
    let done = x.finish(Vendor::Stripe, Some(400));
    let settle = done.settle.unwrap();
    assert_eq!(
        (settle.reservation.as_str(), settle.outcome),
        (req.request_id.as_str(), SettleOutcome::Release)
    );
    // After a free request's headers went on, its body streaming.
    let (mut x, _) = run.begin(&headers("POST", "/v1/customers", &[]), false);
    assert!(x.on_body_chunk(&run.bp, b"name=Ada").is_none());
    refused(x.on_trailers(&run.bp, &trailers).unwrap());
    // No trailers at all: nothing to refuse, the body has simply ended.
    let (mut x, _) = run.begin(&headers("POST", "/v1/payment_intents", &[]), false);
    assert!(x.on_trailers(&run.bp, &[]).is_none());
    assert!(x.awaits_body());
    // Already refused: nothing more.
    let (mut x, _) = run.begin(&headers("POST", "/v1/refunds", &[]), false);
    assert!(x.on_trailers(&run.bp, &trailers).is_none());
}

// --- spend leases ---------------------------------------------------------------------

/// A policy that leases three calls at a time, for 250 ms.
fn leasing() -> Blueprint {
    blueprint_tweaked(false, "deny", true, |p| {
        p["lease"] = serde_json::json!({ "calls": 3, "max_age_ms": 250 });
    })
}

const INTENT: &[u8] = b"amount=2000&currency=usd";

/// Runs a leasable request up to its [`Step::Lease`].
fn up_to_lease(run: &Run, extra: &[(&str, &str)]) -> Exchange {
    let (mut x, step) = run.begin(&headers("POST", "/v1/payment_intents", extra), false);
    assert!(matches!(step, Step::ReadBody), "{step:?}");
    let step = x.on_body(&run.bp, &run.counter, Body::Complete(INTENT));
    assert!(matches!(step, Step::Lease), "{step:?}");
    x
}

/// Runs a leasable request to a book with no room: it asks the ledger, with this request.
fn ask_lease(run: &Run, book: &mut LeaseBook, now_ms: u64) -> (Exchange, ReserveRequest) {
    let mut x = up_to_lease(run, &[]);
    let Step::Reserve(encoded) = x.on_lease(&run.bp, book, now_ms) else {
        panic!("a book without room asks the ledger")
    };
    (x, serde_json::from_slice(&encoded).unwrap())
}

fn lease_granted(req: &ReserveRequest, calls: Option<u32>) -> String {
    let mut answer = serde_json::json!({
        "decision": "granted", "reservation": req.request_id, "replay": false
    });
    if let Some(calls) = calls {
        answer["leased_calls"] = calls.into();
    }
    answer.to_string()
}

#[test]
fn a_leased_call_asks_for_a_lease_and_the_next_calls_spend_it_without_the_ledger() {
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut first, req) = ask_lease(&run, &mut book, NOW_MS);
    assert_eq!(req.lease_calls, Some(3));
    assert_eq!(
        req.amount.to_string(),
        "20.00",
        "the lease is asked per call"
    );
    let answer = lease_granted(&req, Some(3));
    let step = first.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");

    let mut ends = Vec::new();
    for _ in 0..2 {
        let mut x = up_to_lease(&run, &[]);
        let step = x.on_lease(&run.bp, &mut book, NOW_MS + 10);
        assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");
        assert!(x.rewrite().is_some(), "forwarded with the vendor secret");
        let done = x.finish(Vendor::Stripe, Some(200));
        assert_eq!(done.settle, None, "a leased call settles in the book");
        assert_eq!(
            done.audit.reservation.as_deref(),
            Some(req.request_id.as_str())
        );
        assert_eq!(
            done.audit.cost.map(|c| c.to_string()).as_deref(),
            Some("20.00")
        );
        assert_eq!(done.audit.reason, Reason::Allowed);
        ends.push(done.lease.unwrap());
    }
    assert!(ends
        .iter()
        .all(|(s, o)| s.lease == req.request_id && *o == SettleOutcome::Commit));
    // Three calls leased, three made: the fourth asks the ledger again.
    let mut fourth = up_to_lease(&run, &[]);
    assert!(matches!(
        fourth.on_lease(&run.bp, &mut book, NOW_MS + 20),
        Step::Reserve(_)
    ));
    // The first call's own end goes to the book too, and the lease closes at all three.
    let done = first.finish(Vendor::Stripe, Some(200));
    assert_eq!(done.settle, None);
    let (spend, outcome) = done.lease.unwrap();
    book.end(&spend, outcome);
    for (spend, outcome) in &ends {
        book.end(spend, *outcome);
    }
    book.expire(NOW_MS + 250);
    let closed = book.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].reservation, req.request_id);
    assert_eq!(
        closed[0].amount.map(|a| a.to_string()).as_deref(),
        Some("60.00")
    );
}

#[test]
fn calls_that_cannot_share_a_lease_are_reserved_one_by_one() {
    let run = Run::new(leasing());
    // A key the ledger replays by: its own reservation, no lease asked.
    let (_, req) = run.reserve(
        "/v1/payment_intents",
        INTENT,
        &[("idempotency-key", "order-1")],
    );
    assert_eq!(req.lease_calls, None);
    // Settled from the response: the price is not known up front.
    let (_, req) = run.reserve("/v1/invoices/in_1/pay", b"amount=100&currency=usd", &[]);
    assert_eq!(req.lease_calls, None);
}

#[test]
fn a_stale_revocation_set_asks_the_ledger_even_with_a_lease_in_the_book() {
    let mut run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut x, req) = ask_lease(&run, &mut book, NOW_MS);
    let answer = lease_granted(&req, Some(3));
    let _ = x.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    run.fresh_at_ms = 0;
    // Straight to the ledger, which checks revocations itself, as one call: every call
    // would otherwise ask for a whole lease at once.
    let (_, req) = run.reserve("/v1/payment_intents", INTENT, &[]);
    assert_eq!(req.lease_calls, None);
}

#[test]
fn a_leased_call_that_never_leaves_gives_its_price_back() {
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut x, req) = ask_lease(&run, &mut book, NOW_MS);
    let answer = lease_granted(&req, Some(3));
    let _ = x.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    let mut y = up_to_lease(&run, &[]);
    assert!(matches!(
        y.on_lease(&run.bp, &mut book, NOW_MS),
        Step::Forward { .. }
    ));
    // The rewrite failed, say: refused, and nothing of the lease is released but its price.
    refused(y.fail(&run.bp, "could not rewrite".into()));
    let done = y.finish(Vendor::Stripe, None);
    assert_eq!(done.settle, None, "the lease itself is not released");
    let (spend, outcome) = done.lease.unwrap();
    assert_eq!(outcome, SettleOutcome::Release);
    book.end(&spend, outcome);
    // So the lease has two calls left, not one.
    assert!(book.take("tok_abc", spend.amount, NOW_MS).is_some());
    assert!(book.take("tok_abc", spend.amount, NOW_MS).is_some());
    assert!(book.take("tok_abc", spend.amount, NOW_MS).is_none());
}

#[test]
fn a_leased_call_refused_after_it_went_counts_as_spent_in_its_lease() {
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut x, req) = ask_lease(&run, &mut book, NOW_MS);
    let answer = lease_granted(&req, Some(3));
    let _ = x.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    // Trailers after the call went (no costed call goes before its body ends today, but the
    // exchange must not lose its spend if one ever does): the vendor saw it, so it is spent.
    let trailers = vec![("x-late".to_string(), b"1".to_vec())];
    refused(x.on_trailers(&run.bp, &trailers).unwrap());
    let done = x.finish(Vendor::Stripe, None);
    assert_eq!(
        done.settle, None,
        "the lease itself is not settled by the call"
    );
    let (spend, outcome) = done.lease.expect("the spend goes back to the book");
    assert_eq!(outcome, SettleOutcome::Hold);
    assert_eq!(
        (
            done.audit.reservation.as_deref(),
            done.audit.cost.map(|c| c.to_string())
        ),
        (Some(req.request_id.as_str()), Some("20.00".into())),
        "audited in its lease, at its price"
    );
    book.end(&spend, outcome);
    book.expire(NOW_MS + 250);
    let closed = book.take_closed();
    assert_eq!(
        closed[0].amount.map(|a| a.to_string()).as_deref(),
        Some("20.00"),
        "counted, and the lease closed at its age rather than waiting for ever"
    );
}

#[test]
fn a_lease_is_aged_from_its_request_not_from_the_headers() {
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    // The headers came at NOW_MS; the body took 400 ms, longer than the lease's 250 ms age.
    let (mut x, req) = ask_lease(&run, &mut book, NOW_MS + 400);
    let answer = lease_granted(&req, Some(3));
    let step = x.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    assert!(matches!(step, Step::Forward { .. }), "{step:?}");
    let price = Usd::parse("20").unwrap();
    assert!(
        book.take("tok_abc", price, NOW_MS + 649).is_some(),
        "young: 249 ms after its request"
    );
    assert!(
        book.take("tok_abc", price, NOW_MS + 650).is_none(),
        "too old"
    );
}

#[test]
fn a_plain_grant_to_a_lease_request_opens_no_lease() {
    // A ledger whose policy has no lease answers with a plain reservation.
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut x, req) = ask_lease(&run, &mut book, NOW_MS);
    let answer = lease_granted(&req, None);
    let _ = x.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    assert!(book.is_empty());
    let done = x.finish(Vendor::Stripe, Some(200));
    assert_eq!(done.lease, None);
    let settle = done.settle.unwrap();
    assert_eq!(settle.reservation, req.request_id);
    assert_eq!(settle.outcome, SettleOutcome::Commit);
}

#[test]
fn while_one_call_asks_for_a_lease_the_others_reserve_alone() {
    let run = Run::new(leasing());
    let mut book = LeaseBook::default();
    let (mut asking, req) = ask_lease(&run, &mut book, NOW_MS);
    assert_eq!(req.lease_calls, Some(3));
    let (mut alone, plain) = ask_lease(&run, &mut book, NOW_MS + 1);
    assert_eq!(plain.lease_calls, None, "no second lease asked for");
    let answer = lease_granted(&req, Some(3));
    let _ = asking.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    // The plain one settles as a plain reservation, even if a ledger said "leased".
    let answer = lease_granted(&plain, Some(3));
    let _ = alone.on_reservation(&run.bp, &mut book, Ok(answer.as_bytes()));
    let done = alone.finish(Vendor::Stripe, Some(200));
    assert_eq!(done.lease, None);
    assert_eq!(done.settle.unwrap().reservation, plain.request_id);
    let mut next = up_to_lease(&run, &[]);
    assert!(matches!(
        next.on_lease(&run.bp, &mut book, NOW_MS + 2),
        Step::Forward { .. }
    ));
}
