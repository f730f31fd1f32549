//! Health probes (exec, HTTP, TCP), each bounded by the check's timeout. Scheduling (interval,
//! retries, start period) is `agent::health`'s.

use std::path::Path;
use std::time::Duration;

use protocol::{HealthCheck, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one probe with exec probes as host processes in `rootfs`; `true` when healthy.
pub async fn probe(check: &HealthCheck, rootfs: &Path) -> bool {
    let exec = match &check.probe {
        Probe::Exec { command } => Some(super::host_exec(rootfs, command)),
        _ => None,
    };
    probe_with(check, exec).await
}

/// Runs one probe; an exec probe runs `exec` (prepared by the workload's runtime, e.g. inside
/// its container). Bounded by the check's timeout.
pub async fn probe_with(check: &HealthCheck, exec: Option<std::process::Command>) -> bool {
    let timeout = Duration::from_secs(check.timeout_secs);
    tokio::time::timeout(timeout, run(&check.probe, exec))
        .await
        .unwrap_or(false)
}

async fn run(probe: &Probe, exec: Option<std::process::Command>) -> bool {
    match probe {
        Probe::Exec { .. } => {
            let Some(cmd) = exec else {
                return false;
            };
            tokio::process::Command::from(cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false)
        }
        Probe::Tcp { port } => tokio::net::TcpStream::connect(("127.0.0.1", *port))
            .await
            .is_ok(),
        Probe::Http { port, path } => http_ok(*port, path).await.unwrap_or(false),
    }
}

/// A minimal HTTP/1.0 GET: healthy on a 2xx or 3xx status line.
async fn http_ok(port: u16, path: &str) -> std::io::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    Ok(matches!(code, Some(200..=399)))
}
