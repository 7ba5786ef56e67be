//! Fixtures for the LLM targets (`sse`, `usage`): a policy's `models` and the shipped price
//! tables, the APIs a selector byte picks, and seeds as the vendors send them.

use bridle_core::llm::prices::Found;
use bridle_core::llm::{CompiledModels, Models, PriceEntry, PriceList, TokenApi, TokenUsage};
use bridle_core::vendor::Vendor;
use serde_json::json;

use crate::{shipped_prices, Seed};

/// The API a selector byte picks.
pub fn api(selector: u8) -> TokenApi {
    match selector % 3 {
        0 => TokenApi::ChatCompletions,
        1 => TokenApi::Responses,
        _ => TokenApi::Messages,
    }
}

fn selector(api: TokenApi) -> u8 {
    match api {
        TokenApi::ChatCompletions => 0,
        TokenApi::Responses => 1,
        TokenApi::Messages => 2,
    }
}

/// A policy that allows every model and writes in a maximum.
pub fn models() -> CompiledModels {
    let m: Models = serde_json::from_value(json!({ "allow": ["*"], "max_output_tokens": 4096 }))
        .expect("the fuzz models parse");
    m.compile()
}

/// The shipped price table of the API's vendor.
pub fn prices(api: TokenApi) -> PriceList {
    PriceList::new(&shipped_prices(api.vendor()))
}

/// A model the shipped table prices, for the API's vendor: usage read is priced at it.
pub fn flagship(api: TokenApi) -> PriceEntry {
    let model = match api.vendor() {
        Vendor::Anthropic => "claude-sonnet-4-5",
        _ => "gpt-4o-mini",
    };
    match prices(api).find(model) {
        Found::Priced(e) => e.clone(),
        other => panic!("{model} is not priced: {other:?}"),
    }
}

/// The price of a usage, if any, is within the limit, and never less than a smaller usage's.
pub fn check_priced(entry: &PriceEntry, u: &TokenUsage) {
    let Some(cost) = entry.cost(u) else { return };
    assert!(cost.micros() >= 0 && cost.micros() <= 1_000_000_000 * 1_000_000, "{cost}");
    let less = TokenUsage {
        output: u.output / 2,
        ..*u
    };
    assert!(entry.cost(&less).is_some_and(|c| c <= cost), "{u:?}");
}

const CHAT_STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":37,\"completion_tokens\":5,\"total_tokens\":42,\"prompt_tokens_details\":{\"cached_tokens\":18,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0}}}\n\n\
data: [DONE]\n\n";

const RESPONSES_STREAM: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":\"completed\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":69,\"output_tokens_details\":{\"reasoning_tokens\":64}}}}\n\n";

const MESSAGES_STREAM: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":30,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":30},\"output_tokens\":1}}}\r\n\r\n\
event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

pub fn seeds(out: &mut Vec<Seed>) {
    let mut add = |target: &'static str, name: &str, sel: u8, body: &str| {
        let mut bytes = vec![sel];
        bytes.extend_from_slice(body.as_bytes());
        out.push(Seed {
            target,
            name: name.into(),
            bytes,
        })
    };
    use TokenApi::*;
    add("sse", "chat.sse", selector(ChatCompletions), CHAT_STREAM);
    add("sse", "chat-split.sse", selector(ChatCompletions) | 0x30, CHAT_STREAM);
    add("sse", "responses.sse", selector(Responses), RESPONSES_STREAM);
    add("sse", "messages.sse", selector(Messages) | 0x10, MESSAGES_STREAM);
    add(
        "sse",
        "bom-and-comments.sse",
        selector(Messages),
        "\u{feff}: hello\n\nevent: message_start\ndata: {\"type\":\"message_start\",\n\n",
    );
    // usage: selector 0-2 a JSON response of that API, 3-5 a request to it.
    add(
        "usage",
        "chat-response.json",
        selector(ChatCompletions),
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"prompt_tokens_details":{"cached_tokens":1920},"completion_tokens_details":{"reasoning_tokens":192}}}"#,
    );
    add(
        "usage",
        "responses-response.json",
        selector(Responses),
        r#"{"id":"r","status":"incomplete","usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":0},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":40}}}"#,
    );
    add(
        "usage",
        "messages-response.json",
        selector(Messages),
        r#"{"id":"m","usage":{"input_tokens":25,"cache_creation_input_tokens":3000,"cache_read_input_tokens":12000,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":503}}"#,
    );
    add(
        "usage",
        "chat-request.json",
        3 + selector(ChatCompletions),
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Say hello."}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"n":2}"#,
    );
    add(
        "usage",
        "chat-request-image.json",
        3 + selector(ChatCompletions),
        r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x"}}]}]}"#,
    );
    add(
        "usage",
        "responses-request.json",
        3 + selector(Responses),
        r#"{"model":"o4-mini","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]},{"type":"reasoning","id":"rs","summary":[],"encrypted_content":"gAAA"}],"max_output_tokens":100}"#,
    );
    add(
        "usage",
        "messages-request.json",
        3 + selector(Messages),
        r#"{"model":"claude-sonnet-4-5","max_tokens":100,"thinking":{"type":"enabled","budget_tokens":64},"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}],"messages":[{"role":"user","content":"hi"}]}"#,
    );
}
