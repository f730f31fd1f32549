//! The controller's observations, built from the store's snapshot. Pure.
//!
//! A rollout's devices are those whose winning deployment (gates aside) is the rollout's, so a
//! device two rollouts cover belongs to the one of higher priority (then the newer). An
//! admitted device's update is `Updating` until the store holds a state with the release's
//! content for it and the device reports it converged on that revision (`Succeeded`) or
//! failed on it (`Failed`). Online is the device's last presence.

use protocol::{Convergence, PresenceState};

use super::controller::{DeviceObs, Health, RolloutState};
use super::plan::Plan;
use super::wire::{PhaseStatus, RolloutDevice};
use crate::model::DeviceRow;
use crate::service::desired::{maintenance_for, state_digest, winning_deployment};
use crate::store::{RolloutRow, RolloutSnapshot};

/// The rollout's devices now, or `None` when its deployment or release is gone.
pub fn devices<'a>(snap: &'a RolloutSnapshot, row: &RolloutRow) -> Option<Vec<&'a DeviceRow>> {
    let dep = snap.deployments.iter().find(|d| d.id == row.deployment)?;
    snap.releases.iter().find(|r| r.id == dep.release_id)?;
    Some(
        snap.devices
            .iter()
            .filter(|d| {
                winning_deployment(d, &snap.deployments, &snap.groups).map(|w| w.id) == Some(dep.id)
            })
            .collect(),
    )
}

fn online(d: &DeviceRow) -> bool {
    d.presence
        .as_ref()
        .is_some_and(|p| p.state == PresenceState::Online)
}

fn health(snap: &RolloutSnapshot, row: &RolloutRow, state: &RolloutState, d: &DeviceRow) -> Health {
    if !state.admitted.contains_key(&d.id) {
        return Health::Pending;
    }
    if snap.dirty.contains(&d.id) {
        return Health::Updating;
    }
    let release = snap
        .deployments
        .iter()
        .find(|x| x.id == row.deployment)
        .and_then(|dep| snap.releases.iter().find(|r| r.id == dep.release_id));
    let Some(release) = release else {
        return Health::Updating;
    };
    let expected = state_digest(
        &release.workloads,
        maintenance_for(d, &snap.groups).as_ref(),
    );
    if snap.digests.get(&d.id) != Some(&expected) {
        return Health::Updating;
    }
    let (Some(held), Some(st)) = (d.desired_revision, d.status.as_ref()) else {
        return Health::Updating;
    };
    match st.convergence {
        Convergence::Converged if st.applied_revision == Some(held) => Health::Succeeded,
        Convergence::Failed if st.desired_revision == Some(held) => Health::Failed,
        _ => Health::Updating,
    }
}

/// The observations of one rollout, or `None` when its deployment or release is gone.
pub fn observe(
    snap: &RolloutSnapshot,
    row: &RolloutRow,
    state: &RolloutState,
) -> Option<Vec<DeviceObs>> {
    Some(
        devices(snap, row)?
            .into_iter()
            .map(|d| DeviceObs {
                id: d.id.clone(),
                labels: d.labels.clone(),
                online: online(d),
                health: health(snap, row, state, d),
            })
            .collect(),
    )
}

/// Per-phase counts and the devices behind them, with their freshness.
pub fn phase_status(
    snap: &RolloutSnapshot,
    row: &RolloutRow,
    plan: &Plan,
    state: &RolloutState,
    _now: u64,
) -> Vec<PhaseStatus> {
    let mut phases: Vec<PhaseStatus> = (0..plan.phases.len() as u32)
        .map(|phase| PhaseStatus {
            phase,
            devices: 0,
            pending: 0,
            updating: 0,
            succeeded: 0,
            failed: 0,
            offline: 0,
            members: Vec::new(),
        })
        .collect();
    for d in devices(snap, row).unwrap_or_default() {
        let Some(p) = state
            .assignment
            .get(&d.id)
            .and_then(|p| phases.get_mut(*p as usize))
        else {
            continue;
        };
        let h = health(snap, row, state, d);
        let on = online(d);
        p.devices += 1;
        match h {
            Health::Pending => p.pending += 1,
            Health::Updating => p.updating += 1,
            Health::Succeeded => p.succeeded += 1,
            Health::Failed => p.failed += 1,
        }
        if !on {
            p.offline += 1;
        }
        p.members.push(RolloutDevice {
            id: d.id.clone(),
            health: h,
            admitted: state.admitted.contains_key(&d.id),
            online: on,
            last_seen: d.last_seen,
            deferred: d
                .status
                .as_ref()
                .is_some_and(|s| s.convergence == Convergence::Deferred),
        });
    }
    phases
}
