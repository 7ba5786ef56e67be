//! Flatness: whether the ledger's durable throughput holds as its store grows, from 1 to 1M
//! recorded calls and from 10 to 100k live tokens.
//!
//! The host's noise moves a run by ±20% minute to minute, as much as the effect measured. So
//! the stores are measured in many short interleaved rounds (one ledger running at a time,
//! the others stopped), each grown store is divided by its base store *within a round*, and
//! the figure is the median of those ratios, given with their spread.

use serde_json::{json, Value};

use crate::{median_f, round3, LedgerResult};

/// The client count the store sizes are compared at.
const CLIENTS: usize = 64;

/// (what grows, base store, grown stores), a store being (recorded calls, live tokens).
type Growth = (&'static str, (usize, usize), [(usize, usize); 2]);

const GROWTHS: [Growth; 2] = [
    ("recorded calls", (1, 10), [(10_000, 10), (1_000_000, 10)]),
    (
        "live tokens",
        (10_000, 10),
        [(10_000, 10_000), (10_000, 100_000)],
    ),
];

fn find(ledger: &[LedgerResult], (calls, tokens): (usize, usize)) -> Option<&LedgerResult> {
    ledger
        .iter()
        .find(|r| r.recorded_calls == calls && r.live_tokens == tokens && r.clients == CLIENTS)
}

/// Each grown store against its base, round by round; and the worst median per growth.
pub fn summarize(ledger: &[LedgerResult]) -> Value {
    let mut rows = Vec::new();
    let mut worst = serde_json::Map::new();
    for (what, base, grown) in GROWTHS {
        let Some(b) = find(ledger, base) else {
            continue;
        };
        let mut lowest: Option<f64> = None;
        for g in grown {
            let Some(r) = find(ledger, g) else { continue };
            let ratios: Vec<f64> = r
                .rounds
                .iter()
                .zip(&b.rounds)
                .filter(|(_, y)| y.pairs_per_sec > 0.0)
                .map(|(x, y)| x.pairs_per_sec / y.pairs_per_sec)
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let median = round3(median_f(ratios.clone()));
            lowest = Some(lowest.map_or(median, |l: f64| l.min(median)));
            rows.push(json!({
                "grows": what,
                "base": { "recorded_calls": base.0, "live_tokens": base.1 },
                "grown": { "recorded_calls": g.0, "live_tokens": g.1 },
                "ratio_median": median,
                "ratio_min": round3(ratios.iter().cloned().fold(f64::INFINITY, f64::min)),
                "ratio_max": round3(ratios.iter().cloned().fold(0.0, f64::max)),
                "rounds": ratios.len(),
            }));
        }
        if let Some(l) = lowest {
            worst.insert(what.into(), json!(l));
        }
    }
    json!({ "clients": CLIENTS, "stores": rows, "worst_median_ratio": worst })
}

pub fn markdown(flat: &Value) -> String {
    let Some(rows) = flat["stores"].as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut s = format!(
        "\n### Flatness: the ledger as its store grows\n\nDurable pairs/s at {} clients of each grown store divided by its base store's, within each round (one ledger running at a time); median and spread over rounds.\n\n| grows | base store (calls, tokens) | grown store (calls, tokens) | ratio, median | min | max | rounds |\n|---|---|---|---:|---:|---:|---:|\n",
        flat["clients"]
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {}, {} | {}, {} | {} | {} | {} | {} |\n",
            r["grows"].as_str().unwrap_or("?"),
            r["base"]["recorded_calls"],
            r["base"]["live_tokens"],
            r["grown"]["recorded_calls"],
            r["grown"]["live_tokens"],
            r["ratio_median"],
            r["ratio_min"],
            r["ratio_max"],
            r["rounds"],
        ));
    }
    s
}
