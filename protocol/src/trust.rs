//! Trust (DESIGN §3.2): an offline root signs `TrustUpdate`s that list the online signing keys;
//! the hub signs desired states with one of those. Modelled on TUF's root metadata.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::Rejection;
use crate::ids::{Digest, KeyId};
use crate::keys::PublicKey;
use crate::limits::{MAX_STATE_LIFETIME_SECS, MAX_TRUST_KEYS};

/// The `kind` of a trust update payload.
pub const KIND_TRUST_UPDATE: &str = "TrustUpdate";

/// The root key set and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeys {
    /// Root public keys.
    pub keys: Vec<PublicKey>,
    /// Distinct root signatures required (1..=keys.len()).
    pub threshold: u32,
}

impl RootKeys {
    /// A single root key with threshold 1.
    pub fn single(key: PublicKey) -> Self {
        Self {
            keys: vec![key],
            threshold: 1,
        }
    }

    fn kids(&self) -> BTreeSet<KeyId> {
        self.keys.iter().map(PublicKey::kid).collect()
    }

    fn find(&self, kid: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| &k.kid() == kid)
    }

    fn validate(&self) -> Result<(), String> {
        if self.keys.is_empty() || self.keys.len() > MAX_TRUST_KEYS {
            return Err(format!("root needs 1..={MAX_TRUST_KEYS} keys"));
        }
        if self.kids().len() != self.keys.len() {
            return Err("root lists a key twice".into());
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return Err("root threshold must be 1..=number of root keys".into());
        }
        Ok(())
    }
}

/// An online signing key and the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyEntry {
    /// Must equal the id derived from `public_key`.
    pub kid: KeyId,
    /// The key.
    pub public_key: PublicKey,
    /// Signatures by this key are refused at or after this instant (unix seconds).
    pub not_after: u64,
}

/// A root-signed trust document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustUpdate {
    /// Always [`KIND_TRUST_UPDATE`].
    pub kind: String,
    /// Strictly increasing.
    pub version: u64,
    /// When root signed it.
    pub issued_at: u64,
    /// Not accepted on arrival after this instant (freeze attack).
    pub expires_at: u64,
    /// Root keys from this version on; differing from the current set makes this a root
    /// rotation, which both the old and the new root set must sign.
    pub root: RootKeys,
    /// Online keys that may sign desired states. A key absent here is revoked.
    pub signing_keys: Vec<SigningKeyEntry>,
    /// When set, every device's revision floor becomes this value on acceptance, even if lower
    /// than what it holds: root's way to recover a fleet from a stolen online key that published
    /// an absurd revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_floor: Option<u64>,
}

impl TrustUpdate {
    /// Checks structure and limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind != KIND_TRUST_UPDATE {
            return Err(format!("kind must be {KIND_TRUST_UPDATE}"));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires_at must be after issued_at".into());
        }
        self.root.validate()?;
        if self.signing_keys.len() > MAX_TRUST_KEYS {
            return Err(format!("more than {MAX_TRUST_KEYS} signing keys"));
        }
        let mut seen = BTreeSet::new();
        for k in &self.signing_keys {
            if k.kid != k.public_key.kid() {
                return Err(format!(
                    "signing key {} does not match its public key",
                    k.kid
                ));
            }
            if !seen.insert(k.kid.clone()) {
                return Err(format!("signing key {} listed twice", k.kid));
            }
            if self.root.kids().contains(&k.kid) {
                return Err("a root key may not also be an online signing key".into());
            }
        }
        Ok(())
    }
}

/// What an agent trusts now: its pinned root and the last accepted trust update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStore {
    /// Version of the accepted trust update (0: only the root pinned at enrollment).
    pub version: u64,
    /// Current root keys.
    pub root: RootKeys,
    /// Current online signing keys.
    pub signing_keys: Vec<SigningKeyEntry>,
    /// Digest of the accepted trust update payload, to tell a harmless re-delivery from a
    /// conflicting document with the same version.
    pub payload_digest: Option<Digest>,
    /// `expires_at` of the accepted trust update (0 when none).
    pub expires_at: u64,
}

impl TrustStore {
    /// The trust a device starts with: the root key pinned at enrollment, nothing else.
    pub fn pinned(root: RootKeys) -> Self {
        Self {
            version: 0,
            root,
            signing_keys: Vec::new(),
            payload_digest: None,
            expires_at: 0,
        }
    }

    /// The online signing key with this id, if any.
    pub fn signing_key(&self, kid: &KeyId) -> Option<&SigningKeyEntry> {
        self.signing_keys.iter().find(|k| &k.kid == kid)
    }
}

/// A trust update that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedTrust {
    /// The new trust store.
    pub store: TrustStore,
    /// The update as accepted (its `revision_floor` is for the caller to apply).
    pub update: TrustUpdate,
}

/// The outcome of presenting a trust update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustOutcome {
    /// A newer trust: persist `store` (and apply `revision_floor` when set) before using it.
    Accepted(Box<AcceptedTrust>),
    /// The same document as the one held: nothing to do.
    AlreadyHave,
}

fn count_threshold(
    signers: &BTreeSet<KeyId>,
    keys: &RootKeys,
    role: &'static str,
) -> Result<(), Rejection> {
    let kids = keys.kids();
    let got = signers.intersection(&kids).count();
    let needed = keys.threshold as usize;
    if got >= needed {
        Ok(())
    } else if got == 0 && role == "current root" {
        Err(Rejection::UnknownKey)
    } else {
        Err(Rejection::ThresholdNotMet { role, needed, got })
    }
}

/// Accepts or rejects a signed trust update against the current trust, at time `now`.
///
/// Steps (each a rejection reason when it fails):
/// 1. decode the envelope (size, version, algorithm, canonical base64);
/// 2. verify signatures by current root keys; a threshold of distinct current root keys must sign;
/// 3. parse the payload; its `kind` must be `TrustUpdate`; fields within limits;
/// 4. version: equal with the same payload is a no-op, otherwise it must be higher;
/// 5. not expired on arrival;
/// 6. if the root set changes, a threshold of the *new* root keys must have signed too.
pub fn accept_trust_update(
    bytes: &[u8],
    current: &TrustStore,
    now: u64,
) -> Result<TrustOutcome, Rejection> {
    // 1.
    let env = Envelope::decode(bytes)?;
    // 2. Signatures by keys outside the current root are ignored here (a new root's are checked
    // in step 6); a signature by an online key counts for nothing.
    let signers = env.verified_signers(|kid| current.root.find(kid))?;
    count_threshold(&signers, &current.root, "current root")?;
    // 3.
    let kind = crate::peek_kind(&env.payload)?;
    if kind != KIND_TRUST_UPDATE {
        return Err(Rejection::WrongKind {
            expected: KIND_TRUST_UPDATE,
            found: kind,
        });
    }
    let update: TrustUpdate = serde_json::from_slice(&env.payload)
        .map_err(|e| Rejection::Malformed(format!("trust update: {e}")))?;
    update.validate().map_err(Rejection::Malformed)?;
    // 4.
    let digest = Digest::of(&env.payload);
    if update.version == current.version && current.payload_digest == Some(digest) {
        return Ok(TrustOutcome::AlreadyHave);
    }
    if update.version <= current.version {
        return Err(Rejection::Rollback {
            found: update.version,
            floor: current.version,
        });
    }
    // 5.
    if update.expires_at <= now {
        return Err(Rejection::Expired {
            expires_at: update.expires_at,
            now,
        });
    }
    if update.expires_at.saturating_sub(update.issued_at) > MAX_STATE_LIFETIME_SECS * 5 {
        return Err(Rejection::Malformed(
            "trust lifetime longer than five years".into(),
        ));
    }
    // 6. Root rotation: the new root proves possession too, so neither a stolen old root nor a
    // made-up new one can rotate alone.
    if update.root.kids() != current.root.kids() || update.root.threshold != current.root.threshold
    {
        let new_signers = env.verified_signers(|kid| update.root.find(kid))?;
        count_threshold(&new_signers, &update.root, "new root")?;
    }
    let store = TrustStore {
        version: update.version,
        root: update.root.clone(),
        signing_keys: update.signing_keys.clone(),
        payload_digest: Some(digest),
        expires_at: update.expires_at,
    };
    Ok(TrustOutcome::Accepted(Box::new(AcceptedTrust {
        store,
        update,
    })))
}
