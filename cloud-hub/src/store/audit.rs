//! The append-only, hash-chained audit log: each entry stores `sha256(prev_hash || entry)`, so
//! editing or deleting any entry breaks every hash after it.

use rusqlite::params;
use sha2::{Digest, Sha256};

use super::{unix_now, Store, StoreError};
use crate::model::AuditEntry;

fn entry_hash(
    prev: &str,
    time: u64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    outcome: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &time.to_string(),
        actor,
        action,
        target,
        detail,
        outcome,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends an audit entry inside the caller's transaction (so a change and its entry are one
/// commit).
pub(super) fn append_audit(
    tx: &rusqlite::Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    let prev: String = tx
        .query_row("SELECT hash FROM audit ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap_or_else(|_| "0".repeat(64));
    let time = unix_now();
    let hash = entry_hash(&prev, time, actor, action, target, detail, outcome);
    tx.execute(
        "INSERT INTO audit (time, actor, action, target, detail, outcome, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            time as i64,
            actor,
            action,
            target,
            detail,
            outcome,
            prev,
            hash
        ],
    )?;
    Ok(())
}

/// One audit row, its columns selected in this order: id, time, actor, action, target, detail,
/// outcome, prev_hash, hash.
pub(super) fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get::<_, i64>(0)? as u64,
        time: r.get::<_, i64>(1)? as u64,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
        outcome: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

impl Store {
    /// Appends an audit entry.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        append_audit(&tx, actor, action, target, detail, outcome)?;
        tx.commit()?;
        Ok(())
    }

    /// Audit entries in order, from `after_id`, at most `limit`.
    pub fn audit_entries(&self, after_id: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, time, actor, action, target, detail, outcome, prev_hash, hash FROM audit
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_id as i64, limit], audit_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Verifies the whole chain; returns the number of entries, or the id of the first broken one.
    pub fn verify_audit(&self) -> Result<Result<u64, u64>, StoreError> {
        let mut prev = "0".repeat(64);
        let mut n = 0;
        let mut after = 0;
        loop {
            let batch = self.audit_entries(after, 1000)?;
            if batch.is_empty() {
                return Ok(Ok(n));
            }
            for e in batch {
                let h = entry_hash(
                    &prev, e.time, &e.actor, &e.action, &e.target, &e.detail, &e.outcome,
                );
                if e.prev_hash != prev || e.hash != h {
                    return Ok(Err(e.id));
                }
                prev = e.hash;
                n += 1;
                after = e.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_with_any_entry_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("hub.db")).expect("open");
        for i in 0..5 {
            s.audit("admin", "deployment.create", &format!("d{i}"), "{}", "ok")
                .expect("audit");
        }
        assert_eq!(s.verify_audit().expect("verify"), Ok(5));
        s.lock()
            .execute("UPDATE audit SET target = 'other' WHERE id = 3", [])
            .expect("tamper");
        assert_eq!(s.verify_audit().expect("verify"), Err(3));
        s.lock()
            .execute("UPDATE audit SET target = 'd2' WHERE id = 3", [])
            .expect("restore");
        assert_eq!(s.verify_audit().expect("verify"), Ok(5));
        s.lock()
            .execute("DELETE FROM audit WHERE id = 2", [])
            .expect("delete");
        assert_eq!(s.verify_audit().expect("verify"), Err(3));
    }
}
