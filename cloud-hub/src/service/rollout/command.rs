//! An operator's commands: pause, resume, approve, abort, rollback. One pure function with a
//! comment per allowed (command, stage) pair; any other pair is refused as [`Disallowed`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::controller::{transition, Action, DeviceObs, Health, RolloutState, Stage};

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Stop issuing.
    Pause,
    /// Issue again; failures seen so far are accepted.
    Resume,
    /// Start the phase waiting for approval.
    Approve,
    /// Stop for good; admitted devices keep the release.
    Abort,
    /// Give every device its previous release.
    Rollback,
}

/// A command the current stage does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command:?} a rollout that is {stage}")]
pub struct Disallowed {
    /// The command.
    pub command: Command,
    /// The stage's name.
    pub stage: &'static str,
}

/// An operator's command. Pure; `obs` names the failures a resume accepts.
pub fn command(
    state: &RolloutState,
    cmd: Command,
    obs: &[DeviceObs],
    now: u64,
    who: &str,
) -> Result<(RolloutState, Vec<Action>), Disallowed> {
    let mut s = state.clone();
    let mut actions = Vec::new();
    let reason = format!("{cmd:?} by {who}").to_lowercase();
    let next = match (cmd, &state.stage) {
        // Pause anything under way that is not paused yet.
        (Command::Pause, Stage::Running { phase } | Stage::Baking { phase, .. }) => Stage::Paused {
            phase: *phase,
            awaiting_approval: false,
            reason: reason.clone(),
        },
        (Command::Pause, Stage::AwaitingApproval { phase }) => Stage::Paused {
            phase: *phase,
            awaiting_approval: true,
            reason: reason.clone(),
        },
        // Resume where it stopped; the failures seen so far are accepted, and the phase's
        // bake starts again.
        (
            Command::Resume,
            Stage::Paused {
                phase,
                awaiting_approval,
                ..
            },
        ) => {
            for d in obs.iter().filter(|d| d.health == Health::Failed) {
                if s.admitted.contains_key(&d.id) {
                    s.excused.insert(d.id.clone());
                }
            }
            if *awaiting_approval {
                Stage::AwaitingApproval { phase: *phase }
            } else {
                Stage::Running { phase: *phase }
            }
        }
        // Approve the phase waiting for it: it starts now.
        (Command::Approve, Stage::AwaitingApproval { phase }) => {
            s.phase_started_at = now;
            Stage::Running { phase: *phase }
        }
        // Abort anything not finished.
        (Command::Abort, st) if !st.is_terminal() => Stage::Aborted {
            reason: reason.clone(),
        },
        // Roll back anything not rolled back yet, a completed rollout included.
        (Command::Rollback, st) if !matches!(st, Stage::RolledBack { .. }) => {
            let devices: Vec<String> = if matches!(st, Stage::Completed) {
                obs.iter().map(|d| d.id.clone()).collect()
            } else {
                s.admitted.keys().cloned().collect()
            };
            actions.push(Action::Publish { devices });
            Stage::RolledBack {
                reason: reason.clone(),
            }
        }
        (command, st) => {
            return Err(Disallowed {
                command,
                stage: st.name(),
            })
        }
    };
    actions.push(transition(&s.stage, &next, reason));
    s.stage = next;
    Ok((s, actions))
}
