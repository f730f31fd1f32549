//! Enrollment (DESIGN §3.9): the agent generates its key pair, proves possession with a
//! signature over the one-time token, and receives its id, MQTT credentials and the root key.
//!
//! `POST /api/v1/enroll` with an [`EnrollRequest`] body answers an [`EnrollResponse`].
//! Afterwards the device authenticates to the broker as `username = password-owner = device id`
//! and to the blob endpoints with HTTP Basic auth using the same credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::RuntimeKind;
use crate::ids::DeviceId;
use crate::keys::{decode_b64_canonical, encode_b64, KeyPair, PublicKey};
use crate::profile::Arch;
use crate::trust::RootKeys;

/// Domain separation for the proof-of-possession signature.
const PROOF_CONTEXT: &[u8] = b"fleet/v1/enroll\n";

/// What an agent sends to enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token.
    pub token: String,
    /// The device's identity key.
    pub public_key: PublicKey,
    /// Base64 signature by that key over the token (proof of possession).
    pub proof: String,
    /// Requested device id; the hub derives one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Device profile name (a file in `firmware-profiles/`).
    pub profile: String,
    /// Architecture the agent runs on.
    pub arch: Arch,
    /// Runtimes the agent found.
    pub runtimes: Vec<RuntimeKind>,
    /// Agent version.
    pub agent_version: String,
    /// Extra labels the device proposes (the token's labels win on conflict).
    #[serde(
        default,
        deserialize_with = "crate::json::unique_string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

impl EnrollRequest {
    /// The proof for `token` signed by `key`.
    pub fn prove(key: &KeyPair, token: &str) -> String {
        encode_b64(&key.sign(&proof_message(token)).to_bytes())
    }

    /// Whether `proof` is a valid signature by `public_key` over `token`.
    pub fn proof_is_valid(&self) -> bool {
        let Some(raw) = decode_b64_canonical(&self.proof) else {
            return false;
        };
        let Ok(raw): Result<[u8; 64], _> = raw.try_into() else {
            return false;
        };
        self.public_key.verify_strict(
            &proof_message(&self.token),
            &ed25519_dalek::Signature::from_bytes(&raw),
        )
    }
}

fn proof_message(token: &str) -> Vec<u8> {
    [PROOF_CONTEXT, token.as_bytes()].concat()
}

/// How the device reaches the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttCredentials {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Username (equals the device id).
    pub username: String,
    /// Password (random, issued once).
    pub password: String,
}

/// What the hub answers to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The device's id.
    pub device_id: DeviceId,
    /// Broker credentials.
    pub mqtt: MqttCredentials,
    /// Base URL for blobs and deltas (`{hub_url}/v1/blobs/…`).
    pub hub_url: String,
    /// The root keys to pin.
    pub root: RootKeys,
    /// The current signed trust update (envelope JSON), when the hub has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_binds_key_and_token() {
        let k = KeyPair::from_seed([3; 32]);
        let mut req = EnrollRequest {
            token: "tok-1".into(),
            public_key: k.public(),
            proof: EnrollRequest::prove(&k, "tok-1"),
            device_id: None,
            profile: "rpi4-4g".into(),
            arch: Arch::Aarch64,
            runtimes: vec![RuntimeKind::Process],
            agent_version: "0.1.0".into(),
            labels: BTreeMap::new(),
        };
        assert!(req.proof_is_valid());
        req.token = "tok-2".into();
        assert!(!req.proof_is_valid());
        req.token = "tok-1".into();
        req.public_key = KeyPair::from_seed([4; 32]).public();
        assert!(!req.proof_is_valid());
    }
}
