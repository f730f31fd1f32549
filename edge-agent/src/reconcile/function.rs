//! The planner's part for functions: their images are pulled, kept and swapped like any
//! workload's, but nothing is started here. The plan names, per function, the version the
//! activator (`crate::functions`) serves and the one a crash at start falls back to.

use protocol::{Workload, WorkloadPhase};

use super::record::{spec_for, Record};
use super::{Action, FunctionRun, Observed, Plan};

/// What one function's pass decided, for the plan's convergence.
pub(super) struct FunctionOutcome {
    pub phase: WorkloadPhase,
    pub converged: bool,
    pub failed: bool,
}

/// Plans one function. A new target that is in the cache becomes the version served at once
/// (new events go to it, events in flight finish on the old one); the version before stays as
/// the fallback until the next update. A target that failed at start is not served again
/// while it stays the target.
pub(super) fn plan_function(
    p: &mut Plan,
    rec: &mut Record,
    w: &Workload,
    obs: &Observed,
    target_failed: bool,
) -> FunctionOutcome {
    let target = w.image.digest;
    let have_target = obs.images.contains(&target);
    if !have_target && !target_failed {
        p.actions.push(Action::Pull(w.image.clone()));
    }
    if have_target && !target_failed && rec.digest != Some(target) {
        if rec.digest.is_some() {
            rec.previous = rec.digest;
            rec.previous_spec = rec.spec.take();
        }
        rec.digest = Some(target);
    }
    if rec.digest == Some(target) && !target_failed {
        rec.spec = Some(w.clone());
    }
    let serving = rec.digest.filter(|d| obs.images.contains(d));
    if let Some(d) = serving {
        let fallback = rec
            .previous
            .filter(|prev| *prev != d && obs.images.contains(prev))
            .map(|prev| (spec_for(rec, w, prev), prev));
        p.functions.push(FunctionRun {
            workload: spec_for(rec, w, d),
            digest: d,
            fallback,
        });
    }
    let converged = serving == Some(target) && !target_failed;
    FunctionOutcome {
        phase: if serving.is_none() || (!have_target && !target_failed) {
            WorkloadPhase::Pulling
        } else {
            WorkloadPhase::Running
        },
        converged,
        failed: target_failed,
    }
}
