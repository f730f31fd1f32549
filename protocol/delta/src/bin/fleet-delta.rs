//! `fleet-delta create OLD NEW -o DELTA` and `fleet-delta apply OLD DELTA -o NEW`: the codec
//! without a hub, for benchmarks and side-loaded deltas.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Create and apply fleet image deltas")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a delta that turns OLD into NEW.
    Create {
        old: PathBuf,
        new: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Apply DELTA to OLD; the result is verified against the delta's target digest and only
    /// then renamed to OUTPUT.
    Apply {
        old: PathBuf,
        delta: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Create { old, new, output } => {
            let start = Instant::now();
            let file = std::fs::File::create(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            let mut out = BufWriter::new(file);
            let stats = fleet_delta::create(&old, &new, &mut out, &fleet_delta::Options::default())
                .context("creating delta")?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "delta {} bytes ({} blocks, {} records; diff {} -> {}, literal {} -> {}, control {}) in {:.2}s",
                stats.delta_size,
                stats.blocks,
                stats.records,
                stats.diff_bytes,
                stats.diff_packed,
                stats.literal_bytes,
                stats.literal_packed,
                stats.control_packed,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Apply { old, delta, output } => {
            let applied =
                fleet_delta::apply_file(&old, &delta, &output, &fleet_delta::Limits::default())
                    .context("applying delta")?;
            eprintln!(
                "wrote {} ({} bytes, sha256 {})",
                output.display(),
                applied.target_size,
                hex::encode(applied.target_sha256)
            );
        }
    }
    Ok(())
}
