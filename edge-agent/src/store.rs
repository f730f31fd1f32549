//! The agent's one SQLite file: identity, trust, the revision floor, the accepted desired state,
//! per-workload state and the outbox (DESIGN §3.5, §4.5).
//!
//! The whole database runs with `journal_mode=WAL` and `synchronous=FULL`: the trust store, the
//! revision floor and the outbox must survive a power cut, and in WAL mode anything less can
//! undo a commit and reuse an event sequence number. The other tables are small and written
//! rarely, so one setting for all costs little and removes a class of mistakes.
//!
//! Invariant: a state change and the event that reports it are written in one transaction
//! (`Store::tx` + `outbox::append`).

use std::path::{Path, PathBuf};

use protocol::{enroll::EnrollResponse, DeviceId, KeyPair, RevisionFloor, RootKeys, TrustStore};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{de::DeserializeOwned, Serialize};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open agent store {path}: {source}")]
    Open {
        /// Database path.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// `PRAGMA integrity_check` found damage.
    #[error("agent store {path} is damaged ({detail}); refusing to start rather than forget the revision floor")]
    Corrupt {
        /// Database path.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The device has not been enrolled or provisioned.
    #[error("this agent is not enrolled: run `edge-agent enroll` or `edge-agent provision` first")]
    NotEnrolled,
    /// A query failed.
    #[error("agent store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value did not decode.
    #[error("agent store value {key}: {detail}")]
    Decode {
        /// Key.
        key: String,
        /// Why.
        detail: String,
    },
}

/// Numbered migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: key/value metadata, workloads, outbox.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE workloads (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL
     );
     CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        priority INTEGER NOT NULL,
        size INTEGER NOT NULL,
        body TEXT NOT NULL
     );",
];

/// Who this device is, from enrollment or manual provisioning.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Identity {
    /// Device id.
    pub device_id: DeviceId,
    /// The device key's secret seed (base64).
    pub secret_key: String,
    /// Broker host.
    pub mqtt_host: String,
    /// Broker port.
    pub mqtt_port: u16,
    /// Broker username.
    pub mqtt_username: String,
    /// Broker password.
    pub mqtt_password: String,
    /// Hub base URL for blobs.
    pub hub_url: String,
    /// Profile name.
    pub profile: String,
}

impl Identity {
    /// Builds the identity from an enrollment answer.
    pub fn from_enrollment(resp: &EnrollResponse, key: &KeyPair, profile: &str) -> Self {
        Self {
            device_id: resp.device_id.clone(),
            secret_key: key.to_secret_base64(),
            mqtt_host: resp.mqtt.host.clone(),
            mqtt_port: resp.mqtt.port,
            mqtt_username: resp.mqtt.username.clone(),
            mqtt_password: resp.mqtt.password.clone(),
            hub_url: resp.hub_url.clone(),
            profile: profile.to_string(),
        }
    }
}

/// The open store. Owned by the core loop; other tasks never touch it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the store, after an integrity check.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: check,
            });
        }
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate().map_err(open_err)?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), rusqlite::Error> {
        let version: usize =
            self.conn
                .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one transaction, committed only if it returns `Ok`.
    pub fn tx<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// A read-only view for queries outside a transaction.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The device identity, or `NotEnrolled`.
    pub fn identity(&self) -> Result<Identity, StoreError> {
        get_json(&self.conn, "identity")?.ok_or(StoreError::NotEnrolled)
    }

    /// The trust store, or `NotEnrolled`.
    pub fn trust(&self) -> Result<TrustStore, StoreError> {
        get_json(&self.conn, "trust")?.ok_or(StoreError::NotEnrolled)
    }

    /// The revision floor. Missing only before the first desired state; enrollment writes 0.
    pub fn floor(&self) -> Result<RevisionFloor, StoreError> {
        get_json(&self.conn, "floor")?.ok_or(StoreError::NotEnrolled)
    }

    /// The highest `issued_at` of any accepted signed document: time never runs back below it.
    pub fn time_floor(&self) -> Result<u64, StoreError> {
        Ok(get_json(&self.conn, "time_floor")?.unwrap_or(0))
    }

    /// The accepted desired state envelope (raw bytes as received), if any.
    pub fn desired_envelope(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'desired'", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?)
    }

    /// Writes the identity, the pinned root and a zero floor: the device's first durable state.
    /// Refuses to overwrite an existing identity.
    pub fn provision(&mut self, identity: &Identity, root: RootKeys) -> Result<(), StoreError> {
        self.tx(|tx| {
            if get_json::<Identity>(tx, "identity")?.is_some() {
                return Err(StoreError::Decode {
                    key: "identity".into(),
                    detail: "this data directory is already enrolled".into(),
                });
            }
            put_json(tx, "identity", identity)?;
            put_json(tx, "trust", &TrustStore::pinned(root))?;
            put_json(tx, "floor", &RevisionFloor::default())?;
            Ok(())
        })
    }
}

/// Reads a JSON value from `meta`.
pub fn get_json<T: DeserializeOwned>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    raw.map(|b| {
        serde_json::from_slice(&b).map_err(|e| StoreError::Decode {
            key: key.into(),
            detail: e.to_string(),
        })
    })
    .transpose()
}

/// Writes a JSON value to `meta`.
pub fn put_json<T: Serialize>(conn: &Connection, key: &str, v: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(v).map_err(|e| StoreError::Decode {
        key: key.into(),
        detail: e.to_string(),
    })?;
    put_raw(conn, key, &bytes)
}

/// Writes raw bytes to `meta`.
pub fn put_raw(conn: &Connection, key: &str, v: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, v],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        Identity {
            device_id: DeviceId::new("gw-1").expect("valid"),
            secret_key: KeyPair::from_seed([1; 32]).to_secret_base64(),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: 1883,
            mqtt_username: "gw-1".into(),
            mqtt_password: "pw".into(),
            hub_url: "http://127.0.0.1:1".into(),
            profile: "local-dev".into(),
        }
    }

    #[test]
    fn provisioning_is_durable_and_not_repeatable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let root = RootKeys::single(KeyPair::from_seed([9; 32]).public());
        {
            let mut s = Store::open(&path).expect("open");
            assert!(matches!(s.identity(), Err(StoreError::NotEnrolled)));
            s.provision(&ident(), root.clone()).expect("provision");
            assert!(s.provision(&ident(), root.clone()).is_err());
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.identity().expect("id").device_id.as_str(), "gw-1");
        assert_eq!(s.trust().expect("trust").root, root);
        assert_eq!(s.floor().expect("floor"), RevisionFloor::default());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        std::fs::write(&path, b"this is not a database, but it is long enough to look like one......................................................").expect("write");
        assert!(Store::open(&path).is_err());
    }
}
