//! `bridle`: the command line for people and pipelines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bridle_cli::render::{self, EnvoyOptions, Upstream};
use bridle_core::issue::{claims_for, IssueRequest};
use bridle_core::money::Usd;
use bridle_core::policy::{CapsNarrowing, CompiledPolicy};
use bridle_core::policy_files;
use bridle_core::token::Keyring;
use bridle_core::vendor::Vendor;
use clap::{Args, Parser, Subcommand};

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
    },
    /// Render policies into deployable configuration.
    #[command(subcommand)]
    Render(Render),
    /// Mint a vault token offline from the signing keyring (development and tests; in
    /// production the ledger issues tokens).
    Mint(MintArgs),
    /// Generate a signing key as a keyring entry, `kid:base64url`.
    Keygen {
        #[arg(long, default_value = "k1")]
        kid: String,
    },
}

#[derive(Args)]
struct PolicyArgs {
    /// Policy files or folders.
    #[arg(long = "policies", default_value = "policies")]
    paths: Vec<PathBuf>,
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
    /// The ledger's URL, or `none` to run the filter standalone (development only).
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    ledger: String,
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

#[derive(Args)]
struct MintArgs {
    #[command(flatten)]
    policies: PolicyArgs,
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
    #[arg(long, env = "BRIDLE_KEYRING", hide_env_values = true)]
    keyring: String,
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

fn one(e: impl ToString) -> Errors {
    vec![e.to_string()]
}

fn load(paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Errors> {
    policy_files::load(paths).map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
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
        Command::Lint { paths } => {
            let policies = load(&paths)?;
            for p in &policies {
                println!(
                    "ok  {} ({}, {} endpoints)",
                    p.policy.name,
                    p.policy.vendor,
                    p.endpoints.len()
                );
            }
            Ok(())
        }
        Command::Render(Render::Filter {
            policies,
            vendor: v,
            ledger,
        }) => {
            let policies = load(&policies.paths)?;
            let v = vendor(&v)?;
            let link = ledger_url(&ledger)?.map(|u| render::ledger_link(&u));
            let config = render::filter_config(v, &policies, link.as_ref());
            if config.policies.is_empty() {
                return Err(one(format!("no policies for {v}")));
            }
            println!("{}", serde_json::to_string_pretty(&config).map_err(one)?);
            Ok(())
        }
        Command::Render(Render::Envoy(args)) => render_envoy(args),
        Command::Render(Render::Istio {
            policies,
            image,
            namespace,
            ledger,
        }) => {
            let policies = load(&policies.paths)?;
            let ledger =
                ledger_url(&ledger)?.ok_or_else(|| one("Istio deployments need a ledger"))?;
            let docs = render::istio(&policies, &image, &namespace, &ledger).map_err(one)?;
            print!("{}", render::to_yaml(&docs).map_err(one)?);
            Ok(())
        }
        Command::Mint(args) => mint(args),
        Command::Keygen { kid } => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| one(format!("no randomness: {e}")))?;
            let entry = Keyring::encode_entry(&kid, &key);
            Keyring::parse(&entry).map_err(one)?;
            println!("{entry}");
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
    let policies = load(&args.policies.paths)?;
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
    let opts = EnvoyOptions {
        wasm: args.wasm,
        listen: args.listen,
        admin_port: args.admin_port,
        ports,
        upstreams,
        ledger: ledger_url(&args.ledger)?,
        ca_file: args.ca_file,
        envoy_path_hardening: !args.no_envoy_path_hardening,
    };
    let bootstrap = render::envoy_bootstrap(&policies, &opts).map_err(one)?;
    let yaml = render::to_yaml(&[bootstrap]).map_err(one)?;
    match args.output {
        Some(path) => {
            std::fs::write(&path, yaml).map_err(|e| one(format!("{}: {e}", path.display())))
        }
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

fn mint(args: MintArgs) -> Result<(), Errors> {
    let policies = load(&args.policies.paths)?;
    let policy = policies
        .iter()
        .find(|p| p.policy.name == args.policy)
        .ok_or_else(|| {
            one(format!(
                "no policy named {:?} under {:?}",
                args.policy, args.policies.paths
            ))
        })?;
    let keyring = Keyring::parse(&args.keyring).map_err(|e| one(format!("BRIDLE_KEYRING: {e}")))?;
    let mut caps = CapsNarrowing::default();
    for (name, usd) in parse_pairs("cap", &args.caps)? {
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
    let request = IssueRequest {
        policy: args.policy,
        label: args.label,
        expires_in: bridle_core::duration::parse(&args.ttl).map_err(one)?,
        endpoints: (!args.endpoints.is_empty()).then_some(args.endpoints),
        merchants: (!args.merchants.is_empty()).then_some(args.merchants),
        caps,
    };
    let id = format!("tok_{}", random_hex(12)?);
    let claims = claims_for(policy, &request, id, now())
        .map_err(|es| es.into_iter().map(|e| e.to_string()).collect::<Errors>())?;
    println!("{}", keyring.mint(&claims).map_err(one)?);
    Ok(())
}
