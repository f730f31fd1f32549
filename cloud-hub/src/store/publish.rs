//! The publisher's durable work list and the signed desired state per device.
//!
//! A change that may alter devices' desired states marks them in `dirty` in the same
//! transaction as the change itself, so a change the store accepted is never lost to a crash
//! before its states are signed: the publisher works through `dirty` in chunks, and each chunk's
//! states, the revision counter and the removal of the chunk's marks are one transaction.
//! `force` asks for a new signature even when the content is unchanged (a new key, or a state
//! close to its expiry).

use rusqlite::{params, Connection, OptionalExtension};

use super::devices::read_devices;
use super::fleet::{read_deployments, read_groups, read_releases};
use super::rollouts::read_gates;
use super::{Store, StoreError};
use std::collections::BTreeMap;

use crate::model::{
    DeploymentRow, DeviceRow, FleetSummary, GroupRow, ReleaseRow, RolloutGate, Target,
};

/// Which devices a change marks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dirty<'a> {
    /// Every device.
    All,
    /// These devices (ids that do not exist are ignored).
    Devices(&'a [String]),
}

impl<'a> Dirty<'a> {
    /// The devices a deployment with this target may change: those it lists, or every device
    /// for a group or a selector (which devices match is the publisher's computation).
    pub(crate) fn for_target(target: &'a Target) -> Self {
        match target {
            Target::Devices(ids) => Dirty::Devices(ids),
            Target::Group(_) | Target::Selector(_) => Dirty::All,
        }
    }
}

/// Marks devices for the publisher, inside the caller's transaction. Returns how many.
pub(crate) fn mark_dirty(
    conn: &Connection,
    which: Dirty<'_>,
    force: bool,
) -> Result<u64, StoreError> {
    const UPSERT: &str = "ON CONFLICT(device) DO UPDATE SET force = max(force, excluded.force)";
    let n = match which {
        Dirty::All => conn.execute(
            &format!(
                "INSERT INTO dirty (device, force) SELECT id, ?1 FROM devices WHERE true {UPSERT}"
            ),
            [force],
        )?,
        Dirty::Devices(ids) => {
            let mut stmt = conn.prepare_cached(&format!(
                "INSERT INTO dirty (device, force) SELECT id, ?2 FROM devices WHERE id = ?1 {UPSERT}"
            ))?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![id, force])?;
            }
            n
        }
    };
    Ok(n as u64)
}

/// A marked device, as the publisher sees it.
#[derive(Debug, Clone)]
pub struct DirtyDevice {
    /// The device.
    pub row: DeviceRow,
    /// Sign a new state even if its content is unchanged.
    pub force: bool,
    /// The content digest of the state held now, if any.
    pub held_digest: Option<String>,
}

/// One chunk of marked devices and the fleet they are computed against, read in one
/// transaction (a consistent snapshot).
#[derive(Debug, Clone)]
pub struct PublishChunk {
    /// The marked devices (by id; a mark for a device that no longer exists is dropped).
    pub devices: Vec<DirtyDevice>,
    /// Live deployments.
    pub deployments: Vec<DeploymentRow>,
    /// Releases.
    pub releases: Vec<ReleaseRow>,
    /// Groups.
    pub groups: Vec<GroupRow>,
    /// The first free revision; the chunk's states take consecutive revisions from it.
    pub next_revision: u64,
    /// The gates of staged rollouts, by deployment id.
    pub gates: BTreeMap<u64, RolloutGate>,
}

/// A signed state to store.
#[derive(Debug, Clone)]
pub struct DesiredWrite {
    /// Device id.
    pub device: String,
    /// Its revision (at least the chunk's `next_revision`).
    pub revision: u64,
    /// Content digest (workloads and window), to tell later whether the content changed.
    pub digest: String,
    /// The signed envelope, as published.
    pub envelope: Vec<u8>,
    /// Signing time.
    pub issued_at: u64,
    /// The `expires_at` inside the signed state.
    pub expires_at: u64,
}

fn revision_counter(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn set_revision_counter(conn: &Connection, value: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('revision', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [value.to_string()],
    )?;
    Ok(())
}

impl Store {
    /// Takes up to `limit` marked devices (by id), lets `sign` turn the snapshot into signed
    /// states, and stores them with the revision counter and the removal of the chunk's marks
    /// in one transaction. Returns the stored states (empty when nothing was marked), to be
    /// published only now that the store holds them. `sign` runs under the store's lock, so
    /// nothing changes between the snapshot and the write.
    pub fn publish_chunk(
        &self,
        limit: usize,
        sign: impl FnOnce(PublishChunk) -> Vec<DesiredWrite>,
    ) -> Result<(usize, Vec<DesiredWrite>), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let marked: Vec<(String, bool)> = {
            let mut stmt =
                tx.prepare_cached("SELECT device, force FROM dirty ORDER BY device LIMIT ?1")?;
            let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        if marked.is_empty() {
            return Ok((0, Vec::new()));
        }
        let mut devices = Vec::with_capacity(marked.len());
        for (id, force) in &marked {
            let Some(row) = read_devices(&tx, "WHERE d.id = ?1", &[id])?.pop() else {
                continue;
            };
            let held_digest = tx
                .prepare_cached("SELECT workloads_digest FROM desired WHERE device = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            devices.push(DirtyDevice {
                row,
                force: *force,
                held_digest,
            });
        }
        let next_revision = revision_counter(&tx)? + 1;
        let writes = sign(PublishChunk {
            devices,
            deployments: read_deployments(&tx)?,
            releases: read_releases(&tx)?,
            groups: read_groups(&tx)?,
            next_revision,
            gates: read_gates(&tx)?,
        });
        let mut last = next_revision - 1;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO desired (device, revision, workloads_digest, envelope, issued_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(device) DO UPDATE SET revision = excluded.revision,
                   workloads_digest = excluded.workloads_digest, envelope = excluded.envelope,
                   issued_at = excluded.issued_at, expires_at = excluded.expires_at",
            )?;
            for w in &writes {
                if w.revision < next_revision {
                    return Err(StoreError::Conflict(format!(
                        "revision {} for {} is below the next free revision {next_revision}",
                        w.revision, w.device
                    )));
                }
                last = last.max(w.revision);
                put.execute(params![
                    w.device,
                    w.revision as i64,
                    w.digest,
                    w.envelope,
                    w.issued_at as i64,
                    w.expires_at as i64
                ])?;
            }
            let mut done = tx.prepare_cached("DELETE FROM dirty WHERE device = ?1")?;
            for (id, _) in &marked {
                done.execute([id])?;
            }
        }
        set_revision_counter(&tx, last)?;
        tx.commit()?;
        Ok((marked.len(), writes))
    }

    /// Marks every device for the publisher; with `force`, each is signed again even if its
    /// content is unchanged (after a key change). Returns how many.
    pub fn mark_all_dirty(&self, force: bool) -> Result<u64, StoreError> {
        mark_dirty(&self.lock(), Dirty::All, force)
    }

    /// Marks, to be signed again, every stored state that expires at or before `before`
    /// (states stored before expiry was recorded count as expiring). Returns how many.
    pub fn mark_expiring(&self, before: u64) -> Result<u64, StoreError> {
        let n = self.lock().execute(
            "INSERT INTO dirty (device, force)
             SELECT device, 1 FROM desired WHERE COALESCE(expires_at, 0) <= ?1
             ON CONFLICT(device) DO UPDATE SET force = 1",
            [before as i64],
        )?;
        Ok(n as u64)
    }

    /// Counts over the whole fleet, in one read: devices, states held, marks waiting, and
    /// what the devices last reported against the state held for them.
    pub fn fleet_summary(&self) -> Result<FleetSummary, StoreError> {
        let conn = self.lock();
        let summary = conn.query_row(
            "SELECT
               (SELECT COUNT(*) FROM devices),
               (SELECT COUNT(*) FROM desired),
               (SELECT COUNT(*) FROM dirty),
               COALESCE(SUM(json_extract(d.presence, '$.state') = 'online'), 0),
               COALESCE(SUM(json_extract(d.status, '$.applied_revision') = s.revision
                            AND json_extract(d.status, '$.convergence') = 'converged'), 0),
               COALESCE(SUM(json_extract(d.status, '$.convergence') = 'failed'), 0),
               COALESCE(SUM(json_extract(d.status, '$.stale') = 1), 0)
             FROM devices d LEFT JOIN desired s ON s.device = d.id",
            [],
            |r| {
                Ok(FleetSummary {
                    devices: r.get::<_, i64>(0)? as u64,
                    with_state: r.get::<_, i64>(1)? as u64,
                    publish_pending: r.get::<_, i64>(2)? as u64,
                    online: r.get::<_, i64>(3)? as u64,
                    converged: r.get::<_, i64>(4)? as u64,
                    failed: r.get::<_, i64>(5)? as u64,
                    stale: r.get::<_, i64>(6)? as u64,
                })
            },
        )?;
        Ok(summary)
    }

    /// How many devices wait for the publisher.
    pub fn publish_pending(&self) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM dirty", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Makes the next allocated revision greater than `floor`.
    pub fn raise_revision_counter(&self, floor: u64) -> Result<(), StoreError> {
        let conn = self.lock();
        let last = revision_counter(&conn)?;
        set_revision_counter(&conn, last.max(floor))
    }

    /// The stored desired state of a device: (revision, content digest).
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
}
