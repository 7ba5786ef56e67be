//! `bridle-bench tail-where [seconds]`: where the costed call's one-connection tail is spent.
//!
//! wrk reports a p99 and nothing about the slow requests themselves. This drives the costed
//! Stripe call over one kept-alive connection with its own client, timing every request,
//! and sets beside the slow ones what each hop saw over the same seconds:
//! - the ledger's own time to check the caps and commit (`reserve_duration_seconds`);
//! - Envoy's time for the reservation callout and for the vendor call
//!   (`upstream_rq_time` of the ledger's and the vendor's clusters);
//! - when the slow requests started, as a phase of the ledger's 1 s maintenance and of
//!   100 ms, a multiple of the filter's report tick (20 ms, and 100 ms before `98449bf`),
//!   which a periodic stall would bunch up.
//!
//! Layout as every other measurement (Envoy alone on core 0; this client, the upstream and
//! the ledger on core 1), or with `--isolated` as `tail.rs`'s: the ledger alone on core 1.
//! `--wasm <path>` runs another build of the filter (say, the commit before a change), so
//! that runs of two builds can alternate. `--lease` sends the call under the same policy with
//! a spend lease (`lease.rs`), so that the leased tail can be set beside the unleased one; the
//! report then says how many of the requests were spent from a lease, and a run with none
//! fails. (A build from before spend leases, f385bd5, refuses such a policy.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::Envoy;
use bridle_e2e::keys::Keys;
use hdrhistogram::Histogram;

use crate::{pin_to, token};

/// One request's start (since the run began) and latency.
struct Timed {
    start: Duration,
    latency: Duration,
}

pub async fn run(seconds: u64, isolated: bool, leased: bool, wasm: Option<PathBuf>) -> String {
    let keys = Keys::generate();
    let mut policies = crate::bench_policies();
    let mut policy = "bench".to_string();
    if leased {
        let p = crate::lease::leased_policy(&policies[0]);
        policy.clone_from(&p.policy.name);
        policies.push(p);
    }
    let (ledger, mut setup) = crate::ledger_and_setup(&keys, policies).await;
    if let Some(wasm) = wasm {
        assert!(wasm.exists(), "no filter build at {}", wasm.display());
        setup.wasm = Some(wasm);
    }
    let envoy = Envoy::start(&setup).await.unwrap();
    pin_to(envoy.pid(), 0);
    let request = format!(
        "POST /v1/payment_intents HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 23\r\n\r\n\
         amount=100&currency=usd",
        token(&keys, &policy, "tok_bench_tail".into())
    );
    let port = envoy.port(Vendor::Stripe);
    crate::tail::isolate_ledger(isolated);
    let warm = request.clone();
    tokio::task::spawn_blocking(move || drive(port, &warm, Duration::from_secs(3)))
        .await
        .unwrap();
    let envoy_before = envoy_histograms(&envoy).await;
    let ledger_before = ledger.metrics().await;
    let spends_before = crate::lease::spends(envoy.admin).await;
    let timed =
        tokio::task::spawn_blocking(move || drive(port, &request, Duration::from_secs(seconds)))
            .await
            .unwrap();
    let envoy_after = envoy_histograms(&envoy).await;
    let ledger_after = ledger.metrics().await;
    let spent = crate::lease::spends(envoy.admin).await - spends_before;
    let mut s = format!("policy {policy}");
    if leased {
        let lease = crate::lease::LEASE;
        s += &format!(
            " (lease: {} calls, {} ms): {spent} of {} requests spent from a lease ({:.1}%)",
            lease.calls,
            lease.max_age_ms,
            timed.len(),
            100.0 * spent as f64 / timed.len().max(1) as f64
        );
        assert!(
            spent > 0,
            "{s}: Envoy's lease counter did not move, so this run measured a reservation per call"
        );
    }
    s + "\n"
        + &report(
            &timed,
            &envoy_before,
            &envoy_after,
            &ledger_before,
            &ledger_after,
        )
}

/// Sends the request over one connection, again and again, for `how_long`.
fn drive(port: u16, request: &str, how_long: Duration) -> Vec<Timed> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_nodelay(true).unwrap();
    let began = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while began.elapsed() < how_long {
        let t = Instant::now();
        conn.write_all(request.as_bytes()).unwrap();
        read_response(&mut conn, &mut buf);
        out.push(Timed {
            start: t - began,
            latency: t.elapsed(),
        });
    }
    out
}

/// Reads one response with a Content-Length body; panics on anything but a 2xx.
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "the proxy closed the connection");
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 2"), "not a 2xx: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while have < end + 4 + length {
            let n = conn.read(&mut buf[have..]).unwrap();
            assert!(n > 0, "the proxy closed the connection");
            have += n;
        }
        return;
    }
}

/// Envoy's upstream request time histograms, as cumulative bucket counts, and its
/// connection counters.
async fn envoy_histograms(envoy: &Envoy) -> String {
    bridle_e2e::client::Request::new(
        "GET",
        "/stats/prometheus?filter=upstream_(rq_time|cx_total)",
    )
    .send(envoy.admin)
    .await
    .text()
}

/// `(upper bound, cumulative count)` of every bucket of the named histogram series in a
/// Prometheus text page whose line contains `select`.
fn buckets(page: &str, series: &str, select: &str) -> Vec<(String, u64)> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{series}_bucket")) && l.contains(select))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((le, count))
        })
        .collect()
}

/// The buckets' counts over the run: after minus before, not cumulative.
fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> String {
    let mut prev = 0;
    let mut cells = Vec::new();
    for (le, a) in after {
        let b = before.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
        let cum = a - b;
        if cum > prev {
            cells.push(format!("≤{le}: {}", cum - prev));
        }
        prev = cum;
    }
    cells.join(", ")
}

fn report(
    timed: &[Timed],
    envoy_before: &str,
    envoy_after: &str,
    ledger_before: &str,
    ledger_after: &str,
) -> String {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for t in timed {
        h.record(t.latency.as_micros() as u64).unwrap();
    }
    let p50 = h.value_at_quantile(0.5);
    let p99 = h.value_at_quantile(0.99);
    let slow: Vec<&Timed> = timed
        .iter()
        .filter(|t| t.latency.as_micros() as u64 >= p99)
        .collect();
    let phases = |period_ms: u128| {
        let mut counts = [0u32; 10];
        for t in &slow {
            counts[(t.start.as_millis() % period_ms * 10 / period_ms) as usize] += 1;
        }
        counts
    };
    let mut s = format!(
        "{} requests over one connection: p50 {p50} µs, p90 {} µs, p99 {p99} µs, p99.9 {} µs, max {} µs\n",
        timed.len(),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.999),
        h.max()
    );
    s += &format!(
        "the {} requests at or over p99 by start phase (tenths), of 1 s: {:?}; of 100 ms: {:?}\n",
        slow.len(),
        phases(1000),
        phases(100)
    );
    let gaps: Vec<u128> = slow
        .windows(2)
        .map(|w| (w[1].start - w[0].start).as_millis())
        .collect();
    s += &format!("ms between consecutive slow requests: {gaps:?}\n");
    s += &format!(
        "ledger reserve_duration_seconds over the run: {}\n",
        delta(
            &buckets(ledger_before, "bridle_ledger_reserve_duration_seconds", ""),
            &buckets(ledger_after, "bridle_ledger_reserve_duration_seconds", "")
        )
    );
    for cluster in ["bridle_ledger", "vendor_stripe"] {
        let select = format!("envoy_cluster_name=\"{cluster}\"");
        s += &format!(
            "Envoy {cluster} upstream_rq_time (ms) over the run: {}\n",
            delta(
                &buckets(envoy_before, "envoy_cluster_upstream_rq_time", &select),
                &buckets(envoy_after, "envoy_cluster_upstream_rq_time", &select)
            )
        );
    }
    // A request that waits for a new connection to the ledger pays a connect as well. (A
    // counter is current; Envoy merges histograms only on its stats flush, every 5 s.)
    let connections = |page: &str| {
        page.lines()
            .find(|l| {
                l.starts_with("envoy_cluster_upstream_cx_total{")
                    && l.contains("envoy_cluster_name=\"bridle_ledger\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    s += &format!(
        "Envoy bridle_ledger connections opened over the run: {}\n",
        connections(envoy_after) - connections(envoy_before)
    );
    s
}
