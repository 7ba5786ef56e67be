//! Calls priced by tokens through the whole exchange, without a host: priced, rewritten,
//! reserved, forwarded, watched and settled.

use serde_json::json;

use super::super::*;
use crate::ledger_api::ReserveRequest;
use crate::loop_breaker::MemoryCounter;
use crate::token::Claims;

const NOW_MS: u64 = 1_700_000_100_000;

fn keyring_spec() -> String {
    crate::token::tests::public_spec()
}

/// An OpenAI or Anthropic listener with one policy that prices its LLM endpoint by tokens.
fn blueprint(vendor: Vendor) -> Blueprint {
    let (path, api, secret_env, allow) = match vendor {
        Vendor::Openai => (
            "/v1/chat/completions",
            "chat_completions",
            "OPENAI_API_KEY",
            json!(["gpt-4o-mini"]),
        ),
        _ => (
            "/v1/messages",
            "messages",
            "ANTHROPIC_API_KEY",
            json!(["claude-sonnet-4-5"]),
        ),
    };
    let config = json!({
        "vendor": vendor,
        "ledger": { "cluster": "bridle_ledger" },
        "policies": [{
            "name": "llm", "vendor": vendor, "secret_env": secret_env, "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": path, "cost": { "tokens": api } }],
            "models": { "allow": allow, "max_output_tokens": 500 },
        }],
        "prices": if vendor == Vendor::Openai {
            json!([{ "model": "gpt-4o-mini", "input": "0.15", "cached_input": "0.075", "output": "0.60" }])
        } else {
            json!([{ "model": "claude-sonnet-4-5", "input": "3", "cached_input": "0.30",
                     "cache_write_5m": "3.75", "cache_write_1h": "6", "output": "15" }])
        },
    });
    let env = |name: &str| match name {
        "BRIDLE_PUBLIC_KEYS" => Some(keyring_spec()),
        "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" => Some("sk-test-secret".to_string()),
        _ => None,
    };
    Blueprint::configure(Some(config.to_string().as_bytes()), env).unwrap()
}

fn headers(vendor: Vendor, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let token = crate::token::tests::signing_key()
        .mint(&Claims {
            v: 1,
            id: "tok_llm".into(),
            policy: "llm".into(),
            vendor,
            iat: NOW_MS / 1000 - 10,
            exp: NOW_MS / 1000 + 600,
            label: "agent/1".into(),
            endpoints: None,
            merchants: None,
            caps: Default::default(),
        })
        .unwrap();
    let path = if vendor == Vendor::Openai {
        "/v1/chat/completions"
    } else {
        "/v1/messages"
    };
    let mut h: Vec<(String, Vec<u8>)> = [
        (":method", "POST".to_string()),
        (":path", path.to_string()),
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
        ("accept-encoding", "gzip, deflate".to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v.into_bytes()))
    .collect();
    h.extend(
        extra
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
    );
    h
}

struct Run {
    bp: Blueprint,
    vendor: Vendor,
    counter: MemoryCounter,
    revocations: RevocationSet,
}

impl Run {
    fn new(vendor: Vendor) -> Run {
        Run {
            bp: blueprint(vendor),
            vendor,
            counter: MemoryCounter::default(),
            revocations: RevocationSet::default(),
        }
    }

    fn begin(&self, extra: &[(&str, &str)]) -> (Exchange, Step) {
        Exchange::begin(
            &self.bp,
            Arrival {
                headers: &headers(self.vendor, extra),
                end_of_stream: false,
                now_ms: NOW_MS,
                id: "ab".repeat(16),
                revocations: &self.revocations,
                revocations_fresh_at_ms: NOW_MS,
            },
            &self.counter,
        )
    }

    /// Runs a request up to its reservation; returns the body Bridle rewrote, if it did.
    fn reserve(&self, body: &serde_json::Value) -> (Exchange, ReserveRequest, Option<Vec<u8>>) {
        let (mut x, step) = self.begin(&[]);
        assert!(matches!(step, Step::ReadBody), "{step:?}");
        let bytes = body.to_string();
        let mut step = x.on_body(&self.bp, &self.counter, Body::Complete(bytes.as_bytes()));
        let mut rewritten = None;
        if let Step::RewriteBody(b) = step {
            assert!(x.holds_request());
            rewritten = Some(b);
            step = x.on_body_rewritten(&self.bp, Ok(()));
        }
        let Step::Reserve(encoded) = step else {
            panic!("{step:?}")
        };
        (x, serde_json::from_slice(&encoded).unwrap(), rewritten)
    }

    fn granted(&self, x: &mut Exchange, req: &ReserveRequest) {
        let answer =
            json!({ "decision": "granted", "reservation": req.request_id, "replay": false })
                .to_string();
        let step = x.on_reservation(&self.bp, &mut LeaseBook::default(), Ok(answer.as_bytes()));
        assert!(matches!(step, Step::Forward { slot: 0 }), "{step:?}");
    }
}

fn chat(extra: serde_json::Value) -> serde_json::Value {
    let mut b = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Say hello." }] });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn micros(n: i64) -> Usd {
    Usd::from_micros(n).unwrap()
}

const USAGE_CHUNK: &str = r#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":200,"prompt_tokens_details":{"cached_tokens":10}}}"#;

#[test]
fn a_chat_call_reserves_its_bound_and_settles_at_its_usage() {
    let run = Run::new(Vendor::Openai);
    // The tier named, as the price table prices it: nothing to pin (see `llm::request`).
    let body = chat(json!({ "max_completion_tokens": 300, "service_tier": "default" }));
    let (mut x, req, rewritten) = run.reserve(&body);
    assert_eq!(rewritten, None, "nothing to write in");
    let bytes = body.to_string().len() as i64 + 256;
    // (bytes × 0.15 + 300 × 0.60) µ$ per token, rounded up.
    assert_eq!(
        req.amount,
        micros((bytes * 150_000 + 300 * 600_000 + 999_999) / 1_000_000)
    );
    assert!(
        req.detail.starts_with("gpt-4o-mini: at most"),
        "{}",
        req.detail
    );
    run.granted(&mut x, &req);
    assert!(
        x.rewrite()
            .unwrap()
            .removals()
            .any(|h| h == "accept-encoding"),
        "the response must come uncompressed to be read"
    );
    assert!(x.wants_response());
    assert_eq!(
        x.on_response_head(Some(200), || Some(b"text/event-stream".to_vec())),
        ResponseBody::Watch
    );
    assert!(x.watching_response());
    let stream = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"Hi\"}}}}],\"usage\":null}}\n\n{USAGE_CHUNK}\n\ndata: [DONE]\n\n");
    for chunk in stream.as_bytes().chunks(7) {
        x.on_response_chunk(chunk, false);
    }
    x.on_response_chunk(b"", true);
    assert!(!x.watching_response());
    let done = x.finish(Vendor::Openai, Some(200));
    // 20 × 0.15 + 10 × 0.075 + 200 × 0.60 = 3 + 0.75 + 120 µ$, rounded up once.
    let settle = done.settle.unwrap();
    assert_eq!(
        (settle.outcome, settle.amount),
        (SettleOutcome::Commit, Some(micros(124)))
    );
    let a = done.audit;
    assert_eq!(a.cost, Some(micros(124)));
    assert_eq!(a.model.as_deref(), Some("gpt-4o-mini"));
    let u = a.usage.unwrap();
    assert_eq!((u.input, u.cached_input, u.output), (20, 10, 200));
    assert_eq!((a.usage_missing, a.over_reservation), (None, false));
}

#[test]
fn a_stream_is_rewritten_to_report_its_usage_and_bounded() {
    let run = Run::new(Vendor::Openai);
    let (_, req, rewritten) = run.reserve(&chat(json!({ "stream": true })));
    let sent: serde_json::Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["max_completion_tokens"], 500, "the policy's maximum");
    assert!(req.detail.contains("500 output tokens"), "{}", req.detail);
}

#[test]
fn a_stream_cut_short_commits_the_whole_reservation() {
    let run = Run::new(Vendor::Openai);
    let (mut x, req, _) = run.reserve(&chat(json!({ "stream": true, "max_tokens": 50 })));
    run.granted(&mut x, &req);
    let _ = x.on_response_head(Some(200), || Some(b"text/event-stream".to_vec()));
    x.on_response_chunk(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        false,
    );
    // The agent goes away: no end of stream.
    let done = x.finish(Vendor::Openai, Some(200));
    let settle = done.settle.unwrap();
    assert_eq!(
        (settle.outcome, settle.amount),
        (SettleOutcome::Commit, None)
    );
    assert_eq!(done.audit.cost, Some(req.amount));
    assert!(
        done.audit
            .usage_missing
            .as_deref()
            .unwrap()
            .contains("before it reported"),
        "{:?}",
        done.audit.usage_missing
    );
    // A chunk that could not be read spoils what follows, even a usage chunk.
    let (mut x, req, _) = run.reserve(&chat(json!({ "stream": true, "max_tokens": 50 })));
    run.granted(&mut x, &req);
    let _ = x.on_response_head(Some(200), || Some(b"text/event-stream".to_vec()));
    x.on_response_unreadable("status 2".into());
    assert!(!x.watching_response());
    x.on_response_chunk(format!("{USAGE_CHUNK}\n\n").as_bytes(), true);
    let done = x.finish(Vendor::Openai, Some(200));
    assert_eq!(done.settle.unwrap().amount, None);
    assert_eq!(done.audit.usage_missing.as_deref(), Some("status 2"));
}

#[test]
fn usage_above_the_reservation_is_committed_and_flagged() {
    let run = Run::new(Vendor::Openai);
    let (mut x, req, _) = run.reserve(&chat(json!({ "max_tokens": 1 })));
    run.granted(&mut x, &req);
    let _ = x.on_response_head(Some(200), || Some(b"application/json".to_vec()));
    let body =
        json!({ "usage": { "prompt_tokens": 1_000_000, "completion_tokens": 1 } }).to_string();
    x.on_response_chunk(body.as_bytes(), true);
    let done = x.finish(Vendor::Openai, Some(200));
    let amount = done.settle.unwrap().amount.unwrap();
    assert_eq!(amount, micros(150_001));
    assert!(amount > req.amount);
    assert!(done.audit.over_reservation);
}

#[test]
fn a_refusal_from_the_vendor_releases_and_is_not_read() {
    let run = Run::new(Vendor::Openai);
    let (mut x, req, _) = run.reserve(&chat(json!({ "max_tokens": 5 })));
    run.granted(&mut x, &req);
    assert_eq!(
        x.on_response_head(Some(429), || panic!("not read")),
        ResponseBody::Ignore
    );
    let done = x.finish(Vendor::Openai, Some(429));
    assert_eq!(done.settle.unwrap().outcome, SettleOutcome::Release);
    assert_eq!(done.audit.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(done.audit.usage, None);
}

#[test]
fn models_and_maxima_outside_the_policy_are_refused_before_the_ledger() {
    let run = Run::new(Vendor::Openai);
    for (body, reason, status) in [
        (
            chat(json!({ "model": "gpt-4o" })),
            Reason::ModelNotAllowed,
            403,
        ),
        (
            chat(json!({ "max_tokens": 501 })),
            Reason::MaxTokensNotAllowed,
            403,
        ),
        (
            chat(
                json!({ "messages": [{ "role": "user", "content": [{ "type": "input_audio" }] }] }),
            ),
            Reason::CostUndetermined,
            400,
        ),
    ] {
        let (mut x, _) = run.begin(&[]);
        let step = x.on_body(
            &run.bp,
            &run.counter,
            Body::Complete(body.to_string().as_bytes()),
        );
        let Step::Refuse(reply) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (reply.reason, reply.response.status),
            (reason, status),
            "{body}"
        );
        assert!(reply
            .response
            .headers
            .contains(&("x-should-retry", "false".into())));
        let done = x.finish(Vendor::Openai, Some(status));
        assert!(done.settle.is_none());
        assert_eq!(done.audit.reason, reason);
    }
}

#[test]
fn an_anthropic_beta_that_changes_the_bill_is_refused_on_the_headers() {
    let run = Run::new(Vendor::Anthropic);
    let (_, step) = run.begin(&[("anthropic-beta", "context-1m-2025-08-07")]);
    let Step::Refuse(reply) = step else {
        panic!("{step:?}")
    };
    assert_eq!(reply.reason, Reason::CostUndetermined);
    assert!(reply.response.body.contains("context-1m"));
    let (_, step) = run.begin(&[("anthropic-beta", "interleaved-thinking-2025-05-14")]);
    assert!(matches!(step, Step::ReadBody), "{step:?}");
}

#[test]
fn an_anthropic_stream_settles_at_its_usage() {
    let run = Run::new(Vendor::Anthropic);
    let body = json!({ "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
                       "messages": [{ "role": "user", "content": "Say hello." }] });
    let (mut x, req, rewritten) = run.reserve(&body);
    assert_eq!(rewritten, None);
    run.granted(&mut x, &req);
    let _ = x.on_response_head(Some(200), || Some(b"text/event-stream".to_vec()));
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    x.on_response_chunk(stream.as_bytes(), true);
    let done = x.finish(Vendor::Anthropic, Some(200));
    // 20 × 3 + 30 × 15 = 510 µ$.
    assert_eq!(done.settle.unwrap().amount, Some(micros(510)));
}

#[test]
fn a_body_that_cannot_be_rewritten_refuses_and_holds_nothing() {
    let run = Run::new(Vendor::Openai);
    let (mut x, _) = run.begin(&[]);
    let step = x.on_body(
        &run.bp,
        &run.counter,
        Body::Complete(chat(json!({})).to_string().as_bytes()),
    );
    assert!(matches!(step, Step::RewriteBody(_)), "{step:?}");
    let step = x.on_body_rewritten(&run.bp, Err(2));
    let Step::Refuse(reply) = step else {
        panic!("{step:?}")
    };
    assert_eq!(reply.reason, Reason::Internal);
    assert!(x.finish(Vendor::Openai, Some(500)).settle.is_none());
    // Out of order: refused rather than guessed.
    let (mut x, _) = run.begin(&[]);
    let Step::Refuse(reply) = x.on_body_rewritten(&run.bp, Ok(())) else {
        panic!()
    };
    assert_eq!(reply.reason, Reason::Internal);
}
