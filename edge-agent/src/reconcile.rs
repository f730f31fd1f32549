//! The reconciler (DESIGN §3.8): a pure `plan(desired, observed, now)` and the records it keeps.
//!
//! `plan` never does I/O. It returns the actions to take (each safe to repeat), the new
//! per-workload records to persist *before* acting, and the events that report what it decided.
//! The core persists records and events in one transaction, then executes the actions; after a
//! crash the next pass re-derives the same actions from what it observes.
//!
//! Per workload, the life of an update:
//! 1. the new image is pulled while the old version runs;
//! 2. when the swap is allowed (maintenance window open, no application hold), the old instance
//!    stops and the new one starts, on probation until healthy or `health_deadline_secs`;
//! 3. healthy → stable; an exit or the deadline during probation → swap back to the previous
//!    digest, and the new one is marked failed (not retried until the desired state changes).
//!
//! Restarts follow the restart policy with exponential backoff (1 s doubling to 5 min); five
//! exits within a minute is a crash loop, reported once per loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::{
    Convergence, DesiredState, Digest, EventBody, RestartPolicy, Workload, WorkloadName,
    WorkloadPhase,
};
use serde::{Deserialize, Serialize};

use crate::runtime::{Instance, InstanceState};

/// What the agent remembers about one workload between passes (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    /// The digest this workload should run now (the target, or the previous one after a
    /// rollback).
    pub digest: Option<Digest>,
    /// What to swap back to while on probation.
    pub previous: Option<Digest>,
    /// Probation deadline (unix seconds) while a new version proves itself.
    pub probation_until: Option<u64>,
    /// A digest that failed its probation; not retried while it stays the target.
    pub failed: Option<Digest>,
    /// Restarts of the current digest.
    pub restarts: u32,
    /// Recent exit times, for crash-loop detection.
    pub recent_exits: Vec<u64>,
    /// Earliest next start (backoff, or next job firing).
    pub next_start_at: u64,
    /// The workload exited and its policy says it stays down (or a job waits for its firing).
    pub done: bool,
    /// A crash loop has been reported for the current streak.
    pub crash_loop_reported: bool,
    /// The workload definition that runs with `digest` (command, env, limits of its release).
    #[serde(default)]
    pub spec: Option<Workload>,
    /// The definition that ran with `previous`: a swap back restores it, not just its image.
    #[serde(default)]
    pub previous_spec: Option<Workload>,
}

/// The definition to run `digest` with: the desired one for the target image, otherwise the one
/// recorded when that image last ran (falling back to the desired one for old records).
fn spec_for(rec: &Record, w: &Workload, digest: Digest) -> Workload {
    if w.image.digest == digest {
        return w.clone();
    }
    [&rec.spec, &rec.previous_spec]
        .into_iter()
        .flatten()
        .find(|s| s.image.digest == digest)
        .cloned()
        .unwrap_or_else(|| w.clone())
}

/// Everything the planner looks at besides the desired state.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Instances the runtime knows.
    pub instances: Vec<Instance>,
    /// Images present in the cache.
    pub images: BTreeSet<Digest>,
    /// Health per instance id: `Some(true)` healthy, `Some(false)` unhealthy, `None` unknown.
    pub health: HashMap<String, Option<bool>>,
    /// Persisted records per workload.
    pub records: BTreeMap<WorkloadName, Record>,
    /// Whether swaps are allowed now (maintenance window open and no application hold).
    pub may_swap: bool,
}

/// One step for the executor. Each is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ensure this image is in the cache.
    Pull(protocol::ImageRef),
    /// Start an instance of `workload` running `digest`.
    Start {
        /// Desired workload.
        workload: Box<Workload>,
        /// Image to run (the target, or the previous one).
        digest: Digest,
    },
    /// Stop an instance.
    Stop(String),
    /// Forget an exited instance.
    Remove(String),
}

/// The outcome of one pass.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// Records to persist (all of them: absent names are deleted).
    pub records: BTreeMap<WorkloadName, Record>,
    /// Events to append.
    pub events: Vec<EventBody>,
    /// Where the device stands.
    pub convergence: Convergence,
    /// Per-workload phase for the status report.
    pub phases: BTreeMap<WorkloadName, (Digest, WorkloadPhase)>,
}

const CRASH_LOOP_EXITS: usize = 5;
const CRASH_LOOP_WINDOW: u64 = 60;
const MAX_BACKOFF: u64 = 300;
/// A workload without a health check counts as healthy once it has run this long.
const SETTLE_SECS: u64 = 1;

fn backoff(restarts: u32) -> u64 {
    1u64.checked_shl(restarts.min(16))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

fn should_restart(policy: RestartPolicy, code: Option<i32>, signal: Option<i32>) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != Some(0) || signal.is_some(),
        RestartPolicy::Never => false,
    }
}

/// Plans one pass. Pure: same inputs, same plan.
pub fn plan(desired: Option<&DesiredState>, obs: &Observed, now: u64) -> Plan {
    let mut p = Plan {
        actions: Vec::new(),
        records: BTreeMap::new(),
        events: Vec::new(),
        convergence: Convergence::Idle,
        phases: BTreeMap::new(),
    };
    let wanted: BTreeMap<&WorkloadName, &Workload> = desired
        .map(|d| d.workloads.iter().map(|w| (&w.name, w)).collect())
        .unwrap_or_default();

    // Exited instances: record the exit, forget the instance. Unwanted running ones: stop.
    let mut running: BTreeMap<&WorkloadName, Vec<&Instance>> = BTreeMap::new();
    let mut exits: BTreeMap<&WorkloadName, Vec<&Instance>> = BTreeMap::new();
    for inst in &obs.instances {
        match inst.state {
            InstanceState::Running { .. } => {
                if wanted.contains_key(&inst.name) {
                    running.entry(&inst.name).or_default().push(inst);
                } else {
                    p.actions.push(Action::Stop(inst.id.clone()));
                }
            }
            InstanceState::Exited { .. } => {
                p.actions.push(Action::Remove(inst.id.clone()));
                exits.entry(&inst.name).or_default().push(inst);
            }
        }
    }

    let revision = desired.map(|d| d.revision).unwrap_or(0);
    let mut all_converged = desired.is_some();
    let mut any_failed = false;
    let mut any_deferred = false;

    for (name, w) in &wanted {
        let mut rec = obs.records.get(*name).cloned().unwrap_or_default();
        let target = w.image.digest;
        let is_job = w.schedule.is_some();
        // A new target clears a failure recorded for another digest.
        if rec.failed.is_some() && rec.failed != Some(target) {
            rec.failed = None;
        }
        let target_failed = rec.failed == Some(target);
        let insts = running.get(name).cloned().unwrap_or_default();
        // Exactly one instance per workload: extra ones (a crash between start and stop) go.
        let (keep, extra) = match insts.iter().position(|i| Some(i.digest) == rec.digest) {
            Some(k) => (
                Some(insts[k]),
                insts
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != k)
                    .map(|(_, i)| *i)
                    .collect::<Vec<_>>(),
            ),
            None => (
                insts.first().copied(),
                insts.iter().skip(1).copied().collect(),
            ),
        };
        for e in extra {
            p.actions.push(Action::Stop(e.id.clone()));
        }

        // Record exits of this workload's instances.
        for inst in exits.get(name).cloned().unwrap_or_default() {
            let InstanceState::Exited { code, signal, at } = inst.state else {
                continue;
            };
            p.events.push(EventBody::WorkloadExited {
                workload: (*name).clone(),
                code,
                signal,
            });
            if Some(inst.digest) != rec.digest {
                continue; // an old version we stopped on purpose
            }
            if rec.probation_until.is_some() {
                // Died while proving itself: handled below as a failed probation.
                rec.recent_exits.push(at);
                continue;
            }
            rec.recent_exits
                .retain(|t| at.saturating_sub(*t) < CRASH_LOOP_WINDOW);
            rec.recent_exits.push(at);
            if is_job {
                rec.done = true;
                rec.next_start_at = w
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(now))
                    .unwrap_or(u64::MAX);
            } else if should_restart(w.restart, code, signal) {
                rec.restarts = rec.restarts.saturating_add(1);
                rec.next_start_at = now + backoff(rec.restarts.saturating_sub(1));
                if rec.recent_exits.len() >= CRASH_LOOP_EXITS && !rec.crash_loop_reported {
                    rec.crash_loop_reported = true;
                    p.events.push(EventBody::CrashLoop {
                        workload: (*name).clone(),
                        restarts: rec.restarts,
                    });
                }
            } else {
                rec.done = true;
            }
        }
        let keep = keep.filter(|i| {
            !exits
                .get(name)
                .is_some_and(|ex| ex.iter().any(|e| e.id == i.id))
        });

        // Which digest should run now.
        let want_digest = if target_failed {
            rec.digest.filter(|d| *d != target)
        } else {
            Some(target)
        };
        let Some(want_digest) = want_digest else {
            // The target failed and there is nothing to go back to: keep trying the target.
            any_failed = true;
            continue;
        };
        if !obs.images.contains(&target) && !target_failed {
            p.actions.push(Action::Pull(w.image.clone()));
        }

        // Probation of the current digest.
        if let (Some(until), Some(inst)) = (rec.probation_until, keep) {
            if Some(inst.digest) == rec.digest {
                let healthy = is_healthy(w, inst, obs, now);
                if healthy {
                    rec.probation_until = None;
                    rec.previous = None;
                } else if now >= until {
                    rollback(
                        &mut p,
                        &mut rec,
                        w,
                        inst,
                        now,
                        revision,
                        "not healthy within its deadline",
                    );
                    any_failed = true;
                    p.records.insert((*name).clone(), rec.clone());
                    all_converged = false;
                    continue;
                }
            }
        }
        if rec.probation_until.is_some()
            && keep.is_none()
            && !rec.recent_exits.is_empty()
            && rec.digest == Some(target)
        {
            // The new version exited during probation.
            let digest = target;
            rec.failed = Some(digest);
            p.events.push(EventBody::UpdateFailed {
                revision,
                workload: Some((*name).clone()),
                reason: "exited during probation".into(),
            });
            if let Some(prev) = rec.previous.take() {
                p.events.push(EventBody::RolledBack {
                    revision,
                    workload: (*name).clone(),
                    digest: prev,
                });
                let spec = spec_for(&rec, w, prev);
                rec.digest = Some(prev);
                rec.spec = Some(spec.clone());
                rec.previous_spec = None;
                rec.restarts = 0;
                rec.recent_exits.clear();
                rec.next_start_at = now;
                p.actions.push(Action::Start {
                    workload: Box::new(spec),
                    digest: prev,
                });
            }
            rec.probation_until = None;
            any_failed = true;
            all_converged = false;
            p.records.insert((*name).clone(), rec);
            continue;
        }

        let phase;
        match keep {
            Some(inst) if inst.digest == want_digest => {
                rec.digest = Some(want_digest);
                let healthy = is_healthy(w, inst, obs, now);
                if healthy
                    && rec.probation_until.is_none()
                    && !rec.recent_exits.is_empty()
                    && now.saturating_sub(*rec.recent_exits.last().unwrap_or(&0))
                        > CRASH_LOOP_WINDOW
                {
                    rec.recent_exits.clear();
                    rec.crash_loop_reported = false;
                }
                phase = if healthy {
                    WorkloadPhase::Running
                } else if obs.health.get(&inst.id).copied().flatten() == Some(false) {
                    WorkloadPhase::Unhealthy
                } else {
                    WorkloadPhase::Starting
                };
                if !healthy || rec.probation_until.is_some() || want_digest != target {
                    all_converged = false;
                }
            }
            Some(inst) => {
                // Running another digest: swap when the new image is here and swaps are allowed.
                all_converged = false;
                if !obs.images.contains(&want_digest) {
                    phase = WorkloadPhase::Pulling;
                } else if !obs.may_swap {
                    any_deferred = true;
                    phase = WorkloadPhase::Running;
                } else {
                    p.actions.push(Action::Stop(inst.id.clone()));
                    p.actions.push(Action::Start {
                        workload: Box::new((*w).clone()),
                        digest: want_digest,
                    });
                    rec.previous_spec = Some(spec_for(&rec, w, inst.digest));
                    rec.spec = Some((*w).clone());
                    rec.previous = Some(inst.digest);
                    rec.digest = Some(want_digest);
                    rec.probation_until = Some(now + w.health_deadline_secs);
                    rec.restarts = 0;
                    rec.recent_exits.clear();
                    rec.done = false;
                    phase = WorkloadPhase::Starting;
                }
            }
            None => {
                if rec.digest != Some(want_digest) {
                    // First install of this digest (or a new target while nothing ran).
                    rec.previous = rec.digest.filter(|d| obs.images.contains(d));
                    rec.digest = Some(want_digest);
                    rec.restarts = 0;
                    rec.recent_exits.clear();
                    rec.done = false;
                    rec.probation_until = None;
                    rec.next_start_at = if is_job {
                        w.schedule
                            .as_ref()
                            .and_then(|s| s.next_after(now))
                            .unwrap_or(u64::MAX)
                    } else {
                        now
                    };
                    if is_job {
                        rec.done = true;
                    }
                }
                if is_job && rec.done && now >= rec.next_start_at {
                    rec.done = false;
                }
                if !obs.images.contains(&want_digest) {
                    phase = WorkloadPhase::Pulling;
                    all_converged = false;
                } else if rec.done {
                    phase = if is_job {
                        WorkloadPhase::Scheduled
                    } else {
                        WorkloadPhase::Exited
                    };
                } else if now >= rec.next_start_at {
                    if rec.previous.is_some() && !is_job {
                        rec.probation_until = Some(now + w.health_deadline_secs);
                    }
                    let spec = spec_for(&rec, w, want_digest);
                    rec.spec = Some(spec.clone());
                    p.actions.push(Action::Start {
                        workload: Box::new(spec),
                        digest: want_digest,
                    });
                    phase = WorkloadPhase::Starting;
                    all_converged = false;
                } else {
                    phase = if rec.crash_loop_reported {
                        WorkloadPhase::CrashLoop
                    } else {
                        WorkloadPhase::BackingOff
                    };
                    all_converged = false;
                }
            }
        }
        if target_failed {
            any_failed = true;
        }
        p.phases.insert((*name).clone(), (want_digest, phase));
        p.records.insert((*name).clone(), rec);
    }

    p.convergence = match desired {
        None => Convergence::Idle,
        Some(_) if any_failed => Convergence::Failed,
        Some(_) if all_converged => Convergence::Converged,
        Some(_) if any_deferred => Convergence::Deferred,
        Some(_) => Convergence::Converging,
    };
    p
}

fn is_healthy(w: &Workload, inst: &Instance, obs: &Observed, now: u64) -> bool {
    let InstanceState::Running { started_at, .. } = inst.state else {
        return false;
    };
    match &w.health {
        Some(_) => obs.health.get(&inst.id).copied().flatten() == Some(true),
        None => now.saturating_sub(started_at) >= SETTLE_SECS,
    }
}

fn rollback(
    p: &mut Plan,
    rec: &mut Record,
    w: &Workload,
    inst: &Instance,
    now: u64,
    revision: u64,
    why: &str,
) {
    rec.failed = Some(inst.digest);
    rec.probation_until = None;
    p.events.push(EventBody::UpdateFailed {
        revision,
        workload: Some(w.name.clone()),
        reason: why.into(),
    });
    p.actions.push(Action::Stop(inst.id.clone()));
    if let Some(prev) = rec.previous.take() {
        p.events.push(EventBody::RolledBack {
            revision,
            workload: w.name.clone(),
            digest: prev,
        });
        let spec = spec_for(rec, w, prev);
        rec.digest = Some(prev);
        rec.spec = Some(spec.clone());
        rec.previous_spec = None;
        rec.restarts = 0;
        rec.recent_exits.clear();
        rec.next_start_at = now;
        p.actions.push(Action::Start {
            workload: Box::new(spec),
            digest: prev,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{
        Arch, HealthCheck, ImageRef, Probe, Resources, RuntimeKind, KIND_DESIRED_STATE,
    };

    fn name(s: &str) -> WorkloadName {
        WorkloadName::new(s).expect("valid")
    }

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn wl(n: &str, digest: Digest) -> Workload {
        Workload {
            name: name(n),
            image: ImageRef {
                digest,
                size: 100,
                arch: Arch::X86_64,
            },
            runtime: RuntimeKind::Process,
            command: vec!["./run.sh".into()],
            env: Default::default(),
            resources: Resources::default(),
            restart: RestartPolicy::Always,
            health: None,
            schedule: None,
            health_deadline_secs: 30,
        }
    }

    fn state(ws: Vec<Workload>) -> DesiredState {
        DesiredState {
            kind: KIND_DESIRED_STATE.into(),
            device: protocol::DeviceId::new("gw").expect("valid"),
            revision: 7,
            issued_at: 0,
            expires_at: 10,
            workloads: ws,
            maintenance: None,
            rollout: None,
        }
    }

    fn running(id: &str, n: &str, digest: Digest, started_at: u64) -> Instance {
        Instance {
            id: id.into(),
            name: name(n),
            digest,
            state: InstanceState::Running { pid: 1, started_at },
            unenforced: vec![],
        }
    }

    fn exited(id: &str, n: &str, digest: Digest, code: i32, at: u64) -> Instance {
        Instance {
            id: id.into(),
            name: name(n),
            digest,
            state: InstanceState::Exited {
                code: Some(code),
                signal: None,
                at,
            },
            unenforced: vec![],
        }
    }

    fn obs(instances: Vec<Instance>, images: &[Digest], records: Vec<(&str, Record)>) -> Observed {
        Observed {
            instances,
            images: images.iter().copied().collect(),
            health: HashMap::new(),
            records: records.into_iter().map(|(n, r)| (name(n), r)).collect(),
            may_swap: true,
        }
    }

    fn starts(p: &Plan) -> Vec<Digest> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { digest, .. } => Some(*digest),
                _ => None,
            })
            .collect()
    }

    fn stops(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop(id) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_desired_is_idle_and_stops_everything() {
        let p = plan(
            None,
            &obs(vec![running("a", "svc", d(1), 0)], &[d(1)], vec![]),
            100,
        );
        assert_eq!(p.convergence, Convergence::Idle);
        assert_eq!(stops(&p), vec!["a".to_string()]);
    }

    #[test]
    fn missing_image_is_pulled_and_nothing_starts() {
        let s = state(vec![wl("svc", d(1))]);
        let p = plan(Some(&s), &obs(vec![], &[], vec![]), 100);
        assert!(matches!(p.actions.as_slice(), [Action::Pull(i)] if i.digest == d(1)));
        assert_eq!(p.convergence, Convergence::Converging);
    }

    #[test]
    fn present_image_starts_then_converges() {
        let s = state(vec![wl("svc", d(1))]);
        let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![]), 100);
        assert_eq!(starts(&p), vec![d(1)]);
        let rec = p.records[&name("svc")].clone();
        let p = plan(
            Some(&s),
            &obs(
                vec![running("a", "svc", d(1), 100)],
                &[d(1)],
                vec![("svc", rec)],
            ),
            102,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.convergence, Convergence::Converged);
    }

    #[test]
    fn update_pulls_while_old_runs_then_swaps_on_probation() {
        let s = state(vec![wl("svc", d(2))]);
        let rec = Record {
            digest: Some(d(1)),
            ..Record::default()
        };
        let p = plan(
            Some(&s),
            &obs(
                vec![running("a", "svc", d(1), 0)],
                &[d(1)],
                vec![("svc", rec.clone())],
            ),
            100,
        );
        assert!(stops(&p).is_empty(), "old keeps running while pulling");
        assert!(p
            .actions
            .iter()
            .any(|a| matches!(a, Action::Pull(i) if i.digest == d(2))));
        let p = plan(
            Some(&s),
            &obs(
                vec![running("a", "svc", d(1), 0)],
                &[d(1), d(2)],
                vec![("svc", rec)],
            ),
            101,
        );
        assert_eq!(stops(&p), vec!["a".to_string()]);
        assert_eq!(starts(&p), vec![d(2)]);
        let r = &p.records[&name("svc")];
        assert_eq!(
            (r.digest, r.previous, r.probation_until),
            (Some(d(2)), Some(d(1)), Some(131))
        );
    }

    #[test]
    fn swap_waits_while_swaps_are_not_allowed() {
        let s = state(vec![wl("svc", d(2))]);
        let rec = Record {
            digest: Some(d(1)),
            ..Record::default()
        };
        let mut o = obs(
            vec![running("a", "svc", d(1), 0)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        );
        o.may_swap = false;
        let p = plan(Some(&s), &o, 100);
        assert!(p.actions.is_empty());
        assert_eq!(p.convergence, Convergence::Deferred);
    }

    #[test]
    fn unhealthy_past_the_deadline_swaps_back_and_reports() {
        let mut w = wl("svc", d(2));
        w.health = Some(HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_secs: 1,
            timeout_secs: 1,
            retries: 1,
            start_period_secs: 0,
        });
        let s = state(vec![w]);
        let rec = Record {
            digest: Some(d(2)),
            previous: Some(d(1)),
            probation_until: Some(130),
            ..Record::default()
        };
        let mut o = obs(
            vec![running("b", "svc", d(2), 100)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        );
        o.health.insert("b".into(), Some(false));
        let p = plan(Some(&s), &o, 120);
        assert!(p.actions.is_empty(), "still inside the deadline");
        let p = plan(Some(&s), &o, 130);
        assert_eq!(stops(&p), vec!["b".to_string()]);
        assert_eq!(starts(&p), vec![d(1)]);
        assert!(p.events.iter().any(
            |e| matches!(e, EventBody::RolledBack { digest, revision: 7, .. } if *digest == d(1))
        ));
        assert!(p
            .events
            .iter()
            .any(|e| matches!(e, EventBody::UpdateFailed { revision: 7, .. })));
        assert_eq!(p.convergence, Convergence::Failed);
        // Next pass: the old one runs, the failed target is not retried.
        let rec = p.records[&name("svc")].clone();
        let p = plan(
            Some(&s),
            &obs(
                vec![running("c", "svc", d(1), 131)],
                &[d(1), d(2)],
                vec![("svc", rec)],
            ),
            140,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.convergence, Convergence::Failed);
    }

    #[test]
    fn healthy_within_the_deadline_ends_probation() {
        let mut w = wl("svc", d(2));
        w.health = Some(HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_secs: 1,
            timeout_secs: 1,
            retries: 1,
            start_period_secs: 0,
        });
        let s = state(vec![w]);
        let rec = Record {
            digest: Some(d(2)),
            previous: Some(d(1)),
            probation_until: Some(130),
            ..Record::default()
        };
        let mut o = obs(
            vec![running("b", "svc", d(2), 100)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        );
        o.health.insert("b".into(), Some(true));
        let p = plan(Some(&s), &o, 110);
        assert!(p.actions.is_empty());
        assert_eq!(p.records[&name("svc")].probation_until, None);
        assert_eq!(p.convergence, Convergence::Converged);
    }

    #[test]
    fn swapping_back_restores_the_previous_definition_not_just_its_image() {
        let mut old = wl("svc", d(1));
        old.command = vec!["./old.sh".into()];
        let s1 = state(vec![old.clone()]);
        let p = plan(Some(&s1), &obs(vec![], &[d(1)], vec![]), 100);
        let rec = p.records[&name("svc")].clone();
        // Release 2 changes the image and the command.
        let mut new = wl("svc", d(2));
        new.command = vec!["./new.sh".into()];
        new.health = Some(HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_secs: 1,
            timeout_secs: 1,
            retries: 1,
            start_period_secs: 0,
        });
        let s2 = state(vec![new]);
        let p = plan(
            Some(&s2),
            &obs(
                vec![running("a", "svc", d(1), 100)],
                &[d(1), d(2)],
                vec![("svc", rec)],
            ),
            110,
        );
        let rec = p.records[&name("svc")].clone();
        let mut o = obs(
            vec![running("b", "svc", d(2), 110)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        );
        o.health.insert("b".into(), Some(false));
        let p = plan(Some(&s2), &o, 200);
        let back = p.actions.iter().find_map(|a| match a {
            Action::Start { workload, digest } if *digest == d(1) => Some(workload.command.clone()),
            _ => None,
        });
        assert_eq!(back, Some(vec!["./old.sh".to_string()]), "{:?}", p.actions);
        // And a later restart of the old version keeps the old definition.
        let rec = p.records[&name("svc")].clone();
        let p = plan(
            Some(&s2),
            &obs(
                vec![exited("c", "svc", d(1), 1, 201)],
                &[d(1), d(2)],
                vec![("svc", rec)],
            ),
            201,
        );
        let rec = p.records[&name("svc")].clone();
        let p = plan(
            Some(&s2),
            &obs(vec![], &[d(1), d(2)], vec![("svc", rec)]),
            300,
        );
        let again = p.actions.iter().find_map(|a| match a {
            Action::Start { workload, .. } => Some(workload.command.clone()),
            _ => None,
        });
        assert_eq!(again, Some(vec!["./old.sh".to_string()]));
    }

    #[test]
    fn exit_during_probation_swaps_back() {
        let s = state(vec![wl("svc", d(2))]);
        let rec = Record {
            digest: Some(d(2)),
            previous: Some(d(1)),
            probation_until: Some(130),
            ..Record::default()
        };
        let p = plan(
            Some(&s),
            &obs(
                vec![exited("b", "svc", d(2), 1, 105)],
                &[d(1), d(2)],
                vec![("svc", rec)],
            ),
            106,
        );
        assert_eq!(starts(&p), vec![d(1)]);
        assert!(p
            .events
            .iter()
            .any(|e| matches!(e, EventBody::RolledBack { .. })));
        assert_eq!(p.records[&name("svc")].failed, Some(d(2)));
    }

    #[test]
    fn crashes_restart_with_backoff_and_a_loop_is_reported_once() {
        let s = state(vec![wl("svc", d(1))]);
        let mut rec = Record {
            digest: Some(d(1)),
            ..Record::default()
        };
        let mut t = 100;
        let mut loops = 0;
        for i in 0..7u32 {
            let p = plan(
                Some(&s),
                &obs(
                    vec![exited(&format!("x{i}"), "svc", d(1), 1, t)],
                    &[d(1)],
                    vec![("svc", rec.clone())],
                ),
                t,
            );
            rec = p.records[&name("svc")].clone();
            assert_eq!(rec.restarts, i + 1);
            assert_eq!(rec.next_start_at, t + backoff(i));
            assert!(
                starts(&p).is_empty() || backoff(i) == 0,
                "restarted before its backoff"
            );
            loops += p
                .events
                .iter()
                .filter(|e| matches!(e, EventBody::CrashLoop { .. }))
                .count();
            t = rec.next_start_at;
            let p = plan(
                Some(&s),
                &obs(vec![], &[d(1)], vec![("svc", rec.clone())]),
                t,
            );
            assert_eq!(starts(&p), vec![d(1)]);
            rec = p.records[&name("svc")].clone();
        }
        assert_eq!(loops, 1);
    }

    #[test]
    fn restart_policies_are_honoured() {
        for (policy, code, restarts) in [
            (RestartPolicy::Never, 1, false),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 2, true),
            (RestartPolicy::Always, 0, true),
        ] {
            let mut w = wl("svc", d(1));
            w.restart = policy;
            let s = state(vec![w]);
            let rec = Record {
                digest: Some(d(1)),
                ..Record::default()
            };
            let p = plan(
                Some(&s),
                &obs(
                    vec![exited("a", "svc", d(1), code, 100)],
                    &[d(1)],
                    vec![("svc", rec)],
                ),
                100,
            );
            let rec = p.records[&name("svc")].clone();
            let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![("svc", rec)]), 500);
            assert_eq!(!starts(&p).is_empty(), restarts, "{policy:?} exit {code}");
        }
    }

    #[test]
    fn duplicate_instances_are_reduced_to_one() {
        let s = state(vec![wl("svc", d(1))]);
        let rec = Record {
            digest: Some(d(1)),
            ..Record::default()
        };
        let p = plan(
            Some(&s),
            &obs(
                vec![running("a", "svc", d(1), 0), running("b", "svc", d(1), 0)],
                &[d(1)],
                vec![("svc", rec)],
            ),
            100,
        );
        assert_eq!(stops(&p).len(), 1);
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn jobs_start_at_their_firing_and_not_before() {
        let mut w = wl("job", d(1));
        w.schedule = Some(protocol::CronExpr::parse("0 * * * * *").expect("every minute"));
        let s = state(vec![w]);
        let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![]), 1_000_010);
        assert!(starts(&p).is_empty());
        let rec = p.records[&name("job")].clone();
        assert_eq!(rec.next_start_at, 1_000_020);
        let p = plan(
            Some(&s),
            &obs(vec![], &[d(1)], vec![("job", rec)]),
            1_000_020,
        );
        assert_eq!(starts(&p), vec![d(1)]);
    }
}
