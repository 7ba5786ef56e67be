//! Blast-radius reports and diffs as text: a table for a terminal, Markdown for a pull
//! request, JSON for a pipeline. The rows are built once ([`rows`]) and laid out by each
//! format, so the three never disagree.

use std::time::Duration;

use serde_json::json;

use super::diff::Diff;
use super::{Assumptions, Radius};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

fn duration(secs: u64) -> String {
    if secs == 0 {
        "0s".into()
    } else {
        bridle_core::duration::format(Duration::from_secs(secs))
    }
}

fn usd(u: Option<bridle_core::money::Usd>) -> String {
    u.map_or("none".into(), |u| format!("${u}"))
}

/// The report as (question, answer lines).
pub fn rows(r: &Radius) -> Vec<(&'static str, Vec<String>)> {
    let mut rows = Vec::new();
    if let Some(t) = &r.token {
        let mut lines = vec![format!(
            "{} ({}), {}",
            t.id,
            t.label,
            if t.verified {
                "verified"
            } else {
                "decoded, not verified: no public keys given"
            }
        )];
        if let Some(why) = &t.inert {
            lines.push(format!("reaches nothing: {why}"));
        }
        rows.push(("token", lines));
    }
    rows.push((
        "endpoints",
        if r.endpoints.is_empty() {
            vec!["none".into()]
        } else {
            r.endpoints
                .iter()
                .map(|e| match &e.cost {
                    Some(c) => format!("{}  (costed: {c})", e.endpoint),
                    None => format!("{}  (uncosted)", e.endpoint),
                })
                .collect()
        },
    ));
    let m = &r.merchants;
    rows.push((
        "merchants",
        if !m.scoped {
            vec![format!("{} has no merchants to scope", r.vendor)]
        } else {
            let mut lines: Vec<String> = m.allow.clone();
            if lines.is_empty() {
                lines.push("no named merchant".into());
            }
            lines.push(if m.unscoped {
                "and calls naming no merchant (the platform account)".into()
            } else {
                "no calls without a merchant".into()
            });
            if m.stripe_context {
                lines.push("Stripe-Context allowed".into());
            }
            lines
        },
    ));
    let c = &r.caps;
    let window = duration(c.window_secs);
    rows.push((
        "caps",
        vec![
            format!("per transaction: {}", usd(c.per_transaction)),
            format!("per {window} window: {}", usd(c.per_window)),
            format!("lifetime: {}", usd(c.lifetime)),
            format!(
                "policy aggregate per {window} window: {}",
                usd(c.policy_per_window)
            ),
        ],
    ));
    rows.push((
        if r.token.is_some() {
            "time left"
        } else {
            "max TTL"
        },
        vec![duration(r.ttl_secs)],
    ));
    let s = &r.spend;
    let mut spend = vec![match (s.max_usd, s.costed_endpoints) {
        (_, false) => "$0 counted: no reachable endpoint is costed".into(),
        (Some(u), true) => format!("${u}"),
        (None, true) => "unbounded: no cap limits it".into(),
    }];
    spend.extend(s.bounds.iter().map(|b| format!("≤ ${}: {}", b.usd, b.why)));
    rows.push(("most it can spend before it expires", spend));
    rows.push((
        "calls before the loop breaker stops it",
        match &r.calls {
            None => vec!["no limit: the policy has no loop breaker".into()],
            Some(k) => vec![
                format!(
                    "{} per minute ({} identical), per proxy",
                    k.per_minute, k.identical_per_minute
                ),
                format!("up to {} in any 60 s that straddle a minute", k.in_any_60s),
                format!("{} before it expires", k.before_expiry),
            ],
        },
    ));
    let v = &r.revocation;
    rows.push((
        "revocation reaches every proxy",
        vec![
            format!(
                "uncosted calls: within {} ms (poll {} ms + tick {} ms + callout {} ms + tick {} ms)",
                v.worst_ms, v.poll_ms, v.tick_ms, v.timeout_ms, v.tick_ms
            ),
            format!("costed calls: {}", v.costed),
            format!("ledger unreachable: {}", v.ledger_unreachable),
        ],
    ));
    if !r.notes.is_empty() {
        rows.push(("notes", r.notes.clone()));
    }
    rows
}

fn title(r: &Radius) -> String {
    match &r.token {
        Some(t) => format!("token {} of policy {} ({})", t.id, r.policy, r.vendor),
        None => format!("policy {} ({})", r.policy, r.vendor),
    }
}

pub fn reports(reports: &[Radius], a: &Assumptions, format: Format) -> Result<String, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(&json!({
            "assumptions": { "proxies": a.proxies, "ledger_link": a.link },
            "reports": reports,
        }))
        .map_err(|e| e.to_string()),
        Format::Table => {
            let mut out = String::new();
            for r in reports {
                out.push_str(&format!("{}\n", title(r)));
                for (q, lines) in rows(r) {
                    for (i, line) in lines.iter().enumerate() {
                        let head = if i == 0 { q } else { "" };
                        out.push_str(&format!("  {head:<40} {line}\n"));
                    }
                }
                out.push('\n');
            }
            Ok(out)
        }
        Format::Markdown => {
            let mut out = String::from("# Blast radius\n\n");
            for r in reports {
                out.push_str(&format!("## {}\n\n| | worst case |\n|---|---|\n", title(r)));
                for (q, lines) in rows(r) {
                    let cell: Vec<String> = lines.iter().map(|l| md(l)).collect();
                    out.push_str(&format!("| {q} | {} |\n", cell.join("<br>")));
                }
                out.push('\n');
            }
            Ok(out)
        }
    }
}

/// Text safe inside a Markdown table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('*', "\\*")
}

pub fn diff(d: &Diff, base: &str, format: Format) -> Result<String, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(&json!({
            "base": base,
            "widens": d.widens,
            "narrows": d.narrows,
        }))
        .map_err(|e| e.to_string()),
        Format::Table => {
            let mut out = String::new();
            if d.widens.is_empty() {
                out.push_str(&format!("Nothing widens against {base}.\n"));
            } else {
                out.push_str(&format!("WIDENS against {base}:\n"));
                for c in &d.widens {
                    out.push_str(&format!(
                        "  + {:<24} {:<18} {}\n",
                        c.policy, c.what, c.detail
                    ));
                }
            }
            if !d.narrows.is_empty() {
                out.push_str("Narrows:\n");
                for c in &d.narrows {
                    out.push_str(&format!(
                        "  - {:<24} {:<18} {}\n",
                        c.policy, c.what, c.detail
                    ));
                }
            }
            Ok(out)
        }
        Format::Markdown => {
            let mut out = format!("# Policy change against `{base}`\n\n");
            if d.widens.is_empty() {
                out.push_str("Nothing widens.\n");
            } else {
                out.push_str(&format!(
                    "**This change widens what a stolen token can do ({} item(s)): a security review is required.**\n\n| policy | what | widens |\n|---|---|---|\n",
                    d.widens.len()
                ));
                for c in &d.widens {
                    out.push_str(&format!(
                        "| {} | {} | {} |\n",
                        c.policy,
                        c.what,
                        md(&c.detail)
                    ));
                }
            }
            if !d.narrows.is_empty() {
                out.push_str("\n| policy | what | narrows |\n|---|---|---|\n");
                for c in &d.narrows {
                    out.push_str(&format!(
                        "| {} | {} | {} |\n",
                        c.policy,
                        c.what,
                        md(&c.detail)
                    ));
                }
            }
            Ok(out)
        }
    }
}
