//! Upstream TLS for the end-to-end suite: a certificate authority of the test's own (made by
//! rcgen), a mock vendor that speaks only TLS, and a plain TCP sink.
//!
//! Both servers record, per connection, every byte Envoy sent before any decryption, and the
//! TLS vendor also the server name (SNI) of each ClientHello and whether the handshake
//! completed. The requests that get through are recorded decrypted by the ordinary
//! [`MockVendor`], which the TLS vendor wraps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::mock::MockVendor;

/// A certificate authority made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and its key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// Writes the CA certificate (PEM) into `dir`, for Envoy's `trusted_ca`.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A server certificate for `names` (DNS subject alternative names), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("none"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// What one TCP connection to a test server carried.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// The server name in the ClientHello, if the client sent one.
    pub sni: Option<String>,
    /// Whether the TLS handshake completed, or why not.
    pub handshake: Option<Result<(), String>>,
    /// Every byte received, as it came off the wire.
    pub raw: Vec<u8>,
}

impl Connection {
    /// Whether the connection opened with a TLS handshake record (a ClientHello).
    pub fn starts_with_tls(&self) -> bool {
        self.raw.len() > 5 && self.raw[0] == 0x16 && self.raw[1] == 0x03 && self.raw[5] == 0x01
    }

    /// Whether `needle` appears anywhere in what was received.
    pub fn carried(&self, needle: &str) -> bool {
        !needle.is_empty()
            && self
                .raw
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
    }
}

#[derive(Default)]
struct Log {
    connections: Vec<(Arc<Mutex<Vec<u8>>>, Connection)>,
}

#[derive(Clone, Default)]
struct SharedLog(Arc<Mutex<Log>>);

impl SharedLog {
    /// A new connection's entry, and the buffer its bytes go into.
    fn open(&self) -> (usize, Arc<Mutex<Vec<u8>>>) {
        let raw = Arc::new(Mutex::new(Vec::new()));
        let mut log = self.0.lock().unwrap();
        log.connections.push((raw.clone(), Connection::default()));
        (log.connections.len() - 1, raw)
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Connection)) {
        if let Some((_, c)) = self.0.lock().unwrap().connections.get_mut(i) {
            f(c);
        }
    }

    fn snapshot(&self) -> Vec<Connection> {
        self.0
            .lock()
            .unwrap()
            .connections
            .iter()
            .map(|(raw, c)| Connection {
                raw: raw.lock().unwrap().clone(),
                ..c.clone()
            })
            .collect()
    }
}

/// A stream that keeps a copy of every byte read from it.
pub struct Tap<S> {
    inner: S,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let read = buf.filled()[before..].to_vec();
            self.raw.lock().unwrap().extend_from_slice(&read);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts TCP connections, records them, and hands the mock vendor only those whose TLS
/// handshake completed.
struct TlsListener {
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    log: SharedLog,
}

impl TlsListener {
    async fn handshake(
        &self,
        tcp: TcpStream,
        i: usize,
        raw: Arc<Mutex<Vec<u8>>>,
    ) -> Result<TlsStream<Tap<TcpStream>>, String> {
        let tap = Tap { inner: tcp, raw };
        let start = LazyConfigAcceptor::new(Acceptor::default(), tap)
            .await
            .map_err(|e| format!("no ClientHello: {e}"))?;
        let sni = start.client_hello().server_name().map(str::to_string);
        self.log.update(i, |c| c.sni = sni);
        start
            .into_stream(self.config.clone())
            .await
            .map_err(|e| e.to_string())
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Tap<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let (i, raw) = self.log.open();
            let outcome =
                match tokio::time::timeout(Duration::from_secs(5), self.handshake(tcp, i, raw))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err("the handshake did not finish within 5 s".into()),
                };
            self.log.update(i, |c| {
                c.handshake = Some(outcome.as_ref().map(|_| ()).map_err(Clone::clone))
            });
            if let Ok(stream) = outcome {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The mock vendor behind TLS only: no cleartext is ever served.
pub struct TlsVendor {
    /// The requests that arrived over a completed handshake, decrypted.
    pub mock: MockVendor,
    log: SharedLog,
}

impl TlsVendor {
    /// Serves `identity` (its certificate is what every client is shown) on 127.0.0.1.
    pub async fn start(identity: Identity) -> TlsVendor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(identity.chain, PrivateKeyDer::Pkcs8(identity.key))
            .unwrap();
        let log = SharedLog::default();
        let listener = TlsListener {
            tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            config: Arc::new(config),
            log: log.clone(),
        };
        TlsVendor {
            mock: MockVendor::serve(listener, false),
            log,
        }
    }

    pub fn port(&self) -> u16 {
        self.mock.addr.port()
    }

    /// The upstream URL for `host`, which must resolve to 127.0.0.1 (`localhost`).
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port())
    }

    /// Every connection so far, once each handshake has an outcome. Envoy answers its client
    /// as soon as it gives up on a handshake, which can be before this side has read the
    /// alert and recorded why; so wait (bounded) for the record rather than race it.
    pub async fn connections(&self) -> Vec<Connection> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let connections = self.log.snapshot();
            let settled = connections.iter().all(|c| c.handshake.is_some());
            if settled || tokio::time::Instant::now() >= deadline {
                return connections;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TCP server that reads what each connection sends, answers nothing, and closes once the
/// client pauses: where a misconfigured proxy would send a request in clear.
pub struct RawSink {
    pub port: u16,
    log: SharedLog,
}

impl RawSink {
    pub async fn start() -> RawSink {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let log = SharedLog::default();
        let accepting = log.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let (_, raw) = accepting.open();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Whatever comes before a 500 ms pause: a ClientHello, or a request.
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf))
                            .await
                    {
                        if n == 0 {
                            break;
                        }
                        raw.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        RawSink { port, log }
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.log.snapshot()
    }
}
