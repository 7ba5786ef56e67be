//! The filter's flow against the fake host: configuration, rewriting, denials and the
//! failure of every hostcall the request path depends on.

use std::rc::Rc;

use bridle_core::token::{Claims, SigningKey};
use bridle_core::vendor::Vendor;
use proxy_wasm::types::Action;

use crate::fake_host::FakeHost;
use crate::host::{BufferType, MapType};
use crate::plugin::Plugin;
use crate::stream::Stream;

const SECRET: &str = "sk_test_CANARY_secret_value_123";
const NOW: u64 = 1_700_000_100;

fn signing_key() -> SigningKey {
    SigningKey::from_seed("k1", &[7u8; 32]).unwrap()
}

/// What the proxy holds: the public key alone.
fn keyring_spec() -> String {
    signing_key().public_entry()
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "vendor": "stripe",
        "policies": [{
            "name": "stripe-payments",
            "vendor": "stripe",
            "secret_env": "STRIPE_SECRET_KEY",
            "max_ttl": "1h",
            "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
            "endpoints": [
                { "method": "GET", "path": "/v1/charges/*" },
                { "method": "POST", "path": "/v1/payment_intents" },
            ],
        }],
    })
}

fn host() -> FakeHost {
    let h = FakeHost::default();
    h.now_secs.set(NOW);
    h.env
        .borrow_mut()
        .insert("BRIDLE_PUBLIC_KEYS".into(), keyring_spec());
    h.env
        .borrow_mut()
        .insert("STRIPE_SECRET_KEY".into(), SECRET.into());
    h
}

fn plugin(h: &FakeHost) -> Rc<Plugin> {
    Rc::new(Plugin::configure(h, Some(config().to_string().as_bytes())).unwrap())
}

fn token() -> String {
    let claims = Claims {
        v: 1,
        id: "tok_abc".into(),
        policy: "stripe-payments".into(),
        vendor: Vendor::Stripe,
        iat: NOW - 10,
        exp: NOW + 600,
        label: "acme/run-1".into(),
        endpoints: None,
        merchants: None,
        caps: Default::default(),
    };
    signing_key().mint(&claims).unwrap()
}

fn request(h: &FakeHost, method: &str, path: &str, extra: &[(&str, &[u8])]) {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", method.as_bytes()),
        (":path", path.as_bytes()),
        (":authority", b"localhost"),
    ];
    headers.extend_from_slice(extra);
    h.set_map(MapType::RequestHeaders, &headers);
}

#[test]
fn allowed_requests_carry_the_secret_and_not_the_token() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "GET",
        "/v1/charges/ch_1",
        &[
            ("authorization", auth.as_bytes()),
            ("x-http-method-override", b"DELETE"),
            ("x-bridle-upstream", b"x"),
        ],
    );
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Continue
    );
    assert_eq!(
        h.header(MapType::RequestHeaders, "authorization")
            .as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        h.header(MapType::RequestHeaders, "x-http-method-override"),
        None
    );
    assert_eq!(h.header(MapType::RequestHeaders, "x-bridle-upstream"), None);
    let forwarded = format!("{:?}", h.map(MapType::RequestHeaders));
    assert!(!forwarded.contains("bvt_"), "{forwarded}");
    assert_eq!(h.counter("bridle.stripe.stripe-payments.allowed"), 1);
    assert!(h.sent().is_none());
}

#[test]
fn denials_are_vendor_shaped_counted_and_secret_free() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "POST",
        "/v1/refunds",
        &[("authorization", auth.as_bytes())],
    );
    assert_eq!(
        Stream::new(Some(p.clone())).on_request_headers(&h, true),
        Action::Pause
    );
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 403);
    assert_eq!(sent.header("x-bridle-reason"), Some("endpoint_not_allowed"));
    assert_eq!(sent.header("stripe-should-retry"), Some("false"));
    let body: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["error"]["code"], "endpoint_not_allowed");
    assert_eq!(
        h.counter("bridle.stripe.stripe-payments.endpoint_not_allowed"),
        1
    );
    // The request was not rewritten: the secret went nowhere.
    assert_eq!(
        h.header(MapType::RequestHeaders, "authorization"),
        Some(auth)
    );

    request(&h, "GET", "/v1/charges/ch_1", &[]);
    Stream::new(Some(p)).on_request_headers(&h, true);
    assert_eq!(h.sent().unwrap().status, 401);
    assert_eq!(h.counter("bridle.stripe._unattributed.token_missing"), 1);
    assert!(!h.all_logs().contains(SECRET));
    assert!(!format!("{:?}", h.sent()).contains(SECRET));
}

#[test]
fn a_failed_rewrite_denies_instead_of_forwarding() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "GET",
        "/v1/charges/ch_1",
        &[("authorization", auth.as_bytes())],
    );
    h.fail_edits.set(true);
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Pause
    );
    assert_eq!(h.sent().unwrap().status, 500);
    assert_eq!(h.counter("bridle.stripe.stripe-payments.internal"), 1);
    assert_eq!(h.counter("bridle.stripe.stripe-payments.allowed"), 0);
}

#[test]
fn a_denial_that_cannot_be_sent_resets_the_stream() {
    let h = host();
    let p = plugin(&h);
    request(&h, "GET", "/v1/charges/ch_1", &[]);
    h.fail_send.set(true);
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Pause
    );
    assert!(h.reset.get());
}

#[test]
fn an_unconfigured_filter_refuses_everything() {
    let h = host();
    request(&h, "GET", "/v1/charges/ch_1", &[]);
    assert_eq!(
        Stream::new(None).on_request_headers(&h, true),
        Action::Pause
    );
    assert_eq!(h.sent().unwrap().status, 500);
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let h = host();
    let err = |bytes: Option<&[u8]>, h: &FakeHost| Plugin::configure(h, bytes).unwrap_err();
    assert!(err(None, &h).contains("no plugin configuration"));
    assert!(err(Some(b"{"), &h).contains("invalid configuration"));
    let mut bad = config();
    bad["policies"][0]["endpoints"][0]["path"] = "/v1/charges/**".into();
    assert!(err(Some(bad.to_string().as_bytes()), &h).contains("policies[0].endpoints[0]"));
    let mut unknown = config();
    unknown["policies"][0]["vendor"] = "paypal".into();
    assert!(err(Some(unknown.to_string().as_bytes()), &h).contains("unknown variant `paypal`"));

    let no_secret = host();
    no_secret.env.borrow_mut().remove("STRIPE_SECRET_KEY");
    assert!(err(Some(config().to_string().as_bytes()), &no_secret)
        .contains("STRIPE_SECRET_KEY (the vendor secret) is not set"));
    let bad_secret = host();
    bad_secret
        .env
        .borrow_mut()
        .insert("STRIPE_SECRET_KEY".into(), "two words".into());
    let e = err(Some(config().to_string().as_bytes()), &bad_secret);
    assert!(
        e.contains("printable ASCII") && !e.contains("two words"),
        "{e}"
    );
    let no_keyring = host();
    no_keyring.env.borrow_mut().remove("BRIDLE_PUBLIC_KEYS");
    assert!(err(Some(config().to_string().as_bytes()), &no_keyring).contains("BRIDLE_PUBLIC_KEYS"));
}

// --- the ledger link -----------------------------------------------------------------

/// A free POST without a loop breaker: forwarded on its headers, its body streaming.
fn streaming(h: &FakeHost, p: &Rc<Plugin>) -> Stream {
    let auth = format!("Bearer {}", token());
    request(
        h,
        "POST",
        "/v1/payment_intents",
        &[("authorization", auth.as_bytes())],
    );
    let mut s = Stream::new(Some(p.clone()));
    assert_eq!(s.on_request_headers(h, false), Action::Continue);
    s
}

#[test]
fn a_streamed_body_goes_through_but_for_a_tail_that_could_begin_a_token() {
    let h = host();
    let p = plugin(&h);
    let mut s = streaming(&h, &p);
    // Envoy gives each piece; after a Pause, the bytes held and the next piece together.
    h.set_buffer(BufferType::RequestBody, b"name=Ada&note=hi+bv");
    assert_eq!(s.on_request_body(&h, 19, false), Action::Pause);
    h.set_buffer(BufferType::RequestBody, b"name=Ada&note=hi+bvx&more");
    assert_eq!(s.on_request_body(&h, 25, false), Action::Continue);
    h.set_buffer(BufferType::RequestBody, b"&z=1");
    assert_eq!(s.on_request_body(&h, 4, false), Action::Continue);
    // At the end of the body, nothing more can complete a token: all of it goes.
    h.set_buffer(BufferType::RequestBody, b"&w=bvt_x");
    assert_eq!(s.on_request_body(&h, 8, true), Action::Continue);
    assert!(h.sent().is_none());
}

#[test]
fn a_token_cut_across_streamed_pieces_is_refused_before_it_goes() {
    let h = host();
    let p = plugin(&h);
    let t = token();
    let (a, b) = t.split_at(6);
    // Larger than one read of the scan, with the token across the pieces.
    let first = format!("note={}{a}", "a".repeat(70_000));
    for ending in [format!("{b}&x=1"), b.to_string()] {
        let mut s = streaming(&h, &p);
        h.set_buffer(BufferType::RequestBody, first.as_bytes());
        assert_eq!(s.on_request_body(&h, first.len(), false), Action::Pause);
        let all = format!("{first}{ending}");
        h.set_buffer(BufferType::RequestBody, all.as_bytes());
        assert_eq!(s.on_request_body(&h, all.len(), true), Action::Pause);
        let sent = h.sent().unwrap();
        assert_eq!(
            (sent.status, sent.header("x-bridle-reason")),
            (400, Some("credential_ambiguous"))
        );
        assert!(!sent.body.contains("bvt_"));
        h.sent.borrow_mut().take();
    }
    // A buffer that shrank is not trusted.
    let mut s = streaming(&h, &p);
    h.set_buffer(BufferType::RequestBody, b"x=bv");
    assert_eq!(s.on_request_body(&h, 4, false), Action::Pause);
    assert_eq!(s.on_request_body(&h, 2, false), Action::Pause);
    assert_eq!(h.sent().unwrap().status, 500);
}

#[test]
fn trailers_after_a_streamed_body_are_refused() {
    let h = host();
    let p = plugin(&h);
    let mut s = streaming(&h, &p);
    h.set_buffer(BufferType::RequestBody, b"name=Ada");
    assert_eq!(s.on_request_body(&h, 8, false), Action::Continue);
    h.set_map(MapType::RequestTrailers, &[("x-amount", b"1")]);
    assert_eq!(s.on_request_trailers(&h, 1), Action::Pause);
    assert_eq!(
        h.sent().unwrap().header("x-bridle-reason"),
        Some("trailers_not_allowed")
    );
    // No trailers: the body has ended, and what was held goes.
    h.sent.borrow_mut().take();
    let mut s = streaming(&h, &p);
    h.set_buffer(BufferType::RequestBody, b"name=b");
    assert_eq!(s.on_request_body(&h, 6, false), Action::Pause);
    assert_eq!(s.on_request_trailers(&h, 0), Action::Continue);
    assert!(h.sent().is_none());
}

mod ledger_flow {
    use std::rc::Rc;

    use bridle_core::ledger_api::{Report, ReserveRequest, Settle, SettleOutcome};
    use bridle_core::revocation::{RevocationEntry, RevocationFeed, RevocationKind};
    use proxy_wasm::types::Action;

    use super::{keyring_spec, token, NOW, SECRET};
    use crate::fake_host::FakeHost;
    use crate::host::{BufferType, MapType};
    use crate::plugin::Plugin;
    use crate::reports::Item;
    use crate::stream::Stream;
    use crate::ticker::Ticker;

    const ENFORCER: &str = "enf_test_key_0123456789";

    fn config(on_unavailable: &str) -> serde_json::Value {
        serde_json::json!({
            "vendor": "stripe",
            "policies": [{
                "name": "stripe-payments", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
                "merchants": { "allow_unscoped": true },
                "endpoints": [
                    { "method": "GET", "path": "/v1/charges/*" },
                    { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
                    { "method": "POST", "path": "/v1/refunds", "cost": { "max": "50", "settle": { "field": "amount", "currency_field": "currency" } } },
                ],
                "loop_breaker": { "max_requests_per_minute": 3, "max_identical_per_minute": 2 },
                "on_ledger_unavailable": on_unavailable,
            }],
            "ledger": { "cluster": "bridle_ledger", "authority": "ledger", "timeout_ms": 400 },
        })
    }

    fn host() -> FakeHost {
        let h = FakeHost::default();
        h.now_secs.set(NOW);
        h.env
            .borrow_mut()
            .insert("BRIDLE_PUBLIC_KEYS".into(), keyring_spec());
        h.env
            .borrow_mut()
            .insert("STRIPE_SECRET_KEY".into(), SECRET.into());
        h.env
            .borrow_mut()
            .insert("BRIDLE_ENFORCER_KEY".into(), ENFORCER.into());
        h
    }

    fn plugin(h: &FakeHost, on_unavailable: &str) -> Rc<Plugin> {
        let p = Rc::new(
            Plugin::configure(h, Some(config(on_unavailable).to_string().as_bytes())).unwrap(),
        );
        // A fresh revocation set, as if a poll had just landed.
        h.shared.borrow_mut().insert(
            "bridle.bridle_ledger.revocations.fresh_ms".into(),
            ((NOW * 1000).to_le_bytes().to_vec(), 1),
        );
        Ticker::default().on_tick(h, &p);
        // That tick polled the ledger; tests look only at their own callouts.
        h.callouts.borrow_mut().clear();
        p
    }

    fn post(h: &FakeHost, path: &str, body: &[u8]) {
        let auth = format!("Bearer {}", token());
        h.set_map(
            MapType::RequestHeaders,
            &[
                (":method", b"POST"),
                (":path", path.as_bytes()),
                ("authorization", auth.as_bytes()),
                ("content-type", b"application/x-www-form-urlencoded"),
            ],
        );
        h.set_buffer(BufferType::RequestBody, body);
    }

    /// An uncosted call: GET a charge with the vault token.
    fn get_charge(h: &FakeHost) {
        let auth = format!("Bearer {}", token());
        h.set_map(
            MapType::RequestHeaders,
            &[
                (":method", b"GET"),
                (":path", b"/v1/charges/ch_1"),
                ("authorization", auth.as_bytes()),
            ],
        );
    }

    fn answer(h: &FakeHost, status: &str, body: &serde_json::Value) -> usize {
        h.set_map(
            MapType::CallResponseHeaders,
            &[(":status", status.as_bytes())],
        );
        let bytes = body.to_string().into_bytes();
        h.set_buffer(BufferType::CallResponseBody, &bytes);
        bytes.len()
    }

    fn queued(_h: &FakeHost, p: &Plugin) -> Vec<Item> {
        let mut buffer = p.ledger.as_ref().unwrap().reports.borrow_mut();
        let mut items = Vec::new();
        while !buffer.is_empty() {
            items.extend(buffer.take().iter().map(|e| e.decode().unwrap()));
        }
        items
    }

    /// Runs a costed request up to the ledger's answer; returns the stream and the call.
    fn reserve(h: &FakeHost, p: &Rc<Plugin>, body: &[u8]) -> (Stream, ReserveRequest) {
        post(h, "/v1/payment_intents", body);
        let mut s = Stream::new(Some(p.clone()));
        assert_eq!(
            s.on_request_headers(h, false),
            Action::Pause,
            "headers wait for the body"
        );
        assert!(
            h.header(MapType::RequestHeaders, "authorization")
                .unwrap()
                .starts_with("Bearer bvt_"),
            "not rewritten yet"
        );
        assert_eq!(s.on_request_body(h, body.len(), false), Action::Pause);
        assert_eq!(s.on_request_body(h, body.len(), true), Action::Pause);
        let call = h.callouts.borrow().last().cloned().unwrap();
        assert_eq!(call.cluster, "bridle_ledger");
        assert_eq!(call.timeout_ms, 400);
        assert!(call
            .headers
            .contains(&(":path".into(), "/v1/enforce/reserve".into())));
        assert!(call
            .headers
            .contains(&("authorization".into(), format!("Bearer {ENFORCER}"))));
        (s, serde_json::from_slice(&call.body).unwrap())
    }

    #[test]
    fn a_granted_reservation_rewrites_resumes_and_commits() {
        let h = host();
        let p = plugin(&h, "deny");
        let (mut s, req) = reserve(&h, &p, b"amount=2000&currency=usd");
        assert_eq!(req.amount.to_string(), "20.00");
        assert!(
            req.token.starts_with("bvt_"),
            "the ledger verifies the token itself"
        );
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false}),
        );
        s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
        assert_eq!(h.resumed.get(), 1);
        assert_eq!(
            h.header(MapType::RequestHeaders, "authorization"),
            Some(format!("Bearer {SECRET}"))
        );
        h.set_map(MapType::ResponseHeaders, &[(":status", b"200")]);
        s.on_response_headers(&h, true);
        s.on_log(&h);
        let items = queued(&h, &p);
        let Item::Settle(settle) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(
            (settle.outcome, settle.reservation.as_str(), settle.amount),
            (SettleOutcome::Commit, req.request_id.as_str(), None)
        );
        let Item::Audit(audit) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!(
            (audit.status, audit.cost.map(|c| c.to_string())),
            (200, Some("20.00".to_string()))
        );
        assert_eq!(audit.id, req.request_id);
        assert!(
            !format!("{items:?}").contains("bvt_"),
            "no token in what is reported"
        );
    }

    /// A policy with a lease: the first call asks for one, the next is forwarded from it with
    /// no callout, and the tick after its age closes it at what was spent.
    fn leasing_plugin(h: &FakeHost) -> Rc<Plugin> {
        let mut c = config("deny");
        c["policies"][0]["lease"] = serde_json::json!({ "calls": 3, "max_age_ms": 250 });
        // Its three requests a minute would refuse the fourth call these tests make.
        c["policies"][0]
            .as_object_mut()
            .unwrap()
            .remove("loop_breaker");
        let p = Rc::new(Plugin::configure(h, Some(c.to_string().as_bytes())).unwrap());
        h.shared.borrow_mut().insert(
            "bridle.bridle_ledger.revocations.fresh_ms".into(),
            ((NOW * 1000).to_le_bytes().to_vec(), 1),
        );
        Ticker::default().on_tick(h, &p);
        h.callouts.borrow_mut().clear();
        p
    }

    /// A first costed call that asks for a lease, granted three calls.
    fn open_lease(h: &FakeHost, p: &Rc<Plugin>) -> (Stream, ReserveRequest) {
        let (mut first, req) = reserve(h, p, b"amount=100&currency=usd");
        let n = answer(
            h,
            "200",
            &serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false, "leased_calls": 3}),
        );
        first.on_call_response(h, h.callouts.borrow().len() as u32, n);
        (first, req)
    }

    /// The settle that closed a lease: committed at `amount`.
    fn assert_committed(close: &Settle, lease: &str, amount: &str) {
        assert_eq!(
            (
                close.reservation.as_str(),
                close.outcome,
                close.amount.map(|a| a.to_string())
            ),
            (lease, SettleOutcome::Commit, Some(amount.to_string())),
            "{close:?}"
        );
    }

    /// A costed call, expected to go at once on a lease.
    fn leased_call(h: &FakeHost, p: &Rc<Plugin>, n: u32) -> Stream {
        let body = format!("amount=100&currency=usd&description=call{n}");
        post(h, "/v1/payment_intents", body.as_bytes());
        let mut s = Stream::new(Some(p.clone()));
        assert_eq!(s.on_request_headers(h, false), Action::Pause);
        assert_eq!(s.on_request_body(h, body.len(), true), Action::Continue);
        s
    }

    #[test]
    fn the_tick_asks_ahead_for_a_token_in_use_and_its_calls_go_on_without_waiting() {
        let h = host();
        let p = leasing_plugin(&h);
        let (first, req) = open_lease(&h, &p);
        let mut calls = vec![first, leased_call(&h, &p, 2)];
        // In use: the tick asks for the next lease, with the same token and a new id.
        let mut ticker = Ticker::default();
        ticker.on_tick(&h, &p);
        let renewal = h.callouts.borrow().last().cloned().unwrap();
        assert!(renewal
            .headers
            .contains(&(":path".into(), "/v1/enforce/reserve".into())));
        let ahead: ReserveRequest = serde_json::from_slice(&renewal.body).unwrap();
        assert_eq!(
            (ahead.token.as_str(), ahead.lease_calls),
            (req.token.as_str(), Some(3))
        );
        assert_ne!(ahead.request_id, req.request_id);
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "granted", "reservation": ahead.request_id, "replay": false, "leased_calls": 3}),
        );
        ticker.on_call_response(&h, &p, h.callouts.borrow().len() as u32, n);
        // The live lease's last call, then two on the lease ahead: no reservation callout.
        let callouts = h.callouts.borrow().len();
        for i in 3..=5 {
            calls.push(leased_call(&h, &p, i));
        }
        assert_eq!(h.callouts.borrow().len(), callouts);
        assert_eq!(h.counter("bridle.ledger.lease_spends"), 4);
        h.set_map(MapType::ResponseHeaders, &[(":status", b"200")]);
        for mut s in calls {
            s.on_response_headers(&h, true);
            s.on_log(&h);
        }
        let items = queued(&h, &p);
        let audits: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Audit(a) => a.reservation.clone(),
                Item::Settle(_) => None,
            })
            .collect();
        assert_eq!(
            audits,
            [&req.request_id; 3]
                .into_iter()
                .chain([&ahead.request_id; 2])
                .cloned()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_tick_asks_ahead_for_no_lease_while_the_revocation_set_is_stale() {
        let h = host();
        let p = leasing_plugin(&h);
        let (_first, _) = open_lease(&h, &p);
        let _second = leased_call(&h, &p, 2);
        // In use, but no worker has heard from the ledger for a minute.
        h.shared.borrow_mut().insert(
            "bridle.bridle_ledger.revocations.fresh_ms".into(),
            (((NOW - 60) * 1000).to_le_bytes().to_vec(), 2),
        );
        let before = h.callouts.borrow().len();
        Ticker::default().on_tick(&h, &p);
        let reserves = h.callouts.borrow()[before..]
            .iter()
            .filter(|c| {
                c.headers
                    .contains(&(":path".into(), "/v1/enforce/reserve".into()))
            })
            .count();
        assert_eq!(reserves, 0, "no lease asked ahead with a stale set");
    }

    #[test]
    fn a_lease_serves_the_next_call_without_a_callout_and_closes_on_a_tick() {
        let h = host();
        let p = leasing_plugin(&h);

        let (mut first, req) = open_lease(&h, &p);
        assert_eq!(req.lease_calls, Some(3));
        assert_eq!(h.resumed.get(), 1);

        // The next call (another body, so the loop breaker lets it by) goes at once.
        let body = b"amount=100&currency=usd&description=second";
        post(&h, "/v1/payment_intents", body);
        let mut second = Stream::new(Some(p.clone()));
        assert_eq!(second.on_request_headers(&h, false), Action::Pause);
        assert_eq!(
            second.on_request_body(&h, body.len(), true),
            Action::Continue
        );
        assert_eq!(h.callouts.borrow().len(), 1, "no second reservation");
        assert_eq!(
            h.header(MapType::RequestHeaders, "authorization"),
            Some(format!("Bearer {SECRET}"))
        );
        assert_eq!(h.counter("bridle.ledger.lease_spends"), 1);

        // The vendor takes the first and refuses the second: $1 spent.
        h.set_map(MapType::ResponseHeaders, &[(":status", b"200")]);
        first.on_response_headers(&h, true);
        first.on_log(&h);
        h.set_map(MapType::ResponseHeaders, &[(":status", b"402")]);
        second.on_response_headers(&h, true);
        second.on_log(&h);
        let items = queued(&h, &p);
        assert!(
            items.iter().all(|i| matches!(i, Item::Audit(_))),
            "leased calls settle in the book: {items:?}"
        );
        assert_eq!(items.len(), 2);

        // Young, the lease stays open; past its age, the tick closes it and reports the close.
        let reports = |h: &FakeHost| -> Vec<Report> {
            h.callouts
                .borrow()
                .iter()
                .filter(|c| {
                    c.headers
                        .contains(&(":path".into(), "/v1/enforce/report".into()))
                })
                .map(|c| serde_json::from_slice(&c.body).unwrap())
                .collect()
        };
        let mut ticker = Ticker::default();
        ticker.on_tick(&h, &p);
        assert!(reports(&h).iter().all(|r| r.settles.is_empty()));
        // Two calls made it a token in use: that tick asked for the next lease (the last
        // callout; the report buffer was read above), which the ledger refuses.
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "denied", "reason": "cap_window", "message": "full"}),
        );
        ticker.on_call_response(&h, &p, h.callouts.borrow().len() as u32, n);
        h.now_secs.set(NOW + 1);
        ticker.on_tick(&h, &p);
        let settles: Vec<_> = reports(&h).into_iter().flat_map(|r| r.settles).collect();
        let [close] = settles.as_slice() else {
            panic!("{settles:?}")
        };
        assert_committed(close, &req.request_id, "1.00");
    }

    /// The report callouts made so far: each one's token and body.
    fn report_calls(h: &FakeHost) -> Vec<(u32, Report)> {
        h.callouts
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.headers
                    .contains(&(":path".into(), "/v1/enforce/report".into()))
            })
            .map(|(i, c)| (i as u32 + 1, serde_json::from_slice(&c.body).unwrap()))
            .collect()
    }

    #[test]
    fn a_plugin_going_away_settles_its_leases_and_reports_before_it_is_done() {
        let h = host();
        let p = leasing_plugin(&h);
        let (mut first, req) = open_lease(&h, &p);
        h.set_map(MapType::ResponseHeaders, &[(":status", b"200")]);
        first.on_response_headers(&h, true);
        first.on_log(&h);

        // Envoy lets go of the plugin while its lease is young and its audit record unsent.
        let mut ticker = Ticker::default();
        assert!(!ticker.on_done(&h, &p), "it has a report in flight");
        let [(call, report)] = report_calls(&h).try_into().unwrap();
        assert_eq!(report.audit.len(), 1);
        let [close] = report.settles.as_slice() else {
            panic!("{report:?}")
        };
        // The lease closes at what its call spent, the rest released.
        assert_committed(close, &req.request_id, "1.00");
        assert_eq!(h.counter("bridle.ledger.leases_closed_at_exit"), 1);
        // The ledger fails once: sent again on the next tick (not at once), and done once the
        // ledger has taken it.
        let n = answer(&h, "500", &serde_json::json!({}));
        ticker.on_call_response(&h, &p, call, n);
        assert_eq!(report_calls(&h).len(), 1, "waits for the tick");
        ticker.on_tick(&h, &p);
        let calls = report_calls(&h);
        assert_eq!(calls.len(), 2, "resent");
        assert_eq!(calls[1].1.settles.len(), 1);
        let polls = h.callouts.borrow().len();
        ticker.on_tick(&h, &p);
        assert_eq!(
            h.callouts.borrow().len(),
            polls,
            "no polls nor renewals now"
        );
        assert_eq!(h.done.get(), 0);
        let n = answer(&h, "200", &serde_json::json!({}));
        ticker.on_call_response(&h, &p, calls[1].0, n);
        assert_eq!(h.done.get(), 1, "done once the ledger has it all");
        ticker.on_tick(&h, &p);
        assert_eq!(h.done.get(), 1, "said once");
    }

    #[test]
    fn a_plugin_going_away_with_nothing_to_send_goes_at_once() {
        let h = host();
        let p = leasing_plugin(&h);
        assert!(Ticker::default().on_done(&h, &p));
        assert_eq!(
            h.done.get(),
            0,
            "its answer says it; proxy_done is not called"
        );
    }

    #[test]
    fn a_plugin_going_away_tries_for_a_bounded_time_then_gives_up() {
        let h = host();
        let p = leasing_plugin(&h);
        let (mut first, _) = open_lease(&h, &p);
        first.on_log(&h);
        // The host refuses the callout at first: tried again on the tick.
        h.fail_dispatch.set(true);
        let mut ticker = Ticker::default();
        assert!(
            !ticker.on_done(&h, &p),
            "it still holds a settle and a record"
        );
        ticker.on_tick(&h, &p);
        assert_eq!(report_calls(&h).len(), 0);
        h.fail_dispatch.set(false);
        // Then the ledger refuses every report, once per tick.
        for _ in 0..5 {
            ticker.on_tick(&h, &p);
            let (call, _) = *report_calls(&h).last().unwrap();
            let n = answer(&h, "503", &serde_json::json!({}));
            ticker.on_call_response(&h, &p, call, n);
        }
        assert_eq!(report_calls(&h).len(), 5);
        assert_eq!(h.done.get(), 0, "still trying");
        h.now_secs.set(NOW + 31);
        ticker.on_tick(&h, &p);
        assert_eq!(report_calls(&h).len(), 5, "no more tries");
        assert_eq!(h.done.get(), 1, "it does not linger for ever");
        assert_eq!(
            h.counter("bridle.ledger.report_items_dropped"),
            2,
            "the settle and the record"
        );
        assert!(h
            .logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == crate::host::Level::Error
                && m.contains("2 settles and audit records")));
    }

    #[test]
    fn vendor_outcomes_map_to_settles() {
        for (status, want) in [
            ("201", Some(SettleOutcome::Commit)),
            ("402", Some(SettleOutcome::Release)),
            ("503", Some(SettleOutcome::Hold)),
            ("", Some(SettleOutcome::Hold)),
        ] {
            let h = host();
            let p = plugin(&h, "deny");
            let (mut s, req) = reserve(&h, &p, b"amount=100&currency=usd");
            let n = answer(
                &h,
                "200",
                &serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false}),
            );
            s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
            if !status.is_empty() {
                h.set_map(MapType::ResponseHeaders, &[(":status", status.as_bytes())]);
                s.on_response_headers(&h, true);
            }
            s.on_log(&h);
            let Item::Settle(settle) = &queued(&h, &p)[0] else {
                panic!()
            };
            assert_eq!(Some(settle.outcome), want, "status {status:?}");
        }
    }

    #[test]
    fn settles_from_the_response_body_when_the_rule_says() {
        let h = host();
        let p = plugin(&h, "deny");
        post(&h, "/v1/refunds", b"charge=ch_1");
        let mut s = Stream::new(Some(p.clone()));
        s.on_request_headers(&h, false);
        s.on_request_body(&h, 11, true);
        let req: ReserveRequest = serde_json::from_slice(&h.callouts.borrow()[0].body).unwrap();
        assert_eq!(req.amount.to_string(), "50.00", "the estimate is reserved");
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false}),
        );
        s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
        h.set_map(
            MapType::ResponseHeaders,
            &[(":status", b"200"), ("content-type", b"application/json")],
        );
        assert_eq!(s.on_response_headers(&h, false), Action::Continue);
        let body = br#"{"id":"re_1","amount":1234,"currency":"usd"}"#;
        h.set_buffer(BufferType::ResponseBody, body);
        assert_eq!(
            s.on_response_body(&h, 10, false),
            Action::Pause,
            "buffer until the end"
        );
        assert_eq!(s.on_response_body(&h, body.len(), true), Action::Continue);
        s.on_log(&h);
        let Item::Settle(settle) = &queued(&h, &p)[0] else {
            panic!()
        };
        assert_eq!(settle.amount.map(|a| a.to_string()), Some("12.34".into()));
    }

    #[test]
    fn ledger_failures_deny_and_release() {
        // The ledger answers 503.
        let h = host();
        let p = plugin(&h, "deny");
        let (mut s, req) = reserve(&h, &p, b"amount=100&currency=usd");
        let n = answer(&h, "503", &serde_json::json!({}));
        s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
        let sent = h.sent().unwrap();
        assert_eq!(
            (sent.status, sent.header("x-bridle-reason")),
            (503, Some("ledger_unavailable"))
        );
        assert_eq!(sent.header("stripe-should-retry"), Some("false"));
        assert_eq!(h.resumed.get(), 0);
        assert_ne!(
            h.header(MapType::RequestHeaders, "authorization"),
            Some(format!("Bearer {SECRET}")),
            "never rewritten"
        );
        s.on_log(&h);
        let Item::Settle(settle) = &queued(&h, &p)[0] else {
            panic!()
        };
        assert_eq!(
            (settle.outcome, settle.reservation.as_str()),
            (SettleOutcome::Release, req.request_id.as_str())
        );

        // An unreadable answer.
        let h = host();
        let p = plugin(&h, "deny");
        let (mut s, _) = reserve(&h, &p, b"amount=100&currency=usd");
        h.set_map(MapType::CallResponseHeaders, &[(":status", b"200")]);
        h.set_buffer(BufferType::CallResponseBody, b"<html>");
        s.on_call_response(&h, h.callouts.borrow().len() as u32, 6);
        assert_eq!(
            h.sent().unwrap().header("x-bridle-reason"),
            Some("ledger_unavailable")
        );

        // The callout cannot even start.
        let h = host();
        let p = plugin(&h, "deny");
        h.fail_dispatch.set(true);
        post(&h, "/v1/payment_intents", b"amount=100&currency=usd");
        let mut s = Stream::new(Some(p));
        s.on_request_headers(&h, false);
        assert_eq!(s.on_request_body(&h, 23, true), Action::Pause);
        assert_eq!(h.sent().unwrap().status, 503);
    }

    #[test]
    fn the_ledgers_refusals_reach_the_agent() {
        let h = host();
        let p = plugin(&h, "deny");
        let (mut s, _) = reserve(&h, &p, b"amount=100&currency=usd");
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "denied", "reason": "cap_window", "message": "over the $1.00 cap"}),
        );
        s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
        let sent = h.sent().unwrap();
        // 403 on Stripe, whose SDK reads every 402 as a declined card.
        assert_eq!(
            (sent.status, sent.header("x-bridle-reason")),
            (403, Some("cap_window"))
        );
        assert!(sent.body.contains("over the $1.00 cap"));
        assert_eq!(h.counter("bridle.stripe.stripe-payments.cap_window"), 1);
    }

    #[test]
    fn trailers_never_resume_a_held_request_without_a_decision() {
        let h = host();
        let p = plugin(&h, "deny");
        let body = b"amount=100&currency=usd";
        post(&h, "/v1/payment_intents", body);
        let mut s = Stream::new(Some(p.clone()));
        assert_eq!(s.on_request_headers(&h, false), Action::Pause);
        assert_eq!(s.on_request_body(&h, body.len(), false), Action::Pause);
        h.set_map(MapType::RequestTrailers, &[("x-amount", b"9999999")]);
        assert_eq!(s.on_request_trailers(&h, 1), Action::Pause);
        let sent = h.sent().unwrap();
        assert_eq!(
            (sent.status, sent.header("x-bridle-reason")),
            (400, Some("trailers_not_allowed"))
        );
        assert!(h.callouts.borrow().is_empty(), "nothing reserved");
        assert_eq!(h.resumed.get(), 0);
        // Empty trailers end the body: it is priced and reserved, and waits for the ledger.
        h.sent.borrow_mut().take();
        let mut s = Stream::new(Some(p.clone()));
        assert_eq!(s.on_request_headers(&h, false), Action::Pause);
        assert_eq!(s.on_request_body(&h, body.len(), false), Action::Pause);
        assert_eq!(s.on_request_trailers(&h, 0), Action::Pause);
        let call = h.callouts.borrow().last().cloned().unwrap();
        let req: ReserveRequest = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(req.amount, bridle_core::money::Usd::parse("1").unwrap());
        // Trailers while the ledger answers: refused, and the late grant is ignored.
        let mut s = Stream::new(Some(p));
        assert_eq!(s.on_request_headers(&h, false), Action::Pause);
        assert_eq!(s.on_request_body(&h, body.len(), true), Action::Pause);
        assert_eq!(s.on_request_trailers(&h, 1), Action::Pause);
        let n = answer(
            &h,
            "200",
            &serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false}),
        );
        s.on_call_response(&h, h.callouts.borrow().len() as u32, n);
        assert_eq!(h.resumed.get(), 0, "never resumed");
        assert_eq!(
            h.sent().unwrap().header("x-bridle-reason"),
            Some("trailers_not_allowed")
        );
    }

    #[test]
    fn a_stream_gone_before_the_answer_releases() {
        let h = host();
        let p = plugin(&h, "deny");
        let (mut s, req) = reserve(&h, &p, b"amount=100&currency=usd");
        s.on_log(&h);
        let Item::Settle(settle) = &queued(&h, &p)[0] else {
            panic!()
        };
        assert_eq!(
            (settle.outcome, settle.reservation.as_str()),
            (SettleOutcome::Release, req.request_id.as_str())
        );
    }

    #[test]
    fn costed_requests_refuse_what_they_cannot_price() {
        let h = host();
        let p = plugin(&h, "deny");
        for (path, body, reason) in [
            (
                "/v1/payment_intents?amount=1",
                &b"amount=99999&currency=usd"[..],
                "cost_undetermined",
            ),
            ("/v1/payment_intents", b"currency=usd", "cost_undetermined"),
            (
                "/v1/payment_intents",
                b"amount=100&currency=xyz",
                "currency_unknown",
            ),
        ] {
            post(&h, path, body);
            let mut s = Stream::new(Some(p.clone()));
            s.on_request_headers(&h, false);
            s.on_request_body(&h, body.len(), true);
            assert_eq!(
                h.sent().unwrap().header("x-bridle-reason"),
                Some(reason),
                "{path} {body:?}"
            );
        }
        post(&h, "/v1/payment_intents", b"");
        let mut s = Stream::new(Some(p));
        s.on_request_headers(&h, false);
        s.on_request_body(&h, crate::stream::MAX_BODY + 1, false);
        assert_eq!(h.sent().unwrap().status, 413);
        assert!(
            h.callouts.borrow().is_empty(),
            "nothing unpriceable reached the ledger"
        );
    }

    #[test]
    fn a_stale_revocation_set_follows_the_policy() {
        for (mode, want) in [("deny", Some(503)), ("allow", None)] {
            let h = host();
            let p =
                Rc::new(Plugin::configure(&h, Some(config(mode).to_string().as_bytes())).unwrap());
            get_charge(&h);
            Stream::new(Some(p)).on_request_headers(&h, true);
            assert_eq!(h.sent().map(|s| s.status), want, "{mode}");
        }
    }

    #[test]
    fn a_plugin_configured_after_another_sees_the_fresh_set_before_its_first_tick() {
        let h = host();
        // Another plugin (the one a push replaces) has kept the worker's set fresh.
        h.shared.borrow_mut().insert(
            "bridle.bridle_ledger.revocations.fresh_ms".into(),
            ((NOW * 1000).to_le_bytes().to_vec(), 1),
        );
        let p =
            Rc::new(Plugin::configure(&h, Some(config("deny").to_string().as_bytes())).unwrap());
        get_charge(&h);
        Stream::new(Some(p)).on_request_headers(&h, true);
        assert_eq!(
            h.sent().map(|s| s.status),
            None,
            "allowed, not revocation_stale"
        );
    }

    #[test]
    fn the_ticker_polls_merges_and_the_streams_see_revocations() {
        let h = host();
        let p = plugin(&h, "deny");
        let mut ticker = Ticker::default();
        h.callouts.borrow_mut().clear();
        h.now_secs.set(NOW + 1);
        ticker.on_tick(&h, &p);
        let call = h.callouts.borrow().last().cloned().unwrap();
        assert!(
            call.headers
                .contains(&(":path".into(), "/v1/enforce/revocations?since=0".into())),
            "{call:?}"
        );
        let feed = RevocationFeed {
            seq: 1,
            entries: vec![RevocationEntry {
                seq: 1,
                kind: RevocationKind::Token,
                value: "tok_abc".into(),
                at: NOW,
                until: NOW + 3600,
                at_ms: 0,
            }],
            reset: false,
        };
        let n = answer(&h, "200", &serde_json::to_value(&feed).unwrap());
        ticker.on_call_response(&h, &p, h.callouts.borrow().len() as u32, n);
        assert_eq!(h.counter("bridle.ledger.revocation_polls_ok"), 1);
        // Another plugin (another worker) picks the set up from shared data on its tick.
        let other =
            Rc::new(Plugin::configure(&h, Some(config("deny").to_string().as_bytes())).unwrap());
        Ticker::default().on_tick(&h, &other);
        get_charge(&h);
        Stream::new(Some(other)).on_request_headers(&h, true);
        assert_eq!(
            h.sent().unwrap().header("x-bridle-reason"),
            Some("token_revoked")
        );
    }

    /// Every value recorded into the histogram `name`, by any plugin.
    fn recorded(h: &FakeHost, name: &str) -> Vec<u64> {
        let names = h.metric_names.borrow();
        let histograms = h.histograms.borrow();
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if n == name {
                out.extend(histograms.get(&(i as u32)).into_iter().flatten());
            }
        }
        out
    }

    #[test]
    fn each_worker_measures_revocation_propagation_and_the_sets_age() {
        let h = host();
        let p = plugin(&h, "deny"); // its copy first looked at NOW
        let entry = |seq: u64, id: &str, at_ms: u64| RevocationEntry {
            seq,
            kind: RevocationKind::Token,
            value: id.into(),
            at: at_ms / 1000,
            until: NOW + 3600,
            at_ms,
        };
        let mut ticker = Ticker::default();
        h.now_secs.set(NOW + 2);
        ticker.on_tick(&h, &p);
        let feed = RevocationFeed {
            seq: 3,
            entries: vec![
                // Committed before this proxy first looked: its start, not propagation.
                entry(1, "tok_old", NOW * 1000 - 5000),
                entry(2, "tok_new", NOW * 1000 + 1500),
                // From a ledger that does not say when: not measured.
                entry(3, "tok_unknown", 0),
            ],
            reset: false,
        };
        let n = answer(&h, "200", &serde_json::to_value(&feed).unwrap());
        ticker.on_call_response(&h, &p, h.callouts.borrow().len() as u32, n);
        let name = "bridle.ledger.revocation_propagation_ms";
        assert_eq!(recorded(&h, name), [500]);
        // Picked up again on later ticks, it is not measured twice.
        h.now_secs.set(NOW + 3);
        ticker.on_tick(&h, &p);
        assert_eq!(recorded(&h, name), [500]);
        assert_eq!(h.counter("bridle.ledger.revocation_age_ms"), 1000);

        // A worker that starts later takes the set as it finds it: what was committed
        // before it first looked is not its propagation.
        h.now_secs.set(NOW + 4);
        let other =
            Rc::new(Plugin::configure(&h, Some(config("deny").to_string().as_bytes())).unwrap());
        let mut other_ticker = Ticker::default();
        h.callouts.borrow_mut().clear();
        other_ticker.on_tick(&h, &other);
        assert_eq!(recorded(&h, name), [500]);
        // A later revocation: the worker whose poll brings it measures it at once, the other
        // on its next tick.
        let feed = RevocationFeed {
            seq: 4,
            entries: vec![entry(4, "tok_later", (NOW + 4) * 1000 + 250)],
            reset: false,
        };
        h.now_secs.set(NOW + 5);
        let n = answer(&h, "200", &serde_json::to_value(&feed).unwrap());
        let poll = h.callouts.borrow().len() as u32;
        other_ticker.on_call_response(&h, &other, poll, n);
        assert_eq!(recorded(&h, name), [500, 750]);
        ticker.on_tick(&h, &p);
        assert_eq!(recorded(&h, name), [500, 750, 750]);
    }

    #[test]
    fn the_ticker_reports_in_batches_and_puts_back_what_failed() {
        let h = host();
        let p = plugin(&h, "deny");
        for _ in 0..3 {
            get_charge(&h);
            let mut s = Stream::new(Some(p.clone()));
            s.on_request_headers(&h, true);
            s.on_log(&h);
        }
        let mut ticker = Ticker::default();
        h.callouts.borrow_mut().clear();
        ticker.on_tick(&h, &p);
        let report_call = h
            .callouts
            .borrow()
            .iter()
            .position(|c| {
                c.headers
                    .contains(&(":path".into(), "/v1/enforce/report".into()))
            })
            .unwrap();
        let report: Report =
            serde_json::from_slice(&h.callouts.borrow()[report_call].body).unwrap();
        assert_eq!(report.audit.len(), 3);
        // The ledger failed: the batch goes back on the queue, to be sent again.
        let n = answer(&h, "500", &serde_json::json!({}));
        ticker.on_call_response(&h, &p, report_call as u32 + 1, n);
        assert_eq!(h.counter("bridle.ledger.reports_failed"), 1);
        let again = queued(&h, &p);
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn identical_bodies_are_fingerprinted_even_when_free() {
        let h = host();
        let mut cfg = config("deny");
        cfg["policies"][0]["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "method": "POST", "path": "/v1/customers" }));
        let p = Rc::new(Plugin::configure(&h, Some(cfg.to_string().as_bytes())).unwrap());
        h.shared.borrow_mut().insert(
            "bridle.bridle_ledger.revocations.fresh_ms".into(),
            ((NOW * 1000).to_le_bytes().to_vec(), 1),
        );
        Ticker::default().on_tick(&h, &p);
        let send = |body: &[u8]| {
            h.sent.borrow_mut().take();
            post(&h, "/v1/customers", body);
            let mut s = Stream::new(Some(p.clone()));
            assert_eq!(
                s.on_request_headers(&h, false),
                Action::Pause,
                "the body is read first"
            );
            let action = s.on_request_body(&h, body.len(), true);
            (
                action,
                h.sent()
                    .map(|r| r.header("x-bridle-reason").unwrap_or_default().to_string()),
            )
        };
        assert_eq!(send(b"email=a@x.io"), (Action::Continue, None));
        // Forwarded with the real secret, after the body was read.
        assert_eq!(
            h.header(MapType::RequestHeaders, "authorization"),
            Some(format!("Bearer {SECRET}"))
        );
        assert_eq!(send(b"email=a@x.io"), (Action::Continue, None));
        assert_eq!(send(b"email=a@x.io").1.as_deref(), Some("repeat_limited"));
        // The rate limit (3 a minute) still counts the refused one: a different body is now over it.
        assert_eq!(send(b"email=b@x.io").1.as_deref(), Some("rate_limited"));
    }

    #[test]
    fn a_bodyless_costed_request_is_counted_once() {
        let h = host();
        let mut cfg = config("deny");
        cfg["policies"][0]["loop_breaker"]["max_requests_per_minute"] = 1.into();
        cfg["policies"][0]["endpoints"][1]["cost"] = serde_json::json!({ "max": "1" });
        let p = Rc::new(Plugin::configure(&h, Some(cfg.to_string().as_bytes())).unwrap());
        post(&h, "/v1/payment_intents", b"");
        Stream::new(Some(p)).on_request_headers(&h, true);
        assert!(h.sent().is_none(), "{:?}", h.sent());
        assert_eq!(h.callouts.borrow().len(), 1, "the reservation went out");
    }

    #[test]
    fn the_loop_breaker_answers_429_with_retry_after() {
        let h = host();
        let p = plugin(&h, "deny");
        let auth = format!("Bearer {}", token());
        let mut statuses = Vec::new();
        for i in 0..4 {
            h.sent.borrow_mut().take();
            let path = format!("/v1/charges/ch_{i}");
            h.set_map(
                MapType::RequestHeaders,
                &[
                    (":method", b"GET"),
                    (":path", path.as_bytes()),
                    ("authorization", auth.as_bytes()),
                ],
            );
            Stream::new(Some(p.clone())).on_request_headers(&h, true);
            statuses.push(h.sent().map_or(200, |s| s.status));
        }
        assert_eq!(statuses, [200, 200, 200, 429]);
        let sent = h.sent().unwrap();
        assert_eq!(sent.header("x-bridle-reason"), Some("rate_limited"));
        assert!(sent.header("retry-after").is_some());
    }
}
