//! A raw HTTP/1.1 client: the request line and headers go out byte for byte, so tests can
//! send `..`, `%2f`, duplicate headers and non-UTF-8 values that a URL library would
//! normalize or refuse.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The Bridle reason header, or "" for a response Bridle did not refuse.
    pub fn reason(&self) -> &str {
        self.header("x-bridle-reason").unwrap_or("")
    }
}

/// A request to send.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: impl AsRef<[u8]>) -> Request {
        Request {
            method: method.into(),
            path: path.as_ref().to_vec(),
            ..Default::default()
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> Request {
        self.header("authorization", format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = body.as_ref().to_vec();
        self
    }

    pub fn form(self, body: &str) -> Request {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    pub fn json(self, body: &serde_json::Value) -> Request {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }

    pub async fn send(&self, port: u16) -> Response {
        self.try_send(port, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("request to :{port} failed: {e}"))
    }

    pub async fn try_send(&self, port: u16, timeout: Duration) -> Result<Response, String> {
        tokio::time::timeout(timeout, self.exchange(port))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn exchange(&self, port: u16) -> Result<Response, String> {
        let id = crate::artifacts::next_id();
        let response = self.exchange_as(port, &id).await;
        if let Ok(r) = &response {
            crate::artifacts::append(
                "responses",
                &serde_json::json!({
                    "id": id,
                    "method": self.method,
                    "path": crate::artifacts::text(&self.path),
                    "status": r.status,
                    "headers": r.headers,
                    "body": crate::artifacts::text(&r.body),
                }),
            );
        }
        response
    }

    async fn exchange_as(&self, port: u16, id: &str) -> Result<Response, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(512 + self.body.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        out.extend_from_slice(
            format!("{}: {id}\r\n", crate::artifacts::CORRELATION_HEADER).as_bytes(),
        );
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        // Write and read at once: a proxy may answer (413, 431) and close before it has read
        // the whole request, and that answer is the one to report, not the failed write.
        let (mut rd, mut wr) = stream.into_split();
        let head_only = self.method == "HEAD";
        // The write half is kept to the end: dropping it would half-close the connection,
        // which Envoy takes as the client going away.
        let write = async move {
            let r = wr.write_all(&out).await;
            (r, wr)
        };
        let read = read_response(&mut rd, head_only);
        let ((written, _wr), raw) = tokio::join!(write, read);
        match (raw, written) {
            (Ok(raw), _) if !raw.is_empty() => parse(&raw),
            (_, Err(e)) => Err(e.to_string()),
            (Err(e), _) => Err(e),
            (Ok(raw), Ok(())) => parse(&raw),
        }
    }
}

/// Writes `pieces` on one connection, `gap` apart, as given (request line and headers
/// included), and reads the response: for a body that must reach Envoy in several reads,
/// such as chunked encoding. Writing stops at the first error, once an answer has come.
pub async fn send_raw(port: u16, pieces: &[Vec<u8>], gap: Duration) -> Result<Response, String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    let write = async move {
        for piece in pieces {
            if wr.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        wr
    };
    let read = read_response(&mut rd, false);
    let (_wr, raw) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
            .await
            .map_err(|_| "no answer within 30 s".to_string())?;
    parse(&raw?)
}

/// Reads until the response is complete rather than until EOF: Envoy may hold the
/// connection open after a response (delayed close).
async fn read_response(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    head_only: bool,
) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !complete(&raw, head_only) {
        match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    Ok(raw)
}

/// Whether `raw` holds a whole response: headers, then a body of content-length bytes or a
/// final chunk.
fn complete(raw: &[u8], head_only: bool) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head_only {
        return true;
    }
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    }) {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304")
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| e.to_string())?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("short chunk")?;
    }
}
