//! `fleet-sim`: simulate N devices against a real hub and print a JSON summary. Thin: parses the
//! command line and hands over to `fleet_sim::scenario`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use fleet_sim::hub::HubClient;
use fleet_sim::identity::EnrollPlan;
use fleet_sim::scenario::{self, Kind, Plan};
use fleet_sim::Settings;

/// Simulate many enrolled devices against a fleet hub (load, scale and capacity tests).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Number of simulated devices.
    #[arg(short = 'n', long, default_value_t = 100)]
    devices: usize,
    /// Hub base URL.
    #[arg(long, env = "FLEET_SIM_HUB", default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// Admin API token (mints enrollment tokens, deploys), or @path of a file holding it.
    #[arg(long, env = "FLEET_SIM_TOKEN")]
    token: String,
    /// Broker host:port, instead of the address the hub hands out at enrollment.
    #[arg(long, env = "FLEET_SIM_BROKER")]
    broker: Option<String>,
    /// Device ids are PREFIX-0 … PREFIX-(N-1), labelled sim=PREFIX.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// State file: identities enrolled by an earlier run are reused, new ones appended.
    #[arg(long)]
    state: Option<PathBuf>,
    /// What to do once every device is connected.
    #[arg(long, value_enum, default_value_t = Kind::Connect)]
    scenario: Kind,
    /// Percentage of devices to cut off (implies --scenario partition).
    #[arg(long, value_name = "PERCENT")]
    cut: Option<f64>,
    /// How long a partition holds, in seconds.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Events each device reports in a burst.
    #[arg(long, default_value_t = 1)]
    burst_events: usize,
    /// Upper bound of the random delay before each (re)connection, in milliseconds.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// MQTT keep-alive in seconds.
    #[arg(long, default_value_t = 15)]
    keep_alive_secs: u64,
    /// Resend an unacked event batch after this many seconds.
    #[arg(long, default_value_t = 10)]
    resend_secs: u64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 8)]
    enroll_concurrency: usize,
    /// Device profile to enroll with.
    #[arg(long, default_value = "local-dev")]
    profile: String,
    /// Patience for each phase, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Shell command that restarts the broker (implies --scenario restart), e.g.
    /// "systemctl restart mosquitto".
    #[arg(long)]
    restart_cmd: Option<String>,
}

fn broker(s: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .with_context(|| format!("broker address {s:?} is not host:port"))?;
    let port = p
        .parse()
        .with_context(|| format!("broker port {p:?} is not a number"))?;
    Ok((h.to_string(), port))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let token = match cli.token.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin token from {path}"))?
            .trim()
            .to_string(),
        None => cli.token.clone(),
    };
    if let Some(c) = cli.cut {
        if !(0.0..=100.0).contains(&c) {
            bail!("--cut must be a percentage between 0 and 100, not {c}");
        }
    }
    fleet_sim::identity::device_id(&cli.prefix, 0).context("--prefix")?;
    let plan = Plan {
        kind: if cli.cut.is_some() {
            Kind::Partition
        } else if cli.restart_cmd.is_some() {
            Kind::Restart
        } else {
            cli.scenario
        },
        enroll: EnrollPlan {
            prefix: cli.prefix.clone(),
            count: cli.devices,
            labels: scenario::labels(&cli.prefix),
            profile: cli.profile.clone(),
            concurrency: cli.enroll_concurrency,
        },
        settings: Settings {
            broker: cli.broker.as_deref().map(broker).transpose()?,
            keep_alive: Duration::from_secs(cli.keep_alive_secs.max(1)),
            jitter: Duration::from_millis(cli.jitter_ms),
            resend: Duration::from_secs(cli.resend_secs.max(1)),
        },
        state: cli.state.clone(),
        cut_percent: cli.cut.unwrap_or(10.0),
        hold: Duration::from_secs(cli.hold_secs),
        burst_events: cli.burst_events,
        timeout: Duration::from_secs(cli.timeout_secs),
        restart_cmd: cli.restart_cmd.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let hub = HubClient::new(&cli.hub, &token);
    let report = rt
        .block_on(scenario::run(&hub, &plan))
        .context("simulation failed")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(e) = &report.error {
        bail!("the scenario failed: {e}");
    }
    if let Some(phase) = report.timed_out {
        bail!("the fleet did not settle: the {phase} phase timed out");
    }
    Ok(())
}
