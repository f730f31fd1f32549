//! Ed25519 keys: public keys as they appear in trust documents, and the signing side the hub and
//! operator tools use.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::KeyId;

/// A public key that has passed the strict checks: a valid curve point that is not of small
/// order. Serialized as standard base64 of the 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// Why bytes are not an acceptable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad public key: {0}")]
pub struct BadPublicKey(pub String);

impl PublicKey {
    /// Checks and wraps 32 raw bytes. Refuses non-points and small-order ("weak") keys, which
    /// would let one signature verify for many messages.
    pub fn from_bytes(raw: &[u8; 32]) -> Result<Self, BadPublicKey> {
        let vk = VerifyingKey::from_bytes(raw)
            .map_err(|_| BadPublicKey("not a valid Ed25519 point".into()))?;
        if vk.is_weak() {
            return Err(BadPublicKey("small-order (weak) key".into()));
        }
        Ok(Self(vk))
    }

    /// Parses the base64 form (canonical padding and trailing bits required).
    pub fn from_base64(s: &str) -> Result<Self, BadPublicKey> {
        let raw =
            decode_b64_canonical(s).ok_or_else(|| BadPublicKey("not canonical base64".into()))?;
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| BadPublicKey("must be 32 bytes".into()))?;
        Self::from_bytes(&raw)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }

    /// The key's id.
    pub fn kid(&self) -> KeyId {
        KeyId::of_public_key(self.0.as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Strict verification: rejects non-canonical `S` and small-order `R` (RFC 8032 strict).
    pub fn verify_strict(&self, msg: &[u8], sig: &ed25519_dalek::Signature) -> bool {
        self.0.verify_strict(msg, sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", self.kid())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// Decodes standard base64, refusing any non-canonical form (missing or extra padding,
/// non-zero trailing bits, whitespace) so one byte string has exactly one text form.
pub fn decode_b64_canonical(s: &str) -> Option<Vec<u8>> {
    let raw = B64.decode(s).ok()?;
    (B64.encode(&raw) == s).then_some(raw)
}

/// Encodes standard base64.
pub fn encode_b64(raw: &[u8]) -> String {
    B64.encode(raw)
}

/// A private signing key (root, online signing key, or a device's identity key).
///
/// Its text form is the base64 of the 32-byte seed; [`KeyPair::to_secret_base64`] is the only way
/// out, so the secret never lands in a log through `Debug`.
pub struct KeyPair(SigningKey);

impl KeyPair {
    /// A new key from 32 bytes of OS randomness provided by the caller (kept I/O-free here).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Parses the base64 seed written by [`KeyPair::to_secret_base64`].
    pub fn from_secret_base64(s: &str) -> Result<Self, BadPublicKey> {
        let raw = decode_b64_canonical(s.trim())
            .ok_or_else(|| BadPublicKey("secret key is not canonical base64".into()))?;
        let seed: [u8; 32] = raw
            .try_into()
            .map_err(|_| BadPublicKey("secret key must be 32 bytes".into()))?;
        Ok(Self::from_seed(seed))
    }

    /// The base64 seed. Handle with care.
    pub fn to_secret_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key id of the public half.
    pub fn kid(&self) -> KeyId {
        self.public().kid()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> ed25519_dalek::Signature {
        self.0.sign(msg)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.kid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (0, 1) encodes as 1 followed by zeros: a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(&identity).is_err());
        assert!(PublicKey::from_bytes(&[0u8; 32]).is_err());
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        let k = KeyPair::from_seed([7; 32]).public();
        let good = k.to_base64();
        assert!(PublicKey::from_base64(&good).is_ok());
        assert!(PublicKey::from_base64(good.trim_end_matches('=')).is_err());
        assert!(PublicKey::from_base64(&format!(" {good}")).is_err());
        // Flip the unused low bits of the last significant character.
        let mut chars: Vec<char> = good.chars().collect();
        let i = chars.iter().rposition(|&c| c != '=').unwrap_or(0);
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let tweaked: String = chars.into_iter().collect();
        if decode_b64_canonical(&tweaked).is_none() {
            assert!(PublicKey::from_base64(&tweaked).is_err());
        }
    }

    #[test]
    fn secret_round_trips() {
        let k = KeyPair::from_seed([9; 32]);
        let back = KeyPair::from_secret_base64(&k.to_secret_base64()).ok();
        assert_eq!(back.map(|b| b.kid()), Some(k.kid()));
    }
}
