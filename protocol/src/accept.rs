//! The agent's single entry point for desired states: verify, then decide (DESIGN §3.3).

use serde::{Deserialize, Serialize};

use crate::desired::{DesiredState, KIND_DESIRED_STATE};
use crate::envelope::Envelope;
use crate::error::Rejection;
use crate::ids::{DeviceId, Digest, KeyId};
use crate::trust::TrustStore;

/// What a device holds about revisions: the highest accepted (or the floor root set) and, when
/// it came from an accepted document, that document's payload digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RevisionFloor {
    /// Highest accepted revision, or the floor set by a trust update.
    pub revision: u64,
    /// Payload digest of the accepted state with that revision; `None` after a root reset.
    pub payload_digest: Option<Digest>,
}

/// An accepted desired state and what to persist about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The parsed, validated state.
    pub state: DesiredState,
    /// Digest of its payload: the new [`RevisionFloor::payload_digest`].
    pub payload_digest: Digest,
    /// The key that signed it.
    pub signed_by: KeyId,
}

/// The outcome of presenting a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredOutcome {
    /// A newer state: persist it and its revision before acting on it.
    Accepted(Box<Accepted>),
    /// The revision already held, byte for byte: a silent no-op (retained re-delivery).
    AlreadyHave,
}

/// Accepts or rejects a signed desired state for `device` at time `now`.
///
/// Steps (each a rejection reason when it fails):
/// 1. decode the envelope (size, version, algorithm, canonical base64);
/// 2. at least one signature by a current online signing key verifies strictly, and that key is
///    not past its `not_after` (any bad signature by a known key rejects the whole document);
/// 3. the payload's `kind` is `DesiredState`, and it parses with every field within limits;
/// 4. it is addressed to `device`;
/// 5. revision: equal to the floor with the same payload is a no-op, otherwise it must be higher;
/// 6. it has not expired.
pub fn accept_desired_state(
    bytes: &[u8],
    trust: &TrustStore,
    device: &DeviceId,
    floor: &RevisionFloor,
    now: u64,
) -> Result<DesiredOutcome, Rejection> {
    // 1.
    let env = Envelope::decode(bytes)?;
    // 2.
    let signers = env.verified_signers(|kid| trust.signing_key(kid).map(|k| &k.public_key))?;
    let Some(first) = signers.iter().next().cloned() else {
        return Err(Rejection::UnknownKey);
    };
    let signed_by = signers
        .iter()
        .find(|kid| trust.signing_key(kid).is_some_and(|k| now < k.not_after))
        .cloned()
        .ok_or(Rejection::ExpiredKey(first))?;
    // 3.
    let kind = crate::peek_kind(&env.payload)?;
    if kind != KIND_DESIRED_STATE {
        return Err(Rejection::WrongKind {
            expected: KIND_DESIRED_STATE,
            found: kind,
        });
    }
    let state: DesiredState = serde_json::from_slice(&env.payload)
        .map_err(|e| Rejection::Malformed(format!("desired state: {e}")))?;
    state.validate().map_err(Rejection::Malformed)?;
    // 4.
    if &state.device != device {
        return Err(Rejection::WrongDevice {
            expected: device.to_string(),
            found: state.device.to_string(),
        });
    }
    // 5.
    let payload_digest = Digest::of(&env.payload);
    if state.revision == floor.revision && floor.payload_digest == Some(payload_digest) {
        return Ok(DesiredOutcome::AlreadyHave);
    }
    if state.revision <= floor.revision {
        return Err(Rejection::Rollback {
            found: state.revision,
            floor: floor.revision,
        });
    }
    // 6.
    if state.expires_at <= now {
        return Err(Rejection::Expired {
            expires_at: state.expires_at,
            now,
        });
    }
    Ok(DesiredOutcome::Accepted(Box::new(Accepted {
        state,
        payload_digest,
        signed_by,
    })))
}
