//! The mock vendor's LLM answers: OpenAI Chat Completions and Responses, Anthropic Messages,
//! as JSON or as a real `text/event-stream` sent chunk by chunk with a delay between chunks,
//! each with the usage events the vendor sends (OpenAI's usage chunk only when the request
//! asks for it with `stream_options.include_usage`, as OpenAI does).
//!
//! Token counts are made up but consistent: input is a token per four bytes of the request's
//! text (well under Bridle's bound of a token per byte) plus a few per message; prompts of
//! [`CACHED_FROM`] tokens or more report half of them cached (OpenAI) or, when they mark
//! `cache_control`, written to the cache (Anthropic); reasoning models report reasoning
//! tokens.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The answer every model gives, one word per streamed chunk.
pub const ANSWER: &str = "Hello from the mock vendor.";
/// Prompts this long (in the mock's tokens) are half served from, or written to, the cache.
pub const CACHED_FROM: u64 = 32;

/// When a streamed answer's chunks were sent (wall clock, to compare with the client's).
#[derive(Clone, Debug)]
pub struct StreamTiming {
    pub path: String,
    pub first_sent: SystemTime,
    pub last_sent: Option<SystemTime>,
    pub chunks_sent: usize,
    pub chunks: usize,
}

/// How the mock streams.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Between two chunks of a stream.
    pub chunk_delay: Duration,
}

impl Default for StreamSettings {
    fn default() -> StreamSettings {
        StreamSettings {
            chunk_delay: Duration::from_millis(20),
        }
    }
}

/// A token per four bytes of text, as English text roughly has.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The text of a message's content: a string, or text parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn prompt_tokens(req: &Value) -> u64 {
    let mut n = 3;
    for m in req["messages"].as_array().into_iter().flatten() {
        n += 3 + tokens(&text_of(&m["content"]));
    }
    n += tokens(&text_of(&req["system"]));
    n += tokens(&text_of(&req["instructions"]));
    match &req["input"] {
        Value::String(s) => n += 3 + tokens(s),
        Value::Array(items) => {
            for i in items {
                n += 3 + tokens(&text_of(&i["content"]));
            }
        }
        _ => {}
    }
    n
}

fn words() -> Vec<String> {
    let parts: Vec<&str> = ANSWER.split(' ').collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i + 1 < parts.len() {
                format!("{w} ")
            } else {
                w.to_string()
            }
        })
        .collect()
}

fn reasoning(model: &str) -> u64 {
    if model.starts_with('o') || model.starts_with("gpt-5") {
        64
    } else {
        0
    }
}

fn openai_cached(prompt: u64) -> u64 {
    if prompt >= CACHED_FROM {
        prompt / 2
    } else {
        0
    }
}

fn chat_usage(req: &Value) -> Value {
    let prompt = prompt_tokens(req);
    let model = req["model"].as_str().unwrap_or_default();
    let completion = words().len() as u64 + reasoning(model);
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": openai_cached(prompt), "audio_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": reasoning(model), "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 },
    })
}

fn responses_usage(req: &Value) -> Value {
    let input = prompt_tokens(req);
    let model = req["model"].as_str().unwrap_or_default();
    let output = words().len() as u64 + reasoning(model);
    json!({
        "input_tokens": input, "input_tokens_details": { "cached_tokens": openai_cached(input) },
        "output_tokens": output, "output_tokens_details": { "reasoning_tokens": reasoning(model) },
        "total_tokens": input + output,
    })
}

fn has_cache_control(v: &Value) -> Option<&'static str> {
    match v {
        Value::Object(map) => {
            if let Some(cc) = map.get("cache_control").filter(|c| !c.is_null()) {
                return Some(if cc["ttl"] == "1h" { "1h" } else { "5m" });
            }
            map.values().find_map(has_cache_control)
        }
        Value::Array(items) => items.iter().find_map(has_cache_control),
        _ => None,
    }
}

/// Anthropic's usage: what `message_start` reports (output 1), and the final output count.
fn anthropic_usage(req: &Value) -> (Value, u64) {
    let prompt = prompt_tokens(req);
    let (written, read) = match has_cache_control(req) {
        Some(_) if prompt >= CACHED_FROM => (prompt / 2, 0),
        _ => (0, 0),
    };
    let ttl = has_cache_control(req).unwrap_or("5m");
    let (w5, w1) = if ttl == "1h" {
        (0, written)
    } else {
        (written, 0)
    };
    let usage = json!({
        "input_tokens": prompt - written - read,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": { "ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1 },
        "output_tokens": 1,
        "service_tier": "standard",
    });
    (usage, words().len() as u64 + 4)
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

fn chat_stream(req: &Value) -> Vec<String> {
    let model = &req["model"];
    let base = |choices: Value, usage: Value| {
        let mut chunk = json!({ "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                                "model": model, "choices": choices });
        if req["stream_options"]["include_usage"] == true {
            chunk["usage"] = usage;
        }
        sse(None, &chunk)
    };
    let mut out = vec![base(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]),
        Value::Null,
    )];
    for w in words() {
        out.push(base(
            json!([{ "index": 0, "delta": { "content": w }, "finish_reason": null }]),
            Value::Null,
        ));
    }
    out.push(base(
        json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
        Value::Null,
    ));
    if req["stream_options"]["include_usage"] == true {
        out.push(sse(
            None,
            &json!({ "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": [], "usage": chat_usage(req) }),
        ));
    }
    out.push("data: [DONE]\n\n".into());
    out
}

fn response_object(req: &Value, status: &str, with_output: bool) -> Value {
    let output = if with_output {
        json!([{ "type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                 "content": [{ "type": "output_text", "text": ANSWER, "annotations": [] }] }])
    } else {
        json!([])
    };
    json!({
        "id": "resp_mock", "object": "response", "created_at": 0, "status": status,
        "model": req["model"], "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": [], "usage": if with_output { responses_usage(req) } else { Value::Null },
    })
}

fn responses_stream(req: &Value) -> Vec<String> {
    let mut seq = 0;
    let mut ev = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        sse(Some(kind), &data)
    };
    let mut out = vec![
        ev(
            "response.created",
            json!({ "response": response_object(req, "in_progress", false) }),
        ),
        ev(
            "response.output_item.added",
            json!({ "output_index": 0, "item": { "type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": [] } }),
        ),
    ];
    for w in words() {
        out.push(ev(
            "response.output_text.delta",
            json!({ "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": w }),
        ));
    }
    out.push(ev(
        "response.output_text.done",
        json!({ "item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": ANSWER }),
    ));
    out.push(ev(
        "response.completed",
        json!({ "response": response_object(req, "completed", true) }),
    ));
    out
}

fn message_object(req: &Value, content: bool, usage: Value) -> Value {
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": req["model"],
        "content": if content { json!([{ "type": "text", "text": ANSWER }]) } else { json!([]) },
        "stop_reason": if content { json!("end_turn") } else { Value::Null },
        "stop_sequence": null, "usage": usage,
    })
}

fn messages_stream(req: &Value) -> Vec<String> {
    let (start_usage, output) = anthropic_usage(req);
    let mut out = vec![
        sse(
            Some("message_start"),
            &json!({ "type": "message_start", "message": message_object(req, false, start_usage) }),
        ),
        sse(
            Some("content_block_start"),
            &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        sse(Some("ping"), &json!({ "type": "ping" })),
    ];
    for w in words() {
        out.push(sse(
            Some("content_block_delta"),
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": w } }),
        ));
    }
    out.push(sse(
        Some("content_block_stop"),
        &json!({ "type": "content_block_stop", "index": 0 }),
    ));
    out.push(sse(
        Some("message_delta"),
        &json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null },
                 "usage": { "output_tokens": output } }),
    ));
    out.push(sse(
        Some("message_stop"),
        &json!({ "type": "message_stop" }),
    ));
    out
}

/// The whole (non-streamed) answer.
fn json_answer(path: &str, req: &Value) -> Option<Value> {
    Some(match path {
        "/v1/chat/completions" => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": req["model"],
            "choices": [{ "index": 0, "finish_reason": "stop", "message": { "role": "assistant", "content": ANSWER } }],
            "usage": chat_usage(req),
        }),
        "/v1/responses" => response_object(req, "completed", true),
        "/v1/messages" => {
            let (mut usage, output) = anthropic_usage(req);
            usage["output_tokens"] = json!(output);
            message_object(req, true, usage)
        }
        _ => return None,
    })
}

/// The answer to an LLM call, or `None` if `path` is not one.
pub fn respond(
    path: &str,
    body: &[u8],
    settings: &StreamSettings,
    timings: Arc<Mutex<Vec<StreamTiming>>>,
) -> Option<Response> {
    let req: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    if req["stream"] != true {
        let answer = json_answer(path, &req)?;
        return Some(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                answer.to_string(),
            )
                .into_response(),
        );
    }
    let chunks = match path {
        "/v1/chat/completions" => chat_stream(&req),
        "/v1/responses" => responses_stream(&req),
        "/v1/messages" => messages_stream(&req),
        _ => return None,
    };
    let index = {
        let mut t = timings.lock().unwrap();
        t.push(StreamTiming {
            path: path.to_string(),
            first_sent: SystemTime::now(),
            last_sent: None,
            chunks_sent: 0,
            chunks: chunks.len(),
        });
        t.len() - 1
    };
    let delay = settings.chunk_delay;
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let chunks = chunks.clone();
        let timings = timings.clone();
        async move {
            let chunk = chunks.get(i)?.clone();
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            let mut t = timings.lock().unwrap();
            let record = &mut t[index];
            let now = SystemTime::now();
            if i == 0 {
                record.first_sent = now;
            }
            record.chunks_sent = i + 1;
            if i + 1 == chunks.len() {
                record.last_sent = Some(now);
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
        }
    });
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .body(Body::from_stream(stream))
            .unwrap(),
    )
}
