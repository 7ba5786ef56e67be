//! `bridle`: the command line for people and pipelines.
// The ledger's answers are read through serde_json's `Index`, which is total (a missing key
// reads as null) and cannot panic; the lint cannot tell it from slice indexing.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bridle_cli::ledger_client::LedgerClient;
use bridle_cli::render::{self, EnvoyOptions, Prices, Upstream};
use bridle_core::issue::{claims_for, IssueRequest};
use bridle_core::llm::PriceList;
use bridle_core::money::Usd;
use bridle_core::policy::{CapsNarrowing, CompiledPolicy};
use bridle_core::token::{PublicKeys, SigningKey};
use bridle_core::vendor::Vendor;
use bridle_core::{policy_files, price_files};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

/// `println!` for the command's output, which returns early with an error instead of
/// panicking when stdout cannot be written; see [`write_out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!`, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))?
    };
}

#[derive(Parser)]
#[command(
    name = "bridle",
    version,
    about = "Scoped, expiring, spend-capped vendor credentials for AI agents."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check policy files; every problem is reported with its file and field.
    Lint {
        /// Policy files or folders.
        #[arg(default_value = "policies")]
        paths: Vec<PathBuf>,
        /// The folder of price tables (`<vendor>.yaml`); default: `prices/` beside the first
        /// policy path.
        #[arg(long)]
        prices: Option<PathBuf>,
    },
    /// Render policies into deployable configuration.
    #[command(subcommand)]
    Render(Render),
    /// Mint a vault token offline with the signing key (development and tests; in
    /// production the ledger issues tokens).
    Mint(MintArgs),
    /// Issue a vault token from the ledger; prints the token.
    Issue(IssueArgs),
    /// Revoke one token, every token whose label starts with a prefix, or a whole policy.
    Revoke(RevokeArgs),
    /// List tokens with their spend and cap utilization.
    Tokens(TokensArgs),
    /// Read the audit log.
    Audit(AuditArgs),
    /// What a token of each policy (or one token) could do if stolen: endpoints, merchants,
    /// caps, TTL, the most it can spend and call, how fast a revocation reaches the proxies.
    /// With --diff, what a policy change widens.
    BlastRadius(bridle_cli::blast_radius::command::BlastRadiusArgs),
    /// Generate a token signing key (Ed25519), `kid:base64url`: for the ledger's
    /// BRIDLE_SIGNING_KEY only. Give the proxies its public key (`bridle pubkey`).
    Keygen {
        #[arg(long, default_value = "k1")]
        kid: String,
    },
    /// Print the public key of the signing key read from standard input, `kid:base64url`:
    /// an entry of BRIDLE_PUBLIC_KEYS, which proxies verify tokens with.
    Pubkey,
}

#[derive(Args)]
struct PolicyArgs {
    /// Policy files or folders.
    #[arg(long = "policies", default_value = "policies")]
    paths: Vec<PathBuf>,
    /// The folder of price tables (`<vendor>.yaml`) for calls priced by tokens; default:
    /// `prices/` beside the first policy path.
    #[arg(long)]
    prices: Option<PathBuf>,
}

impl PolicyArgs {
    /// The policies and the price tables, checked together.
    fn load(&self) -> Result<(Vec<CompiledPolicy>, Prices), Errors> {
        load_checked(&self.paths, self.prices.as_deref())
    }
}

#[derive(Subcommand)]
enum Render {
    /// The filter's JSON configuration for one vendor (Envoy plugin or Istio pluginConfig).
    Filter {
        #[command(flatten)]
        policies: PolicyArgs,
        #[arg(long)]
        vendor: String,
        /// The ledger's URL, or `none` to run the filter standalone (development only).
        #[arg(long, default_value = "http://127.0.0.1:8181")]
        ledger: String,
    },
    /// A complete Envoy bootstrap: a listener per vendor, its upstream, the ledger.
    Envoy(EnvoyArgs),
    /// Istio WasmPlugin resources, one per vendor.
    Istio {
        #[command(flatten)]
        policies: PolicyArgs,
        /// Where Istio pulls the filter from, e.g. oci://registry/bridle-filter:0.1.0.
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "istio-system")]
        namespace: String,
        #[arg(
            long,
            default_value = "http://bridle-ledger.bridle.svc.cluster.local:8181"
        )]
        ledger: String,
    },
}

#[derive(Args)]
struct EnvoyArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    #[arg(long, default_value = render::DEFAULT_WASM)]
    wasm: String,
    /// The address listeners and the admin interface bind to.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// A vendor's listener port, `vendor=port` (defaults: stripe 10001, twilio 10002,
    /// resend 10003, openai 10004, anthropic 10005). Repeatable.
    #[arg(long = "port", value_name = "VENDOR=PORT")]
    ports: Vec<String>,
    /// A vendor's upstream, `vendor=URL`, e.g. stripe=http://127.0.0.1:12111. Repeatable.
    /// Defaults to BRIDLE_UPSTREAM_<VENDOR> from the environment, then the live API.
    #[arg(long = "upstream", value_name = "VENDOR=URL")]
    upstreams: Vec<String>,
    /// The ledger's URL, or several replicas of one ledger separated by commas (balanced,
    /// health-checked), or `none` to run the filter standalone (development only).
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    ledger: String,
    /// How Envoy speaks to the ledger: `http1` (a pool of connections, the faster in
    /// BENCHMARKS.md) or `http2` (one multiplexed connection per worker; the ledger serves it
    /// in clear, h2c).
    #[arg(long, default_value = "http1")]
    ledger_protocol: render::LedgerProtocol,
    #[arg(long, default_value = render::DEFAULT_CA_FILE)]
    ca_file: String,
    /// Leave out Envoy's path normalization (the filter's own checks still apply). For
    /// tests that prove the filter holds without it.
    #[arg(long)]
    no_envoy_path_hardening: bool,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// What a token is for: its policy, holder, life and narrowing.
#[derive(Args)]
struct Grant {
    #[arg(long)]
    policy: String,
    /// Who holds it: an agent run id, or tenant/agent/run.
    #[arg(long)]
    label: String,
    /// How long it lives, e.g. 15m; at most the policy's max_ttl.
    #[arg(long, default_value = "15m")]
    ttl: String,
    /// Narrow to an endpoint, "METHOD /path/glob". Repeatable.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Narrow to a merchant or account. Repeatable.
    #[arg(long = "merchant")]
    merchants: Vec<String>,
    /// Lower a cap, e.g. per_transaction=5.00. Repeatable.
    #[arg(long = "cap", value_name = "NAME=USD")]
    caps: Vec<String>,
}

#[derive(Args)]
struct MintArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    #[command(flatten)]
    grant: Grant,
    /// The token signing key, `kid:base64url` (`bridle keygen`).
    #[arg(long, env = "BRIDLE_SIGNING_KEY", hide_env_values = true)]
    signing_key: String,
}

/// Where the ledger is and the admin credential.
#[derive(Args)]
struct LedgerArgs {
    #[arg(
        long = "ledger",
        env = "BRIDLE_LEDGER_URL",
        default_value = "http://127.0.0.1:8181"
    )]
    url: String,
    #[arg(long, env = "BRIDLE_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
}

impl LedgerArgs {
    fn client(&self) -> LedgerClient {
        LedgerClient::new(&self.url, &self.admin_key)
    }
}

#[derive(Args)]
struct IssueArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    #[command(flatten)]
    grant: Grant,
    /// Print the ledger's whole answer as JSON instead of just the token.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RevokeTarget {
    /// One token, by id.
    #[arg(long = "token")]
    token_id: Option<String>,
    /// Every token whose label starts with this: one tenant, one agent, one run.
    #[arg(long)]
    label_prefix: Option<String>,
    /// Every token of a policy.
    #[arg(long)]
    policy: Option<String>,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    #[command(flatten)]
    target: RevokeTarget,
}

#[derive(Args)]
struct TokensArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    #[arg(long)]
    policy: Option<String>,
    #[arg(long)]
    label_prefix: Option<String>,
    /// active, revoked or expired
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    #[arg(long = "token")]
    token_id: Option<String>,
    #[arg(long)]
    label_prefix: Option<String>,
    #[arg(long)]
    policy: Option<String>,
    /// From when: a duration ago (1h), a unix time, or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Until when (exclusive), in the same forms.
    #[arg(long)]
    until: Option<String>,
    /// Most records to print (pages are followed).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(lines) => {
            for line in lines {
                eprintln!("bridle: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

type Errors = Vec<String>;

/// Writes the command's output: see `bridle_cli::stdout` (a closed pipe ends the command
/// quietly).
fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), Errors> {
    bridle_cli::stdout::write(args).map_err(one)
}

fn one(e: impl ToString) -> Errors {
    vec![e.to_string()]
}

fn load(paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Errors> {
    policy_files::load(paths).map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
}

/// The price tables' folder: `prices`, or `prices/` beside the first policy path.
fn prices_dir(paths: &[PathBuf], prices: Option<&std::path::Path>) -> PathBuf {
    match prices {
        Some(p) => p.to_path_buf(),
        None => price_files::beside(
            paths
                .first()
                .map_or(std::path::Path::new("policies"), |p| p),
        ),
    }
}

/// Policies and price tables, and every model a policy allows by name priced.
fn load_checked(
    paths: &[PathBuf],
    prices: Option<&std::path::Path>,
) -> Result<(Vec<CompiledPolicy>, Prices), Errors> {
    let dir = prices_dir(paths, prices);
    let (policies, tables) = match (load(paths), price_files::load(&dir)) {
        (Ok(p), Ok(t)) => (p, t),
        (p, t) => {
            let mut errors = p.err().unwrap_or_default();
            errors.extend(
                t.err()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.to_string()),
            );
            return Err(errors);
        }
    };
    let mut errors = Vec::new();
    for p in &policies {
        let Some(models) = &p.models else { continue };
        let shipped = PriceList::new(tables.get(&p.policy.vendor).map_or(&[][..], Vec::as_slice));
        for name in models.unpriced(&shipped) {
            errors.push(format!(
                "policy {:?}: models.allow: model {name:?} has no price in {} or the policy's models.prices",
                p.policy.name,
                dir.join(format!("{}.yaml", p.policy.vendor)).display()
            ));
        }
    }
    if errors.is_empty() {
        Ok((policies, tables))
    } else {
        Err(errors)
    }
}

fn vendor(name: &str) -> Result<Vendor, Errors> {
    Vendor::from_name(name).ok_or_else(|| {
        one(format!(
            "unknown vendor {name:?}; one of {}",
            Vendor::ALL.map(|v| v.name()).join(", ")
        ))
    })
}

fn ledger_url(s: &str) -> Result<Option<Upstream>, Errors> {
    if s == "none" {
        return Ok(None);
    }
    Upstream::parse(s)
        .map(Some)
        .map_err(|e| one(format!("--ledger: {e}")))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex(bytes: usize) -> Result<String, Errors> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| one(format!("no randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn run(cli: Cli) -> Result<(), Errors> {
    match cli.command {
        Command::Lint { paths, prices } => {
            let (policies, tables) = load_checked(&paths, prices.as_deref())?;
            for p in &policies {
                outln!(
                    "ok  {} ({}, {} endpoints)",
                    p.policy.name,
                    p.policy.vendor,
                    p.endpoints.len()
                );
            }
            for (v, entries) in &tables {
                outln!("ok  prices for {v} ({} models)", entries.len());
            }
            Ok(())
        }
        Command::Render(Render::Filter {
            policies,
            vendor: v,
            ledger,
        }) => {
            let (policies, tables) = policies.load()?;
            let v = vendor(&v)?;
            let link = ledger_url(&ledger)?.map(|u| render::ledger_link(&u));
            let config = render::filter_config(v, &policies, link.as_ref(), &tables);
            if config.policies.is_empty() {
                return Err(one(format!("no policies for {v}")));
            }
            outln!("{}", serde_json::to_string_pretty(&config).map_err(one)?);
            Ok(())
        }
        Command::Render(Render::Envoy(args)) => render_envoy(args),
        Command::Render(Render::Istio {
            policies,
            image,
            namespace,
            ledger,
        }) => {
            let (policies, tables) = policies.load()?;
            let ledger =
                ledger_url(&ledger)?.ok_or_else(|| one("Istio deployments need a ledger"))?;
            let docs =
                render::istio(&policies, &tables, &image, &namespace, &ledger).map_err(one)?;
            out!("{}", render::to_yaml(&docs).map_err(one)?);
            Ok(())
        }
        Command::Mint(args) => mint(args),
        Command::Issue(args) => issue(args),
        Command::Revoke(args) => revoke(args),
        Command::Tokens(args) => tokens(args),
        Command::Audit(args) => audit(args),
        Command::BlastRadius(args) => {
            use bridle_cli::blast_radius::command;
            if command::run(args)? {
                // Something widens and --exit-code asked to say so: a pipeline gate.
                std::process::exit(command::WIDENS_EXIT.into());
            }
            Ok(())
        }
        Command::Keygen { kid } => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| one(format!("no randomness: {e}")))?;
            let key = SigningKey::from_seed(&kid, &seed).map_err(|e| one(format!("--kid: {e}")))?;
            outln!("{}", key.encode());
            Ok(())
        }
        Command::Pubkey => {
            let mut spec = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut spec)
                .map_err(|e| one(format!("standard input: {e}")))?;
            let key = SigningKey::parse(spec.trim())
                .map_err(|e| one(format!("the signing key on standard input: {e}")))?;
            let entry = key.public_entry();
            PublicKeys::parse(&entry).map_err(one)?;
            outln!("{entry}");
            Ok(())
        }
    }
}

fn parse_pairs(flag: &str, values: &[String]) -> Result<Vec<(String, String)>, Errors> {
    values
        .iter()
        .map(|v| {
            v.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| one(format!("--{flag} {v:?}: expected NAME=VALUE")))
        })
        .collect()
}

fn render_envoy(args: EnvoyArgs) -> Result<(), Errors> {
    let (policies, prices) = args.policies.load()?;
    let mut ports = BTreeMap::new();
    for (v, p) in parse_pairs("port", &args.ports)? {
        ports.insert(
            vendor(&v)?,
            p.parse::<u16>()
                .map_err(|_| one(format!("--port {v}={p}: not a port")))?,
        );
    }
    let mut upstreams = BTreeMap::new();
    for v in Vendor::ALL {
        let var = format!("BRIDLE_UPSTREAM_{}", v.name().to_uppercase());
        if let Ok(url) = std::env::var(&var) {
            if !url.is_empty() {
                upstreams.insert(
                    v,
                    Upstream::parse(&url).map_err(|e| one(format!("{var}: {e}")))?,
                );
            }
        }
    }
    for (v, url) in parse_pairs("upstream", &args.upstreams)? {
        upstreams.insert(
            vendor(&v)?,
            Upstream::parse(&url).map_err(|e| one(format!("--upstream {v}: {e}")))?,
        );
    }
    let ledgers = render::parse_ledgers(&args.ledger).map_err(|e| one(format!("--ledger: {e}")))?;
    let opts = EnvoyOptions {
        wasm: args.wasm,
        listen: args.listen,
        admin_port: args.admin_port,
        ports,
        upstreams,
        ledger: ledgers.as_ref().map(|(first, _)| first.clone()),
        ledger_replicas: ledgers.map(|(_, rest)| rest).unwrap_or_default(),
        ca_file: args.ca_file,
        envoy_path_hardening: !args.no_envoy_path_hardening,
        prices,
        ledger_protocol: args.ledger_protocol,
    };
    let bootstrap = render::envoy_bootstrap(&policies, &opts).map_err(one)?;
    let yaml = render::to_yaml(&[bootstrap]).map_err(one)?;
    match args.output {
        Some(path) => {
            std::fs::write(&path, yaml).map_err(|e| one(format!("{}: {e}", path.display())))
        }
        None => {
            out!("{yaml}");
            Ok(())
        }
    }
}

fn issue_request(grant: Grant) -> Result<IssueRequest, Errors> {
    let mut caps = CapsNarrowing::default();
    for (name, usd) in parse_pairs("cap", &grant.caps)? {
        let value = Some(Usd::parse(&usd).map_err(|e| one(format!("--cap {name}: {e}")))?);
        match name.as_str() {
            "per_transaction" => caps.per_transaction = value,
            "per_window" => caps.per_window = value,
            "lifetime" => caps.lifetime = value,
            other => {
                return Err(one(format!(
                    "--cap {other}: one of per_transaction, per_window, lifetime"
                )))
            }
        }
    }
    Ok(IssueRequest {
        policy: grant.policy,
        label: grant.label,
        expires_in: bridle_core::duration::parse(&grant.ttl).map_err(one)?,
        endpoints: (!grant.endpoints.is_empty()).then_some(grant.endpoints),
        merchants: (!grant.merchants.is_empty()).then_some(grant.merchants),
        caps,
    })
}

fn mint(args: MintArgs) -> Result<(), Errors> {
    let policies = load(&args.policies.paths)?;
    let request = issue_request(args.grant)?;
    let policy = policies
        .iter()
        .find(|p| p.policy.name == request.policy)
        .ok_or_else(|| {
            one(format!(
                "no policy named {:?} under {:?}",
                request.policy, args.policies.paths
            ))
        })?;
    let key = SigningKey::parse(&args.signing_key)
        .map_err(|e| one(format!("BRIDLE_SIGNING_KEY: {e}")))?;
    let id = format!("tok_{}", random_hex(12)?);
    let claims = claims_for(policy, &request, id, now())
        .map_err(|es| es.into_iter().map(|e| e.to_string()).collect::<Errors>())?;
    outln!("{}", key.mint(&claims).map_err(one)?);
    Ok(())
}

fn issue(args: IssueArgs) -> Result<(), Errors> {
    let request = issue_request(args.grant)?;
    let body = serde_json::to_value(&request).map_err(one)?;
    let answer = args
        .ledger
        .client()
        .post("/v1/tokens", &body)
        .map_err(one)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer).map_err(one)?);
    } else {
        outln!(
            "{}",
            answer["token"]
                .as_str()
                .ok_or_else(|| one("the ledger's answer has no token"))?
        );
        eprintln!(
            "issued {} for {} ({}), expires at {}",
            answer["id"].as_str().unwrap_or("?"),
            answer["label"].as_str().unwrap_or("?"),
            answer["policy"].as_str().unwrap_or("?"),
            answer["expires_at"]
        );
    }
    Ok(())
}

fn revoke(args: RevokeArgs) -> Result<(), Errors> {
    let t = args.target;
    let body =
        json!({ "token_id": t.token_id, "label_prefix": t.label_prefix, "policy": t.policy });
    let body: Value = body
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let answer = args
        .ledger
        .client()
        .post("/v1/revocations", &body)
        .map_err(one)?;
    outln!(
        "revoked {} {}: covers {} issued token(s), and any minted offline (revocation #{})",
        answer["revocation"]["kind"].as_str().unwrap_or("?"),
        answer["revocation"]["value"].as_str().unwrap_or("?"),
        answer["tokens_revoked"],
        answer["revocation"]["seq"]
    );
    Ok(())
}

fn tokens(args: TokensArgs) -> Result<(), Errors> {
    let mut query = vec![("limit", args.limit.to_string())];
    for (k, v) in [
        ("policy", args.policy),
        ("label_prefix", args.label_prefix),
        ("status", args.status),
    ] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let answer = args
        .ledger
        .client()
        .get("/v1/tokens", &query)
        .map_err(one)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer).map_err(one)?);
        return Ok(());
    }
    outln!(
        "{:<29} {:<22} {:<28} {:<8} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>10} {:>16}",
        "TOKEN",
        "POLICY",
        "LABEL",
        "STATUS",
        "WINDOW $",
        "LIFETIME $",
        "USE",
        "IN TOK",
        "CACHED TOK",
        "WRITE TOK",
        "OUT TOK",
        "BREAKER $"
    );
    for t in answer["tokens"].as_array().cloned().unwrap_or_default() {
        let util = t["spend"]["utilization"]["per_window"]
            .as_f64()
            .map_or("-".to_string(), |u| format!("{:.0}%", u * 100.0));
        let n = |k: &str| t["tokens"][k].as_u64().unwrap_or(0);
        let b = &t["breaker"];
        let breaker = if b.is_null() {
            "-".to_string()
        } else {
            format!(
                "{}/{}{}",
                b["spent"].as_str().unwrap_or("?"),
                b["cap"].as_str().unwrap_or("?"),
                if b["tripped"] == true { " TRIP" } else { "" }
            )
        };
        outln!(
            "{:<29} {:<22} {:<28} {:<8} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>10} {:>16}",
            t["id"].as_str().unwrap_or("?"),
            t["policy"].as_str().unwrap_or("?"),
            t["label"].as_str().unwrap_or("?"),
            t["status"].as_str().unwrap_or("?"),
            t["spend"]["window"].as_str().unwrap_or("?"),
            t["spend"]["lifetime"].as_str().unwrap_or("?"),
            util,
            n("input"),
            n("cached_input"),
            n("cache_write_5m") + n("cache_write_1h"),
            n("output"),
            breaker
        );
    }
    Ok(())
}

/// A point in time for audit queries, in unix milliseconds.
fn when(s: &str) -> Result<u64, Errors> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Ok(n) = s.parse::<u64>() {
        // Seconds or milliseconds, by magnitude.
        return Ok(if n < 100_000_000_000 { n * 1000 } else { n });
    }
    if let Ok(ago) = bridle_core::duration::parse(s) {
        return Ok(now_ms.saturating_sub(ago.as_millis() as u64));
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
        .map_err(|_| {
            one(format!(
                "{s:?} is not a time: use 1h (ago), a unix time, or 2026-11-21T10:00:00Z"
            ))
        })
}

fn audit(args: AuditArgs) -> Result<(), Errors> {
    let client = args.ledger.client();
    let mut base = Vec::new();
    for (k, v) in [
        ("token_id", args.token_id),
        ("label_prefix", args.label_prefix),
        ("policy", args.policy),
    ] {
        if let Some(v) = v {
            base.push((k, v));
        }
    }
    if let Some(s) = &args.since {
        base.push(("since_ms", when(s)?.to_string()));
    }
    if let Some(u) = &args.until {
        base.push(("until_ms", when(u)?.to_string()));
    }
    let mut records: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    while records.len() < args.limit {
        let mut query = base.clone();
        query.push(("limit", (args.limit - records.len()).min(1000).to_string()));
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let page = client.get("/v1/audit", &query).map_err(one)?;
        records.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(records)).map_err(one)?
        );
        return Ok(());
    }
    outln!(
        "{:<24} {:>4} {:<22} {:<40} {:<29} {:>9}",
        "TIME",
        "CODE",
        "REASON",
        "REQUEST",
        "TOKEN",
        "COST $"
    );
    for r in records {
        let at = r["at_ms"].as_u64().unwrap_or(0);
        let time =
            humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(at));
        outln!(
            "{:<24} {:>4} {:<22} {:<40} {:<29} {:>9}",
            time.to_string(),
            r["status"],
            r["reason"].as_str().unwrap_or("?"),
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?")
            ),
            r["token_id"].as_str().unwrap_or("-"),
            r["cost"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}
