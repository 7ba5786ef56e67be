//! LLM calls priced by tokens: OpenAI Chat Completions, OpenAI Responses and Anthropic
//! Messages, streamed or not.
//!
//! Before a call, [`quote`] reads the request and reserves an upper bound of what it can
//! cost: its input at one token per byte of the request (every token of text is at least one
//! byte of it, and the request's JSON around the text only adds bytes), priced at the dearest
//! class the input may turn into, plus the most output it may ask for (its maximum, times `n`),
//! at the output price. A request that names no maximum gets the policy's written into it, so
//! the bound is one the vendor enforces. Content whose tokens cannot be bounded from the
//! request (images, audio, files, stored prompts, server-side tools) is refused.
//!
//! After it, a [`UsageReader`] watches the response pass (chunk by chunk for a stream) for
//! the usage the vendor reports, and the call settles at exactly its price
//! ([`prices::PriceEntry::cost`]). A response that never reports its usage settles at the
//! reservation.
//!
//! Where each thing is: prices and arithmetic in [`prices`], a policy's `models` section in
//! [`models`], usage objects in [`usage`], event streams in [`sse`], and each API's own rules
//! in its module (`openai_chat`, `openai_responses`, `anthropic_messages`).

use serde::{Deserialize, Serialize};

use crate::body::{self, Body, BodyKind};
use crate::cost::CostError;
use crate::money::Usd;
use crate::vendor::Vendor;
use crate::Reason;

mod anthropic_messages;
pub mod models;
mod openai_chat;
mod openai_responses;
pub mod prices;
mod request;
pub mod response;
pub mod rewrite;
pub mod sse;
pub mod usage;

pub use models::{CompiledModels, Models};
pub use prices::{InputClass, PriceEntry, PriceList, PriceTable};
pub use response::{Unread, UsageReader};
pub use usage::TokenUsage;

use prices::Found;
use request::Facts;

/// Input tokens added to every bound for what the vendor wraps around a request (message
/// and role markers, the reply's priming): a few per message, which the request's own JSON
/// syntax already outnumbers; this is a margin on top.
const WRAPPER_TOKENS: u64 = 256;

/// The APIs whose calls are priced by tokens; a policy names one per endpoint
/// (`cost: { tokens: chat_completions }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenApi {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl TokenApi {
    pub fn vendor(self) -> Vendor {
        match self {
            TokenApi::ChatCompletions | TokenApi::Responses => Vendor::Openai,
            TokenApi::Messages => Vendor::Anthropic,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenApi::ChatCompletions => "chat_completions",
            TokenApi::Responses => "responses",
            TokenApi::Messages => "messages",
        }
    }

    /// Refuses request headers that could make the call cost more than its price says.
    pub fn check_headers(self, headers: &[(String, Vec<u8>)]) -> Result<(), CostError> {
        match self {
            TokenApi::Messages => anthropic_messages::check_headers(headers),
            TokenApi::ChatCompletions | TokenApi::Responses => Ok(()),
        }
    }

    fn read(self, obj: &serde_json::Map<String, serde_json::Value>) -> Result<Facts, CostError> {
        match self {
            TokenApi::ChatCompletions => openai_chat::read(obj),
            TokenApi::Responses => openai_responses::read(obj),
            TokenApi::Messages => anthropic_messages::read(obj),
        }
    }
}

/// A priced LLM request: what to reserve, and what settling needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub api: TokenApi,
    pub model: String,
    /// The price the call settles at.
    pub price: PriceEntry,
    pub class: InputClass,
    /// The bounds reserved for.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reserve: Usd,
    pub stream: bool,
    /// How the reservation was worked out, for the audit log.
    pub detail: String,
    /// The body to forward instead of the agent's, when Bridle wrote fields into it.
    pub body: Option<Vec<u8>>,
}

impl Quote {
    /// A reader for the response's usage.
    pub fn reader(&self, content_type: Option<&[u8]>) -> UsageReader {
        let one_hour = matches!(self.class, InputClass::CacheWrites { one_hour: true });
        UsageReader::new(self.api, content_type, one_hour)
    }

    /// What `usage` costs at this call's price; `None` if it has tokens of a class the price
    /// does not cover.
    pub fn cost(&self, usage: &TokenUsage) -> Option<Usd> {
        self.price.cost(usage)
    }
}

fn denial(reason: Reason, message: String) -> CostError {
    CostError { reason, message }
}

/// Prices a request to `api` under a policy's `models` and the vendor's shipped `prices`.
pub fn quote(
    api: TokenApi,
    models: Option<&CompiledModels>,
    shipped: &PriceList,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Quote, CostError> {
    let models = models.ok_or_else(|| {
        request::refuse("this policy lists no models: add a models section to price LLM calls")
    })?;
    if content_type.is_none() || body::kind(content_type, body) != Some(BodyKind::Json) {
        return Err(denial(
            Reason::BodyUnreadable,
            "an LLM request must be sent as Content-Type: application/json".into(),
        ));
    }
    let parsed = Body::read(content_type, body).map_err(|e| CostError {
        reason: Reason::BodyUnreadable,
        message: e.0,
    })?;
    let json = parsed
        .json()
        .ok_or_else(|| request::refuse("the request body is empty"))?;
    let facts = api.read(request::object(json)?)?;
    if !models.allows(&facts.model) {
        return Err(denial(
            Reason::ModelNotAllowed,
            format!(
                "model {} is not one this policy allows",
                body::shown(&facts.model)
            ),
        ));
    }
    let price = match prices::resolve(&facts.model, &models.prices, shipped) {
        Found::Priced(p) => p.clone(),
        Found::Ambiguous => {
            return Err(denial(
                Reason::ModelUnpriced,
                format!(
                    "model {} matches price entries that disagree; Bridle will not guess",
                    body::shown(&facts.model)
                ),
            ))
        }
        Found::Unlisted => {
            return Err(denial(
                Reason::ModelUnpriced,
                format!(
                    "model {} has no price in Bridle's price table or this policy, so its \
                     calls cannot be capped",
                    body::shown(&facts.model)
                ),
            ))
        }
    };
    let policy_max = models.max_output_tokens;
    let mut rewrites = facts.rewrites.clone();
    let max_output = match (facts.max_output, policy_max) {
        (Some(asked), Some(max)) if asked.max(facts.output_floor) > max => {
            return Err(denial(
                Reason::MaxTokensNotAllowed,
                format!(
                    "the request asks for up to {} output tokens; this policy allows at most {max}",
                    asked.max(facts.output_floor)
                ),
            ))
        }
        (Some(asked), _) => asked,
        (None, Some(max)) => {
            if facts.output_floor > max {
                return Err(denial(
                    Reason::MaxTokensNotAllowed,
                    format!(
                        "the thinking budget of {} tokens is over this policy's {max}",
                        facts.output_floor
                    ),
                ));
            }
            rewrites.push((facts.max_key, serde_json::Value::from(max)));
            max
        }
        (None, None) => {
            return Err(request::refuse(format!(
                "name {} (or give the policy a models.max_output_tokens): without a maximum \
                 the call has no cost to cap",
                facts.max_key
            )))
        }
    };
    let output_tokens = max_output
        .max(facts.output_floor)
        .checked_mul(facts.n)
        .ok_or_else(|| request::refuse("the output maximum overflows"))?;
    let input_tokens = u64::try_from(body.len())
        .unwrap_or(u64::MAX)
        .saturating_add(WRAPPER_TOKENS)
        .saturating_add(facts.hidden_input);
    let reserve = price
        .bound(input_tokens, facts.class, output_tokens)
        .ok_or_else(|| {
            request::refuse(format!(
                "{input_tokens} input and {output_tokens} output tokens of {} cost more than \
                 the $1,000,000,000 Bridle can price",
                facts.model
            ))
        })?;
    let body = if rewrites.is_empty() {
        None
    } else {
        Some(
            rewrite::set_fields(body, &rewrites)
                .ok_or_else(|| request::refuse("the request body could not be rewritten"))?,
        )
    };
    let detail = format!(
        "{}: at most {input_tokens} input and {output_tokens} output tokens = ${reserve}",
        facts.model
    );
    Ok(Quote {
        api,
        model: facts.model,
        price,
        class: facts.class,
        input_tokens,
        output_tokens,
        reserve,
        stream: facts.stream,
        detail,
        body,
    })
}

#[cfg(test)]
mod tests;
