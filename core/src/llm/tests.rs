//! Quotes and usage readers for each API, end to end through the module's public surface.

use serde_json::{json, Value};

use super::*;

const JSON: Option<&[u8]> = Some(b"application/json");

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn shipped() -> PriceList {
    let table: Vec<PriceEntry> = serde_json::from_value(json!([
        { "model": "gpt-4o-mini", "input": "0.15", "cached_input": "0.075", "output": "0.60" },
        { "model": "gpt-4o-mini-????-??-??", "input": "0.15", "cached_input": "0.075", "output": "0.60" },
        { "model": "gpt-4o", "input": "2.50", "cached_input": "1.25", "output": "10" },
        { "model": "claude-sonnet-4-5", "input": "3", "cached_input": "0.30",
          "cache_write_5m": "3.75", "cache_write_1h": "6", "output": "15" },
    ]))
    .unwrap();
    PriceList::new(&table)
}

fn models(v: Value) -> CompiledModels {
    let m: Models = serde_json::from_value(v).unwrap();
    m.compile()
}

fn policy() -> CompiledModels {
    models(json!({
        "allow": ["gpt-4o-mini*", "claude-sonnet-4-5", "gpt-unpriced"],
        "max_output_tokens": 1000,
    }))
}

fn quote_of(api: TokenApi, body: &Value) -> Result<Quote, CostError> {
    quote(
        api,
        Some(&policy()),
        &shipped(),
        JSON,
        body.to_string().as_bytes(),
    )
}

fn refusal(api: TokenApi, body: Value) -> CostError {
    quote_of(api, &body).unwrap_err()
}

/// What a bound of `input` and `output` tokens costs at `input_price`/`output_price` per
/// million, rounded up: the arithmetic, written out again.
fn expected(input: u64, input_price: u64, output: u64, output_price: u64) -> Usd {
    let per_million =
        u128::from(input) * u128::from(input_price) + u128::from(output) * u128::from(output_price);
    Usd::from_micros(per_million.div_ceil(1_000_000) as i64).unwrap()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Say hello." }],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn a_chat_request_reserves_its_bytes_and_its_output_maximum() {
    let body = chat(json!({ "max_completion_tokens": 300, "n": 2, "service_tier": "default" }));
    let q = quote_of(TokenApi::ChatCompletions, &body).unwrap();
    let bytes = body.to_string().len() as u64;
    assert_eq!(q.input_tokens, bytes + WRAPPER_TOKENS);
    assert_eq!(q.output_tokens, 600, "the maximum, times n");
    // $0.15 and $0.60 per million are 150000 and 600000 µ$ per million tokens.
    assert_eq!(q.reserve, expected(q.input_tokens, 150_000, 600, 600_000));
    assert_eq!(
        (q.model.as_str(), q.stream, q.body.as_ref()),
        ("gpt-4o-mini", false, None)
    );
    assert!(q.detail.starts_with("gpt-4o-mini: at most"), "{}", q.detail);
    // The larger of the two maxima counts.
    let q = quote_of(
        TokenApi::ChatCompletions,
        &chat(json!({ "max_completion_tokens": 10, "max_tokens": 20 })),
    )
    .unwrap();
    assert_eq!(q.output_tokens, 20);
    // A dated snapshot is priced by the glob.
    let q = quote_of(
        TokenApi::ChatCompletions,
        &chat(json!({ "model": "gpt-4o-mini-2024-07-18", "max_tokens": 5 })),
    )
    .unwrap();
    assert_eq!(q.price.model, "gpt-4o-mini-????-??-??");
}

#[test]
fn a_request_without_a_maximum_gets_the_policys_written_in() {
    let q = quote_of(TokenApi::ChatCompletions, &chat(json!({}))).unwrap();
    assert_eq!(q.output_tokens, 1000);
    let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
    assert_eq!(sent["max_completion_tokens"], 1000);
    assert_eq!(sent["messages"], chat(json!({}))["messages"]);
    // Without a policy maximum, the request must name one.
    let open = models(json!({ "allow": ["gpt-4o-mini"] }));
    let e = quote(
        TokenApi::ChatCompletions,
        Some(&open),
        &shipped(),
        JSON,
        chat(json!({})).to_string().as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::CostUndetermined);
    assert!(e.message.contains("max_completion_tokens"), "{}", e.message);
    // Above the policy's maximum: refused, not lowered.
    let e = refusal(
        TokenApi::ChatCompletions,
        chat(json!({ "max_tokens": 1001 })),
    );
    assert_eq!(e.reason, Reason::MaxTokensNotAllowed);
    assert_eq!(e.reason.status(), 403);
}

#[test]
fn openai_calls_are_pinned_to_the_priced_service_tier() {
    for api in [TokenApi::ChatCompletions, TokenApi::Responses] {
        let body = |tier: Option<&str>| {
            let mut b = match api {
                TokenApi::Responses => {
                    json!({ "model": "gpt-4o-mini", "input": "Hi.", "max_output_tokens": 9 })
                }
                _ => chat(json!({ "max_completion_tokens": 9 })),
            };
            if let Some(t) = tier {
                b["service_tier"] = json!(t);
            }
            b
        };
        // Left out or auto: the project's tier, perhaps priority; pinned to default.
        for tier in [None, Some("auto")] {
            let q = quote_of(api, &body(tier)).unwrap();
            let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
            assert_eq!(sent["service_tier"], "default", "{api:?} {tier:?}");
        }
        // Tiers the table prices (or over-prices) go as written.
        for tier in ["default", "flex"] {
            assert_eq!(quote_of(api, &body(Some(tier))).unwrap().body, None);
        }
    }
    // The key spelled with an escape is the key the vendor reads: replaced, not doubled.
    let raw = br#"{"model":"gpt-4o-mini","input":"Hi.","max_output_tokens":9,"service\u005ftier":"auto"}"#;
    let q = quote(TokenApi::Responses, Some(&policy()), &shipped(), JSON, raw).unwrap();
    let sent = String::from_utf8(q.body.unwrap()).unwrap();
    assert!(sent.ends_with(r#","service_tier":"default"}"#), "{sent}");
    assert_eq!(sent.matches("tier").count(), 1, "{sent}");
}

#[test]
fn a_stream_is_made_to_report_its_usage() {
    let q = quote_of(
        TokenApi::ChatCompletions,
        &chat(json!({ "stream": true, "max_tokens": 9 })),
    )
    .unwrap();
    assert!(q.stream);
    let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
    assert_eq!(sent["stream_options"], json!({ "include_usage": true }));
    // Options the agent set are kept; one that already asks needs no rewrite.
    let q = quote_of(
        TokenApi::ChatCompletions,
        &chat(json!({ "stream": true, "max_tokens": 9, "stream_options": { "include_obfuscation": false } })),
    )
    .unwrap();
    let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
    assert_eq!(
        sent["stream_options"],
        json!({ "include_obfuscation": false, "include_usage": true })
    );
    let q = quote_of(
        TokenApi::ChatCompletions,
        &chat(
            json!({ "stream": true, "max_tokens": 9, "service_tier": "flex",
                    "stream_options": { "include_usage": true } }),
        ),
    )
    .unwrap();
    assert_eq!(q.body, None);
}

#[test]
fn models_outside_the_policy_or_the_price_table_are_refused() {
    let e = refusal(
        TokenApi::ChatCompletions,
        chat(json!({ "model": "gpt-4o" })),
    );
    assert_eq!(
        (e.reason, e.reason.status()),
        (Reason::ModelNotAllowed, 403)
    );
    let e = refusal(
        TokenApi::ChatCompletions,
        chat(json!({ "model": "gpt-unpriced" })),
    );
    assert_eq!((e.reason, e.reason.status()), (Reason::ModelUnpriced, 400));
    let e = refusal(TokenApi::ChatCompletions, chat(json!({ "model": 4 })));
    assert_eq!(e.reason, Reason::CostUndetermined);
    // A policy's own price makes a model priced.
    let own = models(json!({
        "allow": ["gpt-unpriced"], "max_output_tokens": 10,
        "prices": [{ "model": "gpt-unpriced", "input": "1", "output": "2" }],
    }));
    let q = quote(
        TokenApi::ChatCompletions,
        Some(&own),
        &shipped(),
        JSON,
        chat(json!({ "model": "gpt-unpriced" }))
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(q.price.output, usd("2"));
    // No models section at all: nothing is priced.
    assert!(quote(
        TokenApi::ChatCompletions,
        None,
        &shipped(),
        JSON,
        chat(json!({})).to_string().as_bytes()
    )
    .is_err());
}

#[test]
fn what_cannot_be_bounded_is_refused() {
    let image = json!([{ "type": "text", "text": "What is this?" },
                       { "type": "image_url", "image_url": { "url": "https://x/y.png" } }]);
    for (body, needle) in [
        (
            chat(json!({ "messages": [{ "role": "user", "content": image }] })),
            "image_url",
        ),
        (chat(json!({ "audio": { "voice": "alloy" } })), "audio"),
        (
            chat(json!({ "modalities": ["text", "audio"] })),
            "modalities",
        ),
        (
            chat(json!({ "prediction": { "type": "content", "content": "x" } })),
            "prediction",
        ),
        (chat(json!({ "web_search_options": {} })), "web search"),
        (chat(json!({ "service_tier": "priority" })), "service_tier"),
        (chat(json!({ "frobnicate": 1 })), "frobnicate"),
        (
            chat(json!({ "tools": [{ "type": "file_search" }] })),
            "file_search",
        ),
        (
            chat(
                json!({ "messages": [{ "role": "user", "content": "x", "audio": { "id": "a" } }] }),
            ),
            "stored audio",
        ),
        (chat(json!({ "n": 129 })), "n must be"),
        (chat(json!({ "max_tokens": 0 })), "max_tokens"),
        (
            chat(json!({ "stream_options": { "include_usage": true } })),
            "streams only",
        ),
        (chat(json!({ "messages": [] })), "at least one"),
    ] {
        let e = refusal(TokenApi::ChatCompletions, body.clone());
        assert_eq!(e.reason, Reason::CostUndetermined, "{body}");
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
    }
    // Only JSON is read, and strictly.
    for (ct, body) in [
        (None, &br#"{"model":"gpt-4o-mini"}"#[..]),
        (Some(&b"text/plain"[..]), br#"{"model":"gpt-4o-mini"}"#),
        (JSON, br#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#),
    ] {
        let e = quote(
            TokenApi::ChatCompletions,
            Some(&policy()),
            &shipped(),
            ct,
            body,
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::BodyUnreadable, "{ct:?}");
    }
}

#[test]
fn responses_requests_must_carry_their_whole_input() {
    let base = |extra: Value| {
        let mut b = json!({ "model": "gpt-4o-mini", "input": "Say hello." });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let q = quote_of(TokenApi::Responses, &base(json!({}))).unwrap();
    let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
    assert_eq!(sent["max_output_tokens"], 1000);
    let items = json!([
        { "role": "user", "content": [{ "type": "input_text", "text": "hi" }] },
        { "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}" },
        { "type": "function_call_output", "call_id": "c1", "output": "42" },
        { "type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA" },
    ]);
    let q = quote_of(
        TokenApi::Responses,
        &base(
            json!({ "input": items, "max_output_tokens": 50, "stream": true,
                    "service_tier": "default",
                      "tools": [{ "type": "function", "name": "f", "parameters": {} }] }),
        ),
    )
    .unwrap();
    assert_eq!((q.output_tokens, q.stream, q.body), (50, true, None));
    for (extra, needle) in [
        (
            json!({ "previous_response_id": "resp_1" }),
            "stored content",
        ),
        (json!({ "conversation": "conv_1" }), "stored content"),
        (json!({ "prompt": { "id": "pmpt_1" } }), "stored content"),
        (json!({ "background": true }), "background"),
        (
            json!({ "tools": [{ "type": "web_search" }] }),
            "built-in tools",
        ),
        (
            json!({ "input": [{ "role": "user", "content": [{ "type": "input_image", "image_url": "https://x" }] }] }),
            "input_image",
        ),
        (
            json!({ "input": [{ "type": "item_reference", "id": "msg_1" }] }),
            "item_reference",
        ),
        (json!({ "input": [{ "id": "x" }] }), "no type"),
    ] {
        let e = refusal(TokenApi::Responses, base(extra.clone()));
        assert_eq!(e.reason, Reason::CostUndetermined, "{extra}");
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
    }
}

fn message(extra: Value) -> Value {
    let mut b = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 100,
        "messages": [{ "role": "user", "content": "Say hello." }],
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn anthropic_input_is_priced_at_the_cache_write_it_may_become() {
    let plain = quote_of(TokenApi::Messages, &message(json!({}))).unwrap();
    assert_eq!(plain.class, InputClass::Fresh);
    assert_eq!(
        plain.reserve,
        expected(plain.input_tokens, 3_000_000, 100, 15_000_000)
    );
    let system = json!([{ "type": "text", "text": "Long context", "cache_control": { "type": "ephemeral" } }]);
    let q = quote_of(TokenApi::Messages, &message(json!({ "system": system }))).unwrap();
    assert_eq!(q.class, InputClass::CacheWrites { one_hour: false });
    assert_eq!(
        q.reserve,
        expected(q.input_tokens, 3_750_000, 100, 15_000_000)
    );
    let system = json!([{ "type": "text", "text": "x", "cache_control": { "type": "ephemeral", "ttl": "1h" } }]);
    let q = quote_of(TokenApi::Messages, &message(json!({ "system": system }))).unwrap();
    assert_eq!(q.class, InputClass::CacheWrites { one_hour: true });
    assert_eq!(
        q.reserve,
        expected(q.input_tokens, 6_000_000, 100, 15_000_000)
    );
}

#[test]
fn anthropic_tools_and_thinking_widen_the_bound() {
    let tools = json!([{ "name": "get_weather", "input_schema": { "type": "object" } }]);
    let q = quote_of(TokenApi::Messages, &message(json!({ "tools": tools }))).unwrap();
    let bytes = message(json!({ "tools": tools })).to_string().len() as u64;
    assert_eq!(
        q.input_tokens,
        bytes + WRAPPER_TOKENS + 1024,
        "the tool system prompt"
    );
    // Interleaved thinking may exceed max_tokens up to its budget.
    let q = quote_of(
        TokenApi::Messages,
        &message(json!({ "thinking": { "type": "enabled", "budget_tokens": 800 } })),
    )
    .unwrap();
    assert_eq!(q.output_tokens, 800);
    let e = refusal(
        TokenApi::Messages,
        message(json!({ "thinking": { "type": "enabled", "budget_tokens": 1001 } })),
    );
    assert_eq!(e.reason, Reason::MaxTokensNotAllowed);
    // No max_tokens: the policy's is written in.
    let mut body = message(json!({}));
    body.as_object_mut().unwrap().remove("max_tokens");
    let q = quote_of(TokenApi::Messages, &body).unwrap();
    let sent: Value = serde_json::from_slice(q.body.as_ref().unwrap()).unwrap();
    assert_eq!(sent["max_tokens"], 1000);
    for (extra, needle) in [
        (
            json!({ "tools": [{ "type": "web_search_20250305", "name": "web_search" }] }),
            "web_search",
        ),
        (
            json!({ "tools": [{ "type": "bash_20250124", "name": "bash" }] }),
            "bash",
        ),
        (json!({ "container": "c" }), "code execution"),
        (json!({ "mcp_servers": [] }), "MCP"),
        (
            json!({ "messages": [{ "role": "user", "content": [{ "type": "image", "source": { "type": "url", "url": "https://x" } }] }] }),
            "\"image\"",
        ),
        (
            json!({ "messages": [{ "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "t", "content": [{ "type": "document" }] }] }] }),
            "document",
        ),
        (
            json!({ "thinking": { "type": "enabled" } }),
            "budget_tokens",
        ),
        (json!({ "service_tier": "priority" }), "service_tier"),
    ] {
        let e = refusal(TokenApi::Messages, message(extra.clone()));
        assert_eq!(e.reason, Reason::CostUndetermined, "{extra}");
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
    }
}

#[test]
fn anthropic_betas_that_change_the_bill_are_refused() {
    let h = |v: &str| vec![("anthropic-beta".to_string(), v.as_bytes().to_vec())];
    assert!(TokenApi::Messages
        .check_headers(&h(
            "interleaved-thinking-2025-05-14, token-efficient-tools-2025-02-19"
        ))
        .is_ok());
    let e = TokenApi::Messages
        .check_headers(&h("interleaved-thinking-2025-05-14,context-1m-2025-08-07"))
        .unwrap_err();
    assert!(e.message.contains("context-1m"), "{}", e.message);
    assert!(TokenApi::ChatCompletions
        .check_headers(&h("anything"))
        .is_ok());
}

fn read(
    q: &Quote,
    content_type: &[u8],
    chunks: &[&[u8]],
    complete: bool,
) -> Result<TokenUsage, Unread> {
    let mut r = q.reader(Some(content_type));
    for c in chunks {
        r.feed(c);
    }
    r.finish(complete)
}

const SSE: &[u8] = b"text/event-stream; charset=utf-8";

#[test]
fn a_chat_stream_settles_from_its_usage_chunk() {
    let q = quote_of(TokenApi::ChatCompletions, &chat(json!({ "stream": true }))).unwrap();
    let stream: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n\
data: [DONE]\n\n";
    for i in 0..stream.len() {
        let (a, b) = stream.split_at(i);
        let u = read(&q, SSE, &[a, b], true).unwrap();
        assert_eq!((u.input, u.output), (19, 10), "split at {i}");
    }
    // Cut before the usage chunk: nothing to settle from.
    let cut = &stream[..stream.len() / 3];
    assert!(read(&q, SSE, &[cut], false).is_err());
    let e = read(
        &q,
        SSE,
        &[b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"],
        true,
    )
    .unwrap_err();
    assert!(e.0.contains("error"), "{e:?}");
    // The same API answering JSON.
    let body = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
    let u = read(&q, b"application/json", &[&body[..9], &body[9..]], true).unwrap();
    assert_eq!((u.input, u.output), (5, 7));
    assert!(read(&q, b"application/json", &[&body[..9]], false).is_err());
}

#[test]
fn an_anthropic_stream_is_complete_at_message_stop() {
    let q = quote_of(TokenApi::Messages, &message(json!({ "stream": true }))).unwrap();
    let stream: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let u = read(&q, SSE, &[stream], true).unwrap();
    assert_eq!((u.input, u.cached_input, u.output), (25, 100, 15));
    let before_stop = stream.len() - 50;
    assert!(read(&q, SSE, &[&stream[..before_stop]], false).is_err());
    let err =
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
    assert!(read(&q, SSE, &[&stream[..200], err], true).is_err());
}

#[test]
fn a_responses_stream_settles_from_its_last_event() {
    let body = json!({ "model": "gpt-4o-mini", "input": "hi", "stream": true });
    let q = quote_of(TokenApi::Responses, &body).unwrap();
    let done = json!({ "type": "response.completed", "response": { "id": "r", "status": "completed",
        "usage": { "input_tokens": 30, "input_tokens_details": { "cached_tokens": 10 },
                   "output_tokens": 8, "output_tokens_details": { "reasoning_tokens": 3 } } } });
    let stream = format!(
        "event: response.created\ndata: {{\"type\":\"response.created\"}}\n\n\
         event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}}\n\n\
         event: response.completed\ndata: {done}\n\n"
    );
    let u = read(&q, SSE, &[stream.as_bytes()], true).unwrap();
    assert_eq!(
        (u.input, u.cached_input, u.output, u.reasoning),
        (20, 10, 8, 3)
    );
    assert!(read(&q, SSE, &[&stream.as_bytes()[..120]], false).is_err());
}
