//! Why a device runs what it runs: every deployment that targets it, which one wins and why,
//! and, when a rollout stages the winner, the device's phase and whether it was admitted.
//! Pure, over the same snapshot the driver reads.

use super::controller::RolloutState;
use super::wire::{Candidate, Explanation};
use crate::model::{DeploymentRow, RolloutGate};
use crate::service::desired::{compute_gated, maintenance_for, target_matches};
use crate::store::RolloutSnapshot;

fn describe(d: &DeploymentRow) -> String {
    match &d.target {
        crate::model::Target::Group(g) => format!("group {g}"),
        crate::model::Target::Selector(s) => format!(
            "selector {}",
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        crate::model::Target::Devices(_) => "device list".into(),
    }
}

/// The explanation for `device`, or `None` when it is not enrolled.
pub fn explain(snap: &RolloutSnapshot, device: &str) -> Option<Explanation> {
    let dev = snap.devices.iter().find(|d| d.id == device)?;
    let gates = snap
        .rollouts
        .iter()
        .filter_map(|r| {
            let s: RolloutState = serde_json::from_str(&r.state).ok()?;
            Some((r.deployment, (r.id, s)))
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    let gate_map = gates.iter().map(|(dep, (_, s))| (*dep, s.gate())).collect();
    let given = compute_gated(
        dev,
        &snap.deployments,
        &snap.releases,
        &snap.groups,
        &gate_map,
    );
    let mut matching: Vec<&DeploymentRow> = snap
        .deployments
        .iter()
        .filter(|d| target_matches(&d.target, dev, &snap.groups))
        .collect();
    matching.sort_by_key(|d| std::cmp::Reverse((d.priority, d.id)));
    let candidates = matching
        .into_iter()
        .map(|d| {
            let release = snap.releases.iter().find(|r| r.id == d.release_id);
            let staged = gates.get(&d.id);
            let winner = given.and_then(|(_, won, _)| {
                snap.deployments
                    .iter()
                    .find(|x| x.id == won)
                    .map(|x| (x.priority, x.id))
            });
            let verdict = match (given, staged) {
                _ if winner.is_some_and(|w| (d.priority, d.id) < w) => format!(
                    "outranked by deployment {} (higher priority, or as high and newer)",
                    winner.map_or(0, |w| w.1)
                ),
                (Some((_, won, _)), _) if won == d.id => match staged {
                    Some((r, s)) => format!(
                        "gives the device its state: admitted by rollout {r} ({})",
                        s.stage.name()
                    ),
                    None => "gives the device its state: highest priority, then newest".into(),
                },
                (_, Some((r, s))) => match (s.gate(), s.assignment.get(device)) {
                    (RolloutGate::Closed, _) => format!("passed over: rollout {r} was rolled back"),
                    (_, Some(p)) => format!(
                        "passed over: rollout {r} ({}) has not admitted it yet; its phase is {p}",
                        s.stage.name()
                    ),
                    (_, None) => format!(
                        "passed over: rollout {r} ({}) has not assigned it a phase yet",
                        s.stage.name()
                    ),
                },
                _ => "passed over".into(),
            };
            Candidate {
                deployment: d.id,
                release: d.release_id,
                release_name: release.map(|r| format!("{} {}", r.name, r.version)),
                priority: d.priority,
                target: describe(d),
                rollout: staged.map(|(r, _)| *r),
                phase: staged.and_then(|(_, s)| s.assignment.get(device).copied()),
                verdict,
            }
        })
        .collect();
    let window = dev
        .maintenance
        .as_ref()
        .map(|_| "its own".to_string())
        .or_else(|| {
            maintenance_for(dev, &snap.groups).map(|_| {
                let mut g: Vec<_> = snap
                    .groups
                    .iter()
                    .filter(|g| g.maintenance.is_some())
                    .filter(|g| {
                        target_matches(
                            &crate::model::Target::Group(g.name.clone()),
                            dev,
                            &snap.groups,
                        )
                    })
                    .map(|g| g.name.clone())
                    .collect();
                g.sort();
                format!("group {}", g.first().cloned().unwrap_or_default())
            })
        });
    Some(Explanation {
        device: dev.id.clone(),
        labels: dev.labels.clone(),
        deployment: given.map(|g| g.1),
        release: given.map(|g| format!("{} {}", g.0.name, g.0.version)),
        phase: given.and_then(|g| g.2),
        candidates,
        maintenance_window: window,
        desired_revision: dev.desired_revision,
        applied_revision: dev.status.as_ref().and_then(|s| s.applied_revision),
    })
}
