//! The hub's store: one SQLite file (WAL, `synchronous=FULL`) behind this module, the only one
//! that speaks SQL. Numbered migrations; `PRAGMA user_version` is the number applied.
//!
//! The store is the seam for a PostgreSQL backend when a fleet outgrows one machine: nothing
//! outside this module knows it is SQLite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::{DeviceId, Event, Presence, StatusReport};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Open or migrate failed.
    #[error("cannot open hub store {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("hub store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value did not decode.
    #[error("hub store: bad {what}: {detail}")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        password_salt TEXT NOT NULL,
        profile TEXT NOT NULL,
        arch TEXT NOT NULL,
        runtimes TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        labels TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL,
        last_seen INTEGER,
        presence TEXT,
        status TEXT
     );
     CREATE TABLE enroll_tokens (
        token_hash TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_by TEXT,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE api_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        selector TEXT,
        members TEXT NOT NULL
     );
     CREATE TABLE images (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL,
        arch TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        workloads TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (name, version)
     );
     CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        release_id INTEGER NOT NULL REFERENCES releases(id),
        target TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE desired (
        device TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        workloads_digest TEXT NOT NULL,
        envelope BLOB NOT NULL,
        issued_at INTEGER NOT NULL
     );
     CREATE TABLE events (
        device TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time INTEGER NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (device, seq)
     );
     CREATE TABLE acks (device TEXT PRIMARY KEY, acked INTEGER NOT NULL);
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
     );",
];

/// The shared store handle. A `std::sync::Mutex` because no lock is held across an `.await`:
/// every method is a short synchronous section.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A device as the registry sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRow {
    /// Id.
    pub id: String,
    /// Profile name.
    pub profile: String,
    /// Architecture.
    pub arch: String,
    /// Runtimes reported at enrollment.
    pub runtimes: Vec<protocol::RuntimeKind>,
    /// Agent version.
    pub agent_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Enrollment time.
    pub enrolled_at: u64,
    /// Last message from the device.
    pub last_seen: Option<u64>,
    /// Presence with epoch.
    pub presence: Option<Presence>,
    /// Latest status.
    pub status: Option<StatusReport>,
    /// Revision of the desired state the hub holds for it.
    pub desired_revision: Option<u64>,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Decode {
        what,
        detail: e.to_string(),
    })
}

impl Store {
    /// Opens and migrates.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// The connection, for the modules of this crate that keep their SQL here.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A value from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a value in `meta`.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- devices -----------------------------------------------------------------------

    /// Whether `username`/`password` are a device's broker credentials.
    pub fn device_password_ok(&self, username: &str, password: &str) -> bool {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT password_hash, password_salt FROM devices WHERE id = ?1",
                [username],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ok()
            .flatten();
        match row {
            Some((hash, salt)) => constant_time_eq(&hash_password(&salt, password), &hash),
            None => false,
        }
    }

    /// Whether the device exists.
    pub fn device_exists(&self, id: &DeviceId) -> bool {
        self.lock()
            .query_row("SELECT 1 FROM devices WHERE id = ?1", [id.as_str()], |_| {
                Ok(())
            })
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    /// All devices.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT d.id, d.profile, d.arch, d.runtimes, d.agent_version, d.labels, d.enrolled_at,
                    d.last_seen, d.presence, d.status, s.revision
             FROM devices d LEFT JOIN desired s ON s.device = d.id ORDER BY d.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<i64>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                profile,
                arch,
                runtimes,
                agent_version,
                labels,
                enrolled_at,
                last_seen,
                presence,
                status,
                rev,
            ) = row?;
            out.push(DeviceRow {
                id,
                profile,
                arch,
                runtimes: parse("runtimes", &runtimes)?,
                agent_version,
                labels: parse("labels", &labels)?,
                enrolled_at: enrolled_at as u64,
                last_seen: last_seen.map(|v| v as u64),
                presence: presence.map(|p| parse("presence", &p)).transpose()?,
                status: status.map(|s| parse("status", &s)).transpose()?,
                desired_revision: rev.map(|v| v as u64),
            });
        }
        Ok(out)
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<DeviceRow, StoreError> {
        self.devices()?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("device {id}")))
    }

    /// Replaces a device's labels.
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let n = self.lock().execute(
            "UPDATE devices SET labels = ?2 WHERE id = ?1",
            params![id, json(labels)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        Ok(())
    }

    // ---- ingest ---------------------------------------------------------------------------

    /// Stores events idempotently by (device, seq) in one transaction and returns the highest
    /// contiguous sequence now stored (what the hub acks).
    pub fn insert_events(&self, device: &DeviceId, events: &[Event]) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = unix_now() as i64;
        for e in events {
            tx.execute(
                "INSERT OR IGNORE INTO events (device, seq, time, type, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    device.as_str(),
                    e.seq as i64,
                    e.time as i64,
                    e.body.type_name(),
                    json(&e.body),
                    now
                ],
            )?;
        }
        let mut acked: i64 = tx
            .query_row(
                "SELECT acked FROM acks WHERE device = ?1",
                [device.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        // Advance over the contiguous run. Events below the ack may have been deleted by the
        // agent-side budget, so only seqs above it matter.
        loop {
            let next: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM events WHERE device = ?1 AND seq = ?2",
                    params![device.as_str(), acked + 1],
                    |r| r.get(0),
                )
                .optional()?;
            match next {
                Some(_) => acked += 1,
                None => break,
            }
        }
        // A gap left by events the agent dropped under its budget must not stall acks forever:
        // the agent publishes its outbox oldest first, so when a batch starts above the ack,
        // everything below its first seq is gone for good. Skip over it and keep counting.
        if let Some(first) = events.first() {
            let first = first.seq as i64;
            if first > acked + 1 {
                acked = first - 1;
                loop {
                    let has: bool = tx
                        .query_row(
                            "SELECT 1 FROM events WHERE device = ?1 AND seq = ?2",
                            params![device.as_str(), acked + 1],
                            |_| Ok(true),
                        )
                        .optional()?
                        .unwrap_or(false);
                    if !has {
                        break;
                    }
                    acked += 1;
                }
            }
        }
        tx.execute(
            "INSERT INTO acks (device, acked) VALUES (?1, ?2)
             ON CONFLICT(device) DO UPDATE SET acked = excluded.acked",
            params![device.as_str(), acked],
        )?;
        tx.execute(
            "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
            params![device.as_str(), now],
        )?;
        tx.commit()?;
        Ok(acked as u64)
    }

    /// The highest contiguous event sequence stored for a device.
    pub fn acked(&self, device: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT acked FROM acks WHERE device = ?1", [device], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Stores the latest status snapshot.
    pub fn set_status(&self, device: &DeviceId, status: &StatusReport) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE devices SET status = ?2, last_seen = ?3 WHERE id = ?1",
            params![device.as_str(), json(status), unix_now() as i64],
        )?;
        Ok(())
    }

    /// Stores presence if it supersedes what is held (higher epoch); returns whether it did.
    pub fn set_presence(&self, device: &DeviceId, p: Presence) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held: Option<Option<String>> = tx
            .query_row(
                "SELECT presence FROM devices WHERE id = ?1",
                [device.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(held) = held else {
            return Ok(false);
        };
        let held: Option<Presence> = held.map(|h| parse("presence", &h)).transpose()?;
        if held.is_some_and(|h| !p.supersedes(&h)) {
            return Ok(false);
        }
        tx.execute(
            "UPDATE devices SET presence = ?2, last_seen = ?3 WHERE id = ?1",
            params![device.as_str(), json(&p), unix_now() as i64],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Events of a device, newest first, at most `limit`, below `before_seq` when given.
    pub fn events(
        &self,
        device: &str,
        limit: u32,
        before_seq: Option<u64>,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, time, body FROM events WHERE device = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let before = before_seq.map(|b| b as i64).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![device, before, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, body) = row?;
            out.push(Event {
                seq: seq as u64,
                time: time as u64,
                body: parse("event", &body)?,
            });
        }
        Ok(out)
    }

    /// Every retained message the hub owns, to republish on start and on reconnect: trust,
    /// each device's desired state, each device's ack.
    pub fn retained_messages(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        if let Some(t) = self.meta("trust_envelope")? {
            out.push((protocol::topics::TRUST.to_string(), t.into_bytes()));
        }
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT device, envelope FROM desired ORDER BY device")?;
        for row in stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (d, env) = row?;
            out.push((format!("fleet/v1/dev/{d}/desired"), env));
        }
        let mut stmt = conn.prepare("SELECT device, acked FROM acks ORDER BY device")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (d, acked) = row?;
            out.push((
                format!("fleet/v1/dev/{d}/ack"),
                protocol::json::encode(&protocol::Ack {
                    acked: acked as u64,
                }),
            ));
        }
        Ok(out)
    }
}

/// Salted SHA-256 of a password. The passwords are 32 random bytes issued by the hub, so a fast
/// hash is enough (no dictionary to attack).
pub fn hash_password(salt: &str, password: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{salt}:{password}").as_bytes()))
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// 32 random bytes as hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

mod audit;
mod fleet;

pub use audit::AuditEntry;
pub use fleet::{DeploymentRow, GroupRow, ImageRow, ReleaseRow, Role, TokenInfo};
