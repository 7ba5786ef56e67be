//! Server-sent event streams, as a vendor's response passes the filter: the SSE parser, then
//! each API's usage reading over its events.
//!
//! The first byte picks the API (low two bits, modulo 3) and how many places the stream is
//! cut into chunks (the rest); the other bytes are the stream. Never panics; the parser never
//! holds more than its bound; the events, and the usage read from them, are the same however
//! the stream is cut; a usage read has a price that is never negative nor over the limit.
#![no_main]

use bridle_core::llm::sse::{Event, SseParser};
use bridle_core::llm::{TokenUsage, UsageReader};
use bridle_fuzz::llm::{api, check_priced, flagship};
use libfuzzer_sys::fuzz_target;

/// A small bound, so that the fuzzer reaches events past it.
const LIMIT: usize = 512;

fn cuts(seed: u8, len: usize) -> Vec<usize> {
    let n = usize::from(seed >> 2);
    let mut at: Vec<usize> = (0..n)
        .map(|i| (i.wrapping_mul(7919).wrapping_add(len / 3)) % (len + 1))
        .collect();
    at.sort_unstable();
    at
}

fn chunks<'a>(bytes: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut from = 0;
    for &to in at {
        out.push(bytes.get(from..to).unwrap_or_default());
        from = to;
    }
    out.push(bytes.get(from..).unwrap_or_default());
    out
}

fn events(parts: &[&[u8]]) -> Vec<String> {
    let mut p = SseParser::with_limit(LIMIT);
    let mut out = Vec::new();
    for part in parts {
        p.feed(part, &mut |e| {
            out.push(match e {
                Event::Message { kind, data } => format!("{kind}\u{0}{data}"),
                Event::TooLarge { kind } => format!("{kind}\u{0}<too large>"),
            })
        });
        assert!(p.held() <= LIMIT, "held {} bytes", p.held());
    }
    out
}

fn usage(reader: UsageReader, parts: &[&[u8]]) -> Result<TokenUsage, String> {
    let mut reader = reader;
    for part in parts {
        reader.feed(part);
    }
    reader.finish(true).map_err(|e| e.0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let at = cuts(seed, stream.len());
    let split = chunks(stream, &at);
    assert_eq!(events(&[stream]), events(&split), "cut at {at:?}");

    let api = api(seed & 3);
    let reader = || UsageReader::new(api, Some(b"text/event-stream"), seed & 0x40 != 0);
    let whole = usage(reader(), &[stream]);
    let pieces = usage(reader(), &split);
    assert_eq!(whole.is_ok(), pieces.is_ok(), "cut at {at:?}");
    assert_eq!(whole.as_ref().ok(), pieces.as_ref().ok(), "cut at {at:?}");
    if let Ok(u) = whole {
        assert!(u.reasoning <= u.output, "{u:?}");
        check_priced(&flagship(api), &u);
    }
});
