//! Runtimes (DESIGN §3.7): start, stop, inspect and collect the exit of a workload.
//!
//! The [`Runtime`] trait is synchronous and narrow; the owner loop polls [`Runtime::list`] to
//! observe exits, so an adopted process (one that outlived an agent restart) is watched the same
//! way as a child. Restart policy and backoff live in the reconciler, health scheduling in
//! `agent::health`, not here. Instance records on disk are `record.rs`, shared by both runtimes.

pub mod cgroup;
pub mod health;
pub mod oci;
pub mod process;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::{Digest, Resources, RuntimeKind, WorkloadName};
use serde::{Deserialize, Serialize};

pub use oci::OciRuntime;
pub use process::ProcessRuntime;

use crate::layout::Layout;

/// The runtimes available on this host: `process` always, `oci` when an OCI runtime CLI
/// (`runc`, `crun`) answers.
pub fn open_all(
    layout: &Layout,
    log_max_bytes: u64,
) -> Result<Vec<Arc<dyn Runtime>>, RuntimeError> {
    let mut out: Vec<Arc<dyn Runtime>> = vec![Arc::new(ProcessRuntime::new(
        &layout.runtime(),
        &layout.logs(),
        log_max_bytes,
    )?)];
    if let Some(runc) = OciRuntime::detect() {
        out.push(Arc::new(OciRuntime::new(
            runc,
            &layout.oci(),
            &layout.logs(),
        )?));
    }
    Ok(out)
}

/// What to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Workload name.
    pub name: WorkloadName,
    /// Image it runs.
    pub digest: Digest,
    /// Unpacked image tree.
    pub rootfs: PathBuf,
    /// Entrypoint and arguments.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Limits.
    pub resources: Resources,
}

/// Running or exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Alive.
    Running {
        /// Process id.
        pid: u32,
        /// Unix seconds.
        started_at: u64,
    },
    /// Gone.
    Exited {
        /// Exit code, when known (unknown for a process adopted after an agent restart).
        code: Option<i32>,
        /// Terminating signal, when killed.
        signal: Option<i32>,
        /// Unix seconds when the exit was observed.
        at: u64,
    },
}

/// One started workload instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Unique id.
    pub id: String,
    /// Workload name.
    pub name: WorkloadName,
    /// Image.
    pub digest: Digest,
    /// State.
    pub state: InstanceState,
    /// Limits that could not be enforced, with reasons.
    pub unenforced: Vec<String>,
}

/// Runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The workload could not be started.
    #[error("cannot start {name}: {detail}")]
    Start {
        /// Workload.
        name: String,
        /// Why.
        detail: String,
    },
    /// No such instance.
    #[error("no instance {0}")]
    NotFound(String),
    /// State directory I/O.
    #[error("runtime state {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A way to run workloads.
pub trait Runtime: Send + Sync {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;
    /// Starts an instance.
    fn start(&self, spec: &WorkloadSpec) -> Result<Instance, RuntimeError>;
    /// Stops an instance: SIGTERM to its process group, SIGKILL after `grace`. Idempotent.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Every instance known, alive or exited and not yet removed, also across agent restarts.
    fn list(&self) -> Result<Vec<Instance>, RuntimeError>;
    /// Forgets an exited instance.
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// The command that runs `argv` in an instance's context, for exec health checks. By
    /// default a host process with the image root as its working directory.
    fn exec_command(&self, _id: &str, rootfs: &Path, argv: &[String]) -> std::process::Command {
        host_exec(rootfs, argv)
    }
}

/// `argv` as a host process in `rootfs` (a relative program resolves inside it).
pub fn host_exec(rootfs: &Path, argv: &[String]) -> std::process::Command {
    let cmd0 = argv.first().map(String::as_str).unwrap_or("/bin/false");
    let program = if Path::new(cmd0).is_absolute() {
        PathBuf::from(cmd0)
    } else {
        rootfs.join(cmd0)
    };
    let mut c = std::process::Command::new(program);
    c.args(argv.iter().skip(1)).current_dir(rootfs);
    c
}

/// A new instance id: name, image and start time, plus a counter so two instances of one
/// workload started in the same millisecond (function instances scaling up) never share one.
pub fn new_instance_id(name: &WorkloadName, digest: &Digest) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{millis}-{n}", &digest.hex()[..12])
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
