//! `fleetctl audit`.

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Audit {
    /// List entries.
    List {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify the hash chain.
    Verify,
}

pub async fn run(cmd: Audit, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Audit::List { after, limit } => {
            let path = "/api/v1/audit";
            let req = c
                .request(Method::GET, path)
                .query(&[("after", after)])
                .query(&[("limit", limit)]);
            out.show(
                &c.send(req, path).await?,
                &[
                    ("ID", "id"),
                    ("TIME", "time"),
                    ("ACTOR", "actor"),
                    ("ACTION", "action"),
                    ("TARGET", "target"),
                    ("OUTCOME", "outcome"),
                ],
            );
        }
        Audit::Verify => {
            let v = c.call(Method::GET, "/api/v1/audit/verify").await?;
            out.show(&v, &[]);
            if v["ok"] != json!(true) {
                bail!("audit chain is broken");
            }
        }
    }
    Ok(())
}
