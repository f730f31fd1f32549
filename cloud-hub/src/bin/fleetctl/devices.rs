//! `fleetctl devices` and `fleetctl events`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use crate::client::{labels, segment, Client, Out};
use crate::maintenance::Window;

#[derive(Subcommand)]
pub enum Devices {
    /// List devices.
    List,
    /// Show one device.
    Show { id: String },
    /// Delete a device: its state and broker credentials go and its live session is dropped
    /// (a lost or stolen gateway is cut off; it must enroll again to come back).
    Delete { id: String },
    /// Replace a device's labels (key=value ...).
    Label { id: String, labels: Vec<String> },
    /// Set or clear a device's maintenance window (it wins over its groups').
    Maintenance {
        id: String,
        #[command(flatten)]
        window: Window,
    },
    /// Why a device runs what it runs: deployments, priorities, selectors, rollout phase.
    Explain { id: String },
    /// Wait until at least N devices report converged on the revision the hub holds for them.
    Wait {
        /// How many devices.
        #[arg(long)]
        converged: usize,
        /// Give up after this many seconds (exit status 1).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

fn converged(d: &Value) -> bool {
    let want = d["desired_revision"].as_u64();
    want.is_some()
        && d["status"]["applied_revision"].as_u64() == want
        && d["status"]["convergence"] == "converged"
}

pub async fn run(cmd: Devices, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Devices::List => {
            let v = c.call(Method::GET, "/api/v1/devices").await?;
            out.show(
                &v,
                &[
                    ("ID", "id"),
                    ("PROFILE", "profile"),
                    ("PRESENCE", "presence.state"),
                    ("DESIRED", "desired_revision"),
                    ("APPLIED", "status.applied_revision"),
                    ("STATE", "status.convergence"),
                    ("DELTAS", "pulls.delta"),
                    ("SAVED", "pulls.bytes_saved"),
                ],
            );
        }
        Devices::Wait {
            converged: want,
            timeout,
        } => {
            let until = Instant::now() + Duration::from_secs(timeout);
            loop {
                let v = c.call(Method::GET, "/api/v1/devices").await?;
                let n = v
                    .as_array()
                    .map(|a| a.iter().filter(|d| converged(d)).count())
                    .unwrap_or(0);
                if n >= want {
                    println!("{n} devices converged");
                    break;
                }
                if Instant::now() >= until {
                    bail!("only {n} of {want} devices converged within {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Devices::Explain { id } => crate::rollouts::explain(c, out, &id).await?,
        Devices::Show { id } => out.show(
            &c.call(Method::GET, &format!("/api/v1/devices/{}", segment(&id)))
                .await?,
            &[],
        ),
        Devices::Delete { id } => out.show(
            &c.call(Method::DELETE, &format!("/api/v1/devices/{}", segment(&id)))
                .await?,
            &[],
        ),
        Devices::Label { id, labels: l } => out.show(
            &c.call_with(
                Method::PUT,
                &format!("/api/v1/devices/{}/labels", segment(&id)),
                &labels(&l)?,
            )
            .await?,
            &[],
        ),
        Devices::Maintenance { id, window } => {
            let path = format!("/api/v1/devices/{}/maintenance", segment(&id));
            out.show(&window.apply(c, &path).await?, &[]);
        }
    }
    Ok(())
}

/// `fleetctl events DEVICE`.
pub async fn events(c: &Client, out: &Out, device: &str, limit: u32) -> anyhow::Result<()> {
    let path = format!("/api/v1/devices/{}/events", segment(device));
    let req = c.request(Method::GET, &path).query(&[("limit", limit)]);
    let v = c.send(req, &path).await?;
    out.show(
        &v,
        &[
            ("SEQ", "seq"),
            ("TIME", "time"),
            ("TYPE", "body.type"),
            ("REVISION", "body.revision"),
            ("WORKLOAD", "body.workload"),
            ("REASON", "body.reason"),
        ],
    );
    Ok(())
}
