//! What the agent remembers about one workload between passes, and the one transition
//! function that moves it through an update (swap, probation, watch, settled, swap back).

use protocol::{Digest, EventBody, Workload, WorkloadName};
use serde::{Deserialize, Serialize};

use super::Action;

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
    /// End of the stability window (unix seconds) after an update: until then an exit or a
    /// failed health check still fails the update. Absent in records of earlier agents.
    #[serde(default)]
    pub stable_until: Option<u64>,
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
pub(super) fn spec_for(rec: &Record, w: &Workload, digest: Digest) -> Workload {
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

/// Where a workload stands in its update life. Derived from the persisted [`Record`], whose JSON
/// layout stays as it was, so stores written by earlier agents load unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Runs (or will run) its digest with nothing left to prove.
    Steady,
    /// A new version proves itself until `until`; `previous` is what a swap back restores.
    Probation {
        /// Deadline, unix seconds.
        until: u64,
        /// The digest to go back to.
        previous: Option<Digest>,
    },
    /// A new version proved healthy and is watched until `until` (its stability window): an
    /// exit or a failed health check before then still swaps back to `previous`.
    Watching {
        /// End of the window, unix seconds.
        until: u64,
        /// The digest to go back to.
        previous: Option<Digest>,
    },
}

/// What moves a record from one [`Stage`] to another.
#[derive(Debug, Clone, Copy)]
pub enum UpdateEvent<'a> {
    /// Nothing of the workload runs and it gets a new digest (first install, or a new target
    /// while nothing ran); `previous` is the old digest when its image is still cached.
    Install {
        /// The digest to run.
        digest: Digest,
        /// What a later probation may swap back to.
        previous: Option<Digest>,
        /// Earliest start (now, or a job's next firing).
        next_start_at: u64,
        /// A job: it waits for its firing.
        scheduled: bool,
    },
    /// The instance running `from` stops and `to` starts with `workload`, on probation.
    Swap {
        /// The digest running now.
        from: Digest,
        /// The digest to start.
        to: Digest,
        /// The definition to start it with.
        workload: &'a Workload,
        /// Probation deadline.
        until: u64,
        /// End of its stability window (`None`: no watch once healthy).
        stable_until: Option<u64>,
    },
    /// A version that has something to go back to starts again: its probation (re)starts.
    Restart {
        /// Probation deadline.
        until: u64,
        /// End of its stability window (`None`: no watch once healthy).
        stable_until: Option<u64>,
    },
    /// The version on probation became healthy: kept at once when its stability window has
    /// passed (or there is none), otherwise watched until the window ends.
    Proven {
        /// Now, unix seconds.
        now: u64,
    },
    /// The watched version ran through its stability window: kept, the old one forgotten.
    Settled,
    /// The version on probation exited or missed its deadline: mark it failed, swap back.
    ProbationFailed {
        /// The desired definition (its previous one is looked up in the record).
        workload: &'a Workload,
        /// Why, for the `update_failed` event.
        reason: &'a str,
        /// Revision for the events.
        revision: u64,
        /// Now, unix seconds.
        now: u64,
    },
}

impl UpdateEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Install { .. } => "install",
            Self::Swap { .. } => "swap",
            Self::Restart { .. } => "restart",
            Self::Proven { .. } => "proven",
            Self::Settled => "settled",
            Self::ProbationFailed { .. } => "probation_failed",
        }
    }
}

/// An event the record's stage does not allow (a planner bug, reported rather than applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload {workload}: {event} is not allowed in stage {stage:?}")]
pub struct Disallowed {
    /// The workload.
    pub workload: WorkloadName,
    /// Its stage.
    pub stage: Stage,
    /// The refused event.
    pub event: &'static str,
}

/// What a transition asks of the plan besides the new record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Events to report, in order.
    pub events: Vec<EventBody>,
    /// An instance to start (the swap back).
    pub start: Option<Action>,
}

impl Record {
    /// The record's stage.
    pub fn stage(&self) -> Stage {
        match (self.probation_until, self.stable_until) {
            (Some(until), _) => Stage::Probation {
                until,
                previous: self.previous,
            },
            (None, Some(until)) => Stage::Watching {
                until,
                previous: self.previous,
            },
            (None, None) => Stage::Steady,
        }
    }

    /// The one transition function of a workload's update life. Changes nothing and returns
    /// [`Disallowed`] for a pair that is not listed.
    pub fn transition(
        &mut self,
        name: &WorkloadName,
        event: UpdateEvent<'_>,
    ) -> Result<Effects, Disallowed> {
        let mut fx = Effects::default();
        match (event, self.stage()) {
            // A fresh install leaves any probation: nothing of the workload runs to prove.
            (
                UpdateEvent::Install {
                    digest,
                    previous,
                    next_start_at,
                    scheduled,
                },
                _,
            ) => {
                self.previous = previous;
                self.digest = Some(digest);
                self.restarts = 0;
                self.recent_exits.clear();
                self.probation_until = None;
                self.stable_until = None;
                self.next_start_at = next_start_at;
                self.done = scheduled;
            }
            // Swapping from a steady version, or replacing a version still on probation or
            // watched by a newer target: the running one becomes the one to go back to.
            (
                UpdateEvent::Swap {
                    from,
                    to,
                    workload,
                    until,
                    stable_until,
                },
                Stage::Steady | Stage::Probation { .. } | Stage::Watching { .. },
            ) => {
                self.previous_spec = Some(spec_for(self, workload, from));
                self.spec = Some(workload.clone());
                self.previous = Some(from);
                self.digest = Some(to);
                self.probation_until = Some(until);
                self.stable_until = stable_until;
                self.restarts = 0;
                self.recent_exits.clear();
                self.done = false;
            }
            // Starting again with something to go back to: the probation and the window
            // (re)start.
            (
                UpdateEvent::Restart {
                    until,
                    stable_until,
                },
                Stage::Steady | Stage::Probation { .. } | Stage::Watching { .. },
            ) => {
                self.probation_until = Some(until);
                self.stable_until = stable_until;
            }
            // Healthy on probation after its window: the new version is kept and the old one
            // forgotten.
            (UpdateEvent::Proven { now }, Stage::Probation { .. })
                if self.stable_until.is_none_or(|t| now >= t) =>
            {
                self.probation_until = None;
                self.stable_until = None;
                self.previous = None;
            }
            // Healthy on probation inside its window: watched until the window ends, the old
            // version still kept to go back to.
            (UpdateEvent::Proven { .. }, Stage::Probation { .. }) => {
                self.probation_until = None;
            }
            // Through the window without an exit or a failed check: kept, the old one forgotten.
            (UpdateEvent::Settled, Stage::Watching { .. }) => {
                self.stable_until = None;
                self.previous = None;
            }
            // Failed on probation or inside the window: the digest is marked failed (not
            // retried while it stays the target) and, when there is one, the previous version
            // starts with its own definition.
            (
                UpdateEvent::ProbationFailed {
                    workload,
                    reason,
                    revision,
                    now,
                },
                Stage::Probation { previous, .. } | Stage::Watching { previous, .. },
            ) => {
                self.failed = self.digest;
                self.probation_until = None;
                self.stable_until = None;
                fx.events.push(EventBody::UpdateFailed {
                    revision,
                    workload: Some(name.clone()),
                    reason: reason.into(),
                });
                if let Some(prev) = previous {
                    self.previous = None;
                    fx.events.push(EventBody::RolledBack {
                        revision,
                        workload: name.clone(),
                        digest: prev,
                    });
                    let spec = spec_for(self, workload, prev);
                    self.digest = Some(prev);
                    self.spec = Some(spec.clone());
                    self.previous_spec = None;
                    self.restarts = 0;
                    self.recent_exits.clear();
                    self.next_start_at = now;
                    fx.start = Some(Action::Start {
                        workload: Box::new(spec),
                        digest: prev,
                    });
                }
            }
            // Nothing to prove, nothing to fail, no window to settle.
            (
                event @ (UpdateEvent::Proven { .. }
                | UpdateEvent::Settled
                | UpdateEvent::ProbationFailed { .. }),
                stage,
            ) => {
                return Err(Disallowed {
                    workload: name.clone(),
                    stage,
                    event: event.name(),
                });
            }
        }
        Ok(fx)
    }
}
