//! Spend leases through the real Envoy and the real ledger process: a worker reserves several
//! fixed-price calls of a token as one reservation and forwards the next ones without a ledger
//! callout, the caps hold whole leases, vendor outcomes settle into the lease, revocation
//! stops a lease, keyed calls never share one, and the ledger's reserve API guards the shape
//! of a lease request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bridle_core::ledger_api::RESERVE_PATH;
use bridle_core::money::Usd;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{canary_secret, Keys, ENFORCER_KEY};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::ledger_gate::LedgerGate;
use bridle_e2e::mock::{MockVendor, Reply};
use serde_json::{json, Value};

/// One call's price in every test: $1.00, as Stripe cents.
const ONE_DOLLAR: &str = "100";
const MICROS_PER_CALL: i64 = 1_000_000;

/// A Stripe policy whose payment intents are priced by their amount up front (no settle
/// rule, not priced by tokens): the calls a lease may serve.
fn leasing(name: &str, calls: u32, max_age_ms: u64, per_window: &str) -> Value {
    json!({
        "name": name, "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents",
              "cost": { "amount": { "field": "amount", "currency": "usd" } } },
            { "method": "GET", "path": "/v1/charges/*" },
        ],
        "caps": { "per_transaction": "5", "per_window": per_window, "window": "1h" },
        "lease": { "calls": calls, "max_age_ms": max_age_ms },
    })
}

/// The same calls without a lease.
fn plain() -> Value {
    let mut p = leasing("plain", 2, 10, "100");
    p.as_object_mut().unwrap().remove("lease");
    p
}

/// Leases of eight calls under a $50 per-transaction cap: a $10 call's lease holds $80, room
/// for a call the cap refuses.
fn dear() -> Value {
    let mut p = leasing("dear", 8, 1000, "1000");
    p["caps"]["per_transaction"] = json!("50");
    p
}

fn all_policies() -> Vec<Value> {
    vec![
        // Four calls a lease, a second to spend them: sequential local calls use each lease
        // up long before it is too old, even on a loaded machine.
        leasing("lease4", 4, 1000, "100"),
        leasing("capped", 4, 1000, "10"),
        leasing("lease64", 64, 1000, "1000"),
        dear(),
        plain(),
    ]
}

struct Stack {
    ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
    /// Between Envoy and the ledger, in a stack whose set goes stale early.
    gate: Option<LedgerGate>,
}

/// The mock vendor, the ledger and Envoy with `workers` worker threads (each with its own
/// lease book).
async fn stack(workers: u32) -> Stack {
    start(workers, None).await
}

/// The same, with the revocation set counted stale after `staleness_ms` without a good poll
/// instead of the rendered 3 s, so that it goes stale while a lease is still young; and with
/// a gate in front of the ledger, which can fail the revocation feed alone.
async fn start(workers: u32, staleness_ms: Option<u64>) -> Stack {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ps = policies(&all_policies());
    let ledger = Ledger::start(&ps, &keys).await;
    let gate = match staleness_ms {
        None => None,
        Some(_) => Some(LedgerGate::start(ledger.port).await),
    };
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(gate.as_ref().map_or_else(|| ledger.url(), LedgerGate::url));
    setup.concurrency = workers;
    let envoy = match staleness_ms {
        None => Envoy::start(&setup).await.unwrap(),
        Some(ms) => {
            let rendered = "max_staleness_ms: 3000";
            let yaml = setup.render();
            assert!(yaml.contains(rendered), "the bootstrap has no {rendered}");
            let yaml = yaml.replace(rendered, &format!("max_staleness_ms: {ms}"));
            let envoy = Envoy::start_config(&yaml, &setup.environment(), workers)
                .await
                .unwrap();
            // As Envoy::start: the first revocation set, copied by every worker.
            envoy.await_first_revocations().await.unwrap();
            envoy
        }
    };
    Stack {
        ledger,
        envoy,
        mock,
        gate,
    }
}

impl Stack {
    async fn issue(&self, policy: &str, label: &str) -> (String, String) {
        self.ledger
            .issue(json!({ "policy": policy, "label": label, "expires_in": "1h" }))
            .await
    }

    fn stripe(&self) -> u16 {
        self.envoy.port(Vendor::Stripe)
    }

    /// Costed calls Envoy forwarded on a lease, without a reservation callout.
    async fn lease_spends(&self) -> u64 {
        let name = "wasmcustom.bridle.ledger.lease_spends";
        let stats = self
            .envoy
            .stats(&format!("^{}$", name.replace('.', "\\.")))
            .await;
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in Envoy's stats: {stats:?}"))
    }

    /// Reservations the ledger granted for `policy` (each lease is one).
    async fn reservations(&self, policy: &str, decision: &str) -> u64 {
        let metrics = self.ledger.metrics().await;
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("bridle_ledger_reservations_total{")
                    && l.contains(&format!("policy=\"{policy}\""))
                    && l.contains(&format!("decision=\"{decision}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The token's view once no lease or reservation of it is open: a lease closes once used
    /// up or `max_age_ms` old, at the worker's next tick, and its settle is reported with the
    /// next batch. Fails if that takes more than 5 s.
    async fn closed(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = self.ledger.token(id).await;
            if t["spend"]["reserved"] == "0.00" {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the token's leases were still open after 5 s: {t}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn intent(token: &str, cents: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .form(&format!(
            "amount={cents}&currency=usd&payment_method_types[]=card"
        ))
}

fn micros(v: &Value) -> i64 {
    Usd::parse(v.as_str().unwrap_or_else(|| panic!("not an amount: {v}")))
        .unwrap()
        .micros()
}

fn dollars(calls: usize) -> String {
    Usd::from_micros(calls as i64 * MICROS_PER_CALL)
        .unwrap()
        .to_string()
}

/// Stripe's shape of a cap refusal: a 403 (a PermissionError in the SDK, never a card
/// decline) that names the cap and tells the SDK not to retry.
fn assert_cap_refusal(r: &Response) {
    assert_eq!((r.status, r.reason()), (403, "cap_window"), "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$10.00 cap"),
        "{body}"
    );
    assert_eq!(r.header("stripe-should-retry"), Some("false"));
}

/// Sends a costed call until it is decided (anything but a 503 from a ledger that did not
/// answer in time, which a loaded machine can cause), as an agent would; returns the answer
/// and how many times it was resent.
async fn until_decided(r: &Request, port: u16) -> (Response, u32) {
    for resends in 0..40 {
        let answer = r.send(port).await;
        if (answer.status, answer.reason()) != (503, "ledger_unavailable") {
            return (answer, resends);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no decision in 40 attempts");
}

/// The audit records of a token's calls, once all `n` have been reported.
async fn audit(s: &Stack, id: &str, n: usize) -> Vec<Value> {
    let records = s.ledger.await_audit(&format!("token_id={id}"), n).await;
    assert_eq!(records.len(), n, "{records:#?}");
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_calls_skip_the_callout_and_settle_at_what_they_spent() {
    // Two workers: each holds its own book, so a token may hold a lease on each.
    let s = stack(2).await;
    let (token, id) = s.issue("lease4", "acme/lease").await;
    for i in 0..8 {
        let r = intent(&token, ONE_DOLLAR).send(s.stripe()).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    // Every call reached the vendor with the vendor's secret, leased or not.
    let got = s.mock.requests();
    assert_eq!(got.len(), 8);
    let secret = format!("Bearer {}", canary_secret(Vendor::Stripe).1);
    for r in &got {
        assert_eq!(r.header("authorization").as_deref(), Some(secret.as_str()));
        assert!(!r.everything().contains("bvt_"));
    }

    // The first call of a worker's lease reserves it; up to three more spend it, and a lease
    // the tick asked for ahead serves the calls after it. However two books share eight
    // calls, one of them serves at least four: an opener and three spends.
    let spends = s.lease_spends().await;
    assert!((3..=7).contains(&spends), "lease_spends = {spends}");

    // The leases close at what their calls spent: exactly $8, nothing left reserved.
    let t = s.closed(&id).await;
    assert_eq!(
        (
            t["spend"]["window"].as_str(),
            t["spend"]["lifetime"].as_str()
        ),
        (Some("8.00"), Some("8.00")),
        "{t}"
    );

    // Each call is audited under its lease with its own price.
    let records = audit(&s, &id, 8).await;
    let mut calls_per_lease: BTreeMap<String, u64> = BTreeMap::new();
    let mut reserved_alone = 0u64;
    for r in &records {
        assert_eq!(
            (
                r["status"].as_u64(),
                r["reason"].as_str(),
                r["cost"].as_str()
            ),
            (Some(200), Some("allowed"), Some("1.00")),
            "{r}"
        );
        let lease = r["reservation"]
            .as_str()
            .unwrap_or_else(|| panic!("a costed call without its reservation: {r}"));
        *calls_per_lease.entry(lease.to_string()).or_default() += 1;
        // A call reserved with the ledger holds its own id; one spent from a lease, the
        // lease's (the id of the call or the tick that asked for it).
        if r["id"].as_str() == Some(lease) {
            reserved_alone += 1;
        }
    }
    assert!(
        calls_per_lease.values().all(|n| *n <= 4),
        "a lease of four served more: {calls_per_lease:?}"
    );
    // Every call either was reserved with the ledger or spent a lease without it, and the
    // ledger granted every lease the calls were audited under (and perhaps leases asked
    // ahead that no call needed, released at their close).
    assert_eq!(
        reserved_alone + spends,
        8,
        "{calls_per_lease:?}, {spends} spends"
    );
    assert!(s.reservations("lease4", "granted").await >= calls_per_lease.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_never_lets_spend_past_a_cap() {
    // One worker: one book, so the sequential part below is exact.
    let s = stack(1).await;
    let port = s.stripe();
    let (token, id) = s.issue("capped", "acme/capped").await;

    // Thirty $1 calls at once against a $10 window: many ask the ledger for a lease at the
    // same time, and each lease is checked whole against the cap. Fewer than ten may be
    // granted (calls that asked at once each hold a whole lease, and only the newest serves
    // later calls), but never more.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let r = intent(&token, ONE_DOLLAR);
            tokio::spawn(async move { until_decided(&r, port).await })
        })
        .collect();
    let (mut granted, mut resent) = (0usize, 0u32);
    for t in tasks {
        let (r, n) = t.await.unwrap();
        resent += n;
        match r.status {
            200 => granted += 1,
            _ => assert_cap_refusal(&r),
        }
    }
    assert!(granted <= 10, "{granted} calls of $1 in a $10 cap");
    assert!(granted >= 1, "the first lease serves at least its own call");
    assert_eq!(
        s.mock.count(),
        granted,
        "only granted calls reach the vendor"
    );

    // Concurrent leases close with their unused slices released: spend is what was granted.
    // A reservation the ledger made after the proxy stopped waiting (a 503, resent, on a
    // loaded machine) is counted until it expires, over, never under: then the bound holds.
    if resent == 0 {
        let t = s.closed(&id).await;
        assert_eq!(
            t["spend"]["window"].as_str(),
            Some(dollars(granted).as_str()),
            "{t}"
        );
    } else {
        let t = s.ledger.token(&id).await;
        let counted = micros(&t["spend"]["window"]);
        assert!(
            counted >= granted as i64 * MICROS_PER_CALL && counted <= 10 * MICROS_PER_CALL,
            "{granted} granted after {resent} resends: {t}"
        );
    }

    // Sequential calls of another token fill its cap exactly: a lease asked for near the cap
    // gets only the calls that still fit, and no more.
    let (token, id) = s.issue("capped", "acme/capped-sequential").await;
    let vendor_before = s.mock.count();
    let (mut granted, mut refused) = (0usize, 0usize);
    for _ in 0..25 {
        let r = intent(&token, ONE_DOLLAR).send(port).await;
        if r.status == 200 {
            granted += 1;
            continue;
        }
        assert_cap_refusal(&r);
        refused += 1;
        // Refused at the cap, or while a lease of this token was closing with slices it
        // did not use (counted until its settle arrives): once closed, try again.
        let t = s.closed(&id).await;
        if t["spend"]["window"] == "10.00" {
            break;
        }
    }
    assert!(refused >= 1, "never refused");
    assert_eq!(granted, 10, "sequential $1 calls in a $10 cap");
    let t = s.closed(&id).await;
    assert_eq!(t["spend"]["window"].as_str(), Some("10.00"), "{t}");
    assert_eq!(s.mock.count() - vendor_before, 10);
    // And the cap stays shut.
    assert_cap_refusal(&intent(&token, ONE_DOLLAR).send(port).await);
    assert_eq!(s.mock.count() - vendor_before, 10);

    // Nor past the per-transaction cap: the ledger checked it against the price of the call
    // that asked for the lease, so a dearer call must not spend from it, even with room left.
    // (Before, a $60 call spent $60 of a $10 call's $80 lease under a $50 cap.)
    dearer_calls_never_spend_a_lease(&s).await;
}

/// A $10 call opens a lease of eight ($70 left in it), then a $60 call under the $50
/// per-transaction cap is refused by the ledger and never reaches the vendor, and a $10 call
/// after it still spends the lease: so the lease was young and had the room all along. An
/// attempt whose lease grew too old for that to show is made again, never counted as a pass.
async fn dearer_calls_never_spend_a_lease(s: &Stack) {
    let port = s.stripe();
    for attempt in 0..3 {
        let (token, id) = s.issue("dear", &format!("acme/dear-{attempt}")).await;
        let vendor_before = s.mock.count();
        let r = intent(&token, "1000").send(port).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.ledger.token(&id).await["spend"]["reserved"], "80.00");
        let spends = s.lease_spends().await;

        let r = intent(&token, "6000").send(port).await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "cap_per_transaction"),
            "a $60 call under a $50 per-transaction cap, on a lease with $70 left: {}",
            r.text()
        );
        assert_eq!(r.header("stripe-should-retry"), Some("false"));
        assert_eq!(
            s.lease_spends().await,
            spends,
            "the $60 call spent the lease"
        );

        assert_eq!(intent(&token, "1000").send(port).await.status, 200);
        let lease_was_live = s.lease_spends().await == spends + 1;
        let sent: Vec<String> = s.mock.requests()[vendor_before..]
            .iter()
            .map(|q| String::from_utf8_lossy(&q.body).into_owned())
            .collect();
        assert_eq!(
            sent.len(),
            2,
            "only the $10 calls reach the vendor: {sent:?}"
        );
        assert!(
            sent.iter().all(|b| b.starts_with("amount=1000&")),
            "{sent:?}"
        );
        if !lease_was_live {
            continue;
        }
        // Audited as the per-transaction refusal; the leases close at the $20 spent.
        let records = audit(s, &id, 3).await;
        let refused: Vec<&Value> = records
            .iter()
            .filter(|r| r["reason"] != "allowed")
            .collect();
        assert_eq!(refused.len(), 1, "{records:#?}");
        assert_eq!(refused[0]["reason"], "cap_per_transaction", "{records:#?}");
        let t = s.closed(&id).await;
        assert_eq!(t["spend"]["lifetime"].as_str(), Some("20.00"), "{t}");
        return;
    }
    panic!("in three attempts a lease never lived through three sequential calls");
}

/// A burst on a fresh token: while one call asks the ledger for a lease, the others of the
/// token reserve one call each instead of asking for leases of their own, so the burst is
/// not refused with most of the cap still free. (Before, each asked for a whole lease, each
/// grant retired the previous one with its unused calls still counted, and five $1 calls
/// against a $10 cap came back [403, 403, 200, 200, 200].)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_below_the_cap_is_not_refused() {
    let s = stack(1).await;
    let port = s.stripe();
    for round in 0..3 {
        let (token, id) = s.issue("capped", &format!("acme/burst-{round}")).await;
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let r = intent(&token, ONE_DOLLAR);
                tokio::spawn(async move { r.send(port).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap().status);
        }
        let t = s.closed(&id).await;
        assert_eq!(statuses, vec![200; 5], "round {round}: {t}");
        assert_eq!(t["spend"]["window"].as_str(), Some("5.00"), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_failed_calls_on_a_lease() {
    let s = stack(1).await;
    let (token, id) = s.issue("lease4", "acme/outcomes").await;
    // What the vendor answers, call by call: 4xx refused it (nothing spent, the price goes
    // back to the lease); 2xx and 5xx spend it (a vendor that failed may have acted).
    let script: [u16; 10] = [200, 402, 500, 201, 402, 400, 503, 200, 429, 200];
    for status in script {
        let body = if status < 300 {
            json!({ "id": "pi_mock_1", "object": "payment_intent" })
        } else {
            json!({ "error": { "type": "api_error", "message": "scripted" } })
        };
        s.mock.reply_next(Reply::json(status, body));
    }
    for (i, want) in script.iter().enumerate() {
        let r = intent(&token, ONE_DOLLAR).send(s.stripe()).await;
        assert_eq!(r.status, *want, "call {i}: {}", r.text());
        assert_eq!(
            r.reason(),
            "",
            "call {i} is the vendor's answer, not Bridle's"
        );
    }
    assert_eq!(s.mock.count(), script.len());

    let spent = script.iter().filter(|s| !(400..500).contains(*s)).count();
    assert_eq!(spent, 6);
    let t = s.closed(&id).await;
    assert_eq!(
        t["spend"]["window"].as_str(),
        Some(dollars(spent).as_str()),
        "2xx and 5xx count, 4xx do not: {t}"
    );

    // The leases served these calls: every call was reserved with the ledger (under its
    // own id) or spent a lease (under the lease's).
    let spends = s.lease_spends().await;
    assert!(spends >= 1, "no call spent from a lease");
    // Audited with the vendor's status, under a lease, at its price.
    let records = audit(&s, &id, script.len()).await;
    let reserved_alone = records
        .iter()
        .filter(|r| r["id"] == r["reservation"])
        .count() as u64;
    assert_eq!(spends + reserved_alone, script.len() as u64);
    assert!(s.reservations("lease4", "granted").await >= reserved_alone);
    let mut statuses: Vec<u16> = records
        .iter()
        .map(|r| {
            assert_eq!(
                (r["reason"].as_str(), r["cost"].as_str()),
                (Some("allowed"), Some("1.00")),
                "{r}"
            );
            assert!(r["reservation"].is_string(), "{r}");
            r["status"].as_u64().unwrap() as u16
        })
        .collect();
    statuses.sort();
    let mut want = script.to_vec();
    want.sort();
    assert_eq!(statuses, want);
}

/// A call the vendor is slow to answer (or whose agent reads its answer slowly) does not
/// keep its whole lease reserved: a retired lease waits a bounded time for its calls, then
/// closes counting them as spent. (Before, the lease stayed reserved until its slowest call
/// ended, up to the vendor route's timeout of minutes, and one slow call per lease could
/// hold a policy's window for every other token.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_hold_its_whole_lease() {
    let s = stack(1).await;
    let (token, id) = s.issue("lease4", "acme/slow").await;
    let mut slow_reply = Reply::json(
        200,
        json!({ "id": "pi_mock_slow", "object": "payment_intent" }),
    );
    slow_reply.delay = Duration::from_secs(6);
    s.mock.reply_next(slow_reply);
    let port = s.stripe();
    let slow_call = intent(&token, ONE_DOLLAR);
    let slow = tokio::spawn(async move { slow_call.send(port).await });
    // The lease (four calls, $4) is granted with the slow call; it is a second old at most
    // when it retires, then waits a second for the call.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.ledger.token(&id).await["spend"]["reserved"] != "4.00" {
        assert!(
            Instant::now() < deadline,
            "no lease granted for the slow call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = s.closed(&id).await;
    assert!(
        !slow.is_finished(),
        "the lease must close while its slow call is still in flight"
    );
    assert_eq!(
        t["spend"]["window"].as_str(),
        Some("1.00"),
        "the call in flight counts as spent, the unused calls are released: {t}"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Its end, after its lease closed, counts nothing twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = s.closed(&id).await;
    assert_eq!(t["spend"]["window"].as_str(), Some("1.00"), "{t}");
    assert_eq!(
        s.lease_spends().await,
        0,
        "the lease served only its own call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_spends_no_more_of_its_lease() {
    let mut s = stack(1).await;
    let port = s.stripe();
    let (token, id) = s.issue("lease64", "acme/revoked").await;
    // One call opens a lease of 64 calls: $64 reserved, spent locally from now on.
    let r = intent(&token, ONE_DOLLAR).send(port).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ok = 1usize;
    assert_eq!(s.ledger.token(&id).await["spend"]["reserved"], "64.00");

    s.ledger.revoke(json!({ "token_id": id })).await;
    // Calls keep coming; until the worker's revocation set has the token they may spend the
    // lease (a documented limit), and within a second they are refused.
    let start = Instant::now();
    loop {
        let r = intent(&token, ONE_DOLLAR).send(port).await;
        if r.status == 401 {
            assert_eq!(r.reason(), "token_revoked", "{}", r.text());
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        ok += 1;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still served {:?} after the revocation ({ok} calls)",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.mock.count(), ok);

    // From then on nothing of the lease is spent: refused before any spending.
    let spends = s.lease_spends().await;
    for _ in 0..5 {
        let r = intent(&token, ONE_DOLLAR).send(port).await;
        assert_eq!(
            (r.status, r.reason()),
            (401, "token_revoked"),
            "{}",
            r.text()
        );
    }
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!((r.status, r.reason()), (401, "token_revoked"));
    assert_eq!(s.lease_spends().await, spends);
    assert_eq!(s.mock.count(), ok, "nothing more reached the vendor");

    // It is the proxy's own set that refuses, not the ledger: with the ledger gone, a
    // costed call is still refused as revoked rather than as a ledger failure.
    s.ledger.kill9();
    let r = intent(&token, ONE_DOLLAR).send(port).await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "token_revoked"),
        "{}",
        r.text()
    );
    s.ledger.restart().await;

    // The lease closes (its settle resent once the ledger is back) at the calls served.
    let t = s.closed(&id).await;
    assert_eq!(
        t["spend"]["lifetime"].as_str(),
        Some(dollars(ok).as_str()),
        "{ok} calls got a 200: {t}"
    );
    // Refused: the first refusal, five more, the free call, the one with the ledger gone.
    let records = audit(&s, &id, ok + 8).await;
    let allowed = records.iter().filter(|r| r["reason"] == "allowed").count();
    let revoked = records
        .iter()
        .filter(|r| r["reason"] == "token_revoked")
        .count();
    assert_eq!((allowed, revoked), (ok, 8), "{records:#?}");
}

/// Waits (up to 10 s) until a free call of `token` says the worker's revocation set is stale
/// (refused as `revocation_stale`, which the policy does then) or fresh (served).
async fn await_revocations(port: u16, token: &str, stale: bool) {
    let free = Request::new("GET", "/v1/charges/ch_1").bearer(token);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = free.send(port).await;
        let is_stale = (r.status, r.reason()) == (503, "revocation_stale");
        if is_stale == stale {
            return;
        }
        if !is_stale {
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert!(
            Instant::now() < deadline,
            "the set never became {}",
            if stale { "stale" } else { "fresh" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A lease is spent only while the worker's revocation set is fresh: a proxy that has lost
/// the ledger cannot learn of revocations, so its leased calls go to the ledger again (and,
/// the ledger being gone, are refused) rather than spend on for the rest of the lease. Nor
/// does a call seen with a stale set ask the ledger for a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revocation_set_sends_leased_calls_to_the_ledger() {
    // Stale after 400 ms without a good poll (the least the filter accepts: two polls), well
    // inside a lease's second.
    let mut s = start(1, Some(400)).await;
    let port = s.stripe();
    stale_calls_ask_for_no_lease(&s).await;

    let vendor_before = s.mock.count();
    // Whether the set went stale before the lease grew too old is up to the machine's pace:
    // an attempt that could not tell the two apart is made again, never counted as a pass.
    for attempt in 0..3 {
        let (token, id) = s.issue("lease64", &format!("acme/stale-{attempt}")).await;
        let opened = Instant::now();
        assert_eq!(intent(&token, ONE_DOLLAR).send(port).await.status, 200);
        let spends = s.lease_spends().await;
        assert_eq!(intent(&token, ONE_DOLLAR).send(port).await.status, 200);
        assert_eq!(s.lease_spends().await, spends + 1, "the lease serves calls");

        s.ledger.kill9();
        await_revocations(port, &token, true).await;
        let r = intent(&token, ONE_DOLLAR).send(port).await;
        let lease_was_young = opened.elapsed() < Duration::from_millis(900);
        let spends_after = s.lease_spends().await;
        s.ledger.restart().await;
        // Fresh again before anything else is asked of the proxy.
        await_revocations(port, &token, false).await;
        if !lease_was_young {
            continue;
        }
        assert_eq!(
            (r.status, r.reason()),
            (503, "ledger_unavailable"),
            "a leased call with a stale set: {}",
            r.text()
        );
        assert_eq!(spends_after, spends + 1, "spent from the lease while stale");
        let posts = s.mock.requests()[vendor_before..]
            .iter()
            .filter(|q| q.method == "POST")
            .count();
        assert_eq!(posts, 2 * (attempt + 1), "no costed call left while stale");
        // The lease closes, once the ledger is back, at the two calls it served.
        let t = s.closed(&id).await;
        assert_eq!(t["spend"]["lifetime"].as_str(), Some("2.00"), "{t}");
        return;
    }
    panic!("in three attempts the set never went stale within 900 ms of a lease opening");
}

/// While the revocation feed fails and the ledger still answers, a token's costed calls are
/// reserved one call each: a stale set spends no lease, so it asks for none. (Before, each
/// asked for a whole lease and skipped the one-ask-at-a-time rule: $64 reserved for a $1
/// call, then $64 more for the next.)
async fn stale_calls_ask_for_no_lease(s: &Stack) {
    let gate = s
        .gate
        .as_ref()
        .expect("a stack with a stale set has a gate");
    let port = s.stripe();
    let (token, id) = s.issue("lease64", "acme/stale-asks").await;
    gate.fail_feed(true);
    await_revocations(port, &token, true).await;
    let spends = s.lease_spends().await;
    let asked_before = gate.reserves().len();
    for i in 1..=3 {
        let r = intent(&token, ONE_DOLLAR).send(port).await;
        assert_eq!(r.status, 200, "call {i} with a stale set: {}", r.text());
        // The ledger holds at most the calls made, never a lease's worth.
        let t = s.ledger.token(&id).await;
        assert!(
            micros(&t["spend"]["reserved"]) <= i * MICROS_PER_CALL,
            "after {i} $1 call(s) with a stale set: {t}"
        );
    }
    // Still stale after them: each was seen with a stale set.
    await_revocations(port, &token, true).await;
    gate.fail_feed(false);

    let asked: Vec<_> = gate.reserves()[asked_before..]
        .iter()
        .filter(|r| r.request["token"] == token.as_str())
        .cloned()
        .collect();
    assert_eq!(asked.len(), 3, "one reservation per call: {asked:#?}");
    for r in &asked {
        assert_eq!(
            r.request["lease_calls"],
            Value::Null,
            "asked for a lease: {r:?}"
        );
        assert_eq!(
            (r.status, r.answer["decision"].as_str()),
            (200, Some("granted")),
            "{r:?}"
        );
        assert_eq!(
            r.answer["leased_calls"],
            Value::Null,
            "granted a lease: {r:?}"
        );
    }
    assert_eq!(
        s.lease_spends().await,
        spends,
        "spent from a lease while stale"
    );
    await_revocations(port, &token, false).await;
    let t = s.closed(&id).await;
    assert_eq!(t["spend"]["lifetime"].as_str(), Some("3.00"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_calls_are_reserved_one_by_one() {
    let s = stack(1).await;
    let port = s.stripe();
    let (token, id) = s.issue("lease4", "acme/keyed").await;
    let keyed = |key: &str| intent(&token, ONE_DOLLAR).header("idempotency-key", key);

    // An unkeyed call opens a lease of four $1 calls.
    assert_eq!(intent(&token, ONE_DOLLAR).send(port).await.status, 200);
    assert_eq!(s.lease_spends().await, 0);
    // Keyed calls at the same price never spend it: a retry spent from a lease would count
    // twice. Each goes to the ledger, which replays the retries by their key.
    for _ in 0..3 {
        let r = keyed("order-7").send(port).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(s.lease_spends().await, 0, "a keyed call spent from a lease");
    // The lease was there all along: the next unkeyed call spends it.
    assert_eq!(intent(&token, ONE_DOLLAR).send(port).await.status, 200);
    assert_eq!(s.lease_spends().await, 1);
    // A new key is new spend, still reserved on its own.
    assert_eq!(keyed("order-8").send(port).await.status, 200);
    assert_eq!(s.lease_spends().await, 1);

    // The vendor saw every retry; Bridle counted order-7 once: 2 unkeyed + 2 keys.
    assert_eq!(s.mock.count(), 6);
    let t = s.closed(&id).await;
    assert_eq!(t["spend"]["window"].as_str(), Some("4.00"), "{t}");
    assert_eq!(s.reservations("lease4", "replay").await, 2);
    // Three reservations of calls, and perhaps one lease the tick asked ahead once the
    // first lease had served its second call.
    let granted = s.reservations("lease4", "granted").await;
    assert!((3..=4).contains(&granted), "{granted} granted");

    // In the audit log, the keyed calls hold their own reservation, never the lease's.
    let records = audit(&s, &id, 6).await;
    let mut by_reservation: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &records {
        let entry = by_reservation
            .entry(r["reservation"].as_str().unwrap().to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += usize::from(r["replay"] == true);
    }
    let mut shapes: Vec<(usize, usize)> = by_reservation.values().copied().collect();
    shapes.sort();
    // order-8 alone; the lease's two calls; order-7 and its two replays.
    assert_eq!(shapes, vec![(1, 0), (2, 0), (3, 2)], "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_checks_the_shape_of_a_lease_request() {
    let keys = Keys::generate();
    let ledger = Ledger::start(&policies(&all_policies()), &keys).await;
    let issue = |policy: &'static str| {
        ledger.issue(json!({ "policy": policy, "label": "acme/api", "expires_in": "1h" }))
    };
    let (leased, leased_id) = issue("lease4").await;
    // Each reservation's request id, in turn.
    let n = std::cell::Cell::new(0u32);
    let reserve = |token: &str, amount: &str, extra: Value| {
        n.set(n.get() + 1);
        let mut body = json!({
            "token": token, "request_id": format!("{:032x}", n.get()), "method": "POST",
            "path": "/v1/payment_intents", "amount": amount, "detail": "test",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        Request::new("POST", RESERVE_PATH)
            .bearer(ENFORCER_KEY)
            .json(&body)
    };

    // A lease with an idempotency key, or of no calls, or of more than 64: refused whole.
    for (extra, says) in [
        (
            json!({ "lease_calls": 4, "idempotency_key": "order-1" }),
            "idempotency key",
        ),
        (json!({ "lease_calls": 0 }), "lease_calls"),
        (json!({ "lease_calls": 65 }), "lease_calls"),
    ] {
        let r = reserve(&leased, "1.00", extra.clone())
            .send(ledger.port)
            .await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{extra}: {}",
            r.text()
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{extra}: {message}");
    }
    assert_eq!(
        ledger.token(&leased_id).await["spend"]["reserved"],
        "0.00",
        "a refused request reserves nothing"
    );

    // Never more calls than the policy's lease: 64 asked, 4 granted.
    let r = reserve(&leased, "1.00", json!({ "lease_calls": 64 }))
        .send(ledger.port)
        .await;
    let lease_id = format!("{:032x}", n.get());
    assert_eq!(
        (
            r.json()["decision"].as_str(),
            r.json()["leased_calls"].as_u64()
        ),
        (Some("granted"), Some(4)),
        "{}",
        r.text()
    );
    assert_eq!(ledger.token(&leased_id).await["spend"]["reserved"], "4.00");
    // Closing it commits what was spent and releases the rest.
    let r = Request::new("POST", "/v1/enforce/settle")
        .bearer(ENFORCER_KEY)
        .json(&json!({ "reservation": lease_id, "outcome": "commit", "amount": "3.00" }))
        .send(ledger.port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = ledger.token(&leased_id).await;
    assert_eq!(
        (
            t["spend"]["reserved"].as_str(),
            t["spend"]["window"].as_str()
        ),
        (Some("0.00"), Some("3.00")),
        "{t}"
    );

    // A policy without leases reserves the one call.
    let (unleased, unleased_id) = issue("plain").await;
    let r = reserve(&unleased, "1.00", json!({ "lease_calls": 4 }))
        .send(ledger.port)
        .await;
    assert_eq!(r.json()["decision"], "granted", "{}", r.text());
    assert!(r.json().get("leased_calls").is_none(), "{}", r.text());
    assert_eq!(
        ledger.token(&unleased_id).await["spend"]["reserved"],
        "1.00"
    );

    // Under a $10 window, a lease of $3 calls gets the three that fit, then none.
    let (capped, capped_id) = issue("capped").await;
    let r = reserve(&capped, "3.00", json!({ "lease_calls": 4 }))
        .send(ledger.port)
        .await;
    assert_eq!(r.json()["leased_calls"], 3, "{}", r.text());
    let r = reserve(&capped, "3.00", json!({ "lease_calls": 4 }))
        .send(ledger.port)
        .await;
    assert_eq!(
        (r.json()["decision"].as_str(), r.json()["reason"].as_str()),
        (Some("denied"), Some("cap_window")),
        "{}",
        r.text()
    );
    // The dollar left still fits a call of its own.
    let r = reserve(&capped, "1.00", json!({})).send(ledger.port).await;
    assert_eq!(r.json()["decision"], "granted", "{}", r.text());
    assert_eq!(ledger.token(&capped_id).await["spend"]["window"], "10.00");
}
