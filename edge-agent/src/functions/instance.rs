//! Starting a function instance: a free loopback port handed over in `FLEET_FUNCTION_PORT`, the
//! runtime's ordinary start, then readiness — the instance is ready when its port accepts a
//! connection. An instance that exits first, or does not listen within the invocation timeout,
//! failed to start and is stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::{InstanceState, Runtime, WorkloadSpec};

use super::Version;

/// The environment variable that names the port an instance serves on.
pub const PORT_ENV: &str = "FLEET_FUNCTION_PORT";

/// A started, listening instance.
#[derive(Debug, Clone)]
pub struct Started {
    /// Runtime instance id.
    pub id: String,
    /// Loopback port it serves on.
    pub port: u16,
}

/// A loopback port free right now (the kernel's pick; the instance binds it next).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The runtime spec of `v` with its port.
pub fn spec(v: &Version, port: Option<u16>) -> WorkloadSpec {
    let mut env = v.workload.env.clone();
    if let Some(p) = port {
        env.insert(PORT_ENV.into(), p.to_string());
    }
    env.insert("FLEET_FUNCTION".into(), v.workload.name.to_string());
    WorkloadSpec {
        name: v.workload.name.clone(),
        digest: v.digest,
        rootfs: v.rootfs.clone(),
        command: v.workload.command.clone(),
        env,
        resources: v.workload.resources,
    }
}

/// Starts an instance of `v` and waits until it listens, at most `limit`.
pub async fn start(rt: Arc<dyn Runtime>, v: &Version, limit: Duration) -> Result<Started, String> {
    let port = free_port()?;
    let spec = spec(v, Some(port));
    let rt2 = rt.clone();
    let inst = tokio::task::spawn_blocking(move || rt2.start(&spec))
        .await
        .map_err(|e| format!("start task: {e}"))?
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(Started { id: inst.id, port });
        }
        tries += 1;
        let failed = if Instant::now() >= until {
            Some(format!(
                "not listening on its port within {} ms",
                limit.as_millis()
            ))
        } else if tries.is_multiple_of(8) {
            let (rt2, id) = (rt.clone(), inst.id.clone());
            let state = tokio::task::spawn_blocking(move || {
                rt2.list()
                    .ok()
                    .and_then(|l| l.into_iter().find(|i| i.id == id))
                    .map(|i| i.state)
            })
            .await
            .ok()
            .flatten();
            match state {
                Some(InstanceState::Running { .. }) => None,
                Some(InstanceState::Exited { code, signal, .. }) => Some(format!(
                    "exited at start (code {code:?}, signal {signal:?})"
                )),
                None => Some("vanished at start".into()),
            }
        } else {
            None
        };
        if let Some(reason) = failed {
            let id = inst.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = rt.stop(&id, Duration::ZERO);
                let _ = rt.remove(&id);
            })
            .await;
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
