//! `fleetctl keys` (works on a key directory, not through the hub: the root key never touches
//! the hub) and `fleetctl reload-trust`.

use std::path::PathBuf;

use clap::Subcommand;
use cloud_hub::keys::KeyDir;
use reqwest::Method;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Keys {
    /// Create the root key, the online key and trust version 1.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Replace the online key (needs the root key).
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        root: PathBuf,
        /// Keep the old key valid too (soft rotation).
        #[arg(long)]
        keep_old: bool,
    },
    /// Revoke every online key and reset every device's revision floor.
    Recover {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        floor: u64,
    },
    /// Rotate the root key (signed by old and new root).
    RotateRoot {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        new: PathBuf,
    },
}

pub fn run(cmd: Keys, now: u64) -> anyhow::Result<()> {
    let v = match cmd {
        Keys::Init { dir } => {
            KeyDir(dir.clone()).init(now)?;
            format!(
                "created {}/root.key (move it offline), online.key and trust.json (version 1)",
                dir.display()
            )
        }
        Keys::Rotate {
            dir,
            root,
            keep_old,
        } => format!(
            "trust version {}",
            KeyDir(dir).rotate(&root, keep_old, now)?
        ),
        Keys::Recover { dir, root, floor } => format!(
            "trust version {} with revision floor {floor}",
            KeyDir(dir).recover(&root, floor, now)?
        ),
        Keys::RotateRoot { dir, old, new } => format!(
            "trust version {} with the new root",
            KeyDir(dir).rotate_root(&old, &new, now)?
        ),
    };
    println!("{v}");
    Ok(())
}

/// `fleetctl reload-trust`.
pub async fn reload_trust(c: &Client, out: &Out) -> anyhow::Result<()> {
    out.show(&c.call(Method::POST, "/api/v1/trust/reload").await?, &[]);
    Ok(())
}
