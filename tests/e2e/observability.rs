//! deploy/observability against the running system: every metric and label the Grafana
//! dashboard and the Prometheus rules query must be one that the real ledger (`/metrics`) or
//! the real Envoy with the filter (`/stats/prometheus`) exports.
//!
//! The test drives traffic that makes every series exist (costed calls up to a cap, cap
//! alerts, a looping agent, a revocation), scrapes both, parses each query with a PromQL
//! parser, and checks each metric name, each label a selector or an aggregation names,
//! each label value an equality matcher asks for, and each label a legend or an alert
//! annotation prints. What Prometheus adds itself is the only exception: the `up` series and
//! the target labels `job` and `instance`.
//!
//! It also checks the revocation-propagation measure end to end: a revoke committed in the
//! ledger shows up in Envoy's histogram, no later than the worst case `bridle
//! blast-radius` computes from the configuration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy};
use bridle_e2e::repo_root;
use bridle_e2e::stack::Stack;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::{json, Value};

/// Series Prometheus writes itself, and labels it adds to every scraped series.
const SYNTHESIZED: [&str; 1] = ["up"];
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Metric name -> label name -> values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Parses Prometheus text (and OpenMetrics) exposition: sample lines only.
fn parse_exposition(text: &str, into: &mut Scrape) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let labels = into.entry(name.to_string()).or_default();
        let Some(body) = rest.strip_prefix('{') else {
            continue;
        };
        // key="value" pairs; values may hold escaped quotes, commas and braces.
        let mut chars = body.chars().peekable();
        loop {
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim_start_matches([',', ' '])
                .to_string();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "malformed labels in {line:?}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.entry(key).or_default().insert(value);
            if chars.peek() == Some(&'}') {
                break;
            }
        }
    }
}

/// A label a selector names, with the value an equality matcher asks for.
type LabelWant = (String, Option<String>);

/// What one query asks of the scraped metrics.
#[derive(Debug, Default)]
struct Wants {
    /// Each selector's metric and the labels it names.
    selectors: Vec<(String, Vec<LabelWant>)>,
    /// Labels named by `by (...)`, `without (...)`, `on (...)`, `group_left (...)`.
    grouping: BTreeSet<String>,
}

fn walk(e: &Expr, w: &mut Wants) {
    let group = |m: &Option<LabelModifier>, w: &mut Wants| {
        if let Some(m) = m {
            w.grouping.extend(m.labels().labels.iter().cloned());
        }
    };
    match e {
        Expr::Aggregate(a) => {
            group(&a.modifier, w);
            walk(&a.expr, w);
            if let Some(p) = &a.param {
                walk(p, w);
            }
        }
        Expr::Unary(u) => walk(&u.expr, w),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                group(&m.matching, w);
                if let Some(l) = m.card.labels() {
                    w.grouping.extend(l.labels.iter().cloned());
                }
            }
            walk(&b.lhs, w);
            walk(&b.rhs, w);
        }
        Expr::Paren(p) => walk(&p.expr, w),
        Expr::Subquery(s) => walk(&s.expr, w),
        Expr::VectorSelector(v) => selector(v, w),
        Expr::MatrixSelector(m) => selector(&m.vs, w),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, w)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(v: &promql_parser::parser::VectorSelector, w: &mut Wants) {
    let name = v
        .name
        .clone()
        .unwrap_or_else(|| panic!("a selector without a metric name: {v}"));
    let mut labels = Vec::new();
    for m in v
        .matchers
        .matchers
        .iter()
        .chain(v.matchers.or_matchers.iter().flatten())
    {
        if m.name == "__name__" {
            continue;
        }
        match &m.op {
            MatchOp::Equal => labels.push((m.name.clone(), Some(m.value.clone()))),
            // An alternation of plain values must name values that exist, each of them.
            MatchOp::Re(_)
                if !m.value.is_empty()
                    && m.value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'|') =>
            {
                for alt in m.value.split('|') {
                    labels.push((m.name.clone(), Some(alt.to_string())));
                }
            }
            _ => labels.push((m.name.clone(), None)),
        }
    }
    w.selectors.push((name, labels));
}

/// Every problem with one query, given the scrape; `printed` are the labels its legend or
/// annotations print.
fn check(origin: &str, query: &str, printed: &[String], scrape: &Scrape) -> Vec<String> {
    // Grafana's variable: every value of it is a regex over policy names.
    let query = query.replace("$policy", ".*");
    let expr = match parser::parse(&query) {
        Ok(e) => e,
        Err(e) => return vec![format!("{origin}: {query:?} does not parse: {e}")],
    };
    let mut w = Wants::default();
    walk(&expr, &mut w);
    let mut problems = Vec::new();
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for (name, labels) in &w.selectors {
        if SYNTHESIZED.contains(&name.as_str()) {
            continue;
        }
        let Some(seen) = scrape.get(name) else {
            problems.push(format!("{origin}: no metric {name} is exported"));
            continue;
        };
        available.extend(seen.keys().cloned());
        for (label, value) in labels {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            match (seen.get(label), value) {
                (None, _) => problems.push(format!(
                    "{origin}: {name} has no label {label:?} (it has {:?})",
                    seen.keys().collect::<Vec<_>>()
                )),
                (Some(values), Some(v)) if !values.contains(v) => problems.push(format!(
                    "{origin}: no {name} series has {label}={v:?} (seen: {values:?})"
                )),
                _ => {}
            }
        }
    }
    let named: BTreeSet<&String> = w.grouping.iter().chain(printed).collect();
    for label in named {
        if !available.contains(label) {
            problems.push(format!(
                "{origin}: label {label:?} is on none of the metrics it uses ({available:?})"
            ));
        }
    }
    problems
}

/// `{{label}}` in a Grafana legend, `$labels.label` in an alert annotation.
fn printed_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in text.split("{{").skip(1) {
        let inner = part.split("}}").next().unwrap_or_default().trim();
        let label = inner
            .strip_prefix("$labels.")
            .unwrap_or(inner)
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if !label.is_empty() && !label.starts_with('$') {
            out.push(label.to_string());
        }
    }
    out
}

fn read_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (where, query, labels it prints) for every query of the dashboard and the rules.
fn queries() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap())
            .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("dashboard panel {:?} {}", p["title"], t["refId"]),
                t["expr"].as_str().unwrap().to_string(),
                printed_labels(t["legendFormat"].as_str().unwrap_or_default()),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label): the metric as a selector that names the label.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {}: unexpected query {q:?}", v["name"]));
            let (metric, label) = inner.split_once(',').unwrap();
            out.push((
                format!("dashboard variable {}", v["name"]),
                format!("{}{{{}=~\".+\"}}", metric.trim(), label.trim()),
                Vec::new(),
            ));
        }
    }
    let rules = read_yaml(RULES);
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let mut printed = Vec::new();
            for a in r["annotations"].as_object().into_iter().flatten() {
                printed.extend(printed_labels(a.1.as_str().unwrap_or_default()));
            }
            out.push((
                format!("rule {}", r["alert"].as_str().unwrap()),
                r["expr"].as_str().unwrap().to_string(),
                printed,
            ));
        }
    }
    out
}

const DASHBOARD: &str = "deploy/observability/grafana/bridle-dashboard.json";
const RULES: &str = "deploy/observability/prometheus/bridle-rules.yaml";
const PROMETHEUS_RULE: &str = "deploy/observability/kubernetes/prometheusrule.yaml";

#[test]
fn the_prometheus_rule_carries_the_plain_rules_file() {
    let plain = read_yaml(RULES);
    let crd = read_yaml(PROMETHEUS_RULE);
    assert_eq!(crd["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"]["groups"], plain["groups"],
        "{PROMETHEUS_RULE} and {RULES} must hold the same groups"
    );
    let alerts: BTreeSet<String> = plain["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    // The alerts the issue asks for, each one present.
    for a in [
        "BridlePolicyCapAbove80Percent",
        "BridlePolicyCapReached",
        "BridleTokenCapAbove80Percent",
        "BridleTokenCapReached",
        "BridleLedgerDown",
        "BridleLedgerUnreachableFromProxy",
        "BridleRevocationsStale",
        "BridleTokenRefusalSpike",
    ] {
        assert!(alerts.contains(a), "{RULES} has no alert {a}");
    }
}

/// The checker itself: a query naming what is not exported is caught.
#[test]
fn the_checker_catches_what_is_not_exported() {
    let mut scrape = Scrape::new();
    parse_exposition(
        "# TYPE bridle counter\nbridle{vendor=\"stripe\",policy=\"p-1\",reason=\"allowed\"} 3\nbridle_ledger_alerts_total{policy=\"p\",cap=\"per_window\",threshold=\"80\"} 1\n",
        &mut scrape,
    );
    assert!(check(
        "ok",
        "sum by (reason) (rate(bridle{reason=\"allowed\"}[5m]))",
        &["reason".into()],
        &scrape
    )
    .is_empty());
    for (bad, why) in [
        ("rate(bridle_decisions[5m])", "no metric bridle_decisions"),
        ("bridle{tenant=\"x\"}", "no label \"tenant\""),
        ("bridle{reason=\"cap_windw\"}", "reason=\"cap_windw\""),
        (
            "bridle{reason=~\"allowed|rate_limitd\"}",
            "reason=\"rate_limitd\"",
        ),
        ("sum by (merchant) (bridle)", "label \"merchant\""),
        ("sum(bridle", "does not parse"),
    ] {
        let problems = check("q", bad, &[], &scrape);
        assert!(
            problems.iter().any(|p| p.contains(why)),
            "{bad}: {problems:?}"
        );
    }
    let problems = check(
        "q",
        "bridle_ledger_alerts_total",
        &["thresold".into()],
        &scrape,
    );
    assert!(
        problems.iter().any(|p| p.contains("\"thresold\"")),
        "{problems:?}"
    );
    assert_eq!(
        printed_labels("{{policy}} {{ $labels.token }} {{ $value | humanizePercentage }}"),
        ["policy", "token"]
    );
}

fn chat(token: &str, n: usize) -> Request {
    Request::new("POST", "/v1/chat/completions")
        .bearer(token)
        .json(&json!({ "model": "gpt-test", "messages": [{ "role": "user", "content": format!("call {n}") }] }))
}

async fn scrape_envoy(envoy: &Envoy) -> String {
    Request::new("GET", "/stats/prometheus")
        .send(envoy.admin)
        .await
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_query_is_exported() {
    let ps = policies(&[json!({
        "name": "obs-openai", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
        "endpoints": [
            { "method": "POST", "path": "/v1/chat/completions", "cost": { "max": "1.00" } },
            { "method": "GET", "path": "/v1/models" },
        ],
        "caps": { "per_window": "5.00", "policy_per_window": "100.00", "window": "1h" },
        "loop_breaker": { "max_requests_per_minute": 60, "max_identical_per_minute": 3 },
    })]);
    let Stack {
        ledger,
        envoy,
        mock: _mock,
    } = Stack::start(ps).await;
    let port = envoy.port(Vendor::Openai);
    let issue = |label: &str| {
        ledger.issue(json!({ "policy": "obs-openai", "label": label, "expires_in": "30m" }))
    };

    // Spend up to the $5.00 window cap ($1.00 a call): alerts at 80 % and 100 %, then a
    // refusal for the cap.
    let (spender, spender_id) = issue("obs/run-1/spender").await;
    for n in 0..6 {
        let r = chat(&spender, n).send(port).await;
        // The cap: 403 on OpenAI, whose SDK reads 402 as the account's billing.
        let want = if n < 5 { 200 } else { 403 };
        assert_eq!(r.status, want, "call {n}: {}", r.text());
    }
    // A looping agent: the same read again and again.
    let (looper, looper_id) = issue("obs/run-2/looper").await;
    let mut refused = 0;
    for _ in 0..8 {
        if Request::new("GET", "/v1/models")
            .bearer(&looper)
            .send(port)
            .await
            .status
            == 429
        {
            refused += 1;
        }
    }
    // Three identical reads a minute, then 429 (fewer refusals if the loop straddled a
    // minute, where the counts start again).
    assert!((2..=5).contains(&refused), "{refused} refused");
    ledger
        .await_audit(&format!("token_id={looper_id}"), 8)
        .await;
    ledger
        .await_audit(&format!("token_id={spender_id}"), 6)
        .await;

    // A revocation, measured by the proxy that enforces it.
    let (revoked, revoked_id) = issue("obs/run-3/revoked").await;
    assert_eq!(chat(&revoked, 0).send(port).await.status, 200);
    let before = Instant::now();
    ledger.revoke(json!({ "token_id": revoked_id })).await;
    loop {
        let r = Request::new("GET", "/v1/models")
            .bearer(&revoked)
            .send(port)
            .await;
        if r.status == 401 {
            assert_eq!(r.reason(), "token_revoked");
            break;
        }
        assert!(before.elapsed() < Duration::from_secs(10), "never revoked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Envoy merges histograms into its admin output on its stats flush (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let envoy_text = loop {
        let text = scrape_envoy(&envoy).await;
        let mut s = Scrape::new();
        parse_exposition(&text, &mut s);
        let count = text
            .lines()
            .find(|l| l.starts_with("bridle_ledger_revocation_propagation_ms_count"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if count >= 1.0 {
            // Every worker that picked it up measured it, each within the worst case the
            // configuration allows (plus the scheduling of a loaded test machine).
            let worst = bridle_cli::render::ledger_link(
                &bridle_cli::render::Upstream::parse(&ledger.url()).unwrap(),
            )
            .revocation_reach_ms();
            let sum = text
                .lines()
                .find(|l| l.starts_with("bridle_ledger_revocation_propagation_ms_sum"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap();
            assert!(
                sum / count <= (worst + 2_000) as f64,
                "mean propagation {} ms, worst case {worst} ms",
                sum / count
            );
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation was never measured:\n{}",
            text.lines()
                .filter(|l| l.contains("revocation"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The ledger delivers cap alerts from its outbox within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ledger_text = loop {
        let text = ledger.metrics().await;
        if text.contains("threshold=\"100\"") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut scrape = Scrape::new();
    parse_exposition(&envoy_text, &mut scrape);
    parse_exposition(&ledger_text, &mut scrape);

    // The traffic above is what the queries watch: the series it made are there.
    let token_refusals = &scrape["bridle_ledger_token_refusals_last_minute"];
    assert!(
        token_refusals["token"].contains(&looper_id),
        "{token_refusals:?}"
    );
    assert!(token_refusals["label"].contains("obs/run-2/looper"));
    assert!(scrape["bridle_ledger_token_utilization_ratio"]["token"].contains(&spender_id));
    assert!(scrape["bridle"]["reason"].contains("repeat_limited"));
    assert!(scrape["bridle"]["policy"].contains("obs-openai"));

    let mut problems = Vec::new();
    let all = queries();
    assert!(all.len() > 25, "{} queries", all.len());
    for (origin, query, printed) in &all {
        problems.extend(check(origin, query, printed, &scrape));
    }
    assert!(
        problems.is_empty(),
        "queries that ask for what the ledger and Envoy do not export:\n{}",
        problems.join("\n")
    );
}
