//! The hub's store: one SQLite file (WAL, `synchronous=FULL`) behind this module, the only one
//! that speaks SQL. Numbered migrations; `PRAGMA user_version` is the number applied.
//!
//! The store is the seam for a PostgreSQL backend when a fleet outgrows one machine: its API
//! speaks the plain types of [`crate::model`] and its error type names no SQLite type, so
//! nothing outside this module knows it is SQLite. It holds data only: it builds no MQTT
//! topics and makes no secrets (callers hand it hashes).
//!
//! - `mod.rs`: open, migrations, `meta`, the revision counter;
//! - `devices.rs`: the registry (devices, enrollment, labels, maintenance windows, credentials);
//! - `ingest.rs`: events and acks, status, presence, the retained set;
//! - `fleet.rs`: groups, images, releases, deployments;
//! - `tokens.rs`: API tokens (hashed), their expiry, revocation and scope;
//! - `publish.rs`: the publisher's durable work list (`dirty`) and the signed desired states;
//! - `audit.rs`: the hash-chained audit log;
//! - `rollouts.rs`: staged rollouts (plan, controller state, the gate the publisher applies);
//!   `webhooks.rs`: their webhook deliveries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

mod audit;
mod devices;
mod fleet;
mod ingest;
mod publish;
mod pulls;
mod retire;
mod rollouts;
mod tokens;
mod webhooks;

pub use publish::{DesiredWrite, DirtyDevice, PublishChunk};
pub use rollouts::{AuditLine, RolloutRow, RolloutSnapshot, RolloutStep};
pub use webhooks::{DeliveryRow, DueDelivery};

/// A failure inside the database backend. Opaque: callers see only its message.
#[derive(Debug)]
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Open or migrate failed.
    #[error("cannot open hub store {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: BackendError,
    },
    /// A query failed.
    #[error("hub store: {0}")]
    Backend(BackendError),
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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(BackendError(Box::new(e)))
    }
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
    // The maintenance window of a device and of a group (JSON `MaintenanceWindow`, or NULL).
    "ALTER TABLE devices ADD COLUMN maintenance TEXT;
     ALTER TABLE groups ADD COLUMN maintenance TEXT;",
    // The publisher's durable work list (devices whose state must be recomputed, `force` to
    // sign again unchanged) and the expiry of each stored state, to re-sign before it.
    "CREATE TABLE dirty (device TEXT PRIMARY KEY, force INTEGER NOT NULL DEFAULT 0);
     ALTER TABLE desired ADD COLUMN expires_at INTEGER;",
    // Image pulls from `image_pulled` events (full blob or delta, bytes saved), for the sums
    // per device and per deployment.
    "CREATE TABLE image_pulls (
        device TEXT NOT NULL,
        seq INTEGER NOT NULL,
        digest TEXT NOT NULL,
        delta INTEGER NOT NULL,
        base TEXT,
        bytes_fetched INTEGER NOT NULL,
        bytes_saved INTEGER NOT NULL,
        fallback TEXT,
        time INTEGER NOT NULL,
        PRIMARY KEY (device, seq)
     );",
    // Staged rollouts: one per deployment, its plan and controller state (JSON), the gate
    // (which devices the deployment reaches) the publisher applies, and its webhook; the
    // webhook deliveries, each queued with the step it reports.
    "CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        deployment INTEGER NOT NULL UNIQUE REFERENCES deployments(id),
        plan TEXT NOT NULL,
        state TEXT NOT NULL,
        gate TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        webhook_url TEXT,
        webhook_secret TEXT
     );
     CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        rollout INTEGER NOT NULL REFERENCES rollouts(id),
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        delivered_at INTEGER,
        last_error TEXT
     );",
    // API token expiry, revocation and scope (JSON `TokenScope`, or NULL for the whole role).
    "ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
     ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
     ALTER TABLE api_tokens ADD COLUMN scope TEXT;",
];

/// The shared store handle. A `std::sync::Mutex` because no lock is held across an `.await`:
/// every method is a short synchronous section (callers run them on the blocking pool).
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// Unix seconds now, for the timestamps the store records (`received_at`, `created_at`).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        let err = |source: rusqlite::Error| StoreError::Open {
            path: path.to_path_buf(),
            source: BackendError(Box::new(source)),
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

    /// The connection, for the submodules that keep their SQL here.
    fn lock(&self) -> MutexGuard<'_, Connection> {
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
}
