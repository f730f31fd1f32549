//! `fleetctl tokens`.

use clap::Subcommand;
use cloud_hub::model::Role;
use cloud_hub::types::TokenIn;
use reqwest::Method;

use crate::client::{labels, Client};

#[derive(Subcommand)]
pub enum Tokens {
    /// An API token.
    Api {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: Role,
    },
    /// A one-time enrollment token.
    Enroll {
        /// Label given to the device (repeatable key=value).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

pub async fn run(cmd: Tokens, c: &Client) -> anyhow::Result<()> {
    let body = match cmd {
        Tokens::Api { name, role } => TokenIn {
            kind: "api".into(),
            name: Some(name),
            role: Some(role),
            labels: Default::default(),
            ttl_secs: None,
        },
        Tokens::Enroll { labels: l, ttl } => TokenIn {
            kind: "enroll".into(),
            name: None,
            role: None,
            labels: labels(&l)?,
            ttl_secs: Some(ttl),
        },
    };
    let v = c.call_with(Method::POST, "/api/v1/tokens", &body).await?;
    println!("{}", v["token"].as_str().unwrap_or_default());
    Ok(())
}
