//! `fleetctl`: the operator CLI. Every command drives the hub's HTTP API (`/api/v1`) with the
//! request and response types of `cloud_hub::types`; `keys` works on a key directory directly,
//! since the root key never touches the hub. One module per command group.

mod audit;
mod client;
mod delta;
mod deployments;
mod devices;
mod functions;
mod groups;
mod images;
mod keys;
mod maintenance;
mod releases;
mod rollouts;
mod tokens;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use client::{Client, Out};

/// Operate a fleet through the hub's API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Hub base URL.
    #[arg(
        long,
        global = true,
        env = "FLEET_HUB_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    hub: String,
    /// API bearer token (or a file holding it with @path). `--help` never shows its value.
    #[arg(long, global = true, env = "FLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Print only this field of a JSON answer (dot path, e.g. `digest` or `status.convergence`).
    #[arg(long, global = true)]
    field: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Devices.
    #[command(subcommand)]
    Devices(devices::Devices),
    /// Groups (static lists and label selectors).
    #[command(subcommand)]
    Groups(groups::Groups),
    /// Images.
    #[command(subcommand)]
    Images(images::Images),
    /// Releases.
    #[command(subcommand)]
    Releases(releases::Releases),
    /// Deployments.
    #[command(subcommand)]
    Deployments(deployments::Deployments),
    /// Staged rollouts: phases, health gates, budgets, approvals.
    #[command(subcommand)]
    Rollouts(rollouts::Rollouts),
    /// API and enrollment tokens.
    #[command(subcommand)]
    Tokens(tokens::Tokens),
    /// A device's events, newest first.
    Events {
        /// Device id.
        device: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Function counters per device and fleet-wide (`*`), from the devices' status reports.
    Functions {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::Audit),
    /// Root and online keys (works on the key directory, not through the hub).
    #[command(subcommand)]
    Keys(keys::Keys),
    /// Make the running hub load a new online key and trust document (after `keys rotate`,
    /// `recover` or `rotate-root`), publish the trust and re-sign every device's state.
    ReloadTrust,
    /// Image deltas, made locally (no hub): `create`, `inspect`.
    #[command(subcommand)]
    Delta(delta::Delta),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `delta` works on local files only: a token file it will not use must not stop it.
    let token = match cli.token.as_deref() {
        Some(t) if t.starts_with('@') && !matches!(cli.command, Cmd::Delta(_)) => Some(
            std::fs::read_to_string(&t[1..])
                .with_context(|| format!("reading {}", &t[1..]))?
                .trim()
                .to_string(),
        ),
        other => other.map(str::to_owned),
    };
    let c = Client {
        hub: cli.hub.clone(),
        token,
        http: reqwest::Client::new(),
    };
    let out = Out {
        json: cli.json,
        field: cli.field.clone(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match cli.command {
        Cmd::Devices(d) => devices::run(d, &c, &out).await,
        Cmd::Groups(g) => groups::run(g, &c, &out).await,
        Cmd::Images(i) => images::run(i, &c, &out).await,
        Cmd::Releases(r) => releases::run(r, &c, &out).await,
        Cmd::Deployments(d) => deployments::run(d, &c, &out).await,
        Cmd::Rollouts(r) => rollouts::run(r, &c, &out).await,
        Cmd::Tokens(t) => tokens::run(t, &c, &out).await,
        Cmd::Events { device, limit } => devices::events(&c, &out, &device, limit).await,
        Cmd::Functions { device } => functions::run(&c, &out, device).await,
        Cmd::Audit(a) => audit::run(a, &c, &out).await,
        Cmd::Keys(k) => keys::run(k, now),
        Cmd::ReloadTrust => keys::reload_trust(&c, &out).await,
        Cmd::Delta(d) => delta::run(d, &out),
    }
}
