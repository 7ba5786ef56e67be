//! Rendering policies into deployable configuration: the filter's JSON, a whole Envoy
//! bootstrap, or Istio resources. Pure functions of their inputs, so that a GitOps pipeline
//! (and the repository's own tests) can diff what they would deploy.

use std::collections::BTreeMap;

use bridle_core::config::{FilterConfig, LedgerLink, DEFAULT_PUBLIC_KEYS_ENV};
use bridle_core::policy::CompiledPolicy;
use bridle_core::vendor::Vendor;
use bridle_core::Reason;

/// Each vendor's price table (`policies/prices/<vendor>.yaml`), for calls priced by tokens.
pub type Prices = BTreeMap<Vendor, Vec<bridle_core::llm::PriceEntry>>;
use serde_json::{json, Value};

pub const LEDGER_CLUSTER: &str = "bridle_ledger";
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/bridle_filter.wasm";
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The listener port each vendor gets by default: one port per vendor, so that every
/// error, even for a request with no token, is in that vendor's format.
pub fn default_port(vendor: Vendor) -> u16 {
    match vendor {
        Vendor::Stripe => 10001,
        Vendor::Twilio => 10002,
        Vendor::Resend => 10003,
        Vendor::Openai => 10004,
        Vendor::Anthropic => 10005,
    }
}

/// Where a cluster sends traffic: `http://host:port` or `https://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{s:?}: scheme must be http or https, not {other}")),
        };
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(format!("{s:?}: give only scheme, host and port"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{s:?} has no host"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{s:?} has no port"))?;
        Ok(Upstream { tls, host, port })
    }

    fn is_ip(&self) -> bool {
        self.host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
    }

    fn authority(&self) -> String {
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The filter configuration for one vendor's listener. The vendor's price table goes with
/// it when one of its policies prices calls by tokens: Envoy never reads a price file.
pub fn filter_config(
    vendor: Vendor,
    policies: &[CompiledPolicy],
    ledger: Option<&LedgerLink>,
    prices: &Prices,
) -> FilterConfig {
    let policies: Vec<_> = policies
        .iter()
        .filter(|p| p.policy.vendor == vendor)
        .map(|p| p.policy.clone())
        .collect();
    let priced = policies.iter().any(|p| p.models.is_some());
    FilterConfig {
        vendor,
        ledger: ledger.cloned(),
        public_keys_env: DEFAULT_PUBLIC_KEYS_ENV.to_string(),
        prices: if priced {
            prices.get(&vendor).cloned().unwrap_or_default()
        } else {
            Vec::new()
        },
        policies,
    }
}

pub fn ledger_link(ledger: &Upstream) -> LedgerLink {
    LedgerLink {
        cluster: LEDGER_CLUSTER.to_string(),
        authority: ledger.authority(),
        timeout_ms: 500,
        credential_env: "BRIDLE_ENFORCER_KEY".to_string(),
        revocation_poll_ms: 200,
        max_staleness_ms: 3_000,
    }
}

/// The vendors that have at least one policy, in a stable order.
pub fn vendors(policies: &[CompiledPolicy]) -> Vec<Vendor> {
    let mut v: Vec<Vendor> = policies.iter().map(|p| p.policy.vendor).collect();
    v.sort();
    v.dedup();
    v
}

/// The environment variables the filter reads: the token public keys, each policy's secret,
/// and the ledger credential. Envoy passes only these to the VM.
pub fn env_keys(policies: &[CompiledPolicy], ledger: Option<&LedgerLink>) -> Vec<String> {
    let mut keys = vec![DEFAULT_PUBLIC_KEYS_ENV.to_string()];
    keys.extend(policies.iter().map(|p| p.policy.secret_env.clone()));
    if let Some(l) = ledger {
        keys.push(l.credential_env.clone());
    }
    keys.sort();
    keys.dedup();
    keys
}

#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub wasm: String,
    pub listen: String,
    pub admin_port: u16,
    pub ports: BTreeMap<Vendor, u16>,
    pub upstreams: BTreeMap<Vendor, Upstream>,
    pub ledger: Option<Upstream>,
    /// More replicas of the same ledger (on one PostgreSQL database): the ledger cluster
    /// balances costed calls over all of them and routes around one that fails.
    pub ledger_replicas: Vec<Upstream>,
    pub ca_file: String,
    /// Envoy's own path normalization and escaped-slash rejection: a second line of defence
    /// in front of the filter's strict matching. Tests turn it off to prove the filter holds
    /// on its own.
    pub envoy_path_hardening: bool,
    /// Each vendor's price table, rendered into its listener's filter configuration.
    pub prices: Prices,
    /// How Envoy speaks to the ledger. HTTP/1.1 by default: measured side by side in
    /// `make bench` (BENCHMARKS.md), HTTP/2's one multiplexed connection per worker cost
    /// Envoy more CPU per costed call and added latency.
    pub ledger_protocol: LedgerProtocol,
}

/// The protocol of the ledger cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LedgerProtocol {
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (h2c), or HTTP/2 negotiated by ALPN over TLS.
    Http2,
}

impl std::str::FromStr for LedgerProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<LedgerProtocol, String> {
        match s {
            "http1" => Ok(LedgerProtocol::Http1),
            "http2" => Ok(LedgerProtocol::Http2),
            other => Err(format!(
                "{other:?} is not a ledger protocol (http1 or http2)"
            )),
        }
    }
}

impl Default for EnvoyOptions {
    fn default() -> EnvoyOptions {
        EnvoyOptions {
            wasm: DEFAULT_WASM.to_string(),
            listen: "127.0.0.1".to_string(),
            admin_port: 9901,
            ports: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            ledger: Some(Upstream {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8181,
            }),
            ledger_replicas: Vec::new(),
            ca_file: DEFAULT_CA_FILE.to_string(),
            envoy_path_hardening: true,
            prices: Prices::new(),
            ledger_protocol: LedgerProtocol::default(),
        }
    }
}

impl EnvoyOptions {
    pub fn port(&self, v: Vendor) -> u16 {
        self.ports
            .get(&v)
            .copied()
            .unwrap_or_else(|| default_port(v))
    }

    pub fn upstream(&self, v: Vendor) -> Result<Upstream, String> {
        match self.upstreams.get(&v) {
            Some(u) => Ok(u.clone()),
            None => Upstream::parse(v.default_upstream()),
        }
    }
}

fn socket(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn cluster(name: &str, up: &Upstream, ca_file: &str, timeout: &str) -> Value {
    let mut c = json!({
        "name": name,
        "type": if up.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(&up.host, up.port) } }] }],
        },
    });
    if up.tls {
        if let Some(o) = c.as_object_mut() {
            o.insert("transport_socket".into(), json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": up.host,
                    "common_tls_context": {
                        "validation_context": {
                            "trusted_ca": { "filename": ca_file },
                            "match_typed_subject_alt_names": [{
                                "san_type": "DNS",
                                "matcher": { "exact": up.host },
                            }],
                        },
                    },
                },
            }));
        }
    }
    c
}

/// Parses `--ledger`: one URL, or several replicas of one ledger separated by commas.
/// `none` is no ledger. Replicas share a scheme, and with TLS a host name (one SNI).
pub fn parse_ledgers(s: &str) -> Result<Option<(Upstream, Vec<Upstream>)>, String> {
    if s == "none" {
        return Ok(None);
    }
    let all = s
        .split(',')
        .map(|u| Upstream::parse(u.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((first, rest)) = all.split_first() else {
        return Err("no ledger URL".into());
    };
    if let Some(odd) = rest
        .iter()
        .find(|u| u.tls != first.tls || (u.tls && u.host != first.host))
    {
        return Err(format!(
            "ledger replicas must share a scheme (and, with https, a host name): {}:{} vs {}:{}",
            first.host, first.port, odd.host, odd.port
        ));
    }
    Ok(Some((first.clone(), rest.to_vec())))
}

/// The ledger cluster. With replicas, each is an endpoint: calls are balanced over them,
/// one that stops answering health checks (`/healthz` asks its database) or fails three
/// calls in a row is taken out of rotation, and a call routed to a dead one fails fast
/// (connection refused) and is denied, never hung.
fn ledger_cluster(
    primary: &Upstream,
    replicas: &[Upstream],
    ca_file: &str,
    protocol: LedgerProtocol,
) -> Result<Value, String> {
    let mut c = cluster(LEDGER_CLUSTER, primary, ca_file, "1s");
    if protocol == LedgerProtocol::Http2 {
        speak_http2(&mut c, primary.tls)?;
    }
    if replicas.is_empty() {
        return Ok(c);
    }
    let all: Vec<&Upstream> = std::iter::once(primary).chain(replicas).collect();
    let endpoints: Vec<Value> = all
        .iter()
        .map(|u| json!({ "endpoint": { "address": socket(&u.host, u.port) } }))
        .collect();
    let o = c
        .as_object_mut()
        .ok_or_else(|| "cluster is not an object".to_string())?;
    if all.iter().any(|u| !u.is_ip()) {
        o.insert("type".into(), json!("STRICT_DNS"));
    }
    o.insert(
        "load_assignment".into(),
        json!({ "cluster_name": LEDGER_CLUSTER, "endpoints": [{ "lb_endpoints": endpoints }] }),
    );
    o.insert("lb_policy".into(), json!("ROUND_ROBIN"));
    o.insert(
        "health_checks".into(),
        json!([{
            "timeout": "0.5s",
            "interval": "1s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "http_health_check": {
                "path": "/healthz",
                "codec_client_type": match protocol {
                    LedgerProtocol::Http1 => "HTTP1",
                    LedgerProtocol::Http2 => "HTTP2",
                },
            },
        }]),
    );
    o.insert(
        "outlier_detection".into(),
        json!({
            "consecutive_5xx": 3,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        }),
    );
    Ok(c)
}

/// Makes a cluster speak HTTP/2 only: with prior knowledge in clear (the ledger's server
/// detects the preface), and over TLS with `h2` offered by ALPN, so that a TLS front that
/// cannot carry HTTP/2 fails the handshake (and every reservation is denied) rather than
/// being sent frames it cannot read.
fn speak_http2(cluster: &mut Value, tls: bool) -> Result<(), String> {
    let o = cluster
        .as_object_mut()
        .ok_or_else(|| "cluster is not an object".to_string())?;
    o.insert(
        "typed_extension_protocol_options".into(),
        json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        }),
    );
    if tls {
        let context = o
            .get_mut("transport_socket")
            .and_then(|t| t.pointer_mut("/typed_config/common_tls_context"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| "a TLS cluster without a TLS context".to_string())?;
        context.insert("alpn_protocols".into(), json!(["h2"]));
    }
    Ok(())
}

/// The Bridle filter entry of an HTTP filter chain.
pub fn wasm_filter(
    vendor: Vendor,
    config: &FilterConfig,
    wasm: &str,
    env_keys: &[String],
) -> Result<Value, String> {
    let configuration = serde_json::to_value(config).map_err(|e| e.to_string())?;
    Ok(json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("bridle_{vendor}"),
                "root_id": "bridle",
                // A VM that cannot start or that traps must refuse traffic, never pass it.
                "failure_policy": "FAIL_CLOSED",
                // Costed requests hold their headers while the body is read and priced;
                // without this, Envoy would hold the body too and the price never come.
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.Struct",
                    "value": configuration,
                },
                "vm_config": {
                    "vm_id": "bridle",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm } },
                    "environment_variables": { "host_env_keys": env_keys },
                },
            },
        },
    }))
}

/// Envoy's own answers when the vendor cannot be reached (connection refused, a TLS or
/// certificate failure, a timeout, a reset before the answer), rewritten into the vendor's
/// error format with a Bridle reason, so that the SDK raises its own exception and does not
/// retry. Matched by Envoy's response flags, which the filter's own refusals never carry.
pub fn upstream_failure_replies(vendor: Vendor) -> Value {
    let mapper = |flags: &[&str], reason: Reason, message: &str| {
        let reply = vendor.error_response(reason, message, None);
        let headers: Vec<Value> = reply
            .headers
            .iter()
            .filter(|(name, _)| *name != "content-type")
            .map(|(name, value)| {
                json!({
                    "header": { "key": name, "value": value },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                })
            })
            .collect();
        json!({
            "filter": { "response_flag_filter": { "flags": flags } },
            "status_code": reply.status,
            "headers_to_add": headers,
            "body": { "inline_string": reply.body },
            "body_format_override": {
                "text_format_source": { "inline_string": "%LOCAL_REPLY_BODY%" },
                "content_type": "application/json",
            },
        })
    };
    json!({
        "mappers": [
            // No connection, no healthy host, or the circuit breaker: nothing was sent.
            mapper(
                &["UF", "UH", "UO"],
                Reason::UpstreamUnavailable,
                &format!("could not reach {vendor} securely (no connection, or its TLS certificate was refused); the request was not sent."),
            ),
            // A timeout or a reset after the request went out: it may have been acted on.
            mapper(
                &["UT", "UC", "UR", "URX"],
                Reason::UpstreamFailed,
                &format!("the connection to {vendor} failed before it answered; the request may have reached it, so check before repeating it."),
            ),
        ],
    })
}

/// How long a vendor call may take, whether or not its answer streams.
const VENDOR_CALL_TIMEOUT: &str = "600s";

fn listener(vendor: Vendor, opts: &EnvoyOptions, filter: Value, upstream: &Upstream) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": format!("bridle_{vendor}"),
        "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" },
        // Every agent is an outside client: Envoy trusts the connection's address, never a
        // client's x-forwarded-for, and counts no address as internal, so that it strips the
        // x-envoy-* control headers (retries, timeouts) from every request, as the filter
        // does again. The agent's address is not passed on to the vendor.
        "use_remote_address": true,
        "skip_xff_append": true,
        "internal_address_config": {},
        "local_reply_config": upstream_failure_replies(vendor),
        "route_config": {
            "name": format!("bridle_{vendor}"),
            "virtual_hosts": [{
                "name": vendor.name(),
                "domains": ["*"],
                "routes": [{
                    "match": { "prefix": "/" },
                    "route": {
                        "cluster": format!("vendor_{vendor}"),
                        "host_rewrite_literal": upstream.authority(),
                        // Model calls can stream for minutes.
                        "timeout": VENDOR_CALL_TIMEOUT,
                        // A model call that does not stream sends nothing until it is done:
                        // Envoy's stream idle timeout (5 min unless set) would cut it off
                        // before `timeout`, after the vendor had spent the tokens.
                        "idle_timeout": VENDOR_CALL_TIMEOUT,
                        // Never a second attempt: a retry would reach the vendor again under
                        // the one reservation the ledger made for the call.
                        "retry_policy": { "num_retries": 0 },
                    },
                }],
            }],
        },
        "http_filters": [
            filter,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": true,
                },
            },
        ],
    });
    if opts.envoy_path_hardening {
        if let Some(o) = hcm.as_object_mut() {
            o.insert("normalize_path".into(), json!(true));
            o.insert("merge_slashes".into(), json!(true));
            o.insert(
                "path_with_escaped_slashes_action".into(),
                json!("REJECT_REQUEST"),
            );
        }
    }
    json!({
        "name": format!("bridle_{vendor}"),
        "address": socket(&opts.listen, opts.port(vendor)),
        "filter_chains": [{
            "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }],
        }],
    })
}

/// Envoy's tag extraction for the filter's decision counters: in Prometheus,
/// `wasmcustom.bridle.<vendor>.<policy>.<reason>` becomes
/// `bridle{vendor="...",policy="...",reason="..."}`, so dashboards and alerts select and
/// sum by label. `/stats` keeps the full names.
pub fn stats_tags() -> Value {
    let vendors = Vendor::ALL.map(|v| v.name()).join("|");
    let prefix = r"^wasmcustom\.bridle\.";
    json!([
        { "tag_name": "vendor", "regex": format!(r"{prefix}(({vendors})\.)") },
        { "tag_name": "policy", "regex": format!(r"{prefix}(?:{vendors})\.(([a-z0-9_-]+)\.)[a-z_]+$") },
        { "tag_name": "reason", "regex": format!(r"{prefix}(?:{vendors})\.[a-z0-9_-]+(\.([a-z_]+))$") },
    ])
}

/// A complete Envoy bootstrap: one listener per vendor with policies, its vendor cluster,
/// and the ledger cluster.
pub fn envoy_bootstrap(policies: &[CompiledPolicy], opts: &EnvoyOptions) -> Result<Value, String> {
    let link = opts.ledger.as_ref().map(ledger_link);
    let keys = env_keys(policies, link.as_ref());
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for vendor in vendors(policies) {
        let upstream = opts.upstream(vendor)?;
        let config = filter_config(vendor, policies, link.as_ref(), &opts.prices);
        let filter = wasm_filter(vendor, &config, &opts.wasm, &keys)?;
        listeners.push(listener(vendor, opts, filter, &upstream));
        clusters.push(cluster(
            &format!("vendor_{vendor}"),
            &upstream,
            &opts.ca_file,
            "5s",
        ));
    }
    if listeners.is_empty() {
        return Err("no policies to render".into());
    }
    if let Some(ledger) = &opts.ledger {
        clusters.push(ledger_cluster(
            ledger,
            &opts.ledger_replicas,
            &opts.ca_file,
            opts.ledger_protocol,
        )?);
    }
    Ok(json!({
        "admin": { "address": socket(&opts.listen, opts.admin_port) },
        "stats_config": { "stats_tags": stats_tags() },
        "static_resources": { "listeners": listeners, "clusters": clusters },
    }))
}

/// Istio: one WasmPlugin per vendor, selecting the egress gateway, with the same
/// configuration the Envoy bootstrap carries.
pub fn istio(
    policies: &[CompiledPolicy],
    prices: &Prices,
    image: &str,
    namespace: &str,
    ledger: &Upstream,
) -> Result<Vec<Value>, String> {
    let link = ledger_link(ledger);
    let mut docs = Vec::new();
    for vendor in vendors(policies) {
        let config = filter_config(vendor, policies, Some(&link), prices);
        docs.push(json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": { "name": format!("bridle-{vendor}"), "namespace": namespace },
            "spec": {
                "selector": { "matchLabels": { "istio": "egressgateway" } },
                "url": image,
                "phase": "AUTHN",
                "failStrategy": "FAIL_CLOSE",
                // istiod classes every gateway listener as CLIENT; SERVER would match none.
                "match": [{ "mode": "CLIENT", "ports": [{ "number": u32::from(default_port(vendor)) }] }],
                "pluginConfig": serde_json::to_value(&config).map_err(|e| e.to_string())?,
                "vmConfig": {
                    "env": env_keys(policies, Some(&link))
                        .into_iter()
                        .map(|k| json!({ "name": k, "valueFrom": "HOST" }))
                        .collect::<Vec<_>>(),
                },
            },
        }));
    }
    Ok(docs)
}

pub const GENERATED_HEADER: &str =
    "# Generated by `bridle render`. Edit the policies and render again; do not edit by hand.\n";

pub fn to_yaml(docs: &[Value]) -> Result<String, String> {
    let mut out = String::from(GENERATED_HEADER);
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vendor_call_that_does_not_stream_is_not_cut_off_before_its_timeout() {
        let upstream = Upstream::parse("https://api.openai.com").unwrap();
        let l = listener(
            Vendor::Openai,
            &EnvoyOptions::default(),
            json!({}),
            &upstream,
        );
        let route = &l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(route["timeout"], "600s");
        assert_eq!(route["idle_timeout"], route["timeout"], "{route}");
    }

    #[test]
    fn upstreams_parse_strictly() {
        assert_eq!(
            Upstream::parse("https://api.stripe.com").unwrap(),
            Upstream {
                tls: true,
                host: "api.stripe.com".into(),
                port: 443
            }
        );
        assert_eq!(
            Upstream::parse("http://127.0.0.1:12111")
                .unwrap()
                .authority(),
            "127.0.0.1:12111"
        );
        assert!(Upstream::parse("https://api.stripe.com/v1").is_err());
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("api.stripe.com").is_err());
    }

    #[test]
    fn the_ledger_is_spoken_to_in_http1_unless_told_otherwise() {
        let clear = Upstream::parse("http://127.0.0.1:8181").unwrap();
        let c = ledger_cluster(&clear, &[], DEFAULT_CA_FILE, LedgerProtocol::default()).unwrap();
        assert!(c.get("typed_extension_protocol_options").is_none());
        let c = ledger_cluster(&clear, &[], DEFAULT_CA_FILE, LedgerProtocol::Http2).unwrap();
        let options = &c["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(options["explicit_http_config"]["http2_protocol_options"].is_object());
        let tls = Upstream::parse("https://ledger.internal:8443").unwrap();
        let c = ledger_cluster(&tls, &[], DEFAULT_CA_FILE, LedgerProtocol::Http2).unwrap();
        assert_eq!(
            c["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"],
            json!(["h2"])
        );
        let (first, rest) = parse_ledgers("http://127.0.0.1:1,http://127.0.0.1:2")
            .unwrap()
            .unwrap();
        let c = ledger_cluster(&first, &rest, DEFAULT_CA_FILE, LedgerProtocol::Http2).unwrap();
        assert_eq!(
            c["health_checks"][0]["http_health_check"]["codec_client_type"],
            "HTTP2"
        );
        assert_eq!("http1".parse(), Ok(LedgerProtocol::Http1));
        assert!("h2".parse::<LedgerProtocol>().is_err());
    }

    #[test]
    fn several_ledger_replicas_are_one_balanced_health_checked_cluster() {
        let (first, rest) =
            parse_ledgers("http://127.0.0.1:1,http://127.0.0.1:2, http://ledger-c:3")
                .unwrap()
                .unwrap();
        assert_eq!(rest.len(), 2);
        let c = ledger_cluster(&first, &rest, DEFAULT_CA_FILE, LedgerProtocol::Http1).unwrap();
        let ports: Vec<u64> = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["endpoint"]["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ports, [1, 2, 3]);
        assert_eq!(c["type"], "STRICT_DNS", "a host name among them");
        assert_eq!(
            c["health_checks"][0]["http_health_check"]["path"],
            "/healthz"
        );
        assert!(c["outlier_detection"].is_object());
        // One endpoint renders as before.
        assert_eq!(
            ledger_cluster(&first, &[], DEFAULT_CA_FILE, LedgerProtocol::Http1).unwrap(),
            cluster(LEDGER_CLUSTER, &first, DEFAULT_CA_FILE, "1s")
        );
        assert_eq!(parse_ledgers("none").unwrap(), None);
        assert!(parse_ledgers("http://a:1,https://a:2").is_err());
        assert!(parse_ledgers("https://a:1,https://b:2").is_err());
    }
}
