//! The deployment manifests (`deploy/`) and the ledger's OpenAPI document
//! (`ledger/openapi.yaml`), kept honest against the code: what is rendered must be what the
//! policies render to, every variable the filter reads must reach it, the admin key must never
//! reach the proxy, the token signing key must reach only the ledger, the ledger must stay one replica behind a NetworkPolicy, and the API
//! document must describe every route, field and reason code the ledger has.
//!
//! No cluster is needed: these read files and compare them with the code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bridle_cli::render::{self, EnvoyOptions, Upstream};
use bridle_core::ledger_api::{self, ReserveResponse};
use bridle_core::policy::CompiledPolicy;
use bridle_core::policy_files;
use bridle_core::Reason;
use bridle_e2e::keys::{PUBLIC_KEYS_ENV, SIGNING_KEY_ENV};
use bridle_e2e::repo_root;
use serde_json::{json, Value};

/// What deploy/ was rendered with; the commands are in deploy/README.md.
const LEDGER_URL: &str = "http://bridle-ledger.bridle.svc.cluster.local:8181";
const FILTER_IMAGE: &str = "oci://ghcr.io/example/bridle-filter:0.1.0";
const ISTIO_NAMESPACE: &str = "istio-system";
const ENVOY_LISTEN: &str = "0.0.0.0";
const ENVOY_WASM: &str = "/etc/bridle/wasm/bridle_filter.wasm";
/// The Secret only the ledger reads.
const SIGNING_KEY_SECRET: &str = "bridle-signing-key";

const ISTIO_RENDER: &str = "cargo run -q -p bridle-cli -- render istio --image oci://ghcr.io/example/bridle-filter:0.1.0 --namespace istio-system --ledger http://bridle-ledger.bridle.svc.cluster.local:8181 > deploy/istio/wasmplugins.yaml";
const ENVOY_RENDER: &str = "cargo run -q -p bridle-cli -- render envoy --listen 0.0.0.0 --ledger http://bridle-ledger.bridle.svc.cluster.local:8181 --wasm /etc/bridle/wasm/bridle_filter.wasm -o deploy/kubernetes/envoy-bootstrap.yaml";

// --- reading ------------------------------------------------------------------------------

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn policies() -> Vec<CompiledPolicy> {
    policy_files::load(&[repo_root().join("policies")]).unwrap()
}

fn ledger() -> Upstream {
    Upstream::parse(LEDGER_URL).unwrap()
}

/// One YAML document of a file under deploy/.
struct Doc {
    /// Relative to deploy/, with `/` separators.
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every YAML document under deploy/, multi-document files split on `---` lines. Documents
/// that are only comments are left out.
fn deploy_docs() -> Vec<Doc> {
    let root = repo_root().join("deploy");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, part) in text.split("\n---").enumerate() {
            let value: Value = serde_yaml_ng::from_str(part)
                .unwrap_or_else(|e| panic!("deploy/{file}, document {}: {e}", i + 1));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// The one resource of this kind and name in files under `dir` (a folder of deploy/).
fn resource<'a>(docs: &'a [Doc], dir: &str, kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.file.starts_with(dir) && d.kind() == kind && d.name() == name)
        .collect();
    assert!(
        found.len() == 1,
        "expected one {kind} {name:?} under deploy/{dir}, found {}",
        found.len()
    );
    &found[0].value
}

fn resources<'a>(docs: &'a [Doc], dir: &str, kind: &str) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|d| d.file.starts_with(dir) && d.kind() == kind)
        .collect()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name:?}"))
}

fn all_containers(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn env_entry<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// `(secret, key)` of every secretKeyRef in a container's env.
fn secret_refs(container: &Value) -> Vec<(String, String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            r.is_object().then(|| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(&workload["spec"]["template"]["metadata"]["labels"])
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Whether a label selector (matchLabels only) selects these labels. An empty selector
/// selects everything.
fn selects(selector: &Value, labels_of: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "these checks only understand matchLabels: {selector}"
    );
    labels(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels_of.get(k) == Some(v))
}

fn port_numbers(ports: &Value, field: &str) -> BTreeSet<u64> {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p[field].as_u64().unwrap())
        .collect()
}

/// The ports of the vendors that have a policy: one Envoy listener each.
fn vendor_ports() -> BTreeSet<u64> {
    render::vendors(&policies())
        .into_iter()
        .map(|v| u64::from(render::default_port(v)))
        .collect()
}

// --- the manifests parse, and nothing secret is in them ------------------------------------

#[test]
fn every_yaml_document_under_deploy_parses_and_names_its_kind() {
    let docs = deploy_docs();
    assert!(
        docs.len() >= 30,
        "only {} documents under deploy/",
        docs.len()
    );
    // Files that are not Kubernetes resources: a rendered Envoy bootstrap, Helm values, a
    // Prometheus rules file.
    let not_resources = [
        "kubernetes/envoy-bootstrap.yaml",
        "istio/egressgateway-values.yaml",
        "observability/prometheus/bridle-rules.yaml",
    ];
    for d in &docs {
        if not_resources.contains(&d.file.as_str()) {
            continue;
        }
        assert!(
            d.value["apiVersion"].is_string() && !d.kind().is_empty(),
            "deploy/{}: a document without apiVersion and kind",
            d.file
        );
        if d.kind() != "Kustomization" {
            assert!(
                !d.name().is_empty(),
                "deploy/{}: a {} without a name",
                d.file,
                d.kind()
            );
        }
    }
}

#[test]
fn secrets_appear_only_as_placeholder_examples() {
    let docs = deploy_docs();
    let secrets = resources(&docs, "", "Secret");
    assert!(!secrets.is_empty());
    for s in secrets {
        assert!(
            s.file.ends_with("secret.example.yaml"),
            "deploy/{}: a Secret outside a secret.example.yaml",
            s.file
        );
        assert!(
            s.value.get("data").is_none(),
            "deploy/{}: use stringData placeholders",
            s.file
        );
        for (key, value) in s.value["stringData"].as_object().unwrap() {
            assert!(
                value.as_str().unwrap().contains("REPLACE"),
                "deploy/{}: {key} does not look like a placeholder",
                s.file
            );
        }
    }
}

#[test]
fn kustomizations_list_existing_files_and_every_policy_but_no_secret() {
    let root = repo_root().join("deploy");
    for dir in ["kubernetes", "istio"] {
        let k: Value =
            serde_yaml_ng::from_str(&read(&format!("deploy/{dir}/kustomization.yaml"))).unwrap();
        let base = root.join(dir);
        let mut listed = Vec::new();
        for r in k["resources"].as_array().unwrap() {
            listed.push(r.as_str().unwrap().to_string());
        }
        for g in k["configMapGenerator"].as_array().into_iter().flatten() {
            for f in g["files"].as_array().unwrap() {
                let f = f.as_str().unwrap();
                listed.push(f.split_once('=').map_or(f, |(_, path)| path).to_string());
            }
        }
        for f in &listed {
            assert!(
                base.join(f).exists(),
                "deploy/{dir}/kustomization.yaml lists {f}, which does not exist"
            );
            assert!(
                !f.contains("secret"),
                "deploy/{dir}/kustomization.yaml must not apply {f}: Secrets come from a secret manager"
            );
        }
    }

    // Kustomize has no globs: every policy file must be in the generator by name.
    let k: Value = serde_yaml_ng::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    let generator = k["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "bridle-policies")
        .expect("a bridle-policies configMapGenerator");
    let in_generator: BTreeSet<String> = generator["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            on_disk.insert(format!("../../policies/{name}"));
        }
    }
    assert_eq!(
        in_generator, on_disk,
        "deploy/kubernetes/kustomization.yaml's bridle-policies must list exactly policies/*.yaml"
    );
}

// --- (a) rendered files are fresh ------------------------------------------------------------

#[test]
fn istio_wasmplugins_are_the_rendering_of_the_policies() {
    let docs = render::istio(
        &policies(),
        &bridle_e2e::shipped_prices(),
        FILTER_IMAGE,
        ISTIO_NAMESPACE,
        &ledger(),
    )
    .unwrap();
    let rendered = render::to_yaml(&docs).unwrap();
    let shipped = read("deploy/istio/wasmplugins.yaml");
    assert!(
        rendered == shipped,
        "deploy/istio/wasmplugins.yaml is stale: run `{ISTIO_RENDER}` from the repository root"
    );
    for d in &docs {
        assert_eq!(d["kind"], "WasmPlugin");
        assert_eq!(
            d["spec"]["failStrategy"], "FAIL_CLOSE",
            "a WasmPlugin that fails open lets requests through unfiltered"
        );
    }
}

#[test]
fn kubernetes_envoy_bootstrap_is_the_rendering_of_the_policies() {
    let opts = EnvoyOptions {
        wasm: ENVOY_WASM.to_string(),
        listen: ENVOY_LISTEN.to_string(),
        ledger: Some(ledger()),
        prices: bridle_e2e::shipped_prices(),
        ..EnvoyOptions::default()
    };
    let rendered =
        render::to_yaml(&[render::envoy_bootstrap(&policies(), &opts).unwrap()]).unwrap();
    let shipped = read("deploy/kubernetes/envoy-bootstrap.yaml");
    assert!(
        rendered == shipped,
        "deploy/kubernetes/envoy-bootstrap.yaml is stale: run `{ENVOY_RENDER}` from the repository root"
    );
}

#[test]
fn envoy_pod_mounts_the_bootstrap_and_the_filter_where_they_are_expected() {
    let docs = deploy_docs();
    let envoy = resource(&docs, "kubernetes/", "Deployment", "bridle-envoy");
    let spec = &envoy["spec"]["template"]["spec"];
    let main = container(envoy, "envoy");
    let mount = |c: &Value, volume: &str| -> String {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{} does not mount {volume}", c["name"]))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let volume = |name: &str| -> &Value {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };

    // The bootstrap: the generated ConfigMap, mounted where --config-path points.
    let args: Vec<&str> = main["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config-path").unwrap() + 1];
    let k: Value = serde_yaml_ng::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    let generator = k["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["files"][0] == "envoy.yaml=envoy-bootstrap.yaml")
        .expect("the bootstrap's configMapGenerator");
    assert_eq!(
        volume("bootstrap")["configMap"]["name"],
        generator["name"],
        "the bootstrap volume is not the generated ConfigMap"
    );
    assert_eq!(
        config_path,
        format!("{}/envoy.yaml", mount(main, "bootstrap")),
        "--config-path is not where the bootstrap is mounted"
    );

    // The filter: copied by the init container into the emptyDir Envoy loads it from.
    let wasm_dir = Path::new(ENVOY_WASM).parent().unwrap().to_str().unwrap();
    assert!(volume("wasm")["emptyDir"].is_object());
    assert_eq!(mount(main, "wasm"), wasm_dir);
    let init = &spec["initContainers"][0];
    assert_eq!(mount(init, "wasm"), wasm_dir);
    let command: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command.last().copied(),
        Some(ENVOY_WASM),
        "the init container must copy the filter to {ENVOY_WASM}"
    );
    assert_eq!(main["image"], "envoyproxy/envoy:v1.40.0");
}

// --- (b) and (c): secrets go where they are needed, and nowhere else ---------------------------

#[test]
fn the_proxies_get_every_variable_the_filter_reads() {
    let policies = policies();
    let link = render::ledger_link(&ledger());
    let needed = render::env_keys(&policies, Some(&link));
    assert!(needed.contains(&PUBLIC_KEYS_ENV.to_string()));
    assert!(needed.contains(&"BRIDLE_ENFORCER_KEY".to_string()));

    let docs = deploy_docs();
    let envoy = container(
        resource(&docs, "kubernetes/", "Deployment", "bridle-envoy"),
        "envoy",
    );
    let gateway = container(
        resource(&docs, "istio/", "Deployment", "istio-egressgateway"),
        "istio-proxy",
    );
    for (what, c) in [
        ("the Envoy container", envoy),
        ("the egress gateway", gateway),
    ] {
        let have = env_names(c);
        for key in &needed {
            assert!(have.contains(key), "{what} is not given {key}");
            // Public keys are public: a ConfigMap. Everything else is a secret.
            let source = if key == PUBLIC_KEYS_ENV {
                "configMapKeyRef"
            } else {
                "secretKeyRef"
            };
            let r = &env_entry(c, key)["valueFrom"][source];
            assert!(
                r["name"].is_string(),
                "{what}: {key} must come from a {source}"
            );
            assert!(
                r["optional"] != true,
                "{what}: {key} must not be optional: the filter refuses to start without it"
            );
        }
    }
}

#[test]
fn the_ledger_holds_the_admin_key_and_the_proxies_never_do() {
    let docs = deploy_docs();
    let ledger = container(
        resource(&docs, "kubernetes/", "Deployment", "bridle-ledger"),
        "ledger",
    );
    let have = env_names(ledger);
    for key in ["BRIDLE_ADMIN_KEY", "BRIDLE_ENFORCER_KEY"] {
        assert!(have.contains(key), "the ledger is not given {key}");
        assert!(
            env_entry(ledger, key)["valueFrom"]["secretKeyRef"]["name"] == "bridle-secrets",
            "the ledger's {key} must come from Secret bridle-secrets"
        );
    }
    // The ledger never needs a vendor secret.
    for p in policies() {
        assert!(
            !have.contains(&p.policy.secret_env),
            "the ledger must not get {}",
            p.policy.secret_env
        );
    }

    let envoy = resource(&docs, "kubernetes/", "Deployment", "bridle-envoy");
    let gateway = resource(&docs, "istio/", "Deployment", "istio-egressgateway");
    for (what, workload) in [("Envoy", envoy), ("the egress gateway", gateway)] {
        for c in all_containers(workload) {
            assert!(
                c.get("envFrom").is_none(),
                "{what}: envFrom would pass a whole Secret, admin key included; name each variable"
            );
            assert!(
                !env_names(c).contains("BRIDLE_ADMIN_KEY"),
                "{what} must never hold BRIDLE_ADMIN_KEY: it opens the admin API"
            );
            for (var, _, key) in secret_refs(c) {
                assert_ne!(key, "BRIDLE_ADMIN_KEY", "{what}: {var} reads the admin key");
            }
        }
    }
}

/// A proxy verifies tokens and never mints them: the signing key is in a Secret of its own
/// that only the ledger reads, and the ledger's public keys are the proxies'.
#[test]
fn the_signing_key_reaches_only_the_ledger() {
    let docs = deploy_docs();
    let ledger = container(
        resource(&docs, "kubernetes/", "Deployment", "bridle-ledger"),
        "ledger",
    );
    assert_eq!(
        env_entry(ledger, SIGNING_KEY_ENV)["valueFrom"]["secretKeyRef"]["name"],
        SIGNING_KEY_SECRET
    );
    assert_eq!(
        env_entry(ledger, PUBLIC_KEYS_ENV)["valueFrom"]["configMapKeyRef"]["name"],
        "bridle-public-keys"
    );
    let mut readers = Vec::new();
    for d in resources(&docs, "", "Deployment") {
        for c in all_containers(&d.value) {
            let name = format!("{}/{}", d.name(), c["name"].as_str().unwrap_or("?"));
            if env_names(c).contains(SIGNING_KEY_ENV)
                || secret_refs(c)
                    .iter()
                    .any(|(_, secret, key)| secret == SIGNING_KEY_SECRET || key == SIGNING_KEY_ENV)
            {
                readers.push(name.clone());
            }
            for v in c["volumes"]
                .as_array()
                .into_iter()
                .chain(d.value["spec"]["template"]["spec"]["volumes"].as_array())
                .flatten()
            {
                assert_ne!(
                    v["secret"]["secretName"], SIGNING_KEY_SECRET,
                    "{name} mounts the signing key"
                );
            }
        }
    }
    assert_eq!(readers, ["bridle-ledger/ledger"]);
    // The example Secrets keep the signing key apart: no other Secret shows it.
    for s in resources(&docs, "", "Secret") {
        let has = s.value["stringData"]
            .as_object()
            .unwrap()
            .contains_key(SIGNING_KEY_ENV);
        assert_eq!(
            has,
            s.name() == SIGNING_KEY_SECRET,
            "deploy/{}: {} and {SIGNING_KEY_ENV}",
            s.file,
            s.name()
        );
    }
}

#[test]
fn every_secret_reference_has_its_key_in_the_example_secrets() {
    let docs = deploy_docs();
    let mut example: BTreeSet<(String, String)> = BTreeSet::new();
    for s in resources(&docs, "", "Secret") {
        for key in s.value["stringData"].as_object().unwrap().keys() {
            example.insert((s.name().to_string(), key.clone()));
        }
    }
    let mut config_maps: BTreeSet<(String, String)> = BTreeSet::new();
    for m in resources(&docs, "", "ConfigMap") {
        for key in m.value["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            config_maps.insert((m.name().to_string(), key.clone()));
        }
    }
    let mut checked = 0;
    for d in resources(&docs, "", "Deployment") {
        for c in all_containers(&d.value) {
            for (var, secret, key) in secret_refs(c) {
                assert!(
                    example.contains(&(secret.clone(), key.clone())),
                    "deploy/{}: {var} reads {secret}/{key}, which no secret.example.yaml shows",
                    d.file
                );
                checked += 1;
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let r = &e["valueFrom"]["configMapKeyRef"];
                if let (Some(map), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                    assert!(
                        config_maps.contains(&(map.to_string(), key.to_string())),
                        "deploy/{}: {} reads ConfigMap {map}/{key}, which no example shows",
                        d.file,
                        e["name"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} secret references found");
}

// --- (d) ports ---------------------------------------------------------------------------------

#[test]
fn the_envoy_service_exposes_exactly_the_vendor_ports() {
    let expected = vendor_ports();
    assert_eq!(expected.len(), render::vendors(&policies()).len());
    let docs = deploy_docs();
    let service = resource(&docs, "kubernetes/", "Service", "bridle-envoy");
    assert_eq!(
        port_numbers(&service["spec"]["ports"], "port"),
        expected,
        "Service bridle-envoy must expose one port per vendor, render::default_port's"
    );

    // Each Service port reaches the container port of the same number.
    let envoy = resource(&docs, "kubernetes/", "Deployment", "bridle-envoy");
    let container_ports: BTreeMap<String, u64> = container(envoy, "envoy")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = match &p["targetPort"] {
            Value::String(name) => container_ports[name],
            other => other.as_u64().unwrap(),
        };
        assert_eq!(Some(target), p["port"].as_u64(), "{p}");
    }

    // The rendered listeners, and the NetworkPolicy that admits agents to them.
    let bootstrap: Value =
        serde_yaml_ng::from_str(&read("deploy/kubernetes/envoy-bootstrap.yaml")).unwrap();
    let listeners: BTreeSet<u64> = bootstrap["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(listeners, expected);
    let policy = resource(&docs, "kubernetes/", "NetworkPolicy", "bridle-envoy");
    let admitted: BTreeSet<u64> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| port_numbers(&rule["ports"], "port"))
        .collect();
    assert_eq!(
        admitted, expected,
        "agents must reach the vendor ports, and only those (not Envoy's admin port)"
    );
}

#[test]
fn istio_gateway_ports_match_the_wasmplugins() {
    let expected = vendor_ports();
    let docs = deploy_docs();
    let plugins: BTreeSet<u64> = resources(&docs, "istio/", "WasmPlugin")
        .iter()
        .flat_map(|d| {
            d.value["spec"]["match"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|m| port_numbers(&m["ports"], "number"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(plugins, expected);

    let gateway = resource(&docs, "istio/", "Gateway", "bridle-egress");
    let servers: BTreeSet<u64> = gateway["spec"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["port"]["number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        servers, expected,
        "the Gateway must open every plugin's port"
    );
    assert_eq!(
        gateway["spec"]["selector"],
        resources(&docs, "istio/", "WasmPlugin")[0].value["spec"]["selector"]["matchLabels"],
        "the Gateway and the WasmPlugins must select the same gateway pods"
    );

    let values: Value =
        serde_yaml_ng::from_str(&read("deploy/istio/egressgateway-values.yaml")).unwrap();
    let mut service = port_numbers(&values["service"]["ports"], "port");
    service.remove(&15021);
    assert_eq!(
        service, expected,
        "the gateway Service (Helm values) must expose every plugin's port"
    );
    assert_eq!(values["labels"]["istio"], "egressgateway");

    // One ServiceEntry on 443 for each vendor's API host.
    let entries = resources(&docs, "istio/", "ServiceEntry");
    for vendor in render::vendors(&policies()) {
        let host = Upstream::parse(vendor.default_upstream()).unwrap().host;
        let entry = entries
            .iter()
            .find(|e| e.value["spec"]["hosts"][0] == host.as_str())
            .unwrap_or_else(|| panic!("no ServiceEntry for {host}"));
        assert_eq!(
            port_numbers(&entry.value["spec"]["ports"], "number"),
            BTreeSet::from([443]),
            "{host}"
        );
    }
}

/// Istio retries a route twice by default (on 503 among others); to the vendor, a retry is a
/// second call under the one reservation Bridle made. Every vendor route says no retries.
#[test]
fn istio_vendor_routes_never_retry() {
    let docs = deploy_docs();
    let services = resources(&docs, "istio/", "VirtualService");
    assert_eq!(services.len(), vendor_ports().len());
    for vs in services {
        for route in vs.value["spec"]["http"].as_array().unwrap() {
            assert_eq!(
                route["retries"]["attempts"].as_u64(),
                Some(0),
                "{}: {route}",
                vs.value["metadata"]["name"]
            );
        }
    }
}

#[test]
fn istio_defines_the_ledger_cluster_the_plugins_call() {
    let docs = deploy_docs();
    let link = render::ledger_link(&ledger());
    let filter = resource(&docs, "istio/", "EnvoyFilter", "bridle-ledger-cluster");
    let patch = &filter["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "CLUSTER");
    let cluster = &patch["patch"]["value"];
    assert_eq!(cluster["name"], link.cluster.as_str());
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    let ledger = ledger();
    assert_eq!(address["address"], ledger.host.as_str());
    assert_eq!(address["port_value"], u64::from(ledger.port));
    // It speaks to the ledger as the rendered bootstrap does (HTTP/1.1 by default).
    let opts = EnvoyOptions {
        ledger: Some(ledger.clone()),
        prices: bridle_e2e::shipped_prices(),
        ..EnvoyOptions::default()
    };
    let bootstrap = render::envoy_bootstrap(&policies(), &opts).unwrap();
    let rendered = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == link.cluster.as_str())
        .unwrap();
    assert_eq!(
        cluster["typed_extension_protocol_options"],
        rendered["typed_extension_protocol_options"]
    );
    for plugin in resources(&docs, "istio/", "WasmPlugin") {
        assert_eq!(
            plugin.value["spec"]["pluginConfig"]["ledger"]["cluster"],
            cluster["name"],
            "{}",
            plugin.name()
        );
    }
}

/// Istio matches a WasmPlugin's `mode` against the listener class, and classifies every
/// gateway listener as CLIENT: a plugin matched with `mode: SERVER` attaches to no gateway
/// listener.
#[test]
fn istio_wasmplugins_match_gateway_listeners() {
    let docs = deploy_docs();
    for plugin in resources(&docs, "istio/", "WasmPlugin") {
        for m in plugin.value["spec"]["match"].as_array().unwrap() {
            assert!(
                m["mode"].is_null() || m["mode"] == "CLIENT" || m["mode"] == "CLIENT_AND_SERVER",
                "{}: mode {} never matches a gateway listener",
                plugin.name(),
                m["mode"]
            );
        }
    }
}

// --- (e) the ledger: one writer --------------------------------------------------------------

#[test]
fn the_ledger_is_one_recreated_replica_probed_on_healthz() {
    let docs = deploy_docs();
    let deployment = resource(&docs, "kubernetes/", "Deployment", "bridle-ledger");
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "SQLite has one writer: exactly one ledger replica"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "a rolling update would run two writers on one database"
    );
    let ledger = container(deployment, "ledger");
    let ports: BTreeMap<String, u64> = ledger["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &ledger[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        let port = match &get["port"] {
            Value::String(name) => ports[name],
            other => other.as_u64().unwrap(),
        };
        assert_eq!(port, 8181, "{probe} port");
    }

    let args: Vec<&str> = ledger["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--listen",
            "0.0.0.0:8181",
            "--db",
            "/var/lib/bridle/ledger.db",
            "--policies",
            "/etc/bridle/policies"
        ]
    );
    assert_eq!(ledger["command"], json!(["bridle-ledger"]));
    // The database lives on the claim, the policies come from the generated ConfigMap.
    let spec = &deployment["spec"]["template"]["spec"];
    let mount_of = |path: &str| -> String {
        ledger["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let volume = |name: &str| -> &Value {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
    };
    let claim = volume(&mount_of("/var/lib/bridle"))["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap()
        .to_string();
    resource(&docs, "kubernetes/", "PersistentVolumeClaim", &claim);
    assert_eq!(
        volume(&mount_of("/etc/bridle/policies"))["configMap"]["name"],
        "bridle-policies"
    );

    let service = resource(&docs, "kubernetes/", "Service", "bridle-ledger");
    assert_eq!(
        port_numbers(&service["spec"]["ports"], "port"),
        BTreeSet::from([8181])
    );
    let pods = pod_labels(deployment);
    assert!(
        labels(&service["spec"]["selector"])
            .iter()
            .all(|(k, v)| pods.get(k) == Some(v)),
        "Service bridle-ledger does not select the ledger's pods"
    );
}

#[test]
fn every_container_runs_unprivileged_with_limits() {
    let docs = deploy_docs();
    let deployments = resources(&docs, "kubernetes/", "Deployment");
    assert_eq!(deployments.len(), 2);
    for d in deployments {
        let pod = &d.value["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{}", d.name());
        assert_eq!(pod["automountServiceAccountToken"], false, "{}", d.name());
        for c in all_containers(&d.value) {
            let what = format!("{}/{}", d.name(), c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{what}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
            assert!(sc["capabilities"]["add"].is_null(), "{what}");
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][kind][resource].is_null(),
                        "{what}: no {kind}.{resource}"
                    );
                }
            }
        }
    }
}

// --- (f) the ledger is reachable by Envoy and admins only -----------------------------------

#[test]
fn only_envoy_and_admin_pods_reach_the_ledger() {
    let docs = deploy_docs();
    let ledger = pod_labels(resource(
        &docs,
        "kubernetes/",
        "Deployment",
        "bridle-ledger",
    ));
    let envoy = pod_labels(resource(&docs, "kubernetes/", "Deployment", "bridle-envoy"));
    // The namespace label that admits agents to Envoy must admit them nowhere near the ledger.
    let agents = labels(
        &resource(&docs, "kubernetes/", "NetworkPolicy", "bridle-envoy")["spec"]["ingress"][0]
            ["from"][0]["namespaceSelector"]["matchLabels"],
    );
    assert!(!agents.is_empty());

    let covering: Vec<&Doc> = resources(&docs, "", "NetworkPolicy")
        .into_iter()
        .filter(|p| selects(&p.value["spec"]["podSelector"], &ledger))
        .collect();
    assert!(
        covering.iter().any(|p| p.file.starts_with("kubernetes/")
            && p.value["spec"]["policyTypes"]
                .as_array()
                .unwrap()
                .contains(&json!("Ingress"))),
        "no NetworkPolicy restricts ingress to the ledger"
    );
    let mut envoy_admitted = false;
    for p in &covering {
        for rule in p.value["spec"]["ingress"].as_array().into_iter().flatten() {
            let from = rule["from"].as_array().map_or(&[][..], Vec::as_slice);
            assert!(
                !from.is_empty(),
                "deploy/{} {}: an ingress rule without `from` admits every pod",
                p.file,
                p.name()
            );
            assert_eq!(
                port_numbers(&rule["ports"], "port"),
                BTreeSet::from([8181]),
                "deploy/{} {}: ledger rules must name port 8181 only",
                p.file,
                p.name()
            );
            for peer in from {
                assert!(
                    peer.get("ipBlock").is_none(),
                    "deploy/{} {}: no ipBlock peers",
                    p.file,
                    p.name()
                );
                let pods = &peer["podSelector"];
                let namespaces = &peer["namespaceSelector"];
                assert!(
                    pods.is_object() && !labels(&pods["matchLabels"]).is_empty(),
                    "deploy/{} {}: every peer must name its pods by label: {peer}",
                    p.file,
                    p.name()
                );
                if namespaces.is_object() {
                    let ns = labels(&namespaces["matchLabels"]);
                    assert!(
                        !ns.is_empty(),
                        "deploy/{} {}: an empty namespaceSelector is every namespace",
                        p.file,
                        p.name()
                    );
                    assert!(
                        !agents.iter().all(|(k, v)| ns.get(k) == Some(v)),
                        "deploy/{} {}: agents' namespaces must not reach the ledger",
                        p.file,
                        p.name()
                    );
                } else if selects(pods, &envoy) {
                    envoy_admitted = true;
                }
            }
        }
    }
    assert!(
        envoy_admitted,
        "Envoy's pods must be able to reach the ledger"
    );

    // And everything in the namespace not opened explicitly is closed.
    let deny = resource(
        &docs,
        "kubernetes/",
        "NetworkPolicy",
        "default-deny-ingress",
    );
    assert_eq!(deny["spec"]["podSelector"], json!({}));
    assert!(deny["spec"]["ingress"].is_null());
}

// --- (g) the OpenAPI document -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Admin,
    Enforcement,
    Open,
}

#[derive(Debug)]
struct Route {
    path: String,
    methods: Vec<String>,
    surface: Surface,
}

/// The index of the `)` that closes the `(` just before `start`.
fn closing_paren(text: &str, start: usize) -> usize {
    let mut depth = 1;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[start..].char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return start + i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {start}");
}

/// `pub const NAME: &str = "value";` in a Rust source.
fn string_const(source: &str, name: &str) -> String {
    let marker = format!("pub const {name}: &str = \"");
    let start = source
        .find(&marker)
        .unwrap_or_else(|| panic!("no constant {name}"))
        + marker.len();
    let end = start + source[start..].find('"').unwrap();
    source[start..end].to_string()
}

/// Every `.route(...)` of the ledger's router, with its methods and which key guards it.
fn ledger_routes() -> Vec<Route> {
    let source = read("ledger/src/api/mod.rs");
    let constants = read("core/src/ledger_api.rs");
    let mut routes = Vec::new();
    for (at, _) in source.match_indices(".route(") {
        let open = at + ".route(".len();
        let close = closing_paren(&source, open);
        let call = &source[open..close];
        let (first, rest) = call.split_once(',').unwrap();
        let first = first.trim();
        let path = if let Some(literal) = first.strip_prefix('"') {
            literal.trim_end_matches('"').to_string()
        } else {
            let name = first.rsplit("::").next().unwrap();
            string_const(&constants, name)
        };
        let methods: Vec<String> = ["get", "post", "put", "patch", "delete"]
            .iter()
            .filter(|m| {
                rest.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0 || {
                        let before = rest.as_bytes()[i - 1];
                        !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
                    }
                })
            })
            .map(|m| m.to_string())
            .collect();
        assert!(!methods.is_empty(), "no method found in .route({call})");
        // The auth layer that follows the route in the same Router::new() chain.
        let chain_end = source[close..]
            .find("Router::new()")
            .map_or(source.len(), |i| close + i);
        let chain = &source[close..chain_end];
        let surface = if chain.contains("require_admin") {
            Surface::Admin
        } else if chain.contains("require_enforcer") {
            Surface::Enforcement
        } else {
            Surface::Open
        };
        routes.push(Route {
            path,
            methods,
            surface,
        });
    }
    routes
}

fn openapi() -> Value {
    serde_yaml_ng::from_str(&read("ledger/openapi.yaml")).unwrap()
}

/// Follows a local `$ref`.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap();
            spec.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"))
        }
        None => v,
    }
}

#[test]
fn the_route_parser_sees_the_known_routes() {
    let routes = ledger_routes();
    let find = |path: &str| routes.iter().find(|r| r.path == path).unwrap();
    assert_eq!(find("/v1/tokens").methods, ["get", "post"]);
    assert_eq!(find("/v1/tokens").surface, Surface::Admin);
    assert_eq!(find(ledger_api::RESERVE_PATH).surface, Surface::Enforcement);
    assert_eq!(find(ledger_api::REPORT_PATH).methods, ["post"]);
    assert_eq!(find(ledger_api::REVOCATIONS_PATH).methods, ["get"]);
    assert_eq!(find("/healthz").surface, Surface::Open);
    assert_eq!(find("/metrics").surface, Surface::Open);
}

#[test]
fn openapi_is_3_1_and_documents_every_route_with_its_key() {
    let spec = openapi();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1."),
        "ledger/openapi.yaml must be OpenAPI 3.1.x"
    );
    let schemes = &spec["components"]["securitySchemes"];
    for scheme in ["adminKey", "enforcerKey"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    assert!(schemes["adminKey"]["description"]
        .as_str()
        .unwrap()
        .contains("BRIDLE_ADMIN_KEY"));
    assert!(schemes["enforcerKey"]["description"]
        .as_str()
        .unwrap()
        .contains("BRIDLE_ENFORCER_KEY"));

    let routes = ledger_routes();
    assert!(routes.len() >= 11, "only {} routes parsed", routes.len());
    let paths = spec["paths"].as_object().unwrap();
    for route in &routes {
        let item = paths
            .get(&route.path)
            .unwrap_or_else(|| panic!("ledger/openapi.yaml does not document {}", route.path));
        let documented: BTreeSet<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "parameters")
            .collect();
        let served: BTreeSet<&str> = route.methods.iter().map(String::as_str).collect();
        assert_eq!(documented, served, "methods of {}", route.path);
        let security = match route.surface {
            Surface::Admin => json!([{ "adminKey": [] }]),
            Surface::Enforcement => json!([{ "enforcerKey": [] }]),
            Surface::Open => json!([]),
        };
        for method in &route.methods {
            let op = &item[method.as_str()];
            assert_eq!(
                op["security"], security,
                "{method} {}: wrong security",
                route.path
            );
            let responses = op["responses"].as_object().unwrap();
            if route.surface != Surface::Open {
                let unauthenticated = deref(&spec, &responses["401"]);
                assert!(
                    unauthenticated["headers"]["WWW-Authenticate"].is_object(),
                    "{method} {}: 401 without WWW-Authenticate",
                    route.path
                );
            }
            // Every route that reads the store can answer 503; /livez never touches it.
            if route.path != "/metrics" && route.path != "/livez" {
                assert!(
                    responses.contains_key("503"),
                    "{method} {}: no 503 store_unavailable",
                    route.path
                );
            }
            if op["requestBody"].is_object() {
                for status in ["400", "413", "415"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {}: a JSON body can be refused with {status}",
                        route.path
                    );
                }
            }
            // Path parameters, axum's `{id}`, are declared.
            for segment in route.path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    let declared = op["parameters"]
                        .as_array()
                        .into_iter()
                        .chain(item["parameters"].as_array())
                        .flatten()
                        .any(|p| p["in"] == "path" && p["name"] == name);
                    assert!(declared, "{method} {}: path parameter {name}", route.path);
                }
            }
        }
    }
    // And nothing is documented that the ledger does not serve.
    for path in paths.keys() {
        assert!(
            routes.iter().any(|r| &r.path == path),
            "ledger/openapi.yaml documents {path}, which the ledger does not serve"
        );
    }
    assert_eq!(
        paths["/metrics"]["get"]["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

#[test]
fn openapi_lists_every_reason_code() {
    let spec = openapi();
    let documented: BTreeSet<&str> = spec["components"]["schemas"]["Reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let codes: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(documented, codes, "components.schemas.Reason.enum");
}

/// The field names of `struct NAME { ... }` in a Rust source, and whether it has
/// `#[serde(deny_unknown_fields)]`.
fn rust_struct(source: &str, name: &str) -> (BTreeSet<String>, bool) {
    let marker = format!("pub struct {name} {{");
    let at = source
        .find(&marker)
        .unwrap_or_else(|| panic!("no struct {name}"));
    let attributes: Vec<&str> = source[..at]
        .lines()
        .rev()
        .map(str::trim)
        .take_while(|l| l.starts_with('#') || l.starts_with("///"))
        .collect();
    let deny = attributes.iter().any(|l| l.contains("deny_unknown_fields"));
    let body = &source[at + marker.len()..];
    let body = &body[..body.find("\n}").unwrap()];
    let mut fields = BTreeSet::new();
    let mut in_attribute = false;
    for line in body.lines().map(str::trim) {
        // Attributes, which may span lines: `#[serde(\n default,\n with = "a::b",\n)]`.
        if in_attribute || line.starts_with("#[") {
            in_attribute = !line.ends_with(']');
            continue;
        }
        if line.starts_with("//") {
            continue;
        }
        let Some((name, _)) = line.trim_start_matches("pub ").split_once(':') else {
            continue;
        };
        let name = name.trim();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            fields.insert(name.to_string());
        }
    }
    (fields, deny)
}

#[test]
fn openapi_schemas_have_the_rust_types_fields() {
    let spec = openapi();
    let schemas = &spec["components"]["schemas"];
    let types = [
        ("core/src/issue.rs", "IssueRequest"),
        ("core/src/policy.rs", "Caps"),
        ("core/src/policy.rs", "CapsNarrowing"),
        ("core/src/ledger_api.rs", "ReserveRequest"),
        ("core/src/ledger_api.rs", "Settle"),
        ("core/src/ledger_api.rs", "AuditRecord"),
        ("core/src/ledger_api.rs", "Report"),
        ("core/src/ledger_api.rs", "ReportResponse"),
        ("core/src/revocation.rs", "RevocationEntry"),
        ("core/src/revocation.rs", "RevocationFeed"),
        ("ledger/src/records.rs", "RevokeRequest"),
        ("ledger/src/records.rs", "RevokeOutcome"),
        ("ledger/src/views.rs", "PolicyView"),
        ("ledger/src/views.rs", "SpendView"),
        ("ledger/src/cap_alerts.rs", "Alert"),
        ("ledger/src/store/mod.rs", "AuditPage"),
    ];
    for (file, name) in types {
        let (fields, deny) = rust_struct(&read(file), name);
        let schema = &schemas[name];
        let properties: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name} in ledger/openapi.yaml"))
            .keys()
            .cloned()
            .collect();
        assert_eq!(properties, fields, "schema {name} vs {file}");
        if deny {
            assert_eq!(
                schema["additionalProperties"], false,
                "{name} has deny_unknown_fields: its schema needs additionalProperties: false"
            );
        }
    }
    // Serde's own view of the types the filter exchanges with the ledger.
    let request: Value = serde_json::to_value(ledger_api::ReserveRequest {
        token: "bvt_x".into(),
        request_id: "0123456789abcdef".into(),
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        merchant: Some("acct_1".into()),
        amount: bridle_core::money::Usd::from_cents(1250).unwrap(),
        detail: "amount".into(),
        idempotency_key: Some("k".into()),
        digest: Some("ab".repeat(32)),
        lease_calls: Some(4),
    })
    .unwrap();
    assert_eq!(request["amount"], "12.50", "money is a decimal string");
    for (field, _) in request.as_object().unwrap() {
        assert!(
            schemas["ReserveRequest"]["properties"][field].is_object(),
            "ReserveRequest.{field}"
        );
    }
}

#[test]
fn openapi_reserve_response_is_discriminated_by_decision() {
    let spec = openapi();
    let schemas = &spec["components"]["schemas"];
    let response = &schemas["ReserveResponse"];
    assert_eq!(response["discriminator"]["propertyName"], "decision");
    assert_eq!(response["oneOf"].as_array().unwrap().len(), 2);
    // Each with every field it can send, and those it may leave out.
    let examples: [(ReserveResponse, &[&str]); 2] = [
        (
            ReserveResponse::Granted {
                reservation: "0123456789abcdef".into(),
                replay: false,
                leased_calls: Some(4),
            },
            &["leased_calls"],
        ),
        (
            ReserveResponse::Denied {
                reason: Reason::SpendRateLimited,
                message: "over".into(),
                retry_after_secs: Some(20),
            },
            &["retry_after_secs"],
        ),
    ];
    let mut decisions = BTreeSet::new();
    for (example, optional) in examples {
        let wire = serde_json::to_value(&example).unwrap();
        let decision = wire["decision"].as_str().unwrap().to_string();
        let target = response["discriminator"]["mapping"][&decision]
            .as_str()
            .unwrap_or_else(|| panic!("no mapping for decision {decision}"));
        let schema = spec.pointer(target.strip_prefix('#').unwrap()).unwrap();
        assert_eq!(schema["properties"]["decision"]["const"], decision.as_str());
        assert_eq!(schema["additionalProperties"], false);
        let properties: BTreeSet<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        let sent: BTreeSet<&String> = wire.as_object().unwrap().keys().collect();
        assert_eq!(properties, sent, "{decision}");
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let sent_names: BTreeSet<&str> = sent
            .iter()
            .map(|s| s.as_str())
            .filter(|s| !optional.contains(s))
            .collect();
        assert_eq!(required, sent_names, "{decision}");
        decisions.insert(decision);
    }
    let mapped: BTreeSet<String> = response["discriminator"]["mapping"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(decisions, mapped);
}

/// The field names of a query struct, as the query parameters they become.
fn query_fields(file: &str, name: &str) -> BTreeSet<String> {
    let (fields, deny) = rust_struct(&read(file), name);
    assert!(deny, "{name}: unknown query parameters are refused");
    fields
}

#[test]
fn openapi_query_parameters_are_the_query_structs_fields() {
    let spec = openapi();
    let cases = [
        ("/v1/tokens", "ledger/src/store/mod.rs", "TokenQuery"),
        ("/v1/audit", "ledger/src/store/mod.rs", "AuditQuery"),
        (
            ledger_api::REVOCATIONS_PATH,
            "ledger/src/api/enforce.rs",
            "Since",
        ),
    ];
    for (path, file, name) in cases {
        let documented: BTreeSet<String> = spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path} has no parameters"))
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(documented, query_fields(file, name), "GET {path} vs {name}");
    }
    let status = deref(
        &spec,
        &spec["paths"]["/v1/tokens"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap()["schema"],
    );
    assert_eq!(status["enum"], json!(["active", "revoked", "expired"]));
}

#[test]
fn openapi_error_envelope_covers_every_error_code_the_api_returns() {
    let spec = openapi();
    let error = &spec["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error"]));
    assert_eq!(
        error["properties"]["error"]["required"],
        json!(["code", "message"])
    );
    let documented: BTreeSet<String> = error["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    // Every `ApiError::new(StatusCode::X, "code", ...)` in the API's source.
    let mut used = BTreeSet::from(["invalid_request".to_string()]);
    for file in ["mod.rs", "admin.rs", "enforce.rs", "errors.rs", "auth.rs"] {
        let source = read(&format!("ledger/src/api/{file}"));
        for (at, _) in source.match_indices("ApiError::new(") {
            let open = at + "ApiError::new(".len();
            let args = &source[open..closing_paren(&source, open)];
            if args.trim_start().starts_with("status") {
                continue; // the constructor itself
            }
            let start = args.find('"').unwrap() + 1;
            let end = start + args[start..].find('"').unwrap();
            used.insert(args[start..end].to_string());
        }
    }
    assert!(used.len() >= 6, "only {used:?} found");
    assert_eq!(
        documented, used,
        "Error.error.code enum vs the API's source"
    );
}
