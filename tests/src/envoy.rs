//! The real Envoy, with the built filter, configured by `bridle render`'s own code.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridle_cli::render::{self, EnvoyOptions, Upstream};
use bridle_core::policy::{CompiledPolicy, Policy};
use bridle_core::vendor::Vendor;

use crate::client::Request;
use crate::keys::{canary_secret, Keys, ENFORCER_KEY, PUBLIC_KEYS_ENV};
use crate::process::Guarded;
use crate::repo_root;

/// The Envoy binary from the project's virtualenv (`make envoy`), or `BRIDLE_ENVOY`.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var("BRIDLE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run `make envoy` (or `make test`)",
        path.display()
    );
    path
}

/// The filter built for wasm32-wasip1 (`make wasm`), or `BRIDLE_WASM`.
pub fn wasm_path() -> PathBuf {
    let path = std::env::var("BRIDLE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/wasm32-wasip1/release/bridle_filter.wasm"));
    assert!(
        path.exists(),
        "the filter is not built at {}: run `make wasm` (or `make test`)",
        path.display()
    );
    path
}

/// Compiles policies written as JSON in a test.
pub fn policies(values: &[serde_json::Value]) -> Vec<CompiledPolicy> {
    values
        .iter()
        .map(|v| {
            let p: Policy =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("test policy: {e}"));
            p.compile().unwrap_or_else(|e| panic!("test policy: {e:?}"))
        })
        .collect()
}

/// What to start.
#[derive(Clone)]
pub struct Setup {
    pub policies: Vec<CompiledPolicy>,
    pub upstreams: BTreeMap<Vendor, String>,
    pub ledger: Option<String>,
    /// More replicas of the same ledger, in the same cluster.
    pub ledger_replicas: Vec<String>,
    pub envoy_path_hardening: bool,
    pub keys: Keys,
    /// Added to (or replacing) the environment Envoy gets.
    pub env: Vec<(String, String)>,
    pub concurrency: u32,
    pub wasm: Option<PathBuf>,
    /// Names from `env` that the Wasm VM may read besides those the policies need.
    pub vm_env: Vec<String>,
    /// Envoy trusts clients on 127.0.0.0/8 as internal and so obeys their `x-envoy-*`
    /// control headers, as a mesh that trusts its own network does: the filter stands alone.
    pub trust_local_clients: bool,
    /// The CA bundle Envoy checks https upstreams against (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Price tables for calls priced by tokens: the shipped ones unless a test changes them.
    pub prices: bridle_cli::render::Prices,
    /// How Envoy speaks to the ledger (HTTP/1.1, the rendered default, unless a test says
    /// otherwise).
    pub ledger_protocol: bridle_cli::render::LedgerProtocol,
}

impl Setup {
    pub fn new(policies: Vec<CompiledPolicy>, keys: &Keys) -> Setup {
        Setup {
            policies,
            upstreams: BTreeMap::new(),
            ledger: None,
            ledger_replicas: Vec::new(),
            envoy_path_hardening: true,
            keys: keys.clone(),
            env: Vec::new(),
            concurrency: 2,
            wasm: None,
            vm_env: Vec::new(),
            trust_local_clients: false,
            ca_file: None,
            prices: crate::shipped_prices(),
            ledger_protocol: Default::default(),
        }
    }

    /// Sends every vendor to one upstream (a mock).
    pub fn upstream_all(mut self, url: &str) -> Setup {
        for v in Vendor::ALL {
            self.upstreams.insert(v, url.to_string());
        }
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The environment Envoy runs with: the token public keys (never the signing key),
    /// canary secrets, the enforcer key.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (PUBLIC_KEYS_ENV.into(), self.keys.public_spec.clone()),
            ("BRIDLE_ENFORCER_KEY".into(), ENFORCER_KEY.into()),
        ];
        for v in Vendor::ALL {
            let (name, value) = canary_secret(v);
            env.push((name.into(), value.into()));
        }
        for (n, v) in &self.env {
            env.retain(|(m, _)| m != n);
            env.push((n.clone(), v.clone()));
        }
        env
    }

    pub fn render(&self) -> String {
        let mut opts = EnvoyOptions {
            wasm: self
                .wasm
                .clone()
                .unwrap_or_else(wasm_path)
                .display()
                .to_string(),
            listen: "127.0.0.1".into(),
            admin_port: 0,
            ledger: self.ledger.as_deref().map(|u| Upstream::parse(u).unwrap()),
            ledger_replicas: self
                .ledger_replicas
                .iter()
                .map(|u| Upstream::parse(u).unwrap())
                .collect(),
            envoy_path_hardening: self.envoy_path_hardening,
            prices: self.prices.clone(),
            ledger_protocol: self.ledger_protocol,
            ..EnvoyOptions::default()
        };
        if let Some(ca) = &self.ca_file {
            opts.ca_file = ca.display().to_string();
        }
        for v in Vendor::ALL {
            opts.ports.insert(v, 0);
        }
        for (v, url) in &self.upstreams {
            opts.upstreams.insert(*v, Upstream::parse(url).unwrap());
        }
        let mut bootstrap = render::envoy_bootstrap(&self.policies, &opts).unwrap();
        if !self.vm_env.is_empty() {
            add_vm_env(&mut bootstrap, &self.vm_env);
        }
        if self.trust_local_clients {
            let listeners = bootstrap["static_resources"]["listeners"].as_array_mut();
            for l in listeners.into_iter().flatten() {
                let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
                hcm["use_remote_address"] = serde_json::json!(true);
                hcm["internal_address_config"] = serde_json::json!({
                    "cidr_ranges": [{ "address_prefix": "127.0.0.0", "prefix_len": 8 }],
                });
            }
        }
        render::to_yaml(&[bootstrap]).unwrap()
    }
}

fn add_vm_env(v: &mut serde_json::Value, names: &[String]) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    serde_json::Value::Array(keys) if k == "host_env_keys" => {
                        keys.extend(names.iter().map(|n| serde_json::Value::from(n.as_str())))
                    }
                    _ => add_vm_env(child, names),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| add_vm_env(i, names)),
        _ => {}
    }
}

pub struct Envoy {
    process: Guarded,
    pub admin: u16,
    ports: HashMap<String, u16>,
    pub dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if crate::artifacts::dir().is_some() {
            if let Some(stats) = crate::artifacts::blocking_get(self.admin, "/stats", None) {
                crate::artifacts::save("metrics", "envoy-stats.txt", &stats);
            }
            crate::artifacts::save_file("logs", "envoy.log", &self.dir.path().join("envoy.log"));
        }
    }
}

impl Envoy {
    /// Starts Envoy and waits until its admin endpoint says it is live and every listener is
    /// bound. An Envoy that exits first (a refused configuration) is an `Err` with its log.
    pub async fn start(setup: &Setup) -> Result<Envoy, String> {
        let envoy =
            Envoy::start_config(&setup.render(), &setup.environment(), setup.concurrency).await?;
        if setup.ledger.is_some() {
            envoy.await_first_revocations().await?;
        }
        Ok(envoy)
    }

    /// Uncosted requests wait for a fresh revocation set: lets the first poll land and every
    /// worker's plugins copy it on their tick.
    pub async fn await_first_revocations(&self) -> Result<(), String> {
        self.await_stat("wasmcustom.bridle.ledger.revocation_polls_ok", 1)
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Waits (up to 15 s) until a stat reaches `at_least`.
    pub async fn await_stat(&self, name: &str, at_least: u64) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self
                .stats(&format!("^{}$", name.replace('.', "\\.")))
                .await
                .get(name)
                .copied()
                .unwrap_or(0);
            if value >= at_least {
                return Ok(value);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} stayed at {value} (< {at_least}):\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn start_config(
        yaml: &str,
        env: &[(String, String)],
        concurrency: u32,
    ) -> Result<Envoy, String> {
        Envoy::start_in(tempfile::tempdir().unwrap(), yaml, env, concurrency, &[]).await
    }

    /// Starts Envoy with its listeners from a file it watches (LDS from the filesystem),
    /// which [`Envoy::push`] replaces as a configuration push would; a replaced listener's
    /// connections are not drained for long (`--drain-time-s 0`), so its old filter chain,
    /// and with it the old plugin, goes as soon as its streams end.
    pub async fn start_pushable(setup: &Setup) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().unwrap();
        let lds = dir.path().join("lds.json");
        let mut bootstrap: serde_json::Value =
            serde_yaml_ng::from_str(&setup.render()).map_err(|e| e.to_string())?;
        write_listeners(&lds, &bootstrap)?;
        let statics = bootstrap["static_resources"]
            .as_object_mut()
            .ok_or("no static_resources")?;
        statics.remove("listeners");
        bootstrap["dynamic_resources"] = serde_json::json!({
            "lds_config": {
                "path_config_source": { "path": lds.display().to_string() },
                "resource_api_version": "V3",
            }
        });
        Envoy::start_watching(dir, bootstrap, setup, &["--drain-time-s", "0"]).await
    }

    /// Starts Envoy with each listener's Bridle filter configured by extension config
    /// discovery (ECDS, from a file it watches), as Istio's WasmPlugin delivers it:
    /// [`Envoy::push_filters`] replaces the filters' configuration and leaves the listeners,
    /// and the connections they hold, as they are.
    pub async fn start_discovered(setup: &Setup) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().unwrap();
        let ecds = dir.path().join("ecds.json");
        let mut bootstrap: serde_json::Value =
            serde_yaml_ng::from_str(&setup.render()).map_err(|e| e.to_string())?;
        write_filters(&ecds, &bootstrap)?;
        let listeners = bootstrap["static_resources"]["listeners"]
            .as_array_mut()
            .ok_or("the bootstrap has no listeners")?;
        for l in listeners {
            let filter =
                &mut l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
            let name = filter["typed_config"]["config"]["name"].clone();
            *filter = serde_json::json!({
                "name": name,
                "config_discovery": {
                    "config_source": {
                        "path_config_source": { "path": ecds.display().to_string() },
                        "resource_api_version": "V3",
                    },
                    "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                },
            });
        }
        Envoy::start_watching(dir, bootstrap, setup, &[]).await
    }

    /// Starts a bootstrap that reads part of its configuration from files in `dir`: xDS from
    /// files needs a node name.
    async fn start_watching(
        dir: tempfile::TempDir,
        mut bootstrap: serde_json::Value,
        setup: &Setup,
        extra_args: &[&str],
    ) -> Result<Envoy, String> {
        if bootstrap.get("node").is_none() {
            bootstrap["node"] = serde_json::json!({ "id": "bridle-e2e", "cluster": "bridle-e2e" });
        }
        let yaml = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
        let envoy = Envoy::start_in(
            dir,
            &yaml,
            &setup.environment(),
            setup.concurrency,
            extra_args,
        )
        .await?;
        if setup.ledger.is_some() {
            envoy.await_first_revocations().await?;
        }
        Ok(envoy)
    }

    /// Pushes `setup`'s filter configurations to an Envoy from [`Envoy::start_discovered`] and
    /// waits until Envoy has taken them.
    pub async fn push_filters(&self, setup: &Setup) -> Result<(), String> {
        let bootstrap: serde_json::Value =
            serde_yaml_ng::from_str(&setup.render()).map_err(|e| e.to_string())?;
        // Every filter is in the one file: Envoy takes it whole, so the first one's reload
        // counts for all.
        let first = filter_configs(&bootstrap)?
            .first()
            .and_then(|f| f["name"].as_str().map(str::to_string))
            .ok_or("no filter to push")?;
        let stat = format!("extension_config_discovery.http_filter.{first}.config_reload");
        let before = self.stats(&format!("^{}$", stat.replace('.', "\\."))).await;
        let before = before.get(&stat).copied().unwrap_or(0);
        let ecds = self.dir.path().join("ecds.json");
        let next = self.dir.path().join("ecds.next.json");
        write_filters(&next, &bootstrap)?;
        // Written aside and moved into place: Envoy watches for the move.
        std::fs::rename(&next, &ecds).map_err(|e| e.to_string())?;
        self.await_stat(&stat, before + 1).await.map(|_| ())
    }

    /// Pushes `setup`'s listeners to an Envoy from [`Envoy::start_pushable`] and waits until
    /// Envoy has taken them.
    pub async fn push(&self, setup: &Setup) -> Result<(), String> {
        let stat = "listener_manager.lds.update_success";
        let before = self.stats(&format!("^{}$", stat.replace('.', "\\."))).await;
        let before = before.get(stat).copied().unwrap_or(0);
        let bootstrap: serde_json::Value =
            serde_yaml_ng::from_str(&setup.render()).map_err(|e| e.to_string())?;
        // Written aside and moved into place: Envoy watches for the move.
        let lds = self.dir.path().join("lds.json");
        let next = self.dir.path().join("lds.next.json");
        write_listeners(&next, &bootstrap)?;
        std::fs::rename(&next, &lds).map_err(|e| e.to_string())?;
        self.await_stat(stat, before + 1).await.map(|_| ())
    }

    async fn start_in(
        dir: tempfile::TempDir,
        yaml: &str,
        env: &[(String, String)],
        concurrency: u32,
        extra_args: &[&str],
    ) -> Result<Envoy, String> {
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, yaml).unwrap();
        let admin_file = dir.path().join("admin.addr");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                &concurrency.to_string(),
                "-l",
                "info",
            ])
            .args(extra_args)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .env_clear()
            .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = Guarded::spawn(cmd).map_err(|e| format!("cannot start envoy: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // The lines that say what went wrong, not Envoy's whole start-up banner.
        let log = |dir: &tempfile::TempDir| {
            let all = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
            let lines: Vec<&str> = all
                .lines()
                .filter(|l| {
                    l.contains("][critical]") || l.contains("][error]") || l.contains("][warning]")
                })
                .collect();
            if lines.is_empty() {
                let tail: Vec<&str> = all.lines().rev().take(20).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            } else {
                lines.join("\n")
            }
        };
        let admin: u16 = loop {
            if let Some(status) = process.has_exited() {
                return Err(format!(
                    "envoy exited ({status}) before it was ready:\n{}",
                    log(&dir)
                ));
            }
            if let Ok(addr) = std::fs::read_to_string(&admin_file) {
                if let Some(port) = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()) {
                    break port;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy wrote no admin address within a minute:\n{}",
                    log(&dir)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Some(status) = process.has_exited() {
                return Err(format!(
                    "envoy exited ({status}) before it was ready:\n{}",
                    log(&dir)
                ));
            }
            if let Ok(r) = Request::new("GET", "/ready")
                .try_send(admin, Duration::from_secs(2))
                .await
            {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy was not live within a minute:\n{}",
                    log(&dir)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let listeners = Request::new("GET", "/listeners?format=json")
            .send(admin)
            .await
            .json();
        let mut ports = HashMap::new();
        for l in listeners["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap_or(0) as u16;
            ports.insert(name, port);
        }
        Ok(Envoy {
            process,
            admin,
            ports,
            dir,
        })
    }

    /// The listener port of a vendor.
    pub fn port(&self, vendor: Vendor) -> u16 {
        *self
            .ports
            .get(&format!("bridle_{vendor}"))
            .unwrap_or_else(|| panic!("no listener for {vendor}: {:?}", self.ports))
    }

    pub fn listener_port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.ports))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Every stat whose name matches the regex, as name -> value.
    pub async fn stats(&self, regex: &str) -> BTreeMap<String, u64> {
        let encoded: String = regex
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = Request::new("GET", format!("/stats?format=json&filter={encoded}"))
            .send(self.admin)
            .await;
        let mut out = BTreeMap::new();
        for s in r.json()["stats"].as_array().cloned().unwrap_or_default() {
            if let (Some(n), Some(v)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(n.to_string(), v);
            }
        }
        out
    }

    /// A Bridle counter: `bridle.<vendor>.<policy>.<reason>`.
    pub async fn counter(&self, vendor: Vendor, policy: &str, reason: &str) -> u64 {
        let name = format!("wasmcustom.bridle.{vendor}.{policy}.{reason}");
        let stats = self.stats(&format!("^{}$", name.replace('.', "\\."))).await;
        *stats.get(&name).unwrap_or_else(|| panic!("no stat {name}"))
    }
}

/// Writes a rendered bootstrap's listeners as an LDS file.
fn write_listeners(path: &std::path::Path, bootstrap: &serde_json::Value) -> Result<(), String> {
    let mut listeners = bootstrap["static_resources"]["listeners"]
        .as_array()
        .cloned()
        .ok_or("the bootstrap has no listeners")?;
    for l in &mut listeners {
        l["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener".into();
    }
    let body = serde_json::json!({ "resources": listeners }).to_string();
    std::fs::write(path, body).map_err(|e| e.to_string())
}

/// The Bridle filter of each listener, as the ECDS resources that configure it, named as the
/// filter.
fn filter_configs(bootstrap: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array()
        .ok_or("the bootstrap has no listeners")?;
    Ok(listeners
        .iter()
        .map(|l| {
            let filter = &l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
            serde_json::json!({
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": filter["typed_config"]["config"]["name"],
                "typed_config": filter["typed_config"],
            })
        })
        .collect())
}

fn write_filters(path: &std::path::Path, bootstrap: &serde_json::Value) -> Result<(), String> {
    let body = serde_json::json!({ "resources": filter_configs(bootstrap)? }).to_string();
    std::fs::write(path, body).map_err(|e| e.to_string())
}
