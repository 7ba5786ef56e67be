//! The fast upstream every proxy scenario forwards to: a minimal hyper HTTP/1.1 server that
//! answers 200 with a short JSON body, far faster than any proxy forwards.
//!
//! It answers by path, with fixed bytes: OpenAI's chat completions (`POST
//! /v1/chat/completions`, with the `usage` block a real response carries, so that a proxy
//! that prices from usage has tokens to price) and model list (`GET /v1/models`, which
//! LiteLLM may read at startup); anything else gets a Stripe-shaped object.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const CHARGE: &[u8] = br#"{"id":"ch_bench","object":"charge"}"#;

/// What `gpt-4o-mini` answers to a short prompt, field for field, with its usage details.
const CHAT_COMPLETION: &[u8] = br#"{"id":"chatcmpl-bench0000000000000000000000000","object":"chat.completion","created":1764201600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":23,"completion_tokens":9,"total_tokens":32,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench0000"}"#;

const MODELS: &[u8] = br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"}]}"#;

/// The upstream's answer to a request: fixed bytes chosen by method and path.
fn answer(req: &Request<Incoming>) -> &'static [u8] {
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/v1/chat/completions") => CHAT_COMPLETION,
        ("GET", "/v1/models") => MODELS,
        _ => CHARGE,
    }
}

/// Starts the server on its own thread (with its own runtime) and returns its address.
pub fn spawn() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("upstream listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = service_fn(|req: Request<Incoming>| async move {
                            let body = answer(&req);
                            // Read the request to its end, as a real server does.
                            let _ = req.into_body().collect().await;
                            let mut r = Response::new(Full::new(Bytes::from_static(body)));
                            r.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .expect("upstream thread");
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_answers_are_json_of_the_vendor_shape() {
        let chat: serde_json::Value = serde_json::from_slice(CHAT_COMPLETION).unwrap();
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(
            chat["usage"]["total_tokens"].as_u64(),
            Some(
                chat["usage"]["prompt_tokens"].as_u64().unwrap()
                    + chat["usage"]["completion_tokens"].as_u64().unwrap()
            )
        );
        let models: serde_json::Value = serde_json::from_slice(MODELS).unwrap();
        assert_eq!(models["data"][0]["id"], "gpt-4o-mini");
        let charge: serde_json::Value = serde_json::from_slice(CHARGE).unwrap();
        assert_eq!(charge["object"], "charge");
    }
}
