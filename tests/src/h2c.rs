//! An HTTP/2 client over cleartext (h2c, prior knowledge), frame by frame: the body goes out
//! in the pieces a test gives, each its own DATA frame with a pause between them, and may end
//! with trailers. Envoy's listeners accept HTTP/2 as well as HTTP/1.1, and an HTTP/2 request
//! reaches the filter in ways an HTTP/1.1 one does not (trailers, above all).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

use crate::client::Response;

/// A request to send over HTTP/2.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Each piece is one DATA frame.
    pub body: Vec<Vec<u8>>,
    /// Sent in a HEADERS frame after the body, when not empty.
    pub trailers: Vec<(String, String)>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn bearer(self, token: &str) -> Request {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn piece(mut self, bytes: impl AsRef<[u8]>) -> Request {
        self.body.push(bytes.as_ref().to_vec());
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Request {
        self.trailers.push((name.into(), value.into()));
        self
    }

    /// Sends the request to `127.0.0.1:port` and reads the whole response. Fails the test on
    /// any error; see [`Request::try_send`].
    pub async fn send(&self, port: u16) -> Response {
        self.try_send(port)
            .await
            .unwrap_or_else(|e| panic!("HTTP/2 request to :{port} failed: {e}"))
    }

    /// Sends the request; a stream the server resets is an `Err`.
    pub async fn try_send(&self, port: u16) -> Result<Response, String> {
        tokio::time::timeout(Duration::from_secs(30), self.exchange(port))
            .await
            .map_err(|_| "no answer within 30 s".to_string())?
    }

    async fn exchange(&self, port: u16) -> Result<Response, String> {
        let id = crate::artifacts::next_id();
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (client, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let mut builder = http::Request::builder()
            .method(self.method.as_str())
            .uri(format!("http://localhost{}", self.path))
            .header(crate::artifacts::CORRELATION_HEADER, id.as_str());
        for (n, v) in &self.headers {
            builder = builder.header(n.as_str(), v.as_str());
        }
        let request = builder.body(()).map_err(|e| e.to_string())?;
        let headers_only = self.body.is_empty() && self.trailers.is_empty();
        let (response, mut send) = client
            .send_request(request, headers_only)
            .map_err(|e| e.to_string())?;
        // The answer may come before the whole body is sent (a refusal): read it alongside.
        let write = async {
            for (i, piece) in self.body.iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let last = i + 1 == self.body.len() && self.trailers.is_empty();
                send.reserve_capacity(piece.len());
                send.send_data(Bytes::from(piece.clone()), last)
                    .map_err(|e| e.to_string())?;
            }
            if !self.trailers.is_empty() {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let mut trailers = HeaderMap::new();
                for (n, v) in &self.trailers {
                    trailers.append(
                        HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?,
                        HeaderValue::from_str(v).map_err(|e| e.to_string())?,
                    );
                }
                send.send_trailers(trailers).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let read = async {
            let response = response.await.map_err(|e| e.to_string())?;
            let (parts, mut body) = response.into_parts();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, String>(Response {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: bytes,
            })
        };
        let (written, read) = tokio::join!(write, read);
        let response = read?;
        // A body cut short by the answer (Envoy resets the rest of a refused stream) is
        // expected; any other failure to send is not.
        if let Err(e) = written {
            if response.status < 400 {
                return Err(format!("sending the request failed: {e}"));
            }
        }
        crate::artifacts::append(
            "responses",
            &serde_json::json!({
                "id": id,
                "method": self.method,
                "path": self.path,
                "status": response.status,
                "headers": response.headers,
                "body": crate::artifacts::text(&response.body),
            }),
        );
        Ok(response)
    }
}
