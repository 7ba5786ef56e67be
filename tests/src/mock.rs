//! A vendor upstream that records every request exactly as it arrived (method, raw path and
//! query, headers, body) and answers with a vendor-plausible JSON body.
//!
//! The same server runs standalone as `bridle-mock-vendor` behind `make run`, where it
//! reports which credential it received without showing it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, byte for byte as received.
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn headers_named(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Everything received, as one string, for "this never reached the vendor" checks.
    pub fn everything(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.path);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v)));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// A canned answer for the next requests.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct MockState {
    requests: Vec<Recorded>,
    /// Answers queued for the next requests; after them, the default answer.
    queued: VecDeque<Reply>,
    default_reply: Option<Reply>,
    /// Print each request (without its credential) to stdout, for `make run`.
    verbose: bool,
    /// How LLM answers stream, and when each stream's chunks went out.
    llm: crate::llm_mock::StreamSettings,
    streams: Arc<Mutex<Vec<crate::llm_mock::StreamTiming>>>,
}

#[derive(Clone)]
pub struct MockVendor {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
}

impl MockVendor {
    pub async fn start() -> MockVendor {
        MockVendor::start_on("127.0.0.1:0", false).await
    }

    pub async fn start_on(bind: &str, verbose: bool) -> MockVendor {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        MockVendor::serve(listener, verbose)
    }

    /// The same vendor behind any listener (a TLS one: `crate::tls::TlsVendor`).
    pub fn serve<L>(listener: L, verbose: bool) -> MockVendor
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let state = Arc::new(Mutex::new(MockState {
            verbose,
            ..Default::default()
        }));
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockVendor { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn reply_next(&self, reply: Reply) {
        self.state.lock().unwrap().queued.push_back(reply);
    }

    pub fn reply_always(&self, reply: Reply) {
        self.state.lock().unwrap().default_reply = Some(reply);
    }

    /// The delay between two chunks of a streamed LLM answer.
    pub fn set_chunk_delay(&self, delay: Duration) {
        self.state.lock().unwrap().llm.chunk_delay = delay;
    }

    /// When each streamed LLM answer's chunks went out, in the order the streams began.
    pub fn streams(&self) -> Vec<crate::llm_mock::StreamTiming> {
        let streams = self.state.lock().unwrap().streams.clone();
        let timings = streams.lock().unwrap().clone();
        timings
    }
}

async fn handle(State(state): State<Arc<Mutex<MockState>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    crate::artifacts::append(
        "upstream",
        &json!({
            "method": recorded.method,
            "path": recorded.path,
            "headers": recorded.headers.iter().map(|(n, v)| (n.clone(), crate::artifacts::text(v))).collect::<Vec<_>>(),
            "body": crate::artifacts::text(&recorded.body),
        }),
    );
    let (reply, verbose, llm, streams) = {
        let mut s = state.lock().unwrap();
        s.requests.push(recorded);
        let reply = s.queued.pop_front().or_else(|| s.default_reply.clone());
        (reply, s.verbose, s.llm.clone(), s.streams.clone())
    };
    let credential = describe_credential(&parts.headers);
    if verbose {
        println!(
            "mock vendor <- {} {path}  credential: {credential}",
            parts.method
        );
    }
    match reply {
        Some(r) => {
            tokio::time::sleep(r.delay).await;
            let status =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [("content-type", "application/json")], r.body).into_response()
        }
        None => {
            let path_only = path.split('?').next().unwrap_or("");
            if parts.method == "POST" {
                if let Some(r) = crate::llm_mock::respond(path_only, &body, &llm, streams) {
                    return r;
                }
            }
            let mut answer = canned(
                parts.method.as_str(),
                path.split('?').next().unwrap_or(""),
                &body,
            );
            answer["bridle_mock"] = json!({ "received_credential": credential });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                answer.to_string(),
            )
                .into_response()
        }
    }
}

/// What credential arrived, without revealing it: its kind, its length, and whether it was
/// a vault token (which must never happen).
fn describe_credential(headers: &HeaderMap) -> String {
    let value = headers
        .get("authorization")
        .or_else(|| headers.get("x-api-key"))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match value {
        None => "none".into(),
        Some(v) if v.contains("bvt_") => {
            "A VAULT TOKEN (Bridle should never let this through)".into()
        }
        Some(v) => {
            let kind = v
                .split(' ')
                .next()
                .filter(|k| *k == "Bearer" || *k == "Basic")
                .unwrap_or("x-api-key");
            format!("{kind} secret ({} characters, not a vault token)", v.len())
        }
    }
}

/// Enough of each vendor's answer for its SDK to build a result object.
fn canned(method: &str, path: &str, body: &[u8]) -> serde_json::Value {
    let form: Vec<(String, String)> = url_decode_pairs(body);
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (method, path) {
        ("POST", "/v1/payment_intents") => json!({
            "id": "pi_mock_1", "object": "payment_intent", "status": "requires_payment_method",
            "amount": field("amount").and_then(|a| a.parse::<i64>().ok()), "currency": field("currency"),
        }),
        ("POST", "/v1/refunds") => {
            json!({ "id": "re_mock_1", "object": "refund", "amount": field("amount").and_then(|a| a.parse::<i64>().ok()).unwrap_or(1500), "currency": "usd", "status": "succeeded" })
        }
        ("POST", "/emails") => json!({ "id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c" }),
        ("POST", p) if p.ends_with("/Messages.json") => json!({
            "sid": "SM00000000000000000000000000000001", "status": "queued", "body": field("Body"), "to": field("To"),
            "num_segments": "1", "price": null, "price_unit": "USD",
        }),
        _ => json!({ "id": "mock_1", "object": "mock" }),
    }
}

fn url_decode_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}
