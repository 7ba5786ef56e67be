//! OpenAI Chat Completions (`POST /v1/chat/completions`): what a request may hold, and where
//! its usage is.
//!
//! Output is bounded by `max_completion_tokens` (or the legacy `max_tokens`; the larger, if
//! both) times `n`. A stream reports usage only when `stream_options.include_usage` is true:
//! Bridle sets it, and reads the usage chunk that then comes before `data: [DONE]`.

use serde_json::{json, Map, Value};

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
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "stop",
    "user",
    "metadata",
    "store",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "reasoning_effort",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
    "service_tier",
    "modalities",
];

const REFUSED: &[(&str, &str)] = &[
    (
        "audio",
        "audio output is priced per audio token, which Bridle does not price",
    ),
    (
        "prediction",
        "rejected predicted tokens are billed beyond the output maximum",
    ),
    (
        "web_search_options",
        "web search is billed per call on top of tokens",
    ),
];

const MESSAGE_FIELDS: &[&str] = &[
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "refusal",
];

/// The most completions one request may ask for (the API's own limit).
const MAX_N: u64 = 128;

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
        only_keys(
            m,
            &at,
            MESSAGE_FIELDS,
            &[(
                "audio",
                "it names stored audio, which Bridle does not price",
            )],
        )?;
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let at = format!("{at}.content[{j}]");
                    let part = as_object(part, &at)?;
                    match kind(part, &at)? {
                        Some("text" | "refusal") => {}
                        Some(other) => return Err(unpriced_content(&at, other)),
                        None => return Err(refuse(format!("{at} has no type"))),
                    }
                }
            }
            Some(_) => return Err(refuse(format!("{at}.content must be text or a list"))),
        }
    }
    for (i, tool) in array(obj, "tools")?.iter().enumerate() {
        let at = format!("tools[{i}]");
        match kind(as_object(tool, &at)?, &at)? {
            Some("function" | "custom") => {}
            other => {
                return Err(refuse(format!(
                    "{at} is a {} tool: Bridle prices function and custom tools only",
                    other.unwrap_or("typeless")
                )))
            }
        }
    }
    match obj.get("modalities") {
        None | Some(Value::Null) => {}
        Some(v) if *v == json!(["text"]) => {}
        Some(_) => {
            return Err(refuse(
                "modalities may only be [\"text\"]: Bridle does not price audio output",
            ))
        }
    }
    let tier = openai_priced_tier(obj)?;
    let n = match tokens(obj, "n")? {
        Some(n) if n > MAX_N => return Err(refuse(format!("n must be at most {MAX_N}"))),
        Some(n) => n,
        None => 1,
    };
    let max_output = match (
        tokens(obj, "max_completion_tokens")?,
        tokens(obj, "max_tokens")?,
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let stream = flag(obj, "stream")?;
    let mut rewrites: Vec<_> = tier.into_iter().collect();
    if stream {
        if let Some(options) = include_usage(obj)? {
            rewrites.push(("stream_options", options));
        }
    } else if obj.get("stream_options").is_some_and(|v| !v.is_null()) {
        return Err(refuse("stream_options applies to streams only"));
    }
    Ok(Facts {
        model,
        max_output,
        max_key: "max_completion_tokens",
        n,
        output_floor: 0,
        hidden_input: 0,
        class: InputClass::Fresh,
        stream,
        rewrites,
    })
}

/// The `stream_options` that makes a stream report its usage, if the request's does not.
fn include_usage(obj: &Map<String, Value>) -> Result<Option<Value>, CostError> {
    let mut options = match obj.get("stream_options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => {
            only_keys(
                o,
                "stream_options",
                &["include_usage", "include_obfuscation"],
                &[],
            )?;
            o.clone()
        }
        Some(_) => return Err(refuse("stream_options must be an object")),
    };
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return Ok(None);
    }
    options.insert("include_usage".into(), Value::Bool(true));
    Ok(Some(Value::Object(options)))
}

/// A whole (non-streamed) response's usage.
pub(crate) fn body_usage(response: &Value) -> Result<TokenUsage, UsageError> {
    usage::openai_chat(
        response
            .get("usage")
            .ok_or_else(|| UsageError("the response has no usage".into()))?,
    )
}

/// One streamed chunk: the usage chunk (its `choices` empty) completes the count.
pub(crate) fn on_event(progress: &mut Progress, data: &str) {
    if data == "[DONE]" {
        return;
    }
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        progress.problem("a stream chunk is not JSON");
        return;
    };
    match chunk.get("usage") {
        None | Some(Value::Null) => {
            if chunk.get("error").is_some() {
                progress.problem("the stream reported an error");
            }
        }
        Some(u) => progress.complete(usage::openai_chat(u)),
    }
}
