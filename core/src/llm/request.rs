//! Reading an LLM request for its price: what every API's reader shares.
//!
//! Each API module walks the request's JSON against an allowlist: fields Bridle knows to be
//! priced as text, fields it knows change nothing, and content it refuses because its tokens
//! cannot be bounded from the request (images, audio, files, stored prompts, server-side
//! tools). A field Bridle does not know is refused too, since the vendor may bill for it.

use serde_json::{Map, Value};

use crate::body::shown;
use crate::cost::CostError;
use crate::llm::prices::{check_model_name, InputClass};
use crate::Reason;

/// What an API's reader found in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pub model: String,
    /// The largest output maximum the request names, if it names one.
    pub max_output: Option<u64>,
    /// Where a maximum is written in when the request names none.
    pub max_key: &'static str,
    /// Completions generated (OpenAI's `n`); output is bounded per completion.
    pub n: u64,
    /// Output the request may produce whatever its maximum says (Anthropic's thinking
    /// budget, which interleaved thinking lets exceed `max_tokens`).
    pub output_floor: u64,
    /// Input tokens the vendor adds that are not in the request (a tool-use system prompt).
    pub hidden_input: u64,
    pub class: InputClass,
    pub stream: bool,
    /// Top-level fields to set before the request is forwarded.
    pub rewrites: Vec<(&'static str, Value)>,
}

pub(crate) fn refuse(message: impl Into<String>) -> CostError {
    CostError {
        reason: Reason::CostUndetermined,
        message: message.into(),
    }
}

/// The request's top-level object.
pub(crate) fn object(v: &Value) -> Result<&Map<String, Value>, CostError> {
    v.as_object()
        .ok_or_else(|| refuse("the request body must be a JSON object"))
}

/// Refuses any key of `obj` that is not in `allowed`; `refused` names keys Bridle knows and
/// refuses, with why. `at` names the object in messages (`the request`, `messages[2]`).
pub(crate) fn only_keys(
    obj: &Map<String, Value>,
    at: &str,
    allowed: &[&str],
    refused: &[(&str, &str)],
) -> Result<(), CostError> {
    for key in obj.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, why)) = refused.iter().find(|(k, _)| k == key) {
            if obj.get(key).is_some_and(|v| !v.is_null()) {
                return Err(refuse(format!("{at} has {key}: {why}")));
            }
            continue;
        }
        return Err(refuse(format!(
            "{at} has {}, which Bridle does not know how to price: leave it out",
            shown(key)
        )));
    }
    Ok(())
}

/// The model a request names.
pub(crate) fn model(obj: &Map<String, Value>) -> Result<String, CostError> {
    match obj.get("model") {
        Some(Value::String(m)) => {
            check_model_name(m, false).map_err(|e| refuse(format!("model: {e}")))?;
            Ok(m.clone())
        }
        _ => Err(refuse("the request must name its model")),
    }
}

/// A positive whole number of tokens under `key`, if given (null is not given).
pub(crate) fn tokens(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, CostError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(refuse(format!("{key} must be a positive whole number"))),
        },
    }
}

/// A boolean under `key`; absent or null is false.
pub(crate) fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, CostError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(refuse(format!("{key} must be true or false"))),
    }
}

/// One of `allowed` strings under `key`, if given.
pub(crate) fn one_of(
    obj: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
    why: &str,
) -> Result<(), CostError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(v) => Err(refuse(format!(
            "{key} {} is not one Bridle prices ({why}): use {}",
            shown(&v.to_string()),
            allowed.join(", ")
        ))),
    }
}

/// The `service_tier` to write into an OpenAI request, if any. Left out or `auto`, OpenAI
/// serves the call at the tier its project is configured for, which may be priority, billed
/// above the price table; `default` is the tier the table prices, and always allowed.
pub(crate) fn openai_priced_tier(
    obj: &Map<String, Value>,
) -> Result<Option<(&'static str, Value)>, CostError> {
    one_of(
        obj,
        "service_tier",
        &["auto", "default", "flex"],
        "priority processing costs more than the price table says",
    )?;
    Ok(match obj.get("service_tier") {
        None | Some(Value::Null) => Some(("service_tier", Value::from("default"))),
        Some(Value::String(s)) if s == "auto" => Some(("service_tier", Value::from("default"))),
        Some(_) => None,
    })
}

/// An array under `key` (absent or null: empty).
pub(crate) fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], CostError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(refuse(format!("{key} must be a list"))),
    }
}

pub(crate) fn as_object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, CostError> {
    v.as_object()
        .ok_or_else(|| refuse(format!("{at} must be an object")))
}

/// The `type` of an object, if it has one.
pub(crate) fn kind<'a>(
    obj: &'a Map<String, Value>,
    at: &str,
) -> Result<Option<&'a str>, CostError> {
    match obj.get("type") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(refuse(format!("{at}.type must be a string"))),
    }
}

/// Refuses content Bridle cannot bound: `what` is its type, as the API names it.
pub(crate) fn unpriced_content(at: &str, what: &str) -> CostError {
    refuse(format!(
        "{at} is {} content: Bridle prices text only, because the tokens of images, audio \
         and files cannot be bounded before the call",
        shown(what)
    ))
}
