//! `fleetctl delta create OLD NEW -o OUT` and `fleetctl delta inspect D`: the hub side of the
//! delta codec (`fleet-delta`, docs/DELTA.md) without a hub, for side-loaded deltas and
//! benchmarks. Neither command talks to the hub, so neither needs `--hub` or `--token`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use fleet_delta::format::{Header, VERSION};

use crate::client::Out;

#[derive(Subcommand)]
pub enum Delta {
    /// Create a delta that turns OLD (the image the device holds) into NEW. The delta is
    /// written beside OUTPUT, synced and renamed into place only when complete.
    Create {
        /// The base image tar.
        old: PathBuf,
        /// The target image tar.
        new: PathBuf,
        /// Where to write the delta.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a delta's header: format version, base and target size and SHA-256.
    Inspect {
        /// The delta file.
        delta: PathBuf,
    },
}

pub fn run(cmd: Delta, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Delta::Create {
            old,
            new,
            output,
            force,
        } => create(&old, &new, &output, force, out),
        Delta::Inspect { delta } => inspect(&delta, out),
    }
}

fn create(old: &Path, new: &Path, output: &Path, force: bool, out: &Out) -> anyhow::Result<()> {
    if !force && output.symlink_metadata().is_ok() {
        bail!("{} exists (give --force to replace it)", output.display());
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".fleet-delta-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut w = BufWriter::new(tmp.as_file());
    let stats = fleet_delta::create(old, new, &mut w, &fleet_delta::Options::default())
        .with_context(|| {
            format!(
                "creating a delta from {} to {}",
                old.display(),
                new.display()
            )
        })?;
    w.flush()
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    drop(w);
    let persisted = if force {
        tmp.persist(output).map(drop)
    } else {
        tmp.persist_noclobber(output).map(drop)
    };
    persisted.with_context(|| format!("renaming the delta to {}", output.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    let ratio = if stats.target_size == 0 {
        0.0
    } else {
        stats.delta_size as f64 / stats.target_size as f64
    };
    let v = serde_json::json!({
        "delta": output.display().to_string(),
        "base_size": stats.base_size,
        "target_size": stats.target_size,
        "delta_size": stats.delta_size,
        "ratio": ratio,
    });
    if out.json || out.field.is_some() {
        out.show(&v, &[]);
        return Ok(());
    }
    println!("delta        {}", output.display());
    println!("base size    {}", stats.base_size);
    println!("target size  {}", stats.target_size);
    println!("delta size   {}", stats.delta_size);
    println!(
        "ratio        {:.4} ({:.2} % of the target)",
        ratio,
        ratio * 100.0
    );
    Ok(())
}

fn inspect(delta: &Path, out: &Out) -> anyhow::Result<()> {
    let file = File::open(delta).with_context(|| format!("opening {}", delta.display()))?;
    let h = Header::read(&mut BufReader::new(file))
        .with_context(|| format!("reading the header of {}", delta.display()))?;
    let v = serde_json::json!({
        "format_version": VERSION,
        "base_size": h.base_size,
        "base_sha256": hex::encode(h.base_sha256),
        "target_size": h.target_size,
        "target_sha256": hex::encode(h.target_sha256),
    });
    if out.json || out.field.is_some() {
        out.show(&v, &[]);
        return Ok(());
    }
    println!("format version  {VERSION}");
    println!("base size       {}", h.base_size);
    println!("base sha256     {}", hex::encode(h.base_sha256));
    println!("target size     {}", h.target_size);
    println!("target sha256   {}", hex::encode(h.target_sha256));
    Ok(())
}
