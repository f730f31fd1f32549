//! The signed envelope (DESIGN §3.1): the exact payload bytes plus signatures over them.
//!
//! `{"v":1,"payload":"<base64>","signatures":[{"kid":"…","alg":"ed25519","sig":"<base64>"}]}`
//!
//! Nobody re-serialises before verifying, so no canonical JSON is needed: the verifier checks
//! the signatures over the decoded payload bytes and only then parses them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::ids::KeyId;
use crate::keys::{decode_b64_canonical, encode_b64, KeyPair, PublicKey};
use crate::limits::{MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, MAX_SIGNATURES};

/// Envelope format version.
pub const ENVELOPE_VERSION: u32 = 1;
/// The only signature algorithm.
pub const ALG_ED25519: &str = "ed25519";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    v: u32,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    kid: String,
    alg: String,
    sig: String,
}

/// One decoded signature.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The key the signer claims.
    pub kid: KeyId,
    /// The Ed25519 signature.
    pub sig: ed25519_dalek::Signature,
}

/// A decoded, not yet verified envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The payload bytes exactly as signed.
    pub payload: Vec<u8>,
    /// Signatures in wire order.
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Decodes an envelope, enforcing size, version, algorithm and canonical base64 before any
    /// signature is looked at.
    pub fn decode(bytes: &[u8]) -> Result<Self, Rejection> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Rejection::TooLarge {
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        let wire: WireEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| Rejection::Malformed(format!("envelope: {e}")))?;
        if wire.v != ENVELOPE_VERSION {
            return Err(Rejection::Unsupported {
                what: "envelope version",
                value: wire.v.to_string(),
            });
        }
        if wire.signatures.is_empty() {
            return Err(Rejection::Malformed("envelope has no signatures".into()));
        }
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(Rejection::Malformed(format!(
                "envelope has {} signatures, limit {MAX_SIGNATURES}",
                wire.signatures.len()
            )));
        }
        let payload = decode_b64_canonical(&wire.payload)
            .ok_or_else(|| Rejection::Malformed("payload is not canonical base64".into()))?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Rejection::TooLarge {
                size: payload.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let mut signatures = Vec::with_capacity(wire.signatures.len());
        for s in wire.signatures {
            if s.alg != ALG_ED25519 {
                return Err(Rejection::Unsupported {
                    what: "signature algorithm",
                    value: s.alg.chars().take(32).collect(),
                });
            }
            let kid = KeyId::parse(&s.kid).map_err(|e| Rejection::Malformed(e.to_string()))?;
            let raw = decode_b64_canonical(&s.sig)
                .ok_or_else(|| Rejection::Malformed("signature is not canonical base64".into()))?;
            let raw: [u8; 64] = raw
                .try_into()
                .map_err(|_| Rejection::Malformed("signature must be 64 bytes".into()))?;
            signatures.push(Signature {
                kid,
                sig: ed25519_dalek::Signature::from_bytes(&raw),
            });
        }
        Ok(Self {
            payload,
            signatures,
        })
    }

    /// Signs `payload` with each key in `signers` (hub and operator side).
    pub fn sign(payload: Vec<u8>, signers: &[&KeyPair]) -> Self {
        let signatures = signers
            .iter()
            .map(|k| Signature {
                kid: k.kid(),
                sig: k.sign(&payload),
            })
            .collect();
        Self {
            payload,
            signatures,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            v: ENVELOPE_VERSION,
            payload: encode_b64(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    kid: s.kid.to_string(),
                    alg: ALG_ED25519.into(),
                    sig: encode_b64(&s.sig.to_bytes()),
                })
                .collect(),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Verifies every signature made by a key that `lookup` knows, and returns the set of
    /// distinct keys whose signatures verified. Signatures by unknown keys are ignored (they may
    /// belong to a newer trust); a signature by a known key that does not verify rejects the
    /// whole envelope. A key that signs twice counts once.
    pub fn verified_signers<'k>(
        &self,
        lookup: impl Fn(&KeyId) -> Option<&'k PublicKey>,
    ) -> Result<BTreeSet<KeyId>, Rejection> {
        let mut ok = BTreeSet::new();
        for s in &self.signatures {
            let Some(key) = lookup(&s.kid) else { continue };
            if !key.verify_strict(&self.payload, &s.sig) {
                return Err(Rejection::BadSignature(s.kid.clone()));
            }
            ok.insert(s.kid.clone());
        }
        Ok(ok)
    }
}
