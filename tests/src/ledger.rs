//! The real ledger process: the `bridle-ledger` binary with a SQLite file in a temporary
//! folder, or on a PostgreSQL database (one of several replicas), restartable (after
//! `kill -9` too) on the same port and database.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridle_core::policy::CompiledPolicy;
use serde_json::Value;

use crate::client::{Request, Response};
use crate::keys::{Keys, ADMIN_KEY, ENFORCER_KEY, PUBLIC_KEYS_ENV, SIGNING_KEY_ENV};
use crate::process::Guarded;
use crate::workspace_binary;

pub struct Ledger {
    process: Option<Guarded>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    keys: Keys,
    extra_args: Vec<String>,
    starts: u32,
    /// A PostgreSQL URL instead of the SQLite file.
    database: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Ledger {
    /// Starts a ledger serving `policies`, signing with `keys`.
    pub async fn start(policies: &[CompiledPolicy], keys: &Keys) -> Ledger {
        Ledger::start_with(policies, keys, &[]).await
    }

    pub async fn start_with(
        policies: &[CompiledPolicy],
        keys: &Keys,
        extra_args: &[&str],
    ) -> Ledger {
        Ledger::start_prefilled(policies, keys, extra_args, |_| {}).await
    }

    /// Starts a ledger replica on a PostgreSQL database (several may share one).
    pub async fn start_on_database(
        policies: &[CompiledPolicy],
        keys: &Keys,
        database: &str,
        extra_args: &[&str],
    ) -> Ledger {
        Ledger::start_full(
            policies,
            keys,
            extra_args,
            Some(database.to_string()),
            |_| {},
        )
        .await
    }

    /// Starts a ledger on a database that `fill` writes first (benchmarks grow the store).
    pub async fn start_prefilled(
        policies: &[CompiledPolicy],
        keys: &Keys,
        extra_args: &[&str],
        fill: impl FnOnce(&std::path::Path),
    ) -> Ledger {
        Ledger::start_full(policies, keys, extra_args, None, fill).await
    }

    async fn start_full(
        policies: &[CompiledPolicy],
        keys: &Keys,
        extra_args: &[&str],
        database: Option<String>,
        fill: impl FnOnce(&std::path::Path),
    ) -> Ledger {
        let dir = tempfile::tempdir().unwrap();
        fill(&dir.path().join("ledger.db"));
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        for p in policies {
            // JSON is YAML: the ledger reads the same files people write.
            let text = serde_json::to_string_pretty(&p.policy).unwrap();
            std::fs::write(policy_dir.join(format!("{}.yaml", p.policy.name)), text).unwrap();
        }
        let mut ledger = Ledger {
            process: None,
            port: free_port(),
            dir,
            keys: keys.clone(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
            database,
        };
        ledger.launch().await;
        ledger
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("ledger.{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn launch(&mut self) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("ledger.{}.log", self.starts)))
                .unwrap();
        self.starts += 1;
        let mut cmd = Command::new(workspace_binary("bridle-ledger"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--policies")
            .arg(self.dir.path().join("policies"))
            .args(&self.extra_args)
            .env_clear()
            .env(SIGNING_KEY_ENV, &self.keys.spec)
            .env(PUBLIC_KEYS_ENV, &self.keys.public_spec)
            .env("BRIDLE_ADMIN_KEY", ADMIN_KEY)
            .env("BRIDLE_ENFORCER_KEY", ENFORCER_KEY)
            .env("BRIDLE_LOG", "info")
            .env(
                "BRIDLE_LEDGER_DB",
                self.database
                    .clone()
                    .unwrap_or_else(|| self.db().display().to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = Guarded::spawn(cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.has_exited() {
                panic!("the ledger exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = Request::new("GET", "/healthz")
                .try_send(self.port, Duration::from_secs(2))
                .await
            {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the ledger was not healthy within 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.process = Some(process);
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Guarded::pid)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let mut r = Request::new(method, path).bearer(ADMIN_KEY);
        if let Some(b) = body {
            r = r.json(b);
        }
        r.send(self.port).await
    }

    async fn admin_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let r = self.admin(method, path, body).await;
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    /// Issues a token; returns (token, id).
    pub async fn issue(&self, request: Value) -> (String, String) {
        let v = self.admin_ok("POST", "/v1/tokens", Some(&request)).await;
        (
            v["token"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    pub async fn revoke(&self, request: Value) -> Value {
        self.admin_ok("POST", "/v1/revocations", Some(&request))
            .await
    }

    pub async fn token(&self, id: &str) -> Value {
        self.admin_ok("GET", &format!("/v1/tokens/{id}"), None)
            .await
    }

    /// The token's view once it has no open reservation left (the filter reports settles in
    /// batches on its tick), or as it is after 10 s.
    pub async fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.token(id).await;
            if t["spend"]["reserved"] == "0.00" || Instant::now() > deadline {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every audit record matching `query` (e.g. `token_id=tok_1`), following pages.
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/v1/audit?limit=1000&{query}{after}");
            let page = self.admin_ok("GET", &path, None).await;
            out.extend(page["records"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => after = format!("&after={n}"),
                None => return out,
            }
        }
    }

    /// Waits until the audit log holds `n` records matching `query` (the filter reports in
    /// batches on its tick).
    pub async fn await_audit(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.audit(query).await;
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        Request::new("GET", "/metrics").send(self.port).await.text()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if crate::artifacts::dir().is_none() {
            return;
        }
        if self.process.is_some() {
            if let Some(m) = crate::artifacts::blocking_get(self.port, "/metrics", None) {
                crate::artifacts::save("metrics", "ledger-metrics.txt", &m);
            }
            let audit = "/v1/audit?limit=1000";
            if let Some(a) = crate::artifacts::blocking_get(self.port, audit, Some(ADMIN_KEY)) {
                crate::artifacts::save("audit", "ledger-audit.json", &a);
            }
        }
        for i in 0..self.starts {
            let log = self.dir.path().join(format!("ledger.{i}.log"));
            crate::artifacts::save_file("logs", "ledger.log", &log);
        }
        for suffix in ["", "-wal"] {
            let db = self.dir.path().join(format!("ledger.db{suffix}"));
            crate::artifacts::save_file("audit", &format!("ledger.db{suffix}"), &db);
        }
    }
}
