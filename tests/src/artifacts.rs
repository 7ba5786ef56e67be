//! What the end-to-end suite leaves behind for the secret-hygiene and differential-path
//! checks (`e2e/hygiene.rs`), which run after every other suite.
//!
//! When `BRIDLE_E2E_ARTIFACTS` names a folder (`make e2e` sets it), the harness records there:
//! - `responses/`: every response the raw client got, with the request line it sent;
//! - `upstream/`: every request the mock vendor received, byte for byte;
//! - `logs/`: every Envoy and ledger log, copied when the process is dropped;
//! - `metrics/`: Envoy's `/stats` and the ledger's `/metrics`, read just before the drop;
//! - `audit/`: the ledger's audit log and its database files.
//!
//! Without the variable nothing is written, so a single test run by hand leaves no trace.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;

pub const ENV: &str = "BRIDLE_E2E_ARTIFACTS";

/// The header the raw client adds to every request so that the mock's record of it can be
/// matched with what was sent.
pub const CORRELATION_HEADER: &str = "x-e2e-id";

pub fn dir() -> Option<PathBuf> {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

static SEQ: AtomicU64 = AtomicU64::new(0);
static APPEND: Mutex<()> = Mutex::new(());

/// A new id, unique across the suite's processes.
pub fn next_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn kind_dir(kind: &str) -> Option<PathBuf> {
    let d = dir()?.join(kind);
    std::fs::create_dir_all(&d).ok()?;
    Some(d)
}

/// Appends one JSON record to `<kind>/<pid>.jsonl`.
pub fn append(kind: &str, record: &serde_json::Value) {
    let Some(d) = kind_dir(kind) else { return };
    let _guard = APPEND.lock().unwrap_or_else(|e| e.into_inner());
    let path = d.join(format!("{}.jsonl", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let mut line = record.to_string();
        line.push('\n');
        let _ = f.write_all(line.as_bytes());
    }
}

/// Saves a whole file as `<kind>/<unique>-<name>`.
pub fn save(kind: &str, name: &str, bytes: &[u8]) {
    if let Some(d) = kind_dir(kind) {
        let _ = std::fs::write(d.join(format!("{}-{name}", next_id())), bytes);
    }
}

pub fn save_file(kind: &str, name: &str, from: &Path) {
    if dir().is_some() {
        if let Ok(bytes) = std::fs::read(from) {
            save(kind, name, &bytes);
        }
    }
}

/// Text for a record: lossy UTF-8, and the bytes that are not, as base64 beside it.
pub fn text(bytes: &[u8]) -> serde_json::Value {
    const CAP: usize = 1 << 20;
    let shown = &bytes[..bytes.len().min(CAP)];
    match std::str::from_utf8(shown) {
        Ok(s) => s.into(),
        Err(_) => serde_json::json!({
            "lossy": String::from_utf8_lossy(shown),
            "base64": base64::engine::general_purpose::STANDARD.encode(shown),
        }),
    }
}

/// A blocking GET for `Drop` implementations, which cannot await: the body, or nothing.
pub fn blocking_get(port: u16, path: &str, bearer: Option<&str>) -> Option<Vec<u8>> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = bearer
        .map(|b| format!("authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(raw.split_off(split + 4))
}
