//! The agent's one SQLite file: identity, trust, the revision floor, the accepted desired state,
//! per-workload state and the outbox (DESIGN §3.5, §4.5).
//!
//! The whole database runs with `journal_mode=WAL` and `synchronous=FULL`: the trust store, the
//! revision floor and the outbox must survive a power cut, and in WAL mode anything less can
//! undo a commit and reuse an event sequence number. The other tables are small and written
//! rarely, so one setting for all costs little and removes a class of mistakes.
//!
//! Invariant: a state change and the event that reports it are written in one transaction
//! (each typed method below that takes an event appends it in the same transaction).
//!
//! What keeps these promises when the file system misbehaves — private modes, checkpoints after
//! critical commits, a lost WAL detected, sequence numbers leased, events held while the disk is
//! full — is `durable.rs`.
//!
//! Write only on change: a pass that changes no record and reports nothing commits nothing
//! (an idle agent must not wear out its flash, issue #16).
//!
//! This module holds the agent's only SQL. Callers see typed methods (`accept_desired`,
//! `save_pass`, `mark_applied`, …); the `meta` keys are private to it (see [`key`]).

mod durable;
mod identity;
mod meta;
mod outbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use identity::Identity;
use meta::{get_json, put_json, put_raw, raise_time_floor};
use protocol::{
    DesiredState, Envelope, Event, EventBody, RevisionFloor, RootKeys, TrustStore, WorkloadName,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::reconcile::Record;

/// The keys of the `meta` table, in one place.
mod key {
    pub const IDENTITY: &str = "identity";
    pub const TRUST: &str = "trust";
    pub const FLOOR: &str = "floor";
    pub const TIME_FLOOR: &str = "time_floor";
    pub const DESIRED: &str = "desired";
    pub const BOOT: &str = "boot";
    pub const APPLIED: &str = "applied";
    pub const STALE_REPORTED: &str = "stale_reported";
    pub const NEXT_SEQ: &str = "next_seq";
    pub const DROPPED_TOTAL: &str = "dropped_total";
    pub const DROPPED_UNREPORTED: &str = "dropped_unreported";
    /// Every sequence number handed out is below it; checkpointed when it moves.
    pub const SEQ_LEASE: &str = "seq_lease";
}

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
    /// The database or its directory could not be made private.
    #[error("cannot make agent store {path} private: {source}")]
    Private {
        /// Database path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
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

impl StoreError {
    /// The disk (or the database's size limit) is full: SQLite rolled the transaction back, and
    /// nothing was written. Unlike an I/O or fsync error, this is not fatal (DESIGN §4.5).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
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

/// The open store. Owned by the agent's owner loop; other tasks never touch it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The outbox byte budget every event append enforces.
    outbox_budget: u64,
    /// Events that could not be stored while the disk was full, written by the next commit.
    held: durable::Held,
    /// The sequence-number lease as last committed; a commit that moves it is checkpointed.
    lease: u64,
    /// A checkpoint after a critical commit could not complete (a reader); retried.
    checkpoint_owed: bool,
    /// Sequence numbers given up at open because the WAL was lost (0 normally).
    lost_wal: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the store, after an integrity check;
    /// recovers from a lost WAL (see `durable.rs`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Before SQLite opens the file and rebuilds its WAL index.
        let wal_lost = durable::wal_lost(path);
        durable::make_private(path).map_err(|source| StoreError::Private {
            path: path.to_path_buf(),
            source,
        })?;
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
            outbox_budget: crate::config::Config::default().outbox_budget_bytes,
            held: durable::Held::default(),
            lease: 0,
            checkpoint_owed: false,
            lost_wal: 0,
        };
        store.migrate().map_err(open_err)?;
        if wal_lost {
            store.recover_lost_wal()?;
        }
        store.lease = get_json(&store.conn, key::SEQ_LEASE)?.unwrap_or(0);
        Ok(store)
    }

    /// After a lost WAL: keeps what `agent.db` holds and reports the loss (`durable.rs`).
    fn recover_lost_wal(&mut self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let budget = self.outbox_budget;
        self.lost_wal = self.tx_critical(|tx| durable::recover_lost_wal(tx, now, budget))?;
        tracing::error!(
            path = %self.path.display(),
            skipped_sequence_numbers = self.lost_wal,
            "the store's WAL was lost: its last commits are gone (identity, trust and floors \
             were checkpointed and stand); events since then are reported as dropped"
        );
        Ok(())
    }

    /// Sequence numbers given up at open because the WAL had been lost (0 normally).
    pub fn lost_wal(&self) -> u64 {
        self.lost_wal
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

    /// Sets the outbox byte budget (from the config) that appends enforce.
    pub fn set_outbox_budget(&mut self, bytes: u64) {
        self.outbox_budget = bytes;
    }

    /// Runs `f` in one transaction, committed only if it returns `Ok`. Events held while the
    /// disk was full are written first, in the same transaction. A commit that moved the
    /// sequence-number lease is checkpointed.
    fn tx<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let held = std::mem::take(&mut self.held);
        let budget = self.outbox_budget;
        let run = |conn: &mut Connection| -> Result<(T, u64), StoreError> {
            let tx = conn.transaction()?;
            held.write(&tx, budget)?;
            let out = f(&tx)?;
            let lease = get_json(&tx, key::SEQ_LEASE)?.unwrap_or(0);
            tx.commit()?;
            Ok((out, lease))
        };
        let (out, lease) = match run(&mut self.conn) {
            Ok(v) => v,
            Err(e) => {
                self.held = held; // rolled back: still held
                return Err(e);
            }
        };
        if !held.is_empty() {
            tracing::info!(
                events = held.events.len(),
                dropped = held.dropped,
                "stored the events held while the disk was full"
            );
        }
        if lease != self.lease || self.checkpoint_owed {
            self.checkpoint()?;
            self.lease = lease;
        }
        Ok(out)
    }

    /// [`Store::tx`] for what must survive a lost WAL (identity, trust, floors, boot counter):
    /// checkpointed into the database file before it returns.
    fn tx_critical<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = self.tx(f)?;
        self.checkpoint()?;
        Ok(out)
    }

    /// Checkpoints the WAL into the database file. A reader that keeps it from completing, or
    /// a full disk, leaves it owed (the commit itself is durable in the WAL); any other error,
    /// an fsync's included, is returned.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        match durable::checkpoint(&self.conn) {
            Ok(done) => self.checkpoint_owed = !done,
            Err(e) if e.is_disk_full() => self.checkpoint_owed = true,
            Err(e) => return Err(e),
        }
        if self.checkpoint_owed {
            tracing::warn!(path = %self.path.display(), "checkpoint not completed; retried after the next commit");
        }
        Ok(())
    }

    /// A read-only view for the outbox's tests.
    #[cfg(test)]
    fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The device identity, or `NotEnrolled`.
    pub fn identity(&self) -> Result<Identity, StoreError> {
        get_json(&self.conn, key::IDENTITY)?.ok_or(StoreError::NotEnrolled)
    }

    /// The trust store, or `NotEnrolled`.
    pub fn trust(&self) -> Result<TrustStore, StoreError> {
        get_json(&self.conn, key::TRUST)?.ok_or(StoreError::NotEnrolled)
    }

    /// The revision floor. Missing only before the first desired state; enrollment writes 0.
    pub fn floor(&self) -> Result<RevisionFloor, StoreError> {
        get_json(&self.conn, key::FLOOR)?.ok_or(StoreError::NotEnrolled)
    }

    /// The highest `issued_at` of any accepted signed document: time never runs back below it.
    pub fn time_floor(&self) -> Result<u64, StoreError> {
        Ok(get_json(&self.conn, key::TIME_FLOOR)?.unwrap_or(0))
    }

    /// The accepted desired state envelope (raw bytes as received), if any.
    pub fn desired_envelope(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [key::DESIRED],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?)
    }

    /// Writes the identity, the pinned root and a zero floor: the device's first durable state.
    /// Refuses to overwrite an existing identity.
    pub fn provision(&mut self, identity: &Identity, root: RootKeys) -> Result<(), StoreError> {
        self.tx_critical(|tx| {
            if get_json::<Identity>(tx, key::IDENTITY)?.is_some() {
                return Err(StoreError::Decode {
                    key: key::IDENTITY.into(),
                    detail: "this data directory is already enrolled".into(),
                });
            }
            put_json(tx, key::IDENTITY, identity)?;
            put_json(tx, key::TRUST, &TrustStore::pinned(root))?;
            put_json(tx, key::FLOOR, &RevisionFloor::default())?;
            Ok(())
        })
    }

    /// The accepted desired state, decoded from the stored envelope.
    pub fn desired_state(&self) -> Result<Option<DesiredState>, StoreError> {
        let Some(bytes) = self.desired_envelope()? else {
            return Ok(None);
        };
        let decode = |detail: String| StoreError::Decode {
            key: key::DESIRED.into(),
            detail,
        };
        let env = Envelope::decode(&bytes).map_err(|e| decode(e.to_string()))?;
        serde_json::from_slice(&env.payload)
            .map(Some)
            .map_err(|e| decode(e.to_string()))
    }

    /// Counts this start of the agent and returns the count (the high half of presence epochs).
    pub fn next_boot(&mut self) -> Result<u64, StoreError> {
        self.tx_critical(|tx| {
            let b: u64 = get_json(tx, key::BOOT)?.unwrap_or(0) + 1;
            put_json(tx, key::BOOT, &b)?;
            Ok(b)
        })
    }

    /// Appends one event to the outbox. On a full disk the event is held in memory and stored
    /// by the next commit that succeeds (`durable.rs`).
    pub fn event(&mut self, body: EventBody, now: u64) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        let attempt = body.clone();
        match self.tx(|tx| outbox::append(tx, attempt, now, budget)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_disk_full() => {
                tracing::warn!(error = %e, "disk full: event held in memory until it can be stored");
                self.held.push(body, now);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Stores an accepted desired state: its envelope, the new revision floor, the time floor
    /// and the `desired_accepted` event, in one transaction.
    pub fn accept_desired(
        &mut self,
        envelope: &[u8],
        floor: &RevisionFloor,
        issued_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        self.tx_critical(|tx| {
            put_raw(tx, key::DESIRED, envelope)?;
            put_json(tx, key::FLOOR, floor)?;
            raise_time_floor(tx, issued_at)?;
            let body = EventBody::DesiredAccepted {
                revision: floor.revision,
            };
            outbox::append(tx, body, now, budget)?;
            Ok(())
        })
    }

    /// Stores an accepted trust update: the new trust store, the revision floor it resets (if
    /// any), the time floor and the `trust_accepted` event, in one transaction.
    pub fn accept_trust(
        &mut self,
        trust: &TrustStore,
        revision_floor: Option<u64>,
        issued_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        self.tx_critical(|tx| {
            put_json(tx, key::TRUST, trust)?;
            if let Some(revision) = revision_floor {
                let floor = RevisionFloor {
                    revision,
                    payload_digest: None,
                };
                put_json(tx, key::FLOOR, &floor)?;
            }
            raise_time_floor(tx, issued_at)?;
            let body = EventBody::TrustAccepted {
                version: trust.version,
            };
            outbox::append(tx, body, now, budget)?;
            Ok(())
        })
    }

    /// The persisted per-workload records.
    pub fn records(&self) -> Result<BTreeMap<WorkloadName, Record>, StoreError> {
        let decode = |detail: String| StoreError::Decode {
            key: "workloads".into(),
            detail,
        };
        let mut stmt = self.conn.prepare("SELECT name, state FROM workloads")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, state) = row?;
            let name = WorkloadName::new(name).map_err(|e| decode(e.to_string()))?;
            let rec: Record = serde_json::from_str(&state).map_err(|e| decode(e.to_string()))?;
            out.insert(name, rec);
        }
        Ok(out)
    }

    /// Persists one reconciler pass before it acts: every record (absent names are deleted)
    /// and the pass's events, in one transaction. A pass that changes nothing writes nothing.
    pub fn save_pass(
        &mut self,
        records: &BTreeMap<WorkloadName, Record>,
        events: Vec<EventBody>,
        now: u64,
    ) -> Result<(), StoreError> {
        if events.is_empty() && self.held.is_empty() && self.records()? == *records {
            return Ok(());
        }
        let budget = self.outbox_budget;
        self.tx(|tx| {
            tx.execute("DELETE FROM workloads", [])?;
            for (name, rec) in records {
                let json = serde_json::to_string(rec).map_err(|e| StoreError::Decode {
                    key: "workloads".into(),
                    detail: e.to_string(),
                })?;
                tx.execute(
                    "INSERT INTO workloads (name, state) VALUES (?1, ?2)",
                    params![name.as_str(), json],
                )?;
            }
            for e in events {
                outbox::append(tx, e, now, budget)?;
            }
            Ok(())
        })
    }

    /// The revision last reported converged.
    pub fn applied(&self) -> Result<Option<u64>, StoreError> {
        get_json(&self.conn, key::APPLIED)
    }

    /// Records `revision` as applied with its `update_succeeded` event.
    pub fn mark_applied(&mut self, revision: u64, now: u64) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        self.tx(|tx| {
            put_json(tx, key::APPLIED, &revision)?;
            outbox::append(tx, EventBody::UpdateSucceeded { revision }, now, budget)?;
            Ok(())
        })
    }

    /// The revision last reported stale.
    pub fn stale_reported(&self) -> Result<Option<u64>, StoreError> {
        get_json(&self.conn, key::STALE_REPORTED)
    }

    /// Records `revision` as reported stale with its `stale` event.
    pub fn mark_stale(&mut self, revision: u64, now: u64) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        self.tx(|tx| {
            put_json(tx, key::STALE_REPORTED, &revision)?;
            outbox::append(tx, EventBody::Stale { revision }, now, budget)?;
            Ok(())
        })
    }

    /// Deletes the events the hub acked (`seq <= acked`) and, when drops wait to be reported
    /// and there is room now, appends the `events_dropped` event.
    pub fn ack_events(&mut self, acked: u64, now: u64) -> Result<(), StoreError> {
        let budget = self.outbox_budget;
        self.tx(|tx| {
            outbox::ack(tx, acked)?;
            outbox::report_drops(tx, now, budget)
        })
    }

    /// The oldest unacked events, in order, at most `max_events` and about `max_bytes`.
    pub fn pending_events(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        outbox::pending(&self.conn, max_events, max_bytes)
    }

    /// Events dropped over budget since the device was provisioned.
    pub fn events_dropped_total(&self) -> Result<u64, StoreError> {
        outbox::dropped_total(&self.conn)
    }

    /// Events waiting in the outbox and their bytes.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        outbox::depth(&self.conn)
    }
}

#[cfg(test)]
mod tests;
