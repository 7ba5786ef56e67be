//! Load on the ledger alone: durable reserve+settle pairs per second.
//!
//! Each of `concurrency` clients reserves in a loop; settles go to a flusher that sends them
//! in report batches, as the filter does. A pair counts once the ledger has acknowledged its
//! settle, that is, once both halves are committed to disk. With several replicas (ports)
//! the clients are spread over them, as Envoy's ledger cluster spreads calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridle_core::ledger_api::{Report, ReserveRequest, ReserveResponse, Settle, SettleOutcome};
use bridle_core::money::Usd;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub concurrency: usize,
    pub pairs_per_sec: f64,
    pub pairs: u64,
    pub seconds: f64,
    pub reserve_p50_us: u64,
    pub reserve_p99_us: u64,
    pub reserve_p999_us: u64,
    pub denied: u64,
    pub errors: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn post(client: &HttpClient, url: &str, key: &str, body: Vec<u8>) -> Result<Bytes, String> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

pub async fn run(
    ports: &[u16],
    enforcer_key: &str,
    tokens: &[String],
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency + 4)
        .build(connector);
    let reserve_urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/v1/enforce/reserve"))
        .collect();
    let report_urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/v1/enforce/report"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Settle>();
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let denied = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    // Unique across runs and processes: a reused id would replay, or be refused as another
    // token's reservation.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let run_id =
        nanos ^ (u64::from(std::process::id()) << 48) ^ RUNS.fetch_add(1, Ordering::Relaxed);

    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, url, key, tx, stop) = (
            client.clone(),
            reserve_urls[w % reserve_urls.len()].clone(),
            enforcer_key.to_string(),
            tx.clone(),
            stop.clone(),
        );
        let (histogram, denied, errors, seq) = (
            histogram.clone(),
            denied.clone(),
            errors.clone(),
            seq.clone(),
        );
        let token = tokens[w % tokens.len()].clone();
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let request = ReserveRequest {
                    token: token.clone(),
                    request_id: format!("{run_id:016x}{n:016x}"),
                    method: "POST".into(),
                    path: "/v1/payment_intents".into(),
                    merchant: None,
                    amount: Usd::from_cents(1).unwrap_or_default(),
                    detail: "bench".into(),
                    idempotency_key: None,
                    digest: None,
                    lease_calls: None,
                };
                let body = serde_json::to_vec(&request).unwrap_or_default();
                let t = Instant::now();
                match post(&client, &url, &key, body).await {
                    Ok(answer) => {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                        match serde_json::from_slice::<ReserveResponse>(&answer) {
                            Ok(ReserveResponse::Granted {
                                reservation,
                                replay,
                                ..
                            }) => {
                                let _ = tx.send(Settle {
                                    reservation,
                                    outcome: SettleOutcome::Commit,
                                    amount: None,
                                    replay,
                                    usage: None,
                                });
                            }
                            _ => {
                                denied.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = histogram.lock().await.add(&local);
        }));
    }
    drop(tx);

    let flusher = {
        let (client, urls, key) = (client.clone(), report_urls, enforcer_key.to_string());
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut settled = 0u64;
            let mut flushes = 0usize;
            let mut batch: Vec<Settle> = Vec::new();
            loop {
                let open = match tokio::time::timeout(Duration::from_millis(5), rx.recv()).await {
                    Ok(Some(s)) => {
                        batch.push(s);
                        while batch.len() < 2000 {
                            match rx.try_recv() {
                                Ok(s) => batch.push(s),
                                Err(_) => break,
                            }
                        }
                        true
                    }
                    Ok(None) => false,
                    Err(_) => true,
                };
                if !batch.is_empty() {
                    let report = Report {
                        settles: std::mem::take(&mut batch),
                        audit: Vec::new(),
                    };
                    let n = report.settles.len() as u64;
                    // Reports take turns over the replicas, as the filter's would.
                    flushes += 1;
                    let url = &urls[flushes % urls.len()];
                    match post(
                        &client,
                        url,
                        &key,
                        serde_json::to_vec(&report).unwrap_or_default(),
                    )
                    .await
                    {
                        Ok(_) => settled += n,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if !open {
                    return settled;
                }
            }
        })
    };

    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let pairs = flusher.await.unwrap_or(0);
    let seconds = start.elapsed().as_secs_f64();
    let h = histogram.lock().await;
    LoadResult {
        concurrency,
        pairs_per_sec: pairs as f64 / seconds,
        pairs,
        seconds,
        reserve_p50_us: h.value_at_quantile(0.5),
        reserve_p99_us: h.value_at_quantile(0.99),
        reserve_p999_us: h.value_at_quantile(0.999),
        denied: denied.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}
