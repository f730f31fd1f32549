//! Keys and trust (DESIGN §3.2). The key directory holds:
//! - `root.key` — the root secret. It belongs offline: `fleetctl keys init` writes it so the
//!   operator can move it away; the hub never needs it to run.
//! - `online.key` — the hub's online signing key.
//! - `trust.json` — the current root-signed `TrustUpdate` envelope the hub publishes.
//!
//! Files are written atomically (temp + fsync + rename + directory fsync), secrets with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use protocol::{
    Envelope, KeyPair, RootKeys, SigningKeyEntry, TrustOutcome, TrustStore, TrustUpdate,
    KIND_TRUST_UPDATE,
};

/// One year, the default validity of an online key and of a trust document.
pub const YEAR: u64 = 365 * 86_400;

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A fresh key from OS randomness.
pub fn generate() -> anyhow::Result<KeyPair> {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("reading OS randomness")?;
    Ok(KeyPair::from_seed(seed))
}

/// Reads a key file.
pub fn read_key(path: &Path) -> anyhow::Result<KeyPair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    KeyPair::from_secret_base64(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes a key file (0600).
pub fn write_key(path: &Path, key: &KeyPair) -> anyhow::Result<()> {
    write_atomic(path, key.to_secret_base64().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// The key directory.
#[derive(Debug, Clone)]
pub struct KeyDir(pub PathBuf);

impl KeyDir {
    /// `root.key`.
    pub fn root(&self) -> PathBuf {
        self.0.join("root.key")
    }
    /// `online.key`.
    pub fn online(&self) -> PathBuf {
        self.0.join("online.key")
    }
    /// `trust.json`.
    pub fn trust(&self) -> PathBuf {
        self.0.join("trust.json")
    }

    /// Whether keys exist.
    pub fn exists(&self) -> bool {
        self.online().exists() && self.trust().exists()
    }

    /// Creates root, online key and trust version 1. Refuses to overwrite.
    pub fn init(&self, now: u64) -> anyhow::Result<()> {
        if self.online().exists() || self.root().exists() {
            bail!("keys already exist in {}", self.0.display());
        }
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        let root = generate()?;
        let online = generate()?;
        let update = trust_update(1, &root, &[&online], now, None);
        let env = sign_trust(&update, &[&root]);
        write_key(&self.root(), &root)?;
        write_key(&self.online(), &online)?;
        write_atomic(&self.trust(), &env, 0o644).context("writing trust.json")?;
        Ok(())
    }

    /// The current trust update and its envelope.
    pub fn current_trust(&self) -> anyhow::Result<(TrustUpdate, Vec<u8>)> {
        let env = std::fs::read(self.trust())
            .with_context(|| format!("reading {}", self.trust().display()))?;
        let decoded = Envelope::decode(&env).map_err(|e| anyhow::anyhow!("trust.json: {e}"))?;
        let update: TrustUpdate =
            serde_json::from_slice(&decoded.payload).context("trust.json payload")?;
        Ok((update, env))
    }

    /// Replaces the online key: trust version + 1 lists the new key (and the old one too when
    /// `keep_old`, for a soft rotation). Needs the root key.
    pub fn rotate(&self, root_path: &Path, keep_old: bool, now: u64) -> anyhow::Result<u64> {
        let root = read_key(root_path)?;
        let (cur, _) = self.current_trust()?;
        let new = generate()?;
        let mut update = trust_update(cur.version + 1, &root, &[&new], now, None);
        update.root = cur.root.clone();
        if keep_old {
            update.signing_keys.extend(cur.signing_keys.iter().cloned());
        }
        self.publish_checked(&update, &[&root])?;
        write_key(&self.online(), &new)?;
        Ok(update.version)
    }

    /// Revokes every online key, issues a new one and resets every device's revision floor to
    /// `floor` (recovery from a stolen online key, DESIGN §3.2).
    pub fn recover(&self, root_path: &Path, floor: u64, now: u64) -> anyhow::Result<u64> {
        let root = read_key(root_path)?;
        let (cur, _) = self.current_trust()?;
        let new = generate()?;
        let mut update = trust_update(cur.version + 1, &root, &[&new], now, Some(floor));
        update.root = cur.root.clone();
        self.publish_checked(&update, &[&root])?;
        write_key(&self.online(), &new)?;
        Ok(update.version)
    }

    /// Rotates the root: signed by both the old and the new root.
    pub fn rotate_root(&self, old_root: &Path, new_root: &Path, now: u64) -> anyhow::Result<u64> {
        let old = read_key(old_root)?;
        let new = read_key(new_root)?;
        let (cur, _) = self.current_trust()?;
        let mut update = cur.clone();
        update.version = cur.version + 1;
        update.issued_at = now;
        update.expires_at = now + YEAR;
        update.root = RootKeys::single(new.public());
        update.revision_floor = None;
        self.publish_checked(&update, &[&old, &new])?;
        Ok(update.version)
    }

    /// Signs `update` and checks that a device holding the current trust would accept it before
    /// writing it: the hub never publishes trust its own devices would refuse.
    fn publish_checked(&self, update: &TrustUpdate, signers: &[&KeyPair]) -> anyhow::Result<()> {
        let env = sign_trust(update, signers);
        let (cur, _) = self.current_trust()?;
        let store = TrustStore {
            version: cur.version,
            root: cur.root.clone(),
            signing_keys: cur.signing_keys.clone(),
            payload_digest: None,
            expires_at: cur.expires_at,
        };
        match protocol::accept_trust_update(&env, &store, update.issued_at + 1) {
            Ok(TrustOutcome::Accepted(_)) => {}
            Ok(TrustOutcome::AlreadyHave) => bail!("trust update is not new"),
            Err(e) => bail!("devices would refuse this trust update: {e}"),
        }
        write_atomic(&self.trust(), &env, 0o644).context("writing trust.json")
    }
}

/// Builds a trust update listing `online` keys for a year.
pub fn trust_update(
    version: u64,
    root: &KeyPair,
    online: &[&KeyPair],
    now: u64,
    floor: Option<u64>,
) -> TrustUpdate {
    TrustUpdate {
        kind: KIND_TRUST_UPDATE.into(),
        version,
        issued_at: now,
        expires_at: now + YEAR,
        root: RootKeys::single(root.public()),
        signing_keys: online
            .iter()
            .map(|k| SigningKeyEntry {
                kid: k.kid(),
                public_key: k.public(),
                not_after: now + YEAR,
            })
            .collect(),
        revision_floor: floor,
    }
}

/// Signs a trust update.
pub fn sign_trust(update: &TrustUpdate, signers: &[&KeyPair]) -> Vec<u8> {
    Envelope::sign(protocol::json::encode(update), signers).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_rotate_recover_and_rotate_root_each_produce_acceptable_trust() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kd = KeyDir(dir.path().join("keys"));
        let now = 1_800_000_000;
        kd.init(now).expect("init");
        assert!(kd.init(now).is_err(), "init must not overwrite keys");
        let (t1, _) = kd.current_trust().expect("trust");
        assert_eq!(t1.version, 1);
        let old_online = read_key(&kd.online()).expect("online").kid();
        assert_eq!(kd.rotate(&kd.root(), false, now + 10).expect("rotate"), 2);
        let (t2, _) = kd.current_trust().expect("trust");
        assert!(
            t2.signing_keys.iter().all(|k| k.kid != old_online),
            "old key revoked"
        );
        assert_eq!(kd.recover(&kd.root(), 5000, now + 20).expect("recover"), 3);
        let (t3, _) = kd.current_trust().expect("trust");
        assert_eq!(t3.revision_floor, Some(5000));
        let new_root = dir.path().join("root2.key");
        write_key(&new_root, &generate().expect("key")).expect("write");
        assert_eq!(
            kd.rotate_root(&kd.root(), &new_root, now + 30)
                .expect("rotate root"),
            4
        );
        // The old root alone can no longer sign trust.
        assert!(kd.rotate(&kd.root(), false, now + 40).is_err());
        assert_eq!(
            kd.rotate(&new_root, false, now + 40)
                .expect("rotate with new root"),
            5
        );
    }
}
