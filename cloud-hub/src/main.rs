//! `cloud-hub`: the fleet hub service binary. Thin: parses the command line and hands over.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cloud_hub::config::Config;
use tokio_util::sync::CancellationToken;

/// The fleet hub: store, registry, images, signer, publisher, ingest, API and embedded broker.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (embedded broker unless an external one is configured).
    Serve {
        /// Config file (TOML).
        #[arg(long, env = "FLEET_HUB_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address (overrides the config).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Embedded broker listen address (overrides the config).
        #[arg(long)]
        mqtt: Option<std::net::SocketAddr>,
        /// Use this external broker (host:port) instead of the embedded one.
        #[arg(long)]
        external_mqtt: Option<String>,
    },
    /// Print the default configuration file.
    PrintDefaultConfig,
    /// Make one delta (run by `serve` as its own process, so a generation's time and memory
    /// are bounded and given back; `fleetctl delta create` is the command for users).
    #[command(hide = true)]
    DeltaGenerate {
        /// Base tar.
        old: PathBuf,
        /// Target tar.
        new: PathBuf,
        /// Where to write the delta.
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(())
        }
        Command::DeltaGenerate { old, new, out } => {
            cloud_hub::images::deltas::generate_file(&old, &new, &out)
        }
        Command::Serve {
            config,
            data_dir,
            http,
            mqtt,
            external_mqtt,
        } => {
            let mut cfg = Config::load(config.as_deref())?;
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(h) = http {
                cfg.http_addr = h;
            }
            if let Some(m) = mqtt {
                cfg.mqtt_addr = m;
            }
            if external_mqtt.is_some() {
                cfg.external_mqtt = external_mqtt;
            }
            cfg.validate()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let cancel = CancellationToken::new();
                let c = cancel.clone();
                tokio::spawn(async move {
                    let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    c.cancel();
                });
                cloud_hub::serve::serve(cfg, cancel).await
            })
        }
    }
}
