//! Retiring what nothing uses: a group no live deployment targets, a release no live
//! deployment runs, an image no release names. Each refuses with the user named and changes
//! nothing; each deletion and its audit entry are one transaction.

use rusqlite::params;

use super::fleet::{read_deployments, read_releases};
use super::publish::{mark_dirty, Dirty};
use super::{Store, StoreError};
use crate::model::Target;

impl Store {
    /// Deletes a group no live deployment targets. Every device is marked for the publisher
    /// (a group's maintenance window shapes its members' states).
    pub fn delete_group(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(d) = read_deployments(&tx)?
            .iter()
            .find(|d| d.target == Target::Group(name.to_string()))
        {
            return Err(StoreError::Conflict(format!(
                "group {name} is the target of deployment {}: delete that first",
                d.id
            )));
        }
        if tx.execute("DELETE FROM groups WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("group {name}")));
        }
        mark_dirty(&tx, Dirty::All, false)?;
        super::audit::append_audit(&tx, actor, "group.delete", name, "{}", "ok")?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a release no live deployment runs (with the deleted deployments that name it).
    pub fn delete_release(&self, id: u64, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(d) = read_deployments(&tx)?.iter().find(|d| d.release_id == id) {
            return Err(StoreError::Conflict(format!(
                "release {id} is run by deployment {}: delete that first",
                d.id
            )));
        }
        tx.execute(
            "DELETE FROM deployments WHERE release_id = ?1 AND deleted = 1",
            [id as i64],
        )?;
        if tx.execute("DELETE FROM releases WHERE id = ?1", [id as i64])? == 0 {
            return Err(StoreError::NotFound(format!("release {id}")));
        }
        super::audit::append_audit(&tx, actor, "release.delete", &id.to_string(), "{}", "ok")?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes the record of an image no release names. The caller removes its blob after.
    pub fn delete_image(&self, digest: &str, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(r) = read_releases(&tx)?.iter().find(|r| {
            r.workloads
                .iter()
                .any(|w| w.image.digest.to_string() == digest)
        }) {
            return Err(StoreError::Conflict(format!(
                "image {digest} is used by release {} {} (id {}): delete that first",
                r.name, r.version, r.id
            )));
        }
        if tx.execute("DELETE FROM images WHERE digest = ?1", params![digest])? == 0 {
            return Err(StoreError::NotFound(format!("image {digest}")));
        }
        super::audit::append_audit(&tx, actor, "image.delete", digest, "{}", "ok")?;
        tx.commit()?;
        Ok(())
    }
}
