//! Properties of pricing by tokens, over generated inputs:
//! - the SSE parser gives the same events however a stream is split into chunks, and never
//!   holds more than its bound;
//! - a price is the exact cost rounded up once: never less, never a micro-dollar more, and
//!   monotone in every token class;
//! - the reservation is an upper bound: for text requests, the input bound is at least the
//!   token count of OpenAI's own tokenizer (o200k_base, with the chat format's per-message
//!   tokens), and no usage within the bounds costs more than the reservation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bridle_core::llm::prices::InputClass;
use bridle_core::llm::sse::{Event, SseParser};
use bridle_core::llm::{quote, Models, PriceEntry, PriceList, TokenApi, TokenUsage};
use bridle_core::money::Usd;
use proptest::prelude::*;
use serde_json::json;

// --- server-sent events ----------------------------------------------------------------------

fn events(chunks: &[&[u8]], limit: usize) -> (Vec<String>, usize) {
    let mut p = SseParser::with_limit(limit);
    let mut out = Vec::new();
    let mut most = 0;
    for c in chunks {
        p.feed(c, &mut |e| {
            out.push(match e {
                Event::Message { kind, data } => format!("{kind}|{data}"),
                Event::TooLarge { kind } => format!("{kind}|<too large>"),
            })
        });
        most = most.max(p.held());
    }
    (out, most)
}

/// Streams made of lines vendors send, and of the corner cases: CR, CRLF and LF endings,
/// comments, fields without a colon or a space, empty data, BOMs, lone CRs and LFs.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "[a-z_.]{0,12}".prop_map(|k| format!("event: {k}")),
        "[ -~]{0,40}".prop_map(|d| format!("data: {d}")),
        "[ -~]{0,40}".prop_map(|d| format!("data:{d}")),
        Just("data".to_string()),
        "[ -~]{0,10}".prop_map(|c| format!(":{c}")),
        Just("id: 1".to_string()),
        Just("retry: 3000".to_string()),
        Just(String::new()),
        Just("\u{feff}data: bom".to_string()),
        Just("data: {\"usage\":{\"prompt_tokens\":3}}".to_string()),
    ];
    let ending = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    prop::collection::vec((line, ending), 0..40).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_events_do_not_depend_on_where_chunks_split(
        bytes in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        limit in prop_oneof![Just(1usize << 20), 8usize..64],
    ) {
        let (whole, _) = events(&[&bytes], limit);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in at {
            chunks.push(&bytes[from..to]);
            from = to;
        }
        chunks.push(&bytes[from..]);
        let (split, most) = events(&chunks, limit);
        prop_assert_eq!(&whole, &split);
        prop_assert!(most <= limit, "held {most} bytes with a bound of {limit}");
    }

    #[test]
    fn sse_never_panics_or_outgrows_its_bound_on_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        size in 1usize..64,
    ) {
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        let (_, most) = events(&chunks, 128);
        prop_assert!(most <= 128);
    }
}

// --- prices ----------------------------------------------------------------------------------

fn price() -> impl Strategy<Value = Usd> {
    (0i64..200_000_000).prop_map(|m| Usd::from_micros(m).unwrap())
}

fn entry() -> impl Strategy<Value = PriceEntry> {
    (price(), price(), price(), price(), price()).prop_map(|(i, c, w5, w1, o)| PriceEntry {
        model: "m".into(),
        input: i,
        cached_input: Some(c),
        cache_write_5m: Some(w5),
        cache_write_1h: Some(w1),
        output: o,
        checked: None,
        source: None,
    })
}

fn usage() -> impl Strategy<Value = TokenUsage> {
    let t = 0u64..2_000_000;
    (t.clone(), t.clone(), t.clone(), t.clone(), t).prop_map(|(i, c, w5, w1, o)| TokenUsage {
        input: i,
        cached_input: c,
        cache_write_5m: w5,
        cache_write_1h: w1,
        output: o,
        reasoning: 0,
    })
}

/// Σ tokens × price per million, exactly, in micro-dollars × 10⁶.
fn exact(e: &PriceEntry, u: &TokenUsage) -> u128 {
    let term = |t: u64, p: Usd| u128::from(t) * p.micros() as u128;
    term(u.input, e.input)
        + term(u.cached_input, e.cached_input.unwrap())
        + term(u.cache_write_5m, e.cache_write_5m.unwrap())
        + term(u.cache_write_1h, e.cache_write_1h.unwrap())
        + term(u.output, e.output)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_price_is_the_exact_cost_rounded_up_once(e in entry(), u in usage()) {
        let cost = e.cost(&u).unwrap().micros() as u128;
        let exact = exact(&e, &u);
        prop_assert!(cost * 1_000_000 >= exact, "{cost} µ$ under {exact}/10⁶");
        prop_assert!((cost * 1_000_000) - exact < 1_000_000, "{cost} µ$ over {exact}/10⁶ by a µ$ or more");
    }

    #[test]
    fn more_tokens_never_cost_less(e in entry(), u in usage(), class in 0usize..5, more in 1u64..1_000_000) {
        let mut v = u;
        match class {
            0 => v.input += more,
            1 => v.cached_input += more,
            2 => v.cache_write_5m += more,
            3 => v.cache_write_1h += more,
            _ => v.output += more,
        }
        prop_assert!(e.cost(&v).unwrap() >= e.cost(&u).unwrap());
    }

    #[test]
    fn no_usage_within_the_bounds_costs_more_than_the_bound(
        e in entry(),
        u in usage(),
        one_hour in any::<bool>(),
    ) {
        // Input may have become any class the request allowed: with cache breakpoints, any.
        let class = InputClass::CacheWrites { one_hour };
        let mut u = u;
        if !one_hour {
            u.cache_write_5m += u.cache_write_1h;
            u.cache_write_1h = 0;
        }
        let bound = e.bound(u.input_total(), class, u.output).unwrap();
        prop_assert!(bound >= e.cost(&u).unwrap(), "{bound} < {:?}", e.cost(&u));
        // Without breakpoints, input is fresh or cached: the plain bound holds for those.
        let plain = TokenUsage { cache_write_5m: 0, cache_write_1h: 0, ..u };
        let bound = e.bound(plain.input_total(), InputClass::Fresh, plain.output).unwrap();
        prop_assert!(bound >= e.cost(&plain).unwrap());
    }
}

// --- the input bound against OpenAI's tokenizer ----------------------------------------------

/// Text of the kinds agents send: prose, code, CJK, emoji, numbers, whitespace runs, escapes
/// and noise that tokenizes badly.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z ,.]{0,80}",
        "[a-z_(){}\\[\\];=<>+*/\\n\\t ]{0,80}",
        "[\u{4e00}-\u{9fff}]{0,30}",
        "[\u{1f300}-\u{1f64f}\u{2600}-\u{27bf}]{0,20}",
        "[0-9]{0,40}",
        "[ \t\n\r]{0,40}",
        "[\"\\\\/\u{0}-\u{1f}]{0,20}",
        "\\PC{0,40}",
        "[a-zA-Z0-9+/=]{0,120}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn tokenizer() -> &'static tiktoken_rs::CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Prompt tokens of a chat request in OpenAI's chat format: each message's role and content,
/// three tokens around each message, one for a name, three to prime the reply.
fn chat_prompt_tokens(messages: &[(String, String, Option<String>)]) -> u64 {
    let bpe = tokenizer();
    let count = |s: &str| bpe.encode_with_special_tokens(s).len() as u64;
    let mut n = 3;
    for (role, content, name) in messages {
        n += 3 + count(role) + count(content);
        if let Some(name) = name {
            n += 1 + count(name);
        }
    }
    n
}

fn openai_policy() -> bridle_core::llm::CompiledModels {
    let m: Models =
        serde_json::from_value(json!({ "allow": ["gpt-4o-mini"], "max_output_tokens": 4096 }))
            .unwrap();
    m.compile()
}

fn openai_prices() -> PriceList {
    PriceList::new(
        &serde_json::from_value::<Vec<PriceEntry>>(json!([
            { "model": "gpt-4o-mini", "input": "0.15", "cached_input": "0.075", "output": "0.60" }
        ]))
        .unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_input_bound_holds_against_openais_tokenizer(
        messages in prop::collection::vec(
            (prop_oneof![Just("system"), Just("user"), Just("assistant")], text(), prop::option::of("[a-z_]{1,12}")),
            1..6,
        ),
        max in 1u64..4096,
        n in 1u64..4,
    ) {
        let messages: Vec<(String, String, Option<String>)> = messages
            .into_iter()
            .map(|(r, c, name)| (r.to_string(), c, name))
            .collect();
        let body = json!({
            "model": "gpt-4o-mini",
            "max_completion_tokens": max,
            "n": n,
            "messages": messages.iter().map(|(role, content, name)| {
                let mut m = json!({ "role": role, "content": content });
                if let Some(name) = name { m["name"] = json!(name); }
                m
            }).collect::<Vec<_>>(),
        });
        let q = quote(
            TokenApi::ChatCompletions,
            Some(&openai_policy()),
            &openai_prices(),
            Some(b"application/json"),
            body.to_string().as_bytes(),
        ).unwrap();
        let actual = chat_prompt_tokens(&messages);
        prop_assert!(q.input_tokens >= actual, "bound {} < {actual} real tokens", q.input_tokens);
        prop_assert_eq!(q.output_tokens, max * n);
        // Any usage the vendor could report within those counts costs at most the reservation.
        for cached in [0, actual / 2, actual] {
            let u = TokenUsage { input: actual - cached, cached_input: cached, output: max * n, ..TokenUsage::default() };
            prop_assert!(q.cost(&u).unwrap() <= q.reserve);
        }
    }
}

/// How loose the bound is on ordinary text: bytes per o200k token for prose, code and CJK.
/// Printed for README.md's figures (`cargo test -p bridle-core --test llm_properties -- --nocapture`);
/// the assertion is the bound itself.
#[test]
fn bytes_per_token_on_sample_text() {
    let bpe = tokenizer();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prose = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let code = std::fs::read_to_string(root.join("core/src/exchange/mod.rs")).unwrap();
    let cjk = "这是一段用于测量分词器的中文文本，包含标点符号和数字１２３。".repeat(20);
    let emoji = "🚀✨🔥👍🏽🧪 ".repeat(40);
    for (what, text) in [
        ("prose", &prose),
        ("code", &code),
        ("cjk", &cjk),
        ("emoji", &emoji),
    ] {
        let tokens = bpe.encode_with_special_tokens(text).len();
        assert!(
            tokens <= text.len(),
            "{what}: {tokens} tokens > {} bytes",
            text.len()
        );
        println!(
            "{what}: {} bytes, {tokens} tokens, {:.2} bytes per token",
            text.len(),
            text.len() as f64 / tokens as f64
        );
    }
}
