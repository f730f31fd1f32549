//! `fleetctl tokens`.

use clap::Subcommand;
use cloud_hub::model::Role;
use cloud_hub::types::TokenIn;
use reqwest::Method;

use crate::client::{labels, Client, Out};

#[derive(Subcommand)]
pub enum Tokens {
    /// An API token (printed once; the hub keeps only its hash).
    Api {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: Role,
        /// Validity in seconds (default: no expiry).
        #[arg(long)]
        ttl: Option<u64>,
        /// The only change it may make (repeatable; e.g. image.import, release.create,
        /// deployment.create). Reads stay governed by the role.
        #[arg(long = "allow")]
        actions: Vec<String>,
        /// The only group it may deploy to or change (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
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
    /// List API tokens (never their secrets).
    List,
    /// Revoke an API token at once, by the id `tokens list` shows.
    Revoke { id: u64 },
}

fn some(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

pub async fn run(cmd: Tokens, c: &Client, out: &Out) -> anyhow::Result<()> {
    let body = match cmd {
        Tokens::Api {
            name,
            role,
            ttl,
            actions,
            groups,
        } => TokenIn {
            kind: "api".into(),
            name: Some(name),
            role: Some(role),
            labels: Default::default(),
            ttl_secs: ttl,
            actions: some(actions),
            groups: some(groups),
        },
        Tokens::Enroll { labels: l, ttl } => TokenIn {
            kind: "enroll".into(),
            name: None,
            role: None,
            labels: labels(&l)?,
            ttl_secs: Some(ttl),
            actions: None,
            groups: None,
        },
        Tokens::List => {
            out.show(
                &c.call(Method::GET, "/api/v1/tokens").await?,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("ACTIONS", "scope.actions"),
                    ("GROUPS", "scope.groups"),
                    ("EXPIRES", "expires_at"),
                    ("REVOKED", "revoked_at"),
                ],
            );
            return Ok(());
        }
        Tokens::Revoke { id } => {
            let v = c
                .call(Method::DELETE, &format!("/api/v1/tokens/{id}"))
                .await?;
            out.show(&v, &[]);
            return Ok(());
        }
    };
    let v = c.call_with(Method::POST, "/api/v1/tokens", &body).await?;
    println!("{}", v["token"].as_str().unwrap_or_default());
    Ok(())
}
