//! `fleetctl deployments`.

use clap::Subcommand;
use cloud_hub::types::DeploymentIn;
use reqwest::Method;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Deployments {
    /// List deployments.
    List,
    /// Deploy a release.
    Create {
        /// Release id.
        #[arg(long)]
        release: u64,
        /// Target group.
        #[arg(long)]
        group: Option<String>,
        /// Target label selector k=v,...
        #[arg(long)]
        selector: Option<String>,
        /// Target device (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Priority (highest matching wins).
        #[arg(long, default_value_t = 0)]
        priority: i64,
    },
    /// Delete a deployment.
    Delete { id: u64 },
}

pub async fn run(cmd: Deployments, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Deployments::List => out.show(
            &c.call(Method::GET, "/api/v1/deployments").await?,
            &[
                ("ID", "id"),
                ("RELEASE", "release_id"),
                ("TARGET", "target"),
                ("PRIORITY", "priority"),
                ("DELTAS", "pulls.delta"),
                ("SAVED", "pulls.bytes_saved"),
            ],
        ),
        Deployments::Create {
            release,
            group,
            selector,
            devices,
            priority,
        } => {
            let body = DeploymentIn {
                release,
                group,
                selector,
                devices: (!devices.is_empty()).then_some(devices),
                priority,
            };
            out.show(
                &c.call_with(Method::POST, "/api/v1/deployments", &body)
                    .await?,
                &[],
            );
        }
        Deployments::Delete { id } => out.show(
            &c.call(Method::DELETE, &format!("/api/v1/deployments/{id}"))
                .await?,
            &[],
        ),
    }
    Ok(())
}
