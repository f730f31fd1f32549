//! The rollout controller: an enum state machine with one pure step function,
//! `step(plan, state, observations, now) -> (state, actions)`; an operator's pause, resume,
//! approve, abort and rollback are the pure `command` (`command.rs`), phase assignment is
//! `assign.rs`. No I/O: the driver reads the
//! observations from the store, persists the new state, and only then carries out the actions
//! (marks devices for the publisher, writes the audit log). Level-triggered: the same
//! observations give the same actions, and a device already admitted is never issued again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assign::{assign_initial, assign_late, position};
pub use super::command::{command, Command, Disallowed};
use super::plan::{OfflineAfterDeadline, OnFailure, Plan};
use crate::model::RolloutGate;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Created; the first tick assigns the devices to phases.
    Created,
    /// Admitting the devices of phases up to `phase`.
    Running {
        /// Current phase.
        phase: u32,
    },
    /// `phase` met its success threshold; watching it until `until` before the next starts.
    Baking {
        /// Current phase.
        phase: u32,
        /// Unix seconds when the bake ends.
        until: u64,
    },
    /// `phase` waits for an operator's approval; earlier phases keep admitting late devices.
    AwaitingApproval {
        /// The phase to approve.
        phase: u32,
    },
    /// Issuing nothing until an operator resumes.
    Paused {
        /// Current phase.
        phase: u32,
        /// Whether the phase had not been approved yet.
        awaiting_approval: bool,
        /// Why.
        reason: String,
    },
    /// Every phase done: every device of the deployment gets the release.
    Completed,
    /// Stopped: devices already admitted keep the release, the others never get it.
    Aborted {
        /// Why.
        reason: String,
    },
    /// Every device got its previous release back.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Stage {
    /// The stage's name, for the audit log and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::Running { .. } => "running",
            Stage::Baking { .. } => "baking",
            Stage::AwaitingApproval { .. } => "awaiting_approval",
            Stage::Paused { .. } => "paused",
            Stage::Completed => "completed",
            Stage::Aborted { .. } => "aborted",
            Stage::RolledBack { .. } => "rolled_back",
        }
    }

    /// The current phase, while the rollout is under way.
    pub fn phase(&self) -> Option<u32> {
        match self {
            Stage::Running { phase }
            | Stage::Baking { phase, .. }
            | Stage::AwaitingApproval { phase }
            | Stage::Paused { phase, .. } => Some(*phase),
            _ => None,
        }
    }

    /// Completed, aborted or rolled back.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Stage::Completed | Stage::Aborted { .. } | Stage::RolledBack { .. }
        )
    }
}

/// What the controller last saw a device's update do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not admitted, or admitted but its state not signed yet.
    Pending,
    /// Its new state is out; it has not converged on it yet.
    Updating,
    /// Runs the new release, converged and healthy.
    Succeeded,
    /// Reported the update failed or swapped back.
    Failed,
}

/// One device of the rollout as the driver observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceObs {
    /// Id.
    pub id: String,
    /// Labels (for label phases and the budget's groups).
    pub labels: BTreeMap<String, String>,
    /// Connected now (its last presence).
    pub online: bool,
    /// Health of its update (meaningful once admitted).
    pub health: Health,
}

/// The persisted state of one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Where it stands.
    pub stage: Stage,
    /// Each device's phase, fixed the first time the rollout sees the device.
    pub assignment: BTreeMap<String, u32>,
    /// The devices issued the release, with their phase.
    pub admitted: BTreeMap<String, u32>,
    /// The last outcome recorded per admitted device (to log each change once).
    pub outcomes: BTreeMap<String, Health>,
    /// Failures an operator accepted by resuming: not counted against a threshold again.
    pub excused: BTreeSet<String>,
    /// When the current phase started.
    pub phase_started_at: u64,
}

impl Default for RolloutState {
    fn default() -> Self {
        Self {
            stage: Stage::Created,
            assignment: BTreeMap::new(),
            admitted: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            excused: BTreeSet::new(),
            phase_started_at: 0,
        }
    }
}

impl RolloutState {
    /// Which devices the desired-state computation gives the release.
    pub fn gate(&self) -> RolloutGate {
        match &self.stage {
            Stage::Completed => RolloutGate::Open,
            Stage::RolledBack { .. } => RolloutGate::Closed,
            _ => RolloutGate::Only(self.admitted.clone()),
        }
    }
}

/// What the driver carries out, after persisting the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Recompute and publish these devices' desired states (admitted, or released back).
    Publish {
        /// Devices.
        devices: Vec<String>,
    },
    /// Devices issued the release, for the audit log.
    Admitted {
        /// Devices.
        devices: Vec<String>,
        /// Their phases.
        phases: Vec<u32>,
    },
    /// A device's update reached an outcome, for the audit log.
    Outcome {
        /// Device.
        device: String,
        /// Outcome.
        health: Health,
    },
    /// The stage changed, for the audit log.
    Transition {
        /// From.
        from: &'static str,
        /// To.
        to: &'static str,
        /// Why.
        reason: String,
    },
}

fn group_key(labels: &BTreeMap<String, String>, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| labels.get(k).cloned().unwrap_or_default())
        .collect()
}

/// Counts of one phase's devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// Devices in the phase (observed now).
    pub devices: u64,
    /// Updated and healthy.
    pub succeeded: u64,
    /// Failed (excused ones aside), including offline devices past the deadline under `fail`.
    pub failed: u64,
    /// Offline past the deadline under `skip`.
    pub skipped: u64,
}

/// The counts of `phase` against the current observations.
pub fn phase_counts(
    plan: &Plan,
    state: &RolloutState,
    obs: &[DeviceObs],
    phase: u32,
    now: u64,
) -> PhaseCounts {
    let deadline_passed = now >= state.phase_started_at + plan.offline_deadline_secs
        || state.stage.phase().is_some_and(|p| phase < p);
    let mut c = PhaseCounts::default();
    for d in obs
        .iter()
        .filter(|d| state.assignment.get(&d.id) == Some(&phase))
    {
        c.devices += 1;
        let admitted = state.admitted.contains_key(&d.id);
        match d.health {
            Health::Succeeded if admitted => c.succeeded += 1,
            Health::Failed if admitted && !state.excused.contains(&d.id) => c.failed += 1,
            _ if !d.online && deadline_passed => match plan.offline_after_deadline {
                OfflineAfterDeadline::Skip => c.skipped += 1,
                OfflineAfterDeadline::Fail => c.failed += 1,
            },
            _ => {}
        }
    }
    c
}

fn tripped(plan: &Plan, c: PhaseCounts, phase: u32) -> bool {
    let p = &plan.phases[phase as usize];
    let finished = c.succeeded + c.failed;
    let needed = u64::from(p.min_finished).min(c.devices - c.skipped).max(1);
    c.failed > 0 && finished >= needed && c.failed * 100 > u64::from(p.failure_pct) * finished
}

fn done(plan: &Plan, c: PhaseCounts, phase: u32) -> bool {
    let p = &plan.phases[phase as usize];
    let eligible = c.devices - c.skipped;
    c.succeeded >= (eligible * u64::from(p.success_pct)).div_ceil(100)
}

/// One step of the controller. Pure: the same arguments give the same result.
pub fn step(
    plan: &Plan,
    rollout: u64,
    state: &RolloutState,
    obs: &[DeviceObs],
    now: u64,
) -> (RolloutState, Vec<Action>) {
    let mut s = state.clone();
    let mut actions = Vec::new();
    if s.stage.is_terminal() {
        return (s, actions);
    }
    // Phases: fixed once, at first sight.
    if s.stage == Stage::Created {
        let all: Vec<&DeviceObs> = obs.iter().collect();
        s.assignment = assign_initial(plan, rollout, &all);
        s.phase_started_at = now;
        let next = start_phase(plan, 0);
        actions.push(transition(&s.stage, &next, "started".into()));
        s.stage = next;
    } else {
        for d in obs {
            if !s.assignment.contains_key(&d.id) {
                let p = assign_late(plan, rollout, &s, d);
                s.assignment.insert(d.id.clone(), p);
            }
        }
    }
    // Outcomes of admitted devices, each change logged once.
    for d in obs.iter().filter(|d| s.admitted.contains_key(&d.id)) {
        if matches!(d.health, Health::Succeeded | Health::Failed)
            && s.outcomes.get(&d.id) != Some(&d.health)
        {
            s.outcomes.insert(d.id.clone(), d.health);
            actions.push(Action::Outcome {
                device: d.id.clone(),
                health: d.health,
            });
        }
    }
    let Some(current) = s.stage.phase() else {
        return (s, actions);
    };
    if matches!(s.stage, Stage::Paused { .. }) {
        return (s, actions); // a paused rollout issues nothing
    }
    // Failure thresholds, for every phase started so far.
    let started = match s.stage {
        Stage::AwaitingApproval { phase } => phase.checked_sub(1),
        _ => Some(current),
    };
    if let Some(started) = started {
        for ph in 0..=started {
            let c = phase_counts(plan, &s, obs, ph, now);
            if tripped(plan, c, ph) {
                let reason = format!(
                    "phase {ph}: {} of {} finished devices failed, over {} %",
                    c.failed,
                    c.succeeded + c.failed,
                    plan.phases[ph as usize].failure_pct
                );
                let next = match plan.on_failure {
                    OnFailure::Pause => Stage::Paused {
                        phase: current,
                        awaiting_approval: matches!(s.stage, Stage::AwaitingApproval { .. }),
                        reason: reason.clone(),
                    },
                    OnFailure::Rollback => Stage::RolledBack {
                        reason: reason.clone(),
                    },
                };
                if matches!(next, Stage::RolledBack { .. }) {
                    actions.push(Action::Publish {
                        devices: s.admitted.keys().cloned().collect(),
                    });
                }
                actions.push(transition(&s.stage, &next, reason));
                s.stage = next;
                return (s, actions);
            }
        }
    }
    // Admit what the cap and the budget allow.
    if let Some(upto) = started {
        admit(plan, rollout, &mut s, obs, upto, current, &mut actions);
    }
    // Advance.
    match s.stage.clone() {
        Stage::Running { phase } => {
            let c = phase_counts(plan, &s, obs, phase, now);
            if done(plan, c, phase) {
                let bake = plan.phases[phase as usize].bake_secs;
                if bake > 0 {
                    let next = Stage::Baking {
                        phase,
                        until: now + bake,
                    };
                    actions.push(transition(
                        &s.stage,
                        &next,
                        format!("phase {phase} met its success threshold; baking {bake} s"),
                    ));
                    s.stage = next;
                } else {
                    advance(plan, &mut s, obs, phase, now, &mut actions);
                }
            }
        }
        Stage::Baking { phase, until } if now >= until => {
            advance(plan, &mut s, obs, phase, now, &mut actions);
        }
        _ => {}
    }
    (s, actions)
}

fn start_phase(plan: &Plan, phase: u32) -> Stage {
    if plan.phases[phase as usize].approval {
        Stage::AwaitingApproval { phase }
    } else {
        Stage::Running { phase }
    }
}

pub(super) fn transition(from: &Stage, to: &Stage, reason: String) -> Action {
    Action::Transition {
        from: from.name(),
        to: to.name(),
        reason,
    }
}

fn advance(
    plan: &Plan,
    s: &mut RolloutState,
    obs: &[DeviceObs],
    phase: u32,
    now: u64,
    actions: &mut Vec<Action>,
) {
    let next_phase = phase + 1;
    let next = if next_phase as usize >= plan.phases.len() {
        // The gate opens: devices never admitted (offline, skipped) get the release too.
        let rest: Vec<String> = obs
            .iter()
            .filter(|d| !s.admitted.contains_key(&d.id))
            .map(|d| d.id.clone())
            .collect();
        if !rest.is_empty() {
            actions.push(Action::Publish { devices: rest });
        }
        Stage::Completed
    } else {
        s.phase_started_at = now;
        start_phase(plan, next_phase)
    };
    actions.push(transition(&s.stage, &next, format!("phase {phase} done")));
    s.stage = next;
}

/// Admits the online, not yet admitted devices of phases up to `upto`, in (phase, position)
/// order, while the current phase's cap and every budget group allow.
fn admit(
    plan: &Plan,
    rollout: u64,
    s: &mut RolloutState,
    obs: &[DeviceObs],
    upto: u32,
    current: u32,
    actions: &mut Vec<Action>,
) {
    let admitted = |d: &DeviceObs| s.admitted.contains_key(&d.id);
    let unavailable = |d: &DeviceObs| {
        !d.online || (s.admitted.contains_key(&d.id) && d.health != Health::Succeeded)
    };
    let mut updating = obs
        .iter()
        .filter(|d| admitted(d) && matches!(d.health, Health::Pending | Health::Updating))
        .count() as u64;
    let cap = plan.phases[current as usize]
        .max_concurrent
        .map_or(u64::MAX, u64::from);
    let keys: &[String] = plan.budget.as_ref().map_or(&[], |b| &b.group_by);
    let mut size: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut down: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for d in obs {
        let g = group_key(&d.labels, keys);
        *size.entry(g.clone()).or_default() += 1;
        if unavailable(d) {
            *down.entry(g).or_default() += 1;
        }
    }
    let mut candidates: Vec<(u32, u64, &DeviceObs)> = obs
        .iter()
        .filter(|d| d.online && !admitted(d))
        .filter_map(|d| {
            let p = *s.assignment.get(&d.id)?;
            (p <= upto).then(|| (p, position(rollout, &d.id), d))
        })
        .collect();
    candidates.sort_by(|a, b| (a.0, a.1, &a.2.id).cmp(&(b.0, b.1, &b.2.id)));
    let (mut ids, mut phases) = (Vec::new(), Vec::new());
    for (p, _, d) in candidates {
        if updating >= cap {
            break;
        }
        let g = group_key(&d.labels, keys);
        let (n, out) = (size[&g], down.get(&g).copied().unwrap_or(0));
        if let Some(b) = &plan.budget {
            if b.max_unavailable
                .is_some_and(|m| out + 1 > m.floor_of(n).max(1))
            {
                continue;
            }
            if b.min_available
                .is_some_and(|m| n <= out || n - out - 1 < m.ceil_of(n))
            {
                continue;
            }
        }
        *down.entry(g).or_default() += 1;
        updating += 1;
        ids.push(d.id.clone());
        phases.push(p);
    }
    if ids.is_empty() {
        return;
    }
    for (id, p) in ids.iter().zip(&phases) {
        s.admitted.insert(id.clone(), *p);
    }
    actions.push(Action::Publish {
        devices: ids.clone(),
    });
    actions.push(Action::Admitted {
        devices: ids,
        phases,
    });
}
