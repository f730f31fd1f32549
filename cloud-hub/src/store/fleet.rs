//! Registry tables: tokens, devices (enrollment), groups, images, releases, deployments and
//! the signed desired state per device.

use std::collections::BTreeMap;

use protocol::{DeviceId, PublicKey, RuntimeKind, Workload};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{hash_password, json, parse, random_token, unix_now, Store, StoreError};

/// API roles, ordered by power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Deploys and manages devices.
    Operator,
    /// Everything, including tokens.
    Admin,
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
}

/// A group: a static member list, a label selector, or both (union).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupRow {
    /// Name.
    pub name: String,
    /// Labels a device must all carry.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Explicit members.
    #[serde(default)]
    pub members: Vec<String>,
}

/// An imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    pub arch: protocol::Arch,
    /// Import time.
    pub created_at: u64,
}

/// A release: a named, versioned set of workloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseRow {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Workloads, images resolved.
    pub workloads: Vec<Workload>,
    /// Creation time.
    pub created_at: u64,
}

/// A deployment: a release aimed at a group, a selector or devices, with a priority.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentRow {
    /// Id (newer is larger).
    pub id: u64,
    /// Release.
    pub release_id: u64,
    /// Target.
    pub target: crate::releases::Target,
    /// Priority: the highest matching deployment wins.
    pub priority: i64,
    /// Creation time.
    pub created_at: u64,
}

impl Store {
    // ---- API tokens ----------------------------------------------------------------------

    /// Creates an API token; returns its secret (shown once).
    pub fn create_api_token(&self, name: &str, role: Role) -> Result<String, StoreError> {
        let secret = format!("fleet_{}", random_token());
        self.lock().execute(
            "INSERT INTO api_tokens (token_hash, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                hash_password("api", &secret),
                name,
                json(&role),
                unix_now() as i64
            ],
        )?;
        Ok(secret)
    }

    /// Who holds this bearer token.
    pub fn api_token(&self, secret: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT name, role FROM api_tokens WHERE token_hash = ?1",
                [hash_password("api", secret)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(name, role)| {
            Ok(TokenInfo {
                name,
                role: parse("role", &role)?,
            })
        })
        .transpose()
    }

    // ---- enrollment ------------------------------------------------------------------------

    /// Creates a one-time enrollment token; returns its secret.
    pub fn create_enroll_token(
        &self,
        labels: &BTreeMap<String, String>,
        ttl_secs: u64,
    ) -> Result<String, StoreError> {
        let secret = format!("enroll_{}", random_token());
        self.lock().execute(
            "INSERT INTO enroll_tokens (token_hash, labels, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash_password("enroll", &secret), json(labels), (unix_now() + ttl_secs) as i64, unix_now() as i64],
        )?;
        Ok(secret)
    }

    /// Consumes a token and creates the device in one transaction. Returns the MQTT password.
    #[allow(clippy::too_many_arguments)]
    pub fn enroll_device(
        &self,
        token: &str,
        id: &DeviceId,
        key: &PublicKey,
        profile: &str,
        arch: protocol::Arch,
        runtimes: &[RuntimeKind],
        agent_version: &str,
        proposed_labels: &BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row: Option<(String, i64, Option<String>)> = tx
            .query_row(
                "SELECT labels, expires_at, used_by FROM enroll_tokens WHERE token_hash = ?1",
                [hash_password("enroll", token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((labels, expires_at, used_by)) = row else {
            return Err(StoreError::NotFound("enrollment token".into()));
        };
        if used_by.is_some() {
            return Err(StoreError::Conflict("enrollment token already used".into()));
        }
        if (expires_at as u64) <= unix_now() {
            return Err(StoreError::Conflict("enrollment token expired".into()));
        }
        let exists: bool = tx
            .query_row("SELECT 1 FROM devices WHERE id = ?1", [id.as_str()], |_| {
                Ok(true)
            })
            .optional()?
            .unwrap_or(false);
        if exists {
            return Err(StoreError::Conflict(format!(
                "device {id} already enrolled"
            )));
        }
        let mut all_labels = proposed_labels.clone();
        all_labels.extend(parse::<BTreeMap<String, String>>("labels", &labels)?);
        let password = random_token();
        let salt = random_token();
        tx.execute(
            "INSERT INTO devices (id, public_key, password_hash, password_salt, profile, arch, runtimes,
                                  agent_version, labels, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                id.as_str(),
                key.to_base64(),
                hash_password(&salt, &password),
                salt,
                profile,
                arch.as_str(),
                json(&runtimes),
                agent_version,
                json(&all_labels),
                unix_now() as i64
            ],
        )?;
        tx.execute(
            "UPDATE enroll_tokens SET used_by = ?2 WHERE token_hash = ?1",
            params![hash_password("enroll", token), id.as_str()],
        )?;
        tx.commit()?;
        Ok(password)
    }

    // ---- groups ----------------------------------------------------------------------------

    /// Creates or replaces a group.
    pub fn put_group(&self, g: &GroupRow) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO groups (name, selector, members) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET selector = excluded.selector, members = excluded.members",
            params![g.name, g.selector.as_ref().map(json), json(&g.members)],
        )?;
        Ok(())
    }

    /// All groups.
    pub fn groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT name, selector, members FROM groups ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, selector, members) = row?;
            out.push(GroupRow {
                name,
                selector: selector.map(|s| parse("selector", &s)).transpose()?,
                members: parse("members", &members)?,
            });
        }
        Ok(out)
    }

    // ---- images ----------------------------------------------------------------------------

    /// Records an imported image: idempotent on digest, but the same content cannot be recorded
    /// for two architectures (the digest names the content, the record its architecture).
    pub fn put_image(&self, i: &ImageRow) -> Result<(), StoreError> {
        let held: Option<String> = self
            .lock()
            .query_row(
                "SELECT arch FROM images WHERE digest = ?1",
                [&i.digest],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(arch) = held {
            if arch != i.arch.as_str() {
                return Err(StoreError::Conflict(format!(
                    "image {} is already imported for {arch}, not {}",
                    i.digest, i.arch
                )));
            }
        }
        self.lock().execute(
            "INSERT OR IGNORE INTO images (digest, name, size, compressed_size, arch, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                i.digest,
                i.name,
                i.size as i64,
                i.compressed_size as i64,
                i.arch.as_str(),
                i.created_at as i64
            ],
        )?;
        Ok(())
    }

    /// All images.
    pub fn images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT digest, name, size, compressed_size, arch, created_at FROM images ORDER BY created_at, digest")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (digest, name, size, cs, arch, created) = row?;
            out.push(ImageRow {
                digest,
                name,
                size: size as u64,
                compressed_size: cs as u64,
                arch: parse("arch", &format!("\"{arch}\""))?,
                created_at: created as u64,
            });
        }
        Ok(out)
    }

    // ---- releases and deployments ----------------------------------------------------------

    /// Creates a release; `(name, version)` is unique.
    pub fn create_release(
        &self,
        name: &str,
        version: &str,
        workloads: &[Workload],
    ) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO releases (name, version, workloads, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, version, json(&workloads), unix_now() as i64],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(format!("release {name} {version} already exists"))
            }
            e => StoreError::Sql(e),
        })?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// All releases.
    pub fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id, name, version, workloads, created_at FROM releases ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, version, w, c) = row?;
            out.push(ReleaseRow {
                id: id as u64,
                name,
                version,
                workloads: parse("workloads", &w)?,
                created_at: c as u64,
            });
        }
        Ok(out)
    }

    /// Creates a deployment.
    pub fn create_deployment(
        &self,
        release_id: u64,
        target: &crate::releases::Target,
        priority: i64,
    ) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO deployments (release_id, target, priority, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![release_id as i64, json(target), priority, unix_now() as i64],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// Marks a deployment deleted.
    pub fn delete_deployment(&self, id: u64) -> Result<(), StoreError> {
        let n = self.lock().execute(
            "UPDATE deployments SET deleted = 1 WHERE id = ?1 AND deleted = 0",
            [id as i64],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("deployment {id}")));
        }
        Ok(())
    }

    /// Live deployments.
    pub fn deployments(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, release_id, target, priority, created_at FROM deployments WHERE deleted = 0 ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, rid, target, priority, c) = row?;
            out.push(DeploymentRow {
                id: id as u64,
                release_id: rid as u64,
                target: parse("target", &target)?,
                priority,
                created_at: c as u64,
            });
        }
        Ok(out)
    }

    // ---- desired states --------------------------------------------------------------------

    /// The stored desired state of a device: (revision, content digest of its workloads).
    pub fn desired_row(&self, device: &str) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT revision, workloads_digest FROM desired WHERE device = ?1",
                [device],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()?)
    }

    /// Marks every stored desired state as changed, so the next publish re-signs all of them
    /// (after a key change). Revisions and envelopes stay until replaced.
    pub fn forget_desired_digests(&self) -> Result<(), StoreError> {
        self.lock()
            .execute("UPDATE desired SET workloads_digest = ''", [])?;
        Ok(())
    }

    /// Makes the next allocated revision greater than `floor`.
    pub fn raise_revision_counter(&self, floor: u64) -> Result<(), StoreError> {
        let conn = self.lock();
        let last: u64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [last.max(floor).to_string()],
        )?;
        Ok(())
    }

    /// The signed envelope held for a device.
    pub fn desired_envelope(&self, device: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT envelope FROM desired WHERE device = ?1",
                [device],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Allocates the next fleet-wide revision and stores the signed state built for it, in one
    /// transaction: no device ever receives a state the database does not hold.
    pub fn store_desired(
        &self,
        device: &str,
        workloads_digest: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let last: u64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let revision = last + 1;
        let envelope = build(revision);
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [revision.to_string()],
        )?;
        tx.execute(
            "INSERT INTO desired (device, revision, workloads_digest, envelope, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(device) DO UPDATE SET revision = excluded.revision, workloads_digest = excluded.workloads_digest,
               envelope = excluded.envelope, issued_at = excluded.issued_at",
            params![device, revision as i64, workloads_digest, envelope, unix_now() as i64],
        )?;
        tx.commit()?;
        Ok((revision, envelope))
    }
}
