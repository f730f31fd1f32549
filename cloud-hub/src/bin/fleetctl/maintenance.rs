//! The maintenance-window arguments shared by `devices maintenance` and `groups maintenance`.

use anyhow::bail;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;

#[derive(Args)]
pub struct Window {
    /// When the window opens: a cron expression with seconds, e.g. "0 0 3 * * *" (UTC).
    #[arg(long, conflicts_with = "clear", requires = "duration")]
    cron: Option<String>,
    /// How long it stays open, in seconds.
    #[arg(long, conflicts_with = "clear", requires = "cron")]
    duration: Option<u64>,
    /// Remove the window.
    #[arg(long)]
    clear: bool,
}

impl Window {
    /// Sets (PUT) or clears (DELETE) the window at `path`.
    pub async fn apply(self, c: &Client, path: &str) -> anyhow::Result<Value> {
        match (self.cron, self.duration, self.clear) {
            (_, _, true) => c.call(Method::DELETE, path).await,
            (Some(cron), Some(duration_secs), false) => {
                let body = serde_json::json!({"cron": cron, "duration_secs": duration_secs});
                c.call_with(Method::PUT, path, &body).await
            }
            _ => bail!("give --cron and --duration, or --clear"),
        }
    }
}
