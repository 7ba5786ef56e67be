//! OpenAI Responses (`POST /v1/responses`): what a request may hold, and where its usage is.
//!
//! Output (reasoning included) is bounded by `max_output_tokens`. The request's input must be
//! all there is: `previous_response_id`, `conversation` and stored `prompt`s make the vendor
//! add content Bridle never sees, and are refused. A stream's usage is in its last event,
//! `response.completed` (or `response.incomplete` / `response.failed`).

use serde_json::{Map, Value};

use crate::cost::CostError;
use crate::llm::prices::InputClass;
use crate::llm::request::{
    array, as_object, flag, kind, model, only_keys, openai_priced_tier, refuse, tokens,
    unpriced_content, Facts,
};
use crate::llm::response::Progress;
use crate::llm::usage::{self, TokenUsage, UsageError};

const FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_logprobs",
    "metadata",
    "user",
    "store",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "truncation",
    "include",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "background",
];

const STORED: &str =
    "the vendor adds stored content to the input, which Bridle cannot see to bound";

const REFUSED: &[(&str, &str)] = &[
    ("previous_response_id", STORED),
    ("conversation", STORED),
    ("prompt", STORED),
];

/// Input items priced as text. Reasoning items carry the model's earlier reasoning, encrypted:
/// their ciphertext is counted like text, at least one byte per token.
const ITEMS: &[&str] = &[
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "reasoning",
];

pub(crate) fn read(obj: &Map<String, Value>) -> Result<Facts, CostError> {
    only_keys(obj, "the request", FIELDS, REFUSED)?;
    let model = model(obj)?;
    if flag(obj, "background")? {
        return Err(refuse(
            "background responses finish after the call returns, so their usage cannot be \
             settled: leave background out",
        ));
    }
    match obj.get("input") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"))?;
            }
        }
        Some(_) => return Err(refuse("input must be text or a list of items")),
    }
    for (i, tool) in array(obj, "tools")?.iter().enumerate() {
        let at = format!("tools[{i}]");
        match kind(as_object(tool, &at)?, &at)? {
            Some("function" | "custom") => {}
            other => {
                return Err(refuse(format!(
                    "{at} is a {} tool: the vendor bills built-in tools apart from tokens; \
                     Bridle prices function and custom tools only",
                    other.unwrap_or("typeless")
                )))
            }
        }
    }
    let tier = openai_priced_tier(obj)?;
    let stream = flag(obj, "stream")?;
    if let Some(o) = obj.get("stream_options").filter(|v| !v.is_null()) {
        only_keys(
            as_object(o, "stream_options")?,
            "stream_options",
            &["include_obfuscation"],
            &[],
        )?;
    }
    Ok(Facts {
        model,
        max_output: tokens(obj, "max_output_tokens")?,
        max_key: "max_output_tokens",
        n: 1,
        output_floor: 0,
        hidden_input: 0,
        class: InputClass::Fresh,
        stream,
        rewrites: tier.into_iter().collect(),
    })
}

fn input_item(item: &Value, at: &str) -> Result<(), CostError> {
    let obj = as_object(item, at)?;
    // A message may leave out its type.
    let kind = match kind(obj, at)? {
        Some(k) => k,
        None if obj.contains_key("role") => "message",
        None => return Err(refuse(format!("{at} has no type"))),
    };
    if !ITEMS.contains(&kind) {
        return Err(refuse(format!(
            "{at} is a {kind} item: Bridle prices messages, function and custom tool calls \
             and their outputs, and reasoning only"
        )));
    }
    let parts_at = |key: &str| format!("{at}.{key}");
    for key in ["content", "output"] {
        match obj.get(key) {
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let at = format!("{}[{j}]", parts_at(key));
                    let part = as_object(part, &at)?;
                    match crate::llm::request::kind(part, &at)? {
                        Some("input_text" | "output_text" | "refusal" | "text") => {}
                        Some(other) => return Err(unpriced_content(&at, other)),
                        None => return Err(refuse(format!("{at} has no type"))),
                    }
                }
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(refuse(format!("{} must be text or a list", parts_at(key)))),
        }
    }
    Ok(())
}

/// A whole (non-streamed) response's usage.
pub(crate) fn body_usage(response: &Value) -> Result<TokenUsage, UsageError> {
    usage::openai_responses(
        response
            .get("usage")
            .ok_or_else(|| UsageError("the response has no usage".into()))?,
    )
}

/// The final events carry the whole response, usage included.
pub(crate) fn wants(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed" | "error" | "message"
    )
}

pub(crate) fn on_event(progress: &mut Progress, data: &str) {
    let Ok(event) = serde_json::from_str::<Value>(data) else {
        progress.problem("a stream event is not JSON");
        return;
    };
    match event.get("type").and_then(Value::as_str) {
        Some("response.completed" | "response.incomplete" | "response.failed") => {
            match event.get("response") {
                Some(r) => progress.complete(body_usage(r)),
                None => progress.problem("the final event has no response"),
            }
        }
        Some("error") => progress.problem("the stream reported an error"),
        _ => {}
    }
}
