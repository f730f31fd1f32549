//! The pure desired-state computation: a device's workloads are those of the highest-priority
//! live deployment whose target matches it (ties: the newest deployment wins), or none; its
//! maintenance window is its own, else that of the first group (by name) it belongs to that
//! has one.
//!
//! A deployment under a staged rollout reaches only the devices its rollout admitted
//! ([`RolloutGate`]): for the others it is passed over, so they keep what the next deployment
//! gives them — their previous release.

use std::collections::BTreeMap;

use protocol::{MaintenanceWindow, Workload};

use crate::model::{DeploymentRow, DeviceRow, GroupRow, ReleaseRow, RolloutGate, Target};

fn labels_match(labels: &BTreeMap<String, String>, sel: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn in_group(group: &GroupRow, device: &DeviceRow) -> bool {
    group.members.iter().any(|m| m == &device.id)
        || group
            .selector
            .as_ref()
            .is_some_and(|s| labels_match(&device.labels, s))
}

/// Whether `target` covers `device`.
pub fn target_matches(target: &Target, device: &DeviceRow, groups: &[GroupRow]) -> bool {
    match target {
        Target::Devices(ids) => ids.iter().any(|i| i == &device.id),
        Target::Selector(sel) => labels_match(&device.labels, sel),
        Target::Group(name) => groups
            .iter()
            .any(|g| &g.name == name && in_group(g, device)),
    }
}

/// The winning deployment for a device, if any.
pub fn winning_deployment<'a>(
    device: &DeviceRow,
    deployments: &'a [DeploymentRow],
    groups: &[GroupRow],
) -> Option<&'a DeploymentRow> {
    deployments
        .iter()
        .filter(|d| target_matches(&d.target, device, groups))
        .max_by_key(|d| (d.priority, d.id))
}

/// The workloads a device should run, and the release they come from. Pure.
pub fn compute_desired<'a>(
    device: &DeviceRow,
    deployments: &[DeploymentRow],
    releases: &'a [ReleaseRow],
    groups: &[GroupRow],
) -> Option<(&'a ReleaseRow, u64)> {
    compute_gated(device, deployments, releases, groups, &BTreeMap::new()).map(|g| (g.0, g.1))
}

/// Like [`compute_desired`] under staged rollouts (`gates` by deployment id): returns the
/// release, the deployment and, when a rollout admitted the device, its phase. Pure.
pub fn compute_gated<'a>(
    device: &DeviceRow,
    deployments: &[DeploymentRow],
    releases: &'a [ReleaseRow],
    groups: &[GroupRow],
    gates: &BTreeMap<u64, RolloutGate>,
) -> Option<(&'a ReleaseRow, u64, Option<u32>)> {
    let (d, phase) = deployments
        .iter()
        .filter(|d| target_matches(&d.target, device, groups))
        .filter_map(|d| match gates.get(&d.id) {
            None | Some(RolloutGate::Open) => Some((d, None)),
            Some(RolloutGate::Closed) => None,
            Some(RolloutGate::Only(admitted)) => admitted.get(&device.id).map(|p| (d, Some(*p))),
        })
        .max_by_key(|(d, _)| (d.priority, d.id))?;
    releases
        .iter()
        .find(|r| r.id == d.release_id)
        .map(|r| (r, d.id, phase))
}

/// The maintenance window a device's state carries: its own, else its first group's (groups
/// come sorted by name), else none.
pub fn maintenance_for(device: &DeviceRow, groups: &[GroupRow]) -> Option<MaintenanceWindow> {
    device.maintenance.clone().or_else(|| {
        let mut sorted: Vec<&GroupRow> = groups.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted
            .into_iter()
            .filter(|g| in_group(g, device))
            .find_map(|g| g.maintenance.clone())
    })
}

/// A stable digest of a workload set.
pub fn workloads_digest(workloads: &[Workload]) -> String {
    protocol::Digest::of(&serde_json::to_vec(workloads).unwrap_or_default()).to_string()
}

/// A stable digest of what a device's state says, to tell whether it changed. Without a
/// window it is the workloads' digest alone, so states stored before windows existed are not
/// re-signed.
pub fn state_digest(workloads: &[Workload], maintenance: Option<&MaintenanceWindow>) -> String {
    match maintenance {
        None => workloads_digest(workloads),
        Some(m) => protocol::Digest::of(&serde_json::to_vec(&(workloads, m)).unwrap_or_default())
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, labels: &[(&str, &str)]) -> DeviceRow {
        DeviceRow {
            id: id.into(),
            profile: "local-dev".into(),
            arch: "x86_64".into(),
            runtimes: vec![],
            agent_version: "0".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            enrolled_at: 0,
            last_seen: None,
            presence: None,
            status: None,
            desired_revision: None,
            maintenance: None,
            ingest_refused: Default::default(),
            pulls: Default::default(),
        }
    }

    fn dep(id: u64, release_id: u64, target: Target, priority: i64) -> DeploymentRow {
        DeploymentRow {
            id,
            release_id,
            target,
            priority,
            created_at: 0,
            pulls: Default::default(),
        }
    }

    fn rel(id: u64) -> ReleaseRow {
        ReleaseRow {
            id,
            name: format!("r{id}"),
            version: "1".into(),
            workloads: vec![],
            created_at: 0,
        }
    }

    #[test]
    fn highest_priority_wins_and_ties_go_to_the_newest() {
        let groups = vec![GroupRow {
            name: "canary".into(),
            selector: None,
            members: vec!["a".into()],
            maintenance: None,
        }];
        let site: BTreeMap<String, String> = [("site".to_string(), "north".to_string())].into();
        let deps = vec![
            dep(1, 1, Target::Selector(site.clone()), 0),
            dep(2, 2, Target::Group("canary".into()), 10),
            dep(3, 3, Target::Selector(site.clone()), 0),
            dep(4, 4, Target::Devices(vec!["c".into()]), -5),
        ];
        let rels: Vec<ReleaseRow> = (1..=4).map(rel).collect();
        let a = dev("a", &[("site", "north")]);
        let b = dev("b", &[("site", "north")]);
        let c = dev("c", &[("site", "south")]);
        let d = dev("d", &[]);
        let got =
            |x: &DeviceRow| compute_desired(x, &deps, &rels, &groups).map(|(r, dep)| (r.id, dep));
        assert_eq!(
            got(&a),
            Some((2, 2)),
            "group deployment has the higher priority"
        );
        assert_eq!(got(&b), Some((3, 3)), "equal priority: newest deployment");
        assert_eq!(got(&c), Some((4, 4)));
        assert_eq!(got(&d), None);
    }

    #[test]
    fn a_gated_deployment_reaches_only_admitted_devices_and_the_rest_keep_the_previous_one() {
        let all: BTreeMap<String, String> = [("site".to_string(), "n".to_string())].into();
        let deps = vec![
            dep(1, 1, Target::Selector(all.clone()), 0),
            dep(2, 2, Target::Selector(all.clone()), 5),
        ];
        let rels: Vec<ReleaseRow> = (1..=2).map(rel).collect();
        let (a, b) = (dev("a", &[("site", "n")]), dev("b", &[("site", "n")]));
        let got = |x: &DeviceRow, gate: RolloutGate| {
            let gates = BTreeMap::from([(2, gate)]);
            compute_gated(x, &deps, &rels, &[], &gates).map(|(r, d, p)| (r.id, d, p))
        };
        let only = RolloutGate::Only(BTreeMap::from([("a".to_string(), 0)]));
        assert_eq!(got(&a, only.clone()), Some((2, 2, Some(0))));
        assert_eq!(got(&b, only), Some((1, 1, None)), "not admitted: previous");
        assert_eq!(got(&b, RolloutGate::Open), Some((2, 2, None)));
        assert_eq!(
            got(&a, RolloutGate::Closed),
            Some((1, 1, None)),
            "rolled back"
        );
    }

    #[test]
    fn groups_match_members_and_selectors() {
        let sel: BTreeMap<String, String> = [("tier".to_string(), "edge".to_string())].into();
        let groups = vec![GroupRow {
            name: "g".into(),
            selector: Some(sel),
            members: vec!["x".into()],
            maintenance: None,
        }];
        let t = Target::Group("g".into());
        assert!(target_matches(&t, &dev("x", &[]), &groups));
        assert!(target_matches(&t, &dev("y", &[("tier", "edge")]), &groups));
        assert!(!target_matches(&t, &dev("z", &[("tier", "core")]), &groups));
        assert!(!target_matches(
            &Target::Group("missing".into()),
            &dev("x", &[]),
            &groups
        ));
    }

    fn window(cron: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            cron: protocol::CronExpr::parse(cron).expect("cron"),
            duration_secs: 600,
        }
    }

    #[test]
    fn a_devices_own_window_wins_over_its_groups() {
        let mut groups = vec![
            GroupRow {
                name: "b".into(),
                selector: None,
                members: vec!["x".into()],
                maintenance: Some(window("0 0 4 * * *")),
            },
            GroupRow {
                name: "a".into(),
                selector: None,
                members: vec!["x".into()],
                maintenance: Some(window("0 0 3 * * *")),
            },
        ];
        let mut x = dev("x", &[]);
        assert_eq!(
            maintenance_for(&x, &groups),
            Some(window("0 0 3 * * *")),
            "first group by name"
        );
        x.maintenance = Some(window("0 0 5 * * *"));
        assert_eq!(maintenance_for(&x, &groups), Some(window("0 0 5 * * *")));
        x.maintenance = None;
        groups.iter_mut().for_each(|g| g.maintenance = None);
        assert_eq!(maintenance_for(&x, &groups), None);
        assert_eq!(maintenance_for(&dev("y", &[]), &groups), None);
    }

    #[test]
    fn the_digest_moves_with_the_window_and_not_without_one() {
        let w = vec![];
        assert_eq!(state_digest(&w, None), workloads_digest(&w));
        assert_ne!(
            state_digest(&w, Some(&window("0 0 3 * * *"))),
            state_digest(&w, Some(&window("0 0 4 * * *")))
        );
    }
}
