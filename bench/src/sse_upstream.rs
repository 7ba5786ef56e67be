//! An upstream that streams an OpenAI chat completion as server-sent events: a role chunk, a
//! content chunk per word with a fixed gap between chunks, the finish chunk, the usage chunk
//! when the request asks for it (`stream_options.include_usage`, which Bridle sets), and
//! `data: [DONE]`. Kept apart from `upstream.rs`, whose answers are one fixed body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Content chunks per answer.
pub const WORDS: usize = 20;

fn chunks(include_usage: bool) -> Vec<String> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1764201600,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{}}}\n\n",
            if include_usage { ",\"usage\":null" } else { "" }
        )
    };
    let mut out = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    for i in 0..WORDS {
        out.push(chunk(&format!(r#"{{"content":"word{i} "}}"#), "null"));
    }
    out.push(chunk("{}", "\"stop\""));
    if include_usage {
        out.push("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1764201600,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":20,\"total_tokens\":43,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n".into());
    }
    out.push("data: [DONE]\n\n".into());
    out
}

/// Starts the server on its own thread (with its own runtime); `gap` between chunks.
pub fn spawn(gap: Duration) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the SSE upstream");
    let addr = listener.local_addr().expect("SSE upstream address");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::Builder::new()
        .name("sse-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("SSE upstream runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("SSE upstream listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let include_usage =
                                String::from_utf8_lossy(&body).contains("\"include_usage\":true");
                            let chunks = chunks(include_usage);
                            let stream = futures_util::stream::unfold(0usize, move |i| {
                                let chunks = chunks.clone();
                                async move {
                                    let chunk = chunks.get(i)?.clone();
                                    if i > 0 {
                                        tokio::time::sleep(gap).await;
                                    }
                                    Some((
                                        Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                                        i + 1,
                                    ))
                                }
                            });
                            let mut r = Response::new(StreamBody::new(stream));
                            r.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("text/event-stream"),
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
        .expect("SSE upstream thread");
    addr
}
