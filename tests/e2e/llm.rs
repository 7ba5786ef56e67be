//! Calls priced by tokens, end to end: the official `openai` and `anthropic` SDKs through the
//! real Envoy with the built filter and the real ledger, against a mock vendor that streams
//! real server-sent events (with its usage events, and a delay between chunks).
//!
//! Each vendor's script (tests/sdk/<vendor>_tokens.py) makes its calls and prints what the
//! SDK saw; here we check that:
//! - the ledger committed exactly the price of the usage the vendor reported, to the
//!   micro-dollar, for JSON answers and streams alike (the price computed here from the
//!   shipped table, not by Bridle's code);
//! - each stream's first chunk reached the SDK before the vendor sent its last one;
//! - a stream the agent abandoned commits its whole reservation;
//! - a model outside the policy, a model without a price and an output maximum above the
//!   policy's are refused, once each (no SDK retry), and never reach the vendor;
//! - a request without a maximum reaches the vendor with the policy's written in, and an
//!   OpenAI stream with `include_usage` set;
//! - a stream whose event name outgrows the parser's bound once decoded settles at its
//!   reservation, never at a usage that misses an event.
//! - an OpenAI call that leaves `service_tier` out or sets `auto` (the project's tier, which
//!   may be priority) reaches the vendor pinned to `default`, the tier the table prices.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bridle_core::llm::prices::Found;
use bridle_core::llm::sse::MAX_EVENT;
use bridle_core::llm::{PriceEntry, PriceList};
use bridle_core::money::Usd;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::{MockVendor, Recorded};
use bridle_e2e::python::{assert_version, run_script};
use serde_json::{json, Value};

/// The policies' output maximum.
const POLICY_MAX: u64 = 200;
/// Between two chunks of a streamed answer: long enough that a proxy that buffers the stream
/// is caught, short enough to keep the suite quick.
const CHUNK_DELAY: Duration = Duration::from_millis(40);
/// Bridle's input bound adds this many tokens to the request's bytes.
const WRAPPER_TOKENS: u64 = 256;
/// A model whose usage reports reasoning tokens (billed as output).
const REASONING_MODEL: &str = "o4-mini";
/// The looping agent's spend breaker, per minute: a few calls' reservations.
const BREAKER: &str = "0.0005";

struct Stack {
    ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
}

async fn start(ps: &[Value]) -> Stack {
    let mock = MockVendor::start().await;
    mock.set_chunk_delay(CHUNK_DELAY);
    let (ledger, envoy) = start_in_front_of(ps, &mock.url()).await;
    Stack {
        ledger,
        envoy,
        mock,
    }
}

/// The ledger and Envoy in front of `upstream`.
async fn start_in_front_of(ps: &[Value], upstream: &str) -> (Ledger, Envoy) {
    let keys = Keys::generate();
    let ps = policies(ps);
    let ledger = Ledger::start(&ps, &keys).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(upstream);
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    (ledger, envoy)
}

impl Stack {
    async fn token(&self, policy: &str, label: &str) -> (String, String) {
        self.ledger
            .issue(json!({ "policy": policy, "label": label, "expires_in": "30m" }))
            .await
    }

    async fn committed(&self, token_id: &str) -> Usd {
        committed(&self.ledger, token_id).await
    }
}

/// The token's committed spend, once nothing is reserved any more.
async fn committed(ledger: &Ledger, token_id: &str) -> Usd {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = ledger.token(token_id).await;
        let spend = &t["spend"];
        if spend["reserved"] == "0.00" && spend["lifetime"] != "0.00" {
            return Usd::parse(spend["lifetime"].as_str().unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "never settled: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn price(vendor: Vendor, model: &str) -> PriceEntry {
    let prices = bridle_e2e::shipped_prices();
    match PriceList::new(&prices[&vendor]).find(model) {
        Found::Priced(e) => e.clone(),
        other => panic!("{model}: {other:?}"),
    }
}

/// Σ tokens × price per million, in micro-dollars, rounded up once: the bill, worked out here.
fn bill(terms: &[(u64, Usd)]) -> Usd {
    let per_million: u128 = terms
        .iter()
        .map(|(tokens, price)| u128::from(*tokens) * price.micros() as u128)
        .sum();
    Usd::from_micros(per_million.div_ceil(1_000_000) as i64).unwrap()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// What OpenAI's usage (as the SDK returned it) costs.
fn openai_bill(p: &PriceEntry, u: &Value) -> Usd {
    let (input, output) = if u.get("prompt_tokens").is_some() {
        (&u["prompt_tokens"], &u["completion_tokens"])
    } else {
        (&u["input_tokens"], &u["output_tokens"])
    };
    let details = if u.get("prompt_tokens_details").is_some() {
        &u["prompt_tokens_details"]
    } else {
        &u["input_tokens_details"]
    };
    let cached = n(&details["cached_tokens"]);
    bill(&[
        (n(input) - cached, p.input),
        (cached, p.cached_input.unwrap()),
        (n(output), p.output),
    ])
}

/// What Anthropic's usage (as the SDK returned it) costs.
fn anthropic_bill(p: &PriceEntry, u: &Value) -> Usd {
    bill(&[
        (n(&u["input_tokens"]), p.input),
        (n(&u["cache_read_input_tokens"]), p.cached_input.unwrap()),
        (
            n(&u["cache_creation"]["ephemeral_5m_input_tokens"]),
            p.cache_write_5m.unwrap(),
        ),
        (
            n(&u["cache_creation"]["ephemeral_1h_input_tokens"]),
            p.cache_write_1h.unwrap(),
        ),
        (n(&u["output_tokens"]), p.output),
    ])
}

fn allowed<'a>(out: &'a Value, case: &str) -> &'a Value {
    let o = &out[case];
    assert_eq!(o["ok"], true, "{case} should have succeeded: {o}");
    assert_eq!(o["content"], bridle_e2e::llm_mock::ANSWER, "{case}: {o}");
    o
}

fn refused(out: &Value, case: &str, class: &str, status: u64, reason: &str) {
    let o = &out[case];
    assert_eq!(o["ok"], false, "{case} should have been refused: {o}");
    assert_eq!(o["class"].as_str(), Some(class), "{case}: {o}");
    assert_eq!(o["status"].as_u64(), Some(status), "{case}: {o}");
    let text = o["str"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("[{reason}]")), "{case}: {text}");
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Each stream the SDK read whole: its first chunk arrived before the vendor sent its last.
fn streamed_through(s: &Stack, out: &Value, cases: &[&str]) {
    let timings = s.mock.streams();
    for (case, timing) in cases.iter().zip(&timings) {
        let first = out[case]["first_chunk_at"].as_f64().unwrap();
        let last = timing.last_sent.expect("the vendor finished the stream");
        assert!(
            first < secs(last),
            "{case}: the SDK got its first chunk at {first}, after the vendor's last at {} \
             ({} chunks, {CHUNK_DELAY:?} apart): the stream was buffered",
            secs(last),
            timing.chunks
        );
    }
}

/// The request the vendor received whose body contains `needle`.
fn received(s: &Stack, path: &str, needle: &str) -> Recorded {
    s.mock
        .requests()
        .into_iter()
        .find(|r| r.path == path && String::from_utf8_lossy(&r.body).contains(needle))
        .unwrap_or_else(|| panic!("no {path} request with {needle}"))
}

/// What Bridle reserves for a body of `bytes` bytes with an output maximum of `max`.
fn reservation(p: &PriceEntry, bytes: usize, max: u64) -> Usd {
    bill(&[(bytes as u64 + WRAPPER_TOKENS, p.input), (max, p.output)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_calls_are_billed_by_their_usage() {
    let model = "gpt-4o-mini";
    let policy = |name: &str, caps: Value| {
        json!({
            "name": name, "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
            "endpoints": [
                { "method": "POST", "path": "/v1/chat/completions", "cost": { "tokens": "chat_completions" } },
                { "method": "POST", "path": "/v1/responses", "cost": { "tokens": "responses" } },
            ],
            // The glob also allows gpt-4o-mini-tts, which the table does not price.
            "models": { "allow": ["gpt-4o-mini*", REASONING_MODEL], "max_output_tokens": POLICY_MAX },
            "caps": caps,
        })
    };
    let s = start(&[
        policy(
            "llm-openai",
            json!({ "per_window": "5.00", "window": "24h" }),
        ),
        // A spend breaker a few calls wide, under a daily cap it never nears.
        policy(
            "llm-openai-loop",
            json!({ "per_window": "5.00", "per_short_window": BREAKER, "short_window": "1m" }),
        ),
    ])
    .await;
    let (token, token_id) = s.token("llm-openai", "llm/openai/main").await;
    let (cut, cut_id) = s.token("llm-openai", "llm/openai/cut").await;
    let (looping, loop_id) = s.token("llm-openai-loop", "llm/openai/loop").await;
    let out = run_script(
        "openai_tokens.py",
        &[
            (
                "BRIDLE_URL",
                format!("http://127.0.0.1:{}/v1", s.envoy.port(Vendor::Openai)),
            ),
            ("BRIDLE_TOKEN", token),
            ("BRIDLE_TOKEN_CUT", cut),
            ("BRIDLE_TOKEN_LOOP", looping),
            ("BRIDLE_MODEL", model.into()),
            ("BRIDLE_REASONING_MODEL", REASONING_MODEL.into()),
            ("BRIDLE_POLICY_MAX", POLICY_MAX.to_string()),
        ],
    )
    .await;
    assert_version(&out, "openai");

    // Committed spend is the price of the usage the vendor reported, to the micro-dollar:
    // cached input and reasoning (as output) included.
    let p = price(Vendor::Openai, model);
    let mut want = Usd::ZERO;
    for (case, p) in [
        ("chat", &p),
        ("chat_stream", &p),
        ("responses", &price(Vendor::Openai, REASONING_MODEL)),
        ("responses_stream", &p),
    ] {
        let usage = &allowed(&out, case)["usage"];
        assert!(
            usage.is_object(),
            "{case}: the SDK saw no usage: {}",
            out[case]
        );
        want = want.checked_add(openai_bill(p, usage)).unwrap();
    }
    assert!(n(&out["chat"]["usage"]["prompt_tokens_details"]["cached_tokens"]) > 0);
    assert!(n(&out["responses"]["usage"]["output_tokens_details"]["reasoning_tokens"]) > 0);
    assert_eq!(s.committed(&token_id).await, want);
    streamed_through(&s, &out, &["chat_stream", "responses_stream"]);

    // The abandoned stream commits its whole reservation: nothing was reported to go by.
    assert!(out["cut"]["first_chunk_at"].is_f64(), "{}", out["cut"]);
    let sent = received(&s, "/v1/chat/completions", "\"max_completion_tokens\":40");
    assert_eq!(
        s.committed(&cut_id).await,
        reservation(&p, sent.body.len(), 40)
    );

    // Bridle wrote the policy's maximum into requests that named none, and asked the stream
    // for its usage; no request asked for a compressed answer.
    let stream: Value =
        serde_json::from_slice(&received(&s, "/v1/chat/completions", "\"stream\":true").body)
            .unwrap();
    assert_eq!(stream["max_completion_tokens"], POLICY_MAX, "{stream}");
    assert_eq!(stream["stream_options"]["include_usage"], true, "{stream}");
    let responses: Value =
        serde_json::from_slice(&received(&s, "/v1/responses", "\"stream\":true").body).unwrap();
    assert_eq!(responses["max_output_tokens"], POLICY_MAX, "{responses}");
    assert!(s
        .mock
        .requests()
        .iter()
        .all(|r| r.header("accept-encoding").is_none()));

    // Refusals, one attempt each, none of which reached the vendor.
    refused(
        &out,
        "over_max",
        "openai.PermissionDeniedError",
        403,
        "max_tokens_not_allowed",
    );
    refused(
        &out,
        "not_allowed",
        "openai.PermissionDeniedError",
        403,
        "model_not_allowed",
    );
    refused(
        &out,
        "unpriced",
        "openai.BadRequestError",
        400,
        "model_unpriced",
    );
    for (reason, count) in [
        ("allowed", 5),
        ("max_tokens_not_allowed", 1),
        ("model_not_allowed", 1),
        ("model_unpriced", 1),
    ] {
        assert_eq!(
            s.envoy.counter(Vendor::Openai, "llm-openai", reason).await,
            count,
            "{reason}"
        );
    }

    // The looping agent was stopped by the breaker at its cap and not later: refused only
    // when the next call's reservation would take the minute's spend past the cap, once (no
    // SDK retry), with a Retry-After within the window.
    let o = &out["loop"];
    refused(
        &out,
        "loop",
        "openai.RateLimitError",
        429,
        "spend_rate_limited",
    );
    let retry: u64 = o["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{o}");
    let message = o["str"].as_str().unwrap();
    let dollars = |after: &str| -> Usd {
        let at = message
            .find(after)
            .unwrap_or_else(|| panic!("{after}: {message}"))
            + after.len();
        let text: String = message[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Usd::parse(text.trim_end_matches('.')).unwrap()
    };
    let (call, cap, spent) = (dollars("A $"), dollars("over its $"), dollars("breaker ($"));
    let breaker = Usd::parse(BREAKER).unwrap();
    assert_eq!(cap, breaker, "{message}");
    let chat_body = received(&s, "/v1/chat/completions", "\"max_completion_tokens\":50");
    assert_eq!(call, reservation(&p, chat_body.body.len(), 50), "{message}");
    assert!(spent <= cap, "{message}");
    assert!(
        spent.checked_add(call).unwrap() > cap,
        "refused before the cap: {message}"
    );
    let allowed = o["allowed_before"].as_u64().unwrap();
    assert!(
        allowed * call.micros() as u64 >= cap.micros() as u64 - call.micros() as u64,
        "{o}"
    );
    assert_eq!(
        s.envoy
            .counter(Vendor::Openai, "llm-openai-loop", "spend_rate_limited")
            .await,
        1,
        "one attempt, no SDK retry"
    );
    let view = s.ledger.token(&loop_id).await;
    assert_eq!(view["breaker"]["cap"], BREAKER, "{view}");
    assert!(Usd::parse(view["breaker"]["spent"].as_str().unwrap()).unwrap() <= breaker);
    // Tokens used, by class, beside dollars.
    let main = s.ledger.token(&token_id).await;
    assert!(main["tokens"]["input"].as_u64().unwrap() > 0, "{main}");
    assert!(
        main["tokens"]["cached_input"].as_u64().unwrap() > 0,
        "{main}"
    );
    assert!(main["tokens"]["reasoning"].as_u64().unwrap() > 0, "{main}");
    assert_eq!(s.mock.count() as u64, 5 + allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_calls_are_billed_by_their_usage() {
    let model = "claude-sonnet-4-5";
    let s = start(&[json!({
        "name": "llm-anthropic", "vendor": "anthropic", "secret_env": "ANTHROPIC_API_KEY", "max_ttl": "1h",
        "endpoints": [{ "method": "POST", "path": "/v1/messages", "cost": { "tokens": "messages" } }],
        // The glob also allows claude-sonnet-4-5-preview, which the table does not price.
        "models": { "allow": ["claude-sonnet-4-5*"], "max_output_tokens": POLICY_MAX },
        "caps": { "per_window": "5.00", "window": "24h" },
    })])
    .await;
    let (token, token_id) = s.token("llm-anthropic", "llm/anthropic/main").await;
    let (cut, cut_id) = s.token("llm-anthropic", "llm/anthropic/cut").await;
    let out = run_script(
        "anthropic_tokens.py",
        &[
            (
                "BRIDLE_URL",
                format!("http://127.0.0.1:{}", s.envoy.port(Vendor::Anthropic)),
            ),
            ("BRIDLE_TOKEN", token),
            ("BRIDLE_TOKEN_CUT", cut),
            ("BRIDLE_MODEL", model.into()),
            ("BRIDLE_POLICY_MAX", POLICY_MAX.to_string()),
        ],
    )
    .await;
    assert_version(&out, "anthropic");

    let p = price(Vendor::Anthropic, model);
    let mut want = Usd::ZERO;
    for case in ["message", "message_stream", "plain_stream"] {
        let usage = &allowed(&out, case)["usage"];
        want = want.checked_add(anthropic_bill(&p, usage)).unwrap();
    }
    // Both cache lifetimes were written, and priced apart.
    assert!(n(&out["message"]["usage"]["cache_creation"]["ephemeral_5m_input_tokens"]) > 0);
    assert!(n(&out["message_stream"]["usage"]["cache_creation"]["ephemeral_1h_input_tokens"]) > 0);
    assert_eq!(s.committed(&token_id).await, want);
    streamed_through(&s, &out, &["message_stream", "plain_stream"]);

    assert!(out["cut"]["first_chunk_at"].is_f64(), "{}", out["cut"]);
    let sent = received(&s, "/v1/messages", "\"max_tokens\":40");
    assert_eq!(
        s.committed(&cut_id).await,
        reservation(&p, sent.body.len(), 40)
    );

    refused(
        &out,
        "over_max",
        "anthropic.PermissionDeniedError",
        403,
        "max_tokens_not_allowed",
    );
    refused(
        &out,
        "not_allowed",
        "anthropic.PermissionDeniedError",
        403,
        "model_not_allowed",
    );
    refused(
        &out,
        "unpriced",
        "anthropic.BadRequestError",
        400,
        "model_unpriced",
    );
    for (reason, count) in [
        ("allowed", 4),
        ("max_tokens_not_allowed", 1),
        ("model_not_allowed", 1),
        ("model_unpriced", 1),
    ] {
        assert_eq!(
            s.envoy
                .counter(Vendor::Anthropic, "llm-anthropic", reason)
                .await,
            count,
            "{reason}"
        );
    }
    assert_eq!(s.mock.count(), 4);
}

/// An upstream that answers each call with the stream whose key its body contains, as one
/// `text/event-stream` body, and keeps the bodies it received.
async fn serve_streams(
    streams: Vec<(&'static str, Vec<u8>)>,
) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (seen, streams) = (seen.clone(), streams.clone());
        async move {
            let text = String::from_utf8_lossy(&body).into_owned();
            seen.lock().unwrap().push(body.to_vec());
            let (_, stream) = streams
                .into_iter()
                .find(|(key, _)| text.contains(key))
                .unwrap();
            ([("content-type", "text/event-stream")], stream)
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received)
}

/// An Anthropic stream with a ping in the middle that is one large `data` line then an
/// event name of `name_byte` repeated, and an unnamed `message_delta` after it that reports
/// `output` tokens. An event name of invalid UTF-8 grows threefold once decoded: with the
/// ping's data it outgrows the parser's bound, while the bytes that arrived stay within it.
fn stream_with_named_ping(name_byte: u8, output: u64) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
    );
    s.extend_from_slice(b"data: ");
    s.extend(std::iter::repeat_n(b'a', MAX_EVENT / 5));
    s.extend_from_slice(b"\nevent: ");
    s.extend(std::iter::repeat_n(name_byte, MAX_EVENT * 3 / 10));
    s.extend_from_slice(b"\n\n");
    s.extend_from_slice(
        format!(
            "data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{output}}}}}\n\n"
        )
        .as_bytes(),
    );
    s.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s
}

/// A stream event whose name grows past the parser's bound once decoded (found by the sse
/// fuzz target) is dropped as too large, and the call settles at its reservation. Before
/// that, the name was kept whole, the parser went past its bound, the event's blank line was
/// lost and the unnamed `message_delta` after it went unread under the ping's name: the call
/// settled at the first event's single output token, under what the vendor reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_event_name_that_grows_when_decoded_settles_at_the_reservation() {
    let model = "claude-sonnet-4-5";
    let output = 90;
    let grown = stream_with_named_ping(0xFF, output);
    let ascii = stream_with_named_ping(b'x', output);
    let (upstream, received) =
        serve_streams(vec![("grown", grown.clone()), ("ascii", ascii.clone())]).await;
    let (ledger, envoy) = start_in_front_of(
        &[json!({
            "name": "llm-anthropic", "vendor": "anthropic", "secret_env": "ANTHROPIC_API_KEY", "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": "/v1/messages", "cost": { "tokens": "messages" } }],
            "models": { "allow": [model], "max_output_tokens": POLICY_MAX },
            "caps": { "per_window": "5.00", "window": "24h" },
        })],
        &upstream,
    )
    .await;
    let p = price(Vendor::Anthropic, model);
    let port = envoy.port(Vendor::Anthropic);
    let mut settled = Vec::new();
    for (case, sent) in [("grown", &grown), ("ascii", &ascii)] {
        let (token, id) = ledger
            .issue(json!({ "policy": "llm-anthropic", "label": format!("llm/sse/{case}"), "expires_in": "30m" }))
            .await;
        let body = json!({ "model": model, "max_tokens": 100, "stream": true,
                           "messages": [{ "role": "user", "content": case }] });
        let r = Request::new("POST", "/v1/messages")
            .header("x-api-key", &token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send(port)
            .await;
        // The agent got the stream as the vendor sent it, whatever Bridle made of it.
        assert_eq!(r.status, 200, "{case}: {}", r.text());
        assert!(
            r.body == *sent,
            "{case}: the stream reached the agent altered"
        );
        let audit = ledger.await_audit(&format!("token_id={id}"), 1).await;
        settled.push((committed(&ledger, &id).await, audit[0].clone()));
    }
    let bodies = received.lock().unwrap().clone();
    let reserved = reservation(&p, bodies[0].len(), 100);
    let reported = bill(&[(10, p.input), (output, p.output)]);
    assert!(reported < reserved);

    // The grown name: the usage after it cannot be trusted to be whole; the reservation holds.
    let (spent, audit) = &settled[0];
    assert_eq!(
        (*spent, audit["usage_missing"].as_str()),
        (reserved, Some("a stream event was too large to read")),
        "the vendor reported {output} output tokens ({reported}); committed {spent}: {audit}"
    );
    // Control: the same stream with an ASCII name of the same length is read whole.
    let (spent, audit) = &settled[1];
    assert_eq!(*spent, reported, "{audit}");
    assert_eq!(
        audit["usage"],
        json!({ "input": 10, "output": output }),
        "{audit}"
    );
    assert!(audit["usage_missing"].is_null(), "{audit}");
    for (stat, count) in [
        ("usage_missing", 1),
        ("usage_read", 1),
        ("over_reservation", 0),
    ] {
        let name = format!("wasmcustom.bridle.llm.anthropic.{stat}");
        let stats = envoy
            .stats(&format!("^{}$", name.replace('.', "\\.")))
            .await;
        assert_eq!(stats.get(&name), Some(&count), "{stat}");
    }
}

/// OpenAI serves a request that leaves out `service_tier`, or sets it to `auto`, at the tier
/// its project is configured for, which may be priority, billed at a higher rate than the
/// price table's. Bridle pins such requests to `default`, the tier its table prices; `flex`
/// (cheaper) is kept as the agent wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_calls_are_pinned_to_the_priced_service_tier() {
    let s = start(&[json!({
        "name": "llm-openai", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
        "endpoints": [
            { "method": "POST", "path": "/v1/chat/completions", "cost": { "tokens": "chat_completions" } },
            { "method": "POST", "path": "/v1/responses", "cost": { "tokens": "responses" } },
        ],
        "models": { "allow": ["gpt-4o-mini"], "max_output_tokens": POLICY_MAX },
        "caps": { "per_window": "5.00", "window": "24h" },
    })])
    .await;
    let (token, _) = s.token("llm-openai", "llm/openai/tier").await;
    let port = s.envoy.port(Vendor::Openai);
    let chat = |text: &str, tier: Option<&str>| {
        let mut b = json!({ "model": "gpt-4o-mini", "max_completion_tokens": 20,
                            "messages": [{ "role": "user", "content": text }] });
        if let Some(t) = tier {
            b["service_tier"] = json!(t);
        }
        ("/v1/chat/completions", b)
    };
    let cases = [
        (chat("tier-omitted", None), "default"),
        (chat("tier-auto", Some("auto")), "default"),
        (chat("tier-flex", Some("flex")), "flex"),
        (
            (
                "/v1/responses",
                json!({ "model": "gpt-4o-mini", "max_output_tokens": 20, "input": "tier-responses" }),
            ),
            "default",
        ),
    ];
    for ((path, body), _) in &cases {
        let r = Request::new("POST", path)
            .header("authorization", format!("Bearer {token}"))
            .json(body)
            .send(port)
            .await;
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    }
    for ((path, body), want) in &cases {
        let needle = body
            .pointer("/messages/0/content")
            .or_else(|| body.get("input"))
            .and_then(Value::as_str)
            .unwrap();
        let sent: Value = serde_json::from_slice(&received(&s, path, needle).body).unwrap();
        assert_eq!(sent["service_tier"], *want, "{needle}: {sent}");
    }
}
