//! Health-probe scheduling: which running instance is due for a probe, and what a result does
//! to its health (interval, retries, start period; docs/AGENT.md "Health").
//!
//! The scheduler does no I/O and reads no clock: the owner loop passes `now`, runs the probes it
//! returns as separate tasks, and feeds their results back. An instance's check is the one of
//! its own workload, matched by name (never by instance-id prefix: `web` and `web-api` are two
//! workloads).

use std::collections::{HashMap, HashSet};

use protocol::{DesiredState, Digest, EventBody, HealthCheck, WorkloadName};

use crate::runtime::{Instance, InstanceState};

/// A probe the owner loop should run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The instance to probe.
    pub instance: String,
    /// Its workload.
    pub workload: WorkloadName,
    /// The image it runs (exec probes run in its tree).
    pub digest: Digest,
    /// The check to run.
    pub check: HealthCheck,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The instance probed.
    pub instance: String,
    /// Whether the probe passed.
    pub healthy: bool,
}

#[derive(Debug)]
struct Tracked {
    workload: WorkloadName,
    /// Failures before this instant do not count (the check's start period).
    grace_until: u64,
    next_probe_at: u64,
    failures: u32,
    healthy: Option<bool>,
    in_flight: bool,
}

/// Health bookkeeping per running instance.
#[derive(Debug, Default)]
pub struct HealthScheduler {
    tracked: HashMap<String, Tracked>,
}

/// The health check of workload `name` in the desired state, if it has one.
pub fn check_of(desired: Option<&DesiredState>, name: &WorkloadName) -> Option<HealthCheck> {
    desired?
        .workloads
        .iter()
        .find(|w| &w.name == name)
        .and_then(|w| w.health.clone())
}

impl HealthScheduler {
    /// Follows the running instances (forgetting the others) and returns the probes due at
    /// `now`, marking them in flight until their result comes back.
    pub fn due(
        &mut self,
        instances: &[Instance],
        desired: Option<&DesiredState>,
        now: u64,
    ) -> Vec<ProbeRequest> {
        let running: HashSet<&str> = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Running { .. }))
            .map(|i| i.id.as_str())
            .collect();
        self.tracked.retain(|id, _| running.contains(id.as_str()));
        let mut due = Vec::new();
        for inst in instances {
            let InstanceState::Running { started_at, .. } = inst.state else {
                continue;
            };
            let Some(check) = check_of(desired, &inst.name) else {
                continue;
            };
            let t = self
                .tracked
                .entry(inst.id.clone())
                .or_insert_with(|| Tracked {
                    workload: inst.name.clone(),
                    grace_until: started_at + check.start_period_secs,
                    next_probe_at: started_at,
                    failures: 0,
                    healthy: None,
                    in_flight: false,
                });
            if !t.in_flight && now >= t.next_probe_at {
                t.in_flight = true;
                due.push(ProbeRequest {
                    instance: inst.id.clone(),
                    workload: inst.name.clone(),
                    digest: inst.digest,
                    check,
                });
            }
        }
        due
    }

    /// Applies a probe result at `now`; returns the `health_changed` event when the instance's
    /// health changed.
    pub fn on_result(
        &mut self,
        result: &ProbeResult,
        desired: Option<&DesiredState>,
        now: u64,
    ) -> Option<EventBody> {
        let t = self.tracked.get_mut(&result.instance)?;
        let check = check_of(desired, &t.workload)?;
        t.in_flight = false;
        t.next_probe_at = now + check.interval_secs;
        let before = t.healthy;
        if result.healthy {
            t.failures = 0;
            t.healthy = Some(true);
        } else if now < t.grace_until {
            // Inside the start period a failure does not count.
        } else {
            t.failures += 1;
            if t.failures >= check.retries {
                t.healthy = Some(false);
            }
        }
        let after = t.healthy;
        (before != after && after.is_some()).then(|| EventBody::HealthChanged {
            workload: t.workload.clone(),
            healthy: after == Some(true),
        })
    }

    /// Health per instance id: `Some(true)` healthy, `Some(false)` unhealthy, `None` unknown.
    pub fn health(&self) -> HashMap<String, Option<bool>> {
        self.tracked
            .iter()
            .map(|(id, t)| (id.clone(), t.healthy))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{
        Arch, ImageRef, Probe, Resources, RestartPolicy, RuntimeKind, Workload, KIND_DESIRED_STATE,
    };

    fn name(s: &str) -> WorkloadName {
        WorkloadName::new(s).expect("valid")
    }

    fn check(port: u16, retries: u32, start_period_secs: u64) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port },
            interval_secs: 5,
            timeout_secs: 1,
            retries,
            start_period_secs,
        }
    }

    fn workload(n: &str, health: Option<HealthCheck>) -> Workload {
        Workload {
            name: name(n),
            image: ImageRef {
                digest: Digest::from_bytes([1; 32]),
                size: 1,
                arch: Arch::X86_64,
            },
            runtime: RuntimeKind::Process,
            command: vec!["./run.sh".into()],
            env: Default::default(),
            resources: Resources::default(),
            restart: RestartPolicy::Always,
            health,
            schedule: None,
            health_deadline_secs: 30,
            stability_window_secs: protocol::DEFAULT_STABILITY_WINDOW_SECS,
            function: None,
        }
    }

    fn desired(ws: Vec<Workload>) -> DesiredState {
        DesiredState {
            kind: KIND_DESIRED_STATE.into(),
            device: protocol::DeviceId::new("gw").expect("valid"),
            revision: 1,
            issued_at: 0,
            expires_at: u64::MAX,
            workloads: ws,
            maintenance: None,
            rollout: None,
        }
    }

    fn running(id: &str, n: &str, started_at: u64) -> Instance {
        Instance {
            id: id.into(),
            name: name(n),
            digest: Digest::from_bytes([1; 32]),
            state: InstanceState::Running { pid: 1, started_at },
            unenforced: vec![],
        }
    }

    fn result(id: &str, healthy: bool) -> ProbeResult {
        ProbeResult {
            instance: id.into(),
            healthy,
        }
    }

    #[test]
    fn a_workload_whose_name_extends_another_gets_its_own_check() {
        // `web` is listed first, and `web-api`'s instance id starts with "web-".
        let d = desired(vec![
            workload("web", Some(check(8001, 1, 0))),
            workload("web-api", Some(check(8002, 1, 0))),
        ]);
        let mut s = HealthScheduler::default();
        let due = s.due(
            &[
                running("web-aaaa-1", "web", 100),
                running("web-api-bbbb-2", "web-api", 100),
            ],
            Some(&d),
            100,
        );
        let port_of = |id: &str| {
            due.iter()
                .find(|r| r.instance == id)
                .map(|r| r.check.probe.clone())
        };
        assert_eq!(port_of("web-aaaa-1"), Some(Probe::Tcp { port: 8001 }));
        assert_eq!(port_of("web-api-bbbb-2"), Some(Probe::Tcp { port: 8002 }));
    }

    #[test]
    fn a_workload_without_a_check_is_not_probed_even_when_another_name_prefixes_it() {
        let d = desired(vec![
            workload("web", Some(check(8001, 1, 0))),
            workload("web-api", None),
        ]);
        let mut s = HealthScheduler::default();
        let due = s.due(&[running("web-api-bbbb-2", "web-api", 100)], Some(&d), 100);
        assert!(due.is_empty(), "{due:?}");
    }

    #[test]
    fn probes_follow_the_interval_and_one_runs_at_a_time() {
        let d = desired(vec![workload("svc", Some(check(1, 1, 0)))]);
        let insts = [running("svc-a-1", "svc", 100)];
        let mut s = HealthScheduler::default();
        assert_eq!(s.due(&insts, Some(&d), 100).len(), 1);
        assert!(s.due(&insts, Some(&d), 101).is_empty(), "one in flight");
        let ev = s.on_result(&result("svc-a-1", true), Some(&d), 101);
        assert!(matches!(
            ev,
            Some(EventBody::HealthChanged { healthy: true, .. })
        ));
        assert!(s.due(&insts, Some(&d), 105).is_empty(), "interval is 5 s");
        assert_eq!(s.due(&insts, Some(&d), 106).len(), 1);
        assert_eq!(s.health().get("svc-a-1"), Some(&Some(true)));
    }

    #[test]
    fn failures_inside_the_start_period_do_not_count_and_retries_do() {
        let d = desired(vec![workload("svc", Some(check(1, 2, 30)))]);
        let insts = [running("svc-a-1", "svc", 100)];
        let mut s = HealthScheduler::default();
        s.due(&insts, Some(&d), 100);
        assert_eq!(s.on_result(&result("svc-a-1", false), Some(&d), 110), None);
        s.due(&insts, Some(&d), 131);
        assert_eq!(s.on_result(&result("svc-a-1", false), Some(&d), 131), None);
        s.due(&insts, Some(&d), 136);
        let ev = s.on_result(&result("svc-a-1", false), Some(&d), 136);
        assert!(matches!(
            ev,
            Some(EventBody::HealthChanged { healthy: false, .. })
        ));
        // The same health again is not a change.
        s.due(&insts, Some(&d), 141);
        assert_eq!(s.on_result(&result("svc-a-1", false), Some(&d), 141), None);
    }

    #[test]
    fn an_instance_that_stops_running_is_forgotten() {
        let d = desired(vec![workload("svc", Some(check(1, 1, 0)))]);
        let mut s = HealthScheduler::default();
        s.due(&[running("svc-a-1", "svc", 100)], Some(&d), 100);
        s.due(&[], Some(&d), 101);
        assert!(s.health().is_empty());
        assert_eq!(s.on_result(&result("svc-a-1", true), Some(&d), 101), None);
    }
}
