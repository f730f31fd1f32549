//! The one-shot mode: a process per event, the body on its stdin, its stdout the answer (200
//! when it exits 0, 502 otherwise). At most `max_instances` run at once; the rest queue. A
//! process still running at the invocation timeout is killed (504).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pool::{Event, InvokeError, Pool, Reply};

/// Runs one event through a fresh process of the current version.
pub(super) async fn invoke(
    pool: &Arc<Pool>,
    ev: Event,
    deadline: Instant,
) -> Result<Reply, InvokeError> {
    pool.slot(deadline).await?;
    let v = pool.current();
    let res = tokio::time::timeout_at(deadline.into(), run(&v, ev)).await;
    let (failed, timed_out) = match &res {
        Ok(Ok(r)) => (r.status >= 500, false),
        Ok(Err(_)) => (true, false),
        Err(_) => (true, true),
    };
    pool.release(failed, timed_out);
    res.map_err(|_| InvokeError::Timeout)?
}

async fn run(v: &super::Version, ev: Event) -> Result<Reply, InvokeError> {
    let spec = super::instance::spec(v, None);
    let mut cmd =
        tokio::process::Command::from(crate::runtime::host_exec(&spec.rootfs, &spec.command));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(&spec.env)
        .env("FLEET_FUNCTION_PATH", &ev.path);
    for (k, val) in &ev.headers {
        if k == "fleet-topic" {
            cmd.env("FLEET_FUNCTION_TOPIC", val);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| InvokeError::StartFailed(format!("spawn: {e}")))?;
    let mut stdin = child.stdin.take();
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| InvokeError::Failed("no stdout".into()))?;
    let body = ev.body;
    let write = async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&body).await;
        }
        drop(stdin);
    };
    let limit = protocol::limits::MAX_FUNCTION_BODY_BYTES;
    let read = async move {
        let mut out = Vec::new();
        let r = (&mut stdout).take(limit + 1).read_to_end(&mut out).await;
        r.map(|_| out)
    };
    let ((), out) = tokio::join!(write, read);
    let out = out.map_err(|e| InvokeError::Failed(format!("reading stdout: {e}")))?;
    if out.len() as u64 > limit {
        return Err(InvokeError::Failed(format!(
            "answer larger than {limit} bytes"
        )));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| InvokeError::Failed(format!("wait: {e}")))?;
    Ok(Reply {
        status: if status.success() { 200 } else { 502 },
        content_type: None,
        body: out.into(),
    })
}
