//! A streamed completion through Bridle beside Envoy without a filter: time to the first
//! event and to the end of the stream, and what Bridle adds to each.
//!
//! The upstream (`sse_upstream.rs`) streams an OpenAI chat completion of 20 words, a fixed
//! gap apart. Through Bridle the call is priced by tokens: the body is read and quoted, the
//! policy's maximum and `include_usage` are written into it, the bound is reserved with the
//! ledger (durable) before the call is forwarded, every chunk is parsed as it passes, and the
//! usage settles the call. The client sends one request at a time on a fresh connection and
//! reads the raw bytes: the first event's arrival, then the stream's last chunk. The two
//! targets are measured in interleaved rounds; the report gives medians over rounds of each
//! round's percentiles.

use std::time::{Duration, Instant};

use bridle_core::policy::{CompiledPolicy, Policy};
use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::{Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{baseline_config, median_i, pin_to, sse_upstream, token_for, Plan};

const POLICY: &str = "bench-openai-tokens";
/// Between two chunks of the upstream's stream.
const GAP: Duration = Duration::from_millis(2);
/// Streams per target per round.
const STREAMS: usize = 100;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    pub ttfb_p50_us: i64,
    pub ttfb_p99_us: i64,
    pub total_p50_us: i64,
    pub total_p99_us: i64,
}

fn policy() -> CompiledPolicy {
    serde_json::from_value::<Policy>(json!({
        "name": POLICY, "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
        "endpoints": [{ "method": "POST", "path": "/v1/chat/completions", "cost": { "tokens": "chat_completions" } }],
        "models": { "allow": ["gpt-4o-mini"], "max_output_tokens": 256 },
    }))
    .expect("the streaming bench policy")
    .compile()
    .expect("the streaming bench policy compiles")
}

/// The request: a short conversation, streamed, naming no maximum (Bridle writes one in).
fn request(port: u16, auth: &str) -> Vec<u8> {
    let body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": "Count twenty words." },
        ],
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One stream: microseconds to the first event, and to the end of the response.
async fn one(port: u16, request: &[u8]) -> (i64, i64) {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(request).await.unwrap();
    let mut seen = Vec::with_capacity(8192);
    let mut buf = [0u8; 8192];
    let mut first = None;
    loop {
        let n = s.read(&mut buf).await.expect("read the stream");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first.is_none() && contains(&seen, b"data: ") {
            first = Some(start.elapsed());
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("data: [DONE]"),
        "the stream did not complete:\n{text}"
    );
    let first = first.expect("an event arrived");
    (first.as_micros() as i64, start.elapsed().as_micros() as i64)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn percentile(mut v: Vec<i64>, p: f64) -> i64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0)
}

async fn round(port: u16, request: &[u8]) -> Round {
    let mut ttfb = Vec::with_capacity(STREAMS);
    let mut total = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let (f, t) = one(port, request).await;
        ttfb.push(f);
        total.push(t);
    }
    Round {
        ttfb_p50_us: percentile(ttfb.clone(), 0.5),
        ttfb_p99_us: percentile(ttfb, 0.99),
        total_p50_us: percentile(total.clone(), 0.5),
        total_p99_us: percentile(total, 0.99),
    }
}

/// Runs both targets in `plan.rounds` interleaved rounds; returns the report's data.
pub async fn run(plan: Plan, keys: &Keys) -> Value {
    let upstream = sse_upstream::spawn(GAP).port();
    let env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_default(),
    )];
    let plain = Envoy::start_config(&baseline_config(upstream, None), &env, 1)
        .await
        .expect("the baseline Envoy");
    pin_to(plain.pid(), 0);
    let policies = vec![policy()];
    let ledger = Ledger::start(&policies, keys).await;
    pin_to(ledger.pid().unwrap(), 1);
    let mut setup =
        Setup::new(policies, keys).upstream_all(&format!("http://127.0.0.1:{upstream}"));
    setup.ledger = Some(ledger.url());
    setup.concurrency = 1;
    let bridle = Envoy::start(&setup).await.expect("the Bridle Envoy");
    pin_to(bridle.pid(), 0);
    let auth = format!(
        "Authorization: Bearer {}\r\n",
        token_for(keys, POLICY, "tok_bench_stream".into(), Vendor::Openai)
    );
    let targets = [
        ("no_filter", plain.listener_port("baseline"), String::new()),
        ("bridle_tokens", bridle.port(Vendor::Openai), auth),
    ];
    // Warm both, and check Bridle streams what the upstream sends.
    for (_, port, auth) in &targets {
        for _ in 0..10 {
            one(*port, &request(*port, auth)).await;
        }
    }
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for _ in 0..plan.rounds {
        for (i, (_, port, auth)) in targets.iter().enumerate() {
            rounds[i].push(round(*port, &request(*port, auth)).await);
        }
    }
    let med = |i: usize, f: fn(&Round) -> i64| median_i(rounds[i].iter().map(f).collect());
    let added = |f: fn(&Round) -> i64| {
        median_i(
            rounds[1]
                .iter()
                .zip(&rounds[0])
                .map(|(b, n)| f(b) - f(n))
                .collect(),
        )
    };
    json!({
        "upstream": { "chunks": sse_upstream::WORDS + 4, "gap_ms": GAP.as_millis() as u64 },
        "streams_per_round": STREAMS,
        "targets": targets.iter().enumerate().map(|(i, (name, _, _))| json!({
            "target": name,
            "ttfb_p50_us": med(i, |r| r.ttfb_p50_us),
            "ttfb_p99_us": med(i, |r| r.ttfb_p99_us),
            "total_p50_us": med(i, |r| r.total_p50_us),
            "total_p99_us": med(i, |r| r.total_p99_us),
        })).collect::<Vec<_>>(),
        "added": {
            "ttfb_p50_us": added(|r| r.ttfb_p50_us),
            "ttfb_p99_us": added(|r| r.ttfb_p99_us),
            "total_p50_us": added(|r| r.total_p50_us),
            "total_p99_us": added(|r| r.total_p99_us),
        },
    })
}

pub fn markdown(doc: &Value) -> String {
    if doc.is_null() {
        return String::new();
    }
    let mut s = format!(
        "\n### A streamed completion\n\nAn OpenAI chat completion streamed as {} server-sent events, {} ms apart, one request at a time on a fresh connection; through Bridle it is priced by tokens (quoted, rewritten, reserved with the ledger, every chunk parsed as it passes, settled from its usage). Medians over rounds of each round's percentiles ({} streams per round).\n\n| target | first event p50 µs | p99 µs | whole stream p50 µs | p99 µs |\n|---|---:|---:|---:|---:|\n",
        doc["upstream"]["chunks"], doc["upstream"]["gap_ms"], doc["streams_per_round"]
    );
    for t in doc["targets"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            t["target"].as_str().unwrap_or("?"),
            t["ttfb_p50_us"],
            t["ttfb_p99_us"],
            t["total_p50_us"],
            t["total_p99_us"]
        ));
    }
    let a = &doc["added"];
    s.push_str(&format!(
        "| added by Bridle | {} | {} | {} | {} |\n",
        a["ttfb_p50_us"], a["ttfb_p99_us"], a["total_p50_us"], a["total_p99_us"]
    ));
    s
}
