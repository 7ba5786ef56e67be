//! A gate between Envoy and the real ledger: it passes every call through, except that it can
//! fail the revocation feed alone (so a proxy's revocation set goes stale while the ledger
//! still answers reservations), and it records each reservation asked and the ledger's answer,
//! for tests that must see what a proxy asked for rather than only what it did.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use bridle_core::ledger_api::{RESERVE_PATH, REVOCATIONS_PATH};
use serde_json::Value;

use crate::client;

/// One reservation as it passed the gate: what the proxy asked, what the ledger answered.
#[derive(Clone, Debug)]
pub struct Reserve {
    pub request: Value,
    pub status: u16,
    pub answer: Value,
}

#[derive(Default)]
struct Gate {
    ledger_port: u16,
    feed_down: AtomicBool,
    reserves: Mutex<Vec<Reserve>>,
}

#[derive(Clone)]
pub struct LedgerGate {
    pub addr: SocketAddr,
    gate: Arc<Gate>,
}

impl LedgerGate {
    /// A gate in front of the ledger on `ledger_port` (which may stop and start behind it).
    pub async fn start(ledger_port: u16) -> LedgerGate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Gate {
            ledger_port,
            ..Default::default()
        });
        let app = Router::new().fallback(pass).with_state(gate.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LedgerGate { addr, gate }
    }

    /// The URL to give Envoy as its ledger.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails every poll of the revocation feed with a 503 (`true`), or passes them again.
    pub fn fail_feed(&self, down: bool) {
        self.gate.feed_down.store(down, Ordering::SeqCst);
    }

    /// The reservations that passed so far, in order.
    pub fn reserves(&self) -> Vec<Reserve> {
        self.gate.reserves.lock().unwrap().clone()
    }
}

fn answer(status: u16, headers: &[(String, String)], body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (n, v) in headers {
        // Framing is the gate's own on each side.
        if matches!(
            n.to_ascii_lowercase().as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(n), HeaderValue::try_from(v)) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

async fn pass(State(gate): State<Arc<Gate>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if path.starts_with(REVOCATIONS_PATH) && gate.feed_down.load(Ordering::SeqCst) {
        return answer(503, &[], b"the gate fails the feed".to_vec());
    }
    let mut forward = client::Request::new(&method, &path);
    for (n, v) in req.headers() {
        if !matches!(
            n.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            forward = forward.header(n.as_str(), v.as_bytes());
        }
    }
    let body = to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let forward = forward.body(&body);
    // A ledger that is down is one the proxy cannot reach: a 502, which it takes as that.
    let got = match forward
        .try_send(gate.ledger_port, Duration::from_secs(10))
        .await
    {
        Ok(got) => got,
        Err(e) => return answer(502, &[], format!("the gate: {e}").into_bytes()),
    };
    if path == RESERVE_PATH {
        gate.reserves.lock().unwrap().push(Reserve {
            request: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status: got.status,
            answer: serde_json::from_slice(&got.body).unwrap_or(Value::Null),
        });
    }
    answer(got.status, &got.headers, got.body)
}
