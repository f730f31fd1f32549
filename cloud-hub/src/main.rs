//! `cloud-hub`: the fleet hub service.

use clap::{Parser, Subcommand};

/// The fleet hub: store, registry, images, signer, publisher, ingest, API and embedded broker.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => anyhow::bail!("not built yet"),
    }
}
