//! What a rollout would change before it is created: which devices it would take (its
//! deployment would be the newest, so it wins ties), how its phases would split them, and per
//! device class (profile) which workloads change and how many bytes the devices would
//! download — a device downloads an image its current release does not run: as a delta where
//! the hub has already made one from the image the same workload runs now (the base the agent
//! picks), else as the full blob (a delta not made yet is counted full: an upper bound) — and
//! the devices that cannot take it, with the reason. Pure: the made deltas come in as `delta`.

use std::collections::{BTreeMap, BTreeSet};

use protocol::{DeviceProfile, Digest};

use super::controller::{step, DeviceObs, Health, RolloutState};
use super::plan::Plan;
use super::wire::{ClassPreview, ImageDownload, Preview, Unfit};
use crate::model::{ImageRow, ReleaseRow, RolloutGate, Target};
use crate::service::desired::{compute_gated, target_matches};
use crate::store::RolloutSnapshot;

/// The preview of staging `release` over `target` at `priority` with `plan`; `delta(base,
/// target)` is the size of a delta the hub has already made, if any.
#[allow(clippy::too_many_arguments)]
pub fn preview(
    snap: &RolloutSnapshot,
    images: &[ImageRow],
    profiles: &BTreeMap<String, DeviceProfile>,
    release: &ReleaseRow,
    target: &Target,
    priority: i64,
    plan: &Plan,
    delta: &dyn Fn(&Digest, &Digest) -> Option<u64>,
) -> Preview {
    let gates: BTreeMap<u64, RolloutGate> = snap
        .rollouts
        .iter()
        .filter_map(|r| {
            let s: RolloutState = serde_json::from_str(&r.state).ok()?;
            Some((r.deployment, s.gate()))
        })
        .collect();
    let size: BTreeMap<&str, u64> = images
        .iter()
        .map(|i| (i.digest.as_str(), i.compressed_size))
        .collect();
    let mut taken = Vec::new();
    let mut unfit = Vec::new();
    let mut classes: BTreeMap<String, ClassPreview> = BTreeMap::new();
    // Per class and image: devices, and of them those that would take a made delta.
    let mut downloads: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for d in &snap.devices {
        if !target_matches(target, d, &snap.groups) {
            continue;
        }
        // A new deployment is the newest: it takes every device no higher priority claims.
        let outranked = snap
            .deployments
            .iter()
            .any(|x| x.priority > priority && target_matches(&x.target, d, &snap.groups));
        if outranked {
            continue;
        }
        let fit = profiles
            .get(&d.profile)
            .ok_or_else(|| format!("unknown profile {}", d.profile))
            .and_then(|p| {
                p.check_fit(&release.workloads, Some(&d.runtimes))
                    .map_err(|m| m.to_string())
            });
        if let Err(reason) = fit {
            unfit.push(Unfit {
                device: d.id.clone(),
                reason,
            });
            continue;
        }
        taken.push(d);
        let now = compute_gated(d, &snap.deployments, &snap.releases, &snap.groups, &gates)
            .map(|(r, _, _)| r.workloads.clone())
            .unwrap_or_default();
        let class = classes
            .entry(d.profile.clone())
            .or_insert_with(|| ClassPreview {
                profile: d.profile.clone(),
                devices: 0,
                unchanged: 0,
                workloads_changed: Vec::new(),
                download_bytes: 0,
                images: Vec::new(),
            });
        class.devices += 1;
        if now == release.workloads {
            class.unchanged += 1;
            continue;
        }
        let running: BTreeSet<String> = now.iter().map(|w| w.image.digest.to_string()).collect();
        let mut changed: BTreeSet<String> = class.workloads_changed.iter().cloned().collect();
        for w in &release.workloads {
            if !now.iter().any(|o| o == w) {
                changed.insert(w.name.to_string());
            }
        }
        for o in &now {
            if !release.workloads.iter().any(|w| w.name == o.name) {
                changed.insert(o.name.to_string());
            }
        }
        class.workloads_changed = changed.into_iter().collect();
        for w in &release.workloads {
            let digest = w.image.digest.to_string();
            if running.contains(&digest) {
                continue;
            }
            let full = size.get(digest.as_str()).copied().unwrap_or(w.image.size);
            let made = now
                .iter()
                .find(|o| o.name == w.name)
                .and_then(|o| delta(&o.image.digest, &w.image.digest))
                .filter(|&n| n < full);
            class.download_bytes += made.unwrap_or(full);
            let e = downloads
                .entry(d.profile.clone())
                .or_default()
                .entry(digest)
                .or_default();
            e.0 += 1;
            e.1 += u64::from(made.is_some());
        }
    }
    for (profile, per) in downloads {
        if let Some(c) = classes.get_mut(&profile) {
            c.images = per
                .into_iter()
                .map(|(digest, (devices, delta_devices))| ImageDownload {
                    compressed_size: size.get(digest.as_str()).copied().unwrap_or(0),
                    digest,
                    devices,
                    delta_devices,
                })
                .collect();
        }
    }
    // Phase sizes, as the first tick would split these devices (the order itself depends on
    // the rollout's id, known only once it is created).
    let obs: Vec<DeviceObs> = taken
        .iter()
        .map(|d| DeviceObs {
            id: d.id.clone(),
            labels: d.labels.clone(),
            online: true,
            health: Health::Pending,
        })
        .collect();
    let (s, _) = step(plan, 0, &RolloutState::default(), &obs, 0);
    let mut phases = vec![0u64; plan.phases.len()];
    for p in s.assignment.values() {
        phases[*p as usize] += 1;
    }
    Preview {
        devices: taken.len() as u64,
        phases,
        classes: classes.into_values().collect(),
        unfit,
    }
}
