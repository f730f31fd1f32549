//! `edge-agent`: the fleet agent binary. Thin: parses the command line, loads the config, and
//! hands over to the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_agent::agent::{self, Agent};
use edge_agent::config::Config;
use edge_agent::enroll::{self, EnrollArgs};
use edge_agent::runtime;
use edge_agent::store::{Identity, Store};
use protocol::{DeviceId, PublicKey, RootKeys};
use tokio_util::sync::CancellationToken;

/// Keeps a device's workloads converging on its signed desired state.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); defaults apply to anything it leaves out.
    #[arg(long, global = true, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the config file).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or Ctrl-C. Workloads keep running after it stops, unless
    /// `--stop-workloads-on-exit` (for demos and development machines).
    Run {
        /// Stop every workload when the agent stops.
        #[arg(long)]
        stop_workloads_on_exit: bool,
    },
    /// Enroll with a hub using a one-time token.
    Enroll {
        /// Hub base URL, e.g. http://hub:8080.
        #[arg(long)]
        hub: String,
        /// One-time enrollment token.
        #[arg(long)]
        token: String,
        /// Device profile (a file name in firmware-profiles/ without .toml).
        #[arg(long, default_value = "local-dev")]
        profile: String,
        /// Device id to ask for (the hub derives one otherwise).
        #[arg(long)]
        device_id: Option<DeviceId>,
        /// Labels to propose, as key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Provision by hand, without a hub round trip (out-of-band enrollment, tests).
    Provision {
        /// Device id.
        #[arg(long)]
        device_id: DeviceId,
        /// Broker as host:port.
        #[arg(long)]
        mqtt: String,
        /// Broker password for this device (the username is the device id).
        #[arg(long)]
        password: String,
        /// Hub base URL for blobs.
        #[arg(long)]
        hub_url: String,
        /// Root public key to pin (base64).
        #[arg(long)]
        root_key: String,
        /// Device profile name.
        #[arg(long, default_value = "local-dev")]
        profile: String,
    },
    /// Print the local state (works offline).
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print the default configuration file.
    PrintDefaultConfig,
    /// Image deltas, for side-loaded deltas (air-gapped sites) and benchmarks; works offline.
    #[command(subcommand)]
    Delta(DeltaCommand),
}

#[derive(Subcommand)]
enum DeltaCommand {
    /// Apply DELTA to OLD and write NEW. The result is checked against the target size and
    /// SHA-256 recorded in the delta and only then renamed into place; on any error nothing is
    /// left at OUTPUT. Exit codes: 0 done, 1 I/O or other error, 2 usage, 3 OLD is not the
    /// delta's base, 4 the delta is corrupt, truncated or not a delta, 5 the result does not
    /// match the delta's target digest, 6 OUTPUT exists (without --force).
    Apply {
        /// The base image tar the delta was made from.
        old: PathBuf,
        /// The delta file.
        delta: PathBuf,
        /// Where to write the new image tar.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// `edge-agent delta apply`: prints the target's digest, or a message and the documented exit
/// code.
fn delta_apply(old: &Path, delta: &Path, output: &Path, force: bool) -> ExitCode {
    use fleet_delta::Error as E;
    if !force && output.symlink_metadata().is_ok() {
        eprintln!(
            "edge-agent: {} exists (give --force to replace it)",
            output.display()
        );
        return ExitCode::from(6);
    }
    match fleet_delta::apply_file(old, delta, output, &fleet_delta::Limits::default()) {
        Ok(a) => {
            println!(
                "wrote {} ({} bytes, sha256 {})",
                output.display(),
                a.target_size,
                hex::encode(a.target_sha256)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (code, what) = match &e {
                E::WrongBase { .. } => (
                    3,
                    format!("{} is not the base of {}", old.display(), delta.display()),
                ),
                E::TargetMismatch { .. } => (
                    5,
                    format!("{} does not rebuild its target", delta.display()),
                ),
                E::NotADelta
                | E::UnsupportedVersion(_)
                | E::Truncated(_)
                | E::Malformed(_)
                | E::OutOfBounds { .. }
                | E::UnknownMethod(_)
                | E::WindowTooLarge { .. }
                | E::Corrupt { .. }
                | E::WritePastTarget { .. }
                | E::ReadPastBase
                | E::TrailingData => (4, format!("{} is not a usable delta", delta.display())),
                E::Io { .. } | E::File { .. } | E::InputTooLarge { .. } => (
                    1,
                    format!("applying {} to {}", delta.display(), old.display()),
                ),
            };
            eprintln!("edge-agent: {what}: {e}; {} not written", output.display());
            ExitCode::from(code)
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    cfg.absolutize()?;
    Ok(cfg)
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::Delta(DeltaCommand::Apply {
        old,
        delta,
        output,
        force,
    }) = &cli.command
    {
        return Ok(delta_apply(old, delta, output, *force));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async_main(cli)).map(|()| ExitCode::SUCCESS)
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Delta(_) => unreachable!("handled before the runtime starts"),
        Command::PrintDefaultConfig => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(())
        }
        Command::Run {
            stop_workloads_on_exit,
        } => {
            let stop_workloads_on_exit = *stop_workloads_on_exit;
            let cfg = load_config(&cli)?;
            let grace = std::time::Duration::from_secs(cfg.stop_grace_secs);
            let (layout, log_max_bytes) = (cfg.layout(), cfg.log_max_bytes);
            let metrics_addr = cfg.metrics_addr;
            let agent = Agent::open(cfg)?;
            let cancel = CancellationToken::new();
            if let Some(addr) = metrics_addr {
                tokio::spawn(edge_agent::metrics::serve(addr, cancel.clone()).await?);
            }
            let c = cancel.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                c.cancel();
            });
            let r = agent.run(cancel).await;
            if stop_workloads_on_exit {
                let n = agent::stop_workloads_on_exit(&layout, log_max_bytes, grace)?;
                tracing::info!(n, "stopped every workload (--stop-workloads-on-exit)");
            }
            r
        }
        Command::Enroll {
            hub,
            token,
            profile,
            device_id,
            labels,
        } => {
            let cfg = load_config(&cli)?;
            cfg.layout()
                .create_private()
                .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
            let mut store = Store::open(&cfg.db_path())?;
            let answer = enroll::enroll(
                &mut store,
                &EnrollArgs {
                    hub: hub.clone(),
                    token: token.clone(),
                    profile: profile.clone(),
                    device_id: device_id.clone(),
                    labels: labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                },
            )
            .await?;
            println!("enrolled as {}", answer.device_id);
            Ok(())
        }
        Command::Provision {
            device_id,
            mqtt,
            password,
            hub_url,
            root_key,
            profile,
        } => {
            let cfg = load_config(&cli)?;
            cfg.layout()
                .create_private()
                .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
            let (host, port) = edge_agent::config::split_addr(mqtt).map_err(anyhow::Error::msg)?;
            let root = PublicKey::from_base64(root_key).context("--root-key")?;
            let key = enroll::generate_key()?;
            let mut store = Store::open(&cfg.db_path())?;
            enroll::provision(
                &mut store,
                Identity {
                    device_id: device_id.clone(),
                    secret_key: key.to_secret_base64(),
                    mqtt_host: host,
                    mqtt_port: port,
                    mqtt_username: device_id.to_string(),
                    mqtt_password: password.clone(),
                    hub_url: hub_url.clone(),
                    profile: profile.clone(),
                },
                RootKeys::single(root),
            )?;
            println!("provisioned {device_id}");
            Ok(())
        }
        Command::Status { json } => {
            let cfg = load_config(&cli)?;
            let store = Store::open(&cfg.db_path())?;
            let id = store.identity()?;
            let floor = store.floor()?;
            let desired = store.desired_state()?;
            let applied = store.applied()?;
            let (depth, bytes) = store.outbox_depth()?;
            let mut instances = Vec::new();
            for rt in runtime::open_all(&cfg.layout(), cfg.log_max_bytes)? {
                instances.extend(rt.list()?);
            }
            let v = serde_json::json!({
                "device": id.device_id,
                "revision_floor": floor.revision,
                "desired_revision": desired.as_ref().map(|d| d.revision),
                "applied_revision": applied,
                "trust_version": store.trust()?.version,
                "outbox_events": depth,
                "outbox_bytes": bytes,
                "instances": instances,
            });
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("device          {}", id.device_id);
                println!("desired         {:?}", desired.as_ref().map(|d| d.revision));
                println!("applied         {applied:?}");
                println!("revision floor  {}", floor.revision);
                println!("outbox          {depth} events, {bytes} bytes");
                for i in instances {
                    println!("instance        {} {:?}", i.id, i.state);
                }
            }
            Ok(())
        }
    }
}
