//! The registry: devices, their enrollment, labels, maintenance windows and broker credentials.

use std::collections::BTreeMap;

use protocol::{DeviceId, MaintenanceWindow};
use rusqlite::{params, Connection, OptionalExtension};

use super::publish::{mark_dirty, Dirty};
use super::{json, parse, unix_now, Store, StoreError};
use crate::model::{DeviceRow, NewDevice};

impl Store {
    /// A device's stored broker password hash and salt.
    pub fn device_credentials(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT password_hash, password_salt FROM devices WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Deletes a device and everything the hub holds for it (its signed state, events, acks,
    /// pulls, publishing work) in one transaction; its broker credentials go with its row, so
    /// its next connection is refused.
    pub fn delete_device(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute("DELETE FROM devices WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        for table in ["desired", "events", "acks", "dirty", "image_pulls"] {
            tx.execute(&format!("DELETE FROM {table} WHERE device = ?1"), [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the device exists.
    pub fn device_exists(&self, id: &DeviceId) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT 1 FROM devices WHERE id = ?1", [id.as_str()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// All devices.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        read_devices(&self.lock(), "", &[])
    }

    /// Devices whose id contains `id_part` or whose labels (as stored, JSON) contain
    /// `labels_part`, compared in ASCII lower case: a superset of a search that the caller
    /// narrows (`api/device_query.rs`), so a search reads only the rows that may match.
    pub fn devices_containing(
        &self,
        id_part: &str,
        labels_part: &str,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        read_devices(
            &self.lock(),
            "WHERE instr(lower(d.id), ?1) > 0 OR instr(lower(d.labels), ?2) > 0",
            &[&id_part, &labels_part],
        )
    }

    /// One device, looked up by its key.
    pub fn device(&self, id: &str) -> Result<DeviceRow, StoreError> {
        read_devices(&self.lock(), "WHERE d.id = ?1", &[&id])?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("device {id}")))
    }

    /// Replaces a device's labels; the device is marked for the publisher in the same
    /// transaction.
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.update_device(
            id,
            "UPDATE devices SET labels = ?2 WHERE id = ?1",
            Some(json(labels)),
        )
    }

    /// Sets or clears a device's own maintenance window; the device is marked for the
    /// publisher in the same transaction.
    pub fn set_device_maintenance(
        &self,
        id: &str,
        window: Option<&MaintenanceWindow>,
    ) -> Result<(), StoreError> {
        self.update_device(
            id,
            "UPDATE devices SET maintenance = ?2 WHERE id = ?1",
            window.map(json),
        )
    }

    /// Runs one `UPDATE devices … WHERE id = ?1` with `value` as `?2` and marks the device for
    /// the publisher in the same transaction; an unknown device is `NotFound` and changes nothing.
    fn update_device(&self, id: &str, sql: &str, value: Option<String>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute(sql, params![id, value])? == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        mark_dirty(&tx, Dirty::Devices(&[id.to_string()]), false)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a one-time enrollment token by its hash.
    pub fn insert_enroll_token(
        &self,
        token_hash: &str,
        labels: &BTreeMap<String, String>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO enroll_tokens (token_hash, labels, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, json(labels), expires_at as i64, unix_now() as i64],
        )?;
        Ok(())
    }

    /// Consumes the token with this hash and creates the device, in one transaction. The
    /// device gets the token's labels: labels come from the token or an operator, so a
    /// proposed label the token does not set to the same value is a `Conflict` (and the token
    /// stays unused). `NotFound` for an unknown token, `Conflict` for a used or expired one or
    /// an id already enrolled.
    pub fn enroll_device(
        &self,
        token_hash: &str,
        device: &NewDevice,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row: Option<(String, i64, Option<String>)> = tx
            .query_row(
                "SELECT labels, expires_at, used_by FROM enroll_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((labels, expires_at, used_by)) = row else {
            return Err(StoreError::NotFound("enrollment token".into()));
        };
        if used_by.is_some() {
            return Err(StoreError::Conflict("enrollment token already used".into()));
        }
        if (expires_at as u64) <= now {
            return Err(StoreError::Conflict("enrollment token expired".into()));
        }
        let id = device.id.as_str();
        let exists: bool = tx
            .query_row("SELECT 1 FROM devices WHERE id = ?1", [id], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if exists {
            return Err(StoreError::Conflict(format!(
                "device {id} already enrolled"
            )));
        }
        let all_labels = parse::<BTreeMap<String, String>>("labels", &labels)?;
        if let Some((k, v)) = device
            .labels
            .iter()
            .find(|(k, v)| all_labels.get(*k) != Some(*v))
        {
            let (k, v): (String, String) =
                (k.chars().take(40).collect(), v.chars().take(40).collect());
            return Err(StoreError::Conflict(format!(
                "label {k}={v} is not set by the enrollment token; labels come from the token or an operator"
            )));
        }
        insert_device(&tx, device, &all_labels, now)?;
        tx.execute(
            "UPDATE enroll_tokens SET used_by = ?2 WHERE token_hash = ?1",
            params![token_hash, id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Registers many devices in one transaction, without enrollment tokens, and marks them
    /// for the publisher. Not reachable from the API: it is how load tests and simulators
    /// stand up thousands of devices without thousands of enrollment round trips (each
    /// still gets its own credentials, made by the caller). `Conflict` if an id exists.
    pub fn import_devices(&self, devices: &[NewDevice], now: u64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for d in devices {
            insert_device(&tx, d, &d.labels, now).map_err(|e| match e {
                StoreError::Backend(_) => {
                    StoreError::Conflict(format!("device {} already enrolled", d.id.as_str()))
                }
                e => e,
            })?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Inserts a device row and marks the device for the publisher (its first state).
fn insert_device(
    conn: &Connection,
    device: &NewDevice,
    labels: &BTreeMap<String, String>,
    now: u64,
) -> Result<(), StoreError> {
    let id = device.id.as_str();
    conn.execute(
        "INSERT INTO devices (id, public_key, password_hash, password_salt, profile, arch, runtimes,
                              agent_version, labels, enrolled_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id,
            device.public_key,
            device.password_hash,
            device.password_salt,
            device.profile,
            device.arch.as_str(),
            json(&device.runtimes),
            device.agent_version,
            json(labels),
            now as i64
        ],
    )?;
    mark_dirty(conn, Dirty::Devices(&[id.to_string()]), false)?;
    Ok(())
}

/// Devices matching `filter` (a `WHERE` clause over `d`, the devices table), ordered by id.
pub(super) fn read_devices(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeviceRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT d.id, d.profile, d.arch, d.runtimes, d.agent_version, d.labels, d.enrolled_at,
                d.last_seen, d.presence, d.status, s.revision, d.maintenance
         FROM devices d LEFT JOIN desired s ON s.device = d.id {filter} ORDER BY d.id"
    ))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ),
            (
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, Option<String>>(11)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (id, profile, arch, runtimes, agent_version, labels),
            (enrolled_at, last_seen, presence, status, rev, maintenance),
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
            maintenance: maintenance.map(|m| parse("maintenance", &m)).transpose()?,
            ingest_refused: Default::default(),
            pulls: Default::default(),
        });
    }
    Ok(out)
}
