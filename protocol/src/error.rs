//! Error types. Every rejection of a signed document is a [`Rejection`] with a stable
//! machine-readable [`Rejection::code`], reported to the hub as is.

use thiserror::Error;

use crate::ids::KeyId;

/// A value that is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct InvalidId {
    /// What kind of identifier (e.g. "device id").
    pub kind: &'static str,
    /// The offending value, truncated.
    pub value: String,
    /// Why it was refused.
    pub why: &'static str,
}

/// Why a signed document (desired state or trust update) was not accepted.
///
/// Checks run in the order of the variants below (size, structure, signatures, kind, addressing,
/// revision, expiry), so the reason names the first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    /// The document is larger than the limit for its kind.
    #[error("document too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Size seen.
        size: usize,
        /// Limit in force.
        limit: usize,
    },
    /// The envelope or payload could not be decoded, or a field is out of its limits.
    #[error("malformed document: {0}")]
    Malformed(String),
    /// The envelope names a version or algorithm this verifier does not implement.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// "envelope version" or "signature algorithm".
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// No signature is by a key this trust store knows for the document's kind. A revoked key is
    /// an unknown key: revoking is publishing trust without it.
    #[error("no signature by a trusted key")]
    UnknownKey,
    /// The only trusted signing keys that signed are past their `not_after`.
    #[error("signing key {0} expired")]
    ExpiredKey(KeyId),
    /// A signature by a trusted key does not verify (strict Ed25519).
    #[error("bad signature by key {0}")]
    BadSignature(KeyId),
    /// Not enough distinct trusted keys signed (trust updates: root threshold, rotation).
    #[error("signature threshold not met: {role} needs {needed}, got {got}")]
    ThresholdNotMet {
        /// Which key set ("current root" or "new root").
        role: &'static str,
        /// Distinct valid signatures needed.
        needed: usize,
        /// Distinct valid signatures found.
        got: usize,
    },
    /// The payload is a different kind of document than the one expected here.
    #[error("wrong document kind: expected {expected}, found {found}")]
    WrongKind {
        /// Expected kind.
        expected: &'static str,
        /// Kind named by the payload.
        found: String,
    },
    /// The desired state is addressed to another device.
    #[error("desired state is for device {found}, not {expected}")]
    WrongDevice {
        /// This device.
        expected: String,
        /// Device named by the document.
        found: String,
    },
    /// The revision (or trust version) is not newer than the one already held.
    #[error("rollback: revision {found} is not above {floor}")]
    Rollback {
        /// Revision or version of the document.
        found: u64,
        /// Highest accepted so far (or the floor set by root).
        floor: u64,
    },
    /// The document had already expired when it arrived.
    #[error("expired at {expires_at}, now {now}")]
    Expired {
        /// Its `expires_at` (unix seconds).
        expires_at: u64,
        /// The verifier's time (unix seconds).
        now: u64,
    },
}

impl Rejection {
    /// A stable snake_case name for the reason: what reports, logs and test vectors use.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::Unsupported { .. } => "unsupported",
            Rejection::UnknownKey => "unknown_key",
            Rejection::ExpiredKey(_) => "expired_key",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::ThresholdNotMet { .. } => "threshold_not_met",
            Rejection::WrongKind { .. } => "wrong_kind",
            Rejection::WrongDevice { .. } => "wrong_device",
            Rejection::Rollback { .. } => "rollback",
            Rejection::Expired { .. } => "expired",
        }
    }
}

/// A non-signed message (status, events, ack, presence, profile, enrollment) that failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Larger than its limit.
    #[error("message too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Size seen.
        size: usize,
        /// Limit in force.
        limit: usize,
    },
    /// Not valid for its schema.
    #[error("invalid message: {0}")]
    Invalid(String),
}
