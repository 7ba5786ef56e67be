//! LLM requests and JSON responses: the usage a response reports, and the quote of a request.
//!
//! The first byte picks what the rest is: 0-2 (modulo 6) a JSON response of Chat Completions,
//! Responses or Messages, read for its usage; 3-5 a request to one of them, quoted under a
//! policy that allows every model. Never panics. A usage read is consistent (reasoning within
//! output) and prices within the limit. A quote reserves at least what its bound says (input
//! at least the body's bytes), within the limit, and every usage within its bounds costs at
//! most the reservation; a rewritten body is the request with only the fields Bridle set
//! changed.
#![no_main]

use bridle_core::llm::{quote, TokenUsage, UsageReader};
use bridle_fuzz::llm::{api, check_priced, flagship, models, prices};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMIT_MICROS: i64 = 1_000_000_000 * 1_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let api = api(seed % 3);
    if seed % 6 < 3 {
        let mut reader = UsageReader::new(api, Some(b"application/json"), seed & 0x80 != 0);
        reader.feed(body);
        if let Ok(u) = reader.finish(true) {
            assert!(u.reasoning <= u.output, "{u:?}");
            check_priced(&flagship(api), &u);
        }
        return;
    }
    let Ok(q) = quote(api, Some(&models()), &prices(api), Some(b"application/json"), body) else {
        return;
    };
    assert!(q.reserve.micros() >= 0 && q.reserve.micros() <= LIMIT_MICROS);
    assert!(q.input_tokens >= body.len() as u64);
    for cached in [0, q.input_tokens / 2, q.input_tokens] {
        let u = TokenUsage {
            input: q.input_tokens - cached,
            cached_input: cached,
            output: q.output_tokens,
            ..TokenUsage::default()
        };
        if let Some(cost) = q.cost(&u) {
            assert!(cost <= q.reserve, "{cost} > {} for {u:?}", q.reserve);
        }
    }
    if let Some(rewritten) = &q.body {
        let before: Value = serde_json::from_slice(body).expect("a quoted body is JSON");
        let after: Value = serde_json::from_slice(rewritten).expect("a rewritten body is JSON");
        let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
            panic!("a rewritten body is an object");
        };
        for (k, v) in before {
            if !matches!(k.as_str(), "stream_options" | "max_completion_tokens" | "max_output_tokens" | "max_tokens") {
                assert_eq!(after.get(k), Some(v), "{k} changed");
            }
        }
        assert!(after.len() >= before.len());
    }
});
