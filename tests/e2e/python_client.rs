//! The Python client (clients/python, built as a wheel and installed into .venv by `make
//! test`) against the real ledger and Envoy with the official SDKs and the repository's own
//! policies: tests/client/client_flow.py drives it and prints what it saw; here we check
//! that against the ledger's records, Envoy's counters and what the vendor received.
//! README.md's "Python client" block runs as written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bridle_core::policy::CompiledPolicy;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;
use bridle_e2e::keys::ADMIN_KEY;
use bridle_e2e::stack::Stack;
use bridle_e2e::{python, repo_root};
use serde_json::{json, Value};

const MERCHANT: &str = "acct_1BridleDemoA";
const TWILIO_SID: &str = "AC00000000000000000000000000b71d1e";

fn repo_policies() -> Vec<CompiledPolicy> {
    bridle_core::policy_files::load(&[repo_root().join("policies")])
        .unwrap_or_else(|e| panic!("policies/: {e:?}"))
}

async fn start() -> Stack {
    Stack::start(repo_policies()).await
}

/// The environment the client reads: the ledger, the admin key, each vendor's listener.
fn client_env(s: &Stack) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("BRIDLE_LEDGER_URL", s.ledger.url()),
        ("BRIDLE_ADMIN_KEY", ADMIN_KEY.to_string()),
    ];
    for v in Vendor::ALL {
        let name = match v {
            Vendor::Stripe => "BRIDLE_PROXY_STRIPE",
            Vendor::Twilio => "BRIDLE_PROXY_TWILIO",
            Vendor::Resend => "BRIDLE_PROXY_RESEND",
            Vendor::Openai => "BRIDLE_PROXY_OPENAI",
            Vendor::Anthropic => "BRIDLE_PROXY_ANTHROPIC",
        };
        vars.push((name, format!("http://127.0.0.1:{}", s.envoy.port(v))));
    }
    vars
}

/// No vault token ever reached the vendor.
fn vendor_never_saw_a_vault_token(s: &Stack) {
    let got = s.mock.requests();
    assert!(!got.is_empty());
    for r in got {
        assert!(
            !r.everything().contains("bvt_"),
            "a vault token reached the vendor:\n{}",
            r.everything()
        );
    }
}

fn refusal(out: &Value, case: &str, class: &str, reason: &str, status: u64) {
    let o = &out[case];
    assert_eq!(
        (
            o["class"].as_str(),
            o["reason"].as_str(),
            o["status"].as_u64()
        ),
        (Some(class), Some(reason), Some(status)),
        "{case}: {o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_issues_calls_caps_and_revokes_on_exit() {
    let s = start().await;
    let mut vars = client_env(&s);
    vars.push(("STRIPE_MERCHANT", MERCHANT.into()));
    vars.push(("TWILIO_SID", TWILIO_SID.into()));
    let out = python::run_json(&repo_root().join("tests/client"), "client_flow.py", &vars).await;

    // The package under test is the installed wheel, not the source folder.
    assert!(
        out["client_file"]
            .as_str()
            .unwrap()
            .contains("site-packages"),
        "{}",
        out["client_file"]
    );
    // Its reason table is the core's, code for code and status for status.
    let want: Vec<Value> = Reason::ALL
        .iter()
        .map(|r| json!([r.code(), r.status()]))
        .collect();
    assert_eq!(out["reasons"], Value::Array(want));

    // The admin API.
    let issued = &out["issued"];
    assert_eq!(issued["token_prefix"], "bvt_");
    assert_eq!(issued["ttl"], 600);
    assert!(
        !issued["repr"].as_str().unwrap().contains("bvt_"),
        "repr shows the token: {issued}"
    );
    assert_eq!(out["got"]["caps_per_window"], "1.00");
    assert_eq!(out["got"]["effective_per_window"], "1.00");
    assert!(out["listed"].as_array().unwrap().contains(&issued["id"]));
    assert_eq!(
        out["policies"],
        json!([
            "anthropic-messages",
            "openai-chat",
            "resend-transactional",
            "stripe-payments",
            "twilio-sms"
        ])
    );
    let e = &out["invalid"];
    assert_eq!(
        (
            e["class"].as_str(),
            e["code"].as_str(),
            e["status"].as_u64()
        ),
        (
            Some("InvalidRequestError"),
            Some("invalid_request"),
            Some(400)
        ),
        "{e}"
    );
    let text = e["str"].as_str().unwrap();
    assert!(
        text.contains("expires_in") && text.contains("caps.per_transaction"),
        "every reason at once: {text}"
    );
    for (case, class, code, status) in [
        ("not_found", "NotFoundError", "not_found", 404),
        (
            "unauthenticated",
            "AuthenticationError",
            "unauthenticated",
            401,
        ),
        (
            "unreachable",
            "LedgerUnreachableError",
            "ledger_unreachable",
            0,
        ),
    ] {
        let e = &out[case];
        assert_eq!(
            (e["class"].as_str(), e["status"].as_u64()),
            (Some(class), Some(status)),
            "{case}: {e}"
        );
        assert_eq!(e["is_ledger_error"], true, "{case}");
        assert_eq!(e["code"], code, "{case}: {e}");
    }
    assert!(out["float"].as_str().unwrap().contains("not a float"));
    assert_eq!(out["revoked_one"]["kind"], "token");
    assert_eq!(out["after_revoke"], "revoked");

    // Per-run credentials: each SDK's allowed call went through, refusals raised the SDK's
    // own class with Bridle's reason.
    assert_eq!(out["stripe_allowed"]["type"], "PaymentIntent");
    // A cap reads as a permission error, never a declined card (stripe.CardError).
    refusal(
        &out,
        "stripe_cap",
        "stripe.PermissionError",
        "cap_per_transaction",
        403,
    );
    assert_eq!(out["stripe_cap"]["is_cap"], true);
    refusal(
        &out,
        "stripe_endpoint",
        "stripe.PermissionError",
        "endpoint_not_allowed",
        403,
    );
    assert_eq!(out["openai_allowed"]["type"], "ChatCompletion");
    refusal(
        &out,
        "openai_endpoint",
        "openai.PermissionDeniedError",
        "endpoint_not_allowed",
        403,
    );
    assert_eq!(out["anthropic_allowed"]["type"], "Message");
    assert!(out["resend_allowed"]["id"].is_string());
    assert!(out["twilio_allowed"]["sid"].is_string());
    assert_eq!(out["refusal_of_other"], true);

    // The LangChain tool: a result when allowed, the refusal as its answer when not.
    let tool = &out["tool"];
    assert_eq!(tool["name"], "charge");
    assert!(tool["description"]
        .as_str()
        .unwrap()
        .starts_with("Take a payment"));
    assert!(
        tool["allowed"].as_str().unwrap().starts_with("pi_"),
        "{tool}"
    );
    let answer = tool["refused"].as_str().unwrap();
    assert!(
        answer.starts_with("Refused by Bridle (cap_per_transaction, HTTP 403): ")
            && answer.contains("do not retry"),
        "{answer}"
    );

    // On exit: one revocation of the run's prefix covered its five tokens, and the proxy
    // refuses them.
    let run1 = out["run1"].as_object().unwrap();
    assert_eq!(run1.len(), 5);
    assert_eq!(
        out["run1_revocation"],
        json!({ "kind": "label_prefix", "value": "py/run-1/", "n": 5 })
    );
    for (vendor, id) in run1 {
        let t = s.ledger.token(id.as_str().unwrap()).await;
        assert_eq!(t["status"], "revoked", "{vendor}: {t}");
        assert_eq!(t["label"], format!("py/run-1/{vendor}"));
        assert_eq!(out["run1_status"][vendor], "revoked");
    }
    refusal(
        &out,
        "stripe_after_exit",
        "stripe.AuthenticationError",
        "token_revoked",
        401,
    );

    // An exception in the block, and an issue failing half-way: revoked all the same.
    assert_eq!(out["run2_error"], "the agent crashed");
    assert_eq!(out["run2_status"], "revoked");
    assert!(out.get("run3_entered").is_none());
    assert_eq!(out["run3_error"]["class"], "InvalidRequestError");
    assert_eq!(out["run3_tokens"], json!([["py/run-3/openai", "revoked"]]));
    assert!(out["trailing_slash"]
        .as_str()
        .unwrap()
        .contains("trailing '/'"));

    // Async: the same, with AsyncClient, the async SDK clients and the audit log.
    assert_eq!(out["async_calls"], json!(["chatcmpl-mock", "msg_mock"]));
    assert_eq!(out["async_during"], "active");
    assert_eq!(
        out["async_status"],
        json!({ "openai": "revoked", "anthropic": "revoked" })
    );
    assert_eq!(out["async_exception_status"], "revoked");
    let reasons = out["audit_reasons"].as_array().unwrap();
    for r in ["allowed", "cap_per_transaction", "endpoint_not_allowed"] {
        assert!(reasons.contains(&json!(r)), "{reasons:?}");
    }
    // Paged by two: every record of the run came back.
    let audit = s.ledger.audit("label_prefix=py/run-1/").await;
    assert!(
        out["audit_count"].as_u64().unwrap() as usize <= audit.len()
            && out["audit_count"].as_u64().unwrap() >= 9,
        "{} of {}",
        out["audit_count"],
        audit.len()
    );
    assert!(
        out["audit_costs"]
            .as_array()
            .unwrap()
            .contains(&json!("15.00")),
        "the $15.00 PaymentIntent, as the ledger audited it: {}",
        out["audit_costs"]
    );

    // Envoy counted each refusal once: no SDK retried one.
    let count = |v, p, r| s.envoy.counter(v, p, r);
    assert_eq!(
        count(Vendor::Stripe, "stripe-payments", "cap_per_transaction").await,
        2
    );
    assert_eq!(
        count(Vendor::Stripe, "stripe-payments", "endpoint_not_allowed").await,
        1
    );
    assert_eq!(
        count(Vendor::Openai, "openai-chat", "endpoint_not_allowed").await,
        1
    );
    vendor_never_saw_a_vault_token(&s);
}

/// README.md's "Python client" block, as written, against the repository's policies: the
/// ledger and proxy addresses it assumes (`make run`'s) are routed to the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_python_client_block_runs_as_written() {
    let snippet = python::readme_python("Python client", "import bridle, stripe");
    let s = start().await;
    let mut routes = vec![(8181, s.ledger.port)];
    for v in Vendor::ALL {
        routes.push((bridle_cli::render::default_port(v), s.envoy.port(v)));
    }
    let stdout = python::run_readme_snippet(
        &snippet,
        &routes,
        &[("BRIDLE_ADMIN_KEY", ADMIN_KEY.to_string())],
    )
    .await;
    eprintln!("README Python client block printed:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["pi_mock_1", "cap_per_transaction", "2 tokens revoked"],
        "README.md's Python client block does not print what its comments say:\n{snippet}"
    );
    let tokens = s
        .ledger
        .admin("GET", "/v1/tokens?label_prefix=demo/agent-2/run-7/", None)
        .await
        .json();
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(
        tokens.iter().all(|t| t["status"] == "revoked"),
        "{tokens:?}"
    );
    assert_eq!(
        s.envoy
            .counter(Vendor::Stripe, "stripe-payments", "cap_per_transaction")
            .await,
        1
    );
}
