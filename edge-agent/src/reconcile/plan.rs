//! One pass of the planner: desired state plus observations in, actions, records and events out.

use std::collections::BTreeMap;

use protocol::{
    Convergence, DesiredState, EventBody, RestartPolicy, Workload, WorkloadName, WorkloadPhase,
};

use super::function::plan_function;
use super::record::{spec_for, Record, Stage, UpdateEvent};
use super::{Action, Observed, Plan};
use crate::runtime::{Instance, InstanceState};

const CRASH_LOOP_EXITS: usize = 5;
const CRASH_LOOP_WINDOW: u64 = 60;
const MAX_BACKOFF: u64 = 300;
/// A workload without a health check counts as healthy once it has run this long.
const SETTLE_SECS: u64 = 1;

pub(super) fn backoff(restarts: u32) -> u64 {
    1u64.checked_shl(restarts.min(16))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// End of the stability window of a version of `w` started at `now` (none for jobs, which are
/// meant to exit, or when the window is 0).
fn stable_until(w: &Workload, now: u64) -> Option<u64> {
    (w.stability_window_secs > 0 && w.schedule.is_none())
        .then(|| now.saturating_add(w.stability_window_secs))
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
        disallowed: Vec::new(),
        functions: Vec::new(),
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
        if w.function.is_some() {
            // Started on demand by the activator, in its own runtime directory: an instance
            // here is a service of the same name from before, which goes.
            for i in insts {
                p.actions.push(Action::Stop(i.id.clone()));
            }
            let out = plan_function(&mut p, &mut rec, w, obs, target_failed);
            all_converged &= out.converged;
            any_failed |= out.failed;
            p.phases
                .insert((*name).clone(), (rec.digest.unwrap_or(target), out.phase));
            p.records.insert((*name).clone(), rec);
            continue;
        }
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
            if let Stage::Watching { until, .. } = rec.stage() {
                if at >= until {
                    // Died after its window had passed: the update held; the restart policy
                    // applies as to any version.
                    step(&mut p, &mut rec, name, UpdateEvent::Settled);
                }
            }
            if rec.probation_until.is_some() || rec.stable_until.is_some() {
                // Died while proving itself or inside its window: handled below as a failed
                // update.
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
            let base = rec
                .spec
                .as_ref()
                .map(|s| s.image.clone())
                .filter(|i| Some(i.digest) == rec.digest && i.digest != target);
            p.actions.push(Action::Pull {
                image: w.image.clone(),
                base,
            });
        }

        // Probation of the current digest.
        if let (Some(until), Some(inst)) = (rec.probation_until, keep) {
            if Some(inst.digest) == rec.digest {
                let healthy = is_healthy(w, inst, obs, now);
                if healthy {
                    step(&mut p, &mut rec, name, UpdateEvent::Proven { now });
                } else if now >= until {
                    p.actions.push(Action::Stop(inst.id.clone()));
                    step(
                        &mut p,
                        &mut rec,
                        name,
                        UpdateEvent::ProbationFailed {
                            workload: w,
                            reason: "not healthy within its deadline",
                            revision,
                            now,
                        },
                    );
                    any_failed = true;
                    p.records.insert((*name).clone(), rec.clone());
                    all_converged = false;
                    continue;
                }
            }
        }
        // Watched inside its stability window: a failed health check fails the update; the end
        // of the window keeps it.
        if let (Stage::Watching { until, .. }, Some(inst)) = (rec.stage(), keep) {
            if Some(inst.digest) == rec.digest {
                if w.health.is_some() && obs.health.get(&inst.id).copied().flatten() == Some(false)
                {
                    p.actions.push(Action::Stop(inst.id.clone()));
                    step(
                        &mut p,
                        &mut rec,
                        name,
                        UpdateEvent::ProbationFailed {
                            workload: w,
                            reason: "unhealthy within its stability window",
                            revision,
                            now,
                        },
                    );
                    any_failed = true;
                    all_converged = false;
                    p.records.insert((*name).clone(), rec);
                    continue;
                }
                if now >= until {
                    step(&mut p, &mut rec, name, UpdateEvent::Settled);
                }
            }
        }
        if (rec.probation_until.is_some() || rec.stable_until.is_some())
            && keep.is_none()
            && !rec.recent_exits.is_empty()
            && rec.digest == Some(target)
        {
            // The new version exited during probation or inside its window.
            let reason = if rec.probation_until.is_some() {
                "exited during probation"
            } else {
                "exited within its stability window"
            };
            step(
                &mut p,
                &mut rec,
                name,
                UpdateEvent::ProbationFailed {
                    workload: w,
                    reason,
                    revision,
                    now,
                },
            );
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
                if !healthy
                    || rec.probation_until.is_some()
                    || rec.stable_until.is_some()
                    || want_digest != target
                {
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
                    step(
                        &mut p,
                        &mut rec,
                        name,
                        UpdateEvent::Swap {
                            from: inst.digest,
                            to: want_digest,
                            workload: w,
                            until: now + w.health_deadline_secs,
                            stable_until: stable_until(w, now),
                        },
                    );
                    phase = WorkloadPhase::Starting;
                }
            }
            None => {
                if rec.digest != Some(want_digest) {
                    // First install of this digest (or a new target while nothing ran).
                    let next_start_at = if is_job {
                        w.schedule
                            .as_ref()
                            .and_then(|s| s.next_after(now))
                            .unwrap_or(u64::MAX)
                    } else {
                        now
                    };
                    let previous = rec.digest.filter(|d| obs.images.contains(d));
                    step(
                        &mut p,
                        &mut rec,
                        name,
                        UpdateEvent::Install {
                            digest: want_digest,
                            previous,
                            next_start_at,
                            scheduled: is_job,
                        },
                    );
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
                        step(
                            &mut p,
                            &mut rec,
                            name,
                            UpdateEvent::Restart {
                                until: now + w.health_deadline_secs,
                                stable_until: stable_until(w, now),
                            },
                        );
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

/// Applies one transition to `rec`, adding its events and its start to the plan; a disallowed
/// transition changes nothing and is kept in the plan for the executor to report.
fn step(p: &mut Plan, rec: &mut Record, name: &WorkloadName, event: UpdateEvent<'_>) {
    match rec.transition(name, event) {
        Ok(fx) => {
            p.events.extend(fx.events);
            p.actions.extend(fx.start);
        }
        Err(e) => p.disallowed.push(e),
    }
}
