//! `fleetctl`: the operator CLI.

use clap::Parser;

/// Operate a fleet through the hub's API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
