//! The HTTP API's request and response bodies, shared by the handlers, the services they call
//! and `fleetctl`, so the three cannot drift apart. (Listings answer with the
//! [`crate::model`] types themselves.)

use crate::images::ImageConfig;
use crate::model::ImageRow;
use std::collections::BTreeMap;

use protocol::{
    CronExpr, Digest, HealthCheck, Resources, RestartPolicy, RuntimeKind, Workload, WorkloadName,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{ApiTokenRow, Role, Target};

/// `PUT /api/v1/groups/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupIn {
    /// Label selector, `k=v,k2=v2`.
    #[serde(default)]
    pub selector: Option<String>,
    /// Explicit members.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `PUT /api/v1/devices/{id}/labels` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelsSet {
    /// The device.
    pub device: String,
    /// Its labels now.
    pub labels: BTreeMap<String, String>,
}

/// `PUT /api/v1/{devices|groups}/{name}/maintenance` answer (and `DELETE`'s, with no window).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceSet {
    /// The device or group.
    pub name: String,
    /// Its window now.
    #[schema(value_type = Option<MaintenanceWindowSchema>)]
    pub maintenance: Option<protocol::MaintenanceWindow>,
    /// How many devices were marked for the publisher, which signs and publishes their new
    /// states in the background (`GET /api/v1/fleet/summary` shows `publish_pending`).
    pub marked: u64,
}

/// Query of `POST /api/v1/images` (the archive is the body).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportQuery {
    /// Image name.
    pub name: String,
    /// Architecture or platform: `aarch64`/`arm64`, `armv7`/`arm/v7`, `x86_64`/`amd64`,
    /// `riscv64`, optionally `linux/…` (default: the image's own, else the hub's).
    #[schema(example = "arm64")]
    pub arch: Option<String>,
    /// `tar`, `docker` or `oci`; detected from the archive when left out (one given must
    /// match what the archive is).
    pub format: Option<String>,
}

/// `POST /api/v1/images` answer: the image record, the format it was read as, and the
/// configuration it came with (docker save and OCI images).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportedImage {
    /// The record.
    #[serde(flatten)]
    pub image: ImageRow,
    /// `tar`, `docker` or `oci`.
    pub format: String,
    /// Entrypoint, cmd, env, working dir, user and architecture of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,
}

/// A workload as an operator writes it: the image is named by digest; the hub fills in its
/// size and architecture from the image record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIn {
    /// Name (`[a-z0-9-]`).
    #[schema(value_type = String, example = "sensor")]
    pub name: WorkloadName,
    /// Image digest.
    #[schema(value_type = String, example = "sha256:…")]
    pub image: Digest,
    /// Runtime: `process` (default) or `oci`.
    #[serde(default = "default_runtime")]
    #[schema(value_type = String)]
    pub runtime: RuntimeKind,
    /// Command line (default: the image's entrypoint and cmd).
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment (over the image's own).
    #[serde(default, deserialize_with = "protocol::json::unique_string_map")]
    pub env: BTreeMap<String, String>,
    /// Limits (`memory_bytes`, `cpu_millis`, `pids`, …).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub resources: Resources,
    /// Restart policy: `always` (default), `on-failure` or `never`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub restart: RestartPolicy,
    /// Health check (`probe`, `interval_secs`, `timeout_secs`, `retries`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub health: Option<HealthCheck>,
    /// Run as a job on this cron schedule (with seconds, UTC).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub schedule: Option<CronExpr>,
    /// Seconds to become healthy after a start (default 60).
    #[serde(default)]
    pub health_deadline_secs: Option<u64>,
    /// Seconds after an update during which an exit or a failed health check fails the update
    /// and swaps back (default 60; 0 turns the window off).
    #[serde(default)]
    pub stability_window_secs: Option<u64>,
    /// Makes the workload a function (`triggers`, `min_instances`, `max_instances`,
    /// `concurrency`, `idle_timeout_secs`, `timeout_ms`, `queue_len`, `max_body_bytes`, `mode`;
    /// `docs/FUNCTIONS.md`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub function: Option<protocol::Function>,
}

fn default_runtime() -> RuntimeKind {
    RuntimeKind::Process
}

/// `POST /api/v1/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseIn {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Workloads.
    pub workloads: Vec<WorkloadIn>,
}

/// `POST /api/v1/releases` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseCreated {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Workloads, images resolved (the signed state's `Workload`).
    #[schema(value_type = Vec<Object>)]
    pub workloads: Vec<Workload>,
}

/// `POST /api/v1/deployments`: exactly one of `group`, `selector`, `devices`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentIn {
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
    /// Priority (highest matching wins).
    #[serde(default)]
    pub priority: i64,
}

/// `POST /api/v1/deployments` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentCreated {
    /// Id.
    pub id: u64,
    /// How many devices were marked for the publisher, which signs and publishes their new
    /// states in the background (`GET /api/v1/fleet/summary` shows `publish_pending`).
    pub marked: u64,
}

/// `DELETE /api/v1/deployments/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDeleted {
    /// Id.
    pub deleted: u64,
    /// How many devices were marked for the publisher, which signs and publishes their new
    /// states in the background (`GET /api/v1/fleet/summary` shows `publish_pending`).
    pub marked: u64,
}

/// Audit record of a created deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentAudit {
    /// Release id.
    pub release: u64,
    /// Target.
    pub target: Target,
    /// Priority.
    pub priority: i64,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    /// `api` (admin) or `enroll` (operator).
    pub kind: String,
    /// API token name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// API token role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Labels given to the enrolling device.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Validity: enrollment tokens default to one day, API tokens to no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// API token: the only changing actions it may take (e.g. `release.create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// API token: the only groups it may deploy to or change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

/// `DELETE /api/v1/groups/{name}` and `/releases/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The name or id deleted.
    pub deleted: String,
}

/// `DELETE /api/v1/images/{digest}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageDeleted {
    /// The image deleted (its blob too).
    pub digest: String,
    /// How many cached deltas from or to it were removed.
    pub deltas_removed: u64,
}

/// `DELETE /api/v1/devices/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceDeleted {
    /// The device.
    pub id: String,
    /// How many live broker sessions of it were dropped.
    pub sessions_dropped: u64,
}

/// `DELETE /api/v1/tokens/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    /// The token as it now is.
    pub token: ApiTokenRow,
}

/// `POST /api/v1/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// The secret, shown once.
    pub token: String,
}

/// Paging of events (`limit`, `before`) and audit entries (`limit`, `after`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Page {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Events below this sequence.
    pub before: Option<u64>,
    /// Audit entries after this id.
    pub after: Option<u64>,
}

/// `GET /api/v1/audit/verify` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerified {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Entries checked, when intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The first entry whose hash does not hold, when broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_entry: Option<u64>,
}

/// `POST /api/v1/trust/reload` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrustReloaded {
    /// Trust version now served.
    pub version: u64,
    /// `(device, revision)` of every state re-signed.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub resigned: Vec<(String, u64)>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable code, for a program.
    pub code: String,
}
