//! `fleetctl releases`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use cloud_hub::types::ReleaseIn;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Releases {
    /// List releases.
    List,
    /// Create a release from a JSON or TOML file: name, version, workloads.
    Create { file: PathBuf },
    /// Delete a release no live deployment runs.
    Delete { id: u64 },
}

pub async fn run(cmd: Releases, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Releases::List => out.show(
            &c.call(Method::GET, "/api/v1/releases").await?,
            &[("ID", "id"), ("NAME", "name"), ("VERSION", "version")],
        ),
        Releases::Delete { id } => out.show(
            &c.call(Method::DELETE, &format!("/api/v1/releases/{id}"))
                .await?,
            &[],
        ),
        Releases::Create { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: Value = if file.extension().and_then(|e| e.to_str()) == Some("toml") {
                let t: toml::Value = toml::from_str(&text).context("parsing release TOML")?;
                serde_json::to_value(t)?
            } else {
                serde_json::from_str(&text).context("parsing release JSON")?
            };
            let release: ReleaseIn = serde_json::from_value(body)
                .with_context(|| format!("{} is not a release", file.display()))?;
            out.show(
                &c.call_with(Method::POST, "/api/v1/releases", &release)
                    .await?,
                &[],
            );
        }
    }
    Ok(())
}
