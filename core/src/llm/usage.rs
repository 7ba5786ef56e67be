//! Token usage as the vendors report it, read into Bridle's price classes.
//!
//! Each API counts differently: OpenAI's input counts include the cached tokens and its
//! output counts include reasoning; Anthropic's `input_tokens` excludes cache reads and
//! writes, which it reports beside it, split by cache lifetime. A usage object that is
//! malformed, inconsistent (more cached tokens than input) or reports something Bridle does
//! not price (audio tokens, server-side tool calls) is not read: the call then settles at its
//! reservation, which is an upper bound.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens of one call, by the class each is priced at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    /// Input read fresh.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input: u64,
    /// Input read from the prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input: u64,
    /// Input written to a five-minute cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_5m: u64,
    /// Input written to a one-hour cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h: u64,
    /// Output, reasoning included.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output: u64,
    /// Of `output`, the model's reasoning: shown, never priced twice.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// Adds `other`, class by class: a token's totals. Counts saturate rather than wrap (they
    /// are shown, never priced: money is counted in the ledger's sums, not from these).
    pub fn add(&mut self, other: &TokenUsage) {
        for (total, n) in [
            (&mut self.input, other.input),
            (&mut self.cached_input, other.cached_input),
            (&mut self.cache_write_5m, other.cache_write_5m),
            (&mut self.cache_write_1h, other.cache_write_1h),
            (&mut self.output, other.output),
            (&mut self.reasoning, other.reasoning),
        ] {
            *total = total.saturating_add(n);
        }
    }

    /// Input tokens of every class together.
    pub fn input_total(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }
}

/// Why a usage object was not read; for the log line of a call settled at its reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

/// A count under `key`: absent or null is `None`; anything but a non-negative integer is an
/// error.
fn count(v: &Value, key: &str) -> Result<Option<u64>, UsageError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| UsageError(format!("usage.{key} is not a token count"))),
    }
}

fn required(v: &Value, key: &str) -> Result<u64, UsageError> {
    count(v, key)?.ok_or_else(|| UsageError(format!("usage has no {key}")))
}

/// An object under `key`, or null: `None`.
fn object<'a>(v: &'a Value, key: &str) -> Result<Option<&'a Value>, UsageError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(o @ Value::Object(_)) => Ok(Some(o)),
        Some(_) => Err(UsageError(format!("usage.{key} is not an object"))),
    }
}

fn detail(v: &Value, outer: &str, key: &str) -> Result<u64, UsageError> {
    Ok(match object(v, outer)? {
        Some(o) => count(o, key)?.unwrap_or(0),
        None => 0,
    })
}

fn usage_object(v: &Value) -> Result<&Value, UsageError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(UsageError("usage is not an object".into()))
    }
}

/// OpenAI Chat Completions' `usage`: `prompt_tokens` (cached ones included, in
/// `prompt_tokens_details.cached_tokens`) and `completion_tokens` (reasoning included).
pub fn openai_chat(usage: &Value) -> Result<TokenUsage, UsageError> {
    let u = usage_object(usage)?;
    openai(
        required(u, "prompt_tokens")?,
        detail(u, "prompt_tokens_details", "cached_tokens")?,
        required(u, "completion_tokens")?,
        detail(u, "completion_tokens_details", "reasoning_tokens")?,
        detail(u, "prompt_tokens_details", "audio_tokens")?.saturating_add(detail(
            u,
            "completion_tokens_details",
            "audio_tokens",
        )?),
    )
}

/// OpenAI Responses' `usage`: `input_tokens` (with `input_tokens_details.cached_tokens`) and
/// `output_tokens` (with `output_tokens_details.reasoning_tokens`).
pub fn openai_responses(usage: &Value) -> Result<TokenUsage, UsageError> {
    let u = usage_object(usage)?;
    openai(
        required(u, "input_tokens")?,
        detail(u, "input_tokens_details", "cached_tokens")?,
        required(u, "output_tokens")?,
        detail(u, "output_tokens_details", "reasoning_tokens")?,
        0,
    )
}

fn openai(
    input: u64,
    cached: u64,
    output: u64,
    reasoning: u64,
    audio: u64,
) -> Result<TokenUsage, UsageError> {
    if cached > input {
        return Err(UsageError(format!(
            "usage reports {cached} cached tokens of {input} input tokens"
        )));
    }
    if reasoning > output {
        return Err(UsageError(format!(
            "usage reports {reasoning} reasoning tokens of {output} output tokens"
        )));
    }
    if audio > 0 {
        return Err(UsageError(
            "usage reports audio tokens, which Bridle does not price".into(),
        ));
    }
    Ok(TokenUsage {
        input: input - cached,
        cached_input: cached,
        output,
        reasoning,
        ..TokenUsage::default()
    })
}

/// Anthropic's usage as reported so far: `message_start` carries the input side and
/// `message_delta` cumulative totals, so merging keeps the largest value of each count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnthropicCounts {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    creation_5m: Option<u64>,
    creation_1h: Option<u64>,
    output: Option<u64>,
    server_tools: u64,
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl AnthropicCounts {
    /// Reads one `usage` object (whole, or a stream's partial one).
    pub fn read(usage: &Value) -> Result<AnthropicCounts, UsageError> {
        let u = usage_object(usage)?;
        let creation = object(u, "cache_creation")?;
        let in_creation = |key: &str| match creation {
            Some(c) => count(c, key),
            None => Ok(None),
        };
        let server = match object(u, "server_tool_use")? {
            Some(s) => {
                let mut n: u64 = 0;
                if let Value::Object(map) = s {
                    for key in map.keys() {
                        n = n.saturating_add(count(s, key)?.unwrap_or(0));
                    }
                }
                n
            }
            None => 0,
        };
        Ok(AnthropicCounts {
            input: count(u, "input_tokens")?,
            cache_read: count(u, "cache_read_input_tokens")?,
            cache_creation: count(u, "cache_creation_input_tokens")?,
            creation_5m: in_creation("ephemeral_5m_input_tokens")?,
            creation_1h: in_creation("ephemeral_1h_input_tokens")?,
            output: count(u, "output_tokens")?,
            server_tools: server,
        })
    }

    pub fn merge(self, other: AnthropicCounts) -> AnthropicCounts {
        AnthropicCounts {
            input: max_opt(self.input, other.input),
            cache_read: max_opt(self.cache_read, other.cache_read),
            cache_creation: max_opt(self.cache_creation, other.cache_creation),
            creation_5m: max_opt(self.creation_5m, other.creation_5m),
            creation_1h: max_opt(self.creation_1h, other.creation_1h),
            output: max_opt(self.output, other.output),
            server_tools: self.server_tools.max(other.server_tools),
        }
    }

    /// The usage in price classes. Cache writes not broken down by lifetime are priced as
    /// one-hour writes when the request asked for that cache (`one_hour`), else five-minute.
    pub fn usage(&self, one_hour: bool) -> Result<TokenUsage, UsageError> {
        let input = self
            .input
            .ok_or_else(|| UsageError("usage has no input_tokens".into()))?;
        let output = self
            .output
            .ok_or_else(|| UsageError("usage has no output_tokens".into()))?;
        if self.server_tools > 0 {
            return Err(UsageError(
                "usage reports server tool calls, which Bridle does not price".into(),
            ));
        }
        let (mut w5, mut w1) = (self.creation_5m.unwrap_or(0), self.creation_1h.unwrap_or(0));
        let broken_down = w5.saturating_add(w1);
        let total = self.cache_creation.unwrap_or(broken_down);
        if broken_down > total {
            return Err(UsageError(format!(
                "usage breaks {broken_down} cache writes out of {total}"
            )));
        }
        let rest = total - broken_down;
        if one_hour {
            w1 = w1.saturating_add(rest);
        } else {
            w5 = w5.saturating_add(rest);
        }
        Ok(TokenUsage {
            input,
            cached_input: self.cache_read.unwrap_or(0),
            cache_write_5m: w5,
            cache_write_1h: w1,
            output,
            reasoning: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_chat_usage_splits_cached_from_fresh_input() {
        let u = openai_chat(&json!({
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": { "cached_tokens": 1920, "audio_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 192, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 }
        }))
        .unwrap();
        assert_eq!(
            u,
            TokenUsage {
                input: 86,
                cached_input: 1920,
                output: 300,
                reasoning: 192,
                ..TokenUsage::default()
            }
        );
        // Details may be absent or null.
        let u = openai_chat(
            &json!({"prompt_tokens": 9, "completion_tokens": 12, "prompt_tokens_details": null}),
        )
        .unwrap();
        assert_eq!((u.input, u.output), (9, 12));
        for bad in [
            json!({"prompt_tokens": 9}),
            json!({"prompt_tokens": -1, "completion_tokens": 1}),
            json!({"prompt_tokens": 1.5, "completion_tokens": 1}),
            json!({"prompt_tokens": "9", "completion_tokens": 1}),
            json!({"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 10}}),
            json!({"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": {"audio_tokens": 3}}),
            json!({"prompt_tokens": 9, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}}),
            json!({"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": 3}),
            json!(null),
            json!([1]),
        ] {
            assert!(openai_chat(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_adds_class_by_class_and_saturates() {
        let mut total = TokenUsage {
            input: 1,
            output: u64::MAX - 1,
            ..Default::default()
        };
        total.add(&TokenUsage {
            input: 2,
            cached_input: 3,
            output: 5,
            reasoning: 4,
            ..Default::default()
        });
        assert_eq!(
            total,
            TokenUsage {
                input: 3,
                cached_input: 3,
                output: u64::MAX,
                reasoning: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn openai_responses_usage() {
        let u = openai_responses(&json!({
            "input_tokens": 328, "input_tokens_details": { "cached_tokens": 128 },
            "output_tokens": 52, "output_tokens_details": { "reasoning_tokens": 40 },
            "total_tokens": 380
        }))
        .unwrap();
        assert_eq!(
            (u.input, u.cached_input, u.output, u.reasoning),
            (200, 128, 52, 40)
        );
        assert!(openai_responses(&json!({"prompt_tokens": 1, "completion_tokens": 1})).is_err());
    }

    #[test]
    fn anthropic_usage_merges_stream_counts_and_splits_cache_writes() {
        let start = AnthropicCounts::read(&json!({
            "input_tokens": 25, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 12000,
            "cache_creation": { "ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000 },
            "output_tokens": 1, "service_tier": "standard"
        }))
        .unwrap();
        let delta = AnthropicCounts::read(&json!({ "output_tokens": 503 })).unwrap();
        let u = start.merge(delta).usage(false).unwrap();
        assert_eq!(
            u,
            TokenUsage {
                input: 25,
                cached_input: 12000,
                cache_write_5m: 1000,
                cache_write_1h: 2000,
                output: 503,
                reasoning: 0,
            }
        );
        // Without a breakdown, writes go to the lifetime the request asked for.
        let plain = AnthropicCounts::read(
            &json!({"input_tokens": 5, "cache_creation_input_tokens": 40, "output_tokens": 2}),
        )
        .unwrap();
        assert_eq!(plain.usage(false).unwrap().cache_write_5m, 40);
        assert_eq!(plain.usage(true).unwrap().cache_write_1h, 40);
        // A stream cut before message_start said anything has no input count.
        assert!(delta.usage(false).is_err());
        let tools = AnthropicCounts::read(
            &json!({"input_tokens": 5, "output_tokens": 2, "server_tool_use": {"web_search_requests": 1}}),
        )
        .unwrap();
        assert!(tools.usage(false).is_err());
        let over = AnthropicCounts::read(&json!({"input_tokens": 5, "output_tokens": 2,
            "cache_creation_input_tokens": 1, "cache_creation": {"ephemeral_5m_input_tokens": 2}}))
        .unwrap();
        assert!(over.usage(false).is_err());
    }
}
