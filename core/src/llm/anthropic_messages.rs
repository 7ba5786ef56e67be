//! Anthropic Messages (`POST /v1/messages`): what a request may hold, and where its usage is.
//!
//! Output (thinking included) is bounded by `max_tokens`, or by the thinking budget when
//! interleaved thinking lets it exceed `max_tokens`. Input is priced at the dearest class it
//! may turn into: a request that marks `cache_control` breakpoints may write its tokens to the
//! five-minute cache (1.25× input) or, with `ttl: "1h"`, the one-hour cache (2×). Tools add a
//! system prompt of a few hundred tokens that is not in the request; Anthropic-defined and
//! server tools (web search, code execution, computer use) are billed apart and refused.
//!
//! A stream reports input usage in `message_start` and cumulative output in `message_delta`;
//! its count is complete at `message_stop`.

use serde_json::{Map, Value};

use crate::cost::CostError;
use crate::llm::prices::InputClass;
use crate::llm::request::{
    array, as_object, flag, kind, model, one_of, only_keys, refuse, tokens, unpriced_content, Facts,
};
use crate::llm::response::Progress;
use crate::llm::usage::{AnthropicCounts, TokenUsage, UsageError};

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];

const REFUSED: &[(&str, &str)] = &[
    ("container", "code execution is billed apart from tokens"),
    (
        "mcp_servers",
        "remote MCP tools add content Bridle cannot see to bound",
    ),
    (
        "context_management",
        "context editing changes the input after Bridle has bounded it",
    ),
];

/// Content blocks priced as text. Thinking blocks carry earlier reasoning, signed or
/// encrypted: their bytes are counted like text, at least one byte per token.
const BLOCKS: &[&str] = &[
    "text",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];

/// The tool-use system prompt, at most 530 tokens on Anthropic's published list (Claude 3
/// Opus, tool choice `auto`); bounded with room to spare.
const TOOL_PROMPT_TOKENS: u64 = 1024;

/// `anthropic-beta` features that change nothing Bridle prices, or only what it bounds.
const BETAS: &[&str] = &[
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "token-efficient-tools-2025-02-19",
    "extended-cache-ttl-2025-04-11",
    "prompt-caching-2024-07-31",
    "output-128k-2025-02-19",
];

/// Refuses a request whose `anthropic-beta` header turns on a feature that could bill beyond
/// the price table (a million-token context is billed at a higher rate, for one).
pub(crate) fn check_headers(headers: &[(String, Vec<u8>)]) -> Result<(), CostError> {
    for (name, value) in headers {
        if name != "anthropic-beta" {
            continue;
        }
        let value = String::from_utf8_lossy(value);
        for beta in value.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            if !BETAS.contains(&beta) {
                return Err(refuse(format!(
                    "anthropic-beta {} may bill beyond the price table; Bridle allows {}",
                    crate::body::shown(beta),
                    BETAS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

pub(crate) fn read(obj: &Map<String, Value>) -> Result<Facts, CostError> {
    only_keys(obj, "the request", FIELDS, REFUSED)?;
    let model = model(obj)?;
    let messages = array(obj, "messages")?;
    if messages.is_empty() {
        return Err(refuse("messages must list at least one message"));
    }
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = as_object(m, &at)?;
        only_keys(m, &at, &["role", "content"], &[])?;
        blocks(m.get("content"), &format!("{at}.content"))?;
    }
    blocks(obj.get("system"), "system")?;
    let tools = array(obj, "tools")?;
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        match kind(as_object(tool, &at)?, &at)? {
            None | Some("custom") => {}
            Some(other) => {
                return Err(refuse(format!(
                    "{at} is Anthropic's {} tool: it is billed apart from tokens or adds a \
                     system prompt Bridle does not bound; Bridle prices custom tools only",
                    crate::body::shown(other)
                )))
            }
        }
    }
    let output_floor = match obj.get("thinking") {
        None | Some(Value::Null) => 0,
        Some(Value::Object(t)) => match t.get("type").and_then(Value::as_str) {
            Some("disabled") => 0,
            Some("enabled") => tokens(t, "budget_tokens")?
                .ok_or_else(|| refuse("thinking.budget_tokens must be a positive whole number"))?,
            _ => return Err(refuse("thinking.type must be enabled or disabled")),
        },
        Some(_) => return Err(refuse("thinking must be an object")),
    };
    one_of(
        obj,
        "service_tier",
        &["auto", "standard_only"],
        "other tiers are billed apart",
    )?;
    let mut ttls = Vec::new();
    obj.values().for_each(|v| cache_ttls(v, &mut ttls));
    let class = if ttls.is_empty() {
        InputClass::Fresh
    } else {
        InputClass::CacheWrites {
            one_hour: ttls.iter().any(|t| t.as_deref() != Some("5m")),
        }
    };
    Ok(Facts {
        model,
        max_output: tokens(obj, "max_tokens")?,
        max_key: "max_tokens",
        n: 1,
        output_floor,
        hidden_input: if tools.is_empty() {
            0
        } else {
            TOOL_PROMPT_TOKENS
        },
        class,
        stream: flag(obj, "stream")?,
        rewrites: Vec::new(),
    })
}

/// Checks content that is text or a list of blocks.
fn blocks(content: Option<&Value>, at: &str) -> Result<(), CostError> {
    let list = match content {
        None | Some(Value::Null) | Some(Value::String(_)) => return Ok(()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(refuse(format!("{at} must be text or a list of blocks"))),
    };
    for (j, block) in list.iter().enumerate() {
        let at = format!("{at}[{j}]");
        let obj = as_object(block, &at)?;
        match kind(obj, &at)? {
            Some(k) if BLOCKS.contains(&k) => {
                if k == "tool_result" {
                    blocks(obj.get("content"), &format!("{at}.content"))?;
                }
            }
            Some(other) => return Err(unpriced_content(&at, other)),
            None => return Err(refuse(format!("{at} has no type"))),
        }
    }
    Ok(())
}

/// The `ttl` of every `cache_control` in the request (`None`: the default, five minutes, or
/// a value Bridle does not know, which counts as the dearer hour).
fn cache_ttls(v: &Value, out: &mut Vec<Option<String>>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "cache_control" && !child.is_null() {
                    let ttl = child.get("ttl");
                    out.push(match ttl {
                        None | Some(Value::Null) => Some("5m".into()),
                        Some(Value::String(s)) if s == "5m" || s == "1h" => Some(s.clone()),
                        Some(_) => None,
                    });
                } else {
                    cache_ttls(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| cache_ttls(i, out)),
        _ => {}
    }
}

/// A whole (non-streamed) response's usage.
pub(crate) fn body_usage(response: &Value, one_hour: bool) -> Result<TokenUsage, UsageError> {
    AnthropicCounts::read(
        response
            .get("usage")
            .ok_or_else(|| UsageError("the response has no usage".into()))?,
    )?
    .usage(one_hour)
}

pub(crate) fn wants(kind: &str) -> bool {
    matches!(
        kind,
        "message_start" | "message_delta" | "message_stop" | "error" | "message"
    )
}

pub(crate) fn on_event(progress: &mut Progress, data: &str, one_hour: bool) {
    let Ok(event) = serde_json::from_str::<Value>(data) else {
        progress.problem("a stream event is not JSON");
        return;
    };
    let usage = match event.get("type").and_then(Value::as_str) {
        Some("message_start") => event.get("message").and_then(|m| m.get("usage")),
        Some("message_delta") => event.get("usage"),
        Some("message_stop") => {
            let counts = progress.anthropic;
            progress.complete(counts.usage(one_hour));
            return;
        }
        Some("error") => {
            progress.problem("the stream reported an error");
            return;
        }
        _ => return,
    };
    match usage.map(AnthropicCounts::read) {
        Some(Ok(counts)) => progress.anthropic = progress.anthropic.merge(counts),
        Some(Err(e)) => progress.problem(&e.0),
        None => progress.problem("a message event has no usage"),
    }
}
