//! `protocol`: the contracts between the fleet hub and its agents, as pure types and functions.
//!
//! # Layout
//! - [`ids`]: validated identifiers (`DeviceId`, `WorkloadName`, `Digest`, `KeyId`).
//! - [`keys`], [`envelope`]: Ed25519 keys and the signed envelope (DESIGN §3.1).
//! - [`trust`]: root and online keys, `TrustUpdate`, [`accept_trust_update`] (§3.2).
//! - [`desired`], [`accept`]: `DesiredState` and [`accept_desired_state`] (§3.3).
//! - [`function`]: the function part of a workload (triggers, scaling), its topic rule.
//! - [`report`]: status, events, acks, presence (§3.5).
//! - [`topics`]: MQTT topic names and per-device access rules (§3.4).
//! - [`profile`]: device classes and the workload-fit check.
//! - [`enroll`]: enrollment request and response.
//! - [`schedule`]: cron expressions and maintenance windows.
//! - [`limits`]: hard limits for every input.
//! - [`paths`]: symlink chains resolved inside an image root (the hub's import and the agent's
//!   unpack share the rule).
//!
//! # Invariants
//! - Sans-IO: no async runtime, file, socket or clock. Time is always an argument (`now`,
//!   unix seconds). `tests/deps.rs` fails if a runtime, database, HTTP or MQTT crate appears.
//! - Signed payloads are verified as bytes and parsed only after their signatures verify.
//! - Every signed document names its `kind`; an accept function refuses any other kind.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod desired;
pub mod enroll;
pub mod envelope;
pub mod error;
pub mod function;
pub mod ids;
pub mod json;
pub mod keys;
pub mod limits;
pub mod paths;
pub mod profile;
pub mod report;
pub mod schedule;
pub mod topics;
pub mod trust;

pub use accept::{accept_desired_state, Accepted, DesiredOutcome, RevisionFloor};
pub use desired::{
    DesiredState, HealthCheck, ImageRef, Probe, Resources, RestartPolicy, RolloutRef, RuntimeKind,
    Workload, DEFAULT_STABILITY_WINDOW_SECS, KIND_DESIRED_STATE,
};
pub use envelope::Envelope;
pub use error::{DecodeError, InvalidId, Rejection};
pub use function::{check_functions, Function, FunctionMode, Trigger};
pub use ids::{hub_client_id, DeviceId, Digest, KeyId, WorkloadName, HUB_USERNAME};
pub use keys::{KeyPair, PublicKey};
pub use profile::{Arch, DeviceProfile, Misfit, NetworkClass};
pub use report::{
    Ack, Convergence, Event, EventBatch, EventBody, FunctionStats, Presence, PresenceState,
    Priority, StatusReport, WorkloadPhase, WorkloadStatus,
};
pub use schedule::{CronExpr, MaintenanceWindow};
pub use topics::{Channel, Topic};
pub use trust::{
    accept_trust_update, AcceptedTrust, RootKeys, SigningKeyEntry, TrustOutcome, TrustStore,
    TrustUpdate, KIND_TRUST_UPDATE,
};

/// Reads only the `kind` field of a payload, so a document of the wrong kind is named as such
/// rather than failing as malformed.
pub(crate) fn peek_kind(payload: &[u8]) -> Result<String, Rejection> {
    #[derive(serde::Deserialize)]
    struct Peek {
        kind: String,
    }
    let p: Peek = serde_json::from_slice(payload)
        .map_err(|e| Rejection::Malformed(format!("payload: {e}")))?;
    Ok(p.kind.chars().take(64).collect())
}

/// The version of this crate, which hub and agent report as their protocol version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
