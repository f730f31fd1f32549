//! `edge-agent`: the fleet agent.

use clap::{Parser, Subcommand};

/// Keeps a device's workloads converging on its signed desired state.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => anyhow::bail!("not built yet"),
    }
}
