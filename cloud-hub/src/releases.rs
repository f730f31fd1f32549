//! Deployment targets and the pure desired-state computation: a device's workloads are those
//! of the highest-priority live deployment whose target matches it (ties: the newest
//! deployment wins), or none.

use std::collections::BTreeMap;

use protocol::Workload;
use serde::{Deserialize, Serialize};

use crate::store::{DeploymentRow, DeviceRow, GroupRow, ReleaseRow};

/// What a deployment aims at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A named group.
    Group(String),
    /// Devices carrying all these labels.
    Selector(BTreeMap<String, String>),
    /// Explicit device ids.
    Devices(Vec<String>),
}

/// Parses `k=v,k2=v2` into a selector.
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("selector term {part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("selector term {part:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    if out.is_empty() {
        return Err("empty selector".into());
    }
    Ok(out)
}

fn labels_match(labels: &BTreeMap<String, String>, sel: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `target` covers `device`.
pub fn target_matches(target: &Target, device: &DeviceRow, groups: &[GroupRow]) -> bool {
    match target {
        Target::Devices(ids) => ids.iter().any(|i| i == &device.id),
        Target::Selector(sel) => labels_match(&device.labels, sel),
        Target::Group(name) => groups.iter().any(|g| {
            &g.name == name
                && (g.members.iter().any(|m| m == &device.id)
                    || g.selector
                        .as_ref()
                        .is_some_and(|s| labels_match(&device.labels, s)))
        }),
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
    let d = winning_deployment(device, deployments, groups)?;
    releases
        .iter()
        .find(|r| r.id == d.release_id)
        .map(|r| (r, d.id))
}

/// A stable digest of a workload set, to tell whether a device's desired state changed.
pub fn workloads_digest(workloads: &[Workload]) -> String {
    protocol::Digest::of(&serde_json::to_vec(workloads).unwrap_or_default()).to_string()
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
        }
    }

    fn dep(id: u64, release_id: u64, target: Target, priority: i64) -> DeploymentRow {
        DeploymentRow {
            id,
            release_id,
            target,
            priority,
            created_at: 0,
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
    fn groups_match_members_and_selectors() {
        let sel: BTreeMap<String, String> = [("tier".to_string(), "edge".to_string())].into();
        let groups = vec![GroupRow {
            name: "g".into(),
            selector: Some(sel),
            members: vec!["x".into()],
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

    #[test]
    fn selectors_parse_strictly() {
        assert_eq!(parse_selector("a=1, b=2").expect("ok").len(), 2);
        assert!(parse_selector("a").is_err());
        assert!(parse_selector("=1").is_err());
        assert!(parse_selector("").is_err());
    }
}
