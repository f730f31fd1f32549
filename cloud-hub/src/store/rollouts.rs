//! Staged rollouts: one row per rollout with its plan and its controller state (JSON the
//! rollout service owns and the store keeps opaque), and the gate the publisher applies to the
//! rollout's deployment ([`RolloutGate`]). A step of the controller is one transaction: the
//! new state, the marks of the devices it changes and its audit entries, so a hub that dies
//! after a step neither loses nor repeats it.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::audit::append_audit;
use super::devices::read_devices;
use super::fleet::{read_deployments, read_groups, read_releases};
use super::publish::{mark_dirty, Dirty};
use super::{json, parse, Store, StoreError};
use crate::model::{
    AuditEntry, DeploymentRow, DeviceRow, GroupRow, ReleaseRow, RolloutGate, Target,
};

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    /// Id.
    pub id: u64,
    /// The deployment it stages.
    pub deployment: u64,
    /// The plan (JSON).
    pub plan: String,
    /// The controller's state (JSON).
    pub state: String,
    /// Creation time.
    pub created_at: u64,
}

/// One audit entry to write with a step.
#[derive(Debug, Clone)]
pub struct AuditLine {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Details (JSON text).
    pub detail: String,
}

/// One step of a rollout to store.
#[derive(Debug, Clone)]
pub struct RolloutStep {
    /// The new state (JSON).
    pub state: String,
    /// The new gate.
    pub gate: RolloutGate,
    /// Devices to mark for the publisher.
    pub publish: Vec<String>,
    /// Audit entries.
    pub audit: Vec<AuditLine>,
    /// Webhook events `(event, body)`, queued if the rollout has a webhook.
    pub notify: Vec<(String, String)>,
}

/// What the rollout driver observes, read in one transaction.
#[derive(Debug, Clone)]
pub struct RolloutSnapshot {
    /// Every rollout.
    pub rollouts: Vec<RolloutRow>,
    /// Every device.
    pub devices: Vec<DeviceRow>,
    /// Live deployments.
    pub deployments: Vec<DeploymentRow>,
    /// Releases.
    pub releases: Vec<ReleaseRow>,
    /// Groups.
    pub groups: Vec<GroupRow>,
    /// The content digest of each device's stored state.
    pub digests: BTreeMap<String, String>,
    /// Devices marked for the publisher (their stored state may be out of date).
    pub dirty: BTreeSet<String>,
}

fn read_rollouts(conn: &Connection, filter: &str) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, deployment, plan, state, created_at FROM rollouts {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok(RolloutRow {
            id: r.get::<_, i64>(0)? as u64,
            deployment: r.get::<_, i64>(1)? as u64,
            plan: r.get(2)?,
            state: r.get(3)?,
            created_at: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The gate of every rollout, by deployment id.
pub(super) fn read_gates(conn: &Connection) -> Result<BTreeMap<u64, RolloutGate>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT deployment, gate FROM rollouts")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (dep, gate) = row?;
        out.insert(dep as u64, parse("rollout gate", &gate)?);
    }
    Ok(out)
}

impl Store {
    /// Creates a deployment and its rollout in one transaction. The gate admits nobody yet, so
    /// no device's state changes and none is marked. Returns (rollout id, deployment id).
    #[allow(clippy::too_many_arguments)]
    pub fn create_rollout(
        &self,
        release_id: u64,
        target: &Target,
        priority: i64,
        plan: &str,
        state: &str,
        now: u64,
        actor: &str,
        webhook: Option<(&str, &str)>,
    ) -> Result<(u64, u64), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO deployments (release_id, target, priority, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![release_id as i64, json(target), priority, now as i64],
        )?;
        let deployment = tx.last_insert_rowid() as u64;
        tx.execute(
            "INSERT INTO rollouts (deployment, plan, state, gate, created_at, updated_at,
                                   webhook_url, webhook_secret)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                deployment as i64,
                plan,
                state,
                json(&RolloutGate::Only(BTreeMap::new())),
                now as i64,
                webhook.map(|w| w.0),
                webhook.map(|w| w.1),
            ],
        )?;
        let id = tx.last_insert_rowid() as u64;
        let detail = serde_json::json!({
            "deployment": deployment, "release": release_id, "target": target,
            "priority": priority, "plan": serde_json::from_str::<serde_json::Value>(plan).unwrap_or_default(),
            "webhook": webhook.map(|w| w.0),
        });
        append_audit(
            &tx,
            actor,
            "rollout.create",
            &id.to_string(),
            &detail.to_string(),
            "ok",
        )?;
        tx.commit()?;
        Ok((id, deployment))
    }

    /// Every rollout.
    pub fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        read_rollouts(&self.lock(), "")
    }

    /// How many rollouts are under way (not completed, aborted or rolled back): one read of
    /// the rollouts table, so an idle driver never reads the devices.
    pub fn rollouts_under_way(&self) -> Result<u64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FROM rollouts WHERE json_extract(state, '$.stage.stage')
             NOT IN ('completed', 'aborted', 'rolled_back')",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// One rollout.
    pub fn rollout(&self, id: u64) -> Result<RolloutRow, StoreError> {
        read_rollouts(&self.lock(), &format!("WHERE id = {id}"))?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))
    }

    /// Stores a step of rollout `id` if its state is still `prev`: the new state and gate, the
    /// marks, and the audit entries, in one transaction. Returns how many devices were
    /// marked; a state changed meanwhile is a conflict and nothing is written.
    pub fn save_rollout(
        &self,
        id: u64,
        prev: &str,
        step: &RolloutStep,
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held: Option<String> = tx
            .query_row(
                "SELECT state FROM rollouts WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )
            .optional()?;
        match held {
            None => return Err(StoreError::NotFound(format!("rollout {id}"))),
            Some(h) if h != prev => {
                return Err(StoreError::Conflict(format!(
                    "rollout {id} changed meanwhile; try again"
                )))
            }
            Some(_) => {}
        }
        tx.execute(
            "UPDATE rollouts SET state = ?2, gate = ?3, updated_at = ?4 WHERE id = ?1",
            params![id as i64, step.state, json(&step.gate), now as i64],
        )?;
        let marked = mark_dirty(&tx, Dirty::Devices(&step.publish), false)?;
        for a in &step.audit {
            append_audit(&tx, &a.actor, &a.action, &id.to_string(), &a.detail, "ok")?;
        }
        super::webhooks::queue(&tx, id, &step.notify, now)?;
        tx.commit()?;
        Ok(marked)
    }

    /// The audit entries of rollout `id` (`rollout.*` actions) after entry `after`, at most
    /// `limit`, in order: its history, as the progress stream sends it.
    pub fn rollout_history(
        &self,
        id: u64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, time, actor, action, target, detail, outcome, prev_hash, hash FROM audit
             WHERE target = ?1 AND action LIKE 'rollout.%' AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![id.to_string(), after as i64, limit],
            super::audit::audit_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Everything the rollout driver observes, in one read.
    pub fn rollout_snapshot(&self) -> Result<RolloutSnapshot, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let digests = {
            let mut stmt = tx.prepare_cached("SELECT device, workloads_digest FROM desired")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let dirty = {
            let mut stmt = tx.prepare_cached("SELECT device FROM dirty")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(RolloutSnapshot {
            rollouts: read_rollouts(&tx, "")?,
            devices: read_devices(&tx, "", &[])?,
            deployments: read_deployments(&tx)?,
            releases: read_releases(&tx)?,
            groups: read_groups(&tx)?,
            digests,
            dirty,
        })
    }
}
