//! The API's rollout request and response bodies, shared by the handlers, the service and
//! `fleetctl`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::controller::{Health, Stage};
use super::plan::{Budget, OfflineAfterDeadline, OnFailure, PhaseSpec, Plan};

/// `POST /api/v1/rollouts`: a release staged over a group, a selector or devices (exactly
/// one), with a preset or custom phases; the gate settings given apply to every phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutIn {
    /// Release id.
    pub release: u64,
    /// Target group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Target selector `k=v,...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Target devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Deployment priority (highest matching wins; overlapping rollouts resolve by it).
    #[serde(default)]
    pub priority: i64,
    /// `canary` (1 device, 10 %, 50 %, 100 %) or `all`; default `canary` unless `phases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Custom phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<PhaseSpec>>,
    /// Bake time of every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_secs: Option<u64>,
    /// Success threshold of every phase (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_pct: Option<u8>,
    /// Failure threshold of every phase (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_pct: Option<u8>,
    /// Devices finished before a failure threshold applies, every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_finished: Option<u32>,
    /// Devices updating at once, every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Every phase after the first waits for an operator's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<bool>,
    /// Disruption budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// What a tripped failure threshold does (`pause`, `rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// How long offline devices of a phase count as pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_deadline_secs: Option<u64>,
    /// What they count as after it (`skip`, `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_after_deadline: Option<OfflineAfterDeadline>,
    /// A URL that receives a signed JSON event when the rollout pauses, rolls back, waits for
    /// approval or completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// `POST /api/v1/rollouts` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutCreated {
    /// Rollout id.
    pub id: u64,
    /// The deployment it stages.
    pub deployment: u64,
    /// The secret webhook events are signed with (HMAC-SHA256), shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// A rollout at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutSummary {
    /// Id.
    pub id: u64,
    /// Deployment.
    pub deployment: u64,
    /// Release id.
    pub release: u64,
    /// Where it stands.
    pub stage: Stage,
    /// Phases in the plan.
    pub phases: u32,
    /// Devices admitted so far.
    pub admitted: u64,
    /// Creation time.
    pub created_at: u64,
}

/// One device behind a count.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutDevice {
    /// Id.
    pub id: String,
    /// Its update.
    pub health: Health,
    /// Issued the release.
    pub admitted: bool,
    /// Connected now.
    pub online: bool,
    /// Last message from it (freshness: nothing stale reads as in progress).
    pub last_seen: Option<u64>,
    /// Waiting for its maintenance window.
    pub deferred: bool,
}

/// One phase: counts and the devices behind them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PhaseStatus {
    /// Index.
    pub phase: u32,
    /// Devices assigned to it (present now).
    pub devices: u64,
    /// Not issued the release yet.
    pub pending: u64,
    /// Issued, not converged yet.
    pub updating: u64,
    /// Updated and healthy.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Offline now.
    pub offline: u64,
    /// The devices.
    pub members: Vec<RolloutDevice>,
}

/// `GET /api/v1/rollouts/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutStatus {
    /// The summary.
    pub rollout: RolloutSummary,
    /// The plan.
    pub plan: Plan,
    /// Per phase.
    pub phases: Vec<PhaseStatus>,
    /// When the current phase started.
    pub phase_started_at: u64,
}

/// One deployment that targets a device, and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Candidate {
    /// Deployment.
    pub deployment: u64,
    /// Release id.
    pub release: u64,
    /// Release name and version.
    pub release_name: Option<String>,
    /// Priority.
    pub priority: i64,
    /// How it targets the device (group, selector, device list).
    pub target: String,
    /// The rollout staging it, if any.
    pub rollout: Option<u64>,
    /// The device's phase in that rollout.
    pub phase: Option<u32>,
    /// Why it gives the device its state, or why not.
    pub verdict: String,
}

/// `GET /api/v1/devices/{id}/explain`: why a device runs what it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Explanation {
    /// Device.
    pub device: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The deployment that gives it its state, if any.
    pub deployment: Option<u64>,
    /// That deployment's release (name and version).
    pub release: Option<String>,
    /// The rollout phase it was admitted in, when staged.
    pub phase: Option<u32>,
    /// Every deployment targeting it, the winner first.
    pub candidates: Vec<Candidate>,
    /// Where its maintenance window comes from.
    pub maintenance_window: Option<String>,
    /// Revision of the state the hub holds for it.
    pub desired_revision: Option<u64>,
    /// Revision it last reported running in full.
    pub applied_revision: Option<u64>,
}

/// One image a device class would download.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageDownload {
    /// Digest.
    pub digest: String,
    /// Bytes on the wire (the stored, compressed blob).
    pub compressed_size: u64,
    /// Devices of the class that would download it.
    pub devices: u64,
    /// Of which would take a delta the hub has already made (from the image the same
    /// workload runs now); the others are counted at the full blob.
    pub delta_devices: u64,
}

/// What a rollout would change on one device class (profile).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClassPreview {
    /// Profile.
    pub profile: String,
    /// Devices of the class the rollout would take.
    pub devices: u64,
    /// Of which already run exactly the release.
    pub unchanged: u64,
    /// Workloads added, changed or removed on some device of the class.
    pub workloads_changed: Vec<String>,
    /// Bytes the class would download in all: made deltas where there are, else full blobs.
    pub download_bytes: u64,
    /// The images behind them.
    pub images: Vec<ImageDownload>,
}

/// A device the rollout could not take.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Unfit {
    /// Device.
    pub device: String,
    /// Why.
    pub reason: String,
}

/// `POST /api/v1/rollouts/preview`: what the rollout would change; nothing is stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// Devices it would take.
    pub devices: u64,
    /// How many each phase would take.
    pub phases: Vec<u64>,
    /// Per device class.
    pub classes: Vec<ClassPreview>,
    /// Devices that cannot take it (creating the rollout would be refused while any is left).
    pub unfit: Vec<Unfit>,
}
