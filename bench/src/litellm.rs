//! The peer: LiteLLM's proxy, the gateway people pick for LLM spend, run in front of the same
//! fast upstream as Bridle.
//!
//! It comes from PyPI into a virtualenv of the benchmark's own (`make bench` installs
//! `bench/litellm/requirements.txt` into `target/bench/litellm-venv`), never into the
//! project's `.venv`. Its configuration is the closest to Bridle's costed OpenAI path that
//! runs here without external services:
//! - one model, `gpt-4o-mini`, routed to the upstream with a provider key from the
//!   environment (the secret it swaps in, as Bridle swaps the vendor key in);
//! - the master key as the only credential: virtual keys and their budgets live in a
//!   database reached through Prisma, whose query engine is downloaded when first needed, and
//!   that download cannot be made here (BENCHMARKS.md says what was tried);
//! - its cost tracking as shipped: every response is priced from its `usage` block with the
//!   bundled model price map, and the key's spend counted in memory.
//!
//! Loopback only: it listens on 127.0.0.1, its one upstream is on 127.0.0.1, and every
//! remote fetch LiteLLM can make at startup (the model price map, blog posts, policy
//! templates, router presets, Anthropic beta headers) is switched to its bundled copy.
//! Telemetry was removed from LiteLLM (`--telemetry` is a no-op kept for old command lines);
//! it is passed as `False` all the same, so a version that brings it back stays quiet.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridle_e2e::client::Request;
use bridle_e2e::process::Guarded;
use bridle_e2e::repo_root;
use serde::Serialize;
use serde_json::{json, Value};

/// The model name clients ask for, and the only one LiteLLM routes.
pub const MODEL: &str = "gpt-4o-mini";
/// The master key: the only credential a LiteLLM proxy without a database accepts.
pub const MASTER_KEY: &str = "sk-bench-litellm-master";
/// The provider key LiteLLM sends upstream in place of the client's.
const PROVIDER_KEY: &str = "sk-bench-upstream-provider-key";
/// LiteLLM imports for tens of seconds on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// The virtualenv `make bench` installs LiteLLM into, or `BRIDLE_BENCH_LITELLM_VENV`.
pub fn venv() -> PathBuf {
    std::env::var("BRIDLE_BENCH_LITELLM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/bench/litellm-venv"))
}

/// What a sanity request found: that the proxy authenticates, routes and prices.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    pub version: String,
    /// `x-litellm-response-cost` of one chat completion: its cost in dollars, from `usage`.
    pub response_cost_usd: f64,
    /// Status for a wrong key (a database-less proxy knows only its master key).
    pub wrong_key_status: u16,
    /// Status for a model it does not route.
    pub unknown_model_status: u16,
}

pub struct LiteLlm {
    process: Guarded,
    pub port: u16,
    /// Its configuration and log, kept while it runs.
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// LiteLLM's configuration: one OpenAI model at the upstream, the master key.
fn config(upstream: u16) -> Value {
    json!({
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {
                "model": format!("openai/{MODEL}"),
                "api_base": format!("http://127.0.0.1:{upstream}/v1"),
                "api_key": "os.environ/OPENAI_API_KEY",
            },
        }],
        "general_settings": { "master_key": "os.environ/LITELLM_MASTER_KEY" },
        // From LiteLLM's production checklist: a bounded upstream timeout, no debug logging.
        "litellm_settings": { "request_timeout": 600, "set_verbose": false },
    })
}

/// The environment LiteLLM runs with: nothing of ours but PATH, and every startup fetch
/// pointed at the copy bundled in the wheel.
fn environment(home: &std::path::Path) -> Vec<(&'static str, String)> {
    let on = |name: &'static str| (name, "True".to_string());
    vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", home.display().to_string()),
        ("LANG", "C.UTF-8".into()),
        ("OPENAI_API_KEY", PROVIDER_KEY.into()),
        ("LITELLM_MASTER_KEY", MASTER_KEY.into()),
        on("LITELLM_LOCAL_MODEL_COST_MAP"),
        on("LITELLM_LOCAL_BLOG_POSTS"),
        on("LITELLM_LOCAL_POLICY_TEMPLATES"),
        on("LITELLM_LOCAL_AUTOROUTER_PRESETS"),
        on("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS"),
        on("DISABLE_ADMIN_UI"),
        // LiteLLM's production checklist: no FastAPI info logs, no `.env` loading.
        ("LITELLM_LOG", "ERROR".into()),
        ("LITELLM_MODE", "PRODUCTION".into()),
        ("HF_HUB_OFFLINE", "1".into()),
        // Envoy, as Bridle renders it, writes no access log either.
        (
            "LITELLM_DISABLE_ACCESS_LOG_PATHS",
            "/v1/chat/completions,/chat/completions,/health/liveliness".into(),
        ),
    ]
}

impl LiteLlm {
    /// Starts the proxy with one worker (the one core it gets, as Envoy gets one) and waits
    /// until it answers its liveness probe.
    pub async fn start(upstream: u16) -> Result<LiteLlm, String> {
        let binary = venv().join("bin/litellm");
        if !binary.exists() {
            return Err(format!(
                "LiteLLM is not installed at {}: run `make bench`, which installs bench/litellm/requirements.txt there",
                binary.display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("config.yaml");
        // JSON is YAML.
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&config(upstream)).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        let log_path = dir.path().join("litellm.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let port = free_port();
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&config_path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", "1", "--telemetry", "False"])
            .current_dir(dir.path())
            .env_clear()
            .envs(environment(dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut process = Guarded::spawn(cmd).map_err(|e| format!("cannot start LiteLLM: {e}"))?;
        let tail = || {
            let all = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = all.lines().rev().take(30).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = process.has_exited() {
                return Err(format!(
                    "LiteLLM exited ({status}) before it was ready:\n{}",
                    tail()
                ));
            }
            if let Ok(r) = Request::new("GET", "/health/liveliness")
                .try_send(port, Duration::from_secs(2))
                .await
            {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "LiteLLM was not live within {}s:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(LiteLlm {
            process,
            port,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Proves the proxy does per request what the benchmark says it does: it answers the
    /// master key, refuses another key, refuses a model it does not route, and prices the
    /// completion from its usage. An `Err` says which of these failed.
    pub async fn check(&self, body: &str) -> Result<Checked, String> {
        let send = |key: &str, body: String| {
            Request::new("POST", "/v1/chat/completions")
                .bearer(key)
                .header("content-type", "application/json")
                .body(body)
        };
        let ok = send(MASTER_KEY, body.to_string())
            .try_send(self.port, Duration::from_secs(30))
            .await?;
        if ok.status != 200 {
            return Err(format!(
                "LiteLLM answered {} to the benchmark request: {}",
                ok.status,
                ok.text()
            ));
        }
        let cost: f64 = ok
            .header("x-litellm-response-cost")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0);
        if cost <= 0.0 {
            return Err(format!(
                "LiteLLM did not price the completion (x-litellm-response-cost: {:?})",
                ok.header("x-litellm-response-cost")
            ));
        }
        let wrong = send("sk-not-the-master-key", body.to_string())
            .try_send(self.port, Duration::from_secs(30))
            .await?;
        let mut other: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
        other["model"] = json!("gpt-4o");
        let unknown = send(MASTER_KEY, other.to_string())
            .try_send(self.port, Duration::from_secs(30))
            .await?;
        for (what, status) in [
            ("a wrong key", wrong.status),
            ("an unrouted model", unknown.status),
        ] {
            if !(400..500).contains(&status) {
                return Err(format!("LiteLLM answered {status} to {what}"));
            }
        }
        Ok(Checked {
            version: ok.header("x-litellm-version").unwrap_or("?").to_string(),
            response_cost_usd: cost,
            wrong_key_status: wrong.status,
            unknown_model_status: unknown.status,
        })
    }
}
