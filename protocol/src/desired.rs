//! The desired state of one device (DESIGN §3.3): everything it should run, never a diff.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::function::Function;
use crate::ids::{DeviceId, Digest, WorkloadName};
use crate::limits::*;
use crate::profile::Arch;
use crate::schedule::{CronExpr, MaintenanceWindow};

/// The `kind` of a desired state payload.
pub const KIND_DESIRED_STATE: &str = "DesiredState";

/// One device's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Always [`KIND_DESIRED_STATE`]: a signed document names its kind so it cannot be replayed
    /// as another kind.
    pub kind: String,
    /// The device this state is for.
    pub device: DeviceId,
    /// Strictly increasing per device (the hub uses one fleet-wide counter).
    pub revision: u64,
    /// When the hub signed it (unix seconds).
    pub issued_at: u64,
    /// After this instant the state is no longer accepted on arrival (unix seconds). An accepted
    /// state keeps running past it; the device then reports itself stale.
    pub expires_at: u64,
    /// What to run.
    pub workloads: Vec<Workload>,
    /// When swaps may happen; `None` means any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceWindow>,
    /// Which release and rollout produced this state (informational, reported back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRef>,
}

/// The release and rollout a desired state belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRef {
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Deployment id at the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// Rollout phase index, when staged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<u32>,
}

/// An image reference: digest and size are both signed, so a server can neither substitute
/// content nor stream without end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// SHA-256 of the uncompressed tar.
    pub digest: Digest,
    /// Exact size of the uncompressed tar, in bytes.
    pub size: u64,
    /// Architecture the image is built for.
    pub arch: Arch,
}

/// How a workload is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A host process with the unpacked image as its working root.
    Process,
    /// An OCI container driven through the OCI runtime CLI (runc or crun).
    Oci,
}

impl RuntimeKind {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Oci => "oci",
        }
    }
}

/// What to do when a workload exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// Resource limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes/threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// How health is probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Probe {
    /// Run a command inside the workload's root; exit 0 is healthy.
    Exec {
        /// Argument vector.
        command: Vec<String>,
    },
    /// `GET http://127.0.0.1:{port}{path}`; a 2xx or 3xx status is healthy.
    Http {
        /// Local port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
    },
    /// A TCP connect to `127.0.0.1:{port}` succeeds.
    Tcp {
        /// Local port.
        port: u16,
    },
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The probe.
    pub probe: Probe,
    /// Seconds between probes.
    pub interval_secs: u64,
    /// Seconds before one probe counts as failed.
    pub timeout_secs: u64,
    /// Consecutive failures before the workload is unhealthy.
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    #[serde(default)]
    pub start_period_secs: u64,
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Unique within the desired state.
    pub name: WorkloadName,
    /// Image to run.
    pub image: ImageRef,
    /// Runtime.
    pub runtime: RuntimeKind,
    /// Entrypoint and arguments; the first element is resolved inside the image root when it is
    /// a relative path.
    pub command: Vec<String>,
    /// Environment.
    #[serde(
        default,
        deserialize_with = "crate::json::unique_string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Resources,
    /// Restart policy (ignored for jobs, which run once per firing).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Health check; without one a workload is healthy while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// When set, the workload is a job run at each firing rather than a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<CronExpr>,
    /// After an update, how long the new version has to become healthy before the device swaps
    /// back to the previous one.
    #[serde(default = "default_health_deadline")]
    pub health_deadline_secs: u64,
    /// After an update, how long the new version is watched: an exit, or a failed health check
    /// once it was healthy, inside this window fails the update and swaps back. 0 turns the
    /// watch off (the update is proven once healthy). Left out of the document at its default,
    /// so documents that do not change it read the same to agents that predate it.
    #[serde(
        default = "default_stability_window",
        skip_serializing_if = "is_default_stability_window"
    )]
    pub stability_window_secs: u64,
    /// When set, the workload is a function: started on demand by its triggers, never as a
    /// service (`function.rs`). Left out of documents without one, which read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<Function>,
}

/// The stability window a workload gets when its definition names none: one minute, like the
/// watch greenboot keeps after an update.
pub const DEFAULT_STABILITY_WINDOW_SECS: u64 = 60;

fn default_health_deadline() -> u64 {
    60
}

fn default_stability_window() -> u64 {
    DEFAULT_STABILITY_WINDOW_SECS
}

fn is_default_stability_window(v: &u64) -> bool {
    *v == DEFAULT_STABILITY_WINDOW_SECS
}

fn check_str(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} longer than {max} bytes"));
    }
    if s.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

fn check_command(what: &str, cmd: &[String]) -> Result<(), String> {
    if cmd.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if cmd.len() > MAX_COMMAND_ARGS {
        return Err(format!("{what} has more than {MAX_COMMAND_ARGS} arguments"));
    }
    for a in cmd {
        check_str(what, a, MAX_STRING_BYTES)?;
    }
    Ok(())
}

fn check_secs(what: &str, v: u64, min: u64) -> Result<(), String> {
    if v < min || v > MAX_DURATION_SECS {
        return Err(format!("{what} must be {min}..={MAX_DURATION_SECS} s"));
    }
    Ok(())
}

fn is_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl HealthCheck {
    fn validate(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Exec { command } => check_command("health command", command)?,
            Probe::Http { port, path } => {
                if *port == 0 {
                    return Err("health port must be non-zero".into());
                }
                check_str("health path", path, MAX_NAME_BYTES * 4)?;
                if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err("health path must start with '/' and have no spaces".into());
                }
            }
            Probe::Tcp { port } => {
                if *port == 0 {
                    return Err("health port must be non-zero".into());
                }
            }
        }
        check_secs("health interval", self.interval_secs, 1)?;
        check_secs("health timeout", self.timeout_secs, 1)?;
        check_secs("health start period", self.start_period_secs, 0)?;
        if self.retries == 0 || self.retries > MAX_HEALTH_RETRIES {
            return Err(format!("health retries must be 1..={MAX_HEALTH_RETRIES}"));
        }
        Ok(())
    }
}

impl Workload {
    /// Checks every field against its limits.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.name.as_str();
        let ctx = |e: String| format!("workload {n}: {e}");
        if self.image.size == 0 || self.image.size > MAX_IMAGE_BYTES {
            return Err(ctx(format!(
                "image size must be 1..={MAX_IMAGE_BYTES} bytes"
            )));
        }
        check_command("command", &self.command).map_err(ctx)?;
        if self.env.len() > MAX_ENV_ENTRIES {
            return Err(ctx(format!("more than {MAX_ENV_ENTRIES} env entries")));
        }
        for (k, v) in &self.env {
            if k.len() > MAX_NAME_BYTES || !is_env_name(k) {
                return Err(ctx(format!("bad env name {:?}", truncate(k))));
            }
            check_str("env value", v, MAX_STRING_BYTES).map_err(ctx)?;
        }
        if let Some(c) = self.resources.cpu_millis {
            if c == 0 || c > 1_024_000 {
                return Err(ctx("cpu_millis must be 1..=1024000".into()));
            }
        }
        if let Some(m) = self.resources.memory_bytes {
            if m < 1024 * 1024 {
                return Err(ctx("memory_bytes must be at least 1 MiB".into()));
            }
        }
        if self.resources.pids == Some(0) {
            return Err(ctx("pids must be at least 1".into()));
        }
        if let Some(h) = &self.health {
            h.validate().map_err(ctx)?;
        }
        check_secs("health deadline", self.health_deadline_secs, 1).map_err(ctx)?;
        check_secs("stability window", self.stability_window_secs, 0).map_err(ctx)?;
        if let Some(f) = &self.function {
            if self.schedule.is_some() || self.health.is_some() {
                return Err(ctx(
                    "a function takes no schedule or health check (use a cron trigger; an \
                     instance is ready when its port accepts)"
                        .into(),
                ));
            }
            if f.mode == crate::function::FunctionMode::Stdio
                && self.runtime != RuntimeKind::Process
            {
                return Err(ctx("a stdio function runs on the process runtime".into()));
            }
            f.validate().map_err(ctx)?;
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

impl DesiredState {
    /// Checks every field against its limits (kind, uniqueness, sizes, ranges).
    pub fn validate(&self) -> Result<(), String> {
        if self.kind != KIND_DESIRED_STATE {
            return Err(format!("kind must be {KIND_DESIRED_STATE}"));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires_at must be after issued_at".into());
        }
        if self.expires_at - self.issued_at > MAX_STATE_LIFETIME_SECS {
            return Err(format!("lifetime longer than {MAX_STATE_LIFETIME_SECS} s"));
        }
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(format!("more than {MAX_WORKLOADS} workloads"));
        }
        let mut names = BTreeSet::new();
        for w in &self.workloads {
            if !names.insert(w.name.as_str()) {
                return Err(format!("duplicate workload name {}", w.name));
            }
            w.validate()?;
        }
        crate::function::check_functions(&self.workloads)?;
        if let Some(m) = &self.maintenance {
            m.validate()?;
        }
        if let Some(r) = &self.rollout {
            check_str("release name", &r.release, MAX_NAME_BYTES)?;
            check_str("release version", &r.version, MAX_NAME_BYTES)?;
        }
        Ok(())
    }

    /// Whether `now` is inside the maintenance window (always, without one).
    pub fn may_swap_at(&self, now: u64) -> bool {
        self.maintenance.as_ref().is_none_or(|m| m.is_open(now))
    }
}
