//! `fleetctl groups`.

use clap::Subcommand;
use cloud_hub::types::GroupIn;
use reqwest::Method;

use crate::client::{segment, Client, Out};
use crate::maintenance::Window;

#[derive(Subcommand)]
pub enum Groups {
    /// List groups.
    List,
    /// Create or replace a group.
    Put {
        name: String,
        /// Label selector, k=v,k2=v2.
        #[arg(long)]
        selector: Option<String>,
        /// Explicit member (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Delete a group no live deployment targets.
    Delete { name: String },
    /// Set or clear the maintenance window of a group's devices.
    Maintenance {
        name: String,
        #[command(flatten)]
        window: Window,
    },
}

pub async fn run(cmd: Groups, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Groups::List => out.show(
            &c.call(Method::GET, "/api/v1/groups").await?,
            &[
                ("NAME", "name"),
                ("SELECTOR", "selector"),
                ("MEMBERS", "members"),
                ("MAINTENANCE", "maintenance.cron"),
            ],
        ),
        Groups::Put {
            name,
            selector,
            members,
        } => out.show(
            &c.call_with(
                Method::PUT,
                &format!("/api/v1/groups/{}", segment(&name)),
                &GroupIn { selector, members },
            )
            .await?,
            &[],
        ),
        Groups::Delete { name } => out.show(
            &c.call(
                Method::DELETE,
                &format!("/api/v1/groups/{}", segment(&name)),
            )
            .await?,
            &[],
        ),
        Groups::Maintenance { name, window } => {
            let path = format!("/api/v1/groups/{}/maintenance", segment(&name));
            out.show(&window.apply(c, &path).await?, &[]);
        }
    }
    Ok(())
}
