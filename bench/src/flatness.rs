//! Flatness: whether the ledger's durable throughput holds as its store grows, from 1 to 1M
//! recorded calls and from 10 to 100k live tokens.
//!
//! The load is the same before and after each growth (over the same 10 tokens), so that what
//! is measured is the store's size. How many distinct tokens the load touches is another
//! axis, with a cost of its own (more index pages written per group commit), and is given
//! as its own row: the same store under a load spread over 64 tokens.
//!
//! The host's noise moves a run by ±20% minute to minute, as much as the effect measured. So
//! the stores are measured in many short interleaved rounds (one ledger running at a time,
//! the others stopped), each grown store is divided by its base store *within a round*, and
//! the figure is the median of those ratios, given with their spread.

use serde_json::{json, Value};

use crate::{median_f, round3, LedgerResult};

/// The client count the store sizes are compared at.
const CLIENTS: usize = 64;

/// A store as (recorded calls, live tokens, tokens the load spreads over).
type StoreKey = (usize, usize, usize);

/// (what grows, base store, grown stores).
type Growth = (&'static str, StoreKey, &'static [StoreKey]);

const GROWTHS: [Growth; 3] = [
    (
        "recorded calls",
        (1, 10, 10),
        &[(10_000, 10, 10), (1_000_000, 10, 10)],
    ),
    (
        "live tokens",
        (10_000, 10, 10),
        &[(10_000, 10_000, 10), (10_000, 100_000, 10)],
    ),
    (
        "tokens the load spreads over",
        (10_000, 10_000, 10),
        &[(10_000, 10_000, 64)],
    ),
];

/// The stores `make bench` grows: a concurrency sweep on a small store, then every store
/// the growths above name, at [`CLIENTS`].
pub const STORES: [crate::LedgerStore; 6] = [
    crate::LedgerStore {
        calls: 1,
        tokens: 10,
        load_tokens: 10,
        clients: &[1, 16, CLIENTS],
    },
    at_clients(10_000, 10, 10),
    at_clients(1_000_000, 10, 10),
    at_clients(10_000, 10_000, 10),
    at_clients(10_000, 100_000, 10),
    at_clients(10_000, 10_000, 64),
];

/// A store measured at [`CLIENTS`] only: (recorded calls, live tokens, load over tokens).
const fn at_clients(calls: usize, tokens: usize, load_tokens: usize) -> crate::LedgerStore {
    crate::LedgerStore {
        calls,
        tokens,
        load_tokens,
        clients: &[CLIENTS],
    }
}

/// A store's pairs/s divided by its base's, round by round.
fn within_rounds(grown: &LedgerResult, base: &LedgerResult) -> Vec<f64> {
    grown
        .rounds
        .iter()
        .zip(&base.rounds)
        .filter(|(_, b)| b.pairs_per_sec > 0.0)
        .map(|(g, b)| g.pairs_per_sec / b.pairs_per_sec)
        .collect()
}

fn find(ledger: &[LedgerResult], (calls, tokens, load): StoreKey) -> Option<&LedgerResult> {
    ledger.iter().find(|r| {
        r.recorded_calls == calls
            && r.live_tokens == tokens
            && r.load_tokens == load
            && r.clients == CLIENTS
    })
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
        for &g in grown {
            let Some(r) = find(ledger, g) else { continue };
            let ratios = within_rounds(r, b);
            if ratios.is_empty() {
                continue;
            }
            let median = round3(median_f(ratios.clone()));
            lowest = Some(lowest.map_or(median, |l: f64| l.min(median)));
            rows.push(json!({
                "grows": what,
                "base": { "recorded_calls": base.0, "live_tokens": base.1, "load_tokens": base.2 },
                "grown": { "recorded_calls": g.0, "live_tokens": g.1, "load_tokens": g.2 },
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
        "\n### Flatness: the ledger as its store grows\n\nDurable pairs/s at {} clients of each grown store divided by its base store's, within each round (one ledger running at a time); median and spread over rounds.\n\n| grows | base store (calls, tokens, load over) | grown store (calls, tokens, load over) | ratio, median | min | max | rounds |\n|---|---|---|---:|---:|---:|---:|\n",
        flat["clients"]
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {}, {}, {} | {}, {}, {} | {} | {} | {} | {} |\n",
            r["grows"].as_str().unwrap_or("?"),
            r["base"]["recorded_calls"],
            r["base"]["live_tokens"],
            r["base"]["load_tokens"],
            r["grown"]["recorded_calls"],
            r["grown"]["live_tokens"],
            r["grown"]["load_tokens"],
            r["ratio_median"],
            r["ratio_min"],
            r["ratio_max"],
            r["rounds"],
        ));
    }
    s
}

/// `bridle-bench live-tokens`: the live-token growth taken apart. The first store is the
/// base; the others grow the live tokens with the load kept over the same 10, or keep the
/// store and spread the load over 64 tokens, so that the two causes separate.
pub const LIVE_TOKEN_STORES: [crate::LedgerStore; 5] = [
    at_clients(10_000, 10, 10),
    at_clients(10_000, 10_000, 10),
    at_clients(10_000, 100_000, 10),
    at_clients(10_000, 10_000, 64),
    at_clients(10_000, 64, 64),
];

/// Each store against the first, within rounds: median and spread.
pub fn live_tokens_markdown(ledger: &[LedgerResult]) -> String {
    let Some(base) = ledger.first() else {
        return String::new();
    };
    let mut s = format!(
        "| live tokens | load over | pairs/s, median | vs {} live tokens, load over {}: median | min | max |\n|---:|---:|---:|---:|---:|---:|\n",
        base.live_tokens, base.load_tokens
    );
    for r in ledger {
        let ratios = within_rounds(r, base);
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} |\n",
            r.live_tokens,
            r.load_tokens,
            r.pairs_per_sec,
            round3(median_f(ratios.clone())),
            round3(ratios.iter().cloned().fold(f64::INFINITY, f64::min)),
            round3(ratios.iter().cloned().fold(0.0, f64::max)),
        ));
    }
    s
}
