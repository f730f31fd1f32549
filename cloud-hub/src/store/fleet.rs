//! Fleet tables: groups, images, releases and deployments.

use protocol::{MaintenanceWindow, Workload};
use rusqlite::{params, Connection, OptionalExtension};

use super::publish::{mark_dirty, Dirty};
use super::{json, parse, unix_now, Store, StoreError};
use crate::model::{DeploymentRow, GroupRow, ImageRow, ReleaseRow, Target};

impl Store {
    // ---- groups ----------------------------------------------------------------------------

    /// Creates or replaces a group's selector and members (its maintenance window stays).
    /// Every device is marked for the publisher in the same transaction.
    pub fn put_group(&self, g: &GroupRow) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO groups (name, selector, members) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET selector = excluded.selector, members = excluded.members",
            params![g.name, g.selector.as_ref().map(json), json(&g.members)],
        )?;
        mark_dirty(&tx, Dirty::All, false)?;
        tx.commit()?;
        Ok(())
    }

    /// All groups.
    pub fn groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        read_groups(&self.lock())
    }

    /// Sets or clears a group's maintenance window. Every device is marked for the publisher
    /// in the same transaction; returns how many.
    pub fn set_group_maintenance(
        &self,
        name: &str,
        window: Option<&MaintenanceWindow>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE groups SET maintenance = ?2 WHERE name = ?1",
            params![name, window.map(json)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("group {name}")));
        }
        let marked = mark_dirty(&tx, Dirty::All, false)?;
        tx.commit()?;
        Ok(marked)
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
            e => StoreError::from(e),
        })?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// All releases.
    pub fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        read_releases(&self.lock())
    }

    /// Creates a deployment and, in the same transaction, marks the devices it may change for
    /// the publisher (those listed, or every device for a group or selector). Returns the id
    /// and how many devices were marked.
    pub fn create_deployment(
        &self,
        release_id: u64,
        target: &Target,
        priority: i64,
    ) -> Result<(u64, u64), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO deployments (release_id, target, priority, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![release_id as i64, json(target), priority, unix_now() as i64],
        )?;
        let id = tx.last_insert_rowid() as u64;
        let marked = mark_dirty(&tx, Dirty::for_target(target), false)?;
        tx.commit()?;
        Ok((id, marked))
    }

    /// Marks a deployment deleted and, in the same transaction, the devices it may have
    /// reached for the publisher. Returns how many devices were marked.
    pub fn delete_deployment(&self, id: u64) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let target: Option<String> = tx
            .query_row(
                "SELECT target FROM deployments WHERE id = ?1 AND deleted = 0",
                [id as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(target) = target else {
            return Err(StoreError::NotFound(format!("deployment {id}")));
        };
        let target: Target = parse("target", &target)?;
        tx.execute(
            "UPDATE deployments SET deleted = 1 WHERE id = ?1",
            [id as i64],
        )?;
        let marked = mark_dirty(&tx, Dirty::for_target(&target), false)?;
        tx.commit()?;
        Ok(marked)
    }

    /// Live deployments.
    pub fn deployments(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        read_deployments(&self.lock())
    }
}

pub(super) fn read_groups(conn: &Connection) -> Result<Vec<GroupRow>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT name, selector, members, maintenance FROM groups ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, selector, members, maintenance) = row?;
        out.push(GroupRow {
            name,
            selector: selector.map(|s| parse("selector", &s)).transpose()?,
            members: parse("members", &members)?,
            maintenance: maintenance.map(|m| parse("maintenance", &m)).transpose()?,
        });
    }
    Ok(out)
}

pub(super) fn read_releases(conn: &Connection) -> Result<Vec<ReleaseRow>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT id, name, version, workloads, created_at FROM releases ORDER BY id")?;
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

pub(super) fn read_deployments(conn: &Connection) -> Result<Vec<DeploymentRow>, StoreError> {
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
            pulls: Default::default(),
        });
    }
    Ok(out)
}
