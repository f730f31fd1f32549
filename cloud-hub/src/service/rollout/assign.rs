//! Phase assignment: a device's position is a keyed hash of (rollout id, device id); the
//! devices present at the start are split by position, a device seen later falls where its
//! position (or a label phase) puts it. Either way the phase is stored and never changes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::controller::{DeviceObs, RolloutState};
use super::plan::{Plan, Select};

/// A device's position in a rollout: a keyed hash of (rollout id, device id), so the order is
/// fixed by the ids alone and differs between rollouts.
pub fn position(rollout: u64, device: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"fleet-rollout-position\0");
    h.update(rollout.to_be_bytes());
    h.update(device.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

pub(super) fn labels_match(
    labels: &BTreeMap<String, String>,
    sel: &BTreeMap<String, String>,
) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Assigns the devices present when the rollout starts, by position: label phases take their
/// devices, count phases the next `n`, percentage phases up to their cumulative share; the
/// last phase takes the rest.
pub(super) fn assign_initial(
    plan: &Plan,
    rollout: u64,
    devices: &[&DeviceObs],
) -> BTreeMap<String, u32> {
    let mut order: Vec<(u64, &DeviceObs)> = devices
        .iter()
        .map(|d| (position(rollout, &d.id), *d))
        .collect();
    order.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    let total = order.len() as u64;
    let last = (plan.phases.len() - 1) as u32;
    let mut out = BTreeMap::new();
    for (i, p) in plan.phases.iter().enumerate() {
        let i = i as u32;
        let free = order.iter().filter(|(_, d)| !out.contains_key(&d.id));
        let take: Vec<String> = match &p.select {
            Select::Labels(sel) => free
                .filter(|(_, d)| labels_match(&d.labels, sel))
                .map(|(_, d)| d.id.clone())
                .collect(),
            Select::Count(n) => free.take(*n as usize).map(|(_, d)| d.id.clone()).collect(),
            Select::Percent(pct) => {
                let upto = (total * u64::from(*pct)).div_ceil(100);
                let room = upto.saturating_sub(out.len() as u64) as usize;
                free.take(room).map(|(_, d)| d.id.clone()).collect()
            }
        };
        for id in take {
            out.insert(id, i);
        }
    }
    for (_, d) in &order {
        out.entry(d.id.clone()).or_insert(last);
    }
    out
}

/// The phase of a device first seen after the start: the first label phase it matches, a count
/// phase that is not full, or the percentage phase its position falls in; else the last.
pub(super) fn assign_late(plan: &Plan, rollout: u64, state: &RolloutState, d: &DeviceObs) -> u32 {
    let fraction = position(rollout, &d.id) as u128 * 100;
    for (i, p) in plan.phases.iter().enumerate() {
        let i = i as u32;
        let takes = match &p.select {
            Select::Labels(sel) => labels_match(&d.labels, sel),
            Select::Count(n) => {
                state.assignment.values().filter(|&&x| x == i).count() < *n as usize
            }
            Select::Percent(pct) => fraction < u128::from(*pct) << 64,
        };
        if takes {
            return i;
        }
    }
    (plan.phases.len() - 1) as u32
}
