//! A call priced by tokens through the adapter against the fake host: the body Bridle writes
//! into replaces the agent's (with its length), the response streams through chunk by chunk,
//! and the settle carries the price of the usage the stream reported.

use std::rc::Rc;

use bridle_core::ledger_api::{ReserveRequest, SettleOutcome};
use bridle_core::token::{Claims, SigningKey};
use bridle_core::vendor::Vendor;
use proxy_wasm::types::Action;

use crate::fake_host::FakeHost;
use crate::host::{BufferType, MapType};
use crate::plugin::Plugin;
use crate::reports::Item;
use crate::stream::Stream;
use crate::ticker::Ticker;

const NOW: u64 = 1_700_000_100;
const SECRET: &str = "sk-test-openai-secret";

fn signing_key() -> SigningKey {
    SigningKey::from_seed("k1", &[5u8; 32]).unwrap()
}

/// What the proxy holds: the public key alone.
fn keyring_spec() -> String {
    signing_key().public_entry()
}

fn plugin(h: &FakeHost) -> Rc<Plugin> {
    let config = serde_json::json!({
        "vendor": "openai",
        "policies": [{
            "name": "chat", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": "/v1/chat/completions", "cost": { "tokens": "chat_completions" } }],
            "models": { "allow": ["gpt-4o-mini"], "max_output_tokens": 100 },
        }],
        "prices": [{ "model": "gpt-4o-mini", "input": "0.15", "cached_input": "0.075", "output": "0.60" }],
        "ledger": { "cluster": "bridle_ledger", "authority": "ledger", "timeout_ms": 400 },
    });
    for (k, v) in [
        ("BRIDLE_PUBLIC_KEYS", keyring_spec()),
        ("OPENAI_API_KEY", SECRET.to_string()),
        ("BRIDLE_ENFORCER_KEY", "enf_test_key_0123456789".to_string()),
    ] {
        h.env.borrow_mut().insert(k.into(), v);
    }
    let p = Rc::new(Plugin::configure(h, Some(config.to_string().as_bytes())).unwrap());
    h.shared.borrow_mut().insert(
        "bridle.bridle_ledger.revocations.fresh_ms".into(),
        ((NOW * 1000).to_le_bytes().to_vec(), 1),
    );
    Ticker::default().on_tick(h, &p);
    h.callouts.borrow_mut().clear();
    p
}

fn token() -> String {
    signing_key()
        .mint(&Claims {
            v: 1,
            id: "tok_llm".into(),
            policy: "chat".into(),
            vendor: Vendor::Openai,
            iat: NOW - 10,
            exp: NOW + 600,
            label: "agent/1".into(),
            endpoints: None,
            merchants: None,
            caps: Default::default(),
        })
        .unwrap()
}

#[test]
fn a_stream_is_rewritten_reserved_passed_through_and_settled_at_its_usage() {
    let h = FakeHost::default();
    h.now_secs.set(NOW);
    let p = plugin(&h);
    let body = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#;
    let auth = format!("Bearer {}", token());
    let length = body.len().to_string();
    h.set_map(
        MapType::RequestHeaders,
        &[
            (":method", b"POST"),
            (":path", b"/v1/chat/completions"),
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/json"),
            ("content-length", length.as_bytes()),
            ("accept-encoding", b"gzip, deflate"),
        ],
    );
    h.set_buffer(BufferType::RequestBody, body);
    let mut s = Stream::new(Some(p.clone()));
    assert_eq!(s.on_request_headers(&h, false), Action::Pause);
    assert_eq!(s.on_request_body(&h, body.len(), true), Action::Pause);

    // Bridle wrote the policy's maximum and the usage option into the body, and its length.
    let sent = h.buffers.borrow()[&(BufferType::RequestBody as u32)].clone();
    let sent_json: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(sent_json["max_completion_tokens"], 100);
    assert_eq!(sent_json["stream_options"]["include_usage"], true);
    assert_eq!(
        h.header(MapType::RequestHeaders, "content-length"),
        Some(sent.len().to_string())
    );
    let call = h.callouts.borrow().last().cloned().unwrap();
    let req: ReserveRequest = serde_json::from_slice(&call.body).unwrap();
    // The original body's bytes bound the input; 100 tokens bound the output.
    let bound = (body.len() as i64 + 256) * 150_000 + 100 * 600_000;
    assert_eq!(req.amount.micros(), (bound + 999_999) / 1_000_000);

    let granted =
        serde_json::json!({"decision": "granted", "reservation": req.request_id, "replay": false})
            .to_string();
    h.set_map(MapType::CallResponseHeaders, &[(":status", b"200")]);
    h.set_buffer(BufferType::CallResponseBody, granted.as_bytes());
    s.on_call_response(&h, h.callouts.borrow().len() as u32, granted.len());
    assert_eq!(h.resumed.get(), 1);
    assert_eq!(
        h.header(MapType::RequestHeaders, "accept-encoding"),
        None,
        "the usage must arrive uncompressed"
    );
    assert_eq!(
        h.header(MapType::RequestHeaders, "authorization"),
        Some(format!("Bearer {SECRET}"))
    );

    h.set_map(
        MapType::ResponseHeaders,
        &[(":status", b"200"), ("content-type", b"text/event-stream")],
    );
    assert_eq!(s.on_response_headers(&h, false), Action::Continue);
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":40}}\n\ndata: [DONE]\n\n";
    let chunks: Vec<&[u8]> = stream.as_bytes().chunks(16).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        h.set_buffer(BufferType::ResponseBody, chunk);
        assert_eq!(
            s.on_response_body(&h, chunk.len(), i + 1 == chunks.len()),
            Action::Continue,
            "every chunk passes on as it arrives"
        );
    }
    s.on_log(&h);
    let buffer = p.ledger.as_ref().unwrap().reports.borrow_mut().take();
    let items: Vec<Item> = buffer.iter().map(|e| e.decode().unwrap()).collect();
    let Item::Settle(settle) = &items[0] else {
        panic!("{items:?}")
    };
    // 12 × 0.15 + 40 × 0.60 = 25.8 µ$, rounded up.
    assert_eq!(
        (settle.outcome, settle.amount.map(|a| a.micros())),
        (SettleOutcome::Commit, Some(26))
    );
    let Item::Audit(audit) = &items[1] else {
        panic!("{items:?}")
    };
    assert_eq!(audit.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(audit.usage.map(|u| (u.input, u.output)), Some((12, 40)));
    assert_eq!(h.counter("bridle.llm.openai.usage_read"), 1);
    assert_eq!(h.counter("bridle.llm.openai.usage_missing"), 0);
}
