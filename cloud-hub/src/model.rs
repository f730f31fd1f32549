//! Plain data the services and the store share: devices, groups, images, releases,
//! deployments, tokens, audit entries. No I/O and no SQL; the store depends on this module,
//! never the other way round.

use std::collections::BTreeMap;

use protocol::{MaintenanceWindow, Presence, StatusReport, Workload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// API roles, ordered by power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Deploys and manages devices.
    Operator,
    /// Everything, including tokens.
    Admin,
}

impl Role {
    /// The lower-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (viewer, operator, admin)")),
        }
    }
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Name given at creation.
    pub name: String,
    /// Role.
    pub role: Role,
    /// What the token is narrowed to within its role.
    #[serde(default)]
    pub scope: TokenScope,
}

/// A narrowing of an API token within its role. Reads stay governed by the role alone; the
/// scope restricts changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct TokenScope {
    /// The only changing actions allowed (audit names, e.g. `release.create`); none: every
    /// action the role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// The only groups it may deploy to or change; none: the whole fleet. A group-scoped token
    /// may target only these groups by name (no selectors, no device lists, no device changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

impl TokenScope {
    /// Whether nothing is narrowed.
    pub fn is_whole(&self) -> bool {
        self.actions.is_none() && self.groups.is_none()
    }
}

/// The changing actions a token scope may name (the audited names of the routes that change
/// something).
pub const SCOPED_ACTIONS: &[&str] = &[
    "device.delete",
    "device.labels",
    "device.maintenance",
    "group.put",
    "group.maintenance",
    "group.delete",
    "image.import",
    "image.delete",
    "release.create",
    "release.delete",
    "deployment.create",
    "deployment.delete",
    "rollout.create",
    "rollout.command",
    "enroll_token.create",
    "token.create",
    "token.revoke",
    "trust.reload",
];

/// An API token as listed (never its secret or hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ApiTokenRow {
    /// Id (for `DELETE /api/v1/tokens/{id}`).
    pub id: u64,
    /// Name given at creation.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Narrowing within the role.
    pub scope: TokenScope,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which it is refused, if it expires.
    pub expires_at: Option<u64>,
    /// Unix seconds when it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// A device as the registry sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeviceRow {
    /// Id.
    pub id: String,
    /// Profile name.
    pub profile: String,
    /// Architecture.
    pub arch: String,
    /// Runtimes reported at enrollment (`process`, `oci`).
    #[schema(value_type = Vec<String>)]
    pub runtimes: Vec<protocol::RuntimeKind>,
    /// Agent version.
    pub agent_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Enrollment time.
    pub enrolled_at: u64,
    /// Last message from the device.
    pub last_seen: Option<u64>,
    /// Presence with epoch (`state`, `epoch`, `time`).
    #[schema(value_type = Option<Object>)]
    pub presence: Option<Presence>,
    /// Latest status report (`applied_revision`, `convergence`, workloads, …).
    #[schema(value_type = Option<Object>)]
    pub status: Option<StatusReport>,
    /// Revision of the desired state the hub holds for it.
    pub desired_revision: Option<u64>,
    /// The device's own maintenance window (it wins over its groups').
    #[serde(default)]
    #[schema(value_type = Option<MaintenanceWindowSchema>)]
    pub maintenance: Option<MaintenanceWindow>,
    /// What the hub refused from the device at ingest (over its rate limit) since the hub
    /// started; the device resends what it still holds.
    #[serde(default)]
    pub ingest_refused: Refused,
    /// Its image pulls as it reported them: full blobs, deltas, bytes saved.
    #[serde(default)]
    pub pulls: PullTotals,
}

/// Image pulls summed from devices' `image_pulled` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullTotals {
    /// Images made from the full blob.
    pub full: u64,
    /// Images made from a delta.
    pub delta: u64,
    /// Full-blob pulls after a delta was tried and given up (404, corrupt, wrong base, …).
    pub fallbacks: u64,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// Bytes the deltas saved against the full blobs.
    pub bytes_saved: u64,
}

impl PullTotals {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PullTotals) {
        self.full += other.full;
        self.delta += other.delta;
        self.fallbacks += other.fallbacks;
        self.bytes_fetched += other.bytes_fetched;
        self.bytes_saved += other.bytes_saved;
    }
}

/// What the hub refused from one device since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refused {
    /// Messages dropped over the device's rate limit (never acked; an agent resends).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The OpenAPI schema of `protocol::MaintenanceWindow`, the body that sets a window (the
/// document's only use of it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceWindowSchema {
    /// When the window opens: a cron expression with seconds, UTC.
    #[schema(example = "0 0 3 * * *")]
    pub cron: String,
    /// How long it stays open, 1 s to one week.
    pub duration_secs: u64,
}

/// A device being enrolled, with its broker password already hashed.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Id.
    pub id: protocol::DeviceId,
    /// Its public key (base64).
    pub public_key: String,
    /// Salted hash of the broker password.
    pub password_hash: String,
    /// The salt.
    pub password_salt: String,
    /// Profile name.
    pub profile: String,
    /// Architecture.
    pub arch: protocol::Arch,
    /// Runtimes it reported.
    pub runtimes: Vec<protocol::RuntimeKind>,
    /// Agent version.
    pub agent_version: String,
    /// Labels it proposed (the token's labels win).
    pub labels: BTreeMap<String, String>,
}

/// A group: a static member list, a label selector, or both (union).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct GroupRow {
    /// Name.
    pub name: String,
    /// Labels a device must all carry.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Explicit members.
    #[serde(default)]
    pub members: Vec<String>,
    /// Maintenance window of the group's devices (a device's own window wins).
    #[serde(default)]
    #[schema(value_type = Option<MaintenanceWindowSchema>)]
    pub maintenance: Option<MaintenanceWindow>,
}

/// An imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ImageRow {
    /// `sha256:…` of the uncompressed tar.
    pub digest: String,
    /// Name given at import.
    pub name: String,
    /// Uncompressed size.
    pub size: u64,
    /// Stored (zstd) size.
    pub compressed_size: u64,
    /// Architecture.
    #[schema(value_type = String, example = "aarch64")]
    pub arch: protocol::Arch,
    /// Import time.
    pub created_at: u64,
}

/// A release: a named, versioned set of workloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReleaseRow {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Workloads, images resolved (the signed state's `Workload`).
    #[schema(value_type = Vec<Object>)]
    pub workloads: Vec<Workload>,
    /// Creation time.
    pub created_at: u64,
}

/// What a deployment aims at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A named group.
    Group(String),
    /// Devices carrying all these labels.
    Selector(BTreeMap<String, String>),
    /// Explicit device ids.
    Devices(Vec<String>),
}

/// A deployment: a release aimed at a group, a selector or devices, with a priority.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeploymentRow {
    /// Id (newer is larger).
    pub id: u64,
    /// Release.
    pub release_id: u64,
    /// Target.
    pub target: Target,
    /// Priority: the highest matching deployment wins.
    pub priority: i64,
    /// Creation time.
    pub created_at: u64,
    /// Pulls of its release's images by the devices it wins on (bytes saved by deltas).
    #[serde(default)]
    pub pulls: PullTotals,
}

/// Which of a deployment's devices a staged rollout lets the release reach (the controller's
/// state, as the desired-state computation needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutGate {
    /// Every device (the rollout completed).
    Open,
    /// These devices, with the phase each was admitted in.
    Only(BTreeMap<String, u32>),
    /// None (the rollout was rolled back).
    Closed,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AuditEntry {
    /// Position.
    pub id: u64,
    /// Unix seconds.
    pub time: u64,
    /// Who (token name, or `device:<id>`, or `hub`).
    pub actor: String,
    /// What (e.g. `deployment.create`).
    pub action: String,
    /// On what.
    pub target: String,
    /// Details (JSON text).
    pub detail: String,
    /// `ok` or `denied: …` or `error: …`.
    pub outcome: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Everything the hub publishes retained, as data (the publisher names the topics).
#[derive(Debug, Clone, Default)]
pub struct RetainedState {
    /// The signed trust document.
    pub trust: Option<Vec<u8>>,
    /// Each device's signed desired state.
    pub desired: Vec<(protocol::DeviceId, Vec<u8>)>,
    /// Each device's highest acknowledged event sequence.
    pub acks: Vec<(protocol::DeviceId, u64)>,
}

/// Parses `k=v,k2=v2` into a selector.
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// The one bound on labels wherever they enter (enrollment tokens, enrollment, an operator's
/// `set_labels`, group and deployment selectors): at most `MAX_LABELS` pairs, keys 1-128 bytes,
/// values up to 256, no control characters.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > protocol::limits::MAX_LABELS {
        return Err(format!(
            "{} labels, more than {}",
            labels.len(),
            protocol::limits::MAX_LABELS
        ));
    }
    for (k, v) in labels {
        let shown: String = k.chars().take(40).collect();
        if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES {
            return Err(format!(
                "label key {shown:?} must be 1-{MAX_LABEL_KEY_BYTES} bytes"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(format!(
                "label {shown:?}: value longer than {MAX_LABEL_VALUE_BYTES} bytes"
            ));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(format!("label {shown:?} holds a control character"));
        }
    }
    Ok(())
}

/// Parses a selector `k=v,k2=v2` (bounded like labels, [`check_labels`]).
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("selector term {part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("selector term {part:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    if out.is_empty() {
        return Err("empty selector".into());
    }
    check_labels(&out).map_err(|e| format!("selector: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_strictly() {
        assert_eq!(parse_selector("a=1, b=2").expect("ok").len(), 2);
        assert!(parse_selector("a").is_err());
        assert!(parse_selector("=1").is_err());
        assert!(parse_selector("").is_err());
        assert!(parse_selector(&format!("a={}", "x".repeat(MAX_LABEL_VALUE_BYTES + 1))).is_err());
        let many: Vec<String> = (0..=protocol::limits::MAX_LABELS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert!(parse_selector(&many.join(",")).is_err());
    }

    #[test]
    fn labels_are_bounded_in_count_size_and_characters() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(check_labels(&one("site", "north")).is_ok());
        assert!(check_labels(&one("", "x")).is_err());
        assert!(check_labels(&one(&"k".repeat(MAX_LABEL_KEY_BYTES + 1), "x")).is_err());
        assert!(check_labels(&one("k", &"v".repeat(MAX_LABEL_VALUE_BYTES + 1))).is_err());
        assert!(check_labels(&one("k", "a\nb")).is_err());
        let many: BTreeMap<String, String> = (0..=protocol::limits::MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(check_labels(&many).is_err());
    }
}

/// The fleet at a glance (`GET /api/v1/fleet/summary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FleetSummary {
    /// Enrolled devices.
    pub devices: u64,
    /// Devices with a signed desired state stored (and published).
    pub with_state: u64,
    /// Devices marked for the publisher whose state is not computed and published yet.
    pub publish_pending: u64,
    /// Devices whose last presence is online.
    pub online: u64,
    /// Devices whose last report says converged on the revision the hub holds for them.
    pub converged: u64,
    /// Devices whose last report says their last update failed.
    pub failed: u64,
    /// Devices whose last report says their state is past its expiry.
    pub stale: u64,
}

/// A decoded device report, as the ingest hands it to the store (the device id comes from the
/// topic the device published on).
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A status snapshot.
    Status(protocol::DeviceId, StatusReport),
    /// A batch of events.
    Events(protocol::DeviceId, Vec<protocol::Event>),
    /// A presence change.
    Presence(protocol::DeviceId, Presence),
}

impl Inbound {
    /// The device that sent it.
    pub fn device(&self) -> &protocol::DeviceId {
        match self {
            Inbound::Status(d, _) | Inbound::Events(d, _) | Inbound::Presence(d, _) => d,
        }
    }
}

/// What storing one [`Inbound`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The device is not enrolled; nothing was stored.
    UnknownDevice,
    /// The status replaced the held one.
    Status,
    /// The events are stored; `acked` is the highest contiguous sequence now held.
    Events {
        /// What to ack.
        acked: u64,
    },
    /// Presence was kept when it superseded the held one.
    Presence {
        /// Whether it did.
        changed: bool,
    },
}
