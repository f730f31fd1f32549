//! What devices send back (DESIGN §3.5): status snapshots, sequence-numbered events, and the
//! hub's acks and presence.

use serde::{Deserialize, Serialize};

use crate::desired::RuntimeKind;
use crate::error::DecodeError;
use crate::ids::{DeviceId, Digest, WorkloadName};
use crate::json::decode_limited;
use crate::limits::{
    MAX_EVENTS_PER_BATCH, MAX_REPORT_BYTES, MAX_STATUS_WORKLOADS, MAX_STRING_BYTES,
};
use crate::profile::Arch;

/// Where a device stands with respect to its desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convergence {
    /// No desired state yet.
    Idle,
    /// Working towards the accepted desired state (pulling, starting, on probation).
    Converging,
    /// Waiting for the maintenance window or an application's update hold.
    Deferred,
    /// Running exactly the accepted desired state, healthy.
    Converged,
    /// The last update failed; the device runs the previous release.
    Failed,
}

/// The state of one workload as the device observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadPhase {
    /// Image not yet present.
    Pulling,
    /// Started, health not yet known.
    Starting,
    /// Running and healthy (or running with no health check).
    Running,
    /// Running but failing its health check.
    Unhealthy,
    /// Exited; waiting for a restart.
    BackingOff,
    /// Restarted too often in a short time.
    CrashLoop,
    /// Exited and will not be restarted (policy or finished job).
    Exited,
    /// A job waiting for its next firing.
    Scheduled,
}

/// One workload in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Name.
    pub name: WorkloadName,
    /// Image digest it runs (or is pulling).
    pub digest: Digest,
    /// Phase.
    pub phase: WorkloadPhase,
    /// Restarts since the workload (this version) was first started.
    pub restarts: u32,
    /// Limits the host could not enforce (e.g. no cgroup delegation), named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced: Vec<String>,
}

/// One function's counters since the agent started (DESIGN §3.3 functions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionStats {
    /// Function (workload) name.
    pub name: WorkloadName,
    /// Events delivered to an instance.
    pub invocations: u64,
    /// Instances started for an event that found none free.
    pub cold_starts: u64,
    /// Invocations that failed: the instance answered 5xx, could not be reached, or timed out.
    pub errors: u64,
    /// Of the errors, those killed at their timeout.
    pub timeouts: u64,
    /// Events refused because the queue was full.
    pub queue_drops: u64,
    /// Instances running now.
    pub instances: u32,
}

/// A full status snapshot; the latest wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Reporting device.
    pub device: DeviceId,
    /// Device time of the snapshot (unix seconds).
    pub time: u64,
    /// Agent version.
    pub agent_version: String,
    /// Device architecture.
    pub arch: Arch,
    /// Runtimes the agent actually found.
    pub runtimes: Vec<RuntimeKind>,
    /// Revision of the accepted desired state.
    pub desired_revision: Option<u64>,
    /// Revision the device currently runs in full.
    pub applied_revision: Option<u64>,
    /// Convergence.
    pub convergence: Convergence,
    /// The accepted state is past its `expires_at` (device kept running it offline).
    #[serde(default)]
    pub stale: bool,
    /// Version of the trust the device holds.
    pub trust_version: u64,
    /// Workloads.
    pub workloads: Vec<WorkloadStatus>,
    /// Events dropped from the outbox since enrollment (budget exhausted).
    #[serde(default)]
    pub events_dropped: u64,
    /// Last rejection, as `code: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    /// Function counters; absent when the device runs no function, so reports read as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionStats>,
}

impl FunctionStats {
    /// Zero counters for `name`.
    pub fn new(name: WorkloadName) -> Self {
        Self {
            name,
            invocations: 0,
            cold_starts: 0,
            errors: 0,
            timeouts: 0,
            queue_drops: 0,
            instances: 0,
        }
    }
}

impl StatusReport {
    /// Decodes and bounds a status report.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let r: Self = decode_limited(bytes, MAX_REPORT_BYTES)?;
        if r.workloads.len() > MAX_STATUS_WORKLOADS || r.functions.len() > MAX_STATUS_WORKLOADS {
            return Err(DecodeError::Invalid("too many workloads".into()));
        }
        if r.agent_version.len() > 64 {
            return Err(DecodeError::Invalid("agent_version too long".into()));
        }
        Ok(r)
    }
}

/// How precious an event is when the outbox must drop something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Superseded by the next snapshot: compacted first.
    Snapshot,
    /// Useful history (exits, restarts, pulls).
    Info,
    /// Outcomes (accepted, rejected, updated, failed, rolled back): dropped last.
    Outcome,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A desired state was accepted.
    DesiredAccepted {
        /// Its revision.
        revision: u64,
    },
    /// A desired state was rejected; nothing changed.
    DesiredRejected {
        /// [`crate::Rejection::code`].
        code: String,
        /// Human message.
        reason: String,
    },
    /// A trust update was accepted.
    TrustAccepted {
        /// Its version.
        version: u64,
    },
    /// A trust update was rejected; nothing changed.
    TrustRejected {
        /// [`crate::Rejection::code`].
        code: String,
        /// Human message.
        reason: String,
    },
    /// An image was fetched and verified.
    ImagePulled {
        /// Digest.
        digest: Digest,
        /// Bytes transferred in this pull (after resume).
        bytes_fetched: u64,
        /// Fetched as a delta.
        #[serde(default)]
        delta: bool,
        /// The image the delta was applied to (absent for a full blob).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<Digest>,
        /// Bytes the delta saved against the full blob (0 for a full blob).
        #[serde(default, skip_serializing_if = "is_zero")]
        bytes_saved: u64,
        /// Why a delta was tried and given up for the full blob (absent when none was tried
        /// or it worked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<String>,
    },
    /// An image could not be fetched or verified.
    ImagePullFailed {
        /// Digest.
        digest: Digest,
        /// Why.
        error: String,
    },
    /// A workload was started.
    WorkloadStarted {
        /// Workload.
        workload: WorkloadName,
        /// Image.
        digest: Digest,
    },
    /// A workload exited.
    WorkloadExited {
        /// Workload.
        workload: WorkloadName,
        /// Exit code, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// Signal, when killed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// A workload's health changed.
    HealthChanged {
        /// Workload.
        workload: WorkloadName,
        /// Healthy now.
        healthy: bool,
    },
    /// A workload restarts too often and is backed off.
    CrashLoop {
        /// Workload.
        workload: WorkloadName,
        /// Restarts counted.
        restarts: u32,
    },
    /// The device runs the accepted revision in full, healthy.
    UpdateSucceeded {
        /// Revision.
        revision: u64,
    },
    /// An update failed (pull, start or health deadline).
    UpdateFailed {
        /// Revision that failed.
        revision: u64,
        /// Workload that failed, when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workload: Option<WorkloadName>,
        /// Why.
        reason: String,
    },
    /// A workload was swapped back to its previous image.
    RolledBack {
        /// Revision that failed.
        revision: u64,
        /// Workload.
        workload: WorkloadName,
        /// Image it runs again.
        digest: Digest,
    },
    /// The accepted state expired while the device kept running it.
    Stale {
        /// Revision.
        revision: u64,
    },
    /// The outbox had to drop events to stay inside its budget.
    EventsDropped {
        /// How many were dropped in this episode.
        count: u64,
    },
    /// A workload limit could not be enforced on this host.
    LimitUnenforced {
        /// Workload.
        workload: WorkloadName,
        /// What was not enforced and why.
        detail: String,
    },
}

impl EventBody {
    /// Drop priority.
    pub fn priority(&self) -> Priority {
        use EventBody::*;
        match self {
            DesiredAccepted { .. }
            | DesiredRejected { .. }
            | TrustAccepted { .. }
            | TrustRejected { .. }
            | UpdateSucceeded { .. }
            | UpdateFailed { .. }
            | RolledBack { .. }
            | EventsDropped { .. } => Priority::Outcome,
            HealthChanged { .. } | Stale { .. } => Priority::Snapshot,
            _ => Priority::Info,
        }
    }

    /// The snake_case type name.
    pub fn type_name(&self) -> &'static str {
        use EventBody::*;
        match self {
            DesiredAccepted { .. } => "desired_accepted",
            DesiredRejected { .. } => "desired_rejected",
            TrustAccepted { .. } => "trust_accepted",
            TrustRejected { .. } => "trust_rejected",
            ImagePulled { .. } => "image_pulled",
            ImagePullFailed { .. } => "image_pull_failed",
            WorkloadStarted { .. } => "workload_started",
            WorkloadExited { .. } => "workload_exited",
            HealthChanged { .. } => "health_changed",
            CrashLoop { .. } => "crash_loop",
            UpdateSucceeded { .. } => "update_succeeded",
            UpdateFailed { .. } => "update_failed",
            RolledBack { .. } => "rolled_back",
            Stale { .. } => "stale",
            EventsDropped { .. } => "events_dropped",
            LimitUnenforced { .. } => "limit_unenforced",
        }
    }
}

/// One event with its per-device sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Per-device, starting at 1, never reused.
    pub seq: u64,
    /// Device time (unix seconds).
    pub time: u64,
    /// What happened.
    pub body: EventBody,
}

/// A batch of events as published on `events`, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Sending device.
    pub device: DeviceId,
    /// Events in ascending `seq`.
    pub events: Vec<Event>,
}

impl EventBatch {
    /// Decodes and bounds a batch; sequence numbers must be ascending and non-zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: Self = decode_limited(bytes, MAX_REPORT_BYTES)?;
        if b.events.len() > MAX_EVENTS_PER_BATCH {
            return Err(DecodeError::Invalid("too many events in batch".into()));
        }
        let mut last = 0;
        for e in &b.events {
            if e.seq <= last {
                return Err(DecodeError::Invalid(
                    "event seqs must be ascending from 1".into(),
                ));
            }
            last = e.seq;
            let long = match &e.body {
                EventBody::DesiredRejected { reason, .. }
                | EventBody::TrustRejected { reason, .. }
                | EventBody::UpdateFailed { reason, .. } => reason.len(),
                EventBody::ImagePullFailed { error, .. } => error.len(),
                EventBody::ImagePulled {
                    fallback: Some(f), ..
                } => f.len(),
                EventBody::LimitUnenforced { detail, .. } => detail.len(),
                _ => 0,
            };
            if long > MAX_STRING_BYTES {
                return Err(DecodeError::Invalid("event text too long".into()));
            }
        }
        Ok(b)
    }
}

/// The hub's acknowledgement: every event with `seq <= acked` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest contiguous sequence stored at the hub.
    pub acked: u64,
}

impl Ack {
    /// Decodes an ack.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_limited(bytes, 1024)
    }
}

/// Online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    /// Connected.
    Online,
    /// Disconnected (normally the last will).
    Offline,
}

/// A presence message. `epoch` grows with every connection the agent makes (persisted), so the
/// hub keeps the message with the highest epoch and a late will from an old connection never
/// overwrites a newer `online`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// State.
    pub state: PresenceState,
    /// Connection epoch.
    pub epoch: u64,
}

impl Presence {
    /// Decodes a presence message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_limited(bytes, 1024)
    }

    /// Whether `self` should replace `held` (higher epoch, or same epoch going offline).
    pub fn supersedes(&self, held: &Presence) -> bool {
        self.epoch > held.epoch
            || (self.epoch == held.epoch
                && self.state == PresenceState::Offline
                && held.state == PresenceState::Online)
    }
}
