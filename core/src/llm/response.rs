//! Reading a response's usage as it passes: a JSON body is copied (up to a bound) and read at
//! its end; a `text/event-stream` is parsed event by event, each chunk passing on to the agent
//! as soon as it is seen. Nothing is held back from the agent either way.
//!
//! The outcome is all or nothing: the usage the vendor reported for the whole call, or why
//! there is none (a stream cut short, an error event, a body too large or unreadable), in
//! which case the call settles at its reservation.

use serde_json::Value;

use crate::llm::sse::{Event, SseParser};
use crate::llm::usage::{AnthropicCounts, TokenUsage, UsageError};
use crate::llm::{anthropic_messages, openai_chat, openai_responses, TokenApi};

/// Largest JSON response copied to read its usage; past it, the call settles at its
/// reservation.
pub const MAX_JSON_RESPONSE: usize = 1 << 20;

/// What a stream has reported so far.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub anthropic: AnthropicCounts,
    usage: Option<TokenUsage>,
    problem: Option<String>,
}

impl Progress {
    /// The vendor's final count for the call.
    pub fn complete(&mut self, usage: Result<TokenUsage, UsageError>) {
        match usage {
            Ok(u) => self.usage = Some(u),
            Err(e) => self.problem(&e.0),
        }
    }

    /// Something makes the count unreliable; the first reason is kept.
    pub fn problem(&mut self, why: &str) {
        if self.problem.is_none() {
            self.problem = Some(why.to_string());
        }
    }
}

/// Why a response settles at its reservation instead of its usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unread(pub String);

enum Mode {
    Json {
        body: Vec<u8>,
        too_large: bool,
    },
    Stream {
        parser: Box<SseParser>,
        progress: Progress,
    },
}

/// Watches one response for its usage.
pub struct UsageReader {
    api: TokenApi,
    one_hour: bool,
    mode: Mode,
}

impl std::fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Json { .. } => "json",
            Mode::Stream { .. } => "stream",
        };
        f.debug_struct("UsageReader")
            .field("api", &self.api)
            .field("mode", &mode)
            .finish()
    }
}

/// Whether a `Content-Type` is an event stream.
pub fn is_event_stream(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        let media = ct.split(|b| *b == b';').next().unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

impl UsageReader {
    /// `one_hour`: the request may have written to the one-hour cache (for Anthropic cache
    /// writes reported without a breakdown).
    pub fn new(api: TokenApi, content_type: Option<&[u8]>, one_hour: bool) -> UsageReader {
        let mode = if is_event_stream(content_type) {
            Mode::Stream {
                parser: Box::default(),
                progress: Progress::default(),
            }
        } else {
            Mode::Json {
                body: Vec::new(),
                too_large: false,
            }
        };
        UsageReader {
            api,
            one_hour,
            mode,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Stream { .. })
    }

    /// The next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let (api, one_hour) = (self.api, self.one_hour);
        match &mut self.mode {
            Mode::Json { body, too_large } => {
                if *too_large {
                    return;
                }
                if body.len() + chunk.len() > MAX_JSON_RESPONSE {
                    *too_large = true;
                    *body = Vec::new();
                } else {
                    body.extend_from_slice(chunk);
                }
            }
            Mode::Stream { parser, progress } => parser.feed(chunk, &mut |event| match event {
                Event::Message { kind, data } => on_event(api, one_hour, progress, kind, data),
                Event::TooLarge { kind } => {
                    if wants(api, kind) {
                        progress.problem("a stream event was too large to read");
                    }
                }
            }),
        }
    }

    /// The response is over; `complete` when it ended as the vendor ended it (false: reset,
    /// or the agent went away). Returns the call's usage, or why there is none.
    pub fn finish(self, complete: bool) -> Result<TokenUsage, Unread> {
        match self.mode {
            Mode::Json { body, too_large } => {
                if too_large {
                    return Err(Unread(format!(
                        "the response is over {MAX_JSON_RESPONSE} bytes"
                    )));
                }
                if !complete {
                    return Err(Unread("the response ended early".into()));
                }
                let value: Value = serde_json::from_slice(&body)
                    .map_err(|_| Unread("the response is not JSON".into()))?;
                body_usage(self.api, &value, self.one_hour).map_err(|e| Unread(e.0))
            }
            Mode::Stream { progress, .. } => {
                if let Some(p) = progress.problem {
                    return Err(Unread(p));
                }
                progress
                    .usage
                    .ok_or_else(|| Unread("the stream ended before it reported its usage".into()))
            }
        }
    }
}

fn body_usage(api: TokenApi, v: &Value, one_hour: bool) -> Result<TokenUsage, UsageError> {
    match api {
        TokenApi::ChatCompletions => openai_chat::body_usage(v),
        TokenApi::Responses => openai_responses::body_usage(v),
        TokenApi::Messages => anthropic_messages::body_usage(v, one_hour),
    }
}

/// Whether an event of this name can carry usage (or an error): others are not parsed.
fn wants(api: TokenApi, kind: &str) -> bool {
    match api {
        TokenApi::ChatCompletions => true,
        TokenApi::Responses => openai_responses::wants(kind),
        TokenApi::Messages => anthropic_messages::wants(kind),
    }
}

fn on_event(api: TokenApi, one_hour: bool, progress: &mut Progress, kind: &str, data: &str) {
    if !wants(api, kind) {
        return;
    }
    match api {
        TokenApi::ChatCompletions => openai_chat::on_event(progress, data),
        TokenApi::Responses => openai_responses::on_event(progress, data),
        TokenApi::Messages => anthropic_messages::on_event(progress, data, one_hour),
    }
}
