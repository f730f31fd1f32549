//! The reconciler (DESIGN §3.8): a pure `plan(desired, observed, now)` and the records it keeps.
//!
//! `plan` never does I/O. It returns the actions to take (each safe to repeat), the new
//! per-workload records to persist *before* acting, and the events that report what it decided.
//! The owner loop (`agent`) persists records and events in one transaction, then executes the
//! actions; after a crash the next pass re-derives the same actions from what it observes.
//!
//! Per workload, the life of an update:
//! 1. the new image is pulled while the old version runs;
//! 2. when the swap is allowed (maintenance window open, no application hold), the old instance
//!    stops and the new one starts, on probation until healthy or `health_deadline_secs`;
//! 3. healthy → watched until its `stability_window_secs` (counted from the swap) have passed,
//!    then stable; an exit or the deadline during probation, or an exit or a failed health
//!    check inside the window → swap back to the previous digest, and the new one is marked
//!    failed (not retried until the desired state changes).
//!
//! Restarts follow the restart policy with exponential backoff (1 s doubling to 5 min); five
//! exits within a minute is a crash loop, reported once per loop.
//!
//! # Layout
//! - `record`: the persisted [`Record`] and its update life as a [`Stage`] enum moved by one
//!   transition function, [`Record::transition`].
//! - `plan`: the pure [`plan`] over desired state and observations.
//! - `function`: the part of a pass for functions (pulled and kept, started by the activator).

mod function;
mod plan;
mod record;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::{Convergence, Digest, EventBody, Workload, WorkloadName, WorkloadPhase};

use crate::runtime::Instance;

pub use plan::plan;
pub use record::{Disallowed, Effects, Record, Stage, UpdateEvent};

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
    /// Ensure this image is in the cache; `base` is the image the same workload runs now,
    /// which a delta may be applied to.
    Pull {
        /// The image wanted.
        image: protocol::ImageRef,
        /// The workload's current image, if another.
        base: Option<protocol::ImageRef>,
    },
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
    /// Transitions the planner asked for that the record's stage refused (a planner bug, kept
    /// for the executor to log).
    pub disallowed: Vec<Disallowed>,
    /// The functions the activator serves, with the version each runs now.
    pub functions: Vec<FunctionRun>,
}

/// A function to serve: its definition, the image to run, and the version a crash at start
/// falls back to (the one before an update, while its image is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRun {
    /// The definition that goes with `digest`.
    pub workload: Workload,
    /// Image to run.
    pub digest: Digest,
    /// Definition and image before the last update.
    pub fallback: Option<(Workload, Digest)>,
}
