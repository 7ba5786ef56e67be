//! Secret hygiene and the differential path check, over everything the rest of the suite
//! left behind (see `bridle_e2e::artifacts`). `make e2e` runs this after every other suite;
//! it refuses to pass on an empty or missing record.
//!
//! - No canary vendor secret (nor the ledger's keys), plain or in the base64 of a Basic
//!   credential, appears in any response, Envoy or ledger log, audit record, ledger database
//!   or metric.
//! - No whole vault token appears in a log, an audit record, the database or a metric, and no
//!   vault token at all reaches the vendor.
//! - Every request the vendor received arrived with exactly the path (and query) that was
//!   sent, when that path was canonical: the filter admits only paths equal to their canonical
//!   form, so the sent path is the one it matched, and nothing may rewrite it after the
//!   decision. A non-canonical path can only reach the vendor through Envoy's own
//!   normalization (which runs before the filter, in configs that enable it): then what
//!   arrives must be canonical.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use bridle_core::path;
use bridle_e2e::artifacts;
use bridle_e2e::keys::all_canaries;
use serde_json::Value;

fn files(dir: &Path, kind: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join(kind))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn records(dir: &Path, kind: &str) -> Vec<Value> {
    files(dir, kind)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every form a canary could leak in: itself, each distinctive part of a `sid:secret` pair,
/// and the base64 of a Basic credential built from it.
fn needles() -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for c in all_canaries() {
        out.push((c.to_string(), c.as_bytes().to_vec()));
        for part in c.split(':').filter(|p| p.contains("CANARY")) {
            out.push((format!("part of {c}"), part.as_bytes().to_vec()));
        }
        for basic in [c.to_string(), format!("{c}:")] {
            out.push((
                format!("base64 of {basic}"),
                b64.encode(basic.as_bytes()).into_bytes(),
            ));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A whole vault token: prefix, claims, signature.
fn find_vault_token(hay: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(hay);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("bvt_") {
        let candidate: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c))
            .collect();
        if candidate.split('.').filter(|p| !p.is_empty()).count() >= 3 && candidate.len() > 40 {
            return Some(candidate);
        }
        rest = &rest[at + 4..];
    }
    None
}

#[test]
#[ignore = "run by `make e2e` after the whole suite, over what it recorded"]
fn no_secret_leaks_and_no_path_rewrites_across_the_whole_suite() {
    let dir = artifacts::dir().unwrap_or_else(|| {
        panic!(
            "{} is not set: run `make e2e`, which records the suite and then runs this",
            artifacts::ENV
        )
    });
    // Nothing vacuous: the suite must have left a substantial record of each kind.
    let responses = records(&dir, "responses");
    let upstream = records(&dir, "upstream");
    let logs = files(&dir, "logs");
    let metrics = files(&dir, "metrics");
    let audit = files(&dir, "audit");
    let count = |files: &[PathBuf], name: &str| {
        files
            .iter()
            .filter(|f| f.to_string_lossy().ends_with(name))
            .count()
    };
    let minimums = [
        ("responses", responses.len(), 500),
        ("vendor requests", upstream.len(), 150),
        ("Envoy logs", count(&logs, "envoy.log"), 20),
        ("ledger logs", count(&logs, "ledger.log"), 10),
        ("Envoy stats", count(&metrics, "envoy-stats.txt"), 20),
        ("ledger metrics", count(&metrics, "ledger-metrics.txt"), 10),
        ("audit logs", count(&audit, "ledger-audit.json"), 10),
    ];
    for (what, got, min) in minimums {
        assert!(
            got >= min,
            "only {got} {what} recorded (at least {min} expected): did the suite run with {}?",
            artifacts::ENV
        );
    }

    let needles = needles();
    let mut leaks = Vec::new();
    let mut scanned_bytes = 0usize;
    let mut scan = |label: String, bytes: &[u8], tokens_too: bool| {
        scanned_bytes += bytes.len();
        for (name, needle) in &needles {
            if contains(bytes, needle) {
                leaks.push(format!("{name} in {label}"));
            }
        }
        if tokens_too {
            if let Some(t) = find_vault_token(bytes) {
                leaks.push(format!(
                    "a vault token ({}…) in {label}",
                    &t[..t.len().min(16)]
                ));
            }
        }
    };
    for r in &responses {
        // Responses may carry vault tokens (issuance returns one), never a secret.
        let label = format!("the response to {} {}", r["method"], r["path"]);
        scan(label, r.to_string().as_bytes(), false);
    }
    for kind in ["logs", "metrics", "audit"] {
        for f in files(&dir, kind) {
            let bytes = std::fs::read(&f).unwrap();
            scan(f.display().to_string(), &bytes, true);
        }
    }
    // The vendor gets the real secret, and never a vault token, in any header or the body.
    for r in &upstream {
        if r.to_string().contains("bvt_") {
            leaks.push(format!(
                "a vault token reached the vendor: {} {}",
                r["method"], r["path"]
            ));
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));

    // Differential: what the vendor received against what was sent, request by request.
    let sent: HashMap<&str, &Value> = responses
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?, r)))
        .collect();
    let (mut compared, mut normalized_before) = (0, 0);
    let mut rewritten = Vec::new();
    for r in &upstream {
        let Some(id) = r["headers"].as_array().and_then(|h| {
            h.iter()
                .find(|p| p[0] == artifacts::CORRELATION_HEADER)
                .and_then(|p| p[1].as_str())
        }) else {
            continue; // sent by an official SDK, not the raw client
        };
        let Some(request) = sent.get(id) else {
            continue; // the raw client timed out before the answer (chaos tests)
        };
        let (sent_path, got_path) = (request["path"].as_str(), r["path"].as_str());
        let (Some(sent_path), Some(got_path)) = (sent_path, got_path) else {
            rewritten.push(format!(
                "a non-UTF-8 path reached the vendor: {}",
                r["path"]
            ));
            continue;
        };
        if path::check(sent_path.as_bytes()).is_ok() {
            // Canonical as sent: the filter matched exactly this, and so must the vendor get it.
            compared += 1;
            if sent_path != got_path || request["method"] != r["method"] {
                rewritten.push(format!(
                    "sent {} {sent_path}, the vendor received {} {got_path}",
                    request["method"], r["method"]
                ));
            }
        } else {
            // Only Envoy's own normalization (normalize_path, merge_slashes), which runs before
            // the filter, can turn a refused shape into one the filter admits; what reaches the
            // vendor must then be canonical.
            normalized_before += 1;
            if path::check(got_path.as_bytes()).is_err() {
                rewritten.push(format!(
                    "sent {sent_path}, the vendor received the non-canonical {got_path}"
                ));
            }
        }
    }
    assert!(rewritten.is_empty(), "{}", rewritten.join("\n"));
    assert!(
        compared >= 150,
        "only {compared} vendor requests matched a sent request"
    );
    println!(
        "hygiene: scanned {} responses, {} logs, {} metric dumps, {} audit files ({} MiB) for {} secret forms; {} vendor requests for vault tokens; {compared} paths compared byte for byte; {normalized_before} normalized by Envoy before the filter, each canonical",
        responses.len(),
        logs.len(),
        metrics.len(),
        audit.len(),
        scanned_bytes >> 20,
        needles.len(),
        upstream.len()
    );
}
